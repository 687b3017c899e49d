"""The process context: which device this process uses, and its place among torchrun ranks.

Under ``torchrun`` (``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set) :func:`init` joins the
process group: NCCL with one GPU per local rank on CUDA, gloo on the CPU. Without them it
is a single process of world size 1, and every collective here is a no-op, so callers
never branch on whether they run distributed.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA when available, else the CPU; under torchrun, the local rank's GPU."""
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda asked for, but torch sees no CUDA device")
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively: CUDA, or a CPU with AVX512-BF16 or AMX."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and (
        torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    )


def training_precision(device: torch.device, precision: str) -> str:
    """``precision`` of a training config resolved on ``device``: ``auto`` is bfloat16 where
    the device computes it natively (:func:`native_bf16`), else float32."""
    if precision == "auto":
        return "bfloat16" if native_bf16(device) else "float32"
    return precision


def precision_autocast(device: torch.device, precision: str):
    """bf16 autocast when ``precision`` (already resolved) is bfloat16, on any device."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")


def memory_format(device: torch.device, spatial_dims: int = 2) -> torch.memory_format:
    """channels_last (``_3d`` for volumes) on CUDA (tensor cores), contiguous on the CPU."""
    if device.type != "cuda":
        return torch.contiguous_format
    return torch.channels_last_3d if spatial_dims == 3 else torch.channels_last


@dataclass(frozen=True)
class Context:
    """This process: its rank among ``world_size`` and its device."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's items: every ``world_size``-th from the ``rank``-th."""
        return list(items[self.rank :: self.world_size])

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (picklable objects; other ranks may pass None)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self._collective_device())
        return box[0]

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of ``values`` over the ranks (float64), on every rank."""
        if not self.distributed:
            return [float(v) for v in values]
        total = torch.tensor(list(values), dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(total)
        return total.tolist()

    def _collective_device(self) -> torch.device:
        """Where collectives' tensors live: the GPU under NCCL, the CPU under gloo."""
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order, on every rank (picklable objects)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def init(device: str | torch.device = "auto", timeout_minutes: float = 60) -> Context:
    """The context of this process, joining torchrun's process group when launched by it."""
    device = resolve_device(device)
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return Context(device=device)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            timeout=datetime.timedelta(minutes=timeout_minutes),
        )
    return Context(dist.get_rank(), dist.get_world_size(), device)


def shutdown() -> None:
    """Leave the process group, if any."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def mean_seconds(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Mean wall time of ``repeats`` calls of ``fn`` on ``device`` after one warm-up call,
    in seconds (CUDA synchronised around them)."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / repeats

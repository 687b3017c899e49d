"""What every ``bench`` measurement shares: a random classifier, the clock, the device's name."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def random_classifier(model_name: str, in_chans: int, device: torch.device) -> torch.nn.Module:
    """A timm classifier with random weights and one logit, channels-last, in eval mode."""
    import timm

    model = timm.create_model(model_name, pretrained=False, num_classes=1, in_chans=in_chans)
    return model.to(device, memory_format=torch.channels_last).eval()


def timed(fn: Callable[[], object], device: torch.device, repeats: int = 1) -> float:
    """Best wall time of ``repeats`` calls of ``fn`` after one warm-up, in seconds."""
    fn()
    return min(clock(fn, device) for _ in range(repeats))


def clock(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call of ``fn``, in seconds (CUDA synchronised around it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def describe(device: torch.device) -> str:
    """The device as the bench tables name it: the GPU's model, or the CPU's threads."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


class Bfloat16(torch.nn.Module):
    """``model`` under bf16 autocast on its device (the methods autocast on CUDA only)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return self.model(x).float()

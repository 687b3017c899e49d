"""The 2D slice classifier's batches (paper 4.2, A.6): sampling, augmentation, scoring inputs.

Each step draws B volumes with replacement, alternately positive and negative, and cuts
M_train augmented slices from each along one random direction (on the model's device, with
the tomography core); its loss is the binary cross-entropy of every slice against its
volume's label, and a volume's prediction is the max of its slice logits (A.6).
:class:`SliceBatches` is what :func:`benchmark.training.train.train` does with a
:class:`~benchmark.config.TrainConfig`; the 3D strategy (:mod:`benchmark.training.volumes`) draws
its volumes and computes its loss with the same pieces.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.config import TrainConfig
from benchmark.distributed import Context, memory_format
from benchmark.training.models import create_classifier, model_spec
from methods.tomography import autocast, extract_slices, orthonormal_frames, slice_offsets

# the settings of checkpoints written before these fields existed
OLD_CHECKPOINT_DEFAULTS = {"schedule": "cosine", "warmup": 0, "precision": "auto", "window": 1}


def _uniform(shape: tuple[int, ...], half_width: float, generator: torch.Generator) -> Tensor:
    """U(-half_width, half_width) on the CPU, float64."""
    return half_width * (2.0 * torch.rand(shape, generator=generator, dtype=torch.float64) - 1.0)


def draw_slice_params(
    n_slices: int,
    generator: torch.Generator,
    *,
    scale: float = 0.3,
    translation: float = 0.3,
    intensity: float = 0.3,
) -> dict[str, Tensor]:
    """A.6: the random draws of ``n_slices`` augmented slices along one direction (CPU, f64).

    One normal n uniform on the sphere; offsets s_m evenly across [-1, 1]; per slice, a
    random orthonormal in-plane frame (u^, v^) (A.1) whose vectors are scaled by lengths in
    [1 - scale, 1 + scale] (anisotropic zoom), a centre shifted in-plane by
    t_u u^ + t_v v^ with t ~ U(-translation, translation), and intensities mapped by
    y = (1 + a) x + b with a, b ~ U(-intensity, intensity) (all channels alike).
    """
    normal = F.normalize(torch.randn(1, 3, generator=generator, dtype=torch.float64), dim=-1)
    u_hat, v_hat = orthonormal_frames(normal.expand(n_slices, 3), generator)
    lengths = 1.0 + _uniform((n_slices, 2), scale, generator)
    shifts = _uniform((n_slices, 2), translation, generator)
    gain = 1.0 + _uniform((n_slices,), intensity, generator)
    bias = _uniform((n_slices,), intensity, generator)
    return {
        "normal": normal[0],
        "offsets": slice_offsets(n_slices, padded=False).double(),
        "u": u_hat * lengths[:, :1],
        "v": v_hat * lengths[:, 1:],
        "shift": shifts[:, :1] * u_hat + shifts[:, 1:] * v_hat,
        "lengths": lengths,
        "shifts": shifts,
        "gain": gain,
        "bias": bias,
    }


def cut_slices(volume: Tensor, params: dict[str, Tensor], size: int) -> Tensor:
    """Eq. (4) slices of a volume [C,D,H,W] for :func:`draw_slice_params` -> [M, C, size, size]."""
    slices = extract_slices(
        volume,
        params["normal"][None].float(),
        params["offsets"].float(),
        size,
        params["u"][None].float(),
        params["v"][None].float(),
        params["shift"][None].float(),
    )[0]
    gain, bias = params["gain"].to(slices), params["bias"].to(slices)
    return slices * gain.view(-1, 1, 1, 1) + bias.view(-1, 1, 1, 1)


def sample_volume_ids(
    positives: list[str], negatives: list[str], n: int, generator: torch.Generator
) -> list[str]:
    """``n`` ids with replacement, alternately positive and negative (A.6: one of each, B=2)."""
    pools = (positives, negatives)
    draws = torch.rand(n, generator=generator, dtype=torch.float64)
    return [pools[b % 2][int(r * len(pools[b % 2]))] for b, r in enumerate(draws.tolist())]


@dataclasses.dataclass
class BatchPlan:
    """The random draws of one A.6 step: B volume ids and each one's slice parameters.

    Drawn whole on every rank from the same generator, so that a distributed run draws the
    same numbers as one process; each rank then cuts only its share of the volumes.
    """

    ids: list[str]
    params: list[dict[str, Tensor]]


def draw_batch(
    positives: list[str], negatives: list[str], config: TrainConfig, generator: torch.Generator
) -> BatchPlan:
    """All random numbers of one step (A.6): B ids, then M_train slice draws per volume."""
    ids = sample_volume_ids(positives, negatives, config.batch_volumes, generator)
    params = [
        draw_slice_params(
            config.slices_per_volume,
            generator,
            scale=config.scale,
            translation=config.translation,
            intensity=config.intensity,
        )
        for _ in ids
    ]
    return BatchPlan(ids, params)


def cut_batch(
    dataset: Any, plan: BatchPlan, positions: Sequence[int], size: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Slices [len(positions)*M, C, h, w] of the planned volumes at ``positions`` and each
    slice's volume label."""
    slices, labels = [], []
    for b in positions:
        sample_id = plan.ids[b]
        volume_slices = cut_slices(load_volume(dataset, sample_id, device), plan.params[b], size)
        slices.append(volume_slices)
        labels.append(torch.full((len(volume_slices),), float(dataset.label(sample_id))))
    return torch.cat(slices), torch.cat(labels).to(device)


def slice_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """A.6: the mean BCE of every input's logit [N] against its label [N]."""
    return F.binary_cross_entropy_with_logits(logits, labels)


def bag_loss(logits: Tensor, labels: Tensor, stack: int) -> Tensor:
    """Multiple-instance BCE over stacks of ``stack`` slices of one volume each (beyond A.6).

    A negative volume's slices are all negative: the mean BCE of its slices against 0. A
    positive volume's stack holds a positive slice: the BCE of the stack's max logit (the
    volume logit of A.6) against 1. The mean over the volumes.
    """
    logits, labels = logits.view(-1, stack), labels.view(-1, stack)[:, 0]
    zeros = torch.zeros_like(logits)
    negative = F.binary_cross_entropy_with_logits(logits, zeros, reduction="none").mean(1)
    positive = F.binary_cross_entropy_with_logits(
        logits.max(1).values, torch.ones_like(labels), reduction="none"
    )
    return torch.where(labels > 0.5, positive, negative).mean()


def load_volume(dataset: Any, sample_id: str, device: torch.device) -> Tensor:
    """``dataset[id].image`` as a float32 tensor [C,D,H,W] on ``device`` (a copy)."""
    image = np.array(dataset[sample_id].image, dtype=np.float32)
    return torch.from_numpy(image).to(device)


def validation_slices(volume: Tensor, n_slices: int, size: int) -> Tensor:
    """The fixed validation slices of a volume: [3 * M, C, size, size].

    Three stacks of ``n_slices`` slices, evenly across [-1, 1], normal to the depth (axial:
    ``image[:, d]``), height and width axes, with fixed in-plane frames: no randomness.
    """
    normals = torch.eye(3)
    u, v = orthonormal_frames(normals)
    offsets = slice_offsets(n_slices, padded=False)
    return extract_slices(volume, normals, offsets, size, u, v).flatten(0, 1)


@torch.no_grad()
def slice_logits(model: nn.Module, slices: Tensor, chunk: int) -> Tensor:
    """Logits [N] of slices [N, C, h, w], ``chunk`` at a time, in eval mode."""
    model.eval()
    fmt = memory_format(slices.device)
    out = []
    for start in range(0, len(slices), chunk):
        with autocast(slices.device):
            out.append(model(slices[start : start + chunk].contiguous(memory_format=fmt)))
    return torch.cat(out).float().squeeze(-1)


def volume_logits(
    model: nn.Module,
    dataset: Any,
    ids: Sequence[str],
    n_slices: int,
    size: int,
    chunk: int,
    context: Context | None = None,
) -> Tensor:
    """Volume logits [V] (CPU): the max of each volume's validation slice logits (A.6).

    Under a distributed ``context`` each rank scores its share of the volumes and every
    rank gets all of them, in the order of ``ids`` (the same numbers as one process).
    """
    context = context or Context()
    device = next(model.parameters()).device
    positions = context.share(range(len(ids)))
    mine = {
        p: slice_logits(
            model, validation_slices(load_volume(dataset, ids[p], device), n_slices, size), chunk
        )
        .max()
        .item()
        for p in positions
    }
    logits: dict[int, float] = {}
    for part in context.gather(mine):
        logits.update(part)
    return torch.tensor([logits[p] for p in range(len(ids))], dtype=torch.float32)


def build_model(config: TrainConfig, in_chans: int, *, initial: bool = True) -> nn.Module:
    """The classifier of ``config``, seeded; ``initial=False`` skips the pretrained weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        if initial:
            return create_classifier(
                config.model,
                in_chans,
                pretrained=config.pretrained,
                weights=config.weights,
                gn_init=config.gn_init,
            )
        spec = model_spec(config.model, pretrained=False)
        return create_classifier(spec.arch, in_chans, norm=spec.norm, pretrained=False)


class SliceBatches:
    """What :func:`~benchmark.training.train.train` does with a :class:`TrainConfig`: the 2D slice
    classifier (A.6).

    The strategies (this and :class:`benchmark.training.volumes.VolumeBatches`) share one interface:
    ``draw`` (every random number of a step, on the CPU generator), ``cut`` (a rank's
    inputs and labels), ``volume_logits``, ``build_model``, ``record`` (what the checkpoint
    says of the model), ``check`` and ``saved_defaults`` (fields older checkpoints lack).
    """

    unit = "slice"
    spatial_dims = 2

    def __init__(self, config: TrainConfig):
        self.config = config
        self.chunk = config.batch_volumes * config.slices_per_volume  # slices per pass

    def draw(self, positives: list[str], negatives: list[str], generator) -> BatchPlan:
        return draw_batch(positives, negatives, self.config, generator)

    def cut(self, dataset, plan: BatchPlan, positions, device) -> tuple[Tensor, Tensor]:
        return cut_batch(dataset, plan, positions, self.config.slice_size, device)

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """``config.loss`` of a step's slice logits: A.6's per slice, or per volume's stack."""
        if self.config.loss == "mil":
            return bag_loss(logits, labels, self.config.slices_per_volume)
        return slice_loss(logits, labels)

    def volume_logits(self, model, dataset, ids, chunk: int, context=None) -> Tensor:
        config = self.config
        return volume_logits(
            model, dataset, ids, config.val_slices, config.slice_size, chunk, context
        )

    def build_model(self, in_chans: int, *, initial: bool = True) -> nn.Module:
        return build_model(self.config, in_chans, initial=initial)

    def record(self) -> dict[str, Any]:
        spec = model_spec(self.config.model)
        return {"model_name": self.config.model, "arch": spec.arch, "norm": spec.norm}

    def check(self) -> None:
        model_spec(self.config.model)  # an unknown name: the error with the close matches

    def saved_defaults(self, state: dict[str, Any]) -> dict[str, Any]:
        # before gn_init existed, group norms replacing batch norms copied their affine parameters
        return {
            "gn_init": "copy" if state["norm"] == "gn" else self.config.gn_init,
            **OLD_CHECKPOINT_DEFAULTS,
            "loss": "slice",
        }

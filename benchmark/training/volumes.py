"""Training of the 3D classifier on whole volumes (beyond the paper: its 3D-native baseline).

:func:`benchmark.training.train.train` with a :class:`~benchmark.config.Train3DConfig` uses
:class:`VolumeBatches`: each step draws B volumes with replacement, alternately positive and
negative (as the 2D classifier's A.6 batches), flips each on random axes, rotates it by a
small random 3D rotation about the centre of [-1, 1]^3, resamples it at the network's input
size (one trilinear pass) and maps its intensities by y = (1 + a) x + b. All random numbers
come from the loop's CPU generator, so a resumed run ends with the same weights.

The quick preset's figures on the synthetic set are beside it in ``benchmark.config.PRESETS``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.config import Train3DConfig
from benchmark.distributed import Context
from benchmark.training.classifier3d import (
    create_volume_classifier,
    native_size,
    resize_volumes,
    resnet3d_spec,
)
from benchmark.training.slices import (
    OLD_CHECKPOINT_DEFAULTS,
    BatchPlan,
    load_volume,
    sample_volume_ids,
    slice_loss,
)
from methods.tomography import autocast


def rotation_matrix(axis: Tensor, angle: Tensor) -> Tensor:
    """Rodrigues: the rotation [3,3] by ``angle`` (radians) about unit ``axis`` [3]."""
    k = torch.zeros(3, 3, dtype=axis.dtype)
    k[0, 1], k[0, 2], k[1, 2] = -axis[2], axis[1], -axis[0]
    k = k - k.T
    return torch.eye(3, dtype=axis.dtype) + torch.sin(angle) * k + (1 - torch.cos(angle)) * k @ k


def draw_volume_params(
    generator: torch.Generator, *, flip: bool, rotation: float, intensity: float
) -> dict[str, Tensor]:
    """The random draws of one augmented volume (CPU, f64; the same count whatever the
    settings): ``flips`` [3] bool per (depth, height, width) axis, ``matrix`` [3,3] a rotation
    by U(-rotation, rotation) degrees about a uniform random axis, ``gain`` 1 + a and
    ``bias`` b with a, b ~ U(-intensity, intensity)."""
    flips = (torch.rand(3, generator=generator, dtype=torch.float64) < 0.5) & flip
    axis = F.normalize(torch.randn(3, generator=generator, dtype=torch.float64), dim=0)
    u = torch.rand(3, generator=generator, dtype=torch.float64) * 2 - 1
    angle = math.radians(rotation) * u[0]
    return {
        "flips": flips,
        "matrix": rotation_matrix(axis, angle),
        "gain": 1 + intensity * u[1],
        "bias": intensity * u[2],
    }


def rotate_volume(volume: Tensor, matrix: Tensor, size: Sequence[int]) -> Tensor:
    """``volume`` [C,D,H,W] resampled on a grid of ``size`` (d, h, w) over [-1, 1]^3, the
    output at x reading the input at ``matrix`` @ x (coordinates in (depth, height, width)
    order, corner voxels at +-1), trilinear, zero outside."""
    theta = torch.zeros(1, 3, 4, dtype=torch.float64)
    theta[0, :, :3] = matrix.flip(0, 1)  # grid_sample's coordinates are (width, height, depth)
    grid = F.affine_grid(theta.to(volume), [1, volume.shape[0], *size], align_corners=True)
    return F.grid_sample(volume[None], grid, mode="bilinear", align_corners=True)[0]


def augment_volume(volume: Tensor, params: dict[str, Tensor], size: Sequence[int]) -> Tensor:
    """:func:`draw_volume_params`' flips, rotation and intensity map of ``volume`` [C,D,H,W]
    at ``size`` -> [C, *size]."""
    dims = [1 + a for a in range(3) if params["flips"][a]]
    out = rotate_volume(volume.flip(dims) if dims else volume, params["matrix"], size)
    return out * params["gain"].item() + params["bias"].item()


@torch.no_grad()
def whole_volume_logits(
    model: nn.Module, dataset: Any, ids: Sequence[str], chunk: int, context: Context | None = None
) -> Tensor:
    """Volume logits [V] (CPU) of the 3D classifier, each volume resized to its input size,
    ``chunk`` volumes a pass; under a distributed ``context`` each rank scores its share."""
    context = context or Context()
    device = next(model.parameters()).device
    model.eval()
    positions = list(context.share(range(len(ids))))
    mine: dict[int, float] = {}
    for start in range(0, len(positions), chunk):
        part = positions[start : start + chunk]
        volumes = [
            resize_volumes(load_volume(dataset, ids[p], device)[None], model.input_size)[0]
            for p in part
        ]
        for shape in dict.fromkeys(v.shape for v in volumes):  # native sizes may differ
            same = [i for i, v in enumerate(volumes) if v.shape == shape]
            with autocast(device):
                logits = model(torch.stack([volumes[i] for i in same])).float()[:, 0]
            mine.update(zip([part[i] for i in same], logits.tolist(), strict=True))
    logits: dict[int, float] = {}
    for share in context.gather(mine):
        logits.update(share)
    return torch.tensor([logits[p] for p in range(len(ids))], dtype=torch.float32)


class VolumeBatches:
    """What :func:`benchmark.training.train.train` does with a :class:`Train3DConfig` (the interface
    of :class:`benchmark.training.slices.SliceBatches`)."""

    unit = "volume"
    spatial_dims = 3

    def __init__(self, config: Train3DConfig):
        self.config = config
        self.chunk = config.batch_volumes  # volumes per validation pass

    def draw(self, positives: list[str], negatives: list[str], generator) -> BatchPlan:
        config = self.config
        ids = sample_volume_ids(positives, negatives, config.batch_volumes, generator)
        params = [
            draw_volume_params(
                generator, flip=config.flip, rotation=config.rotation, intensity=config.intensity
            )
            for _ in ids
        ]
        return BatchPlan(ids, params)

    def cut(self, dataset, plan: BatchPlan, positions, device) -> tuple[Tensor, Tensor]:
        """Augmented volumes [len(positions), C, *input_size] and their labels (a 0 of
        ``input_size``: the size on that axis of the batch's first volume)."""
        volumes = [load_volume(dataset, plan.ids[b], device) for b in positions]
        size = native_size(self.config.input_size, volumes[0].shape[1:])
        volumes = [
            augment_volume(v, plan.params[b], size) for v, b in zip(volumes, positions, strict=True)
        ]
        labels = torch.tensor([float(dataset.label(plan.ids[b])) for b in positions])
        return torch.stack(volumes), labels.to(device)

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        return slice_loss(logits, labels)  # one logit a volume: A.6's BCE

    def volume_logits(self, model, dataset, ids, chunk: int, context=None) -> Tensor:
        return whole_volume_logits(model, dataset, ids, chunk, context)

    def build_model(self, in_chans: int, *, initial: bool = True) -> nn.Module:
        """The seeded classifier; ``initial=False`` skips the MedicalNet weights."""
        config = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            weights = config.weights if initial else None
            return create_volume_classifier(
                config.model, in_chans, config.input_size, weights=weights, max_pool=config.max_pool
            )

    def record(self) -> dict[str, Any]:
        spec = resnet3d_spec(self.config.model)
        return {
            "model_name": self.config.model,
            "arch": spec.builder,
            "norm": "bn",  # MONAI's ResNets: batch norm, per rank's share under DDP
            "classifier": "3d",
        }

    def check(self) -> None:
        config = self.config
        resnet3d_spec(config.model)  # an unknown name: the error with the close matches
        if len(config.input_size) != 3:
            raise ValueError(f"train3d.input_size: 3 sizes (D, H, W), got {config.input_size}")

    def saved_defaults(self, state: dict[str, Any]) -> dict[str, Any]:
        return dict(OLD_CHECKPOINT_DEFAULTS)

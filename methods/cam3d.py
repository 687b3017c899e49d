"""3D CAMs of the volume classifier, beyond the paper: ``cam3d_NAME@k``.

The paper explains a 2D slice classifier; a 3D network classifying the whole volume is the
3D-native baseline (M3d-CAM, Gotkowski et al. 2020; MONAI's ``GradCAM``, whose 3D maps are
upsampled the same way). Each is an equation of :mod:`methods.cam` on the activations
[1, K, d, h, w] of the volume classifier's stage k, from one forward and one backward pass
of the volume; its raw map (ReLU, no min-max) is upsampled trilinearly (align_corners=False)
to the volume's (D, H, W).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from foundation.lazy import lazy_import
from methods.cam_methods import CAMMethod, Family, cam_maps, register_families
from methods.registry import Passes

if TYPE_CHECKING:
    from torch import Tensor, nn

F = lazy_import("torch.nn.functional")  # the registry imports this module: keep it cheap


class VolumeCAM(CAMMethod):
    """A CAM of the volume classifier at its stage ``layer``, upsampled to the volume."""

    kind = "3d"
    classifier = "3d"
    slicing = "whole volume"  # one input: the volume itself, at the classifier's own resizing

    def __call__(self, volume: Tensor, model: nn.Module) -> Tensor:
        return volume_heatmaps([self], volume, model)[self.spec]

    def passes(self, shape: tuple[int, int, int], channels: int | None = None) -> Passes:
        """One volume through the volume classifier: forward and backward for a gradient
        CAM, 1 + channels forwards for ScoreCAM (its masked copies); nothing is sliced."""
        per_input = self.per_slice(channels)
        return Passes(0, volume_forward=per_input.forward, volume_backward=per_input.backward)


def volume_heatmaps(
    methods: Sequence[VolumeCAM], volume: Tensor, model: nn.Module
) -> dict[str, Tensor]:
    """{spec: heatmap [D,H,W]} of 3D CAMs on ``volume`` [C,D,H,W]: the gradient CAMs share
    one forward and backward pass of the volume, whatever their equations and stages."""
    maps = cam_maps(methods, model)(volume[None])
    return {
        m.spec: F.interpolate(
            maps[m.maps_key][:, None], size=volume.shape[1:], mode="trilinear", align_corners=False
        )[0, 0].float()
        for m in methods
    }


VOLUME = Family(
    "3d",
    VolumeCAM,
    "cam3d_{name}",
    "3D {title}",
    "Volume",
    "{title} of the volume classifier.",
)

globals().update(register_families(__name__, (VOLUME,)))  # the table's rows listing "3d"

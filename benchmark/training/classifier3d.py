"""The 3D classifier: a MONAI 3D ResNet on whole volumes (beyond the paper: its 3D-native
baseline, ``cam3d_*``; the paper trains only the 2D slice classifier).

The ResNets are MONAI's (``monai.networks.nets.resnet10/18/34/50``) with MedicalNet's
stem (7^3 convolution of stride 2) and shortcuts, so that MedicalNet weights (Chen et al.,
"Med3D", 2019) load from a local file; the head is one logit.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.training.weights import read_weights


@dataclass(frozen=True)
class Resnet3dSpec:
    """A registered 3D ResNet: MONAI's builder and MedicalNet's shortcut settings."""

    builder: str  # monai.networks.nets.<builder>
    shortcut_type: str  # "A": pooled identity padded with zeros; "B": 1^3 convolution
    bias_downsample: bool
    expansion: int  # channels of stage i: 2^(i-1) * 64 * expansion


# MedicalNet's settings per depth, as monai's get_medicalnet_pretrained_resnet_args
RESNETS_3D: dict[str, Resnet3dSpec] = {
    "resnet10_3d": Resnet3dSpec("resnet10", "B", False, 1),
    "resnet18_3d": Resnet3dSpec("resnet18", "A", True, 1),
    "resnet34_3d": Resnet3dSpec("resnet34", "A", True, 1),
    "resnet50_3d": Resnet3dSpec("resnet50", "B", False, 4),
}


def resnet3d_spec(name: str) -> Resnet3dSpec:
    """The spec of a registered 3D ResNet; a ValueError with the close matches otherwise."""
    if name not in RESNETS_3D:
        close = difflib.get_close_matches(name, list(RESNETS_3D), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown 3D classifier {name!r} (known: {', '.join(RESNETS_3D)}){hint}")
    return RESNETS_3D[name]


def native_size(input_size: Sequence[int], shape: Sequence[int]) -> tuple[int, int, int]:
    """The size (D, H, W) a volume of ``shape`` (D, H, W) is seen at for ``input_size``: a 0
    keeps the volume's own size on that axis (``train3d.input_size=0,0,0``: no resampling)."""
    return tuple(int(s) or int(n) for s, n in zip(input_size, shape, strict=True))


def resize_volumes(x: Tensor, size: Sequence[int]) -> Tensor:
    """Volumes [N,C,D,H,W] resampled trilinearly to ``size`` on [-1, 1]^3 (corner voxels
    fixed, as the tomography core's grid; a 0 keeps that axis's size, :func:`native_size`);
    ``x`` itself when already that size."""
    size = native_size(size, x.shape[2:])
    if tuple(x.shape[2:]) == size:
        return x
    return F.interpolate(x, size=tuple(size), mode="trilinear", align_corners=True)


class VolumeClassifier(nn.Module):
    """A 3D ResNet ``net`` behind a resize to ``input_size`` (a 0: the volume's own size on
    that axis): volumes [N,C,D,H,W] -> [N,1].

    ``feature_info`` lists stages 1-4 (``net.layer1..4``) timm-style, for the layer-wise
    methods' hooks (:func:`methods.stages.stage_modules`); stage k is at 1/2^(k+1) of the
    input, 1/2^k without the stem's max pool.
    """

    def __init__(
        self,
        net: nn.Module,
        input_size: tuple[int, int, int],
        expansion: int,
        max_pool: bool = True,
    ):
        super().__init__()
        self.net = net
        self.input_size = tuple(int(n) for n in input_size)
        self.feature_info = [
            {
                "module": f"net.layer{i}",
                "num_chs": 64 * 2 ** (i - 1) * expansion,
                "reduction": 2 ** (i + max_pool),
            }
            for i in range(1, 5)
        ]

    def forward(self, x: Tensor) -> Tensor:
        return self.net(resize_volumes(x, self.input_size))


def create_volume_classifier(
    name: str,
    in_chans: int,
    input_size: tuple[int, int, int],
    *,
    weights: str | Path | None = None,
    max_pool: bool = True,
) -> VolumeClassifier:
    """The 3D classifier ``name`` (:data:`RESNETS_3D`), MONAI's initialisation or MedicalNet
    ``weights`` from a local file (:func:`load_medicalnet`); ``max_pool=False`` drops the
    stem's max pool (it has no weights: MedicalNet's load the same), doubling every stage's
    resolution."""
    from monai.networks import nets

    spec = resnet3d_spec(name)
    net = getattr(nets, spec.builder)(
        spatial_dims=3,
        n_input_channels=in_chans,
        num_classes=1,
        conv1_t_size=7,
        conv1_t_stride=2,  # MedicalNet's stem
        shortcut_type=spec.shortcut_type,
        bias_downsample=spec.bias_downsample,
        no_max_pool=not max_pool,
    )
    if weights is not None:
        load_medicalnet(net, weights)
    return VolumeClassifier(net, input_size, spec.expansion, max_pool)


def load_medicalnet(net: nn.Module, path: str | Path) -> None:
    """Load a MedicalNet checkpoint (``{"state_dict": {"module.conv1.weight": ...}}``, its
    ``conv_seg`` head dropped) into a MONAI ResNet ``net``, keeping ``net``'s head ``fc``.

    Every backbone tensor must be in the file with its shape, except the first
    convolution's input channels: a one-channel kernel is repeated over ``net``'s channels
    and divided by their number (the same response to a volume repeated on each channel).
    """
    saved = read_weights(path, "a MedicalNet weights file")
    saved = saved.get("state_dict", saved)
    saved = {k.removeprefix("module."): v for k, v in saved.items()}
    own = net.state_dict()
    conv1 = saved.get("conv1.weight")
    if conv1 is not None and conv1.shape[1] == 1 != own["conv1.weight"].shape[1]:
        channels = own["conv1.weight"].shape[1]
        saved["conv1.weight"] = conv1.repeat(1, channels, 1, 1, 1) / channels
    backbone = [k for k in own if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    bad = [k for k in backbone if k not in saved or saved[k].shape != own[k].shape]
    if bad:
        raise ValueError(
            f"{path}: {len(bad)} of {len(backbone)} backbone tensors missing or of another "
            f"shape (e.g. {', '.join(bad[:3])}): not MedicalNet weights of this architecture"
        )
    net.load_state_dict({k: saved[k] for k in own if k in saved and k in backbone}, strict=False)

"""A tiny stand-in of the volume classifier (the 3D CAMs' model), for the tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

WIDTHS = (4, 6, 8, 8)


class TinyClassifier(nn.Module):
    """The volume classifier's interface: resizes its input to ``input_size``, four stride-2
    conv + ReLU stages named in a timm-style ``feature_info``, mean pool, one logit. With
    ``flat``, 3D kernels (1, 3, 3) of stride (1, 2, 2); 2D for a 2-long ``input_size``."""

    def __init__(self, input_size: tuple[int, ...], flat: bool = False, in_chans: int = 1):
        super().__init__()
        conv = nn.Conv3d if len(input_size) == 3 else nn.Conv2d
        kernel, stride = ((1, 3, 3), (1, 2, 2)) if flat else (3, 2)
        padding = (0, 1, 1) if flat else 1
        channels = (in_chans, *WIDTHS)
        for i in range(4):
            stage = nn.Sequential(conv(channels[i], channels[i + 1], kernel, stride, padding))
            self.add_module(f"layer{i + 1}", stage.append(nn.ReLU()))
        self.fc = nn.Linear(WIDTHS[-1], 1)
        self.input_size = input_size
        self.feature_info = [{"module": f"layer{i}", "num_chs": WIDTHS[i - 1]} for i in range(1, 5)]

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.interpolate(x, size=self.input_size, mode="trilinear" if x.dim() == 5 else "bilinear")
        outputs = []
        for i in range(1, 5):
            x = self.get_submodule(f"layer{i}")(x)
            outputs.append(x)
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.stages(x)[-1].flatten(2).mean(-1))

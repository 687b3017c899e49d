"""The classifier's stages 1-4: where the layer-wise methods hook (``NAME@LAYER``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


def stage_names(model: nn.Module) -> dict[int, str]:
    """Stages 1-4 (e.g. ResNet ``layer1..layer4``): the last four entries of timm's feature_info.

    Stage i has stride 2^(i+1) for ResNets, e.g. 56, 28, 14, 7 pixels at 224 (the layers of
    the layer-wise CAM methods).
    """
    info = getattr(model, "feature_info", None)
    modules = [entry["module"] for entry in info or []]
    if len(modules) < 4:
        raise ValueError(f"{type(model).__name__} has no four feature stages in feature_info")
    return {i + 1: name for i, name in enumerate(modules[-4:])}


def stage_modules(model: nn.Module) -> dict[int, nn.Module]:
    """Stages 1-4 as modules, for forward/backward hooks (see :func:`stage_names`)."""
    return {i: model.get_submodule(name) for i, name in stage_names(model).items()}

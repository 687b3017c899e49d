"""The 2D slice classifier every method explains (paper 3.6, Table 1, A.5).

Any timm model by name, with one logit and ``in_chans`` = the dataset's channels, plus the
paper's variants (Table 4 rows) by name:

========================  =====================  ==========
name                      paper (Table 4)        pretrained
========================  =====================  ==========
``resnet10t``             R-10-T, FBN (default)  yes
``resnet10t_bn``          R-10-T, BN             yes
``resnet10t_gn``          R-10-T, GN             yes
``resnet10t_gn_np``       R-10-T, GN, NP         no
``resnet50_gn``           R-50, GN               yes
========================  =====================  ==========

``resnet50_gn`` is timm's own ``resnet50_gn``: the ResNet-50 built with group norm (32
groups in all 53 norms) and trained so on ImageNet (``resnet50_gn.a1h_in1k``), the
ResNet-50 "with group normalization, for which ImageNet weights exist" of paper 3.6; it has
no batch norm to convert.

Normalisation: ``bn`` keeps the model's own layers, ``frozen_bn`` freezes every batch norm
(statistics and affine parameters; timm's ``freeze_batch_norm_2d``), ``gn`` replaces every
batch norm by a new group norm at gamma = 1, beta = 0, the other layers keeping their
pretrained weights (paper 3.6); ``gn_init="copy"`` starts it at the batch norm's affine
parameters instead (beyond the paper; see :class:`~benchmark.config.TrainConfig`).
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import math
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from timm.layers import BatchNormAct2d, GroupNormAct, freeze_batch_norm_2d
from torch import nn

from benchmark.config import GN_INITS
from benchmark.training.weights import read_weights

log = logging.getLogger(__name__)

NORMS = ("bn", "frozen_bn", "gn")
GROUP_NORM_GROUPS = 32  # group norm groups (Wu & He 2018), fewer when the channels do not divide


@dataclass(frozen=True)
class ModelSpec:
    """A classifier: timm architecture, normalisation and whether to start from ImageNet."""

    arch: str
    norm: str = "bn"
    pretrained: bool = True


PAPER_VARIANTS: dict[str, ModelSpec] = {
    "resnet10t": ModelSpec("resnet10t", "frozen_bn"),
    "resnet10t_bn": ModelSpec("resnet10t", "bn"),
    "resnet10t_gn": ModelSpec("resnet10t", "gn"),
    "resnet10t_gn_np": ModelSpec("resnet10t", "gn", pretrained=False),
    "resnet50_gn": ModelSpec("resnet50_gn", "gn"),  # timm's GN ResNet-50, its GN weights
}


def model_spec(name: str, norm: str | None = None, pretrained: bool | None = None) -> ModelSpec:
    """The spec of a paper variant or timm model ``name``; ``None`` keeps its own setting."""
    spec = PAPER_VARIANTS.get(name) or ModelSpec(name)
    if not timm.is_model(spec.arch):
        close = difflib.get_close_matches(name, sorted({*PAPER_VARIANTS, *timm.list_models()}), n=5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}: neither a paper variant {sorted(PAPER_VARIANTS)} "
            f"nor a timm model (timm.list_models()){hint}"
        )
    if norm is not None and norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}: choose from {NORMS}")
    return ModelSpec(
        spec.arch,
        spec.norm if norm is None else norm,
        spec.pretrained if pretrained is None else pretrained,
    )


def create_classifier(
    name: str,
    in_chans: int,
    *,
    norm: str | None = None,
    pretrained: bool | None = None,
    weights: str | Path | None = None,
    gn_init: str = "identity",
) -> nn.Module:
    """A one-logit slice classifier [N, in_chans, h, w] -> [N, 1] (paper 3.6).

    ``name`` is a paper variant or any timm model; ``norm`` and ``pretrained`` override the
    variant's settings. Pretrained weights come from ``weights`` (a local timm / PyTorch
    state-dict file) or else from the Hugging Face hub (or its local cache); the first conv is
    adapted to ``in_chans`` and the ImageNet head replaced, as timm does. ``gn_init``: how
    the group norms that replace batch norms start (:func:`batch_norm_to_group_norm`).
    """
    spec = model_spec(name, norm, pretrained)
    if gn_init not in GN_INITS:
        raise ValueError(f"unknown gn_init {gn_init!r}: choose from {GN_INITS}")
    if weights is not None and not spec.pretrained:
        raise ValueError(f"weights {weights} given for {name!r}, which is not pretrained")
    kwargs = {"in_chans": in_chans, "num_classes": 1}
    if not spec.pretrained:
        model = timm.create_model(spec.arch, pretrained=False, **kwargs)
    elif weights is not None:
        read_weights(weights, f"a weights file for {name!r}")  # checked before timm loads it
        overlay = {"file": str(weights)}
        model = timm.create_model(
            spec.arch, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs
        )
    else:
        model = _create_from_hub(spec.arch, name, kwargs)
    if spec.norm == "frozen_bn":
        model = freeze_batch_norm_2d(model)
    elif spec.norm == "gn":
        model = batch_norm_to_group_norm(model, gn_init)
    return model


def _create_from_hub(arch: str, name: str, kwargs: dict) -> nn.Module:
    """timm's pretrained download (or hub cache), failing fast and clearly when it cannot."""
    try:
        with _offline_unless_reachable():
            return timm.create_model(arch, pretrained=True, **kwargs)
    except (OSError, RuntimeError) as error:
        raise FileNotFoundError(
            f"cannot load ImageNet weights for {name!r}: no network and no local weights "
            f"({type(error).__name__}: {error}); pass --weights PATH (a timm state-dict file) "
            "or --set train.pretrained=false"
        ) from error


@contextlib.contextmanager
def _offline_unless_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> Iterator:
    """Hub offline mode (local cache only) when ``host`` does not answer within ``timeout``.

    Without it, huggingface_hub retries a dead connection for about a minute. Behind a proxy
    (``HTTPS_PROXY``) the hub is left to decide.
    """
    import huggingface_hub.constants as hub

    previous = hub.HF_HUB_OFFLINE
    if not previous and not (os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")):
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
        except OSError:
            log.info("%s is unreachable: looking for weights in the hub cache only", host)
            hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = previous


def batch_norm_to_group_norm(module: nn.Module, init: str = "identity") -> nn.Module:
    """Every BatchNorm2d -> a new GroupNorm (paper 3.6); returns the result.

    ``init="identity"``: gamma = 1, beta = 0, as the paper, which initialises only the
    *other* layers with the pretrained weights; ``"copy"``: the batch norm's gamma and beta.
    gcd(32, channels) groups; timm's norm+activation layers keep their activation.
    """
    if isinstance(module, nn.BatchNorm2d):
        channels = module.num_features
        groups = math.gcd(GROUP_NORM_GROUPS, channels)
        if isinstance(module, BatchNormAct2d):
            norm = GroupNormAct(channels, groups, eps=module.eps, affine=module.affine)
            norm.act, norm.drop = module.act, module.drop
        else:
            norm = nn.GroupNorm(groups, channels, eps=module.eps, affine=module.affine)
        if module.affine and init == "copy":
            with torch.no_grad():
                norm.weight.copy_(module.weight)
                norm.bias.copy_(module.bias)
        return norm
    for child_name, child in module.named_children():
        new = batch_norm_to_group_norm(child, init)
        if new is not child:
            module.add_module(child_name, new)
    return module

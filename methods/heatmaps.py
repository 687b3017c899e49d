"""Heatmaps of many methods on one volume, sharing work: ``compute_heatmaps``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from methods.cam3d import VolumeCAM, volume_heatmaps
from methods.cam_methods import AveragedCAM, SliceWiseCAM, slice_wise_heatmaps, stacked_heatmaps
from methods.config import TomographyConfig
from methods.registry import create_method

if TYPE_CHECKING:
    from torch import Tensor, nn

# geometries whose methods are computed together, sharing slices and classifier passes
SHARED_GEOMETRIES = (
    (SliceWiseCAM, slice_wise_heatmaps),
    (AveragedCAM, stacked_heatmaps),
    (VolumeCAM, volume_heatmaps),
)


def compute_heatmaps(
    specs: Sequence[str],
    volume: Tensor,
    model: nn.Module,
    config: TomographyConfig | None = None,
    batch_size: int = 64,
    options: Mapping[str, Mapping] | None = None,
) -> Iterator[tuple[str, Tensor]]:
    """(spec, heatmap [D,H,W]) for every spec on ``volume`` [C,D,H,W], group by group;
    ``options``: {spec: options of :func:`create_method`} (e.g. ``Method.fit_options``).

    Slice-wise and 3-axis CAMs share their slices and one forward/backward pass for all
    gradient CAMs and layers; Averaged and Tomographic CAMs likewise, and share their maps;
    3D CAMs share one forward/backward pass of the volume (``model`` is then the volume
    classifier: a call holds methods of one ``Method.classifier``).
    The heatmaps equal those of each method called alone. Other methods run one by one.
    """
    options = options or {}
    methods = [
        create_method(spec, config=config, batch_size=batch_size, **options.get(spec, {}))
        for spec in specs
    ]
    for base, compute in SHARED_GEOMETRIES:
        group = [m for m in methods if isinstance(m, base)]
        if group:
            yield from compute(group, volume, model).items()
    for method in methods:
        if not any(isinstance(method, base) for base, _ in SHARED_GEOMETRIES):
            yield method.spec, method(volume, model)

"""Heatmaps of many methods on one volume, sharing work: ``compute_heatmaps``, group by
group ``compute_groups``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from methods.cam3d import VolumeCAM, volume_heatmaps
from methods.cam_methods import AveragedCAM, SliceWiseCAM, slice_wise_heatmaps, stacked_heatmaps
from methods.config import TomographyConfig
from methods.registry import create_method

if TYPE_CHECKING:
    from torch import Tensor, nn

    from methods.registry import Method

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
    """(spec, heatmap [D,H,W]) for every spec on ``volume`` [C,D,H,W], group by group
    (:func:`compute_groups`); ``options``: {spec: options of :func:`create_method`} (e.g.
    ``Method.fit_options``)."""
    for _, heatmaps in compute_groups(specs, volume, model, config, batch_size, options):
        yield from heatmaps.items()


def compute_groups(
    specs: Sequence[str],
    volume: Tensor,
    model: nn.Module,
    config: TomographyConfig | None = None,
    batch_size: int = 64,
    options: Mapping[str, Mapping] | None = None,
) -> Iterator[tuple[list[Method], dict[str, Tensor]]]:
    """(methods, {spec: heatmap}) for each group of ``specs`` computed together: the
    methods of one geometry of :data:`SHARED_GEOMETRIES`, then every other method alone.

    Slice-wise and 3-axis CAMs share their slices and one forward/backward pass for all
    gradient CAMs and layers; Averaged and Tomographic CAMs likewise, and share their maps;
    3D CAMs share one forward/backward pass of the volume (``model`` is then the volume
    classifier: a call holds methods of one ``Method.classifier``).
    The heatmaps equal those of each method called alone.
    """
    options = options or {}
    methods = [
        create_method(spec, config=config, batch_size=batch_size, **options.get(spec, {}))
        for spec in specs
    ]
    for base, compute in SHARED_GEOMETRIES:
        group = [m for m in methods if isinstance(m, base)]
        if group:
            yield group, compute(group, volume, model)
    for method in methods:
        if not any(isinstance(method, base) for base, _ in SHARED_GEOMETRIES):
            yield [method], {method.spec: method(volume, model)}

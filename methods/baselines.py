"""Baselines every method must beat; neither uses the classifier (zero passes).

- ``intensity``: one channel of the volume, raw values: thresholding it is the classic
  baseline of PET lesion segmentation (SUV on AutoPET, the data set's
  ``intensity_channel``);
- ``centre``: a content-blind Gaussian prior, at the centre of the volume or, fitted to
  the training split, at the mean position of its lesion voxels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from foundation.lazy import lazy_import
from methods.registry import Method, Passes, register_method

if TYPE_CHECKING:
    from torch import Tensor, nn

np = lazy_import("numpy")  # the registry imports this module: keep it cheap
torch = lazy_import("torch")

DEFAULT_SIGMA = 0.5  # the prior's width per axis without training lesions, in [-1, 1] units
MIN_SIGMA = 0.05  # floor of a fitted width (~ a voxel of a 40-voxel axis)
DIGITS = 6  # fitted values are rounded: the same cache address on any machine


@register_method("intensity", title="Intensity")
class Intensity(Method):
    """Channel ``channel`` (an index, or a name of ``channels``) of the volume, raw values."""

    kind = "baseline"

    def __init__(
        self, channel: int | str = 0, channels: Sequence[str] | None = None, **kwargs: Any
    ):
        super().__init__(**kwargs)
        self.channel = channel_index(channel, channels)

    @classmethod
    def fit_options(cls, dataset: Any) -> dict[str, Any]:
        """The data set's ``intensity_channel`` (None: its first), among its channels."""
        return {"channel": dataset.intensity_channel or 0, "channels": list(dataset.channels)}

    def __call__(self, volume: Tensor, model: nn.Module) -> Tensor:
        if self.channel >= volume.shape[0]:
            raise ValueError(
                f"intensity: channel {self.channel} of a volume with {volume.shape[0]} channels"
            )
        return volume[self.channel].float().clone()

    def passes(self, shape: tuple[int, int, int], channels: int | None = None) -> Passes:
        return Passes(0)


def channel_index(channel: int | str, channels: Sequence[str] | None) -> int:
    """``channel`` as an index: a name is looked up in ``channels``; an index is checked
    against their number when they are given."""
    known = f" among {', '.join(channels)}" if channels is not None else ""
    if isinstance(channel, str):
        if channels is None:
            raise ValueError(
                f"intensity: channel {channel!r} by name needs the names (channels=...)"
            )
        if channel not in channels:
            raise ValueError(f"intensity: no channel {channel!r}{known}")
        return list(channels).index(channel)
    if channel < 0 or (channels is not None and channel >= len(channels)):
        raise ValueError(f"intensity: no channel {channel} (0-based){known}")
    return int(channel)


@register_method("centre", title="Centre prior")
class CentrePrior(Method):
    """exp(-sum_a (x_a - mean_a)^2 / (2 sigma_a^2)) on the volume's [-1, 1]^3 grid, whatever
    the volume shows: where lesions are expected, not where they are."""

    kind = "baseline"

    def __init__(
        self,
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        sigma: Sequence[float] = (DEFAULT_SIGMA,) * 3,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.mean, self.sigma = tuple(map(float, mean)), tuple(map(float, sigma))
        if len(self.mean) != 3 or not all(map(math.isfinite, self.mean)):
            raise ValueError(f"centre: mean must be 3 finite (d, h, w) values, got {mean!r}")
        if len(self.sigma) != 3 or not all(0 < s < math.inf for s in self.sigma):
            raise ValueError(f"centre: sigma must be 3 positive (d, h, w) values, got {sigma!r}")

    @classmethod
    def fit_options(cls, dataset: Any) -> dict[str, Any]:
        """The mean and standard deviation per axis of the training lesions' positions
        (:func:`fit_prior`); none (the centred default) when no training lesion is known."""
        from tqdm import tqdm

        ids = [
            v for v in dataset.ids("train") if dataset.label(v) == 1 and dataset.has_annotation(v)
        ]
        volumes = (dataset[v] for v in tqdm(ids, desc="centre: training lesions", leave=False))
        moments = [lesion_moments(v, dataset.annotation) for v in volumes]
        moments = [m for m in moments if m is not None]
        return fit_prior(moments) if moments else {}

    def __call__(self, volume: Tensor, model: nn.Module) -> Tensor:
        factors = [
            torch.exp(
                -((torch.linspace(-1.0, 1.0, n, device=volume.device) - m) ** 2) / (2 * s * s)
            )
            for n, m, s in zip(volume.shape[1:], self.mean, self.sigma, strict=True)
        ]
        return factors[0][:, None, None] * factors[1][None, :, None] * factors[2][None, None, :]

    def passes(self, shape: tuple[int, int, int], channels: int | None = None) -> Passes:
        return Passes(0)


def lesion_moments(volume: Any, annotation: str = "mask") -> np.ndarray | None:
    """[2, 3]: the mean and the mean square of the (d, h, w) normalised coordinates of the
    volume's lesion voxels (its mask, or its boxes filled, as ``annotation`` says); None
    when it has none. Only the annotation is read, not the image."""
    shape = volume.image.shape[1:]
    if annotation == "boxes":
        voxels = box_voxels(volume.boxes or [])
    else:
        voxels = np.nonzero(np.asarray(volume.mask)) if volume.mask is not None else ()
    if not voxels or not len(voxels[0]):
        return None
    coords = [np.linspace(-1.0, 1.0, n)[i] for n, i in zip(shape, voxels, strict=True)]
    return np.array([[c.mean() for c in coords], [(c * c).mean() for c in coords]])


def box_voxels(boxes: Sequence[Sequence[int]]) -> tuple[np.ndarray, ...]:
    """(d, h, w) indices of the voxels in the union of half-open boxes, each once."""
    if not boxes:
        return ()
    table = np.array(boxes, dtype=np.int64).reshape(-1, 3, 2)
    low, high = table[:, :, 0].min(0), table[:, :, 1].max(0)
    inside = np.zeros(high - low, dtype=bool)
    for box in table - low[:, None]:
        inside[tuple(slice(a, b) for a, b in box)] = True
    return tuple(i + o for i, o in zip(np.nonzero(inside), low, strict=True))


def fit_prior(moments: Sequence[np.ndarray]) -> dict[str, list[float]]:
    """``mean`` and ``sigma`` per axis of lesion positions drawn by picking a training
    volume, each with lesions equally likely, then one of its lesion voxels: the mixture
    of the volumes' :func:`lesion_moments`. Widths are floored at MIN_SIGMA."""
    first, second = np.mean(moments, axis=0)
    sigma = np.maximum(np.sqrt(np.maximum(second - first**2, 0.0)), MIN_SIGMA)
    return {
        "mean": [round(float(m), DIGITS) for m in first],
        "sigma": [round(float(s), DIGITS) for s in sigma],
    }

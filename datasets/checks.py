"""Checks of a preprocessed sample's values and annotation, and what ``verify`` returns.

Run by the base class after every adapter's ``_load``, so every adapter gets them:

- every voxel finite, and ``|x| <= max_abs`` after preprocessing (a voxel of 1e30 is a
  broken file, not an image; ``max_abs`` is an adapter option);
- a sample labelled 0 (negative) has an empty mask and no box: an annotation that
  contradicts the label is an error, not a silently scored case.

A positive with an empty annotation is legal but cannot be localised: ``verify`` reports
it (:attr:`SampleCheck.empty_truth`) so the runner excludes it from the localisation
scores explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from datasets.volume import DatasetError, Volume


@dataclass(frozen=True)
class SampleCheck:
    """A sample whose every voxel was read and checked (``VolumeDataset.verify``)."""

    id: str
    shape: tuple[int, ...]  # the preprocessed image's (C, D, H, W)
    fingerprint: str  # sha256 of the preprocessed image
    truth_fingerprint: str  # sha256 of the label and the preprocessed annotation
    empty_truth: bool  # a positive whose mask (or box list) is empty


def check_values(image: np.ndarray, names: list[str], max_abs: float) -> None:
    """Raise unless every voxel of ``image[C, ...]`` is finite with ``|x| <= max_abs``.

    ``names[c]`` names the file of channel ``c`` in the message.
    """
    for c, channel in enumerate(image):
        finite = np.isfinite(channel)
        n_bad = int(finite.size - np.count_nonzero(finite))
        if n_bad:
            raise DatasetError(
                f"{names[c]}: {n_bad} voxels are NaN or infinite after preprocessing"
            )
        big = np.abs(channel) > max_abs
        n_big = int(np.count_nonzero(big))
        if n_big:
            peak = float(np.abs(channel).max())
            raise DatasetError(
                f"{names[c]}: {n_big} voxels with |value| > {max_abs:.0e} (max {peak:.2g}) "
                f"after preprocessing; fix the file or raise --dataset-option max_abs=..."
            )


def check_truth(volume: Volume, truth_name: str | None = None) -> None:
    """Raise if ``volume`` is labelled 0 but its mask marks voxels or it has boxes;
    ``truth_name`` names the mask file or box table in the message."""
    if volume.label != 0:
        return
    negative = f"{volume.id} is labelled 0 (negative) but"
    if volume.mask is not None:
        marked = int(np.count_nonzero(volume.mask))
        if marked:
            mask = f"its mask {truth_name}" if truth_name else "its mask"
            raise DatasetError(f"{negative} {mask} marks {marked} voxels")
    if volume.boxes:
        source = f"{truth_name} gives it" if truth_name else "it has"
        raise DatasetError(f"{negative} {source} {len(volume.boxes)} box(es)")


def empty_truth(volume: Volume) -> bool:
    """Whether ``volume`` is a positive whose annotation exists but marks nothing."""
    if volume.label != 1:
        return False
    if volume.mask is not None:
        return not volume.mask.any()
    return volume.boxes is not None and len(volume.boxes) == 0

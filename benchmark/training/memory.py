"""A training run's volumes kept in memory: each read once, not once a step.

A step reads B volumes (A.6) and a validation every holdout volume, so over a run each
training volume is read hundreds of times. Reading one costs as much as a training step
for a data set generated in code (``brain``: 78 ms a volume, a 2D step 150 ms with two
threads; docs/decisions.md#training-volumes-in-memory) and more for files. The images are
kept, up to :data:`BUDGET` bytes, as the first reads come; what does not fit is read each
time as before. What the classifier sees does not change, only when it is read.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from datasets.volume import Volume

BUDGET = 2 * 2**30  # bytes of images kept: brain's 80 volumes take 83 MB


class InMemory:
    """``dataset`` whose volumes are kept after their first read, up to ``budget`` bytes.

    ``keeper[sample_id]`` is ``dataset[sample_id]`` with its image in memory (a float32
    copy: a memory-mapped image is read once too); everything else is the data set's own.
    Volumes are kept in the order they are first read; once the budget is full, others are
    read from the data set each time.
    """

    def __init__(self, dataset: Any, budget: int | None = None):
        self.dataset, self.budget = dataset, BUDGET if budget is None else budget
        self.kept: dict[str, Volume] = {}
        self.kept_bytes = 0

    def __getitem__(self, sample_id: str) -> Volume:
        volume = self.kept.get(sample_id)
        if volume is not None:
            return volume
        volume = self.dataset[sample_id]
        size = volume.image.size * np.dtype(np.float32).itemsize
        if self.kept_bytes + size <= self.budget:
            volume = copy.copy(volume)
            volume.image = np.array(volume.image, dtype=np.float32)
            self.kept[sample_id] = volume
            self.kept_bytes += size
        return volume

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

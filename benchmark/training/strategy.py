"""Which strategy :func:`benchmark.training.train.train` follows for a config: the 2D slice
classifier's (:class:`~benchmark.training.slices.SliceBatches`, A.6) for a
:class:`~benchmark.config.TrainConfig`, the 3D classifier's
(:class:`~benchmark.training.volumes.VolumeBatches`) for a :class:`~benchmark.config.Train3DConfig`;
and the config a checkpoint records.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from benchmark.config import Train3DConfig, TrainConfig
from benchmark.training.slices import SliceBatches
from benchmark.training.volumes import VolumeBatches


def batches_for(config: TrainConfig | Train3DConfig):
    """The strategy of :func:`~benchmark.training.train.train` for ``config``: 2D slices or
    3D volumes."""
    if isinstance(config, Train3DConfig):
        return VolumeBatches(config)
    return SliceBatches(config)


def config_from_record(fields: dict[str, Any]) -> TrainConfig | Train3DConfig:
    """The config of a checkpoint's recorded ``config`` (a 3D one has ``input_size``);
    fields this version does not know are left out, those it lacks take their defaults."""
    cls = Train3DConfig if "input_size" in fields else TrainConfig
    known = {f.name for f in dataclasses.fields(cls)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items() if k in known}
    return cls(**values)

"""Dataset adapters: every data set read into :class:`Volume` records.

This is the benchmark's own ``datasets`` package (not Hugging Face's); importing it is
cheap (no torch, no adapter): the adapters load on first use of the registry.
"""

from datasets.base import Record, VolumeDataset
from datasets.checks import SampleCheck
from datasets.registry import DATASETS, list_datasets, load_dataset, register_dataset
from datasets.volume import Box, DatasetError, Volume

__all__ = [
    "DATASETS",
    "Box",
    "DatasetError",
    "Record",
    "SampleCheck",
    "Volume",
    "VolumeDataset",
    "list_datasets",
    "load_dataset",
    "register_dataset",
]

"""The dataset registry: ``register_dataset``, ``load_dataset``, ``list_datasets``."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from foundation.registry import Registry

# Modules that register the built-in adapters; imported on the first registry query.
BUILTIN_MODULES: tuple[str, ...] = (
    "datasets.synthetic",
    "datasets.brain",
    "datasets.autopet",
    "datasets.mosmed",
    "datasets.duke",
    "datasets.folder",
)

DATASETS = Registry("dataset", BUILTIN_MODULES)


def register_dataset(name: str, **meta: Any) -> Callable[[type], type]:
    """Class decorator registering a dataset adapter under ``name``."""
    add = DATASETS.register(name, **meta)

    def decorator(cls: type) -> type:
        cls.name = name
        return add(cls)

    return decorator


def load_dataset(name: str, root: str | Path | None = None, **options: Any) -> Any:
    """Open the dataset ``name`` stored under ``root`` (adapter options as keywords)."""
    return DATASETS.entry(name).obj(root=root, **options)


def list_datasets(pattern: str | Iterable[str] = "*") -> list[str]:
    """Registered dataset names matching fnmatch ``pattern(s)``, naturally sorted."""
    return DATASETS.names(pattern)

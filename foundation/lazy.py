"""Deferred imports, so that registering names does not load torch (``ls`` stays fast)."""

from __future__ import annotations

import importlib
from typing import Any


class lazy_import:  # noqa: N801 - used like the module it stands for
    """Module ``name``, imported on first attribute access.

    A plain proxy rather than importlib's LazyLoader: a lazy module placed in
    ``sys.modules`` would be executed by anything scanning it (torch does, while it is
    itself half-imported), which breaks circular imports.
    """

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(importlib.import_module(self._name), attribute)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"

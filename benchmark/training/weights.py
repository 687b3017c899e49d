"""Files of pretrained weights (timm's or MedicalNet's, on the local disk), read safely:
``torch.load(..., weights_only=True)``, so that a pickle of anything but tensors and plain
containers is refused, never run; an unreadable file is a ValueError that names it.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

# what torch.load raises for a file that is not a state dict it loads safely
_UNREADABLE = (pickle.UnpicklingError, EOFError, RuntimeError, zipfile.BadZipFile, KeyError)


def read_weights(path: str | Path, what: str) -> dict[str, Any]:
    """A file of pretrained weights (``what``: whose, for the error), read with
    ``weights_only=True``: its mapping, or a ValueError naming the file (a pickle of
    anything but tensors and plain containers is refused, never run)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file ({what})")
    try:
        with warnings.catch_warnings():  # torch's on the pickle protocol: the error says it
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except _UNREADABLE as error:
        raise ValueError(
            f"{path}: not {what} that loads safely, a state dict of tensors (torch.load "
            f"refused it: {type(error).__name__})"
        ) from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not {what} (a {type(state).__name__}, not a state dict)")
    return state

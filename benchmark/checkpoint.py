"""The classifier checkpoint: one file, written atomically, read with ``weights_only=True``.

A checkpoint holds the model's weights, the optimiser, the schedule and the random state
(so that a killed training resumes to the same weights), the resolved training config,
the data set it was trained on (name, options and the content digest of its training
volumes) and, once training ends, ``finished: True``. Only a finished checkpoint whose
weights are all finite is ever reused.
"""

from __future__ import annotations

import hashlib
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmark.distributed import memory_format, resolve_device
from benchmark.io import atomic_write

CHECKPOINT = "checkpoint.pt"
_UNREADABLE = (pickle.UnpicklingError, EOFError, RuntimeError, zipfile.BadZipFile, KeyError)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save(state)`` through :func:`~benchmark.io.atomic_write`."""
    with atomic_write(path) as file:
        torch.save(state, file)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The saved state (CPU tensors, ``weights_only``); a ValueError naming the file if it
    is missing, damaged or not a checkpoint of this benchmark."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint {path}: train one with `python -m benchmark train`")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except _UNREADABLE as error:
        raise ValueError(f"{path} is not a readable checkpoint ({type(error).__name__})") from None
    missing = {"model", "config", "step", "arch", "norm", "in_chans"} - set(state)
    if not isinstance(state, dict) or missing:
        raise ValueError(f"{path} is not a checkpoint of this benchmark (lacks {sorted(missing)})")
    return state


def weights_finite(state: dict[str, Any]) -> bool:
    """Whether every floating-point tensor of the saved model is finite."""
    return all(
        bool(torch.isfinite(t).all()) for t in state["model"].values() if t.is_floating_point()
    )


def is_finished(path: str | Path) -> bool:
    """Whether ``path`` is a checkpoint whose training ended (all iterations, or stopped
    early when it stopped improving) with finite weights."""
    if not Path(path).is_file():
        return False
    state = read_checkpoint(path)
    finished = state.get("finished", state["step"] >= (state["config"]["iterations"] or 0))
    return bool(finished) and weights_finite(state)


def checkpoint_hash(path: str | Path, length: int = 16) -> str:
    """Truncated sha256 of the checkpoint file: a cache key for everything computed from it."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The trained classifier of a checkpoint, in eval mode on ``device``: the 2D slice
    classifier, or a :class:`~benchmark.classifier3d.VolumeClassifier` for a checkpoint of
    the 3D one (``classifier: "3d"``)."""
    state = read_checkpoint(path)
    if not weights_finite(state):
        raise ValueError(f"{path} holds non-finite weights: retrain the classifier")
    device = resolve_device(device)
    if state.get("classifier") == "3d":
        from benchmark.classifier3d import create_volume_classifier

        size = tuple(state["config"]["input_size"])
        model = create_volume_classifier(state["model_name"], state["in_chans"], size)
        spatial_dims = 3
    else:
        from benchmark.models import create_classifier

        model = create_classifier(
            state["arch"], state["in_chans"], norm=state["norm"], pretrained=False
        )
        spatial_dims = 2
    model.load_state_dict(state["model"])
    return model.to(device, memory_format=memory_format(device, spatial_dims)).eval()


def read_weights(path: str | Path, what: str) -> dict[str, Any]:
    """A file of pretrained weights (``what``: whose, for the error), read with
    ``weights_only=True``: its mapping, or a ValueError naming the file (a pickle of
    anything but tensors and plain containers is refused, never run)."""
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

"""The classifier checkpoint: one file, written atomically, read with ``weights_only=True``.

A checkpoint holds the model's weights, the optimiser, the schedule and the random state
(so that a killed training resumes to the same weights), the resolved training config,
the data set it was trained on (name, options and the content digest of its training
volumes) and, once training ends, ``finished: True``. Only a finished checkpoint whose
weights are all finite is ever reused.

It also holds ``digest``, the sha256 of everything else in it (:func:`state_digest`:
every tensor's dtype, shape and bytes, and every other value), written with it and checked
on every read: a flipped bit, a truncated file or one without a digest is a
:class:`DamagedCheckpoint`, never a classifier. The digest, not the file's bytes (torch
writes a new ``serialization_id`` into every file), is the checkpoint's identity
(:func:`checkpoint_id`), the same for a training that was killed and resumed as for an
uninterrupted one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmark.distributed import memory_format, resolve_device
from foundation.io import atomic_write

CHECKPOINT = "checkpoint.pt"
REQUIRED = {"model", "config", "step", "arch", "norm", "in_chans"}


class DamagedCheckpoint(ValueError):
    """A checkpoint that is unreadable, truncated, lacks its digest or does not match it:
    the message names the file."""


def _feed(digest, value: Any) -> None:
    """Feed ``value`` (tensors, dicts, lists, tuples, scalars) to ``digest``, unambiguously."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"tensor:{tensor.dtype}{list(tensor.shape)}:".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, dict):
        digest.update(f"dict:{len(value)}:".encode())
        for key in sorted(value, key=repr):
            _feed(digest, key)
            _feed(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"list:{len(value)}:".encode())
        for item in value:
            _feed(digest, item)
    elif value is None or isinstance(value, (bool, int, float, str)):
        digest.update(f"{type(value).__name__}:{value!r};".encode())
    else:
        raise TypeError(f"a checkpoint holds no {type(value).__name__}")


def state_digest(state: dict[str, Any]) -> str:
    """sha256 (hex) of a checkpoint's state, its ``digest`` left out: every tensor (dtype,
    shape, bytes) and every other value, dict keys in sorted order."""
    digest = hashlib.sha256()
    _feed(digest, {k: v for k, v in state.items() if k != "digest"})
    return digest.hexdigest()


def checkpoint_id(state: dict[str, Any]) -> str:
    """The identity of a checkpoint read by :func:`read_checkpoint`: its digest, truncated.
    A cache key for everything computed from it, and the results' ``checkpoint``."""
    return state["digest"][:16]


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` of ``state`` and its :func:`state_digest`, through
    :func:`~foundation.io.atomic_write`."""
    state = {**state, "digest": state_digest(state)}
    with atomic_write(path) as file:
        torch.save(state, file)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The saved state (CPU tensors, ``weights_only``), checked against its digest: a
    :class:`DamagedCheckpoint` naming the file if it is not, a ValueError if it is not a
    checkpoint of this benchmark, FileNotFoundError if missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint {path}: train one with `python -m benchmark train`")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, MemoryError):  # the machine's trouble, not the file's
        raise
    except Exception as error:  # a damaged zip or pickle can fail in any way
        raise DamagedCheckpoint(
            f"{path} is not a readable checkpoint ({type(error).__name__})"
        ) from None
    keys = set(state) if isinstance(state, dict) else set()
    foreign = ValueError(
        f"{path} is not a checkpoint of this benchmark (lacks {sorted(REQUIRED - keys)})"
    )
    if "digest" not in keys:
        if REQUIRED - keys:
            raise foreign
        raise DamagedCheckpoint(f"{path} has no digest of its tensors (written before them)")
    try:
        intact = state_digest(state) == state["digest"]
    except TypeError:  # a value no checkpoint of ours holds
        intact = False
    if not intact:
        raise DamagedCheckpoint(f"{path} does not match the digest of its tensors")
    if REQUIRED - keys:
        raise foreign
    return state


def weights_finite(state: dict[str, Any]) -> bool:
    """Whether every floating-point tensor of the saved model is finite."""
    return all(
        bool(torch.isfinite(t).all()) for t in state["model"].values() if t.is_floating_point()
    )


def is_finished(path: str | Path) -> bool:
    """Whether ``path`` is an intact checkpoint (not a :class:`DamagedCheckpoint`) whose
    training ended (all iterations, or stopped early when it stopped improving) with
    finite weights."""
    try:
        state = read_checkpoint(path)
    except (FileNotFoundError, DamagedCheckpoint):
        return False
    finished = state.get("finished", state["step"] >= (state["config"]["iterations"] or 0))
    return bool(finished) and weights_finite(state)


def load_classifier(
    path: str | Path, device: str | torch.device = "cpu", state: dict[str, Any] | None = None
) -> nn.Module:
    """The trained classifier of a checkpoint, in eval mode on ``device``: the 2D slice
    classifier, or a :class:`~benchmark.training.classifier3d.VolumeClassifier` for a checkpoint of
    the 3D one (``classifier: "3d"``). ``state``: the file as :func:`read_checkpoint` read
    it (None: read it)."""
    state = read_checkpoint(path) if state is None else state
    if not weights_finite(state):
        raise ValueError(f"{path} holds non-finite weights: retrain the classifier")
    device = resolve_device(device)
    if state.get("classifier") == "3d":
        from benchmark.training.classifier3d import create_volume_classifier

        size = tuple(state["config"]["input_size"])
        max_pool = state["config"].get("max_pool", True)  # older checkpoints: MedicalNet's stem
        model = create_volume_classifier(
            state["model_name"], state["in_chans"], size, max_pool=max_pool
        )
        spatial_dims = 3
    else:
        from benchmark.training.models import create_classifier

        model = create_classifier(
            state["arch"], state["in_chans"], norm=state["norm"], pretrained=False
        )
        spatial_dims = 2
    model.load_state_dict(state["model"])
    return model.to(device, memory_format=memory_format(device, spatial_dims)).eval()

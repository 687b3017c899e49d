"""Content hashes: of source files (sha256, streamed) and of preprocessed samples.

A sample's *fingerprint* is the sha256 of its preprocessed image (dtype, shape, bytes):
what the classifier and the heatmap methods see. Its *truth fingerprint* is the sha256
of its label and preprocessed annotation (mask bytes, boxes, or "none"): what the
protocol scores against. Downstream caches key on these, so they follow the content,
whatever the file names, options or adapter version.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

_CHUNK = 1 << 20
_file_memo: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256


def file_sha256(path: Path, size: int, mtime_ns: int) -> str:
    """sha256 of the file's bytes; memoised in-process by (path, size, mtime_ns)."""
    key = (str(path), size, mtime_ns)
    if key not in _file_memo:
        digest = hashlib.sha256()
        with open(path, "rb") as file:
            while chunk := file.read(_CHUNK):
                digest.update(chunk)
        _file_memo[key] = digest.hexdigest()
    return _file_memo[key]


def _update(digest, array: np.ndarray) -> None:
    """Feed dtype, shape and the C-order bytes of ``array`` to ``digest``."""
    array = np.ascontiguousarray(array)
    digest.update(f"{array.dtype.str}{list(array.shape)}".encode())
    digest.update(array.reshape(-1).view(np.uint8))


def image_fingerprint(image: np.ndarray) -> str:
    """sha256 of a preprocessed image as served: float32, its shape, its bytes."""
    digest = hashlib.sha256(b"image:")
    _update(digest, np.asarray(image, dtype=np.float32))
    return digest.hexdigest()


def truth_fingerprint(
    label: int, mask: np.ndarray | None, boxes: list[tuple[int, ...]] | None
) -> str:
    """sha256 of the label, the mask (bool bytes or "none") and the boxes (or "none")."""
    digest = hashlib.sha256(f"label:{int(label)};mask:".encode())
    if mask is None:
        digest.update(b"none")
    else:
        _update(digest, np.asarray(mask, dtype=bool))
    plain = None if boxes is None else [[int(v) for v in box] for box in boxes]
    digest.update(f";boxes:{json.dumps(plain)}".encode())
    return digest.hexdigest()

"""Sealed JSON: a cache file that carries the sha256 of its own content, checked on every read.

A sealed file is ``{"content": ..., "sha256": ...}``, the digest taken over the content's
canonical JSON (sorted keys, no spaces) and written atomically. A flipped byte that still
parses (a digit of a number, a letter of a label) changes the digest, so the reader gets
a ValueError naming the file, never the altered content. :func:`digest`, a truncated
sha256, names cache entries and the contexts they rest on.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from foundation.io import atomic_save_json


def _sha256(content: Any) -> str:
    text = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def digest(data: bytes | str, length: int = 16) -> str:
    """Truncated sha256 hex digest."""
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()[:length]


def save_sealed(path: str | Path, content: Any) -> None:
    """Write ``content`` (JSON values) sealed with its sha256, atomically."""
    content = json.loads(json.dumps(content))  # as it will read back (str keys, lists)
    atomic_save_json(path, {"content": content, "sha256": _sha256(content)})


def read_sealed(path: str | Path) -> Any:
    """The content of a sealed file: FileNotFoundError when missing, a ValueError naming
    the file when it is unreadable, not sealed or its content differs from its sha256."""
    try:
        sealed = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as error:  # UnicodeDecodeError, JSONDecodeError
        raise ValueError(f"{path} is unreadable ({error})") from error
    if not (isinstance(sealed, dict) and sealed.keys() == {"content", "sha256"}):
        raise ValueError(f"{path} is not sealed with the sha256 of its content")
    if _sha256(sealed["content"]) != sealed["sha256"]:
        raise ValueError(f"{path} does not match the sha256 it was sealed with")
    return sealed["content"]

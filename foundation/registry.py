"""Name -> class registries: wildcards, natural sort, close-match errors, lazy built-ins;
and :func:`convert_value`, which reads a registered class's options from text.

Modelled on timm's ``register_model`` / ``list_models`` and lm-evaluation-harness's
lazy registry: built-in modules are imported the first time a registry is queried, so
importing a package stays cheap until a name is actually needed.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class RegistryError(LookupError):
    """An unknown, malformed or duplicate registry name."""

    def __str__(self) -> str:  # LookupError would quote the message like a dict key
        return str(self.args[0])


def natural_key(name: str) -> list[int | str]:
    """Sort key that orders ``layercam@2`` before ``layercam@10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


@dataclass(frozen=True)
class Entry:
    """A registered object and the metadata given to the decorator."""

    name: str
    obj: Any
    meta: dict[str, Any] = field(default_factory=dict)


class Registry:
    """A registry of named objects of one kind ("method", "dataset")."""

    def __init__(self, kind: str, builtin_modules: Sequence[str] = ()):
        self.kind = kind
        self._builtin_modules = tuple(builtin_modules)
        self._entries: dict[str, Entry] = {}
        self._loaded = False

    def register(self, name: str, **meta: Any) -> Callable[[Any], Any]:
        """Class decorator: ``@registry.register("name", key=value)``."""
        if not _NAME.match(name):
            raise RegistryError(
                f"invalid {self.kind} name {name!r}: use lower-case letters, digits and '_', "
                "starting with a letter"
            )

        def decorator(obj: Any) -> Any:
            if name in self._entries:
                previous = self._entries[name].obj
                raise RegistryError(
                    f"{self.kind} {name!r} is already registered "
                    f"(by {previous.__module__}.{previous.__qualname__})"
                )
            self._entries[name] = Entry(name, obj, dict(meta))
            return obj

        return decorator

    def _load_builtins(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in self._builtin_modules:
                importlib.import_module(module)

    def entry(self, name: str) -> Entry:
        """The entry for ``name``; an unknown name raises with the closest matches."""
        self._load_builtins()
        if name not in self._entries:
            raise RegistryError(self._unknown_message(name))
        return self._entries[name]

    def names(self, patterns: str | Iterable[str] = "*") -> list[str]:
        """Registered names matching any fnmatch pattern, in natural order."""
        self._load_builtins()
        patterns = [patterns] if isinstance(patterns, str) else list(patterns)
        found = {n for n in self._entries for p in patterns if fnmatch.fnmatchcase(n, p)}
        return sorted(found, key=natural_key)

    def position(self, name: str) -> int:
        """``name``'s place in the order of registration (built-ins first, in module order)."""
        self.entry(name)
        return list(self._entries).index(name)

    def __len__(self) -> int:
        self._load_builtins()
        return len(self._entries)

    def __contains__(self, name: str) -> bool:
        self._load_builtins()
        return name in self._entries

    def no_match(self, pattern: str) -> RegistryError:
        """The error for a pattern that matches nothing: the close names of a plain name,
        the pattern and where to see every name for a wildcard."""
        if not any(c in pattern for c in "*?["):
            return RegistryError(self._unknown_message(pattern))
        self._load_builtins()
        return RegistryError(
            f"no {self.kind} matches {pattern!r} "
            f"(`python -m benchmark ls {self.kind}s` lists all {len(self._entries)})"
        )

    def _unknown_message(self, name: str) -> str:
        known = sorted(self._entries, key=natural_key)
        lower = name.lower()  # names are lower-case: LayerCAM is close to layercam
        close = difflib.get_close_matches(lower, known, n=5, cutoff=0.6)
        close += [k for k in known if lower and lower in k and k not in close][: 5 - len(close)]
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return (
            f"unknown {self.kind} {name!r}{hint} "
            f"(`python -m benchmark ls {self.kind}s` lists all {len(known)})"
        )


def convert_value(value: Any, annotation: Any, where: str) -> Any:
    """Convert ``value`` (from YAML or a ``key=value`` string) to the field's type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if value is None or annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return convert_value(value, inner[0], where) if len(inner) == 1 else value
    if origin in (tuple, list):
        if isinstance(value, str) and value.strip()[:1] == "[" and value.strip()[-1:] == "]":
            value = value.strip()[1:-1]  # a YAML flow list, [a, b], as the file would hold it
        items = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
        items = list(items) if isinstance(items, (list, tuple)) else [items]
        fixed = origin is tuple and len(args) > 1 and args[-1] is not Ellipsis
        if fixed and len(items) != len(args):
            raise ValueError(f"{where}: expected {len(args)} comma-separated values")
        item_type = args[0] if args else Any
        return origin(convert_value(v, item_type, where) for v in items)
    if annotation is bool:
        if isinstance(value, str):
            lowered = value.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"{where}: expected true/false, got {value!r}")
            return lowered in ("true", "1", "yes")
        return bool(value)
    if annotation is int and (
        isinstance(value, bool) or (isinstance(value, float) and not value.is_integer())
    ):
        raise ValueError(f"{where}: expected a whole number, got {value!r}")  # YAML 2.7, true
    try:
        converted = annotation(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: cannot read {value!r} as {annotation.__name__}") from error
    if annotation is float and math.isnan(converted):
        raise ValueError(f"{where}: expected a number, got nan")
    return converted

"""What a run computes: the specs of ``--methods`` and the volumes of a ``--shard``.

Light on purpose (no torch): the command checks these before anything heavy is imported.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from methods import METHODS, expand_specs, parse_spec, spec_tokens


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/4" -> (2, 4)``: shard 2 of 4, counted from 1."""
    index, sep, count = text.partition("/")
    if not (sep and index.isdigit() and count.isdigit() and 1 <= int(index) <= int(count)):
        raise ValueError(f"shard {text!r}: expected i/n with 1 <= i <= n, e.g. 1/4")
    return int(index), int(count)


def shard_ids(ids: Sequence[str], shard: tuple[int, int] | None) -> list[str]:
    """The volumes of shard (i, n): every n-th from the i-th (all of them without a shard).

    Shards split volumes, not specs: the specs of one volume share its slices and passes.
    """
    if shard is None:
        return list(ids)
    index, count = shard
    return list(ids[index - 1 :: count])


def select_specs(methods: Sequence[str], exclude: Sequence[str]) -> tuple[list[str], list[str]]:
    """(specs to run, specs left out) of ``methods`` (``expand_specs`` tokens).

    ``exclude`` patterns (fnmatch) drop the specs that ``all`` or a wildcard brought in
    when they match the spec (``scorecam@4``) or its method (``scorecam``, every layer),
    never those of a method named outright.
    """
    specs, left_out, exclude = [], [], spec_tokens(exclude)
    for token in spec_tokens(methods):
        broad = token == "all" or any(c in token for c in "*?[")
        for spec in expand_specs(token):
            if broad and (matches(spec, exclude) or matches(spec.partition("@")[0], exclude)):
                left_out.append(spec)
            elif spec not in specs:
                specs.append(spec)
    return specs, [s for s in dict.fromkeys(left_out) if s not in specs]


def matches(name: str, patterns: Sequence[str]) -> bool:
    """Whether ``name`` (a spec or a family) matches one of the fnmatch ``patterns``."""
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def check_reference(reference: str) -> str:
    """``--reference``: a registered method (``layercam``: its best layer on the page) or
    one of its specs (``layercam@2``); otherwise the registry's error, with close matches."""
    if "@" in reference:
        parse_spec(reference)
    else:
        METHODS.entry(reference)
    return reference

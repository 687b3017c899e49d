"""The data a training run reads: the held-out part of the train split, and the content digest
its checkpoint records (a resumed run whose data changed starts again)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmark.config import (
    TrainConfig,
)

log = logging.getLogger(__name__)


def holdout_split(
    ids: Sequence[str], labels: Sequence[int], fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """(kept, held out): ``fraction`` of each class held out for early stopping, at least 2.

    Stratified by label and seeded (numpy ``default_rng([seed, label])`` over the sorted
    ids of the class), so the split depends on the ids, not on their listing order. Each
    class keeps at least one training volume. ``fraction == 0``: nothing held out.
    """
    if fraction <= 0:
        return list(ids), []
    held: list[str] = []
    for label in (0, 1):
        members = sorted(i for i, y in zip(ids, labels, strict=True) if y == label)
        n = max(2, round(fraction * len(members)))
        if n >= len(members):
            raise ValueError(
                f"train: holdout={fraction} takes {n} of the {len(members)} training volumes "
                f"of class {label} (at least 2 are held out, 1 must stay): lower holdout or "
                "add training volumes"
            )
        order = np.random.default_rng([seed, label]).permutation(len(members))
        held += [members[k] for k in order[:n]]
    held_set = set(held)
    return [i for i in ids if i not in held_set], sorted(held)


def volume_fingerprints(dataset: Any, ids: Sequence[str]) -> dict[str, str]:
    """``{id: "label:content digest"}`` of training volumes; the id stands for the content
    when the data set offers no ``fingerprint(id)``."""
    fingerprint = getattr(dataset, "fingerprint", None)
    return {
        i: f"{int(dataset.label(i))}:{fingerprint(i) if fingerprint is not None else i}"
        for i in ids
    }


def data_digest(fingerprints: dict[str, str], holdout_ids: Sequence[str]) -> str:
    """sha256 over the sorted (id, label, fingerprint) of the training split and the sorted
    early-stopping holdout ids: what the classifier was trained on."""
    text = json.dumps([sorted(fingerprints.items()), sorted(holdout_ids)])
    return hashlib.sha256(text.encode()).hexdigest()


def split_ids(dataset: Any, config: TrainConfig) -> dict[str, Any]:
    """The training pools (positives, negatives), the early-stopping ``holdout``, the
    evaluation split ``val`` and the content ``fingerprints`` of the training split."""
    train_ids = list(dataset.ids("train"))
    labels = [int(dataset.label(i)) for i in train_ids]
    kept, holdout = holdout_split(train_ids, labels, config.holdout, config.seed)
    positives = [i for i in kept if dataset.label(i) == 1]
    negatives = [i for i in kept if dataset.label(i) == 0]
    if not positives or not negatives:
        raise ValueError(
            f"training needs positive and negative volumes, got {len(positives)} and "
            f"{len(negatives)} in the train split"
        )
    val_ids = list(dataset.ids("val"))
    if not val_ids:
        log.warning("no validation volumes: training without validation")
    return {
        "positives": positives,
        "negatives": negatives,
        "holdout": holdout,
        "val": val_ids,
        "train": train_ids,
    }


def dataset_info(dataset: Any) -> dict[str, Any]:
    """Name and options of the data set, as plain JSON types (for the checkpoint)."""
    options = dataset.options() if hasattr(dataset, "options") else {}
    return json.loads(
        json.dumps({"name": getattr(dataset, "name", ""), "options": options}, default=str)
    )


def data_record(dataset: Any, split: dict[str, Any]) -> dict[str, Any]:
    """``data_digest`` and per-volume ``data_volumes`` of the training data (checkpointed)."""
    fingerprints = volume_fingerprints(dataset, split["train"])
    return {
        "data_digest": data_digest(fingerprints, split["holdout"]),
        "data_volumes": fingerprints,
        "data_holdout": list(split["holdout"]),
    }

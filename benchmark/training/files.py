"""A training run's folder: the checkpoint saved and read back for resuming (set aside when it
is damaged or its data changed), the per-step log and the config it ran with."""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
from pathlib import Path
from typing import Any

from benchmark.config import (
    Train3DConfig,
    TrainConfig,
)
from benchmark.training.checkpoint import (
    DamagedCheckpoint,
    checkpoint_id,
    read_checkpoint,
    save_checkpoint,
    weights_finite,
)
from foundation.io import atomic_write

log = logging.getLogger(__name__)


VAL_SCORES = ("balanced_accuracy", "balanced_accuracy_at_0", "auc", "loss")


def load_for_resume(
    path: Path, batches, info: dict[str, Any], data: dict[str, Any], resume: bool
) -> dict[str, Any] | None:
    """The checkpoint to continue, or None to start; refuses to overwrite, to mix configs
    and to reuse non-finite weights; sets aside one trained on other data, and a damaged one
    (:class:`~benchmark.training.checkpoint.DamagedCheckpoint`) as ``checkpoint.unverified.pt``."""
    if not path.exists():
        if resume:
            log.info("no checkpoint at %s: starting from step 0", path)
        return None
    if not resume:
        raise ValueError(f"{path} exists: pass --resume to continue it, or choose another --out")
    try:
        state = read_checkpoint(path)
    except DamagedCheckpoint as damage:
        aside = path.with_name("checkpoint.unverified.pt")
        path.replace(aside)
        log.warning("%s: kept aside as %s; retraining from step 0", damage, aside.name)
        return None
    config, arch = batches.config, batches.record()["arch"]
    if state["config"].get("model") == config.model and state["arch"] != arch:
        # the variant's architecture changed: resnet50_gn was a converted resnet50
        raise ValueError(
            f"{path} holds a {state['arch']} classifier, but {config.model!r} is now timm's "
            f"{arch}: delete it, or choose another --out, to train the new one"
        )
    saved = {**batches.saved_defaults(state), **state["config"]}
    changed = {
        k: (saved.get(k), v) for k, v in dataclasses.asdict(config).items() if saved.get(k) != v
    }
    if changed or state["dataset"] != info:
        what = changed or {"dataset": (state["dataset"], info)}
        raise ValueError(f"{path} was trained with other settings (saved, now): {what}")
    if state.get("data_digest") != data["data_digest"]:
        set_aside(path, state, data)
        return None
    if not weights_finite(state):
        raise ValueError(
            f"{path} holds non-finite weights (step {state['step']}): it is not reused; "
            "delete it to retrain (with a lower lr if training diverged)"
        )
    return state


def set_aside(path: Path, state: dict[str, Any], data: dict[str, Any]) -> None:
    """Rename a checkpoint trained on other data to ``checkpoint.<digest[:8]>.pt``; warn."""
    old_digest = state.get("data_digest")
    tag = old_digest[:8] if old_digest else checkpoint_id(state)[:8]
    aside = path.with_name(f"checkpoint.{tag}.pt")
    new = data["data_volumes"]
    if "data_volumes" in state:
        old = state["data_volumes"]
        n_changed = sum(old.get(i) != v for i, v in new.items()) + len(set(old) - set(new))
        what = f"{n_changed} of {len(new)} training volumes changed (added, removed or new content)"
        if n_changed == 0:
            what = "the early-stopping holdout changed"
    else:
        what = "it predates content digests"
    path.replace(aside)
    log.warning(
        "%s was trained on other data (%s): kept aside as %s; retraining from step 0",
        path,
        what,
        aside.name,
    )


def save_run(path, model, optimizer, scheduler, generator, run, batches, meta) -> None:
    """Checkpoint (atomic, loadable with ``weights_only=True``) and ``train_log.csv``.

    ``meta``: the data set's name and options, ``in_chans`` and the :func:`data_record`.
    """
    state = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": generator.get_state(),
        "config": dataclasses.asdict(batches.config),
        **batches.record(),
        **meta,
        **run,
    }
    save_checkpoint(path, state)
    write_log(path.parent / "train_log.csv", run)


def write_log(path: Path, run: dict[str, Any]) -> None:
    """``step, loss, lr, val_*, holdout_*`` rows, one per logged or validated step."""
    rows: dict[int, dict[str, Any]] = {row["step"]: dict(row) for row in run["log"]}
    for prefix in ("val", "holdout"):
        for row in run.get(prefix, []):
            rows.setdefault(row["step"], {"step": row["step"]}).update(
                {f"{prefix}_{k}": row[k] for k in VAL_SCORES}
            )
    text = io.StringIO()
    columns = [f"{p}_{k}" for p in ("val", "holdout") for k in VAL_SCORES]
    writer = csv.DictWriter(text, ["step", "loss", "lr", *columns])
    writer.writeheader()
    writer.writerows(rows[step] for step in sorted(rows))
    with atomic_write(path, "w") as file:
        file.write(text.getvalue())


def write_config(
    out_dir: Path, config: TrainConfig | Train3DConfig, info: dict[str, Any], in_chans: int
):
    """``config.yaml``: the resolved training config, data set and channels (for humans)."""
    import yaml

    fields = dataclasses.asdict(config)
    fields.update({k: list(v) for k, v in fields.items() if isinstance(v, tuple)})
    with atomic_write(out_dir / "config.yaml", "w") as file:
        yaml.safe_dump(
            {"train": fields, "dataset": info, "in_chans": in_chans}, file, sort_keys=False
        )

"""Training of the 2D slice classifier on randomly oriented slices (paper 4.2, A.6).

Each step draws B volumes with replacement, alternately positive and negative, cuts M_train
augmented slices from each along one random direction (on the model's device, with the
tomography core) and takes one Adam step on the binary cross-entropy of every slice against
its volume's label. A volume's prediction is the max of its slice logits (A.6).

All randomness comes from one CPU ``torch.Generator`` seeded by the config, whose state is
checkpointed with the model, the optimiser and the schedule: resuming a killed run gives
the same weights as an uninterrupted one (exactly on the CPU).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from benchmark.checkpoint import CHECKPOINT, read_checkpoint, save_checkpoint
from benchmark.config import PAPER_ITERATION_FACTOR, PAPER_ITERATIONS, TrainConfig
from benchmark.distributed import memory_format, resolve_device
from benchmark.io import atomic_write
from benchmark.models import create_classifier, model_spec
from methods.tomography import autocast, extract_slices, orthonormal_frames, slice_offsets

log = logging.getLogger(__name__)

VAL_SCORES = ("balanced_accuracy", "balanced_accuracy_at_0", "auc")


def _uniform(shape: tuple[int, ...], half_width: float, generator: torch.Generator) -> Tensor:
    """U(-half_width, half_width) on the CPU, float64."""
    return half_width * (2.0 * torch.rand(shape, generator=generator, dtype=torch.float64) - 1.0)


def sample_training_slices(
    volume: Tensor,
    n_slices: int,
    size: int,
    generator: torch.Generator,
    *,
    scale: float = 0.3,
    translation: float = 0.3,
    intensity: float = 0.3,
) -> tuple[Tensor, dict[str, Tensor]]:
    """A.6: ``n_slices`` augmented slices of one volume [C,D,H,W] -> [M, C, size, size].

    One normal n uniform on the sphere; offsets s_m evenly across [-1, 1]; per slice, a
    random orthonormal in-plane frame (u^, v^) (A.1) whose vectors are scaled by lengths in
    [1 - scale, 1 + scale] (anisotropic zoom), a centre shifted in-plane by
    t_u u^ + t_v v^ with t ~ U(-translation, translation), and intensities mapped by
    y = (1 + a) x + b with a, b ~ U(-intensity, intensity) (all channels alike). Parameters
    are drawn on the CPU from ``generator`` and returned (float64, CPU) with the slices.
    """
    normal = F.normalize(torch.randn(1, 3, generator=generator, dtype=torch.float64), dim=-1)
    u_hat, v_hat = orthonormal_frames(normal.expand(n_slices, 3), generator)
    lengths = 1.0 + _uniform((n_slices, 2), scale, generator)
    shifts = _uniform((n_slices, 2), translation, generator)
    gain = 1.0 + _uniform((n_slices,), intensity, generator)
    bias = _uniform((n_slices,), intensity, generator)
    u, v = u_hat * lengths[:, :1], v_hat * lengths[:, 1:]
    shift = shifts[:, :1] * u_hat + shifts[:, 1:] * v_hat
    offsets = slice_offsets(n_slices, padded=False)
    slices = extract_slices(
        volume, normal.float(), offsets, size, u[None].float(), v[None].float(), shift[None].float()
    )[0]
    slices = slices * gain.to(slices).view(-1, 1, 1, 1) + bias.to(slices).view(-1, 1, 1, 1)
    params = {
        "normal": normal[0],
        "offsets": offsets.double(),
        "u": u,
        "v": v,
        "lengths": lengths,
        "shifts": shifts,
        "gain": gain,
        "bias": bias,
    }
    return slices, params


def sample_volume_ids(
    positives: list[str], negatives: list[str], n: int, generator: torch.Generator
) -> list[str]:
    """``n`` ids with replacement, alternately positive and negative (A.6: one of each, B=2)."""
    pools = (positives, negatives)
    draws = torch.rand(n, generator=generator, dtype=torch.float64)
    return [pools[b % 2][int(r * len(pools[b % 2]))] for b, r in enumerate(draws.tolist())]


def sample_batch(
    dataset: Any,
    positives: list[str],
    negatives: list[str],
    config: TrainConfig,
    generator: torch.Generator,
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    """A.6 batch: B volumes x M_train slices [B*M, C, h, w] and each slice's volume label."""
    slices, labels = [], []
    for sample_id in sample_volume_ids(positives, negatives, config.batch_volumes, generator):
        volume_slices, _ = sample_training_slices(
            load_volume(dataset, sample_id, device),
            config.slices_per_volume,
            config.slice_size,
            generator,
            scale=config.scale,
            translation=config.translation,
            intensity=config.intensity,
        )
        slices.append(volume_slices)
        labels.append(torch.full((len(volume_slices),), float(dataset.label(sample_id))))
    return torch.cat(slices), torch.cat(labels).to(device)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    slices: Tensor,
    labels: Tensor,
) -> float:
    """One step (A.6): BCE of every slice's logit against its label, Adam, schedule; the loss."""
    model.train()
    with autocast(slices.device):
        logits = model(slices.contiguous(memory_format=memory_format(slices.device)))
    loss = F.binary_cross_entropy_with_logits(logits.float().squeeze(-1), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss.item()


def validation_slices(volume: Tensor, n_slices: int, size: int) -> Tensor:
    """The fixed validation slices of a volume: [3 * M, C, size, size].

    Three stacks of ``n_slices`` slices, evenly across [-1, 1], normal to the depth (axial:
    ``image[:, d]``), height and width axes, with fixed in-plane frames: no randomness.
    """
    normals = torch.eye(3)
    u, v = orthonormal_frames(normals)
    offsets = slice_offsets(n_slices, padded=False)
    return extract_slices(volume, normals, offsets, size, u, v).flatten(0, 1)


@torch.no_grad()
def slice_logits(model: nn.Module, slices: Tensor, chunk: int) -> Tensor:
    """Logits [N] of slices [N, C, h, w], ``chunk`` at a time, in eval mode."""
    model.eval()
    fmt = memory_format(slices.device)
    out = []
    for start in range(0, len(slices), chunk):
        with autocast(slices.device):
            out.append(model(slices[start : start + chunk].contiguous(memory_format=fmt)))
    return torch.cat(out).float().squeeze(-1)


def balanced_accuracy(labels: Tensor, predictions: Tensor) -> float:
    """Mean of the per-class recalls, (sensitivity + specificity) / 2, over the classes present."""
    labels, predictions = labels.bool(), predictions.bool()
    recalls = [
        (predictions[labels == c] == c).double().mean()
        for c in (True, False)
        if (labels == c).any()
    ]
    return float(sum(recalls) / len(recalls))


def roc_auc(labels: Tensor, scores: Tensor) -> float:
    """Probability that a positive scores above a negative (ties count half)."""
    pos, neg = scores[labels.bool()][:, None], scores[~labels.bool()][None]
    return float(((pos > neg).double() + 0.5 * (pos == neg).double()).mean())


def best_threshold(labels: Tensor, scores: Tensor) -> float:
    """The threshold t maximising the balanced accuracy of ``scores > t`` (middle of the ties)."""
    values = scores.double().sort().values
    candidates = torch.cat([values[:1] - 1, (values[1:] + values[:-1]) / 2, values[-1:] + 1])
    above = scores.double()[None] > candidates[:, None]  # [candidates, volumes]
    positive = labels.bool()
    accuracy = (above[:, positive].double().mean(1) + (~above[:, ~positive]).double().mean(1)) / 2
    best = candidates[accuracy == accuracy.max()]
    return float(best[len(best) // 2])


def cross_fitted_predictions(labels: Tensor, scores: Tensor, folds: int = 5) -> Tensor:
    """``scores > t``, each volume's t tuned on the other folds (stratified k-fold).

    As A.7 tunes its threshold on part of the validation set and scores the rest; volumes
    go to folds in turn within each class. Needs two volumes of each class.
    """
    smallest = int(min((labels == 0).sum(), (labels == 1).sum()))
    if smallest < 2:
        raise ValueError("a cross-fitted threshold needs two volumes of each class")
    folds = min(folds, smallest)
    fold = torch.empty(len(labels), dtype=torch.long)
    for c in (0, 1):
        members = (labels == c).nonzero()[:, 0]
        fold[members] = torch.arange(len(members)) % folds
    predictions = torch.zeros(len(labels), dtype=torch.bool)
    for k in range(folds):
        tune, held_out = fold != k, fold == k
        predictions[held_out] = scores[held_out] > best_threshold(labels[tune], scores[tune])
    return predictions


def validate(
    model: nn.Module, dataset: Any, ids: list[str], n_slices: int, size: int, chunk: int
) -> dict[str, Any]:
    """Volume logit = max of its validation slices' logits (A.6), and its scores.

    - ``balanced_accuracy``: each volume thresholded at the value tuned on the others
      (5-fold, :func:`cross_fitted_predictions`); NaN with fewer than two volumes a class;
    - ``balanced_accuracy_at_0``: max logit > 0, i.e. positive when one slice is. Fragile:
      a slice outside the body reads the same in both classes, so its optimal logit is 0
      and the max over the many slices of a negative volume hovers around 0;
    - ``auc``: threshold-free;
    - ``logits`` [V] and ``labels`` [V].
    """
    device = next(model.parameters()).device
    logits = torch.stack(
        [
            slice_logits(
                model, validation_slices(load_volume(dataset, i, device), n_slices, size), chunk
            ).max()
            for i in ids
        ]
    ).cpu()
    labels = torch.tensor([dataset.label(i) for i in ids])
    two_each = min((labels == 0).sum(), (labels == 1).sum()) >= 2
    return {
        "balanced_accuracy": (
            balanced_accuracy(labels, cross_fitted_predictions(labels, logits))
            if two_each
            else math.nan
        ),
        "balanced_accuracy_at_0": balanced_accuracy(labels, logits > 0),
        "auc": roc_auc(labels, logits),
        "logits": logits,
        "labels": labels,
    }


def load_volume(dataset: Any, sample_id: str, device: torch.device) -> Tensor:
    """``dataset[id].image`` as a float32 tensor [C,D,H,W] on ``device`` (a copy)."""
    image = np.array(dataset[sample_id].image, dtype=np.float32)
    return torch.from_numpy(image).to(device)


def resolve_iterations(config: TrainConfig, dataset_name: str) -> TrainConfig:
    """``iterations=None`` -> the paper's count for ``dataset_name`` and the architecture."""
    if config.iterations is not None:
        return config
    if dataset_name not in PAPER_ITERATIONS:
        raise ValueError(
            f"the paper gives no iteration count for {dataset_name!r} (only for "
            f"{sorted(PAPER_ITERATIONS)}): set iterations=N (--set iterations=N)"
        )
    factor = PAPER_ITERATION_FACTOR.get(model_spec(config.model).arch, 1.0)
    return dataclasses.replace(config, iterations=round(factor * PAPER_ITERATIONS[dataset_name]))


def _check(config: TrainConfig) -> None:
    """Reject settings that cannot train (at the boundary, with the field's name)."""
    for field in (
        "batch_volumes",
        "slice_size",
        "iterations",
        "val_every",
        "val_slices",
        "checkpoint_every",
        "log_every",
    ):
        if getattr(config, field) < 1:
            raise ValueError(f"train config: {field} must be >= 1, got {getattr(config, field)}")
    for field in ("slices_per_volume", "val_slices"):
        if getattr(config, field) < 2:
            raise ValueError(f"train config: {field} must be >= 2 (offsets span [-1, 1])")
    for field in ("scale", "intensity"):
        if not 0 <= getattr(config, field) < 1:
            raise ValueError(f"train config: {field} must be in [0, 1)")


def _split_ids(dataset: Any) -> tuple[list[str], list[str], list[str]]:
    """(train positives, train negatives, val ids); training needs both classes."""
    train_ids = dataset.ids("train")
    positives = [i for i in train_ids if dataset.label(i) == 1]
    negatives = [i for i in train_ids if dataset.label(i) == 0]
    if not positives or not negatives:
        raise ValueError(
            f"training needs positive and negative volumes, got {len(positives)} and "
            f"{len(negatives)} in the train split"
        )
    val_ids = dataset.ids("val")
    if not val_ids:
        log.warning("no validation volumes: training without validation")
    return positives, negatives, val_ids


def build_model(config: TrainConfig, in_chans: int, *, initial: bool = True) -> nn.Module:
    """The classifier of ``config``, seeded; ``initial=False`` skips the pretrained weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        if initial:
            return create_classifier(
                config.model, in_chans, pretrained=config.pretrained, weights=config.weights
            )
        spec = model_spec(config.model, pretrained=False)
        return create_classifier(spec.arch, in_chans, norm=spec.norm, pretrained=False)


def _dataset_info(dataset: Any) -> dict[str, Any]:
    """Name and options of the data set, as plain JSON types (for the checkpoint)."""
    options = dataset.options() if hasattr(dataset, "options") else {}
    return json.loads(
        json.dumps({"name": getattr(dataset, "name", ""), "options": options}, default=str)
    )


def train(
    dataset: Any,
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> Path:
    """Train the classifier of ``config`` on ``dataset``; the path of the final checkpoint.

    ``out_dir`` receives ``checkpoint.pt`` (every ``checkpoint_every`` steps and at the end),
    ``config.yaml`` and ``train_log.csv``. With ``resume``, an existing checkpoint of the
    same config and data set is continued to the same result; without it, an existing
    checkpoint is an error (nothing is overwritten).
    """
    out_dir = Path(out_dir)
    path = out_dir / CHECKPOINT
    info = _dataset_info(dataset)
    config = resolve_iterations(config, info["name"])
    _check(config)
    device = resolve_device(device)
    positives, negatives, val_ids = _split_ids(dataset)
    in_chans = len(dataset.channels)

    state = _load_for_resume(path, config, info, resume)
    model = build_model(config, in_chans, initial=state is None).to(device)
    model.to(memory_format=memory_format(device))
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.lr, betas=config.betas, eps=config.eps
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=config.iterations, eta_min=config.lr_min
    )
    generator = torch.Generator().manual_seed(config.seed)
    run = {"step": 0, "log": [], "val": [], "pending": []}
    if state is None:
        _write_config(out_dir, config, info, in_chans)
    else:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["rng"])
        run = {key: state[key] for key in run}
        log.info("resuming %s at step %d of %d", path, run["step"], config.iterations)

    chunk = config.batch_volumes * config.slices_per_volume
    bar = tqdm(
        total=config.iterations,
        initial=run["step"],
        desc=f"train {info['name']}",
        disable=not progress,
        dynamic_ncols=True,
    )
    postfix: dict[str, str] = {}
    for step in range(run["step"] + 1, config.iterations + 1):
        slices, labels = sample_batch(dataset, positives, negatives, config, generator, device)
        lr = scheduler.get_last_lr()[0]
        loss = train_step(model, optimizer, scheduler, slices, labels)
        run["step"] = step
        run["pending"].append(loss)
        last = step == config.iterations
        if step % config.log_every == 0 or last:
            mean_loss = sum(run["pending"]) / len(run["pending"])
            run["log"].append({"step": step, "loss": mean_loss, "lr": lr})
            run["pending"] = []
            postfix.update(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}")
        if val_ids and (step % config.val_every == 0 or last):
            result = validate(model, dataset, val_ids, config.val_slices, config.slice_size, chunk)
            scores = {k: result[k] for k in VAL_SCORES}
            run["val"].append({"step": step, **scores})
            log.info(
                "step %d: validation (%d volumes) %s",
                step,
                len(val_ids),
                ", ".join(f"{k} {v:.3f}" for k, v in scores.items()),
            )
            postfix.update(val_ba=f"{scores['balanced_accuracy']:.3f}")
        bar.set_postfix(postfix, refresh=False)
        if step % config.checkpoint_every == 0 or last:
            _save(path, model, optimizer, scheduler, generator, run, config, info, in_chans)
        bar.update()
    bar.close()
    return path


def _load_for_resume(
    path: Path, config: TrainConfig, info: dict[str, Any], resume: bool
) -> dict[str, Any] | None:
    """The checkpoint to continue, or None to start; refuses to overwrite or to mix configs."""
    if not path.exists():
        if resume:
            log.info("no checkpoint at %s: starting from step 0", path)
        return None
    if not resume:
        raise ValueError(f"{path} exists: pass --resume to continue it, or choose another --out")
    state = read_checkpoint(path)
    saved = state["config"]
    changed = {
        k: (saved.get(k), v) for k, v in dataclasses.asdict(config).items() if saved.get(k) != v
    }
    if changed or state["dataset"] != info:
        what = changed or {"dataset": (state["dataset"], info)}
        raise ValueError(f"{path} was trained with other settings (saved, now): {what}")
    return state


def _save(path, model, optimizer, scheduler, generator, run, config, info, in_chans) -> None:
    """Checkpoint (atomic, loadable with ``weights_only=True``) and ``train_log.csv``."""
    spec = model_spec(config.model)
    state = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": generator.get_state(),
        "config": dataclasses.asdict(config),
        "model_name": config.model,
        "arch": spec.arch,
        "norm": spec.norm,
        "in_chans": in_chans,
        "dataset": info,
        **run,
    }
    save_checkpoint(path, state)
    _write_log(path.parent / "train_log.csv", run)


def _write_log(path: Path, run: dict[str, Any]) -> None:
    """``step, loss, lr, val_*`` rows, one per logged or validated step."""
    rows: dict[int, dict[str, Any]] = {row["step"]: dict(row) for row in run["log"]}
    for row in run["val"]:
        rows.setdefault(row["step"], {"step": row["step"]}).update(
            {f"val_{k}": row[k] for k in VAL_SCORES}
        )
    text = io.StringIO()
    writer = csv.DictWriter(text, ["step", "loss", "lr", *(f"val_{k}" for k in VAL_SCORES)])
    writer.writeheader()
    writer.writerows(rows[step] for step in sorted(rows))
    with atomic_write(path, "w") as file:
        file.write(text.getvalue())


def _write_config(out_dir: Path, config: TrainConfig, info: dict[str, Any], in_chans: int):
    """``config.yaml``: the resolved training config, data set and channels (for humans)."""
    import yaml

    fields = dataclasses.asdict(config)
    fields["betas"] = list(config.betas)
    with atomic_write(out_dir / "config.yaml", "w") as file:
        yaml.safe_dump(
            {"train": fields, "dataset": info, "in_chans": in_chans}, file, sort_keys=False
        )

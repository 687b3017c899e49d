"""Training of the classifier: the 2D slice classifier on randomly oriented slices (paper
4.2, A.6) or the 3D one on whole volumes, in one loop.

Each step draws a batch (:mod:`benchmark.training.slices`: B volumes with replacement,
alternately positive and negative, M_train augmented slices from each along one random
direction; :mod:`benchmark.training.volumes` for the 3D classifier;
:func:`~benchmark.training.strategy.batches_for` picks) and takes one Adam step on the
binary cross-entropy of every input against its volume's label. A volume's prediction is
the max of its slice logits (A.6).

All randomness comes from one CPU ``torch.Generator`` seeded by the config, whose state is
checkpointed with the model, the optimiser and the schedule: resuming a killed run gives
the same weights as an uninterrupted one (exactly on the CPU). Under torchrun every rank
draws the whole batch from that generator and cuts its share of the volumes (DDP).

Trust (beyond the paper): a non-finite batch, loss, gradient or weight stops training
with the step and the volumes; the checkpoint records a content digest of the training
data and is set aside, not reused, when the data change, or when it does not match the
digest of its own tensors (:mod:`benchmark.training.checkpoint`); ``holdout``/``patience`` stop
training once a held-out part of the train split is classified as well as it will be;
:func:`~benchmark.training.scoring.classifier_report` says whether the classifier beats chance on
the evaluation split.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from benchmark.config import (
    PAPER_ITERATION_FACTOR,
    PAPER_ITERATIONS,
    Train3DConfig,
    TrainConfig,
    check_config,
)
from benchmark.distributed import (
    Context,
    memory_format,
    precision_autocast,
    resolve_device,
    training_precision,
)
from benchmark.protocol.stats import bootstrap_ci
from benchmark.training.checkpoint import (
    CHECKPOINT,
)
from benchmark.training.data import data_record, dataset_info, split_ids
from benchmark.training.files import VAL_SCORES, load_for_resume, save_run, write_config
from benchmark.training.memory import InMemory
from benchmark.training.models import model_spec
from benchmark.training.scoring import auc_or_nan, validation_scores, window_above_chance
from benchmark.training.slices import BatchPlan, slice_loss
from benchmark.training.strategy import batches_for
from foundation.io import file_lock

log = logging.getLogger(__name__)

# the progress bar of a training that stops early: no time "remaining" to the cap
EARLY_STOPPING_BAR = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, {rate_fmt}{postfix}]"
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class StepCheck:
    """Hooks of :func:`train_step` that stop a diverging step before it updates the model.

    ``loss(value)`` sees the batch's mean loss before the backward pass and returns the loss
    to report (the mean over every rank's slices under DDP); ``gradients(model)`` sees the
    (DDP-averaged) gradients before the optimiser step. Either raises to stop.
    """

    loss: Callable[[float], float]
    gradients: Callable[[nn.Module], None]


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    slices: Tensor,
    labels: Tensor,
    check: StepCheck | None = None,
    *,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = slice_loss,
    precision: str = "auto",
) -> float:
    """One step: ``loss_fn`` of the logits [N] and labels [N] (A.6: :func:`slice_loss`),
    Adam, schedule; the loss. ``precision``: as :func:`training_precision` resolves it.

    With ``check`` (:class:`StepCheck`), a non-finite loss or gradient raises before the
    update: no weight is changed by a diverged batch.
    """
    model.train()
    device = slices.device
    with precision_autocast(device, training_precision(device, precision)):
        fmt = memory_format(device, slices.dim() - 2)
        logits = model(slices.contiguous(memory_format=fmt))
    loss = loss_fn(logits.float().squeeze(-1), labels)
    reported = loss.item() if check is None else check.loss(loss.item())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if check is not None:
        check.gradients(model)
    optimizer.step()
    scheduler.step()
    return reported


def resolve_iterations(config: TrainConfig, dataset_name: str) -> TrainConfig:
    """``iterations=None`` -> the paper's count for ``dataset_name`` and the architecture."""
    if config.iterations is not None:
        return config
    if dataset_name not in PAPER_ITERATIONS:
        raise ValueError(
            f"the paper gives no iteration count for {dataset_name!r} (only for "
            f"{sorted(PAPER_ITERATIONS)}): set iterations=N (--set train.iterations=N)"
        )
    factor = PAPER_ITERATION_FACTOR.get(model_spec(config.model).arch, 1.0)
    return dataclasses.replace(config, iterations=round(factor * PAPER_ITERATIONS[dataset_name]))


def _check(config: TrainConfig | Train3DConfig, world_size: int = 1) -> None:
    """Reject settings that cannot train (at the boundary, with the field's name): each
    field's range (:func:`~benchmark.config.check_config`), then the fields together."""
    check_config(config)
    batches_for(config).check()
    if config.patience and not config.holdout:
        raise ValueError(
            "train config: early stopping (patience > 0) needs a holdout > 0 to validate on"
        )
    if config.batch_volumes % world_size:
        raise ValueError(
            f"train config: batch_volumes={config.batch_volumes} does not split evenly across "
            f"{world_size} ranks: use a multiple of {world_size} (or another --nproc-per-node)"
        )


def train(
    dataset: Any,
    config: TrainConfig | Train3DConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    device: str | torch.device = "auto",
    progress: bool = True,
    context: Context | None = None,
    monitor: Callable[[int, nn.Module], None] | None = None,
) -> Path:
    """Train the classifier of ``config`` on ``dataset``; the path of the final checkpoint.

    A :class:`TrainConfig` trains the 2D slice classifier (A.6), a :class:`Train3DConfig`
    the 3D one on whole volumes (beyond the paper), in the same loop
    (:func:`~benchmark.training.strategy.batches_for`).

    ``out_dir`` receives ``checkpoint.pt`` (every ``checkpoint_every`` steps and at the end),
    ``config.yaml`` and ``train_log.csv``. With ``resume``, an existing checkpoint of the
    same config, data set and training data (content digest) is continued to the same
    result, or reused when finished; one trained on other data is kept aside as
    ``checkpoint.<digest[:8]>.pt`` and training restarts, and so does a damaged one
    (unreadable, truncated, or not matching the digest of its tensors: a WARNING names it,
    kept aside as ``checkpoint.unverified.pt``); without ``resume``, an existing
    checkpoint is an error (nothing is overwritten).

    A non-finite input batch or loss stops training with a ValueError naming the step and
    the batch's volumes; non-finite weights are never saved. With ``holdout``/``patience``
    (beyond the paper) ``iterations`` is a cap: training stops once the holdout AUC has not
    improved by ``min_delta`` for ``patience`` validations (``stopped_early`` in the
    checkpoint). Under a distributed ``context`` (torchrun) the global batch of A.6 is split
    across the ranks and the model wrapped in DistributedDataParallel; rank 0 writes.
    ``monitor(step, model)`` is called at every validation and at the end (``bench train``
    scores the evaluation split there; training never sees what it does).

    Processes training into one ``out_dir`` take turns: rank 0 holds the folder's
    ``checkpoint.lock`` (:func:`~foundation.io.file_lock`) while it trains, so that with
    ``resume`` the one that waited reuses (or continues) the other's checkpoint.
    """
    context = context or Context(device=resolve_device(device))
    lock = Path(out_dir) / "checkpoint.lock"
    waiting = f"another process trains into {out_dir}: waiting for it to finish"
    with file_lock(lock, waiting) if context.is_main else contextlib.nullcontext():
        return _train(dataset, config, Path(out_dir), resume, progress, context, monitor)


def _train(
    dataset: Any,
    config: TrainConfig | Train3DConfig,
    out_dir: Path,
    resume: bool,
    progress: bool,
    context: Context,
    monitor: Callable[[int, nn.Module], None] | None,
) -> Path:
    """:func:`train`, with its folder's lock held."""
    path, device = out_dir / CHECKPOINT, context.device
    dataset = InMemory(dataset)
    info = dataset_info(dataset)
    config = resolve_iterations(config, info["name"])
    _check(config, context.world_size)
    batches = batches_for(config)
    split = split_ids(dataset, config)
    in_chans = len(dataset.channels)
    data = _on_main(context, lambda: data_record(dataset, split))
    state = _on_main(context, lambda: load_for_resume(path, batches, info, data, resume))
    if state is not None and state.get("finished", state["step"] >= config.iterations):
        log.info("%s is finished (step %d): reusing it", path, state["step"])
        return path

    model = batches.build_model(in_chans, initial=state is None).to(device)
    model.to(memory_format=memory_format(device, batches.spatial_dims))
    optimizer, scheduler = optimiser(model, config)
    generator = torch.Generator().manual_seed(config.seed)
    run = _new_run()
    if state is None:
        if context.is_main:
            write_config(out_dir, config, info, in_chans)
    else:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["rng"])
        run = {key: state.get(key, default) for key, default in run.items()}
        log.info("resuming %s at step %d of %d", path, run["step"], config.iterations)
    if split["holdout"]:
        log.info(
            "early stopping on %d held-out training volumes (%s): validating every %d steps, "
            "stopping after %s validations without an AUC gain >= %g, at most %d steps",
            len(split["holdout"]),
            ", ".join(split["holdout"]),
            config.val_every,
            config.patience or "no (patience 0)",
            config.min_delta,
            config.iterations,
        )
    # what "auto" meant here: bf16 or float32 steps give different weights
    precision = training_precision(device, config.precision)
    meta = {"dataset": info, "in_chans": in_chans, "precision_used": precision, **data}
    net = _distributed_model(model, context)
    loop = _Loop(dataset, batches, split, context, model, run, scheduler)
    stops_early = config.patience > 0  # _check: only with a holdout
    with tqdm(
        total=config.iterations,
        initial=run["step"],
        desc=f"train {info['name']}" + " (stops early; the total is the cap)" * stops_early,
        disable=not (progress and context.is_main),
        dynamic_ncols=True,
        bar_format=EARLY_STOPPING_BAR if stops_early else None,
    ) as bar:  # closed on an error too: the error line starts on a line of its own
        for step in range(run["step"] + 1, config.iterations + 1):
            plan = batches.draw(split["positives"], split["negatives"], generator)
            positions = context.share(range(config.batch_volumes))
            inputs, labels = batches.cut(dataset, plan, positions, device)
            loop.check_inputs(step, plan, positions, inputs)
            lr = optimizer.param_groups[0]["lr"]
            check = loop.step_check(step, plan)
            loss = train_step(
                net,
                optimizer,
                scheduler,
                inputs,
                labels,
                check,
                loss_fn=batches.loss,
                precision=config.precision,
            )
            loop.check_weights(step, plan)  # e.g. batch-norm statistics overflowed
            loop.record_loss(step, loss, lr)
            finished = loop.validate(step)
            if monitor is not None and (step % config.val_every == 0 or finished):
                monitor(step, model)
            if step % config.checkpoint_every == 0 or finished:
                if context.is_main:
                    save_run(path, model, optimizer, scheduler, generator, run, batches, meta)
                context.barrier()
            bar.set_postfix(loop.postfix, refresh=False)
            bar.update()
            if finished:
                break
    return path


def training_summary(state: dict[str, Any]) -> str:
    """What a checkpoint's training did, in a few words: its steps, why it ended, the
    weights kept and the precision its steps ran in."""
    cap = state["config"]["iterations"]
    ended = "stopped early" if state.get("stopped_early") else f"cap {cap}"
    best = state.get("best")
    kept = (
        f", weights of step {best['step']} kept (held-out AUC {best['auc']:.3f}, loss "
        f"{best['loss']:.3f})"
        if best
        else ""
    )
    return f"{state['step']} steps ({ended}){kept}, {state.get('precision_used', 'float32')}"


def optimiser(model: nn.Module, config: TrainConfig | Train3DConfig) -> tuple[Any, Any]:
    """Adam and the learning-rate schedule, updated every step: ``warmup`` steps of linear
    warm-up, then ``cosine`` from lr to lr_min over the remaining ``iterations`` (A.6), or
    ``constant`` lr, or ``plateau`` (constant but halved by :meth:`_Loop._early_stopping`
    on a plateau), so that no schedule ends before early stopping does."""
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.lr, betas=config.betas, eps=config.eps
    )
    if config.schedule == "cosine" and not config.warmup:  # A.6 exactly
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=config.iterations, eta_min=config.lr_min
        )
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate(config))
    return optimizer, scheduler


def learning_rate(config: TrainConfig | Train3DConfig) -> Callable[[int], float]:
    """The factor of lr at a step (LambdaLR): linear warm-up, then cosine or constant (a
    plateau's halvings scale LambdaLR's ``base_lrs``, which its state_dict keeps).

    A function, not a callable object: LambdaLR would checkpoint an object's attributes (the
    config), which ``torch.load(weights_only=True)`` refuses to read back.
    """

    def factor(step: int) -> float:
        if step < config.warmup:
            return (step + 1) / config.warmup
        if config.schedule != "cosine":
            return 1.0
        progress = (step - config.warmup) / max(config.iterations - config.warmup, 1)
        floor = config.lr_min / config.lr
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def _new_run() -> dict[str, Any]:
    """The loop's state, saved in the checkpoint: logs, validations, early-stopping counters
    and, while training with a holdout, the best weights so far (``best_model``)."""
    return {
        "step": 0,
        "log": [],
        "val": [],
        "pending": [],
        "holdout": [],
        "best": None,  # step, criterion, loss and whether above chance, of the kept weights
        "best_model": None,
        "stale": 0,
        "finished": False,
        "stopped_early": None,
    }


def _distributed_model(model: nn.Module, context: Context) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel when there are several ranks.

    DDP averages the gradients of the ranks' mean losses: with equal shares, the gradient
    of the mean loss over the global batch, as in one process. Batch norm in training mode
    (``*_bn``) would normalise each rank's share alone; the paper's variants freeze it or
    use group norm, which do not depend on the batch.
    """
    if not context.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [context.device.index] if context.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def _on_main(context: Context, decide: Callable[[], T]) -> T:
    """``decide()`` on rank 0, its result (or its error) on every rank."""
    if not context.distributed:
        return decide()
    outcome: tuple[str, Any] = ("ok", None)
    if context.is_main:
        try:
            outcome = ("ok", decide())
        except Exception as error:  # shared so that no rank waits for a dead rank 0
            context.broadcast(("error", f"{type(error).__name__}: {error}"))
            raise
    kind, value = context.broadcast(outcome if context.is_main else None)
    if kind == "error":
        raise ValueError(f"rank 0: {value}")
    return value


def _all_finite(tensors) -> bool:
    """Whether every element of every tensor is finite (one device sync, not one a tensor)."""
    flags = [t.isfinite().all() for t in tensors]
    return not flags or bool(torch.stack(flags).all())


class _Loop:
    """Per-step checks, logging and validation of :func:`train` (the same on every rank)."""

    def __init__(self, dataset, batches, split, context, model, run, scheduler):
        self.dataset, self.batches, self.config, self.split = (
            dataset,
            batches,
            batches.config,
            split,
        )
        self.context, self.model, self.run, self.scheduler = context, model, run, scheduler
        self.postfix: dict[str, str] = {}

    def check_inputs(self, step: int, plan: BatchPlan, positions, inputs: Tensor) -> None:
        """Every rank's inputs are finite, else a ValueError naming the step and volumes."""
        per_volume = inputs.reshape(len(positions), -1)
        finite = per_volume.isfinite().all(1).tolist()  # one device sync
        bad = [plan.ids[b] for b, ok in zip(positions, finite, strict=True) if not ok]
        if not self.context.sum([len(bad)])[0]:
            return
        bad = sorted({i for part in self.context.gather(bad) for i in part})
        raise ValueError(
            f"training input at step {step}: non-finite {self.batches.unit} values from volume(s) "
            f"{', '.join(bad)} (NaN/inf voxels, or values beyond float32): fix their "
            "preprocessing or leave them out of the train split"
        )

    def step_check(self, step: int, plan: BatchPlan) -> StepCheck:
        """The :class:`StepCheck` of ``step``: the global mean loss, or a ValueError."""

        def loss(value: float) -> float:
            total = self.context.sum([value])[0] / self.context.world_size
            if not math.isfinite(total):
                raise ValueError(self._diverged(step, plan, f"non-finite loss ({total})"))
            return total

        def gradients(model: nn.Module) -> None:
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            if not _all_finite(grads):  # the same on every rank
                raise ValueError(self._diverged(step, plan, "non-finite gradients"))

        return StepCheck(loss, gradients)

    def check_weights(self, step: int, plan: BatchPlan) -> None:
        """Stop on non-finite weights or buffers after the update (identical on every rank
        under DDP), so that they are never checkpointed."""
        if not _all_finite(t for t in self.model.state_dict().values() if t.is_floating_point()):
            raise ValueError(self._diverged(step, plan, "non-finite weights after the update"))

    def _diverged(self, step: int, plan: BatchPlan, what: str) -> str:
        """One line: the step, the batch's volumes, the one of largest magnitude, a hint."""
        peaks = {i: float(np.abs(np.asarray(self.dataset[i].image)).max()) for i in plan.ids}
        worst = max(peaks, key=peaks.get)
        precision = training_precision(self.context.device, self.config.precision)
        section = "train3d" if isinstance(self.config, Train3DConfig) else "train"
        in_bf16 = f", or train in float32 (--set {section}.precision=float32)" * (
            precision == "bfloat16"
        )
        return (
            f"training diverged at step {step}: {what} on a batch of volumes "
            f"{', '.join(plan.ids)}; the largest |value| is {peaks[worst]:.3g} in {worst}: "
            f"check that volume's preprocessing, or lower lr (now {self.config.lr:g}){in_bf16}"
        )

    def record_loss(self, step: int, loss: float, lr: float) -> None:
        """Mean loss over ``log_every`` steps into ``run["log"]``."""
        run = self.run
        run["step"] = step
        run["pending"].append(loss)
        if step % self.config.log_every == 0 or step == self.config.iterations:
            mean_loss = sum(run["pending"]) / len(run["pending"])
            run["log"].append({"step": step, "loss": mean_loss, "lr": lr})
            run["pending"] = []
            self.postfix.update(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}")

    def validate(self, step: int) -> bool:
        """Holdout and evaluation-split validations due at ``step``; whether training ends.

        Without a holdout, the evaluation split is validated every ``val_every`` steps and
        at the end (A.6, for the log only). With one, the holdout decides when to stop and
        which weights to keep (:meth:`_early_stopping`), and the evaluation split is scored
        once, at the end, with those weights (never used for a decision).
        """
        config, run = self.config, self.run
        due = step % config.val_every == 0 or step == config.iterations
        stop = bool(self.split["holdout"]) and due and self._early_stopping(step)
        finished = stop or step == config.iterations
        if finished and run["best_model"] is not None:
            self.model.load_state_dict(run["best_model"])
            run["best_model"] = None
            log.info("step %d: keeping the weights of step %d", step, run["best"]["step"])
        if self.split["val"] and ((due and not self.split["holdout"]) or finished):
            scores = self._scores(self.split["val"])
            run["val"].append({"step": step, **scores})
            log.info(
                "step %d: validation (%d volumes) %s",
                step,
                len(self.split["val"]),
                ", ".join(f"{k} {v:.3f}" for k, v in scores.items()),
            )
            self.postfix.update(val_ba=f"{scores['balanced_accuracy']:.3f}")
        run["finished"] = finished
        if stop:
            run["stopped_early"] = step
        elif finished and self.split["holdout"]:
            log.info("step %d: reached the cap of %d iterations", step, config.iterations)
        return finished

    def _scores(self, ids: list[str]) -> dict[str, float]:
        result = self._validate(ids)
        return {k: result[k] for k in VAL_SCORES}

    def _validate(self, ids: list[str]) -> dict[str, Any]:
        batches = self.batches
        logits = batches.volume_logits(self.model, self.dataset, ids, batches.chunk, self.context)
        return validation_scores(torch.tensor([self.dataset.label(i) for i in ids]), logits)

    def _early_stopping(self, step: int) -> bool:
        """Score the holdout and decide (beyond the paper), on its AUC and its loss (the mean
        BCE of the volume logits) each averaged over the last ``window`` validations
        (nothing is decided, nor kept, before the first ``window`` are in): the AUC of a
        dozen held-out volumes moves in steps of 1/36, can read 0.86 once by luck and
        saturates at 1 while the classifier still improves; the loss moves with every
        volume's margin.

        - An improvement is a mean AUC ``min_delta`` above its best so far, or a mean loss
          ``min_delta`` below its best so far; the weights of the last one are kept.
        - Training stops once ``patience`` validations brought none *and* the kept weights'
          window is above chance (the 95 % bootstrap interval of its mean AUC, resampling
          the held-out volumes, excludes 0.5: :func:`window_above_chance`), so that a
          classifier that has not learned trains on to the cap.
        - With ``schedule="plateau"`` and a ``patience``, every ``patience // 2``
          validations without one (at least 1) halve the learning rate (down to
          ``lr_min``) once the kept weights are above chance: a constant lr keeps the
          weights moving around a minimum, a smaller one settles them; a classifier that
          has not learned keeps its lr.
        """
        config, run = self.config, self.run
        result = self._validate(self.split["holdout"])
        labels, logits = result["labels"].numpy(), result["logits"].numpy()
        low, high = (float(x) for x in bootstrap_ci(auc_or_nan, labels, logits, n_resamples=1000))
        run["holdout"].append(
            {
                "step": step,
                **{k: float(result[k]) for k in VAL_SCORES},
                "auc_ci_low": low,
                "auc_ci_high": high,
                "logits": logits.tolist(),  # for window_above_chance
            }
        )
        recent = run["holdout"][-config.window :]
        seen = (
            f"step {step}: holdout AUC {result['auc']:.4f} [{low:.3f}, {high:.3f}], "
            f"loss {result['loss']:.4f}"
        )
        if len(recent) < config.window:  # two lucky validations are not a window of four
            log.info("%s; the window fills (%d of %d)", seen, len(recent), config.window)
            return False
        auc = float(np.mean([r["auc"] for r in recent]))
        loss = float(np.mean([r["loss"] for r in recent]))
        best = run["best"]
        gains = []
        if best is None or auc >= best["auc"] + config.min_delta:
            gains.append("AUC")
        if best is None or loss <= best["loss"] - config.min_delta:
            gains.append("loss")
        if gains:
            run["best"] = {
                "step": step,
                "auc": max(auc, best["auc"]) if best else auc,
                "loss": min(loss, best["loss"]) if best else loss,
                "above_chance": window_above_chance(labels, recent),
            }
            run["best_model"] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            run["stale"] = 0
            verdict = f"improved ({' and '.join(gains)})"
        else:
            run["stale"] += 1
            verdict = (
                f"no gain >= {config.min_delta:g} for {run['stale']} validations "
                f"(patience {config.patience})"
            )
            every = max(config.patience // 2, 1)
            halve = config.schedule == "plateau" and run["stale"] < config.patience
            if halve and run["stale"] % every == 0 and best["above_chance"]:
                verdict += f", lr halved to {self._halve_lr():.2e}"
        best = run["best"]
        self.postfix.update(holdout_auc=f"{auc:.3f}", holdout_loss=f"{loss:.3f}")
        stop = 0 < config.patience <= run["stale"] and step < config.iterations
        if stop:
            stop = best["above_chance"]
            verdict += (
                ", the kept weights above chance"
                if stop
                else ", but the kept weights are not above chance (the interval of their "
                "window's mean AUC includes 0.5): continuing"
            )
        smoothed = f"mean of {len(recent)}: " if config.window > 1 else ""
        log.info(
            "%s (%sAUC %.4f, loss %.4f), %s; kept step %d%s",
            seen,
            smoothed,
            auc,
            loss,
            verdict,
            best["step"],
            f": stopping early at step {step} of at most {config.iterations}" if stop else "",
        )
        return stop

    def _halve_lr(self) -> float:
        """Halve the plateau schedule's lr from the next step on (not below ``lr_min``): the
        optimizer's, and LambdaLR's ``base_lrs`` that it recomputes it from."""
        scheduler, floor = self.scheduler, self.config.lr_min
        scheduler.base_lrs = [max(0.5 * lr, floor) for lr in scheduler.base_lrs]
        for group in scheduler.optimizer.param_groups:
            group["lr"] = max(0.5 * group["lr"], floor)
        return scheduler.optimizer.param_groups[0]["lr"]

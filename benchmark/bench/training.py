"""``bench train``: what speeds a training step, and how long the quick preset takes to learn."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch

from benchmark.bench.timing import clock

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepVariant:
    """A way to run the 2D classifier's training step, timed side by side (``bench train``)."""

    name: str
    precision: str = "float32"  # TrainConfig.precision
    channels_last: bool = False
    batch_factor: int = 1  # volumes (hence slices) per step, times this
    compile: bool = False  # torch.compile the model (its compile time is reported apart)
    volumes_kept: bool = True  # in memory, as the loop keeps them; False: read every step


STEP_VARIANTS = (
    StepVariant("float32, volumes read every step", volumes_kept=False),
    StepVariant("float32"),
    StepVariant("bf16 autocast", "bfloat16"),
    StepVariant("channels_last", channels_last=True),
    StepVariant("bf16 + channels_last", "bfloat16", channels_last=True),
    StepVariant("bf16, 2x slices a step", "bfloat16", batch_factor=2),
    StepVariant("bf16 + torch.compile", "bfloat16", compile=True),
)


class _ChannelsLast(torch.nn.Module):
    """``model`` fed channels-last inputs (its weights converted too)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last))


@dataclass(frozen=True)
class StepTiming:
    variant: StepVariant
    seconds: float  # median of the timed steps (draw, cut, forward, backward, Adam)
    slices: int  # per step
    compile_seconds: float | None = None  # the first (compiling) step, with torch.compile


def bench_training_step(
    config, dataset, device: torch.device, variants=STEP_VARIANTS, repeats: int = 5
) -> list[StepTiming]:
    """Seconds per training step of the 2D classifier of ``config`` on ``dataset`` for each
    of ``variants`` (:func:`benchmark.training.estimate.step_function`), timed in turn (round robin,
    ``repeats`` rounds after a warm-up step each) so that a change of the machine's load
    touches every variant alike."""
    import dataclasses

    from benchmark.training.estimate import step_function

    steps, compile_seconds = {}, {}
    for variant in variants:
        varied = dataclasses.replace(
            config,
            batch_volumes=config.batch_volumes * variant.batch_factor,
            precision=variant.precision,
        )

        def wrap(model: torch.nn.Module, variant: StepVariant = variant) -> torch.nn.Module:
            model = _ChannelsLast(model) if variant.channels_last else model
            return torch.compile(model) if variant.compile else model

        steps[variant] = step_function(
            varied, dataset, device, wrap, volumes_kept=variant.volumes_kept
        )
        seconds = clock(steps[variant], device)  # warm-up (and compilation)
        compile_seconds[variant] = seconds if variant.compile else None
    times: dict[StepVariant, list[float]] = {v: [] for v in variants}
    for _ in range(repeats):
        for variant in variants:
            times[variant].append(clock(steps[variant], device))
    return [
        StepTiming(
            v,
            sorted(times[v])[len(times[v]) // 2],
            config.batch_volumes * v.batch_factor * config.slices_per_volume,
            compile_seconds[v],
        )
        for v in variants
    ]


@dataclass(frozen=True)
class LearningRun:
    """How one training of ``bench train --learn`` went (minutes: of training alone)."""

    seed: int
    target_step: int | None  # first validation whose evaluation AUC reached the target
    target_minutes: float | None
    step: int  # where training ended (early stop or cap)
    best_step: int | None  # whose weights were kept
    minutes: float
    report: dict  # benchmark.training.scoring.classifier_report of the kept weights


def bench_learning(
    config, dataset, device: torch.device, seeds, target: float = 0.95
) -> list[LearningRun]:
    """Train the classifier of ``config`` on ``dataset`` once per seed, as ``run`` does,
    scoring the evaluation split at every validation (for this report only: training
    never sees it) to find the step and the minutes of training at which its AUC first
    reaches ``target``; then the report of the weights training kept."""
    import dataclasses
    import tempfile

    from benchmark.training.checkpoint import load_classifier, read_checkpoint
    from benchmark.training.memory import InMemory
    from benchmark.training.scoring import classifier_report, roc_auc
    from benchmark.training.slices import volume_logits
    from benchmark.training.train import train

    ids = list(dataset.ids("val"))
    labels = torch.tensor([dataset.label(i) for i in ids])
    evaluation = InMemory(dataset)  # read once for every validation's scores
    runs = []
    for seed in seeds:
        seeded = dataclasses.replace(config, seed=seed)
        clock = {"spent": 0.0, "since": time.perf_counter(), "hit": None}

        def monitor(step: int, model: torch.nn.Module, clock=clock, seeded=seeded) -> None:
            clock["spent"] += time.perf_counter() - clock["since"]
            logits = volume_logits(
                model, evaluation, ids, seeded.val_slices, seeded.slice_size, 256
            )
            auc = roc_auc(labels, logits)
            log.info("step %d: evaluation AUC %.4f after %.1f min", step, auc, clock["spent"] / 60)
            if clock["hit"] is None and auc >= target:
                clock["hit"] = (step, clock["spent"] / 60)
            clock["since"] = time.perf_counter()

        with tempfile.TemporaryDirectory() as folder:
            path = train(dataset, seeded, folder, device=device, progress=False, monitor=monitor)
            state = read_checkpoint(path)
            model = load_classifier(path, device)
            report = classifier_report(model, dataset, ids, seeded, 256)
        hit = clock["hit"] or (None, None)
        runs.append(
            LearningRun(
                seed,
                hit[0],
                hit[1],
                state["step"],
                (state.get("best") or {}).get("step"),
                clock["spent"] / 60,
                report,
            )
        )
    return runs


def lesion_slice_share(config, dataset, volumes: int = 12, draws: int = 4) -> float | None:
    """The share of a positive volume's training slices (A.6's draws for ``config``) that cut
    a lesion, over the first ``volumes`` annotated positives of the train split: every
    other slice of a positive is labelled positive by A.6's loss all the same. None
    without masks."""
    from benchmark.training.slices import cut_slices, draw_slice_params

    generator = torch.Generator().manual_seed(config.seed)
    positives = [i for i in dataset.ids("train") if dataset.label(i) == 1]
    masks = [m for m in (dataset[i].mask for i in positives[: 4 * volumes]) if m is not None]
    if not masks:
        return None
    hits = []
    for mask in masks[:volumes]:
        volume = torch.as_tensor(mask, dtype=torch.float32)[None]
        for _ in range(draws):
            params = draw_slice_params(config.slices_per_volume, generator, intensity=0.0)
            slices = cut_slices(volume, params, config.slice_size)
            hits.append(slices.flatten(1).amax(1) > 0.5)
    return float(torch.cat(hits).float().mean())


def validation_ceiling(config, dataset, split: str = "val") -> tuple[int, int] | None:
    """(cut, positives): how many annotated positives of ``split`` have a lesion that one of
    their validation slices cuts (``config.val_slices`` per axis, the slices A.6's volume
    logit reads), of how many; None without masks. A positive that no slice cuts scores
    as a negative even for a perfect slice classifier (:func:`auc_ceiling`)."""
    from benchmark.training.slices import validation_slices

    positives = [i for i in dataset.ids(split) if dataset.label(i) == 1]
    masks = [m for m in (dataset[i].mask for i in positives) if m is not None]
    if not masks:
        return None
    cut = 0
    for mask in masks:
        volume = torch.as_tensor(mask, dtype=torch.float32)[None]
        slices = validation_slices(volume, config.val_slices, config.slice_size)
        cut += bool(slices.amax() > 0.5)
    return cut, len(masks)


def auc_ceiling(cut: int, positives: int) -> float:
    """The volume AUC of a perfect slice classifier when ``cut`` of ``positives`` have a
    lesion that a validation slice cuts: the others tie with the negatives (half credit)."""
    return (cut + (positives - cut) / 2) / positives


def slice_loss_floor(share: float) -> float:
    """The smallest mean A.6 loss (nats; balanced classes) that any classifier reaches when
    a share ``share`` of a positive volume's slices cut its lesion: a perfect lesion
    detector says 1 on those, and on every other slice, of either class, the chance that
    its volume is positive, q = (1 - share) / (2 - share). At chance the loss is ln 2; the
    gap is all the signal A.6's labels give a classifier."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1], got {share}")
    q = (1.0 - share) / (2.0 - share)
    if q == 0.0:
        return 0.0
    entropy = -(q * math.log(q) + (1.0 - q) * math.log(1.0 - q))
    return (1.0 - share / 2.0) * entropy

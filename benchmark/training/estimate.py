"""What a training run will cost before it runs: steps expected and seconds per step, timed on
a few real steps (``run --plan``, ``bench train``)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from benchmark.config import (
    Train3DConfig,
    TrainConfig,
)
from benchmark.distributed import (
    mean_seconds,
    memory_format,
    resolve_device,
)
from benchmark.training.data import dataset_info, split_ids
from benchmark.training.memory import InMemory
from benchmark.training.strategy import batches_for
from benchmark.training.train import optimiser, resolve_iterations, train_step

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainingEstimate:
    """Measured seconds per training step times the steps expected (``iterations``: the
    cap ``cap``, or fewer under early stopping, :func:`expected_steps`), and measured
    seconds per validated volume times the volumes that the validations of those steps
    score."""

    s_per_step: float
    iterations: int
    s_per_validated: float = 0.0
    validated: int = 0
    cap: int | None = None  # the config's iterations, when early stopping expects fewer

    @property
    def seconds(self) -> float:
        return self.s_per_step * self.iterations + self.s_per_validated * self.validated


EARLY_STOP_FACTOR = 2  # expected steps: this times the fewest early stopping can take


def expected_steps(config: TrainConfig | Train3DConfig) -> int:
    """The steps a plan prices: the cap, or under early stopping twice the fewest it can
    take (a full window, then ``patience`` validations without a gain), at most the cap
    (measured: docs/decisions.md#expected-training-steps)."""
    if not (config.holdout > 0 and config.patience > 0):
        return config.iterations
    fewest = (config.window + config.patience) * config.val_every
    return min(config.iterations, EARLY_STOP_FACTOR * fewest)


VALIDATION_SAMPLE = 2  # volumes whose validation training_estimate times


def training_estimate(
    config: TrainConfig | Train3DConfig,
    dataset: Any,
    device: str | torch.device = "auto",
    *,
    steps: int = 2,
) -> TrainingEstimate:
    """Time ``steps`` steps of :func:`train`'s loop (:func:`step_function`) on ``device``
    after one warm-up step, and the validation of VALIDATION_SAMPLE volumes: the one
    measurement of training cost, for ``bench train`` and the run's plan. The validations
    (:meth:`_Loop.validate`), every ``val_every`` steps and at the end, score the holdout
    (then the evaluation split once, at the end) or, without one, the evaluation split."""
    device = resolve_device(device)
    config = resolve_iterations(config, dataset_info(dataset)["name"])
    step = step_function(config, dataset, device)
    s_per_step = mean_seconds(step, device, steps)
    dataset = InMemory(dataset)  # as the loop: the validations' warm-up reads their volumes
    split = split_ids(dataset, config)
    checked = split["holdout"] or split["val"]
    expected = expected_steps(config)
    cap = config.iterations if expected < config.iterations else None
    due = -(-expected // config.val_every)  # every val_every steps, and the last
    validated = due * len(checked) + (len(split["val"]) if split["holdout"] else 0)
    sample = checked[:VALIDATION_SAMPLE]
    if not sample:
        return TrainingEstimate(s_per_step, expected, cap=cap)
    batches = batches_for(config)
    model = batches.build_model(len(dataset.channels), initial=False).to(device)

    def validate() -> None:
        batches.volume_logits(model, dataset, sample, batches.chunk)

    s_per_validated = mean_seconds(validate, device, 1) / len(sample)
    return TrainingEstimate(s_per_step, expected, s_per_validated, validated, cap)


def step_function(
    config: TrainConfig | Train3DConfig,
    dataset: Any,
    device: torch.device,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
    *,
    volumes_kept: bool = True,
) -> Callable[[], None]:
    """One step of :func:`train`'s loop (draw, cut, forward, backward, Adam) with fresh
    weights on ``dataset``'s train split, as a function; ``wrap`` wraps the model (e.g.
    ``torch.compile``) as ``bench train`` compares ways to run it.

    ``volumes_kept``: the loop keeps its volumes in memory (:mod:`benchmark.training.memory`),
    so a step of a long run reads none; the steps then draw from one positive and one
    negative volume, kept after the first (warm-up) step, and cost what such a step does.
    ``False``: every step reads its volumes from ``dataset``, as the loop did before."""
    batches = batches_for(config)
    split = split_ids(dataset, dataclasses.replace(config, holdout=0.0))
    positives, negatives = split["positives"], split["negatives"]
    if volumes_kept:
        dataset = InMemory(dataset)
        positives, negatives = positives[:1], negatives[:1]
    model = batches.build_model(len(dataset.channels), initial=False).to(device)
    model.to(memory_format=memory_format(device, batches.spatial_dims))
    optimizer, scheduler = optimiser(model, config)
    net = wrap(model) if wrap is not None else model
    generator = torch.Generator().manual_seed(config.seed)

    def step() -> None:
        plan = batches.draw(positives, negatives, generator)
        inputs, labels = batches.cut(dataset, plan, range(len(plan.ids)), device)
        train_step(
            net,
            optimizer,
            scheduler,
            inputs,
            labels,
            loss_fn=batches.loss,
            precision=config.precision,
        )

    return step

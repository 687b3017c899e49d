"""Configuration is data: frozen dataclasses whose defaults are the paper's values.

Each config class has named presets (``paper`` = the defaults, ``quick`` for a CPU).
One schema serves every command: a YAML file of sections (:data:`SECTIONS`: ``run:``,
``train:``, ``tomography:``) and ``--set`` fields spelled ``FIELD`` (run),
``train.FIELD`` and ``tomography.FIELD``, read by :func:`load_settings`; :func:`resolve`
then applies, in order, the preset and those settings (CLI > YAML > preset), checking
every field name and converting values to the field's type.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from foundation.registry import convert_value
from methods.config import TomographyConfig

C = TypeVar("C")

GN_INITS = ("identity", "copy")  # TrainConfig.gn_init
LOSSES = ("slice", "mil")  # TrainConfig.loss
SCHEDULES = ("cosine", "constant", "plateau")  # TrainConfig.schedule, Train3DConfig.schedule
PRECISIONS = ("auto", "float32", "bfloat16")  # benchmark.distributed.training_precision


@dataclass(frozen=True)
class TrainConfig:
    """Training of the 2D slice classifier (paper 3.6, 4.2, A.6).

    ``iterations=None`` takes the paper's count for the data set (:data:`PAPER_ITERATIONS`,
    times :data:`PAPER_ITERATION_FACTOR` for the architecture).

    ``gn_init`` sets the group norms that replace batch norms (``*_gn`` variants, ``norm=gn``):
    ``identity`` starts them at gamma = 1, beta = 0 (paper 3.6), ``copy`` at the batch norms'
    affine parameters: ImageNet's when pretrained, else timm's initialisation (gamma = 0 in
    each residual block's last norm, ``zero_init_last``). A model built with group norm
    (``resnet50_gn``) keeps its own. ``copy`` learns sooner from scratch (the quick
    preset's; measured: docs/decisions.md#group-norm-initialisation).

    ``loss="slice"`` is A.6's: each slice's BCE against its volume's label, which labels
    every lesion-free slice of a positive volume positive. ``loss="mil"`` (beyond the paper)
    treats each volume's stack of M_train slices as a bag: every slice of a negative volume
    is negative (BCE against 0), a positive volume's stack has a positive slice (BCE of the
    stack's max logit against 1), the volume logit A.6 validates with.
    """

    model: str = "resnet10t"  # a paper variant (R-10-T with frozen BN) or any timm model
    pretrained: bool | None = None  # None: the variant's (ImageNet weights but *_np)
    weights: str | None = None  # local file of pretrained weights instead of the hub
    gn_init: str = "identity"  # group norms that replace batch norms: identity | copy
    loss: str = "slice"  # slice: A.6, every slice against its volume's label | mil: bags
    precision: str = "auto"  # auto: bf16 autocast where native (CUDA, AVX512-BF16) | float32
    batch_volumes: int = 2  # B, half positive and half negative
    slices_per_volume: int = 120  # M_train, offsets evenly across [-1, 1]
    slice_size: int = 224  # h_S = w_S
    scale: float = 0.3  # in-plane vector lengths in [1 - scale, 1 + scale]
    translation: float = 0.3  # slice-wise in-plane shift in (-translation, translation)
    intensity: float = 0.3  # y = (1 + a) x + b per slice, a, b ~ U(-intensity, intensity)
    lr: float = 5e-5  # cosine schedule from lr to lr_min, updated every step
    lr_min: float = 1e-7
    # cosine: lr to lr_min over iterations (A.6) | constant: lr | plateau: lr, halved
    # (down to lr_min) after every patience // 2 holdout validations without a gain once
    # the kept weights are above chance (patience 0: never)
    schedule: str = "cosine"
    warmup: int = 0  # steps of linear warm-up to lr (before any schedule)
    betas: tuple[float, float] = (0.9, 0.999)  # Adam
    eps: float = 1e-8
    iterations: int | None = None
    val_every: int = 5000  # steps between validations (and one at the end)
    val_slices: int = 120  # per axis: axial, coronal and sagittal stacks
    checkpoint_every: int = 1000
    log_every: int = 100  # steps per train_log.csv row (mean loss)
    seed: int = 0
    # Early stopping (beyond the paper; off by default: the paper trains a fixed count).
    # ``iterations`` is then the cap, and the cosine schedule spans the cap.
    holdout: float = 0.0  # fraction of the *train* split held out (stratified, seeded)
    patience: int = 0  # holdout validations without an AUC gain >= min_delta; 0: never stop
    min_delta: float = 0.0  # smallest holdout AUC gain that counts as an improvement
    window: int = 1  # validations whose mean holdout AUC is the criterion


@dataclass(frozen=True)
class Train3DConfig:
    """Training of the 3D classifier on whole volumes (beyond the paper: it has none).

    As :class:`TrainConfig` (same splits, image-level labels, class balance, intensity
    augmentation, Adam and its schedules, early stopping), with B whole volumes a step,
    randomly flipped and rotated in 3D, instead of random slices. The ``paper`` preset is
    our choice of a GPU setting.
    """

    model: str = "resnet18_3d"  # benchmark.training.classifier3d.RESNETS_3D (MONAI 3D ResNets)
    weights: str | None = None  # local MedicalNet weights file; None: MONAI's initialisation
    input_size: tuple[int, int, int] = (128, 128, 128)  # (D, H, W) the network sees; 0: own
    max_pool: bool = True  # the stem's (MedicalNet's); False: each stage at twice the resolution
    batch_volumes: int = 8  # B, half positive and half negative
    flip: bool = True  # each axis flipped with probability 1/2
    rotation: float = 15.0  # degrees: angle ~ U(-rotation, rotation) about a random axis
    intensity: float = 0.3  # y = (1 + a) x + b per volume, a, b ~ U(-intensity, intensity)
    lr: float = 1e-4  # cosine schedule from lr to lr_min, updated every step
    lr_min: float = 1e-6
    schedule: str = "cosine"  # as TrainConfig's
    warmup: int = 0
    precision: str = "auto"  # as TrainConfig's
    betas: tuple[float, float] = (0.9, 0.999)  # Adam
    eps: float = 1e-8
    iterations: int = 20_000
    val_every: int = 1000  # steps between validations (and one at the end)
    checkpoint_every: int = 500
    log_every: int = 50  # steps per train_log.csv row (mean loss)
    seed: int = 0
    holdout: float = 0.0  # as TrainConfig's: early stopping on a held-out part of train
    patience: int = 0
    min_delta: float = 0.0
    window: int = 1


@dataclass(frozen=True)
class RunConfig:
    """A benchmark run (``python -m benchmark run``): methods, protocol (A.7) and outputs."""

    methods: tuple[str, ...] = ("all",)  # specs, names or wildcards (``expand_specs``)
    exclude: tuple[str, ...] = ()  # spec patterns that ``all`` and wildcards leave out
    # a method family whose counted work per validation volume exceeds this leaves ``all``
    # and wildcards (benchmark.run.plan.within_budget), but benchmark.run.plan.ALWAYS_IN_ALL; named
    # specs always run. Forward-equivalent slice passes (a backward counts
    # benchmark.run.prices.BACKWARD_FORWARDS more), counted, never timed: the same command keeps
    # the same methods on every machine. Paper: keeps every family the paper reports (3-axis
    # ScoreCAM ~1.1 M on a 326x400x400 volume) and the iterative ones (~5 M), leaves out
    # Averaged / Tomographic ScoreCAM (~96 M)
    budget_passes: float = 2e7
    # a classifier at chance (AUC interval includes 0.5) stops the run before its heatmaps
    # (exit code 3); true: compute and rank them anyway, the page warning that they mean nothing
    allow_chance: bool = False
    folds: int = 10  # A.7: Monte-Carlo cross-validation folds
    seed: int = 0  # shuffles the validation set of each fold
    n_tune: int = 5  # A.7: annotated samples of the tuning half that choose tau'
    batch_size: int = 64  # slices per classifier pass in the methods
    save_heatmaps: bool = False  # NIfTI heatmaps with the volume's affine in <out>/heatmaps
    keep_heatmaps: bool = False  # keep every full heatmap in the cache (re-evaluation)
    calibration_volumes: int = 32  # label-free validation subset that sets the tau' grids
    grid_levels: int = 30  # tau' grid: tail fractions 0.5 .. 1e-5 (ours; A.7: "grid-search")
    # beyond the paper: intervals over volumes and paired deltas (benchmark.publish.leaderboard)
    reference: str = "layercam"  # the spec (or family, at its best layer) deltas refer to
    bootstrap_resamples: int = 2000  # percentile bootstrap over validation volumes, seeded
    figure_volumes: int = 3  # validation positives shown in the Figure 6 layout
    figure_methods: tuple[str, ...] = (  # method families shown (fnmatch); the paper's five
        "gradcam",
        "layercam",
        "tonno",
        "averaged_layercam",
        "tomographic_layercam",
    )


# The sections of a config file and the prefixes of ``--set`` (run's fields take none).
SECTIONS: dict[str, type] = {
    "run": RunConfig,
    "train": TrainConfig,
    "train3d": Train3DConfig,
    "tomography": TomographyConfig,
}
# The section of each classifier's training settings (methods.Method.classifier).
TRAIN_SECTIONS: dict[str, str] = {"2d": "train", "3d": "train3d"}

PAPER_ITERATIONS: dict[str, int] = {  # A.6, for the ResNet-10-T
    "ms": 250_000,
    "autopet": 187_500,
    "mosmed": 125_000,
    "duke": 62_500,
}
# 3.6: the ResNet-50 with group norm overfits; keyed by timm architecture (ModelSpec.arch)
PAPER_ITERATION_FACTOR: dict[str, float] = {"resnet50_gn": 0.4}


PRESETS: dict[type, dict[str, Any]] = {
    TomographyConfig: {
        "paper": TomographyConfig(),
        # `run --methods all` on a CPU (measured: docs/decisions.md#quick-tomography-preset)
        "quick": TomographyConfig(n_angles=128, n_angles_cam=64, n_slices=24, slice_size=64),
    },
    TrainConfig: {
        "paper": TrainConfig(),
        # 64 px as tomography's; A.6's loss; bf16 where native; an lr that no cap ends,
        # halved on a plateau, and early stopping on a window of holdout validations
        # (beyond the paper).
        # The figures and the variants that lost: docs/training.md.
        "quick": TrainConfig(
            model="resnet10t_gn_np",
            gn_init="copy",  # not pretrained: timm's initialisation, zero_init_last kept
            batch_volumes=8,  # 8 volumes of 8 slices a step, not 2 of 32: learns hard sets
            slices_per_volume=8,
            slice_size=64,
            lr=1e-3,
            schedule="plateau",
            warmup=25,
            iterations=4000,  # the cap: ~15 min of bf16 steps on a 2-core CPU
            val_every=25,
            val_slices=16,
            checkpoint_every=25,
            log_every=10,
            holdout=0.25,  # synthetic: 6 + 6 of the 48 training volumes
            window=4,  # the criterion: the mean holdout AUC of 4 validations (100 steps)
            patience=8,  # 200 steps without a gain of min_delta
            min_delta=0.01,
        ),
    },
    Train3DConfig: {
        "paper": Train3DConfig(),
        # the volumes' own size with MedicalNet's stem (max_pool=False: no better Dice, a
        # worse AUC in 6x the time); the 2D quick preset's rule: plateau lr, a window of 4
        # holdout validations, patience 8, best weights kept, a cap no run reached
        # (measured: docs/decisions.md#quick-3d-classifier-preset)
        "quick": Train3DConfig(
            model="resnet10_3d",
            input_size=(0, 0, 0),
            # bf16 3D convolutions on a CPU did not resume bit-identically (2D ones do)
            precision="float32",
            batch_volumes=4,
            lr=1e-3,
            lr_min=1e-5,
            schedule="plateau",
            warmup=25,
            iterations=2000,  # the cap
            val_every=20,
            checkpoint_every=20,
            log_every=10,
            holdout=0.25,
            window=4,
            patience=8,
            min_delta=0.01,
        ),
    },
    RunConfig: {
        "paper": RunConfig(),
        # on synthetic: every gradient family, not the iterative nor ScoreCAM ones
        # (counted: docs/decisions.md#quick-budget)
        "quick": RunConfig(budget_passes=10_000),
    },
}


def parse_overrides(items: list[str] | None) -> dict[str, str]:
    """``["n_angles=500", "seed=1"] -> {"n_angles": "500", "seed": "1"}``."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} is not of the form key=value")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


# --- checks at the boundary: a bad value fails here, naming its setting, not deep in torch ---

# Fields that were replaced: {(config class, old name): what to set instead, and why}.
REPLACED: dict[tuple[type, str], str] = {
    (RunConfig, "budget_hours"): (
        "budget_hours was replaced by budget_passes, counted classifier work per validation "
        "volume and method family in forward-equivalent slice passes, so that the methods "
        "kept do not depend on the machine's load (run --plan shows each family's), e.g. "
        f"--set budget_passes={PRESETS[RunConfig]['quick'].budget_passes:g}"
    ),
}


@dataclass(frozen=True)
class Bounds:
    """The values a numeric field takes: finite, ``low <= value <= high`` (``< high`` when
    ``open``); ``why`` says what an upper bound guards; ``also`` is one more value it takes
    (a sentinel: ``also_means`` says what it means)."""

    low: float = -math.inf
    high: float = math.inf
    open: bool = False
    why: str = ""
    also: float | None = None
    also_means: str = ""

    def problem(self, name: str, value: float) -> str | None:
        if not math.isfinite(value):
            return f"{name} must be a finite number, got {value}"
        if value == self.also:
            return None
        if value < self.low:
            sentinel = "" if self.also is None else f" or {self.also:g} ({self.also_means})"
            return f"{name} must be >= {self.low:g}{sentinel}, got {value}"
        if self.open and value >= self.high:
            return f"{name} must be in [{self.low:g}, {self.high:g}), got {value}"
        if value > self.high:
            return f"{name} must be <= {self.high:g} ({self.why}), got {value}"
        return None


AT_LEAST_0, AT_LEAST_1, FRACTION = Bounds(0), Bounds(1), Bounds(0, 1, open=True)
SEED = AT_LEAST_0  # numpy's generators take no negative seed
_TRAINING = {  # the fields TrainConfig and Train3DConfig share
    "batch_volumes": AT_LEAST_1,
    "intensity": FRACTION,
    "lr": AT_LEAST_0,
    "lr_min": AT_LEAST_0,
    "warmup": AT_LEAST_0,
    "eps": AT_LEAST_0,
    "iterations": AT_LEAST_1,
    "val_every": AT_LEAST_1,
    "checkpoint_every": AT_LEAST_1,
    "log_every": AT_LEAST_1,
    "seed": SEED,
    "holdout": FRACTION,
    "patience": AT_LEAST_0,
    "min_delta": AT_LEAST_0,
    "window": AT_LEAST_1,
}

# Every numeric field's range, checked for the presets, config files, --set and the
# configs that callers of train() build (check_config): what passes runs to the end.
BOUNDS: dict[type, dict[str, Bounds]] = {
    TomographyConfig: {
        "n_angles": AT_LEAST_1,
        "n_angles_cam": AT_LEAST_1,
        "n_slices": Bounds(2),  # the step 2/(M-1) of eq. (9)
        "slice_size": Bounds(2),  # eq. (4)'s pixel grid has pixels at both ends of [-1, 1]
        "chunk": AT_LEAST_1,
        "seed": SEED,
    },
    RunConfig: {
        "budget_passes": AT_LEAST_0,
        # a spread over folds needs two; 1000 folds take 100x the protocol's default time
        "folds": Bounds(2, 1000, why="100 times A.7's 10 folds"),
        "seed": SEED,
        "n_tune": AT_LEAST_1,
        "batch_size": AT_LEAST_1,
        "calibration_volumes": AT_LEAST_1,
        # each level is a connected-component pass over every heatmap: 33x the default's
        # time at 1000 (480, 16x finer, moved Dice by 0.02: benchmark.protocol.evaluation)
        "grid_levels": Bounds(2, 1000, why="33 times the default's work per heatmap"),
        # its index table holds resamples x volumes integers: 160 MB for 1000 volumes
        "bootstrap_resamples": Bounds(1, 20_000, why="10 times the default, memory"),
        "figure_volumes": AT_LEAST_0,
    },
    TrainConfig: {
        **_TRAINING,
        "slices_per_volume": Bounds(2),  # offsets span [-1, 1]
        "slice_size": AT_LEAST_1,
        "scale": FRACTION,
        "translation": AT_LEAST_0,
        "val_slices": Bounds(2),
    },
    Train3DConfig: {
        **_TRAINING,
        "input_size": Bounds(2, also=0, also_means="the volume's own size on that axis"),
        "rotation": Bounds(0, 180),
    },
}


CHOICES: dict[str, tuple[str, ...]] = {  # the training configs' fields of named values
    "gn_init": GN_INITS,
    "loss": LOSSES,
    "schedule": SCHEDULES,
    "precision": PRECISIONS,
}


def field_problem(cls: type, name: str, value: Any) -> str | None:
    """What is wrong with ``value`` for field ``name`` of ``cls`` (already converted), or None."""
    bounds = BOUNDS.get(cls, {}).get(name)
    numbers = value if isinstance(value, tuple) else (value,)  # a tuple: each of its values
    for number in numbers if bounds is not None else ():
        if isinstance(number, (int, float)) and not isinstance(number, bool):
            problem = bounds.problem(name, number)
            if problem:
                return problem
    choices = CHOICES.get(name)
    if cls in (TrainConfig, Train3DConfig) and choices and value not in choices:
        return f"{name} must be one of {', '.join(choices)}, got {value!r}"
    if cls is RunConfig and name == "methods" and not _names_a_method(value):
        return "no method was given: name at least one spec, name or wildcard (or all)"
    return None


def check_config(config: Any) -> None:
    """A ValueError naming the first field of ``config`` (a config of :data:`SECTIONS`,
    however built) whose value :func:`field_problem` refuses, spelled as ``--set`` spells it."""
    section = next(s for s, cls in SECTIONS.items() if cls is type(config))
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        problem = field_problem(type(config), field.name, value)
        if problem:
            raise ValueError(f"{_spelled(section, field.name)}={value}: {problem}")


def _names_a_method(methods: tuple[str, ...]) -> bool:
    return any(token.strip() for item in methods for token in str(item).split(","))


def check_fields(
    cls: type, values: Mapping[str, Any], where: str, section: str = ""
) -> dict[str, Any]:
    """``values`` converted to the types of ``cls``'s fields, each checked.

    Raises a ValueError for an unknown or replaced field name (:data:`REPLACED`: what
    replaced it), a value that cannot be read as its type or one out of range, spelled as
    the user wrote it: ``--set tomography.chunk=0: chunk must be >= 1`` when ``where`` is
    ``"command line"``, else ``<where>: tomography.chunk=0: ...`` (``section``: the prefix
    of the field in ``--set``, e.g. ``tomography``).
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    prefix = f"{section}." if section else ""

    def label(name: str, raw: Any) -> str:
        setting = f"{prefix}{name}={raw}"
        return f"--set {setting}" if where == "command line" else f"{where}: {setting}"

    for name, raw in values.items():
        if (cls, name) in REPLACED:
            raise ValueError(f"{label(name, raw)}: {REPLACED[cls, name]}")
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(
            f"{where}: unknown {cls.__name__} field(s) {unknown}; known: {sorted(fields)}"
        )
    converted = {}
    for name, raw in values.items():
        value = convert_value(raw, hints[name], label(name, raw))
        problem = field_problem(cls, name, value)
        if problem:
            raise ValueError(f"{label(name, raw)}: {problem}")
        converted[name] = value
    return converted


def load_yaml(path: str | Path) -> Any:
    """The YAML document of file ``path`` (``yaml.safe_load``; an empty file is ``{}``).

    Errors name the file: a ValueError with the line for invalid YAML or a non-text file;
    the OSError (``.filename`` set) for a missing file or a folder.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text (UTF-8) file, expected YAML") from None
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        line = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise ValueError(f"{path}{line}: not valid YAML ({problem})") from None


def load_settings(
    path: str | Path | None, overrides: list[str], settable: tuple[str, ...] = tuple(SECTIONS)
) -> dict[str, dict[str, Any]]:
    """Per section of :data:`SECTIONS`, the config file's fields updated by the command
    line's (``--set KEY=VALUE`` items; CLI > YAML): the one reader of ``--config`` and
    ``--set`` for ``train`` and ``run``, so that one file configures both alike.

    The file may hold every section whatever the command uses; ``settable`` are those the
    command's ``--set`` takes (``train``: only ``train.FIELD``). Every field is checked here
    (names, types, ranges) and an error names the file or the ``--set`` and the key, with
    the spelling that works when the key belongs to another section
    (``--set iterations=5: ... did you mean --set train.iterations=5?``).
    """
    settings: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    if path is not None:
        loaded = load_yaml(path)
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected sections {', '.join(SECTIONS)} of field: value")
        for section, fields in loaded.items():
            if section not in SECTIONS:
                homes = _homes(str(section), tuple(SECTIONS))
                hint = f"; put {section} under {' or '.join(f'{h}:' for h in homes)}"
                raise ValueError(
                    f"{path}: {section!r} is not a section (expected {', '.join(SECTIONS)})"
                    + (hint if homes else "")
                )
            fields = fields or {}
            if not isinstance(fields, dict):
                raise ValueError(f"{path}: section {section!r} is not a mapping of fields")
            check_fields(SECTIONS[section], fields, str(path), section)
            settings[section].update(fields)
    for key, value in parse_overrides(overrides).items():
        section, _, field = key.rpartition(".")
        setting = f"--set {key}={value}"
        if section and section not in SECTIONS:
            raise ValueError(f"{setting}: no section {section!r} (expected {_spellings(settable)})")
        section = section or "run"
        if section not in settable or field not in _field_names(SECTIONS[section]):
            homes = _homes(field, settable)
            meant = " or ".join(f"--set {_spelled(h, field)}={value}" for h in homes)
            if homes or section not in settable:
                hint = f"; did you mean {meant}?" if homes else ""
                raise ValueError(f"{setting}: this command takes {_spellings(settable)}{hint}")
        prefix = "" if section == "run" else section
        check_fields(SECTIONS[section], {field: value}, "command line", prefix)
        settings[section][field] = value
    return settings


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _spelled(section: str, field: str) -> str:
    """How ``--set`` spells ``field`` of ``section``: ``folds``, ``train.iterations``."""
    return field if section == "run" else f"{section}.{field}"


def _spellings(sections: tuple[str, ...] = tuple(SECTIONS)) -> str:
    return ", ".join(_spelled(s, "FIELD") + (" (run)" if s == "run" else "") for s in sections)


def _homes(field: str, sections: tuple[str, ...]) -> list[str]:
    """The ``sections`` whose config class has ``field``."""
    return [s for s in sections if field in _field_names(SECTIONS[s])]


def resolve(
    cls: type[C],
    preset: str = "paper",
    overrides: Mapping[str, Any] | None = None,
    *,
    section: str = "",
) -> C:
    """Config ``cls`` from ``preset``, then ``overrides`` (e.g. a section of
    :func:`load_settings`).

    Every value is checked (:func:`check_fields`); ``section`` is how ``--set`` spells the
    fields of ``cls`` (``tomography`` for ``--set tomography.chunk=8``), for the errors.
    """
    presets = PRESETS.get(cls, {"paper": cls()})
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r} for {cls.__name__}: {sorted(presets)}")
    changes = check_fields(cls, overrides or {}, "command line", section)
    return dataclasses.replace(presets[preset], **changes)

"""``run --dataset NAME``: classifier, every method's heatmaps, the A.7 protocol, leaderboards."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from benchmark.commands import (
    add_config_arguments,
    add_dataset_arguments,
    chosen_preset,
    open_dataset,
)

HELP = "train or load the classifier, evaluate the methods (paper A.7), write leaderboards"
# A classifier of the run is at chance: stopped before the heatmaps (--set allow_chance=true
# computes them anyway). The others: 1 failures (named, the rest cached), 2 bad input
# (benchmark.cli), 130 interrupted.
EXIT_CHANCE = 3

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataset_arguments(parser)
    parser.add_argument(
        "--methods",
        help="specs, names or wildcards, comma-separated (default: all), e.g. tonno,layercam@2",
    )
    add_config_arguments(parser, ("run", "train", "tomography"))
    parser.add_argument("--model", help="classifier to train (train.model), e.g. resnet10t")
    parser.add_argument(
        "--reference",
        help="the spec (or family, at its best layer) that deltas refer to (default: layercam)",
    )
    parser.add_argument("--checkpoint", help="use this trained classifier instead of training")
    parser.add_argument(
        "--seeds",
        metavar="N|S,S,...",
        help="train N classifiers that differ only in their seed (train.seed, +1, ...), or the "
        "listed seeds, and report the mean, the spread over seeds and intervals over volumes "
        "and seeds (default: 1, the classifier of train.seed)",
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument(
        "--out", help="run folder (checkpoint, CSVs); default runs/<dataset>/<model>-<preset>"
    )
    parser.add_argument(
        "--leaderboards", default="leaderboards", help="folder of the tables and figure"
    )
    parser.add_argument(
        "--shard",
        metavar="I/N",
        help="compute only shard I of N of the heatmaps (needs a trained classifier), then stop",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="compute nothing: evaluate the cached heatmaps of every shard",
    )
    parser.add_argument(
        "--plan",
        action="store_true",
        help="print each method family's counted work, its estimated time, memory and disk "
        "on this device, what the budget (--set budget_passes=N) leaves out and what the "
        "run costs in all (shared passes once, --seeds, training); compute nothing",
    )
    parser.add_argument(
        "--save-heatmaps",
        action="store_true",
        help="also write each heatmap as NIfTI with its volume's affine to <out>/heatmaps",
    )


def parse_seeds(text: str | None, base: int) -> list[int]:
    """``--seeds``: ``"3"`` -> base, base + 1, base + 2; ``"0,4,7"`` -> those; None -> base.
    Each a valid ``train.seed`` (:data:`~benchmark.config.BOUNDS`)."""
    from benchmark.config import TrainConfig, field_problem

    if text is None:
        return [base]
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items or not all(t.lstrip("-").isdigit() for t in items):
        raise ValueError(f"--seeds {text!r}: give a count (3) or comma-separated seeds (0,4,7)")
    if len(items) == 1 and "," not in text:
        if int(items[0]) < 1:
            raise ValueError(f"--seeds {text!r}: the count must be >= 1")
        return [base + i for i in range(int(items[0]))]
    seeds = [int(t) for t in items]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {text!r}: a seed is repeated")
    problem = next(filter(None, (field_problem(TrainConfig, "seed", s) for s in seeds)), None)
    if problem:
        raise ValueError(f"--seeds {text!r}: {problem}")
    return seeds


def seed_folder(out: Path, seed: int, base: int) -> Path:
    """Where the classifier of ``seed`` lives: the run folder for ``train.seed`` (today's
    layout, so ``--seeds 1`` reuses it), ``<out>/seed-<seed>`` for the others."""
    return out if seed == base else out / f"seed-{seed}"


def to_train(trained: dict, seeds) -> list[str]:
    """The kinds ("2d", "3d") of ``trained`` ({kind: (config, folder, checkpoint given)})
    that the run must still train: not given and not finished for every seed."""
    from benchmark.training.checkpoint import CHECKPOINT, is_finished

    base = trained["2d"][0].seed
    return [
        kind
        for kind, (_, folder, given) in trained.items()
        if given is None
        and not all(is_finished(seed_folder(folder, s, base) / CHECKPOINT) for s in seeds)
    ]


def run(args: argparse.Namespace) -> int:
    settings, shard, specs, left_out, dataset = _requested(args)  # before torch is imported

    from tqdm.contrib.logging import logging_redirect_tqdm

    from benchmark import distributed

    context = distributed.init(args.device)
    try:
        with logging_redirect_tqdm():
            return _run(args, context, settings, shard, specs, left_out, dataset)
    except Exception as error:
        from benchmark.run.runner import ChanceError, RunError

        if not isinstance(error, (RunError, ChanceError)):
            raise
        if context.is_main:
            print(f"error: {error}", file=sys.stderr)
        if isinstance(error, ChanceError):  # raised on every rank: none ends before rank 0 said why
            context.barrier()
            return EXIT_CHANCE
        return 1
    finally:
        distributed.shutdown()


def _requested(args: argparse.Namespace):
    """(settings per section, shard, specs, specs left out by ``exclude``, the data set):
    every setting, method name and the data set's name, root and options checked, in
    about a second (no torch)."""
    from benchmark.config import RunConfig, check_fields, load_settings
    from benchmark.specs import check_reference, parse_shard, select_specs

    shard = parse_shard(args.shard) if args.shard else None
    if shard and args.merge:
        raise ValueError("--shard computes one shard and --merge computes nothing: pick one")
    if args.seeds and args.checkpoint:
        raise ValueError("--seeds trains one classifier per seed and --checkpoint is one: pick one")
    parse_seeds(args.seeds, 0)  # checked now, resolved against train.seed later
    settings = load_settings(args.config, args.overrides)
    for flag, section, field in (
        (args.methods, "run", "methods"),
        (args.save_heatmaps or None, "run", "save_heatmaps"),
        (args.model, "train", "model"),
        (args.reference, "run", "reference"),
    ):
        if flag is not None:
            settings[section][field] = flag
    run = check_fields(RunConfig, settings["run"], "command line")
    check_reference(run.get("reference", RunConfig.reference))
    defaults = RunConfig()
    specs, left_out = select_specs(
        run.get("methods", defaults.methods), run.get("exclude", defaults.exclude)
    )
    if not specs:
        raise ValueError(f"no method to run: --methods {','.join(run['methods'])!r}")
    return settings, shard, specs, left_out, open_dataset(args)


def _run(args: argparse.Namespace, context, settings, shard, specs, left_out, dataset) -> int:
    """Everything that can fail in seconds first (settings, methods, folders, every
    volume), then the classifiers (one per seed), then the heatmaps and the protocol."""
    import dataclasses

    from benchmark.config import TRAIN_SECTIONS, RunConfig, Train3DConfig, TrainConfig, resolve
    from benchmark.run.preflight import check_volumes, writable
    from benchmark.run.runner import prepare_classifier, run_benchmark, specs_by_classifier
    from benchmark.training.checkpoint import is_finished, read_checkpoint
    from benchmark.training.weights import read_weights
    from foundation.io import cache_root
    from methods.config import TomographyConfig

    preset = chosen_preset(args.preset, context)
    config = resolve(RunConfig, preset, overrides=settings["run"])
    train_config = resolve(TrainConfig, preset, overrides=settings["train"], section="train")
    tomography = resolve(
        TomographyConfig, preset, overrides=settings["tomography"], section="tomography"
    )
    if not dataset.ids("val"):
        raise ValueError(f"{dataset.name}: the validation split is empty: nothing to evaluate")
    default_out = Path("runs") / args.dataset / f"{train_config.model}-{preset}"
    if args.checkpoint:
        default_out = Path(args.checkpoint).parent
    out = writable(args.out or default_out, "--out")
    writable(args.leaderboards, "--leaderboards")
    writable(cache_root(), "the cache ($TONNO_CACHE)")
    if args.checkpoint and not is_finished(args.checkpoint):
        read_checkpoint(args.checkpoint)  # damaged, or not ours: that error, naming it
        raise ValueError(f"{args.checkpoint} is not a finished classifier with finite weights")
    checks = check_volumes(dataset, dataset.ids(), context)
    unscored = [c.id for c in checks if c.empty_truth and dataset.split(c.id) == "val"]
    trained = {"2d": (train_config, out, args.checkpoint)}
    if "3d" in specs_by_classifier(specs):  # beside the 2D one: runs/<dataset>/<model>-<preset>
        config3d = resolve(Train3DConfig, preset, overrides=settings["train3d"], section="train3d")
        trained["3d"] = (config3d, out.parent / f"{config3d.model}-{preset}", None)
    seeds = parse_seeds(args.seeds, train_config.seed)
    for kind in to_train(trained, seeds):  # a bad weights file before any training
        if (weights := trained[kind][0].weights) is not None:
            read_weights(weights, f"--set {TRAIN_SECTIONS[kind]}.weights: a weights file")
    specs, budget_note = _within_budget(
        specs, config, tomography, trained, seeds, dataset, context, out if args.plan else None
    )
    if args.plan:
        return 0
    notes = [budget_note] if budget_note else []
    if left_out:
        log.warning(
            "leaving out %d specs that exclude=%s matches: %s",
            len(left_out),
            ",".join(config.exclude),
            ", ".join(left_out),
        )
        notes.append(f"Left out by `exclude={','.join(config.exclude)}`: {', '.join(left_out)}.")
    if unscored:
        log.warning(
            "%d validation positive(s) have an empty annotation and are scored for "
            "classification only: %s",
            len(unscored),
            ", ".join(unscored),
        )

    checkpoints = [  # per seed, each classifier the specs need (the seed is both's)
        {
            kind: prepare_classifier(
                dataset,
                dataclasses.replace(train, seed=seed),
                seed_folder(folder, seed, train_config.seed),
                checkpoint=given,
                context=context,
                finished_only=bool(shard or args.merge),
            )
            for kind, (train, folder, given) in trained.items()
        }
        for seed in seeds
    ]
    tomography = _slice_size(
        tomography, "slice_size" in settings["tomography"], [c["2d"] for c in checkpoints]
    )
    outputs = run_benchmark(
        dataset,
        checkpoints,
        config,
        tomography,
        specs=specs,
        out_dir=out,
        leaderboards=args.leaderboards,
        context=context,
        shard=shard,
        compute=not args.merge,
        unscored=unscored,
        notes=notes,
        preset=preset,
    )
    if shard is not None:
        print(
            f"shard {shard[0]}/{shard[1]} done; when every shard is, evaluate with the same "
            "command without --shard (or with --merge)"
        )
    elif outputs is not None:
        _report(outputs, out)
    return 0


def _slice_size(tomography, explicit: bool, checkpoints):
    """The tomography settings with the classifier's training slice size (from its
    checkpoint): a classifier explained on slices of another size is off its training
    distribution, so that happens only when ``tomography.slice_size`` is set (a warning)."""
    import dataclasses

    from benchmark.training.checkpoint import read_checkpoint

    sizes = {read_checkpoint(c)["config"].get("slice_size") for c in checkpoints} - {None}
    if len(sizes) != 1 or tomography.slice_size in sizes:
        return tomography
    trained = sizes.pop()
    if explicit:
        log.warning(
            "tomography.slice_size=%d but the classifier was trained on %d-pixel slices: "
            "explaining it off its training size, as set",
            tomography.slice_size,
            trained,
        )
        return tomography
    log.info(
        "tomography.slice_size=%d: the classifier's training size, from %s (set "
        "tomography.slice_size to explain it at another)",
        trained,
        checkpoints[0],
    )
    return dataclasses.replace(tomography, slice_size=trained)


def _within_budget(specs, config, tomography, trained, seeds, dataset, context, plan_dir):
    """The specs the run's budget keeps (counted on rank 0, every rank follows: no clock)
    and the leaderboard note on the families it leaves out; with ``plan_dir`` (the run
    folder), the plan is printed and written to ``<plan_dir>/plan.csv``, priced on this
    device, for the classifiers of ``seeds`` and with the training of each classifier in
    ``trained`` ({"2d"|"3d": (config, folder, checkpoint given)}) that is not given and
    not finished for every seed."""
    from benchmark.publish.report import write_csv
    from benchmark.run.plan import PLAN_CSV, format_plan, plan_run
    from benchmark.training.estimate import training_estimate
    from benchmark.training.strategy import batches_for

    plan = None
    if context.is_main:
        shapes = [dataset.geometry(v)[0] for v in dataset.ids("val")]
        in_chans = len(dataset.channels)
        models = {
            kind: batches_for(train).build_model(in_chans, initial=False).to(context.device)
            for kind, (train, _, _) in trained.items()
        }
        training = None
        if plan_dir is not None:
            training = {
                f"{kind} classifier {trained[kind][0].model}": training_estimate(
                    trained[kind][0], dataset, context.device
                )
                for kind in to_train(trained, seeds)
            }
        frame, calibration, kept, left_out = plan_run(
            config.methods,
            shapes,
            models["2d"],
            tomography,
            config.batch_size,
            context.device,
            config.budget_passes,
            in_chans,
            volume_model=models.get("3d"),
            measure=plan_dir is not None,
            seeds=len(seeds),
            training=training,
        )
        plan = (kept, left_out)
        if plan_dir is not None:
            print(format_plan(frame, calibration, left_out, training))
            path = write_csv(frame.assign(specs=frame.specs.map(" ".join)), plan_dir / PLAN_CSV)
            print(f"plan: {path}")
    kept, left_out = context.gather(plan)[0]
    left_out = {s: why for s, why in left_out.items() if s in specs}
    if not left_out:
        return specs, None
    reasons = sorted({why.split(" > ")[0] for why in left_out.values()})
    budget = f"budget_passes={config.budget_passes:,.0f}"
    log.warning(
        "the budget (%s forward-equivalent passes per volume) leaves out %d specs: %s; "
        "--set budget_passes=N raises it, and a method named in --methods always runs",
        budget,
        len(left_out),
        "; ".join(reasons),
    )
    note = (
        f"Left out of `all` by the run's budget (`{budget}`, classifier work counted per "
        f"validation volume by `run --plan`): {'; '.join(reasons)}. "
        "`--set budget_passes=N` raises it; a method named in `--methods` always runs."
    )
    return [s for s in specs if s in kept], note


def _report(outputs, out: Path) -> None:
    """The final summary: what was evaluated, the heatmap compute time, where the tables
    are; the last line is the page (every file written: at -v)."""
    mine = outputs.results[outputs.results.method.isin(outputs.computed)]
    seconds = outputs.timings[outputs.timings.method.isin(outputs.computed)].seconds.sum()
    seeds = str(mine.seeds.iloc[0]).split()
    classifiers = f" x {len(seeds)} classifiers" if len(seeds) > 1 else ""
    print(
        f"{len(outputs.computed)} methods on {outputs.timings.volumes.iloc[0]} validation "
        f"volumes{classifiers}; heatmaps took {seconds:.0f} s (per method: "
        f"{out / 'timings.csv'})"
    )
    kept = len(outputs.results) - len(outputs.computed)
    if kept:
        print(f"the tables also keep {kept} methods of earlier runs into {out}")
    print(f"results: {out / 'results.csv'}, per fold: {out / 'folds.csv'}")
    if outputs.nifti:
        print(f"NIfTI heatmaps: {len(outputs.nifti)} files in {out / 'heatmaps'}")
    log.debug("leaderboards: %s", ", ".join(str(p) for p in outputs.leaderboards))
    print(f"page: {outputs.page}")

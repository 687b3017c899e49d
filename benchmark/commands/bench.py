"""``bench tomography|methods|scale|figure4|iterative|train|plan``: throughput, overhead and
speed-up ratios, how time, memory and bytes kept grow with the volume and with L, side by
side, what iterative CAM does with a classifier's CAMs, the 2D and 3D classifiers'
estimated training times, and ``run --plan``'s estimate beside the measured time of the
same run."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from benchmark.commands import add_dataset_arguments, add_set_argument, open_dataset

HELP = "measure throughput and overhead ratios (side by side, one run)"

DEFAULT_SHAPES = {"quick": (1, 32, 96, 96), "paper": (1, 128, 128, 128)}
# bench scale: cube edges, L values and the cube edge of the L sweep, per preset
SCALE_SIZES = {"quick": (32, 48, 64, 96, 128), "paper": (64, 96, 128, 192, 256)}
SCALE_ANGLES = {"quick": (8, 16, 32, 64), "paper": (250, 500, 1000, 2000)}
SCALE_ANGLE_SIZE = {"quick": 48, "paper": 128}
# on a CPU the quick preset at L = 16, M = 16, 32 px: the default run takes ~2 min on 2 cores
SCALE_CPU = {"n_angles": "16", "n_angles_cam": "16", "n_slices": "16", "slice_size": "32"}
# bench figure4: the synthetic set's volume shape; on a CPU the quick grids at L = 32, M = 16
# (~5 min on 2 busy cores: each of its 30 iterations cuts every slice again, and 224-px
# slices cost 12x more: --grids paper on a GPU)
FIGURE4_SHAPE = (32, 64, 64)
SCALE_FIGURE, ITERATIVE_FIGURE = "bench_scale.png", "bench_iterative.png"  # --out defaults
FIGURE4_CPU = {"n_angles_cam": "32", "n_slices": "16"}
# bench plan: a small but real run, the paper's core and both baselines; 100 steps may
# leave the classifier at chance, which would stop the run before its heatmaps
PLAN_METHODS = "tonno,gradcam,layercam,averaged_layercam,tomographic_layercam,intensity,centre"
PLAN_DATASET_OPTIONS = ("n_val=8",)
PLAN_SETTINGS = {"train.iterations": "100", "allow_chance": "true"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target",
        choices=("tomography", "methods", "scale", "figure4", "iterative", "train", "plan"),
        help="tomography: the core and ToNNO's overhead over its classifier; methods: "
        "slice-wise CAMs vs pytorch-grad-cam, per-volume times (3D CAMs too), peak memory vs "
        "chunk; "
        "scale: ToNNO and Tomographic LayerCAM@2 as the volume and L grow, log-log slopes; "
        "figure4: the paper's Figure 4 measured, Averaged vs Tomographic vs Iterative CAM; "
        "iterative: a trained classifier's (--checkpoint) LayerCAM maps against pooled "
        "slices, and where Averaged, Tomographic, Iterative CAM and its variants put their "
        "top voxels, per stage; "
        "train: seconds per training step of the 2D and 3D classifiers (the preset's) on "
        "--dataset, times their iterations; plan: run --plan's estimate per stage beside the "
        "measured time of the same run (--methods, --dataset-option, --set: the run's)",
    )
    add_dataset_arguments(parser, default="synthetic")
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda")
    parser.add_argument(
        "--preset",
        choices=("quick", "paper"),
        default=None,
        help="tomography settings (default: paper on a GPU, quick on a CPU)",
    )
    parser.add_argument(
        "--shape",
        type=int,
        nargs=4,
        metavar=("C", "D", "H", "W"),
        help="volume shape (default: 1 32 96 96 for quick, 1 128 128 128 for paper)",
    )
    parser.add_argument("--model", default="resnet10t", help="timm classifier (random weights)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs after a warm-up")
    parser.add_argument(
        "--learn",
        action="store_true",
        help="train: train the preset's 2D classifier on --dataset (--seeds times) and report "
        "the steps and minutes to evaluation AUC --auc, where it stopped, its AUC",
    )
    parser.add_argument("--seeds", type=int, default=1, help="train --learn: classifiers")
    parser.add_argument("--methods", default=PLAN_METHODS, help="plan: the run's methods")
    parser.add_argument(
        "--auc", type=float, default=0.95, help="train --learn: the evaluation AUC to reach"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="slices per CAM batch")
    parser.add_argument(
        "--no-memory", action="store_true", help="methods: skip the peak-memory runs"
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", help="scale: cube edges (default 32 48 64 96 128 on a CPU)"
    )
    parser.add_argument(
        "--angles", type=int, nargs="+", help="scale: values of L (default 8 16 32 64 on a CPU)"
    )
    parser.add_argument("--angle-size", type=int, help="scale: cube edge of the L sweep")
    parser.add_argument(
        "--out",
        help=f"the figure (PNG) of scale (default {SCALE_FIGURE}: log-log) or iterative "
        f"(default {ITERATIVE_FIGURE})",
    )
    parser.add_argument(
        "--grids",
        nargs="+",
        choices=("paper", "quick"),
        help="figure4: paper (224-px slices pooled to 7, 14, 28, 56 cells), quick (64 px to "
        "2, 4, 8, 16: the quick preset's stages); default both on a GPU, quick on a CPU",
    )
    parser.add_argument("--checkpoint", help="iterative: the trained 2D classifier")
    parser.add_argument(
        "--stages", type=int, nargs="+", default=[1, 2, 3, 4], help="iterative: CAM stages"
    )
    parser.add_argument(
        "--volumes",
        type=int,
        default=4,
        help="iterative: evaluation volumes (positives) to measure",
    )
    parser.add_argument(
        "--heatmaps",
        help="iterative: write every reconstruction of every evaluation volume to "
        "HEATMAPS/<name>@<stage>/<id>.npy, for `evaluate` (then --volumes counts all volumes)",
    )
    add_set_argument(
        parser,
        "TomographyConfig overrides, e.g. n_angles=500 chunk=16; for train: train.FIELD and "
        "train3d.FIELD, e.g. train.precision=float32",
    )


def run(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from benchmark.bench.methods import bench_methods
    from benchmark.bench.tomography import bench_tomography
    from benchmark.config import Train3DConfig, parse_overrides, resolve
    from benchmark.distributed import resolve_device
    from methods.config import TomographyConfig

    device = resolve_device(args.device)
    preset = args.preset or ("paper" if device.type == "cuda" else "quick")
    if args.target == "train":
        return _run_train(args, preset, device)
    if args.target == "plan":
        return _run_plan(args, device)
    overrides = parse_overrides(args.overrides)
    if args.target == "scale" and device.type == "cpu" and args.preset is None:
        overrides = {**SCALE_CPU, **overrides}
    if args.target == "figure4" and device.type == "cpu" and args.preset is None:
        overrides = {**FIGURE4_CPU, **overrides}
    config = resolve(TomographyConfig, preset, overrides=overrides)
    shape = tuple(args.shape or DEFAULT_SHAPES[preset])
    if args.target == "scale":
        return _run_scale(args, config, preset, device)
    if args.target == "figure4":
        return _run_figure4(args, config, preset, device)
    if args.target == "iterative":
        return _run_iterative(args, config, preset)
    if args.target == "tomography":
        rows = bench_tomography(config, shape, device, args.model, args.repeats).rows()
    else:
        rows = bench_methods(
            config,
            shape,
            device,
            args.model,
            args.batch_size,
            args.repeats,
            not args.no_memory,
            resolve(Train3DConfig, preset),
        )
    print(f"bench {args.target} ({preset} preset, {args.model} with random weights)")
    print(tabulate(rows, tablefmt="github", headers=("measure", "value")))
    return 0


def _run_scale(args: argparse.Namespace, config, preset: str, device) -> int:
    """``bench scale``: the figures per point, then the fitted log-log slopes, and a PNG."""
    from tabulate import tabulate

    from benchmark.bench.scale import bench_scale, plot_scale, scale_slopes

    channels = args.shape[0] if args.shape else 1
    points = bench_scale(
        config,
        tuple(args.sizes or SCALE_SIZES[preset]),
        tuple(args.angles or SCALE_ANGLES[preset]),
        args.angle_size or SCALE_ANGLE_SIZE[preset],
        device,
        args.model,
        args.batch_size,
        channels,
        repeats=args.repeats,
    )
    c = config
    print(
        f"bench scale ({preset} preset, {args.model} with random weights, {device.type}):"
        f" M = {c.n_slices}, {c.slice_size} px, chunk {c.chunk}, batch {args.batch_size}"
    )
    rows = [
        (
            p.spec,
            p.sweep,
            f"{p.size}^3",
            p.n_angles,
            f"{p.seconds:.2f}",
            "n/a" if p.peak_mb is None else f"{p.peak_mb:,.0f}",
            f"{p.summary_bytes / 1024:,.1f}",
            f"{p.heatmap_bytes / 1024:,.1f}",
        )
        for p in points
    ]
    headers = ("spec", "sweep", "volume", "L", "s", "peak MiB", "summary KiB", "float32 KiB")
    print(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))
    slopes = [
        (spec, f"{quantity} ~ {x}^b", "n/a" if b is None else f"{b:.2f}")
        for spec, x, quantity, b in scale_slopes(points)
    ]
    print()
    print(tabulate(slopes, headers=("spec", "log-log fit", "slope b"), tablefmt="github"))
    figure = args.out or SCALE_FIGURE
    plot_scale(points, figure)
    print(f"\nfigure: {figure}")
    return 0


def _run_figure4(args: argparse.Namespace, config, preset: str, device) -> int:
    """``bench figure4``: relative L2 errors per phantom, slice size and cells."""
    from tabulate import tabulate

    from benchmark.bench.figure4 import FIGURE4_GRIDS, bench_figure4, figure4_phantoms

    shape = tuple(args.shape[1:]) if args.shape else FIGURE4_SHAPE
    grids = args.grids or (["quick", "paper"] if device.type == "cuda" else ["quick"])
    chosen = tuple(FIGURE4_GRIDS[g] for g in dict.fromkeys(grids))
    rows = bench_figure4(config, figure4_phantoms(shape), device, chosen)
    c = config
    print(
        f"bench figure4 ({preset} preset, {device.type}): {'x'.join(map(str, shape))} volumes,"
        f" L = {c.n_angles_cam}, M = {c.n_slices}; relative L2 error inside the unit ball of"
        " each reconstruction from the slices average-pooled to cells x cells"
    )
    table = [
        (
            r.phantom,
            r.slice_size,
            r.cells,
            r.slice_size // r.cells,
            f"{r.averaged:.3f}",
            f"{r.tomographic:.3f}",
            f"{r.iterative:.3f}",
        )
        for r in rows
    ]
    headers = ("phantom", "slice px", "cells", "kernel px", "Averaged", "Tomographic", "Iterative")
    print(tabulate(table, headers=headers, tablefmt="github", disable_numparse=True))
    return 0


def _run_iterative(args: argparse.Namespace, config, preset: str) -> int:
    """``bench iterative``: each measure's median over the volumes, per stage (CPU)."""
    import pandas as pd
    import torch
    from tabulate import tabulate

    from benchmark.bench.iterative import diagnose, draw_views
    from benchmark.training.checkpoint import load_classifier

    if not args.checkpoint:
        raise SystemExit("bench iterative: --checkpoint FILE (a trained 2D classifier) is needed")
    dataset = open_dataset(args)
    model = load_classifier(args.checkpoint, torch.device("cpu"))
    ids = dataset.ids("val")
    if args.heatmaps:
        ids = ids[: args.volumes]
    else:
        ids = [i for i in ids if dataset.label(i) == 1][: args.volumes]
    heatmaps = Path(args.heatmaps) if args.heatmaps else None
    views: dict = {}
    measured = diagnose(model, dataset, ids, config, tuple(args.stages), heatmaps, views)
    rows = pd.DataFrame(list(measured))
    if rows.empty:
        raise SystemExit(f"bench iterative: no positive evaluation volume with a mask among {ids}")
    c = config
    print(
        f"bench iterative ({preset} preset: L = {c.n_angles_cam}, M = {c.n_slices}, "
        f"{c.slice_size} px): {args.checkpoint} on {rows['id'].nunique()} positive evaluation "
        f"volumes of {' '.join([args.dataset, *(args.dataset_option or [])])}; LayerCAM; "
        "median over the volumes"
    )
    table = rows.drop(columns="id").groupby("stage").median().T
    table.columns = [f"stage {k}" for k in table.columns]
    print(tabulate(table, headers="keys", tablefmt="github", floatfmt=".3f"))
    if heatmaps is not None:
        print(f"heatmaps: {heatmaps}/<name>@<stage>/ (python -m benchmark evaluate --heatmaps ...)")
    figure = Path(args.out or ITERATIVE_FIGURE)
    draw_views(views, figure)
    print(f"figure: {figure} (maxima over depth, the first positive, lesion outlined)")
    return 0


def _run_train(args: argparse.Namespace, preset: str, device) -> int:
    """``bench train``: ways to run a 2D training step side by side, both classifiers'
    step time and estimated training time and, with ``--learn``, how long the preset's 2D
    classifier takes to learn ``--dataset``."""
    from tabulate import tabulate

    from benchmark.bench.training import (
        auc_ceiling,
        bench_learning,
        bench_training_step,
        lesion_slice_share,
        slice_loss_floor,
        validation_ceiling,
    )
    from benchmark.config import (
        TRAIN_SECTIONS,
        Train3DConfig,
        TrainConfig,
        load_settings,
        resolve,
    )
    from benchmark.distributed import training_precision
    from benchmark.training.estimate import training_estimate

    settings = load_settings(None, args.overrides, ("train", "train3d"))
    dataset = open_dataset(args)
    config = resolve(TrainConfig, preset, settings["train"], section="train")
    print(f"bench train ({preset} preset, {args.dataset} on {device})")
    if not args.learn:
        timings = bench_training_step(config, dataset, device, repeats=max(args.repeats, 5))
        base = timings[0].slices / timings[0].seconds
        rows = [
            (
                t.variant.name,
                f"{t.seconds:.3f}",
                t.slices,
                f"{t.slices / t.seconds:,.0f}",
                f"{t.slices / t.seconds / base:.2f}x",
                "" if t.compile_seconds is None else f"{t.compile_seconds:.1f}",
            )
            for t in timings
        ]
        headers = ("2D step", "s / step", "slices", "slices / s", "speed-up", "compile s")
        print(tabulate(rows, tablefmt="github", headers=headers, disable_numparse=True))
        print()
        rows = []
        for kind, cls in (("2d", TrainConfig), ("3d", Train3DConfig)):
            section = TRAIN_SECTIONS[kind]
            chosen = resolve(cls, preset, settings[section], section=section)
            estimate = training_estimate(chosen, dataset, device, steps=max(args.repeats, 2))
            rows.append(
                (
                    kind,
                    chosen.model,
                    training_precision(device, chosen.precision),
                    f"{estimate.s_per_step:.3f}",
                    estimate.iterations,
                    estimate.cap or estimate.iterations,
                    f"{estimate.seconds / 3600:.2f}",
                )
            )
        headers = ("classifier", "model", "precision", "s / step", "steps expected", "cap", "hours")
        print(tabulate(rows, tablefmt="github", headers=headers))
        return 0
    options = " ".join(args.dataset_option)
    print(f"learning: {args.dataset} {options} ({len(dataset.ids('train'))} training volumes)")
    share = lesion_slice_share(config, dataset)
    if share is not None:
        floor = slice_loss_floor(share)
        positive_slices = math.ceil(config.batch_volumes / 2) * config.slices_per_volume
        print(
            f"training slices of positive volumes that cut a lesion: {share:.3f}"
            f" ({share * positive_slices:.1f} a step, of {positive_slices}); A.6's loss:"
            f" ln 2 = 0.693 at chance, at best {floor:.3f} for a perfect lesion detector"
            f" (the signal: {math.log(2) - floor:.3f} nats)"
        )
    ceiling = validation_ceiling(config, dataset)
    if ceiling is not None:
        cut, positives = ceiling
        print(
            f"evaluation positives with a lesion that a validation slice cuts"
            f" ({config.val_slices} per axis): {cut} of {positives}; a perfect slice"
            f" classifier's AUC: at most {auc_ceiling(cut, positives):.3f}"
        )
    sys.stdout.flush()  # what the data allow, before the long training
    seeds = range(config.seed, config.seed + args.seeds)
    runs = bench_learning(config, dataset, device, seeds, target=args.auc)
    rows = [
        (
            r.seed,
            "-" if r.target_step is None else r.target_step,
            "-" if r.target_minutes is None else f"{r.target_minutes:.1f}",
            r.step,
            r.best_step,
            f"{r.minutes:.1f}",
            f"{r.report['auc']:.3f} [{r.report['auc_ci_low']:.2f}, {r.report['auc_ci_high']:.2f}]",
        )
        for r in runs
    ]
    target = f"AUC {args.auc:g}"
    headers = (
        "seed",
        f"step to {target}",
        f"min to {target}",
        "stopped at",
        "kept step",
        "min",
        "evaluation AUC (95% CI)",
    )
    print(tabulate(rows, tablefmt="github", headers=headers, disable_numparse=True))
    return 0


def _run_plan(args: argparse.Namespace, device) -> int:
    """``bench plan``: ``run --plan`` and the same run (by default a small one: PLAN_*),
    in a temporary folder; its estimate per stage beside the measured seconds."""
    import tempfile

    from tabulate import tabulate

    from benchmark.bench.plan import bench_plan
    from benchmark.config import parse_overrides

    settings = {**PLAN_SETTINGS, **parse_overrides(args.overrides)}
    options = args.dataset_option or PLAN_DATASET_OPTIONS
    run_args = ["--dataset", args.dataset, "--methods", args.methods, "--device", device.type]
    run_args += [a for option in options for a in ("--dataset-option", option)]
    run_args += ["--set", *(f"{k}={v}" for k, v in settings.items())]
    if args.root:
        run_args += ["--root", args.root]
    if args.preset:
        run_args += ["--preset", args.preset]
    with tempfile.TemporaryDirectory(prefix="bench-plan-") as folder:
        text, stages = bench_plan(run_args, Path(folder))
    print(text)
    print(f"bench plan: python -m benchmark run {' '.join(run_args)}")
    rows = [
        (
            s.stage,
            f"{s.estimated:.0f}",
            f"{s.measured:.0f}",
            f"{s.measured / s.estimated:.2f}" if s.estimated > 0 else "n/a",
        )
        for s in stages
    ]
    headers = ("stage", "estimated s", "measured s", "measured / estimated")
    print(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))
    return 0

"""``bench tomography|methods``: throughput, overhead and speed-up ratios, side by side."""

from __future__ import annotations

import argparse

from benchmark.commands import add_set_argument

HELP = "measure throughput and overhead ratios (side by side, one run)"

DEFAULT_SHAPES = {"quick": (1, 32, 96, 96), "paper": (1, 128, 128, 128)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target",
        choices=("tomography", "methods"),
        help="tomography: the core and ToNNO's overhead over its classifier; methods: "
        "slice-wise CAMs vs pytorch-grad-cam, per-volume times, peak memory vs chunk",
    )
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
    parser.add_argument("--batch-size", type=int, default=64, help="slices per CAM batch")
    parser.add_argument(
        "--no-memory", action="store_true", help="methods: skip the peak-memory runs"
    )
    add_set_argument(
        parser,
        "TomographyConfig overrides, e.g. n_angles=500 chunk=16",
    )


def run(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from benchmark.bench import bench_methods, bench_tomography
    from benchmark.config import TomographyConfig, parse_overrides, resolve
    from benchmark.distributed import resolve_device

    device = resolve_device(args.device)
    preset = args.preset or ("paper" if device.type == "cuda" else "quick")
    config = resolve(TomographyConfig, preset, overrides=parse_overrides(args.overrides))
    shape = tuple(args.shape or DEFAULT_SHAPES[preset])
    if args.target == "tomography":
        rows = bench_tomography(config, shape, device, args.model, args.repeats).rows()
    else:
        rows = bench_methods(
            config, shape, device, args.model, args.batch_size, args.repeats, not args.no_memory
        )
    print(f"bench {args.target} ({preset} preset, {args.model} with random weights)")
    print(tabulate(rows, tablefmt="github", headers=("measure", "value")))
    return 0

"""``train --dataset NAME``: train the 2D slice classifier (paper 3.6, A.6), or with
``--classifier 3d`` the 3D one on whole volumes (beyond the paper)."""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmark.commands import (
    add_config_arguments,
    add_dataset_arguments,
    chosen_preset,
    open_dataset,
)

HELP = "train the 2D slice classifier (paper A.6), or the 3D one, on a data set's train split"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataset_arguments(parser)
    parser.add_argument(
        "--classifier",
        choices=("2d", "3d"),
        default="2d",
        help="2d: the slice classifier (train: section); 3d: a 3D ResNet on whole volumes "
        "(train3d: section, beyond the paper)",
    )
    parser.add_argument(
        "--model",
        help="paper variant (resnet10t, resnet10t_bn, resnet10t_gn, resnet10t_gn_np, "
        "resnet50_gn) or any timm model (train.model); with --classifier 3d resnet10_3d, "
        "resnet18_3d, resnet34_3d or resnet50_3d (train3d.model); default: the preset's",
    )
    parser.add_argument(
        "--weights",
        help="local file of pretrained weights (ImageNet; MedicalNet with --classifier 3d)",
    )
    add_config_arguments(parser, ("train", "train3d"))
    parser.add_argument("--out", help="output folder; default runs/<dataset>/<model>-<preset>")
    parser.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


def run(args: argparse.Namespace) -> int:
    from benchmark.config import TRAIN_SECTIONS, load_settings

    section = TRAIN_SECTIONS[args.classifier]  # --set takes only its fields
    settings = load_settings(args.config, args.overrides, settable=(section,))[section]
    for field in ("model", "weights"):
        if getattr(args, field) is not None:
            settings[field] = getattr(args, field)
    dataset = open_dataset(args)  # a wrong name, root or option: before torch is imported

    from tqdm.contrib.logging import logging_redirect_tqdm

    from benchmark.config import SECTIONS, resolve
    from benchmark.distributed import init, shutdown
    from benchmark.run.preflight import check_volumes, writable
    from benchmark.training.checkpoint import read_checkpoint
    from benchmark.training.train import train, training_summary

    context = init(args.device)  # joins torchrun's ranks: DDP over the global batch
    try:
        preset = chosen_preset(args.preset, context)  # as run's, so run finds the classifier
        config = resolve(SECTIONS[section], preset, overrides=settings, section=section)
        default_out = Path("runs") / args.dataset / f"{config.model}-{preset}"
        out = writable(args.out or default_out, "--out")
        with logging_redirect_tqdm():
            check_volumes(dataset, dataset.ids(), context)  # every voxel, before training
            # a diverged run raises a one-line ValueError (step, volumes): `error: ...`, exit 2
            path = train(dataset, config, out, resume=args.resume, context=context)
    finally:
        shutdown()
    if context.is_main:
        print(f"checkpoint: {path}: {training_summary(read_checkpoint(path))}")
    return 0

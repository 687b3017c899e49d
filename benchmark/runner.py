"""The benchmark run: classifier -> heatmaps -> summaries -> A.7 protocol -> leaderboards.

``python -m benchmark run`` is :func:`prepare_classifier` then :func:`run_benchmark`, whose
stages each resume where a killed run stopped:

1. heatmaps: every method spec on every validation volume, one
   :func:`~methods.heatmaps.compute_heatmaps` call per volume (so that specs share slices
   and classifier passes); each (spec, volume) heatmap is stored as it arrives, with its
   :func:`~benchmark.evaluation.heatmap_sketch`;
2. grids: one tau' grid per spec from the sketches of all its validation heatmaps
   (:func:`~benchmark.evaluation.threshold_grid`);
3. summaries: each heatmap against its ground truth on its spec's grid (A.7's component
   tables, :func:`~benchmark.evaluation.summarize`);
4. protocol: A.7's Monte-Carlo folds per spec (:func:`~benchmark.evaluation.evaluate`);
5. outputs: results, per-fold and timing CSVs, leaderboards, the Figure 6 layout, and
   NIfTI heatmaps on request.

Cache layout, under :func:`~benchmark.io.cache_root`, every file written atomically::

    heatmaps/<dataset>/<key>/key.json               what <key> hashes (see heatmap_key)
    heatmaps/<dataset>/<key>/<spec>/<volume>.npy    heatmap [D,H,W], float16 (float32 when
                                                    a value would overflow float16)
    heatmaps/<dataset>/<key>/<spec>/<volume>.json   its sketch and compute time; written
                                                    last, it marks the entry complete
    heatmaps/<dataset>/<key>/<spec>/summaries/<grid>/<volume>.npz
                                                    its Summary on the tau' grid <grid>

Grids, summaries and the protocol read the stored heatmaps, never the in-memory ones, so
a run that was killed and resumed ends with the numbers of an uninterrupted one. A shard
(``shard=(i, n)``) computes the heatmaps of every n-th validation volume into the same
cache and stops; a run without a shard then finds them and evaluates.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import gzip
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from benchmark import __version__, figures
from benchmark.checkpoint import (
    CHECKPOINT,
    checkpoint_hash,
    is_finished,
    load_classifier,
    read_checkpoint,
)
from benchmark.config import RunConfig, TomographyConfig, TrainConfig
from benchmark.distributed import resolve_device
from benchmark.evaluation import (
    EvaluationResult,
    GroundTruth,
    Summary,
    binarize,
    evaluate,
    heatmap_sketch,
    summarize,
    threshold_grid,
)
from benchmark.io import atomic_save_json, atomic_save_npy, atomic_write, cache_root
from benchmark.leaderboard import METRICS, best_layers, method_name, write_leaderboards
from benchmark.train import load_volume, train
from datasets.base import safe_stem
from methods import expand_specs
from methods.heatmaps import compute_heatmaps

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the meaning of stored heatmaps or summaries changes


class RunError(RuntimeError):
    """Heatmaps failed or are missing; every finished one is cached for the next run."""


# --- plan -----------------------------------------------------------------------------------


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/4" -> (2, 4)``: shard 2 of 4, counted from 1."""
    index, sep, count = text.partition("/")
    if not (sep and index.isdigit() and count.isdigit() and 1 <= int(index) <= int(count)):
        raise ValueError(f"shard {text!r}: expected i/n with 1 <= i <= n, e.g. 1/4")
    return int(index), int(count)


def shard_ids(ids: Sequence[str], shard: tuple[int, int] | None) -> list[str]:
    """The volumes of shard (i, n): every n-th from the i-th (all of them without a shard).

    Shards split volumes, not specs: the specs of one volume share its slices and passes.
    """
    if shard is None:
        return list(ids)
    index, count = shard
    return list(ids[index - 1 :: count])


def select_specs(methods: Sequence[str], exclude: Sequence[str]) -> tuple[list[str], list[str]]:
    """(specs to run, specs left out) of ``methods`` (``expand_specs`` tokens).

    ``exclude`` patterns (fnmatch) drop the specs that ``all`` or a wildcard brought in,
    never those of a method named outright.
    """
    tokens = [t.strip() for item in methods for t in item.split(",") if t.strip()]
    specs, left_out = [], []
    for token in tokens:
        broad = token == "all" or any(c in token for c in "*?[")
        for spec in expand_specs(token):
            if broad and _matches(spec, exclude):
                left_out.append(spec)
            elif spec not in specs:
                specs.append(spec)
    return specs, [s for s in dict.fromkeys(left_out) if s not in specs]


# --- classifier -----------------------------------------------------------------------------


def prepare_classifier(
    dataset: Any,
    config: TrainConfig,
    out_dir: str | Path,
    *,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "auto",
    finished_only: bool = False,
    progress: bool = True,
) -> Path:
    """The checkpoint whose classifier the methods explain (paper A.6).

    ``checkpoint`` is used as given. Otherwise ``<out_dir>/checkpoint.pt`` is trained,
    continued after a kill, or, when finished, checked against ``config`` and ``dataset``
    and reused (``train(..., resume=True)``). ``finished_only`` (shards, merges) never
    trains, so that shards started side by side cannot train the same folder.
    """
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint {path}")
        return path
    path = Path(out_dir) / CHECKPOINT
    if finished_only and not is_finished(path):
        raise ValueError(
            f"{path} is not a finished classifier: train it first, with the same command "
            "without --shard/--merge, or pass --checkpoint"
        )
    return train(dataset, config, out_dir, resume=True, device=device, progress=progress)


# --- heatmap cache --------------------------------------------------------------------------


def heatmap_key(
    dataset: Any,
    checkpoint: str | Path,
    tomography: TomographyConfig,
    batch_size: int,
    device: str | torch.device,
) -> dict[str, Any]:
    """Everything that changes a heatmap besides its spec and volume id (JSON types)."""
    key = {
        "cache_version": CACHE_VERSION,
        "benchmark": __version__,
        "checkpoint": checkpoint_hash(checkpoint),
        "dataset": dataset.name,
        "dataset_version": dataset.version,
        "dataset_options": dataset.options(),
        "tomography": dataclasses.asdict(tomography),
        "batch_size": batch_size,
        "device": torch.device(device).type,  # CUDA runs in bf16 autocast
    }
    return json.loads(json.dumps(key, sort_keys=True, default=str))


def _digest(data: bytes, length: int = 16) -> str:
    return hashlib.sha1(data).hexdigest()[:length]


def grid_id(grid: np.ndarray) -> str:
    """A name for a tau' grid: the hash of its float64 values."""
    return _digest(np.ascontiguousarray(grid, dtype=np.float64).tobytes(), 12)


def stored(heatmap: np.ndarray) -> np.ndarray:
    """A heatmap as the cache keeps it: float16 (half the disk) unless a value would
    overflow it, then float32. Everything downstream reads these values."""
    with np.errstate(over="ignore"):
        half = heatmap.astype(np.float16)
    return half if np.isfinite(half).all() else heatmap.astype(np.float32)


@dataclass(frozen=True)
class HeatmapStore:
    """The cache of one heatmap key: heatmaps, sketches and summaries (module docstring)."""

    root: Path

    @classmethod
    def open(cls, key: dict[str, Any], base: str | Path | None = None) -> HeatmapStore:
        """The store of ``key`` under ``base`` (default :func:`cache_root`)."""
        text = json.dumps(key, sort_keys=True)
        root = Path(base or cache_root()) / "heatmaps" / key["dataset"] / _digest(text.encode())
        if not (root / "key.json").exists():
            atomic_save_json(root / "key.json", key)
        return cls(root)

    def _stem(self, spec: str, volume_id: str) -> str:
        return str(self.root / spec / safe_stem(volume_id))

    def has(self, spec: str, volume_id: str) -> bool:
        return Path(f"{self._stem(spec, volume_id)}.json").exists()

    def save(self, spec: str, volume_id: str, heatmap: np.ndarray, seconds: float) -> None:
        """Store a heatmap (see :func:`stored`), then its record: sketch and seconds."""
        stem = self._stem(spec, volume_id)
        atomic_save_npy(f"{stem}.npy", heatmap)
        sketch = heatmap_sketch(heatmap.astype(np.float32)).tolist()
        record = {"spec": spec, "volume": volume_id, "sketch": sketch, "seconds": seconds}
        atomic_save_json(f"{stem}.json", record)

    def record(self, spec: str, volume_id: str) -> dict[str, Any]:
        return json.loads(Path(f"{self._stem(spec, volume_id)}.json").read_text())

    def heatmap(self, spec: str, volume_id: str) -> np.ndarray:
        """The stored heatmap [D,H,W] as float32."""
        return np.load(f"{self._stem(spec, volume_id)}.npy").astype(np.float32)

    def _summary_path(self, spec: str, volume_id: str, grid: np.ndarray) -> Path:
        return self.root / spec / "summaries" / grid_id(grid) / f"{safe_stem(volume_id)}.npz"

    def has_summary(self, spec: str, volume_id: str, grid: np.ndarray) -> bool:
        return self._summary_path(spec, volume_id, grid).exists()

    def summary(self, spec: str, volume_id: str, grid: np.ndarray) -> Summary | None:
        if not self.has_summary(spec, volume_id, grid):
            return None
        with np.load(self._summary_path(spec, volume_id, grid)) as data:
            return Summary.from_dict(data)

    def save_summary(self, spec: str, volume_id: str, grid: np.ndarray, summary: Summary):
        with atomic_write(self._summary_path(spec, volume_id, grid)) as file:
            np.savez(file, **summary.to_dict())


# --- stage 1: heatmaps ----------------------------------------------------------------------


def _checked(heatmap: torch.Tensor, shape: tuple[int, ...]) -> np.ndarray:
    """The heatmap as float32 numpy, or a ValueError if its shape or values are wrong."""
    array = heatmap.detach().float().cpu().numpy()
    if array.shape != tuple(shape):
        raise ValueError(f"heatmap of shape {array.shape} for a volume of shape {shape}")
    bad = array.size - np.count_nonzero(np.isfinite(array))
    if bad:
        raise ValueError(f"heatmap has {bad} non-finite values")
    return array


def _store_heatmaps(
    store: HeatmapStore,
    volume_id: str,
    volume: torch.Tensor,
    specs: list[str],
    model: torch.nn.Module,
    tomography: TomographyConfig,
    batch_size: int,
    bar: tqdm,
) -> None:
    """Compute ``specs`` on one volume in one call, storing each heatmap as it arrives.

    A heatmap's seconds run from the previous arrival: work that the specs share counts
    for the first of them to arrive.
    """
    start = time.perf_counter()
    for spec, heatmap in compute_heatmaps(specs, volume, model, tomography, batch_size):
        seconds = time.perf_counter() - start
        store.save(spec, volume_id, stored(_checked(heatmap, volume.shape[1:])), seconds)
        bar.set_postfix_str(f"{volume_id} {spec}", refresh=False)
        bar.update()
        start = time.perf_counter()


def _find_failures(
    run: Callable[[list[str]], None], specs: list[str], done: Callable[[str], bool]
) -> list[tuple[str, Exception]]:
    """``run(specs)``; after a failure, ``run([spec])`` for each spec not ``done`` yet, to
    find which failed (specs computed together fail together). (spec, error) per failure."""
    try:
        run(specs)
        return []
    except Exception as error:  # a method failed: find which, keep the others
        left = [s for s in specs if not done(s)]
        if len(left) == 1:
            return [(left[0], error)]
    failures = []
    for spec in left:
        try:
            run([spec])
        except Exception as error:
            failures.append((spec, error))
    return failures


def compute_missing_heatmaps(
    store: HeatmapStore,
    dataset: Any,
    volume_ids: Sequence[str],
    specs: Sequence[str],
    model: torch.nn.Module,
    tomography: TomographyConfig,
    batch_size: int,
    progress: bool = True,
) -> list[str]:
    """Stage 1: every (spec, volume) heatmap not yet in ``store``; failures, one line each.

    A volume that cannot be loaded is reported and skipped; a spec that fails is reported
    and not run again: everything else is computed and stored.
    """
    todo = {v: [s for s in specs if not store.has(s, v)] for v in volume_ids}
    todo = {v: pending for v, pending in todo.items() if pending}
    total = sum(map(len, todo.values()))
    cached = len(volume_ids) * len(specs) - total
    log.info("heatmaps: %d to compute, %d cached in %s", total, cached, store.root)
    device = next(model.parameters()).device
    failures: list[str] = []
    failed: set[str] = set()
    with tqdm(
        total=total, desc=f"heatmaps {dataset.name}", unit="map", disable=not progress
    ) as bar:
        for volume_id, pending in todo.items():
            bar.total -= sum(s in failed for s in pending)
            pending = [s for s in pending if s not in failed]
            if not pending:
                continue
            try:
                volume = load_volume(dataset, volume_id, device)
            except (ValueError, OSError) as error:
                failures.append(f"volume {volume_id}: {error}")
                log.error("%s", failures[-1])
                bar.update(len(pending))
                continue
            run = functools.partial(
                _store_heatmaps,
                store,
                volume_id,
                volume,
                model=model,
                tomography=tomography,
                batch_size=batch_size,
                bar=bar,
            )
            done = functools.partial(store.has, volume_id=volume_id)
            for spec, error in _find_failures(run, pending, done):
                failed.add(spec)
                failures.append(f"{spec} on {volume_id}: {type(error).__name__}: {error}")
                log.error("%s (not run again in this run)", failures[-1])
                log.debug("traceback of %s on %s", spec, volume_id, exc_info=error)
                bar.update()
    return failures


# --- stages 2-4: grids, summaries, protocol -------------------------------------------------


def ground_truth(dataset: Any, volume: Any) -> GroundTruth:
    """A.7's reference of a volume: its mask or boxes (as the data set annotates), or None."""
    if not dataset.has_annotation(volume.id):
        return None
    return volume.boxes if dataset.annotation == "boxes" else volume.mask


def spec_grids(
    store: HeatmapStore, specs: Sequence[str], volume_ids: Sequence[str]
) -> dict[str, np.ndarray]:
    """Stage 2: each spec's tau' grid from the sketches of all its validation heatmaps."""
    return {
        spec: threshold_grid([np.array(store.record(spec, v)["sketch"]) for v in volume_ids])
        for spec in specs
    }


def compute_summaries(
    store: HeatmapStore,
    dataset: Any,
    volume_ids: Sequence[str],
    grids: dict[str, np.ndarray],
    progress: bool = True,
) -> dict[str, list[Summary]]:
    """Stage 3: each stored heatmap's A.7 summary on its spec's grid (cached), per spec."""
    missing = [(s, v) for v in volume_ids for s in grids if not store.has_summary(s, v, grids[s])]
    summaries: dict[str, list[Summary]] = {spec: [] for spec in grids}
    with tqdm(total=len(missing), desc="summaries", unit="map", disable=not progress) as bar:
        for volume_id in volume_ids:
            truth, loaded = None, False
            for spec, grid in grids.items():
                summary = store.summary(spec, volume_id, grid)
                if summary is None:
                    if not loaded:
                        truth, loaded = ground_truth(dataset, dataset[volume_id]), True
                    try:
                        summary = summarize(store.heatmap(spec, volume_id), truth, grid)
                    except ValueError as error:
                        raise ValueError(f"{spec} on {volume_id}: {error}") from error
                    store.save_summary(spec, volume_id, grid, summary)
                    bar.update()
                summaries[spec].append(summary)
    return summaries


def evaluate_specs(
    summaries: dict[str, list[Summary]], labels: Sequence[int], config: RunConfig
) -> dict[str, EvaluationResult]:
    """Stage 4: A.7's Monte-Carlo protocol for each spec (the same folds for all)."""
    return {
        spec: evaluate(s, labels, folds=config.folds, seed=config.seed, n_tune=config.n_tune)
        for spec, s in summaries.items()
    }


# --- stage 5: outputs -----------------------------------------------------------------------


@dataclass(frozen=True)
class RunOutputs:
    """What a run produced: its tables (one row per spec, per fold, per spec's heatmap
    time; written as CSVs to the run folder) and the files of the other outputs."""

    results: pd.DataFrame
    folds: pd.DataFrame
    timings: pd.DataFrame
    leaderboards: list[Path]  # <dataset>.md, .csv, .html and .png
    nifti: list[Path]  # with save_heatmaps


def results_tables(
    dataset: str, model: str, evaluations: dict[str, EvaluationResult]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(results, folds): the leaderboard rows of :func:`write_leaderboards`, per-fold rows."""
    ident = {"dataset": dataset, "model": model}
    results = pd.DataFrame(
        [{**ident, "method": spec, **e.row()} for spec, e in evaluations.items()]
    )
    folds = pd.concat(
        [e.folds.assign(**ident, method=spec) for spec, e in evaluations.items()],
        ignore_index=True,
    )
    first = ["dataset", "model", "method"]
    return results, folds[first + [c for c in folds.columns if c not in first]]


def timings_table(
    store: HeatmapStore, specs: Sequence[str], volume_ids: Sequence[str]
) -> pd.DataFrame:
    """Seconds spent on each spec's heatmaps (when they were computed), with its family.

    Work that :func:`compute_heatmaps` shares between specs counts for the spec that
    delivered first.
    """
    rows = [
        {
            "method": spec,
            "family": method_name(spec).family,
            "seconds": sum(store.record(spec, v)["seconds"] for v in volume_ids),
            "volumes": len(volume_ids),
        }
        for spec in specs
    ]
    return pd.DataFrame(rows)


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_write(path, "w") as file:
        frame.to_csv(file, index=False)


def export_nifti(
    store: HeatmapStore,
    dataset: Any,
    specs: Sequence[str],
    volume_ids: Sequence[str],
    out_dir: Path,
) -> list[Path]:
    """``<out_dir>/<spec>/<volume>.nii.gz``: each heatmap with its volume's affine (mm, RAS+)."""
    import nibabel as nib

    written = []
    for volume_id in tqdm(volume_ids, desc="NIfTI", unit="volume", leave=False):
        affine = np.asarray(dataset[volume_id].affine, dtype=np.float64)
        for spec in specs:
            image = nib.Nifti1Image(store.heatmap(spec, volume_id), affine)
            image.header.set_xyzt_units("mm")
            path = out_dir / spec / f"{safe_stem(volume_id)}.nii.gz"
            with atomic_write(path) as file:
                file.write(gzip.compress(image.to_bytes(), compresslevel=1))
            written.append(path)
    return written


def figure_specs(results: pd.DataFrame, patterns: Sequence[str]) -> list[str]:
    """The best layer of each method family matching ``patterns``, in the paper's order.

    Families are specs without their layer (``layercam``, ``tomographic_layercam``); when
    no family matches, every family is shown.
    """
    frame = results.assign(**{m: np.nan for m in METRICS if m not in results})
    names = [method_name(spec) for spec in frame.method]
    frame = frame.assign(
        family=[n.family for n in names],
        layer=pd.array([n.layer for n in names], dtype="Int64"),
    )
    best = best_layers(frame)
    chosen = [s for s, f in zip(best.method, best.family, strict=True) if _matches(f, patterns)]
    return sorted(chosen or list(best.method), key=lambda spec: method_name(spec).order)


def _matches(family: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(family, p) for p in patterns)


def write_figure(
    store: HeatmapStore,
    dataset: Any,
    volume_ids: Sequence[str],
    results: pd.DataFrame,
    folds: pd.DataFrame,
    config: RunConfig,
    path: Path,
) -> Path | None:
    """Figure 6 layout: a few annotated validation positives, each method family at its
    best layer, binarised with fold 0's (tau, tau') (A.7). None when there is nothing to show.
    """
    positives = [v for v in volume_ids if dataset.label(v) == 1 and dataset.has_annotation(v)][
        : config.figure_volumes
    ]
    specs = figure_specs(results, config.figure_methods)
    if not positives or not specs:
        log.info("no annotated validation positive to show: no figure")
        return None
    first_fold = folds[folds.fold == 0].set_index("method")
    rows = []
    for volume_id in positives:
        volume = dataset[volume_id]
        columns = []
        for spec in specs:
            heatmap = store.heatmap(spec, volume_id)
            tau, tau_low = first_fold.loc[spec, ["tau", "tau_low"]]
            columns.append(
                figures.MethodMaps(
                    method_name(spec).display, heatmap, binarize(heatmap, tau, tau_low)
                )
            )
        truth = figures.truth_mask(ground_truth(dataset, volume), volume.image.shape[1:])
        rows.append(figures.figure_row(volume_id, volume.image[0], truth, columns))
    return figures.save_png(figures.draw(rows, title=f"{dataset.name}: heatmaps and masks"), path)


# --- the run --------------------------------------------------------------------------------


def run_benchmark(
    dataset: Any,
    checkpoint: str | Path,
    config: RunConfig,
    tomography: TomographyConfig,
    *,
    out_dir: str | Path,
    leaderboards: str | Path = "leaderboards",
    device: str | torch.device = "auto",
    shard: tuple[int, int] | None = None,
    compute: bool = True,
    progress: bool = True,
) -> RunOutputs | None:
    """Heatmaps of ``config.methods`` on the validation split, A.7 protocol, leaderboards.

    ``shard=(i, n)`` only computes its volumes' heatmaps and returns None. ``compute=False``
    (a merge) computes nothing and fails if a heatmap is missing. Failing heatmaps raise a
    :class:`RunError` after every other heatmap is computed and stored.
    """
    device = resolve_device(device)
    specs, left_out = select_specs(config.methods, config.exclude)
    if left_out:
        log.warning(
            "leaving out %d specs that the preset excludes (exclude=%s): %s; "
            "--set exclude= runs them",
            len(left_out),
            ",".join(config.exclude),
            ", ".join(left_out),
        )
    if not specs:
        raise ValueError(f"no method to run: methods={config.methods}, exclude={config.exclude}")
    volume_ids = dataset.ids("val")
    if not volume_ids:
        raise ValueError(f"{dataset.name}: the validation split is empty: nothing to evaluate")
    key = heatmap_key(dataset, checkpoint, tomography, config.batch_size, device)
    store = HeatmapStore.open(key)
    if compute:
        model = load_classifier(checkpoint, device)
        failures = compute_missing_heatmaps(
            store,
            dataset,
            shard_ids(volume_ids, shard),
            specs,
            model,
            tomography,
            config.batch_size,
            progress,
        )
        if failures:
            raise RunError(
                f"{len(failures)} failure(s), the first: {failures[0]}; every other heatmap "
                "is cached: fix the cause and rerun the same command"
            )
    if shard is not None:
        return None
    missing = [(s, v) for s in specs for v in volume_ids if not store.has(s, v)]
    if missing:
        spec, volume_id = missing[0]
        raise RunError(
            f"{len(missing)} heatmap(s) are not cached, the first: {spec} on {volume_id}; "
            "run the missing shards, or run without --merge"
        )
    grids = spec_grids(store, specs, volume_ids)
    summaries = compute_summaries(store, dataset, volume_ids, grids, progress)
    labels = [dataset.label(v) for v in volume_ids]
    evaluations = evaluate_specs(summaries, labels, config)
    model_name = read_checkpoint(checkpoint)["model_name"]
    results, folds = results_tables(dataset.name, model_name, evaluations)
    timings = timings_table(store, specs, volume_ids)

    out_dir = Path(out_dir)
    _write_csv(results, out_dir / "results.csv")
    _write_csv(folds, out_dir / "folds.csv")
    _write_csv(timings, out_dir / "timings.csv")
    notes = (
        [
            f"Left out by the preset (`exclude={','.join(config.exclude)}`; `--set exclude=` runs "
            f"them): {', '.join(left_out)}."
        ]
        if left_out
        else []
    )
    pages = write_leaderboards(results, leaderboards, notes=notes)
    figure = write_figure(
        store,
        dataset,
        volume_ids,
        results,
        folds,
        config,
        Path(leaderboards) / f"{dataset.name}.png",
    )
    nifti = []
    if config.save_heatmaps:
        nifti = export_nifti(store, dataset, specs, volume_ids, out_dir / "heatmaps")
    return RunOutputs(results, folds, timings, pages + ([figure] if figure else []), nifti)

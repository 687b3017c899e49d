"""``python -m benchmark run`` end to end on a tiny configuration: tables, resume after a
real kill, shards, NIfTI export, failing methods."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from test_leaderboard import md_table

from benchmark.cli import main
from benchmark.specs import parse_shard, select_specs
from datasets import load_dataset
from methods import Method, register_method
from methods.registry import METHODS

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]
SPECS = ["tonno", "layercam@1"]
DATASET_OPTIONS = {"shape": "[12,16,16]", "n_train": "8", "n_val": "12"}  # 6 + 6 in val
# a classifier of a few steps may be at chance: these runs test the machinery, not rankings;
# float32: bf16 steps on a CPU diverged at step 1 on 16-px slices (test_resnet, batch norms)
CONFIG = """\
run: {folds: 3, allow_chance: true}
train: {model: test_resnet, pretrained: false, iterations: 12, slice_size: 16, precision: float32,
        slices_per_volume: 4, val_every: 6, val_slices: 4, checkpoint_every: 4, log_every: 4}
tomography: {n_angles: 8, n_angles_cam: 4, n_slices: 6, slice_size: 16, chunk: 4}
"""
FAILING = {"mean": None}  # the toy method fails on the volume with this mean


TINY_DATASET = ["--dataset", "synthetic"] + [
    a for k, v in DATASET_OPTIONS.items() for a in ("--dataset-option", f"{k}={v}")
]


def tiny_args(config: Path, out: Path, *extra: str, methods: str = ",".join(SPECS)) -> list[str]:
    return [
        "run",
        *TINY_DATASET,
        "--preset",
        "quick",
        "--device",
        "cpu",
        "--config",
        str(config),
        "--methods",
        methods,
        "--out",
        str(out),
        "--leaderboards",
        str(out / "leaderboards"),
        *extra,
    ]


def tiny_dataset():
    return load_dataset("synthetic", **{k: yaml.safe_load(v) for k, v in DATASET_OPTIONS.items()})


def heatmap_records(cache: Path) -> list[Path]:
    """The complete (spec, volume) entries: heatmaps/<dataset>/<key>/<spec>/<volume>.json."""
    return list(cache.glob("heatmaps/*/*/*/*.json"))


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(CONFIG)
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory, config):
    """An uninterrupted run, training included, with NIfTI export: its run folder."""
    root = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TONNO_CACHE", str(root / "cache"))
        assert main(tiny_args(config, root / "run", "--save-heatmaps")) == 0
    return root


def use_cache(monkeypatch, path: Path) -> Path:
    monkeypatch.setenv("TONNO_CACHE", str(path))
    return path


def test_run_writes_tables_figure_and_the_folds(reference, capsys):
    run = reference / "run"
    results = pd.read_csv(run / "results.csv")
    assert list(results.method) == SPECS
    assert set(results.dataset) == {"synthetic"} and set(results.model) == {"test_resnet"}
    for metric in ("precision", "recall", "f1", "dice", "balanced_accuracy"):
        assert results[metric].between(0, 1).all() and f"{metric}_std" in results
    folds = pd.read_csv(run / "folds.csv")
    assert len(folds) == 3 * len(SPECS) and (folds.tau_low < folds.tau).all()
    assert (folds.n_scored == 6).all()  # the second half of 12 validation volumes
    board = reference / "run" / "leaderboards"
    page = (board / "synthetic.md").read_text()
    assert "| ToNNO " in page and "| LayerCAM (layer 1) " in page
    assert (board / "synthetic.html").exists() and (board / "synthetic.csv").exists()
    assert (board / "synthetic.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    timings = pd.read_csv(run / "timings.csv")
    assert list(timings.method) == SPECS and (timings.volumes == 12).all()


def test_a_killed_run_resumes_to_the_same_numbers(reference, config, tmp_path, monkeypatch):
    cache = use_cache(monkeypatch, tmp_path / "cache")
    args = tiny_args(config, tmp_path / "run")
    slow = (  # each group of heatmaps takes 0.2 s more, so that the kill lands among them
        "import sys, time; import benchmark.run.job as r; compute = r.compute_groups\n"
        "def slow(*a, **k):\n    for item in compute(*a, **k):\n"
        "        time.sleep(0.2)\n        yield item\n"
        "r.compute_groups = slow\nfrom benchmark.cli import main\nsys.exit(main(sys.argv[1:]))"
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    process = subprocess.Popen(
        [sys.executable, "-c", slow, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while len(heatmap_records(cache)) < 3 and process.poll() is None:
        assert time.monotonic() < deadline, "the run made no heatmap in 60 s"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done = len(heatmap_records(cache))
    assert 3 <= done < 2 * 12 and not (tmp_path / "run" / "results.csv").exists()

    assert main(args) == 0
    assert len(heatmap_records(cache)) == 2 * 12
    expected = (reference / "run" / "results.csv").read_text()
    assert (tmp_path / "run" / "results.csv").read_text() == expected
    expected_folds = pd.read_csv(reference / "run" / "folds.csv")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "run" / "folds.csv"), expected_folds)


def test_shards_then_a_merge_equal_one_run(reference, config, tmp_path, monkeypatch, capsys):
    use_cache(monkeypatch, tmp_path / "cache")
    checkpoint = ["--checkpoint", str(reference / "run" / "checkpoint.pt")]
    out = tmp_path / "merged"
    assert main(tiny_args(config, out, *checkpoint, "--shard", "1/2")) == 0
    assert "shard 1/2 done" in capsys.readouterr().out
    assert main(tiny_args(config, out, *checkpoint, "--merge")) == 1
    assert "12 heatmap(s) are not cached, the first: tonno on synthetic_0009" in (
        capsys.readouterr().err
    )
    assert main(tiny_args(config, out, *checkpoint, "--shard", "2/2")) == 0
    assert main(tiny_args(config, out, *checkpoint, "--merge")) == 0
    assert capsys.readouterr().out.endswith(f"page: {out / 'leaderboards' / 'synthetic.html'}\n")
    expected = (reference / "run" / "results.csv").read_text()
    assert (out / "results.csv").read_text() == expected
    # the cache keeps records and summaries, and full heatmaps of the figure's volumes only
    cache = tmp_path / "cache"
    assert len(heatmap_records(cache)) == len(SPECS) * 12
    assert len(list(cache.glob("heatmaps/*/*/*/summaries/*/*.npz"))) == len(SPECS) * 12
    kept = sorted(p.name.split("-")[0] for p in cache.glob("heatmaps/*/*/tonno/*.npy"))
    dataset = tiny_dataset()
    assert kept == [v for v in dataset.ids("val") if dataset.label(v) == 1][:3]


def test_a_shard_needs_a_finished_classifier(config, tmp_path, monkeypatch, capsys):
    use_cache(monkeypatch, tmp_path / "cache")
    assert main(tiny_args(config, tmp_path / "run", "--shard", "1/2")) == 2
    assert "checkpoint.pt is not a finished classifier" in capsys.readouterr().err


def test_saved_heatmaps_are_nifti_with_the_volume_affine(reference):
    dataset = tiny_dataset()
    files = sorted((reference / "run" / "heatmaps").glob("*/*.nii.gz"))
    assert len(files) == len(SPECS) * len(dataset.ids("val"))
    path = reference / "run" / "heatmaps" / "layercam@1" / "synthetic_0009.nii.gz"
    image = nib.load(path)
    volume = dataset["synthetic_0009"]
    np.testing.assert_allclose(image.affine, volume.affine, rtol=1e-7)  # NIfTI: float32
    assert image.shape == volume.image.shape[1:] and image.get_data_dtype() == np.float32
    (kept,) = (reference / "cache").glob("heatmaps/synthetic/*/layercam@1/synthetic_0009-*.npy")
    np.testing.assert_array_equal(np.asarray(image.dataobj), np.load(kept))


@pytest.fixture
def flaky_method():
    """``flaky``: the mean image as a heatmap, raising on the volume whose mean is FAILING."""

    @register_method("flaky")
    class Flaky(Method):
        def __call__(self, volume, model):
            if FAILING["mean"] is not None and abs(float(volume.mean()) - FAILING["mean"]) < 1e-6:
                raise RuntimeError("flaky broke")
            return volume.mean(0)

    yield
    METHODS._entries.pop("flaky")
    FAILING["mean"] = None


def test_a_failing_method_is_named_and_the_rest_is_kept(
    flaky_method, reference, config, tmp_path, monkeypatch, capsys
):
    cache = use_cache(monkeypatch, tmp_path / "cache")
    FAILING["mean"] = float(tiny_dataset()["synthetic_0014"].image.mean())
    checkpoint = str(reference / "run" / "checkpoint.pt")
    args = tiny_args(
        config, tmp_path / "run", "--checkpoint", checkpoint, methods="layercam@1,flaky"
    )
    assert main(args) == 1
    err = capsys.readouterr().err
    assert (
        "error: 1 failure(s), the first: flaky on synthetic_0014: RuntimeError: flaky broke" in err
    )
    cached = Counter(p.parent.name for p in heatmap_records(cache))
    assert cached == {"layercam@1": 12, "flaky": 6}  # flaky on 0008-0013, then left out

    FAILING["mean"] = None  # fixed
    assert main(args) == 0
    assert list(pd.read_csv(tmp_path / "run" / "results.csv").method) == ["layercam@1", "flaky"]


def test_a_bad_shard_is_a_clear_error():
    assert parse_shard("2/4") == (2, 4)
    for text in ("0/2", "3/2", "1", "a/b"):
        with pytest.raises(ValueError, match="expected i/n"):
            parse_shard(text)


def test_preset_exclusions_apply_to_all_and_wildcards_not_to_names():
    run, left_out = select_specs(["all"], ["*scorecam*"])
    assert "tonno" in run and not any("scorecam" in s for s in run)
    assert len(left_out) == 20  # five ScoreCAM families, four layers each
    assert select_specs(["scorecam@1", "*cam@1"], ["*scorecam*"])[0][0] == "scorecam@1"
    run, left_out = select_specs(["all"], ["cam3d_scorecam", "tonno"])  # a method: its specs
    assert sorted(left_out) == sorted(["tonno", *(f"cam3d_scorecam@{k}" for k in (1, 2, 3, 4))])
    assert "cam3d_gradcam@1" in run and "tonno" not in run


def test_a_damaged_cache_is_recomputed_to_the_same_numbers(
    reference, config, tmp_path, monkeypatch, caplog
):
    cache = use_cache(monkeypatch, tmp_path / "cache")
    shutil.copytree(reference / "cache", cache)
    (root,) = cache.glob("heatmaps/synthetic/*/")
    heatmap = next(root.glob("tonno/*.npy"))  # a kept heatmap, truncated, summary deleted
    heatmap.write_bytes(heatmap.read_bytes()[:100])
    stem = heatmap.name.removesuffix(".npy")
    for summary in root.glob(f"tonno/summaries/*/{stem}-*.npz"):
        summary.unlink()
    other = sorted(root.glob("layercam@1/summaries/*/*.npz"))[-1]
    other.write_bytes(other.read_bytes()[:-40])  # a truncated summary
    record = sorted(root.glob("tonno/*.json"))[-1]
    record.write_text('{"spec": "tonno", "sk')  # a half-written record
    gone = next(root.glob("layercam@1/*.npy"))
    gone.unlink()  # a kept heatmap deleted while its record stays
    key = json.loads((root / "key.json").read_text())
    (root / "key.json").write_text("garbage")

    checkpoint = ["--checkpoint", str(reference / "run" / "checkpoint.pt")]
    with caplog.at_level("WARNING"):
        assert main(tiny_args(config, tmp_path / "run", *checkpoint)) == 0
    for damaged in (heatmap, other, record, root / "key.json"):
        assert f"{damaged} is damaged" in caplog.text
    assert json.loads((root / "key.json").read_text()) == key  # rewritten
    expected = (reference / "run" / "results.csv").read_text()
    assert (tmp_path / "run" / "results.csv").read_text() == expected


def test_the_grid_comes_from_the_calibration_volumes(reference, config, tmp_path, monkeypatch):
    """With 4 calibration volumes, the numbers are A.7 on summaries made on the grid of
    those 4 volumes' heatmaps, computed here from the kept heatmaps."""
    from benchmark.protocol.assess import calibration_ids
    from benchmark.protocol.evaluation import evaluate, summarize, tail_quantiles, threshold_grid

    cache = use_cache(monkeypatch, tmp_path / "cache")
    checkpoint = ["--checkpoint", str(reference / "run" / "checkpoint.pt")]
    extra = ["--set", "calibration_volumes=4", "keep_heatmaps=true"]
    assert main(tiny_args(config, tmp_path / "run", *checkpoint, *extra)) == 0
    dataset = tiny_dataset()
    ids = dataset.ids("val")
    chosen = calibration_ids(ids, 4, seed=0)
    assert len(chosen) == 4 and chosen == calibration_ids(ids, 4, seed=0) != ids[:4]
    results = pd.read_csv(tmp_path / "run" / "results.csv").set_index("method")
    for spec in SPECS:
        heatmaps = {v: np.load(next(cache.glob(f"heatmaps/*/*/{spec}/{v}-*.npy"))) for v in ids}
        grid = threshold_grid([tail_quantiles(heatmaps[v]) for v in chosen])
        summaries = [summarize(heatmaps[v], dataset[v].mask, grid) for v in ids]
        expected = evaluate(summaries, [dataset.label(v) for v in ids], folds=3).row()
        for metric in ("f1", "dice", "balanced_accuracy"):
            assert results.loc[spec, metric] == pytest.approx(expected[metric], abs=1e-12)


def test_the_page_says_when_the_classifier_is_at_chance(reference, config, tmp_path, monkeypatch):
    import benchmark.run.runner as runner

    use_cache(monkeypatch, tmp_path / "cache")
    checkpoint = ["--checkpoint", str(reference / "run" / "checkpoint.pt")]
    for at_chance in (True, False):
        report = chance_report(at_chance)
        monkeypatch.setattr(runner, "classifier_report", lambda *a, r=report, **k: r)
        out = tmp_path / f"run-{at_chance}"
        assert main(tiny_args(config, out, *checkpoint)) == 0
        page = (out / "leaderboards" / "synthetic.md").read_text()
        auc = f"AUC {report['auc']:.2f} [{report['auc_ci_low']:.2f}, {report['auc_ci_high']:.2f}]"
        assert auc in page
        assert ("is at chance on the evaluation volumes" in page) == at_chance
        verdict = page.split("\n\n")[2 if at_chance else 1]  # after the warning, if any
        learned = "has not been shown to learn" if at_chance else "learned"
        assert verdict.startswith(f"The classifier `test_resnet` {learned}: validation {auc}")
        results = pd.read_csv(out / "results.csv")
        assert (results.classifier_auc == report["auc"]).all()
        assert (results.classifier_at_chance == at_chance).all()
        (next((tmp_path / "cache").glob("heatmaps/*/*/classifier-*.json"))).unlink()


def chance_report(at_chance: bool) -> dict:
    """A classifier report (``benchmark.training.scoring.classifier_report``) on the 12 volumes."""
    return {
        "auc": 0.55 if at_chance else 0.95,
        "auc_ci_low": 0.4 if at_chance else 0.9,
        "auc_ci_high": 0.7 if at_chance else 1.0,
        "balanced_accuracy": 0.5,
        "balanced_accuracy_ci_low": 0.4,
        "balanced_accuracy_ci_high": 0.6,
        "n_volumes": 12,
        "at_chance": at_chance,
    }


HINT = (
    "no heatmap was computed. Train longer (--set train.iterations=N), start from pretrained "
    "weights in a local file (--set train.weights=FILE), or --set allow_chance=true to compute "
    "and rank the heatmaps anyway"
)


TRAINED = ["checkpoint.pt", "config.yaml", "train_log.csv"]  # what training writes


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error: ")]


def cache_files(cache: Path) -> list[str]:
    """The names of the files under the heatmap cache, report digests and stores elided."""
    files = [p for p in (cache / "heatmaps").rglob("*") if p.is_file()]
    return sorted("classifier.json" if p.name.startswith("classifier-") else p.name for p in files)


def test_a_classifier_at_chance_stops_the_run_before_the_heatmaps(
    reference, config, tmp_path, monkeypatch, capsys
):
    """Exit code 3 and one line (AUC interval, steps, what to try); the cache holds the store's
    key and the classifier's report only, the run folder no table; allow_chance=true then
    runs as before, the page warning."""
    import benchmark.run.runner as runner

    cache = use_cache(monkeypatch, tmp_path / "cache")
    monkeypatch.setattr(runner, "classifier_report", lambda *a, **k: chance_report(True))
    checkpoint = reference / "run" / "checkpoint.pt"
    out = tmp_path / "run"
    args = tiny_args(config, out, "--checkpoint", str(checkpoint))
    assert main([*args, "--set", "allow_chance=false"]) == 3
    assert error_lines(capsys.readouterr().err) == [
        "error: the 2d classifier test_resnet (seed 0) is at chance on the 12 evaluation "
        "volumes: AUC 0.55, 95% interval [0.40, 0.70] includes 0.5 (trained 12 of "
        f"train.iterations=12 steps; {checkpoint}, kept); {HINT}"
    ]
    assert cache_files(cache) == ["classifier.json", "key.json"]
    assert not [p for p in out.rglob("*") if p.is_file()]  # no table, page or figure

    assert main([*args, "--set", "allow_chance=true"]) == 0
    assert len(heatmap_records(cache)) == 12 * len(SPECS)
    for page in ("synthetic.md", "synthetic.html"):
        text = (out / "leaderboards" / page).read_text()
        assert "is at chance on the evaluation volumes (AUC 0.55" in text
    assert pd.read_csv(out / "results.csv").classifier_at_chance.all()


def test_a_seed_at_chance_stops_the_run_before_any_seeds_heatmap(
    reference, config, tmp_path, monkeypatch, capsys
):
    """--seeds 2, seed 0 learned (reused), seed 1 at chance (trained now): every classifier
    is trained and reported before the first heatmap, so none is computed, and seed 1's
    checkpoint stays for the next run."""
    import benchmark.run.runner as runner

    cache = use_cache(monkeypatch, tmp_path / "cache")
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy2(reference / "run" / "checkpoint.pt", run / "checkpoint.pt")

    def report(model, dataset, ids, train_config, chunk, **kwargs):
        return chance_report(at_chance=train_config.seed == 1)

    monkeypatch.setattr(runner, "classifier_report", report)
    args = tiny_args(config, run, "--seeds", "2", "--set", "allow_chance=false")
    assert main(args) == 3
    line = error_lines(capsys.readouterr().err)
    assert len(line) == 1 and line[0].startswith(
        "error: the 2d classifier test_resnet (seed 1) is at chance on the 12 evaluation "
        "volumes: AUC 0.55, 95% interval [0.40, 0.70] includes 0.5 (trained 12 of "
        f"train.iterations=12 steps; {run / 'seed-1' / 'checkpoint.pt'}, kept)"
    )
    assert cache_files(cache) == ["classifier.json"] * 2 + ["key.json"] * 2
    files = sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file())
    assert files == ["checkpoint.pt", *(f"seed-1/{f}" for f in TRAINED)]  # no table, page


def test_the_chance_line_names_each_classifier_its_steps_and_its_settings():
    """Several at chance: all named, the first's numbers; a 3D one points to train3d."""
    from benchmark.run.runner import Trained, chance_error

    def trained(classifier, model, seed, step, stopped_early):
        return Trained(
            checkpoint=Path("runs") / model / "checkpoint.pt",
            job=None,
            model=None,
            classifier=classifier,
            model_name=model,
            key="0" * 16,
            train_config={"seed": seed, "iterations": 600},
            step=step,
            stopped_early=stopped_early,
            report=chance_report(True),
        )

    both = [trained("3d", "resnet10_3d", 2, 175, True), trained("2d", "resnet10t", 2, 600, False)]
    assert str(chance_error(both)) == (
        "2 classifiers are at chance on the 12 evaluation volumes, the 3d classifier "
        "resnet10_3d (seed 2) and the 2d classifier resnet10t (seed 2); the first: AUC 0.55, "
        "95% interval [0.40, 0.70] includes 0.5 (stopped early after 175 of "
        f"train3d.iterations=600 steps; {Path('runs/resnet10_3d/checkpoint.pt')}, kept); "
        + HINT.replace("train.", "train3d.")
    )


def torchrun(args: list[str], cache: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node 2 -m benchmark ARGS`` on the CPU (gloo)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    env = {**os.environ, "TONNO_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(REPO)])
    command = [*launcher, "--nproc-per-node", "2", "-m", "benchmark", *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_torchrun_ranks_split_the_volumes_and_match_one_process(reference, config, tmp_path):
    checkpoint = ["--checkpoint", str(reference / "run" / "checkpoint.pt")]
    done = torchrun(tiny_args(config, tmp_path / "run", *checkpoint), tmp_path / "cache", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("page: ") == 1  # rank 0 alone evaluates and writes
    expected = (reference / "run" / "results.csv").read_text()
    assert (tmp_path / "run" / "results.csv").read_text() == expected


def test_a_failing_rank_is_named_with_its_spec_and_volume(reference, config, tmp_path):
    mean = float(tiny_dataset()["synthetic_0009"].image.mean())  # the 2nd volume: rank 1's
    (tmp_path / "broken_plugin.py").write_text(
        "from methods import Method, register_method\n\n"
        "@register_method('broken')\n"
        "class Broken(Method):\n"
        "    def __call__(self, volume, model):\n"
        f"        if abs(float(volume.mean()) - {mean!r}) < 1e-6:\n"
        "            raise RuntimeError('broken on purpose')\n"
        "        return volume.mean(0)\n"
    )
    checkpoint = ["--checkpoint", str(reference / "run" / "checkpoint.pt")]
    args = ["--plugins", "broken_plugin"]
    args += tiny_args(config, tmp_path / "run", *checkpoint, methods="layercam@1,broken")
    done = torchrun(args, tmp_path / "cache", tmp_path)
    assert done.returncode != 0
    assert "rank 1: broken on synthetic_0009: RuntimeError: broken on purpose" in done.stderr
    assert len(heatmap_records(tmp_path / "cache")) == 12 + 6  # rank 0 finished its share


def test_under_torchrun_every_rank_stops_at_a_classifier_at_chance(reference, config, tmp_path):
    """Rank 0's report decides for all: no rank computes a heatmap, none waits for another,
    rank 0 alone says why and every rank exits with 3."""
    (tmp_path / "chance_plugin.py").write_text(
        "import benchmark.run.runner\n\n"
        f"benchmark.run.runner.classifier_report = lambda *a, **k: {chance_report(True)!r}\n"
    )
    checkpoint = ["--checkpoint", str(reference / "run" / "checkpoint.pt")]
    args = ["--plugins", "chance_plugin", *tiny_args(config, tmp_path / "run", *checkpoint)]
    done = torchrun([*args, "--set", "allow_chance=false"], tmp_path / "cache", tmp_path)
    assert done.returncode != 0
    assert len(error_lines(done.stderr)) == 1 and "includes 0.5" in done.stderr
    assert "exitcode  : 3" in done.stderr, done.stderr  # torchrun's report of its ranks
    assert cache_files(tmp_path / "cache") == ["classifier.json", "key.json"]


def test_per_case_scores_are_each_volumes_direct_scores_averaged_over_its_folds(reference):
    """Oracle: the direct path (binarize + match on the exported NIfTI heatmap) in every
    fold that scored the volume, with that fold's tau and tau' from folds.csv."""
    from benchmark.protocol.evaluation import binarize, match, monte_carlo_split

    run = reference / "run"
    cases = pd.read_csv(run / "per_case.csv", dtype={"volume": str})
    folds = pd.read_csv(run / "folds.csv")
    dataset = tiny_dataset()
    ids = dataset.ids("val")
    assert len(cases) == len(SPECS) * len(ids)
    annotated = np.array([dataset.label(v) == 1 for v in ids])  # synthetic: positives have masks
    for spec in SPECS:
        mine = cases[cases.method == spec].set_index("volume").loc[ids]
        scores = {v: [] for v in ids}
        for fold in range(3):
            split = monte_carlo_split(annotated, fold, seed=0)
            tau, tau_low = folds[(folds.method == spec) & (folds.fold == fold)][
                ["tau", "tau_low"]
            ].iloc[0]
            for i in split.score:
                volume = dataset[ids[i]]
                heatmap = np.asarray(nib.load(run / "heatmaps" / spec / f"{ids[i]}.nii.gz").dataobj)
                correct = (heatmap.max() > tau) == bool(volume.label)
                m = match(binarize(heatmap, tau, tau_low), volume.mask) if volume.label else None
                scores[ids[i]].append((correct, *(m and (m.f1, m.overlap) or (np.nan, np.nan))))
        for v in ids:
            expected = np.array(scores[v], dtype=float).mean(0) if scores[v] else [np.nan] * 3
            got = mine.loc[v, ["correct", "f1", "dice"]].to_numpy(float)
            np.testing.assert_allclose(got, expected, atol=1e-9)
            assert mine.loc[v, "n_scored"] == len(scores[v])
    results = pd.read_csv(run / "results.csv")
    for column in ("dice_ci_low", "dice_ci_high", "dice_delta", "dice_delta_ci_low"):
        assert column in results and results[column].notna().all()
    tonno = results.set_index("method").loc["tonno"]
    assert tonno.dice_ci_low <= tonno.dice_ci_high
    assert results.set_index("method").loc["layercam@1", "dice_delta"] == 0  # the reference
    summary = json.loads((run / "summary.json").read_text())
    assert len(summary["metric_per_case"]) == len(cases)
    assert summary["aggregates"]["test_resnet/tonno"]["dice"] == pytest.approx(tonno.dice)
    assert len(summary["aggregates"]["test_resnet/tonno"]["folds"]) == 3
    assert summary["settings"]["run"]["folds"] == 3 and summary["provenance"]["code"]


def evaluate_args(board: Path, heatmaps: Path, name: str, out: Path) -> list[str]:
    return [
        "evaluate",
        *TINY_DATASET,
        "--set",
        "folds=3",
        "--heatmaps",
        str(heatmaps),
        "--name",
        name,
        "--out",
        str(out),
        "--leaderboards",
        str(board),
    ]


def test_external_heatmaps_join_the_runs_page(reference, tmp_path, monkeypatch, capsys):
    """The run's own exported ToNNO heatmaps, evaluated as an external method, score exactly
    the run's ToNNO row; masks score Dice > 0.9 and noise < 0.1, all on the run's page."""
    use_cache(monkeypatch, reference / "cache")
    board = tmp_path / "leaderboards"
    shutil.copytree(reference / "run" / "leaderboards", board)
    dataset = tiny_dataset()
    masks, noise = tmp_path / "masks", tmp_path / "noise"
    rng = np.random.default_rng(0)
    for v in dataset.ids("val"):
        volume = dataset[v]
        for folder, heatmap in ((masks, volume.mask), (noise, rng.random(volume.mask.shape))):
            folder.mkdir(exist_ok=True)
            np.save(folder / f"{v}.npy", heatmap.astype(np.float32))
    runs = {
        "ToNNO again": reference / "run" / "heatmaps" / "tonno",
        "Masks": masks,
        "Noise": noise,
    }
    for name, folder in runs.items():
        assert main(evaluate_args(board, folder, name, tmp_path / name)) == 0
    page = pd.read_csv(board / "synthetic.csv").set_index(["model", "method"])
    ours = pd.read_csv(reference / "run" / "results.csv").set_index("method").loc["tonno"]
    again = page.loc[("external", "tonno-again")]
    for metric in ("precision", "recall", "f1", "dice", "balanced_accuracy"):
        assert again[metric] == pytest.approx(ours[metric], abs=1e-12)
    assert page.loc[("external", "masks"), "dice"] > 0.9
    assert page.loc[("external", "noise"), "dice"] < 0.1
    assert ("test_resnet", "tonno") in page.index and len(page) == len(SPECS) + 3
    assert page.loc[("external", "masks"), "dice_delta_ci_low"] > 0  # paired vs LayerCAM
    text = (board / "synthetic.md").read_text()
    assert "| Masks (external) " in text and "| ToNNO " in text
    cases = pd.read_csv(tmp_path / "Masks" / "per_case.csv")
    assert len(cases) == 12 and set(cases.method) == {"masks"}
    assert "Masks:" in capsys.readouterr().out


def test_a_run_adds_its_methods_to_the_run_folders_tables(
    reference, config, tmp_path, monkeypatch, capsys, caplog
):
    """intensity, then centre: the tables hold both; intensity again: still both, its row
    the recomputed one; another protocol (folds=2): the earlier rows are dropped, said once.
    Each run ends with one line naming its page."""
    use_cache(monkeypatch, reference / "cache")
    out = tmp_path / "run"
    checkpoint = ["--checkpoint", str(reference / "run" / "checkpoint.pt")]
    page = out / "leaderboards" / "synthetic.html"

    def run(methods: str, *extra: str) -> pd.DataFrame:
        assert main(tiny_args(config, out, *checkpoint, *extra, methods=methods)) == 0
        assert capsys.readouterr().out.splitlines()[-1] == f"page: {page}"
        return pd.read_csv(out / "results.csv").set_index("method")

    alone = run("intensity")
    both = run("centre")
    assert list(both.index) == ["intensity", "centre"] and page.is_file()
    assert both.loc["intensity", "dice"] == alone.loc["intensity", "dice"]
    assert len(pd.read_csv(out / "folds.csv")) == 2 * 3
    assert set(pd.read_csv(out / "per_case.csv").method) == {"intensity", "centre"}
    assert set(pd.read_csv(out / "timings.csv").method) == {"intensity", "centre"}
    board = pd.read_csv(out / "leaderboards" / "synthetic.csv")
    assert set(board.method) == {"intensity", "centre"}
    stale = both.assign(dice=both.dice.where(both.index != "intensity", -1.0))
    stale.reset_index()[pd.read_csv(out / "results.csv").columns].to_csv(
        out / "results.csv", index=False
    )
    again = run("intensity")
    assert sorted(again.index) == ["centre", "intensity"]
    assert again.loc["intensity", "dice"] == alone.loc["intensity", "dice"]
    assert again.loc["centre", "dice"] == both.loc["centre", "dice"]
    caplog.clear()
    other = run("intensity", "--set", "folds=2")
    assert list(other.index) == ["intensity"]
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert dropped == [
        f"{out / 'results.csv'}: dropped the earlier rows of 1 method(s) this run did not "
        f"compute: its evaluation context is {both.context.iloc[0]}, the new rows' "
        f"{other.context.iloc[0]}"
    ]


def test_seeds_average_classifiers_and_a_rerun_is_byte_identical(
    reference, config, tmp_path, monkeypatch
):
    """``--seeds 2`` reuses the run folder's classifier (seed 0), trains seed 1 in
    ``seed-1/``, and reports their mean and spread; the seed-1 classifier alone (its folder
    as the run folder, train.seed=1) gives the other half. The same command again writes
    byte-identical tables."""
    use_cache(monkeypatch, reference / "cache")
    run = tmp_path / "run"
    shutil.copytree(reference / "run", run, ignore=shutil.ignore_patterns("heatmaps"))
    board = run / "leaderboards"
    assert main(tiny_args(config, run, "--seeds", "2")) == 0
    assert (run / "seed-1" / "checkpoint.pt").exists()
    written = [*run.glob("*.csv"), *board.rglob("synthetic.*")]
    tables = {p: p.read_bytes() for p in written if p.is_file()}
    tables[run / "summary.json"] = (run / "summary.json").read_bytes()
    assert main(tiny_args(config, run, "--seeds", "2")) == 0
    for path, data in tables.items():
        assert path.read_bytes() == data, path
    alone = tmp_path / "seed-1"
    shutil.copytree(run / "seed-1", alone)
    assert main(tiny_args(config, alone, "--set", "train.seed=1")) == 0
    both, first, second = (
        pd.read_csv(folder / "results.csv", dtype={"seeds": str}).set_index("method")
        for folder in (run, reference / "run", alone)
    )
    for metric in ("f1", "dice", "balanced_accuracy"):
        pair = np.stack([first[metric], second[metric]])
        np.testing.assert_allclose(both[metric], pair.mean(0), atol=1e-12)
        np.testing.assert_allclose(both[f"{metric}_seed_sd"], pair.std(0, ddof=1), atol=1e-12)
    assert set(both.seeds) == {"0 1"} and set(second.seeds) == {"1"}
    assert set(pd.read_csv(run / "per_case.csv").seed) == {0, 1}
    summary = json.loads((run / "summary.json").read_text())
    assert [c["seed"] for c in summary["classifiers"]] == [0, 1]
    page = (board / "synthetic.md").read_text()
    assert "(seeds ± " in page and "classifier seeds 0, 1" in page
    sd = md_table(page, "Best layer per method")["Dice sd over seeds"]
    assert sd["ToNNO"] == f"{both.loc['tonno', 'dice_seed_sd']:.2f}"


def test_the_methods_explain_the_classifier_at_its_training_slice_size(
    reference, config, tmp_path, monkeypatch, caplog
):
    """The quick preset's 64-pixel slices give way to the checkpoint's 16 (same numbers as
    the reference run); a slice size set on purpose is kept, with a warning."""
    use_cache(monkeypatch, reference / "cache")
    unset = tmp_path / "unset.yaml"
    unset.write_text(CONFIG.replace("slice_size: 16, chunk", "chunk"))
    checkpoint = ["--checkpoint", str(reference / "run" / "checkpoint.pt")]
    with caplog.at_level("INFO", logger="benchmark.commands.run"):
        assert main(tiny_args(unset, tmp_path / "a", *checkpoint)) == 0
    assert "tomography.slice_size=16: the classifier's training size" in caplog.text
    ours = pd.read_csv(tmp_path / "a" / "results.csv")
    theirs = pd.read_csv(reference / "run" / "results.csv")
    assert ours.dice.tolist() == theirs.dice.tolist() and ours.source.equals(theirs.source)
    caplog.clear()
    with caplog.at_level("WARNING", logger="benchmark.commands.run"):
        args = tiny_args(unset, tmp_path / "b", *checkpoint, "--set", "tomography.slice_size=24")
        assert main(args) == 0
    assert "trained on 16-pixel slices: explaining it off its training size" in caplog.text


def test_a_method_revision_is_part_of_its_cache_address_and_only_its(tmp_path, monkeypatch):
    """Entries of ToNNO cached before a revision of its code are not served after it;
    methods at revision 0 keep the address they always had (the volume's digest)."""
    from benchmark.run.cache import HeatmapStore
    from benchmark.run.job import Job
    from methods import method_class

    class Volumes:
        def fingerprint(self, volume_id):
            return "a" * 64

        def truth_fingerprint(self, volume_id):
            return "b" * 64

    def store_levels():
        return HeatmapStore(tmp_path).levels  # tail quantiles of a record: one per level

    def job():
        store = HeatmapStore(tmp_path)
        return Job(Volumes(), ["tonno", "layercam@1"], ["v0"], store, None, 1, [], set(), set())

    assert method_class("tonno").revision == 1 and method_class("layercam@1").revision == 0
    record = {"max": 1.0, "sketch": [0.0] * (store_levels() + 1), "seconds": 0.5}
    first = job()
    for spec in ("tonno", "layercam@1"):
        first.store.save_record(spec, "v0", first.image(spec, "v0"), record)
    assert first.image("layercam@1", "v0") == "a" * 64 != first.image("tonno", "v0")
    monkeypatch.setattr(method_class("tonno"), "revision", 2)
    bumped = job()
    assert bumped.record("tonno", "v0") is None  # a miss: computed again
    assert bumped.record("layercam@1", "v0") == record
    monkeypatch.setattr(method_class("tonno"), "revision", 1)
    assert job().record("tonno", "v0") == record


def test_3d_cams_explain_their_own_classifier_beside_the_2d_one(
    reference, config, tmp_path, monkeypatch
):
    """3D CAMs in a run: a 3D classifier is trained beside the 2D one, its specs are
    computed in a store keyed by its checkpoint, its rows carry its model and its AUC, and
    the 2D rows keep their numbers."""
    from benchmark.training.checkpoint import checkpoint_id, load_classifier, read_checkpoint

    use_cache(monkeypatch, reference / "cache")
    run = tmp_path / "run"
    shutil.copytree(reference / "run", run, ignore=shutil.ignore_patterns("heatmaps"))
    with_3d = tmp_path / "with-3d.yaml"
    with_3d.write_text(
        config.read_text()
        + "train3d: {model: resnet10_3d, input_size: [12, 16, 16], batch_volumes: 2,\n"
        "          iterations: 4, val_every: 2, checkpoint_every: 2, log_every: 2,\n"
        "          holdout: 0.0, patience: 0}\n"
    )
    methods = ",".join([*SPECS, "cam3d_gradcam@2", "cam3d_layercam@3"])
    assert main(tiny_args(with_3d, run, methods=methods)) == 0
    checkpoint = tmp_path / "resnet10_3d-quick" / "checkpoint.pt"
    assert isinstance(load_classifier(checkpoint), torch.nn.Module)
    keys = [json.loads(p.read_text()) for p in (reference / "cache").glob("heatmaps/*/*/key.json")]
    assert checkpoint_id(read_checkpoint(checkpoint)) in {key["checkpoint"] for key in keys}

    results = pd.read_csv(run / "results.csv").set_index("method")
    before = pd.read_csv(reference / "run" / "results.csv").set_index("method")
    summary = json.loads((run / "summary.json").read_text())
    reports = {c["classifier"]: c for c in summary["classifiers"]}
    assert reports["3d"]["model"] == "resnet10_3d" and summary["settings"]["train3d"]
    for spec in ("cam3d_gradcam@2", "cam3d_layercam@3"):
        assert results.loc[spec, "model"] == "resnet10_3d"
        assert results.loc[spec, "classifier_auc"] == reports["3d"]["auc"]
    for spec in SPECS:
        assert results.loc[spec, "classifier_auc"] == reports["2d"]["auc"]
        for metric in ("f1", "dice", "balanced_accuracy"):
            assert results.loc[spec, metric] == before.loc[spec, metric]
    page = (run / "leaderboards" / "synthetic.md").read_text()
    best = md_table(page, "Best layer per method")
    assert best.loc["3D GradCAM (layer 2)", "Classifier AUC"] == f"{reports['3d']['auc']:.2f}"
    assert "Classifier `resnet10_3d` on the 12 evaluation volumes" in page
    assert "Model comparison" in page

    from benchmark.config import RunConfig
    from benchmark.run.runner import run_benchmark
    from methods.config import TomographyConfig

    two_d = run / "checkpoint.pt"  # a 2D classifier handed to a 3D CAM: refused, named
    with pytest.raises(ValueError, match="holds a 2d classifier; cam3d_gradcam@2 explains a 3d"):
        run_benchmark(
            tiny_dataset(),
            [{"3d": two_d}],
            RunConfig(),
            TomographyConfig(),
            specs=["cam3d_gradcam@2"],
            out_dir=tmp_path / "refused",
            progress=False,
        )

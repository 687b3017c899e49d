"""The command line and the packaging promises: light imports, our own `datasets`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )


def test_importing_the_packages_and_building_the_cli_does_not_import_torch():
    probe = (
        "import sys, benchmark.cli, methods, datasets; benchmark.cli.build_parser(); "
        "print(sorted(m for m in ('torch', 'timm', 'pandas') if m in sys.modules))"
    )
    assert run_python(probe).stdout.strip() == "[]"


def test_import_datasets_resolves_to_this_repository():
    import datasets

    assert Path(datasets.__file__).resolve() == REPO / "datasets" / "__init__.py"


def test_help_lists_every_command():
    result = subprocess.run(
        [sys.executable, "-m", "benchmark", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout


@pytest.mark.parametrize(
    "argv, found",
    [
        (["methods", "tonno"], "tonno\n"),
        (["methods", "layercam", "--specs"], "".join(f"layercam@{k}\n" for k in range(1, 5))),
        (
            ["methods", "tomographic_layercam@[23]"],
            "tomographic_layercam@2\ntomographic_layercam@3\n",
        ),
        (["datasets", "synth*"], "synthetic\nsynthetic_pet\n"),
    ],
)
def test_ls_lists_the_matches(argv, found, capsys):
    assert main(["ls", *argv]) == 0
    assert capsys.readouterr().out == found


@pytest.mark.parametrize(
    "argv, message",
    [
        (["methods", "xyz*"], "error: no method matches 'xyz*' (`python -m benchmark ls methods`"),
        (["methods", "xyz*", "--specs"], "error: no method matches 'xyz*'"),
        (["methods", "*cam@9"], "error: no method matches '*cam@9'"),
        (["methods", "layercm"], "error: unknown method 'layercm'; did you mean layercam"),
        (["datasets", "xyz*"], "error: no dataset matches 'xyz*' (`python -m benchmark ls datas"),
        (["datasets", "synthetc"], "error: unknown dataset 'synthetc'; did you mean synthetic"),
    ],
)
def test_ls_says_when_nothing_matches(argv, message, capsys):
    """As ``run --methods xyz*`` does: one line on stderr, exit code 2, nothing listed."""
    assert main(["ls", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith(message), err


def test_bad_override_is_a_one_line_error(capsys):
    assert main(["bench", "tomography", "--set", "nangles=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: command line: unknown TomographyConfig field(s) ['nangles']")
    assert "Traceback" not in err


def test_bench_tomography_prints_its_figures(capsys):
    settings = ["n_angles=4", "n_slices=4", "slice_size=16", "chunk=3"]
    args = ["bench", "tomography", "--device", "cpu", "--shape", "1", "6", "8", "8", "--set"]
    assert main(args + settings) == 0
    out = capsys.readouterr().out
    assert "| L angles, M slices, slice px, chunk" in out and "4, 4, 16, 3" in out
    assert "| slices cut " in out and "24 " in out  # 4 directions x (4 + 2) slices
    ratio = float(out.split("overhead ratio reconstruct / classifier")[1].split("|")[1])
    assert ratio > 0


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert "usage: python -m benchmark " + command in capsys.readouterr().out


def test_plugins_register_a_users_method(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_methods.py").write_text(
        "from methods import Method, register_method\n\n"
        "@register_method('my_plugin_method', layers=(1, 2))\n"
        "class Mine(Method):\n"
        "    def __call__(self, volume, model):\n"
        "        return volume[0]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from methods.registry import METHODS

    try:
        assert main(["--plugins", "my_methods", "ls", "methods", "my_*", "--specs"]) == 0
        assert capsys.readouterr().out.split() == ["my_plugin_method@1", "my_plugin_method@2"]
    finally:
        METHODS._entries.pop("my_plugin_method", None)
    assert main(["--plugins", "no_such_plugin_module", "ls", "methods"]) == 2
    assert "No module named 'no_such_plugin_module'" in capsys.readouterr().err


def test_bench_methods_compares_with_pytorch_grad_cam(capsys):
    settings = ["n_angles=4", "n_angles_cam=3", "n_slices=4", "slice_size=32", "chunk=4"]
    args = ["bench", "methods", "--device", "cpu", "--no-memory", "--model", "test_resnet"]
    args += ["--shape", "1", "4", "16", "16"]
    args.append("--set")
    assert main(args + settings) == 0
    out = capsys.readouterr().out
    for layer in (1, 2, 3, 4):
        assert f"| layercam@{layer}: ours / pytorch-grad-cam" in out
        assert f"| gradcam@{layer}: ours / pytorch-grad-cam" in out
    speedup = out.split("shared (compute_heatmaps) vs pytorch-grad-cam")[1].split("|")[1]
    assert float(speedup.split(":")[1].strip().rstrip("x")) > 0
    assert "| tonno per volume" in out and "| tomographic_layercam@2 per volume" in out
    assert "peak process memory" not in out


def test_peak_memory_is_measured_in_a_fresh_process():
    import torch

    from benchmark.bench.methods import _peak_memory_mb

    small = _peak_memory_mb("import torch", torch.device("cpu"))
    large = _peak_memory_mb("import torch\nx = torch.ones(64, 2**20)", torch.device("cpu"))
    assert small > 10 and 200 < large - small < 320  # 256 MiB more


def test_bench_scale_prints_slopes_and_writes_a_png(tmp_path, capsys):
    png = tmp_path / "scale.png"
    args = ["bench", "scale", "--device", "cpu", "--model", "test_resnet", "--sizes", "6", "8"]
    args += ["--angles", "3", "4", "--angle-size", "6", "--out", str(png), "--set"]
    settings = ["n_angles=3", "n_angles_cam=3", "n_slices=3", "slice_size=16", "chunk=2"]
    assert main(args + settings) == 0
    out = capsys.readouterr().out
    for spec in ("tonno", "tomographic_layercam@2"):
        for fit in ("seconds ~ voxels^b", "seconds ~ n_angles^b", "summary_bytes ~ voxels^b"):
            row = next(line for line in out.splitlines() if f"| {spec} " in line and fit in line)
            float(row.split("|")[3])  # a fitted slope, not n/a
    assert "| tonno                  | angles  | 6^3      | 4 " in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # a plan and a tiny run, in subprocesses: ~25 s on an idle 2-core CPU
def test_bench_plan_prints_the_estimate_beside_the_measured_time(capsys):
    args = ["bench", "plan", "--device", "cpu", "--methods", "tonno,layercam@1,gradcam@1"]
    for option in ("n_train=8", "n_val=4", "shape=[8,16,16]"):
        args += ["--dataset-option", option]
    args += ["--set", "train.iterations=2", "train.slices_per_volume=4", "train.slice_size=16"]
    args += ["train.precision=float32"]  # bf16 overflowed at step 2 of this 16-px network
    args += ["tomography.slice_size=16", "tomography.n_angles=8", "batch_size=8", "folds=2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    plan = next(line for line in out.splitlines() if line.startswith("| heatmaps "))
    assert plan.split("|")[2].strip() == "3"  # the plan's row, then the stages side by side
    for stage in ("heatmaps", "training (measured: and the rest)", "total"):
        row = next(line for line in out.splitlines() if line.startswith(f"| {stage} "))
        estimated, measured = (float(cell) for cell in row.split("|")[2:4])
        assert estimated >= 0 and measured > 0


@pytest.mark.parametrize("mistake", [["--set", "folds=0"], ["--methods", "nosuchmethod"]])
def test_an_instant_mistake_is_answered_before_torch_is_imported(mistake):
    probe = (
        "import sys; from benchmark.cli import main; "
        f"code = main(['run', '--dataset', 'synthetic', *{mistake!r}]); "
        "print(code, 'torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["2", "False"]
    assert result.stderr.startswith("error: ")

"""Every user error is one line on stderr, ``error: ...`` naming the culprit, exit code 2.

Each bad invocation fails before any training: the run folder holds no ``checkpoint.pt``
afterwards. ``-v`` keeps the traceback.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from benchmark.cli import main, user_message
from benchmark.config import (
    PRESETS,
    RunConfig,
    Train3DConfig,
    TrainConfig,
    check_config,
    check_fields,
    load_settings,
    resolve,
)
from benchmark.specs import select_specs
from methods.config import TomographyConfig

REPO = Path(__file__).resolve().parents[1]

# Cases checked where the methods, the run folder and the caches are first used
# (benchmark/run/runner.py, benchmark/commands/run.py): they pass once those check up front.
RUN_CASES = ()
# Checked where the data set takes its options (datasets.base.check_options: the types).
DATASET_CASES = ()

SYNTHETIC = ["--dataset", "synthetic", "--preset", "quick", "--device", "cpu"]
SYNTHETIC += ["--dataset-option", "n_train=4", "--dataset-option", "n_val=4"]
SYNTHETIC += ["--dataset-option", "shape=[8,16,16]"]
CAP = ["--set", "train.iterations=2"]  # should a case not fail fast, it trains for seconds

# id: (arguments before the command, arguments after `run` + SYNTHETIC, text the line names)
CASES = {
    "folds-0": ([], ["--set", "folds=0"], "--set folds=0: folds must be >= 2"),
    "folds-1": ([], ["--set", "folds=1"], "--set folds=1: folds must be >= 2, got 1"),
    "folds-1e9": ([], ["--set", "folds=1000000000"], "folds must be <= 1000 (100 times"),
    "folds-float": ([], ["--set", "folds=1e9"], "--set folds=1e9: cannot read '1e9' as int"),
    "config-folds-2.7": ([], ["--config", "{folds_float}"], "run.folds=2.7: expected a whole"),
    "config-folds-true": ([], ["--config", "{folds_bool}"], "run.folds=True: expected a whole"),
    "config-folds-1e9": (
        [],
        ["--config", "{folds_huge}"],
        "run.folds=1000000000.0: folds must be <= 1000",
    ),
    "grid_levels-1e9": ([], ["--set", "grid_levels=1000000000"], "grid_levels must be <= 1000"),
    "bootstrap-1e9": ([], ["--set", "bootstrap_resamples=1000000000"], "must be <= 20000"),
    "calibration-0": ([], ["--set", "calibration_volumes=0"], "calibration_volumes must be >= 1"),
    "calibration-negative": ([], ["--set", "calibration_volumes=-1"], "calibration_volumes=-1"),
    "budget-negative": ([], ["--set", "budget_passes=-1"], "budget_passes must be >= 0, got -1"),
    "budget-inf": ([], ["--set", "budget_passes=inf"], "budget_passes must be a finite number"),
    "seed-negative": ([], ["--set", "seed=-3"], "--set seed=-3: seed must be >= 0, got -3"),
    "train-seed-negative": ([], ["--set", "train.seed=-1"], "--set train.seed=-1: seed must"),
    "seeds-negative": ([], ["--seeds", "0,-3"], "--seeds '0,-3': seed must be >= 0, got -3"),
    "seeds-negative-plan": ([], ["--plan", "--seeds", "0,-3"], "--seeds '0,-3': seed must"),
    "iterations-0-plan": (
        [],
        ["--plan", "--set", "train.iterations=0"],
        "--set train.iterations=0: iterations must be >= 1, got 0",
    ),
    "holdout-1": ([], ["--set", "train.holdout=1"], "--set train.holdout=1: holdout must be in"),
    "train3d-rotation": ([], ["--set", "train3d.rotation=200"], "rotation must be <= 180"),
    "train3d-input_size": ([], ["--set", "train3d.input_size=1,8,8"], "input_size must be >= 2"),
    "n_tune-0": ([], ["--set", "n_tune=0"], "--set n_tune=0: n_tune must be >= 1"),
    "batch_size-0": ([], ["--set", "batch_size=0"], "--set batch_size=0"),
    "figure_volumes-negative": ([], ["--set", "figure_volumes=-1"], "figure_volumes"),
    "folds-not-a-number": ([], ["--set", "folds=ten"], "folds"),
    "chunk-0": ([], ["--set", "tomography.chunk=0"], "--set tomography.chunk=0: chunk"),
    "n_slices-1": ([], ["--set", "tomography.n_slices=1"], "--set tomography.n_slices=1"),
    "n_angles-0": ([], ["--set", "tomography.n_angles=0"], "tomography.n_angles"),
    "slice_size-1": ([], ["--set", "tomography.slice_size=1"], "tomography.slice_size"),
    "unknown-section": ([], ["--set", "tomo.chunk=4"], "tomo.chunk"),
    "config-broken-yaml": ([], ["--config", "{broken}"], "broken.yaml, line 3"),
    "config-folder": ([], ["--config", "{folder}"], "a_folder"),
    "config-missing": ([], ["--config", "{tmp}/missing.yaml"], "missing.yaml"),
    "config-unknown-section": ([], ["--config", "{unknown_section}"], "runn"),
    "config-bad-value": ([], ["--config", "{bad_value}"], "tomography.chunk=0"),
    "config-unknown-field": ([], ["--config", "{unknown_field}"], "nangles"),
    "checkpoint-text-file": ([], ["--checkpoint", "{text}"], "notes.txt"),
    "checkpoint-missing": ([], ["--checkpoint", "{tmp}/none.pt"], "none.pt"),
    "out-under-a-file": ([], ["--out", "{file}/run"], "a_file"),
    "dataset-unknown": ([], ["--dataset", "nosuch"], "nosuch"),
    "dataset-option-no-equals": ([], ["--dataset-option", "nonsense"], "nonsense"),
    "dataset-option-bad-type": ([], ["--dataset-option", "n_train=abc"], "n_train"),
    "methods-unknown": ([], ["--methods", "nosuchmethod"], "nosuchmethod"),
    "methods-empty": ([], ["--methods", ""], "no method"),
    "shard-out-of-range": ([], ["--shard", "3/2"], "3/2"),
    "reference-unknown": ([], ["--reference", "layercm"], "layercm"),
    "reference-bad-layer": ([], ["--set", "reference=layercam@9"], "layercam@9"),
    "seeds-zero": ([], ["--seeds", "0"], "--seeds '0'"),
    "seeds-repeated": ([], ["--seeds", "1,1"], "repeated"),
    "seeds-and-checkpoint": ([], ["--seeds", "2", "--checkpoint", "{text}"], "pick one"),
    "bootstrap-0": ([], ["--set", "bootstrap_resamples=0"], "bootstrap_resamples"),
    "allow_chance-not-a-bool": ([], ["--set", "allow_chance=maybe"], "expected true/false"),
    "budget_hours-replaced": (
        [],
        ["--set", "budget_hours=0.2"],
        "--set budget_hours=0.2: budget_hours was replaced by budget_passes",
    ),
    "plugin-missing": (["--plugins", "nosuchmodule"], [], "nosuchmodule"),
    "cache-under-a-file": ([], ["--set", "TONNO_CACHE={file}/cache"], "a_file"),
}


@pytest.fixture
def files(tmp_path):
    """The bad inputs the cases name, as ``{name}`` placeholders."""
    made = {"tmp": tmp_path}
    made["broken"] = tmp_path / "broken.yaml"
    made["broken"].write_text("run:\n  folds: 2\n  - 3\n")
    made["folder"] = tmp_path / "a_folder"
    made["folder"].mkdir()
    made["unknown_section"] = tmp_path / "sections.yaml"
    made["unknown_section"].write_text("runn:\n  folds: 2\n")
    made["bad_value"] = tmp_path / "bad_value.yaml"
    made["bad_value"].write_text("tomography:\n  chunk: 0\n")
    made["unknown_field"] = tmp_path / "unknown_field.yaml"
    made["unknown_field"].write_text("tomography:\n  nangles: 3\n")
    for name, value in (("folds_float", "2.7"), ("folds_bool", "true"), ("folds_huge", "1.0e+9")):
        made[name] = tmp_path / f"{name}.yaml"  # YAML reads 2.7 and true as 2 and 1 in an int
        made[name].write_text(f"run:\n  folds: {value}\n")
    made["text"] = tmp_path / "notes.txt"
    made["text"].write_text("not a checkpoint\n")
    made["file"] = tmp_path / "a_file"
    made["file"].write_text("a file, not a folder\n")
    return made


def invocation(case: str, files, out) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) of a case; ``--set TONNO_CACHE=...`` is an environment variable."""
    before, after, _ = CASES[case]
    after = [arg.format(**files) for arg in after]
    env = {}
    if after[:1] == ["--set"] and after[1].startswith("TONNO_CACHE="):
        env["TONNO_CACHE"] = after[1].partition("=")[2]
        after = []
    default_out = [] if "--out" in after else ["--out", str(out)]
    leaderboards = ["--leaderboards", str(files["tmp"] / "leaderboards")]
    return [*before, "run", *SYNTHETIC, *CAP, *default_out, *leaderboards, *after], env


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, marks=pytest.mark.xfail(reason="checked later, elsewhere", strict=False))
        if c in RUN_CASES + DATASET_CASES
        else c
        for c in CASES
    ],
)
def test_a_bad_invocation_is_one_line_naming_the_culprit(case, files, monkeypatch, capsys):
    out = files["tmp"] / "run"
    argv, env = invocation(case, files, out)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert CASES[case][2] in err, err
    assert not list(files["tmp"].rglob("checkpoint.pt")), "it trained before failing"


def test_verbose_keeps_the_traceback(files):
    argv, _ = invocation("chunk-0", files, files["tmp"] / "run")
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        main(["-v", *argv])


def test_train_yaml_errors_name_the_file(files, capsys):
    broken = ["train", *SYNTHETIC, "--out", str(files["tmp"] / "t"), "--config"]
    assert main([*broken, str(files["broken"])]) == 2
    assert capsys.readouterr().err.startswith(f"error: {files['broken']}, line 3")
    assert main([*broken, str(files["folder"])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a_folder" in err


def test_a_genuine_bug_still_shows_its_traceback(monkeypatch, capsys):
    import benchmark.commands.ls as ls

    def bug(args):
        raise TypeError("a bug in our code")

    monkeypatch.setattr(ls, "run", bug)
    with pytest.raises(TypeError, match="a bug in our code"):
        main(["ls", "methods"])


def test_every_preset_passes_the_checks():
    for cls, presets in PRESETS.items():
        for name, config in presets.items():
            assert resolve(cls, name) == config
            check_fields(cls, vars(config), "preset")
            check_config(config)


@pytest.mark.parametrize(
    "config, message",
    [
        (TrainConfig(holdout=1.0), "train.holdout=1.0: holdout must be in [0, 1), got 1.0"),
        (TrainConfig(lr=math.inf), "train.lr=inf: lr must be a finite number, got inf"),
        (Train3DConfig(input_size=(8, 1, 8)), "train3d.input_size=(8, 1, 8): input_size must"),
        (RunConfig(folds=1), "folds=1: folds must be >= 2, got 1"),
        (TomographyConfig(seed=-1), "tomography.seed=-1: seed must be >= 0, got -1"),
    ],
)
def test_a_config_built_in_code_is_checked_like_a_setting(config, message):
    """What train() and the runner check (check_config): the table of the command line."""
    with pytest.raises(ValueError, match=re.escape(message)):
        check_config(config)


def test_range_checks_name_the_yaml_file(tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump({"tomography": {"n_angles_cam": 0}}))
    message = r"settings.yaml: tomography.n_angles_cam=0: .* must be >= 1"
    with pytest.raises(ValueError, match=message):
        load_settings(path, [])
    path.write_text("tomography:\n  n_angles: [\n")
    with pytest.raises(ValueError, match=r"settings.yaml, line 3: not valid YAML"):
        load_settings(path, [])
    assert resolve(TomographyConfig, "quick", overrides={"n_slices": "2"}).n_slices == 2


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"methods": 5}, None),  # a YAML scalar where a list goes: a one-item tuple
        ({"folds": [1, 2]}, "--set folds=[1, 2]: cannot read"),
        ({"methods": []}, "no method was given"),
        ({"folds": 2.7}, "--set folds=2.7: expected a whole number, got 2.7"),  # YAML 2.7
        ({"folds": True}, "--set folds=True: expected a whole number, got True"),
        ({"budget_passes": "nan"}, "--set budget_passes=nan: expected a number, got nan"),
    ],
)
def test_values_of_the_wrong_shape_are_value_errors(overrides, message):
    if message is None:
        assert resolve(RunConfig, overrides=overrides).methods == ("5",)
        return
    with pytest.raises(ValueError, match=re.escape(message)):
        resolve(RunConfig, overrides=overrides)


def test_a_fixed_length_tuple_needs_its_length():
    from benchmark.config import TrainConfig

    with pytest.raises(ValueError, match=r"--set train.betas=0.9: expected 2 comma-separated"):
        resolve(TrainConfig, overrides={"betas": "0.9"}, section="train")
    assert resolve(TrainConfig, overrides={"betas": "0.8,0.99"}).betas == (0.8, 0.99)


def test_a_list_reads_the_same_with_or_without_brackets():
    """``--set exclude=[a, b]`` (as the YAML file spells it) is ``--set exclude=a,b``, not
    the one fnmatch pattern "[a, b]" (a character class that matches no spec)."""
    from benchmark.config import RunConfig

    for text in ("cam3d_scorecam,tonno", "[cam3d_scorecam, tonno]", " [ cam3d_scorecam,tonno ] "):
        assert resolve(RunConfig, overrides={"exclude": text}).exclude == (
            "cam3d_scorecam",
            "tonno",
        )


def test_user_messages_name_the_file_on_one_line(tmp_path):
    error = PermissionError(13, "Permission denied", str(tmp_path / "ro" / "run"))
    assert user_message(error) == f"{tmp_path / 'ro' / 'run'}: Permission denied"
    try:
        yaml.safe_load(io.StringIO("a: [\n"))
    except yaml.YAMLError as raised:
        assert user_message(raised).startswith("<file>, line 2: not valid YAML (")
    damaged = zipfile.BadZipFile("File is not a zip file")
    assert user_message(damaged).endswith("(.xlsx, .pt, .npz): File is not a zip file")
    assert user_message(ValueError("two\n  lines")) == "two lines"


def test_a_damaged_zip_is_a_user_error(monkeypatch, capsys):
    import benchmark.commands.ls as ls

    def damaged(args):
        raise zipfile.BadZipFile("File is not a zip file")

    monkeypatch.setattr(ls, "run", damaged)
    assert main(["ls", "methods"]) == 2
    assert capsys.readouterr().err == (
        "error: a damaged zip-based file (.xlsx, .pt, .npz): File is not a zip file\n"
    )


class Payload:
    """A pickle whose loading would create ``path``: a weights file must never run it."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("section", ["train", "train3d"])
def test_a_pickle_given_as_weights_is_one_line_naming_the_file(section, tmp_path, capsys):
    weights, marker = tmp_path / "weights.pt", tmp_path / "it-ran"
    weights.write_bytes(pickle.dumps(Payload(str(marker))))
    kind = ["--set", "train.model=resnet10t"] if section == "train" else ["--classifier", "3d"]
    settings = [f"{section}.weights={weights}", f"{section}.holdout=0", f"{section}.patience=0"]
    argv = ["train", *SYNTHETIC, *kind, "--out", str(tmp_path / "out")]
    assert main([*argv, *(a for s in settings for a in ("--set", s))]) == 2
    err = capsys.readouterr().err  # after the volumes' progress bar
    (line,) = [line for line in err.splitlines() if "error" in line or "Traceback" in line]
    assert line.startswith(f"error: {weights}: not ") and "loads safely" in line, err
    assert "weights_only" not in err
    assert not marker.exists() and not (tmp_path / "out" / "checkpoint.pt").exists()


@pytest.mark.parametrize("bad", ["pickle", "missing"])
def test_run_names_a_bad_3d_weights_file_before_training_the_2d_classifier(bad, tmp_path, capsys):
    weights, marker = tmp_path / "weights.pt", tmp_path / "it-ran"
    if bad == "pickle":
        weights.write_bytes(pickle.dumps(Payload(str(marker))))
    out = tmp_path / "out"
    argv = ["run", *SYNTHETIC, *CAP, "--methods", "tonno,cam3d_gradcam", "--out", str(out)]
    assert main([*argv, "--set", f"train3d.weights={weights}"]) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert line.startswith(f"error: {weights}: ") and "train3d.weights" in line, line
    assert not marker.exists() and not (out / "checkpoint.pt").exists()  # nothing trained


# --- one settings schema for `train` and `run`: the same file, the same `--set` spellings ---

SETTINGS = {  # every section, as `run --config` reads it; `train` uses the train: section
    "run": {"folds": 2, "methods": ["tonno"]},
    "train": {"iterations": 3, "slices_per_volume": 8, "lr": 0.01, "betas": [0.8, 0.99]},
    "tomography": {"n_angles": 8, "n_slices": 4},
}
TINY = ["--dataset", "synthetic", "--device", "cpu", "--dataset-option", "n_train=4"]
TINY += ["--dataset-option", "n_val=4", "--dataset-option", "shape=[8,16,16]"]


class Trained(Exception):
    """Raised by the stand-in for training: the configuration it was given, and where."""


def test_train_and_run_read_one_config_file_alike(tmp_path, monkeypatch, capsys):
    import benchmark.commands.run as run_command
    import benchmark.run.runner
    import benchmark.training.train
    from benchmark.config import TrainConfig

    def record(dataset, config, out, **options):
        raise Trained(config, Path(out).resolve())

    monkeypatch.setattr(benchmark.training.train, "train", record)  # what `train` calls
    monkeypatch.setattr(benchmark.run.runner, "train", record)  # what `run` calls
    monkeypatch.setattr(run_command, "_within_budget", lambda specs, *rest: (specs, None))
    monkeypatch.setenv("TONNO_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # both default folders: runs/synthetic/<model>-<preset>
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(SETTINGS))
    given = {}
    for command in ("train", "run"):
        argv = [command, *TINY, "--config", str(path), "--set", "train.seed=3"]
        with pytest.raises(Trained) as trained:
            main(argv)
        given[command] = trained.value.args
    assert given["train"] == given["run"]
    config, out = given["train"]
    quick = PRESETS[TrainConfig]["quick"]  # a CPU's default preset, for both commands
    assert (config.iterations, config.slices_per_volume, config.lr) == (3, 8, 0.01)
    assert (config.betas, config.seed, config.model) == ((0.8, 0.99), 3, quick.model)
    assert out == tmp_path / "runs" / "synthetic" / f"{quick.model}-quick"
    assert capsys.readouterr().out.count("preset: quick (the default on cpu)\n") == 2


FILES = {  # file name: (content, what the one error line says after the file's name)
    "flat.yaml": (
        {"iterations": 3},
        ": 'iterations' is not a section (expected run, train, train3d, tomography); "
        "put iterations under train: or train3d:",
    ),
    "typo.yaml": ({"train": {"iteratons": 3}}, ": unknown TrainConfig field(s) ['iteratons']"),
    "run_value.yaml": ({"run": {"folds": 0}}, ": run.folds=0: folds must be >= 2"),
    "list.yaml": (["train"], ": expected sections run, train, train3d, tomography of field: value"),
}


@pytest.mark.parametrize("command", ["train", "run"])
@pytest.mark.parametrize("name", list(FILES))
def test_both_commands_name_the_file_and_key_of_a_bad_setting(command, name, tmp_path, capsys):
    content, message = FILES[name]
    path = tmp_path / name
    path.write_text(yaml.safe_dump(content))
    argv = [command, *SYNTHETIC, "--out", str(tmp_path / "out"), "--config", str(path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {path}{message}"), err
    assert not (tmp_path / "out").exists(), "it started before failing"


SETS = {  # (command, --set item): the one error line
    ("train", "iterations=5"): "--set iterations=5: this command takes train.FIELD; "
    "did you mean --set train.iterations=5?",
    ("train --classifier 3d", "train.iterations=5"): "--set train.iterations=5: this "
    "command takes train3d.FIELD; did you mean --set train3d.iterations=5?",
    ("train", "folds=2"): "--set folds=2: this command takes train.FIELD",
    ("train", "tomography.n_angles=5"): "--set tomography.n_angles=5: this command takes train.",
    ("train", "train.iteratons=5"): "command line: unknown TrainConfig field(s) ['iteratons']",
    (
        "train",
        "tomo.chunk=4",
    ): "--set tomo.chunk=4: no section 'tomo' (expected train.FIELD)",
    ("run", "iterations=5"): "--set iterations=5: this command takes FIELD (run), train.FIELD, "
    "train3d.FIELD, tomography.FIELD; did you mean --set train.iterations=5 or "
    "--set train3d.iterations=5?",
    ("run", "train.folds=2"): "--set train.folds=2: this command takes FIELD (run), "
    "train.FIELD, train3d.FIELD, tomography.FIELD; did you mean --set folds=2?",
    ("run", "slice_size=32"): "did you mean --set train.slice_size=32 or "
    "--set tomography.slice_size=32?",
}


@pytest.mark.parametrize("command, item", list(SETS))
def test_a_set_in_another_section_says_how_it_is_spelled(command, item, tmp_path, capsys):
    argv = [*command.split(), *SYNTHETIC, "--out", str(tmp_path / "out"), "--set", item]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert SETS[command, item] in err
    assert not (tmp_path / "out").exists(), "it started before failing"


# --- instant mistakes: answered before torch is imported, in about a second ------------------

INSTANT = {  # run arguments: the one error line
    "--dataset nosuch": "error: unknown dataset 'nosuch' (`python -m benchmark ls datasets` "
    "lists all 7)",
    "--dataset synthetc": "error: unknown dataset 'synthetc'; did you mean synthetic, "
    "synthetic_pet? (`python -m benchmark ls datasets` lists all 7)",
    "--dataset autopet": "error: autopet: no root given: pass the data set's folder (--root)",
    "--dataset synthetic --methods tonno,layercm": "error: unknown method 'layercm'; did you "
    "mean layercam",
    # methods in any case pass; the data set's name is then the mistake
    "--dataset nosuch --methods ToNNO,LayerCAM@2": "error: unknown dataset 'nosuch'",
    "--dataset synthetic --reference LayerCM": "error: unknown method 'LayerCM'; did you mean "
    "layercam",
}


# the CLI, then whether it loaded torch: sys.modules, not -X importtime (which leaves
# out modules that importlib.import_module loads inside a registry query)
LOADED = (
    "import sys; from benchmark.cli import main; code = main(sys.argv[1:]); "
    "print(*sorted({m.split('.')[0] for m in sys.modules} & {'torch'})); "
    "sys.exit(code)"
)


@pytest.mark.parametrize("arguments", list(INSTANT))
def test_an_instant_mistake_is_answered_before_torch_is_imported(arguments, tmp_path):
    argv = [sys.executable, "-c", LOADED, "run", *arguments.split(), "--out", str(tmp_path / "o")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TONNO_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.startswith(INSTANT[arguments]), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "torch" not in done.stdout.split()
    assert not (tmp_path / "o").exists()


def test_method_names_are_read_in_any_case():
    assert select_specs(["ToNNO,LayerCAM@2", "Intensity"], ["tonno"]) == (
        ["tonno", "layercam@2", "intensity"],
        [],
    )
    assert select_specs(["TOMOGRAPHIC_*@2"], ["Tomographic_ScoreCAM"])[1] == [
        "tomographic_scorecam@2"
    ]
    assert select_specs(["ALL"], ["ScoreCAM"])[1] == [f"scorecam@{k}" for k in (1, 2, 3, 4)]

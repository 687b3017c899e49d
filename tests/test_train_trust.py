"""Can the trained classifier be trusted? Divergence, stale checkpoints, early stopping,
distributed training and the classifier report (benchmark/training/train.py, paper A.6)."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import shutil
import socket
import struct
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from scipy.stats import bootstrap
from sklearn.metrics import roc_auc_score
from test_train import SHAPE, TINY, TinySet, _recording_train_step
from torch import nn

import benchmark.training.train as training
from benchmark.config import TrainConfig
from benchmark.distributed import Context
from benchmark.protocol.stats import bootstrap_ci
from benchmark.training.checkpoint import (
    DamagedCheckpoint,
    checkpoint_id,
    is_finished,
    load_classifier,
    read_checkpoint,
    save_checkpoint,
    state_digest,
)
from benchmark.training.data import holdout_split
from benchmark.training.scoring import auc_or_nan, classifier_report, window_above_chance
from benchmark.training.slices import draw_batch
from benchmark.training.train import train


class PoisonedSet(TinySet):
    """TinySet with one training volume replaced by ``value`` everywhere."""

    def __init__(self, poisoned: str, value: float):
        super().__init__()
        self._image[poisoned] = np.full_like(self._image[poisoned], value)


def _first_step_drawing(sample_id: str, data: TinySet, config) -> tuple[int, list[str]]:
    """The first step whose batch holds ``sample_id``, and that batch (the loop's draws)."""
    generator = torch.Generator().manual_seed(config.seed)
    ids = data.ids("train")
    pools = [i for i in ids if data.label(i)], [i for i in ids if not data.label(i)]
    for step in range(1, config.iterations + 1):
        batch = draw_batch(*pools, config, generator).ids
        if sample_id in batch:
            return step, batch
    raise AssertionError(f"{sample_id} is never drawn")


def test_absurd_volume_stops_training_naming_the_step_and_volume(tmp_path):
    config = dataclasses.replace(TINY, iterations=20)
    data = PoisonedSet("tiny_03", 1e30)
    step, batch = _first_step_drawing("tiny_03", data, config)
    assert step > 1  # a checkpoint was written before the bad batch
    with pytest.raises(ValueError) as error:
        train(data, config, tmp_path, progress=False)
    message = str(error.value)
    assert re.match(
        f"training diverged at step {step}: non-finite (loss|gradients|weights)", message
    )
    assert f"volumes {', '.join(batch)};" in message and "1e+30 in tiny_03" in message
    assert "\n" not in message
    assert not is_finished(tmp_path / "checkpoint.pt")


def test_nan_volume_is_named_before_the_step(tmp_path):
    config = dataclasses.replace(TINY, iterations=20)
    data = PoisonedSet("tiny_05", np.nan)
    step, _ = _first_step_drawing("tiny_05", data, config)
    with pytest.raises(ValueError, match=f"training input at step {step}: .* tiny_05 "):
        train(data, config, tmp_path, progress=False)
    assert not is_finished(tmp_path / "checkpoint.pt")


def test_non_finite_checkpoint_is_not_reused(tmp_path):
    data = TinySet()
    path = train(data, dataclasses.replace(TINY, iterations=2), tmp_path, progress=False)
    assert is_finished(path)
    state = read_checkpoint(path)
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))
    save_checkpoint(path, state)
    assert not is_finished(path)
    with pytest.raises(ValueError, match="non-finite weights.*not reused"):
        train(data, dataclasses.replace(TINY, iterations=2), tmp_path, resume=True, progress=False)


def flip_first_tensor(path, bit: int) -> None:
    """Flip ``bit`` of every float32 of the checkpoint's first tensor (the model's first
    weight: its storage is the zip member ``.../data/0``), in place (the size stays)."""
    with zipfile.ZipFile(path) as archive:
        (info,) = [i for i in archive.infolist() if i.filename.endswith("/data/0")]
    data = bytearray(path.read_bytes())
    name, extra = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name + extra
    values = np.frombuffer(bytes(data[start : start + info.file_size]), np.uint32)
    data[start : start + info.file_size] = (values ^ np.uint32(1 << bit)).tobytes()
    path.write_bytes(bytes(data))


def _without_digest(path):
    """A checkpoint as written before digests: the same state, no ``digest``."""
    state = read_checkpoint(path)
    del state["digest"]
    torch.save(state, path)


@pytest.mark.parametrize(
    "damage",
    [
        lambda path: flip_first_tensor(path, bit=0),  # the lowest bit of the mantissa
        lambda path: flip_first_tensor(path, bit=30),  # the top bit of the exponent
        lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]),
        _without_digest,
    ],
    ids=["mantissa", "exponent", "truncated", "no-digest"],
)
def test_a_damaged_checkpoint_is_named_set_aside_and_retrained(tmp_path, caplog, damage):
    data, config = TinySet(), dataclasses.replace(TINY, iterations=2)
    fresh = read_checkpoint(train(data, config, tmp_path / "fresh", progress=False))
    shutil.copytree(tmp_path / "fresh", tmp_path / "run")
    path = tmp_path / "run" / "checkpoint.pt"
    damage(path)
    with pytest.raises(DamagedCheckpoint, match=f"^{path} "):
        load_classifier(path)
    assert not is_finished(path)
    with caplog.at_level(logging.WARNING, logger="benchmark.training.train"):
        assert train(data, config, tmp_path / "run", resume=True, progress=False) == path
    assert f"{path} " in caplog.text and "kept aside as checkpoint.unverified.pt" in caplog.text
    assert (tmp_path / "run" / "checkpoint.unverified.pt").exists()
    retrained = read_checkpoint(path)  # from step 0: the weights of a fresh training
    for key, value in fresh["model"].items():
        assert torch.equal(retrained["model"][key], value), key
    assert checkpoint_id(retrained) == checkpoint_id(fresh)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # a flipped protocol byte
def test_a_flipped_byte_anywhere_in_a_checkpoint_is_damage_or_harmless(tmp_path):
    """Every byte, one at a time: the read is refused, or gives the saved state (bytes that
    hold no value: zip padding, timestamps)."""
    path = tmp_path / "checkpoint.pt"
    state = {"model": {"w": torch.arange(6.0)}, "config": {"lr": 0.1}, "step": 3, "arch": "a"}
    save_checkpoint(path, {**state, "norm": "gn", "in_chans": 1})
    saved, right = path.read_bytes(), read_checkpoint(path)["digest"]
    outcomes = set()
    for at in range(len(saved)):
        path.write_bytes(saved[:at] + bytes([saved[at] ^ 0x10]) + saved[at + 1 :])
        try:
            outcomes.add(read_checkpoint(path)["digest"] == right or "another state")
        except DamagedCheckpoint:
            outcomes.add("refused")
    assert outcomes == {True, "refused"}


def test_the_digest_covers_every_value_and_not_the_key_order():
    state = {"model": {"w": torch.zeros(2), "b": torch.ones(1)}, "log": [{"loss": 0.5}]}
    digest = state_digest(state)
    reordered = {"log": state["log"], "model": {"b": torch.ones(1), "w": torch.zeros(2)}}
    assert state_digest(reordered) == digest
    changed = [
        {**state, "model": {"w": torch.zeros(2, dtype=torch.int32), "b": torch.ones(1)}},
        {**state, "model": {"w": torch.zeros(1, 2), "b": torch.ones(1)}},
        {**state, "log": [{"loss": math.nextafter(0.5, 1.0)}]},
        {**state, "log": [{"loss": "0.5"}]},
        {**state, "extra": None},
    ]
    assert len({digest, *map(state_digest, changed)}) == 1 + len(changed)
    assert state_digest({**state, "digest": "anything"}) == digest


class EditedSet(TinySet):
    """TinySet with the content of some training volumes changed (a fixed preprocessing)."""

    def __init__(self, edited: tuple[str, ...]):
        super().__init__()
        for key in edited:
            self._image[key] = self._image[key] + 0.5


def test_changed_training_data_sets_the_old_checkpoint_aside(tmp_path, caplog):
    config = dataclasses.replace(TINY, iterations=2)
    old = read_checkpoint(train(TinySet(), config, tmp_path, progress=False))
    same = train(TinySet(), config, tmp_path, resume=True, progress=False)  # reused
    assert read_checkpoint(same)["data_digest"] == old["data_digest"]

    with caplog.at_level(logging.WARNING, logger="benchmark.training.train"):
        path = train(
            EditedSet(("tiny_02", "tiny_05")), config, tmp_path, resume=True, progress=False
        )
    aside = tmp_path / f"checkpoint.{old['data_digest'][:8]}.pt"
    assert read_checkpoint(aside)["data_digest"] == old["data_digest"]  # nothing lost
    new = read_checkpoint(path)
    assert new["data_digest"] != old["data_digest"] and new["step"] == 2
    assert "2 of 8 training volumes changed" in caplog.text and aside.name in caplog.text
    # retrained from step 0 on the new data: the same as a fresh run on it
    fresh = read_checkpoint(
        train(EditedSet(("tiny_02", "tiny_05")), config, tmp_path / "fresh", progress=False)
    )
    for key, value in fresh["model"].items():
        assert torch.equal(new["model"][key], value), key
    # validation volumes are not training data; config changes stay an error
    with pytest.raises(ValueError, match="other settings.*lr"):
        train(TinySet(), dataclasses.replace(config, lr=1.0), tmp_path, resume=True)


def test_holdout_is_stratified_seeded_and_from_the_train_split():
    ids = [f"v{i:02d}" for i in range(20)]
    labels = [i % 2 for i in range(20)]
    kept, held = holdout_split(ids, labels, 0.3, seed=0)
    assert sorted(kept + held) == sorted(ids) and not set(kept) & set(held)
    assert sorted(labels[ids.index(i)] for i in held) == [0, 0, 0, 1, 1, 1]  # 0.3 * 10 a class
    assert holdout_split(ids[::-1], labels[::-1], 0.3, seed=0)[1] == held  # order-free
    assert holdout_split(ids, labels, 0.3, seed=1)[1] != held
    assert len(holdout_split(ids, labels, 0.01, seed=0)[1]) == 4  # at least 2 a class
    with pytest.raises(ValueError, match="holdout=0.99"):
        holdout_split(ids, labels, 0.99, seed=0)


class BlobSet(TinySet):
    """Noise; positives carry a Gaussian blob of ``amplitude`` (smaller: harder)."""

    def __init__(self, amplitude: float, n_train: int = 32, seed: int = 0, n_val: int = 0):
        super().__init__(n_train=n_train, n_val=n_val, seed=seed)
        rng = np.random.default_rng(seed + 1)
        grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij"))
        for key, label in self._label.items():
            image = 0.3 * rng.standard_normal(SHAPE)
            if label:
                centre = rng.uniform(-0.4, 0.4, size=3)[:, None, None, None]
                image += amplitude * np.exp(-((grid - centre) ** 2).sum(0) / (2 * 0.25**2))
            self._image[key] = image[None].astype(np.float32)


EARLY = dataclasses.replace(
    TINY, holdout=0.25, patience=3, min_delta=0.01, iterations=200, val_every=4, checkpoint_every=3
)


def test_early_stopping_stops_sooner_on_an_easy_set_and_resumes_exactly(
    tmp_path, monkeypatch, caplog
):
    caplog.set_level(logging.INFO, logger="benchmark.training.train")
    # 32 training volumes, 4 + 4 held out; the hard set's blob is half as bright
    easy = read_checkpoint(train(BlobSet(3.0), EARLY, tmp_path / "easy", progress=False))
    hard = read_checkpoint(train(BlobSet(1.5), EARLY, tmp_path / "hard", progress=False))
    assert easy["finished"] and easy["stopped_early"] == easy["step"] < EARLY.iterations
    assert easy["holdout"][-1]["auc"] == 1.0
    assert hard["step"] > easy["step"]
    # the decision is the rule: stop once `patience` validations bring no gain >= min_delta
    aucs = [row["auc"] for row in easy["holdout"]]
    losses = [row["loss"] for row in easy["holdout"]]
    best, lowest = max(aucs[: -EARLY.patience]), min(losses[: -EARLY.patience])
    assert all(a < best + EARLY.min_delta for a in aucs[-EARLY.patience :])
    assert all(x > lowest - EARLY.min_delta for x in losses[-EARLY.patience :])
    assert [row["step"] for row in easy["holdout"]] == list(range(4, easy["step"] + 1, 4))
    assert is_finished(tmp_path / "easy" / "checkpoint.pt")
    # the holdout comes from the train split (the evaluation split is never used)
    assert len(easy["data_holdout"]) == 8
    assert set(easy["data_holdout"]) < set(BlobSet(3.0).ids("train"))

    stop = easy["step"]
    decision = "no gain >= 0.01 for 3 validations (patience 3), the kept weights above chance"
    assert decision in caplog.text
    # the weights kept are those of the last improvement (of the AUC or of the loss)
    assert easy["best"]["step"] == _last_improvement(easy["holdout"], EARLY.min_delta)
    assert easy["best_model"] is None  # set into "model" when training ended
    assert f"stopping early at step {stop} of at most {EARLY.iterations}" in caplog.text
    _recording_train_step(monkeypatch, kill_at=stop - 1)  # dies after the last save before
    with pytest.raises(RuntimeError, match="killed"):
        train(BlobSet(3.0), EARLY, tmp_path / "killed", progress=False)
    _recording_train_step(monkeypatch)
    resumed = read_checkpoint(
        train(BlobSet(3.0), EARLY, tmp_path / "killed", resume=True, progress=False)
    )
    for key, value in easy["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    assert resumed["holdout"] == easy["holdout"] and resumed["stopped_early"] == stop
    calls = _recording_train_step(monkeypatch)
    train(BlobSet(3.0), EARLY, tmp_path / "killed", resume=True, progress=False)
    assert calls == []  # finished early: reused, not continued to the cap


def _last_improvement(rows: list[dict], min_delta: float) -> int:
    """The step of the last validation whose AUC rose ``min_delta`` above the best so far or
    whose loss fell ``min_delta`` below the lowest so far (window 1): the weights kept."""
    best_auc, lowest, kept = -math.inf, math.inf, None
    for row in rows:
        if row["auc"] >= best_auc + min_delta or row["loss"] <= lowest - min_delta:
            kept = row["step"]
        best_auc, lowest = max(best_auc, row["auc"]), min(lowest, row["loss"])
    return kept


# The holdout's AUC at each validation, scripted: a lucky 0.9 at the second, learning from
# the sixth on (loss 1 - AUC). Each AUC's 95 % interval is taken as [AUC - 0.3, AUC + 0.05],
# and a window's mean AUC's as [mean - 0.3, mean + 0.05].
LUCKY = [(a, 1 - a) for a in [0.5, 0.9, 0.5, 0.55, 0.5, 0.8, 0.9, 0.95, 0.97, 0.96, 0.96, 0.95]]
# The AUC saturates at the third validation; the loss falls on until the seventh.
SATURATED = [(0.6, 0.69), (0.9, 0.6), (1.0, 0.5), (1.0, 0.45), (1.0, 0.4), (1.0, 0.35)]
SATURATED += [(1.0, 0.336), (1.0, 0.334), (1.0, 0.333), (1.0, 0.332)]


def _scripted_holdout(monkeypatch, script: list[tuple[float, float]]) -> None:
    """``_Loop._validate`` of the holdout gives the next scripted (AUC, loss), then the last."""
    rows = iter(script + [script[-1]] * 20)
    current = {}
    real = training._Loop._validate

    def validate(loop, ids):
        if ids != loop.split["holdout"]:
            return real(loop, ids)
        current["auc"], loss = next(rows)
        n = len(ids) // 2
        labels, logits = torch.tensor([0] * n + [1] * n), torch.zeros(2 * n)
        scores = {"balanced_accuracy": 0.5, "balanced_accuracy_at_0": 0.5}
        return {**scores, "auc": current["auc"], "loss": loss, "labels": labels, "logits": logits}

    monkeypatch.setattr(training._Loop, "_validate", validate)
    monkeypatch.setattr(
        training, "bootstrap_ci", lambda *a, **k: (current["auc"] - 0.3, current["auc"] + 0.05)
    )
    monkeypatch.setattr(
        training,
        "window_above_chance",
        lambda labels, window: bool(np.mean([v["auc"] for v in window]) - 0.3 > 0.5),
    )


@pytest.mark.parametrize(
    ("script", "window", "stop_at", "kept"),
    [
        (LUCKY, 1, 5, 2),  # the lucky second validation: kept, above chance, 3 without gain
        (LUCKY, 4, 14, 11),  # means 0.50 .70 .63 .61 .61 .59 .69 .79 .905 .945 .96: kept 11
        (SATURATED, 1, 10, 7),  # the AUC stalls at 3, the loss falls by >= 0.01 until 7
    ],
)
def test_early_stopping_outlasts_a_lucky_or_saturated_holdout_and_keeps_the_best_weights(
    tmp_path, monkeypatch, script, window, stop_at, kept
):
    _scripted_holdout(monkeypatch, script)
    config = dataclasses.replace(EARLY, window=window, val_every=2, iterations=40)
    weights = {}

    def monitor(step, model):
        weights[step] = {k: v.clone() for k, v in model.state_dict().items()}

    state = read_checkpoint(train(BlobSet(3.0), config, tmp_path, progress=False, monitor=monitor))
    assert state["stopped_early"] == 2 * stop_at and state["best"]["step"] == 2 * kept
    assert state["best"]["above_chance"]
    for key, value in state["model"].items():  # the kept weights are the best validation's
        assert torch.equal(value, weights[2 * kept][key]), key
    assert not torch.equal(state["model"]["fc.weight"], weights[2 * stop_at - 2]["fc.weight"])


def test_a_classifier_at_chance_is_not_stopped_early(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="benchmark.training.train")
    config = dataclasses.replace(EARLY, iterations=32, patience=2)
    state = read_checkpoint(train(BlobSet(0.0), config, tmp_path, progress=False))  # no signal
    assert state["step"] == 32 and state["stopped_early"] is None and state["finished"]
    # at step 24 the AUC rule alone would have stopped it
    decision = "no gain >= 0.01 for 2 validations (patience 2), but the kept weights are not"
    assert decision in caplog.text


def test_plateau_halves_the_lr_after_half_the_patience_and_resumes_exactly(tmp_path, monkeypatch):
    # validations every 2 steps: the first improves, none after; patience 6 halves the lr at
    # 3 validations without a gain (step 8) and stops at 6 (step 14)
    _scripted_holdout(monkeypatch, [(0.9, 0.5)])
    config = dataclasses.replace(
        EARLY, schedule="plateau", patience=6, val_every=2, log_every=1, iterations=40
    )
    state = read_checkpoint(train(BlobSet(3.0), config, tmp_path / "whole", progress=False))
    assert state["stopped_early"] == 14
    lrs = {row["step"]: row["lr"] for row in state["log"]}
    expected = {s: config.lr * 0.5 ** (s > 8) for s in lrs}
    assert lrs == pytest.approx(expected, rel=1e-12)
    original, calls = training.train_step, []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == 11:  # after the first halving and the checkpoint of step 9
            raise RuntimeError("killed")
        return original(*args, **kwargs)

    monkeypatch.setattr(training, "train_step", dying)
    with pytest.raises(RuntimeError, match="killed"):
        train(BlobSet(3.0), config, tmp_path / "killed", progress=False)
    monkeypatch.setattr(training, "train_step", original)
    _scripted_holdout(monkeypatch, [(0.9, 0.5)] * 4)  # the validations before the kill, again
    resumed = read_checkpoint(
        train(BlobSet(3.0), config, tmp_path / "killed", resume=True, progress=False)
    )
    assert resumed["log"] == state["log"] and resumed["stopped_early"] == 14
    for key, value in state["model"].items():
        assert torch.equal(value, resumed["model"][key]), key


def test_the_progress_bar_of_early_stopping_promises_no_time_to_the_cap(tmp_path, capsys):
    config = dataclasses.replace(EARLY, iterations=8, patience=2)
    train(BlobSet(3.0), config, tmp_path / "early", progress=True)
    early = capsys.readouterr().err
    assert "(stops early; the total is the cap)" in early and "/8 [" in early
    assert not re.search(r"/8 \[\d+:\d+<", early)  # no "elapsed<remaining"
    train(TinySet(), dataclasses.replace(TINY, iterations=4), tmp_path / "fixed", progress=True)
    assert re.search(r"/4 \[\d+:\d+<\d+:\d+", capsys.readouterr().err)  # a fixed count: ETA


def test_plateau_keeps_the_lr_of_a_classifier_at_chance(tmp_path, monkeypatch):
    _scripted_holdout(monkeypatch, [(0.7, 0.5)])  # its interval's lower bound: 0.4
    config = dataclasses.replace(
        EARLY, schedule="plateau", patience=6, val_every=2, log_every=1, iterations=20
    )
    state = read_checkpoint(train(BlobSet(3.0), config, tmp_path, progress=False))
    assert state["stopped_early"] is None and state["step"] == 20
    assert {row["lr"] for row in state["log"]} == {config.lr}


# --- distributed: 2 gloo ranks on the CPU ---------------------------------------------------

# Group norm: no batch statistics, so each rank's share is normalised as in one process.
# lr 1e-4: Adam divides by sqrt(v), so a gradient that is ~0 up to float rounding (summed in
# another order across ranks) moves its weight by up to lr; 1e-4 keeps that below 1e-5.
DDP = dataclasses.replace(
    TINY,
    model="resnet10t_gn_np",
    pretrained=None,
    gn_init="copy",  # as the quick preset (identity: 2 of 73728 weights off by 1.8e-5)
    lr=1e-4,
    precision="float32",  # bf16 rounds each rank's share differently (7.8e-5 apart after 4)
    iterations=4,
    val_every=2,
    checkpoint_every=2,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, port: int, out: str) -> None:
    """One of 2 ranks: a whole run, then a run killed at step 3 and resumed."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    context = Context(rank, 2, torch.device("cpu"))
    try:
        train(TinySet(), DDP, f"{out}/whole", progress=False, context=context)
        original, calls = training.train_step, []

        def dying(model, *args, **kwargs):
            calls.append(model)
            if len(calls) == 3:
                raise RuntimeError("killed")
            return original(model, *args, **kwargs)

        training.train_step = dying
        with pytest.raises(RuntimeError, match="killed"):
            train(TinySet(), DDP, f"{out}/killed", progress=False, context=context)
        training.train_step = original
        train(TinySet(), DDP, f"{out}/killed", resume=True, progress=False, context=context)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available() or os.name != "posix",
    reason="needs torch.distributed with gloo and fork",
)
def test_two_ranks_train_the_same_weights_as_one_process(tmp_path):
    single = read_checkpoint(train(TinySet(), DDP, tmp_path / "single", progress=False))
    # fork: the ranks inherit the imported modules (spawn re-imports torch and timm: ~10 s)
    mp.start_processes(
        _ddp_worker, args=(_free_port(), str(tmp_path)), nprocs=2, start_method="fork"
    )
    for run in ("whole", "killed"):
        assert sorted(p.name for p in (tmp_path / run).iterdir()) == [
            "checkpoint.pt",
            "config.yaml",
            "train_log.csv",
        ]  # rank 0 writes, one checkpoint
        state = read_checkpoint(tmp_path / run / "checkpoint.pt")
        assert state["step"] == 4 and state["finished"]
        for key, value in single["model"].items():
            torch.testing.assert_close(state["model"][key], value, atol=1e-5, rtol=0)
        assert [r["step"] for r in state["val"]] == [2, 4]
        assert state["log"][0]["loss"] == pytest.approx(single["log"][0]["loss"], abs=1e-6)
    with pytest.raises(ValueError, match="batch_volumes=2 does not split evenly across 4"):
        train(TinySet(), DDP, tmp_path / "x", context=Context(0, 4))


# --- classifier report --------------------------------------------------------------------


class MeanOfSlice(nn.Module):
    """Logit = a slice's mean intensity (one parameter, for the device)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.scale * x.mean((1, 2, 3))[:, None]


class ConstantSet:
    """Volumes of constant value: every validation slice, so the volume logit, is it."""

    channels = ("image",)

    def __init__(self, values, labels):
        self.values, self.labels = list(values), [int(y) for y in labels]

    def ids(self, split="val"):
        return [f"c{i:03d}" for i in range(len(self.values))]

    def label(self, key):
        return self.labels[int(key[1:])]

    def __getitem__(self, key):
        value = self.values[int(key[1:])]
        return SimpleNamespace(image=np.full((1, 6, 6, 6), value, dtype=np.float32))


SIX_PIXELS = TrainConfig(val_slices=4, slice_size=6)  # 3 x 4 validation slices of 6 px


def test_classifier_report_matches_sklearn_and_flags_chance():
    rng = np.random.default_rng(0)
    labels = np.arange(40) % 2
    values = rng.normal(size=40) + 1.5 * labels
    data = ConstantSet(values, labels)
    report = classifier_report(MeanOfSlice(), data, data.ids(), SIX_PIXELS, 16)
    assert report["auc"] == pytest.approx(roc_auc_score(labels, values.astype(np.float32)))
    assert report["auc_ci_low"] > 0.5 and not report["at_chance"]
    assert report["auc_ci_low"] < report["auc"] < report["auc_ci_high"]
    assert report["balanced_accuracy_ci_low"] <= report["balanced_accuracy"]
    assert report["balanced_accuracy"] <= report["balanced_accuracy_ci_high"]
    assert (report["n_volumes"], report["n_positive"], report["n_negative"]) == (40, 20, 20)

    random_labels = rng.permutation(labels)  # a classifier unrelated to the labels
    chance = ConstantSet(values, random_labels)
    report = classifier_report(MeanOfSlice(), chance, chance.ids(), SIX_PIXELS, 16)
    assert report["auc"] == pytest.approx(roc_auc_score(random_labels, values.astype(np.float32)))
    assert report["auc_ci_low"] < 0.5 < report["auc_ci_high"] and report["at_chance"]


def _window_of_validations(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Holdout logits [12 volumes, 4 validations]: each volume's own ease shared by the
    window's validations, and noise of their own."""
    rng = np.random.default_rng(seed)
    labels = np.array([0] * 6 + [1] * 6)
    shared = rng.normal(size=12)
    logits = np.stack([1.2 * labels + shared + 0.8 * rng.normal(size=12) for _ in range(4)], 1)
    return labels, logits


def _scipy_window_low(labels: np.ndarray, logits: np.ndarray) -> float:
    """scipy's percentile bootstrap of the window's mean sklearn AUC, resampling volumes."""

    def mean_auc(rows):
        return np.mean([roc_auc_score(labels[rows], column) for column in logits[rows].T])

    volumes = (np.arange(len(labels)),)
    # random_state 3 draws no resample of one class among 2,000 (the AUC would be undefined)
    result = bootstrap(
        volumes, mean_auc, n_resamples=2000, vectorized=False, method="percentile", random_state=3
    )
    return result.confidence_interval.low


@pytest.mark.parametrize(
    ("seed", "above"), [(0, True), (1, True), (2, True), (4, False), (6, False)]
)
def test_a_window_is_above_chance_when_its_mean_aucs_interval_excludes_one_half(seed, above):
    labels, logits = _window_of_validations(seed)
    low = _scipy_window_low(labels, logits)
    assert (low > 0.5) == above and abs(low - 0.5) > 0.05  # far from the edge: no coin toss
    window = [{"auc": roc_auc_score(labels, column), "logits": list(column)} for column in logits.T]
    assert window_above_chance(labels, window) == above
    older = [{"auc": v["auc"]} for v in window[:-1]] + window[-1:]  # an older checkpoint's
    assert not window_above_chance(labels, older)  # validations without logits decide nothing
    if seed == 2:  # where not every validation's own interval excludes 0.5, the window's does
        singles = [bootstrap_ci(auc_or_nan, labels, column)[0] for column in logits.T]
        assert min(singles) < 0.5


def test_train_command_reports_a_diverged_run_in_one_line(tmp_path, monkeypatch, capsys):
    from benchmark import cli
    from benchmark.commands import train as command

    monkeypatch.setattr(command, "open_dataset", lambda args: PoisonedSet("tiny_03", 1e30))
    fields = {"model": "test_resnet", "pretrained": "false", "slices_per_volume": "8"}
    fields |= {"slice_size": "32", "iterations": "20", "holdout": "0", "patience": "0"}
    argv = ["train", "--dataset", "synthetic", "--device", "cpu", "--out", str(tmp_path)]
    argv += [
        "--preset",
        "quick",
        *[a for k, v in fields.items() for a in ("--set", f"train.{k}={v}")],
    ]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err  # the progress bar shares stderr
    assert re.search(r"^error: training diverged at step \d+: [^\n]*tiny_03", err, re.M)

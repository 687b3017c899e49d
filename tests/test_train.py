"""Training of the slice classifier (paper A.6) on tiny volumes made here."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

import benchmark.training.train as training
from benchmark.config import TrainConfig, resolve
from benchmark.training.checkpoint import (
    checkpoint_id,
    load_classifier,
    read_checkpoint,
    save_checkpoint,
)
from benchmark.training.models import create_classifier
from benchmark.training.scoring import (
    balanced_accuracy,
    best_threshold,
    cross_fitted_predictions,
    roc_auc,
)
from benchmark.training.slices import (
    bag_loss,
    build_model,
    cut_batch,
    cut_slices,
    draw_batch,
    draw_slice_params,
    sample_volume_ids,
    slice_logits,
    validation_slices,
)
from benchmark.training.train import resolve_iterations, train, train_step
from datasets import SampleCheck

SHAPE = (16, 24, 24)


class TinySet:
    """The dataset interface (ids, label, [id].image, channels): noise, plus a blob if positive."""

    name = "tiny"
    channels = ("image",)

    def __init__(self, n_train: int = 8, n_val: int = 4, seed: int = 0):
        rng = np.random.default_rng(seed)
        grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij"))
        self._split, self._label, self._image = {}, {}, {}
        for i in range(n_train + n_val):
            key = f"tiny_{i:02d}"
            image = 0.1 * rng.standard_normal(SHAPE)
            if i % 2:
                centre = rng.uniform(-0.3, 0.3, size=3)[:, None, None, None]
                image += 2.0 * np.exp(-((grid - centre) ** 2).sum(0) / (2 * 0.3**2))
            self._split[key] = "train" if i < n_train else "val"
            self._label[key] = i % 2
            self._image[key] = image[None].astype(np.float32)

    def ids(self, split: str | None = None) -> list[str]:
        return [k for k, s in self._split.items() if split in (s, None)]

    def label(self, key: str) -> int:
        return self._label[key]

    def __getitem__(self, key: str) -> SimpleNamespace:
        return SimpleNamespace(image=self._image[key], label=self._label[key])

    def options(self) -> dict:
        return {"shape": list(SHAPE)}

    def fingerprint(self, key: str) -> str:
        """Content digest of the image, as the data set classes give."""
        return hashlib.sha256(self._image[key].tobytes()).hexdigest()[:16]

    def verify(self, key: str) -> SampleCheck:
        """The pre-training check passes: what training itself guards is under test."""
        fingerprint = self.fingerprint(key)
        return SampleCheck(key, self._image[key].shape, fingerprint, fingerprint, False)


TINY = TrainConfig(
    model="test_resnet",  # timm's 0.4 M-parameter ResNet: fast loop tests
    pretrained=False,
    slices_per_volume=8,
    slice_size=32,
    lr=1e-3,
    lr_min=1e-5,
    iterations=6,
    val_every=3,
    val_slices=4,
    checkpoint_every=2,
    log_every=1,
)


def test_presets_hold_the_papers_values():
    paper = resolve(TrainConfig, "paper")
    assert (paper.batch_volumes, paper.slices_per_volume, paper.slice_size) == (2, 120, 224)
    assert (paper.lr, paper.lr_min, paper.betas, paper.eps) == (5e-5, 1e-7, (0.9, 0.999), 1e-8)
    assert (paper.model, paper.pretrained, paper.scale, paper.translation) == (
        "resnet10t",
        None,
        0.3,
        0.3,
    )
    iterations = {
        name: resolve_iterations(paper, name).iterations
        for name in ("ms", "autopet", "mosmed", "duke")
    }
    assert iterations == {"ms": 250_000, "autopet": 187_500, "mosmed": 125_000, "duke": 62_500}
    r50 = dataclasses.replace(paper, model="resnet50_gn")
    assert resolve_iterations(r50, "ms").iterations == 100_000  # 40 % (paper 3.6)
    with pytest.raises(ValueError, match="no iteration count for 'synthetic'"):
        resolve_iterations(paper, "synthetic")
    assert paper.gn_init == "identity"  # 3.6: new group norms at gamma = 1, beta = 0
    with pytest.raises(ValueError, match="gn_init=zero: gn_init must be one of identity, copy"):
        resolve(TrainConfig, overrides={"gn_init": "zero"})
    quick = resolve(TrainConfig, "quick", overrides={"iterations": "12"})
    assert resolve_iterations(quick, "synthetic").iterations == 12
    assert quick.gn_init == "copy"  # from scratch it learns sooner (measured, config.py)
    assert model_is_not_pretrained(quick)


def model_is_not_pretrained(config: TrainConfig) -> bool:
    from benchmark.training.models import model_spec

    return not model_spec(config.model, pretrained=config.pretrained).pretrained


def test_augmentation_parameters_stay_in_range():
    # V(x) = x_depth is linear, so trilinear sampling is exact: every pixel inside the cube
    # must read gain * (s n + shift + i' u + j' v)_depth + bias.
    volume = torch.linspace(-1, 1, 9).reshape(1, 9, 1, 1).expand(1, 9, 9, 9).contiguous()
    generator = torch.Generator().manual_seed(0)
    n_slices, size = 400, 5
    p = draw_slice_params(n_slices, generator)
    slices = cut_slices(volume, p, size)
    assert slices.shape == (n_slices, 1, size, size)
    n, u, v = p["normal"], p["u"], p["v"]
    torch.testing.assert_close(n.norm(), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(p["offsets"], torch.linspace(-1, 1, n_slices, dtype=torch.float64))
    for vec in (u, v):
        torch.testing.assert_close(vec @ n, torch.zeros(n_slices, dtype=torch.float64))
    torch.testing.assert_close((u * v).sum(-1), torch.zeros(n_slices, dtype=torch.float64))
    torch.testing.assert_close(torch.stack([u.norm(dim=-1), v.norm(dim=-1)], 1), p["lengths"])
    for key, low, high in (
        ("lengths", 0.7, 1.3),
        ("shifts", -0.3, 0.3),
        ("gain", 0.7, 1.3),
        ("bias", -0.3, 0.3),
    ):
        values = p[key]
        assert low <= values.min() < low + 0.05 and high - 0.05 < values.max() <= high, key
    assert (u.norm(dim=-1) - v.norm(dim=-1)).abs().max() > 0.3  # anisotropic: independent

    a = torch.linspace(-1, 1, size, dtype=torch.float64)
    i, j = torch.meshgrid(a, a, indexing="ij")
    shift = (
        p["shifts"][:, :1] * u / p["lengths"][:, :1] + p["shifts"][:, 1:] * v / p["lengths"][:, 1:]
    )
    points = (
        p["offsets"][:, None, None, None] * n
        + shift[:, None, None]
        + i[..., None] * u[:, None, None]
        + j[..., None] * v[:, None, None]
    )
    expected = p["gain"][:, None, None] * points[..., 0] + p["bias"][:, None, None]
    inside = (points.abs() <= 0.999).all(-1)
    assert inside.sum() > 1000
    torch.testing.assert_close(slices[:, 0][inside].double(), expected[inside], atol=1e-5, rtol=0)
    outside = (points.abs() > 1.001).any(-1)  # zero outside the cube, then y = a x + b
    torch.testing.assert_close(
        slices[:, 0][outside].double(),
        p["bias"][:, None, None].expand_as(outside)[outside],
        atol=1e-6,
        rtol=0,
    )


def test_batches_pair_a_positive_with_a_negative():
    generator = torch.Generator().manual_seed(0)
    positives, negatives = ["p0", "p1", "p2"], ["n0", "n1"]
    draws = [sample_volume_ids(positives, negatives, 4, generator) for _ in range(50)]
    assert all(d[0][0] == d[2][0] == "p" and d[1][0] == d[3][0] == "n" for d in draws)
    assert {d[0] for d in draws} == set(positives)  # with replacement, all reachable
    data = TinySet()
    slices, labels = _batch(data, generator)
    assert slices.shape == (16, 1, 32, 32)
    assert labels.tolist() == [1.0] * 8 + [0.0] * 8  # each slice has its volume's label


def _batch(data: TinySet, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One A.6 step's slices and labels, drawn and cut as training does."""
    plan = draw_batch(*_pools(data), TINY, generator)
    return cut_batch(data, plan, range(len(plan.ids)), TINY.slice_size, torch.device("cpu"))


def _pools(data: TinySet) -> tuple[list[str], list[str]]:
    train_ids = data.ids("train")
    return [i for i in train_ids if data.label(i)], [i for i in train_ids if not data.label(i)]


def test_training_steps_reduce_the_loss():
    data = TinySet()
    generator = torch.Generator().manual_seed(0)
    slices, labels = _batch(data, generator)
    model = build_model(dataclasses.replace(TINY, model="resnet10t_gn_np", pretrained=None), 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=100)
    losses = [train_step(model, optimizer, scheduler, slices, labels) for _ in range(12)]
    assert losses[0] == pytest.approx(np.log(2), abs=0.1)  # one logit near 0 at the start
    assert losses[-1] < 0.5 * losses[0]
    assert scheduler.get_last_lr()[0] < 1e-3  # the schedule moved every step


def test_validation_slices_contain_the_axial_stack():
    volume = torch.randn(2, *SHAPE)
    slices = validation_slices(volume, SHAPE[0], SHAPE[1])
    assert slices.shape == (3 * SHAPE[0], 2, SHAPE[1], SHAPE[2])
    torch.testing.assert_close(slices[: SHAPE[0]], volume.transpose(0, 1), atol=1e-5, rtol=0)


def test_validation_scores_match_sklearn():
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 0])
    scores = torch.tensor([0.5, 1.0, 2.0, 3.0, 4.0, 2.5, 0.8, 0.2])
    assert balanced_accuracy(labels, scores > 2.2) == pytest.approx(
        balanced_accuracy_score(labels, scores > 2.2)
    )
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    noisy = torch.from_numpy(np.random.default_rng(0).normal(size=40)) + torch.arange(40) % 2
    noisy_labels = torch.arange(40) % 2
    best = max(balanced_accuracy_score(noisy_labels, noisy > t) for t in noisy.tolist())
    threshold = best_threshold(noisy_labels, noisy)
    assert balanced_accuracy_score(noisy_labels, noisy > threshold) == pytest.approx(best)
    # separable, but all above 0 (negatives' max logit hovers around 0): threshold 0 fails,
    # the threshold tuned on the other half does not
    separable = torch.tensor([0.3, 0.5, 0.4, 3.0, 2.0, 2.5, 4.0, 0.2])
    assert balanced_accuracy(labels, separable > 0) == 0.5
    assert balanced_accuracy(labels, cross_fitted_predictions(labels, separable)) == 1.0


def _recording_train_step(monkeypatch, kill_at: int | None = None) -> list:
    """Patch train_step to record the live model (and optionally die at call ``kill_at``)."""
    calls: list = []

    def step(model, *args, **kwargs):
        calls.append(model)
        if len(calls) == kill_at:
            raise RuntimeError("killed")
        return train_step(model, *args, **kwargs)

    monkeypatch.setattr(training, "train_step", step)
    return calls


def test_checkpoint_round_trip_gives_identical_logits(tmp_path, monkeypatch):
    config = dataclasses.replace(TINY, model="resnet10t", pretrained=False)  # frozen BN
    calls = _recording_train_step(monkeypatch)
    path = train(TinySet(), config, tmp_path, progress=False)
    live = calls[-1].eval()
    loaded = load_classifier(path)
    volume = torch.from_numpy(TinySet()[TinySet().ids("val")[1]].image)
    slices = validation_slices(volume, 8, 32)
    assert torch.equal(slice_logits(loaded, slices, 7), slice_logits(live, slices, 7))
    state = torch.load(path, weights_only=True)
    assert (state["step"], state["model_name"], state["arch"], state["norm"]) == (
        6,
        "resnet10t",
        "resnet10t",
        "frozen_bn",
    )
    assert state["config"] == dataclasses.asdict(config) and state["in_chans"] == 1
    assert [row["step"] for row in state["val"]] == [3, 6]
    assert len(checkpoint_id(read_checkpoint(path))) == 16
    with open(tmp_path / "train_log.csv") as file:
        rows = list(csv.DictReader(file))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[2]["val_balanced_accuracy"] and not rows[3]["val_balanced_accuracy"]
    assert (tmp_path / "config.yaml").exists()


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, monkeypatch):
    data = TinySet()
    _recording_train_step(monkeypatch)
    whole = read_checkpoint(train(data, TINY, tmp_path / "whole", progress=False))

    _recording_train_step(monkeypatch, kill_at=5)  # dies in step 5, after the step-4 save
    with pytest.raises(RuntimeError, match="killed"):
        train(data, TINY, tmp_path / "killed", progress=False)
    assert torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)["step"] == 4
    with pytest.raises(ValueError, match="--resume"):
        train(data, TINY, tmp_path / "killed", progress=False)
    with pytest.raises(ValueError, match="other settings.*lr"):
        train(
            data,
            dataclasses.replace(TINY, lr=2e-3),
            tmp_path / "killed",
            resume=True,
            progress=False,
        )

    _recording_train_step(monkeypatch)
    resumed = read_checkpoint(train(data, TINY, tmp_path / "killed", resume=True, progress=False))
    for key, value in whole["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    assert resumed["log"] == whole["log"] and resumed["val"] == whole["val"]
    assert resumed["scheduler"] == whole["scheduler"]
    assert torch.equal(resumed["rng"], whole["rng"])
    # its identity is its content, not the file's bytes (torch writes a new serialization id)
    assert checkpoint_id(resumed) == checkpoint_id(whole)


def test_train_command_writes_the_run_folder(tmp_path, monkeypatch, capsys):
    from benchmark.commands import train as command

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(command, "open_dataset", lambda args: TinySet())
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    fields = {
        k: str(v)
        for k, v in dataclasses.asdict(TINY).items()
        if k not in ("model", "betas", "pretrained", "weights")
    }
    argv = [
        "--dataset",
        "tiny",
        "--preset",
        "quick",
        "--dataset-option",
        "n_val=2",
        "--device",
        "cpu",
        *[a for k, v in fields.items() for a in ("--set", f"train.{k}={v}")],
    ]
    assert command.run(parser.parse_args(argv)) == 0
    path = tmp_path / "runs" / "tiny" / "resnet10t_gn_np-quick" / "checkpoint.pt"
    out = capsys.readouterr().out  # the path, then what training did
    state = torch.load(path, weights_only=True)
    summary = f"{TINY.iterations} steps (cap {TINY.iterations}), {state['precision_used']}"
    assert f"checkpoint: {path.relative_to(tmp_path)}: {summary}" in out
    assert state["dataset"]["options"] == {"shape": list(SHAPE)}
    assert command.run(parser.parse_args([*argv, "--resume"])) == 0  # finished: a no-op
    with pytest.raises(ValueError, match="exists"):
        command.run(parser.parse_args(argv))


def test_checkpoints_from_before_gn_init_and_timms_resnet50_gn(tmp_path):
    """Older checkpoints lack gn_init (their group norms copied the batch norms' affine
    parameters) and call resnet50_gn's architecture resnet50: reused when that is what the
    config trains now, refused in one line otherwise, and always loadable."""
    data = TinySet()
    config = dataclasses.replace(TINY, model="resnet10t_gn_np", pretrained=None, iterations=2)
    path = train(data, config, tmp_path / "gn", progress=False)
    state = torch.load(path, weights_only=True)
    assert state["config"]["gn_init"] == "identity" and state["norm"] == "gn"
    del state["config"]["gn_init"]
    save_checkpoint(path, state)
    with pytest.raises(ValueError, match=r"other settings.*'gn_init': \('copy', 'identity'\)"):
        train(data, config, tmp_path / "gn", resume=True, progress=False)
    copy = dataclasses.replace(config, gn_init="copy")
    assert train(data, copy, tmp_path / "gn", resume=True, progress=False) == path  # reused
    assert torch.load(path, weights_only=True)["step"] == 2
    load_classifier(path)

    bn = train(data, TINY, tmp_path / "bn", progress=False)  # no group norm: gn_init is moot
    state = torch.load(bn, weights_only=True)
    del state["config"]["gn_init"]
    save_checkpoint(bn, state)
    assert train(data, TINY, tmp_path / "bn", resume=True, progress=False) == bn

    r50 = dataclasses.replace(config, model="resnet50_gn", pretrained=False)
    state["config"] = dataclasses.asdict(r50)
    state.update(arch="resnet50", norm="gn", model_name="resnet50_gn")
    state["model"] = create_classifier("resnet50", 1, norm="gn", pretrained=False).state_dict()
    save_checkpoint(bn, state)
    message = "holds a resnet50 classifier, but 'resnet50_gn' is now timm's resnet50_gn: delete"
    with pytest.raises(ValueError, match=message):
        train(data, r50, tmp_path / "bn", resume=True, progress=False)
    old = load_classifier(bn)  # the converted resnet50 of the older checkpoint
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in old.modules())
    assert torch.equal(
        old.state_dict()["layer4.2.bn3.weight"], state["model"]["layer4.2.bn3.weight"]
    )


# --- the loss, the schedule and the precision of a step ---------------------------------------


def test_bag_loss_is_each_negative_slices_bce_and_each_positive_stacks_max_bce():
    logits = torch.tensor([0.5, -1.0, 2.0, 0.0, 3.0, -2.0, 1.0, -0.5])  # 2 volumes x 4 slices
    labels = torch.tensor([0.0] * 4 + [1.0] * 4)

    def softplus(x: float) -> float:  # the BCE of logit x against 0 (against 1: softplus(-x))
        return float(np.log1p(np.exp(x)))

    negative = np.mean([softplus(x) for x in (0.5, -1.0, 2.0, 0.0)])
    positive = softplus(-3.0)  # the stack's max logit against 1
    expected = (negative + positive) / 2
    assert bag_loss(logits, labels, 4).item() == pytest.approx(expected, rel=1e-6)
    # a positive stack's gradient reaches its max slice only; a negative's, every slice
    logits.requires_grad_(True)
    bag_loss(logits, labels, 4).backward()
    assert (logits.grad[:4] > 0).all()
    assert logits.grad[4] < 0 and (logits.grad[5:] == 0).all()


def test_the_learning_rate_warms_up_then_stays_or_follows_the_cosine():
    constant = dataclasses.replace(TINY, lr=1e-3, warmup=4, schedule="constant", iterations=100)
    rate = training.learning_rate(constant)
    assert [rate(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert rate(10_000) == 1.0  # no end: early stopping ends training, not the schedule
    cosine = dataclasses.replace(constant, schedule="cosine", lr_min=1e-5)
    rate = training.learning_rate(cosine)
    assert rate(4) == 1.0 and rate(100) == pytest.approx(1e-2)  # lr_min / lr at the cap
    assert rate(52) == pytest.approx(1e-2 + (1 - 1e-2) * 0.5)  # half way: the mean
    # without warm-up the cosine is torch's own (A.6), as before these settings existed
    model = torch.nn.Linear(1, 1)
    _, scheduler = training.optimiser(model, dataclasses.replace(cosine, warmup=0))
    assert isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR)
    # a warm-up's schedule checkpoints as plain data (torch.load(weights_only=True) reads it)
    _, scheduler = training.optimiser(model, constant)
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True)["base_lrs"] == [1e-3]


def test_bf16_precision_runs_the_convolutions_in_bf16_on_any_device(monkeypatch):
    model = build_model(dataclasses.replace(TINY, model="resnet10t_gn_np", pretrained=None), 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    dtypes = []
    model.conv1.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    slices, labels = torch.randn(4, 1, 32, 32), torch.tensor([0.0, 1.0, 0.0, 1.0])
    for precision in ("float32", "bfloat16"):
        train_step(model, optimizer, scheduler, slices, labels, precision=precision)
    assert dtypes == [torch.float32, torch.bfloat16]
    # auto: bf16 where the device computes it natively
    from benchmark import distributed

    cpu = torch.device("cpu")
    for native in (True, False):
        monkeypatch.setattr(distributed, "native_bf16", lambda device, n=native: n)
        expected = "bfloat16" if native else "float32"
        assert distributed.training_precision(cpu, "auto") == expected
    assert distributed.training_precision(cpu, "float32") == "float32"


class CountingSet(TinySet):
    """:class:`TinySet` counting the reads of each volume."""

    def __init__(self):
        super().__init__()
        self.reads = dict.fromkeys(self.ids(), 0)

    def __getitem__(self, key: str) -> SimpleNamespace:
        self.reads[key] += 1
        return super().__getitem__(key)


def test_training_reads_each_volume_once_and_learns_the_same(tmp_path, monkeypatch):
    config = dataclasses.replace(TINY, holdout=0.25, iterations=9)
    kept = CountingSet()
    whole = read_checkpoint(train(kept, config, tmp_path / "kept", progress=False))
    assert max(kept.reads.values()) == 1 and sum(kept.reads.values()) >= 6

    monkeypatch.setattr("benchmark.training.memory.BUDGET", 0)  # every read from the data set
    read = CountingSet()
    again = read_checkpoint(train(read, config, tmp_path / "read", progress=False))
    # 9 steps of 2 volumes, 3 validations of the 4 held-out volumes, the 4 evaluation ones
    assert sum(read.reads.values()) == 9 * 2 + 3 * 4 + 4
    for key, value in whole["model"].items():
        assert torch.equal(again["model"][key], value), key
    assert again["val"] == whole["val"]


def test_in_memory_keeps_volumes_up_to_its_budget():
    from benchmark.training.memory import InMemory

    data = CountingSet()
    first, second, third = data.ids()[:3]
    keeper = InMemory(data, budget=2 * data[first].image.nbytes)
    data.reads = dict.fromkeys(data.reads, 0)
    for _ in range(3):
        for key in (first, second, third):
            assert np.array_equal(keeper[key].image, data._image[key])
    assert [data.reads[k] for k in (first, second, third)] == [1, 1, 3]
    assert keeper[first].image is not data._image[first]  # a copy: the data set's stays
    assert keeper.ids("val") == data.ids("val") and keeper.name == "tiny"


def test_a_timed_step_reads_its_volumes_as_the_loop_does():
    from benchmark.training.estimate import step_function

    kept, read = CountingSet(), CountingSet()
    for data, volumes_kept in ((kept, True), (read, False)):
        step = step_function(TINY, data, torch.device("cpu"), volumes_kept=volumes_kept)
        for _ in range(4):
            step()
    # kept: one positive and one negative volume, each read once; else 2 reads a step
    assert sorted(n for n in kept.reads.values() if n) == [1, 1]
    assert sum(read.reads.values()) == 4 * 2

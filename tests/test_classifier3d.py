"""The 3D classifier (beyond the paper): MONAI ResNets, MedicalNet weights, 3D augmentation,
training in the 2D classifier's loop, its checkpoint; the 2D record is unchanged."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from test_train import TinySet, _recording_train_step

from benchmark.config import Train3DConfig, TrainConfig, load_settings, resolve
from benchmark.training.checkpoint import load_classifier
from benchmark.training.classifier3d import VolumeClassifier, create_volume_classifier
from benchmark.training.scoring import classifier_report
from benchmark.training.slices import OLD_CHECKPOINT_DEFAULTS, SliceBatches
from benchmark.training.strategy import batches_for, config_from_record
from benchmark.training.train import train
from benchmark.training.volumes import (
    augment_volume,
    draw_volume_params,
    rotate_volume,
    rotation_matrix,
    whole_volume_logits,
)
from methods.stages import stage_modules

F64 = torch.float64
TINY3D = Train3DConfig(
    model="resnet10_3d",
    input_size=(8, 12, 12),
    batch_volumes=2,
    lr=1e-3,
    lr_min=1e-5,
    iterations=6,
    val_every=3,
    checkpoint_every=2,
    log_every=1,
    precision="float32",  # as the quick preset: bf16 3D training on a CPU resumes inexactly
)


def _identity(flips=(False, False, False), gain=1.0, bias=0.0) -> dict:
    return {
        "flips": torch.tensor(flips),
        "matrix": torch.eye(3, dtype=F64),
        "gain": torch.tensor(gain, dtype=F64),
        "bias": torch.tensor(bias, dtype=F64),
    }


def test_flips_and_intensity_are_exact():
    volume = torch.randn(2, 5, 6, 7, generator=torch.Generator().manual_seed(0))
    out = augment_volume(volume, _identity((True, False, True), 1.25, -0.5), (5, 6, 7))
    torch.testing.assert_close(out, 1.25 * volume.flip(1, 3) - 0.5, rtol=0, atol=1e-6)


def test_a_quarter_turn_about_the_depth_axis_is_rot90():
    volume = torch.randn(1, 5, 5, 5, generator=torch.Generator().manual_seed(1))
    quarter = rotation_matrix(torch.tensor([1.0, 0, 0], dtype=F64), torch.tensor(math.pi / 2))
    out = rotate_volume(volume, quarter, (5, 5, 5))
    torch.testing.assert_close(out, torch.rot90(volume, -1, (2, 3)), rtol=0, atol=1e-6)


def test_small_rotation_and_resize_match_scipy_affine_transform():
    rng = np.random.default_rng(2)
    volume = ndimage.gaussian_filter(rng.standard_normal((9, 13, 11)), 1.5)
    size = (7, 10, 12)
    axis = torch.tensor([0.3, -0.5, 0.8], dtype=F64)
    matrix = rotation_matrix(axis / axis.norm(), torch.tensor(math.radians(12), dtype=F64))
    out = rotate_volume(torch.from_numpy(volume)[None], matrix, size)[0].numpy()
    # voxel index i <-> normalised x = 2 i / (n - 1) - 1 on both grids
    half_in = (np.array(volume.shape) - 1) / 2
    half_out = (np.array(size) - 1) / 2
    index_matrix = np.diag(half_in) @ matrix.numpy() @ np.diag(1 / half_out)
    offset = half_in - index_matrix @ half_out
    expected = ndimage.affine_transform(
        volume, index_matrix, offset, output_shape=size, order=1, mode="grid-constant"
    )
    np.testing.assert_allclose(out, expected, atol=1e-10)


def test_rotation_draws_are_rotations_within_the_angle():
    generator = torch.Generator().manual_seed(3)
    for _ in range(20):
        params = draw_volume_params(generator, flip=True, rotation=15.0, intensity=0.3)
        matrix = params["matrix"]
        torch.testing.assert_close(matrix @ matrix.T, torch.eye(3, dtype=F64))
        angle = math.degrees(math.acos((matrix.trace().item() - 1) / 2))
        assert angle <= 15.0 + 1e-9 and abs(params["gain"] - 1) <= 0.3
    still = draw_volume_params(generator, flip=False, rotation=0.0, intensity=0.0)
    assert not still["flips"].any() and torch.equal(still["matrix"], torch.eye(3, dtype=F64))


def test_stages_are_the_resnets_layers_and_the_input_is_resized():
    model = create_volume_classifier("resnet10_3d", 2, (8, 16, 16)).eval()
    assert stage_modules(model) == {i: getattr(model.net, f"layer{i}") for i in range(1, 5)}
    x = torch.randn(1, 2, 8, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), model.net(x))
        big = torch.nn.functional.interpolate(
            x, size=(15, 31, 31), mode="trilinear", align_corners=True
        )
        torch.testing.assert_close(model(big), model.net(x), rtol=1e-4, atol=1e-5)


def test_unknown_model_names_the_close_matches():
    with pytest.raises(ValueError, match="did you mean resnet18_3d"):
        create_volume_classifier("resnet18-3d", 1, (8, 8, 8))


def _medicalnet_file(path, net) -> None:
    """A checkpoint as MedicalNet publishes them: DataParallel names, a segmentation head."""
    state = {
        f"module.{k}": v.clone() for k, v in net.state_dict().items() if not k.startswith("fc.")
    }
    state["module.conv_seg.0.weight"] = torch.randn(32, 512, 3, 3, 3)
    torch.save({"state_dict": state}, path)


def test_medicalnet_weights_load_tensor_for_tensor(tmp_path):
    source = create_volume_classifier("resnet10_3d", 1, (8, 8, 8)).net
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p))  # not MONAI's initialisation
    _medicalnet_file(tmp_path / "resnet_10.pth", source)
    loaded = create_volume_classifier(
        "resnet10_3d", 1, (8, 8, 8), weights=tmp_path / "resnet_10.pth"
    )
    own = loaded.net.state_dict()
    for key, value in source.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(own[key], value), key
    assert own["fc.weight"].shape == (1, 512)

    two = create_volume_classifier("resnet10_3d", 2, (8, 8, 8), weights=tmp_path / "resnet_10.pth")
    kernel = source.conv1.weight
    torch.testing.assert_close(two.net.conv1.weight, torch.cat([kernel, kernel], 1) / 2)

    with pytest.raises(ValueError, match="not MedicalNet weights of this architecture"):
        create_volume_classifier("resnet18_3d", 1, (8, 8, 8), weights=tmp_path / "resnet_10.pth")
    missing = r"missing.pth: no such file \(a MedicalNet weights file\)"
    with pytest.raises(FileNotFoundError, match=missing):
        create_volume_classifier("resnet10_3d", 1, (8, 8, 8), weights=tmp_path / "missing.pth")


def test_input_size_zero_is_the_volumes_own_size_and_no_max_pool_doubles_the_stages():
    """A 0 of ``input_size`` keeps the volume's size on that axis (no resampling, any
    shape); without the stem's max pool stage k is at 1/2^k of the input, not 1/2^(k+1)."""
    seen = {}
    for max_pool in (True, False):
        model = create_volume_classifier("resnet10_3d", 1, (0, 0, 0), max_pool=max_pool).eval()
        stage1 = model.get_submodule(model.feature_info[0]["module"])
        hook = stage1.register_forward_hook(lambda m, a, out, k=max_pool: seen.update({k: out}))
        for shape in ((16, 32, 24), (10, 12, 14)):
            x = torch.randn(1, 1, *shape, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                assert torch.equal(model(x), model.net(x))
        hook.remove()
        assert model.feature_info[0]["reduction"] == (4 if max_pool else 2)
    assert seen[True].shape[2:] == (3, 3, 4) and seen[False].shape[2:] == (5, 6, 7)
    mixed = create_volume_classifier("resnet10_3d", 1, (0, 8, 0)).eval()
    x = torch.randn(1, 1, 6, 12, 10)
    small = torch.nn.functional.interpolate(
        x, size=(6, 8, 10), mode="trilinear", align_corners=True
    )
    with torch.no_grad():
        torch.testing.assert_close(mixed(x), mixed.net(small))


def test_medicalnet_weights_load_without_the_max_pool(tmp_path):
    """The max pool has no weights: a MedicalNet file loads into the pool-less stem too."""
    source = create_volume_classifier("resnet10_3d", 1, (8, 8, 8)).net
    _medicalnet_file(tmp_path / "resnet_10.pth", source)
    loaded = create_volume_classifier(
        "resnet10_3d", 1, (0, 0, 0), weights=tmp_path / "resnet_10.pth", max_pool=False
    ).net
    assert loaded.no_max_pool and not source.no_max_pool
    own = loaded.state_dict()
    assert all(torch.equal(own[k], v) for k, v in source.state_dict().items() if "fc." not in k)
    # the training's build: the quick preset with train3d.weights; a resumed run skips them
    settings = load_settings(None, [f"train3d.weights={tmp_path / 'resnet_10.pth'}"])
    quick = resolve(Train3DConfig, "quick", settings["train3d"], section="train3d")
    quick = dataclasses.replace(quick, max_pool=False)
    built = batches_for(quick).build_model(1).net
    assert built.no_max_pool and torch.equal(built.conv1.weight, source.conv1.weight)
    fresh = batches_for(quick).build_model(1, initial=False).net
    assert not torch.equal(fresh.conv1.weight, source.conv1.weight)


def test_native_size_trains_and_loads_with_its_stem(tmp_path):
    """``input_size=(0, 0, 0)``: the steps see the data set's own shape; the checkpoint
    records ``max_pool`` and loads the same network."""
    data = TinySet()
    config = dataclasses.replace(
        TINY3D, input_size=(0, 0, 0), max_pool=False, iterations=2, val_every=2
    )
    batches = batches_for(config)
    plan = batches.draw(data.ids("train")[1::2], data.ids("train")[::2], torch.Generator())
    inputs, _ = batches.cut(data, plan, [0, 1], torch.device("cpu"))
    assert inputs.shape[2:] == data[data.ids()[0]].image.shape[1:]
    path = train(data, config, tmp_path / "native", progress=False)
    loaded = load_classifier(path)
    assert loaded.input_size == (0, 0, 0) and loaded.net.no_max_pool
    ids = data.ids("val")
    state = torch.load(path, weights_only=True)
    assert state["config"]["max_pool"] is False
    rebuilt = create_volume_classifier("resnet10_3d", 1, (0, 0, 0), max_pool=False)
    rebuilt.load_state_dict(state["model"])
    assert torch.equal(
        whole_volume_logits(loaded, data, ids, 3), whole_volume_logits(rebuilt, data, ids, 3)
    )


def test_train3d_settings_and_presets():
    settings = load_settings(None, ["train3d.input_size=16,32,32", "train3d.rotation=10"])
    config = resolve(Train3DConfig, "quick", settings["train3d"], section="train3d")
    assert config.input_size == (16, 32, 32) and config.rotation == 10.0
    assert config.model == "resnet10_3d" and config.holdout > 0 and config.patience > 0
    quick = resolve(Train3DConfig, "quick")  # the 2D quick preset's rule, at the own size
    two = resolve(TrainConfig, "quick")
    assert quick.input_size == (0, 0, 0) and quick.max_pool
    rule = ("holdout", "window", "patience", "min_delta", "schedule", "warmup")
    assert [getattr(quick, f) for f in rule] == [getattr(two, f) for f in rule]
    native = load_settings(None, ["train3d.input_size=0,0,0"])["train3d"]
    assert resolve(Train3DConfig, "paper", native, section="train3d").input_size == (0, 0, 0)
    with pytest.raises(ValueError, match=r"input_size must be >= 2 or 0 \(the volume's own"):
        load_settings(None, ["train3d.input_size=0,1,8"])
    assert resolve(Train3DConfig, "paper").model == "resnet18_3d"
    with pytest.raises(ValueError, match="did you mean --set train3d.flip"):
        load_settings(None, ["flip=false"])


@pytest.mark.slow
def test_3d_training_resumes_to_the_same_weights_and_round_trips(tmp_path, monkeypatch):
    data = TinySet()
    calls = _recording_train_step(monkeypatch)
    path = train(data, TINY3D, tmp_path / "whole", progress=False)
    whole = torch.load(path, weights_only=True)
    assert (whole["classifier"], whole["model_name"], whole["arch"]) == (
        "3d",
        "resnet10_3d",
        "resnet10",
    )
    assert whole["config"] == dataclasses.asdict(TINY3D) and [r["step"] for r in whole["val"]] == [
        3,
        6,
    ]

    loaded = load_classifier(path)
    assert isinstance(loaded, VolumeClassifier) and not loaded.training
    ids = data.ids("val")
    live = whole_volume_logits(calls[-1], data, ids, 3)
    assert torch.equal(whole_volume_logits(loaded, data, ids, 3), live)
    config = config_from_record(whole["config"])
    report = classifier_report(loaded, data, ids, config, 2, n_resamples=50)
    labels = np.array([data.label(i) for i in ids])
    pos, neg = live.numpy()[labels == 1], live.numpy()[labels == 0]
    assert report["auc"] == pytest.approx((pos[:, None] > neg[None]).mean())

    _recording_train_step(monkeypatch, kill_at=5)  # dies in step 5, after the step-4 save
    with pytest.raises(RuntimeError, match="killed"):
        train(data, TINY3D, tmp_path / "killed", progress=False)
    with pytest.raises(ValueError, match="other settings.*rotation"):
        train(
            data,
            dataclasses.replace(TINY3D, rotation=5.0),
            tmp_path / "killed",
            resume=True,
            progress=False,
        )
    _recording_train_step(monkeypatch)
    resumed = torch.load(
        train(data, TINY3D, tmp_path / "killed", resume=True, progress=False), weights_only=True
    )
    for key, value in whole["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    assert resumed["log"] == whole["log"] and resumed["val"] == whole["val"]


def test_the_2d_record_is_unchanged():
    """What a 2D checkpoint records (its config and model fields) is as before the 3D
    classifier, but for the fields added since, whose defaults are what older checkpoints
    were trained with, so that those and their heatmap caches are reused."""
    assert [(f.name, f.default) for f in dataclasses.fields(TrainConfig)] == [
        ("model", "resnet10t"),
        ("pretrained", None),
        ("weights", None),
        ("gn_init", "identity"),
        ("loss", "slice"),
        ("precision", "auto"),
        ("batch_volumes", 2),
        ("slices_per_volume", 120),
        ("slice_size", 224),
        ("scale", 0.3),
        ("translation", 0.3),
        ("intensity", 0.3),
        ("lr", 5e-5),
        ("lr_min", 1e-7),
        ("schedule", "cosine"),
        ("warmup", 0),
        ("betas", (0.9, 0.999)),
        ("eps", 1e-8),
        ("iterations", None),
        ("val_every", 5000),
        ("val_slices", 120),
        ("checkpoint_every", 1000),
        ("log_every", 100),
        ("seed", 0),
        ("holdout", 0.0),
        ("patience", 0),
        ("min_delta", 0.0),
        ("window", 1),
    ]
    batches = batches_for(TrainConfig())
    assert isinstance(batches, SliceBatches)
    older = batches.saved_defaults({"norm": "frozen_bn"})  # a checkpoint without those fields
    assert {k: older[k] for k in OLD_CHECKPOINT_DEFAULTS} == {
        k: getattr(TrainConfig(), k) for k in OLD_CHECKPOINT_DEFAULTS
    }
    assert older["loss"] == TrainConfig().loss
    assert batches.record() == {"model_name": "resnet10t", "arch": "resnet10t", "norm": "frozen_bn"}

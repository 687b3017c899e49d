"""The slice classifier factory (paper 3.6, Table 4): variants, norms, weights, stages."""

from __future__ import annotations

import math
import time

import pytest
import timm
import torch
from timm.layers import FrozenBatchNormAct2d, GroupNormAct
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from benchmark.training.models import (
    PAPER_VARIANTS,
    batch_norm_to_group_norm,
    create_classifier,
    model_spec,
)
from benchmark.training.train import train_step
from methods.stages import stage_modules, stage_names


def batch_norms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def optimiser(model: nn.Module):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)


def test_paper_variants_match_table_4():
    assert PAPER_VARIANTS["resnet10t"] == model_spec("resnet10t")
    assert {n: (s.arch, s.norm, s.pretrained) for n, s in PAPER_VARIANTS.items()} == {
        "resnet10t": ("resnet10t", "frozen_bn", True),
        "resnet10t_bn": ("resnet10t", "bn", True),
        "resnet10t_gn": ("resnet10t", "gn", True),
        "resnet10t_gn_np": ("resnet10t", "gn", False),
        "resnet50_gn": ("resnet50_gn", "gn", True),  # timm's own GN ResNet-50
    }
    assert model_spec("resnet18") == model_spec("resnet18", norm="bn", pretrained=True)
    assert model_spec("resnet10t", pretrained=False).norm == "frozen_bn"


def test_frozen_batch_norm_stays_frozen():
    torch.manual_seed(0)
    model = create_classifier("resnet10t", 2, pretrained=False)
    frozen = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(frozen) == len(batch_norms(timm.create_model("resnet10t"))) == 14
    assert not batch_norms(model)
    for m in frozen:  # non-trivial statistics and affine parameters, as after ImageNet
        m.running_mean.normal_()
        m.running_var.uniform_(0.5, 2.0)
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(6, 2, 32, 32)
    optimizer, scheduler = optimiser(model)
    for _ in range(3):
        train_step(model, optimizer, scheduler, x, torch.tensor([1.0, 0, 1, 0, 1, 0]))
    after = model.state_dict()
    norm_keys = [
        f"{name}.{field}"
        for name, m in model.named_modules()
        if isinstance(m, FrozenBatchNorm2d)
        for field in ("weight", "bias", "running_mean", "running_var")
    ]
    assert len(norm_keys) == 4 * 14
    assert all(torch.equal(before[k], after[k]) for k in norm_keys)
    assert not torch.equal(before["conv1.0.weight"], after["conv1.0.weight"])  # it did train
    assert not any(p is m.weight for m in frozen for p in model.parameters())
    # no batch statistics: train mode = eval mode, and each slice is independent of the batch
    model.train()
    with torch.no_grad():
        train_out, single = model(x), model(x[:1])
        model.eval()
        torch.testing.assert_close(train_out, model(x), rtol=0, atol=0)
    torch.testing.assert_close(single, train_out[:1], rtol=1e-5, atol=1e-5)


def group_norms(model: nn.Module) -> dict[str, nn.GroupNorm]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.GroupNorm)}


def test_group_norms_replace_batch_norms_starting_at_identity():
    """Paper 3.6: new group norms start at gamma = 1, beta = 0; nothing else changes."""
    torch.manual_seed(0)
    reference = timm.create_model("resnet10t", num_classes=1, in_chans=1)
    for m in batch_norms(reference):  # non-trivial affine parameters, as after ImageNet
        m.weight.data.uniform_(0.5, 1.5)
        m.bias.data.normal_()
    source = {k: v.clone() for k, v in reference.state_dict().items()}
    bn_names = {
        n: m.num_features for n, m in reference.named_modules() if isinstance(m, nn.BatchNorm2d)
    }
    model = batch_norm_to_group_norm(reference)
    assert not batch_norms(model)
    assert set(group_norms(model)) == set(bn_names) and len(bn_names) == 14
    for name, channels in bn_names.items():
        gn = model.get_submodule(name)
        assert type(gn) is nn.GroupNorm
        assert gn.num_groups == math.gcd(32, channels)  # conv1.1: 24 ch -> 8 groups
        assert torch.equal(gn.weight, torch.ones(channels))
        assert torch.equal(gn.bias, torch.zeros(channels))
    assert model.get_submodule("conv1.1").num_groups == 8
    converted = model.state_dict()
    kept = {k for k in source if k.rsplit(".", 1)[0] not in bn_names}
    assert kept == set(converted) - {f"{n}.{p}" for n in bn_names for p in ("weight", "bias")}
    assert len(kept) == 16  # 14 convs and the head's weight and bias
    assert all(torch.equal(converted[k], source[k]) for k in kept)

    reference = timm.create_model("resnet10t", num_classes=1, in_chans=1)
    reference.load_state_dict(source)
    copied = batch_norm_to_group_norm(reference, "copy")  # the option: gamma, beta of the BN
    for name in bn_names:
        gn = copied.get_submodule(name)
        assert torch.equal(gn.weight, source[f"{name}.weight"])
        assert torch.equal(gn.bias, source[f"{name}.bias"])

    x = torch.randn(4, 3, 32, 32)
    for name in ("resnet10t_gn_np", "resnet10t_gn"):
        gn_model = create_classifier(name, 3, pretrained=False)
        assert not batch_norms(gn_model) and len(group_norms(gn_model)) == 14
        # even where timm zero-initialises the last norm of a block (layer1.0.bn2)
        for gn in group_norms(gn_model).values():
            assert torch.all(gn.weight == 1) and torch.all(gn.bias == 0)
    gn_model.eval()  # group norm: a slice's logit does not depend on the batch
    with torch.no_grad():
        torch.testing.assert_close(gn_model(x)[1:2], gn_model(x[1:2]), rtol=1e-4, atol=1e-5)


def test_resnet50_gn_is_timms_group_norm_resnet50():
    """Table 1's R-50, GN: timm's ``resnet50_gn`` (32 groups in all 53 norms), unconverted."""
    model = create_classifier("resnet50_gn", 3, pretrained=False)
    timms = timm.create_model("resnet50_gn", num_classes=1)
    assert type(model) is type(timms)
    assert not batch_norms(model)
    norms = group_norms(model)
    assert len(norms) == 53  # stem, 3 per bottleneck (16), 4 downsamples
    assert {n: (type(m), m.num_groups, m.num_channels) for n, m in norms.items()} == {
        n: (type(m), 32, m.num_channels) for n, m in group_norms(timms).items()
    }
    assert all(type(m) is timm.layers.GroupNorm for m in norms.values())
    assert torch.all(model.layer1[0].bn3.weight == 0)  # timm's own init: zero last gamma
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in timms.state_dict().items()
    }


def test_resnet50_gn_loads_its_own_weights_exactly(tmp_path):
    torch.manual_seed(2)
    imagenet = timm.create_model("resnet50_gn")  # stands in for resnet50_gn.a1h_in1k
    for m in group_norms(imagenet).values():
        m.weight.data.uniform_(0.5, 1.5)
        m.bias.data.normal_()
    source = imagenet.state_dict()
    path = tmp_path / "resnet50_gn_a1h_in1k.pth"
    torch.save(source, path)
    del imagenet

    loaded = create_classifier("resnet50_gn", 3, weights=path).state_dict()
    head = {"fc.weight", "fc.bias"}  # the ImageNet head is replaced by one logit
    assert set(loaded) == set(source) and len(source) == 161  # 53 convs, 53 norms, head
    for key in set(source) - head:
        assert torch.equal(loaded[key], source[key]), key
    assert loaded["fc.weight"].shape == (1, 2048)


def test_any_timm_model_by_name_with_each_norm():
    x = torch.randn(3, 2, 32, 32)
    for norm, layer in (("gn", GroupNormAct), ("frozen_bn", FrozenBatchNormAct2d)):
        model = create_classifier("test_efficientnet", 2, norm=norm, pretrained=False)
        assert not batch_norms(model) and any(isinstance(m, layer) for m in model.modules())
        # the activation fused into timm's BatchNormAct2d survives the conversion
        assert not all(
            isinstance(m.act, nn.Identity) for m in model.modules() if isinstance(m, layer)
        )
        model.eval()
        with torch.no_grad():
            out = model(x)
        assert out.shape == (3, 1) and torch.isfinite(out).all()
    assert batch_norms(create_classifier("resnet18", 1, pretrained=False))  # "bn": kept


def test_unknown_model_and_norm_are_clear_errors():
    with pytest.raises(ValueError, match="unknown model 'resnet10x'.*did you mean"):
        create_classifier("resnet10x", 1, pretrained=False)
    with pytest.raises(ValueError, match="unknown norm 'ln'"):
        create_classifier("resnet10t", 1, norm="ln", pretrained=False)


@pytest.mark.parametrize("in_chans", [1, 2, 3])
def test_pretrained_weights_from_a_local_file(tmp_path, in_chans):
    torch.manual_seed(1)
    imagenet = timm.create_model("resnet10t")  # stands in for the ImageNet checkpoint
    for m in batch_norms(imagenet):
        m.running_mean.normal_()
        m.running_var.uniform_(0.5, 2.0)
    source = imagenet.state_dict()
    path = tmp_path / "resnet10t_imagenet.pth"
    torch.save(source, path)

    model = create_classifier("resnet10t", in_chans, weights=path)  # frozen BN, pretrained
    loaded = model.state_dict()
    stem = source["conv1.0.weight"]  # [24, 3, 3, 3]
    expected_stem = {  # timm's rule: sum for grey, repeat and rescale by 3 / in_chans
        1: stem.sum(1, keepdim=True),
        2: stem[:, :2] * 3 / 2,
        3: stem,
    }[in_chans]
    torch.testing.assert_close(loaded["conv1.0.weight"], expected_stem)
    for key in (
        "layer3.0.conv2.weight",
        "layer1.0.bn1.running_mean",
        "bn1.running_var",
        "layer4.0.bn2.weight",
    ):
        assert torch.equal(loaded[key], source[key])
    assert loaded["fc.weight"].shape == (1, 512)  # the ImageNet head is replaced
    assert isinstance(model.bn1, FrozenBatchNorm2d)

    gn = create_classifier("resnet10t_gn", in_chans, weights=path)  # paper 3.6: GN from BN
    for key, value in gn.state_dict().items():
        if key.rsplit(".", 1)[0] in group_norms(gn):
            assert torch.all(value == (1 if key.endswith("weight") else 0)), key
        elif not key.startswith(("fc.", "conv1.0.")):
            assert torch.equal(value, source[key]), key
    torch.testing.assert_close(gn.state_dict()["conv1.0.weight"], expected_stem)
    with pytest.raises(ValueError, match="not pretrained"):
        create_classifier("resnet10t_gn_np", in_chans, weights=path)
    with pytest.raises(FileNotFoundError, match="missing.pth: no such file"):
        create_classifier("resnet10t", in_chans, weights=tmp_path / "missing.pth")
    assert not batch_norms(gn)


def test_pretrained_without_weights_or_network_is_a_clear_error(monkeypatch):
    import timm.models._builder as builder

    def no_network(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr("benchmark.training.models.socket.create_connection", no_network)
    monkeypatch.setattr(builder, "load_state_dict_from_hf", no_network)
    monkeypatch.setattr(builder, "load_state_dict_from_url", no_network)
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="no network and no local weights.*--weights"):
        create_classifier("resnet10t", 1)
    assert time.perf_counter() - start < 10


def test_stage_modules_are_the_four_resnet_layers():
    model = create_classifier("resnet10t", 1, pretrained=False).eval()
    assert stage_names(model) == {1: "layer1", 2: "layer2", 3: "layer3", 4: "layer4"}
    stages = stage_modules(model)
    assert stages[3] is model.layer3
    sizes = {}
    hooks = [
        m.register_forward_hook(lambda m, i, o, k=k: sizes.__setitem__(k, o.shape[-1]))
        for k, m in stages.items()
    ]
    with torch.no_grad():
        model(torch.zeros(1, 1, 224, 224))
    for hook in hooks:
        hook.remove()
    assert sizes == {1: 56, 2: 28, 3: 14, 4: 7}  # 224 / 2^(i+1)
    convnext = create_classifier("convnext_atto", 1, pretrained=False)
    assert stage_names(convnext) == {i + 1: f"stages.{i}" for i in range(4)}

"""CAM maths against pytorch-grad-cam's raw maps (its scale_cam_image step skipped)."""

from __future__ import annotations

import pytest
import timm
import torch
from pytorch_grad_cam import base_cam
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from methods import cam as cams


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = timm.create_model("resnet10t", pretrained=False, num_classes=1, in_chans=2)
    return net.eval()


@pytest.fixture(scope="module")
def slices():
    return torch.randn(2, 2, 48, 48, generator=torch.Generator().manual_seed(1))


def reference(cls, model, layer, inputs, monkeypatch):
    """pytorch-grad-cam's map before min-max scaling and resizing."""
    monkeypatch.setattr(base_cam, "scale_cam_image", lambda cam, target_size=None: cam)
    with cls(model=model, target_layers=[layer]) as cam:
        if hasattr(cam, "batch_size"):
            cam.batch_size = 64
        out = cam(input_tensor=inputs, targets=[ClassifierOutputTarget(0)] * len(inputs))
    return torch.from_numpy(out).float()


OURS = {
    "GradCAM": cams.GradCAM(),
    "GradCAMPlusPlus": cams.GradCAMPlusPlus(),
    "LayerCAM": cams.LayerCAM(),
    "ScoreCAM": cams.ScoreCAM(),
    "HiResCAM": cams.PytorchGradCAM("HiResCAM"),
    "XGradCAM": cams.PytorchGradCAM("XGradCAM"),
    "EigenCAM": cams.PytorchGradCAM("EigenCAM"),
}


@pytest.mark.parametrize("name", OURS)
@pytest.mark.parametrize("stage", ["layer1", "layer3"])
def test_raw_maps_match_pytorch_grad_cam(name, stage, model, slices, monkeypatch):
    import pytorch_grad_cam

    layer = model.get_submodule(stage)
    ours = OURS[name](model, layer, slices)
    theirs = reference(getattr(pytorch_grad_cam, name), model, layer, slices, monkeypatch)
    side = 48 // 2 ** (int(stage[-1]) + 1)  # stage i of a ResNet has stride 2^(i+1)
    assert ours.shape == theirs.shape == (2, side, side)
    assert ours.dtype == torch.float32 and theirs.abs().max() > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6 * float(theirs.abs().max()))


def test_gradients_are_per_slice_and_hooks_are_released(model, slices):
    layer = model.get_submodule("layer2")
    together = cams.LayerCAM()(model, layer, slices)
    alone = torch.cat([cams.LayerCAM()(model, layer, s[None]) for s in slices])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-7)
    assert not layer._forward_hooks

    def broken(*args):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        cams.activations_and_gradients(broken, layer, slices)
    assert not layer._forward_hooks


def test_gradcam_is_dimension_agnostic():
    """A 3D conv "classifier": the same equation on [N, K, D, H, W] activations."""
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(1, 4, 3, padding=1)
    net = torch.nn.Sequential(
        conv,
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool3d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 1),
    )
    x = torch.randn(2, 1, 5, 6, 7)
    acts = torch.relu(conv(x))
    weights = net[4].weight[0] / acts[0, 0].numel()  # dy/dA_k is constant: w_k / |S|
    expected = torch.relu((weights.view(1, 4, 1, 1, 1) * acts).sum(1))
    ours = cams.GradCAM()(net, net[1], x)
    torch.testing.assert_close(ours, expected.detach(), rtol=1e-5, atol=1e-7)

"""3D CAMs of a volume classifier (beyond the paper) against pytorch-grad-cam's 3D CAMs and
closed forms, on tiny Conv3d stand-ins of the volume classifier."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from pytorch_grad_cam import base_cam
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn
from volume_models import WIDTHS, TinyClassifier

from benchmark.run.plan import format_plan, plan, within_budget
from benchmark.run.prices import Calibration, calibrate
from methods import Passes, create_method, list_methods
from methods.cam3d import VolumeCAM
from methods.cam_methods import cam_maps
from methods.heatmaps import compute_heatmaps
from methods.registry import KINDS, method_name

VOLUME = (1, 20, 30, 26)  # [C, D, H, W]; the stand-in resizes it to its input size


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(4)  # every map below is non-zero somewhere
    return TinyClassifier((24, 32, 16)).eval()


@pytest.fixture(scope="module")
def volume():
    return torch.randn(VOLUME, generator=torch.Generator().manual_seed(1))


def upsampled(raw: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """[d, h, w] -> [D, H, W], as MONAI's and torch-cam's CAMs resize."""
    return F.interpolate(raw[None, None], size=shape, mode="trilinear", align_corners=False)[0, 0]


def reference(cls, model, layer, inputs, monkeypatch):
    """pytorch-grad-cam's map before min-max scaling and resizing."""
    monkeypatch.setattr(base_cam, "scale_cam_image", lambda cam, target_size=None: cam)
    with cls(model=model, target_layers=[layer]) as cam:
        out = cam(input_tensor=inputs, targets=[ClassifierOutputTarget(0)] * len(inputs))
    return torch.from_numpy(out).float()


@pytest.mark.parametrize("name", ["gradcam", "gradcampp", "layercam"])
@pytest.mark.parametrize("layer", [1, 3])
def test_3d_maps_match_pytorch_grad_cams_3d_cams(name, layer, model, volume, monkeypatch):
    import pytorch_grad_cam

    method = create_method(f"cam3d_{name}@{layer}")
    cls = getattr(pytorch_grad_cam, method.equation)
    theirs = reference(cls, model, model.get_submodule(f"layer{layer}"), volume[None], monkeypatch)
    raw = cam_maps([method], model)(volume[None])[method.maps_key]
    side = [n // 2**layer for n in model.input_size]
    assert raw.shape == theirs.shape == (1, *side) and theirs.abs().max() > 0
    tolerance = {"rtol": 1e-4, "atol": 1e-6 * float(theirs.abs().max())}
    torch.testing.assert_close(raw, theirs, **tolerance)
    heatmap = method(volume, model)
    assert heatmap.shape == VOLUME[1:] and heatmap.dtype == torch.float32
    torch.testing.assert_close(heatmap, upsampled(theirs[0], VOLUME[1:]), **tolerance)


@pytest.mark.parametrize("name", ["gradcam", "layercam"])
def test_the_heatmap_is_the_closed_form_map_upsampled_trilinearly(name, model, volume):
    """At the last stage, before a mean pool and a linear logit, dy/dA_k = w_k / |S|:
    GradCAM is relu(sum_k w_k / |S| A_k), LayerCAM relu(sum_k relu(w_k / |S|) A_k)."""
    with torch.no_grad():
        acts = model.stages(volume[None])[-1][0]  # [K, d, h, w]
    weights = model.fc.weight[0].detach() / acts[0].numel()
    if name == "layercam":
        weights = weights.clamp(min=0)
    expected = (weights.view(-1, 1, 1, 1) * acts).sum(0).clamp(min=0)
    assert expected.max() > 0
    heatmap = create_method(f"cam3d_{name}@4")(volume, model)
    torch.testing.assert_close(heatmap, upsampled(expected, VOLUME[1:]), rtol=1e-5, atol=1e-7)


def test_3d_scorecam_of_a_flat_volume_is_pytorch_grad_cams_2d_scorecam(monkeypatch):
    """Depth 1 and (1, 3, 3) kernels: the 3D network is a 2D one, and trilinear masks are
    bilinear ones; pytorch-grad-cam's ScoreCAM (2D only) on the 2D twin is the oracle."""
    import pytorch_grad_cam

    torch.manual_seed(0)
    flat = TinyClassifier((1, 16, 12), flat=True).eval()
    twin = TinyClassifier((16, 12)).eval()
    twin.load_state_dict(
        {k: v[:, :, 0] if v.dim() == 5 else v for k, v in flat.state_dict().items()}
    )
    image = torch.rand(1, 18, 14, generator=torch.Generator().manual_seed(2))
    heatmap = create_method("cam3d_scorecam@2")(image[:, None], flat)
    theirs = reference(pytorch_grad_cam.ScoreCAM, twin, twin.layer2, image[None], monkeypatch)
    expected = upsampled(theirs[0][None], (1, 18, 14))
    assert theirs.abs().max() > 0
    torch.testing.assert_close(heatmap, expected, rtol=1e-4, atol=1e-6 * float(theirs.abs().max()))


def test_the_registry_lists_the_3d_family_after_iterative_before_plugins():
    assert list_methods("cam3d*") == [
        "cam3d_gradcam",
        "cam3d_gradcampp",
        "cam3d_layercam",
        "cam3d_scorecam",
    ]
    assert KINDS.index("iterative") + 1 == KINDS.index("3d") == KINDS.index("plugin") - 1
    assert list_methods("cam3d_layercam", specs=True) == [
        f"cam3d_layercam@{k}" for k in range(1, 5)
    ]
    titles = {"gradcam": "3D GradCAM", "gradcampp": "3D GradCAM++", "layercam": "3D LayerCAM"}
    for name, title in {**titles, "scorecam": "3D ScoreCAM"}.items():
        method = create_method(f"cam3d_{name}@2")
        assert isinstance(method, VolumeCAM) and method.classifier == "3d"
        assert method_name(f"cam3d_{name}@2").kind == "3d"
        assert method_name(f"cam3d_{name}@2").display == f"{title} (layer 2)"
    assert create_method("layercam@2").classifier == "2d"


def counted_forwards(model: nn.Module, run) -> tuple[int, int]:
    """(volumes through ``model``, volumes whose logit gradient flows back) during ``run()``."""
    counts = [0, 0]

    def on_forward(module, args, output):
        counts[0] += len(args[0])
        if output.requires_grad:
            output.register_hook(lambda grad: counts.__setitem__(1, counts[1] + len(grad)))

    handle = model.register_forward_hook(on_forward)
    try:
        run()
    finally:
        handle.remove()
    return counts[0], counts[1]


def test_stated_passes_are_the_volumes_through_the_classifier(model, volume):
    for spec, expected in {
        "cam3d_gradcampp@3": (1, 1),
        "cam3d_scorecam@1": (1 + WIDTHS[0], 0),
    }.items():
        method = create_method(spec)
        assert counted_forwards(model, lambda m=method: m(volume, model)) == expected
        stated = method.passes(VOLUME[1:], channels=WIDTHS[method.layer - 1])
        assert stated == Passes(0, volume_forward=expected[0], volume_backward=expected[1])


def test_gradient_3d_cams_share_one_pass_and_equal_each_alone(model, volume):
    specs = [f"cam3d_{n}@{k}" for n in ("gradcam", "gradcampp", "layercam") for k in (1, 2, 3, 4)]
    together = {}
    passes = counted_forwards(
        model, lambda: together.update(compute_heatmaps(specs, volume, model))
    )
    assert passes == (1, 1) and list(together) == specs
    assert len({create_method(s).pass_group for s in specs}) == 1
    for spec in ("cam3d_gradcampp@2", "cam3d_layercam@4"):
        torch.testing.assert_close(together[spec], create_method(spec)(volume, model))


PRICES = Calibration(
    device="test",
    in_chans=1,
    slice_size=16,
    batch_size=4,
    forward_s=1e-3,
    backward_s=3e-3,
    cut_s=1e-5,
    read_s=1e-9,
    peak_memory_mb=10.0,
    volume_forward_s=0.5,
    volume_backward_s=2.0,
    volume_peak_mb=100.0,
)


def test_the_plan_prices_3d_cams_in_volumes_through_the_volume_classifier(model):
    specs = ["cam3d_gradcam@1", "cam3d_gradcam@4", "cam3d_scorecam@2"]
    shapes = [VOLUME[1:]] * 3
    frame = plan(specs, shapes, None, None, 4, PRICES, channels={}, volume_model=model)
    rows = frame.set_index("family")
    gradcam, scorecam = rows.loc["cam3d_gradcam"], rows.loc["cam3d_scorecam"]
    assert (gradcam.forward, gradcam.volume_forward, gradcam.volume_backward) == (0, 1, 1)
    assert gradcam.s_per_volume == pytest.approx(2.0)  # its two stages share one pass
    assert scorecam.volume_forward == 1 + WIDTHS[1] and scorecam.volume_backward == 0
    assert scorecam.hours == pytest.approx(3 * (1 + WIDTHS[1]) * 0.5 / 3600)
    assert gradcam.peak_mb > 100.0
    assert "| cam3d_gradcam" in format_plan(frame, PRICES)
    unpriced = dataclasses.replace(PRICES, volume_forward_s=None, volume_backward_s=None)
    unknown = plan(specs, shapes, None, None, 4, unpriced, channels={})
    assert unknown[:-1].s_per_volume.isna().all()  # no volume classifier: unknown, kept
    assert within_budget(unknown, 0.0) == (specs, {})


def test_calibration_prices_a_volume_through_the_volume_classifier(model):
    slices = TinyClassifier((16, 16)).eval()
    prices = calibrate(
        slices, 1, 16, 2, torch.device("cpu"), shape=(8, 8, 8), repeats=1, volume_model=model
    )
    assert min(prices.volume_forward_s, prices.volume_backward_s) > 0

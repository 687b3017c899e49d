"""Registered methods end to end: every spec runs, and hand-made "classifiers" whose
heatmaps are known in closed form give them back."""

from __future__ import annotations

import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from phantoms import gaussian, rel_l2, smooth_ball
from scipy import ndimage
from timm.models.resnet import BasicBlock, ResNet
from torch import nn
from volume_models import TinyClassifier

from foundation.registry import RegistryError
from methods import create_method, expand_specs, list_methods, method_class, register_method
from methods.config import TomographyConfig
from methods.registry import KINDS, METHODS, Method, MethodName, method_name
from methods.tomography import reconstruct


class ThresholdSum(nn.Module):
    """g(slice) = 4 mean(relu(x - t)): its tomographic reconstruction is relu(V - t)."""

    def __init__(self, threshold: float):
        super().__init__()
        self.threshold = threshold

    def forward(self, x):
        return 4 * (x - self.threshold).clamp(min=0).mean((1, 2, 3))[:, None]


class StageProbe(nn.Module):
    """A "classifier" whose stage 1 is its input average-pooled by ``pool`` and whose logit is
    the sum of that stage: dy/dA = 1, so LayerCAM@1 is the pooled slice (for x >= 0)."""

    def __init__(self, pool: int = 1):
        super().__init__()
        self.layer1 = nn.AvgPool2d(pool) if pool > 1 else nn.Identity()
        self.layer2, self.layer3, self.layer4 = nn.Identity(), nn.Identity(), nn.Identity()
        self.feature_info = [{"module": f"layer{i}"} for i in range(1, 5)]

    def forward(self, x):
        features = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return features.flatten(1).sum(1, keepdim=True)


def correlation(a, b) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def phantom(shape=(32, 32, 32)) -> torch.Tensor:
    """Smooth, non-negative, inside the unit ball, with structure at several scales."""
    return (
        gaussian(shape, 0.08, (0.2, 0.1, -0.1))
        + 0.7 * gaussian(shape, 0.15, (-0.25, -0.1, 0.15))
        + 0.5 * gaussian(shape, 0.05, (0.0, -0.3, -0.2))
    )


TINY = TomographyConfig(n_angles=4, n_angles_cam=3, n_slices=4, slice_size=48, chunk=2)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = ResNet(BasicBlock, (1, 1, 1, 1), num_classes=1, in_chans=2, channels=(4, 8, 8, 8))
    return model.eval()


@pytest.fixture(scope="module")
def tiny_volume_model():
    torch.manual_seed(3)  # every 3D CAM of the test volume is non-zero somewhere
    return TinyClassifier((8, 16, 16), in_chans=2).eval()


@pytest.mark.parametrize("spec", list_methods(specs=True))
def test_every_spec_gives_a_finite_float32_heatmap_of_the_input_shape(
    spec, tiny_model, tiny_volume_model
):
    volume = torch.rand(2, 6, 8, 10, generator=torch.Generator().manual_seed(0))
    method = create_method(spec, config=TINY)
    heatmap = method(volume, tiny_volume_model if method.classifier == "3d" else tiny_model)
    assert heatmap.dtype == torch.float32 and heatmap.shape == (6, 8, 10)
    assert torch.isfinite(heatmap).all() and heatmap.abs().max() > 0


def test_the_registry_holds_every_method_of_the_paper_and_the_baselines():
    cams = ("gradcam", "gradcampp", "scorecam", "layercam")
    layerless = {"tonno", "intensity", "centre"}
    expected = layerless | {
        f"{p}{c}{s}"
        for c in cams
        for p, s in (("", ""), ("", "_3axis"), ("averaged_", ""), ("tomographic_", ""))
    }
    expected |= {"pgc_eigencam", "pgc_hirescam", "pgc_xgradcam"}
    expected |= {f"iterative_{c}" for c in cams if c != "scorecam"}  # the paper's open problem
    expected |= {f"cam3d_{c}" for c in cams}  # beyond the paper: the volume classifier's
    assert set(list_methods()) == expected
    assert len(expand_specs("all")) == len(layerless) + 4 * len(expected - layerless)
    assert expand_specs("tomographic_*@2") == [f"tomographic_{c}@2" for c in sorted(cams)]


def test_every_builtin_is_a_class_named_in_its_module_with_its_title_declared():
    import methods.cam_methods as module

    titles = {}
    for name in list_methods():
        cls = METHODS.entry(name).obj
        assert getattr(sys.modules[cls.__module__], cls.__name__) is cls  # findable by name
        assert cls.title and cls.title != name or cls.kind == "plugin"
        titles[name] = cls.title
    assert titles["tomographic_gradcampp"] == "Tomographic GradCAM++"
    assert titles["layercam_3axis"] == "LayerCAM ★"
    assert module.SliceWiseLayerCAM.paper == ("LayerCAM", "")
    assert method_class("scorecam_3axis@1").paper == ("ScoreCAM", "3axis")
    assert len(set(titles.values())) == len(titles)


def families():
    """Every column of the table of CAMs: a Family object each, in its module."""
    import methods.cam3d as cam3d
    import methods.cam_methods as cm
    import methods.iterative as iterative

    paper = (cm.SLICE_WISE, cm.THREE_AXIS, cm.AVERAGED, cm.TOMOGRAPHIC, cm.PYTORCH_GRAD_CAM)
    return [*paper, iterative.ITERATIVE, cam3d.VOLUME]


def test_the_table_of_equations_is_the_single_source_of_every_cam_family():
    """Every (equation, family) pair of the table is registered, with its family's name,
    title, paper row and base class, and no other CAM method is."""
    from methods.cam_methods import EQUATIONS, FAMILIES, CAMMethod, TomographicCAM

    assert sorted(f.key for f in families()) == sorted(FAMILIES)  # one Family a column
    expected = {}
    for family in families():
        for row in EQUATIONS:
            if family.key in row.families:
                fields = {"name": row.name, "title": row.title, "equation": row.equation}
                paper = tuple(p.format(**fields) for p in family.paper or ()) or None
                cls = f"{family.prefix}{row.equation}"
                facts = (cls, family.base, row.equation, family.title.format(**fields), paper)
                expected[family.name.format(**fields)] = facts
    registered = {
        name: (cls.__name__, *cls.__bases__, cls.equation, cls.title, cls.paper)
        for name in list_methods()
        if issubclass(cls := METHODS.entry(name).obj, CAMMethod)
    }
    assert registered == expected
    assert len(registered) == sum(len(row.families) for row in EQUATIONS) == 26
    assert registered["tomographic_gradcampp"] == (
        "TomographicGradCAMPlusPlus",
        TomographicCAM,
        "GradCAMPlusPlus",
        "Tomographic GradCAM++",
        ("Tomographic GradCAM++", ""),
    )


def test_one_line_in_the_table_registers_the_four_geometries_of_a_new_equation(
    monkeypatch, tiny_model
):
    """A row for pytorch-grad-cam's HiResCAM in the paper's four families adds exactly its
    four methods, each after its kind's last; its slice-wise map is the adapter's own."""
    import methods.cam_methods as cm

    list_methods()  # the built-ins are loaded: the registry below starts empty, not lazy
    before = [n for n, e in METHODS._entries.items() if e.obj.__module__ == cm.__name__]
    monkeypatch.setattr(METHODS, "_entries", {})  # restored after the test
    table = (*cm.EQUATIONS, cm.Equation("HiResCAM", "hirescam", "HiResCAM", cm.PAPER))
    classes = cm.register_families(__name__, *cm.GROUPS, table=table)
    names = list(METHODS._entries)
    added = ["hirescam", "hirescam_3axis", "averaged_hirescam", "tomographic_hirescam"]
    assert [n for n in names if n not in before] == added
    assert [n for n in names if n in before] == before
    follows = {
        "hirescam": "scorecam_3axis",
        "hirescam_3axis": "hirescam",
        "averaged_hirescam": "averaged_scorecam",
        "tomographic_hirescam": "tomographic_scorecam",
    }
    assert {new: names[names.index(new) - 1] for new in added} == follows
    cls = classes["TomographicHiResCAM"]
    assert (cls.title, cls.paper, cls.kind) == (
        "Tomographic HiResCAM",
        ("Tomographic HiResCAM", ""),
        "tomographic",
    )
    volume = torch.rand(2, 6, 8, 10, generator=torch.Generator().manual_seed(0))
    maps = {
        spec: create_method(spec, config=TINY)(volume, tiny_model)
        for spec in ("hirescam@2", "pgc_hirescam@2", "tomographic_hirescam@2")
    }
    assert torch.equal(maps["hirescam@2"], maps["pgc_hirescam@2"])
    assert torch.isfinite(maps["tomographic_hirescam@2"]).all()


def test_a_row_or_a_family_with_an_unknown_family_is_an_error():
    from methods.cam_methods import Equation, Family, SliceWiseCAM

    with pytest.raises(ValueError, match="no family \\['tomografic'\\]"):
        Equation("HiResCAM", "hirescam", "HiResCAM", ("tomografic",))
    with pytest.raises(ValueError, match="family 'axial' is not one of"):
        Family("axial", SliceWiseCAM, "{name}", "{title}", "Axial", "{title}.")


def test_the_papers_published_rows_name_registered_methods():
    from benchmark.publish.rows import paper_results

    names = {spec.partition("@")[0] for spec in paper_results().method}
    assert names <= set(list_methods())
    assert {"layercam_3axis", "averaged_layercam", "tomographic_layercam", "tonno"} <= names


def test_a_plugin_declares_its_title_and_sorts_after_the_papers_methods():
    @register_method("test_plugin_title", layers=(1, 2), title="My plugin")
    class Plugin(Method):
        def __call__(self, volume, model):
            return volume[0]

    try:
        assert method_name("test_plugin_title@2").display == "My plugin (layer 2)"
        specs = ["test_plugin_title@1", "intensity", "tomographic_layercam@1", "gradcam@1"]
        ordered = sorted(specs, key=lambda s: method_name(s).order)
        assert ordered == [
            "gradcam@1",
            "tomographic_layercam@1",
            "test_plugin_title@1",
            "intensity",
        ]
        gone = MethodName("gone", 3, "gone", "", (KINDS.index("plugin"), len(METHODS), "gone"))
        assert method_name("gone@3") == gone
    finally:
        METHODS._entries.pop("test_plugin_title")


def test_tonno_of_the_threshold_sum_classifier_is_relu_of_v_minus_t():
    volume = smooth_ball((32, 32, 32), 0.7, centre=(0.1, 0.0, -0.05))
    volume = volume + 0.8 * gaussian((32, 32, 32), 0.1, (-0.2, 0.2, 0.1))
    expected = (volume - 0.3).clamp(min=0)
    config = TomographyConfig(n_angles=500, n_slices=48, slice_size=64)
    heatmap = create_method("tonno", config=config)(volume[None], ThresholdSum(0.3))
    assert rel_l2(heatmap, expected) < 0.10
    assert correlation(heatmap, expected) >= 0.99


def test_figure_7_two_seeds_give_nearly_the_same_tonno_heatmap():
    """A.1: every slice gets a random in-plane frame, yet for a classifier robust to
    rotations two seeds give nearly the same heatmap (Figure 7). Here a tiny fixed
    detector (3x3 convolution, ReLU, global max): correlation 0.995 between seeds at
    L = 64 (a random tiny ResNet, not robust to rotations, gives about 0). Measured on
    the synthetic set with a trained quick classifier: see :class:`methods.tonno.ToNNO`."""
    torch.manual_seed(0)
    detector = nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(8, 1)
    ).eval()
    volume = phantom((24, 24, 24))[None]
    config = TomographyConfig(n_angles=64, n_slices=12, slice_size=32, chunk=16, seed=0)
    first, again = (create_method("tonno", config=config)(volume, detector) for _ in range(2))
    other = create_method("tonno", config=replace(config, seed=1))(volume, detector)
    assert torch.equal(first, again)  # a seed is a heatmap
    assert correlation(first, other) > 0.98 and not torch.allclose(first, other)
    # the frames are drawn per slice, not per stack of slices
    fixed = {"n_angles": 64, "n_slices": 12, "size": 32, "seed": 0}
    logit = lambda slices: detector(slices)[:, 0]  # noqa: E731
    per_slice = reconstruct(volume, logit, **fixed, frames="slice")
    per_stack = reconstruct(volume, logit, **fixed, frames="stack")
    torch.testing.assert_close(first, per_slice, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(first, per_stack, atol=1e-3)


def test_slice_wise_cam_of_full_resolution_maps_is_the_volume_exactly():
    volume = torch.rand(1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    config = TomographyConfig(slice_size=16)
    for spec in ("layercam@1", "layercam_3axis@1"):
        heatmap = create_method(spec, config=config)(volume, StageProbe())
        torch.testing.assert_close(heatmap, volume[0], atol=1e-5, rtol=0)


def test_slice_wise_cam_is_resampled_to_the_input_size_and_back():
    """Non-square slices go through a square classifier input; the map returns at the voxels."""
    volume = gaussian((12, 20, 28), 0.3, (0.1, -0.2, 0.1))[None]
    heatmap = create_method("layercam@1", config=TomographyConfig(slice_size=64))(
        volume, StageProbe()
    )
    torch.testing.assert_close(heatmap, volume[0], atol=0.02, rtol=0)  # two resamplings


def test_averaged_cam_of_the_slice_itself_returns_the_volume():
    volume = phantom()
    config = TomographyConfig(n_angles_cam=150, n_slices=32, slice_size=48)
    heatmap = create_method("averaged_layercam@1", config=config)(volume[None], StageProbe())
    assert correlation(heatmap, volume) > 0.99
    assert rel_l2(heatmap, volume) < 0.1


def sharpness(x, reference) -> float:
    """Laplacian energy per unit energy, relative to the reference's: < 1 blurrier."""

    def ratio(a):
        a = np.asarray(a, dtype=np.float64)
        return np.linalg.norm(ndimage.laplace(a)) / np.linalg.norm(a)

    return ratio(x) / ratio(reference)


def test_figure_4_averaged_blurs_as_maps_coarsen_tomographic_stays_sharp():
    """The paper's Figure 4: average-pooled slices (64 px) as "CAM" maps of 64 ... 8 cells.

    Measure: sharpness = |Laplacian| / |x| relative to the phantom's. Averaged CAM loses it
    as the maps coarsen; Tomographic CAM keeps at least the phantom's at every resolution.
    """
    volume = phantom((24, 24, 24))[None]
    config = TomographyConfig(n_angles_cam=80, n_slices=24, slice_size=64, chunk=40)
    averaged, tomographic = [], []
    for pool in (1, 2, 4, 8):
        model = StageProbe(pool)
        for name, values in (("averaged", averaged), ("tomographic", tomographic)):
            heatmap = create_method(f"{name}_layercam@1", config=config)(volume, model)
            values.append(sharpness(heatmap, volume[0]))
    assert averaged == sorted(averaged, reverse=True) and averaged[-1] < 0.5 * averaged[0]
    assert min(tomographic) > 1.0
    assert all(t > a for t, a in zip(tomographic, averaged, strict=True))


def test_unknown_pytorch_grad_cam_class_and_bad_layer_are_clear_errors(tiny_model):
    from methods.cam import PytorchGradCAM

    with pytest.raises(ValueError, match="pytorch-grad-cam has no class 'NoSuchCAM'"):
        PytorchGradCAM("NoSuchCAM")
    with pytest.raises(RegistryError, match="has layers"):
        create_method("layercam@7")


def test_shared_computation_equals_each_method_alone(tiny_model):
    from methods.heatmaps import compute_heatmaps

    volume = torch.rand(2, 6, 8, 10, generator=torch.Generator().manual_seed(1))
    specs = [
        "tonno",
        "layercam@1",
        "gradcam_3axis@2",
        "layercam_3axis@1",
        "scorecam@3",
        "pgc_hirescam@1",
        "averaged_layercam@2",
        "tomographic_layercam@2",
        "tomographic_gradcampp@4",
        "averaged_scorecam@4",
    ]
    shared = dict(compute_heatmaps(specs, volume, tiny_model, config=TINY, batch_size=5))
    assert sorted(shared) == sorted(specs)
    for spec in specs:
        alone = create_method(spec, config=TINY, batch_size=5)(volume, tiny_model)
        torch.testing.assert_close(shared[spec], alone, rtol=1e-4, atol=1e-6, msg=spec)

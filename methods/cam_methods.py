"""The CAM methods: slice-wise (paper 4.3), 3-axis (A.8), Averaged and Tomographic (3.5).

Every CAM equation of :mod:`methods.cam` at every classifier stage, in four geometries that
all go through the tomography core:

- ``NAME@k``: each axial slice resampled to the classifier's input size, its map read back
  at the slice's own voxels and stacked (one direction, one slice per voxel plane);
- ``NAME_3axis@k``: the same along the depth, height and width axes, averaged (the ★ rows);
- ``averaged_NAME@k``: eq. (12), maps of Fibonacci-direction stacks averaged (L = 1000);
- ``tomographic_NAME@k``: eq. (13), with the second difference along each stack.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, ClassVar

from foundation.lazy import lazy_import
from methods.registry import Method, Passes, register_method
from methods.stages import stage_modules

if TYPE_CHECKING:
    from torch import Tensor, nn

    from methods.cam import CAM

cams = lazy_import("methods.cam")
tomography = lazy_import("methods.tomography")

LAYERS = (1, 2, 3, 4)

# equations that need no gradient: one forward pass per slice (ScoreCAM: 1 + channels)
GRADIENT_FREE = ("ScoreCAM", "EigenCAM")


class CAMMethod(Method):
    """A CAM at classifier stage ``layer``; subclasses choose the slicing geometry."""

    equation: ClassVar[str]  # a CAM class of methods.cam, else of pytorch-grad-cam
    slicing: ClassVar[str]  # the slices its maps come from: "voxel planes" or "stacks"

    @property
    def maps_key(self) -> tuple[str, int]:
        """Methods with equal keys need the same maps of the same slices."""
        return self.equation, self.layer

    @property
    def pass_group(self) -> Hashable | None:
        """Gradient CAMs of one slicing share their forward and backward passes in
        :func:`methods.cam.multi_cam`, whatever their equations and layers."""
        if self.equation in GRADIENT_FREE or not hasattr(cams, self.equation):
            return None
        return self.slicing, self.config

    def per_slice(self, channels: int | None) -> Passes:
        """Classifier passes per slice: ScoreCAM one forward for the activations and one
        per channel of its layer's masks; EigenCAM one forward; gradient CAMs one of each."""
        if self.equation == "ScoreCAM":
            if channels is None:
                raise ValueError(f"{self.spec}: its cost needs layer {self.layer}'s channels")
            return Passes(1 + channels)
        return Passes(1) if self.equation in GRADIENT_FREE else Passes(1, 1)

    def make_cam(self) -> CAM:
        own = getattr(cams, self.equation, None)
        return own() if own is not None else cams.PytorchGradCAM(self.equation)


def cam_maps(methods: Sequence[CAMMethod], model: nn.Module):
    """One function of the inputs [N, C, *S] (slices, or whole volumes) for every method's
    maps at its stage: {maps_key: [N, *s]}."""
    stages = stage_modules(model)
    requests = {m.maps_key: (m.make_cam(), stages[m.layer]) for m in methods}
    return cams.multi_cam(model, requests, methods[0].batch_size)


class SliceWiseCAM(CAMMethod):
    """Paper 4.3: the CAM of each slice along ``axes``, read back at its voxels, averaged
    over the axes (axial only: the paper's baselines; all three: the ★ variants of A.8)."""

    kind = "slice-wise"
    slicing = "voxel planes"
    axes: ClassVar[tuple[int, ...]] = (0,)

    def __call__(self, volume: Tensor, model: nn.Module) -> Tensor:
        return slice_wise_heatmaps([self], volume, model)[self.spec]

    def passes(self, shape: tuple[int, int, int], channels: int | None = None) -> Passes:
        """Every voxel plane along each axis is one slice (:func:`tomography.reslice`);
        each axis's maps are read back at every voxel once."""
        slices = sum(shape[axis] for axis in self.axes)
        geometry = Passes(0, 0, slices, len(self.axes) * math.prod(shape))
        return self.per_slice(channels) * slices + geometry


class ThreeAxisCAM(SliceWiseCAM):
    """A.8's ★: the slice-wise CAM along the depth, height and width axes, averaged."""

    axes = (0, 1, 2)


class AveragedCAM(CAMMethod):
    """Eq. (12): the maps of L Fibonacci-direction stacks, interpolated at (x.n, x.u, x.v)
    and averaged; ``filtered`` takes the second difference along each stack first (eq. 13)."""

    kind = "averaged"
    slicing = "stacks"  # Averaged, Tomographic and Iterative CAMs share one pass over them
    filtered: ClassVar[bool] = False

    def __call__(self, volume: Tensor, model: nn.Module) -> Tensor:
        return stacked_heatmaps([self], volume, model)[self.spec]

    @property
    def mode(self) -> Hashable:
        """Its mode of :func:`tomography.reconstruct_many`: ``filtered`` here."""
        return self.filtered

    def passes(self, shape: tuple[int, int, int], channels: int | None = None) -> Passes:
        """L_cam directions x M slices (Averaged) or M + 2 (Tomographic: the second
        difference needs m = -1..M; both together cut M + 2); L_cam reads per voxel."""
        c = self.config
        slices = c.n_angles_cam * (c.n_slices + 2 * self.filtered)
        geometry = Passes(0, 0, slices, c.n_angles_cam * math.prod(shape))
        return self.per_slice(channels) * slices + geometry


class TomographicCAM(AveragedCAM):
    """Eq. (13): Averaged CAM of the second differences of the maps along each stack."""

    kind = "tomographic"
    filtered = True


def slice_wise_heatmaps(
    methods: Sequence[SliceWiseCAM], volume: Tensor, model: nn.Module
) -> dict[str, Tensor]:
    """{spec: heatmap} of slice-wise methods sharing a configuration: each axis is sliced
    once, and each (equation, layer) map computed once for the methods that need it on
    that axis (an axial ScoreCAM beside a 3-axis CAM is not run on the other two)."""
    size = methods[0].config.slice_size
    axes = sorted({axis for m in methods for axis in m.axes})
    per_axis = {
        axis: tomography.reslice(
            volume, cam_maps([m for m in methods if axis in m.axes], model), axis, size
        )
        for axis in axes
    }
    return {m.spec: sum(per_axis[a][m.maps_key] for a in m.axes) / len(m.axes) for m in methods}


def stacked_heatmaps(
    methods: Sequence[AveragedCAM], volume: Tensor, model: nn.Module
) -> dict[str, Tensor]:
    """{spec: heatmap} of Averaged / Tomographic / Iterative methods sharing a configuration:
    one pass over the slices; every variant of a CAM comes from the same maps (eqs. 12-13)."""
    c = methods[0].config
    results = tomography.reconstruct_many(
        volume,
        cam_maps(methods, model),
        c.n_angles_cam,
        c.n_slices,
        c.slice_size,
        modes=list(dict.fromkeys(m.mode for m in methods)),
        chunk=c.chunk,
        seed=c.seed,
    )
    return {m.spec: results[(m.maps_key, m.mode)] for m in methods}


# --- the registered CAMs: (equation, geometry), in the paper's row order ---


@register_method("gradcam", layers=LAYERS, title="GradCAM", paper=("GradCAM", ""))
class SliceWiseGradCAM(SliceWiseCAM):
    """GradCAM, slice-wise (paper 4.3)."""

    equation = "GradCAM"


@register_method("gradcam_3axis", layers=LAYERS, title="GradCAM ★", paper=("GradCAM", "3axis"))
class ThreeAxisGradCAM(ThreeAxisCAM):
    """GradCAM along the three axes, averaged (A.8's ★)."""

    equation = "GradCAM"


@register_method("gradcampp", layers=LAYERS, title="GradCAM++", paper=("GradCAM++", ""))
class SliceWiseGradCAMPlusPlus(SliceWiseCAM):
    """GradCAM++, slice-wise (paper 4.3)."""

    equation = "GradCAMPlusPlus"


@register_method(
    "gradcampp_3axis", layers=LAYERS, title="GradCAM++ ★", paper=("GradCAM++", "3axis")
)
class ThreeAxisGradCAMPlusPlus(ThreeAxisCAM):
    """GradCAM++ along the three axes, averaged (A.8's ★)."""

    equation = "GradCAMPlusPlus"


@register_method("layercam", layers=LAYERS, title="LayerCAM", paper=("LayerCAM", ""))
class SliceWiseLayerCAM(SliceWiseCAM):
    """LayerCAM, slice-wise (paper 4.3)."""

    equation = "LayerCAM"


@register_method("layercam_3axis", layers=LAYERS, title="LayerCAM ★", paper=("LayerCAM", "3axis"))
class ThreeAxisLayerCAM(ThreeAxisCAM):
    """LayerCAM along the three axes, averaged (A.8's ★)."""

    equation = "LayerCAM"


@register_method("scorecam", layers=LAYERS, title="ScoreCAM", paper=("ScoreCAM", ""))
class SliceWiseScoreCAM(SliceWiseCAM):
    """ScoreCAM, slice-wise (paper 4.3)."""

    equation = "ScoreCAM"


@register_method("scorecam_3axis", layers=LAYERS, title="ScoreCAM ★", paper=("ScoreCAM", "3axis"))
class ThreeAxisScoreCAM(ThreeAxisCAM):
    """ScoreCAM along the three axes, averaged (A.8's ★)."""

    equation = "ScoreCAM"


@register_method(
    "averaged_gradcam", layers=LAYERS, title="Averaged GradCAM", paper=("Averaged GradCAM", "")
)
class AveragedGradCAM(AveragedCAM):
    """Eq. (12) with GradCAM."""

    equation = "GradCAM"


@register_method(
    "averaged_gradcampp",
    layers=LAYERS,
    title="Averaged GradCAM++",
    paper=("Averaged GradCAM++", ""),
)
class AveragedGradCAMPlusPlus(AveragedCAM):
    """Eq. (12) with GradCAM++."""

    equation = "GradCAMPlusPlus"


@register_method(
    "averaged_layercam", layers=LAYERS, title="Averaged LayerCAM", paper=("Averaged LayerCAM", "")
)
class AveragedLayerCAM(AveragedCAM):
    """Eq. (12) with LayerCAM."""

    equation = "LayerCAM"


@register_method(
    "averaged_scorecam", layers=LAYERS, title="Averaged ScoreCAM", paper=("Averaged ScoreCAM", "")
)
class AveragedScoreCAM(AveragedCAM):
    """Eq. (12) with ScoreCAM."""

    equation = "ScoreCAM"


@register_method(
    "tomographic_gradcam",
    layers=LAYERS,
    title="Tomographic GradCAM",
    paper=("Tomographic GradCAM", ""),
)
class TomographicGradCAM(TomographicCAM):
    """Eq. (13) with GradCAM."""

    equation = "GradCAM"


@register_method(
    "tomographic_gradcampp",
    layers=LAYERS,
    title="Tomographic GradCAM++",
    paper=("Tomographic GradCAM++", ""),
)
class TomographicGradCAMPlusPlus(TomographicCAM):
    """Eq. (13) with GradCAM++."""

    equation = "GradCAMPlusPlus"


@register_method(
    "tomographic_layercam",
    layers=LAYERS,
    title="Tomographic LayerCAM",
    paper=("Tomographic LayerCAM", ""),
)
class TomographicLayerCAM(TomographicCAM):
    """Eq. (13) with LayerCAM."""

    equation = "LayerCAM"


@register_method(
    "tomographic_scorecam",
    layers=LAYERS,
    title="Tomographic ScoreCAM",
    paper=("Tomographic ScoreCAM", ""),
)
class TomographicScoreCAM(TomographicCAM):
    """Eq. (13) with ScoreCAM."""

    equation = "ScoreCAM"


@register_method("pgc_eigencam", layers=LAYERS, title="EigenCAM (pytorch-grad-cam)")
class PytorchGradCAMEigenCAM(SliceWiseCAM):
    """pytorch-grad-cam's own EigenCAM, slice-wise."""

    equation = "EigenCAM"


@register_method("pgc_hirescam", layers=LAYERS, title="HiResCAM (pytorch-grad-cam)")
class PytorchGradCAMHiResCAM(SliceWiseCAM):
    """pytorch-grad-cam's own HiResCAM, slice-wise."""

    equation = "HiResCAM"


@register_method("pgc_xgradcam", layers=LAYERS, title="XGradCAM (pytorch-grad-cam)")
class PytorchGradCAMXGradCAM(SliceWiseCAM):
    """pytorch-grad-cam's own XGradCAM, slice-wise."""

    equation = "XGradCAM"

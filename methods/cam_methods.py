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

from typing import TYPE_CHECKING, ClassVar

from benchmark.config import TomographyConfig
from benchmark.lazy import lazy_import
from methods.registry import Method, register_method

if TYPE_CHECKING:
    from torch import Tensor, nn

    from methods.cam import CAM

cams = lazy_import("methods.cam")
models = lazy_import("benchmark.models")
tomography = lazy_import("methods.tomography")

LAYERS = (1, 2, 3, 4)

# name -> CAM class in methods.cam (looked up lazily)
CAM_EQUATIONS = {
    "gradcam": "GradCAM",
    "gradcampp": "GradCAMPlusPlus",
    "scorecam": "ScoreCAM",
    "layercam": "LayerCAM",
}
# more pytorch-grad-cam classes, run slice-wise through its own code: pgc_<name>
PYTORCH_GRAD_CAM = ("EigenCAM", "HiResCAM", "XGradCAM")


class CAMMethod(Method):
    """A CAM at classifier stage ``layer``; subclasses choose the slicing geometry."""

    equation: ClassVar[str]  # class name in methods.cam, or a pytorch-grad-cam class

    def __init__(self, layer: int, config: TomographyConfig | None = None, batch_size: int = 64):
        super().__init__(layer)
        self.config = config or TomographyConfig()
        self.batch_size = batch_size

    def make_cam(self) -> CAM:
        if self.equation in CAM_EQUATIONS.values():
            cam_class = getattr(cams, self.equation)
            return cam_class(self.batch_size) if cam_class is cams.ScoreCAM else cam_class()
        return cams.PytorchGradCAM(self.equation)

    def slice_maps(self, model: nn.Module):
        """slices [N, C, h, w] -> raw maps [N, a, b] at this method's stage, batched."""
        stage = models.stage_modules(model)[self.layer]
        return cams.batched(self.make_cam(), model, stage, self.batch_size)


class SliceWiseCAM(CAMMethod):
    """Paper 4.3: the CAM of each slice along ``axes``, read back at its voxels, averaged
    over the axes (axial only: the paper's baselines; all three: the ★ variants of A.8)."""

    axes: ClassVar[tuple[int, ...]] = (0,)

    def __call__(self, volume: Tensor, model: nn.Module) -> Tensor:
        maps, size = self.slice_maps(model), self.config.slice_size
        heatmaps = [tomography.reslice(volume, maps, axis, size) for axis in self.axes]
        return sum(heatmaps) / len(heatmaps)


class ThreeAxisCAM(SliceWiseCAM):
    """A.8's ★: the slice-wise CAM along the depth, height and width axes, averaged."""

    axes = (0, 1, 2)


class AveragedCAM(CAMMethod):
    """Eq. (12): the maps of L Fibonacci-direction stacks, interpolated at (x.n, x.u, x.v)
    and averaged; ``filtered`` takes the second difference along each stack first (eq. 13)."""

    filtered: ClassVar[bool] = False

    def __call__(self, volume: Tensor, model: nn.Module) -> Tensor:
        c = self.config
        return tomography.reconstruct(
            volume,
            self.slice_maps(model),
            c.n_angles_cam,
            c.n_slices,
            c.slice_size,
            filtered=self.filtered,
            chunk=c.chunk,
            seed=c.seed,
        )


class TomographicCAM(AveragedCAM):
    """Eq. (13): Averaged CAM of the second differences of the maps along each stack."""

    filtered = True


GEOMETRIES = {
    "{}": SliceWiseCAM,
    "{}_3axis": ThreeAxisCAM,
    "averaged_{}": AveragedCAM,
    "tomographic_{}": TomographicCAM,
}


def _register(name: str, base: type[CAMMethod], equation: str) -> None:
    doc = f"{equation}: {base.__doc__.splitlines()[0]}"
    cls = type(f"{base.__name__}_{equation}", (base,), {"equation": equation, "__doc__": doc})
    cls.__module__ = __name__
    register_method(name, layers=LAYERS)(cls)


for _name, _equation in CAM_EQUATIONS.items():
    for _pattern, _base in GEOMETRIES.items():
        _register(_pattern.format(_name), _base, _equation)
for _equation in PYTORCH_GRAD_CAM:
    _register(f"pgc_{_equation.lower()}", SliceWiseCAM, _equation)

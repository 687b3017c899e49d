"""The CAM methods: slice-wise (paper 4.3), 3-axis (A.8), Averaged and Tomographic (3.5).

Every CAM equation of :mod:`methods.cam` at every classifier stage, in four geometries that
all go through the tomography core:

- ``NAME@k``: each axial slice resampled to the classifier's input size, its map read back
  at the slice's own voxels and stacked (one direction, one slice per voxel plane);
- ``NAME_3axis@k``: the same along the depth, height and width axes, averaged (the ★ rows);
- ``averaged_NAME@k``: eq. (12), maps of Fibonacci-direction stacks averaged (L = 1000);
- ``tomographic_NAME@k``: eq. (13), with the second difference along each stack.

Their classes are made from one table, :data:`EQUATIONS` (a row per CAM equation) x
:class:`Family` (a column per geometry: these four, pytorch-grad-cam's adapter, and
:mod:`methods.iterative`'s and :mod:`methods.cam3d`'s): adding a CAM is one row.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from foundation.lazy import lazy_import
from methods.registry import Method, Passes, register_method
from methods.stages import stage_modules

if TYPE_CHECKING:
    from torch import Tensor, nn

    from methods.cam import CAM
    from methods.tomography import Mode

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
    def mode(self) -> Mode:
        """Its mode of :func:`tomography.reconstruct_many`: ``FILTERED`` or ``UNFILTERED``."""
        return tomography.FILTERED if self.filtered else tomography.UNFILTERED

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


# --- the registered CAMs: a table of equations x families ---

# The table's columns: a Family each, here and in methods.iterative and methods.cam3d.
FAMILIES = ("slice-wise", "3axis", "averaged", "tomographic", "iterative", "3d", "pgc")


@dataclass(frozen=True)
class Equation:
    """A row of the table: a CAM equation, and the families it is registered in."""

    equation: str  # its class in methods.cam, else in pytorch-grad-cam
    name: str  # the stem of its specs: "gradcampp" -> gradcampp@k, averaged_gradcampp@k ...
    title: str  # the stem of its row labels: "GradCAM++" -> "Averaged GradCAM++" ...
    families: tuple[str, ...]  # keys of the families (the columns) it is registered in

    def __post_init__(self):
        if unknown := sorted(set(self.families) - set(FAMILIES)):
            raise ValueError(f"{self.equation}: no family {unknown}; the families: {FAMILIES}")


@dataclass(frozen=True)
class Family:
    """A column of the table: one geometry's base class and how it names its CAMs, each a
    template of an :class:`Equation`'s fields (``{name}``, ``{title}``, ``{equation}``)."""

    key: str  # what the table's rows list: "tomographic"
    base: type[CAMMethod]
    name: str  # the registered name: "tomographic_{name}"
    title: str  # the row label: "Tomographic {title}"
    prefix: str  # the class name, before the equation: "Tomographic" -> TomographicLayerCAM
    doc: str  # the class docstring: "Eq. (13) with {title}."
    paper: tuple[str, str] | None = None  # (method, variant) in the paper's tables

    def __post_init__(self):
        if self.key not in FAMILIES:
            raise ValueError(f"family {self.key!r} is not one of {FAMILIES}")

    def register(self, row: Equation, module: str) -> type[CAMMethod]:
        """The class of ``row`` in this family, as if written in ``module``, registered at
        every stage of :data:`LAYERS` with its title and paper row."""
        fields = {"name": row.name, "title": row.title, "equation": row.equation}
        name = f"{self.prefix}{row.equation}"
        body = {"__module__": module, "__qualname__": name, "__doc__": self.doc.format(**fields)}
        cls = type(self.base)(name, (self.base,), {**body, "equation": row.equation})
        paper = tuple(p.format(**fields) for p in self.paper) if self.paper else None
        title = self.title.format(**fields)
        return register_method(self.name.format(**fields), LAYERS, title=title, paper=paper)(cls)


def register_families(
    module: str, *groups: Sequence[Family], table: Sequence[Equation] | None = None
) -> dict[str, type[CAMMethod]]:
    """Register every equation of ``table`` (default :data:`EQUATIONS`) in each family of
    ``groups`` that its row lists, as classes of ``module``: group after group, and row by
    row within a group (the registry's order, which is the tables' row order within a kind).
    Returns {class name: class}, for the module's namespace (where pickle finds them)."""
    classes = {}
    for group in groups:
        for row in EQUATIONS if table is None else table:
            for family in group:
                if family.key in row.families:
                    cls = family.register(row, module)
                    classes[cls.__name__] = cls
    return classes


SLICE_WISE = Family(
    "slice-wise",
    SliceWiseCAM,
    "{name}",
    "{title}",
    "SliceWise",
    "{title}, slice-wise (paper 4.3).",
    ("{title}", ""),
)
THREE_AXIS = Family(
    "3axis",
    ThreeAxisCAM,
    "{name}_3axis",
    "{title} ★",
    "ThreeAxis",
    "{title} along the three axes, averaged (A.8's ★).",
    ("{title}", "3axis"),
)
AVERAGED = Family(
    "averaged",
    AveragedCAM,
    "averaged_{name}",
    "Averaged {title}",
    "Averaged",
    "Eq. (12) with {title}.",
    ("Averaged {title}", ""),
)
TOMOGRAPHIC = Family(
    "tomographic",
    TomographicCAM,
    "tomographic_{name}",
    "Tomographic {title}",
    "Tomographic",
    "Eq. (13) with {title}.",
    ("Tomographic {title}", ""),
)
PYTORCH_GRAD_CAM = Family(  # the adapter: any other pytorch-grad-cam class, slice-wise
    "pgc",
    SliceWiseCAM,
    "pgc_{name}",
    "{title} (pytorch-grad-cam)",
    "PytorchGradCAM",
    "pytorch-grad-cam's own {title}, slice-wise.",
)

PAPER = ("slice-wise", "3axis", "averaged", "tomographic")  # the paper's four geometries
OURS = ("iterative", "3d")  # methods.iterative's and methods.cam3d's families

# Adding a CAM is one line: its equation (a class of methods.cam, else of pytorch-grad-cam),
# the stems of its names and titles, its families. Row order = the tables' row order.
EQUATIONS = (
    Equation("GradCAM", "gradcam", "GradCAM", (*PAPER, *OURS)),
    Equation("GradCAMPlusPlus", "gradcampp", "GradCAM++", (*PAPER, *OURS)),
    Equation("LayerCAM", "layercam", "LayerCAM", (*PAPER, *OURS)),
    Equation("ScoreCAM", "scorecam", "ScoreCAM", (*PAPER, "3d")),  # iterative_*: gradient CAMs only
    Equation("EigenCAM", "eigencam", "EigenCAM", ("pgc",)),
    Equation("HiResCAM", "hirescam", "HiResCAM", ("pgc",)),
    Equation("XGradCAM", "xgradcam", "XGradCAM", ("pgc",)),
)

# This module's families, a group per kind (slice-wise, averaged, tomographic), then the adapter
GROUPS = ((SLICE_WISE, THREE_AXIS), (AVERAGED,), (TOMOGRAPHIC,), (PYTORCH_GRAD_CAM,))
globals().update(register_families(__name__, *GROUPS))

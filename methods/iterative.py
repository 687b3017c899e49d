"""Iterative tomographic CAM: the reconstruction the paper leaves open (Conclusion, Fig. 4).

``iterative_NAME@k`` takes the maps of Averaged CAM's direction stacks (eq. 12; the same
slices, frames and classifier passes, shared with ``averaged_NAME@k`` and
``tomographic_NAME@k`` when computed together) and solves for the volume whose slices,
average-pooled to the maps' grid, match them best (:class:`methods.tomography.Iterative`):
on Figure 4's pooled slices it is below both Averaged CAM (blurry) and Tomographic CAM
(over-sharp) at every resolution (``python -m benchmark bench figure4``). On a
classifier's CAMs it fails (it fits their background with voxels at the cube's faces;
``python -m benchmark bench iterative`` measures it, docs/tomography.md).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from foundation.lazy import lazy_import
from methods.cam_methods import AveragedCAM, Family, register_families
from methods.registry import Passes

if TYPE_CHECKING:
    from methods.tomography import Iterative

tomography = lazy_import("methods.tomography")


class IterativeCAM(AveragedCAM):
    """The volume x >= 0 minimising ||P x - maps||^2, P = the stacks' slices average-pooled
    to the CAM's grid, by the default solver of :class:`methods.tomography.Iterative`
    started from Averaged CAM."""

    kind = "iterative"
    revision = 1  # 1: P and P^T as sparse matrices (rounding-level changes), not grid_sample

    @property
    def mode(self) -> Iterative:
        return tomography.Iterative()

    def passes(self, shape: tuple[int, int, int], channels: int | None = None) -> Passes:
        """Averaged CAM's L_cam x M slices through the classifier and its backprojection
        (L_cam reads per voxel: where the solver starts), then the solver's reads: P^T maps,
        D = P^T P 1 and one P^T P per iteration, each a read per pixel (P, a sparse matrix
        of ~1.5 entries a pixel at 64 px, 32x64x64) and a write per pixel (P^T)
        (measured: docs/decisions.md#iterative-cams-counted-passes)."""
        c = self.config
        slices = c.n_angles_cam * c.n_slices
        reads = c.n_angles_cam * math.prod(shape)
        reads += 2 * (self.mode.iterations + 2) * slices * c.slice_size**2
        return self.per_slice(channels) * slices + Passes(0, 0, slices, reads)


ITERATIVE = Family(
    "iterative",
    IterativeCAM,
    "iterative_{name}",
    "Iterative {title}",
    "Iterative",
    "Iterative {title}: {title} maps of the stacks, reconstructed iteratively.",
)

globals().update(register_families(__name__, (ITERATIVE,)))  # the rows listing "iterative"

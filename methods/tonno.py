"""ToNNO (paper 3.4): the tomographic reconstruction of the classifier's logit."""

from __future__ import annotations

from typing import TYPE_CHECKING

from foundation.lazy import lazy_import
from methods.registry import Method, Passes, register_method

if TYPE_CHECKING:
    from torch import Tensor, nn

tomography = lazy_import("methods.tomography")


@register_method("tonno", title="ToNNO", paper=("ToNNO", ""))
class ToNNO(Method):
    """G of eq. (11) with R_g(s, n) = g(S_V(s, n, u, v)), the logit of each slice (eq. 6).

    Each slice gets its own random in-plane frame (A.1: "whenever extracting a slice"),
    drawn from ``config.seed``, so G is a random variable; as in the paper's Figure 7, the
    seed changes it little (measured: docs/decisions.md#tonnos-frame-per-slice).
    """

    revision = 1  # 1: a frame per slice (A.1), no longer one per direction

    kind = "tonno"

    def __call__(self, volume: Tensor, model: nn.Module) -> Tensor:
        c = self.config
        return tomography.reconstruct(
            volume,
            lambda slices: model(slices)[:, 0],
            c.n_angles,
            c.n_slices,
            c.slice_size,
            chunk=c.chunk,
            seed=c.seed,
            frames="slice",
        )

    def passes(self, shape: tuple[int, int, int], channels: int | None = None) -> Passes:
        """L directions x (M + 2) slices (m = -1..M for eq. 9's second difference), one
        forward pass each, no backward; the backprojection reads L values per voxel."""
        c = self.config
        slices = c.n_angles * (c.n_slices + 2)
        return Passes(slices, 0, slices, c.n_angles * shape[0] * shape[1] * shape[2])

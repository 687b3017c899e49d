"""Analytic phantoms on [-1, 1]^3 and their exact 3D-2D Radon transforms (plane integrals).

For a phantom centred at c, Rf(s, n) = Rf_0(s - c.n) with Rf_0 the centred transform:
uniform ball pi (R^2 - s^2)+, smooth ball (1 - |x|^2/R^2)+: pi (R^2 - s^2)+^2 / (2 R^2),
Gaussian A exp(-|x|^2 / 2 sigma^2): 2 pi sigma^2 A exp(-s^2 / 2 sigma^2).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def grid_points(shape: tuple[int, int, int]) -> Tensor:
    """[D, H, W, 3] voxel coordinates on [-1, 1]^3 (the core's convention)."""
    axes = [torch.linspace(-1.0, 1.0, n, dtype=torch.float64) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


def radius_map(shape, centre=(0.0, 0.0, 0.0)) -> Tensor:
    return (grid_points(shape) - torch.tensor(centre, dtype=torch.float64)).norm(dim=-1)


def uniform_ball(shape, radius, centre=(0.0, 0.0, 0.0)) -> Tensor:
    """Indicator of the ball, anti-aliased over one voxel so its volume is that of radius R."""
    voxel = 2.0 / (max(shape) - 1)
    return ((radius - radius_map(shape, centre)) / voxel + 0.5).clamp(0.0, 1.0).float()


def smooth_ball(shape, radius, centre=(0.0, 0.0, 0.0)) -> Tensor:
    return (1.0 - radius_map(shape, centre) ** 2 / radius**2).clamp(min=0.0).float()


def gaussian(shape, sigma, centre=(0.0, 0.0, 0.0), amplitude=1.0) -> Tensor:
    r = radius_map(shape, centre)
    return (amplitude * torch.exp(-(r**2) / (2 * sigma**2))).float()


def radon_uniform_ball(s: Tensor, radius: float) -> Tensor:
    return math.pi * (radius**2 - s**2).clamp(min=0.0)


def radon_smooth_ball(s: Tensor, radius: float) -> Tensor:
    return math.pi * (radius**2 - s**2).clamp(min=0.0) ** 2 / (2 * radius**2)


def radon_gaussian(s: Tensor, sigma: float, amplitude: float = 1.0) -> Tensor:
    return 2 * math.pi * sigma**2 * amplitude * torch.exp(-(s**2) / (2 * sigma**2))


def plane_integral(slices: Tensor) -> Tensor:
    """The plane integral of eq. (1) from the slices [N, C, h, w] of eq. (4) (channel 0).

    Eq. (4) puts the h x w pixels at the corners and the grid points of [-1, 1]^2, so each
    pixel weighs (2/(h-1)) (2/(w-1)); eq. (5)'s 4 x pixel mean is smaller by (1 - 1/h)(1 - 1/w).
    """
    h, w = slices.shape[-2:]
    return slices[:, 0].sum(dim=(-2, -1)) * (2 / (h - 1)) * (2 / (w - 1))


def rel_l2(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())

"""The methods' settings: the tomographic reconstruction's (paper 3.6).

Presets, YAML and ``--set`` overrides are applied by :func:`benchmark.config.resolve`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TomographyConfig:
    """Settings of the tomographic reconstruction (paper 3.6)."""

    n_angles: int = 2000  # L, eq. (8), for ToNNO
    n_angles_cam: int = 1000  # L for Averaged / Tomographic CAM (paper 3.6)
    n_slices: int = 100  # M, eq. (9)
    slice_size: int = 224  # h_S = w_S, eq. (4)
    chunk: int = 32  # directions per batch; sets peak memory, not the result
    seed: int = 0  # random in-plane frames (A.1)

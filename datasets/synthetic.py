"""``synthetic`` and ``synthetic_pet``: data sets generated in code from a seed.

Every volume is a textured ellipsoidal "body" with distractors present in both classes
(bright tubes as bright as the lesions, and a larger, dimmer blob), so that a classifier
must find the lesions, not brightness. Positives carry 1-3 lesions: rotated ellipsoids
of varied size and contrast with a smooth (sigmoid) edge; the mask is each lesion's
half-maximum support and the boxes are their half-open bounding boxes. Negatives have
an empty mask and no box. Lesions lie inside the unit ball of the [-1, 1]^3 volume, the
part the tomographic reconstruction covers.

``synthetic_pet``, the README's first data set, adds organs with physiological uptake in
both classes (as AutoPET's brain, heart, kidneys and bladder): large soft-edged ellipsoids
as bright as the lesions, many brighter, which lesions keep clear of. Thresholding the
image then finds organs; the classifier must find the lesions by their size and edges.

Volume ``i`` is drawn from ``numpy.random.default_rng([seed, i])``: deterministic,
generated lazily and cheaply (a 32x64x64 volume in a few milliseconds), so nothing is
cached on disk. Ids ``synthetic_0000``...; the first ``n_train`` are the training split;
labels alternate 0, 1 so both splits are balanced.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from datasets.base import Record, VolumeDataset, channel_names
from datasets.registry import register_dataset
from datasets.volume import Box, DatasetError, Volume

EDGE = 0.03  # width of the sigmoid edges, in normalised [-1, 1] units
# Organs with physiological uptake (``synthetic_pet``): semi-axes drawn in ORGAN_AXES
# times the body's, centres in the body's inner half, soft edges (ORGAN_EDGE, normalised
# units), brightness above the tissue in UPTAKE: as bright as the lesions, many brighter.
ORGAN_AXES = (0.3, 0.45)
ORGAN_EDGE = 0.12
UPTAKE = (0.6, 1.1)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def grid(shape: tuple[int, int, int]) -> list[np.ndarray]:
    """Broadcastable normalised coordinates (z [D,1,1], y [1,H,1], x [1,1,W]) in [-1, 1]."""
    return [
        np.linspace(-1.0, 1.0, n, dtype=np.float32).reshape([-1 if a == i else 1 for a in range(3)])
        for i, n in enumerate(shape)
    ]


def rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def texture(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """Smooth low-frequency noise with unit standard deviation."""
    sigma = [max(n / 12.0, 1.0) for n in shape]
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return noise / max(float(noise.std()), 1e-6)


def ellipsoid_radius(coords, centre, axes, turn) -> np.ndarray:
    """Normalised radius of a rotated ellipsoid: < 1 inside, 1 on its surface."""
    offsets = [g - c for g, c in zip(coords, centre, strict=True)]
    total = 0.0
    for k in range(3):
        along = sum(turn[a, k] * offsets[a] for a in range(3))
        total = total + (along / axes[k]) ** 2
    return np.sqrt(total)


def tube(coords, point, direction, radius) -> np.ndarray:
    """Soft cylinder of ``radius`` around the line through ``point`` along ``direction``."""
    offsets = [g - p for g, p in zip(coords, point, strict=True)]
    along = sum(direction[a] * offsets[a] for a in range(3))
    dist2 = sum((offsets[a] - along * direction[a]) ** 2 for a in range(3))
    return sigmoid((radius - np.sqrt(dist2)) / (0.5 * EDGE))


def make_volume(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    channels: int,
    positive: bool,
    difficulty: float,
    organs: int = 0,
) -> tuple[np.ndarray, np.ndarray, list[Box]]:
    """One synthetic sample: (image float32 [C,D,H,W], mask bool [D,H,W], lesion boxes)."""
    coords = grid(shape)
    voxel = np.array([2.0 / (n - 1) for n in shape])  # voxel size in normalised units
    body_axes = rng.uniform(0.8, 0.92, size=3)
    body = sigmoid((1.0 - ellipsoid_radius(coords, (0, 0, 0), body_axes, np.eye(3))) / EDGE)

    organ_axes = rng.uniform(0.22, 0.32, size=3)
    organ_centre = rng.uniform(-0.3, 0.3, size=3)
    organ = sigmoid((1.0 - ellipsoid_radius(coords, organ_centre, organ_axes, rotation(rng))) / 0.1)
    tubes = []
    for _ in range(rng.integers(2, 5)):
        direction = rng.standard_normal(3)
        point = rng.uniform(-0.5, 0.5, size=3)
        radius = max(rng.uniform(0.025, 0.04), 0.6 * voxel.max())
        tubes.append(
            (
                rng.uniform(0.5, 0.9),
                tube(coords, point, direction / np.linalg.norm(direction), radius),
            )
        )

    uptake = []  # (brightness, centre, semi-axes, rotation) of each organ, in both classes
    for _ in range(organs):
        axes = rng.uniform(*ORGAN_AXES, size=3) * body_axes
        centre = rng.uniform(-0.45, 0.45, size=3) * body_axes
        uptake.append((rng.uniform(*UPTAKE), centre, axes, rotation(rng)))
    organ_uptake = sum(
        b * sigmoid((1.0 - ellipsoid_radius(coords, c, a, t)) * a.min() / ORGAN_EDGE)
        for b, c, a, t in uptake
    )

    mask = np.zeros(shape, dtype=bool)
    boxes: list[Box] = []
    lesions = np.zeros(shape, dtype=np.float32)
    scale, contrast = 1.0 - 0.5 * difficulty, 1.0 - 0.6 * difficulty
    for _ in range(rng.integers(1, 4) if positive else 0):
        axes = np.maximum(rng.uniform(0.13, 0.24) * scale * rng.uniform(0.75, 1.25, 3), 1.5 * voxel)
        while True:  # inside the unit ball, well inside the body, clear of the organs
            centre = rng.uniform(-0.7, 0.7, size=3)
            if (
                np.linalg.norm(centre) + axes.max() < 0.85
                and np.linalg.norm(centre / body_axes) < 0.75
                and all(
                    ellipsoid_radius(centre, c, a + axes.max(), t) > 1.1 for _, c, a, t in uptake
                )
            ):
                break
        rho = ellipsoid_radius(coords, centre, axes, rotation(rng))
        support = rho < 1.0  # the sigmoid profile's half maximum
        lesions = np.maximum(
            lesions,
            contrast * rng.uniform(0.8, 1.25) * sigmoid((1.0 - rho) * axes.min() / (0.5 * EDGE)),
        )
        mask |= support
        where = np.argwhere(support)
        lo, hi = where.min(0), where.max(0) + 1
        boxes.append((int(lo[0]), int(hi[0]), int(lo[1]), int(hi[1]), int(lo[2]), int(hi[2])))

    image = np.empty((channels, *shape), dtype=np.float32)
    for c in range(channels):
        gain = 1.0 if c == 0 else rng.uniform(0.5, 1.0)  # how visible lesions are in channel c
        tissue = 1.0 + 0.12 * texture(rng, shape) + 0.35 * organ + sum(a * t for a, t in tubes)
        tissue = tissue + organ_uptake
        image[c] = body * (tissue + gain * lesions) + 0.05 * rng.standard_normal(
            shape, dtype=np.float32
        )
    return image, mask, boxes


class GeneratedDataset(VolumeDataset):
    """A data set generated in code (no files, nothing cached): ids ``<name>_0000``...,
    the first ``n_train`` the training split, labels alternating 0, 1 so both splits are
    balanced; the subclass sets ``shape``, ``n_train``, ``n_val`` and its ``spacing``."""

    cached = False
    needs_root = False
    min_size = 8  # the smallest edge of ``shape``

    def __init__(self, root, shape, n_train: int, n_val: int, **options):
        """Check the options all generated sets share (each subclass checks its own first)."""
        if root is not None:
            raise DatasetError(f"{self.name}: generated in code, takes no root (got {root})")
        shape = tuple(int(n) for n in shape)
        if len(shape) != 3 or min(shape) < self.min_size:
            raise DatasetError(
                f"{self.name}: shape must be 3 sizes >= {self.min_size}, got {shape}"
            )
        if n_train < 2 or n_val < 0:
            raise DatasetError(
                f"{self.name}: need n_train >= 2 and n_val >= 0, got {n_train}, {n_val}"
            )
        self.shape, self.n_train, self.n_val = shape, int(n_train), int(n_val)
        super().__init__(None, **options)

    @property
    def affine(self) -> np.ndarray:
        """(d, h, w) -> RAS+: d towards superior, h towards posterior, w towards left."""
        affine = np.zeros((4, 4))
        sd, sh, sw = self.spacing
        affine[2, 0], affine[1, 1], affine[0, 2], affine[3, 3] = sd, -sh, -sw, 1.0
        affine[:3, 3] = -affine[:3, :3] @ ((np.array(self.shape) - 1) / 2)
        return affine

    def _scan(self) -> list[Record]:
        return [
            Record(
                id=f"{self.name}_{i:04d}",
                label=i % 2,
                patient=f"{self.name}_{i:04d}",
                annotated=True,
                split="train" if i < self.n_train else "val",
                source=i,
            )
            for i in range(self.n_train + self.n_val)
        ]

    def own_options(self) -> dict:
        """The subclass's options, between the shared ones in :meth:`options`."""
        return {}

    def options(self) -> dict:
        return {
            "shape": self.shape,
            "n_train": self.n_train,
            "n_val": self.n_val,
            **self.own_options(),
            "seed": self.seed,
            "max_abs": self.max_abs,
        }

    def _header(self, record: Record):
        return self.shape, self.spacing


@register_dataset("synthetic", annotation="mask", files=False)
class Synthetic(GeneratedDataset):
    """Synthetic lesions in textured bodies (no files; see the module docstring).

    Options: ``shape`` (D, H, W), ``n_train``/``n_val`` volumes, ``channels``,
    ``difficulty`` in [0, 1] (0: large, high-contrast lesions; 1: half the size, 40 %
    of the contrast), ``seed``, ``max_abs`` (the value check of ``datasets.checks``).
    """

    version = "1"
    organs = 0  # organs with uptake a volume carries (``synthetic_pet``'s option)

    def __init__(
        self,
        root: None = None,
        *,
        shape: tuple[int, int, int] = (32, 64, 64),
        n_train: int = 48,
        n_val: int = 24,
        channels: int = 1,
        difficulty: float = 0.3,
        seed: int = 0,
        cache_dir: str | None = None,
        max_abs: float = 1e6,
    ):
        if channels < 1:
            raise DatasetError(f"{self.name}: channels must be >= 1, got {channels}")
        if not 0.0 <= difficulty <= 1.0:
            raise DatasetError(f"{self.name}: difficulty must be in [0, 1], got {difficulty}")
        self.difficulty = float(difficulty)
        self.channels = channel_names(channels)
        super().__init__(
            root, shape, n_train, n_val, cache_dir=cache_dir, seed=seed, max_abs=max_abs
        )

    def own_options(self) -> dict:
        return {"channels": len(self.channels), "difficulty": self.difficulty}

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (mm) making the volume a cube of ``max(shape)`` mm."""
        return tuple(max(self.shape) / n for n in self.shape)

    def _load(self, record: Record) -> Volume:
        rng = np.random.default_rng([self.seed, record.source])
        image, mask, boxes = make_volume(
            rng, self.shape, len(self.channels), bool(record.label), self.difficulty, self.organs
        )
        return Volume(record.id, image, record.label, mask, boxes, self.affine, self.spacing)


@register_dataset("synthetic_pet", annotation="mask", files=False)
class SyntheticPet(Synthetic):
    """``synthetic`` with organs of physiological uptake in both classes, as AutoPET's
    brain, heart, kidneys and bladder: large soft-edged ellipsoids as bright as the
    lesions, many brighter, so that thresholding the image finds organs, not lesions.

    Options: ``organs`` per volume (default 2), and ``synthetic``'s; 16 validation volumes
    by default (``synthetic``: 24), so that the README's first command, whose heatmaps
    are most of its time, ends within ten minutes on a 2-core CPU.
    """

    def __init__(self, root: None = None, *, organs: int = 2, n_val: int = 16, **options):
        if organs < 0:
            raise DatasetError(f"{self.name}: organs must be >= 0, got {organs}")
        self.organs = int(organs)
        super().__init__(root, n_val=n_val, **options)

    def own_options(self) -> dict:
        return {**super().own_options(), "organs": self.organs}

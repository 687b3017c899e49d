"""``brain``: a FLAIR-like brain MRI phantom with small MS-like lesions, generated in code.

A held-out set of the kind real MS data poses (2.5 mm voxels, real-looking anatomy,
few small lesions, bright distractors in both classes), deterministic and cheap.

Each subject has its own anatomy, drawn from ``numpy.random.default_rng([seed, i])``:
a head (bright scalp, dark skull, soft tissue below the skull base), a brain of random
size, shape and small tilt whose cortex is a grey-matter ribbon (brighter than white
matter, as in FLAIR) folded by sulci (dark CSF clefts running inward from the surface,
lined by cortex) and split by the interhemispheric fissure; white matter; deep grey
nuclei (thalami, lentiform and caudate nuclei); C-shaped lateral ventricles (frontal,
occipital and temporal horns) and a third ventricle whose size varies between subjects
(atrophy, which also widens the sulci); a cerebellum with folia and a brainstem.

Bright distractors are in both classes: periventricular caps at the horns and thin
rims along the ventricles (a normal FLAIR finding, in the white matter), choroid
plexus in the atria, CSF flow spots, bright cortical veins / slow-flow vessels at the
surface, a sagittal sinus of random brightness, bright scalp fat and grey matter
itself. Several are as bright as or brighter than the lesions, so thresholding the
image does not find them.

Positives carry 1-4 lesions in the cerebral white matter: ovoids of 3-9 mm equivalent
diameter (log-uniform; 1.2-3.6 voxels), most of them periventricular and elongated
perpendicular to the ventricle wall (Dawson's fingers), the others in the deep and
juxtacortical white matter (diameters times ``lesion_size``); contrast 15-95 % above
white matter times ``lesion_contrast``, smooth edges. The mask is their support (half
maximum of the profile) within the white matter, boxes their half-open bounding boxes;
lesions are kept apart, so each is one 26-connected component of the mask. Negatives
have no lesion, an empty mask and no box.

The image is then multiplied by a smooth bias field (about +-15 %) and a random gain
(0.85-1.15), given mild tissue texture, blurred by a point-spread function (0.45
voxel) and made Rician (magnitude of complex Gaussian noise, sigma 2.5-5 % of white
matter). White matter sits near 1, no further normalisation.

Geometry: a field of view of 145 x 180 x 155 mm (superior-inferior, anterior-posterior,
right-left) sampled at ``shape`` = (D, H, W), (58, 72, 62) by default, i.e. 2.5 mm
isotropic; D is the axial axis (d towards superior, h towards posterior, w towards
left, as ``synthetic``). Volumes are quick to make, so nothing is cached on disk
(measured: docs/decisions.md#brain-volumes-are-not-cached). Ids ``brain_0000``...; the
first ``n_train`` are the training split; labels alternate 0, 1 by index, so both splits
are balanced.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from datasets.base import Record
from datasets.registry import register_dataset
from datasets.synthetic import GeneratedDataset, ellipsoid_radius, grid, sigmoid
from datasets.volume import Box, DatasetError, Volume

FOV = (145.0, 180.0, 155.0)  # mm along (D, H, W)
SHAPE = (58, 72, 62)  # 2.5 mm isotropic

# Tissue labels of the map ``make_brain`` returns (each voxel's class, lesions aside).
TISSUES = (
    "background",
    "scalp",
    "skull",
    "csf",
    "grey",
    "white",
    "deep_grey",
    "ventricle",
    "hindbrain",
)
BACKGROUND, SCALP, SKULL, CSF, GREY, WHITE, DEEP_GREY, VENTRICLE, HINDBRAIN = range(9)

# FLAIR intensities relative to white matter: (low, high) of a per-subject uniform draw.
LEVELS = {
    "white": (1.0, 1.0),
    "grey": (1.35, 1.5),
    "deep_grey": (1.08, 1.2),
    "csf": (0.12, 0.28),
    "skull": (0.05, 0.12),
    "diploe": (0.3, 0.6),
    "scalp": (1.2, 1.7),
    "soft": (0.45, 0.7),
    "cerebellum": (1.1, 1.25),
    "brainstem": (1.0, 1.12),
}
LESION_DIAMETER = (3.0, 9.0)  # mm, equivalent-sphere diameter, log-uniform
LESION_CONTRAST = (0.15, 0.95)  # above white matter, times ``lesion_contrast``
LESION_KINDS = {"periventricular": 0.55, "deep": 0.3, "juxtacortical": 0.15}
FAR = 1e3  # "far away" for distance fields computed on part of the volume only


@dataclass
class Phantom:
    """One generated subject."""

    image: np.ndarray  # float32 [1, D, H, W]
    mask: np.ndarray  # bool [D, H, W]: lesion support within the white matter
    boxes: list[Box]  # one half-open box per lesion, in the order of ``lesions``
    tissue: np.ndarray  # uint8 [D, H, W]: index into TISSUES (the anatomy, lesions aside)
    distractor: np.ndarray  # bool [D, H, W]: where a bright distractor adds > 0.15
    lesions: list[dict] = field(default_factory=list)  # centre (voxel), diameter, ...


class _Space:
    """The volume's geometry and a subject's brain frame (centre, tilt), all in mm.

    Frame coordinates (z up, y back, x left, origin at the brain's centre) are kept as
    full float32 arrays ``o``; ``box(lo, hi)`` gives the voxel slices covering a frame
    box, so that small structures are computed on small crops.
    """

    def __init__(self, shape, centre, turn):
        self.shape = shape
        self.spacing = tuple(f / n for f, n in zip(FOV, shape, strict=True))
        self.world = [
            g * np.float32((n - 1) / 2 * s)
            for g, n, s in zip(grid(shape), shape, self.spacing, strict=True)
        ]
        self.centre, self.turn = np.asarray(centre, float), np.asarray(turn, float)
        offsets = [g - np.float32(c) for g, c in zip(self.world, centre, strict=True)]
        self.o = [sum(offsets[a] * float(turn[a, k]) for a in range(3)) for k in range(3)]

    def box(self, lo, hi) -> tuple[slice, ...]:
        """Voxel slices covering the frame box [lo, hi] (mm, (z, y, x))."""
        lo, hi = np.asarray(lo, float), np.asarray(hi, float)
        middle = self.centre + self.turn @ ((lo + hi) / 2)
        half = np.abs(self.turn) @ ((hi - lo) / 2)
        out = []
        for k in range(3):
            mid = (self.shape[k] - 1) / 2
            first = min(
                max(int(np.floor((middle[k] - half[k]) / self.spacing[k] + mid)), 0), self.shape[k]
            )
            last = min(
                max(int(np.ceil((middle[k] + half[k]) / self.spacing[k] + mid)) + 1, first),
                self.shape[k],
            )
            out.append(slice(first, last))
        return tuple(out)

    def around(self, point, reach) -> tuple[slice, ...]:
        """Voxel slices covering the cube of half-side ``reach`` around a frame point."""
        point = np.asarray(point, float)
        return self.box(point - reach, point + reach)

    def crop(self, box) -> list[np.ndarray]:
        return [p[box] for p in self.o]

    def voxel_to_frame(self, voxel) -> np.ndarray:
        world = (np.asarray(voxel, float) - (np.array(self.shape) - 1) / 2) * self.spacing
        return self.turn.T @ (world - self.centre)


def _smooth_noise(rng, shape, step: float, width: float) -> np.ndarray:
    """Smooth random field with unit standard deviation: white noise on a grid of
    ``step`` voxels convolved with a Gaussian of ``width`` voxels, separably (a few
    matrix products: ten times cheaper than filtering a full-size volume)."""
    kernels = []
    for n in shape:
        m = int(np.ceil((n - 1) / step)) + 1 + 2 * int(np.ceil(2 * width / step))
        centres = (np.arange(m) - (m - 1) / 2) * step + (n - 1) / 2
        offsets = (np.arange(n)[:, None] - centres[None]) / width
        kernels.append(np.exp(-0.5 * offsets**2).astype(np.float32))
    field = rng.standard_normal([k.shape[1] for k in kernels], dtype=np.float32)
    for axis, kernel in enumerate(kernels):
        field = np.moveaxis(np.tensordot(kernel, field, axes=([1], [axis])), 0, axis)
    return np.ascontiguousarray(field / field.std())


def _rotation(rng: np.random.Generator, degrees: tuple[float, float, float]) -> np.ndarray:
    """Rotation by small random angles about the three axes."""
    turn = np.eye(3)
    for axis, limit in enumerate(degrees):
        angle = np.deg2rad(rng.uniform(-limit, limit))
        c, s = np.cos(angle), np.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        step = np.eye(3)
        step[i, i], step[i, j], step[j, i], step[j, j] = c, -s, s, c
        turn = turn @ step
    return turn


def _depth(o, centre, axes) -> np.ndarray:
    """Approximate signed distance (mm) to an axis-aligned ellipsoid, positive inside:
    (1 - rho) / |grad rho|, exact on the surface."""
    scaled = [(p - np.float32(c)) / a for p, c, a in zip(o, centre, axes, strict=True)]
    rho2 = sum(s * s for s in scaled)
    slope2 = sum((s / a) ** 2 for s, a in zip(scaled, axes, strict=True))
    rho = np.sqrt(rho2)
    return (1.0 - rho) * rho / np.sqrt(np.maximum(slope2, 1e-12))


def _slab(dist, half_width, outside) -> np.ndarray:
    """Signed distance (mm) to {dist < half_width and outside < 0}: a sheet of CSF cut
    off where ``outside`` (a signed distance) is positive."""
    a = dist - half_width
    return np.hypot(np.maximum(a, 0.0), np.maximum(outside, 0.0)) + np.minimum(
        np.maximum(a, outside), 0.0
    )


def _sulci(rng, space, cerebrum, shell, n_gyri) -> np.ndarray:
    """Distance (mm) to the sulcal sheets over the voxels ``shell`` (FAR elsewhere).

    The sheets are the zero set of smooth periodic noise sampled at the voxel's
    direction from the brain centre (``n_gyri`` wavelengths around a great circle),
    shifted with depth so that sulci lean and bend instead of being exact spokes."""
    size = 56
    noise = rng.standard_normal((size,) * 3, dtype=np.float32)
    cube = ndimage.gaussian_filter(noise, 1.1, mode="wrap", truncate=3.0)
    cube = np.pad(cube, (0, 1), mode="wrap")  # periodic: points are taken modulo size
    reach = n_gyri * 4.9 / (2 * np.pi)  # the filtered noise crosses zero every 4.9 cells
    u = np.stack([p[shell] for p in space.o])
    u /= np.maximum(np.linalg.norm(u, axis=0), 1e-6)
    lean = rng.standard_normal((3, 1)).astype(np.float32) * 0.2
    points = np.mod(u * reach + lean * cerebrum[shell], size)
    value = np.full(space.shape, 10.0, dtype=np.float32)
    value[shell] = ndimage.map_coordinates(cube, points, order=1, mode="nearest")
    slope = np.sqrt(sum(g * g for g in np.gradient(value, *space.spacing)))
    dist = np.full(space.shape, FAR, dtype=np.float32)
    dist[shell] = np.abs(value[shell]) / np.maximum(slope[shell], 1e-3)
    return dist


def _ventricles(rng, atrophy) -> list[tuple]:
    """Blobs of the lateral and third ventricles: (z, y, x, az, ay, ax, cap) in the
    brain frame (mm), dense enough that their union is a smooth curved tube; ``cap``
    weights the periventricular hyperintensity next to the blob (caps at horn tips)."""
    f = atrophy
    sep = rng.uniform(0.8, 1.4)  # half-thickness of the septum pellucidum
    jitter = rng.uniform(0.85, 1.15, 4).tolist()
    # control points: (y, z, x of the centre (None: next to the septum), ax, az, cap)
    main = [
        (-40 * jitter[0], 2, None, 3.0 * f, 4.5, 1.0),
        (-30, 6, None, 4.2 * f, 6.0, 0.5),
        (-14, 9, None, 4.8 * f, 5.0 + 0.8 * f, 0.15),
        (6, 9, None, 5.2 * f, 5.0 + 0.8 * f, 0.15),
        (22, 3, 13 + 2 * f, 5.5 * f, 6.5 * jitter[1], 0.4),
        (34, 0, 15 + 2 * f, 3.5 * f, 4.0, 0.8),
        (34 + 10 * jitter[2], 0, 16 + 2 * f, 2.0 * f, 2.5, 1.0),
    ]
    temporal = [
        (22, 3, 13 + 2 * f, 5.5 * f, 6.5 * jitter[1], 0.4),
        (18, -12, 22 + f, 3.0 * f, 3.5, 0.2),
        (6, -24, 27 + f, 2.4 * f, 2.6, 0.2),
        (-6 * jitter[3], -30, 29 + f, 1.6 * f, 2.0, 0.4),
    ]
    blobs = []
    for side in (-1.0, 1.0):
        for points in (main, temporal):
            for i in range(len(points) - 1):
                (y0, z0, x0, ax0, az0, c0), (y1, z1, x1, ax1, az1, c1) = points[i : i + 2]
                steps = max(int(np.hypot(y1 - y0, z1 - z0) / 2.5), 1)
                for t in np.arange(steps + (i == len(points) - 2)) / steps:  # ends included
                    ax, az = ax0 + t * (ax1 - ax0), az0 + t * (az1 - az0)
                    x0c = sep + ax0 if x0 is None else x0
                    x1c = sep + ax1 if x1 is None else x1
                    blobs.append(
                        (
                            z0 + t * (z1 - z0),
                            y0 + t * (y1 - y0),
                            side * (x0c + t * (x1c - x0c)),
                            az,
                            max(ax, az, 3.0),
                            ax,
                            c0 + t * (c1 - c0),
                        )
                    )
    width = 1.0 + 0.6 * (f - 1.0)
    for y in np.arange(-8.0, 14.0, 2.0):  # third ventricle: a thin midline slit
        blobs.append((-14.0, y, 0.0, 8.0 - 0.01 * y * y, 4.0, width, 0.0))
    return blobs


def _blob_field(space, blobs, margin) -> tuple[np.ndarray, np.ndarray]:
    """Distance (mm, negative inside) to the union of ellipsoid ``blobs``, FAR beyond
    ``margin`` mm of them, and the index of the nearest blob (-1 there)."""
    best = np.full(space.shape, np.inf, dtype=np.float32)
    wall = np.full(space.shape, FAR, dtype=np.float32)
    near = np.full(space.shape, -1, dtype=np.int32)
    for index, (z, y, x, az, ay, ax, _) in enumerate(blobs):
        box = space.around((z, y, x), max(az, ay, ax) + margin)
        oz, oy, ox = space.crop(box)
        rho = np.sqrt(((oz - z) / az) ** 2 + ((oy - y) / ay) ** 2 + ((ox - x) / ax) ** 2)
        closer = rho < best[box]
        best[box] = np.where(closer, rho, best[box])
        wall[box] = np.where(closer, (rho - 1.0) * min(az, ax), wall[box])
        near[box] = np.where(closer, index, near[box])
    return np.minimum(wall, FAR), near


def _capsule(o, a, b, radius, edge) -> np.ndarray:
    """Soft capsule of ``radius`` (mm) around the segment a-b (same frame as ``o``)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ab = b - a
    t = sum((o[k] - np.float32(a[k])) * np.float32(ab[k]) for k in range(3)) / float(ab @ ab)
    t = np.clip(t, 0.0, 1.0)
    dist = np.sqrt(sum((o[k] - np.float32(a[k]) - t * np.float32(ab[k])) ** 2 for k in range(3)))
    return sigmoid((radius - dist) / edge)


def make_brain(
    rng: np.random.Generator,
    shape: tuple[int, int, int] = SHAPE,
    positive: bool = True,
    lesion_contrast: float = 1.0,
    lesion_size: float = 1.0,
) -> Phantom:
    """One subject (see the module docstring): image, lesion mask and boxes, tissue map."""
    level = {k: rng.uniform(*v) for k, v in LEVELS.items()}
    atrophy = float(np.exp(rng.uniform(np.log(0.8), np.log(1.9))))
    size = rng.uniform(0.92, 1.04)
    axes = (np.array([56.0, 76.0, 62.0]) * size * rng.uniform(0.96, 1.04, 3)).tolist()
    centre = (rng.uniform(4, 10), rng.uniform(-4, 4), rng.uniform(-3, 3))
    space = _Space(shape, centre, _rotation(rng, (6.0, 3.0, 5.0)))
    oz, oy, ox = space.o
    edge = 0.3 * min(space.spacing)  # sigmoid width of tissue borders, mm
    low = _smooth_noise(rng, shape, step=4.0, width=5.0)  # lumps, bias-free texture
    fine = _smooth_noise(rng, shape, step=1.5, width=1.0)  # tissue texture

    # -- cerebrum: a lumpy ellipsoid, wider behind, flatter below, cut by the tentorium
    az = np.float32(axes[0]) * (0.9 + 0.1 * np.tanh(oz / 15.0))
    ax = np.float32(axes[2]) * (1.0 + 0.08 * oy / axes[1])
    envelope = _depth((oz, oy, ox), (0, 0, 0), (az, axes[1], ax))
    cerebrum = envelope - 2.0 * low
    # the tentorium rises towards the incisura (front) and the midline
    tent_z = -26.0 * size - 0.3 * (oy - 15.0) - 0.005 * ox * ox
    tentorium = oz - tent_z + 40.0 * sigmoid(-(oy - 4.0) / 4.0)  # > 0 above it
    cerebrum = np.minimum(cerebrum, tentorium)

    # cortex: the distance to CSF through the sulci and the interhemispheric fissure
    sulcal_depth = rng.uniform(9.0, 15.0)
    reach = sulcal_depth * np.clip(1.0 + 0.6 * low, 0.2, 1.9)  # per-sulcus depth
    shell = (cerebrum > -6.0) & (cerebrum < 1.9 * sulcal_depth + 4.0)
    dist = _sulci(rng, space, cerebrum, shell, n_gyri=rng.uniform(20, 28))
    gap = rng.uniform(0.35, 0.6) * atrophy * (1.0 + 1.5 * np.exp(-np.maximum(cerebrum, 0) / 3.0))
    sulcus = _slab(dist, gap, cerebrum - reach)
    core = np.sqrt((oy / 42.0) ** 2 + ((oz + 10.0) / 30.0) ** 2)
    fissure = _slab(np.abs(ox), 0.8 * atrophy, (1.0 - core) * 25.0)
    pial = np.minimum(np.minimum(cerebrum, sulcus), fissure)
    thickness = rng.uniform(2.6, 3.4)

    # hindbrain: cerebellar hemispheres under the tentorium, brainstem down the middle
    lower = space.box((-90.0, -30.0, -70.0), (-10.0, 80.0, 70.0))
    lz, ly, lx = space.crop(lower)
    cb = np.full(shape, -FAR, dtype=np.float32)
    cb_y, cb_z = 36.0 * size, -30.0 * size - 20.0
    hemispheres = np.maximum(
        *(
            _depth((lz, ly, lx), (cb_z, cb_y, side * 19.0 * size), (24.0 * size, 28.0, 27.0))
            for side in (-1.0, 1.0)
        )
    )
    vermis = _depth((lz, ly, lx), (cb_z + 1.0, cb_y - 2.0, 0.0), (23.0 * size, 26.0, 15.0))
    cb[lower] = np.minimum(np.maximum(hemispheres, vermis), -tentorium[lower] - 2.5)
    fossa = np.full(shape, -FAR, dtype=np.float32)
    fossa[lower] = _depth((lz, ly, lx), (cb_z - 3.0, cb_y, 0.0), (31.0 * size, 33.0, 52.0 * size))
    stem = np.full(shape, -FAR, dtype=np.float32)
    stem_y = 10.0 + 0.25 * (lz + 30.0)
    stem[lower] = np.minimum(_depth((ly, lx), (stem_y, 0.0), (11.0, 13.0)), -(lz + 12.0))
    fossa[lower] = np.maximum(fossa[lower], stem[lower] + 6.0)
    hind = np.maximum(cb, stem)
    brain = np.maximum(cerebrum, hind)

    # -- head: CSF space, skull, scalp; soft tissue below the skull base --------------
    csf_gap = rng.uniform(1.5, 3.0) * atrophy
    skull_width, scalp_width = rng.uniform(4.0, 7.0), rng.uniform(3.5, 7.0)
    inner = np.maximum(brain, np.maximum(envelope, fossa) - 1.0) + csf_gap  # no notches
    outer = inner + skull_width
    skin = outer + scalp_width
    neck = 1.0 - np.sqrt((ox / (axes[2] + 8)) ** 2 + ((oy - 6.0) / (axes[1] + 4)) ** 2)
    neck = np.minimum(neck * 50.0, -(oz + 25.0))

    image = np.zeros(shape, dtype=np.float32)
    tissue = np.zeros(shape, dtype=np.uint8)

    def paint(fraction, value, label, where=...):
        image[where] += fraction * (value - image[where])
        tissue[where][fraction > 0.5] = label

    paint(sigmoid(neck / edge), level["soft"] * (1.0 + 0.15 * low), SCALP)
    paint(sigmoid(skin / edge), level["scalp"] * (1.0 + 0.08 * low + 0.05 * fine), SCALP)
    paint(sigmoid(outer / edge), level["skull"], SKULL)
    diploe = np.exp(-(((outer - 0.5 * skull_width) / (0.2 * skull_width)) ** 2))
    image += diploe * level["diploe"] * sigmoid((0.3 + low) / 0.3)
    paint(sigmoid(inner / edge), level["csf"], CSF)
    brain_tex = 1.0 + 0.02 * fine + 0.03 * low
    paint(sigmoid(pial / edge), level["grey"] * brain_tex, GREY)
    white = sigmoid((pial - thickness) / edge)
    paint(white, level["white"] * brain_tex, WHITE)
    hind_fraction = sigmoid(hind[lower] / edge)
    folia = np.abs(np.sin(np.pi * cb[lower] / 5.5 + 1.5 * low[lower] + 0.6 * fine[lower]))
    folia = sigmoid((0.3 - folia) / 0.12) * sigmoid((cb[lower] - 1.5) / edge)
    cerebellar = level["cerebellum"] + 0.6 * folia * (level["csf"] - level["cerebellum"])
    hind_value = np.where(cb[lower] > stem[lower], cerebellar, level["brainstem"])
    paint(hind_fraction, hind_value * brain_tex[lower], HINDBRAIN, lower)

    # deep grey nuclei, left-right symmetric: thalamus, lentiform, caudate head
    centre_box = space.box((-35.0, -45.0, -45.0), (25.0, 35.0, 45.0))
    cz, cy, cx = space.crop(centre_box)
    deep = np.full(shape, -FAR, dtype=np.float32)
    nuclei = [
        ((-8.0, 8.0, 9.5), (9.0, 14.0, 7.5)),
        ((-5.0, -6.0, 22.0 + 0.5 * atrophy), (10.0, 15.0, 5.5)),
        ((7.0, -24.0, 5.0 + 8.0 * atrophy), (7.0, 9.0, 4.0)),
    ]
    for (nz, ny, nx), semi in nuclei:
        semi = (np.array(semi) * rng.uniform(0.9, 1.1, 3)).tolist()
        for side in (-1.0, 1.0):
            deep[centre_box] = np.maximum(
                deep[centre_box], _depth((cz, cy, cx), (nz, ny, side * nx), semi)
            )
    deep_fraction = sigmoid(deep / edge)
    deep_fraction[lower] *= 1.0 - hind_fraction
    paint(
        deep_fraction[centre_box], level["deep_grey"] * brain_tex[centre_box], DEEP_GREY, centre_box
    )

    # ventricles
    blobs = _ventricles(rng, atrophy)
    wall, near = _blob_field(space, blobs, margin=8.0)
    vent = sigmoid(-wall / edge)
    paint(vent, level["csf"], VENTRICLE)
    white_fraction = white * (1.0 - deep_fraction) * (1.0 - vent)
    white_fraction[lower] *= 1.0 - hind_fraction

    # -- distractors, in both classes ---------------------------------------------------
    before = image.copy()
    # periventricular caps at the horn tips, thin rims along the bodies
    weight = np.array([b[6] for b in blobs] + [0.0], dtype=np.float32)[near]
    cap = weight * np.exp(-np.maximum(wall, 0.0) / (1.2 + 3.8 * weight)) * sigmoid(wall / edge)
    image += rng.uniform(0.35, 0.9) * cap * (1.0 + 0.25 * low) * (1.0 - vent)
    # choroid plexus in the atria
    for side in (-1.0, 1.0):
        at = (1.0, 24.0, side * (13 + 2 * atrophy))
        box = space.around(at, 10.0)
        semi = (rng.uniform(2.0, 3.5, 3) * np.sqrt(atrophy)).tolist()
        rho = ellipsoid_radius(space.crop(box), at, semi, np.eye(3))
        paint(sigmoid((1.0 - rho) * 2.5 / edge) * vent[box], rng.uniform(0.8, 1.5), VENTRICLE, box)
    # CSF flow spots in the third ventricle and basal cisterns
    for _ in range(rng.integers(0, 3)):
        at = (rng.uniform(-20, -12), rng.uniform(-6, 14), rng.uniform(-1, 1))
        box = space.around(at, 8.0)
        rho = ellipsoid_radius(space.crop(box), at, rng.uniform(1.5, 3.0, 3).tolist(), np.eye(3))
        spot = sigmoid((1.0 - rho) * 2.0 / edge) * (1.0 - white_fraction[box])
        image[box] += rng.uniform(0.8, 1.6) * spot
    # superior sagittal sinus, of random brightness
    a, b = (axes[0] * 0.8, -axes[1] * 0.9, 0.0), (axes[0] * 0.85, axes[1] * 0.5, 0.0)
    box = space.box((axes[0] * 0.5, -axes[1] - 10, -8.0), (axes[0] + 15, axes[1] * 0.5 + 6, 8.0))
    sinus = _capsule(space.crop(box), a, b, rng.uniform(2.0, 3.0), edge)
    sinus *= sigmoid(-cerebrum[box] / edge) * sigmoid(inner[box] / edge)
    image[box] += rng.uniform(0.3, 1.6) * sinus
    # bright cortical veins / slow flow at the surface
    surface = np.argwhere(shell & (np.abs(cerebrum) < 1.5) & (oz > -20.0))
    for _ in range(rng.integers(3, 8) if len(surface) else 0):
        a = space.voxel_to_frame(surface[rng.integers(len(surface))])
        direction = rng.standard_normal(3)
        b = a + direction / np.linalg.norm(direction) * rng.uniform(8.0, 22.0)
        box = space.box(np.minimum(a, b) - 4.0, np.maximum(a, b) + 4.0)
        vessel = _capsule(space.crop(box), a, b, rng.uniform(0.9, 1.6), edge)
        image[box] += rng.uniform(0.8, 1.3) * vessel * (1.0 - white_fraction[box])

    distractor = image - before > 0.15
    # -- lesions (positives) ------------------------------------------------------------
    mask = np.zeros(shape, dtype=bool)
    boxes: list[Box] = []
    lesions: list[dict] = []
    if positive:
        inside = np.minimum(np.minimum(pial - thickness, -deep), np.minimum(wall, -hind))
        lesion_image, lesions = _lesions(
            rng, space, tissue, inside, wall, near, blobs, edge, lesion_contrast, lesion_size
        )
        for lesion in lesions:
            support = lesion.pop("support")
            mask |= support
            where = np.argwhere(support)
            lo, hi = where.min(0), where.max(0) + 1
            boxes.append((int(lo[0]), int(hi[0]), int(lo[1]), int(hi[1]), int(lo[2]), int(hi[2])))
        image += level["white"] * lesion_image * white_fraction

    # -- acquisition: bias field, gain, blur, Rician noise ------------------------------
    coefficients = rng.normal(0.0, 0.07, 9).tolist()
    gz, gy, gx = grid(shape)
    terms = (gz, gy, gx, gz * gz - 0.33, gy * gy - 0.33, gx * gx - 0.33, gz * gy, gz * gx, gy * gx)
    bias = np.exp(sum(c * t for c, t in zip(coefficients, terms, strict=True)))
    image *= bias * rng.uniform(0.85, 1.15)
    image = ndimage.gaussian_filter(image, 0.45, truncate=2.5)  # 3 taps: the rest < 1e-4
    sigma = rng.uniform(0.025, 0.05)
    real = image + sigma * rng.standard_normal(shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(shape, dtype=np.float32)
    image = np.sqrt(real * real + imag * imag)
    return Phantom(
        image[None].astype(np.float32, copy=False), mask, boxes, tissue, distractor, lesions
    )


def _lesions(rng, space, tissue, inside, wall, near, blobs, edge, scale, size):
    """1-4 lesions in the cerebral white matter, kept apart: (contrast image [D,H,W],
    lesion dicts with voxel, diameter, contrast, kind and support)."""
    shape, spacing = space.shape, np.array(space.spacing)
    cerebral = (tissue == WHITE) & (space.o[0] > -25.0)
    image = np.zeros(shape, dtype=np.float32)
    lesions: list[dict] = []
    kinds, odds = list(LESION_KINDS), list(LESION_KINDS.values())

    def apart(candidates, long):  # a clear gap from the other lesions: one component each
        for other in lesions:
            gap = (candidates - other["voxel"]) / ((other["long"] + long + 6.0) / spacing)
            candidates = candidates[(gap * gap).sum(1) > 1.0]
        return candidates

    for _ in range(rng.integers(1, 5)):
        lo, hi = (size * d for d in LESION_DIAMETER)
        diameter = lo * (hi / lo) ** rng.uniform()
        kind = kinds[rng.choice(len(kinds), p=odds)]
        elongation = rng.uniform(1.4, 2.2) if kind == "periventricular" else rng.uniform(1.0, 1.5)
        long, short = diameter / 2 * elongation ** (2 / 3), diameter / 2 * elongation ** (-1 / 3)
        if kind == "periventricular":  # touching the ventricle or its rim
            ok = cerebral & (wall > 0.7 * long) & (wall < long + 2.5)
        elif kind == "deep":
            ok = cerebral & (inside >= 0.7 * long + 1.0) & (wall > long + 4.0)
        else:  # next to the cortex
            ok = cerebral & (inside <= 0.7 * long + 1.0) & (wall > 15.0)
        candidates = apart(np.argwhere(ok), long)
        if len(candidates) == 0:  # no room of that kind (small shapes): anywhere
            candidates = apart(np.argwhere(cerebral), long)
        if len(candidates) == 0:
            continue
        voxel = candidates[rng.integers(len(candidates))]
        at = space.voxel_to_frame(voxel + rng.uniform(-0.2, 0.2, 3))
        if kind == "periventricular":  # the long axis across the ventricle wall
            direction = at - np.array(blobs[near[tuple(voxel)]][:3])
        else:
            direction = rng.standard_normal(3)
        direction /= max(np.linalg.norm(direction), 1e-6)
        frame, _ = np.linalg.qr(np.column_stack([direction, rng.standard_normal((3, 2))]))
        box = space.around(at, long + 3.0 * spacing.max())  # the profile's tail < 2 %
        rho = ellipsoid_radius(space.crop(box), at, (long, short, short), frame)
        contrast = scale * rng.uniform(*LESION_CONTRAST)
        image[box] = np.maximum(image[box], contrast * sigmoid((1.0 - rho) * short / edge))
        support = np.zeros(shape, dtype=bool)
        support[box] = (rho < 1.0) & (tissue[box] == WHITE)
        support[tuple(voxel)] = True
        lesions.append(
            {
                "voxel": voxel,
                "diameter": float(diameter),
                "long": float(long),
                "contrast": float(contrast),
                "kind": kind,
                "support": support,
            }
        )
    return image, lesions


@register_dataset("brain", annotation="mask", files=False)
class Brain(GeneratedDataset):
    """FLAIR-like brain MRI phantoms with small MS-like lesions (no files; see the module
    docstring).

    Options: ``shape`` (D, H, W) sampling the fixed 145 x 180 x 155 mm field of view,
    ``n_train``/``n_val`` volumes, ``lesion_contrast`` (a scale on every lesion's
    contrast above white matter: below 1 harder, above 1 easier), ``lesion_size`` (a scale
    on every lesion's diameter: 2.5 gives 7.5-22.5 mm lesions), ``seed``,
    ``max_abs`` (the value check of ``datasets.checks``).
    """

    version = "1"
    min_size = 16

    def __init__(
        self,
        root: None = None,
        *,
        shape: tuple[int, int, int] = SHAPE,
        n_train: int = 48,
        n_val: int = 32,
        lesion_contrast: float = 1.0,
        lesion_size: float = 1.0,
        seed: int = 0,
        cache_dir: str | None = None,
        max_abs: float = 1e6,
    ):
        if not 0.0 < lesion_contrast <= 10.0:
            raise DatasetError(f"brain: lesion_contrast must be in (0, 10], got {lesion_contrast}")
        if not 0.0 < lesion_size <= 5.0:
            raise DatasetError(f"brain: lesion_size must be in (0, 5], got {lesion_size}")
        self.lesion_contrast = float(lesion_contrast)
        self.lesion_size = float(lesion_size)
        super().__init__(
            root, shape, n_train, n_val, cache_dir=cache_dir, seed=seed, max_abs=max_abs
        )

    def own_options(self) -> dict:
        return {"lesion_contrast": self.lesion_contrast, "lesion_size": self.lesion_size}

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (mm): the field of view over ``shape`` (2.5 mm at the default)."""
        return tuple(f / n for f, n in zip(FOV, self.shape, strict=True))

    def phantom(self, record: Record, lesion_contrast: float | None = None) -> Phantom:
        """The generated subject of ``record``, tissue map and lesion list included;
        ``lesion_contrast`` replaces the data set's (0: the same subject, lesions unseen)."""
        rng = np.random.default_rng([self.seed, record.source])
        contrast = self.lesion_contrast if lesion_contrast is None else lesion_contrast
        return make_brain(rng, self.shape, bool(record.label), contrast, self.lesion_size)

    def lesion_signal(self, sample_id: str) -> tuple[list[float], float]:
        """How far the lesions of ``sample_id`` stand out, in standard deviations of the
        white matter's own fluctuation at lesion scale: (each lesion's peak above the same
        subject generated without lesion contrast, the highest point of that lesion-free
        white matter). The lesion-free twin shares the anatomy, bias field and noise draws;
        its fluctuation is the image minus its Gaussian blur of 3 voxels, over the white
        matter 2 voxels inside its border and clear of every distractor. A lesion below the
        second number is no brighter than the subject's own background; a negative has no
        lesion and its own image is the background."""
        record = self.record(sample_id)
        subject, twin = self.phantom(record), self.phantom(record, lesion_contrast=0.0)
        fluctuation = twin.image[0] - ndimage.gaussian_filter(twin.image[0], 3.0)
        white = ndimage.binary_erosion(twin.tissue == WHITE, iterations=2)
        white &= ~ndimage.binary_dilation(twin.distractor)
        sigma = fluctuation[white].std()
        lift = subject.image[0] - twin.image[0]
        labels, n = ndimage.label(subject.mask, np.ones((3, 3, 3)))
        peaks = ndimage.maximum(lift, labels, np.arange(1, n + 1)) / sigma
        return [float(p) for p in np.atleast_1d(peaks)], float(fluctuation[white].max() / sigma)

    def _load(self, record: Record) -> Volume:
        p = self.phantom(record)
        return Volume(record.id, p.image, record.label, p.mask, p.boxes, self.affine, self.spacing)

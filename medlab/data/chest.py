"""A chest CT phantom in Hounsfield units: lungs, airways, vessels, bones and nodules."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from ..errors import ParameterError
from ._fields import axes_mm, centred_origin, check_size, check_spacing, smooth_field, tube_mask
from .brain import _check_seed
from .phantoms import Phantom, make_image, make_labels

AIR, SOFT, FAT, LUNG, AIRWAY, VESSEL, HEART, RIBS, SPINE, SOLID, GGO = range(11)

CHEST_LABELS: dict[int, tuple[str, tuple[int, int, int]]] = {
    SOFT: ("soft tissue", (204, 121, 167)),
    FAT: ("fat", (240, 228, 66)),
    LUNG: ("lung", (86, 180, 233)),
    AIRWAY: ("airway", (0, 158, 115)),
    VESSEL: ("vessel", (213, 40, 40)),
    HEART: ("heart", (170, 0, 60)),
    RIBS: ("ribs and sternum", (245, 245, 220)),
    SPINE: ("spine", (230, 159, 0)),
    SOLID: ("solid nodule", (255, 0, 255)),
    GGO: ("ground-glass nodule", (0, 255, 255)),
}
"""Label value -> (name, RGB colour) of the chest CT phantom."""


class _Scene:
    """The HU volume, the label volume and the geometry while painting."""

    def __init__(self, size, spacing, rng):
        self.size, self.spacing, self.rng = size, spacing, rng
        self.shape = (size[2], size[1], size[0])
        self.axes = axes_mm(size, spacing)
        x, y, z = self.axes
        self.x, self.y, self.z = x[None, None, :], y[None, :, None], z[:, None, None]
        self.fov = np.array(size, float) * np.array(spacing)
        self.hu = np.full(self.shape, -1000.0, np.float32)
        self.labels = np.zeros(self.shape, np.uint8)

    def paint(self, mask, hu, label):
        mask = np.broadcast_to(mask, self.shape)
        self.hu[mask] = hu if np.isscalar(hu) else hu[mask]
        self.labels[mask] = label

    def tube(self, a, b, r0, r1, hu, label, where=None):
        found = tube_mask(a, b, r0, r1, self.axes)
        if found is None:
            return
        box, inside = found
        if where is not None:
            inside &= where[box]
        self.hu[box][inside] = hu
        self.labels[box][inside] = label


def _body(s: _Scene) -> tuple[float, float]:
    a, b = 0.44 * s.fov[0], 0.36 * s.fov[1]
    rho = np.sqrt((s.x / a) ** 2 + (s.y / b) ** 2) * (1 + np.float32(0.02) * smooth_field(s.rng, s.shape, 3))
    s.paint(rho < 1.0, -100.0, FAT)
    s.paint(rho < 0.88, 40.0, SOFT)
    return a, b


def _lungs(s: _Scene, a: float, b: float) -> np.ndarray:
    zc, rz = 0.03 * s.fov[2], 0.47 * s.fov[2]
    lungs = np.zeros(s.shape, bool)
    depth = np.full(s.shape, 9.0, np.float32)      # normalised radius: < 1 inside a lung
    bend = np.float32(0.04) * smooth_field(s.rng, s.shape, 4)
    for side in (-1, 1):
        xc = side * 0.42 * a
        zz = (s.z - zc) / rz
        taper = 1 - 0.35 * np.clip(zz, 0, None) ** 2     # narrower towards the apex
        r = np.sqrt(((s.x - xc) / (0.36 * a * taper)) ** 2 + ((s.y + 0.04 * b) / (0.74 * b * taper)) ** 2 + zz**2)
        r = r + bend
        depth = np.minimum(depth, r)
    lungs = depth < 1.0
    texture = np.float32(25.0) * smooth_field(s.rng, s.shape, (8, 20, 20), width=0.5)
    gradient = np.float32(50.0) * (s.y / np.float32(b))          # dependent lung is denser (posterior = +y)
    s.paint(lungs, -850.0 + texture + gradient, LUNG)
    return depth


def _heart(s: _Scene, a: float, b: float) -> tuple[np.ndarray, float]:
    c = np.array([0.12 * a, -0.30 * b, -0.22 * s.fov[2]])
    r = np.array([0.30 * a, 0.42 * b, 0.20 * s.fov[2]])
    d = np.sqrt(((s.x - c[0]) / r[0]) ** 2 + ((s.y - c[1]) / r[1]) ** 2 + ((s.z - c[2]) / r[2]) ** 2)
    s.paint(d < 1.0, 45.0, HEART)
    s.paint(d < 0.72, 180.0, HEART)              # contrast-filled chambers
    return c, r


def _tree(s: _Scene, start, direction, length, radius, depth, where, hu):
    """Recursive branching vessels: each branch splits in two, thinner and shorter."""
    direction = direction / np.linalg.norm(direction)
    end = start + direction * length
    s.tube(start, end, radius, radius * 0.85, hu(radius), VESSEL, where=where)
    if depth == 0:
        return
    normal = np.cross(direction, s.rng.standard_normal(3))
    normal /= np.linalg.norm(normal) + 1e-9
    for sign in (-1, 1):
        angle = np.deg2rad(s.rng.uniform(20, 40))
        child = np.cos(angle) * direction + sign * np.sin(angle) * normal
        _tree(s, end, child, length * s.rng.uniform(0.65, 0.85), radius * 0.72, depth - 1, where, hu)


def _vessels_and_airways(s: _Scene, a: float, b: float, heart_c, lung_mask) -> None:
    fz = s.fov[2]
    spine_y = 0.40 * b
    # aorta: ascending from the heart, arch, descending left of the spine
    path = [(0.02 * a, -0.20 * b, heart_c[2] + 0.12 * fz), (0.0, -0.18 * b, 0.28 * fz),
            (0.10 * a, 0.05 * b, 0.36 * fz), (0.18 * a, spine_y - 0.05 * b, 0.28 * fz),
            (0.18 * a, spine_y - 0.05 * b, -0.52 * fz)]
    for p, q in itertools.pairwise(path):
        s.tube(p, q, 0.075 * a, 0.075 * a, 200.0, VESSEL)
    # pulmonary trunk to both hila, then branching trees inside the lungs
    bifurcation = np.array([0.0, -0.05 * b, 0.10 * fz])
    s.tube(heart_c + [0, 0.1 * b, 0.12 * fz], bifurcation, 0.06 * a, 0.055 * a, 160.0, VESSEL)
    hu = lambda r: float(np.clip(40.0 + 160.0 * r / (0.04 * a), 40.0, 170.0))   # thin vessels: partial volume
    for side in (-1, 1):
        hilum = np.array([side * 0.28 * a, 0.0, 0.06 * fz])
        s.tube(bifurcation, hilum, 0.05 * a, 0.045 * a, 160.0, VESSEL)
        for direction in ([side * 0.5, -0.3, 0.8], [side * 0.4, 0.5, 0.5], [side * 0.6, 0.4, -0.7],
                          [side * 0.8, -0.5, -0.4]):
            _tree(s, hilum, np.array(direction, float), 0.20 * a, 0.05 * a, 5, lung_mask, hu)
    # airways: trachea, carina, main and lobar bronchi (lumen air, wall soft tissue)
    top, carina = np.array([0.0, 0.12 * b, 0.55 * fz]), np.array([0.0, 0.12 * b, 0.14 * fz])
    segments = [(top, carina, 0.09 * a, 0.085 * a)]
    for side in (-1, 1):
        main = carina + [side * 0.26 * a, 0.02 * b, -0.08 * fz]
        segments.append((carina, main, 0.07 * a, 0.06 * a))
        for direction in ([side * 0.4, -0.2, 0.6], [side * 0.5, 0.3, -0.6]):
            d = np.array(direction) / np.linalg.norm(direction)
            segments.append((main, main + d * 0.22 * a, 0.045 * a, 0.03 * a))
    for p, q, r0, r1 in segments:
        s.tube(p, q, r0 + 1.5, r1 + 1.5, 40.0, SOFT)
    for p, q, r0, r1 in segments:
        s.tube(p, q, r0, r1, -1000.0, AIRWAY)


def _bones(s: _Scene, a: float, b: float) -> None:
    fz = s.fov[2]
    yv, rv = 0.40 * b, 0.13 * a
    height, disc = 0.14 * fz, 0.03 * fz
    level = np.mod(s.z + 0.5 * fz, height + disc)
    in_body = level < height
    r = np.sqrt(s.x**2 + (s.y - yv) ** 2)
    s.paint((r < rv) & ~in_body, 80.0, SOFT)                                # discs
    s.paint((r < rv) & in_body, 900.0, SPINE)                               # cortical shell
    s.paint((r < rv - 1.5) & in_body, 250.0, SPINE)                         # cancellous bone
    yc, rc = yv + rv + 0.45 * rv, 0.45 * rv
    rcanal = np.sqrt(s.x**2 + (s.y - yc) ** 2)
    s.paint((rcanal < rc + 2.5) & in_body, 700.0, SPINE)                    # neural arch
    s.paint(rcanal < rc, 10.0, SOFT)                                        # spinal canal
    for zi in np.arange(-0.5 * fz + height / 2, 0.5 * fz + height, height + disc):
        s.tube((0, yc + rc, zi), (0, yc + rc + 0.9 * rv, zi - 0.2 * height), 2.5, 2.0, 700.0, SPINE)
        for side in (-1, 1):                                                 # ribs sweep forwards and down
            angles = np.linspace(0.12 * np.pi, 0.78 * np.pi, 9)
            drop = 0.8 * height * (angles - angles[0]) / (angles[-1] - angles[0])
            pts = [(side * 0.83 * a * np.sin(t), 0.83 * b * np.cos(t), zi - d) for t, d in zip(angles, drop)]
            pts.insert(0, (side * (rv + 2.0), yv, zi))
            for p, q in itertools.pairwise(pts):
                s.tube(p, q, 3.2, 3.2, 850.0, RIBS)
                s.tube(p, q, 1.6, 1.6, 350.0, RIBS)
    sternum = (np.abs(s.x) < 0.09 * a) & (np.abs(s.y + 0.83 * b) < 3.5) & (s.z > -0.3 * fz)
    s.paint(sternum, 600.0, RIBS)


def _nodules(s: _Scene, depth: np.ndarray, n_solid: int, n_ggo: int) -> list[dict]:
    candidates = np.flatnonzero((depth < 0.7) & (s.labels == LUNG))
    found: list[dict] = []
    if candidates.size == 0:
        return found
    kinds = ["solid"] * n_solid + ["ground-glass"] * n_ggo
    for kind in kinds:
        radius = s.rng.uniform(2.5, 6.0) if kind == "solid" else s.rng.uniform(5.0, 9.0)
        for _ in range(50):
            k, j, i = np.unravel_index(s.rng.choice(candidates), s.shape)
            centre = np.array([s.axes[0][i], s.axes[1][j], s.axes[2][k]])
            if all(np.linalg.norm(centre - f["centre_mm"]) > radius + f["radius_mm"] + 5 for f in found):
                break
        found.append({"kind": kind, "centre_mm": centre, "radius_mm": float(radius)})
        box = tuple(slice(max(0, int(c - (radius + 3) / sp)), int(c + (radius + 3) / sp) + 2)
                    for c, sp in zip((k, j, i), s.spacing[::-1]))
        zz, yy, xx = s.z[box[0]], s.y[:, box[1]], s.x[:, :, box[2]]
        d = np.sqrt((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (zz - centre[2]) ** 2) / radius
        d = d * (1 + np.float32(0.12) * smooth_field(s.rng, d.shape, 3))
        hu, lab = s.hu[box], s.labels[box]
        if kind == "solid":
            inside = d < 1.0
            hu[inside], lab[inside] = 30.0, SOLID
        else:
            weight = np.clip(1.6 - d, 0.0, 1.0)                  # hazy edge
            soft = (weight > 0) & (lab == LUNG)
            hu[soft] = hu[soft] * (1 - weight[soft]) + (-600.0) * weight[soft]
            lab[(d < 1.0) & ((lab == LUNG) | (lab == VESSEL))] = GGO
    for f in found:
        f["centre_mm"] = [float(c) for c in f["centre_mm"]]
    return found


def chest_ct(*, size: Sequence[int] = (192, 192, 64), spacing: Sequence[float] = (1.0, 1.0, 2.5),
             noise: float = 20.0, seed: int = 0, n_solid: int = 3, n_ground_glass: int = 2) -> Phantom:
    """A contrast-enhanced chest CT phantom in Hounsfield units.

    Body (muscle ~40 HU, subcutaneous fat ~-100 HU), lungs (~-850 HU, denser posteriorly),
    trachea and bronchi (air, -1000 HU), aorta, pulmonary arteries branching into both
    lungs (+40 to +200 HU), heart with contrast-filled chambers, spine (vertebral bodies,
    discs, canal, arches), ribs and sternum (+250 to +900 HU), solid nodules (~+30 HU) and
    ground-glass nodules (~-600 HU, hazy edges).

    Parameters
    ----------
    size : 3 ints
        Voxels along x, y, z.
    spacing : 3 floats
        Voxel size in mm (x, y, z). The anatomy scales with the field of view.
    noise : float
        Standard deviation of the noise in HU (slightly correlated in-plane, like
        filtered back-projection noise); 0 for none.
    seed : int
        Fixes everything: the same seed gives identical arrays.
    n_solid, n_ground_glass : int
        Number of nodules of each kind.

    Returns
    -------
    Phantom
        ``images["ct"]`` and ``clean["ct"]`` (int16 HU, metadata ``units="HU"``),
        ``labels`` (:data:`CHEST_LABELS`), ``info["nodules"]`` with each nodule's kind,
        centre and radius in mm.

    Examples
    --------
    >>> from medlab.data import chest_ct
    >>> p = chest_ct(size=(96, 96, 32), spacing=(2, 2, 5), seed=0)
    >>> p.ct.dtype, p.ct.metadata["units"]
    (dtype('int16'), 'HU')
    """
    size = check_size(size, 3)
    spacing = check_spacing(spacing, 3)
    seed = _check_seed(seed)
    if not (isinstance(noise, (int, float, np.number)) and 0 <= noise <= 500):
        raise ParameterError(f"noise must be a standard deviation in HU in [0, 500]; got {noise!r}")
    for name, n in (("n_solid", n_solid), ("n_ground_glass", n_ground_glass)):
        if not isinstance(n, (int, np.integer)) or not 0 <= n <= 20:
            raise ParameterError(f"{name} must be an integer in [0, 20]; got {n!r}")

    s = _Scene(size, spacing, np.random.default_rng([seed, 0]))
    a, b = _body(s)
    depth = _lungs(s, a, b)
    heart_c, _ = _heart(s, a, b)
    _vessels_and_airways(s, a, b, heart_c, s.labels == LUNG)
    _bones(s, a, b)
    nodules = _nodules(s, depth, int(n_solid), int(n_ground_glass))

    clean = _partial_volume(s.hu, spacing)
    noisy = clean + np.float32(noise) * _ct_noise(np.random.default_rng([seed, 1]), s.shape, spacing)
    origin = centred_origin(size, spacing)
    meta = {"modality": "CT", "units": "HU", "phantom": "chest_ct", "seed": seed}
    to_hu = lambda v: np.clip(np.rint(v), -1024, 3071).astype(np.int16)
    return Phantom(
        images={"ct": make_image(to_hu(noisy), spacing, origin, {**meta, "noise_sigma": float(noise)})},
        clean={"ct": make_image(to_hu(clean), spacing, origin, {**meta, "noise_sigma": 0.0,
                                                                "description": "noise-free"})},
        labels=make_labels(s.labels, spacing, origin, CHEST_LABELS, {**meta, "description": "tissue labels"}),
        bias_field=None,
        info={"phantom": "chest_ct", "seed": seed, "noise": float(noise), "nodules": nodules},
    )


def _partial_volume(hu: np.ndarray, spacing) -> np.ndarray:
    from scipy import ndimage

    sigma = [0.0 if i == 0 else 0.45 for i in range(3)]     # in-plane only; slices are thick already
    return ndimage.gaussian_filter(hu, sigma, truncate=3.0)


def _ct_noise(rng: np.random.Generator, shape, spacing) -> np.ndarray:
    """Unit-variance noise with a short in-plane correlation."""
    from scipy import ndimage

    n = rng.standard_normal(shape, dtype=np.float32)
    n = ndimage.gaussian_filter(n, (0.0, 0.6, 0.6), truncate=2.5)
    n *= np.float32(1.0 / max(float(n[::2, ::4, ::4].std()), 1e-6))
    return n

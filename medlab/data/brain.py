"""A brain MRI phantom: T1 (post-contrast), T2 and FLAIR of one head with a tumour."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ParameterError
from ._fields import (
    axes_mm,
    centred_origin,
    check_fraction,
    check_size,
    check_spacing,
    rician,
    smooth_field,
)
from .phantoms import Phantom, make_image, make_labels

BACKGROUND, SCALP, SKULL, CSF, GREY, WHITE, VENTRICLES, OEDEMA, ENHANCING, NECROSIS = range(10)

BRAIN_LABELS: dict[int, tuple[str, tuple[int, int, int]]] = {
    SCALP: ("scalp", (233, 189, 150)),
    SKULL: ("skull", (245, 245, 220)),
    CSF: ("csf", (86, 180, 233)),
    GREY: ("grey matter", (150, 150, 150)),
    WHITE: ("white matter", (240, 240, 240)),
    VENTRICLES: ("ventricles", (0, 114, 178)),
    OEDEMA: ("oedema", (240, 228, 66)),
    ENHANCING: ("enhancing tumour", (213, 94, 0)),
    NECROSIS: ("necrotic core", (204, 121, 167)),
}
"""Label value -> (name, RGB colour) of the brain phantom."""

# Relative signal of each label (index = label value). T1 is post-contrast (gadolinium):
# the enhancing rim is the brightest tissue; CSF is dark on T1 and FLAIR, bright on T2;
# oedema is bright on T2 and FLAIR; fat in the scalp is bright on T1.
CONTRASTS: dict[str, np.ndarray] = {
    "t1": np.array([0.0, 0.80, 0.10, 0.12, 0.45, 0.65, 0.12, 0.36, 0.95, 0.18], np.float32),
    "t2": np.array([0.0, 0.55, 0.06, 1.00, 0.55, 0.40, 1.00, 0.80, 0.60, 0.90], np.float32),
    "flair": np.array([0.0, 0.50, 0.05, 0.08, 0.55, 0.42, 0.08, 0.95, 0.70, 0.35], np.float32),
}
_DIPLOE = {"t1": 0.55, "t2": 0.35, "flair": 0.30}  # fatty marrow between the skull's tables
_SEQUENCE = {"t1": "T1-weighted, post-contrast", "t2": "T2-weighted", "flair": "FLAIR"}


def brain_anatomy(size: Sequence[int], spacing: Sequence[float], *, tumour: bool,
                  rng: np.random.Generator, tumour_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, dict]:
    """Label map [z, y, x] (uint8, values of :data:`BRAIN_LABELS`), diploë mask and facts.

    Shapes are ellipsoids in coordinates bent by smooth random displacements, with a
    cortical ribbon folded by a finer random field; the tumour is a lobulated sphere
    (necrotic core, enhancing rim) inside a larger, irregular oedema.
    """
    nx, ny, nz = size
    shape = (nz, ny, nx)
    x, y, z = axes_mm(size, spacing)
    fov = np.array(size) * np.array(spacing)
    radii = np.array([0.40 * fov[0], 0.46 * fov[1], 0.55 * fov[2]], np.float32)
    zc = np.float32(-0.12 * fov[2])

    # normalised coordinates: the head is the unit ball, before deformation
    u0 = (x / radii[0])[None, None, :]
    v0 = (y / radii[1])[None, :, None]
    w0 = ((z - zc) / radii[2])[:, None, None]
    amp = np.float32(0.025)
    u = u0 + amp * smooth_field(rng, shape, 4)
    v = v0 + amp * smooth_field(rng, shape, 4)
    w = w0 + amp * smooth_field(rng, shape, 4)
    r_head = np.sqrt(u * u + v * v + w * w) * (1 + np.float32(0.02) * smooth_field(rng, shape, 3))
    r_brain = r_head * (1 + np.float32(0.02) * smooth_field(rng, shape, 3))
    folds = [max(4, round(f / 10.0)) for f in fov[::-1]]      # a gyrus every ~10 mm
    gyri = np.clip(smooth_field(rng, shape, folds, width=0.5), -2, 2)

    labels = np.zeros(shape, np.uint8)
    labels[r_head < 1.0] = SCALP
    labels[r_head < 0.94] = SKULL
    diploe = (r_head < 0.915) & (r_head > 0.885)
    labels[r_head < 0.865] = CSF
    brain = r_brain < 0.83 - 0.08 * np.maximum(-gyri - 0.3, 0)      # sulci cut into the surface
    labels[brain] = GREY
    labels[brain & (r_brain < np.minimum(0.76 + 0.045 * gyri, 0.80))] = WHITE      # ~5 mm cortex
    fissure = (np.abs(u) < 0.6 * spacing[0] / radii[0]) & (r_brain > 0.45) & (r_brain < 0.83)
    labels[fissure] = CSF

    # deep grey matter (thalamus, basal ganglia) beside the third ventricle
    for side in (-1, 1):
        labels[((u - side * 0.13) / 0.09) ** 2 + ((v - 0.04) / 0.14) ** 2 + ((w - 0.02) / 0.10) ** 2 < 1] = GREY
    # lateral ventricles: two curved ellipsoids (frontal and occipital horns bend down), a slit third
    lateral = np.zeros(shape, bool)
    for side in (-1, 1):
        wc = 0.16 - 0.5 * v * v
        lateral |= ((u - side * 0.12) / 0.09) ** 2 + (v / 0.36) ** 2 + ((w - wc) / 0.12) ** 2 < 1
    third = (u / 0.025) ** 2 + ((v - 0.02) / 0.14) ** 2 + ((w + 0.02) / 0.10) ** 2 < 1
    labels[lateral | third] = VENTRICLES

    info: dict = {"head_radii_mm": radii.tolist(), "head_centre_mm": [0.0, 0.0, float(zc)]}
    if tumour:
        info.update(_paint_tumour(labels, rng, shape, u0, v0, w0, radii, zc, tumour_scale))
    return labels, diploe, info


def _paint_tumour(labels, rng, shape, u0, v0, w0, radii, zc, scale) -> dict:
    side = rng.choice([-1.0, 1.0])
    centre = np.array([side * rng.uniform(0.30, 0.42), rng.uniform(-0.35, 0.30), rng.uniform(0.05, 0.30)],
                      np.float32)
    rt = np.float32(rng.uniform(0.12, 0.16) * scale)
    d = np.sqrt((u0 - centre[0]) ** 2 + (v0 - centre[1]) ** 2 + (w0 - centre[2]) ** 2)
    core = d / rt * (1 + np.float32(0.12) * smooth_field(rng, shape, 8))
    spread = d / rt * (1 + np.float32(0.25) * smooth_field(rng, shape, 5))
    tissue = (labels == WHITE) | ((labels == GREY) & (spread < 1.3))
    labels[tissue & (spread < 1.75)] = OEDEMA
    labels[core < 1.0] = ENHANCING
    labels[core < 0.55] = NECROSIS
    centre_mm = centre * radii + np.array([0, 0, zc], np.float32)
    return {"tumour_centre_mm": [float(c) for c in centre_mm], "tumour_radius_mm": float(rt * radii[0]),
            "tumour_side": "left" if side > 0 else "right"}


def render_contrast(labels: np.ndarray, diploe: np.ndarray, contrast: str, texture: np.ndarray,
                    spacing: Sequence[float]) -> np.ndarray:
    """Noise-free signal of one contrast: tissue values, mild texture, partial-volume blur."""
    from scipy import ndimage

    signal = CONTRASTS[contrast][labels]
    signal[diploe & (labels == SKULL)] = _DIPLOE[contrast]
    signal *= texture
    sigma = [0.5 * min(spacing) / s for s in spacing[::-1]]   # ~0.5 voxel in-plane, less through-plane
    return np.clip(ndimage.gaussian_filter(signal, sigma, truncate=3.0), 0, None).astype(np.float32)


def brain_mri(*, size: Sequence[int] = (128, 128, 64), spacing: Sequence[float] = (1.5, 1.5, 2.0),
              noise: float = 0.03, bias: float = 0.0, tumour: bool = True, seed: int = 0,
              contrasts: Sequence[str] = ("t1", "t2", "flair"), anatomy_seed: int | None = None) -> Phantom:
    """A head MRI phantom with T1 (post-contrast), T2 and FLAIR images of the same anatomy.

    Tissues: scalp, skull (with fatty diploë), CSF, folded grey matter, white matter,
    lateral and third ventricles and, if ``tumour``, a glioma-like lesion (necrotic core,
    enhancing rim, oedema). Relative intensities follow clinical contrast: CSF dark on T1
    and FLAIR and bright on T2; oedema bright on T2 and FLAIR; the enhancing rim brightest
    on post-contrast T1.

    Parameters
    ----------
    size : 3 ints
        Voxels along x, y, z.
    spacing : 3 floats
        Voxel size in mm (x, y, z). The head scales with the field of view.
    noise : float
        Rician noise: standard deviation of each complex channel, as a fraction of the
        image's largest clean intensity (0 for none).
    bias : float
        Strength of the smooth multiplicative bias field: the field spans about
        ``1 - bias`` to ``1 + bias`` (0 for none).
    tumour : bool
        Whether to add the tumour and oedema.
    seed : int
        Fixes everything: the same seed gives identical arrays.
    contrasts : sequence of str
        Which of ``"t1"``, ``"t2"``, ``"flair"`` to make.
    anatomy_seed : int, optional
        Seed of the anatomy alone (default ``seed``): keep it fixed and vary ``seed`` to
        get new noise on the same head.

    Returns
    -------
    Phantom
        ``images`` and ``clean`` keyed by contrast (float32, about [0, 1]), ``labels`` of
        every tissue (:data:`BRAIN_LABELS`), ``bias_field`` (all ones when ``bias=0``),
        ``info`` with the tumour centre and radius in mm.

    Examples
    --------
    >>> from medlab.data import brain_mri
    >>> p = brain_mri(size=(64, 64, 32), spacing=(3, 3, 4), noise=0.05, bias=0.2, seed=3)
    >>> p.t2.modality, p.t2.spacing
    ('MR', (3.0, 3.0, 4.0))
    >>> p.labels.labels[p.label_value("oedema")].name
    'oedema'
    """
    size = check_size(size, 3)
    spacing = check_spacing(spacing, 3)
    noise = check_fraction(noise, "noise")
    bias = check_fraction(bias, "bias", high=0.9)
    seed = _check_seed(seed)
    anatomy_seed = seed if anatomy_seed is None else _check_seed(anatomy_seed, "anatomy_seed")
    contrasts = _check_contrasts(contrasts)

    anat_rng = np.random.default_rng([anatomy_seed, 0])
    noise_rng = np.random.default_rng([seed, 1])
    labels, diploe, facts = brain_anatomy(size, spacing, tumour=bool(tumour), rng=anat_rng)
    texture = 1 + np.float32(0.03) * smooth_field(anat_rng, labels.shape, (8, 12, 12))
    field = 1 + np.float32(bias) * _unit_field(noise_rng, labels.shape)

    origin = centred_origin(size, spacing)
    meta = {"modality": "MR", "units": "a.u.", "phantom": "brain_mri", "seed": seed}
    clean, noisy = {}, {}
    for name in contrasts:
        signal = render_contrast(labels, diploe, name, texture, spacing)
        sigma = noise * float(signal.max())
        m = {**meta, "sequence": _SEQUENCE[name], "noise_sigma": sigma}
        clean[name] = make_image(signal, spacing, origin, {**m, "noise_sigma": 0.0, "description": "noise-free"})
        noisy[name] = make_image(rician(noise_rng, signal * field, sigma), spacing, origin, m)
    info = {"phantom": "brain_mri", "seed": seed, "anatomy_seed": anatomy_seed, "noise": noise, "bias": bias,
            "tumour": bool(tumour), **facts}
    return Phantom(
        images=noisy, clean=clean,
        labels=make_labels(labels, spacing, origin, BRAIN_LABELS, {**meta, "description": "tissue labels"}),
        bias_field=make_image(field, spacing, origin, {**meta, "description": "bias field"}),
        info=info,
    )


def _unit_field(rng: np.random.Generator, shape) -> np.ndarray:
    """A very smooth field scaled to [-1, 1]."""
    f = smooth_field(rng, shape, 2, width=0.8)
    return f / max(float(np.abs(f).max()), 1e-6)


def _check_seed(seed, name: str = "seed") -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ParameterError(f"{name} must be a non-negative integer; got {seed!r}")
    return int(seed)


def _check_contrasts(contrasts) -> tuple[str, ...]:
    names = (contrasts,) if isinstance(contrasts, str) else tuple(contrasts)
    bad = [c for c in names if c not in CONTRASTS]
    if not names or bad:
        raise ParameterError(f"contrasts must be a non-empty subset of {list(CONTRASTS)}; got {contrasts!r}")
    return names

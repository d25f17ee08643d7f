"""A 2D mammogram phantom: breast outline, fibroglandular texture, micro-calcification clusters."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ParameterError
from ._fields import centred_origin, check_fraction, check_size, check_spacing, smooth_field
from .brain import _check_seed
from .phantoms import Phantom, make_image, make_labels

BREAST, DENSE, CALCIFICATION = 1, 2, 3

MAMMO_LABELS: dict[int, tuple[str, tuple[int, int, int]]] = {
    BREAST: ("breast", (240, 228, 66)),
    DENSE: ("dense tissue", (86, 180, 233)),
    CALCIFICATION: ("calcification", (213, 40, 40)),
}
"""Label value -> (name, RGB colour) of the mammogram phantom."""


def _power_law_texture(rng: np.random.Generator, shape, spacing: float, beta: float = 3.0) -> np.ndarray:
    """Zero-mean, unit-variance noise with a 1/f**beta power spectrum (mammographic texture)."""
    fy = np.fft.fftfreq(shape[0], d=spacing)[:, None]
    fx = np.fft.rfftfreq(shape[1], d=spacing)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f[0, 0] = np.inf
    amplitude = np.maximum(f, 0.05) ** (-beta / 2)         # no power below 0.05 cycles/mm
    amplitude[0, 0] = 0
    spectrum = rng.standard_normal(amplitude.shape) + 1j * rng.standard_normal(amplitude.shape)
    field = np.fft.irfft2(spectrum * amplitude, s=shape)
    return ((field - field.mean()) / field.std()).astype(np.float32)


def mammogram(*, size: Sequence[int] = (512, 512), spacing: float = 0.1, noise: float = 0.02,
              n_clusters: int = 3, density: float = 0.35, seed: int = 0) -> Phantom:
    """A 2D cranio-caudal mammogram phantom (``modality="MG"``), for presentation.

    The breast is a half-ellipse against the chest wall (image left edge) with a wavy
    skin line, thinning towards the edge like a compressed breast; fibroglandular tissue
    is power-law (1/f³) texture concentrated behind the nipple; micro-calcifications are
    tiny bright specks 0.1-0.5 mm across, grouped in clusters of 5-15 within a few mm.
    Dense tissue and calcifications are bright, as on a displayed mammogram.

    Parameters
    ----------
    size : 2 ints
        Pixels along x, y.
    spacing : float
        Pixel size in mm (both axes). Calcification sizes are physical, so at coarse
        spacing they blur to faint dots.
    noise : float
        Standard deviation of the (quantum-like) noise, as a fraction of the range.
    n_clusters : int
        Number of micro-calcification clusters.
    density : float
        Fraction of the breast occupied by dense (fibroglandular) tissue, 0-1.
    seed : int
        Fixes everything.

    Returns
    -------
    Phantom
        ``images["mammo"]`` and ``clean["mammo"]`` (2D float32 in [0, 1]), ``labels``
        (:data:`MAMMO_LABELS`), ``info["calcifications"]`` with each speck's centre (mm)
        and diameter, and ``info["clusters"]`` with cluster centres.

    Examples
    --------
    >>> from medlab.data import mammogram
    >>> p = mammogram(size=(256, 256), spacing=0.2, seed=0)
    >>> p.mammo.modality, p.mammo.ndim
    ('MG', 2)
    """
    size = check_size(size, 2, minimum=32)
    spacing = check_spacing(spacing, 2)
    if spacing[0] != spacing[1]:
        raise ParameterError(f"mammogram spacing must be square pixels (one number); got {spacing}")
    noise = check_fraction(noise, "noise")
    density = check_fraction(density, "density")
    seed = _check_seed(seed)
    if not isinstance(n_clusters, (int, np.integer)) or not 0 <= n_clusters <= 20:
        raise ParameterError(f"n_clusters must be an integer in [0, 20]; got {n_clusters!r}")
    rng = np.random.default_rng([seed, 0])
    nx, ny = size
    shape = (ny, nx)
    h = spacing[0]
    x = (np.arange(nx, dtype=np.float32) * h)[None, :]                  # mm from the chest wall
    y = ((np.arange(ny, dtype=np.float32) - (ny - 1) / 2) * h)[:, None]
    depth, half_height = 0.85 * nx * h, 0.45 * ny * h

    rho = np.sqrt((x / depth) ** 2 + (y / half_height) ** 2) * (1 + np.float32(0.03) * smooth_field(rng, shape, 5))
    breast = rho < 1.0
    thickness = np.sqrt(np.clip(1 - rho**2, 0, 1)) ** 0.5                # thinner towards the skin line
    # glandular tissue: texture thresholded within a central cone, most behind the nipple
    texture = _power_law_texture(rng, shape, h)
    envelope = np.exp(-((y / (0.55 * half_height)) ** 2)) * np.clip(1.15 - rho, 0, 1)
    gland = texture + np.float32(2.0) * envelope
    inside = gland[breast]
    threshold = np.quantile(inside, 1 - density) if density > 0 else np.inf
    dense = breast & (gland > threshold)

    fibro = 1 / (1 + np.exp(-3.0 * (gland - threshold)))                  # soft glandular boundaries
    tissue = (0.22 + 0.12 * thickness + 0.28 * fibro + 0.02 * texture) * thickness ** 0.3
    signal = np.where(breast, tissue, 0.02).astype(np.float32)
    labels = np.where(breast, BREAST, 0).astype(np.uint8)
    labels[dense] = DENSE
    calcs, clusters = _calcifications(rng, signal, labels, breast & (rho < 0.8), h, int(n_clusters))
    from scipy import ndimage

    clean = np.clip(ndimage.gaussian_filter(signal, 0.6), 0, 1).astype(np.float32)
    noisy = np.clip(clean + np.float32(noise) * rng.standard_normal(shape, dtype=np.float32), 0, 1)

    origin = centred_origin(size, spacing)
    for item in calcs + clusters:
        item["centre_mm"] = [float(o + i * h) for o, i in zip(origin, item.pop("index"))]
    meta = {"modality": "MG", "units": "a.u.", "phantom": "mammogram", "seed": seed, "view": "CC"}
    return Phantom(
        images={"mammo": make_image(noisy, spacing, origin, {**meta, "noise_sigma": noise})},
        clean={"mammo": make_image(clean, spacing, origin, {**meta, "noise_sigma": 0.0,
                                                            "description": "noise-free"})},
        labels=make_labels(labels, spacing, origin, MAMMO_LABELS, {**meta, "description": "tissue labels"}),
        bias_field=None,
        info={"phantom": "mammogram", "seed": seed, "noise": noise, "density": density,
              "clusters": clusters, "calcifications": calcs},
    )


def _calcifications(rng, signal, labels, allowed, h, n_clusters) -> tuple[list[dict], list[dict]]:
    """Paint clusters of specks (Gaussian blobs 0.1-0.5 mm across) into signal/labels, in place.

    Positions are returned as continuous (x, y) pixel indices.
    """
    ny, nx = signal.shape
    candidates = np.flatnonzero(allowed)
    calcs: list[dict] = []
    clusters: list[dict] = []
    for _ in range(n_clusters if candidates.size else 0):
        cy, cx = np.unravel_index(rng.choice(candidates), signal.shape)
        spread = rng.uniform(1.5, 4.0) / h                         # cluster radius, pixels
        n = int(rng.integers(5, 16))
        clusters.append({"index": [float(cx), float(cy)], "radius_mm": float(spread * h), "count": n})
        for _ in range(n):
            px, py = np.array([cx, cy]) + np.clip(rng.normal(0, spread / 2, 2), -spread, spread)
            diameter = rng.uniform(0.1, 0.5)
            r = max(diameter / 2 / h, 0.5)
            x0, x1 = max(0, int(px - r - 3)), min(nx, int(px + r + 4))
            y0, y1 = max(0, int(py - r - 3)), min(ny, int(py + r + 4))
            if x0 >= x1 or y0 >= y1:
                continue
            yy, xx = np.mgrid[y0:y1, x0:x1]
            d2 = (xx - px) ** 2 + (yy - py) ** 2
            amplitude = 0.5 * min(1.0, (diameter / h) ** 2)          # sub-pixel specks are fainter
            signal[y0:y1, x0:x1] += (amplitude * np.exp(-d2 / (2 * (0.8 * r) ** 2))).astype(np.float32)
            labels[y0:y1, x0:x1][d2 <= r * r] = CALCIFICATION
            calcs.append({"index": [float(px), float(py)], "diameter_mm": float(diameter)})
    return calcs, clusters

"""Building blocks of the phantoms: smooth random fields, centred grids, tubes, noise.

Everything takes a ``numpy.random.Generator`` so a seed fixes the result.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ParameterError


def check_size(size, ndim: int, name: str = "size", minimum: int = 8) -> tuple[int, ...]:
    """``size`` as ``ndim`` ints >= ``minimum`` in (x, y, z) order, or a ParameterError."""
    try:
        values = tuple(int(s) for s in np.atleast_1d(size))
    except (TypeError, ValueError):
        values = ()
    if len(values) != ndim or any(v < minimum for v in values) or np.any(np.asarray(size) != values):
        raise ParameterError(
            f"{name} must be {ndim} integers >= {minimum} in (x, y{', z' if ndim == 3 else ''}) order; got {size!r}"
        )
    return values


def check_spacing(spacing, ndim: int) -> tuple[float, ...]:
    """``spacing`` as ``ndim`` positive floats (mm), or a ParameterError."""
    arr = np.atleast_1d(np.asarray(spacing, dtype=float)) if np.ndim(spacing) <= 1 else np.zeros(0)
    if arr.shape == (1,):
        arr = np.repeat(arr, ndim)
    if arr.shape != (ndim,) or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ParameterError(f"spacing must be {ndim} positive numbers (mm); got {spacing!r}")
    return tuple(float(s) for s in arr)


def check_fraction(value, name: str, high: float = 1.0) -> float:
    """A float in ``[0, high]``, or a ParameterError naming ``name``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not (0.0 <= v <= high):
        raise ParameterError(f"{name} must be a number in [0, {high}]; got {value!r}")
    return v


def centred_origin(size: Sequence[int], spacing: Sequence[float]) -> tuple[float, ...]:
    """Origin that puts the centre of the voxel grid at the physical point 0."""
    return tuple(-(n - 1) / 2.0 * s for n, s in zip(size, spacing))


def axes_mm(size: Sequence[int], spacing: Sequence[float]) -> list[np.ndarray]:
    """Physical coordinate (mm, centred on 0) of each index along x, y (, z), as 1D float32."""
    return [((np.arange(n) - (n - 1) / 2.0) * s).astype(np.float32) for n, s in zip(size, spacing)]


def _bump_weights(n: int, cells: int, width: float) -> np.ndarray:
    """(n, cells + 2) Gaussian weights of lattice bumps evaluated on n positions in [0, 1]."""
    pos = np.linspace(0.0, 1.0, n, dtype=np.float32)
    centres = np.linspace(-1.0 / cells, 1.0 + 1.0 / cells, cells + 2, dtype=np.float32)
    sigma = width / cells
    return np.exp(-0.5 * ((pos[:, None] - centres[None, :]) / sigma) ** 2).astype(np.float32)


def smooth_field(rng: np.random.Generator, shape: Sequence[int], cells: int | Sequence[int] = 4,
                 width: float = 0.6) -> np.ndarray:
    """A smooth random field of the given array ``shape``, zero mean and unit standard deviation.

    It is a sum of Gaussian bumps with random weights on a lattice of ``cells`` per axis
    (larger ``cells`` = finer detail), evaluated separably, so it costs a few
    matrix products rather than a filter over the whole array.
    """
    cells = [cells] * len(shape) if np.isscalar(cells) else list(cells)
    weights = [_bump_weights(n, max(1, int(c)), width) for n, c in zip(shape, cells)]
    coeffs = rng.standard_normal([w.shape[1] for w in weights]).astype(np.float32)
    # Small contractions with einsum, the large last one as one vector-matrix product per
    # output row: large multi-threaded BLAS calls stall badly on a busy 2-core machine.
    if len(shape) == 2:
        inner = np.einsum("ij,xj->ix", coeffs, weights[1])                 # (i, x)
    else:
        inner = np.einsum("ijk,xk->ijx", coeffs, weights[2])               # (i, j, x)
        inner = np.einsum("ijx,yj->iyx", inner, weights[1])                # (i, y, x)
    flat = np.ascontiguousarray(inner.reshape(inner.shape[0], -1))
    field = np.empty((shape[0], flat.shape[1]), np.float32)
    for row in range(shape[0]):
        np.matmul(weights[0][row], flat, out=field[row])
    field = field.reshape(shape)
    sample = field[tuple(slice(None, None, 2) for _ in shape)]   # statistics on every other voxel
    mean, std = float(sample.mean()), float(sample.std())
    field -= np.float32(mean)
    if std > 0:
        field *= np.float32(1.0 / std)
    return field.astype(np.float32, copy=False)


def rician(rng: np.random.Generator, clean: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude of ``clean`` plus complex Gaussian noise of standard deviation ``sigma``."""
    if sigma <= 0:
        return clean.astype(np.float32, copy=True)
    real = clean + np.float32(sigma) * rng.standard_normal(clean.shape, dtype=np.float32)
    imag = np.float32(sigma) * rng.standard_normal(clean.shape, dtype=np.float32)
    real *= real
    imag *= imag
    real += imag
    return np.sqrt(real, out=real)


def tube_mask(a, b, r0: float, r1: float, axes: Sequence[np.ndarray]):
    """Voxels of a tube (a segment with linearly varying radius), all in mm.

    ``a`` and ``b`` are the end points (x, y, z), ``r0``/``r1`` their radii and ``axes`` the
    physical coordinates of the x, y, z indices. Only the tube's bounding box is visited,
    so many small tubes are cheap. Returns ``(box, inside)``: a [z, y, x] tuple of slices
    and a boolean mask over that box, or None when the tube misses the grid.
    """
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    rmax = max(r0, r1)
    box = []
    for d, ax in enumerate(axes):
        lo, hi = min(a[d], b[d]) - rmax, max(a[d], b[d]) + rmax
        i0, i1 = np.searchsorted(ax, lo), np.searchsorted(ax, hi, side="right")
        if i0 >= i1:
            return None
        box.append(slice(i0, i1))
    x = axes[0][box[0]][None, None, :]
    y = axes[1][box[1]][None, :, None]
    z = axes[2][box[2]][:, None, None]
    ab = b - a
    length2 = float(ab @ ab) or 1e-6
    t = ((x - a[0]) * ab[0] + (y - a[1]) * ab[1] + (z - a[2]) * ab[2]) / length2
    t = np.clip(t, 0.0, 1.0)
    d2 = (x - a[0] - t * ab[0]) ** 2 + (y - a[1] - t * ab[1]) ** 2 + (z - a[2] - t * ab[2]) ** 2
    radius = r0 + (r1 - r0) * t
    return (box[2], box[1], box[0]), d2 <= radius * radius


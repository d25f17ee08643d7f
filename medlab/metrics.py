"""Quality numbers in physical units: image quality, segmentation overlap and surface
distances, and saliency localisation.

* Image quality: noise sigma, SNR, CNR, PSNR, SSIM, edge preservation.
* Segmentation, per label: Dice, IoU, sensitivity, specificity, precision, Hausdorff
  distance (maximum and 95th percentile), average symmetric surface distance and volumes,
  all distances in mm (:func:`segmentation_scores`).
* Saliency against a known mask: energy inside the mask, pointing game, IoU of the
  thresholded map.

Regions (``signal``, ``background``, masks) can be given as

* a label :class:`~medlab.Image` (or any Image) on the same grid: voxels ``!= 0``;
* a boolean (or 0/1) numpy array of the image's shape;
* a box of voxel indices ``((x0, y0[, z0]), (x1, y1[, z1]))`` in ``(x, y, z)`` order, the
  end excluded, as read off a viewer (whole numbers from 0; an end past the image is
  clipped to it, a negative index is refused: it is not a Python index from the end);
* a tuple of ``slice`` objects in array order (``np.s_[z0:z1, y0:y1, x0:x1]``).

Examples
--------
>>> import numpy as np
>>> from medlab import Image, metrics
>>> rng = np.random.default_rng(0)
>>> img = Image(np.r_[np.full(5000, 100.0), np.zeros(5000)].reshape(100, 100)
...             + rng.normal(0, 5, (100, 100)))
>>> round(metrics.snr(img, ((0, 0), (100, 50)), ((0, 50), (100, 100))))
20
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from .errors import GeometryError, ImageError, ParameterError
from .image import Image, as_image, check_finite

Region = Image | np.ndarray | tuple | None

__all__ = [
    "assd",
    "auto_regions",
    "cnr",
    "dice",
    "edge_preservation",
    "estimate_noise_sigma",
    "hausdorff95",
    "hausdorff_distance",
    "iou",
    "pointing_game",
    "psnr",
    "region_mask",
    "saliency_energy_in_mask",
    "saliency_iou",
    "segmentation_scores",
    "snr",
    "ssim",
    "surface_distances",
]


def region_mask(image: Image, region: Region, name: str = "region") -> np.ndarray:
    """A boolean array of ``image``'s shape from a mask, label Image, index box or slices.

    Examples
    --------
    >>> import numpy as np
    >>> from medlab import Image
    >>> region_mask(Image(np.zeros((4, 6))), ((1, 0), (3, 2))).sum()
    np.int64(4)
    """
    shape = image.shape[: image.ndim]
    if isinstance(region, Image):
        if not region.same_grid(image):
            raise GeometryError(f"{name} is not on the image's grid (size {region.size} vs {image.size}); "
                                "resample it first, e.g. medlab.preprocess.resample_to(mask, reference=image)")
        return np.asarray(region.array) != 0
    if isinstance(region, np.ndarray):
        if region.shape != shape:
            raise ParameterError(f"{name} mask has shape {region.shape}; the image's array shape is {shape}")
        return region.astype(bool)
    if isinstance(region, tuple) and region and all(isinstance(s, slice) for s in region):
        mask = np.zeros(shape, bool)
        mask[region] = True
        return _nonempty(mask, name)
    lo, hi = _box(region, image.ndim, name)
    mask = np.zeros(shape, bool)
    mask[tuple(slice(a, b) for a, b in zip(lo[::-1], hi[::-1]))] = True
    return _nonempty(mask, name)


def _box(region, ndim: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (x, y, z) of an index box, checked: whole numbers, none negative."""
    try:
        lo, hi = (np.asarray(v, dtype=float) for v in region)
        ok = lo.shape == hi.shape == (ndim,)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ParameterError(
            f"{name} must be a mask (Image or boolean array), a box ((x0, y0, z0), (x1, y1, z1)) or slices; "
            f"got {type(region).__name__}"
        )
    box = f"({lo.tolist()}, {hi.tolist()})"
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))) or np.any(lo % 1) or np.any(hi % 1):
        raise ParameterError(f"{name} box {box} must hold whole voxel indices")
    if np.any(lo < 0) or np.any(hi < 0):
        raise ParameterError(
            f"{name} box {box} has a negative index: box corners are voxel indices counted from 0 in "
            "(x, y, z) order, the end excluded (not Python indices from the end)"
        )
    return lo.astype(int), hi.astype(int)


def _nonempty(mask: np.ndarray, name: str) -> np.ndarray:
    if not mask.any():
        raise ParameterError(f"{name} is empty: it selects no voxel of the image")
    return mask


def _values(image: Image, region: Region, name: str) -> np.ndarray:
    vals = np.asarray(image.array, dtype=np.float64)[region_mask(image, region, name)]
    if vals.size < 2:
        raise ParameterError(f"{name} holds {vals.size} voxel(s); at least 2 are needed")
    return vals


def estimate_noise_sigma(image, mask: Region = None, *, rician: bool = False) -> float:
    """Standard deviation of the noise in ``image``.

    Without ``mask``: the wavelet estimate of Donoho and Johnstone (median absolute value of
    the finest diagonal Haar wavelet coefficients / 0.6745, as
    :func:`skimage.restoration.estimate_sigma` does with a Daubechies wavelet, 5x faster);
    for 3D volumes the median of the 2D estimates on up to 16 evenly spaced slices along the
    thickest axis (fast, and the same number a slice preview sees); a volume one voxel thick
    along an axis is a 2D image. An image with fewer than 2 voxels along two axes is an
    :class:`~medlab.errors.ImageError`. With ``rician=True``
    (magnitude MR) only the coefficients inside the Otsu foreground count, because the air
    background is Rayleigh distributed and would make the estimate too low. With ``mask``: the
    robust standard deviation (1.4826 x median absolute deviation) of the voxels of a region
    that should be uniform.

    Parameters
    ----------
    image : Image or array_like
    mask : region, optional
        A uniform region (see the module's help for the accepted forms).
    rician : bool
        Estimate from the foreground only (see above).

    Returns
    -------
    float
        Noise standard deviation in the image's intensity units.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> img = 50 + rng.normal(0, 2.0, (128, 128))
    >>> round(estimate_noise_sigma(img), 1)
    2.0
    """
    image = as_image(image)
    if mask is not None:
        v = _values(image, mask, "mask")
        return float(1.4826 * np.median(np.abs(v - np.median(v))))
    arr = np.asarray(image.array, dtype=np.float32)
    if image.rgb:
        raise ImageError("estimate_noise_sigma needs a grey-level image; convert colour to grey first")
    check_finite(image)
    flat = arr.squeeze()  # a single slice stored as 3D (or a 1-voxel-thick axis) is a 2D image
    if flat.ndim < 2 or min(flat.shape) < 2:
        raise ImageError(f"estimate_noise_sigma needs at least 2 voxels along two axes; got shape {arr.shape}")
    if flat.ndim == 2:
        return _wavelet_sigma(flat, rician)
    from .preprocess._common import slice_axis

    axis = slice_axis(image)
    n = arr.shape[axis]
    idx = np.unique(np.linspace(0, n - 1, min(n, 16)).round().astype(int))
    return float(np.median([_wavelet_sigma(np.take(arr, i, axis=axis), rician) for i in idx]))


def _wavelet_sigma(sl: np.ndarray, foreground: bool) -> float:
    """Donoho's MAD estimate on the finest diagonal Haar detail (orthonormal: noise keeps its sigma)."""
    h, w = (sl.shape[0] // 2) * 2, (sl.shape[1] // 2) * 2
    a = np.asarray(sl[:h, :w], dtype=np.float32)
    dd = (a[0::2, 0::2] - a[0::2, 1::2] - a[1::2, 0::2] + a[1::2, 1::2]) / 2
    if foreground:
        from .preprocess._common import foreground_mask

        m = foreground_mask(a)
        m = m[0::2, 0::2] & m[0::2, 1::2] & m[1::2, 0::2] & m[1::2, 1::2]
        if m.sum() >= 16:
            dd = dd[m]
    return float(np.median(np.abs(dd)) / 0.6745)


def snr(image, signal: Region, background: Region = None, *, rayleigh: bool = False) -> float:
    """Signal-to-noise ratio: mean of the signal region over the noise standard deviation.

    The noise is the standard deviation of ``background`` (the NEMA two-region method) or,
    without one, of the signal region itself. In a magnitude MR image the air background is
    Rayleigh distributed and its standard deviation is 0.655 times the noise sigma: pass
    ``rayleigh=True`` to correct for it.

    Parameters
    ----------
    image : Image or array_like
    signal, background : region
        See the module's help for the accepted forms.
    rayleigh : bool
        Divide the background standard deviation by 0.655.

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> a = np.zeros((100, 100)); a[:, :50] = 100
    >>> round(snr(a + rng.normal(0, 4, a.shape), ((0, 0), (50, 100)), ((50, 0), (100, 100))))
    25
    """
    image = as_image(image)
    s = _values(image, signal, "signal")
    noise = (_values(image, background, "background") if background is not None else s).std(ddof=1)
    if rayleigh:
        noise /= 0.655
    return _ratio(float(s.mean()), float(noise))


def cnr(image, region_a: Region, region_b: Region, background: Region = None) -> float:
    """Contrast-to-noise ratio: ``|mean(a) - mean(b)| / noise``.

    The noise is the standard deviation of ``background`` when given, otherwise the pooled
    standard deviation of the two regions, ``sqrt((var(a) + var(b)) / 2)``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> a = np.zeros((100, 100)); a[:, :50] = 30
    >>> round(cnr(a + rng.normal(0, 3, a.shape), ((0, 0), (50, 100)), ((50, 0), (100, 100))))
    10
    """
    image = as_image(image)
    a, b = _values(image, region_a, "region_a"), _values(image, region_b, "region_b")
    if background is not None:
        noise = _values(image, background, "background").std(ddof=1)
    else:
        noise = np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    return _ratio(abs(float(a.mean() - b.mean())), float(noise))


def _ratio(num: float, den: float) -> float:
    return float("inf") if den == 0 else num / den


def _pair(image, reference) -> tuple[np.ndarray, np.ndarray, Image]:
    image, reference = as_image(image, "image"), as_image(reference, "reference")
    if image.shape != reference.shape:
        raise GeometryError(f"image shape {image.shape} differs from the reference's {reference.shape}")
    return (np.asarray(image.array, dtype=np.float64), np.asarray(reference.array, dtype=np.float64), reference)


def _data_range(ref: np.ndarray, data_range: float | None) -> float:
    if data_range is None:
        data_range = float(ref.max() - ref.min())
    if not data_range > 0:
        raise ParameterError(f"data_range must be positive; got {data_range} (a constant reference needs it given)")
    return float(data_range)


def psnr(image, reference, *, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB against a reference (e.g. the noise-free phantom).

    ``10 log10(data_range^2 / MSE)``; ``data_range`` defaults to the reference's
    ``max - min`` and is always passed explicitly (never guessed from the dtype).

    Examples
    --------
    >>> import numpy as np
    >>> ref = np.zeros((10, 10)); ref[0, 0] = 1.0
    >>> round(psnr(ref + 0.1, ref), 6)
    20.0
    """
    img, ref, _ = _pair(image, reference)
    mse = float(np.mean((img - ref) ** 2))
    dr = _data_range(ref, data_range)
    return float("inf") if mse == 0 else float(10 * np.log10(dr**2 / mse))


def ssim(image, reference, *, data_range: float | None = None) -> float:
    """Mean structural similarity (Wang et al. 2004) against a reference.

    Uses :func:`skimage.metrics.structural_similarity` with a 7-voxel window (smaller when an
    axis is shorter) and ``data_range`` passed explicitly (default: the reference's
    ``max - min``).

    Examples
    --------
    >>> import numpy as np
    >>> ref = np.tile(np.linspace(0, 1, 32), (32, 1))
    >>> ssim(ref, ref)
    1.0
    """
    from skimage.metrics import structural_similarity

    img, ref, _ = _pair(image, reference)
    win = min(7, min(ref.shape) - (1 - min(ref.shape) % 2))
    if win < 3:
        raise ImageError(f"ssim needs at least 3 voxels along each axis; got shape {ref.shape}")
    return float(structural_similarity(img, ref, data_range=_data_range(ref, data_range), win_size=win))


def edge_preservation(image, reference, *, edge_fraction: float = 0.1) -> float:
    """Edge preservation index: how well the edges of ``reference`` survive in ``image``.

    The Pearson correlation of the Laplacians (high-pass images) of ``image`` and
    ``reference`` (Sattar et al., IEEE TIP 1997), taken over the reference's edges: the
    ``edge_fraction`` of voxels with the strongest reference gradient (spacing-aware). 1 means
    the edges are kept exactly; blurring moves and flattens them, residual noise adds
    uncorrelated high-pass energy: both lower the index.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy import ndimage
    >>> ref = np.zeros((64, 64)); ref[16:48, 16:48] = 1.0
    >>> edge_preservation(ref, ref)
    1.0
    >>> edge_preservation(ndimage.gaussian_filter(ref, 4), ref) < 0.8
    True
    """
    from scipy import ndimage

    if not 0 < edge_fraction <= 1:
        raise ParameterError(f"edge_fraction must be in (0, 1]; got {edge_fraction}")
    img, ref, refimg = _pair(image, reference)
    sp = np.asarray(refimg.spacing[::-1])
    grad = np.sqrt(sum((g / s) ** 2 for g, s in zip(np.gradient(ref), sp)))
    edges = grad >= np.quantile(grad, 1 - edge_fraction)
    edges &= grad > 0
    if edges.sum() < 2:
        raise ImageError("the reference has no edges (it is constant); edge preservation is undefined")
    a, b = ndimage.laplace(img)[edges], ndimage.laplace(ref)[edges]
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float(np.clip((a * b).sum() / den, -1, 1)) if den > 0 else 0.0


def auto_regions(image, *, min_voxels: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Background, darker tissue and brighter tissue masks, for SNR and CNR without drawing.

    Three-class Otsu thresholds (:func:`skimage.filters.threshold_multiotsu`), each class
    eroded by one voxel so that partial-volume borders do not count as noise. Returns ``None``
    when a class keeps fewer than ``min_voxels`` voxels (or the image has < 3 grey levels).

    Examples
    --------
    >>> import numpy as np
    >>> a = np.zeros((60, 60)); a[10:50, 10:50] = 1; a[20:40, 20:40] = 2
    >>> bg, low, high = auto_regions(a)
    >>> int(bg.sum()), int(low.sum()), int(high.sum())
    (1604, 964, 324)
    """
    from scipy import ndimage
    from skimage.filters import threshold_multiotsu

    arr = np.asarray(as_image(image).array, dtype=np.float32)
    step = max(1, arr.size // 2_000_000)
    try:
        t1, t2 = threshold_multiotsu(arr.reshape(-1)[::step], classes=3)
    except ValueError:  # fewer than three grey levels
        return None
    classes = [arr < t1, (arr >= t1) & (arr < t2), arr >= t2]
    shrunk = [ndimage.binary_erosion(c, iterations=1) for c in classes]
    if min(int(c.sum()) for c in shrunk) < min_voxels:
        return None
    return tuple(shrunk)


def summary(image, reference, *, data_range: float | None = None) -> dict[str, Any]:
    """PSNR, SSIM and edge preservation against a reference, as a dict (for tables)."""
    return {"psnr": psnr(image, reference, data_range=data_range),
            "ssim": ssim(image, reference, data_range=data_range),
            "edge_preservation": edge_preservation(image, reference)}


# ============================================================================ segmentation
# Shared rules of every segmentation metric below (told in segmentation_scores' docstring):
# * a mask is the voxels equal to ``label`` (or, without one, every non-zero voxel);
# * a surface is the voxels of a mask with a face neighbour outside it (outside the array
#   counts as outside): MONAI's definition (mask XOR its face-connected erosion);
# * distances are between voxel centres, in mm: the direction matrix is orthonormal, so
#   ``index * spacing`` differs from the physical (LPS) point only by a rotation and a shift,
#   which keep every distance;
# * a ratio whose denominator is 0 is 1.0 when prediction and truth agree on every voxel, else
#   0.0; surface distances are 0.0 when both masks are empty and inf when only one is.


def _label_value(label, name: str = "label") -> int | None:
    """``label`` as an int (None stays None); NaN, fractions, booleans and text are refused."""
    if label is None:
        return None
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, numbers.Real):
        raise ParameterError(f"{name} must be an integer label value such as 1; got {label!r}")
    if isinstance(label, numbers.Integral):   # exactly: float(2**53 + 1) is 2**53, another label
        if not -(2**63) < int(label) < 2**63:
            raise ParameterError(f"{name} must be an integer label value such as 1 (below 2**63); got {label!r}")
        return int(label)
    value = float(label)
    if not np.isfinite(value) or value != round(value) or abs(value) >= 2.0 ** 63:
        raise ParameterError(f"{name} must be an integer label value such as 1 (below 2**63); got {label!r}")
    return int(value)


def _grid(image: Image) -> str:
    def fmt(values) -> str:
        return "(" + ", ".join(f"{v:g}" for v in values) + ")"

    return (f"size {fmt(image.size)}, spacing {fmt(image.spacing)} mm, origin {fmt(image.origin)} mm, "
            f"direction {np.round(image.direction, 4).tolist()}")


def _grey(obj, name: str) -> tuple[Image, bool]:
    """``obj`` as an Image, and whether it carried its own geometry (a bare array does not)."""
    image = as_image(obj, name)
    if image.rgb:
        raise ImageError(f"{name} is a colour image; expected a label map, a mask or a grey-level map")
    check_finite(image, name)
    return image, not isinstance(obj, np.ndarray)


def _on_one_grid(a: Image, has_a: bool, b: Image, has_b: bool, names: tuple[str, str], hint: str) -> None:
    if a.ndim != b.ndim:
        raise GeometryError(f"{names[0]} is {a.ndim}D and {names[1]} is {b.ndim}D")
    if has_a and has_b and not a.same_grid(b):
        raise GeometryError(f"{names[0]} and {names[1]} are not on the same grid: {names[0]} has {_grid(a)}; "
                            f"{names[1]} has {_grid(b)}. {hint}")
    if a.shape != b.shape:
        raise GeometryError(f"{names[0]} has array shape {a.shape} and {names[1]} {b.shape}; "
                            "they must hold the same voxels")


def _check_integral(image: Image, name: str) -> None:
    """Refuse fractional values: a probability map given as a mask would count every voxel
    above 0 (a Dice of 0.04 for a perfect prediction, without a word)."""
    a = image.array
    if a.dtype.kind == "f":
        frac = a[a != np.floor(a)]
        if frac.size:
            raise ImageError(f"{name} holds non-integer values (e.g. {float(frac[0]):.4g}): it is not a label map or "
                             f"a mask. Threshold a probability map first, e.g. {name} > 0.5")


def _label_pair(pred, truth, *, resample: bool, names=("pred", "truth")) -> tuple[Image, Image, Image]:
    """Prediction and truth on one grid (the prediction resampled if asked), and that grid.

    A bare numpy array is taken to lie on the other argument's grid (1 mm when both are arrays).
    """
    a, has_a = _grey(pred, names[0])
    b, has_b = _grey(truth, names[1])
    for image, name in ((a, names[0]), (b, names[1])):
        _check_integral(image, name)
    if resample and has_a and has_b and a.ndim == b.ndim and not a.same_grid(b):
        if not a.overlaps(b):
            raise GeometryError(f"{names[0]} does not overlap {names[1]} in physical space, so it cannot be "
                                f"resampled onto it: {names[0]} has {_grid(a)}; {names[1]} has {_grid(b)}")
        from .preprocess.geometry import resample_to

        a = resample_to(a if a.is_label else a.with_array(a.array, kind="label"), reference=b,
                        interpolator="nearest")
    _on_one_grid(a, has_a, b, has_b, names,
                 f"Resample {names[0]} onto {names[1]}'s grid first, or pass resample=True (nearest neighbour).")
    return a, b, (b if has_b or not has_a else a)


def _mask(image: Image, label: int | None) -> np.ndarray:
    return image.array != 0 if label is None else image.array == label


def _bbox(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Smallest box of array slices holding every True voxel (None for an empty mask)."""
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(i for i in range(mask.ndim) if i != axis)))
        if hit.size == 0:
            return None
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face neighbour outside it; outside the array counts as outside.

    Shifted views of a padded copy: the same voxels as MONAI's
    ``mask ^ scipy.ndimage.binary_erosion(mask)``, in a third of the time.
    """
    padded = np.pad(mask, 1)
    interior = mask.copy()
    core = [slice(1, -1)] * mask.ndim
    for axis in range(mask.ndim):
        for shift in (slice(None, -2), slice(2, None)):
            view = list(core)
            view[axis] = shift
            interior &= padded[tuple(view)]
    return mask & ~interior


def _nearest(points: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Distance from each point to the nearest target (inf when there is no target)."""
    if len(points) == 0:
        return np.empty(0)
    if len(targets) == 0:
        return np.full(len(points), np.inf)
    from scipy.spatial import KDTree

    return KDTree(targets, leafsize=32).query(points, workers=-1)[0]


def _surface_distances(p: np.ndarray, t: np.ndarray, sampling: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Why a k-d tree over surface voxels and not a distance transform: surfaces are sparse. On a
    # 256^3 pair (two irregular blobs, about 55 000 surface voxels each) building and querying
    # the tree took 0.12 s, while scipy's distance_transform_edt(sampling=spacing) on just the
    # cropped bounding box took 1.5 s (the `edt` package would still transform every voxel).
    box = _bbox(p | t)
    if box is None:
        return np.empty(0), np.empty(0)
    sp = np.argwhere(_surface(p[box])) * sampling
    st = np.argwhere(_surface(t[box])) * sampling
    return _nearest(sp, st), _nearest(st, sp)


def _sampling(image: Image) -> np.ndarray:
    return np.asarray(image.spacing[::-1], dtype=float)  # array order (z, y, x)


def _hausdorff(d_pt: np.ndarray, d_tp: np.ndarray, percentile: float) -> float:
    if d_pt.size == 0 and d_tp.size == 0:
        return 0.0
    if d_pt.size == 0 or d_tp.size == 0:
        return float("inf")
    return float(max(np.percentile(d_pt, percentile), np.percentile(d_tp, percentile)))


def _assd(d_pt: np.ndarray, d_tp: np.ndarray) -> float:
    if d_pt.size == 0 and d_tp.size == 0:
        return 0.0
    if d_pt.size == 0 or d_tp.size == 0:
        return float("inf")
    return float((d_pt.sum() + d_tp.sum()) / (d_pt.size + d_tp.size))


def _ratio_or_agreement(num: int, den: int, agree: bool) -> float:
    """``num / den``; 0/0 is 1.0 when prediction and truth agree on every voxel, else 0.0."""
    if den == 0:
        return 1.0 if agree else 0.0
    return num / den


def _confusion(p: np.ndarray, t: np.ndarray) -> tuple[int, int, int, int]:
    """True positives, false positives, false negatives, true negatives (voxel counts)."""
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p)) - tp
    fn = int(np.count_nonzero(t)) - tp
    return tp, fp, fn, p.size - tp - fp - fn


def surface_distances(pred, truth, *, label: int | None = None,
                      resample: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Distances in mm from each surface voxel of one mask to the other mask's surface.

    A surface voxel is a voxel of the mask with a face neighbour (6 in 3D, 4 in 2D) outside
    it, the outside of the image counting as outside; this is MONAI's definition
    (``mask XOR binary_erosion(mask)``). Distances are between voxel centres, in mm, from the
    image spacing: the direction matrix is orthonormal, so it rotates the grid without
    stretching it and distances in index space scaled by the spacing are physical distances.

    Parameters
    ----------
    pred, truth : Image or array_like
        Label maps or masks on the same grid. A numpy array is taken to lie on the other
        argument's grid (on a 1 mm grid when both are arrays).
    label : int, optional
        The label value to compare; by default every non-zero voxel.
    resample : bool
        When both are Images on different grids that overlap in space, resample ``pred``
        onto ``truth``'s grid by nearest neighbour instead of raising a
        :class:`~medlab.errors.GeometryError`.

    Returns
    -------
    pred_to_truth, truth_to_pred : ndarray of float
        One distance (mm) per surface voxel of ``pred``, and of ``truth``. When one mask is
        empty, the other's distances are all ``inf`` and its own array is empty; when both are
        empty, both arrays are empty.

    Examples
    --------
    >>> import numpy as np
    >>> from medlab import Image
    >>> a = np.zeros((1, 9, 9), np.uint8); a[0, 2:7, 2:7] = 1
    >>> b = np.roll(a, 1, axis=2)
    >>> d_ab, d_ba = surface_distances(Image(a, spacing=(2, 1, 1)), Image(b, spacing=(2, 1, 1)))
    >>> float(d_ab.max()), float(d_ba.max())
    (2.0, 2.0)
    """
    label = _label_value(label)
    a, b, grid = _label_pair(pred, truth, resample=resample)
    return _surface_distances(_mask(a, label), _mask(b, label), _sampling(grid))


def hausdorff_distance(pred, truth, *, label: int | None = None, percentile: float = 100.0,
                       resample: bool = False) -> float:
    """Symmetric Hausdorff distance in mm between the surfaces of two masks.

    ``max(P(d(pred -> truth)), P(d(truth -> pred)))``, where ``P`` is the ``percentile`` of
    the directed surface distances (:func:`surface_distances`) with linear interpolation, as
    MONAI's ``compute_hausdorff_distance`` and Metrics Reloaded compute it: the maximum
    (``percentile=100``) is the classic Hausdorff distance, 95 the robust HD95.

    Both masks empty gives 0.0; exactly one empty gives ``inf`` (the worst value: Metrics
    Reloaded leaves it undefined and asks for the worst case when aggregating; MONAI returns
    ``inf`` for the maximum and NaN for a percentile). Cap it (e.g. at the image diagonal) before
    averaging over cases.

    Parameters
    ----------
    pred, truth : Image or array_like
        See :func:`surface_distances`.
    label : int, optional
        The label value to compare; by default every non-zero voxel.
    percentile : float
        In [0, 100].
    resample : bool
        See :func:`surface_distances`.

    Returns
    -------
    float
        mm.

    Examples
    --------
    >>> import numpy as np
    >>> from medlab import Image
    >>> a = np.zeros((20, 20, 20), np.uint8); a[5:15, 5:15, 5:15] = 1
    >>> b = np.zeros_like(a); b[5:15, 5:15, 5:17] = 1
    >>> hausdorff_distance(Image(a, spacing=(0.5, 1, 1)), Image(b, spacing=(0.5, 1, 1)))
    1.0
    """
    if isinstance(percentile, (bool, np.bool_)) or not (isinstance(percentile, numbers.Real) and 0 <= percentile <= 100):
        raise ParameterError(f"percentile must be a number in [0, 100]; got {percentile!r}")
    return _hausdorff(*surface_distances(pred, truth, label=label, resample=resample), float(percentile))


def hausdorff95(pred, truth, *, label: int | None = None, resample: bool = False) -> float:
    """95th-percentile Hausdorff distance (HD95) in mm between the surfaces of two masks.

    :func:`hausdorff_distance` with ``percentile=95``: the larger of the two directed 95th
    percentiles (MONAI's and Metrics Reloaded's definition; some tools instead take the 95th
    percentile of the pooled distances). 0.0 when both masks are empty, ``inf`` when only one is.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.zeros((32, 32), bool); a[8:24, 8:24] = True
    >>> hausdorff95(a, np.roll(a, 3, axis=0))
    3.0
    """
    return hausdorff_distance(pred, truth, label=label, percentile=95.0, resample=resample)


def assd(pred, truth, *, label: int | None = None, resample: bool = False) -> float:
    """Average symmetric surface distance (ASSD) in mm.

    ``(sum d(pred -> truth) + sum d(truth -> pred)) / (n_pred + n_truth)`` over the surface
    voxels of both masks (:func:`surface_distances`): the mean of the pooled distances (Heimann
    et al. 2009; MONAI's ``compute_average_surface_distance(symmetric=True)``; Metrics Reloaded's
    ASSD). 0.0 when both masks are empty, ``inf`` when only one is.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.zeros((32, 32), bool); a[8:24, 8:24] = True
    >>> round(assd(a, a), 3)
    0.0
    """
    return _assd(*surface_distances(pred, truth, label=label, resample=resample))


def dice(a, b, *, label: int | None = None, resample: bool = False) -> float:
    """Dice overlap ``2|A and B| / (|A| + |B|)`` of two masks or label maps.

    With ``label``, the regions are the voxels equal to it; otherwise all non-zero voxels.
    Two empty regions give 1.0, one empty region 0.0 (as Metrics Reloaded, and MONAI's
    ``DiceMetric(ignore_empty=False)``).

    Parameters
    ----------
    a, b : Image or array_like
        On the same grid (see :func:`surface_distances`).
    label : int, optional
    resample : bool
        Resample ``a`` onto ``b``'s grid by nearest neighbour when they differ.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.zeros((10, 10), bool); x[:5] = True
    >>> y = np.zeros((10, 10), bool); y[:, :5] = True
    >>> dice(x, y)
    0.5
    """
    label = _label_value(label)
    ia, ib, _ = _label_pair(a, b, resample=resample, names=("a", "b"))
    tp, fp, fn, _ = _confusion(_mask(ia, label), _mask(ib, label))
    return _ratio_or_agreement(2 * tp, 2 * tp + fp + fn, fp == fn == 0)


def iou(a, b, *, label: int | None = None, resample: bool = False) -> float:
    """Intersection over union (Jaccard index) ``|A and B| / |A or B|``.

    Same inputs and empty rule as :func:`dice` (two empty regions: 1.0). ``iou = dice / (2 - dice)``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.zeros((10, 10), bool); x[:5] = True
    >>> y = np.zeros((10, 10), bool); y[:, :5] = True
    >>> round(iou(x, y), 4)
    0.3333
    """
    label = _label_value(label)
    ia, ib, _ = _label_pair(a, b, resample=resample, names=("a", "b"))
    tp, fp, fn, _ = _confusion(_mask(ia, label), _mask(ib, label))
    return _ratio_or_agreement(tp, tp + fp + fn, fp == fn == 0)


MAX_SCORED_LABELS = 1000
"""Most label values :func:`segmentation_scores` scores unless told which."""


def _present_labels(image: Image, name: str) -> set[int]:
    """Non-zero label values in ``image`` (integers, or an ImageError)."""
    values = image.array[image.array != 0]
    if values.size == 0:
        return set()
    if values.dtype.kind == "b":
        return {1}
    if values.dtype.kind == "f":
        if np.any(values != np.round(values)):
            raise ImageError(f"{name} holds non-integer values: it is not a label map (pass labels=... "
                             "or threshold it into a mask first)")
        values = values.astype(np.int64)
    lo, hi = int(values.min()), int(values.max())
    if hi - lo < 1 << 20:  # a histogram is faster than sorting
        return {int(v) + lo for v in np.flatnonzero(np.bincount(values - lo))}
    return {int(v) for v in np.unique(values)}


def _label_name(value: int, *images: Image) -> str:
    for image in images:
        if value in image.labels:
            return image.labels[value].name
    return f"label {value}"


def segmentation_scores(pred, truth, labels=None, *, resample: bool = False) -> list[dict[str, Any]]:
    """Overlap, surface-distance and volume scores of a segmentation, one row per label.

    Every distance is in mm from the image spacing and direction; volumes are in mL.

    ====================  ==========================================================
    key                   meaning
    ====================  ==========================================================
    ``label``, ``name``   label value; its name from ``truth.labels`` (then
                          ``pred.labels``, else ``"label N"``)
    ``dice``              ``2 TP / (2 TP + FP + FN)``
    ``iou``               ``TP / (TP + FP + FN)`` (Jaccard)
    ``sensitivity``       ``TP / (TP + FN)`` (recall, true positive rate)
    ``specificity``       ``TN / (TN + FP)`` (over the whole image grid)
    ``precision``         ``TP / (TP + FP)`` (positive predictive value)
    ``hausdorff_mm``      maximum symmetric surface distance
    ``hausdorff95_mm``    larger of the two directed 95th percentiles (HD95)
    ``assd_mm``           mean of the pooled surface distances of both directions
    ``volume_pred_ml``,   volumes (voxel count x voxel volume); for 2D images
    ``volume_truth_ml``   ``area_pred_mm2``, ``area_truth_mm2`` instead
    ``volume_difference_ml``  ``pred - truth`` (positive: over-segmentation); 2D:
                          ``area_difference_mm2``
    ====================  ==========================================================

    Definitions (those of MONAI and Metrics Reloaded, so numbers can be compared):

    * a surface voxel is a voxel of the mask with a face neighbour outside it (outside the
      image counts as outside); distances go from voxel centre to voxel centre;
    * the direction matrix is orthonormal, so distances computed in index space with the
      per-axis spacing are the physical distances, also for oblique images;
    * HD95 interpolates percentiles linearly, as ``numpy.percentile`` and ``torch.quantile``.

    Empty masks give defined values, never NaN. A ratio whose denominator is 0 is 1.0 when
    prediction and truth agree on every voxel and 0.0 otherwise: both empty gives Dice, IoU,
    sensitivity and precision 1.0 (Metrics Reloaded's Dice rule); one empty gives 0.0 (Metrics
    Reloaded's precision and recall rules). Surface distances are 0.0 when both masks are
    empty (Metrics Reloaded) and ``inf`` when only one is (the worst case, which Metrics
    Reloaded asks for when aggregating; MONAI gives ``inf`` for the maximum). Cap ``inf`` (e.g.
    at the image diagonal) before averaging over cases.

    Parameters
    ----------
    pred, truth : Image or array_like
        Label maps on the same grid (a numpy array is taken to lie on the other's grid).
    labels : int or sequence of int, optional
        Label values to score. By default every non-zero value found in either map plus every
        value named in ``truth.labels`` (0 excluded), at most :data:`MAX_SCORED_LABELS` of them
        (more is refused: an intensity image given as a label map); a label absent from both
        scores as two empty masks.
    resample : bool
        When both are Images on different grids that overlap in space, resample ``pred`` onto
        ``truth``'s grid by nearest neighbour instead of raising a
        :class:`~medlab.errors.GeometryError`.

    Returns
    -------
    list of dict
        One row per label, in increasing label order.

    Notes
    -----
    Against other tools (checked in ``tests/test_metrics.py`` on an oblique, anisotropic grid):

    * MONAI ``compute_hausdorff_distance`` (with and without ``percentile=95``),
      ``compute_average_surface_distance(symmetric=True)`` and ``DiceMetric`` give the same
      numbers when given the spacing in array order (``image.spacing[::-1]``); MONAI ignores
      the direction, which is right because it is orthonormal. Its empty cases differ: NaN
      for both empty, and NaN for HD95 with one empty.
    * SimpleITK ``LabelOverlapMeasuresImageFilter`` (source = prediction): Dice, Jaccard,
      ``1 - FalseNegativeError`` = sensitivity, ``1 - FalsePositiveError`` = specificity (ITK's
      false positive error is FP / (FP + TN)), ``1 - FalseDiscoveryRate`` = precision.
    * SimpleITK ``HausdorffDistanceImageFilter`` measures from every voxel of one mask to the
      other mask (0 inside it), not surface to surface; run on ``LabelContour(mask,
      fullyConnected=False)`` images it gives our maximum (its contours leave out voxels on
      the image border, which ours count), and its "average Hausdorff distance" is the mean
      of the two directed means, not the pooled ASSD.

    Examples
    --------
    >>> import numpy as np
    >>> from medlab import Image
    >>> truth = np.zeros((10, 40, 40), np.uint8); truth[2:8, 10:30, 10:30] = 1
    >>> pred = np.zeros_like(truth); pred[2:8, 12:30, 10:30] = 1
    >>> t = Image(truth, spacing=(0.5, 0.5, 2.0), kind="label", labels={1: "tumour"})
    >>> row = segmentation_scores(Image(pred, spacing=(0.5, 0.5, 2.0), kind="label"), t)[0]
    >>> row["name"], round(row["dice"], 3), row["hausdorff_mm"], round(row["volume_difference_ml"], 3)
    ('tumour', 0.947, 1.0, -0.12)
    """
    a, b, grid = _label_pair(pred, truth, resample=resample)
    if labels is None:
        values = _present_labels(a, "pred") | _present_labels(b, "truth") | (set(b.labels) - {0})
        if len(values) > MAX_SCORED_LABELS:   # each label is a pass over the volume: hours for a CT given as pred
            raise ParameterError(f"pred and truth hold {len(values)} different label values (more than "
                                 f"{MAX_SCORED_LABELS}): is one of them an intensity image rather than a label map? "
                                 "Pass labels=[...] to score the labels you mean")
    else:
        if isinstance(labels, (str, bytes)):
            raise ParameterError(f"labels must be a label value or a list of them, e.g. [1, 2]; got {labels!r}")
        values = {_label_value(v, "labels") for v in ([labels] if isinstance(labels, numbers.Real) else labels)}
        if None in values:
            raise ParameterError("labels must be label values such as [1, 2]; got None among them (leave labels "
                                 "out to score every label)")
    sampling = _sampling(grid)
    unit = float(np.prod(grid.spacing))
    rows = []
    for value in sorted(values):
        p, t = _mask(a, value), _mask(b, value)
        rows.append({"label": value, "name": _label_name(value, b, a),
                     **_overlap_scores(p, t), **_distance_scores(p, t, sampling), **_volumes(p, t, unit, grid.ndim)})
    return rows


def _overlap_scores(p: np.ndarray, t: np.ndarray) -> dict[str, float]:
    tp, fp, fn, tn = _confusion(p, t)
    agree = fp == fn == 0
    return {"dice": _ratio_or_agreement(2 * tp, 2 * tp + fp + fn, agree),
            "iou": _ratio_or_agreement(tp, tp + fp + fn, agree),
            "sensitivity": _ratio_or_agreement(tp, tp + fn, agree),
            "specificity": _ratio_or_agreement(tn, tn + fp, agree),
            "precision": _ratio_or_agreement(tp, tp + fp, agree)}


def _distance_scores(p: np.ndarray, t: np.ndarray, sampling: np.ndarray) -> dict[str, float]:
    d_pt, d_tp = _surface_distances(p, t, sampling)
    return {"hausdorff_mm": _hausdorff(d_pt, d_tp, 100.0), "hausdorff95_mm": _hausdorff(d_pt, d_tp, 95.0),
            "assd_mm": _assd(d_pt, d_tp)}


def _volumes(p: np.ndarray, t: np.ndarray, voxel: float, ndim: int) -> dict[str, float]:
    vp, vt = float(np.count_nonzero(p) * voxel), float(np.count_nonzero(t) * voxel)
    if ndim == 2:
        return {"area_pred_mm2": vp, "area_truth_mm2": vt, "area_difference_mm2": vp - vt}
    return {"volume_pred_ml": vp / 1000, "volume_truth_ml": vt / 1000, "volume_difference_ml": (vp - vt) / 1000}


# ============================================================================ saliency localisation
# A saliency map's positive values are evidence for the target; negative values (evidence
# against, as Integrated Gradients gives) are ignored, i.e. counted as 0, and no map is ever
# flipped: pass ``-map`` yourself when a method's evidence is negative.


def _saliency_pair(saliency, mask) -> tuple[np.ndarray, np.ndarray, Image]:
    s, has_s = _grey(saliency, "saliency")
    m, has_m = _grey(mask, "mask")
    _on_one_grid(s, has_s, m, has_m, ("saliency", "mask"),
                 "Resample the map onto the mask's grid first, e.g. "
                 "medlab.preprocess.resample_to(saliency, reference=mask).")
    inside = np.asarray(m.array) != 0
    if not inside.any():
        raise ParameterError("mask is empty: localisation needs at least one voxel inside the mask")
    return np.asarray(s.array, dtype=np.float64), inside, (m if has_m or not has_s else s)


def _no_positive() -> ImageError:
    return ImageError("the saliency map has no positive value, so it points nowhere. Negative values are "
                      "ignored and maps are never flipped: if this method's evidence is negative, pass -saliency")


def saliency_energy_in_mask(saliency, mask) -> float:
    """Share of the positive saliency that falls inside the mask (energy-based pointing game).

    ``sum(max(s, 0) inside) / sum(max(s, 0))`` (Wang et al., Score-CAM, CVPR-W 2020): 1.0
    when all the evidence lies in the mask. Negative values are ignored (counted as 0); a
    map is never flipped.

    Parameters
    ----------
    saliency : Image or array_like
        The map, on the mask's grid.
    mask : Image or array_like
        The known region (non-zero voxels), e.g. the tumour label.

    Returns
    -------
    float
        In [0, 1].

    Raises
    ------
    ImageError
        If the map has no positive value.

    Examples
    --------
    >>> import numpy as np
    >>> s = np.zeros((10, 10)); s[2, 2] = 3.0; s[7, 7] = 1.0; s[0, 0] = -5.0
    >>> m = np.zeros((10, 10), bool); m[:5, :5] = True
    >>> saliency_energy_in_mask(s, m)
    0.75
    """
    sal, inside, _ = _saliency_pair(saliency, mask)
    positive = np.clip(sal, 0, None)
    total = positive.sum()
    if total <= 0:
        raise _no_positive()
    return float(positive[inside].sum() / total)


def pointing_game(saliency, mask, *, tolerance_mm: float = 0.0) -> bool:
    """Whether the map's peak lies in the mask, dilated by ``tolerance_mm`` (pointing game).

    The hit of Zhang et al. (ECCV 2016, who used a 15-pixel tolerance), with the tolerance in
    mm: the peak voxel's centre must be within ``tolerance_mm`` of a mask voxel's centre. When
    several voxels share the maximum, every one of them must be, so a flat map cannot score
    by touching the mask. Negative values are ignored; a map is never flipped.

    Parameters
    ----------
    saliency, mask : Image or array_like
        See :func:`saliency_energy_in_mask`.
    tolerance_mm : float
        Dilation of the mask in mm (0: the peak must be inside it).

    Returns
    -------
    bool

    Examples
    --------
    >>> import numpy as np
    >>> from medlab import Image
    >>> s = np.zeros((20, 20)); s[10, 14] = 1.0
    >>> m = np.zeros((20, 20), bool); m[8:12, 8:12] = True
    >>> pointing_game(Image(s, spacing=(2, 2)), Image(m, spacing=(2, 2)))
    False
    >>> pointing_game(Image(s, spacing=(2, 2)), Image(m, spacing=(2, 2)), tolerance_mm=6)
    True
    """
    if not (isinstance(tolerance_mm, numbers.Real) and np.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise ParameterError(f"tolerance_mm must be a finite distance >= 0 in mm; got {tolerance_mm!r}")
    sal, inside, grid = _saliency_pair(saliency, mask)
    peak = sal.max()
    if peak <= 0:
        raise _no_positive()
    astray = (sal == peak) & ~inside
    if not astray.any():
        return True
    if tolerance_mm == 0:
        return False
    # The nearest mask voxel to a point outside the mask is on the mask's surface.
    box = _bbox(inside)
    sampling = _sampling(grid)
    surface = (np.argwhere(_surface(inside[box])) + [s.start for s in box]) * sampling
    return bool(np.all(_nearest(np.argwhere(astray) * sampling, surface) <= tolerance_mm * (1 + 1e-9)))


def saliency_iou(saliency, mask, *, quantile: float = 0.9) -> float:
    """IoU between the mask and the map thresholded at its ``quantile``.

    The region is the voxels at or above the map's ``quantile`` (over all voxels) that are
    also positive, so it holds the top ``1 - quantile`` share of the voxels, or fewer when
    most of the map is zero or negative. Negative values are ignored; a map is never flipped.

    Parameters
    ----------
    saliency, mask : Image or array_like
        See :func:`saliency_energy_in_mask`.
    quantile : float
        In (0, 1). Pick it so that the region is about the mask's size when comparing methods.

    Returns
    -------
    float
        In [0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> s = np.zeros((10, 10)); s[:5, :5] = np.arange(25).reshape(5, 5) + 1
    >>> m = np.zeros((10, 10), bool); m[:5, :5] = True
    >>> saliency_iou(s, m, quantile=0.75)
    1.0
    """
    if not (isinstance(quantile, numbers.Real) and 0 < quantile < 1):
        raise ParameterError(f"quantile must be a number in (0, 1), e.g. 0.9; got {quantile!r}")
    sal, inside, _ = _saliency_pair(saliency, mask)
    region = (sal >= np.quantile(sal, quantile)) & (sal > 0)
    if not region.any():
        raise _no_positive()
    return float(np.count_nonzero(region & inside) / np.count_nonzero(region | inside))

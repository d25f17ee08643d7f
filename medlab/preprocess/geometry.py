"""Geometry stages: resample, resample onto another grid, crop, pad, reorient.

These change the voxel grid (``resamples=True``) but never the physical position of
anything: a structure at a given millimetre point is at that point afterwards.
"""

from __future__ import annotations

import itertools

import numpy as np

from ..errors import GeometryError, ImageError, ParameterError
from ..image import _ORIENT_CODES, Image
from ..io.memory import check_allocation, size_text, voxel_count
from ..stage import Choice, Float, Grid, Int, Vector, execute_sitk, report, stage
from ._common import as_float, foreground_mask, sitk_image

__all__ = ["crop_box", "crop_to_foreground", "pad", "reorient", "resample", "resample_to"]

INTERPOLATORS = ("linear", "bspline", "nearest", "label_gaussian")
_AXES = "xyz"


def _interpolator(image: Image, name: str):
    """The SimpleITK interpolator; label maps never get linear or B-spline blending."""
    import SimpleITK as sitk

    if image.is_label:
        return sitk.sitkLabelGaussian if name == "label_gaussian" else sitk.sitkNearestNeighbor
    if name == "label_gaussian":
        raise ParameterError("interpolator 'label_gaussian' is for label maps; use linear or bspline for intensities")
    return {"linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline, "nearest": sitk.sitkNearestNeighbor}[name]


def _work_dtype(image: Image) -> np.dtype:
    """float32 for intensities, unless the values do not fit it (float64 beyond ±3.4e38
    would become infinite, and then NaN in any later blend)."""
    a = image.array
    if a.dtype == np.float64 and a.size and np.abs(a).max() > np.finfo(np.float32).max:
        return np.dtype(np.float64)
    return np.dtype(np.float32)


def _check_output(image: Image, size, cause: str, hint: str) -> None:
    """Refuse a grid whose voxels would not fit in memory, before anything is allocated.

    ITK allocates the output, then numpy copies it; an intensity image is also cast to float.
    ``cause`` names the parameter and its value, e.g. ``"resample: spacing=(0.01, 0.01, 0.01)"``.
    """
    out_bytes = image.dtype.itemsize if image.is_label else _work_dtype(image).itemsize
    needed = 2 * voxel_count(size) * out_bytes + (0 if image.is_label else image.array.size * out_bytes)
    check_allocation(needed, f"{cause} gives an output of {size_text(size)} voxels ({voxel_count(size):,} voxels, "
                             f"from {size_text(image.size)}), which", hint, ParameterError)


def _resample_onto(image: Image, size, spacing, origin, direction, interpolator: str) -> Image:
    import SimpleITK as sitk

    filt = sitk.ResampleImageFilter()
    filt.SetSize([int(s) for s in size])
    filt.SetOutputSpacing([float(s) for s in spacing])
    filt.SetOutputOrigin([float(o) for o in origin])
    filt.SetOutputDirection([float(d) for d in np.asarray(direction).ravel()])
    filt.SetInterpolator(_interpolator(image, interpolator))
    if image.is_label:
        filt.SetDefaultPixelValue(0)
        return sitk_image(image, execute_sitk(filt, image.to_sitk()))
    work = _work_dtype(image)
    factor = _headroom_factor(image.array)
    src = image.to_sitk() if factor == 1.0 else image.with_array(image.array.astype(work) * factor).to_sitk()
    filt.SetDefaultPixelValue(float(np.min(image.array)) * factor)
    out = execute_sitk(filt, sitk.Cast(src, sitk.sitkFloat64 if work == np.float64 else sitk.sitkFloat32))
    if factor == 1.0:
        return sitk_image(image, out)
    with np.errstate(over="ignore"):  # a B-spline overshoot at the limit: clipped to it below
        values = sitk.GetArrayFromImage(out) / work.type(factor)
    np.clip(values, -np.finfo(work).max, np.finfo(work).max, out=values)
    return Image(values.astype(work, copy=False), out.GetSpacing(), out.GetOrigin(), np.reshape(out.GetDirection(),
                 (image.ndim, image.ndim)), kind=image.kind, labels=image.labels, metadata=image.metadata)


def _headroom_factor(values: np.ndarray) -> float:
    """A power of two bringing the largest magnitude under 2**64, or 1.

    Interpolation sums weighted voxels, and a B-spline's coefficients overshoot the values:
    near the float maximum (3.4e38 for float32, 1.8e308 for float64) that overflows to inf and
    then NaN. Scaling by a power of two is exact, so ordinary images are untouched and extreme
    ones come back finite.
    """
    if values.dtype.kind != "f" or not values.size:
        return 1.0
    largest = float(np.abs(values).max())
    exponent = np.frexp(largest)[1]
    return 1.0 if exponent <= 64 else float(2.0 ** (64 - exponent))


@stage("Resample", group="preprocess", preview=None, accepts=("intensity", "label"), resamples=True,
       spacing=Vector(0.01, 100.0, None, unit="mm",
                      help="target voxel size (x, y, z) in mm; one number for isotropic; empty keeps the spacing"),
       interpolator=Choice(INTERPOLATORS, "linear",
                           help="linear or B-spline for intensities; label maps always use nearest neighbour "
                                "unless 'label_gaussian' (smooth label boundaries)"))
def resample(image: Image, *, spacing=None, interpolator: str = "linear") -> Image:
    """Resample to a new voxel spacing, keeping origin, direction and physical extent.

    The new size is ``round(size * spacing / new_spacing)`` along each axis. Label maps are
    interpolated label-aware (nearest neighbour, or SimpleITK's label Gaussian): blending label
    values would invent classes that are not there (the label-interpolation trap).

    Parameters
    ----------
    image : Image
        Intensity image or label map.
    spacing : float or sequence of float, optional
        Target spacing in mm, ``(x, y[, z])``.
    interpolator : {'linear', 'bspline', 'nearest', 'label_gaussian'}

    Returns
    -------
    Image
        On the new grid; float32 for intensities (float64 when the values exceed float32's
        range), the input dtype for label maps.

    Raises
    ------
    ParameterError
        ``spacing`` has the wrong length, or gives a grid too large for the memory available
        (checked before allocating; the message gives the voxel count and the memory needed).

    Examples
    --------
    >>> import numpy as np
    >>> from medlab import Image
    >>> img = Image(np.zeros((20, 64, 64)), spacing=(0.5, 0.5, 3.0))
    >>> out = resample(img, spacing=(1.0, 1.0, 1.0))
    >>> out.size, out.spacing
    ((32, 32, 60), (1.0, 1.0, 1.0))
    """
    if spacing is None:
        spacing = image.spacing
    spacing = tuple(spacing)
    if len(spacing) != image.ndim:
        if len(set(spacing)) == 1:
            spacing = spacing[:1] * image.ndim
        else:
            raise ParameterError(f"resample: spacing has {len(spacing)} values; this image is {image.ndim}D")
    size = [max(1, round(n * s / t)) for n, s, t in zip(image.size, image.spacing, spacing)]
    shown = tuple(round(float(v), 6) for v in spacing)
    _check_output(image, size, f"resample: spacing={shown} mm", "choose a larger spacing")
    return _resample_onto(image, size, spacing, image.origin, image.direction, interpolator)


@stage("Resample onto a grid", group="preprocess", preview=None, accepts=("intensity", "label"), resamples=True,
       reference=Grid(optional=False, help="the image whose voxel grid to use (its voxels are not used)"),
       interpolator=Choice(INTERPOLATORS, "linear", help="as for resample; label maps are never blended"))
def resample_to(image: Image, *, reference=None, interpolator: str = "linear") -> Image:
    """Resample onto another image's grid (size, spacing, origin, direction).

    Everything is done in physical space, so an image stored with another orientation or
    field of view lands where it belongs; voxels of the reference grid outside ``image`` get
    its minimum (0 for label maps).

    Parameters
    ----------
    image : Image
    reference : Image
        Only its geometry is used; recipes store that geometry.
    interpolator : {'linear', 'bspline', 'nearest', 'label_gaussian'}

    Returns
    -------
    Image
        On the reference grid.

    Examples
    --------
    >>> import numpy as np
    >>> from medlab import Image
    >>> a = Image(np.ones((10, 10, 10)), spacing=(2, 2, 2))
    >>> b = Image(np.zeros((20, 20, 20)))
    >>> resample_to(a, reference=b).same_grid(b)
    True
    """
    if reference.ndim != image.ndim:
        raise GeometryError(f"resample_to: the reference is {reference.ndim}D and the image {image.ndim}D")
    if not image.overlaps(reference):
        raise GeometryError("resample_to: the image and the reference do not overlap in physical space "
                            "(check origins and orientation); the result would be empty")
    _check_output(image, reference.size, "resample_to: the reference grid", "choose a reference with fewer voxels")
    return _resample_onto(image, reference.size, reference.spacing, reference.origin, reference.direction,
                          interpolator)


def _unit_range(image: Image) -> np.ndarray:
    """The voxels mapped onto [0, 1] (float32): Otsu's threshold does not change under such a
    map, and its variance sums overflow on values near the float maximum (3.9e18 already
    overflows scikit-image's float32 sums)."""
    values = image.array.astype(np.float64)
    lo, hi = float(values.min()), float(values.max())
    if not hi > lo:
        return as_float(image)
    scale = max(abs(lo), abs(hi))  # divide first: hi - lo itself may overflow
    values /= scale
    return ((values - lo / scale) / (hi / scale - lo / scale)).astype(np.float32)


def _crop_index(image: Image, lo, hi) -> Image:
    """Crop to index box ``[lo, hi)`` (x, y, z order), moving the origin accordingly."""
    lo = np.clip(np.asarray(lo, int), 0, image.size)
    hi = np.clip(np.asarray(hi, int), 0, image.size)
    if np.any(hi <= lo):
        raise ParameterError(f"the crop box {lo.tolist()}..{hi.tolist()} (index x, y, z) does not overlap the image "
                             f"of size {list(image.size)}")
    sl = tuple(slice(a, b) for a, b in zip(lo[::-1], hi[::-1]))
    arr = image.array[sl].copy()
    return Image(arr, image.spacing, image.index_to_physical(lo), image.direction, kind=image.kind,
                 labels=image.labels, metadata=image.metadata)


@stage("Crop to foreground", group="preprocess", preview=None, accepts=("intensity", "label"), resamples=True,
       margin=Float(0.0, 100.0, 5.0, step=1.0, unit="mm", help="space kept around the foreground"))
def crop_to_foreground(image: Image, *, margin: float = 5.0) -> Image:
    """Crop to the bounding box of the foreground, plus a margin in mm.

    The foreground is the Otsu-thresholded image for intensities (the head, not the air
    around it) and the non-zero voxels for label maps.

    Parameters
    ----------
    image : Image
    margin : float
        mm on every side (rounded up to whole voxels).

    Returns
    -------
    Image
        A sub-grid of the input: same spacing and direction, origin moved.

    Examples
    --------
    >>> import numpy as np
    >>> from medlab import Image
    >>> a = np.zeros((40, 40)); a[10:20, 5:15] = 1
    >>> crop_to_foreground(Image(a), margin=2.0).size
    (14, 14)
    """
    mask = image.array != 0 if image.is_label else foreground_mask(_unit_range(image))
    if not mask.any():
        raise ImageError("crop_to_foreground: no foreground found (constant image or empty label map)")
    idx = np.nonzero(mask)
    lo = np.array([int(i.min()) for i in idx][::-1])
    hi = np.array([int(i.max()) + 1 for i in idx][::-1])
    pad = np.ceil(margin / np.asarray(image.spacing) - 1e-9).astype(int)
    return _crop_index(image, lo - pad, hi + pad)


@stage("Crop to a box", group="preprocess", preview=None, accepts=("intensity", "label"), resamples=True,
       start=Vector(-1e6, 1e6, None, help="first corner (x, y[, z]); empty = the image's start"),
       end=Vector(-1e6, 1e6, None, help="opposite corner (x, y[, z]); empty = the image's end"),
       units=Choice(("index", "mm"), "index",
                    help="index: voxel indices, end excluded; mm: physical LPS points, voxels whose centres lie "
                         "inside the box"))
def crop_box(image: Image, *, start=None, end=None, units: str = "index") -> Image:
    """Crop to a box given in voxel indices or in physical millimetres.

    Parameters
    ----------
    image : Image
    start, end : sequence of float, optional
        Corners in ``(x, y[, z])`` order. In ``'index'`` units ``end`` is excluded; in
        ``'mm'`` the corners are LPS points and every voxel whose centre lies in the
        axis-aligned physical box is kept (for an oblique image, the smallest index box
        holding them).
    units : {'index', 'mm'}

    Returns
    -------
    Image
        A sub-grid of the input: same spacing and direction, origin moved.

    Examples
    --------
    >>> import numpy as np
    >>> from medlab import Image
    >>> img = Image(np.zeros((10, 20, 30)), spacing=(2, 2, 2), origin=(-10, 0, 0))
    >>> out = crop_box(img, start=(0, 0, 0), end=(10, 20, 8), units="mm")
    >>> out.size, out.origin
    ((6, 11, 5), (0.0, 0.0, 0.0))
    """
    d = image.ndim
    for name, v in (("start", start), ("end", end)):
        if v is not None and len(v) != d:
            raise ParameterError(f"crop_box: {name} has {len(v)} values; this image is {d}D")
    if units == "index":
        lo = np.zeros(d, int) if start is None else np.ceil(np.asarray(start) - 1e-9).astype(int)
        hi = np.asarray(image.size) if end is None else np.ceil(np.asarray(end) - 1e-9).astype(int)
        empty = [_AXES[i] for i in range(d) if hi[i] <= lo[i]]
        if empty:  # an inverted or empty box, not one outside the image
            raise ParameterError(
                f"crop_box: end must be past start along {', '.join(empty)} (index units, end excluded): the box "
                f"{lo.tolist()}..{hi.tolist()} (x, y, z) holds no voxel; swap start and end, or use units='mm'")
        return _crop_index(image, lo, hi)
    blo, bhi = image.bounds()
    p0 = blo if start is None else np.asarray(start, float)
    p1 = bhi if end is None else np.asarray(end, float)
    box_lo, box_hi = np.minimum(p0, p1), np.maximum(p0, p1)
    corners = np.array(list(itertools.product(*zip(box_lo, box_hi))))
    idx = image.physical_to_index(corners)
    lo = np.ceil(idx.min(axis=0) - 1e-6).astype(int)
    hi = np.floor(idx.max(axis=0) + 1e-6).astype(int) + 1
    return _crop_index(image, lo, hi)


@stage("Pad", group="preprocess", preview=None, accepts=("intensity", "label"), resamples=True,
       width=Int(0, 512, 8, unit="voxels", help="voxels added on every side of every axis"),
       mode=Choice(("constant", "edge", "reflect"), "constant",
                   help="constant: the image minimum (0 for label maps); edge: repeat the border; reflect: mirror"))
def pad(image: Image, *, width: int = 8, mode: str = "constant") -> Image:
    """Pad every side with ``width`` voxels; the origin moves so nothing moves in space.

    Parameters
    ----------
    image : Image
    width : int
    mode : {'constant', 'edge', 'reflect'}

    Returns
    -------
    Image
        A larger grid: same spacing and direction.

    Examples
    --------
    >>> import numpy as np
    >>> from medlab import Image
    >>> out = pad(Image(np.ones((4, 4)), spacing=(2, 2)), width=1)
    >>> out.size, out.origin
    ((6, 6), (-2.0, -2.0))
    """
    arr = image.array
    if mode == "reflect" and min(arr.shape[: image.ndim]) < 2:
        raise ImageError("pad: mode 'reflect' needs at least 2 voxels along each axis; use 'edge'")
    widths = [(width, width)] * image.ndim + [(0, 0)] * (arr.ndim - image.ndim)
    size = [n + 2 * width for n in image.size]
    check_allocation(voxel_count(size) * arr.itemsize * (arr.shape[-1] if image.rgb else 1),
                     f"pad: width={width} gives an output of {size_text(size)} voxels (from {size_text(image.size)}), which",
                     "choose a smaller width", ParameterError)
    report(0.0, "pad")
    if mode == "constant":
        fill = 0 if image.is_label else arr.min()
        out = np.pad(arr, widths, mode="constant", constant_values=fill)
    else:
        out = np.pad(arr, widths, mode="symmetric" if mode == "reflect" else "edge")
    report(1.0, "pad")
    origin = image.index_to_physical([-width] * image.ndim)
    return Image(out, image.spacing, origin, image.direction, kind=image.kind, labels=image.labels,
                 metadata=image.metadata, rgb=image.rgb)


_CODES = ("RAS", "LPS", "LAS", "RPI", "LPI", "RAI", "LAI", "RPS") + tuple(
    sorted(_ORIENT_CODES - {"RAS", "LPS", "LAS", "RPI", "LPI", "RAI", "LAI", "RPS"}))


@stage("Reorient", group="preprocess", preview=None, dims=(3,), accepts=("intensity", "label"), resamples=True,
       orientation=Choice(_CODES, "RAS",
                          help="where the x, y, z index axes should point (ITK letters: LPS = identity)"))
def reorient(image: Image, *, orientation: str = "RAS") -> Image:
    """Permute and flip the voxel axes to a standard orientation, without interpolation.

    Letters follow ITK/DICOM: each tells the direction an index axis increases towards, so
    ``'LPS'`` is DICOM's patient frame and ``'RAS'`` the usual neuroimaging (NIfTI) layout.
    Voxel values are only moved, and the direction and origin are updated, so every structure
    stays at the same physical point.

    Parameters
    ----------
    image : Image
        3D image or label map.
    orientation : str
        A three-letter code.

    Returns
    -------
    Image
        Same voxels in another order, same spacing up to permutation.

    Examples
    --------
    >>> import numpy as np
    >>> from medlab import Image
    >>> out = reorient(Image(np.zeros((3, 4, 5))), orientation="RAS")
    >>> out.orientation, out.size
    ('RAS', (5, 4, 3))
    """
    report(0.0, "reorient")
    out = image.reorient(orientation)
    report(1.0, "reorient")
    return out

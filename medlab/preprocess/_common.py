"""Helpers shared by the preprocessing stages (not public)."""

from __future__ import annotations

import numpy as np

from ..errors import ImageError
from ..image import Image

_FLOAT32_MAX = float(np.finfo(np.float32).max)


def as_float(image: Image) -> np.ndarray:
    """The voxels as float32 (a copy only when the dtype changes).

    Float64 values beyond float32's range would become infinite here and then NaN in every
    output voxel of a filter: they are refused instead.
    """
    a = image.array
    if a.dtype.kind == "f" and a.dtype.itemsize > 4 and a.size:
        top = float(np.max(np.abs(a)))
        if top > _FLOAT32_MAX:
            raise ImageError(
                f"image values reach {top:.3g}, beyond the range medlab's filters compute in (float32, "
                f"±{_FLOAT32_MAX:.3g}); rescale the image first, e.g. image.with_array(image.array / {top:.0e})"
            )
    return np.asarray(a, dtype=np.float32)


def to_unit_range(array: np.ndarray) -> tuple[np.ndarray, float]:
    """``array`` (float32) times a power of two that brings huge or tiny magnitudes near 1, and that factor.

    Filters that square intensities (gradients, patch distances, range kernels) overflow
    float32 above about 1e19 and underflow below 1e-19. Multiplying by a power of two is exact,
    so they run on the scaled voxels and :func:`from_unit_range` gives the same result as
    an exact computation would. Magnitudes between 2^-40 and 2^40 (every real image) are
    returned unchanged, with factor 1.
    """
    top = float(np.max(np.abs(array))) if array.size else 0.0
    if top == 0 or not np.isfinite(top) or 2.0**-40 <= top <= 2.0**40:
        return array, 1.0
    scale = float(2.0 ** -np.ceil(np.log2(top)))
    return (array.astype(np.float64) * scale).astype(np.float32), scale


def from_unit_range(array: np.ndarray, scale: float) -> np.ndarray:
    """Undo :func:`to_unit_range` (float32 out)."""
    if scale == 1.0:
        return array
    return (array.astype(np.float64) / scale).astype(np.float32)


def float_sitk(image: Image, array: np.ndarray | None = None):
    """A float32 ``SimpleITK.Image`` with the image's geometry (and ``array``'s voxels when given)."""
    import SimpleITK as sitk

    out = sitk.GetImageFromArray(np.ascontiguousarray(as_float(image) if array is None else array, dtype=np.float32))
    out.SetSpacing(image.spacing)
    out.SetOrigin(image.origin)
    out.SetDirection(tuple(image.direction.ravel()))
    return out


def same_grid_result(image: Image, result, *, dtype=np.float32) -> Image:
    """Voxels of a SimpleITK result (or an array) on the input's exact grid."""
    import SimpleITK as sitk

    arr = result if isinstance(result, np.ndarray) else sitk.GetArrayFromImage(result)
    return image.with_array(arr.astype(dtype, copy=False) if dtype is not None else arr)


def sitk_image(image: Image, sitk_result) -> Image:
    """An :class:`Image` from a SimpleITK result on a new grid, keeping kind, labels, metadata."""
    return Image.from_sitk(sitk_result, kind=image.kind, labels=image.labels, metadata=image.metadata)


def foreground_mask(array: np.ndarray) -> np.ndarray:
    """Voxels above Otsu's threshold (computed on at most ~2 million samples)."""
    from skimage.filters import threshold_otsu

    step = max(1, array.size // 2_000_000)
    sample = array.reshape(-1)[::step]
    if sample.min() == sample.max():
        return np.zeros(array.shape, bool)
    return array > threshold_otsu(sample)


def slice_axis(image: Image) -> int:
    """Array axis along which a 3D volume is processed slice by slice: the thickest one.

    Ties go to z (array axis 0), so an isotropic volume is processed in axial slices.
    """
    sp = image.spacing[::-1]  # array order (z, y, x)
    return int(np.argmax(np.asarray(sp) > max(sp) - 1e-6 * max(sp)))


def check_size(image: Image, minimum: int, what: str) -> None:
    if min(image.size) < minimum:
        raise ImageError(f"{what} needs at least {minimum} voxels along each axis; got size {image.size}")

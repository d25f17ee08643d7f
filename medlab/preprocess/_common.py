"""Helpers shared by the preprocessing stages (not public)."""

from __future__ import annotations

import numpy as np

from ..errors import ImageError
from ..image import Image


def as_float(image: Image) -> np.ndarray:
    """The voxels as float32 (a copy only when the dtype changes)."""
    return np.asarray(image.array, dtype=np.float32)


def float_sitk(image: Image):
    """A float32 ``SimpleITK.Image`` with the image's geometry."""
    import SimpleITK as sitk

    out = sitk.GetImageFromArray(np.ascontiguousarray(as_float(image)))
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

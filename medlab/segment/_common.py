"""Helpers shared by the segmentation stages (not public): seeds in mm to voxels, label maps
with names and colours, intensity intervals capped by background points, components."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import ImageError, ParameterError
from ..image import Image, label_color

# cc3d (connected-components-3d) and fill-voids instead of scipy / scikit-image / SimpleITK,
# measured on this machine (2 cores, best of 3, random blobs filling ~18 % of the volume):
#
#   volume (z, y, x)   label binary: scipy / skimage / sitk / cc3d   multi-label: skimage / cc3d
#   25×256×256         20 / 20 / 27 / 9 ms                            50 / 24 ms
#   128×256×256        169 / 280 / 233 / 107 ms                       356 / 197 ms
#
#   volume (z, y, x)   fill holes: scipy / sitk BinaryFillhole / fill_voids (identical results)
#   25×256×256         101 / 147 / 32 ms
#   128×256×256        946 / 824 / 221 ms
#
# Region growing as "voxels in the interval, connected to a seed" (a mask, then cc3d) took
# 9-11 ms on the 256×256×25 brain MRI where SimpleITK's ConnectedThreshold took 0.5-87 ms
# (it walks only the grown region, so it wins for tiny regions and loses 8x on large ones).

FOREGROUND = 1
FOREGROUND_COLOUR = label_color(FOREGROUND)


def point_index(image: Image, point: Sequence[float]) -> tuple[int, ...]:
    """The array index ``[z, y, x]`` (or ``[y, x]``) of the voxel nearest a point in mm.

    A 2D image takes 3D points with z = 0 (as :class:`medlab.stage.Points` accepts them).
    The point is inside the image (the stage wrapper checked it).
    """
    p = np.asarray(point[: image.ndim], dtype=float)
    idx = np.rint(image.physical_to_index(p)).astype(int)
    idx = np.clip(idx, 0, np.asarray(image.size) - 1)
    return tuple(int(i) for i in idx[::-1])


def point_indices(image: Image, points) -> list[tuple[int, ...]]:
    return [point_index(image, p) for p in points]


def where(point: Sequence[float]) -> str:
    return "(" + ", ".join(f"{c:.1f}" for c in point) + ") mm"


def radius_voxels(image: Image, radius_mm: float) -> tuple[int, ...]:
    """Per-axis radius in voxels, array order ``[z, y, x]``, of a ball of ``radius_mm``.

    An axis with one voxel (a one-slice slab) gets radius 0: there is nothing to reach.
    """
    spacing = np.asarray(image.spacing[::-1], dtype=float)
    r = np.rint(radius_mm / spacing).astype(int)
    r[np.asarray(image.shape[: image.ndim]) == 1] = 0
    return tuple(int(v) for v in r)


def ball(radius: Sequence[int]) -> np.ndarray:
    """A boolean ellipsoid with per-axis radii in voxels (array order)."""
    grids = np.ogrid[tuple(slice(-r, r + 1) for r in radius)]
    dist = sum((g / max(r, 1e-9)) ** 2 if r else (g * 0.0) for g, r in zip(grids, radius))
    return np.asarray(dist <= 1.0)


def neighbourhood(image: Image, index: tuple[int, ...], radius: Sequence[int]) -> np.ndarray:
    """The voxel values inside the ellipsoid of ``radius`` (voxels) around ``index``, clipped
    to the image."""
    lo = [max(i - r, 0) for i, r in zip(index, radius)]
    hi = [min(i + r + 1, n) for i, r, n in zip(index, radius, image.shape)]
    box = image.array[tuple(slice(a, b) for a, b in zip(lo, hi))]
    # the ellipsoid over the box only: the whole ball of a 20 mm radius on 0.01 mm voxels would
    # be 4001³ voxels, most of them outside the image
    grids = np.ogrid[tuple(slice(a - i, b - i) for a, b, i in zip(lo, hi, index))]
    dist = sum((g / max(r, 1e-9)) ** 2 if r else (g * 0.0) for g, r in zip(grids, radius))
    return np.asarray(box, dtype=np.float64)[np.asarray(dist <= 1.0)]


def label_map(image: Image, array: np.ndarray, labels: Mapping[int, tuple[str, tuple[int, int, int]]],
              **facts) -> Image:
    """A label :class:`Image` on ``image``'s grid with names and colours.

    The input's metadata is kept (source, modality) except intensity units and display
    window; ``facts`` (thresholds, method ...) are added so that a widget can show them.
    """
    meta = {k: v for k, v in image.metadata.items() if k not in ("units", "window", "thresholds")}
    meta.update(facts)
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    return image.with_array(array, kind="label", labels=dict(labels), metadata=meta)


def region_label(image: Image, mask: np.ndarray, name: str, **facts) -> Image:
    """A one-label map: ``mask`` as label 1 named ``name``."""
    return label_map(image, mask.astype(np.uint8), {FOREGROUND: (name, FOREGROUND_COLOUR)}, **facts)


def intensity_units(image: Image) -> str:
    units = image.metadata.get("units")
    return f" {units}" if units else ""


def capped_interval(stage: str, image: Image, lower: float, upper: float, seed_values: Sequence[float],
                    background_values: Sequence[float]) -> tuple[float, float]:
    """The interval ``[lower, upper]`` shrunk so that it stops halfway between the seeds'
    intensities and each background point's intensity (the decision boundary between the
    two when both are equally noisy).

    A background point whose intensity lies between the darkest and the brightest seed
    cannot be separated by an interval: it is refused, naming the point.
    """
    s_lo, s_hi = min(seed_values), max(seed_values)
    for i, b in enumerate(background_values, 1):
        if s_lo <= b <= s_hi:
            raise ParameterError(
                f"{stage}: background point {i} has intensity {b:.4g}{intensity_units(image)}, inside the range of "
                f"the seeds ({s_lo:.4g} to {s_hi:.4g}); an intensity interval cannot keep the seeds and leave it "
                "out. Move the background point, or remove the seed it resembles")
        if b < s_lo:
            lower = max(lower, (b + s_lo) / 2)
        else:
            upper = min(upper, (b + s_hi) / 2)
    return lower, upper


def check_seeds_apart(stage: str, image: Image, seeds, background) -> None:
    """Refuse a foreground seed that falls on the same voxel as a background point."""
    taken = {point_index(image, b): j for j, b in enumerate(background, 1)}
    for i, s in enumerate(seeds, 1):
        j = taken.get(point_index(image, s))
        if j is not None:
            raise ParameterError(
                f"{stage}: seed {i} at {where(s)} and background point {j} at {where(background[j - 1])} fall on "
                "the same voxel; a voxel cannot be both foreground and background. Move one of them")


def check_seeds_inside(stage: str, image: Image, seeds, mask: np.ndarray, lower: float, upper: float,
                       background) -> None:
    """Refuse a seed whose own voxel is outside the grown interval (the background points
    left it out): it would grow nothing, and the user should know why."""
    for i, (s, idx) in enumerate(zip(seeds, point_indices(image, seeds)), 1):
        if not mask[idx]:
            value = float(image.array[idx])
            cause = " because of the background points" if background else ""
            raise ParameterError(
                f"{stage}: seed {i} at {where(s)} has intensity {value:.4g}{intensity_units(image)}, outside the "
                f"interval {lower:.4g} to {upper:.4g}{intensity_units(image)} that region growing keeps{cause}; "
                "the seed lies in what counts as background. Move it, raise the tolerance or move the "
                "background points")


def components_at(mask: np.ndarray, indices: Sequence[tuple[int, ...]], connectivity: str) -> np.ndarray:
    """The connected components of ``mask`` that contain at least one of ``indices``."""
    ids = label_components(mask, connectivity)
    keep = np.unique([ids[i] for i in indices])
    keep = keep[keep > 0]
    return np.isin(ids, keep) if keep.size else np.zeros(mask.shape, bool)


CONNECTIVITY = ("face", "full")


def label_components(array: np.ndarray, connectivity: str = "face") -> np.ndarray:
    """Connected components (cc3d): touching voxels of the same non-zero value share an id.

    ``'face'`` joins voxels sharing a face (6 neighbours in 3D, 4 in 2D); ``'full'`` also
    edges and corners (26 / 8).
    """
    import cc3d

    arr = np.ascontiguousarray(array)
    if not arr.flags.writeable:  # cc3d's typed memoryviews refuse read-only buffers (Image arrays are)
        arr = arr.copy()
    if arr.dtype == bool:
        arr = arr.view(np.uint8)
    if arr.ndim == 3:
        conn = 6 if connectivity == "face" else 26
    else:
        conn = 4 if connectivity == "face" else 8
    return cc3d.connected_components(arr, connectivity=conn)


def check_not_constant(stage: str, image: Image) -> None:
    a = image.array
    if a.size and a.min() == a.max():
        raise ImageError(f"{stage}: the image is constant ({float(a.min()):.4g} everywhere); there is nothing to "
                         "separate")

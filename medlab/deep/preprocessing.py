"""What happens to an image before the network sees it, recorded so inference repeats it exactly.

A preprocessing record is a plain dict stored in the checkpoint::

    {"channels": ["t1"],                         # what each input channel is (for people)
     "intensity": {"transform": "ScaleIntensityRangePercentiles",
                   "args": {"lower": 0.5, "upper": 99.5, "b_min": 0.0, "b_max": 1.0, "clip": True}},
     "direction": [[1, 0, 0], [0, 1, 0], [0, 0, 1]],   # the network grid's axes (LPS)
     "spacing": [1.5, 1.5, 2.0],                  # its voxel size in mm (x, y, z); None: keep
     "patch_size": [64, 64, 32],                  # training patch = sliding window (x, y, z)
     "overlap": 0.25}

Order, in training and at inference: (1) intensity normalisation by a MONAI transform on the
image's own voxels, so that percentiles are not diluted by padding; (2) resampling onto the
network grid (axes ``direction``, voxel size ``spacing``) that covers the image: this undoes
any obliquity, axis order or flips, and brings every image to the training resolution. The
network's class probabilities are resampled back onto the input's own grid (linear) before
the arg-max, so the label map comes back in the input's geometry. SimpleITK does the
resampling (MONAI's ``Spacing``/``Orientation`` work on RAS affines and snap oblique axes;
SimpleITK resamples directly between two physical grids, which is exactly the round trip needed).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import GeometryError, ImageError, ParameterError
from ..image import Image

# MONAI intensity transforms a checkpoint may name (an allow-list: a checkpoint is data, and
# must not be able to call arbitrary code).
_INTENSITY_TRANSFORMS = ("ScaleIntensityRangePercentiles", "ScaleIntensityRange", "NormalizeIntensity",
                         "ScaleIntensity")

INTENSITY_PRESETS: dict[str, dict[str, Any]] = {
    "percentile": {"transform": "ScaleIntensityRangePercentiles",
                   "args": {"lower": 0.5, "upper": 99.5, "b_min": 0.0, "b_max": 1.0, "clip": True}},
    "zscore": {"transform": "NormalizeIntensity", "args": {"nonzero": False}},
    "ct_lung": {"transform": "ScaleIntensityRange",
                "args": {"a_min": -1000.0, "a_max": 400.0, "b_min": 0.0, "b_max": 1.0, "clip": True}},
    "ct_soft_tissue": {"transform": "ScaleIntensityRange",
                       "args": {"a_min": -160.0, "a_max": 240.0, "b_min": 0.0, "b_max": 1.0, "clip": True}},
}
"""Intensity normalisations by name: ``percentile`` (MR and other arbitrary units: 0.5th to
99.5th percentile mapped to 0..1), ``zscore`` (zero mean, unit variance), ``ct_lung`` and
``ct_soft_tissue`` (fixed Hounsfield windows mapped to 0..1)."""


def intensity_record(intensity: str | Mapping[str, Any]) -> dict[str, Any]:
    """A checked intensity step: a preset name or ``{"transform": name, "args": {...}}``.

    Examples
    --------
    >>> intensity_record("ct_lung")["args"]["a_min"]
    -1000.0
    """
    if isinstance(intensity, str):
        if intensity not in INTENSITY_PRESETS:
            raise ParameterError(f"intensity must be one of {list(INTENSITY_PRESETS)} or "
                                 f"{{'transform': ..., 'args': {{...}}}}; got {intensity!r}")
        return {"transform": INTENSITY_PRESETS[intensity]["transform"],
                "args": dict(INTENSITY_PRESETS[intensity]["args"])}
    if not isinstance(intensity, Mapping) or intensity.get("transform") not in _INTENSITY_TRANSFORMS:
        raise ParameterError(f"intensity transform must be one of {list(_INTENSITY_TRANSFORMS)}; got {intensity!r}")
    args = intensity.get("args", {})
    # plain finite numbers, booleans, text or None only: a checkpoint is data, and its record
    # must save as JSON and reach MONAI as the values a person wrote
    plain = isinstance(args, Mapping) and all(
        isinstance(k, str) and (v is None or isinstance(v, (bool, str))
                                or (isinstance(v, numbers.Real) and math.isfinite(v)))
        for k, v in args.items())
    if not plain:
        raise ParameterError(f"intensity 'args' must be a dict of names to plain values (finite numbers, booleans, "
                             f"text); got {args!r:.200}")
    return {"transform": intensity["transform"], "args": dict(args)}


def normalise_intensity(array: np.ndarray, record: Mapping[str, Any]) -> np.ndarray:
    """Apply the recorded MONAI intensity transform to one channel's voxels (float32 out)."""
    import monai.transforms as mt

    step = intensity_record(record)
    try:
        transform = getattr(mt, step["transform"])(**step["args"])
        out = transform(np.array(array, np.float32)[None])  # a writable copy: the input stays untouched
    except (TypeError, ValueError) as exc:   # MONAI checks the arguments when it applies them
        raise ParameterError(f"intensity transform {step['transform']} cannot take {step['args']} ({exc})") from None
    out = np.asarray(out.detach().cpu().numpy() if hasattr(out, "detach") else out, np.float32)[0]
    if not np.all(np.isfinite(out)):  # a constant image gives 0/0 in a percentile range
        raise ImageError("intensity normalisation gave NaN or infinite values: is the image constant?")
    return out


@dataclass(frozen=True)
class NetworkGrid:
    """The voxel grid the network works on for one image: axes, spacing, origin and size (x, y, z)."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: np.ndarray
    same_as_input: bool

    def empty(self) -> Image:
        return Image(np.zeros(self.size[::-1], np.uint8), self.spacing, self.origin, self.direction)


def network_grid(image: Image, direction, spacing) -> NetworkGrid:
    """The grid with axes ``direction`` and voxel size ``spacing`` (None: the image's own,
    matched to the nearest axes) whose voxel centres cover every voxel centre of ``image``.

    When the image is already on such a grid, the grid is the image's own (no resampling).
    """
    d = image.ndim
    direction = np.asarray(direction, float).reshape(d, d)
    # which image axis runs along each network axis (a signed permutation for non-oblique images)
    alignment = np.abs(direction.T @ image.direction)
    own_spacing = np.asarray(image.spacing)[np.argmax(alignment, axis=1)]
    spacing = own_spacing if spacing is None else np.asarray(spacing, float)
    if np.allclose(direction, image.direction, atol=1e-5) and np.allclose(spacing, image.spacing, rtol=1e-5):
        return NetworkGrid(image.size, image.spacing, image.origin, image.direction, True)
    corners = np.array(np.meshgrid(*[[0, s - 1] for s in image.size], indexing="ij")).reshape(d, -1).T
    local = image.index_to_physical(corners) @ direction            # coordinates along the network axes
    lo, hi = local.min(axis=0), local.max(axis=0)
    size = np.ceil((hi - lo) / spacing - 1e-6).astype(int) + 1
    # centre the grid on the image's extent, so the overhang is shared by both ends
    start = lo - ((size - 1) * spacing - (hi - lo)) / 2
    origin = direction @ start
    return NetworkGrid(tuple(int(s) for s in size), tuple(float(s) for s in spacing),
                       tuple(float(o) for o in origin), direction, False)


def _resample(array: np.ndarray, source: Image, target: NetworkGrid | Image, *, nearest: bool, fill: float,
              extend: bool = False) -> np.ndarray:
    """``array`` on ``source``'s grid resampled onto ``target``'s; outside the source, ``fill``, or
    with ``extend`` the nearest edge value (as a network sees replicate padding)."""
    import SimpleITK as sitk

    src = sitk.GetImageFromArray(np.ascontiguousarray(array))
    src.SetSpacing(source.spacing)
    src.SetOrigin(source.origin)
    src.SetDirection(tuple(np.asarray(source.direction).ravel()))
    filt = sitk.ResampleImageFilter()
    filt.SetSize([int(s) for s in target.size])
    filt.SetOutputSpacing([float(s) for s in target.spacing])
    filt.SetOutputOrigin([float(o) for o in target.origin])
    filt.SetOutputDirection([float(v) for v in np.asarray(target.direction).ravel()])
    filt.SetInterpolator(sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear)
    filt.SetDefaultPixelValue(float(fill))
    filt.SetUseNearestNeighborExtrapolator(bool(extend))
    filt.SetOutputPixelType(src.GetPixelID())
    return sitk.GetArrayFromImage(filt.Execute(src))


def channels_on_one_grid(channels: Sequence[Image], what: str) -> list[Image]:
    """The channels of one case, the later ones resampled (linear) onto the first one's grid."""
    first = channels[0]
    out = [first]
    for i, ch in enumerate(channels[1:], 2):
        if ch.ndim != first.ndim:
            raise ImageError(f"{what}: channel {i} is {ch.ndim}D but channel 1 is {first.ndim}D")
        if ch.same_grid(first):
            out.append(ch)
            continue
        if not ch.overlaps(first):
            raise GeometryError(f"{what}: channel {i} does not overlap channel 1 in physical space "
                                f"({ch.describe()} vs {first.describe()})")
        arr = _resample(np.asarray(ch.array, np.float32), ch, first, nearest=False, fill=float(np.min(ch.array)))
        out.append(first.with_array(arr))
    return out


MAX_NETWORK_VOXELS = 2**28
"""Most voxels of an image on the network grid (1 GiB per channel in float32)."""


def to_network(channels: Sequence[Image], prep: Mapping[str, Any]) -> tuple[np.ndarray, NetworkGrid]:
    """Normalised channels on the network grid, ``[C, z, y, x]`` (``[C, y, x]`` in 2D), float32."""
    grid = network_grid(channels[0], prep["direction"], prep.get("spacing"))
    if math.prod(grid.size) * len(channels) > MAX_NETWORK_VOXELS:
        raise ImageError(f"the image would be {' x '.join(map(str, grid.size))} voxels on the network's grid "
                         f"({prep.get('spacing')} mm), more than {MAX_NETWORK_VOXELS} voxels: crop the image to "
                         "the region to segment, or use a model trained at a coarser voxel size")
    out = []
    for ch in channels:
        norm = normalise_intensity(ch.array, prep["intensity"])
        if not grid.same_as_input:
            norm = _resample(norm, channels[0], grid, nearest=False, fill=float(norm.min()), extend=True)
        out.append(norm)
    return np.stack(out).astype(np.float32, copy=False), grid


def labels_to_network(labels: Image, grid: NetworkGrid, reference: Image) -> np.ndarray:
    """A label map on the network grid of ``reference`` (nearest neighbour)."""
    if not labels.same_grid(reference):
        raise GeometryError(f"the label map is not on its image's grid ({labels.describe()} vs "
                            f"{reference.describe()}); resample it first (medlab.preprocess.resample_to)")
    if grid.same_as_input:
        return np.asarray(labels.array)
    return _resample(np.asarray(labels.array), reference, grid, nearest=True, fill=0)


def from_network(probabilities: np.ndarray, grid: NetworkGrid, image: Image) -> np.ndarray:
    """Class probabilities ``[K, ...]`` on the network grid, resampled (linear) onto ``image``'s grid."""
    if grid.same_as_input:
        return probabilities
    source = grid.empty()
    out = np.empty((probabilities.shape[0], *image.shape[: image.ndim]), np.float32)
    for k in range(probabilities.shape[0]):
        out[k] = _resample(np.ascontiguousarray(probabilities[k], np.float32), source, image,
                           nearest=False, fill=1.0 if k == 0 else 0.0)
    return out


def direction_of(images: Sequence[Image]) -> np.ndarray:
    """The network axes for a training set: the first image's axes snapped to the nearest patient
    axes (so an oblique training image does not tilt the grid of every later image)."""
    first = images[0].direction
    d = first.shape[0]
    snapped = np.zeros((d, d))
    for col in range(d):
        axis = int(np.argmax(np.abs(first[:, col])))
        snapped[axis, col] = np.sign(first[axis, col])
    if abs(np.linalg.det(snapped)) < 0.5:  # two columns snapped to one axis (45° obliquity)
        return np.eye(d)
    return snapped


def median_spacing(images: Sequence[Image], direction: np.ndarray) -> list[float]:
    """The median voxel size along each network axis over a training set (mm, x, y, z)."""
    per = []
    for im in images:
        alignment = np.abs(direction.T @ im.direction)
        per.append(np.asarray(im.spacing)[np.argmax(alignment, axis=1)])
    return [float(v) for v in np.median(np.array(per), axis=0)]


MAX_PATCH_VOXELS = 2**23
"""Largest training patch and sliding window, in voxels (about 200³)."""


def check_patch(patch, ndim: int, divisor: int, what: str = "patch_size") -> list[int]:
    """A training patch / sliding window: ``ndim`` whole voxel counts (x, y[, z]), multiples of
    the network's downsampling ``divisor``, at most :data:`MAX_PATCH_VOXELS` in all."""
    try:
        values = list(patch)
        ok = len(values) == ndim and all(
            not isinstance(v, (bool, np.bool_)) and isinstance(v, numbers.Real) and float(v).is_integer()
            for v in values)
        values = [int(v) for v in values] if ok else []
        ok = ok and all(divisor <= v <= 4096 and v % divisor == 0 for v in values)
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ParameterError(f"{what} must be {ndim} whole voxel counts (x, y{', z' if ndim == 3 else ''}), each a "
                             f"multiple of {divisor} (the network's downsampling); got {patch!r:.100}")
    if math.prod(values) > MAX_PATCH_VOXELS:
        raise ParameterError(f"{what} {values} is {math.prod(values)} voxels, more than {MAX_PATCH_VOXELS} (gigabytes "
                             "of activations on a CPU); use a smaller one")
    return values


def check_preprocessing(prep: Mapping[str, Any], config: Mapping[str, Any], *, source: str = "checkpoint") -> None:
    """Refuse a preprocessing record (from a checkpoint file) that inference cannot replay:
    each value is checked before it reaches MONAI, SimpleITK or an allocation.

    Raises
    ------
    ParameterError
        Naming the record's key and what it must be.
    """
    from .networks import size_divisor

    d = int(config["spatial_dims"])

    def bad(key: str, must: str) -> ParameterError:
        return ParameterError(f"{source}: its preprocessing {key!r} must be {must}; got {prep.get(key)!r:.100}. "
                              "Was the checkpoint edited or damaged?")

    try:
        intensity_record(prep["intensity"])
    except ParameterError as exc:
        raise ParameterError(f"{source}: {exc}") from None
    try:
        direction = np.asarray(prep["direction"], float).reshape(d, d)
        ok = bool(np.all(np.isfinite(direction))) and np.allclose(direction.T @ direction, np.eye(d), atol=1e-4)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise bad("direction", f"a {d} x {d} rotation (orthonormal) matrix")
    spacing = prep.get("spacing")
    if spacing is not None:
        try:
            ok = len(spacing) == d and all(not isinstance(v, bool) and isinstance(v, numbers.Real)
                                           and 0.01 <= v <= 100 for v in spacing)
        except TypeError:
            ok = False
        if not ok:
            raise bad("spacing", f"None or {d} voxel sizes in mm (0.01 to 100)")
    try:
        check_patch(prep["patch_size"], d, size_divisor(config), "patch_size")
    except ParameterError as exc:
        raise ParameterError(f"{source}: its preprocessing {exc}") from None
    overlap = prep.get("overlap", 0.25)
    if isinstance(overlap, bool) or not isinstance(overlap, numbers.Real) or not 0 <= overlap < 1:
        raise bad("overlap", "a fraction in [0, 1)")
    values = prep["label_values"]
    ok = isinstance(values, (list, tuple)) and all(
        isinstance(v, int) and not isinstance(v, bool) and 0 < v < 2**31 for v in values) and len(set(values)) == len(values)
    if not ok:
        raise bad("label_values", "distinct positive integers below 2**31")

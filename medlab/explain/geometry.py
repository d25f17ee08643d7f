"""From the scan to the network input and back: every map comes home to the scan's own grid.

A checkpoint may record how its training images were prepared (``Checkpoint.preprocessing``)::

    {"intensity": {"transform": "ScaleIntensityRangePercentiles",
                   "args": {"lower": 0.5, "upper": 99.5, "b_min": 0.0, "b_max": 1.0, "clip": True}},
     "direction": [[1, 0, 0], [0, 1, 0], [0, 0, 1]],  # the network grid's axes (LPS); None: the scan's
     "spacing": [3.0, 3.0, 4.0],                      # its voxel size in mm (x, y, z); None: the scan's
     "size": [64, 64, 32],                            # fixed input size (x, y, z), centred; None: cover the scan
     "size_multiple": 4,                              # pad each size up to a multiple (pooling)
     "array_order": "zyx"}                            # tensor axes: "zyx" (medlab, SimpleITK) or "xyz" (MONAI loaders)

The keys ``intensity``, ``direction`` and ``spacing`` mean what they mean in
:mod:`medlab.deep`'s records, so a segmentation checkpoint trained there is explained on the
same grid it was trained on: the intensity step (its allow-list, presets and MONAI call) and
the physical resampling are :mod:`medlab.deep.preprocessing`'s own. What is added here is the
fixed input ``size``, the ``size_multiple`` padding, the tensor ``array_order`` and the way
back to the scan.

Order: (1) intensity normalisation on the scan's own voxels (a MONAI transform from an
allow-list: a checkpoint is data and must not name arbitrary code); (2) the **network grid**:
axes ``direction`` and voxel size ``spacing``, covering the scan (centred), or of a fixed
``size``, centred on the scan's centre, padded to ``size_multiple``. Reorientation,
resampling, cropping and padding are all one physical resampling from the scan to that grid
(SimpleITK, linear), so the way back is one physical resampling too: a map computed on the
network input is resampled (linear) from the network grid onto the scan's grid, which undoes
every reorientation, resampling, crop and pad at once. Scan voxels outside the network's
field of view (cropped away) get 0 and are counted in the map's metadata. When the network
grid *is* the scan's grid (a bare module, or a record that changes nothing) no resampling
happens at all, so the map is exactly what the attribution library returned.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..deep.preprocessing import _resample, intensity_record, normalise_intensity
from ..errors import ImageError, ParameterError
from ..image import Image

__all__ = ["NetworkInput", "network_input", "preprocessing_record"]

_KEYS = ("intensity", "direction", "spacing", "size", "size_multiple", "array_order", "channels", "patch_size",
         "overlap",
         # written by medlab.deep for its segmenters: they describe the outputs, not the input grid
         "label_values", "label_colours", "modality")


def preprocessing_record(*, intensity: Mapping[str, Any] | None = None, direction=None, spacing=None, size=None,
                         size_multiple: int = 1, array_order: str = "zyx") -> dict[str, Any]:
    """A checked preprocessing record (plain JSON values) to store in a checkpoint.

    Examples
    --------
    >>> rec = preprocessing_record(spacing=[3, 3, 4], size_multiple=4,
    ...                            intensity={"transform": "ScaleIntensityRangePercentiles",
    ...                                       "args": {"lower": 0.5, "upper": 99.5, "b_min": 0.0, "b_max": 1.0}})
    >>> rec["spacing"], rec["array_order"]
    ([3.0, 3.0, 4.0], 'zyx')
    """
    rec = {"intensity": None if intensity is None else dict(intensity),
           "direction": None if direction is None else np.asarray(direction, float).tolist(),
           "spacing": None if spacing is None else [float(s) for s in spacing],
           "size": None if size is None else [int(s) for s in size],
           "size_multiple": int(size_multiple), "array_order": array_order}
    check_record(rec)
    return rec


def check_record(record: Mapping[str, Any], source: str = "preprocessing record") -> dict[str, Any]:
    """Validate a record; ParameterError naming the key."""
    rec = dict(record or {})
    unknown = sorted(set(rec) - set(_KEYS))
    if unknown:
        raise ParameterError(f"{source}: unknown key(s) {unknown}; known: {list(_KEYS)}")
    if rec.get("intensity") is not None:
        try:   # medlab.deep's allow-list of MONAI transforms (a checkpoint is data, never code), or a preset name
            rec["intensity"] = intensity_record(rec["intensity"])
        except ParameterError as exc:
            raise ParameterError(f"{source}: 'intensity': {exc}") from None
    if rec.get("array_order", "zyx") not in ("zyx", "xyz"):
        raise ParameterError(f"{source}: 'array_order' must be 'zyx' or 'xyz'; got {rec.get('array_order')!r}")
    m = rec.get("size_multiple", 1)
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= 256:
        raise ParameterError(f"{source}: 'size_multiple' must be an integer in [1, 256]; got {m!r}")
    for key in ("spacing", "size"):
        v = rec.get(key)
        if v is not None and not (isinstance(v, (list, tuple)) and all(
                isinstance(s, (int, float)) and not isinstance(s, bool) and s > 0 for s in v)):
            raise ParameterError(f"{source}: {key!r} must be a list of positive numbers (x, y, z) or None; got {v!r}")
    return rec


@dataclass
class NetworkInput:
    """An image as the network sees it, and the way back.

    Attributes
    ----------
    tensor : torch.Tensor
        ``[1, C, *spatial]`` float32, spatial axes in ``array_order``.
    grid : Image
        An image (zeros) on the network grid: size, spacing, origin, direction.
    scan : Image
        The scan the map must come back to.
    same_grid : bool
        The network grid is the scan's grid (no resampling either way).
    array_order : str
    """

    tensor: Any
    grid: Image
    scan: Image
    same_grid: bool
    array_order: str = "zyx"
    intensity: str = "none"

    @property
    def spacing_array_order(self) -> np.ndarray:
        """Voxel size (mm) along each tensor spatial axis."""
        sp = np.asarray(self.grid.spacing, float)
        return sp[::-1] if self.array_order == "zyx" else sp

    def to_array(self, tensor_map) -> np.ndarray:
        """A ``[*spatial]`` map in tensor axis order as a numpy array in ``[z, y, x]`` order."""
        arr = np.asarray(tensor_map, dtype=np.float32)
        return arr if self.array_order == "zyx" else np.ascontiguousarray(arr.transpose())

    def from_array(self, array: np.ndarray) -> np.ndarray:
        """A ``[z, y, x]`` array on the network grid in tensor axis order."""
        return array if self.array_order == "zyx" else np.ascontiguousarray(array.transpose())

    def to_scan(self, tensor_map, *, fill: float = 0.0) -> tuple[np.ndarray, float]:
        """A map on the network input (tensor axis order) resampled onto the scan's grid.

        Returns the ``[z, y, x]`` float32 array on the scan grid and the share of scan voxels
        outside the network's field of view (given ``fill``).
        """
        arr = self.to_array(tensor_map)
        if self.same_grid:
            return arr.astype(np.float32, copy=False), 0.0
        out = resample_array(arr, self.grid, self.scan, nearest=False, fill=fill)
        return out.astype(np.float32, copy=False), self.outside_share()

    def outside_share(self) -> float:
        """Share of the scan's voxels whose centres lie outside the network grid (cropped away)."""
        if self.same_grid:
            return 0.0
        # The scan's voxel centres fill a parallelepiped whose corners are its corner voxels, and the
        # network grid's inside ([-0.5, size - 0.5) in continuous index, SimpleITK's rule) is convex:
        # when every corner is inside, every voxel is, without resampling a volume of ones.
        s = self.scan
        corners = np.array(np.meshgrid(*[[0, n - 1] for n in s.size], indexing="ij")).reshape(s.ndim, -1).T
        index = self.grid.physical_to_index(s.index_to_physical(corners))
        if np.all(index >= -0.5 + 1e-6) and np.all(index < np.asarray(self.grid.size) - 0.5 - 1e-6):
            return 0.0
        ones = np.ones(self.grid.shape[: self.grid.ndim], np.uint8)
        inside = resample_array(ones, self.grid, self.scan, nearest=True, fill=0)
        return float(1.0 - np.count_nonzero(inside) / inside.size)

    def scan_to_network(self, array: np.ndarray, *, nearest: bool, fill: float = 0.0, source: Image | None = None) -> np.ndarray:
        """An array on ``source``'s grid (default the scan's) on the network grid, tensor axis order."""
        src = self.scan if source is None else source
        if self.same_grid and (source is None or source.same_grid(self.scan)):
            return self.from_array(np.asarray(array))
        return self.from_array(resample_array(np.asarray(array), src, self.grid, nearest=nearest, fill=fill))

    def footprint(self) -> np.ndarray:
        """Network voxels (tensor axis order) that lie within the scan (bool)."""
        if self.same_grid:
            return np.ones(self.tensor.shape[2:], bool)
        ones = np.ones(self.scan.shape[: self.scan.ndim], np.uint8)
        return self.scan_to_network(ones, nearest=True) > 0

    def physical_points(self) -> np.ndarray:
        """Physical positions (mm, LPS) of every network voxel, ``[*spatial, d]`` in tensor axis order."""
        g = self.grid
        idx = np.stack(np.meshgrid(*[np.arange(s) for s in g.size], indexing="ij"), axis=-1)  # [x, y, z, d]
        pts = g.index_to_physical(idx.reshape(-1, g.ndim)).reshape(*g.size, g.ndim)
        return pts if self.array_order == "xyz" else np.ascontiguousarray(pts.transpose(*range(g.ndim)[::-1], g.ndim))


def resample_array(array: np.ndarray, source: Image, target: Image, *, nearest: bool, fill: float) -> np.ndarray:
    """``array`` (on ``source``'s grid) resampled through physical space onto ``target``'s grid
    (SimpleITK, linear or nearest; ``fill`` outside ``source``): :mod:`medlab.deep`'s resampling."""
    if array.dtype == bool:   # SimpleITK has no boolean pixel type
        return _resample(array.astype(np.uint8), source, target, nearest=True, fill=fill) != 0
    return _resample(array, source, target, nearest=nearest, fill=fill)


def _normalise(array: np.ndarray, step: Mapping[str, Any] | None, source: str) -> np.ndarray:
    if step is None:
        return np.asarray(array, np.float32)
    try:
        return normalise_intensity(array, step)
    except (ParameterError, ImageError) as exc:
        raise type(exc)(f"{source}: {exc}") from None


def _grid(image: Image, rec: Mapping[str, Any], source: str) -> tuple[Image, bool]:
    d = image.ndim
    direction = rec.get("direction")
    direction = image.direction if direction is None else np.asarray(direction, float)
    if direction.shape != (d, d):
        raise ImageError(f"{source}: the network grid is {direction.shape[0]}D (its 'direction') but the image is {d}D")
    alignment = np.abs(direction.T @ image.direction)
    own_spacing = np.asarray(image.spacing)[np.argmax(alignment, axis=1)]
    spacing = own_spacing if rec.get("spacing") is None else np.asarray(rec["spacing"], float)
    if len(spacing) != d:
        raise ImageError(f"{source}: the network grid has {len(spacing)} spacing values but the image is {d}D")
    multiple = int(rec.get("size_multiple", 1) or 1)
    same_axes = np.allclose(direction, image.direction, atol=1e-6) and np.allclose(spacing, image.spacing, rtol=1e-6)
    if rec.get("size") is None and same_axes and all(s % multiple == 0 for s in image.size):
        return image, True
    corners = np.array(np.meshgrid(*[[0, s - 1] for s in image.size], indexing="ij")).reshape(d, -1).T
    local = image.index_to_physical(corners) @ direction  # coordinates along the network axes
    lo, hi = local.min(axis=0), local.max(axis=0)
    if rec.get("size") is not None:
        size = np.asarray(rec["size"], int)
        if len(size) != d:
            raise ImageError(f"{source}: the network input size {list(size)} is {len(size)}D but the image is {d}D")
    else:
        size = np.ceil((hi - lo) / spacing - 1e-6).astype(int) + 1
    size = -(-size // multiple) * multiple
    steps = (hi - lo) / spacing
    on_lattice = np.allclose(alignment.max(axis=1), 1.0, atol=1e-6) and np.allclose(steps, np.round(steps), atol=1e-4)
    if on_lattice:  # a reorientation, crop or pad: keep voxel centres on the scan's (no interpolation)
        start = lo - ((size - (np.round(steps).astype(int) + 1)) // 2) * spacing
    else:
        start = (lo + hi) / 2 - (size - 1) * spacing / 2  # centred on the scan's extent
    origin = direction @ start
    grid = Image(np.zeros(tuple(int(s) for s in size[::-1]), np.uint8), spacing, origin, direction)
    return grid, grid.same_grid(image, tol=1e-6)


def network_input(image: Image, record: Mapping[str, Any] | None, *, channels: int = 1,
                  source: str = "model") -> NetworkInput:
    """The scan as a ``[1, C, *spatial]`` tensor on the network grid of ``record``.

    Parameters
    ----------
    image : Image
        The scan (intensity).
    record : mapping or None
        The checkpoint's preprocessing (see the module docstring); None or empty: the voxels
        as they are, on the scan's own grid.
    channels : int
        Channels the network takes; a grey image is repeated when it takes more (3 for
        networks trained on colour pictures).
    source : str
        Named in error messages.

    Examples
    --------
    >>> import numpy as np
    >>> from medlab import Image
    >>> net_in = network_input(Image(np.zeros((6, 8, 8), np.float32), spacing=(1, 1, 2)), {"spacing": [2, 2, 2]})
    >>> tuple(net_in.tensor.shape), net_in.grid.spacing
    ((1, 1, 6, 5, 5), (2.0, 2.0, 2.0))
    """
    import torch

    rec = check_record(record or {}, f"{source} preprocessing record")
    norm = _normalise(image.array, rec.get("intensity"), source)
    grid, same = _grid(image, rec, source)
    if not same:
        fill = float(norm.min())  # the darkest value: background, as the padding in training
        norm = resample_array(norm, image, grid, nearest=False, fill=fill)
    order = rec.get("array_order", "zyx")
    arr = norm if order == "zyx" else norm.transpose()
    tensor = torch.from_numpy(np.array(arr, np.float32, copy=True, order="C"))[None, None]
    if channels > 1:
        tensor = tensor.repeat(1, channels, *[1] * image.ndim)
    step = rec.get("intensity")
    return NetworkInput(tensor, grid, image, same, order, "none" if step is None else step["transform"])

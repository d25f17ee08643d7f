"""Pixels for people: display orientation, slices, window/level, overlays and PNG encoding.

Shared by the notebook viewer (``medlab.widgets.Viewer``), reports and the static thumbnail
that a bare ``Image`` shows in a notebook. Nothing here imports Jupyter.

Display convention (radiological)
---------------------------------
A 3D image is first put in *display orientation* by :func:`display_image`: its index axes are
permuted and flipped (no interpolation, a numpy view) so that index ``(i, j, k)`` increases
towards the patient's Left, Posterior and Superior (LPS; the nearest such axes for an oblique
image). Slices of that display volume ``D`` (array ``D[k, j, i]``) are then:

=========  ====================  ==============  =============  ==================  ===============
plane      array                 screen left     screen right   screen top          screen bottom
=========  ====================  ==============  =============  ==================  ===============
axial      ``D[index]``          R               L              A                   P
coronal    ``D[::-1, index, :]`` R               L              S                   I
sagittal   ``D[::-1, :, index]`` A               P              S                   I
=========  ====================  ==============  =============  ==================  ===============

so a slice's pixel ``(row, col)`` is display index ``(col, row, index)`` (axial),
``(col, index, nk - 1 - row)`` (coronal) or ``(index, col, nk - 1 - row)`` (sagittal).
Pixels are shown with their physical size (``plane_spacing``), so anisotropic voxels are
stretched, never squashed.

Window/level maps a value ``x`` to ``floor(clip((x - (level - window / 2)) * (255 / window),
0, 255) + 0.5)`` in float64 arithmetic (the viewer's JavaScript uses the same expression).
"""

from __future__ import annotations

import base64
import html
import io
import itertools
from collections.abc import Mapping

import numpy as np

from .errors import GeometryError, ImageError, ParameterError
from .image import Image, as_image

PLANES = ("axial", "coronal", "sagittal")

#: Standard CT display windows, ``name: (window, level)`` in HU.
CT_PRESETS: dict[str, tuple[float, float]] = {
    "brain": (80.0, 40.0),
    "subdural": (215.0, 75.0),
    "lung": (1500.0, -600.0),
    "mediastinum": (350.0, 50.0),
    "abdomen": (400.0, 50.0),
    "bone": (1800.0, 400.0),
}

#: Orientation letters at the (left, right, top, bottom) edges of each plane.
EDGE_LETTERS: dict[str, tuple[str, str, str, str]] = {
    "axial": ("R", "L", "A", "P"),
    "coronal": ("R", "L", "S", "I"),
    "sagittal": ("A", "P", "S", "I"),
}

# display axis (0=i along L, 1=j along P, 2=k along S) that each plane's slice index runs along
_NORMAL_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}


def _check_plane(plane: str) -> str:
    if plane not in PLANES:
        raise ParameterError(f"plane must be one of {PLANES}; got {plane!r}")
    return plane


def is_ct(image: Image) -> bool:
    """Whether an image holds CT values in HU (by modality or units metadata)."""
    return str(image.metadata.get("modality", "")).upper() == "CT" or image.metadata.get("units") == "HU"


# ---------------------------------------------------------------------------- orientation
def _nearest_axes(direction: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """For each patient axis (L, P, S), the index axis nearest to it and its sign."""
    d = direction.shape[0]
    best = max(itertools.permutations(range(d)), key=lambda p: sum(abs(direction[a, p[a]]) for a in range(d)))
    signs = tuple(1 if direction[a, best[a]] > 0 else -1 for a in range(d))
    return best, signs


def display_image(image: Image) -> Image:
    """The same image with index axes permuted/flipped to point towards L, P, S.

    No voxel is interpolated and the array is a numpy view (no copy). For an oblique image the
    nearest axes are used and the result's direction stays oblique. A 2D image gets a single
    slice (``[1, y, x]``, 1 mm thick) and is returned with its rows and columns as stored.

    Examples
    --------
    >>> import numpy as np
    >>> img = Image(np.zeros((3, 4, 5)), direction=np.diag([-1, 1, 1]))  # x towards R
    >>> disp = display_image(img)
    >>> disp.orientation, disp.shape
    ('LPS', (3, 4, 5))
    """
    if image.ndim == 2:
        return image
    perm, signs = _nearest_axes(image.direction)
    # array axes are [z, y, x] = index axes (2, 1, 0); display array is [k(S), j(P), i(L)]
    arr = image.array.transpose([2 - perm[a] for a in (2, 1, 0)])
    flips = tuple(slice(None, None, -1) if signs[a] < 0 else slice(None) for a in (2, 1, 0))
    arr = arr[flips]
    spacing = np.array([image.spacing[perm[a]] for a in range(3)])
    direction = np.stack([image.direction[:, perm[a]] * signs[a] for a in range(3)], axis=1)
    corner = [0 if signs[a] > 0 else image.size[perm[a]] - 1 for a in range(3)]
    index0 = np.zeros(3)
    for a in range(3):
        index0[perm[a]] = corner[a]
    origin = image.index_to_physical(index0)
    return Image(arr, spacing, origin, direction, kind=image.kind, labels=image.labels, metadata=image.metadata)


def display_array(image: Image) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Display-oriented voxels ``[k, j, i]`` (``[k, j, i, c]`` for colour) and spacing ``(si, sj, sk)``.

    A 2D image is one axial slice ``[1, y, x]`` shown with its rows and columns as stored.

    Examples
    --------
    >>> import numpy as np
    >>> arr, sp = display_array(Image(np.zeros((4, 5)), spacing=(0.5, 0.25)))
    >>> arr.shape, sp
    ((1, 4, 5), (0.5, 0.25, 1.0))
    """
    if image.ndim == 2:
        return image.array[None], (image.spacing[0], image.spacing[1], 1.0)
    disp = display_image(image)
    return disp.array, tuple(float(s) for s in disp.spacing)


def display_to_index(image: Image) -> np.ndarray:
    """``4x4`` matrix mapping a display index ``(i, j, k, 1)`` to the original ``(x, y, z, 1)`` index.

    Examples
    --------
    >>> import numpy as np
    >>> img = Image(np.zeros((3, 4, 5)), direction=np.diag([1, -1, 1]))
    >>> display_to_index(img) @ [0, 0, 0, 1]
    array([0., 3., 0., 1.])
    """
    if image.ndim == 2:
        m = np.eye(4)
        return m
    perm, signs = _nearest_axes(image.direction)
    m = np.zeros((4, 4))
    m[3, 3] = 1
    for a in range(3):
        m[perm[a], a] = signs[a]
        m[perm[a], 3] = 0 if signs[a] > 0 else image.size[perm[a]] - 1
    return m


def orientation_note(image: Image) -> str:
    """Empty, or a sentence saying the image is oblique and shown in the nearest orientation."""
    if image.ndim == 3 and image.is_oblique:
        return "oblique image: shown in the nearest axis-aligned orientation (edge letters approximate)"
    return ""


# ---------------------------------------------------------------------------- slices
def slice_count(image: Image, plane: str) -> int:
    """Number of slices of ``image`` in a display plane.

    Examples
    --------
    >>> import numpy as np
    >>> slice_count(Image(np.zeros((10, 20, 30))), "coronal")
    20
    """
    _check_plane(plane)
    image = as_image(image)
    if image.ndim == 2:
        return 1 if plane == "axial" else 0
    shape = display_array(image)[0].shape  # [k, j, i]
    return shape[2 - _NORMAL_AXIS[plane]]


def plane_array(volume: np.ndarray, plane: str, index: int) -> np.ndarray:
    """The 2D view (no copy) of a display-oriented array ``[k, j, i(, c)]`` for one plane."""
    if plane == "axial":
        return volume[index]
    if plane == "coronal":
        return volume[::-1, index]
    return volume[::-1, :, index]


def plane_spacing(spacing, plane: str) -> tuple[float, float]:
    """``(column, row)`` pixel size in mm of a plane, from display spacing ``(si, sj, sk)``."""
    si, sj, sk = spacing
    return {"axial": (si, sj), "coronal": (si, sk), "sagittal": (sj, sk)}[plane]


def extract_slice(image: Image, plane: str, index: int) -> Image:
    """One slice in display orientation as a 2D :class:`Image` with its in-plane spacing.

    The 2D image's rows/columns are screen rows/columns (see the module notes); its 3D
    position is kept in ``metadata["plane"]``, ``["slice_index"]`` and
    ``["slice_corner_mm"]`` (the LPS point of pixel ``(0, 0)``). Modality and units are kept.

    Examples
    --------
    >>> import numpy as np
    >>> img = Image(np.zeros((10, 20, 30), np.int16), spacing=(0.5, 0.5, 3.0))
    >>> s = extract_slice(img, "coronal", 5)
    >>> s.shape, s.spacing
    ((10, 30), (0.5, 3.0))
    """
    _check_plane(plane)
    image = as_image(image)
    n = slice_count(image, plane)
    if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
        raise ParameterError(f"slice index must be an integer; got {index!r}")
    if not 0 <= int(index) < n:
        raise ParameterError(f"slice index {index} is outside the {plane} range 0..{n - 1}")
    volume, spacing = display_array(image)
    arr = np.ascontiguousarray(plane_array(volume, plane, int(index)))
    metadata = dict(image.metadata, plane=plane, slice_index=int(index))
    if image.ndim == 3:
        corner = slice_pixel_to_display(plane, int(index), 0, 0, volume.shape[0])
        metadata["slice_corner_mm"] = tuple(float(v) for v in display_image(image).index_to_physical(corner))
    return Image(arr, plane_spacing(spacing, plane), kind=image.kind, labels=image.labels,
                 metadata=metadata, rgb=image.rgb)


def slice_pixel_to_display(plane: str, index: int, row: float, col: float, nk: int) -> np.ndarray:
    """Display index ``(i, j, k)`` of pixel ``(row, col)`` of slice ``index`` of a plane."""
    return (plane_to_display(plane, nk) @ [col, row, index, 1.0])[:3]


def plane_to_display(plane: str, nk: int) -> np.ndarray:
    """``4x4`` matrix from a plane's ``(col, row, slice index, 1)`` to display index ``(i, j, k, 1)``.

    This is the screen order of the module notes (axial: rows towards P; coronal and sagittal:
    superior at the top), written once so the viewer's JavaScript never recomputes it.

    Examples
    --------
    >>> plane_to_display("coronal", 10) @ [3, 0, 5, 1]
    array([3., 5., 9., 1.])
    """
    _check_plane(plane)
    m = np.zeros((4, 4))
    m[3, 3] = 1.0
    if plane == "axial":        # i = col, j = row, k = index
        m[0, 0] = m[1, 1] = m[2, 2] = 1.0
    elif plane == "coronal":    # i = col, j = index, k = nk - 1 - row
        m[0, 0], m[1, 2], m[2, 1], m[2, 3] = 1.0, 1.0, -1.0, nk - 1
    else:                       # i = index, j = col, k = nk - 1 - row
        m[0, 2], m[1, 0], m[2, 1], m[2, 3] = 1.0, 1.0, -1.0, nk - 1
    return m


def plane_geometry(shape: tuple[int, int, int], spacing, affine: np.ndarray) -> dict[str, dict]:
    """Everything a viewer needs to draw and click each plane of a display volume, computed once.

    Parameters
    ----------
    shape : (nk, nj, ni)
        Shape of the display array ``[k, j, i]``.
    spacing : (si, sj, sk)
        Display spacing in mm.
    affine : (4, 4) array
        Display index ``(i, j, k, 1)`` to LPS mm.

    Returns
    -------
    dict
        Per plane: ``rows``, ``cols``, ``count`` (slices), ``pixel_mm`` (column and row pixel
        size), ``to_mm`` (``(col, row, index, 1)`` to LPS mm) and ``from_mm`` (its inverse),
        ``to_display`` / ``from_display`` (to and from display index), and ``strides``:
        ``(offset, per slice, per row, per column)`` in voxels, so that pixel ``(row, col)`` of
        slice ``index`` is element ``offset + index*s + row*r + col*c`` of the flat volume.

    Examples
    --------
    >>> g = plane_geometry((4, 5, 6), (1.0, 1.0, 2.5), np.eye(4))
    >>> g["sagittal"]["rows"], g["sagittal"]["cols"], g["sagittal"]["count"], g["sagittal"]["pixel_mm"]
    (4, 5, 6, [1.0, 2.5])
    >>> g["coronal"]["strides"]
    [90, 6, -30, 1]
    """
    nk, nj, ni = (int(n) for n in shape)
    element = np.array([1, ni, ni * nj], float)  # flat step along i, j, k
    sizes = np.array([ni, nj, nk])
    out = {}
    for plane in PLANES:
        m = plane_to_display(plane, nk)
        axes = [int(np.argmax(np.abs(m[:3, c]))) for c in range(3)]  # display axis of col, row, index
        to_mm = np.asarray(affine, float) @ m
        out[plane] = {
            "cols": int(sizes[axes[0]]), "rows": int(sizes[axes[1]]), "count": int(sizes[axes[2]]),
            "pixel_mm": [float(spacing[axes[0]]), float(spacing[axes[1]])],
            "to_mm": to_mm.tolist(), "from_mm": np.linalg.inv(to_mm).tolist(),
            "to_display": m.tolist(), "from_display": np.linalg.inv(m).tolist(),
            "strides": [int(element @ m[:3, 3]), *(int(element @ m[:3, c]) for c in (2, 1, 0))],
        }
    return out


# ---------------------------------------------------------------------------- intensities
def auto_window(image: Image) -> tuple[float, float]:
    """A display ``(window, level)``: the abdomen preset for CT, else the 0.5-99.5 percentiles.

    Examples
    --------
    >>> import numpy as np
    >>> auto_window(Image(np.linspace(0, 100, 1000).reshape(10, 10, 10)))
    (99.0, 50.0)
    """
    image = as_image(image)
    if is_ct(image) and not image.is_label:
        return CT_PRESETS["abdomen"]
    arr = image.array
    step = max(1, arr.size // 2_000_000)
    sample = arr.reshape(-1)[::step]
    if sample.dtype.kind == "f":
        sample = sample[np.isfinite(sample)]
    if image.is_label:
        top = float(sample.max()) if sample.size else 1.0
        return (max(top, 1.0), max(top, 1.0) / 2)
    if sample.size == 0:
        return (1.0, 0.0)
    lo, hi = (float(v) for v in np.percentile(sample, [0.5, 99.5]))
    if hi <= lo:
        lo, hi = float(sample.min()), float(sample.max())
    if hi <= lo:
        return (1.0, lo)
    return (hi - lo, (hi + lo) / 2)


def window_level(array, window: float, level: float) -> np.ndarray:
    """Map intensities to uint8 grey: ``level - window/2`` -> 0, ``level + window/2`` -> 255.

    Examples
    --------
    >>> window_level(np.array([-1000, 40, 1000]), 400, 40)
    array([  0, 127, 255], dtype=uint8)
    """
    try:
        window, level = float(window), float(level)
    except (TypeError, ValueError):
        raise ParameterError(f"window and level must be numbers; got {window!r}, {level!r}") from None
    if not (np.isfinite(window) and window > 0 and np.isfinite(level)):
        raise ParameterError(f"window must be a positive number and level a finite number; got {window}, {level}")
    lo = float(level) - float(window) / 2
    scale = 255.0 / float(window)
    v = (np.asarray(array, dtype=np.float64) - lo) * scale
    return np.floor(np.clip(v, 0.0, 255.0) + 0.5).astype(np.uint8)


def colormap_lut(name: str = "inferno") -> np.ndarray:
    """``(256, 3)`` uint8 RGB lookup table of a matplotlib colour map."""
    import matplotlib

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        raise ParameterError(f"unknown colour map {name!r}; use a matplotlib name such as 'inferno' or 'jet'") from None
    return np.floor(cmap(np.linspace(0, 1, 256))[:, :3] * 255 + 0.5).astype(np.uint8)


def heat_indices(values, vmin: float, vmax: float) -> np.ndarray:
    """Colour-table index (0..255) of heat-map values scaled from ``[vmin, vmax]``."""
    span = (vmax - vmin) if vmax > vmin else 1.0
    t = (np.asarray(values, np.float64) - vmin) / span
    return np.floor(np.clip(t, 0.0, 1.0) * 255.0 + 0.5).astype(np.intp)


def label_outline(labels: np.ndarray) -> np.ndarray:
    """Boolean mask of labelled pixels with a 4-neighbour of another value (image edge counts as 0)."""
    p = np.pad(labels, 1)
    c = p[1:-1, 1:-1]
    edge = (p[:-2, 1:-1] != c) | (p[2:, 1:-1] != c) | (p[1:-1, :-2] != c) | (p[1:-1, 2:] != c)
    return edge & (c != 0)


def _blend(rgb: np.ndarray, mask: np.ndarray, color: np.ndarray, alpha: float) -> None:
    rgb[mask] = np.floor(rgb[mask] * (1.0 - alpha) + color * alpha + 0.5)


def compose(
    grey: np.ndarray,
    *,
    second: np.ndarray | None = None,
    second_mode: str = "blend",
    second_alpha: float = 0.5,
    checker: int = 16,
    heat: np.ndarray | None = None,
    heat_lut: np.ndarray | None = None,
    heat_range: tuple[float, float] = (0.0, 1.0),
    heat_threshold: float = 0.0,
    heat_opacity: float = 0.5,
    labels: np.ndarray | None = None,
    label_colors: Mapping[int, tuple[int, int, int]] | None = None,
    label_opacity: float = 0.5,
    label_outline_only: bool = False,
) -> np.ndarray:
    """Compose one displayed slice: grey (uint8) + second image, heat map and labels -> RGB uint8.

    The order and formulas are those of the viewer's JavaScript, so a snapshot equals the
    canvas (to rounding): second image (``blend``: ``a*(1-alpha) + b*alpha``; ``checkerboard``:
    tiles of ``checker`` pixels, even tiles base; ``difference``: ``|a - b|``), then the heat
    map where ``value > heat_threshold`` (colour ``heat_lut[heat_indices(value)]``, alpha
    ``heat_opacity``), then labels (fill with ``label_opacity``, or outline pixels opaque).

    Examples
    --------
    >>> g = np.full((4, 4), 100, np.uint8)
    >>> lab = np.zeros((4, 4), np.uint8); lab[1, 1] = 1
    >>> compose(g, labels=lab, label_colors={1: (255, 0, 0)}, label_opacity=1.0)[1, 1]
    array([255,   0,   0], dtype=uint8)
    """
    g = grey.astype(np.float64)
    if second is not None:
        s = second.astype(np.float64)
        if second_mode == "blend":
            g = np.floor(g * (1.0 - second_alpha) + s * second_alpha + 0.5)
        elif second_mode == "checkerboard":
            rows, cols = np.indices(g.shape)
            odd = ((rows // checker) + (cols // checker)) % 2 == 1
            g = np.where(odd, s, g)
        elif second_mode == "difference":
            g = np.abs(g - s)
        else:
            raise ParameterError(f"second image mode must be blend, checkerboard or difference; got {second_mode!r}")
    rgb = np.repeat(g[..., None], 3, axis=-1)
    if heat is not None:
        lut = colormap_lut("inferno") if heat_lut is None else heat_lut
        heat = np.asarray(heat, np.float64)
        mask = heat > heat_threshold
        colors = lut[heat_indices(heat[mask], *heat_range)]
        rgb[mask] = np.floor(rgb[mask] * (1.0 - heat_opacity) + colors * heat_opacity + 0.5)
    if labels is not None:
        colors = label_colors or {}
        shown = label_outline(labels) if label_outline_only else labels != 0
        alpha = 1.0 if label_outline_only else label_opacity
        for value in np.unique(labels[shown]):
            color = np.asarray(colors.get(int(value), _default_color(int(value))), np.float64)
            _blend(rgb, shown & (labels == value), color, alpha)
    return rgb.astype(np.uint8)


def _default_color(value: int) -> tuple[int, int, int]:
    from .image import label_color

    return label_color(value)


# ---------------------------------------------------------------------------- resampling
def resample_like(layer: Image, reference: Image) -> Image:
    """``layer`` resampled onto ``reference``'s voxel grid (physical space honoured).

    Nearest neighbour for label maps (values and names kept), linear otherwise (float32).
    Outside the layer: 0 for labels, the layer's minimum otherwise. Returns ``layer``
    itself when the grids already match.

    Raises
    ------
    GeometryError
        When the layer and the reference do not overlap in physical space.

    Examples
    --------
    >>> import numpy as np
    >>> ref = Image(np.zeros((4, 4, 4)))
    >>> flipped = Image(np.arange(64).reshape(4, 4, 4), origin=(0, 3, 0), direction=np.diag([1, -1, 1]))
    >>> int(resample_like(flipped, ref).array[0, 0, 0]) == int(flipped.array[0, 3, 0])
    True
    """
    import SimpleITK as sitk

    layer, reference = as_image(layer, "layer"), as_image(reference, "reference")
    if layer.rgb or reference.rgb:
        raise ImageError("colour (RGB) images cannot be overlaid as layers; convert to grey first")
    if layer.ndim != reference.ndim:
        raise GeometryError(f"layer is {layer.ndim}D but the image is {reference.ndim}D")
    if layer.same_grid(reference):
        return layer
    if not layer.overlaps(reference):
        lo, hi = layer.bounds()
        rlo, rhi = reference.bounds()
        raise GeometryError(
            f"the layer (box {np.round(lo, 1).tolist()}..{np.round(hi, 1).tolist()} mm) does not overlap the image "
            f"(box {np.round(rlo, 1).tolist()}..{np.round(rhi, 1).tolist()} mm): check that both come from the same scan"
        )
    src = layer.to_sitk()
    if layer.is_label:
        interp, default = sitk.sitkNearestNeighbor, 0.0
    else:
        src = sitk.Cast(src, sitk.sitkFloat32)
        interp, default = sitk.sitkLinear, float(np.nanmin(layer.array))
    out = sitk.Resample(src, reference.to_sitk() if reference.ndim == 2 else _grid(reference), sitk.Transform(),
                        interp, default)
    return Image.from_sitk(out, kind=layer.kind, labels=layer.labels, metadata=layer.metadata)


def _grid(reference: Image):
    """A 1-voxel-cheap SimpleITK reference grid (no voxel copy) for Resample."""
    import SimpleITK as sitk

    ref = sitk.Image([int(s) for s in reference.size], sitk.sitkUInt8)
    ref.SetSpacing(reference.spacing)
    ref.SetOrigin(reference.origin)
    ref.SetDirection(tuple(reference.direction.ravel()))
    return ref


# ---------------------------------------------------------------------------- PNG and thumbnails
def to_png(array: np.ndarray, *, compress_level: int = 1) -> bytes:
    """Encode a uint8 grey ``[y, x]`` or RGB(A) ``[y, x, 3|4]`` array as PNG bytes.

    Examples
    --------
    >>> to_png(np.zeros((2, 3), np.uint8))[:4]
    b'\\x89PNG'
    """
    from PIL import Image as PILImage

    arr = np.asarray(array)
    if arr.dtype != np.uint8:
        raise ParameterError(f"to_png needs uint8 pixels; got {arr.dtype} (use window_level first)")
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4))):
        raise ParameterError(f"to_png needs [y, x] or [y, x, 3|4]; got shape {arr.shape}")
    buf = io.BytesIO()
    PILImage.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def physical_aspect(array: np.ndarray, spacing: tuple[float, float], max_size: int | None = None) -> np.ndarray:
    """Resize a grey/RGB uint8 slice so each pixel is square in mm (bilinear), at most ``max_size``."""
    from PIL import Image as PILImage

    rows, cols = array.shape[:2]
    sx, sy = spacing
    pix = min(sx, sy)
    width, height = cols * sx / pix, rows * sy / pix
    if max_size:
        f = max_size / max(width, height)
        width, height = width * f, height * f
    size = (max(1, round(width)), max(1, round(height)))
    if size == (cols, rows):
        return array
    return np.asarray(PILImage.fromarray(array).resize(size, PILImage.BILINEAR))


def _plane_png(image: Image, plane: str, index: int, window: float, level: float, size: int) -> str:
    s = extract_slice(image, plane, index)
    if image.is_label:
        pixels = compose(np.zeros(s.shape, np.uint8), labels=s.array, label_opacity=1.0,
                         label_colors={v: lab.color for v, lab in image.labels.items()})
        return base64.b64encode(to_png(physical_aspect(pixels, s.spacing, size))).decode("ascii")
    grey = s.array if image.rgb else window_level(s.array, window, level)
    if image.rgb and grey.dtype != np.uint8:
        grey = window_level(grey, *auto_window(image))
    pixels = physical_aspect(grey, s.spacing, size)
    return base64.b64encode(to_png(pixels)).decode("ascii")


def thumbnail_html(image: Image, *, size: int = 160) -> str:
    """A static HTML figure: three planes through the centre (two for none: 2D shows one),
    with orientation letters, correct proportions and a caption (shape, spacing, modality,
    intensity range). Inline base64 PNG, so it needs no widget JavaScript.

    Examples
    --------
    >>> import numpy as np
    >>> "data:image/png;base64" in thumbnail_html(Image(np.zeros((4, 5, 6))))
    True
    """
    image = as_image(image)
    window, level = (255.0, 127.5) if image.rgb else auto_window(image)
    planes = ("axial",) if image.ndim == 2 else PLANES
    cells = []
    for plane in planes:
        index = slice_count(image, plane) // 2
        b64 = _plane_png(image, plane, index, window, level, size)
        letters = "" if image.ndim == 2 else "".join(
            f'<span style="position:absolute;{pos};color:#ff0;font:11px sans-serif;text-shadow:0 0 2px #000">{ch}</span>'
            for ch, pos in zip(EDGE_LETTERS[plane], ("left:2px;top:45%", "right:2px;top:45%",
                                                    "top:1px;left:47%", "bottom:1px;left:47%"))
        )
        title = "" if image.ndim == 2 else f'<div style="font:11px sans-serif;color:#666">{plane} {index}</div>'
        cells.append(
            f'<div style="display:inline-block;margin:0 6px 0 0;vertical-align:top">{title}'
            f'<div style="position:relative;display:inline-block;background:#000;line-height:0">'
            f'<img src="data:image/png;base64,{b64}" alt="{plane} slice" style="image-rendering:auto"/>{letters}</div></div>'
        )
    note = orientation_note(image)
    caption = html.escape(image.describe() + (f" ({note})" if note else ""))
    return (
        '<div class="medlab-thumbnail">' + "".join(cells)
        + f'<div style="font:12px monospace;margin-top:4px">{caption}</div></div>'
    )


def panel_picture(rgb: np.ndarray, spacing: tuple[float, float], mm_per_pixel: float, *,
                  letters: tuple[str, str, str, str] | None = None,
                  points: list[tuple[float, float]] | None = None) -> np.ndarray:
    """One plane for a report: resized to ``mm_per_pixel`` square pixels, with edge letters
    and point markers (``(row, col)`` slice pixel coordinates, optionally with an RGB colour
    as a third item; yellow by default)."""
    from PIL import Image as PILImage
    from PIL import ImageDraw

    rows, cols = rgb.shape[:2]
    size = (max(1, round(cols * spacing[0] / mm_per_pixel)), max(1, round(rows * spacing[1] / mm_per_pixel)))
    pic = PILImage.fromarray(np.ascontiguousarray(rgb))
    if size != (cols, rows):
        pic = pic.resize(size, PILImage.BILINEAR)
    draw = ImageDraw.Draw(pic)
    for point in points or ():
        row, col = point[:2]
        color = tuple(point[2]) if len(point) > 2 else (255, 255, 0)
        x, y = (col + 0.5) * size[0] / cols, (row + 0.5) * size[1] / rows
        draw.ellipse((x - 4, y - 4, x + 4, y + 4), outline=color, width=2)
    if letters:
        w, h = size
        for text, (x, y) in zip(letters, ((3, h / 2 - 5), (w - 10, h / 2 - 5), (w / 2 - 3, 2), (w / 2 - 3, h - 13))):
            draw.text((x, y), text, fill=(255, 255, 0))
    return np.asarray(pic)


def montage(panels: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """RGB panels side by side (top-aligned, black background, ``gap`` pixels apart)."""
    height = max(p.shape[0] for p in panels)
    width = sum(p.shape[1] for p in panels) + gap * (len(panels) - 1)
    out = np.zeros((height, width, 3), np.uint8)
    x = 0
    for p in panels:
        out[: p.shape[0], x: x + p.shape[1]] = p[..., :3]
        x += p.shape[1] + gap
    return out

"""`Image`: a voxel array that always knows where it is in the patient.

Conventions (the ITK/DICOM ones, so that SimpleITK, DICOM and medlab agree):

* ``array`` is indexed ``[z, y, x]`` for 3D and ``[y, x]`` for 2D, exactly as
  ``SimpleITK.GetArrayFromImage`` returns it; a colour 2D picture is ``[y, x, channel]``.
* ``spacing``, ``origin`` and ``size`` are in ``(x, y, z)`` order, in millimetres.
* ``direction`` is a ``(d, d)`` matrix whose *columns* are the physical directions of the
  x, y (and z) index axes, in the LPS patient frame (x towards the patient's Left, y
  Posterior, z Superior).
* A physical point is ``origin + direction @ (spacing * index)`` with ``index`` in
  ``(x, y, z)`` order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import GeometryError, ImageError, ParameterError

KINDS = ("intensity", "label")

# A colour-blind-friendly qualitative palette (Okabe-Ito first, then tab20-like), RGB 0-255.
_PALETTE = [
    (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178),
    (213, 94, 0), (204, 121, 167), (31, 119, 180), (255, 127, 14), (44, 160, 44),
    (214, 39, 40), (148, 103, 189), (140, 86, 75), (227, 119, 194), (188, 189, 34),
    (23, 190, 207), (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150),
]


def label_color(value: int) -> tuple[int, int, int]:
    """Default display colour of label ``value`` (stable for a given value)."""
    return _PALETTE[(int(value) - 1) % len(_PALETTE)]


@dataclass(frozen=True)
class Label:
    """Name and display colour (RGB, 0-255) of one label value."""

    name: str
    color: tuple[int, int, int]


def _as_labels(labels: Mapping[int, Any] | None) -> dict[int, Label]:
    try:
        return _parse_labels(labels)
    except (TypeError, ValueError, KeyError) as exc:
        raise ParameterError(
            f"labels must map integer values to a name or (name, (r, g, b)); got {labels!r} ({exc})"
        ) from None


def _parse_labels(labels: Mapping[int, Any] | None) -> dict[int, Label]:
    out: dict[int, Label] = {}
    for value, spec in (labels or {}).items():
        value = int(value)
        if isinstance(spec, Label):
            out[value] = spec
        elif isinstance(spec, str):
            out[value] = Label(spec, label_color(value))
        elif isinstance(spec, Mapping):
            out[value] = Label(str(spec["name"]), tuple(int(c) for c in spec.get("color", label_color(value))))
        else:
            name, color = spec
            out[value] = Label(str(name), tuple(int(c) for c in color))
    for value, label in out.items():
        if len(label.color) != 3 or not all(0 <= c <= 255 for c in label.color):
            raise ValueError(f"colour of label {value} must be (r, g, b) in 0..255")
    return out


def _vector(values, ndim: int, name: str, default: float) -> tuple[float, ...]:
    if values is None:
        return (default,) * ndim
    try:
        arr = np.atleast_1d(np.asarray(values, dtype=float))
    except (TypeError, ValueError):
        raise ParameterError(f"{name} must be {ndim} numbers in (x, y{', z' if ndim == 3 else ''}) order; got {values!r}") from None
    if arr.shape == (1,):
        arr = np.repeat(arr, ndim)
    if arr.shape != (ndim,) or not np.all(np.isfinite(arr)):
        raise ParameterError(
            f"{name} must be {ndim} finite numbers in (x, y{', z' if ndim == 3 else ''}) order; got {values!r}"
        )
    return tuple(float(v) for v in arr)


class Image:
    """A 2D or 3D medical image: voxels plus spacing, origin, direction, kind and metadata.

    Parameters
    ----------
    array : array_like
        Voxels indexed ``[z, y, x]`` (3D), ``[y, x]`` (2D) or ``[y, x, c]`` (2D colour, with
        ``rgb=True``). The array is kept without copying and marked read-only, so no medlab
        function can modify it in place.
    spacing, origin : sequence of float, optional
        In ``(x, y, z)`` order, millimetres. Default 1 mm and 0.
    direction : array_like, optional
        ``(d, d)`` direction cosines, columns are the index axes in LPS. Default identity.
    kind : {'intensity', 'label'}
        A label map holds integer class values; it is interpolated by nearest neighbour and
        shown as an overlay.
    labels : mapping, optional
        For a label map, ``{value: name}`` or ``{value: (name, (r, g, b))}``.
    metadata : mapping, optional
        Free-form: ``modality`` ('CT', 'MR', ...), ``source`` (path), ``dicom`` (safe tags),
        ``units`` ('HU', ...).
    rgb : bool
        The last axis of a 3-dimensional array is colour (3 or 4 channels), not z.

    Examples
    --------
    >>> import numpy as np
    >>> from medlab import Image
    >>> img = Image(np.zeros((20, 64, 64), np.int16), spacing=(0.8, 0.8, 3.0))
    >>> img.size, img.spacing
    ((64, 64, 20), (0.8, 0.8, 3.0))
    >>> img.index_to_physical((10, 0, 2))
    array([8., 0., 6.])
    """

    def __init__(
        self,
        array,
        spacing=None,
        origin=None,
        direction=None,
        *,
        kind: str = "intensity",
        labels: Mapping[int, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        rgb: bool = False,
    ):
        arr = np.asarray(array)
        if arr.dtype == object or arr.dtype.kind not in "biuf":
            raise ImageError(f"Image voxels must be numeric; got dtype {arr.dtype}")
        if arr.dtype == np.float16:  # no reader, writer or filter handles half floats
            arr = arr.astype(np.float32)
        if not arr.dtype.isnative:  # big-endian data (old NIfTI, raw files): SimpleITK and torch need native
            arr = arr.astype(arr.dtype.newbyteorder("="))
        spatial = arr.ndim - (1 if rgb else 0)
        if rgb and (arr.ndim != 3 or arr.shape[-1] not in (3, 4)):
            raise ImageError(f"a colour image must be [y, x, 3 or 4]; got shape {arr.shape}")
        if spatial not in (2, 3):
            hint = " (4D series such as fMRI or cine are not supported yet: pass one volume, e.g. array[..., t])" if spatial == 4 else ""
            raise ImageError(f"Image must be 2D or 3D; got an array of shape {arr.shape}{hint}")
        if min(arr.shape[:spatial]) < 1:
            raise ImageError(f"Image has an empty axis: shape {arr.shape}")
        if kind not in KINDS:
            raise ParameterError(f"kind must be one of {KINDS}; got {kind!r}")
        if kind == "label" and arr.dtype.kind not in "biu":
            if (arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.array_equal(arr, np.round(arr))
                    and (arr.size == 0 or np.abs(arr).max() < 2**31)):
                arr = arr.astype(np.int32)
            else:
                raise ImageError(f"a label map must hold integers; got dtype {arr.dtype} with non-integer values")
        spacing = _vector(spacing, spatial, "spacing", 1.0)
        if min(spacing) <= 0:
            raise ParameterError(f"spacing must be positive (mm); got {spacing}")
        origin = _vector(origin, spatial, "origin", 0.0)
        try:
            direction = np.eye(spatial) if direction is None else np.asarray(direction, dtype=float)
        except (TypeError, ValueError):
            raise ParameterError(f"direction must be a {spatial}x{spatial} matrix of numbers; got {direction!r}") from None
        if direction.size == spatial * spatial:
            direction = direction.reshape(spatial, spatial)
        if direction.shape != (spatial, spatial) or not np.all(np.isfinite(direction)):
            raise ParameterError(f"direction must be a {spatial}x{spatial} matrix; got {direction.tolist()}")
        if abs(np.linalg.det(direction)) < 1e-6:
            raise ParameterError(f"direction is singular (its axes are parallel): {direction.tolist()}")
        if not np.allclose(direction.T @ direction, np.eye(spatial), atol=1e-3):
            raise ParameterError(
                f"direction must have orthonormal columns (unit vectors at right angles, as DICOM and "
                f"ITK require); got {np.round(direction, 4).tolist()}. Put voxel sizes in spacing."
            )

        view = arr.view()
        view.flags.writeable = False
        self._array = view
        self.spacing: tuple[float, ...] = spacing
        self.origin: tuple[float, ...] = origin
        self.direction: np.ndarray = direction
        self.direction.flags.writeable = False
        self.kind = kind
        self.labels: dict[int, Label] = _as_labels(labels)
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.rgb = bool(rgb)

    # ------------------------------------------------------------------ basic properties
    @property
    def array(self) -> np.ndarray:
        """The voxels, ``[z, y, x]`` (read-only view; ``.copy()`` it to edit)."""
        return self._array

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions (2 or 3)."""
        return len(self.spacing)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of :attr:`array` (``[z, y, x]`` order)."""
        return self._array.shape

    @property
    def size(self) -> tuple[int, ...]:
        """Number of voxels along x, y (and z), as SimpleITK's ``GetSize``."""
        return tuple(int(s) for s in self._array.shape[: self.ndim][::-1])

    @property
    def dtype(self) -> np.dtype:
        return self._array.dtype

    @property
    def modality(self) -> str | None:
        return self.metadata.get("modality")

    @property
    def is_label(self) -> bool:
        return self.kind == "label"

    @property
    def affine(self) -> np.ndarray:
        """``(d+1, d+1)`` matrix mapping an ``(x, y, z, 1)`` index to an LPS point."""
        d = self.ndim
        a = np.eye(d + 1)
        a[:d, :d] = self.direction * np.asarray(self.spacing)[None, :]
        a[:d, d] = self.origin
        return a

    @property
    def orientation(self) -> str:
        """Three-letter code of where each index axis points, e.g. ``'LPS'`` or ``'RAS'``.

        ITK's convention: the letter is the direction an index axis *increases towards*,
        so the identity direction is ``'LPS'``.
        """
        letters = (("L", "R"), ("P", "A"), ("S", "I"))
        code = ""
        for col in range(self.ndim):
            axis = int(np.argmax(np.abs(self.direction[:, col])))
            code += letters[axis][0 if self.direction[axis, col] > 0 else 1]
        return code

    @property
    def is_oblique(self) -> bool:
        """True when an index axis is not aligned with a patient axis."""
        return not np.allclose(np.abs(self.direction), np.round(np.abs(self.direction)), atol=1e-4)

    # ------------------------------------------------------------------ derived images
    def with_array(self, array, *, kind: str | None = None, labels=None, metadata=None) -> Image:
        """A new image with the same geometry and new voxels (same spatial shape).

        Examples
        --------
        >>> import numpy as np
        >>> img = Image(np.ones((4, 5, 6)), spacing=(1, 2, 3))
        >>> mask = img.with_array(img.array > 0, kind="label")
        >>> mask.spacing, mask.kind
        ((1.0, 2.0, 3.0), 'label')
        """
        array = np.asarray(array)
        if array.dtype == bool:
            array = array.astype(np.uint8)
        rgb = self.rgb and array.ndim == self._array.ndim
        spatial = array.shape[: self.ndim]
        if spatial != self._array.shape[: self.ndim]:
            raise GeometryError(
                f"new array's spatial shape {spatial} differs from the image's {self._array.shape[: self.ndim]}"
            )
        kind = kind or self.kind
        if labels is None and kind == self.kind:
            labels = self.labels
        return Image(
            array, self.spacing, self.origin, self.direction, kind=kind, labels=labels,
            metadata=dict(self.metadata if metadata is None else metadata), rgb=rgb,
        )

    def copy(self) -> Image:
        """A deep copy (new voxel buffer)."""
        return self.with_array(self._array.copy())

    def same_grid(self, other: Image, tol: float = 1e-4) -> bool:
        """True when ``other`` has the same size, spacing, origin and direction."""
        return (
            self.size == other.size
            and np.allclose(self.spacing, other.spacing, rtol=tol, atol=tol)
            and np.allclose(self.origin, other.origin, rtol=tol, atol=tol * max(1.0, max(self.spacing)))
            and np.allclose(self.direction, other.direction, atol=tol)
        )

    # ------------------------------------------------------------------ coordinates
    def index_to_physical(self, index) -> np.ndarray:
        """Physical point(s) in mm (LPS) of continuous index(es) in ``(x, y, z)`` order.

        Accepts one index or an ``(n, d)`` array of them.
        """
        idx = np.asarray(index, dtype=float)
        scaled = idx * np.asarray(self.spacing)
        return scaled @ self.direction.T + np.asarray(self.origin)

    def physical_to_index(self, point) -> np.ndarray:
        """Continuous index(es) ``(x, y, z)`` of physical point(s) in mm (LPS).

        Round with ``np.rint`` to get the nearest voxel.
        """
        p = np.asarray(point, dtype=float) - np.asarray(self.origin)
        return (p @ np.linalg.inv(self.direction).T) / np.asarray(self.spacing)

    def contains(self, point) -> bool:
        """Whether a physical point lies inside the image's voxel grid."""
        idx = self.physical_to_index(point)
        return bool(np.all(idx >= -0.5) and np.all(idx < np.asarray(self.size) - 0.5))

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned physical bounding box ``(low, high)`` of the voxel centres, in mm."""
        corners = np.array(np.meshgrid(*[[0, s - 1] for s in self.size], indexing="ij")).reshape(self.ndim, -1).T
        pts = self.index_to_physical(corners)
        return pts.min(axis=0), pts.max(axis=0)

    def overlaps(self, other: Image) -> bool:
        """Whether the physical boxes of two images intersect."""
        lo1, hi1 = self.bounds()
        lo2, hi2 = other.bounds()
        # half a voxel on each side, along the physical axes
        pad = (np.abs(self.direction) @ np.asarray(self.spacing) + np.abs(other.direction) @ np.asarray(other.spacing)) / 2
        return bool(np.all(lo1 - pad <= hi2) and np.all(lo2 - pad <= hi1))

    # ------------------------------------------------------------------ conversions
    @classmethod
    def from_sitk(cls, image, *, kind: str = "intensity", labels=None, metadata=None) -> Image:
        """From a ``SimpleITK.Image``, keeping spacing, origin and direction.

        A multi-component 2D image (RGB) stays a colour image.
        """
        import SimpleITK as sitk

        ncomp = image.GetNumberOfComponentsPerPixel()
        arr = sitk.GetArrayFromImage(image)
        d = image.GetDimension()
        rgb = False
        if ncomp > 1:
            if d == 2 and ncomp in (3, 4):
                rgb = True
            else:
                raise ImageError(
                    f"{ncomp}-component {d}D images are not supported (only 2D RGB/RGBA); "
                    "pass one component with SimpleITK.VectorIndexSelectionCast"
                )
        if d == 4:
            raise ImageError(
                f"4D image of size {image.GetSize()} is not supported yet: extract one volume "
                "(e.g. image[:, :, :, t]) before converting"
            )
        return cls(
            arr, image.GetSpacing(), image.GetOrigin(), np.array(image.GetDirection()).reshape(d, d),
            kind=kind, labels=labels, metadata=metadata, rgb=rgb,
        )

    def to_sitk(self):
        """A ``SimpleITK.Image`` with the same voxels and geometry (the voxels are copied)."""
        import SimpleITK as sitk

        arr = self._array
        if arr.dtype == bool:
            arr = arr.astype(np.uint8)
        out = sitk.GetImageFromArray(np.ascontiguousarray(arr), isVector=self.rgb)
        out.SetSpacing(self.spacing)
        out.SetOrigin(self.origin)
        out.SetDirection(tuple(self.direction.ravel()))
        return out

    def to_torch(self, dtype=None):
        """A ``torch.Tensor`` of the voxels in ``[z, y, x]`` order (a copy; geometry dropped).

        Use :meth:`to_metatensor` to keep geometry for MONAI.
        """
        import torch

        t = torch.from_numpy(np.array(self._array))
        return t if dtype is None else t.to(dtype)

    def to_metatensor(self, dtype=None):
        """A MONAI ``MetaTensor`` with a channel axis, ``[1, x, y, z]``, and a RAS affine.

        This is what ``monai.transforms.LoadImage(image_only=True, ensure_channel_first=True)``
        gives for the same file (MONAI's default ``affine_lps_to_ras=True``), so MONAI
        transforms and networks see the same geometry.
        """
        import torch
        from monai.data import MetaTensor

        if self.rgb:
            raise ImageError("to_metatensor supports grey-level images; convert colour to grey first")
        arr = np.array(self._array).transpose()[None]  # [1, x, y, z]
        t = torch.from_numpy(np.ascontiguousarray(arr))
        if dtype is not None:
            t = t.to(dtype)
        affine = _lps_to_ras(self.ndim) @ self.affine
        meta = {"space": "RAS", "original_affine": affine.copy(), "spatial_shape": np.array(self.size)}
        return MetaTensor(t, affine=torch.as_tensor(affine, dtype=torch.float64), meta=meta)

    @classmethod
    def from_metatensor(cls, tensor, *, kind: str = "intensity", labels=None, metadata=None) -> Image:
        """From a MONAI ``MetaTensor`` ``[C=1, x, y(, z)]`` with a RAS (or LPS) affine."""
        arr = tensor.detach().cpu().numpy()
        if arr.ndim in (3, 4) and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim not in (2, 3):
            raise ImageError(f"expected a MetaTensor [1, x, y(, z)]; got shape {tuple(tensor.shape)}")
        d = arr.ndim
        affine = np.asarray(tensor.affine, dtype=float)
        if d == 2 and affine.shape == (4, 4):  # MONAI's default affine is 4x4 even in 2D
            affine = affine[np.ix_([0, 1, 3], [0, 1, 3])]
        space = str(getattr(tensor, "meta", {}).get("space", "RAS")).upper()
        if space == "RAS":
            affine = _lps_to_ras(d) @ affine
        lin = affine[:d, :d]
        spacing = np.linalg.norm(lin, axis=0)
        return cls(
            np.ascontiguousarray(arr.transpose()), spacing, affine[:d, d], lin / spacing[None, :],
            kind=kind, labels=labels, metadata=metadata,
        )

    def reorient(self, code: str = "LPS") -> Image:
        """The same image with its index axes permuted/flipped to point towards ``code``.

        Voxels are not interpolated, so physical positions are unchanged. Useful for display.
        """
        import SimpleITK as sitk

        code = code.upper()
        if self.ndim != 3:
            raise ImageError("reorient needs a 3D image")
        if code not in _ORIENT_CODES:
            raise ParameterError(f"orientation code must be three letters like 'RAS' or 'LPS'; got {code!r}")
        out = sitk.DICOMOrient(self.to_sitk(), code)
        return Image.from_sitk(out, kind=self.kind, labels=self.labels, metadata=self.metadata)

    # ------------------------------------------------------------------ display
    def describe(self) -> str:
        """One line: modality, size, spacing, dtype and value range."""
        dims = "×".join(str(s) for s in self.size)
        sp = "×".join(f"{s:.3g}" for s in self.spacing)
        finite = self._array[np.isfinite(self._array)] if self._array.dtype.kind == "f" else self._array
        rng = f"[{finite.min():.4g}, {finite.max():.4g}]" if finite.size else "[no finite values]"
        units = self.metadata.get("units", "")
        what = self.modality or ("label map" if self.is_label else "image")
        extra = f", {len(self.labels)} named labels" if self.labels else ""
        colour = ", RGB" if self.rgb else ""
        return f"{what} {dims} voxels, spacing {sp} mm, {self.orientation}, {self.dtype}{colour}, values {rng}{(' ' + units) if units else ''}{extra}"

    def __repr__(self) -> str:
        return f"<medlab.Image {self.describe()}>"

    def _repr_html_(self) -> str:
        from .render import thumbnail_html

        return thumbnail_html(self)


_ORIENT_CODES = {
    a + b + c
    for a in "LRAPSI" for b in "LRAPSI" for c in "LRAPSI"
    if all(len({a, b, c} & set(pair)) == 1 for pair in ("LR", "AP", "SI"))
}


def _lps_to_ras(d: int) -> np.ndarray:
    flip = np.eye(d + 1)
    flip[0, 0] = flip[1, 1] = -1
    return flip


def as_image(obj, name: str = "image") -> Image:
    """Accept an :class:`Image`, a ``SimpleITK.Image`` or a numpy array (1 mm, identity)."""
    if isinstance(obj, Image):
        return obj
    if type(obj).__name__ == "Image" and type(obj).__module__.startswith("SimpleITK"):
        return Image.from_sitk(obj)
    if isinstance(obj, np.ndarray):
        return Image(obj)
    raise ParameterError(f"{name} must be a medlab.Image, a SimpleITK.Image or a numpy array; got {type(obj).__name__}")


def check_finite(image: Image, name: str = "image") -> None:
    """Raise :class:`ImageError` if ``image`` holds NaN or infinite values."""
    a = image.array
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        n = int((~np.isfinite(a)).sum())
        raise ImageError(
            f"{name} holds {n} NaN/infinite voxel(s){_source(image)}; replace them first, e.g. "
            f"image.with_array(np.nan_to_num(image.array, nan=0.0))"
        )


def _source(image: Image) -> str:
    src = image.metadata.get("source")
    return f" (from {src})" if src else ""


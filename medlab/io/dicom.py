"""DICOM: find the series in a folder, check them, and build geometry-true volumes.

Headers are read with pydicom (``stop_before_pixels``); the voxels of a plain
single-frame series are decoded by SimpleITK/GDCM (fast, and it knows every common
transfer syntax, JPEG lossless included). MONOCHROME1 images, 2D radiographs and
multi-frame (enhanced) files are decoded by pydicom so that polarity and per-frame
rescaling are decided here, explicitly.

Conventions
-----------
* Slices are sorted by their position along the slice normal
  (``ImagePositionPatient · (row × column)``), never by file name or InstanceNumber.
* The z spacing is the *measured* step between slice positions; ``SliceThickness`` is
  kept in the metadata (it may differ, e.g. 3 mm thick slices every 2 mm).
* Rescale Slope/Intercept are applied (CT in Hounsfield units).
* MONOCHROME1 (minimum = white) is turned into MONOCHROME2 polarity: a stored value ``v``
  becomes ``lo + hi - v`` where ``[lo, hi]`` is the range of ``BitsStored``, so that bone
  on a radiograph has high values and displays bright, as everywhere else in medlab.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ReadError, warn
from ..image import Image
from .paths import check_readable, permission_message
from .seg import is_seg, read_seg

# Tags safe to keep in ``metadata["dicom"]``: acquisition and display, never identity
# (no names, IDs, dates, institutions or UIDs).
SAFE_TAGS = (
    "Modality", "SeriesDescription", "StudyDescription", "Manufacturer", "ManufacturerModelName",
    "BodyPartExamined", "SeriesNumber", "ImageType", "SliceThickness", "SpacingBetweenSlices", "KVP",
    "ConvolutionKernel", "MagneticFieldStrength", "RepetitionTime", "EchoTime", "FlipAngle",
    "RescaleSlope", "RescaleIntercept", "RescaleType", "PhotometricInterpretation", "BitsStored",
    "WindowCenter", "WindowWidth",
)

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic", ".ima")
_ORIENTATION_TOL = 1e-3  # direction cosines
_ENHANCED_GROUPS = "PerFrameFunctionalGroupsSequence"


@dataclass(frozen=True)
class SeriesInfo:
    """One image series found in a DICOM folder (what :func:`list_series` returns).

    Attributes
    ----------
    number : int or None
        SeriesNumber (may be absent).
    uid : str
        SeriesInstanceUID ('' when the files leave it empty; they are then grouped by geometry).
    description : str
        SeriesDescription.
    modality : str
        'CT', 'MR', 'CR', ...
    n_slices : int
        Number of slices (files, or frames of a multi-frame file).
    size : tuple of int
        Voxels along x, y (and z).
    spacing : tuple of float
        Voxel size in mm along x, y (and z, the measured slice step).
    files : tuple of Path
        The files of the series.
    """

    number: int | None
    uid: str
    description: str
    modality: str
    n_slices: int
    size: tuple[int, ...]
    spacing: tuple[float, ...]
    files: tuple[Path, ...] = field(repr=False)
    key: tuple = field(repr=False, compare=True, default=())

    def __str__(self) -> str:
        num = "—" if self.number is None else str(self.number)
        dims = "×".join(str(s) for s in self.size)
        sp = "×".join(f"{s:.3g}" for s in self.spacing)
        uid = self.uid or "(empty UID)"
        return (f"number {num}: {self.description or '(no description)'!r}, {self.modality or '?'}, "
                f"{self.n_slices} slice(s), {dims} voxels, {sp} mm, uid {uid}")


@dataclass
class _Header:
    """What medlab needs from one file's header."""

    path: Path
    ds: Any
    uid: str
    number: int | None
    description: str
    modality: str
    rows: int
    cols: int
    frames: int
    iop: np.ndarray | None
    ipp: np.ndarray | None
    pixel_spacing: np.ndarray | None
    photometric: str
    samples: int
    slope: float
    intercept: float
    notes: list[str] = field(default_factory=list)
    spacing_unknown: bool = False


# ---------------------------------------------------------------------------- headers
def _pydicom():
    import pydicom

    return pydicom


def is_dicom_file(path: Path) -> bool:
    """True when ``path`` starts with the DICOM preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except PermissionError:
        raise
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _float(value, default: float | None = None) -> float | None:
    try:
        if value is None or value == "":
            return default
        return float(value)
    except (TypeError, ValueError):
        return default


def _floats(value, n: int) -> np.ndarray | None:
    try:
        arr = np.asarray([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) and np.all(np.isfinite(arr)) else None


def _int(value) -> int | None:
    try:
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def read_header(path: Path, *, strict: bool, require_image: bool | None = None) -> _Header | None:
    """The header of one file, or None when it is not a DICOM image.

    With ``strict`` (a file the user named, or one with a DICOM suffix), a file that is not
    DICOM or cannot be parsed raises :class:`ReadError` naming it. With ``require_image``
    (default: ``strict``), a DICOM object without pixels (report, structure set) raises too.
    """
    require_image = strict if require_image is None else require_image
    pydicom = _pydicom()
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        if not strict:
            return None
        ds = _read_without_preamble(path)
    except PermissionError as exc:
        raise ReadError(permission_message(path)) from exc
    except Exception as exc:  # pydicom raises many types on broken files
        raise ReadError(
            f"{path}: the DICOM header cannot be read ({type(exc).__name__}: {exc}); the file is corrupt "
            "or truncated. Remove it from the folder or export the series again."
        ) from exc
    if "Rows" not in ds or "Columns" not in ds:
        if require_image:
            what = str(ds.get("Modality", "")) or "non-image"
            raise ReadError(
                f"{path} is a DICOM file without an image ({what} object, e.g. a report or structure set); "
                "point medlab.load at an image file or at the folder of the series"
            )
        return None
    return _header_from_dataset(path, ds)


def _read_without_preamble(path: Path):
    """Old files may lack the 128-byte preamble; accept them only if they hold image tags."""
    pydicom = _pydicom()
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        ok = "SOPClassUID" in ds or "Modality" in ds
    except Exception:  # noqa: BLE001 - a forced parse of a non-DICOM file fails in many ways
        ok = False
    if not ok:
        raise ReadError(
            f"{path} is not a DICOM file (no 'DICM' marker and no DICOM image header). Check that it is "
            "the file you meant; if it is another format, give it the right extension (.nii.gz, .nrrd, .png...)."
        )
    return ds


def _first_item(ds, *names):
    """``ds.<names[0]>[0].<names[1]>[0]...``, or None."""
    cur = ds
    for name in names:
        seq = cur.get(name) if cur is not None else None
        if not seq:
            return None
        cur = seq[0]
    return cur


def _header_from_dataset(path: Path, ds) -> _Header:
    frames = _int(ds.get("NumberOfFrames")) or 1
    iop = _floats(ds.get("ImageOrientationPatient"), 6)
    ipp = _floats(ds.get("ImagePositionPatient"), 3)
    spacing = _floats(ds.get("PixelSpacing"), 2)
    slope, intercept = _float(ds.get("RescaleSlope"), 1.0), _float(ds.get("RescaleIntercept"), 0.0)
    if ds.get("DoseGridScaling") is not None:  # RT dose: stored value × scaling = dose
        slope = _float(ds.get("DoseGridScaling"), 1.0)
    if _ENHANCED_GROUPS in ds or "SharedFunctionalGroupsSequence" in ds:
        shared = _first_item(ds, "SharedFunctionalGroupsSequence")
        first = _first_item(ds, _ENHANCED_GROUPS)
        for item in (first, shared):
            if item is None:
                continue
            iop = iop if iop is not None else _floats(getattr(_first_item(item, "PlaneOrientationSequence"), "ImageOrientationPatient", None), 6)
            ipp = ipp if ipp is not None else _floats(getattr(_first_item(item, "PlanePositionSequence"), "ImagePositionPatient", None), 3)
            spacing = spacing if spacing is not None else _floats(getattr(_first_item(item, "PixelMeasuresSequence"), "PixelSpacing", None), 2)
            pvt = _first_item(item, "PixelValueTransformationSequence")
            if pvt is not None and "RescaleSlope" not in ds:
                slope, intercept = _float(pvt.get("RescaleSlope"), 1.0), _float(pvt.get("RescaleIntercept"), 0.0)
    spacing, notes, unknown = _pixel_spacing(ds, spacing)
    return _Header(
        path=path, ds=ds, uid=str(ds.get("SeriesInstanceUID", "") or "").strip(),
        number=_int(ds.get("SeriesNumber")), description=str(ds.get("SeriesDescription", "") or ""),
        modality=str(ds.get("Modality", "") or ""), rows=int(ds.Rows), cols=int(ds.Columns), frames=frames,
        iop=iop, ipp=ipp, pixel_spacing=spacing,
        photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").strip().upper(),
        samples=_int(ds.get("SamplesPerPixel")) or 1, slope=slope if slope else 1.0, intercept=intercept,
        notes=notes, spacing_unknown=unknown,
    )


def _pixel_spacing(ds, spacing: np.ndarray | None) -> tuple[np.ndarray | None, list[str], bool]:
    """The pixel size (row, column) in mm, with medlab's rule for a PixelSpacing that is not one.

    Real CR files carry ``PixelSpacing = 0\\0``. GDCM (so SimpleITK and 3D Slicer) then takes
    ImagerPixelSpacing, and 1 mm when that is missing too; medlab does the same, but says so in
    a note (and a warning, see ``read_series``) and flags a 1 mm guess as unknown.
    Returns (spacing or None for "1 mm, unknown", notes, unknown).
    """
    imager = _floats(ds.get("ImagerPixelSpacing"), 2)
    imager = imager if imager is not None and np.all(imager > 0) else None
    if spacing is not None and np.all(spacing > 0):
        return spacing, [], False
    if spacing is None and imager is not None:  # a projection radiograph: the detector's pixel size
        return imager, [], False
    if spacing is None:
        return None, [], False  # no spacing at all: handled where the image is built, as before
    shown = "\\".join(f"{v:g}" for v in spacing)
    if imager is not None:
        note = (f"PixelSpacing is {shown}, not a pixel size; ImagerPixelSpacing {imager[0]:g}\\{imager[1]:g} mm "
                "is used instead (as GDCM/SimpleITK do): the size at the detector, which magnifies the patient "
                "slightly on a projection radiograph")
        return imager, [note], False
    note = (f"PixelSpacing is {shown}, not a pixel size, and there is no ImagerPixelSpacing: the pixel size is "
            "unknown and 1 mm is assumed (as GDCM/SimpleITK do); distances and areas are not in mm")
    return None, [note], True


def scan_folder(folder: Path) -> list[_Header]:
    """Headers of every DICOM image file below ``folder`` (hidden files and DICOMDIR skipped).

    Files that are not DICOM are ignored, except those with a DICOM suffix (``.dcm`` ...),
    which must be readable: a broken ``.dcm`` file in a series would otherwise go unnoticed.
    Files and folders this user may not read are never taken for "no DICOM here": when
    nothing else is found they are the error, otherwise a warning names them.
    """
    headers = []
    unreadable: list[Path] = []

    def walk_error(exc: OSError) -> None:
        if isinstance(exc, PermissionError):
            unreadable.append(Path(exc.filename))

    for root, dirs, files in os.walk(folder, onerror=walk_error):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or name.upper() == "DICOMDIR":
                continue
            path = Path(root) / name
            strict = path.suffix.lower() in DICOM_SUFFIXES
            try:
                dicom = is_dicom_file(path)
            except PermissionError:
                unreadable.append(path)
                continue
            if not strict and not dicom:
                continue
            header = read_header(path, strict=strict, require_image=False)
            if header is not None:
                headers.append(header)
    if unreadable:
        _report_unreadable(folder, unreadable, found=len(headers))
    return headers


def _report_unreadable(folder: Path, unreadable: list[Path], found: int) -> None:
    examples = ", ".join(str(p) for p in unreadable[:3]) + (", ..." if len(unreadable) > 3 else "")
    text = (f"{len(unreadable)} file(s) or folder(s) in {folder} may not be read by this user (permission denied: "
            f"{examples})")
    if not found:
        raise ReadError(f"{text}, and no readable DICOM image was found. The files may be fine: ask for read "
                        "access (chmod/chown), or copy the folder somewhere readable")
    warn(f"{text}; they were skipped, so a series may miss slices. Ask for read access to load them")


# ---------------------------------------------------------------------------- grouping
def _group_key(h: _Header) -> tuple:
    if h.frames > 1 or is_seg(h.ds):  # a multi-frame file or a segmentation is a series of its own
        return ("file", str(h.path))
    if h.uid:
        return ("uid", h.uid)
    # No Series UID: files that share orientation, in-plane size and pixel spacing belong together.
    iop = None if h.iop is None else tuple(np.round(h.iop, 3).tolist())
    ps = None if h.pixel_spacing is None else tuple(np.round(h.pixel_spacing, 4).tolist())
    return ("geometry", h.number, h.modality, iop, h.rows, h.cols, ps)


def group_series(headers: Sequence[_Header]) -> dict[tuple, list[_Header]]:
    """Headers grouped into series (by SeriesInstanceUID, or by geometry when it is empty)."""
    groups: dict[tuple, list[_Header]] = {}
    for h in headers:
        groups.setdefault(_group_key(h), []).append(h)
    return groups


def series_info(key: tuple, headers: Sequence[_Header]) -> SeriesInfo:
    """A :class:`SeriesInfo` summary of one group (never raises on inconsistent series)."""
    h = headers[0]
    n = h.frames if h.frames > 1 else len(headers)
    ps = h.pixel_spacing if h.pixel_spacing is not None else np.ones(2)
    spatial_3d = h.iop is not None and h.ipp is not None
    if spatial_3d:
        step = _rough_step(headers)
        size, spacing = (h.cols, h.rows, n), (float(ps[1]), float(ps[0]), step)
    else:
        size, spacing = (h.cols, h.rows) + ((n,) if n > 1 else ()), (float(ps[1]), float(ps[0])) + ((1.0,) if n > 1 else ())
    return SeriesInfo(
        number=h.number, uid=h.uid, description=h.description, modality=h.modality, n_slices=n,
        size=size, spacing=spacing, files=tuple(x.path for x in headers), key=key,
    )


def _rough_step(headers: Sequence[_Header]) -> float:
    """The mean slice step along the normal, for listing (no consistency checks)."""
    h = headers[0]
    if h.frames > 1:
        ipps = list(_frame_geometry(h.ds, (h.slope, h.intercept))[1])
    else:
        ipps = [x.ipp for x in headers]
    ipps = np.array([p for p in ipps if p is not None], dtype=float).reshape(-1, 3)
    if h.iop is not None and len(ipps) > 1:
        d = np.sort(ipps @ np.cross(h.iop[:3], h.iop[3:]))
        if d[-1] > d[0]:
            return float((d[-1] - d[0]) / (len(d) - 1))
    return _float(h.ds.get("SpacingBetweenSlices")) or _float(h.ds.get("SliceThickness")) or 1.0


def list_series(folder) -> list[SeriesInfo]:
    """The image series in a DICOM folder (searched recursively), or in one DICOM file.

    Parameters
    ----------
    folder : str or Path
        A folder of DICOM files (any names, nested folders allowed) or a single file.

    Returns
    -------
    list of SeriesInfo
        Sorted by series number, then description. Files without a Series Instance UID
        are grouped by geometry (orientation, in-plane size and pixel spacing).

    Examples
    --------
    >>> from medlab.io import list_series
    >>> for s in list_series("scan/"):          # doctest: +SKIP
    ...     print(s)
    number 3: 'CT Body 3.0', CT, 20 slice(s), 512×512×20 voxels, 0.977×0.977×2 mm, uid (empty UID)
    """
    path = Path(folder)
    check_readable(path)
    if path.is_file():
        headers = [read_header(path, strict=True)]
    else:
        headers = scan_folder(path)
    groups = group_series(headers)
    infos = [series_info(k, v) for k, v in groups.items()]
    return sorted(infos, key=lambda s: (s.number is None, s.number or 0, s.description, s.uid, str(s.files[0])))


def select_series(infos: Sequence[SeriesInfo], series, folder: Path) -> SeriesInfo:
    """The one series the user asked for (see :func:`medlab.io.load`'s ``series``)."""
    if series is None:
        if len(infos) == 1:
            return infos[0]
        raise ReadError(
            f"{folder} holds {len(infos)} image series; choose one with series= (a series number, a UID, "
            f"part of the description, or an item of medlab.io.list_series(folder)):\n{_table(infos)}"
        )
    if isinstance(series, SeriesInfo):
        found = [s for s in infos if s.key == series.key]
    elif isinstance(series, (int, np.integer)) and not isinstance(series, bool):
        found = [s for s in infos if s.number == int(series)]
    elif isinstance(series, str):
        found = [s for s in infos if s.uid and s.uid == series]
        if not found:
            found = [s for s in infos if series.casefold() in s.description.casefold()]
    else:
        from ..errors import ParameterError

        raise ParameterError(f"series must be a number, a UID or description text, or a SeriesInfo; got {type(series).__name__}")
    if len(found) == 1:
        return found[0]
    what = "matches none" if not found else f"matches {len(found)}"
    raise ReadError(f"series={series!r} {what} of the series in {folder}; they are:\n{_table(infos)}")


def _table(infos: Sequence[SeriesInfo]) -> str:
    return "\n".join(f"  - {s}" for s in infos)


# ---------------------------------------------------------------------------- geometry
@dataclass
class _Geometry:
    order: np.ndarray          # slice order (indices into the input list)
    origin: np.ndarray
    direction: np.ndarray      # columns: x (along a row), y (down a column), z (slice normal)
    spacing: tuple[float, float, float]
    step: float | None         # measured slice step (None for a single slice)


def stack_geometry(iops, ipps, pixel_spacings, sizes, names: Sequence[str], where: str,
                   single_step: float = 1.0) -> _Geometry:
    """Sort slices along their normal and check that they form one regular volume.

    Raises :class:`ReadError` saying what is wrong for mixed orientations, different image
    sizes or pixel spacings, slices at the same position, missing slices (gaps), uneven
    steps and gantry tilt (slices shifted in-plane).
    """
    n = len(names)
    missing = [names[i] for i in range(n) if iops[i] is None or ipps[i] is None]
    if missing:
        raise ReadError(
            f"{where}: {len(missing)} of {n} slices have no ImageOrientationPatient/ImagePositionPatient "
            f"(e.g. {missing[0]}), so they cannot be placed in a volume; load one file at a time"
        )
    iops, ipps = np.asarray(iops, float), np.asarray(ipps, float)
    _check_same(where, "orientations (ImageOrientationPatient)", [tuple(np.round(v, 3)) for v in iops], names,
                close=np.abs(iops - iops[0]).max(axis=1) <= _ORIENTATION_TOL, hint="a series must hold parallel slices; "
                "put each orientation (e.g. the localiser) in its own folder or pick one series")
    _check_same(where, "image sizes (rows × columns)", [f"{r}×{c}" for r, c in sizes], names)
    if all(p is not None for p in pixel_spacings):
        ps = np.asarray(pixel_spacings, float)
        _check_same(where, "pixel spacings", [tuple(np.round(p, 4)) for p in ps], names,
                    close=np.abs(ps - ps[0]).max(axis=1) <= 1e-3 * max(ps[0].max(), 1e-6))
        pixel = ps[0]
    else:
        pixel = np.ones(2)
    row, col = iops[0, :3], iops[0, 3:]
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    d = ipps @ normal
    order = np.argsort(d, kind="stable")
    d_sorted, ipp_sorted = d[order], ipps[order]
    step = None
    z = single_step
    if n > 1:
        steps = np.diff(d_sorted)
        _check_steps(steps, d_sorted, [names[i] for i in order], where)
        step = float((d_sorted[-1] - d_sorted[0]) / (n - 1))
        z = step
        offsets = ipp_sorted - ipp_sorted[0]
        inplane = offsets - np.outer(offsets @ normal, normal)
        shift = float(np.linalg.norm(inplane, axis=1).max())
        if shift > 0.1 * float(pixel.min()):
            raise ReadError(
                f"{where}: the slices are shifted sideways by up to {shift:.2f} mm from one to the next (gantry tilt "
                "or a sheared series), so they do not form a rectangular volume; medlab does not resample tilted "
                "series: correct the tilt with a converter such as dcm2niix first"
            )
    direction = np.column_stack([row, col, normal])
    return _Geometry(order=order, origin=ipp_sorted[0], direction=direction,
                     spacing=(float(pixel[1]), float(pixel[0]), float(z)), step=step)


def _check_same(where, what, values, names, close=None, hint=""):
    if close is None:
        close = np.array([v == values[0] for v in values])
    if np.all(close):
        return
    counts: dict[Any, list[str]] = {}
    for v, name in zip(values, names):
        counts.setdefault(v, []).append(name)
    parts = "; ".join(f"{v} in {len(fs)} file(s) (e.g. {Path(fs[0]).name})" for v, fs in counts.items())
    raise ReadError(f"{where}: inconsistent series, its slices have different {what}: {parts}. {hint}".rstrip())


def _check_steps(steps: np.ndarray, d: np.ndarray, names: Sequence[str], where: str) -> None:
    typical = float(np.median(steps))
    dup = np.flatnonzero(steps < max(1e-3, 1e-3 * abs(typical)))
    if dup.size:
        i = int(dup[0])
        raise ReadError(
            f"{where}: {dup.size + 1} or more slices lie at the same position ({d[i]:.2f} mm along the slice normal, "
            f"e.g. {Path(names[i]).name} and {Path(names[i + 1]).name}); the folder mixes acquisitions with the same "
            "geometry (time points, echoes or a repeated series). Put each one in its own folder"
        )
    tol = max(0.05 * typical, 1e-3)
    bad = np.flatnonzero(np.abs(steps - typical) > tol)
    if not bad.size:
        return
    i = int(bad[0])
    ratio = steps[i] / typical
    if ratio > 1.5 and abs(ratio - round(ratio)) * typical <= tol:
        n_missing = int(sum(round(steps[j] / typical) - 1 for j in bad))
        raise ReadError(
            f"{where}: {n_missing} slice(s) missing: a gap of {steps[i]:.2f} mm between {Path(names[i]).name} "
            f"({d[i]:.2f} mm) and {Path(names[i + 1]).name} ({d[i + 1]:.2f} mm) where the other slices are "
            f"{typical:.2f} mm apart. Copy the missing file(s) into the folder (or export the series again)"
        )
    raise ReadError(
        f"{where}: uneven slice steps, from {steps.min():.2f} to {steps.max():.2f} mm (e.g. between "
        f"{Path(names[i]).name} and {Path(names[i + 1]).name}); medlab needs a regular grid: resample the "
        "series with a converter such as dcm2niix first"
    )


# ---------------------------------------------------------------------------- pixels
def _invert_monochrome1(raw: np.ndarray, ds) -> np.ndarray:
    """MONOCHROME1 -> MONOCHROME2 polarity: ``lo + hi - v`` over the BitsStored range."""
    lo, hi = _stored_range(ds, raw.dtype.itemsize * 8)
    return (lo + hi) - raw.astype(np.int64)


def _stored_range(ds, default_bits: int = 16) -> tuple[int, int]:
    """Smallest and largest value that BitsStored (and PixelRepresentation) allow."""
    bits = _int(ds.get("BitsStored")) or default_bits
    if _int(ds.get("PixelRepresentation")) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _rescale(raw: np.ndarray, slopes, intercepts) -> np.ndarray:
    """Apply Rescale Slope/Intercept (scalars, or one per leading frame) with a fitting dtype."""
    slopes = np.asarray(slopes, float)
    intercepts = np.asarray(intercepts, float)
    if np.all(slopes == 1) and np.all(intercepts == 0):
        return _narrow(raw) if raw.dtype == np.int64 else raw
    integral = np.all(slopes == np.round(slopes)) and np.all(intercepts == np.round(intercepts))
    shape = (-1,) + (1,) * (raw.ndim - 1) if slopes.ndim else ()
    if integral:
        out = raw.astype(np.int64) * slopes.astype(np.int64).reshape(shape) + intercepts.astype(np.int64).reshape(shape)
        return _narrow(out)
    return (raw.astype(np.float32) * slopes.astype(np.float32).reshape(shape) + intercepts.astype(np.float32).reshape(shape))


def _narrow(values: np.ndarray) -> np.ndarray:
    lo, hi = (int(values.min()), int(values.max())) if values.size else (0, 0)
    for dtype in (np.uint8, np.int16, np.uint16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return values.astype(dtype)
    return values


def decode_pydicom(path: Path):
    """The full dataset and its pixel array (stored values) via pydicom, or None if no decoder."""
    pydicom = _pydicom()
    try:
        ds = pydicom.dcmread(path)
    except PermissionError as exc:
        raise ReadError(permission_message(path)) from exc
    except Exception as exc:
        raise ReadError(f"{path}: the DICOM file cannot be read ({type(exc).__name__}: {exc}); it is corrupt or truncated. "
                        "Remove it or export the series again.") from exc
    try:
        return ds, ds.pixel_array
    except (RuntimeError, NotImplementedError) as exc:
        if "plugin" in str(exc).lower() or "decoder" in str(exc).lower() or "missing" in str(exc).lower():
            return ds, None
        raise _pixel_error(path, exc) from exc
    except Exception as exc:
        raise _pixel_error(path, exc) from exc


def _pixel_error(path: Path, exc: Exception) -> ReadError:
    return ReadError(
        f"{path}: the pixel data cannot be decoded ({type(exc).__name__}: {exc}); the file is corrupt or "
        "truncated. Remove it or export the series again."
    )


def _gdcm_file(path: Path) -> np.ndarray:
    """Pixels of one file via SimpleITK/GDCM (rescaled; MONOCHROME1 inverted like our own rule)."""
    import SimpleITK as sitk

    try:
        return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except RuntimeError as exc:
        raise _pixel_error(path, exc) from exc


def _gdcm_series(paths: Sequence[Path], as_float: bool) -> np.ndarray:
    """Stack of single-frame files (in the given order) decoded by SimpleITK/GDCM, rescaled.

    Files are decoded in parallel threads (GDCM releases the GIL), which is what makes
    medlab faster than one ``ImageSeriesReader`` on compressed series.
    """
    import SimpleITK as sitk

    pixel_type = sitk.sitkFloat32 if as_float else sitk.sitkUnknown

    def read(path: Path):
        try:
            return sitk.ReadImage(str(path), pixel_type)
        except RuntimeError as exc:
            raise _GdcmFailed(path) from exc

    first = read(paths[0])
    plane = sitk.GetArrayViewFromImage(first)
    out = np.empty((len(paths),) + plane.shape[-2:], dtype=plane.dtype)
    out[0] = plane.reshape(out.shape[1:])

    def fill(k: int) -> None:
        image = read(paths[k])
        values = sitk.GetArrayViewFromImage(image)
        if values.size != out[k].size:
            raise ReadError(f"{paths[k]}: {values.shape} pixels where the series has {out.shape[1:]}")
        if values.dtype != out.dtype and not np.can_cast(values.dtype, out.dtype, "safe"):
            raise _TypeChange()
        out[k] = values.reshape(out.shape[1:])

    try:
        _parallel(fill, range(1, len(paths)))
    except _TypeChange:  # GDCM chose different pixel types for different slices: redo as float
        return _gdcm_series(paths, True)
    return _narrow_int32(out)


class _TypeChange(Exception):
    pass


class _GdcmFailed(Exception):
    pass


def _parallel(fn, items) -> None:
    """Run ``fn`` over ``items`` in a few threads; re-raise the first error."""
    from concurrent.futures import ThreadPoolExecutor

    items = list(items)
    workers = max(1, min(len(items), os.cpu_count() or 1, 8))
    if workers == 1:
        for item in items:
            fn(item)
        return
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(fn, items):
            pass


def _narrow_int32(values: np.ndarray) -> np.ndarray:
    """GDCM widens e.g. int16 + intercept to int32; keep int16 when the values fit."""
    if values.dtype == np.int32 and values.size:
        lo, hi = values.min(), values.max()
        if lo >= -32768 and hi <= 32767:
            return values.astype(np.int16)
    return values


def _voxels_of_slices(headers: Sequence[_Header]) -> np.ndarray:
    """Decoded, rescaled (and polarity-corrected) voxels of single-frame files, in order.

    GDCM decodes MONOCHROME2 series; pydicom decodes MONOCHROME1 (so that the inversion is
    ours), what GDCM cannot (e.g. 32-bit RT dose) and names the file when both fail.
    """
    mono1 = any(h.photometric == "MONOCHROME1" for h in headers)
    dose = any(h.ds.get("DoseGridScaling") is not None for h in headers)
    if not mono1 and not dose:
        rescale = {(h.slope, h.intercept) for h in headers}
        as_float = len(rescale) > 1 or any(s != round(s) or i != round(i) for s, i in rescale)
        try:
            return _gdcm_series([h.path for h in headers], as_float)
        except _GdcmFailed:
            pass
    return _voxels_pydicom(headers)


def _voxels_pydicom(headers: Sequence[_Header]) -> np.ndarray:
    planes, slopes, intercepts = [], [], []
    for h in headers:
        ds, raw = decode_pydicom(h.path)
        if raw is None:  # no pydicom decoder (e.g. JPEG lossless): GDCM inverts MONOCHROME1 the same way
            planes.append(_gdcm_file(h.path).reshape(h.rows, h.cols).astype(np.float64))
            slopes.append(1.0), intercepts.append(0.0)
            continue
        planes.append(_invert_monochrome1(raw, ds) if h.photometric == "MONOCHROME1" else raw.astype(np.int64))
        slopes.append(h.slope), intercepts.append(h.intercept)
    stack = np.stack(planes)
    if stack.dtype == np.float64:
        stack = np.round(stack).astype(np.int64) if np.array_equal(stack, np.round(stack)) else stack.astype(np.float32)
    return _rescale(stack, slopes, intercepts)


def _frame_geometry(ds, default_rescale=(1.0, 0.0)):
    """Per-frame (iop, ipp, pixel spacing, (slope, intercept)) of a multi-frame file: enhanced
    (functional groups), RT dose (GridFrameOffsetVector) or legacy (SpacingBetweenSlices)."""
    n = _int(ds.get("NumberOfFrames")) or 1
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")
    per = ds.get(_ENHANCED_GROUPS) or []
    iops, ipps, pss, rescale = [], [], [], []
    for i in range(n):
        item = per[i] if i < len(per) else None

        def find(seq, attr, _item=item):
            for src in (_item, shared):
                v = getattr(_first_item(src, seq), attr, None) if src is not None else None
                if v is not None:
                    return v
            return ds.get(attr)

        iops.append(_floats(find("PlaneOrientationSequence", "ImageOrientationPatient"), 6))
        ipps.append(_floats(find("PlanePositionSequence", "ImagePositionPatient"), 3))
        pss.append(_floats(find("PixelMeasuresSequence", "PixelSpacing"), 2))
        rescale.append((_float(find("PixelValueTransformationSequence", "RescaleSlope"), default_rescale[0]) or 1.0,
                        _float(find("PixelValueTransformationSequence", "RescaleIntercept"), default_rescale[1])))
    if not per and n > 1:  # no per-frame positions: derive them, or leave them unknown
        ipps = _positions_without_groups(ds, n)
        iops = [_floats(ds.get("ImageOrientationPatient"), 6)] * n
    return iops, np.array(ipps, dtype=object if any(p is None for p in ipps) else float), pss, rescale


def _positions_without_groups(ds, n: int) -> list:
    """Frame positions of a multi-frame file without functional groups: RT dose
    (GridFrameOffsetVector) or a legacy stack (SpacingBetweenSlices); else unknown (None)."""
    iop = _floats(ds.get("ImageOrientationPatient"), 6)
    start = _floats(ds.get("ImagePositionPatient"), 3)
    if iop is None or start is None:
        return [None] * n
    normal = np.cross(iop[:3], iop[3:])
    offsets = ds.get("GridFrameOffsetVector")
    if offsets is not None and len(offsets) == n:
        # frame k lies offsets[k] - offsets[0] mm from the first frame, along the normal
        off = np.asarray([float(v) for v in offsets])
        return [start + (o - off[0]) * normal for o in off]
    step = _float(ds.get("SpacingBetweenSlices"))
    if step:
        return [start + k * step * normal for k in range(n)]
    return [None] * n


# ---------------------------------------------------------------------------- building images
def _metadata(h: _Header, source: Path, extra: dict | None = None) -> dict:
    ds = h.ds
    tags: dict[str, Any] = {}
    for name in SAFE_TAGS:
        value = ds.get(name)
        if value is None or value == "":
            continue
        tags[name] = _plain(value)
    if "RescaleSlope" not in tags and (h.slope != 1.0 or h.intercept != 0.0):
        tags["RescaleSlope"], tags["RescaleIntercept"] = h.slope, h.intercept
    tags["TransferSyntax"] = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    meta: dict[str, Any] = {"source": str(source), "format": "DICOM", "modality": h.modality or None, "dicom": tags}
    units = _units(h)
    if units:
        meta["units"] = units
    window = _window(ds, h)
    if window:
        meta["window"] = window
    if h.photometric == "MONOCHROME1":
        meta["notes"] = ["MONOCHROME1 inverted so that higher values display brighter (bone bright)"]
    meta.update(extra or {})
    return meta


def _plain(value):
    from pydicom.multival import MultiValue

    if isinstance(value, (MultiValue, list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bool):
        return value
    if isinstance(value, int):  # pydicom's IS
        return int(value)
    if isinstance(value, float):  # pydicom's DS
        return float(value)
    if isinstance(value, str):
        return value.strip()
    for cast in (int, float):
        try:
            out = cast(value)
            if str(out) == str(value) or cast is float:
                return out
        except (TypeError, ValueError):
            continue
    return str(value)


def _units(h: _Header) -> str | None:
    rescale_type = str(h.ds.get("RescaleType", "") or "").strip().upper()
    if h.ds.get("DoseUnits"):
        return str(h.ds.DoseUnits).strip().upper()
    if h.modality == "CT" or rescale_type == "HU":
        return "HU"
    if rescale_type and rescale_type != "US":
        return rescale_type
    return None


def _window(ds, h: _Header) -> tuple[float, float] | None:
    """The file's first (width, level) in the image's value space (MONOCHROME1 mirrored)."""
    def first(v):
        v = _plain(v)
        v = v[0] if isinstance(v, list) and v else v
        return _float(v)

    centre, width = first(ds.get("WindowCenter")), first(ds.get("WindowWidth"))
    if centre is None or width is None or width <= 0:
        return None
    if h.photometric == "MONOCHROME1":  # mirror the centre as the voxels were: slope*(lo+hi-v)+intercept
        lo, hi = _stored_range(ds)
        centre = h.slope * (lo + hi) + 2 * h.intercept - centre
    return (float(width), float(centre))


def read_series(headers: Sequence[_Header], where: str, source: Path) -> Image:
    """A volume (or 2D image) from the headers of one series."""
    image = _read_series(headers, where, source)
    return _with_header_notes(image, headers, where)


def _read_series(headers: Sequence[_Header], where: str, source: Path) -> Image:
    h = headers[0]
    if is_seg(h.ds):
        return read_seg(h.path, _metadata(h, source))
    if h.frames > 1:
        return _read_multiframe(h, source)
    if h.samples != 1:
        if len(headers) > 1:
            raise ReadError(f"{where}: a series of colour ({h.photometric}) images is not supported; load one file at a time")
        return _read_2d(h, source)
    if len(headers) == 1 and (h.iop is None or h.ipp is None):
        return _read_2d(h, source)
    thickness = _float(h.ds.get("SliceThickness"))
    single = _float(h.ds.get("SpacingBetweenSlices")) or thickness or 1.0
    geom = stack_geometry(
        [x.iop for x in headers], [x.ipp for x in headers], [x.pixel_spacing for x in headers],
        [(x.rows, x.cols) for x in headers], [str(x.path) for x in headers], where, single_step=single,
    )
    ordered = [headers[i] for i in geom.order]
    voxels = _voxels_of_slices(ordered)
    extra = _slice_metadata(geom, thickness, len(headers))
    return Image(voxels, geom.spacing, geom.origin, geom.direction, metadata=_metadata(h, source, extra))


def _with_header_notes(image: Image, headers: Sequence[_Header], where: str) -> Image:
    """Record (and warn once about) the rules applied to the headers, e.g. PixelSpacing 0."""
    notes = list(dict.fromkeys(note for h in headers for note in h.notes))
    if not notes:
        return image
    meta = dict(image.metadata)
    meta["notes"] = [*meta.get("notes", []), *notes]
    if any(h.spacing_unknown for h in headers):
        meta["spacing_unknown"] = ["x", "y"]
    for note in notes:
        warn(f"{where}: {note}")
    return Image(image.array, image.spacing, image.origin, image.direction, kind=image.kind, labels=image.labels,
                 metadata=meta, rgb=image.rgb)


def _slice_metadata(geom: _Geometry, thickness: float | None, n: int) -> dict:
    extra: dict[str, Any] = {"n_files": n}
    if thickness:
        extra["slice_thickness"] = thickness
    if geom.step is not None:
        extra["slice_step"] = geom.step
        if thickness and abs(thickness - geom.step) > 0.01 * geom.step:
            extra.setdefault("notes", []).append(
                f"slice step {geom.step:.3g} mm (from ImagePositionPatient) differs from SliceThickness "
                f"{thickness:.3g} mm; the measured step is the z spacing"
            )
    return extra


def _read_2d(h: _Header, source: Path) -> Image:
    """One single-frame file without slice geometry (radiograph, mammogram, photo): a 2D image."""
    ds, raw = decode_pydicom(h.path)
    rgb = h.samples in (3, 4) or (h.photometric == "PALETTE COLOR" and raw is not None)
    if raw is not None and h.photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        raw = apply_color_lut(raw, ds)
    if raw is None:
        voxels = _gdcm_file(h.path)
        voxels = voxels.reshape(voxels.shape[-3:] if rgb else voxels.shape[-2:])
    elif rgb:
        voxels = raw
    else:
        stored = _invert_monochrome1(raw, ds) if h.photometric == "MONOCHROME1" else raw
        voxels = _rescale(stored, h.slope, h.intercept)
    extra: dict[str, Any] = {}
    if h.pixel_spacing is None and not h.spacing_unknown:  # (a PixelSpacing of 0 has its own note)
        extra["notes"] = ["no PixelSpacing/ImagerPixelSpacing in the file: 1 mm pixels assumed"]
    ps = h.pixel_spacing if h.pixel_spacing is not None else np.ones(2)
    meta = _metadata(h, source)
    meta.setdefault("notes", []).extend(extra.get("notes", []))
    if not meta["notes"]:
        del meta["notes"]
    if h.iop is not None and h.ipp is not None and not rgb:  # a single slice keeps its place in the patient
        geom = stack_geometry([h.iop], [h.ipp], [h.pixel_spacing], [(h.rows, h.cols)], [str(h.path)], str(h.path))
        return Image(voxels[None], geom.spacing, geom.origin, geom.direction, metadata=meta)
    return Image(voxels, (float(ps[1]), float(ps[0])), metadata=meta, rgb=rgb)


def _read_multiframe(h: _Header, source: Path) -> Image:
    where = str(h.path)
    if h.samples != 1:
        raise ReadError(f"{where}: a multi-frame colour file ({h.frames} frames, {h.photometric}, e.g. an ultrasound "
                        "cine loop) is not supported; medlab loads grey-level volumes")
    ds, raw = decode_pydicom(h.path)
    if raw is None:
        ts = getattr(ds.file_meta, "TransferSyntaxUID", None)
        raise ReadError(f"{where}: pydicom has no decoder for this multi-frame file's transfer syntax "
                        f"({getattr(ts, 'name', ts)}); decompress it first (e.g. `gdcmconv --raw`)")
    iops, ipps, pss, rescale = _frame_geometry(ds, (h.slope, h.intercept))
    # per-frame PixelSpacing of 0 follows the file's rule (see _pixel_spacing)
    pss = [p if p is not None and np.all(p > 0) else h.pixel_spacing for p in pss]
    if any(p is None for p in ipps):
        raise ReadError(
            f"{where} holds {h.frames} frames without slice positions (a cine loop or a time series?); medlab loads "
            "volumes whose frames have ImagePositionPatient: read single frames with pydicom (ds.pixel_array[i])"
        )
    thickness = _float(getattr(_first_item(_first_item(ds, "SharedFunctionalGroupsSequence"), "PixelMeasuresSequence"),
                               "SliceThickness", None)) or _float(ds.get("SliceThickness"))
    names = [f"frame {i + 1}" for i in range(h.frames)]
    geom = stack_geometry(iops, list(ipps), pss, [(h.rows, h.cols)] * h.frames, names, where,
                          single_step=thickness or 1.0)
    raw = raw.reshape(h.frames, h.rows, h.cols)[geom.order]
    slopes = [rescale[i][0] for i in geom.order]
    intercepts = [rescale[i][1] for i in geom.order]
    stored = _invert_monochrome1(raw, ds) if h.photometric == "MONOCHROME1" else raw
    if len(set(zip(slopes, intercepts))) == 1:
        voxels = _rescale(stored, slopes[0], intercepts[0])
    else:
        voxels = _rescale(stored, slopes, intercepts)
    h.slope, h.intercept = slopes[0], intercepts[0]
    extra = _slice_metadata(geom, thickness, 1)
    extra["n_frames"] = h.frames
    return Image(voxels, geom.spacing, geom.origin, geom.direction, metadata=_metadata(h, source, extra))


def read_dicom(path: Path, series=None) -> Image:
    """Read a DICOM file or folder (see :func:`medlab.io.load`)."""
    if path.is_dir():
        headers = scan_folder(path)
        if not headers:
            raise ReadError(_empty_folder_message(path))
        groups = group_series(headers)
        infos = [series_info(k, v) for k, v in groups.items()]
        infos.sort(key=lambda s: (s.number is None, s.number or 0, s.description, s.uid, str(s.files[0])))
        chosen = select_series(infos, series, path)
        where = f"series {chosen.description or chosen.uid or chosen.number!r} in {path}"
        return read_series(groups[chosen.key], where, path)
    header = read_header(path, strict=True)
    if series is not None:
        info = series_info(_group_key(header), [header])
        select_series([info], series, path)
    return read_series([header], str(path), path)


def _empty_folder_message(path: Path) -> str:
    entries = [p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")]
    if not entries:
        return f"{path} is an empty folder: point medlab.load at a folder of DICOM files or at an image file"
    examples = ", ".join(p.name for p in entries[:3])
    return (f"{path} holds no DICOM images ({len(entries)} other file(s), e.g. {examples}); point medlab.load at "
            "the image file itself (.nii.gz, .nrrd, .png...) or at a folder of DICOM files")

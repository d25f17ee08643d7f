"""NIfTI: which header fields give the geometry, and a write that cannot end half done.

Reading: the geometry rules
---------------------------
A NIfTI header can place its voxels in three ways (the sform, the qform, or the Analyze
pixdim alone), and real files get them wrong. Readers differ, so medlab states one rule per
case, records it in ``metadata["notes"]`` and warns (:class:`~medlab.errors.MedlabWarning`,
naming the file) whenever the rule had to choose:

* **Which transform.** The sform when ``sform_code > 0``, else the qform when
  ``qform_code > 0``, else pixdim alone. This is nibabel's ``get_best_affine`` (and FSL's).
  Recent ITK (5.x: SimpleITK 2.5, 3D Slicer, ANTs) also prefers the sform, but takes the
  spacing from pixdim and falls back to the qform when the sform's scales differ from
  pixdim ("unexpected scales in sform", checked with SimpleITK 2.5.7): for such a file the
  two families disagree, so medlab warns and says what ITK reads.
* **qform and sform disagree** (beyond float32 rounding): the sform is used, as above; note
  and warning give both.
* **A sheared sform** (not a rotation times a scaling) cannot be a spacing and a direction:
  the qform is used, as ITK does; note and warning.
* **pixdim of 0** on an axis whose spacing comes from pixdim: 1 mm, as nibabel
  (``_chk_pixdims``: "setting 0 dims to 1") and ITK/nifti1_io (``dx > 0 ? dx : 1``) both do;
  the note says the spacing is unknown, and ``metadata["spacing_unknown"]`` lists the axes.
* **pixdim below 0** on such an axis is **refused**: the NIfTI-1 standard requires positive
  pixdim (handedness lives in qfac, pixdim[0]), nibabel takes the absolute value while ITK
  mirrors the axis, so the two most used readers put the patient's left on different sides.
* **No transform at all** (both codes 0, an Analyze-style file): nibabel's convention
  (x flipped, centred); ITK uses identity LPS at 0. Note and warning.

Writing
-------
SimpleITK/ITK writes the voxels, but its NIfTI writer only prints "wrote only N of M bytes"
and returns normally on a full disk or at a file-size limit. So the size of what it wrote is
checked against the header before the file is kept.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ReadError, warn
from .atomic import likely_write_error, temporary_beside
from .headers import check_claimed_size

NIFTI_INTENT_LABEL = 1002
_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# qform parameters are float32 quaternions: allow their rounding before calling two forms different
_FORM_ATOL = 1e-3  # mm per voxel and mm of origin
_AXES = "xyz"


def read_nifti_image(path: Path, *, volume: int | None):
    """``(array [z, y, x] or [y, x], spacing, origin, direction, stored, notes)`` of a NIfTI file."""
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError
    from nibabel.imageglobals import LoggingOutputSuppressor

    try:
        with LoggingOutputSuppressor():  # nibabel logs its own header fixes; medlab reports them
            nii = nib.load(str(path))
            raw = _raw_header(nii)
    except (OSError, EOFError, ValueError, ImageFileError) as exc:
        raise ReadError(f"{path}: the NIfTI file cannot be read ({exc}); it is corrupt or truncated") from exc
    shape = tuple(int(n) for n in nii.shape)
    if len(shape) > 4 and any(n > 1 for n in shape[4:]):
        raise ReadError(f"{path} holds {shape[4:]} values per voxel (a vector or tensor field, shape {shape}); "
                        "medlab loads scalar volumes: pick one component with nibabel first")
    n_volumes = shape[3] if len(shape) >= 4 else 1
    volume = _volume_index(path, shape, n_volumes, volume)
    _check_nifti_size(nii, path, shape, n_volumes)
    affine, notes, unknown = nifti_affine(raw, path)
    try:
        data = _voxels(nii, shape, volume)
    except (OSError, EOFError, ValueError) as exc:
        raise ReadError(f"{path}: the NIfTI file cannot be read ({exc}); it is corrupt or truncated") from exc
    two_d = int(raw["dim"][0]) == 2 and data.ndim == 2 and _in_plane(affine)
    if two_d:
        lin = affine[:2, :2]
        spacing = np.linalg.norm(lin, axis=0)
        geometry = (spacing, affine[:2, 3], lin / spacing[None, :])
    else:
        data = data.reshape(data.shape + (1,) * (3 - data.ndim)) if data.ndim < 3 else data
        lin = affine[:3, :3]
        spacing = np.linalg.norm(lin, axis=0)
        geometry = (spacing, affine[:3, 3], lin / spacing[None, :])
    array = np.ascontiguousarray(data.T)
    stored: dict[str, Any] = {}
    if int(raw.get("intent_code", 0)) == NIFTI_INTENT_LABEL:
        stored["kind"] = "label"
    stored.update(parse_descrip(raw.get("descrip", b"")))
    if unknown:
        stored["spacing_unknown"] = [a for a in unknown if _AXES.index(a) < array.ndim]
    return array, *geometry, stored, notes


def _raw_header(nii):
    """The header as stored in the file, before nibabel's silent fixes (pixdim 0 -> 1 ...)."""
    from nibabel.openers import ImageOpener

    holder = nii.file_map.get("header") or nii.file_map["image"]
    filename = holder.filename
    with ImageOpener(filename) as f:
        return type(nii.header).from_fileobj(f, check=False)


def _volume_index(path: Path, shape, n: int, volume: int | None) -> int | None:
    if len(shape) < 4 or n == 1:
        if volume not in (None, 0):
            raise ReadError(f"{path} holds a single volume; volume={volume} does not apply (leave it out)")
        return None
    if volume is None:
        raise ReadError(four_d_message(path, shape[:3], n))
    if not 0 <= volume < n:
        raise ReadError(f"{path}: volume={volume} is out of range; this file holds volumes 0 to {n - 1}")
    return volume


def four_d_message(path: Path, size, n: int) -> str:
    return (f"{path} is a 4D file holding {n} volumes of {size[0]}×{size[1]}×{size[2]} voxels (a time series, "
            f"diffusion directions...); medlab works on one 3D volume at a time: pick one with "
            f"medlab.load(path, volume=i), i from 0 to {n - 1}")


def _check_nifti_size(nii, path: Path, shape, n_volumes: int) -> None:
    proxy = nii.dataobj
    itemsize = np.dtype(nii.header.get_data_dtype()).itemsize
    scaled = _is_scaled(proxy)
    image_file = Path(nii.file_map["image"].filename)
    compression = {".gz": "gzip", ".bz2": "bzip2", ".zst": "zstd"}.get(image_file.suffix.lower())
    # nibabel reads the voxels, (scales them to float32), then medlab makes a [z, y, x] copy
    out_itemsize = 4 if scaled else itemsize
    per_voxel = itemsize + out_itemsize + (8 if scaled else 0)
    # vox_offset counts bytes of the decompressed stream: a compressed file is bounded as a whole
    offset = 0 if compression else int(getattr(proxy, "offset", 0))
    check_claimed_size(path, "NIfTI", shape, itemsize, data_file=image_file, offset=offset,
                       encoding=compression or "raw", memory_bytes_per_voxel=per_voxel,
                       memory_fraction=1 / n_volumes)


def _is_scaled(proxy) -> bool:
    slope, inter = getattr(proxy, "slope", 1.0), getattr(proxy, "inter", 0.0)
    return not (slope in (None, 1.0) or np.isnan(slope)) or not (inter in (None, 0.0) or np.isnan(inter))


def _voxels(nii, shape, volume: int | None) -> np.ndarray:
    proxy = nii.dataobj
    if len(shape) > 4:
        proxy = proxy.reshape(shape[:4])
    scaled = _is_scaled(proxy)
    if volume is not None:
        data = np.asarray(proxy[..., volume])
        data = data.astype(np.float32) if scaled else data
    elif len(shape) == 4:  # a single volume stored as 4D
        data = np.asarray(proxy[..., 0])
        data = data.astype(np.float32) if scaled else data
    else:
        data = nii.get_fdata(dtype=np.float32) if scaled else np.asarray(proxy.get_unscaled())
    if not data.dtype.isnative:
        data = data.astype(data.dtype.newbyteorder("="))
    return data


def _in_plane(affine: np.ndarray) -> bool:
    """True when a 2D file's third axis carries nothing (no tilt out of the plane, z origin 0)."""
    return bool(np.allclose(affine[2, :2], 0) and np.allclose(affine[:2, 2], 0) and abs(affine[2, 3]) < 1e-6)


# ---------------------------------------------------------------------------- geometry rules
def nifti_affine(raw, path: Path) -> tuple[np.ndarray, list[str], list[str]]:
    """The LPS affine by medlab's rules (module docstring), the notes, and the axes whose
    spacing is unknown. Warns once per rule that had to choose."""
    n = max(1, min(int(raw["dim"][0]), 3))
    pixdim = np.asarray(raw["pixdim"][1:4], dtype=float)
    scode, qcode = int(raw["sform_code"]), int(raw["qform_code"])
    sform = np.asarray(raw.get_sform(), dtype=float)
    notes: list[str] = []
    unknown: list[str] = []
    if scode > 0 and _rotation_times_scale(sform, n):
        affine = sform
        if qcode > 0:
            _compare_forms(raw, pixdim, sform, path, notes)
    else:
        if scode > 0:
            notes.append("the sform is sheared (not a rotation times a voxel size), which medlab cannot hold: "
                         "the qform is used, as ITK does; nibabel would use the sheared sform")
        negative = [_AXES[i] for i in range(n) if pixdim[i] < 0]
        if negative:
            raise ReadError(
                f"{path}: pixdim is negative along {', '.join(negative)} ({_fmt(pixdim[:n])}); NIfTI requires "
                "positive voxel sizes (the handedness is qfac, pixdim[0]), and readers disagree on such a file: "
                "nibabel takes the absolute value, ITK/SimpleITK mirrors the axis, so left and right may swap. "
                "Ask for a corrected file, or fix the header yourself if you know the true orientation "
                "(nibabel: img.header['pixdim'][1:4] = abs(...), then check left/right on the image)"
            )
        zero = [i for i in range(n) if pixdim[i] == 0 or not np.isfinite(pixdim[i])]
        fixed = pixdim.copy()
        fixed[zero] = 1.0
        if zero:
            unknown = [_AXES[i] for i in zero]
            notes.append(f"pixdim is 0 along {', '.join(unknown)}: the voxel size there is unknown and 1 mm is "
                         "assumed (as nibabel and ITK do); distances and volumes along it are not in mm")
        if qcode > 0:
            affine = _qform(raw, fixed)
        else:
            affine = _base_affine(raw, fixed)
            notes.append("the header holds neither a qform nor an sform (an Analyze-style file): the orientation is "
                         "unknown; nibabel's convention is used (x flipped, image centred on 0), while ITK would "
                         "use an identity LPS direction at origin 0")
    if not np.all(np.isfinite(affine)):
        raise ReadError(f"{path}: the NIfTI transform holds NaN or infinite values ({affine.tolist()}); "
                        "the header is corrupt")
    for note in notes:
        warn(f"{path}: {note}")
    return _LPS_FROM_RAS @ affine, notes, unknown


def _rotation_times_scale(affine: np.ndarray, n: int) -> bool:
    """True when the first ``n`` columns are orthogonal and non-zero (no shear)."""
    lin = affine[:3, :3]
    if not np.all(np.isfinite(lin)):
        return False
    norms = np.linalg.norm(lin, axis=0)
    if np.any(norms[:n] <= 0):
        return False
    unit = lin / np.where(norms > 0, norms, 1.0)[None, :]
    gram = unit.T @ unit
    return bool(np.allclose(gram[:n, :n], np.eye(n), atol=1e-4))


def _qform(raw, pixdim: np.ndarray) -> np.ndarray:
    hdr = raw.copy()
    hdr["pixdim"][1:4] = np.abs(pixdim)
    if hdr["pixdim"][0] not in (-1, 1):
        hdr["pixdim"][0] = 1  # nibabel and nifti1_io treat any other qfac as 1
    return np.asarray(hdr.get_qform(), dtype=float)


def _base_affine(raw, pixdim: np.ndarray) -> np.ndarray:
    hdr = raw.copy()
    hdr["pixdim"][1:4] = np.where(pixdim == 0, 1.0, np.abs(pixdim))
    return np.asarray(hdr.get_base_affine(), dtype=float)


def _compare_forms(raw, pixdim: np.ndarray, sform: np.ndarray, path: Path, notes: list[str]) -> None:
    qform = _qform(raw, np.where(pixdim == 0, 1.0, pixdim))
    if np.allclose(qform, sform, atol=_FORM_ATOL):
        return
    s_sp, q_sp = np.linalg.norm(sform[:3, :3], axis=0), np.linalg.norm(qform[:3, :3], axis=0)
    text = (f"the qform and sform disagree (sform: voxel size {_fmt(s_sp)} mm, origin {_fmt(sform[:3, 3])}; "
            f"qform: {_fmt(q_sp)} mm, origin {_fmt(qform[:3, 3])}); the sform is used, as nibabel and FSL do")
    itk = _itk_spacing(path)
    if itk is not None and not np.allclose(itk, s_sp[: len(itk)], atol=_FORM_ATOL):
        text += f", while SimpleITK/ITK (and 3D Slicer) read a voxel size of {_fmt(itk)} mm"
    notes.append(text)


def _itk_spacing(path: Path) -> tuple[float, ...] | None:
    """The spacing SimpleITK reads from the header (the header only), or None."""
    import SimpleITK as sitk

    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        return tuple(reader.GetSpacing())
    except RuntimeError:
        return None
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


def parse_descrip(descrip) -> dict:
    """medlab's kind, modality and units from a NIfTI ``descrip`` written by :func:`medlab.save`."""
    text = descrip.tobytes() if hasattr(descrip, "tobytes") else descrip
    text = text.decode("ascii", "replace") if isinstance(text, bytes) else str(text)
    text = text.strip("\x00 ")
    out = {}
    if text.startswith("medlab "):
        for part in text.split()[1:]:
            key, _, value = part.partition("=")
            if key in ("kind", "modality", "units") and value:
                out[key] = value
    return out


# ---------------------------------------------------------------------------- writing
def descrip(image) -> bytes:
    parts = ["medlab", f"kind={image.kind}"]
    for key in ("modality", "units"):
        value = image.metadata.get(key)
        if isinstance(value, str) and value and " " not in value:
            parts.append(f"{key}={value}")
    return " ".join(parts).encode("ascii", "replace")[:79]


def write_nifti(out, image, tmp: Path, dest: Path, *, gz: bool) -> None:
    """Write SimpleITK image ``out`` as NIfTI to ``tmp`` (the temporary file of ``dest``),
    with medlab's header fields, checking that every byte reached the disk."""
    import SimpleITK as sitk

    if not gz:
        sitk.WriteImage(out, str(tmp), False)
        header = _checked_header(tmp, dest, image)
        with open(tmp, "r+b") as f:
            f.write(header)
        return
    with temporary_beside(dest, ".nii") as raw:
        sitk.WriteImage(out, str(raw), False)
        header = _checked_header(raw, dest, image)
        # level 1: 4x faster than 6 for ~3 % more bytes; mtime 0 keeps the bytes reproducible
        with open(raw, "rb") as src, open(tmp, "wb") as f, \
                gzip.GzipFile(filename="", fileobj=f, mode="wb", compresslevel=1, mtime=0) as z:
            z.write(header)
            src.seek(len(header))
            shutil.copyfileobj(src, z, 4 << 20)


def _checked_header(path: Path, dest: Path, image) -> bytes:
    """The header (up to the voxels) of the NIfTI file ITK wrote, patched with medlab's
    fields; raises when the file is shorter than the header says (full disk, size limit)."""
    with open(path, "rb") as f:
        head = f.read(352)
        order = "<" if struct.unpack("<i", head[:4])[0] == 348 else ">"
        if len(head) < 348 or struct.unpack(order + "i", head[:4])[0] != 348:
            raise likely_write_error(dest, 348, len(head))
        dims = struct.unpack(order + "8h", head[40:56])
        bitpix = struct.unpack(order + "h", head[72:74])[0]
        offset = int(struct.unpack(order + "f", head[108:112])[0])
        f.seek(0)
        header = bytearray(f.read(offset))
    expected = offset + int(np.prod([max(1, d) for d in dims[1: dims[0] + 1]], dtype=object)) * bitpix // 8
    actual = os.path.getsize(path)
    if actual < expected:
        raise likely_write_error(dest, expected, actual)
    if image.is_label:
        struct.pack_into(order + "h", header, 68, NIFTI_INTENT_LABEL)
        header[328:344] = b"medlab label".ljust(16, b"\x00")
    header[148:228] = descrip(image).ljust(80, b"\x00")
    return bytes(header)

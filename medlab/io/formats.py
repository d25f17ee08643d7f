"""Non-DICOM formats: NIfTI, NRRD, MetaImage, and 2D PNG/JPEG/TIFF/BMP, read and written
with SimpleITK (which keeps the LPS geometry of each format, big-endian NIfTI included).

medlab's own information (kind, label names, modality, units) travels in the files:
NRRD and MetaImage carry a ``medlab`` key holding JSON; NIfTI carries the label intent
(``intent_code`` 1002, NIFTI_INTENT_LABEL) and a short ``descrip``.
"""

from __future__ import annotations

import errno
import gzip
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ImageError, ReadError, WriteError, warn
from ..image import Image
from . import nifti, png
from .atomic import atomic_path, likely_write_error, write_error
from .headers import check_itk_header
from .nifti import NIFTI_INTENT_LABEL, four_d_message

# suffix -> format name; the longest suffix wins (".nii.gz" before ".gz")
READ_SUFFIXES = {
    ".nii": "NIfTI", ".nii.gz": "NIfTI", ".hdr": "NIfTI", ".img": "NIfTI",
    ".nrrd": "NRRD", ".nhdr": "NRRD", ".mha": "MetaImage", ".mhd": "MetaImage",
    ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP",
}
WRITE_SUFFIXES = {".nii": "NIfTI", ".nii.gz": "NIfTI", ".nrrd": "NRRD", ".mha": "MetaImage", ".png": "PNG"}

# What the first bytes of each format look like (after gunzip for .nii.gz).
_MAGIC = {
    "NRRD": lambda b: b.startswith(b"NRRD"),
    "MetaImage": lambda b: any(k in b[:4096] for k in (b"ObjectType", b"NDims", b"DimSize")),
    "PNG": lambda b: b.startswith(b"\x89PNG\r\n\x1a\n"),
    "JPEG": lambda b: b.startswith(b"\xff\xd8\xff"),
    "TIFF": lambda b: b[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),
    "BMP": lambda b: b.startswith(b"BM"),
}


def suffix_of(path: Path) -> str:
    """The format suffix of ``path``, lower case (``.nii.gz`` counts as one)."""
    name = path.name.lower()
    for suffix in sorted(READ_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def _head(path: Path, n: int = 4096) -> bytes:
    try:
        with open(path, "rb") as f:
            head = f.read(n)
        if head[:2] == b"\x1f\x8b":
            with gzip.open(path, "rb") as f:
                head = f.read(n)
    except PermissionError as exc:
        from .paths import permission_message

        raise ReadError(permission_message(path)) from exc
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ReadError(f"{path} cannot be read ({exc}); the file is corrupt or truncated") from exc
    return head


def _looks_like_nifti(head: bytes) -> bool:
    if len(head) < 348:
        return False
    for order in ("<", ">"):
        if struct.unpack(order + "i", head[:4])[0] in (348, 540):
            return True
    return False


def check_magic(path: Path, fmt: str) -> None:
    """Raise :class:`ReadError` when ``path``'s content is not the format its name claims."""
    head = _head(path)
    ok = _looks_like_nifti(head) if fmt == "NIfTI" and suffix_of(path) != ".img" else _MAGIC.get(fmt, lambda b: True)(head)
    if not ok:
        preview = head[:24].decode("latin-1", "replace")
        preview = "".join(c if c.isprintable() else "·" for c in preview)
        raise ReadError(
            f"{path} is not a {fmt} file although its name ends in {suffix_of(path)!r} (it starts with {preview!r}). "
            "Check that it is the file you meant, or give it the extension of its real format."
        )


def read_sitk(path: Path, fmt: str):
    """A ``SimpleITK.Image`` read from a non-DICOM file, with errors that name the file."""
    import SimpleITK as sitk

    check_magic(path, fmt)
    check_itk_header(path, fmt)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
        raise ReadError(
            f"{path}: SimpleITK could not read this {fmt} file ({reason}); it is probably corrupt or truncated"
        ) from exc


def read_nifti(path: Path, *, volume: int | None, kind: str | None, labels) -> Image:
    """A NIfTI file via nibabel (SimpleITK's reader turns NaN into 0 and accepts truncated files).

    The geometry follows the rules of :mod:`medlab.io.nifti` (sform, else qform, else pixdim;
    a note and a warning where readers disagree). A 2D file (``dim[0] = 2``) stays 2D.
    """
    check_magic(path, "NIfTI")
    array, spacing, origin, direction, stored, notes = nifti.read_nifti_image(path, volume=volume)
    return _image(array, spacing, origin, direction, path, "NIfTI", stored, kind=kind, labels=labels, notes=notes)


def split_volume(image, path: Path, volume: int | None):
    """A 3D volume from a 4D image (``volume`` picks which), or the image itself."""
    import SimpleITK as sitk

    if image.GetDimension() != 4:
        if volume not in (None, 0):
            raise ReadError(f"{path} holds a single volume; volume={volume} does not apply (leave it out)")
        return image
    size = list(image.GetSize())
    n = size[3]
    if volume is None:
        raise ReadError(four_d_message(path, size, n))
    if not 0 <= int(volume) < n:
        raise ReadError(f"{path}: volume={volume} is out of range; this file holds volumes 0 to {n - 1}")
    return sitk.Extract(image, size[:3] + [0], [0, 0, 0, int(volume)])


def image_from_sitk(image, path: Path, fmt: str, *, kind: str | None, labels) -> Image:
    """A medlab Image from what SimpleITK read, restoring medlab's kind/labels/modality."""
    ncomp, d = image.GetNumberOfComponentsPerPixel(), image.GetDimension()
    if ncomp > 1 and not (d == 2 and ncomp in (3, 4)):
        raise ReadError(f"{path} holds {ncomp} values per voxel in {d}D (a vector field or multi-channel volume); "
                        "medlab loads scalar volumes and 2D colour pictures: pick one channel with "
                        "SimpleITK.VectorIndexSelectionCast first")
    arr = sitk_array(image)
    stored = _stored_metadata(image)
    spacing = image.GetSpacing()
    if fmt == "PNG":
        stored.update(_png_metadata(path))
        spacing = _png_spacing(spacing, stored.get("spacing"))
    return _image(arr, spacing, image.GetOrigin(), np.reshape(image.GetDirection(), (d, d)), path, fmt,
                  stored, kind=kind, labels=labels, rgb=ncomp > 1)


def _png_spacing(read, stored):
    """ITK keeps about 5 significant digits of a PNG's pixel size (0.328125 mm comes back as
    0.32813): medlab's chunk holds the exact value, used when it agrees with the file's."""
    if not isinstance(stored, list) or len(stored) != len(read):
        return read
    try:
        exact = tuple(float(v) for v in stored)
    except (TypeError, ValueError):
        return read
    agree = all(v > 0 and abs(v - r) <= 1e-4 * max(abs(v), abs(r)) for v, r in zip(exact, read))
    return exact if agree else read


def sitk_array(image) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(image)


def _image(array, spacing, origin, direction, path: Path, fmt: str, stored: dict, *, kind, labels, rgb=False,
           notes=()) -> Image:
    """An Image with medlab's kind/labels/modality restored from what the file stored."""
    if kind is None:
        kind = stored.get("kind", "label" if labels is not None else "intensity")
    if labels is None and kind == "label":
        labels = stored.get("labels")
    meta: dict[str, Any] = {"source": str(path), "format": fmt}
    for key in ("modality", "units", "spacing_unknown"):
        if stored.get(key):
            meta[key] = stored[key]
    if notes:
        meta["notes"] = list(notes)
    try:
        out = Image(array, spacing, origin, direction, kind=kind, labels=labels, metadata=meta, rgb=rgb)
    except ImageError as exc:
        hint = " (load it with kind='intensity')" if kind == "label" else ""
        raise ImageError(f"{path}: {exc}{hint}") from exc
    return out if stored.get("rgb") else _grey_if_colourless(out, path)


def _grey_if_colourless(image: Image, path: Path) -> Image:
    """An RGB picture whose channels are equal (a grey X-ray saved as RGB by another program)
    becomes grey, with a note and a warning; medlab's own colour PNGs stay colour."""
    if not image.rgb:
        return image
    a = image.array
    if a.shape[-1] == 4 and not np.all(a[..., 3] == a[..., 3].flat[0]):
        return image
    if np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2]):
        note = "RGB file with three equal channels loaded as grey (one channel kept)"
        warn(f"{path}: {note}")
        meta = dict(image.metadata)
        meta["notes"] = [*meta.get("notes", []), note]
        return Image(np.ascontiguousarray(a[..., 0]), image.spacing, image.origin, image.direction,
                     kind=image.kind, labels=image.labels, metadata=meta)
    return image


def _stored_metadata(image) -> dict:
    keys = set(image.GetMetaDataKeys())
    out: dict[str, Any] = {}
    if "medlab" in keys:
        out = _medlab_info(image.GetMetaData("medlab"))
    if "intent_code" in keys and image.GetMetaData("intent_code").strip() == str(NIFTI_INTENT_LABEL):
        out.setdefault("kind", "label")
    if "descrip" in keys:
        for key, value in nifti.parse_descrip(image.GetMetaData("descrip")).items():
            out.setdefault(key, value)
    return out


def _png_metadata(path: Path) -> dict:
    text = png.read_text(path)
    return _medlab_info(text) if text else {}


def _medlab_info(text: str) -> dict:
    """The ``medlab`` JSON a file carries, keeping only well-formed entries."""
    try:
        out = dict(json.loads(text))
    except (ValueError, TypeError):
        return {}
    if out.get("kind") not in (None, "intensity", "label"):
        out.pop("kind")
    if isinstance(out.get("labels"), dict):
        out["labels"] = {int(k): v for k, v in out["labels"].items() if str(k).lstrip("-").isdigit()}
    else:
        out.pop("labels", None)
    out["rgb"] = out.get("rgb") is True
    return out


# ---------------------------------------------------------------------------- writing
def write_format(path: Path) -> str:
    """The format to write for ``path``'s suffix, or a :class:`WriteError`."""
    suffix = suffix_of(path)
    if suffix in (".mhd", ".nhdr", ".hdr", ".img"):
        raise WriteError(f"cannot write {path}: {suffix} keeps the voxels in a second file, which cannot be written "
                         "atomically; use the one-file variant (.mha, .nrrd or .nii.gz)")
    if suffix not in WRITE_SUFFIXES:
        raise WriteError(f"cannot write {path}: unsupported extension {suffix!r}; medlab writes "
                         f"{', '.join(WRITE_SUFFIXES)} (PNG for 2D images)")
    return WRITE_SUFFIXES[suffix]


def check_png(image: Image, path: Path) -> None:
    """Refuse what PNG cannot hold; warn about the geometry it drops (origin, direction)."""
    if image.ndim != 2:
        raise WriteError(f"cannot write {path}: PNG holds 2D pictures and this image is 3D {image.size}; "
                         "save it as .nii.gz/.nrrd/.mha, or save one slice (e.g. medlab.render.extract_slice)")
    ok = image.dtype == np.uint8 if image.rgb else image.dtype in (np.uint8, np.uint16)
    if not ok:
        raise WriteError(f"cannot write {path}: PNG holds 8/16-bit grey or 8-bit RGB voxels, not {image.dtype}; "
                         "convert first, e.g. medlab.render.window_level(image.array, window, level)")
    lost = []
    if any(o != 0 for o in image.origin):
        lost.append(f"origin {tuple(round(o, 4) for o in image.origin)}")
    if not np.allclose(image.direction, np.eye(2)):
        lost.append(f"direction {np.round(image.direction, 4).tolist()}")
    if lost:
        warn(f"{path}: PNG has no place for the {' and the '.join(lost)}; the picture will load back at "
             "origin (0, 0) with an identity direction, so it no longer overlays its source. Save as "
             ".nii.gz, .nrrd or .mha to keep them")


def _medlab_json(image: Image) -> str:
    info: dict[str, Any] = {"kind": image.kind}
    if image.labels:
        info["labels"] = {str(v): {"name": lab.name, "color": list(lab.color)} for v, lab in image.labels.items()}
    for key in ("modality", "units"):
        if isinstance(image.metadata.get(key), str):
            info[key] = image.metadata[key]
    if image.rgb:
        info["rgb"] = True
    return json.dumps(info, separators=(",", ":"))  # ensure_ascii: fits a PNG tEXt chunk


def _png_json(image: Image) -> str:
    """medlab's JSON for a PNG chunk: also the exact pixel size, which PNG rounds."""
    info = json.loads(_medlab_json(image))
    info["spacing"] = list(image.spacing)
    return json.dumps(info, separators=(",", ":"))


def write_image(image: Image, path: Path, fmt: str, *, overwrite: bool) -> Path:
    """Write ``image`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    import SimpleITK as sitk

    if image.array.size // (image.shape[-1] if image.rgb else 1) == 1:
        raise WriteError(f"cannot write {path}: the image holds a single voxel, which medlab.load refuses as "
                         "nothing to show or process; check the crop or the computation that produced it")
    if fmt == "PNG":
        check_png(image, path)
    if fmt == "NIfTI" and image.is_label and image.labels:
        named = ", ".join(f"{v} {lab.name}" for v, lab in list(image.labels.items())[:4])
        warn(f"{path}: NIfTI has no place for label names ({named}{', ...' if len(image.labels) > 4 else ''}); "
             "they will not load back. Save as .nrrd or .mha to keep them, or load with labels={...}")
    out = image.to_sitk()
    if fmt in ("NRRD", "MetaImage"):
        out.SetMetaData("medlab", _medlab_json(image))
    with atomic_path(path, overwrite=overwrite) as tmp:
        try:
            if fmt == "NIfTI":
                nifti.write_nifti(out, image, tmp, path, gz=suffix_of(path) == ".nii.gz")
            else:
                sitk.WriteImage(out, str(tmp), fmt != "PNG")
                if fmt == "PNG":
                    png.add_text(tmp, _png_json(image))
        except RuntimeError as exc:
            raise _itk_write_error(path, tmp, exc, image) from exc
    return path


def _itk_write_error(path: Path, tmp: Path, exc: RuntimeError, image: Image) -> WriteError:
    """A WriteError for an ITK writer failure, naming ``path`` (never the temporary file)."""
    likely = likely_write_error(path, image.array.nbytes, 0)
    if likely.errno != errno.EIO:  # a full disk or a file-size limit explains it
        return write_error(path, likely)
    reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
    return WriteError(f"cannot write {path}: {reason.replace(str(tmp), str(path))}")

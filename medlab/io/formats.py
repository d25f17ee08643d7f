"""Non-DICOM formats: NIfTI, NRRD, MetaImage, and 2D PNG/JPEG/TIFF/BMP, read and written
with SimpleITK (which keeps the LPS geometry of each format, big-endian NIfTI included).

medlab's own information (kind, label names, modality, units) travels in the files:
NRRD and MetaImage carry a ``medlab`` key holding JSON; NIfTI carries the label intent
(``intent_code`` 1002, NIFTI_INTENT_LABEL) and a short ``descrip``.
"""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ImageError, ReadError, WriteError
from ..image import Image
from .atomic import atomic_path

# suffix -> format name; the longest suffix wins (".nii.gz" before ".gz")
READ_SUFFIXES = {
    ".nii": "NIfTI", ".nii.gz": "NIfTI", ".hdr": "NIfTI", ".img": "NIfTI",
    ".nrrd": "NRRD", ".nhdr": "NRRD", ".mha": "MetaImage", ".mhd": "MetaImage",
    ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP",
}
WRITE_SUFFIXES = {".nii": "NIfTI", ".nii.gz": "NIfTI", ".nrrd": "NRRD", ".mha": "MetaImage", ".png": "PNG"}
NIFTI_INTENT_LABEL = 1002

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
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
        raise ReadError(
            f"{path}: SimpleITK could not read this {fmt} file ({reason}); it is probably corrupt or truncated"
        ) from exc


def read_nifti(path: Path, *, volume: int | None, kind: str | None, labels) -> Image:
    """A NIfTI file via nibabel (SimpleITK's reader turns NaN into 0 and accepts truncated files).

    The RAS affine (sform when set, else qform, as nibabel chooses) becomes LPS geometry.
    """
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    check_magic(path, "NIfTI")
    try:
        nii = nib.load(str(path))
        data = _nifti_voxels(nii)
    except (OSError, EOFError, ValueError, ImageFileError) as exc:
        raise ReadError(f"{path}: the NIfTI file cannot be read ({exc}); it is corrupt or truncated") from exc
    if data.ndim > 4 and any(n > 1 for n in data.shape[4:]):
        raise ReadError(f"{path} holds {data.shape[4:]} values per voxel (a vector or tensor field, shape {data.shape}); "
                        "medlab loads scalar volumes: pick one component with nibabel first")
    data = data.reshape(data.shape[:4]) if data.ndim > 4 else data
    data = data if data.ndim >= 3 else data.reshape(data.shape + (1,) * (3 - data.ndim))
    if data.ndim == 4:
        data = _pick_volume(data, path, volume)
    elif volume not in (None, 0):
        raise ReadError(f"{path} holds a single volume; volume={volume} does not apply (leave it out)")
    affine = _LPS_FROM_RAS @ np.asarray(nii.affine, dtype=float)
    lin = affine[:3, :3]
    spacing = np.linalg.norm(lin, axis=0)
    header = nii.header
    stored: dict[str, Any] = {}
    if int(header.get("intent_code", 0)) == NIFTI_INTENT_LABEL:
        stored["kind"] = "label"
    stored.update(_parse_descrip(header.get("descrip", b"")))
    return _image(np.ascontiguousarray(data.T), spacing, affine[:3, 3], lin / spacing[None, :], path, "NIfTI",
                  stored, kind=kind, labels=labels)


_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _nifti_voxels(nii) -> np.ndarray:
    proxy = nii.dataobj
    slope, inter = getattr(proxy, "slope", 1.0), getattr(proxy, "inter", 0.0)
    scaled = not (slope in (None, 1.0) or np.isnan(slope)) or not (inter in (None, 0.0) or np.isnan(inter))
    data = nii.get_fdata(dtype=np.float32) if scaled else np.asarray(proxy.get_unscaled())
    if not data.dtype.isnative:
        data = data.astype(data.dtype.newbyteorder("="))
    return data


def _pick_volume(data: np.ndarray, path: Path, volume: int | None) -> np.ndarray:
    n = data.shape[3]
    if n == 1 and volume in (None, 0):
        return data[..., 0]
    if volume is None:
        raise ReadError(_four_d_message(path, data.shape[:3], n))
    if not 0 <= int(volume) < n:
        raise ReadError(f"{path}: volume={volume} is out of range; this file holds volumes 0 to {n - 1}")
    return data[..., int(volume)]


def _four_d_message(path: Path, size, n: int) -> str:
    return (f"{path} is a 4D file holding {n} volumes of {size[0]}×{size[1]}×{size[2]} voxels (a time series, "
            f"diffusion directions...); medlab works on one 3D volume at a time: pick one with "
            f"medlab.load(path, volume=i), i from 0 to {n - 1}")


def _parse_descrip(descrip) -> dict:
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
        raise ReadError(_four_d_message(path, size, n))
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
    return _image(arr, image.GetSpacing(), image.GetOrigin(), np.reshape(image.GetDirection(), (d, d)), path, fmt,
                  _stored_metadata(image), kind=kind, labels=labels, rgb=ncomp > 1)


def sitk_array(image) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(image)


def _image(array, spacing, origin, direction, path: Path, fmt: str, stored: dict, *, kind, labels, rgb=False) -> Image:
    """An Image with medlab's kind/labels/modality restored from what the file stored."""
    if kind is None:
        kind = stored.get("kind", "label" if labels is not None else "intensity")
    if labels is None and kind == "label":
        labels = stored.get("labels")
    meta: dict[str, Any] = {"source": str(path), "format": fmt}
    for key in ("modality", "units"):
        if stored.get(key):
            meta[key] = stored[key]
    try:
        out = Image(array, spacing, origin, direction, kind=kind, labels=labels, metadata=meta, rgb=rgb)
    except ImageError as exc:
        hint = " (load it with kind='intensity')" if kind == "label" else ""
        raise ImageError(f"{path}: {exc}{hint}") from exc
    return _grey_if_colourless(out)


def _grey_if_colourless(image: Image) -> Image:
    """An RGB picture whose three channels are equal (a grey X-ray saved as RGB) becomes grey."""
    if not image.rgb:
        return image
    a = image.array
    if a.shape[-1] == 4 and not np.all(a[..., 3] == a[..., 3].flat[0]):
        return image
    if np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2]):
        meta = dict(image.metadata)
        meta.setdefault("notes", []).append("RGB file with equal channels loaded as grey")
        return Image(np.ascontiguousarray(a[..., 0]), image.spacing, image.origin, image.direction,
                     kind=image.kind, labels=image.labels, metadata=meta)
    return image


def _stored_metadata(image) -> dict:
    keys = set(image.GetMetaDataKeys())
    out: dict[str, Any] = {}
    if "medlab" in keys:
        try:
            out = dict(json.loads(image.GetMetaData("medlab")))
        except (ValueError, TypeError):
            out = {}
    if "intent_code" in keys and image.GetMetaData("intent_code").strip() == str(NIFTI_INTENT_LABEL):
        out.setdefault("kind", "label")
    if "descrip" in keys:
        for key, value in _parse_descrip(image.GetMetaData("descrip")).items():
            out.setdefault(key, value)
    if out.get("kind") not in (None, "intensity", "label"):
        out.pop("kind")
    if isinstance(out.get("labels"), dict):
        out["labels"] = {int(k): v for k, v in out["labels"].items() if str(k).lstrip("-").isdigit()}
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
    if image.ndim != 2:
        raise WriteError(f"cannot write {path}: PNG holds 2D pictures and this image is 3D {image.size}; "
                         "save it as .nii.gz/.nrrd/.mha, or save one slice (e.g. medlab.render.extract_slice)")
    ok = image.dtype == np.uint8 if image.rgb else image.dtype in (np.uint8, np.uint16)
    if not ok:
        raise WriteError(f"cannot write {path}: PNG holds 8/16-bit grey or 8-bit RGB voxels, not {image.dtype}; "
                         "convert first, e.g. medlab.render.window_level(image.array, window, level)")


def _medlab_json(image: Image) -> str:
    info: dict[str, Any] = {"kind": image.kind}
    if image.labels:
        info["labels"] = {str(v): {"name": lab.name, "color": list(lab.color)} for v, lab in image.labels.items()}
    for key in ("modality", "units"):
        if isinstance(image.metadata.get(key), str):
            info[key] = image.metadata[key]
    return json.dumps(info, separators=(",", ":"))


def _descrip(image: Image) -> bytes:
    parts = ["medlab", f"kind={image.kind}"]
    for key in ("modality", "units"):
        value = image.metadata.get(key)
        if isinstance(value, str) and value and " " not in value:
            parts.append(f"{key}={value}")
    return " ".join(parts).encode("ascii", "replace")[:79]


def _patch_nifti_header(data: bytearray, image: Image) -> None:
    order = "<" if struct.unpack("<i", data[:4])[0] == 348 else ">"
    if struct.unpack(order + "i", data[:4])[0] != 348:
        raise WriteError("unexpected NIfTI header written by SimpleITK")
    if image.is_label:
        struct.pack_into(order + "h", data, 68, NIFTI_INTENT_LABEL)
        data[328:344] = b"medlab label".ljust(16, b"\x00")
    data[148:228] = _descrip(image).ljust(80, b"\x00")


def write_image(image: Image, path: Path, fmt: str, *, overwrite: bool) -> Path:
    """Write ``image`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    import SimpleITK as sitk

    if fmt == "PNG":
        check_png(image, path)
    out = image.to_sitk()
    if fmt in ("NRRD", "MetaImage"):
        out.SetMetaData("medlab", _medlab_json(image))
    try:
        with atomic_path(path, overwrite=overwrite) as tmp:
            if fmt == "NIfTI":
                _write_nifti(out, image, tmp, gz=suffix_of(path) == ".nii.gz")
            else:
                sitk.WriteImage(out, str(tmp), fmt != "PNG")
    except RuntimeError as exc:
        raise WriteError(f"cannot write {path}: {str(exc).strip().splitlines()[-1]}") from exc
    return path


def _write_nifti(out, image: Image, tmp: Path, *, gz: bool) -> None:
    import SimpleITK as sitk

    raw = tmp.with_name(tmp.name[: -len(".nii.gz")] + ".raw.nii") if gz else tmp
    try:
        sitk.WriteImage(out, str(raw), False)
        data = bytearray(raw.read_bytes())
        _patch_nifti_header(data, image)
        if gz:  # level 1: 4x faster than 6 for ~3 % more bytes; mtime 0 keeps the bytes reproducible
            tmp.write_bytes(gzip.compress(data, compresslevel=1, mtime=0))
        else:
            raw.write_bytes(data)
    finally:
        if gz:
            raw.unlink(missing_ok=True)

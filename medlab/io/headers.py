"""Refuse a header that claims more voxels than its file can hold, before allocating them.

A 4 kB NIfTI whose header says 30000³ voxels made numpy ask for 54 TB: a bare
``MemoryError`` with an empty message (or the out-of-memory killer). The claimed size is
compared first with the bytes the file holds (uncompressed data), or with the most those
bytes can expand to (deflate never expands more than about 1032 to 1), then with the memory
available (:mod:`medlab.io.memory`).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ReadError
from .atomic import format_bytes
from .memory import check_allocation, size_text, voxel_count

# zlib's technical notes: deflate's best case is 258 bytes per 2-bit code, about 1032:1
DEFLATE_MAX_RATIO = 1032
_EXPANDING = ("gzip", "zlib")   # bzip2 and zstd can expand further: only the memory check applies


def check_claimed_size(path: Path, fmt: str, size, itemsize: int, *, data_file: Path | None, offset: int | None,
                       encoding: str, memory_bytes_per_voxel: float, memory_fraction: float = 1.0) -> None:
    """Raise :class:`ReadError` when the header's ``size`` cannot be in the file or in memory.

    Parameters
    ----------
    path : Path
        The file the user named (for messages).
    fmt : str
        Format name, for messages.
    size : sequence of int
        Claimed voxels per axis (components included).
    itemsize : int
        Bytes per stored value.
    data_file, offset : Path, int or None
        Where the voxels start; None when unknown (a list of files, a pattern).
    encoding : str
        ``'raw'``, ``'gzip'``, ``'zlib'``, ``'bzip2'``, ``'zstd'``, ``'text'`` or ``'hex'``.
    memory_bytes_per_voxel : float
        Bytes of memory each voxel needs while reading (all buffers alive at once).
    memory_fraction : float
        Part of the voxels actually read (one volume of a 4D file).
    """
    count = voxel_count(size)
    stored = count * itemsize
    claim = f"the header claims {size_text(size)} voxels ({format_bytes(stored)} of data)"
    held = _bytes_after(data_file, offset)
    if held is not None:
        too_big = {
            "raw": stored > held,
            "hex": 2 * stored > held,
            "text": count > 0 and 2 * count - 1 > held,   # at least one digit and one separator each
        }.get(encoding, encoding in _EXPANDING and stored > DEFLATE_MAX_RATIO * held + 1024)
        if too_big:
            how = "holds only" if encoding in ("raw", "hex", "text") else "can expand to at most about"
            can = held if encoding in ("raw", "hex", "text") else DEFLATE_MAX_RATIO * held
            raise ReadError(
                f"{path}: {claim}, but the {encoding} data in the file {how} {format_bytes(can)}; the file is "
                f"corrupt or truncated (a damaged {fmt} header, or a copy cut short). Export or copy it again"
            )
    check_allocation(count * memory_fraction * memory_bytes_per_voxel, f"{path}: {claim}; reading it",
                     "the header may be corrupt; if the image is really that large, crop or downsample it with "
                     "another tool first, or use a machine with more memory", ReadError)


def _bytes_after(data_file: Path | None, offset: int | None) -> int | None:
    if data_file is None or offset is None or offset < 0:
        return None
    try:
        return max(0, os.path.getsize(data_file) - offset)
    except OSError:
        return None


# ---------------------------------------------------------------------------- ITK formats
def check_itk_header(path: Path, fmt: str) -> None:
    """Check the size a NRRD or MetaImage header claims (header read by SimpleITK alone)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
        raise ReadError(f"{path}: SimpleITK could not read this {fmt} file's header ({reason}); "
                        "it is probably corrupt or truncated") from exc
    ncomp = max(1, reader.GetNumberOfComponents())
    size = tuple(reader.GetSize()) + ((ncomp,) if ncomp > 1 else ())
    itemsize = _component_bytes(reader.GetPixelID())
    where = (_nrrd_data(path) if fmt == "NRRD" else _meta_data(path)) if fmt in ("NRRD", "MetaImage") else None
    data_file, offset, encoding = where if where else (None, None, "unknown")
    # ITK's buffer, then the numpy copy medlab keeps
    check_claimed_size(path, fmt, size, itemsize, data_file=data_file, offset=offset, encoding=encoding,
                       memory_bytes_per_voxel=2 * itemsize)


def _component_bytes(pixel_id: int) -> int:
    import SimpleITK as sitk

    try:
        return sitk.Image([1, 1], pixel_id).GetSizeOfPixelComponent()
    except RuntimeError:  # label-map or unusual pixel types: assume the widest scalar
        return 8


def _header_lines(path: Path, limit: int = 1 << 16) -> tuple[list[bytes], int]:
    """The text header's lines, and where the bytes after them start (attached data)."""
    with open(path, "rb") as f:
        block = f.read(limit)
    lines, pos = [], 0
    while pos < len(block):
        end = block.find(b"\n", pos)
        if end < 0:
            break
        lines.append(block[pos:end].rstrip(b"\r"))
        pos = end + 1
        if not lines[-1] or lines[-1].lower().startswith(b"elementdatafile"):
            break
    return lines, pos


def _nrrd_data(path: Path) -> tuple[Path | None, int | None, str]:
    """(data file, offset, encoding) of a NRRD header (teem's field names)."""
    lines, end = _header_lines(path)
    fields = {}
    for line in lines[1:]:
        key, sep, value = line.decode("latin-1").partition(":")
        if sep and not line.startswith(b"#"):
            fields[key.strip().lower().replace(" ", "")] = value.strip().lstrip("=").strip()
    encoding = {"raw": "raw", "gzip": "gzip", "gz": "gzip", "bzip2": "bzip2", "bz2": "bzip2", "hex": "hex",
                "txt": "text", "text": "text", "ascii": "text"}.get(fields.get("encoding", "").lower(), "unknown")
    data = fields.get("datafile")
    skip = _int(fields.get("byteskip", "0"))
    if data is None:
        return path, end + max(skip or 0, 0), encoding
    if data.upper().startswith("LIST") or "%" in data or " " in data:
        return None, None, encoding
    return path.parent / data, max(skip or 0, 0), encoding


def _meta_data(path: Path) -> tuple[Path | None, int | None, str]:
    """(data file, offset, encoding) of a MetaImage header."""
    lines, end = _header_lines(path)
    fields = {}
    for line in lines:
        key, sep, value = line.decode("latin-1").partition("=")
        if sep:
            fields[key.strip().lower()] = value.strip()
    encoding = "zlib" if fields.get("compresseddata", "false").lower() == "true" else "raw"
    data = fields.get("elementdatafile", "")
    if data.upper() == "LOCAL":
        return path, end, encoding
    if not data or data.upper().startswith("LIST") or "%" in data or " " in data:
        return None, None, encoding
    skip = _int(fields.get("headersize", "0")) or 0
    return path.parent / data, max(skip, 0), encoding


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None

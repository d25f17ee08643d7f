"""medlab's information in a PNG file: a ``tEXt`` chunk with the keyword ``medlab``.

PNG keeps pixel spacing (``pHYs``, which SimpleITK reads and writes) but has no standard
place for the origin, the direction, the kind of image (a label map) or the fact that a grey
picture was saved as colour on purpose. NRRD and MetaImage carry these in a ``medlab`` key;
for PNG, the same JSON goes into a text chunk, which every PNG reader is required to skip.
The origin and the direction are not stored: :func:`medlab.save` warns when they would be
lost (save as NIfTI, NRRD or MetaImage to keep them).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

KEYWORD = b"medlab"
_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def add_text(path: Path, text: str) -> None:
    """Insert a ``tEXt`` chunk ``medlab: text`` right after the IHDR chunk of ``path``."""
    data = path.read_bytes()
    if not data.startswith(_SIGNATURE) or data[12:16] != b"IHDR":
        raise OSError(f"{path} is not a PNG file as written by SimpleITK")
    ihdr_end = 8 + 12 + struct.unpack(">I", data[8:12])[0]
    body = KEYWORD + b"\x00" + text.encode("latin-1")
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    path.write_bytes(data[:ihdr_end] + chunk + data[ihdr_end:])


def read_text(path: Path) -> str | None:
    """The text of the ``medlab`` chunk of a PNG file, or None (chunks before the image data only)."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != _SIGNATURE:
                return None
            while True:
                head = f.read(8)
                if len(head) < 8:
                    return None
                length, kind = struct.unpack(">I", head[:4])[0], head[4:]
                if kind in (b"IDAT", b"IEND"):
                    return None
                body = f.read(length)
                f.seek(4, 1)  # CRC
                if kind == b"tEXt":
                    key, _, value = body.partition(b"\x00")
                    if key == KEYWORD:
                        return value.decode("latin-1")
    except OSError:
        return None

"""Atomic, non-clobbering writes: a temporary file in the target folder, then a rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import WriteError


@contextlib.contextmanager
def atomic_path(path, *, overwrite: bool = False, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    The temporary name keeps the real suffix (``.nii.gz`` ...) so writers that pick a format
    from the file name behave. If the block raises, the temporary file is removed and
    ``path`` is untouched. Refuses an existing ``path`` unless ``overwrite=True``.
    """
    path = Path(path)
    if path.is_dir():
        raise WriteError(f"{path} is a folder; give a file name inside it")
    if os.path.lexists(path) and not overwrite:  # lexists: a dangling link counts as existing
        raise WriteError(f"{path} exists already; pass overwrite=True to replace it")
    if not path.parent.is_dir():
        raise WriteError(f"cannot write {path}: folder {path.parent} does not exist")
    suffix = suffix if suffix is not None else "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if os.path.lexists(path) and not overwrite:  # appeared while we wrote
            raise WriteError(f"{path} appeared while writing; pass overwrite=True to replace it")
        # mkstemp makes the file private (0600): give it the mode a plain open() would
        # (or the mode of the file it replaces)
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, writer: Callable[[Path], None], *, overwrite: bool = False) -> Path:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        writer(tmp)
    return Path(path)


def atomic_write_text(path, text: str, *, overwrite: bool = False) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"), overwrite=overwrite)


def atomic_write_bytes(path, data: bytes, *, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda p: p.write_bytes(data), overwrite=overwrite)

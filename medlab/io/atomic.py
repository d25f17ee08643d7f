"""Atomic, non-clobbering writes: a hidden temporary file in the target folder, then a rename.

A temporary file is named ``.<target name>.<random>.medlab-tmp<suffix>`` and is locked
(``flock``) by the process writing it for as long as it exists: it is created under another
name, locked, and only then renamed, so no file with that name is ever unlocked while its
writer lives. A save that is killed (SIGKILL, power cut) cannot remove its temporary file, so
every later save into the same folder removes the medlab temporary files whose lock is free:
their writer is gone. The lock, rather than the file's age, tells a dead writer from a slow
one, so a save running in another process is never disturbed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import MedlabError, WriteError

try:  # POSIX; on Windows stale temporary files are left for the user to delete
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

TMP_MARK = ".medlab-tmp"
_NEW_MARK = ".medlab-new"  # the name a temporary file has between its creation and its lock
_NEW_GRACE_S = 60.0        # such a file is left alone this long (it lives for microseconds)


@contextlib.contextmanager
def atomic_path(path, *, overwrite: bool = False, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    The temporary name keeps the real suffix (``.nii.gz`` ...) so writers that pick a format
    from the file name behave. If the block raises, the temporary file is removed and
    ``path`` is untouched. Refuses an existing ``path`` unless ``overwrite=True``. Operating
    system errors (full disk, file-size limit, read-only folder) become a :class:`WriteError`
    that names ``path`` and its folder, never the hidden temporary file.

    Examples
    --------
    >>> from medlab.io import atomic_path
    >>> with atomic_path("notes.txt") as tmp:          # doctest: +SKIP
    ...     tmp.write_text("hello")
    """
    path = Path(path)
    if path.is_dir():
        raise WriteError(f"{path} is a folder; give a file name inside it")
    if os.path.lexists(path) and not overwrite:  # lexists: a dangling link counts as existing
        raise WriteError(f"{path} exists already; pass overwrite=True to replace it")
    if not path.parent.is_dir():
        raise WriteError(f"cannot write {path}: folder {path.parent} does not exist")
    suffix = suffix if suffix is not None else "".join(path.suffixes)
    remove_stale_temporaries(path.parent)
    with _locked_temporary(path, suffix) as tmp:
        try:
            yield tmp
            if os.path.lexists(path) and not overwrite:  # appeared while we wrote
                raise WriteError(f"{path} appeared while writing; pass overwrite=True to replace it")
            _flush_to_disk(tmp)
            # mkstemp makes the file private (0600): give it the mode a plain open() would
            # (or the mode of the file it replaces)
            os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask())
            os.replace(tmp, path)
        except OSError as exc:
            if isinstance(exc, MedlabError):
                raise
            raise write_error(path, exc) from exc


def temporary_beside(path, suffix: str) -> contextlib.AbstractContextManager[Path]:
    """A second locked temporary file beside ``path`` (removed on exit), for writers that
    need an intermediate file, e.g. an uncompressed copy before compressing it."""
    return _locked_temporary(Path(path), suffix)


@contextlib.contextmanager
def _locked_temporary(path: Path, suffix: str) -> Iterator[Path]:
    mark = _NEW_MARK if fcntl is not None else TMP_MARK
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f"{mark}{suffix}", dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc) from exc
    tmp = Path(name)
    if fcntl is None:  # pragma: no cover - Windows cannot rename a file held open
        os.close(fd)
        fd = None
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            locked = tmp.with_name(tmp.name.replace(_NEW_MARK, TMP_MARK))
            os.rename(tmp, locked)
            tmp = locked
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if fd is not None:
            os.close(fd)  # releases the lock


def remove_stale_temporaries(folder) -> list[Path]:
    """Remove medlab temporary files left in ``folder`` by saves that were killed.

    A temporary file whose lock is held belongs to a save in progress and is kept.

    Returns
    -------
    list of Path
        The files removed.
    """
    if fcntl is None:  # pragma: no cover - Windows
        return []
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        marked = TMP_MARK in entry.name or _NEW_MARK in entry.name
        ours = entry.name.startswith(".") and marked and entry.is_file(follow_symlinks=False)
        if ours and _remove_if_abandoned(Path(entry.path)):
            removed.append(Path(entry.path))
    return removed


def _remove_if_abandoned(tmp: Path) -> bool:
    try:
        fd = os.open(tmp, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # a live writer holds it
        if _NEW_MARK in tmp.name and time.time() - os.fstat(fd).st_mtime < _NEW_GRACE_S:
            return False  # may be between its creation and its lock
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        return True
    finally:
        os.close(fd)


def _flush_to_disk(tmp: Path) -> None:
    """fsync, so that a disk error the file system reports late (delayed allocation, NFS)
    fails the save instead of leaving a file that turns out short after the rename."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_error(path, exc: OSError) -> WriteError:
    """A :class:`WriteError` for operating-system error ``exc`` while writing ``path``,
    naming the destination and its folder (never a temporary file) and what to do."""
    path = Path(path)
    folder = path.parent
    code = exc.errno
    if code == errno.ENOSPC or code == getattr(errno, "EDQUOT", None):
        free = _free_bytes(folder)
        left = f" ({format_bytes(free)} free)" if free is not None else ""
        return WriteError(f"cannot write {path}: the disk holding {folder} is full{left}. Nothing was written; "
                          "free some space or save to another disk")
    if code == errno.EFBIG:
        return WriteError(f"cannot write {path}: the file would exceed the file-size limit of this process or "
                          "file system (see `ulimit -f`; FAT32 stops at 4 GiB). Nothing was written; save to "
                          "another disk, or as .nii.gz to make the file smaller")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "is on a read-only file system" if code == errno.EROFS else "is not writable by this user"
        return WriteError(f"cannot write {path}: the folder {folder} {why}. Nothing was written; "
                          "save to a folder you can write to")
    reason = exc.strerror or type(exc).__name__
    return WriteError(f"cannot write {path}: {reason} (errno {code}). Nothing was written")


def likely_write_error(dest, expected: int, written: int) -> OSError:
    """The operating-system error that most likely cut a file short, for writers (ITK's) that
    report a failed write without its reason: the file-size limit, a full disk, or EIO."""
    dest = Path(dest)
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        if soft != resource.RLIM_INFINITY and soft <= expected:
            return OSError(errno.EFBIG, "File too large")
    except ImportError:  # pragma: no cover - Windows has no file-size limit
        pass
    free = _free_bytes(dest.parent)
    if free is not None and free < expected - written + (1 << 20):
        return OSError(errno.ENOSPC, "No space left on device")
    return OSError(errno.EIO, f"the writer stopped after {written} of {expected} bytes")


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def format_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 kB'`` (powers of 1000, as disk tools show sizes)."""
    for unit in ("bytes", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"  # pragma: no cover


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

"""Why a path cannot be read, in words: missing, a broken or looping link, a permission.

``Path.exists()`` answers False for a symbolic-link loop and for a file behind a folder the
user may not enter, and a reader that then fails to open a file calls it corrupt. These
helpers look at the operating system's reason first, so the message says what is wrong.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from ..errors import ParameterError, ReadError


def check_readable(path: Path) -> os.stat_result:
    """The ``stat`` of ``path``, or a :class:`ReadError` saying why it cannot be read.

    Examples
    --------
    >>> from pathlib import Path
    >>> from medlab.io.paths import check_readable
    >>> check_readable(Path("no/such/file.nii"))
    Traceback (most recent call last):
    ...
    medlab.errors.ReadError: no/such/file.nii does not exist; check the path (relative paths start at ...)
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ReadError(lookup_message(path, exc)) from None
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        # opening a pipe blocks until a writer comes, and a device such as /dev/zero never ends
        raise ReadError(f"{path} is not a file or a folder but a {_file_kind(st.st_mode)}; "
                        "give the path of an image file or of a DICOM folder")
    try:
        if stat.S_ISDIR(st.st_mode):
            with os.scandir(path):
                pass
        else:
            with open(path, "rb"):
                pass
    except PermissionError:
        raise ReadError(permission_message(path, is_dir=stat.S_ISDIR(st.st_mode))) from None
    return st


def as_file_path(path, what: str) -> Path:
    """``path`` as a :class:`~pathlib.Path`, or a :class:`ParameterError` naming ``what`` when it
    is not a file name (None, a number, an empty string).

    Examples
    --------
    >>> as_file_path(None, "the recipe file")
    Traceback (most recent call last):
    ...
    medlab.errors.ParameterError: the recipe file must be a file name (a str or Path); got None
    """
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise ParameterError(f"{what} must be a file name (a str or Path); got {path!r}")
    return Path(path)


def read_small_file(path, what: str, *, max_bytes: int = 64 << 20) -> bytes:
    """The bytes of a small regular file (a recipe, a study, a label-name list), read only after
    checking that it is one: a pipe would block for ever, ``/dev/zero`` never ends and a
    multi-gigabyte file is not what was meant. Raises :class:`ReadError` naming ``what``.

    Examples
    --------
    >>> read_small_file("/dev/zero", "recipe")
    Traceback (most recent call last):
    ...
    medlab.errors.ReadError: recipe /dev/zero is not a file but a character device; give the path of a file
    """
    path = as_file_path(path, what)
    st = check_readable_file(path, what)
    if st.st_size > max_bytes:
        raise ReadError(f"{what} {path} is {st.st_size / 2**20:.0f} MiB, more than the {max_bytes >> 20} MiB such a "
                        "file can be; is it the right file?")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ReadError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def check_readable_file(path: Path, what: str) -> os.stat_result:
    """:func:`check_readable`, and the path must be a regular file (not a folder, pipe or device)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ReadError(f"{what}: {lookup_message(path, exc)}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ReadError(f"{what} {path} is a folder; give the path of the file")
    if not stat.S_ISREG(st.st_mode):
        raise ReadError(f"{what} {path} is not a file but a {_file_kind(st.st_mode)}; give the path of a file")
    if not os.access(path, os.R_OK):
        raise ReadError(permission_message(path))
    return st


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "named pipe"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


def lookup_message(path: Path, exc: OSError) -> str:
    """The message for a path that ``os.stat`` could not resolve."""
    code = exc.errno
    if code == errno.ELOOP:
        return (f"{path} is a symbolic link loop: following its links never reaches a file "
                f"({_link_chain(path)}). Point the link at the real file or folder")
    if code == errno.ENOENT and os.path.islink(path):
        return (f"{path} is a broken symbolic link: it points to {os.readlink(path)}, which does not exist. "
                "Fix the link or load the file it should point to")
    if code == errno.ENOENT:
        return f"{path} does not exist; check the path (relative paths start at {Path.cwd()})"
    if code in (errno.EACCES, errno.EPERM):
        return (f"{path} cannot be reached: permission denied on one of the folders above it. "
                "Ask for read access to those folders (`ls -ld` shows them), or copy the file somewhere readable")
    if code == errno.ENOTDIR:
        return f"{path} cannot be reached: part of the path is a file, not a folder"
    return f"{path} cannot be accessed: {exc.strerror or exc}"


def permission_message(path: Path, *, is_dir: bool = False) -> str:
    """The message for a file or folder this user may not read."""
    what = "folder" if is_dir else "file"
    mode = ""
    try:
        st = os.stat(path)
        mode = f" (mode {stat.filemode(st.st_mode)}, owner uid {st.st_uid})"
    except OSError:
        pass
    return (f"permission denied: this user may not read the {what} {path}{mode}. The {what} may be fine; "
            "ask for read access (chmod/chown), or copy it somewhere readable")


def _link_chain(path: Path, limit: int = 6) -> str:
    chain = [str(path)]
    current = str(path)
    for _ in range(limit):
        try:
            target = os.readlink(current)
        except OSError:
            break
        current = os.path.join(os.path.dirname(current), target)
        chain.append(target)
        if os.path.normpath(current) == os.path.normpath(str(path)):
            break
    return " → ".join(chain) + (" → …" if len(chain) > limit else "")

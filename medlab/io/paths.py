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

from ..errors import ReadError


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

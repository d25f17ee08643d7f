"""How much memory an allocation may take, checked *before* allocating.

A header that claims 30000³ voxels, or ``resample(spacing=0.01)`` on a small image, would
otherwise ask numpy or ITK for terabytes: at best a bare ``MemoryError`` with an empty
message, at worst the kernel's out-of-memory killer ends the notebook. medlab compares
what it is about to allocate with the memory available first.

psutil gives the available physical memory on every platform; a container's cgroup limit
(which psutil does not see) is read from ``/sys/fs/cgroup`` when present.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from ..errors import MedlabError
from .atomic import format_bytes

_CGROUP = Path("/sys/fs/cgroup")


def available_memory() -> int | None:
    """Bytes of memory this process can still allocate without swapping, or None if unknown.

    Examples
    --------
    >>> from medlab.io.memory import available_memory
    >>> available_memory() > 0                      # doctest: +SKIP
    True
    """
    candidates = []
    try:
        import psutil

        candidates.append(int(psutil.virtual_memory().available))
    except Exception:  # noqa: BLE001 - psutil missing or unsupported platform
        candidates.append(_meminfo_available())
    candidates.append(_cgroup_headroom())
    known = [c for c in candidates if c is not None]
    return min(known) if known else None


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_headroom() -> int | None:
    """Limit minus usage of this container's cgroup (v2, then v1), or None."""
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            limit = (_CGROUP / limit_file).read_text().strip()
            usage = int((_CGROUP / usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or not limit.isdigit() or int(limit) >= 2**60:
            return None
        return max(0, int(limit) - usage)
    return None


def check_allocation(nbytes: float, what: str, hint: str, error: type[MedlabError]) -> None:
    """Raise ``error`` when ``nbytes`` exceed the memory available (nothing is allocated).

    Parameters
    ----------
    nbytes : float
        Bytes about to be allocated (all buffers alive at once).
    what : str
        What needs them, e.g. ``"resample: spacing=(0.01, 0.01, 0.01) gives 4000×4000×3000 voxels, which"``.
    hint : str
        What the user can do instead.
    error : type
        The medlab error to raise (``ReadError`` for a file, ``ParameterError`` for a parameter).

    Examples
    --------
    >>> from medlab.errors import ParameterError
    >>> from medlab.io.memory import check_allocation
    >>> check_allocation(1e18, "this", "ask for less", ParameterError)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    medlab.errors.ParameterError: this needs about 1000.0 PB of memory and ...
    """
    available = available_memory()
    if available is not None and nbytes > available:
        raise error(f"{what} needs about {format_bytes(nbytes)} of memory and {format_bytes(available)} "
                    f"is available; {hint}")


def voxel_count(size: Sequence[int]) -> int:
    """Product of the sizes as a Python int (no overflow, unlike a fixed-width numpy product)."""
    return math.prod(int(s) for s in size)


def size_text(size: Sequence[int]) -> str:
    """``(30000, 30000, 30000)`` -> ``'30000×30000×30000'``."""
    return "×".join(str(int(s)) for s in size)

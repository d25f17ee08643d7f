"""A checksummed registry of larger public images, downloaded on request with pooch.

Nothing is downloaded until :func:`fetch` is called. Each entry lists files at a pinned
commit of a public repository with their SHA-256; a file whose checksum differs is never
kept. Two environment variables, read at each call:

``MEDLAB_DATA_DIR``
    The cache folder (default: ``pooch.os_cache("medlab")``, e.g. ``~/.cache/medlab``).
``MEDLAB_DATA_URL``
    A mirror: files are fetched from ``$MEDLAB_DATA_URL/<path>`` instead of their
    original URLs (``path`` as in :func:`remote_entries`), e.g. a lab server or a local
    folder served over HTTP.
"""

from __future__ import annotations

import json
import os
import warnings
from functools import lru_cache
from importlib import resources
from pathlib import Path

from ..errors import ReadError

_REGISTRY_FILE = "registry.json"


@lru_cache(maxsize=1)
def _registry() -> dict[str, dict]:
    text = resources.files(__package__).joinpath(_REGISTRY_FILE).read_text(encoding="utf-8")
    return json.loads(text)["entries"]


def remote_entries() -> list[dict]:
    """Entries of the remote registry: name, title, modality, licence, source, files.

    Examples
    --------
    >>> from medlab.data import remote_entries
    >>> "ct_abdomen" in [e["name"] for e in remote_entries()]
    True
    """
    return [{"name": name, **entry, "files": [dict(f) for f in entry["files"]]}
            for name, entry in _registry().items()]


def data_dir() -> Path:
    """The cache folder: ``$MEDLAB_DATA_DIR`` or ``pooch.os_cache("medlab")``."""
    env = os.environ.get("MEDLAB_DATA_DIR")
    if env:
        return Path(env).expanduser()
    import pooch

    return Path(pooch.os_cache("medlab"))


def _entry(name: str) -> dict:
    registry = _registry()
    if name not in registry:
        names = ", ".join(sorted(registry))
        raise ReadError(f"no remote sample named {name!r}; available: {names}")
    return registry[name]


def fetch(name: str, *, progress: bool = False) -> Path:
    """Download (once) the files of a registry entry and return the local path.

    Files are checked against their SHA-256 before they enter the cache; a cached file
    with the right checksum is used without any network access.

    Parameters
    ----------
    name : str
        An entry of :func:`remote_entries`, e.g. ``"ct_abdomen"``.
    progress : bool
        Show a progress bar (needs tqdm).

    Returns
    -------
    pathlib.Path
        The file, or for a multi-file entry (a DICOM series) the folder holding them.

    Raises
    ------
    ReadError
        Unknown name (the message lists the names), a network failure, or a file whose
        checksum does not match (it is not kept).

    Examples
    --------
    >>> import medlab
    >>> path = medlab.data.fetch("ct_abdomen")          # doctest: +SKIP
    >>> medlab.load(path)                               # doctest: +SKIP
    """
    import pooch

    entry = _entry(name)
    if entry.get("noncommercial"):
        warnings.warn(f"{name!r} is licensed {entry['licence']}: do not use it commercially or "
                      "embed it in redistributed material", UserWarning, stacklevel=2)
    cache = data_dir()
    mirror = os.environ.get("MEDLAB_DATA_URL", "").strip()
    for f in entry["files"]:
        url = f"{mirror.rstrip('/')}/{f['path']}" if mirror else f["url"]
        store = pooch.create(path=cache, base_url="", registry={f["path"]: f"sha256:{f['sha256']}"},
                             urls={f["path"]: url}, retry_if_failed=0)
        try:
            with _quiet_pooch():
                store.fetch(f["path"], progressbar=progress)
        except Exception as exc:  # pooch raises ValueError (checksum) or requests errors (network)
            raise ReadError(_fetch_failure(name, f["path"], url, cache, exc)) from exc
    return cache / entry["folder"] if "folder" in entry else cache / entry["files"][0]["path"]


def _fetch_failure(name: str, path: str, url: str, cache: Path, exc: Exception) -> str:
    if isinstance(exc, ValueError) and "hash" in str(exc).lower():
        return (f"checksum mismatch for {path!r} of sample {name!r} downloaded from {url}: the file "
                f"differs from the registered one and was not kept. The source or mirror "
                f"(MEDLAB_DATA_URL) serves another version; point MEDLAB_DATA_URL at a correct "
                f"mirror or unset it to use the pinned original URL.")
    return (f"could not download {path!r} of sample {name!r} from {url} ({type(exc).__name__}: {exc}). "
            f"Check the network connection, or set MEDLAB_DATA_URL to a mirror holding {path!r}, "
            f"or copy the file to {cache / path}.")


class _quiet_pooch:
    """Silence pooch's per-file INFO log lines during a fetch."""

    def __enter__(self):
        import pooch

        self.logger = pooch.get_logger()
        self.level = self.logger.level
        self.logger.setLevel("WARNING")

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)
        return False

"""Run a notebook the way CI does: a fresh kernel, ``MEDLAB_FAST=1``, a scratch working folder, and
the network guard of ``tests/offline_guard`` in the kernel (and in every process it starts).

Used by ``test_notebooks.py`` (every notebook) and ``test_offline.py`` (the classroom proof).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
GUARD = Path(__file__).resolve().parent / "offline_guard"
SHARED_DATA = Path(os.environ.get("MEDLAB_SHARED_DATA", ROOT.parent / "shared" / "data"))

CANARY_ADDRESS = ("203.0.113.7", 80)   # TEST-NET-3 (RFC 5737): documentation only, never routed
CANARY = f"""
import socket as _socket
try:
    _socket.create_connection({CANARY_ADDRESS!r}, timeout=2).close()
    print("MEDLAB-CANARY reached")
except OSError as _exc:
    print("MEDLAB-CANARY refused:", _exc)
"""
"""A cell appended by the offline tests: an outside connection that the guard must refuse."""


def notebooks() -> list[Path]:
    """Every notebook under ``notebooks/`` (subfolders included, checkpoints excluded)."""
    return sorted(p for p in NOTEBOOK_DIR.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def kernel_env(network_log: Path, *, fast: bool = True) -> dict[str, str]:
    """The kernel's environment: CI's parameters, the guard first on PYTHONPATH, the shared data."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(GUARD), *filter(None, [env.get("PYTHONPATH")])])
    env["MEDLAB_NETWORK_LOG"] = str(network_log)
    if fast:
        env["MEDLAB_FAST"] = "1"
    else:
        env.pop("MEDLAB_FAST", None)
    if SHARED_DATA.is_dir():
        env["MEDLAB_SHARED_DATA"] = str(SHARED_DATA)
    env.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    return env


def network_events(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]


@dataclass
class Execution:
    """An executed notebook: the notebook with outputs, its wall-clock time, the guard's log."""

    nb: nbformat.NotebookNode
    seconds: float
    events: list[dict] = field(default_factory=list)
    n_original: int = 0

    @property
    def original_cells(self) -> list:
        return self.nb.cells[: self.n_original]

    @property
    def appended_cells(self) -> list:
        return self.nb.cells[self.n_original:]

    def refused(self) -> list[dict]:
        """Guard events of attempts to leave the machine (the canary's included)."""
        return [e for e in self.events if not e["allowed"]]

    def guarded_pids(self) -> set[int]:
        return {e["pid"] for e in self.events if e["kind"] == "guard"}


def execute(path: Path, workdir: Path, *, extra_cells: list[str] = (), timeout: float = 600,
            fast: bool = True) -> Execution:
    """Execute ``path`` top to bottom in a fresh kernel (cells tagged ``raises-exception`` may raise,
    any other error fails), then the ``extra_cells``; nothing is written back to the notebook file."""
    nb = nbformat.read(path, as_version=4)
    n = len(nb.cells)
    nb.cells.extend(nbformat.v4.new_code_cell(src) for src in extra_cells)
    log = workdir / f"network-{path.stem}.jsonl"
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}})
    start = time.monotonic()
    client.execute(env=kernel_env(log, fast=fast))
    return Execution(nb, time.monotonic() - start, network_events(log), n)


def output_text(cell) -> str:
    """Every text a code cell showed: streams, plain-text/markdown/HTML results, error names."""
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append(out.get("text", ""))
        elif out.get("output_type") in ("execute_result", "display_data"):
            data = out.get("data", {})
            for mime in ("text/plain", "text/markdown", "text/html"):
                if mime in data:
                    parts.append(data[mime] if isinstance(data[mime], str) else "".join(data[mime]))
        elif out.get("output_type") == "error":
            parts.append(f"{out.get('ename')}: {out.get('evalue')}")
    return "\n".join(parts)

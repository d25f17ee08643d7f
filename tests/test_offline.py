"""Offline classrooms and Binder.

* The network guard (``tests/offline_guard``) refuses and records any call that would leave the
  machine, in every Python process started with it; the start-here notebook runs top to bottom
  in a kernel under that guard, and the log proves the guard was in that very kernel and that no
  call other than the test's own canary tried to leave.
* ``binder/`` builds the environment from pyproject.toml's dependency list with a CPU-only torch
  of the version the tests run with, and its badge opens the start-here notebook.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

sys.path.insert(0, str(Path(__file__).parent))
from notebook_runner import (
    CANARY,
    CANARY_ADDRESS,
    GUARD,
    NOTEBOOK_DIR,
    ROOT,
    execute,
    network_events,
    output_text,
)

tomllib = pytest.importorskip("tomllib")   # Python 3.11+

BINDER = ROOT / "binder"
START_HERE = NOTEBOOK_DIR / "00_start_here.ipynb"


def guarded_env(log: Path) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(GUARD), os.environ.get("PYTHONPATH", "")]),
                MEDLAB_NETWORK_LOG=str(log))


# ---------------------------------------------------------------------------- the guard itself
def test_guard_refuses_leaving_and_allows_loopback(tmp_path):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]

    def echo():
        conn, _ = server.accept()
        conn.sendall(conn.recv(16))
        conn.close()

    threading.Thread(target=echo, daemon=True).start()
    script = f"""
import socket, urllib.request
results = []
try:
    urllib.request.urlopen("https://pypi.org/simple/", timeout=3)
    results.append("pypi reached")
except OSError as e:
    results.append("pypi refused")
try:
    socket.create_connection({CANARY_ADDRESS!r}, timeout=3)
    results.append("ip reached")
except OSError as e:
    results.append("ip refused")
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.sendto(b"x", ("8.8.8.8", 53))
    results.append("udp sent")
except OSError:
    results.append("udp refused")
c = socket.create_connection(("127.0.0.1", {port}), timeout=5)
c.sendall(b"ping"); results.append(c.recv(16).decode())
print(",".join(results))
"""
    log = tmp_path / "net.jsonl"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=guarded_env(log),
                          timeout=60, check=False)
    server.close()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "pypi refused,ip refused,udp refused,ping"
    events = network_events(log)
    refused = {(e["kind"], e["target"]) for e in events if not e["allowed"]}
    assert ("getaddrinfo", "'pypi.org'") in refused
    assert ("connect", repr(CANARY_ADDRESS)) in refused
    assert ("sendto", "('8.8.8.8', 53)") in refused
    assert ("connect", repr(("127.0.0.1", port))) in {(e["kind"], e["target"]) for e in events if e["allowed"]}
    assert len({e["pid"] for e in events}) == 1                      # all recorded by that one process
    assert any(e["kind"] == "guard" for e in events)


def test_without_the_log_variable_nothing_changes(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(GUARD))
    env.pop("MEDLAB_NETWORK_LOG", None)
    code = "import socket; print(socket.socket.connect.__module__ if hasattr(socket.socket.connect, '__module__') else '')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60,
                          check=False)
    assert proc.stdout.strip() != "sitecustomize"


# ---------------------------------------------------------------------------- a notebook offline
@pytest.mark.slow
def test_start_here_notebook_runs_with_the_network_disabled(tmp_path):
    pid_cell = "import os; print('MEDLAB-KERNEL-PID', os.getpid())"
    run = execute(START_HERE, tmp_path, extra_cells=[pid_cell, CANARY], timeout=600)
    pid_text, canary_text = (output_text(c) for c in run.appended_cells)
    kernel_pid = int(re.search(r"MEDLAB-KERNEL-PID (\d+)", pid_text).group(1))
    assert "MEDLAB-CANARY refused" in canary_text
    assert kernel_pid in run.guarded_pids(), "the guard was not installed in the kernel process"
    refused = run.refused()
    canary = [e for e in refused if e["target"] == repr(CANARY_ADDRESS)]
    assert canary and {e["pid"] for e in canary} == {kernel_pid}
    others = [e for e in refused if e not in canary]
    assert others == [], f"the notebook tried to leave the machine: {others[:5]}"
    assert all(c.get("execution_count") for c in run.original_cells if c.cell_type == "code")


# ---------------------------------------------------------------------------- Binder
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def pip_installs(script: str) -> list[list[str]]:
    """The arguments of every ``pip install`` command of a shell script (continuation lines joined)."""
    text = script.replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        m = re.search(r"\bpip3?\s+install\s+(.*)", line)
        if m:
            out.append(shlex.split(m.group(1).replace("${TORCH_VERSION}", _torch_pin(script))))
    return out


def _torch_pin(script: str) -> str:
    m = re.search(r"^TORCH_VERSION=([\w.+]+)$", script, re.MULTILINE)
    return m.group(1) if m else ""


def test_binder_installs_pyprojects_dependencies_with_a_cpu_torch():
    script = (BINDER / "postBuild").read_text(encoding="utf-8")
    assert os.access(BINDER / "postBuild", os.X_OK), "binder/postBuild must be executable"
    assert subprocess.run(["bash", "-n", str(BINDER / "postBuild")], check=False).returncode == 0
    installs = pip_installs(script)
    assert len(installs) == 2, installs
    torch_args, medlab_args = installs
    # 1. torch first, only torch, from PyTorch's CPU index (never PyPI's CUDA build)
    packages = [a for a in torch_args if not a.startswith("-") and "download.pytorch.org" not in a]
    assert [Requirement(p).name for p in packages] == ["torch"]
    assert "--index-url" in torch_args and "https://download.pytorch.org/whl/cpu" in torch_args
    assert "--extra-index-url" not in torch_args
    pin = Requirement(packages[0]).specifier
    pinned = Version(next(iter(pin)).version)
    declared = {canonicalize_name(Requirement(d).name): Requirement(d) for d in pyproject()["project"]["dependencies"]}
    assert pinned in declared["torch"].specifier, f"binder's torch {pinned} breaks pyproject's {declared['torch']}"
    import torch

    assert Version(torch.__version__).public == pinned.public, "binder gets another torch than the tests run with"
    # 2. then medlab itself: its dependencies are pyproject.toml's, and nothing else is installed
    assert [a for a in medlab_args if not a.startswith("--")] in (["-e", "."], ["."])


def test_binder_keeps_no_second_dependency_list():
    lines = [ln.split("#", 1)[0].strip() for ln in (BINDER / "requirements.txt").read_text().splitlines()]
    assert [ln for ln in lines if ln] == [], "binder/requirements.txt lists packages: put them in pyproject.toml"
    assert not (BINDER / "environment.yml").exists() and not (BINDER / "Pipfile").exists()


def test_binder_python_is_one_pyproject_allows():
    from packaging.specifiers import SpecifierSet

    runtime = (BINDER / "runtime.txt").read_text().strip()
    m = re.fullmatch(r"python-(3\.\d+)", runtime)
    assert m, f"runtime.txt should read python-3.X; got {runtime!r}"
    assert Version(m.group(1) + ".0") in SpecifierSet(pyproject()["project"]["requires-python"])
    assert m.group(1) == f"{sys.version_info.major}.{sys.version_info.minor}", "binder runs another Python than the tests"


def test_binder_badges_open_an_existing_notebook():
    links = []
    for doc in (ROOT / "README.md", BINDER / "README.md"):
        links += re.findall(r"https://mybinder\.org/v2/gh/[^)\s]+", doc.read_text(encoding="utf-8"))
    assert links, "no Binder link"
    for link in links:
        m = re.search(r"[?&]urlpath=lab(?:/|%2F)tree(?:/|%2F)([^&#]+)", link)
        assert m, f"{link} does not open a notebook (urlpath=lab/tree/...)"
        assert (ROOT / m.group(1).replace("%2F", "/")).is_file(), f"{link} opens a notebook that does not exist"
    assert any("notebooks/00_start_here.ipynb" in link for link in links)

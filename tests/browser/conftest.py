"""Real-browser fixtures: an isolated JupyterLab server driven by Debian Chromium via Playwright.

What the fixtures give a test
-----------------------------
``notebook.open(cells)`` writes a fresh notebook (one file and one Lab workspace per test, so Lab
never reopens an earlier test's tabs), opens it in a page, runs every cell and waits until the
kernel is idle and every cell has an execution count; it returns the Playwright ``Page``.

Isolation and safety
--------------------
* The server listens on 127.0.0.1 on a free port, with a random token, temporary
  ``JUPYTER_*``/``IPYTHONDIR`` folders and the venv's ``bin`` first on ``PATH`` (so the kernel
  is this venv's Python and sees the editable medlab). It runs in its own process group and is
  stopped by group (SIGTERM, then SIGKILL), so no kernel outlives the session.
* Every request of the browser is routed: 127.0.0.1/localhost pass, anything else is aborted and
  recorded; a test fails if any such request happened (invariant: nothing reaches the network).
* On failure a full-page screenshot goes to ``<pytest basetemp>/browser-screenshots/`` (after
  every test with ``MEDLAB_BROWSER_SCREENSHOTS=always``), with the page's console messages.

Skipping
--------
Without ``/usr/bin/chromium`` (or ``$MEDLAB_CHROMIUM``) or the ``playwright`` package the tests
skip, unless ``MEDLAB_REQUIRE_BROWSER=1`` or ``MEDLAB_REQUIRE_SHARED=1`` (CI), where they fail.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

CHROMIUM = Path(os.environ.get("MEDLAB_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
SERVER_START_TIMEOUT = 60.0
KERNEL_TIMEOUT_MS = 180_000   # kernel start, imports and every cell: generous, a loaded CI machine is slow


def _required() -> bool:
    return (os.environ.get("MEDLAB_REQUIRE_BROWSER") == "1"
            or os.environ.get("MEDLAB_REQUIRE_SHARED") == "1")


def _skip_or_fail(message: str):
    if _required():
        pytest.fail(message + " (MEDLAB_REQUIRE_BROWSER/MEDLAB_REQUIRE_SHARED=1)", pytrace=False)
    pytest.skip(message)


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent == here:
            item.add_marker(pytest.mark.browser)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


# ----------------------------------------------------------------------------- the server
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabServer:
    """A JupyterLab server owned by the test session."""

    def __init__(self, base: Path):
        self.root = base / "root"
        self.root.mkdir(parents=True)
        self.port = _free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "jupyterlab.log"
        self.env = self._environment(base)
        self.proc: subprocess.Popen | None = None

    def _environment(self, base: Path) -> dict:
        env = dict(os.environ)
        for var in ("JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTER_DATA_DIR", "IPYTHONDIR",
                    "JUPYTERLAB_SETTINGS_DIR", "JUPYTERLAB_WORKSPACES_DIR"):
            path = base / var.lower()
            path.mkdir()
            env[var] = str(path)
        # the venv's bin (not resolved: a venv's python is a symlink) first on PATH
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        env.pop("JUPYTER_PATH", None)
        env["PYTHONUNBUFFERED"] = "1"
        settings = Path(env["JUPYTERLAB_SETTINGS_DIR"])
        (settings / "@jupyterlab/apputils-extension").mkdir(parents=True)
        (settings / "@jupyterlab/apputils-extension/notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False}))
        (settings / "@jupyterlab/notebook-extension").mkdir(parents=True)
        (settings / "@jupyterlab/notebook-extension/tracker.jupyterlab-settings").write_text(
            json.dumps({"windowingMode": "none"}))
        return env

    def start(self, attempts: int = 3) -> None:
        """Start on a free port; another one if the port was taken meanwhile (``_free_port`` frees
        its port before the server, seconds later, binds it: any process may get it in between)."""
        for attempt in range(attempts):
            try:
                return self._start()
            except RuntimeError:
                if attempt == attempts - 1 or "is not available" not in self.log():
                    raise
                self.port = _free_port()
                self.url = f"http://127.0.0.1:{self.port}"

    def _start(self) -> None:
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
               "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
               "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
               f"--ServerApp.root_dir={self.root}",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               "--LabApp.expose_app_in_browser=True"]
        with open(self.log_path, "wb") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(cmd, env=self.env, cwd=self.root, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited ({self.proc.returncode}):\n{self.log()}")
            try:
                if self.api("GET", "/api/status")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"JupyterLab did not answer in {SERVER_START_TIMEOUT}s:\n{self.log()}")

    def api(self, method: str, path: str) -> tuple[int, object]:
        req = urllib.request.Request(f"{self.url}{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                body = resp.read()
                return resp.status, json.loads(body) if body else None
        except urllib.error.HTTPError as exc:
            return exc.code, None

    def shutdown_kernels(self) -> None:
        _, sessions = self.api("GET", "/api/sessions")
        for session in sessions or []:
            self.api("DELETE", f"/api/sessions/{session['id']}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = os.getpgid(self.proc.pid)
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(pgid, signal.SIGKILL)  # kernels left in the group
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def browser_requirements():
    """Skip (or fail under MEDLAB_REQUIRE_BROWSER/SHARED=1) when Chromium or Playwright is absent."""
    if not CHROMIUM.exists():
        _skip_or_fail(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _skip_or_fail("the playwright package is not installed (pip install playwright)")


@pytest.fixture(scope="session")
def lab_server(browser_requirements, tmp_path_factory):
    server = LabServer(tmp_path_factory.mktemp("jupyterlab"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def _playwright(browser_requirements):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="session")
def browser_context(_playwright, tmp_path_factory):
    """One Chromium persistent context for the session; every request goes through a router."""
    context = _playwright.chromium.launch_persistent_context(
        str(tmp_path_factory.mktemp("chromium-profile")),
        executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
        viewport={"width": 1400, "height": 1000},
    )
    context.outside_requests = []

    def route(route, request):
        host = urlsplit(request.url).hostname or ""
        if request.url.startswith(("data:", "blob:")) or host in LOCAL_HOSTS:
            route.continue_()
        else:
            context.outside_requests.append(request.url)
            route.abort()

    context.route("**/*", route)
    yield context
    context.close()


class NotebookDriver:
    """What a browser test gets from the ``notebook`` fixture.

    ``driver.open(cells)`` -> Page with all cells run; helpers: ``wait_text``, ``canvas_pixel``,
    ``set_slider``; ``driver.console`` collects the pages' console messages.
    """

    def __init__(self, server: LabServer, context, test_name: str):
        self.server = server
        self.context = context
        self.test_name = re.sub(r"\W+", "_", test_name)[:60]
        self.pages: list = []
        self.console: list[str] = []

    def open(self, cells: list[str], *, timeout_ms: int = KERNEL_TIMEOUT_MS):
        name = f"{self.test_name}_{uuid.uuid4().hex[:6]}"
        write_notebook(self.server.root / f"{name}.ipynb", cells)
        page = self.context.new_page()
        self.pages.append(page)
        page.on("console", lambda msg: self.console.append(f"{msg.type}: {msg.text}"))
        page.on("pageerror", lambda exc: self.console.append(f"pageerror: {exc}"))
        page.goto(f"{self.server.url}/lab/workspaces/{name}/tree/{name}.ipynb"
                  f"?token={self.server.token}")
        wait_kernel_idle(page, timeout_ms)
        run_all_cells(page, n_cells=len(cells), timeout_ms=timeout_ms)
        return page

    wait_text = staticmethod(lambda *a, **k: wait_text(*a, **k))
    canvas_pixel = staticmethod(lambda *a, **k: canvas_pixel(*a, **k))
    set_slider = staticmethod(lambda *a, **k: set_slider(*a, **k))


@pytest.fixture
def notebook(request, lab_server, browser_context, tmp_path_factory):
    """A :class:`NotebookDriver`; on failure saves screenshots, always shuts kernels down and
    fails if the page tried to reach anything outside 127.0.0.1."""
    before = len(browser_context.outside_requests)
    driver = NotebookDriver(lab_server, browser_context, request.node.name)
    yield driver

    rep = getattr(request.node, "rep_call", None)
    failed = rep is not None and rep.failed
    if (failed or os.environ.get("MEDLAB_BROWSER_SCREENSHOTS") == "always") and driver.pages:
        folder = tmp_path_factory.getbasetemp() / "browser-screenshots"
        folder.mkdir(exist_ok=True)
        for i, page in enumerate(driver.pages):
            shot = folder / f"{driver.test_name}_{i}.png"
            try:
                page.screenshot(path=str(shot), full_page=True)
                print(f"\nscreenshot: {shot}")
            except Exception as exc:  # noqa: BLE001 - the page may be gone: keep the original failure
                print(f"\nscreenshot failed: {exc}")
        if failed:
            print("browser console (last 40):\n" + "\n".join(driver.console[-40:]))
    for page in driver.pages:
        page.close()
    lab_server.shutdown_kernels()
    outside = browser_context.outside_requests[before:]
    assert not outside, f"the page tried to reach outside 127.0.0.1: {outside}"


# ----------------------------------------------------------------------------- helpers
def write_notebook(path: Path, cells: list[str]) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    nbformat.write(nb, str(path))


def wait_kernel_idle(page, timeout_ms: int = KERNEL_TIMEOUT_MS) -> None:
    """Both the notebook's execution indicator and the status bar say the kernel is idle."""
    page.wait_for_function(
        """() => {
            const ind = document.querySelector('.jp-Notebook-ExecutionIndicator');
            if (!ind || ind.getAttribute('data-status') !== 'idle') return false;
            return [...document.querySelectorAll('.jp-StatusBar-TextItem')]
                .some(e => /\\|\\s*Idle/.test(e.textContent));
        }""",
        timeout=timeout_ms,
    )


_CELL_ERRORS = """function cellErrors() {
    const out = [];
    const cells = window.jupyterapp.shell.currentWidget.content.model.cells;
    for (let i = 0; i < cells.length; i++) {
        const cell = cells.get(i);
        if (cell.type !== 'code') continue;
        for (let j = 0; j < cell.outputs.length; j++) {
            const o = cell.outputs.get(j).toJSON();
            if (o.output_type === 'error') out.push(o.traceback.join('\\n'));
        }
    }
    return out;
}"""


def run_all_cells(page, *, n_cells: int, timeout_ms: int = KERNEL_TIMEOUT_MS) -> None:
    """Run every cell and wait until each shows ``[n]:`` and the kernel is idle again.

    A cell that raised (Lab then stops running the rest) fails the test with its traceback.
    """
    page.wait_for_function("() => window.jupyterapp && document.querySelector('.jp-Notebook')",
                           timeout=timeout_ms)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_function(
        "(n) => { " + _CELL_ERRORS + """
            if (cellErrors().length) return true;
            const p = [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')];
            return p.length === n && p.every(e => /^\\[\\d+\\]:$/.test(e.textContent.trim())); }""",
        arg=n_cells, timeout=timeout_ms,
    )
    wait_kernel_idle(page, timeout_ms)
    errors = page.evaluate("() => { " + _CELL_ERRORS + " return cellErrors(); }")
    if errors:
        text = re.sub(r"\x1b\[[0-9;]*m", "", "\n\n".join(errors))
        pytest.fail(f"a notebook cell raised:\n{text}", pytrace=False)


def wait_text(page, selector: str, pattern: str, timeout_ms: int = 60_000) -> str:
    """Wait until the text of ``selector`` matches the regex ``pattern``; return the text.

    On timeout the test fails with the text last seen, so a wrong value reads as such.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(
            """([sel, pat]) => { const e = document.querySelector(sel);
                                 return e && new RegExp(pat).test(e.textContent); }""",
            arg=[selector, pattern], timeout=timeout_ms,
        )
    except PlaywrightTimeout:
        seen = page.evaluate("(sel) => { const e = document.querySelector(sel);"
                             " return e ? e.textContent : null; }", selector)
        pytest.fail(f"{selector}: text {seen!r} never matched {pattern!r} in {timeout_ms} ms",
                    pytrace=False)
    return page.locator(selector).first.text_content()


def canvas_pixel(page, selector: str, x: int, y: int) -> list[int]:
    """RGBA of the canvas pixel (x, y) in the canvas' own pixel grid (not CSS pixels)."""
    return page.evaluate(
        """([sel, x, y]) => { const c = document.querySelector(sel);
               return Array.from(c.getContext('2d').getImageData(x, y, 1, 1).data); }""",
        [selector, x, y],
    )


def set_slider(page, selector: str, value) -> None:
    """Set an ipywidgets slider (the element with class ``selector``) through its editable readout."""
    readout = page.locator(f"{selector} .widget-readout").first
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(str(value))
    page.keyboard.press("Enter")


@pytest.fixture
def lab_theme(lab_server):
    """Set JupyterLab's theme for the pages this test opens: ``lab_theme("JupyterLab Dark")``.

    Writes the user setting ``@jupyterlab/apputils-extension:themes`` into the test server's
    ``JUPYTERLAB_SETTINGS_DIR`` (read when a page loads, so call it before ``notebook.open``);
    the previous setting comes back after the test, so other tests keep the default theme.
    """
    path = (Path(lab_server.env["JUPYTERLAB_SETTINGS_DIR"])
            / "@jupyterlab/apputils-extension/themes.jupyterlab-settings")
    before = path.read_text() if path.exists() else None

    def set_theme(theme: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"theme": theme}))

    yield set_theme
    if before is None:
        path.unlink(missing_ok=True)
    else:
        path.write_text(before)

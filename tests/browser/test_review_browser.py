"""The clinician review app in a real browser: ``medlab review`` (Voila on 127.0.0.1) in Debian
Chromium, driven by Playwright.

The server is started exactly as a clinician's is, by the documented command
``python -m medlab.cli review STUDY --reviewer NAME --port P --no-browser`` (token parsed from its
output), with isolated Jupyter folders, and stopped by SIGTERM to that command (which passes it on
to Voila, which shuts its kernels down); any process left is killed.

``test_review_three_cases_with_refresh``: a study of three brain-MRI phantoms, each with two
synthetic maps (a Gaussian blob at the tumour centroid, one mirrored to the other hemisphere, the
first on a coarser grid so the app resamples it). The reviewer rates the maps in the blinded order,
marks the tumour with a click on the scan, reloads the page after the third verdict and must come
back at the fourth map, then finishes and edits one verdict. The database must hold every verdict
(un-blinded method, neutral name shown, click in mm at the tumour, version history). The page must
show no code, and no request may leave 127.0.0.1 (the app's Voila template drops the CDN font
link of Voila's lab template).

``test_review_bad_input_is_explained``: a map that does not overlap its scan and a missing scan
each show a message in place of the image (no traceback) and can be skipped; a corrupt database
shows a message naming the file on reload, and the file is left byte-for-byte as it was.

DOM used (documented in ``widgets/review.py`` and ``widgets/viewer.py``): ``.medlab-review-*``
classes, ``canvas.medlab-canvas|medlab-overlay[data-plane=axial]``.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import medlab
from medlab.review import ReviewStore, ReviewStudy

pytestmark = pytest.mark.browser

REVIEWER = "Dr Playwright"
CANVAS = ".medlab-review-viewer canvas.medlab-canvas[data-plane=axial]"
OVERLAY = ".medlab-review-viewer canvas.medlab-overlay[data-plane=axial]"
PROGRESS = ".medlab-review-progress"
LABELS = {"relevant": "Highlights the relevant finding", "partly": "Partly highlights the finding",
          "irrelevant": "Highlights an irrelevant region", "artefact": "Driven by an artefact"}
START_TIMEOUT = 90.0
PAGE_TIMEOUT_MS = 90_000


# ----------------------------------------------------------------------------- the server
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (kernels run in their own sessions, so not in its group)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class ReviewServer:
    """``medlab review`` run as a clinician would, isolated, on a free port of 127.0.0.1."""

    def __init__(self, base: Path, study: Path, reviewer: str):
        self.base, self.study, self.reviewer = base, study, reviewer
        self.port = _free_port()
        self.log_path = base / "medlab-review.log"
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self._family: list[int] = []

    def _environment(self) -> dict:
        env = dict(os.environ)
        for var in ("JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTER_DATA_DIR", "IPYTHONDIR"):
            path = self.base / var.lower()
            path.mkdir(exist_ok=True)
            env[var] = str(path)
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        env.pop("JUPYTER_PATH", None)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start(self, attempts: int = 3) -> None:
        """Start on a free port; another one if the port was taken between ``_free_port`` and
        Voila's bind (seconds apart: any process may get it meanwhile)."""
        for attempt in range(attempts):
            try:
                return self._start()
            except RuntimeError:
                if attempt == attempts - 1 or " in use" not in self.log():   # medlab review's check, or Voila's
                    raise
                self.port = _free_port()

    def _start(self) -> None:
        cmd = [sys.executable, "-m", "medlab.cli", "review", str(self.study), "--reviewer", self.reviewer,
               "--port", str(self.port), "--no-browser"]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, env=self._environment(), cwd=self.base, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"medlab review exited ({self.proc.returncode}):\n{self.log()}")
            found = re.search(r"open (http://127\.0\.0\.1:\d+/\?token=\S+)", self.log())
            if found:
                self.url = found.group(1)
                token = self.url.split("token=")[1]
                try:
                    req = urllib.request.Request(f"http://127.0.0.1:{self.port}/voila/static/favicon.ico?token={token}")
                    with urllib.request.urlopen(req, timeout=5) as resp:
                        if resp.status == 200:
                            return
                except (OSError, urllib.error.HTTPError):
                    pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"medlab review did not answer in {START_TIMEOUT}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        family = _descendants(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # medlab review passes it on to Voila
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        for pid in [self.proc.pid, *family]:  # whatever is left (e.g. a kernel), by its own id
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.proc.wait(timeout=10)


@pytest.fixture
def review_server(request, tmp_path):
    servers = []

    def start(study: Path, reviewer: str = REVIEWER) -> ReviewServer:
        server = ReviewServer(tmp_path, study, reviewer)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            print(f"medlab review log:\n{server.log()}")


@pytest.fixture
def review_page(browser_context, tmp_path_factory, request):
    """A page of the session's routed browser; fails if anything left 127.0.0.1."""
    before = len(browser_context.outside_requests)
    page = browser_context.new_page()
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    page.screenshots = tmp_path_factory.getbasetemp() / "review-screenshots"
    page.screenshots.mkdir(exist_ok=True)
    yield page
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        shot = page.screenshots / f"{request.node.name}-failure.png"
        try:
            page.screenshot(path=str(shot), full_page=True)
            print(f"\nscreenshot: {shot}\nconsole (last 30):\n" + "\n".join(console[-30:]))
        except Exception as exc:  # noqa: BLE001 - keep the original failure
            print(f"screenshot failed: {exc}")
    page.close()
    outside = browser_context.outside_requests[before:]
    assert not outside, f"the review app tried to reach outside 127.0.0.1: {outside}"


# ----------------------------------------------------------------------------- the study
def gaussian_map(grid: medlab.Image, centre_mm, sigma_mm: float = 5.0) -> medlab.Image:
    """A synthetic saliency map: a Gaussian blob at ``centre_mm`` on ``grid``."""
    z, y, x = np.indices(grid.shape)
    pts = grid.index_to_physical(np.stack([x.ravel(), y.ravel(), z.ravel()], 1)).reshape(*grid.shape, 3)
    return grid.with_array(np.exp(-((pts - np.asarray(centre_mm)) ** 2).sum(-1) / (2 * sigma_mm**2)).astype(np.float32))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def three_case_study(tmp_path):
    cases, centres = [], {}
    for i in range(3):
        p = medlab.data.brain_mri(size=(64, 64, 24), seed=i)
        scan, centre = p.t1, np.asarray(p.info["tumour_centre_mm"])
        # the tumour map on a coarser grid that covers the scan: the app resamples it for display
        coarse = medlab.Image(np.zeros((14, 34, 34), np.float32), spacing=(3.0, 3.0, 3.5),
                              origin=np.asarray(scan.origin) - 1.0)
        mirrored = centre * np.array([-1.0, 1.0, 1.0])  # the other hemisphere
        cases.append({"id": f"case-{i + 1}", "scan": scan, "prediction": "tumour", "truth": "tumour",
                      "maps": {"gaussian_at_tumour": gaussian_map(coarse, centre, 6.0),
                               "gaussian_elsewhere": gaussian_map(scan, mirrored, 6.0)}})
        centres[f"case-{i + 1}"] = (scan, centre)
    study = ReviewStudy.create(tmp_path / "study", cases, name="Phantom pilot", seed=11)
    return study, centres


# ----------------------------------------------------------------------------- page helpers
def expect_text(page, selector: str, pattern: str, timeout_ms: int = 30_000) -> str:
    from playwright.sync_api import expect

    expect(page.locator(selector).first).to_have_text(re.compile(pattern), timeout=timeout_ms)
    return page.locator(selector).first.text_content()


def open_app(page, url: str) -> None:
    page.goto(url)
    page.locator(".medlab-review").first.wait_for(timeout=PAGE_TIMEOUT_MS)


def wait_picture(page) -> None:
    """The axial canvas has been drawn (non-black pixels)."""
    page.wait_for_function(
        """(sel) => { const c = document.querySelector(sel);
               if (!c || !c.width) return false;
               const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
               for (let i = 0; i < d.length; i += 4) if (d[i] > 20) return true;
               return false; }""", arg=CANVAS, timeout=30_000)


def wait_coloured(page, present: bool, timeout_ms: int = 15_000) -> None:
    """Wait until the axial canvas shows the heat map's colours (more than 20 non-grey pixels)
    or none at all."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    js = """([sel, present]) => { const c = document.querySelector(sel);
               if (!c || !c.width) return false;
               const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
               let n = 0;
               for (let i = 0; i < d.length; i += 4)
                   if (Math.abs(d[i] - d[i + 1]) > 8 || Math.abs(d[i + 1] - d[i + 2]) > 8) n++;
               return present ? n > 20 : n === 0; }"""
    try:
        page.wait_for_function(js, arg=[CANVAS, present], timeout=timeout_ms)
    except PlaywrightTimeout:
        pytest.fail(f"the heat map was {'not ' if present else ''}visible on the axial canvas", pytrace=False)


def stable_box(page, selector: str, tries: int = 50) -> dict:
    """The element's bounding box once two reads 100 ms apart agree: the viewer sizes its panes
    after it has measured the notebook's width, and a click computed before that misses."""
    box = page.locator(selector).bounding_box()
    for _ in range(tries):
        page.wait_for_timeout(100)
        again = page.locator(selector).bounding_box()
        if again == box:
            return box
        box = again
    return box


def click_at_mm(page, scan: medlab.Image, point_mm) -> None:
    """Click the axial canvas at the voxel of ``point_mm`` (x, y) on the shown slice.

    For an LPS-ordered image the axial canvas pixel (row, col) is voxel (x = col, y = row): the
    viewer's documented screen order (patient right on the left, anterior up).
    """
    assert np.allclose(scan.direction, np.eye(3)), "the test assumes an LPS-ordered phantom"
    i, j, _ = np.rint(scan.physical_to_index(point_mm)).astype(int)
    page.locator(OVERLAY).scroll_into_view_if_needed()
    box = stable_box(page, OVERLAY)
    rows, cols = page.evaluate("(s) => { const c = document.querySelector(s); return [c.height, c.width]; }", CANVAS)
    page.mouse.click(box["x"] + (i + 0.5) * box["width"] / cols, box["y"] + (j + 0.5) * box["height"] / rows)


def rate(page, verdict: str, confidence: int, comment: str = "", mark=None) -> None:
    """Fill the form for the shown map and press Save."""
    page.locator(".medlab-review-verdict label", has_text=LABELS[verdict]).click()
    page.locator(".medlab-review-confidence button", has_text=re.compile(f"^{confidence}$")).click()
    if mark is not None:
        page.locator(".medlab-review-look").click()
        click_at_mm(page, *mark)
        expect_text(page, ".medlab-review-click", r"Marked at \(")
    if comment:
        page.locator(".medlab-review-comment textarea").fill(comment)
        page.locator(".medlab-review-comment textarea").blur()
    page.locator(".medlab-review-save").click()


def no_code_visible(page) -> None:
    html = page.content()
    assert "from medlab.widgets.review import" not in html and "review_app()" not in html
    assert page.locator(".jp-InputArea-editor, .jp-CodeMirrorEditor, .cm-editor").count() == 0
    assert "Traceback" not in page.inner_text("body")


# ----------------------------------------------------------------------------- tests
def test_review_three_cases_with_refresh(review_server, review_page, three_case_study):
    study, centres = three_case_study
    page = review_page
    server = review_server(study.path)
    items = study.items(REVIEWER)
    assert len(items) == 6

    def expected_verdict(item):
        return ("relevant", 5) if item.method == "gaussian_at_tumour" else ("irrelevant", 4)

    def expect_at(n: int, rated: int):
        it = items[n]
        return expect_text(page, PROGRESS, re.escape(f"Case {it.case_number} of 3 · {it.shown_as} "
                                                     f"({it.map_number} of 2) · {rated} of 6 rated"))

    open_app(page, server.url)
    expect_at(0, 0)
    no_code_visible(page)
    # what a reader sees: a colour key in words; no second point tool, no voxel-type caption
    expect_text(page, ".medlab-review-map-key", r"weaker.*stronger")
    assert page.locator(".medlab-review-map-key .medlab-review-key-bar").first.is_visible()
    assert page.locator(".medlab-review-viewer button.medlab-pointmode").first.is_hidden()
    assert page.locator(".medlab-review-viewer .medlab-pointsets").first.is_hidden()
    assert page.locator(".medlab-review-viewer .medlab-status").first.is_hidden()
    expect_text(page, ".medlab-review-prediction", "hidden")
    assert page.title() == "medlab review"

    def rate_item(n: int, *, screenshot: str | None = None):
        it = items[n]
        wait_picture(page)
        # the map is drawn over the scan, and "Show map" takes it away and brings it back
        wait_coloured(page, True)
        page.locator(".medlab-review-showmap input").uncheck()
        wait_coloured(page, False)
        page.locator(".medlab-review-showmap input").check()
        wait_coloured(page, True)
        verdict, confidence = expected_verdict(it)
        scan, centre = centres[it.case_id]
        mark = (scan, centre) if it.method == "gaussian_at_tumour" else None
        if mark is not None and screenshot:
            page.locator(".medlab-review-verdict label", has_text=LABELS[verdict]).click()
            page.locator(".medlab-review-look").click()
            click_at_mm(page, scan, centre)
            expect_text(page, ".medlab-review-click", r"Marked at \(")
            page.screenshot(path=str(page.screenshots / screenshot), full_page=True)
            page.locator(".medlab-review-look").click()  # the form is then filled as usual
        rate(page, verdict, confidence, comment=f"{it.case_id} {it.shown_as}", mark=mark)

    rate_item(0, screenshot="review-app-marked.png")
    expect_at(1, 1)
    expect_text(page, ".medlab-review-status", "Saved: case 1")
    rate_item(1)
    expect_at(2, 2)
    rate_item(2)
    expect_at(3, 3)

    # --- a browser refresh midway: a new kernel, and the app resumes at the fourth map
    page.reload()
    page.locator(".medlab-review").first.wait_for(timeout=PAGE_TIMEOUT_MS)
    expect_at(3, 3)
    assert page.locator(".medlab-review-verdict input:checked").count() == 0
    stored = ReviewStore(study.database_path).current(REVIEWER)
    assert len(stored) == 3, "the first three verdicts were not in the database before the refresh"

    rate_item(3)
    expect_at(4, 4)
    rate_item(4)
    expect_at(5, 5)
    rate_item(5)
    expect_text(page, ".medlab-review-done", "All 6 maps are rated")
    expect_text(page, PROGRESS, "6 of 6 rated")
    page.screenshot(path=str(page.screenshots / "review-app-done.png"), full_page=True)

    # --- an edit: back to the first map, which shows the stored verdict; saving adds version 2
    page.locator(".medlab-review-again").click()
    expect_at(0, 6)
    expect_text(page, ".medlab-review-earlier", "version 1")
    assert page.locator(".medlab-review-verdict input:checked").count() == 1
    page.locator(".medlab-review-verdict label", has_text=LABELS["partly"]).click()
    page.locator(".medlab-review-save").click()
    expect_text(page, ".medlab-review-done", "All 6 maps are rated")
    no_code_visible(page)

    # --- every verdict is in the database, un-blinded, with its neutral name, click and history
    store = ReviewStore(study.database_path)
    current = {(v.case_id, v.method): v for v in store.current(REVIEWER)}
    assert len(current) == 6
    for it in items:
        v = current[(it.case_id, it.method)]
        verdict, confidence = expected_verdict(it)
        if it.index == 0:
            assert (v.verdict, v.version) == ("partly", 2)
        else:
            assert (v.verdict, v.version) == (verdict, 1)
        assert (v.reviewer, v.shown_as, v.confidence) == (REVIEWER, it.shown_as, confidence)
        assert v.comment == f"{it.case_id} {it.shown_as}" and not v.prediction_shown
        if it.method == "gaussian_at_tumour":
            scan, centre = centres[it.case_id]
            # the click landed on the tumour's voxel in x and y (z is the slice shown)
            assert np.allclose(v.click[:2], centre[:2], atol=max(scan.spacing[:2]) * 0.75), (v.click, centre)
            assert v.click_to_peak_mm is not None and v.click_to_peak_mm < 8.0
        else:
            assert v.click is None
    first = store.versions(REVIEWER, items[0].case_id, items[0].method)
    assert [x.verdict for x in first] == [expected_verdict(items[0])[0], "partly"]


def test_review_bad_input_is_explained(review_server, review_page, tmp_path):
    page = review_page
    p = medlab.data.brain_mri(size=(48, 48, 16), seed=0)
    scan, centre = p.t1, p.info["tumour_centre_mm"]
    far = medlab.Image(np.random.default_rng(0).random((8, 8, 8), np.float32), origin=(900.0, 900.0, 900.0))
    study = ReviewStudy.create(tmp_path / "bad", [
        {"id": "far-map", "scan": scan, "maps": {"computed_elsewhere": far}},
        {"id": "no-scan", "scan": tmp_path / "never-exported.nii.gz", "maps": {"blob": gaussian_map(scan, centre)}},
        {"id": "fine", "scan": scan, "maps": {"blob": gaussian_map(scan, centre)}},
    ], name="Bad input", seed=0)
    server = review_server(study.path)
    open_app(page, server.url)

    expect_text(page, ".medlab-review-error", "does not overlap the scan")
    assert page.locator(".medlab-review-save").is_disabled()
    assert page.locator(CANVAS).count() == 0
    page.locator(".medlab-review-next").click()
    expect_text(page, ".medlab-review-error", r"never-exported\.nii\.gz does not exist")
    page.screenshot(path=str(page.screenshots / "review-app-missing-scan.png"), full_page=True)
    page.locator(".medlab-review-next").click()
    expect_text(page, PROGRESS, re.escape("Case 3 of 3"))
    wait_picture(page)
    rate(page, "relevant", 3)
    expect_text(page, ".medlab-review-done", "1 of 3 maps rated; 2 skipped")
    no_code_visible(page)

    # --- the database is damaged between two visits: a message naming it, and the file untouched
    db = study.database_path
    original = db.read_bytes()
    damaged = bytearray(original)
    damaged[:16] = b"this is no db!!\0"
    db.write_bytes(bytes(damaged))
    before = _digest(db)
    page.reload()
    text = expect_text(page, ".medlab-review-fatal", "cannot be used")
    assert str(db) in text and "has not been changed" in text
    no_code_visible(page)
    page.screenshot(path=str(page.screenshots / "review-app-corrupt-db.png"), full_page=True)
    assert _digest(db) == before
    db.write_bytes(original)  # restored from a backup: the verdict is there
    assert [(v.case_id, v.verdict) for v in ReviewStore(db).current(REVIEWER)] == [("fine", "relevant")]

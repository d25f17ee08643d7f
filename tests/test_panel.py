"""The stage panel: controls from declarations, debounced live preview without stale results,
Apply in the background with progress and Cancel, errors in the status line."""

from __future__ import annotations

import sys
import threading
import time

import ipywidgets as widgets
import numpy as np
import pytest
from medlab.widgets.controls import param_control
from medlab.widgets.panel import StagePanel
from medlab.widgets.viewer import Viewer
from scipy import ndimage

import medlab
from medlab import Image, render
from medlab.errors import Cancelled, ImageError, ParameterError
from medlab.stage import Bool, Choice, Float, Grid, Int, Points, Vector, progress, stage

# ---------------------------------------------------------------------------- test stages
# group "measure" keeps them out of the preprocess stage list other tests iterate.
CALLS: list = []


@stage("Panel test blur", group="measure",
       sigma=Float(0.0, 5.0, 1.0, step=0.1, unit="voxels", help="Gaussian width"),
       mode=Choice(["reflect", "nearest"], help="how edges are extended"))
def _panel_blur(image, *, sigma=1.0, mode="reflect"):
    """Gaussian blur that keeps geometry."""
    CALLS.append(("blur", sigma))
    return image.with_array(ndimage.gaussian_filter(image.array.astype(np.float32), sigma, mode=mode))


@stage("Panel test slow offset", group="measure", offset=Float(-10.0, 10.0, 0.0), steps=Int(1, 1000, 10),
       delay=Float(0.0, 1.0, 0.01, unit="s"))
def _panel_slow(image, *, offset=0.0, steps=10, delay=0.01):
    """Adds ``offset`` after ``steps`` sleeps, reporting progress and honouring Cancel."""
    try:
        for _ in progress(range(steps), desc="slow"):
            time.sleep(delay)
    except Cancelled:
        CALLS.append(("cancelled", offset))
        raise
    CALLS.append(("slow", offset))
    return image.with_array(image.array + np.float32(offset))


GATE = threading.Event()
STARTED = threading.Event()


@stage("Panel test gated offset", group="measure", offset=Float(-10.0, 10.0, 0.0))
def _panel_gated(image, *, offset=0.0):
    """Blocks (ignoring Cancel) on GATE when ``offset == 1``, so a test controls the order."""
    if offset == 1.0:
        STARTED.set()
        assert GATE.wait(60)
    CALLS.append(("gated", offset))
    return image.with_array(image.array + np.float32(offset))


@stage("Panel test failure", group="measure", kind=Choice(["medlab", "bug"]))
def _panel_fail(image, *, kind="medlab"):
    if kind == "medlab":
        raise ImageError("panel test: the image is too dark; brighten it first")
    return 1 / 0


@stage("Panel test z mean", group="measure", dims=(3,), size=Int(1, 5, 3, step=2, unit="slices"))
def _panel_zmean(image, *, size=3):
    """A 3D-only stage: mean over ``size`` neighbours along every axis (mirror at the edges)."""
    return image.with_array(ndimage.uniform_filter(image.array.astype(np.float32), size, mode="mirror"))


@stage("Panel test every kind", group="measure", resamples=True,
       gain=Float(0.01, 100.0, 1.0, log=True, unit="×", help="log slider"),
       radius=Int(1, 9, 3, step=2, help="odd"), flag=Bool(True, help="a switch"),
       spacing=Vector(0.1, 10.0, None, unit="mm", help="target spacing"),
       seeds=Points(help="clicked"), grid=Grid(help="reference"))
def _panel_kinds(image, *, gain=1.0, radius=3, flag=True, spacing=None, seeds=(), grid=None):
    return image.with_array(image.array * np.float32(gain))


@stage("Panel test no preview", group="measure", preview=None, factor=Float(0.0, 2.0, 1.0))
def _panel_nopreview(image, *, factor=1.0):
    CALLS.append(("nopreview", factor))
    return image.with_array(image.array * np.float32(factor))


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture
def img():
    rng = np.random.default_rng(3)
    arr = rng.normal(100, 10, size=(12, 24, 28)).astype(np.float32)
    direction = np.array([[0, 0, 1], [1, 0, 0], [0, -1, 0]], float).T  # oblique-free but permuted
    return medlab.Image(arr, spacing=(0.8, 0.9, 2.0), origin=(-10, 5, 30), direction=direction)


@pytest.fixture(autouse=True)
def _clean():
    CALLS.clear()
    GATE.clear()
    STARTED.clear()
    yield
    GATE.set()


def _wait_for(predicate, timeout=60.0):  # generous: a loaded CI machine stalls threads for seconds
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


def _status_class(panel):
    return [c for c in panel.status._dom_classes if c.startswith("medlab-status-")]


# ---------------------------------------------------------------------------- controls
def _check_control(p, c):
    w = c.widget
    assert f"medlab-param-{p.name}" in w._dom_classes and "medlab-param" in w._dom_classes
    if p.kind == "float":
        if p.log and p.min > 0:
            assert w.min == pytest.approx(np.log10(p.min)) and w.max == pytest.approx(np.log10(p.max))
            assert w.base == 10
        else:
            assert (w.min, w.max) == pytest.approx((p.min, p.max)) and p.step / 2 <= w.step <= p.step * 1.5
        assert c.value == pytest.approx(p.default)
        _browser_snaps(w)
        assert c.value == p.default, f"{p.name}: the browser's slider would move the default to {c.value}"
    elif p.kind == "int":
        assert (w.min, w.max, w.step, w.value) == (p.min, p.max, p.step, p.default)
    elif p.kind == "choice":
        assert list(w.options) == list(p.options) and w.value == p.default
    elif p.kind == "bool":
        assert w.value is p.default
    elif p.kind == "vector":
        boxes = [b for b in w.children if b.__class__.__name__ == "FloatText"]
        assert len(boxes) == (p.length or 3)
        assert c.value == (None if p.default is None else tuple(p.default))
    elif p.kind == "numbers":
        assert c.value == tuple(p.default) and w.value == ", ".join(str(v) for v in p.default)
    elif p.kind == "points":
        assert c.value == ()
    elif p.kind == "grid":
        assert c.value is None and "panel.set" in w.children[0].value
    else:
        pytest.fail(f"no check for kind {p.kind}")
    text = _text(w)
    assert (p.label or p.name.replace("_", " ")) in text
    if p.unit and p.kind not in ("points", "grid"):
        assert f"({p.unit})" in text
    if p.help and p.kind in ("float", "int", "choice", "bool"):
        assert w.tooltip == p.help


def _browser_snaps(w) -> None:
    """What the browser's slider does on display: snap the value onto ``min + k * step`` (in
    exponent space for a log slider, in float arithmetic) and send it back to the kernel."""
    if isinstance(w, widgets.FloatLogSlider):
        k = round((np.log10(w.value) - w.min) / w.step)
        w.value = w.base ** (w.min + k * w.step)
    else:
        w.value = w.min + round((w.value - w.min) / w.step) * w.step


def test_a_value_set_off_the_slider_grid_survives_the_browser():
    """A recipe's value between two steps of a slider: the slider's step is made to hold it
    (the browser would snap it to the grid and send that back: 30.9 mm run instead of 30)."""
    p = Float(1.0, 500.0, 30.0, unit="mm")
    p.name = "mask_mm"
    c = param_control(p)
    assert (30.0 - 1.0) / p.step % 1 > 1e-6         # off the declared grid: the case this is about
    _browser_snaps(c.widget)
    assert c.value == 30.0
    for value in (31.7, 1.0, 499.99):
        c.value = value
        _browser_snaps(c.widget)
        assert c.value == value
    for value in (10 + 1 / 3, 5 + 0.1 + 0.2, 1.2345678901234567, float(np.float32(2.7))):   # a recipe's exact floats
        c.value = value
        _browser_snaps(c.widget)
        assert c.value == value
    c.widget.value = 0.1 + 0.2 + 17          # dragged by the user: the browser's float noise is dropped
    assert c.value == 17.3
    lp = Float(1e-4, 1.0, 0.01, log=True)
    lp.name = "rate"
    lc = param_control(lp)
    for value in (0.01, 0.0123, 1e-4):
        lc.value = value
        _browser_snaps(lc.widget)
        assert lc.value == value


def _text(w) -> str:
    """All the words a widget (and its children) shows."""
    parts = [getattr(w, "description", "")]
    if isinstance(getattr(w, "value", None), str):
        parts.append(w.value)
    return " ".join(parts + [_text(ch) for ch in getattr(w, "children", ())])


def test_controls_match_every_registered_declaration():
    specs = medlab.stages()
    assert any(s.name == "_panel_kinds" for s in specs)
    for spec in specs:
        panel = StagePanel(spec, live=False)
        assert list(panel.controls) == list(spec.params)
        for name, p in spec.params.items():
            _check_control(p, panel.controls[name])
        assert spec.params_to_json(panel.params) == spec.params_to_json(spec.defaults())
        panel.close()


def test_every_kind_reads_and_writes_its_values(img):
    v = Viewer(img)
    panel = StagePanel(_panel_kinds, v, live=False)
    panel.set(gain=10.0, radius=7, flag=False, spacing=(1.0, 2.0, 3.0))
    assert panel.params["gain"] == pytest.approx(10.0)
    assert panel.params["radius"] == 7 and panel.params["flag"] is False
    assert panel.params["spacing"] == (1.0, 2.0, 3.0)
    panel.set(spacing=None)
    assert panel.params["spacing"] is None
    # points come from the viewer, both ways
    v.points = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    assert panel.params["seeds"] == ((1.0, 2.0, 3.0), (4.0, 5.0, 6.0))
    panel.set(seeds=[(7.0, 8.0, 9.0)])
    assert v.points == [[7.0, 8.0, 9.0]]
    panel.controls["seeds"].pick.value = True
    assert v.point_mode == "edit"
    # a grid is set from Python and turns the slice preview off, saying why
    assert panel.preview_note.value == ""
    panel.set(grid=img)
    assert panel.params["grid"] is img and "grid" in panel.preview_note.value


def test_log_slider_value_never_leaves_the_declared_range():
    p = Float(0.3, 30.0, 3.0, log=True)
    p.name = "h"
    c = param_control(p)
    c.widget.value = 10 ** c.widget.max  # float round trip lands a hair above 30
    assert c.value <= 30.0
    p.validate(c.value, "test")


# ---------------------------------------------------------------------------- validation errors
def test_invalid_parameter_shows_in_status_line(img):
    panel = StagePanel(_panel_kinds, Viewer(img), live=False)
    with pytest.raises(ParameterError, match="radius"):
        panel.set(radius=4)  # not on the odd grid
    assert "radius" in panel.message and "4" in panel.message
    assert _status_class(panel) == ["medlab-status-error"]
    assert panel.params["radius"] == 3  # the control kept its valid value
    # a value typed into a number box is checked before any work
    panel.controls["spacing"].widget.children[-1].value = False  # untick "auto"
    panel.controls["spacing"].widget.children[1].value = 50.0
    assert panel.apply() is None
    assert "spacing" in panel.message and "[0.1, 10]" in panel.message
    assert panel.result is None


def test_validation_error_then_fix_clears_status(img):
    v = Viewer(img)
    panel = StagePanel(_panel_kinds, v, debounce=0.0)
    panel.wait_preview()
    panel.controls["spacing"].widget.children[-1].value = False
    panel.controls["spacing"].widget.children[1].value = 50.0
    assert "spacing" in panel.message
    panel.controls["spacing"].widget.children[1].value = 5.0
    panel.wait_preview()
    assert panel.message == "" and panel.error is None


# ---------------------------------------------------------------------------- preview
def test_preview_runs_on_the_shown_slice(img):
    v = Viewer(img)
    v.slice_index = 3
    panel = StagePanel(_panel_blur, v, debounce=0.0)
    panel.set(sigma=1.7, mode="nearest")
    out = panel.wait_preview()
    expected = _panel_blur(v.current_slice(), sigma=1.7, mode="nearest")
    assert np.array_equal(out.array, expected.array)
    assert out.spacing == v.current_slice().spacing
    assert np.array_equal(panel.preview_input.array, v.current_slice().array)
    assert panel.after.image is out and panel.preview_ms >= 0
    assert panel.preview_time.value.startswith("preview ") and panel.preview_time.value.endswith(" ms")
    # the preview window/level is the input's, not the preview's own
    assert (panel.after.window, panel.after.level) == (v.window, v.level)
    # following the viewer: another slice, another plane
    v.slice_index = 7
    out = panel.wait_preview()
    assert np.array_equal(out.array, _panel_blur(v.current_slice(), sigma=1.7, mode="nearest").array)
    v.plane = "sagittal"
    out = panel.wait_preview()
    assert out.shape == v.current_slice().shape
    assert np.array_equal(out.array, _panel_blur(v.current_slice(), sigma=1.7, mode="nearest").array)


def test_difference_view_toggle(img):
    v = Viewer(img)
    panel = StagePanel(_panel_blur, v, debounce=0.0)
    panel.wait_preview()
    assert panel.after._second_info == {}
    panel.difference.value = True
    assert panel.after._second_info["mode"] == "difference"
    panel.difference.value = False
    assert panel.after._second_info == {}


@pytest.mark.parametrize("plane, index", [("axial", 5), ("coronal", 10), ("axial", 0)])
def test_3d_only_stage_previews_middle_of_a_slab(img, plane, index):
    v = Viewer(img)
    v.plane = plane
    v.slice_index = index
    panel = StagePanel(_panel_zmean, v, debounce=0.0, slab=2)
    out = panel.wait_preview()
    full = _panel_zmean(img, size=3)
    expected = render.extract_slice(full, plane, index)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out.array, expected.array, rtol=1e-6)
    assert np.array_equal(panel.preview_input.array, v.current_slice().array)


class _Clock:
    """The panel module's ``time`` with a ``monotonic`` the test moves: a drag in 20 ms steps
    stays one on a loaded machine (a real ``sleep(0.02)`` stalled past the 0.3 s quiet time runs
    a preview mid-drag)."""

    def __init__(self):
        self.now = time.monotonic()

    def monotonic(self) -> float:
        return self.now

    def __getattr__(self, name):
        return getattr(time, name)


def test_debounce_runs_once_for_a_burst_of_changes(img, monkeypatch):
    panel = StagePanel(_panel_blur, Viewer(img), debounce=0.3)
    panel.wait_preview()
    CALLS.clear()
    clock = _Clock()
    monkeypatch.setattr(sys.modules[StagePanel.__module__], "time", clock)
    for s in (0.5, 1.0, 1.5, 2.0, 2.5):  # a slider drag: a change every 20 ms
        panel.controls["sigma"].widget.value = s
        clock.now += 0.02
    time.sleep(0.5)  # real time too: the worker thread had its chance to run early
    assert CALLS == []  # nothing ran during the drag
    clock.now += 0.3  # the quiet time passes
    _wait_for(lambda: CALLS)
    panel.wait_preview()
    assert CALLS == [("blur", 2.5)]


def test_stale_preview_is_never_shown(img):
    """A slow preview (offset 1) finishing after a newer request (offset 2) is dropped."""
    v = Viewer(img)
    panel = StagePanel(_panel_gated, v, debounce=0.0)
    panel.wait_preview()
    shown = []
    panel.on_preview(lambda p: shown.append(float(np.mean(p.preview.array - p.preview_input.array))))
    panel.set(offset=1.0)
    assert STARTED.wait(60)  # the slow preview is computing
    panel.set(offset=2.0)   # a newer request arrives meanwhile
    GATE.set()              # now the old one finishes first
    out = panel.wait_preview()
    assert ("gated", 1.0) in CALLS and ("gated", 2.0) in CALLS  # both ran...
    assert shown == [pytest.approx(2.0)]                         # ...only the newer was shown
    assert np.allclose(out.array - panel.preview_input.array, 2.0)


def test_superseded_preview_is_cancelled(img):
    panel = StagePanel(_panel_slow, Viewer(img), debounce=0.0)
    panel.wait_preview()
    CALLS.clear()
    panel.set(offset=1.0, steps=1000, delay=0.01)  # 10 s unless cancelled
    _wait_for(lambda: panel._worker._running is not None)
    t0 = time.monotonic()
    panel.set(offset=2.0, steps=1, delay=0.0)
    out = panel.wait_preview()
    assert ("cancelled", 1.0) in CALLS and ("slow", 1.0) not in CALLS
    assert time.monotonic() - t0 < 5
    assert np.allclose(out.array - panel.preview_input.array, 2.0)


def test_stage_without_slice_preview_says_so(img):
    panel = StagePanel(_panel_nopreview, Viewer(img), debounce=0.0)
    panel.set(factor=2.0)
    assert panel.wait_preview() is None and CALLS == []
    assert "no slice preview" in panel.preview_note.value
    out = panel.apply(wait=True)
    assert np.array_equal(out.array, img.array * np.float32(2.0))


def test_preview_error_shows_in_status_line(img):
    panel = StagePanel(_panel_fail, Viewer(img), debounce=0.0)
    panel.wait_preview()
    assert panel.message.startswith("preview: ") and "too dark" in panel.message
    assert _status_class(panel) == ["medlab-status-error"]


# ---------------------------------------------------------------------------- apply
def test_apply_reports_progress_and_keeps_geometry(img):
    v = Viewer(img)
    panel = StagePanel(_panel_slow, v, live=False)
    panel.set(offset=3.0, steps=20, delay=0.005)
    seen = []
    panel.progress.observe(lambda ch: seen.append(ch["new"]), "value")
    out = panel.apply(wait=True)
    assert np.array_equal(out.array, img.array + np.float32(3.0))
    assert out.same_grid(img) and out.spacing == img.spacing and out.origin == img.origin
    assert np.array_equal(out.direction, img.direction)
    assert panel.result is out and panel.outputs == (out,)
    assert panel.steps == [("_panel_slow", {"offset": 3.0, "steps": 20, "delay": 0.005})]
    assert len(seen) >= 10 and seen == sorted(seen) and seen[-1] == 1.0
    assert "applied" in panel.message and _status_class(panel) == ["medlab-status-ok"]
    assert not panel.running and not panel.apply_button.disabled and panel.cancel_button.disabled


def test_apply_returns_at_once_and_cancel_leaves_input_unchanged(img):
    v = Viewer(img)
    before = img.array.copy()
    panel = StagePanel(_panel_slow, v, live=False)
    panel.set(offset=5.0, steps=1000, delay=0.01)  # 10 s unless cancelled
    t0 = time.monotonic()
    panel.apply_button.click()  # what the browser does
    assert time.monotonic() - t0 < 5  # the kernel is free at once (the run takes 10 s)
    assert panel.running and panel.apply_button.disabled and not panel.cancel_button.disabled
    _wait_for(lambda: panel.progress.value > 0)
    assert panel.progress.layout.visibility == "visible"
    panel.cancel_button.click()
    panel._apply_thread.join(60)
    assert not panel._apply_thread.is_alive()
    assert panel.result is None and ("cancelled", 5.0) in CALLS
    assert "cancelled" in panel.message and "unchanged" in panel.message
    assert np.array_equal(img.array, before) and v.image is img
    assert not panel.running and not panel.apply_button.disabled


def test_apply_wait_raises_cancelled_when_cancelled(img):
    panel = StagePanel(_panel_slow, Viewer(img), live=False)
    panel.set(steps=1000, delay=0.01)

    def cancel_once_running():  # not after a fixed delay: a Cancel before the run has started is lost
        _wait_for(lambda: panel.running and panel.progress.value > 0)
        panel.cancel()

    threading.Thread(target=cancel_once_running, daemon=True).start()
    with pytest.raises(Cancelled):
        panel.apply(wait=True)
    assert panel.result is None


@pytest.mark.parametrize("kind, text", [("medlab", "too dark"), ("bug", "ZeroDivisionError")])
def test_apply_errors_show_in_status_line_never_escape(img, kind, text):
    panel = StagePanel(_panel_fail, Viewer(img), live=False)
    panel.set(kind=kind)
    panel.apply_button.click()
    panel._apply_thread.join(60)
    assert text in panel.message and _status_class(panel) == ["medlab-status-error"]
    assert panel.result is None and not panel.running and not panel.apply_button.disabled
    with pytest.raises((ImageError, ZeroDivisionError)):
        panel.apply(wait=True)


def test_apply_while_running_is_refused_politely(img):
    panel = StagePanel(_panel_slow, Viewer(img), live=False)
    panel.set(steps=1000, delay=0.01)
    panel.apply()
    assert panel.apply() is None and "already running" in panel.message
    panel.cancel()
    panel._apply_thread.join(60)


def test_panel_without_viewer_and_two_d_image():
    rng = np.random.default_rng(0)
    img2d = medlab.Image(rng.normal(size=(30, 40)).astype(np.float32), spacing=(0.2, 0.3), origin=(1, 2))
    panel = StagePanel(_panel_blur, image=img2d, debounce=0.0)
    out = panel.wait_preview()
    assert np.array_equal(out.array, _panel_blur(img2d, sigma=1.0).array)
    res = panel.apply(wait=True)
    assert res.same_grid(img2d)
    # the panel made its own viewers and shows them
    assert panel.viewer.image is img2d and panel.after.image is out
    assert "medlab-before" in panel.viewer._dom_classes and "medlab-after" in panel.after._dom_classes
    panel.viewer.window = 3.5  # the two viewers it made share window/level
    assert panel.after.window == 3.5


def test_css_classes_for_browser_tests(img):
    panel = StagePanel(_panel_blur, Viewer(img), live=False)
    classes = {c for w in _walk(panel) for c in getattr(w, "_dom_classes", ())}
    for c in ("medlab-panel", "medlab-param-sigma", "medlab-param-mode", "medlab-apply", "medlab-cancel",
              "medlab-progress", "medlab-status", "medlab-preview-time", "medlab-metrics", "medlab-difference",
              "medlab-stage-title"):
        assert c in classes, c


def _walk(w):
    yield w
    for ch in getattr(w, "children", ()):
        yield from _walk(ch)


def test_quality_numbers_of_the_preview():
    rng = np.random.default_rng(5)
    a = np.zeros((6, 64, 64), np.float32)
    a[:, 16:48, 16:48] = 50
    a[:, 26:38, 26:38] = 100
    img = medlab.Image(a + rng.normal(0, 5, a.shape).astype(np.float32), spacing=(1, 1, 3))
    panel = StagePanel(_panel_blur, Viewer(img), debounce=0.0)
    panel.set(sigma=1.5)
    panel.wait_preview()
    _wait_for(lambda: len(panel.quality_rows) == 4)
    rows = {name: (b, a) for name, b, a in panel.quality_rows}
    assert rows["noise σ"][0] == pytest.approx(5, rel=0.3) and rows["noise σ"][1] < rows["noise σ"][0]
    assert rows["SNR"][1] > rows["SNR"][0] and rows["CNR"][1] > rows["CNR"][0]
    assert rows["edge preservation"][0] is None and 0 < rows["edge preservation"][1] <= 1
    for name in rows:
        assert name in panel.metrics.value


def test_apply_is_seen_by_an_enclosing_recipe_record():
    from medlab.recipe import Recipe

    img = Image(np.random.default_rng(0).normal(size=(6, 16, 16)).astype(np.float32))
    panel = StagePanel(_panel_blur, image=img)
    with Recipe.record(img) as recipe:
        panel.apply(wait=True)
    assert [name for name, _ in recipe.steps] == [panel.spec.name]


def test_error_in_a_preview_callback_reaches_the_status_line():
    img = Image(np.random.default_rng(0).normal(size=(16, 16)).astype(np.float32))
    panel = StagePanel(_panel_blur, image=img, debounce=0)
    panel.on_preview(lambda p: 1 / 0)
    panel.request_preview()
    panel.wait_preview(60)
    assert "preview callback" in panel.message and "ZeroDivisionError" in panel.message


def test_2d_points_reach_the_viewer_as_3d_mm():
    @stage("Panel test seeds", group="measure", dims=(2,), seeds=Points(min_count=1))
    def _panel_seeds(image, *, seeds=()):
        return image.with_array(image.array.copy())

    img = Image(np.zeros((16, 16), np.float32))
    viewer = Viewer(img)
    panel = StagePanel(_panel_seeds, viewer, live=False)
    panel.set(seeds=[(3.0, 4.0)])
    assert viewer.points == [[3.0, 4.0, 0.0]] and viewer.status_kind != "error"

"""The register widget in a real browser (JupyterLab in Debian Chromium, offline).

A student's registration: the fixed T1 shows the moving T2 over it as a checkerboard, by position
(misaligned). Start runs a slow rigid registration in the background; while it runs, the metric
curve grows in the page and the checkerboard on the fixed canvas changes (the best transform so
far, redrawn live). Cancel stops it: the best transform so far is kept (its TRE beats the start),
the summary says so, and the canvas shows exactly the overlay Python composes for the kept
transform. A second, short run finishes and the summary reads "done".

Screenshots (``MEDLAB_BROWSER_SCREENSHOTS=always``, into ``<basetemp>/browser-screenshots``):
the whole page after the run, plus ``register_start.png``, ``register_running.png``,
``register_cancelled.png`` and ``register_done.png`` (the widget) in the test's temporary folder
or ``MEDLAB_SCREENSHOT_DIR``.

DOM used: ``.medlab-register-fixed canvas.medlab-canvas[data-plane=axial]`` (the overlay's
pixels), ``.medlab-register-curve .medlab-curve`` (``data-points``), ``.medlab-apply`` (Start),
``.medlab-cancel``, ``.medlab-register-summary``, ``.medlab-register-overlay-note``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from browser_state import json_state

pytestmark = pytest.mark.browser

FIXED = ".medlab-register-fixed canvas.medlab-canvas[data-plane=axial]"
CURVE = ".medlab-register-curve .medlab-curve"

CELLS = [
    """
import json, threading, time
import SimpleITK as sitk
import ipywidgets as W
import medlab
from medlab.register import target_registration_error
from medlab.widgets import RegisterWidget

pair = medlab.data.registration_pair(size=(64, 64, 32), spacing=(3.0, 3.0, 3.75), seed=3)
w = RegisterWidget(pair.fixed, pair.moving, truth=pair.transform, targets=pair.landmarks, height=260,
                   live_interval=0.3)
# slow on purpose: tiny steps from 18 mm away, so that the run is watched (and cancelled) mid-way
w.set(shrink_factors=(1,), iterations=3000, learning_rate=0.03, samples=4000)
# ...and paced: it converges after ~900 iterations, 1.7-3 s on a loaded 2-core machine, which a
# faster one could end before the page has seen the curve grow and the checkerboard change
_live = w.panel._on_live
def _paced_live(values):
    time.sleep(0.02)
    _live(values)
w.panel._on_live = _paced_live
state = W.Label()
state.add_class("reg-state")
""",
    """
def show(_=None):
    p = w.panel
    out = p.outputs
    history = p.live_values.get("history")
    kept = getattr(out, "transform", None) if out is not None else None
    tre = lambda t: float(target_registration_error(t, pair.landmarks, truth=pair.transform).mean())
    row = None
    # the overlay follows a new transform after one resampling in a worker thread: read the
    # picture only once it shows the current transform (else it is the previous live one)
    if not p.running and w.registered is not None and w.overlay_current:
        pic = w.before.snapshot_planes()["axial"]
        row = [int(pic.shape[0] // 2), pic[pic.shape[0] // 2, :, 0].tolist()]
    state.value = json.dumps({
        "running": p.running, "points": len(history) if history is not None else 0,
        "updates": w.overlay_updates, "cancelled": bool(getattr(out, "cancelled", False)),
        "kept_is_shown": kept is not None and w.transform is kept,
        "tre_before": tre(sitk.Euler3DTransform()),
        "tre_kept": tre(kept) if kept is not None else None, "row": row,
        "title": w._summary_title, "message": p.message,
        "params": {k: str(v) for k, v in p.params.items() if k in ("iterations", "learning_rate", "shrink_factors")}})

def ticker():
    while True:
        time.sleep(0.25)
        show()

w.panel.observe(show, "running")
threading.Thread(target=ticker, daemon=True).start()
show()
W.VBox([w, state])
""",
]


read_state, wait_state = json_state(".reg-state")


def canvas_signature(page) -> list[int]:
    """The red channel of the fixed canvas, every pixel (the overlay is grey: one channel says it all)."""
    return page.evaluate(
        """(sel) => { const c = document.querySelector(sel);
            if (!c || !c.width) return [];
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            const out = [];
            for (let i = 0; i < d.length; i += 4) out.push(d[i]);
            return out; }""", FIXED)


def canvas_row(page, row: int) -> list[int]:
    return page.evaluate(
        """([sel, r]) => { const c = document.querySelector(sel);
            const d = c.getContext('2d').getImageData(0, r, c.width, 1).data;
            const out = []; for (let i = 0; i < d.length; i += 4) out.push(d[i]); return out; }""", [FIXED, row])


def curve_points(page) -> int:
    return page.evaluate("(s) => { const c = document.querySelector(s); return c ? Number(c.dataset.points || 0) : 0; }",
                         CURVE)


def _shots(tmp_path: Path) -> Path:
    return Path(os.environ.get("MEDLAB_SCREENSHOT_DIR") or tmp_path)


def _widget_shot(page, tmp_path: Path, name: str, top: str = ".medlab-register-hint") -> None:
    """The page as the user sees it, scrolled so that ``top`` is at the top (an element screenshot
    of the tall widget would be cut by JupyterLab's scrolling notebook panel)."""
    page.evaluate("(s) => document.querySelector(s).scrollIntoView({block: 'start'})", top)
    page.wait_for_timeout(300)
    page.screenshot(path=str(_shots(tmp_path) / name))


def test_watch_a_registration_cancel_it_and_keep_the_best(notebook, tmp_path):
    page = notebook.open(CELLS)
    page.locator(FIXED).wait_for(state="visible")
    state = wait_state(page, lambda s: s["updates"] >= 1 and not s["running"], "the first overlay")
    page.wait_for_function("(s) => { const c = document.querySelector(s); return c && c.width > 0; }", arg=FIXED)
    notebook.wait_text(page, ".medlab-register-overlay-note", r"physical space")
    notebook.wait_text(page, ".medlab-register-summary", r"TRE before")
    page.wait_for_timeout(300)
    start_picture = canvas_signature(page)
    assert len(start_picture) > 0
    _widget_shot(page, tmp_path, "register_start.png")

    # Start: the curve grows and the checkerboard changes while the run goes on
    start = page.locator(".medlab-apply").first
    assert start.text_content().strip() == "Start"
    start.click()
    state = wait_state(page, lambda s: s["running"] and s["points"] > 0, "the run starting")
    page.wait_for_function("(s) => { const c = document.querySelector(s); return c && Number(c.dataset.points) > 0; }",
                           arg=CURVE, timeout=30_000)
    first = curve_points(page)
    page.wait_for_function("([s, n]) => Number(document.querySelector(s).dataset.points) > n", arg=[CURVE, first],
                           timeout=30_000)
    assert read_state(page)["running"], "the run ended before the curve was seen growing"
    deadline = time.monotonic() + 30
    changed = False
    while time.monotonic() < deadline and not changed:
        page.wait_for_timeout(200)
        changed = canvas_signature(page) != start_picture
    state = read_state(page)
    assert changed, "the checkerboard did not change during the run"
    assert state["running"] and state["updates"] >= 2, f"the run ended before the overlay changed: {state}"
    notebook.wait_text(page, ".medlab-register-overlay-note", r"best transform so far \(iteration \d+\)")
    _widget_shot(page, tmp_path, "register_running.png")

    # Cancel: the best transform so far is kept, shown, summarised
    page.locator(".medlab-cancel").first.click()
    state = wait_state(page, lambda s: not s["running"] and s["cancelled"] and s["row"] is not None,
                       "the cancelled run", 60)
    assert state["kept_is_shown"], state
    assert state["tre_kept"] < state["tre_before"], state
    notebook.wait_text(page, ".medlab-register-summary", r"cancelled — the best transform so far is kept")
    notebook.wait_text(page, ".medlab-register-overlay-note", r"run cancelled")
    notebook.wait_text(page, ".medlab-panel .medlab-status", r"cancelled: the best result so far is kept")
    # the canvas shows exactly what Python composes for the kept transform
    row, expected = state["row"]
    deadline = time.monotonic() + 15
    seen = []
    while time.monotonic() < deadline:
        seen = canvas_row(page, row)
        if len(seen) == len(expected) and max(abs(a - b) for a, b in zip(seen, expected)) <= 1:
            break
        page.wait_for_timeout(200)
    assert len(seen) == len(expected) and max(abs(a - b) for a, b in zip(seen, expected)) <= 1, \
        "the canvas does not show the kept transform's overlay"
    _widget_shot(page, tmp_path, "register_cancelled.png")

    # a short run finishes: "done"
    page.locator(".medlab-param-iterations .widget-readout").first.scroll_into_view_if_needed()
    notebook.set_slider(page, ".medlab-param-iterations", "100")
    notebook.set_slider(page, ".medlab-param-learning_rate", "1")
    schedule = page.locator(".medlab-param-shrink_factors input").first
    schedule.fill("4, 2, 1")
    schedule.press("Enter")
    # Start only once the kernel holds all three new values (under load a typed value can arrive late)
    wait_state(page, lambda s: s["params"]["iterations"] == "100" and abs(float(s["params"]["learning_rate"]) - 1.0) < 0.05
               and "4" in s["params"]["shrink_factors"], "the second run's settings", 30)
    page.locator(".medlab-apply").first.click()
    state = wait_state(page, lambda s: s["running"], "the second run starting", 30)
    state = wait_state(page, lambda s: not s["running"] and not s["cancelled"] and s["row"] is not None,
                       "the second run finishing", 120)
    notebook.wait_text(page, ".medlab-register-summary", r"done")
    notebook.wait_text(page, ".medlab-register-summary", r"TRE after")
    assert state["tre_kept"] < 1.0, state            # from the start, with a coarse-to-fine schedule
    _widget_shot(page, tmp_path, "register_done.png", top=".medlab-register-overlay-note")


# ------------------------------------------------------------------ landmark mode
FIXED_CLICKS = ".medlab-register-fixed canvas.medlab-overlay[data-plane=axial]"
MOVING_CLICKS = ".medlab-register-moving canvas.medlab-overlay[data-plane=axial]"

LANDMARK_CELLS = [
    """
import json
import numpy as np
import SimpleITK as sitk
import ipywidgets as W
import medlab
from medlab.outputs import Transform
from medlab.register import resample_image
from medlab.widgets import RegisterWidget

p = medlab.data.brain_mri(size=(64, 64, 32), spacing=(3.0, 3.0, 3.75), seed=0)
shift = (9.0, -6.0, 0.0)             # mm, whole voxels in plane: tissue at q (fixed) is at q - shift (moving)
moving = resample_image(p.t2, Transform(sitk.TranslationTransform(3, shift)), p.t2)
w = RegisterWidget(p.t1, moving, stage="landmark_register", height=260)
fixed_px = [(18, 20), (20, 44), (44, 30), (40, 16)]      # (row, col) on the shown axial slice
geo_f, geo_m = w.before._geometry["planes"]["axial"], w.after._geometry["planes"]["axial"]
fixed_mm = [(np.asarray(geo_f["to_mm"]) @ [c, r, w.before.slice_index, 1])[:3] for r, c in fixed_px]
moving_px = [tuple(int(round(v)) for v in (np.asarray(geo_m["from_mm"]) @ [*(q - shift), 1])[1::-1]) for q in fixed_mm]
state = W.Label()
state.add_class("reg-state")
""",
    """
def show(_=None):
    t = w.transform
    state.value = json.dumps({
        "fixed": w._points(w.before, "fixed_landmarks"), "moving": w._points(w.after, "moving_landmarks"),
        "fixed_edit": w.before.point_mode == "edit" and w.before.active_set == "fixed_landmarks",
        "moving_edit": w.after.point_mode == "edit" and w.after.active_set == "moving_landmarks",
        "rows": len(w.landmark_rows), "errors": [r.get("error") for r in w.landmark_rows],
        "translation": None if t is None else [float(v) for v in t.sitk.TransformPoint((0.0, 0.0, 0.0))],
        "running": w.panel.running, "title": w._summary_title,
        "fixed_px": fixed_px, "moving_px": moving_px,
        "slices": [w.before.slice_index, w.after.slice_index]})

for v in (w.before, w.after):
    v.observe(show, names=["point_sets", "active_set", "point_mode"])
w.panel.observe(show, "running")
show()
W.VBox([w, state])
""",
]


def click_pixel(page, selector: str, row: int, col: int) -> None:
    canvas = page.locator(selector)
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    rows, cols = page.evaluate("(s) => { const c = document.querySelector(s); return [c.height, c.width]; }",
                               selector.replace("medlab-overlay", "medlab-canvas"))
    page.mouse.click(box["x"] + (col + 0.5) * box["width"] / cols, box["y"] + (row + 0.5) * box["height"] / rows)


def test_click_landmark_pairs_in_the_two_viewers_and_see_their_errors(notebook, tmp_path):
    page = notebook.open(LANDMARK_CELLS)
    page.locator(FIXED_CLICKS).wait_for(state="visible")
    state = wait_state(page, lambda s: s["fixed_edit"], "the fixed landmarks armed")
    assert state["slices"][0] == state["slices"][1]      # linked in mm: a pure in-plane shift keeps the slice
    notebook.wait_text(page, ".medlab-register-hint", r"landmark 1.*fixed")
    for i, ((fr, fc), (mr, mc)) in enumerate(zip(state["fixed_px"], state["moving_px"])):
        click_pixel(page, FIXED_CLICKS, fr, fc)
        # the widget hands the next click to the moving viewer, and says so
        wait_state(page, lambda s, n=i + 1: len(s["fixed"]) == n and s["moving_edit"], f"fixed landmark {i + 1}")
        notebook.wait_text(page, ".medlab-register-hint", rf"landmark {i + 1}.*moving")
        click_pixel(page, MOVING_CLICKS, mr, mc)
        # the hand-over back to the fixed viewer publishes a state before the widget refits; wait
        # for the refit (one error per pair) rather than read that in-between state
        state = wait_state(page, lambda s, n=i + 1: len(s["moving"]) == n and s["fixed_edit"]
                           and s["rows"] == n and (n < 3 or all(e is not None for e in s["errors"])),
                           f"moving landmark {i + 1}")
    # four pairs clicked at the same anatomy: the rigid fit is the true shift, every FRE near 0
    assert state["rows"] == 4 and all(e is not None and e < 0.5 for e in state["errors"]), state
    assert np.allclose(state["translation"], [-9.0, 6.0, 0.0], atol=0.5), state
    notebook.wait_text(page, ".medlab-register-landmarks", r"FRE \(RMS over 4 landmarks\)")
    notebook.wait_text(page, ".medlab-register-landmarks", r"landmark 4")
    notebook.wait_text(page, ".medlab-register-overlay-note", r"landmark fit \(4 pairs\)")
    _widget_shot(page, tmp_path, "register_landmarks.png")

    page.locator(".medlab-apply").first.click()
    wait_state(page, lambda s: not s["running"] and "done" in s["title"], "the landmark registration", 60)
    notebook.wait_text(page, ".medlab-register-summary", r"RMS FRE")
    _widget_shot(page, tmp_path, "register_landmarks_done.png", top=".medlab-register-overlay-note")

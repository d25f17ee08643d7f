"""The slice viewer in a real browser: JupyterLab in Debian Chromium, driven by Playwright.

One notebook shows ``medlab.widgets.Viewer`` on the chest-CT phantom. The test scrolls (wheel,
arrow keys, PageUp), drags window/level with the right button, picks a preset, types a window,
clicks a point in point mode, hovers for the readout, and after each step checks

* what Python received, through a Label (``.bt-state``) whose JSON text only the kernel writes
  (slice index, window/level, points, the voxel under each point and its HU value), and
* every pixel of ``canvas.medlab-canvas[data-plane=axial]`` against what Python computes with
  ``medlab.render.window_level`` on ``medlab.render.extract_slice`` of the shown slice, sent
  base64-encoded in a hidden Label (``.bt-expected``).

DOM used (documented in ``widgets/viewer.py``): ``.medlab-viewer`` (focusable root),
``canvas.medlab-canvas[data-plane=axial]`` (one canvas pixel per voxel),
``canvas.medlab-overlay[data-plane=axial]`` (receives the mouse), ``select.medlab-preset``,
``input.medlab-window``,
``button.medlab-pointmode``, ``.medlab-readout``.
"""

from __future__ import annotations

import base64
import json
import math
import re
import time

import numpy as np
import pytest

pytestmark = pytest.mark.browser

CANVAS = "canvas.medlab-canvas[data-plane=axial]"
OVERLAY = "canvas.medlab-overlay[data-plane=axial]"

CELLS = [
    """
import base64, json
import numpy as np
import ipywidgets as W
import medlab
from medlab import render
from medlab.widgets import Viewer

ct = medlab.data.chest_ct(size=(96, 96, 24), seed=0).ct
viewer = Viewer(ct, height=360)
state = W.Label()
state.add_class('bt-state')
expected = W.Label(layout=W.Layout(display='none'))
expected.add_class('bt-expected')
""",
    """
def index_of(point):
    # Python's own geometry (medlab.Image), independent of the viewer's display affine
    return [int(round(v)) for v in ct.physical_to_index(point)]

def update(_=None):
    shown = render.extract_slice(viewer.image, 'axial', viewer.slice_index).array
    grey = render.window_level(shown, viewer.window, viewer.level)
    expected.value = json.dumps({'shape': list(grey.shape), 'slice': viewer.slice_index,
                                 'window': viewer.window, 'level': viewer.level,
                                 'grey': base64.b64encode(np.ascontiguousarray(grey, np.uint8)).decode()})
    voxels = [index_of(p) for p in viewer.points]
    state.value = json.dumps({
        'slice': viewer.slice_index, 'window': viewer.window, 'level': viewer.level,
        'mode': viewer.point_mode,
        'points': [[round(v, 4) for v in p] for p in viewer.points],
        'voxels': voxels,
        'hu': [int(ct.array[z, y, x]) for x, y, z in voxels],
        'presets': {k: list(v) for k, v in render.CT_PRESETS.items()},
        'spacing': list(ct.spacing), 'origin': list(ct.origin),
        'direction': np.asarray(ct.direction).tolist(),
        'display_is_stored': bool(np.array_equal(render.display_array(ct)[0], ct.array)),
    })

viewer.observe(update, names=['slice_index', 'window', 'level', 'points', 'point_mode'])
update()
W.VBox([viewer, state, expected])
""",
]


def read_json(page, selector: str) -> dict:
    return json.loads(page.locator(selector).first.text_content() or "null")


def wait_state(page, predicate, what: str, timeout_s: float = 15.0) -> dict:
    """Poll the kernel-written state until ``predicate(state)`` holds."""
    deadline = time.monotonic() + timeout_s
    state = None
    while time.monotonic() < deadline:
        try:
            state = read_json(page, ".bt-state")
        except json.JSONDecodeError:
            state = None
        if state and predicate(state):
            return state
        page.wait_for_timeout(50)
    pytest.fail(f"Python never saw {what}; last state: {state}", pytrace=False)


def canvas_grey(page) -> tuple[np.ndarray, bool]:
    """The axial canvas as a grey array (its red channel) and whether it is pure grey, opaque."""
    res = page.evaluate(
        """(sel) => { const c = document.querySelector(sel);
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            const grey = new Array(c.width * c.height);
            let pure = true;
            for (let i = 0; i < grey.length; i++) {
                grey[i] = d[4 * i];
                if (d[4 * i + 1] !== d[4 * i] || d[4 * i + 2] !== d[4 * i] || d[4 * i + 3] !== 255) pure = false;
            }
            return { w: c.width, h: c.height, grey, pure }; }""",
        CANVAS,
    )
    return np.array(res["grey"], np.uint8).reshape(res["h"], res["w"]), res["pure"]


def expect_canvas_matches_python(page, slice_index: int, timeout_s: float = 10.0) -> np.ndarray:
    """Wait until the canvas equals Python's windowed slice ``slice_index`` (within 1 grey level)."""
    deadline = time.monotonic() + timeout_s
    while True:
        exp = read_json(page, ".bt-expected")
        want = np.frombuffer(base64.b64decode(exp["grey"]), np.uint8).reshape(exp["shape"])
        got, pure = canvas_grey(page)
        same_shape = got.shape == want.shape
        diff = np.abs(got.astype(int) - want.astype(int)) if same_shape else None
        if exp["slice"] == slice_index and same_shape and pure and diff.max() <= 1:
            return got
        if time.monotonic() > deadline:
            detail = (f"shape {got.shape} vs {want.shape}" if not same_shape else
                      f"{int((diff > 1).sum())} pixels differ by > 1 (max {int(diff.max())})")
            pytest.fail(f"canvas != Python's window_level of slice {slice_index} "
                        f"(Python at slice {exp['slice']}): {detail}; pure grey: {pure}",
                        pytrace=False)
        page.wait_for_timeout(50)


def overlay_box(page) -> dict:
    """The axial overlay's box in page coordinates, scrolled into the viewport first."""
    page.locator(OVERLAY).scroll_into_view_if_needed()
    return page.locator(OVERLAY).bounding_box()


def pixel_centre(page, row: int, col: int) -> tuple[float, float]:
    """Page coordinates of the centre of canvas pixel (row, col)."""
    box = overlay_box(page)
    rows, cols = page.evaluate("(s) => { const c = document.querySelector(s); return [c.height, c.width]; }",
                               CANVAS)
    return box["x"] + (col + 0.5) * box["width"] / cols, box["y"] + (row + 0.5) * box["height"] / rows


def test_viewer_scroll_window_level_points_and_pixels(notebook):
    page = notebook.open(CELLS)
    page.locator(CANVAS).wait_for(state="visible")
    state = wait_state(page, lambda s: s["slice"] == 12, "the viewer's first slice")
    assert state["display_is_stored"], "test assumes an LPS-ordered phantom (display array == stored)"
    start = expect_canvas_matches_python(page, 12)
    assert start.std() > 10, "the first slice should show anatomy, not a flat picture"

    # --- scroll: two quick wheel steps down go two slices down (steps faster than the kernel
    # round trip must not be lost)
    box = overlay_box(page)
    cx, cy = round(box["x"] + box["width"] / 2), round(box["y"] + box["height"] / 2)
    page.mouse.move(cx, cy)
    page.mouse.wheel(0, 120)
    page.mouse.wheel(0, 120)
    wait_state(page, lambda s: s["slice"] == 10, "slice 10 after two wheel steps")
    scrolled = expect_canvas_matches_python(page, 10)
    assert not np.array_equal(scrolled, start), "scrolling did not change the picture"

    # --- arrow keys on the focused viewer: three Down dispatched in one browser task (a held-down
    # key on a busy kernel; each must count, so 10 -> 7), then three quick Up presses (-> 10)
    page.locator(".medlab-viewer").focus()
    page.evaluate("""() => { const root = document.querySelector('.medlab-viewer');
        for (let n = 0; n < 3; n++)
            root.dispatchEvent(new KeyboardEvent('keydown', { key: 'ArrowDown', bubbles: true })); }""")
    wait_state(page, lambda s: s["slice"] == 7, "slice 7 after three ArrowDown in one task")
    for _ in range(3):
        page.keyboard.press("ArrowUp")
    wait_state(page, lambda s: s["slice"] == 10, "slice 10 after three ArrowUp")
    page.keyboard.press("PageUp")  # 10 slices up
    wait_state(page, lambda s: s["slice"] == 20, "slice 20 after PageUp")
    page.keyboard.press("ArrowDown")
    wait_state(page, lambda s: s["slice"] == 19, "slice 19 after ArrowDown")
    expect_canvas_matches_python(page, 19)

    # --- window/level: right-button drag, 100 px right (wider window) and 40 px down (lower level)
    w0, l0 = state["window"], state["level"]
    box = overlay_box(page)
    cx, cy = round(box["x"] + box["width"] / 2), round(box["y"] + box["height"] / 2)
    page.mouse.move(cx, cy)
    page.mouse.down(button="right")
    page.mouse.move(cx + 50, cy + 20, steps=3)
    page.mouse.move(cx + 100, cy + 40, steps=3)
    page.mouse.up(button="right")
    want_w, want_l = w0 * math.exp(100 / 200), l0 - 40 * w0 / 200
    state = wait_state(page, lambda s: math.isclose(s["window"], want_w, rel_tol=0.02)
                       and math.isclose(s["level"], want_l, abs_tol=0.02 * w0),
                       f"window/level near ({want_w:.1f}, {want_l:.1f}) after the drag")
    assert state["slice"] == 19, "a window/level drag must not change the slice"
    expect_canvas_matches_python(page, 19)

    # --- a preset from the menu reaches Python
    page.select_option(".medlab-preset", "lung")
    wait_state(page, lambda s: [s["window"], s["level"]] == s["presets"]["lung"], "the lung preset")
    lung = expect_canvas_matches_python(page, 19)
    assert lung.std() > 10

    # --- typed numbers: window 900 in the W box, committed with Enter (level stays the preset's)
    page.locator("input.medlab-window").fill("900")
    page.locator("input.medlab-window").press("Enter")
    wait_state(page, lambda s: s["window"] == 900 and s["level"] == s["presets"]["lung"][1],
               "window 900 typed in the W box")
    expect_canvas_matches_python(page, 19)

    # --- point mode: a click at canvas pixel (row 30, col 60) of slice 19
    page.locator(".medlab-pointmode").click()
    wait_state(page, lambda s: s["mode"] == "edit", "point mode on")
    row, col = 30, 60
    x, y = pixel_centre(page, row, col)
    page.mouse.click(x, y)
    state = wait_state(page, lambda s: len(s["points"]) == 1, "one point after the click")
    # Python's medlab.Image maps the point back to the clicked voxel (display == stored order):
    assert state["voxels"] == [[col, row, 19]]
    # and the point is that voxel's centre in mm (LPS), computed here from the geometry alone
    d = np.array(state["direction"])
    want_mm = np.array(state["origin"]) + d @ (np.array(state["spacing"]) * [col, row, 19])
    np.testing.assert_allclose(state["points"][0], want_mm, atol=1e-3)
    assert page.locator(".medlab-pointmode").get_attribute("aria-pressed") == "true"

    # --- readout under the mouse: the same voxel, mm and HU value Python reads from the array
    page.mouse.move(x, y)
    readout = notebook.wait_text(page, ".medlab-readout", r"voxel \(")
    m = re.search(r"voxel \((\d+), (\d+), (\d+)\).*\(([-\d.]+), ([-\d.]+), ([-\d.]+)\) mm.*?(-?\d+(?:\.\d+)?) HU",
                  readout)
    assert m, readout
    assert [int(v) for v in m.groups()[:3]] == [col, row, 19]
    np.testing.assert_allclose([float(v) for v in m.groups()[3:6]], want_mm, atol=0.051)
    assert float(m.group(7)) == state["hu"][0]


"""The stage contract in a real browser: JupyterLab in Debian Chromium, offline.

1. **Point roles.** A workbench shows a stage declared with two points parameters of different
   roles (``seeds`` and ``background``). The test clicks the seeds' "pick in viewer" toggle and
   clicks the picture, then picks the background set from the viewer's legend chip and clicks
   elsewhere. Python must receive one point under each role, at the voxel centres clicked, and
   the two markers must be drawn in their two colours.
2. **Live curve.** A stage that publishes a growing curve while it runs is applied; the SVG
   plot on the page must grow (more points drawn) while Python still reports the run as going,
   and end with every point.

DOM used: ``.medlab-param-seeds .medlab-points-pick`` (ipywidgets ToggleButton),
``.medlab-pointset[data-name=background]`` (legend chip of a point set),
``.medlab-before canvas.medlab-overlay[data-plane=axial]`` (clicks, markers),
``.medlab-before canvas.medlab-canvas[data-plane=axial]`` (size in voxels), ``.medlab-apply``,
``.medlab-live .medlab-curve[data-points]`` (the live plot), ``.medlab-outputs .medlab-curve`` (the final one).
"""

from __future__ import annotations

import time

import pytest
from browser_state import json_state

pytestmark = pytest.mark.browser

OVERLAY = ".medlab-before canvas.medlab-overlay[data-plane=axial]"
CANVAS = ".medlab-before canvas.medlab-canvas[data-plane=axial]"

CELLS = [
    """
import json, time
import numpy as np
import ipywidgets as W
import medlab
from medlab.outputs import Curve, Table
from medlab.stage import stage, Points, Int, Float, ImageInput, LabelOut, TableOut, CurveOut, ImageOut, publish
from medlab.widgets import Workbench

@stage("Browser seeds", group="measure", seeds=Points(role="seeds", image="image", min_count=1),
       background=Points(role="background", image="image"), outputs={"mask": LabelOut(), "stats": TableOut()})
def bt_seeds(image, *, seeds=(), background=()):
    low = min(float(image.array[tuple(np.rint(image.physical_to_index(p)).astype(int)[::-1])]) for p in seeds)
    mask = image.with_array((image.array >= low).astype(np.uint8), kind="label", labels={1: "bright"})
    return mask, Table([{"seeds": len(seeds), "background": len(background)}])

@stage("Browser slow curve", group="measure", preview=None, steps=Int(1, 200, 40), delay=Float(0.0, 1.0, 0.08),
       outputs={"image": ImageOut(), "history": CurveOut()})
def bt_curve(image, *, steps=40, delay=0.08):
    curve = Curve("metric", x_label="iteration", y_label="toy metric", lower_is_better=True)
    for i in range(steps):
        time.sleep(delay)
        curve.append("level 1", i, 1.0 / (1 + i))
        publish(history=curve)
    return image.with_array(image.array * np.float32(2)), curve

img = medlab.data.brain_mri(size=(64, 64, 16), noise=0.02, seed=0).t1
wb = Workbench({"image": img}, stages=[bt_seeds, bt_curve], height=300, debounce=0.05)
state = W.Label()
state.add_class('bt-state')
""",
    """
def show(_=None):
    p = wb.panel
    v = wb.before
    state.value = json.dumps({
        'stage': p.spec.name, 'running': p.running, 'mode': v.point_mode, 'active': v.active_set,
        'seeds': [list(q) for q in p.params.get('seeds', ())],
        'background': [list(q) for q in p.params.get('background', ())],
        'slice': v.slice_index, 'to_mm': v._geometry['planes']['axial']['to_mm'],
        'colors': {d['name']: d['color'] for d in v.point_sets},
        'curve': len(p.live_values['history']) if 'history' in p.live_values else 0,
        'outputs': sorted(p.outputs_view.rows),
    })

wb.before.observe(show, names=['point_sets', 'active_set', 'point_mode', 'slice_index'])
wb.picker.observe(show, 'value')
for panel_name in ('bt_seeds', 'bt_curve'):
    wb.select(panel_name).observe(show, 'running')
wb.select('bt_seeds')
wb.panel.controls['seeds'].watched[0].observe(show, 'value')
wb.panel.controls['background'].watched[0].observe(show, 'value')
show()
W.VBox([wb, state])
""",
]


read_state, wait_state = json_state(".bt-state", timeout_s=20.0)


def click_pixel(page, row: int, col: int) -> tuple[float, float]:
    page.locator(OVERLAY).scroll_into_view_if_needed()
    box = page.locator(OVERLAY).bounding_box()
    rows, cols = page.evaluate("(s) => { const c = document.querySelector(s); return [c.height, c.width]; }", CANVAS)
    x, y = box["x"] + (col + 0.5) * box["width"] / cols, box["y"] + (row + 0.5) * box["height"] / rows
    page.mouse.click(x, y)
    return x - box["x"], y - box["y"]


def overlay_colours_near(page, x: float, y: float) -> set[tuple[int, int, int]]:
    """Opaque, non-grey colours drawn on the overlay within 8 CSS pixels of (x, y)."""
    found = page.evaluate(
        """([sel, x, y]) => { const c = document.querySelector(sel);
            const k = c.width / c.getBoundingClientRect().width;
            const r = Math.round(8 * k), cx = Math.round(x * k), cy = Math.round(y * k);
            const d = c.getContext('2d').getImageData(cx - r, cy - r, 2 * r + 1, 2 * r + 1).data;
            const out = [];
            for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 200) out.push([d[i], d[i + 1], d[i + 2]]);
            return out; }""",
        [OVERLAY, x, y],
    )
    return {tuple(c) for c in found if max(c) - min(c) > 60}


def _mm(state, row, col):
    m = state["to_mm"]
    v = [col, row, state["slice"], 1]
    return [sum(m[r][k] * v[k] for k in range(4)) for r in range(3)]


def _close(color, target, tol=40):
    return all(abs(a - b) <= tol for a, b in zip(color, target))


def test_seed_and_background_points_reach_python_under_their_roles(notebook):
    page = notebook.open(CELLS)
    page.locator(OVERLAY).wait_for(state="visible")
    state = wait_state(page, lambda s: s["stage"] == "bt_seeds", "the seeds stage")
    colors = state["colors"]
    assert colors["seeds"] != colors["background"]

    # the seeds set: its toggle in the panel
    page.locator(".medlab-param-seeds .medlab-points-pick").click()
    wait_state(page, lambda s: s["mode"] == "edit" and s["active"] == "seeds", "seed picking on")
    seed_xy = click_pixel(page, 30, 34)
    state = wait_state(page, lambda s: len(s["seeds"]) == 1, "one seed")
    assert state["background"] == []
    assert state["seeds"][0] == pytest.approx(_mm(state, 30, 34), abs=1e-3)

    # the background set: its chip in the viewer's legend
    page.locator(".medlab-pointset[data-name=background]").click()
    wait_state(page, lambda s: s["active"] == "background", "the background set active")
    bg_xy = click_pixel(page, 6, 6)
    state = wait_state(page, lambda s: len(s["background"]) == 1, "one background point")
    assert len(state["seeds"]) == 1, "a background click must not touch the seeds"
    assert state["background"][0] == pytest.approx(_mm(state, 6, 6), abs=1e-3)

    # two markers, in their two colours (polled: a fixed 200 ms wait can beat the redraw under load)
    deadline = time.monotonic() + 15
    while True:
        near_seed, near_bg = overlay_colours_near(page, *seed_xy), overlay_colours_near(page, *bg_xy)
        drawn = (any(_close(c, colors["seeds"]) for c in near_seed)
                 and any(_close(c, colors["background"]) for c in near_bg))
        if drawn or time.monotonic() > deadline:
            break
        page.wait_for_timeout(100)
    assert any(_close(c, colors["seeds"]) for c in near_seed), f"no seed colour at the seed: {near_seed}"
    assert any(_close(c, colors["background"]) for c in near_bg), f"no background colour there: {near_bg}"
    assert not any(_close(c, colors["background"]) for c in near_seed)
    # the legend counts them
    notebook.wait_text(page, ".medlab-pointset[data-name=seeds]", r"\(1\)")
    notebook.wait_text(page, ".medlab-pointset[data-name=background]", r"\(1\)")


def test_live_curve_grows_on_the_page_before_the_run_ends(notebook):
    page = notebook.open(CELLS)
    page.locator(".medlab-stage-picker select").select_option(label="Browser slow curve")
    wait_state(page, lambda s: s["stage"] == "bt_curve", "the curve stage selected")
    page.locator(".medlab-apply").first.click()
    seen = []  # (points drawn on the page, Python still running)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        drawn = page.evaluate("() => { const c = document.querySelector('.medlab-live .medlab-curve');"
                              " return c ? parseInt(c.dataset.points || '0', 10) : 0; }")
        state = read_state(page)
        seen.append((drawn, bool(state and state["running"])))
        if state and not state["running"] and state["outputs"]:
            break
        page.wait_for_timeout(100)
    during = sorted({d for d, running in seen if running and d > 0})
    assert len(during) >= 3, f"the plot did not grow while the stage ran: {seen[:60]}"
    final = wait_state(page, lambda s: not s["running"] and s["outputs"] == ["history", "image"], "the outputs")
    assert final["curve"] == 40
    # when the run ends, the outputs show the final curve (and the live plot gives way to it)
    page.wait_for_function("() => { const c = document.querySelector('.medlab-outputs .medlab-curve');"
                           " return c && parseInt(c.dataset.points) === 40; }")
    assert page.locator(".medlab-outputs polyline.medlab-curve-series").count() == 1

"""The explain widget in a real browser (JupyterLab in Debian Chromium, offline).

An ML engineer's first minutes: the shipped tumour classifier and a held-out phantom with a
tumour. Pressing Apply (Grad-CAM) must colour the left canvas where the map is high, pixel for
pixel what Python composes (``Viewer.snapshot_planes``), and leave it grey where the map is below
the threshold; the legend must show the map's range and its recorded sign and normalisation.
Moving the opacity slider must change those pixels to Python's new composition (without the
kernel sending the volume again). "Run sanity check" must show its verdict, the randomised map in
its own viewer, and the similarity numbers Python computed.

A second method (Integrated Gradients) then goes left and Grad-CAM moves to the right viewer,
on the same slice, its peak coloured there as Python composes it.

Screenshots (``MEDLAB_BROWSER_SCREENSHOTS=always``, into ``<basetemp>/browser-screenshots``):
the whole page after the run, plus ``explain_gradcam.png`` (the viewers after Apply),
``explain_top.png`` (the prediction and pickers above the viewers), ``explain_opacity.png``,
``explain_sanity.png``, ``explain_sanity_strip.png`` and
``explain_side_by_side.png`` in the test's temporary folder or ``MEDLAB_SCREENSHOT_DIR``.

DOM used: ``.medlab-apply``, ``.medlab-before canvas.medlab-canvas[data-plane=axial]``,
``.medlab-explain-legend``, ``.medlab-explain-opacity`` (slider readout),
``.medlab-explain-sanity`` (button), ``.medlab-explain-sanity-verdict``,
``.medlab-explain-sanity-table``, ``.medlab-explain-sanity-randomised canvas.medlab-canvas``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from browser_state import json_state

pytestmark = pytest.mark.browser

CANVAS = ".medlab-before canvas.medlab-canvas[data-plane=axial]"
RANDOMISED = ".medlab-explain-sanity-randomised canvas.medlab-canvas[data-plane=axial]"

CELLS = [
    """
import json
import numpy as np
import ipywidgets as W
import medlab
from medlab.data import classification_set
from medlab.explain import tumour_classifier
from medlab.widgets import ExplainWidget

model = tumour_classifier()
held_out = classification_set(n=2, seed=model.metrics["held_out_seed"])
image, _, tumour = next(held_out[i] for i in range(len(held_out)) if held_out[i][1] == 1)
w = ExplainWidget(image, model, tumour, height=300)
centre = image.index_to_physical(np.argwhere(tumour.array)[:, ::-1].mean(axis=0)).tolist()
w.before.position = centre          # where a reader would scroll to: the tumour
state = W.Label()
state.add_class("explain-state")
""",
    """
from medlab import render

def pixels(v):
    # where the shown slice's map is highest, and a pixel where it is not drawn, as Python composes them
    heat = v._layers.get("heat") if v.image is not None else None
    if heat is None:
        return {}
    rgb = v.snapshot_planes()["axial"]
    h = render.plane_array(heat, "axial", v._cursor[2])
    lab = render.plane_array(v._layers["labels"], "axial", v._cursor[2])
    thr = v._heat_info["threshold"]
    hot = np.argwhere(h >= h.max() - 1e-6)[0]
    cold = np.argwhere((h <= thr) & (lab == 0))
    cold = cold[len(cold) // 2]
    return {"hot": [int(hot[0]), int(hot[1])], "cold": [int(cold[0]), int(cold[1])],
            "hot_rgb": [int(c) for c in rgb[hot[0], hot[1]]], "cold_rgb": [int(c) for c in rgb[cold[0], cold[1]]],
            "heat_opacity": v._heat_info["opacity"], "threshold": thr}

def show(_=None):
    v = w.before
    out = {"maps": list(w.maps), "running": w.panel.running, "opacity": w.opacity.value,
           "status": w.trust_status.value, "sanity": None, "slice": v.slice_index, "volumes_sent": sent["volumes"],
           "left": w.left_picker.value, "right": w.right_picker.value, "after_slice": w.after.slice_index,
           **pixels(v)}
    if w.right_picker.value:
        out["after"] = pixels(w.after)
    r = w.sanity.get(w.left_picker.value)
    if r is not None:
        out["sanity"] = {"flagged": r.flagged, "spearman": [f"{s['spearman']:.4g}" for s in r.scores],
                         "steps": len(r.scores)}
    state.value = json.dumps(out)

sent = {"volumes": 0}
def count(_):
    sent["volumes"] += 1
w.before.observe(count, "_volumes")
w.panel.observe(show, "running")
w.panel.on_apply(lambda _: show())
w.opacity.observe(show, "value")
w.trust_status.observe(show, "value")
w.numbers_html.observe(show, "value")       # set last when the maps are shown (after any Apply)
show()
W.VBox([w, state])
""",
]


read_state, wait_state = json_state(".explain-state", poll_ms=100)


def pixel(page, selector: str, row: int, col: int) -> list[int]:
    return page.evaluate("([s, r, c]) => Array.from(document.querySelector(s).getContext('2d')"
                         ".getImageData(c, r, 1, 1).data)", [selector, row, col])


def wait_pixel(page, selector: str, row: int, col: int, rgb: list[int], what: str, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    seen = None
    while time.monotonic() < deadline:
        seen = pixel(page, selector, row, col)
        if all(abs(a - b) <= 1 for a, b in zip(seen[:3], rgb)):
            return seen
        page.wait_for_timeout(100)
    pytest.fail(f"{what}: canvas pixel ({row}, {col}) is {seen}, Python composed {rgb}", pytrace=False)


def _screenshot(page, selector: str, path: Path) -> None:
    """The notebook's viewport with ``selector`` at its top (the widget is taller than the page)."""
    page.evaluate("(s) => document.querySelector(s).scrollIntoView({block: 'start'})", selector)
    page.wait_for_timeout(300)
    folder = Path(os.environ.get("MEDLAB_SCREENSHOT_DIR") or path.parent)
    page.screenshot(path=str(folder / path.name))


def test_grad_cam_on_the_canvas_opacity_and_sanity_check(notebook, tmp_path):
    page = notebook.open(CELLS, timeout_ms=180_000)
    page.locator(CANVAS).wait_for(state="visible")
    notebook.wait_text(page, ".medlab-explain-hint", r"predicts tumour \(p = ")
    notebook.wait_text(page, ".medlab-explain-target", r"evidence\sfor\stumour,\sthe\smodel's\sonly\soutput")   # a select shows no-break spaces
    before = wait_state(page, lambda s: "slice" in s, "the first state")
    assert before["maps"] == []

    # Apply Grad-CAM: the map lands over the scan, coloured where it is high
    page.locator(".medlab-apply").first.click()
    state = wait_state(page, lambda s: s["maps"] == ["step1.saliency"] and not s["running"] and "hot" in s,
                       "the Grad-CAM map after Apply", 180)
    (hr, hc), (cr, cc) = state["hot"], state["cold"]
    hot_rgb = state["hot_rgb"]
    assert len(set(hot_rgb)) > 1, f"Python composed a grey pixel at the map's peak: {hot_rgb}"
    wait_pixel(page, CANVAS, hr, hc, hot_rgb, "the map's peak")
    cold = wait_pixel(page, CANVAS, cr, cc, state["cold_rgb"], "a pixel below the threshold")
    assert cold[0] == cold[1] == cold[2], "below the threshold the scan must stay grey"
    legend = notebook.wait_text(page, ".medlab-explain-legend", r"Grad-CAM")
    assert "positive (max(map, 0))" in legend and "map / max|map|" in legend and "% of the largest" in legend
    notebook.wait_text(page, ".medlab-before-caption", r"step1\.saliency")
    notebook.wait_text(page, ".medlab-explain-numbers", r"energy in mask")
    _screenshot(page, ".medlab-explain-left", tmp_path / "explain_gradcam.png")
    _screenshot(page, ".medlab-explain-hint", tmp_path / "explain_top.png")   # the prediction, pickers, scan

    # the opacity slider: the same pixel, composed again with the new opacity, voxels not resent
    sent = state["volumes_sent"]
    notebook.set_slider(page, ".medlab-explain-opacity", "0.9")
    state = wait_state(page, lambda s: abs(s["heat_opacity"] - 0.9) < 1e-9, "the new opacity")
    assert state["hot_rgb"] != hot_rgb
    wait_pixel(page, CANVAS, hr, hc, state["hot_rgb"], "the map's peak at opacity 0.9")
    assert state["volumes_sent"] == sent, "a new opacity must not send the volume again"
    _screenshot(page, ".medlab-explain-left", tmp_path / "explain_opacity.png")

    # the sanity check: verdict, randomised map, similarity numbers
    page.locator(".medlab-explain-sanity").first.click()
    state = wait_state(page, lambda s: s["sanity"] is not None, "the sanity check's result", 240)
    verdict = notebook.wait_text(page, ".medlab-explain-sanity-verdict", r"Passed|FLAGGED", 30_000)
    assert ("FLAGGED" in verdict) == state["sanity"]["flagged"]
    table = notebook.wait_text(page, ".medlab-explain-sanity-table", r"spearman")
    for value in state["sanity"]["spearman"]:
        assert value in table, f"Spearman {value} from Python is not in the table: {table[:300]}"
    page.locator(RANDOMISED).wait_for(state="visible")
    page.wait_for_function(f"() => {{ const c = document.querySelector('{RANDOMISED}'); "
                           "return c && c.width > 0 && c.getAttribute('data-drawn-index') !== null; }",
                           timeout=20_000)
    notebook.wait_text(page, ".medlab-explain-trust-status", r"done in")
    _screenshot(page, ".medlab-explain-sanity-verdict", tmp_path / "explain_sanity.png")
    _screenshot(page, ".medlab-explain-sanity-strip", tmp_path / "explain_sanity_strip.png")

    # a second method: Integrated Gradients on the left, Grad-CAM moves to the right, linked
    page.locator(".medlab-stage-picker select").first.select_option(label="Integrated Gradients")
    notebook.wait_text(page, ".medlab-stage-title", r"Integrated Gradients")
    page.locator(".medlab-apply").first.click()
    state = wait_state(page, lambda s: len(s["maps"]) == 2 and s["right"] == "step1.saliency" and s.get("after"),
                       "the second map beside the first", 180)
    assert state["left"] == "step2.saliency" and state["after_slice"] == state["slice"]
    after = state["after"]
    assert len(set(after["hot_rgb"])) > 1
    wait_pixel(page, ".medlab-after canvas.medlab-canvas[data-plane=axial]", *after["hot"], after["hot_rgb"],
               "Grad-CAM's peak in the right viewer")
    notebook.wait_text(page, ".medlab-after-caption", r"step1\.saliency")
    _screenshot(page, ".medlab-explain-left", tmp_path / "explain_side_by_side.png")
    assert page.locator(".medlab-status-error").count() == 0

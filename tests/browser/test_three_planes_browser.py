"""The three-plane layout with a label overlay renders in a real browser: three canvases of
the right proportions, a legend with the label names from Python, and a crosshair click in
one plane that moves the other two. Set MEDLAB_SCREENSHOT_DIR=folder to save the widget's
picture as viewer.png (the README's screenshot is made this way)."""

import base64
import json
import os
import time

import numpy as np
import pytest

pytestmark = pytest.mark.browser

CELLS = [
    """
import base64, json
import ipywidgets as W
import medlab
from medlab.widgets import Viewer

brain = medlab.data.brain_mri(seed=0, size=(96, 96, 40), spacing=(2.0, 2.0, 3.5))
viewer = Viewer(brain.flair, labels=brain.labels, layout="three", height=300)
viewer.set_labels(brain.labels, opacity=0.35, outline=True)
viewer.position = brain.info["tumour_centre_mm"]
state = W.Label()
state.add_class("three-state")
def update(_=None):
    planes = viewer.snapshot_planes()   # what the canvases must show, composed in Python
    state.value = json.dumps({"position": [round(v, 2) for v in viewer.position],
                              "cursor": list(viewer._cursor),
                              "names": sorted(l.name for l in brain.labels.labels.values()),
                              "expected": {p: [list(a.shape), base64.b64encode(a.tobytes()).decode()]
                                           for p, a in planes.items()}})
viewer.observe(update, names=["position", "_cursor"])
update()
W.VBox([viewer, state])
""",
]


def test_three_planes_with_labels(notebook):
    page = notebook.open(CELLS)
    notebook.wait_text(page, ".three-state", r'"names"')
    canvases = page.locator(".medlab-viewer canvas.medlab-canvas")
    assert canvases.count() == 3
    sizes = {}
    for plane in ("axial", "coronal", "sagittal"):
        c = page.locator(f".medlab-viewer canvas.medlab-canvas[data-plane={plane}]")
        c.wait_for(state="visible")
        box = c.bounding_box()
        sizes[plane] = (box["width"], box["height"])
    # physical proportions: axial is 192 x 192 mm (square), coronal 192 wide x 140 tall
    ax_w, ax_h = sizes["axial"]
    co_w, co_h = sizes["coronal"]
    assert abs(ax_w / ax_h - 1.0) < 0.05
    assert abs((co_w / co_h) - 192 / 140) < 0.08, sizes
    # no black band below a shorter plane, none beside the row: one height for all panes, and
    # the row fills the image area (unless the panes reached the height asked for, 300 px)
    assert max(h for _, h in sizes.values()) - min(h for _, h in sizes.values()) <= 1, sizes
    area = page.locator(".medlab-viewer .medlab-image-area").bounding_box()
    spare = area["width"] - sum(w for w, _ in sizes.values())
    assert spare <= 24 or abs(ax_h - 300) <= 1, (area, sizes)

    legend = page.locator(".medlab-viewer .medlab-legend").inner_text()
    for name in ("white matter", "oedema", "enhancing tumour"):
        assert name in legend

    expect_planes_match_python(page)
    before = page.locator(".three-state").inner_text()
    box = page.locator(".medlab-viewer canvas.medlab-canvas[data-plane=axial]").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.6)
    page.wait_for_function(
        "prev => document.querySelector('.three-state').textContent !== prev", arg=before, timeout=10_000)
    # the click moved the coronal and sagittal slices (cut in the browser from the whole volume)
    expect_planes_match_python(page)

    shots = os.environ.get("MEDLAB_SCREENSHOT_DIR")
    if shots:
        page.locator(".medlab-viewer").screenshot(path=os.path.join(shots, "viewer.png"))


def canvas_rgb(page, plane: str) -> np.ndarray:
    res = page.evaluate(
        """(plane) => { const c = document.querySelector(`.medlab-viewer canvas.medlab-canvas[data-plane=${plane}]`);
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            return { w: c.width, h: c.height, rgba: Array.from(d) }; }""", plane)
    return np.array(res["rgba"], np.uint8).reshape(res["h"], res["w"], 4)[..., :3]


def expect_planes_match_python(page, timeout_s: float = 10.0) -> None:
    """Every plane's canvas equals Python's composed picture (grey + label outlines), within 1."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = json.loads(page.locator(".three-state").inner_text())
        problems = []
        for plane, (shape, data) in state["expected"].items():
            want = np.frombuffer(base64.b64decode(data), np.uint8).reshape(shape)
            got = canvas_rgb(page, plane)
            if got.shape != want.shape:
                problems.append(f"{plane}: shape {got.shape} vs {want.shape}")
            elif np.abs(got.astype(int) - want.astype(int)).max() > 1:
                problems.append(f"{plane}: {int((np.abs(got.astype(int) - want.astype(int)) > 1).any(-1).sum())} pixels differ")
        if not problems:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"canvas != Python at cursor {state['cursor']}: {problems}", pytrace=False)
        page.wait_for_timeout(50)

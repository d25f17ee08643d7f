"""The three-plane layout with a label overlay renders in a real browser: three canvases of
the right proportions, a legend with the label names from Python, and a crosshair click in
one plane that moves the other two. Set MEDLAB_WRITE_SCREENSHOT=path to save the widget's
picture (the README's screenshot is made this way)."""

import os

import pytest

pytestmark = pytest.mark.browser

CELLS = [
    """
import json
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
    state.value = json.dumps({"position": [round(v, 2) for v in viewer.position],
                              "names": sorted(l.name for l in brain.labels.labels.values())})
viewer.observe(update, names=["position"])
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

    legend = page.locator(".medlab-viewer .medlab-legend").inner_text()
    for name in ("white matter", "oedema", "enhancing tumour"):
        assert name in legend

    before = page.locator(".three-state").inner_text()
    box = page.locator(".medlab-viewer canvas.medlab-canvas[data-plane=axial]").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.6)
    page.wait_for_function(
        "prev => document.querySelector('.three-state').textContent !== prev", arg=before, timeout=10_000)

    out = os.environ.get("MEDLAB_WRITE_SCREENSHOT")
    if out:
        page.locator(".medlab-viewer").screenshot(path=out)

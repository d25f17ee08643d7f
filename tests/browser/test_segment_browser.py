"""The segment widget in a real browser (JupyterLab in Debian Chromium, offline).

A student's first minute: region growing is selected and seed picking is armed, so the first
click in the left image is a seed. The test clicks inside the phantom's tumour; Python must
receive the seed at the voxel clicked, and the preview canvas (right) must show the region in
colour on exactly the pixels Python previewed. Typing a larger tolerance must grow the coloured
area to Python's new count. Apply fills the scores table; the "3D view" button opens niivue
with the tumour surface, and its canvas is not blank. Choosing Otsu's method draws its
threshold as a marker on the histogram.

Screenshots (``MEDLAB_BROWSER_SCREENSHOTS=always``, into ``<basetemp>/browser-screenshots``):
the whole page after the run, plus ``segment_preview.png`` (the widget), ``segment_3d.png`` (the
3D canvas), ``segment_scores.png`` and ``segment_histogram.png`` (the page at the scores table and
at the Otsu histogram) in the test's temporary folder or ``MEDLAB_SCREENSHOT_DIR``.

DOM used: ``.medlab-before canvas.medlab-overlay[data-plane=axial]`` (clicks),
``.medlab-after canvas.medlab-canvas[data-plane=axial]`` (the preview's pixels),
``.medlab-param-tolerance`` (slider readout), ``.medlab-apply``, ``.medlab-segment-scores``,
``.medlab-segment-3d`` (button), ``.medlab-view3d canvas.medlab-view3d-canvas``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from browser_state import json_state

pytestmark = pytest.mark.browser

OVERLAY = ".medlab-before canvas.medlab-overlay[data-plane=axial]"
CANVAS = ".medlab-before canvas.medlab-canvas[data-plane=axial]"
PREVIEW = ".medlab-after canvas.medlab-canvas[data-plane=axial]"
NIIVUE = ".medlab-segment-3d-box canvas.medlab-view3d-canvas"

CELLS = [
    """
import json
import numpy as np
import ipywidgets as W
from scipy import ndimage
import medlab
from medlab.widgets import SegmentWidget

brain = medlab.data.brain_mri(size=(64, 64, 32), seed=0)
depth = ndimage.distance_transform_edt(brain.labels.array == 7, sampling=brain.flair.spacing[::-1])
seed = brain.flair.index_to_physical(np.unravel_index(depth.argmax(), depth.shape)[::-1]).tolist()
tumour = brain.labels.with_array(brain.mask("oedema", "enhancing tumour", "necrotic core"), kind="label",
                                 labels={1: "tumour"})
w = SegmentWidget(brain.flair, truth=tumour, height=300, debounce=0.05)
w.before.position = seed
w.set(tolerance=0.1)
state = W.Label()
state.add_class("seg-state")
""",
    """
def show(_=None):
    p, v = w.panel, w.before
    to_px = np.asarray(v._geometry["planes"]["axial"]["from_mm"])
    col, row = (to_px @ [*seed, 1])[:2]
    prev = p.preview
    state.value = json.dumps({
        "stage": p.spec.name, "mode": v.point_mode, "active": v.active_set, "running": p.running,
        "seeds": [list(q) for q in p.params.get("seeds", ())], "tolerance": p.params.get("tolerance"),
        "preview": int(np.count_nonzero(prev.array)) if prev is not None else -1,
        "seed_px": [int(round(row)), int(round(col))], "slice": v.slice_index,
        "to_mm": v._geometry["planes"]["axial"]["to_mm"],
        "scores": len(w.scores), "dice": w.scores[0]["dice"] if w.scores else None,
        "view3d": w._view3d is not None})

w.before.observe(show, names=["point_sets", "active_set", "point_mode", "slice_index"])
w.panel.observe(show, "running")
w.panel.on_preview(lambda _: show())
w.panel.on_apply(lambda _: show())
w.view3d_button.on_click(lambda _: show())
w.picker.observe(show, "value")
show()
W.VBox([w, state])
""",
]


read_state, wait_state = json_state(".seg-state", timeout_s=30.0)


def click_pixel(page, row: int, col: int) -> None:
    page.locator(OVERLAY).scroll_into_view_if_needed()
    box = page.locator(OVERLAY).bounding_box()
    rows, cols = page.evaluate("(s) => { const c = document.querySelector(s); return [c.height, c.width]; }", CANVAS)
    page.mouse.click(box["x"] + (col + 0.5) * box["width"] / cols, box["y"] + (row + 0.5) * box["height"] / rows)


def coloured_pixels(page) -> dict:
    """Pixels of the preview canvas that are not grey (the label overlay), and one of them."""
    return page.evaluate(
        """(sel) => { const c = document.querySelector(sel);
            if (!c || !c.width) return {count: -1};
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0;
            for (let i = 0; i < d.length; i += 4)
                if (Math.abs(d[i] - d[i + 1]) > 2 || Math.abs(d[i + 1] - d[i + 2]) > 2) n++;
            return {count: n, width: c.width, height: c.height}; }""",
        PREVIEW,
    )


def pixel(page, selector: str, row: int, col: int) -> list[int]:
    return page.evaluate("([s, r, c]) => Array.from(document.querySelector(s).getContext('2d')"
                         ".getImageData(c, r, 1, 1).data)", [selector, row, col])


def wait_coloured(page, expected: int, timeout_s: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout_s
    seen = None
    while time.monotonic() < deadline:
        seen = coloured_pixels(page)
        if seen["count"] == expected:
            return seen
        page.wait_for_timeout(100)
    pytest.fail(f"the preview canvas shows {seen} coloured pixels; Python previewed {expected} voxels", pytrace=False)


def _shots(tmp_path: Path) -> Path:
    return Path(os.environ.get("MEDLAB_SCREENSHOT_DIR") or tmp_path)


def test_click_a_seed_watch_the_region_grow_then_open_the_3d_view(notebook, tmp_path):
    page = notebook.open(CELLS)
    page.locator(OVERLAY).wait_for(state="visible")
    state = wait_state(page, lambda s: s["stage"] == "connected_threshold", "the region-growing stage")
    # seed picking is armed from the start: the first click is a seed
    assert state["mode"] == "edit" and state["active"] == "seeds" and state["seeds"] == []
    notebook.wait_text(page, ".medlab-preview-note", r"at least 1 seed")
    assert page.locator(".medlab-status-error").count() == 0, "an empty seed list must not read as an error"
    notebook.wait_text(page, ".medlab-segment-hint", r"Click inside the structure")

    # click the seed: Python gets it at the voxel centre clicked
    row, col = state["seed_px"]
    click_pixel(page, row, col)
    state = wait_state(page, lambda s: len(s["seeds"]) == 1 and s["preview"] > 0, "a seed and its preview")
    m, v = state["to_mm"], [col, row, state["slice"], 1]
    expected_mm = [sum(m[r][k] * v[k] for k in range(4)) for r in range(3)]
    assert state["seeds"][0] == pytest.approx(expected_mm, abs=1e-3)
    # the preview canvas shows the region in colour on exactly the voxels Python previewed
    small = state["preview"]
    seen = wait_coloured(page, small)
    r, g, b, _ = pixel(page, PREVIEW, row, col)
    assert abs(r - g) > 2 or abs(g - b) > 2, "the seed's own pixel is not coloured"
    page.locator(".medlab-segment").first.screenshot(path=str(_shots(tmp_path) / "segment_preview.png"))

    # a larger tolerance: a larger region, again pixel for pixel
    notebook.set_slider(page, ".medlab-param-tolerance", "0.3")    # a log slider: it snaps near 0.3
    state = wait_state(page, lambda s: abs((s["tolerance"] or 0) - 0.3) < 0.03 and s["preview"] > small,
                       "the larger tolerance's preview")
    seen = wait_coloured(page, state["preview"])
    assert seen["count"] > small

    # Apply, then scores and the 3D view
    page.locator(".medlab-apply").first.click()
    state = wait_state(page, lambda s: s["scores"] == 1 and not s["running"], "the scores after Apply", 60)
    notebook.wait_text(page, ".medlab-segment-scores", r"Dice")
    assert state["dice"] > 0.5
    page.locator(".medlab-segment-3d").first.click()
    wait_state(page, lambda s: s["view3d"], "the 3D view")
    page.wait_for_function(
        f"""() => {{ const c = document.querySelector('{NIIVUE}'); const nv = c && c.medlabNiivue;
                  return nv && nv.volumes.length === 1 && nv.meshes.length === 1 && nv.volumes[0].img; }}""",
        timeout=90_000)
    page.locator(NIIVUE).scroll_into_view_if_needed()
    from io import BytesIO

    import numpy as np
    from PIL import Image as PILImage

    deadline = time.monotonic() + 30   # the first software-GL frame can lag the loaded volume under load
    while True:
        shot = page.locator(NIIVUE).screenshot(path=str(_shots(tmp_path) / "segment_3d.png"))
        picture = np.asarray(PILImage.open(BytesIO(shot)).convert("RGB"))
        if picture.std() > 10 or time.monotonic() > deadline:
            break
        page.wait_for_timeout(250)
    assert picture.std() > 10, "the 3D canvas is blank"
    # the tumour surface's colour (the region's label colour) is drawn somewhere
    colour = page.evaluate(f"() => Array.from(document.querySelector('{NIIVUE}').medlabNiivue.meshes[0].rgba255)")
    assert colour[:3] == [230, 159, 0]
    page.locator(".medlab-segment-scores").scroll_into_view_if_needed()
    page.screenshot(path=str(_shots(tmp_path) / "segment_scores.png"))

    # a threshold method: the histogram marks its threshold (drawn by the browser)
    page.locator(".medlab-stage-picker select").select_option(label="Otsu threshold")
    wait_state(page, lambda s: s["stage"] == "otsu_threshold", "the Otsu stage")
    page.wait_for_function("() => { const c = document.querySelector('.medlab-segment-histogram .medlab-curve');"
                           " return c && c.dataset.markers === '1' && c.querySelector('line.medlab-curve-marker'); }",
                           timeout=20_000)
    notebook.wait_text(page, ".medlab-segment-histogram", r"threshold [0-9.]+ \(preview")
    page.locator(".medlab-segment-histogram").scroll_into_view_if_needed()
    page.screenshot(path=str(_shots(tmp_path) / "segment_histogram.png"))

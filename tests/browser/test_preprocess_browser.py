"""The preprocess widget in a real browser: JupyterLab in Debian Chromium, driven by Playwright.

One notebook shows ``PreprocessWidget`` on a noisy brain-MRI phantom with the non-local-means
stage. The test drags the strength slider and checks that Python received the new value and that
the preview canvas changed to exactly what Python computed for it; clicks Apply and checks that
the progress bar was shown with intermediate values while the stage ran, and that the history
holds the step; types a file name, clicks "Export recipe", and checks the JSON file, the Python
code shown in the widget, and (in the kernel) that the recipe replays bit-identically.

What Python knows reaches the test through kernel-written Labels: ``.bt-state`` (JSON: slider
value seen by the panel, previews shown, progress values set, history, replay result) and
``.bt-expected`` (hidden; the preview's grey levels as ``medlab.render.window_level`` gives them
for the preview viewer's window/level).

DOM used (documented in ``widgets/panel.py`` and ``widgets/preprocess.py``):
``.medlab-param-h .noUi-handle`` (the ipywidgets slider), ``.medlab-after
canvas.medlab-canvas[data-plane=axial]`` (preview viewer, one canvas pixel per voxel),
``.medlab-apply``, ``.medlab-progress .progress-bar`` (ipywidgets FloatProgress),
``.medlab-panel .medlab-status.medlab-status-ok``, ``.medlab-history``, ``.medlab-export-path input``, ``.medlab-export``,
``.medlab-recipe-code``.
"""

from __future__ import annotations

import base64
import json
import time

import numpy as np
import pytest

pytestmark = pytest.mark.browser

AFTER_CANVAS = ".medlab-after canvas.medlab-canvas[data-plane=axial]"
RECIPE = "bt_recipe.json"

CELLS = [
    """
import base64, json
from pathlib import Path
import numpy as np
import ipywidgets as W
import medlab
from medlab import render
from medlab.recipe import Recipe
from medlab.widgets.preprocess import PreprocessWidget

mri = medlab.data.brain_mri(size=(96, 96, 32), noise=0.05, seed=0).t1
w = PreprocessWidget(mri, stage='nlm_denoise', height=240, debounce=0.05)
state = W.Label()
state.add_class('bt-state')
expected = W.Label(layout=W.Layout(display='none'))
expected.add_class('bt-expected')
""",
    """
seen = {'previews': 0, 'progress': [], 'replay': None}

def show(_=None):
    p = w.panel
    state.value = json.dumps({'h': p.params['h'], 'previews': seen['previews'],
                              'progress': seen['progress'], 'running': p.running,
                              'history': [name for name, _, _ in w.history],
                              'replay': seen['replay']})

def on_preview(panel):
    seen['previews'] += 1
    a = w.after
    grey = render.window_level(a.current_slice().array, a.window, a.level)
    expected.value = json.dumps({'n': seen['previews'], 'h': panel.params['h'], 'shape': list(grey.shape),
                                 'grey': base64.b64encode(np.ascontiguousarray(grey, np.uint8)).decode()})
    show()

def on_progress(change):
    seen['progress'].append(round(change['new'], 4))
    show()

def check_replay(_):
    # runs after the widget's own Export handler: replay the written file on the original
    path = Path(w.export_path.value)
    if path.exists():
        out = Recipe.load(path).run(mri)
        seen['replay'] = bool(np.array_equal(out.array, w.image.array) and out.same_grid(w.image))
    show()

w.panel.on_preview(on_preview)
w.panel.progress.observe(on_progress, 'value')
w.panel.observe(show, 'running')
w.panel.controls['h'].widget.observe(show, 'value')
w.export_button.on_click(check_replay)
w.panel.request_preview()
show()
W.VBox([w, state, expected])
""",
]


def read_json(page, selector: str):
    text = page.locator(selector).first.text_content()
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:
        return None


def wait_json(page, selector: str, predicate, what: str, timeout_s: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout_s
    value = None
    while time.monotonic() < deadline:
        value = read_json(page, selector)
        if value and predicate(value):
            return value
        page.wait_for_timeout(50)
    pytest.fail(f"never saw {what}; last {selector}: {str(value)[:600]}", pytrace=False)


def canvas_grey(page, selector: str) -> np.ndarray | None:
    res = page.evaluate(
        """(sel) => { const c = document.querySelector(sel);
            if (!c || !c.width) return null;
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            const grey = new Array(c.width * c.height);
            for (let i = 0; i < grey.length; i++) grey[i] = d[4 * i];
            return { w: c.width, h: c.height, grey }; }""",
        selector,
    )
    return None if res is None else np.array(res["grey"], np.uint8).reshape(res["h"], res["w"])


def preview_matches_python(page, h: float, timeout_s: float = 20.0) -> np.ndarray:
    """Wait until the preview canvas equals Python's windowed preview made with strength ``h``."""
    deadline = time.monotonic() + timeout_s
    while True:
        exp = read_json(page, ".bt-expected")
        got = canvas_grey(page, AFTER_CANVAS)
        detail = "no preview yet"
        if exp and got is not None:
            want = np.frombuffer(base64.b64decode(exp["grey"]), np.uint8).reshape(exp["shape"])
            if got.shape != want.shape:
                detail = f"canvas {got.shape} vs Python {want.shape}"
            else:
                bad = int((np.abs(got.astype(int) - want.astype(int)) > 1).sum())
                if exp["h"] == h and bad == 0:
                    return got
                detail = f"preview for h={exp['h']}, {bad} pixels differ by > 1"
        if time.monotonic() > deadline:
            pytest.fail(f"preview canvas never matched Python's preview for h={h}: {detail}",
                        pytrace=False)
        page.wait_for_timeout(50)


def test_preprocess_slider_preview_apply_export(notebook):
    page = notebook.open(CELLS)
    recipe_file = notebook.server.root / RECIPE
    assert not recipe_file.exists()

    state = wait_json(page, ".bt-state", lambda s: s["previews"] >= 1, "a first preview")
    h0 = state["h"]
    first = preview_matches_python(page, h0)
    assert first.std() > 5, "the preview should show anatomy"

    # --- move the strength slider with the mouse: Python gets a new value, the preview follows
    handle = page.locator(".medlab-param-h .noUi-handle").first
    handle.scroll_into_view_if_needed()
    box = handle.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 15, y, steps=3)
    page.mouse.move(x + 30, y, steps=3)
    page.mouse.up()
    state = wait_json(page, ".bt-state", lambda s: s["h"] > h0 + 0.2, "a stronger h after the drag")
    assert state["h"] < 3.0, "a 30 px drag should land inside the range, not at its end"
    # the slider's final value, once Python holds it: drag updates can still be on their way (a fixed
    # 300 ms wait could read an intermediate h, whose preview the last update then replaced)
    final = float(page.locator(".medlab-param-h .widget-readout").first.text_content())
    h1 = wait_json(page, ".bt-state", lambda s: abs(s["h"] - final) < 1e-6, f"h = {final} in Python")["h"]
    second = preview_matches_python(page, h1)
    changed = int((second != first).sum())
    assert changed > 0.05 * second.size, f"a stronger NLM changed only {changed} preview pixels"
    # stronger smoothing: less pixel-to-pixel variation in the preview
    assert np.abs(np.diff(second.astype(float), axis=1)).mean() < np.abs(np.diff(first.astype(float), axis=1)).mean()

    # --- Apply: the bar is shown with intermediate values while the stage runs
    page.evaluate(
        """() => { window.__btProgress = [];
            const box = document.querySelector('.medlab-progress');
            const note = () => { const bar = box.querySelector('.progress-bar');
                window.__btProgress.push({ visible: getComputedStyle(box).visibility === 'visible',
                                           width: bar ? parseFloat(bar.style.width) : null }); };
            new MutationObserver(note).observe(box, { attributes: true, subtree: true }); }""")
    page.locator(".medlab-apply").click()
    state = wait_json(page, ".bt-state",
                      lambda s: s["history"] == ["nlm_denoise"] and not s["running"],
                      "the applied step in the history", timeout_s=60)
    # the panel's status line (the viewers have a `.medlab-status` too: select the panel's state class)
    notebook.wait_text(page, ".medlab-panel .medlab-status.medlab-status-ok", r"applied Non-local means")
    assert any(0 < v < 1 for v in state["progress"]), f"Python set no intermediate progress: {state['progress']}"
    assert state["progress"][-1] == 1.0
    shown = page.evaluate("() => window.__btProgress")
    widths = [r["width"] for r in shown if r["visible"] and r["width"] is not None]
    assert any(0 < wd < 100 for wd in widths), f"the browser never showed a partial bar: {shown[:20]}"
    assert max(widths) == 100, f"the bar never reached 100%: {widths}"
    notebook.wait_text(page, ".medlab-history", r"Non-local means")

    # --- Export: JSON file, Python code in the widget, bit-identical replay in the kernel
    page.locator(".medlab-export-path input").fill(RECIPE)
    page.locator(".medlab-export").click()
    state = wait_json(page, ".bt-state", lambda s: s["replay"] is not None, "the replay check")
    code = notebook.wait_text(page, ".medlab-recipe-code", r"nlm_denoise\(")
    assert f"h={h1}" in code.replace(" ", ""), code
    assert recipe_file.exists(), f"{recipe_file} was not written"
    steps = json.loads(recipe_file.read_text())["steps"]
    assert len(steps) == 1
    step = steps[0]
    name, params = (step["stage"], step["params"]) if isinstance(step, dict) else step
    assert name == "nlm_denoise" and params["h"] == h1
    assert state["replay"] is True, "the exported recipe did not replay bit-identically"


"""The viewer's reading-workstation look in JupyterLab's light and dark themes, on a 1000 px
wide page: a three-plane viewer with labels, a point set and a readout.

For each theme the test checks, from the browser's computed styles,

* that every piece of text in the toolbar, the readout, the legend, the point-set chips, the
  status line and the text drawn over the image has a WCAG contrast ratio of at least 4.5
  against the background it is drawn on (backgrounds composited up the DOM tree; text over the
  picture against its backing over a white picture, the worst case), and
* that the toolbar stays on one line: every control on the same row, none clipped, none taller
  than one line, and the toolbar inside the viewer.

It saves a picture of the viewer and of the page per theme into ``$MEDLAB_SCREENSHOT_DIR`` (or
the test's temporary folder): look at them when changing ``widgets/viewer.css``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CELLS = [
    """
import medlab
from medlab.widgets import Viewer

brain = medlab.data.brain_mri(seed=0, size=(96, 96, 40), spacing=(2.0, 2.0, 3.5))
viewer = Viewer(brain.flair, layout="three", height=260)
viewer.set_labels(brain.labels, opacity=0.35, outline=True)
viewer.position = brain.info["tumour_centre_mm"]
viewer.add_point_set("seeds", role="seeds", points=[viewer.position], active=True)
viewer
""",
]

# WCAG 2 relative luminance and contrast, with backgrounds composited up the tree
CONTRAST_JS = r"""() => {
  const parse = (c) => {
    const v = c.match(/[\d.]+/g).map(Number);
    return [v[0], v[1], v[2], v.length > 3 ? v[3] : 1];
  };
  const lum = (rgb) => {
    const f = (x) => { x /= 255; return x <= 0.03928 ? x / 12.92 : Math.pow((x + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(rgb[0]) + 0.7152 * f(rgb[1]) + 0.0722 * f(rgb[2]);
  };
  const over = (top, under) => under.map((v, i) => v * (1 - top[3]) + top[i] * top[3]);
  // text drawn over the picture must read over any picture: its backing is composited over
  // white (the worst case) instead of the black behind the canvas
  const background = (el) => {
    const layers = [];
    for (let e = el; e; e = e.parentElement) {
      if (e.classList.contains('medlab-stack')) break;
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c[3] > 0) { layers.push(c); if (c[3] >= 1) break; }
    }
    let out = [255, 255, 255];
    for (const c of layers.reverse()) out = over(c, out);
    return out;
  };
  const root = document.querySelector('.medlab-viewer');
  const selectors = ['.medlab-toolbar select', '.medlab-toolbar input', '.medlab-toolbar button',
    '.medlab-field', '.medlab-readout', '.medlab-legend-item', '.medlab-pointset', '.medlab-status',
    '.medlab-pane-title', '.medlab-pane-info', '.medlab-letter'];
  const out = [];
  for (const sel of selectors) {
    for (const el of root.querySelectorAll(sel)) {
      const text = (el.tagName === 'SELECT' ? el.selectedOptions[0]?.textContent
        : el.tagName === 'INPUT' ? el.value : el.textContent || '').trim();
      if (!text) continue;
      const bg = background(el);
      const fg = over(parse(getComputedStyle(el).color), bg);
      const [a, b] = [lum(fg), lum(bg)].sort((x, y) => y - x);
      out.push({ sel, text: text.slice(0, 30), ratio: (a + 0.05) / (b + 0.05),
        fg: fg.map(Math.round), bg: bg.map(Math.round) });
    }
  }
  return out;
}"""

TOOLBAR_JS = r"""() => {
  const root = document.querySelector('.medlab-viewer');
  const bar = root.querySelector('.medlab-toolbar');
  const kids = [...bar.children].filter((k) => k.offsetParent !== null);
  const boxes = kids.map((k) => k.getBoundingClientRect());
  const controls = [...bar.querySelectorAll('select, input, button')];
  return {
    rows: new Set(boxes.map((b) => Math.round(b.top))).size,
    clipped: controls.filter((c) => c.scrollWidth > c.clientWidth + 1).map((c) => c.className),
    tall: controls.filter((c) => c.getBoundingClientRect().height > 26).map((c) => c.className),
    inside: Math.max(...boxes.map((b) => b.right)) <= root.getBoundingClientRect().right + 0.5,
    barWidth: Math.round(bar.getBoundingClientRect().width),
    widths: Object.fromEntries(kids.map((k, n) => [k.className || k.tagName, Math.round(boxes[n].width)])),
  };
}"""


@pytest.mark.parametrize("theme", ["JupyterLab Light", "JupyterLab Dark"])
def test_viewer_is_readable_in_light_and_dark_themes(notebook, lab_theme, theme, tmp_path):
    lab_theme(theme)
    page = notebook.open(CELLS)
    page.set_viewport_size({"width": 1000, "height": 900})
    light = page.evaluate("() => document.body.dataset.jpThemeLight")
    assert light == ("true" if theme == "JupyterLab Light" else "false"), f"{theme} is not applied"
    page.locator(".medlab-legend-item").first.wait_for()
    # a readout under the mouse, over the axial picture
    overlay = page.locator(".medlab-viewer canvas.medlab-overlay[data-plane=axial]")
    overlay.scroll_into_view_if_needed()
    box = overlay.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.5)
    notebook.wait_text(page, ".medlab-readout", r"voxel \(")

    folder = Path(os.environ.get("MEDLAB_SCREENSHOT_DIR") or tmp_path)
    name = theme.split()[-1].lower()
    page.locator(".medlab-viewer").screenshot(path=str(folder / f"viewer-{name}.png"))
    page.screenshot(path=str(folder / f"page-{name}.png"))
    print(f"screenshots: {folder}/viewer-{name}.png, page-{name}.png")

    texts = page.evaluate(CONTRAST_JS)
    kinds = {t["sel"] for t in texts}
    for sel in (".medlab-toolbar select", ".medlab-toolbar input", ".medlab-toolbar button", ".medlab-readout",
                ".medlab-legend-item", ".medlab-status", ".medlab-pointset"):
        assert sel in kinds, f"no text found for {sel}"
    low = [t for t in texts if t["ratio"] < 4.5]
    assert not low, f"text below 4.5:1 contrast in {theme}: {low}"

    bar = page.evaluate(TOOLBAR_JS)
    assert bar["rows"] == 1 and not bar["clipped"] and not bar["tall"] and bar["inside"], bar

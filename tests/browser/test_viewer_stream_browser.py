"""Large volumes in a real browser: the streamed path, forced on a small CT by setting
``VOLUME_CACHE_BYTES = 0`` in the test kernel (and ``SLAB_BYTES`` to four slices, so the
96×96×40 CT travels as 10 slabs).

* Whole volume held: once every slab is in (``data-streamed="10/10"``), slice steps in every
  plane are drawn from the browser's copy **while the kernel is busy** (a loop run from the
  page, waiting for a file the test writes once the steps are checked), and every canvas equals Python's picture (``Viewer.snapshot_planes``, i.e.
  ``medlab.render.window_level`` of ``medlab.render.extract_slice`` composed with the labels).
* Ring of slabs (``BROWSER_CACHE_BYTES`` = 3 slabs): the browser never holds more than 3 slabs;
  a jump far from the cursor is drawn from the slice the kernel sends, after which the 3 slabs
  nearest the new cursor arrive and the next steps no longer wait for the kernel.

DOM used (documented in ``widgets/viewer.py``): ``.medlab-viewer[data-streamed]`` ("held/total"
slabs), ``[data-cache-bytes]``, ``canvas.medlab-canvas[data-plane=P]`` with ``data-drawn-index``
and ``data-drawn-from`` ("browser" or "kernel").
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.browser

SLICE_BYTES = 96 * 96 * 2

SETUP = """
import base64, json
import ipywidgets as W
import medlab
import medlab.widgets.viewer as mv
from medlab.widgets import Viewer

mv.VOLUME_CACHE_BYTES = 0            # a "large" volume: streamed, not sent whole
mv.SLAB_BYTES = 4 * 96 * 96 * 2      # four slices per slab: 10 slabs
mv.BROWSER_CACHE_BYTES = {cache}
phantom = medlab.data.chest_ct(size=(96, 96, 40), seed=0)
viewer = Viewer(phantom.ct, layout={layout!r}, height=300)
state = W.Label()
state.add_class("st-state")

def update(_=None):
    pictures = viewer.snapshot_planes()   # what each canvas must show, computed in Python
    state.value = json.dumps({{
        "cursor": list(viewer._cursor), "slice": viewer.slice_index,
        "index": {{p: getattr(viewer, "_" + p)["index"] for p in pictures}},
        "expected": {{p: [list(a.shape), base64.b64encode(a.tobytes()).decode()] for p, a in pictures.items()}}}})

viewer.observe(update, names=["_cursor", "window", "level", "_labels_info"])
update()
W.VBox([viewer, state])
"""

BUSY_JS = """(flag) => {
    const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
    window.__busy = true;
    const code = `import pathlib, time\\nend = time.monotonic() + 120\\n`
        + `while not pathlib.Path(${JSON.stringify(flag)}).exists() and time.monotonic() < end:\\n    time.sleep(0.05)`;
    kernel.requestExecute({ code }).done.then(() => { window.__busy = false; });
}"""


def keep_kernel_busy(page, flag: Path) -> None:
    """The page's kernel busy until :func:`release_kernel` (at most 2 min): a fixed ``time.sleep``
    ran out on a loaded machine before the page had taken and checked its steps."""
    flag.unlink(missing_ok=True)
    page.evaluate(BUSY_JS, str(flag))


def release_kernel(page, flag: Path) -> None:
    flag.touch()
    page.wait_for_function("() => !window.__busy", timeout=15_000)


def held_slabs(page) -> list[int]:
    """The slabs Python has sent to the browser (asked from the kernel)."""
    out = page.evaluate("""async () => {
        const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
        const future = kernel.requestExecute({ code: 'print(sorted(viewer._plan.slot_of))', silent: false });
        let text = '';
        future.onIOPub = (m) => { if (m.header.msg_type === 'stream') text += m.content.text; };
        await future.done;
        return text; }""")
    return json.loads(out)


def cells(cache: int, layout: str) -> list[str]:
    return [SETUP.format(cache=cache, layout=layout)]


def state(page) -> dict:
    return json.loads(page.locator(".st-state").inner_text())


def streamed(page) -> str:
    return page.locator(".medlab-viewer").get_attribute("data-streamed") or ""


def wait_streamed(page, want: str | None = None, timeout_ms: int = 30_000) -> None:
    """Wait until ``data-streamed`` reads ``want`` ("held/total"), or (None) all slabs are held."""
    page.wait_for_function(
        """(w) => { const s = document.querySelector('.medlab-viewer').dataset.streamed || '';
                    const [held, total] = s.split('/');
                    return w ? s === w : !!s && held === total; }""", arg=want, timeout=timeout_ms)


def canvas(plane: str) -> str:
    return f".medlab-viewer canvas.medlab-canvas[data-plane={plane}]"


def drawn(page, plane: str) -> tuple[int, str]:
    d = page.evaluate("(s) => { const c = document.querySelector(s); return [c.dataset.drawnIndex, c.dataset.drawnFrom]; }",
                      canvas(plane))
    return int(d[0]), d[1]


def canvas_rgb(page, plane: str) -> np.ndarray:
    res = page.evaluate(
        """(sel) => { const c = document.querySelector(sel);
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            return { w: c.width, h: c.height, rgba: Array.from(d) }; }""", canvas(plane))
    return np.array(res["rgba"], np.uint8).reshape(res["h"], res["w"], 4)[..., :3]


def expect_canvases_match_python(page, timeout_s: float = 15.0) -> dict:
    """Every visible canvas shows the slice Python is at, equal to Python's picture (within 1)."""
    deadline = time.monotonic() + timeout_s
    while True:
        st = state(page)
        problems = []
        for plane, (shape, data) in st["expected"].items():
            want = np.frombuffer(base64.b64decode(data), np.uint8).reshape(shape)
            index, _ = drawn(page, plane)
            got = canvas_rgb(page, plane)
            if index != st["index"][plane]:
                problems.append(f"{plane}: canvas at slice {index}, Python at {st['index'][plane]}")
            elif got.shape != want.shape:
                problems.append(f"{plane}: shape {got.shape} vs {want.shape}")
            elif np.abs(got.astype(int) - want.astype(int)).max() > 1:
                problems.append(f"{plane}: {int((np.abs(got.astype(int) - want.astype(int)) > 1).any(-1).sum())} pixels differ")
        if not problems:
            return st
        if time.monotonic() > deadline:
            pytest.fail(f"canvas != Python at cursor {st['cursor']}: {problems}", pytrace=False)
        page.wait_for_timeout(50)


def record_draws(page) -> None:
    """From now on, keep every picture drawn: plane, slice and where its voxels came from."""
    page.evaluate("""() => { window.__draws = [];
        document.addEventListener('medlab-drawn', (e) => window.__draws.push(
            { plane: e.target.dataset.plane, index: e.detail.index, local: e.detail.local,
              how: e.detail.phases ? e.detail.phases.how : null }), true); }""")


def wait_drawn(page, plane: str, index: int, source: str, timeout_ms: int) -> None:
    """Wait until ``plane`` shows slice ``index``; its first picture came from ``source``."""
    page.wait_for_function(
        """([plane, index]) => window.__draws.some((d) => d.plane === plane && d.index === index)""",
        arg=[plane, index], timeout=timeout_ms)
    first = page.evaluate("""([plane, index]) => window.__draws.find((d) => d.plane === plane && d.index === index)""",
                          [plane, index])
    assert first["local"] == (source == "browser"), f"{plane} slice {index} was first drawn from the " + \
        ("browser" if first["local"] else "kernel") + f", expected the {source}"


def test_streamed_volume_steps_without_the_kernel(notebook, tmp_path):
    page = notebook.open(cells(512 * 2**20, "three"))
    record_draws(page)
    wait_streamed(page, "10/10")
    st = expect_canvases_match_python(page)
    cache = int(page.locator(".medlab-viewer").get_attribute("data-cache-bytes"))
    assert cache == 40 * SLICE_BYTES, "the browser holds the whole volume, once"
    k = st["index"]["axial"]

    # the kernel is busy: steps in every plane are drawn from the browser's copy meanwhile
    flag = tmp_path / "release"
    keep_kernel_busy(page, flag)
    page.locator(".medlab-viewer canvas.medlab-overlay[data-plane=axial]").hover()
    page.locator(".medlab-viewer").focus()
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    wait_drawn(page, "axial", k - 2, "browser", 15_000)
    sag = page.locator(".medlab-viewer canvas.medlab-overlay[data-plane=sagittal]")
    sag.hover()
    i_before = drawn(page, "sagittal")[0]
    page.mouse.wheel(0, -120)  # one slice up in the sagittal plane
    wait_drawn(page, "sagittal", i_before + 1, "browser", 15_000)
    cor = page.locator(".medlab-viewer canvas.medlab-overlay[data-plane=coronal]")
    cor.hover()
    j_before = drawn(page, "coronal")[0]
    page.mouse.wheel(0, -120)
    wait_drawn(page, "coronal", j_before + 1, "browser", 15_000)
    assert page.evaluate("() => window.__busy"), "the steps were drawn while the kernel was busy"

    # when the kernel is free again it catches up: same slices, same pixels as Python
    release_kernel(page, flag)
    st = expect_canvases_match_python(page)
    assert st["index"]["axial"] == k - 2 and st["index"]["sagittal"] == i_before + 1
    assert st["index"]["coronal"] == j_before + 1

    # a label layer restarts the stream with the labels in every slab; pictures still match
    page.evaluate("""() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel
        .requestExecute({ code: 'viewer.set_labels(phantom.labels, opacity=0.4)' })""")
    page.wait_for_function("() => document.querySelector('.medlab-legend-item')", timeout=15_000)
    wait_streamed(page)
    expect_canvases_match_python(page)
    assert int(page.locator(".medlab-viewer").get_attribute("data-cache-bytes")) == 40 * SLICE_BYTES * 3 // 2

    # a sagittal pane gets every slab transposed (base and labels) in the background; then a
    # sagittal jump is cut from those copies, and still equals Python's picture
    page.wait_for_function("""() => { const d = document.querySelector('.medlab-viewer').dataset;
        return +d.copyBytes === +d.cacheBytes; }""", timeout=15_000)
    sag.hover()
    i_now = drawn(page, "sagittal")[0]
    page.keyboard.press("PageDown")  # 10 slices: beyond any slice cut ahead
    wait_drawn(page, "sagittal", i_now - 10, "browser", 15_000)
    hows = page.evaluate("(i) => window.__draws.filter((d) => d.plane === 'sagittal' && d.index === i).map((d) => d.how)",
                         i_now - 10)
    assert hows[0] == "transposed", hows
    st = expect_canvases_match_python(page)
    assert st["index"]["sagittal"] == i_now - 10


def test_ring_of_slabs_stays_bounded_and_follows_the_cursor(notebook, tmp_path):
    page = notebook.open(cells(3 * 4 * SLICE_BYTES, "single"))
    record_draws(page)
    wait_streamed(page, "3/10")
    st = expect_canvases_match_python(page)
    k = st["index"]["axial"]
    assert k == 20 and held_slabs(page) == [4, 5, 6], "the three slabs nearest the cursor (slab 5)"

    # two steps up stay inside the held slabs: drawn from the browser while the kernel is busy
    flag = tmp_path / "release"
    keep_kernel_busy(page, flag)
    page.locator(".medlab-viewer").focus()
    page.keyboard.press("ArrowUp")
    page.keyboard.press("ArrowUp")
    wait_drawn(page, "axial", k + 2, "browser", 15_000)
    assert page.evaluate("() => window.__busy")
    release_kernel(page, flag)

    # a jump of 10 slices leaves the held slabs: that slice comes from the kernel
    page.keyboard.press("PageUp")
    wait_drawn(page, "axial", k + 12, "kernel", 10_000)
    expect_canvases_match_python(page)
    # then the ring moves to the slabs nearest the new cursor, still three of them
    deadline = time.monotonic() + 15
    while held_slabs(page) != [7, 8, 9] or streamed(page) != "3/10":
        assert time.monotonic() < deadline, (held_slabs(page), streamed(page))
        page.wait_for_timeout(100)
    assert int(page.locator(".medlab-viewer").get_attribute("data-cache-bytes")) <= 3 * 4 * SLICE_BYTES
    keep_kernel_busy(page, flag)
    page.keyboard.press("ArrowDown")
    wait_drawn(page, "axial", k + 11, "browser", 15_000)
    assert page.evaluate("() => window.__busy")
    release_kernel(page, flag)
    expect_canvases_match_python(page)

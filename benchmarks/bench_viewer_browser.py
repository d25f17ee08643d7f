"""Viewer latency in a real browser (action -> new picture drawn): medlab Viewer vs ipywidgets.

JupyterLab (started here on 127.0.0.1, isolated, stopped by process group at the end) in Debian
Chromium driven by Playwright (fresh temporary profile; every non-localhost request is aborted).
One notebook holds, for each case (a 512x512x40 int16 chest CT, a 256^3 int16 chest CT, and a
512x512x600 int16 CT of 300 MiB: the 40-slice phantom linearly interpolated to 600 slices; all
three are over ``VOLUME_CACHE_BYTES``, so the viewer streams them to the browser in slabs):

* a ``medlab.widgets.Viewer`` (axial plane), made and displayed in its own cell, and
* the usual notebook baseline: an ``ipywidgets.IntSlider`` (driven through a ``jslink``-ed
  ``IntText``) and a ``FloatText`` window box whose Python callbacks render the slice with a
  reused matplotlib figure (``set_data`` / ``set_clim``, ``savefig`` PNG into ``BytesIO``) into
  ``ipywidgets.Image.value``;

plus an ``IntText`` -> ``Label`` echo that times a bare kernel round trip, for reference.

What is timed, in the page with ``performance.now()`` (Playwright's own IPC is outside the timed
region): from dispatching the action in JavaScript

* medlab: ``keydown`` ArrowDown/ArrowUp on ``.medlab-viewer``, or a ``wheel`` event on the axial
  overlay (slice change, goes through the kernel), ``change`` on ``select.medlab-preset``, or a
  new value in ``input.medlab-window`` + Enter (window/level, done in the browser)
* baseline: ``change`` on the ``IntText`` (slice) or the window ``FloatText``

to the moment the new picture is drawn: the viewer's ``medlab-drawn`` event for the expected slice
index (``detail.time``; for W/L the last draw the action caused), or the baseline ``<img>``'s
``load`` event after its ``src`` changed (``img.complete``). Actions run sequentially (each waits
for its picture), after a few warm-ups. Goal: p95 < 30 ms. For the streamed volume the slice
rows are measured twice: right after its cell ran, while the stream is still arriving (a step
whose slab is not there yet waits for the kernel; "local" counts the steps drawn from the
browser's copy), and once every slab is in; then coronal and sagittal steps, and sagittal steps
again once the slabs' transposed copies (widgets/js/stream.js) are complete. Each medlab step
row is followed by where its time went (``medlab-drawn``'s ``detail.phases``: cutting the
slice, window/level to RGBA, ``putImageData``). ``--js-dir`` runs the viewer with the
JavaScript units of another folder (e.g. the previous commit's, from ``git show``), so two
versions can be compared back to back under the same load.

Also measured: the first picture (wall clock from the start of the cell that makes the viewer,
``time.time()`` in the kernel, to its first ``medlab-drawn``, ``Date.now()`` in the page: one
machine, one clock), how long the whole volume takes to stream, and the page's memory through
the Chrome DevTools Protocol after a forced garbage collection (``Runtime.getHeapUsage``: JS heap
used and ArrayBuffer backing stores, where the voxels live) beside what the viewer reports it
holds (``data-cache-bytes``).

Run: ``.venv/bin/python benchmarks/bench_viewer_browser.py [--repeats 30] [--warmup 3]``
Needs ``/usr/bin/chromium`` (or ``$MEDLAB_CHROMIUM``) and the ``playwright`` package.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GOAL_MS = 30.0

CASES = {  # notebook prefix -> label
    "c512": "CT 512x512x40, axial 512x512",
    "c256": "CT 256^3, axial 256x256",
    "c600": "CT 512x512x600 (300 MiB)",
}
SLICES = {"c512": 40, "c256": 256, "c600": 600}

SETUP_CELL = """
import io, json, time
import numpy as np
import ipywidgets as W
import medlab
from matplotlib.figure import Figure
from matplotlib.backends.backend_agg import FigureCanvasAgg
from medlab.widgets import Viewer

vols = {'c512': medlab.data.chest_ct(size=(512, 512, 40), seed=0).ct,
        'c256': medlab.data.chest_ct(size=(256, 256, 256), seed=0).ct}

def interpolated(image, n):
    # the volume linearly interpolated to n slices (a large CT without a 3-minute phantom)
    a = image.array
    z = np.linspace(0, a.shape[0] - 1, n)
    i0 = np.minimum(np.floor(z).astype(int), a.shape[0] - 2)
    w = z - i0
    out = np.empty((n,) + a.shape[1:], np.int16)
    for m in range(n):
        out[m] = np.rint(a[i0[m]] * (1 - w[m]) + a[i0[m] + 1] * w[m])
    sz = image.spacing[2] * (a.shape[0] - 1) / (n - 1)
    return medlab.Image(out, (image.spacing[0], image.spacing[1], sz), origin=image.origin,
                        direction=image.direction, metadata=dict(image.metadata))

vols['c600'] = interpolated(vols['c512'], 600)
JS_DIR = __JS_DIR__  # --js-dir: the viewer's JavaScript units from another folder (an older version)
if JS_DIR:
    import pathlib
    from medlab.widgets.viewer import JS_UNITS
    Viewer._esm = chr(10).join((pathlib.Path(JS_DIR) / f"{u}.js").read_text() for u in JS_UNITS)
cell_start = {}  # wall-clock ms at the start of each display cell
assert vols['c600'].array.nbytes == 300 * 2**20

def make_baseline(prefix, image):
    cell_start[prefix + '-base'] = time.time() * 1000
    vol = image.array                      # [z, y, x] int16
    state = {'index': vol.shape[0] // 2, 'window': 400.0, 'level': 40.0}
    rows, cols = vol.shape[1:]
    fig = Figure(figsize=(cols / 100, rows / 100), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_axis_off()
    art = ax.imshow(vol[state['index']], cmap='gray', interpolation='nearest',
                    vmin=state['level'] - state['window'] / 2, vmax=state['level'] + state['window'] / 2)
    img = W.Image(format='png', layout=W.Layout(width=f'{min(cols, 420)}px'))
    img.add_class(prefix + '-img')

    def draw():
        buf = io.BytesIO()
        fig.savefig(buf, format='png', dpi=100)
        img.value = buf.getvalue()

    slider = W.IntSlider(value=state['index'], min=0, max=vol.shape[0] - 1, description='slice')
    slider.add_class(prefix + '-slider')
    box = W.IntText(value=state['index'])
    box.add_class(prefix + '-slicebox')
    W.jslink((box, 'value'), (slider, 'value'))
    win = W.FloatText(value=state['window'], description='W')
    win.add_class(prefix + '-win')

    def on_slice(change):
        state['index'] = int(change['new'])
        art.set_data(vol[state['index']])
        draw()

    def on_window(change):
        state['window'] = float(change['new'])
        art.set_clim(state['level'] - state['window'] / 2, state['level'] + state['window'] / 2)
        draw()

    slider.observe(on_slice, names='value')
    win.observe(on_window, names='value')
    draw()
    return W.VBox([W.HBox([slider, box, win]), img])

viewers = {}

def show_viewer(prefix):
    # make and show a viewer; its first picture is timed from here
    cell_start[prefix] = time.time() * 1000
    v = Viewer(vols[prefix], height=420)
    v.add_class(prefix + '-viewer')
    viewers[prefix] = v
    return v

ping = W.IntText(value=0)
ping.add_class('bench-ping')
pong = W.Label('pong 0')
pong.add_class('bench-pong')
ping.observe(lambda c: setattr(pong, 'value', f"pong {c['new']}"), names='value')
"""

DISPLAY_CELLS = [
    "W.HBox([ping, pong])",
    "show_viewer('c512')",
    "make_baseline('c512', vols['c512'])",
    "show_viewer('c256')",
    "make_baseline('c256', vols['c256'])",
    "make_baseline('c600', vols['c600'])",
    "show_viewer('c600')",
]

# First picture of each viewer (its canvas in the page with a picture drawn: a view draws before
# JupyterLab attaches it, so a MutationObserver sees the moment both hold) and end of each
# stream, in wall-clock ms; installed before the cells run.
FIRST_DRAW_JS = r"""() => {
  window.__first = {}; window.__streamed = {};
  const prefixes = ['c512', 'c256', 'c600'];
  const look = () => {
    for (const p of prefixes) {
      if (p in window.__first) continue;
      const c = document.querySelector(`.${p}-viewer canvas.medlab-canvas[data-drawn-index]`);
      if (c && c.isConnected) window.__first[p] = Date.now();
    }
  };
  new MutationObserver(look).observe(document.body, { subtree: true, childList: true, attributes: true,
    attributeFilter: ['data-drawn-index'] });
  // the baseline's first PNG on the page (polled: an <img> may load before it is attached)
  const poll = setInterval(() => {
    for (const p of prefixes) {
      const img = document.querySelector(`img.${p}-img`);
      if (!((p + '-base') in window.__first) && img && img.isConnected && img.complete && img.naturalWidth > 0)
        window.__first[p + '-base'] = Date.now();
    }
    if (prefixes.every((p) => (p + '-base') in window.__first)) clearInterval(poll);
  }, 5);
  document.addEventListener('medlab-streamed', (e) => {
    const p = prefixes.find((q) => e.target.closest(`.${q}-viewer`));
    if (p && !(p in window.__streamed)) window.__streamed[p] = Date.now(); }, true);
}"""

# ----------------------------------------------------------------------------- in-page timers
# Each returns {ms, draws} or throws on timeout; the clock starts right before the dispatch.
JS_HELPERS = r"""
window.__bench = {
  waitDrawn(canvas, pred, timeoutMs) {
    const seen = [];
    let resolve, reject;
    const promise = new Promise((res, rej) => { resolve = res; reject = rej; });
    const timer = setTimeout(() => { canvas.removeEventListener('medlab-drawn', on);
      reject(new Error('no matching medlab-drawn in ' + timeoutMs + ' ms; saw ' + JSON.stringify(seen.map(e => e.index)))); }, timeoutMs);
    function on(ev) { seen.push(ev.detail); if (pred(ev.detail)) { clearTimeout(timer); canvas.removeEventListener('medlab-drawn', on); resolve(ev.detail); } }
    canvas.addEventListener('medlab-drawn', on);
    return { promise, seen };
  },
  async medlabSlice(prefix, how, plane = 'axial') {
    const root = document.querySelector(`.${prefix}-viewer .medlab-viewer`);
    const canvas = root.querySelector(`canvas.medlab-canvas[data-plane=${plane}]`);
    const slider = root.querySelector(`input.medlab-slice[data-plane=${plane}]`);
    const cur = parseInt(canvas.dataset.drawnIndex, 10), max = parseInt(slider.max, 10);
    const down = how.endsWith('down') ? cur > 0 : cur >= max;   // one step, away from the ends
    const target = down ? cur - 1 : cur + 1;
    const w = this.waitDrawn(canvas, (d) => d.index === target, 10000);
    const t0 = performance.now();
    if (how.startsWith('key')) {
      root.dispatchEvent(new KeyboardEvent('keydown', { key: down ? 'ArrowDown' : 'ArrowUp', bubbles: true, cancelable: true }));
    } else {
      const ov = root.querySelector(`canvas.medlab-overlay[data-plane=${plane}]`);
      const r = ov.getBoundingClientRect();
      ov.dispatchEvent(new WheelEvent('wheel', { deltaY: down ? 100 : -100, bubbles: true, cancelable: true,
        clientX: r.left + r.width / 2, clientY: r.top + r.height / 2 }));
    }
    const d = await w.promise;
    return { ms: d.time - t0, draws: w.seen.length, index: d.index, local: d.local, phases: d.phases };
  },
  async medlabWL(prefix, how, value) {
    const root = document.querySelector(`.${prefix}-viewer .medlab-viewer`);
    const canvas = root.querySelector('canvas.medlab-canvas[data-plane=axial]');
    const seen = [];
    let wake = null;
    const on = (ev) => { seen.push(ev.detail); if (wake) wake(); };
    canvas.addEventListener('medlab-drawn', on);
    try {
      const t0 = performance.now();
      if (how === 'preset') {
        const sel = root.querySelector('select.medlab-preset');
        sel.value = value;
        sel.dispatchEvent(new Event('change', { bubbles: true }));
      } else {
        const inp = root.querySelector('input.medlab-window');
        inp.focus();
        inp.value = String(value);
        inp.dispatchEvent(new KeyboardEvent('keydown', { key: 'Enter', bubbles: true, cancelable: true }));
      }
      // The viewer draws synchronously in the model's change handlers, so the draws this action
      // causes are in `seen` when dispatch returns (a preset sets window, then level: two draws);
      // if none yet, wait for the first.
      if (!seen.length) {
        await new Promise((res, rej) => { wake = res; setTimeout(() => rej(new Error('no medlab-drawn in 10 s')), 10000); });
      }
      const after = seen.slice();
      await new Promise((res) => setTimeout(res, 0));   // any draw queued right behind is not ours to time, count it
      if (how !== 'preset') root.focus();
      return { ms: after[after.length - 1].time - t0, draws: seen.length, first_ms: after[0].time - t0 };
    } finally {
      canvas.removeEventListener('medlab-drawn', on);
    }
  },
  async kernelInfo() {
    const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
    const t0 = performance.now();
    await kernel.requestKernelInfo();
    return { ms: performance.now() - t0, draws: 0 };
  },
  async baseline(prefix, what, value) {
    const img = document.querySelector(`img.${prefix}-img`);
    const box = document.querySelector(`.${prefix}-${what === 'slice' ? 'slicebox' : 'win'} input`);
    const old = img.src;
    const done = new Promise((resolve, reject) => {
      const timer = setTimeout(() => { img.removeEventListener('load', on); reject(new Error('baseline image did not change in 15 s')); }, 15000);
      function on() { if (img.src !== old && img.complete) { clearTimeout(timer); img.removeEventListener('load', on); resolve(performance.now()); } }
      img.addEventListener('load', on);
    });
    const t0 = performance.now();
    box.value = String(value);
    box.dispatchEvent(new Event('change', { bubbles: true }));
    const t1 = await done;
    return { ms: t1 - t0, draws: 1 };
  },
  async ping(value) {
    const label = document.querySelector('.bench-pong');
    const box = document.querySelector('.bench-ping input');
    const want = 'pong ' + value;
    const done = new Promise((resolve, reject) => {
      const timer = setTimeout(() => { obs.disconnect(); reject(new Error('no pong in 10 s')); }, 10000);
      const obs = new MutationObserver(() => { if (label.textContent.trim() === want) { clearTimeout(timer); obs.disconnect(); resolve(performance.now()); } });
      obs.observe(label, { childList: true, characterData: true, subtree: true });
    });
    const t0 = performance.now();
    box.value = String(value);
    box.dispatchEvent(new Event('change', { bubbles: true }));
    const t1 = await done;
    return { ms: t1 - t0, draws: 0 };
  },
};
"""


def fail(message: str) -> None:
    print(f"bench_viewer_browser: {message}", file=sys.stderr)
    sys.exit(2)


def check_requirements():
    chromium = Path(os.environ.get("MEDLAB_CHROMIUM", "/usr/bin/chromium"))
    if not chromium.exists():
        fail(f"Chromium not found at {chromium} (apt-get install chromium, or set MEDLAB_CHROMIUM)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        fail("the playwright package is not installed (pip install playwright; "
             "never `playwright install`: Debian's chromium is used)")
    return chromium


def versions(chromium: Path) -> dict:
    out = {}
    try:
        text = subprocess.run([str(chromium), "--version"], check=False,
                              capture_output=True, text=True, timeout=30).stdout.strip().splitlines()
        out["Chromium"] = text[-1] if text else "?"
    except (OSError, subprocess.SubprocessError) as exc:
        out["Chromium"] = f"? ({exc})"
    for pkg in ("jupyterlab", "ipywidgets", "anywidget", "playwright", "matplotlib"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "?"
    return out


def measure(page, fn: str, calls: list[list], warmup: int) -> dict:
    """Call ``__bench.<fn>(*args)`` for each args in ``calls``; time all but the first ``warmup``."""
    times, draws, extra, local, phases = [], [], [], [], []
    for n, call_args in enumerate(calls):
        res = page.evaluate(f"(a) => window.__bench.{fn}(...a)", call_args)
        if n >= warmup:
            times.append(res["ms"])
            draws.append(res["draws"])
            if "first_ms" in res:
                extra.append(res["first_ms"])
            if "local" in res:
                local.append(bool(res["local"]))
            if res.get("phases"):
                phases.append(res["phases"])
    return {"times": np.array(times), "draws": draws, "first": np.array(extra) if extra else None,
            "local": local or None, "phases": phases or None}


def pct(a: np.ndarray, q: float) -> float:
    return float(np.percentile(a, q))


PHASES = [(0, 1, None), (2, 3, "c512"), (4, 5, "c256"), (6, 7, "c600")]  # cells run together


def run_cells(page, conftest, first: int, last: int, timeout_ms: int = 600_000) -> None:
    """Run notebook cells ``first..last`` in order; wait until each has run, fail on an error."""
    page.evaluate("""async ([first, last]) => {
        const nb = window.jupyterapp.shell.currentWidget.content;
        for (let i = first; i <= last; i++) {
            nb.activeCellIndex = i;
            await window.jupyterapp.commands.execute('notebook:run-cell');
        } }""", [first, last])
    page.wait_for_function(
        r"""([first, last]) => { const p = [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')];
            return p.slice(first, last + 1).every((e) => /^\[\d+\]:$/.test(e.textContent.trim())); }""",
        arg=[first, last], timeout=timeout_ms)
    conftest.wait_kernel_idle(page, timeout_ms)
    errors = page.evaluate("() => { " + conftest._CELL_ERRORS + " return cellErrors(); }")
    if errors:
        raise RuntimeError("a notebook cell raised:\n" + "\n".join(errors)[-3000:])


def kernel_json(page, code: str):
    """Run ``code`` in the notebook's kernel and parse what it prints as JSON."""
    out = page.evaluate("""async (code) => {
        const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
        const future = kernel.requestExecute({ code });
        let text = '';
        future.onIOPub = (m) => { if (m.header.msg_type === 'stream') text += m.content.text; };
        await future.done;
        return text; }""", code)
    return json.loads(out)


def page_memory(cdp) -> dict:
    """The page's memory after a forced garbage collection, MiB: JS heap used, ArrayBuffer
    backing stores (``Runtime.getHeapUsage``)."""
    cdp.send("HeapProfiler.collectGarbage")
    use = cdp.send("Runtime.getHeapUsage")
    return {"heap": use["usedSize"] / 2**20, "buffers": use.get("backingStorageSize", float("nan")) / 2**20}


def cache_mib(page, prefix: str) -> float:
    """What the viewer holds, MiB: slabs and their transposed copies (for sagittal slices)."""
    got = page.evaluate("""(p) => { const d = document.querySelector(`.${p}-viewer .medlab-viewer`).dataset;
        return +(d.cacheBytes || 0) + +(d.copyBytes || 0); }""", prefix)
    return got / 2**20


def streamed_state(page, prefix: str) -> str:
    return page.evaluate("(p) => document.querySelector(`.${p}-viewer .medlab-viewer`).dataset.streamed", prefix) or ""


def switch_plane(page, prefix: str, plane: str) -> None:
    """Show ``plane`` in a viewer (its select), and wait for its first picture."""
    page.evaluate("""([p, plane]) => { const sel = document.querySelector(`.${p}-viewer select.medlab-plane`);
        sel.value = plane; sel.dispatchEvent(new Event('change', { bubbles: true })); }""", [prefix, plane])
    page.wait_for_function("""([p, plane]) => document.querySelector(
        `.${p}-viewer canvas.medlab-canvas[data-plane=${plane}]`)?.dataset.drawnIndex !== undefined""",
                           arg=[prefix, plane], timeout=60_000)


def slice_rows(page, prefix: str, label: str, args, plane: str = "axial", baseline: bool = True) -> list:
    """Slice steps (keys and wheel) of one viewer, and of its baseline."""
    wu, seq = args.warmup, range(args.warmup + args.repeats)
    r_key = measure(page, "medlabSlice", [[prefix, "key-down", plane] for _ in seq], wu)
    r_wheel = measure(page, "medlabSlice", [[prefix, "wheel-up", plane] for _ in seq], wu)
    rows = [(label, f"slice +-1 {plane} (ArrowUp/Down)", "medlab", r_key),
            (label, f"slice +-1 {plane} (wheel)", "medlab", r_wheel)]
    if baseline:
        page.evaluate("(s) => document.querySelector(s).scrollIntoView({block: 'center'})", f"img.{prefix}-img")
        mid = SLICES[prefix] // 2
        # step the slider one slice at a time, back and forth around the middle
        rows.append((label, "slice +-1 (IntSlider)", "baseline",
                     measure(page, "baseline", [[prefix, "slice", mid + [1, 2, 1, 0][n % 4]] for n in seq], wu)))
        page.evaluate("(s) => document.querySelector(s).scrollIntoView({block: 'center'})", f".{prefix}-viewer .medlab-viewer")
    return rows


def window_rows(page, prefix: str, label: str, args) -> list:
    wu, seq = args.warmup, range(args.warmup + args.repeats)
    presets = page.evaluate(
        "(p) => [...document.querySelectorAll(`.${p}-viewer select.medlab-preset option`)]"
        ".map(o => o.value).filter(v => v)", prefix)
    pair = [p for p in ("lung", "bone") if p in presets] or presets[:2]
    r_pre = measure(page, "medlabWL", [[prefix, "preset", pair[n % 2]] for n in seq], wu)
    r_win = measure(page, "medlabWL", [[prefix, "window", (400, 1500)[n % 2]] for n in seq], wu)
    page.evaluate("(s) => document.querySelector(s).scrollIntoView({block: 'center'})", f"img.{prefix}-img")
    b_wl = measure(page, "baseline", [[prefix, "window", (1500.0, 400.0)[n % 2]] for n in seq], wu)
    page.evaluate("(s) => document.querySelector(s).scrollIntoView({block: 'center'})", f".{prefix}-viewer .medlab-viewer")
    return [(label, f"W/L preset ({'/'.join(pair)})", "medlab", r_pre),
            (label, "W/L: window box + Enter", "medlab", r_win),
            (label, "W/L: window box (FloatText)", "baseline", b_wl)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=30, help="timed actions per row (default 30)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed actions first (default 3)")
    ap.add_argument("--js-dir", default="", help="run the viewer with the JavaScript units of this folder "
                    "(e.g. an older version from `git show`), to compare versions under the same load")
    args = ap.parse_args()

    chromium = check_requirements()
    sys.path.insert(0, str(ROOT / "tests" / "browser"))
    import conftest  # LabServer, write_notebook, wait_kernel_idle, run_all_cells, flags
    from playwright.sync_api import sync_playwright

    vers = versions(chromium)
    t_start = time.monotonic()
    rows, facts, memory = [], {}, []
    with tempfile.TemporaryDirectory(prefix="medlab-bench-browser-") as tmp:
        tmp = Path(tmp)
        (tmp / "lab").mkdir()
        server = conftest.LabServer(tmp / "lab")
        context = None
        outside: list[str] = []
        try:
            server.start()
            name = f"bench_{uuid.uuid4().hex[:6]}"
            js_dir = str(Path(args.js_dir).resolve()) if args.js_dir else ""
            cells = [SETUP_CELL.replace("__JS_DIR__", repr(js_dir)), *DISPLAY_CELLS]
            conftest.write_notebook(server.root / f"{name}.ipynb", cells)
            with sync_playwright() as pw:
                context = pw.chromium.launch_persistent_context(
                    str(tmp / "chromium-profile"), executable_path=str(chromium), headless=True,
                    args=conftest.CHROMIUM_ARGS, viewport={"width": 1400, "height": 1000})

                def route(route, request):
                    host = urlsplit(request.url).hostname or ""
                    if request.url.startswith(("data:", "blob:")) or host in conftest.LOCAL_HOSTS:
                        route.continue_()
                    else:
                        outside.append(request.url)
                        route.abort()

                context.route("**/*", route)
                page = context.new_page()
                cdp = context.new_cdp_session(page)
                console: list[str] = []
                page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
                page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
                page.goto(f"{server.url}/lab/workspaces/{name}/tree/{name}.ipynb?token={server.token}")
                conftest.wait_kernel_idle(page, 120_000)
                page.wait_for_function("() => window.jupyterapp && document.querySelector('.jp-Notebook')",
                                       timeout=60_000)
                page.evaluate(FIRST_DRAW_JS)
                memory.append(("page open, before any cell", page_memory(cdp), None))
                t_run = time.monotonic()
                # one case at a time, each once the page has drawn the one before, so a first
                # picture waits only for its own voxels (not for the previous case's transfer)
                for first, last, prefix in PHASES:
                    if prefix == "c600":
                        memory.append(("before the 300 MiB viewer", page_memory(cdp), None))
                    run_cells(page, conftest, first, last)
                    if prefix:
                        page.wait_for_function(
                            """(p) => document.querySelector(`.${p}-viewer canvas.medlab-canvas[data-plane=axial]`)
                                ?.dataset.drawnIndex !== undefined && document.querySelector(`img.${p}-img`)?.complete""",
                            arg=prefix, timeout=600_000)
                    if prefix in ("c512", "c256"):  # sent whole, or streamed: wait until it is all here
                        page.wait_for_function("""(p) => { const s = document.querySelector(`.${p}-viewer .medlab-viewer`)
                            .dataset.streamed || ''; const [a, b] = s.split('/'); return !s || a === b; }""",
                                               arg=prefix, timeout=600_000)
                        page.wait_for_timeout(1000)
                setup_s = time.monotonic() - t_run
                vers["Chromium (page)"] = page.evaluate("() => navigator.userAgent")
                page.evaluate("(src) => { (0, eval)(src); }", JS_HELPERS)
                page.evaluate("(s) => document.querySelector(s).scrollIntoView({block: 'center'})",
                              ".c600-viewer .medlab-viewer")

                # the streamed volume, straight after its cell: steps while slabs still arrive
                facts["held when the steps began"] = streamed_state(page, "c600")
                rows += [(r[0], r[1] + ", while streaming", r[2], r[3])
                         for r in slice_rows(page, "c600", CASES["c600"], args, baseline=False)]
                facts["held when they ended"] = streamed_state(page, "c600")

                wu = args.warmup
                seq = range(args.warmup + args.repeats)
                ping = measure(page, "ping", [[n + 1] for n in seq], wu)
                rows.append(("kernel round trip", "IntText -> Label echo", "ipywidgets", ping))
                kinfo = measure(page, "kernelInfo", [[] for n in seq], wu)
                rows.append(("kernel round trip", "kernel_info_request (no widget)", "Lab API", kinfo))
                for prefix in ("c512", "c256"):
                    label = CASES[prefix]
                    page.evaluate("(s) => document.querySelector(s).scrollIntoView({block: 'center'})",
                                  f".{prefix}-viewer .medlab-viewer")
                    rows += slice_rows(page, prefix, label, args)
                    rows += window_rows(page, prefix, label, args)

                # the streamed volume once every slab is in: all three planes from the browser
                page.wait_for_function("""() => { const s = document.querySelector('.c600-viewer .medlab-viewer').dataset.streamed || '';
                    const [a, b] = s.split('/'); return a && a === b; }""", timeout=900_000)
                memory.append(("300 MiB CT streamed", page_memory(cdp), cache_mib(page, "c600")))
                page.evaluate("(s) => document.querySelector(s).scrollIntoView({block: 'center'})",
                              ".c600-viewer .medlab-viewer")
                label = CASES["c600"]
                rows += [(r[0], r[1] + (", streamed" if r[2] == "medlab" else ""), r[2], r[3])
                         for r in slice_rows(page, "c600", label, args)]
                rows += window_rows(page, "c600", label, args)
                for plane in ("coronal", "sagittal"):
                    switch_plane(page, "c600", plane)
                    t_switch = time.monotonic()
                    rows += [(r[0], r[1] + ", streamed", r[2], r[3])
                             for r in slice_rows(page, "c600", label, args, plane=plane, baseline=False)]
                # a sagittal view makes transposed copies of the slabs in the background
                # (widgets/js/stream.js): the rows above ran while they were made; again once done
                if page.evaluate("() => +(document.querySelector('.c600-viewer .medlab-viewer').dataset.copyBytes"
                                 " || -1) >= 0"):
                    page.wait_for_function("""() => { const d = document.querySelector('.c600-viewer .medlab-viewer').dataset;
                        return +d.copyBytes > 0 && +d.copyBytes === +d.cacheBytes; }""", timeout=600_000)
                    facts["sagittal copy complete after the switch to sagittal"] = (time.monotonic() - t_switch) * 1000
                    rows += [(r[0], r[1] + ", streamed, transposed copy", r[2], r[3])
                             for r in slice_rows(page, "c600", label, args, plane="sagittal", baseline=False)]
                memory.append(("after all steps (three planes)", page_memory(cdp), cache_mib(page, "c600")))

                starts = kernel_json(page, "print(json.dumps(cell_start))")
                firsts = page.evaluate("() => window.__first")
                ends = page.evaluate("() => window.__streamed")
                for prefix in CASES:
                    for who, key in (("medlab", prefix), ("baseline", prefix + "-base")):
                        facts[f"first picture {prefix} {who}"] = firsts.get(key, float("nan")) - starts[key]
                facts["300 MiB streamed in"] = ends.get("c600", float("nan")) - starts["c600"]
                errors = [c for c in console if c.startswith(("error", "pageerror"))]
                context.close()
                context = None
        except BaseException as exc:  # noqa: BLE001 - pytest.fail from conftest helpers included
            print(f"bench_viewer_browser: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            if context is not None and context.pages:
                shot = Path(tempfile.gettempdir()) / "bench_viewer_browser_failure.png"
                try:
                    context.pages[0].screenshot(path=str(shot), full_page=True)
                    print(f"screenshot: {shot}", file=sys.stderr)
                except Exception as err:  # noqa: BLE001 - keep the original failure
                    print(f"no screenshot: {err}", file=sys.stderr)
            print("JupyterLab log (tail):\n" + server.log()[-2000:], file=sys.stderr)
            return 1
        finally:
            if context is not None:
                try:
                    context.close()
                except Exception as exc:  # noqa: BLE001 - cleanup must reach server.stop()
                    print(f"bench_viewer_browser: closing Chromium: {exc}", file=sys.stderr)
            try:
                server.shutdown_kernels()
            except Exception as exc:  # noqa: BLE001 - the group kill below ends them anyway
                print(f"bench_viewer_browser: shutting kernels down: {exc}", file=sys.stderr)
            server.stop()

    total_s = time.monotonic() - t_start
    print("\nViewer latency in a real browser: user action -> new picture drawn "
          f"({args.repeats} timed actions per row after {args.warmup} warm-ups, sequential)")
    print("  " + ", ".join(f"{k} {v}" for k, v in vers.items() if k != "Chromium (page)"))
    print(f"  page user agent: {vers.get('Chromium (page)')}")
    try:
        print(f"  load average (1, 5, 15 min): {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
              f"CPUs: {os.cpu_count()}")
    except OSError:
        pass
    head = (f"{'case':<30} | {'action':<44} | {'widget':<10} | {'p50 ms':>7} | {'p95 ms':>7} | {'max ms':>7} | "
            f"{'draws':>5} | {'local':>5} | goal p95<{GOAL_MS:.0f} ms")
    print("\n" + head)
    print("-" * len(head))
    for case, action, widget, r in rows:
        t = r["times"]
        draws = sorted(set(r["draws"]))
        draws_s = "/".join(map(str, draws)) if widget == "medlab" else "-"
        local_s = f"{sum(r['local'])}/{len(r['local'])}" if r.get("local") else "-"
        met = "" if case == "kernel round trip" else ("yes" if pct(t, 95) < GOAL_MS else "NO")
        print(f"{case:<30} | {action:<44} | {widget:<10} | {pct(t, 50):7.1f} | {pct(t, 95):7.1f} | "
              f"{t.max():7.1f} | {draws_s:>5} | {local_s:>5} | {met}")
        if r.get("phases"):
            ph = r["phases"]
            split = ", ".join(f"{k} {pct([p[k] for p in ph], 50):.1f}/{pct([p[k] for p in ph], 95):.1f}"
                              for k in ("cut", "colour", "put"))
            hows = {h: sum(p["how"] == h for p in ph) for h in sorted({p["how"] for p in ph})}
            print(f"{'':<30} |   (p50/p95 ms: {split}; slices {', '.join(f'{h} {n}' for h, n in hows.items())})")
        if r["first"] is not None and max(r["draws"]) > 1:
            f = r["first"]
            print(f"{'':<30} |   (first of the draws: p50 {pct(f, 50):.1f}, p95 {pct(f, 95):.1f} ms)")
    print("\ndraws = medlab-drawn events one action caused (a preset sets window, then level);")
    print("local = steps whose picture was cut from voxels the browser held (no kernel round trip).")
    print("cut/colour/put = where a step's time went: cutting the slice from the held voxels (0 when cut ahead),")
    print("window/level to RGBA, putImageData; slices: how they were cut (view: no copy; rows: contiguous rows;")
    print("strided: a sagittal cut voxel by voxel; transposed: rows of the sagittal copy; cached: cut ahead).")
    print("\nFirst picture (cell start -> first drawn), stream, memory:")
    for key, value in facts.items():
        print(f"  {key}: " + (f"{value:.0f} ms" if isinstance(value, float) else str(value)))
    for when, mem, cache in memory:
        extra = f"; viewer holds {cache:.1f} MiB (slabs and sagittal copies)" if cache is not None else ""
        print(f"  memory {when}: JS heap {mem['heap']:.1f} MiB, ArrayBuffers {mem['buffers']:.1f} MiB{extra}")
    print(f"notebook setup (data + widgets) {setup_s:.1f} s; whole run {total_s:.1f} s")
    if errors:
        print(f"browser console errors ({len(errors)}): " + " | ".join(errors[:5]))
    if outside:
        print(f"WARNING: the page tried to reach outside 127.0.0.1 (aborted): {outside[:5]}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

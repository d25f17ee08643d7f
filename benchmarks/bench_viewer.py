"""Viewer update latency: medlab's anywidget viewer against an ipywidgets.Image + matplotlib baseline.

What is timed (p50 / p95 over repeated updates, milliseconds, this machine):

* **medlab slice change**: ``viewer.slice_index = k`` until the update message (JSON state plus
  the raw int16 slice as a binary buffer) is handed to the comm, i.e. ready to send.
* **medlab W/L change**: ``viewer.window = w`` until its (tiny) message is ready. Window/level is
  done in the browser, so this is the whole Python cost; the browser-side cost is estimated
  by running the viewer's own W/L loop (``greyPixels`` from ``widgets/js/draw.js``: window/level
  straight into the canvas' RGBA words) in Node.js on the same slice when ``node`` is
  installed (putting the pixels on the canvas is not included; the real-browser benchmark
  times the full path).
* **medlab slab** (a volume over ``VOLUME_CACHE_BYTES``, streamed): Python's cost to hand one
  slab (about ``SLAB_BYTES`` of whole axial slices) to the comm after the browser acknowledges
  the previous one; the kernel is busy this long per slab while a volume streams.
* **medlab snapshot()**: PNG of the current view rendered in Python (for reports).
* **baseline**: the usual notebook pattern, a reused matplotlib figure (``imshow`` artist),
  ``set_data`` (slice) or ``set_clim`` (W/L), ``savefig`` to PNG, ``ipywidgets.Image.value =
  png`` (ready to send). Every W/L change costs a full re-render and PNG encoding there.

Cases: a 512x512 int16 CT slice (volume 512x512x64) and a 256^3 int16 volume (axial and the
strided sagittal plane). A comm that JSON-encodes each message stands in for the kernel.

Run: ``python benchmarks/bench_viewer.py [--repeat 40]``
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


class CaptureComm:
    """Stands in for a kernel comm: JSON-encodes each message and counts its binary buffers."""

    kernel = True
    comm_id = "benchmark"

    def __init__(self):
        self.messages = 0
        self.nbytes = 0

    def on_msg(self, callback):
        pass

    def send(self, data=None, buffers=None, **kwargs):
        json.dumps(data, default=str)
        self.messages += 1
        self.nbytes += sum(memoryview(b).nbytes for b in buffers or ())

    def close(self):
        pass


def timed(fn, repeat: int) -> tuple[float, float]:
    fn(0)  # warm up
    times = []
    for k in range(1, repeat + 1):
        t0 = time.perf_counter()
        fn(k)
        times.append(time.perf_counter() - t0)
    p50, p95 = np.percentile(times, [50, 95]) * 1000
    return float(p50), float(p95)


def ct_volume(shape, seed=0) -> np.ndarray:
    """An int16 CT-like volume: a body ellipse of soft tissue with noise, air around it."""
    rng = np.random.default_rng(seed)
    _, ny, nx = shape
    yy, xx = np.mgrid[-1:1:ny * 1j, -1:1:nx * 1j]
    body = (xx / 0.85) ** 2 + (yy / 0.7) ** 2 < 1
    slab = np.where(body, 40, -1000).astype(np.int16)
    vol = np.broadcast_to(slab, shape).copy()
    vol += rng.normal(0, 20, shape).astype(np.int16)
    return vol


def medlab_cases(volume: np.ndarray, spacing, plane: str, repeat: int) -> dict:
    from medlab.widgets import Viewer

    from medlab import Image

    viewer = Viewer(Image(volume, spacing, metadata={"modality": "CT", "units": "HU"}), plane=plane)
    viewer.comm = CaptureComm()
    n = {"axial": volume.shape[0], "coronal": volume.shape[1], "sagittal": volume.shape[2]}[plane]

    def slice_change(k):
        viewer.slice_index = (k * 7) % n

    def wl_change(k):
        viewer.window = 300.0 + k

    return {
        "slice": timed(slice_change, repeat),
        "wl": timed(wl_change, repeat),
        "snapshot": timed(lambda k: viewer.snapshot(), max(5, repeat // 4)),
        "bytes": viewer._axial.get("data", memoryview(b"")).nbytes if plane == "axial" else None,
        "slice_array": np.ascontiguousarray(viewer.current_slice().array),
    }


def slab_cost(volume: np.ndarray, spacing, repeat: int) -> tuple[float, float]:
    """p50/p95 ms for Python to send the next slab of a streamed volume after an acknowledgement."""
    from medlab.widgets import Viewer
    from medlab.widgets import viewer as viewer_module

    from medlab import Image

    saved = viewer_module.VOLUME_CACHE_BYTES
    viewer_module.VOLUME_CACHE_BYTES = 0  # stream whatever the size
    try:
        viewer = Viewer(Image(volume, spacing, metadata={"modality": "CT", "units": "HU"}))
    finally:
        viewer_module.VOLUME_CACHE_BYTES = saved
    viewer.comm = CaptureComm()
    gen = viewer._stream["gen"]
    viewer._on_message(viewer, {"type": "stream-ready", "gen": gen}, [])

    def next_slab(k):
        plan = viewer._plan
        if plan.complete:
            plan.reset()
            viewer._on_message(viewer, {"type": "stream-ready", "gen": gen}, [])
        viewer._on_message(viewer, {"type": "slab-ack", "gen": gen, "slab": min(plan.in_flight, default=-1)}, [])

    return timed(next_slab, repeat)


def baseline_cases(volume: np.ndarray, plane: str, repeat: int) -> dict:
    import ipywidgets
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    take = {"axial": lambda k: volume[k], "sagittal": lambda k: volume[::-1, :, k]}[plane]
    n = {"axial": volume.shape[0], "sagittal": volume.shape[2]}[plane]
    first = take(0)
    fig = plt.figure(figsize=(first.shape[1] / 100, first.shape[0] / 100), dpi=100)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_axis_off()
    artist = ax.imshow(first, cmap="gray", vmin=-150, vmax=250, interpolation="nearest")
    widget = ipywidgets.Image(format="png")
    widget.comm = CaptureComm()

    def publish():
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        widget.value = buf.getvalue()

    def slice_change(k):
        artist.set_data(take((k * 7) % n))
        publish()

    def wl_change(k):
        artist.set_clim(-150 - k, 250 + k)
        publish()

    out = {"slice": timed(slice_change, repeat), "wl": timed(wl_change, repeat)}
    plt.close(fig)
    return out


JS_HARNESS = """
import { readFileSync } from "node:fs";
const core = readFileSync(process.argv[2], "utf8"), draw = readFileSync(process.argv[4], "utf8");
const src = core.slice(core.indexOf("function wlFunction")) + draw.slice(draw.indexOf("// opaque grey RGBA"));
const greyPixels = new Function(src + "; return greyPixels;")();
const raw = new Int16Array(readFileSync(process.argv[3]).buffer.slice(0));
const out = new Uint32Array(raw.length);
const times = [];
for (let r = 0; r < 80; r++) {  // the first 20 runs warm the JIT up, as scrolling would
  const t0 = performance.now();
  greyPixels(out, raw, "int16", 400 + r, 40);
  if (r >= 20) times.push(performance.now() - t0);
}
times.sort((a, b) => a - b);
console.log(JSON.stringify([times[Math.floor(0.5 * times.length)], times[Math.floor(0.95 * times.length)]]));
"""


def js_window_level(slice_array: np.ndarray) -> tuple[float, float] | None:
    """p50/p95 of the viewer's own JS window/level loop on one slice, in Node.js (if installed)."""
    node = shutil.which("node")
    if node is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        harness = Path(tmp) / "wl.mjs"
        harness.write_text(JS_HARNESS)
        data = Path(tmp) / "slice.bin"
        data.write_bytes(slice_array.astype(np.int16).tobytes())
        out = subprocess.run([node, str(harness), str(ROOT / "widgets" / "js" / "core.js"), str(data),
                              str(ROOT / "widgets" / "js" / "draw.js")],
                             check=False, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            return None
        return tuple(json.loads(out.stdout))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=40)
    args = parser.parse_args()

    cases = [
        ("512x512 CT slice (512x512x64), axial", ct_volume((64, 512, 512)), (0.78, 0.78, 2.5), "axial"),
        ("256^3 volume, axial", ct_volume((256, 256, 256), 1), (1.0, 1.0, 1.0), "axial"),
        ("256^3 volume, sagittal", ct_volume((256, 256, 256), 1), (1.0, 1.0, 1.0), "sagittal"),
    ]
    rows = []
    for title, volume, spacing, plane in cases:
        m = medlab_cases(volume, spacing, plane, args.repeat)
        b = baseline_cases(volume, plane, args.repeat)
        js = js_window_level(m["slice_array"])
        rows.append((title, m, b, js))
        del volume

    def f(p):
        return f"{p[0]:7.2f} / {p[1]:7.2f}" if p else "      n/a      "

    print("\nViewer update latency, ms (p50 / p95); goal: < 30 ms p95 for slice and W/L updates\n")
    header = f"{'case':40s} {'update':9s} {'medlab (Python)':>18s} {'medlab JS W/L':>18s} {'baseline mpl+PNG':>18s} {'speed-up p95':>12s}"
    print(header)
    print("-" * len(header))
    for title, m, b, js in rows:
        for key, label in (("slice", "slice"), ("wl", "W/L")):
            jscol = f(js) if key == "wl" else "   (sent raw)   "
            ratio = b[key][1] / max(m[key][1] + (js[1] if key == "wl" and js else 0.0), 1e-6)
            print(f"{title:40s} {label:9s} {f(m[key]):>18s} {jscol:>18s} {f(b[key]):>18s} {ratio:11.0f}x")
        print(f"{title:40s} {'snapshot':9s} {f(m['snapshot']):>18s} {'':>18s} {'':>18s}")
    from medlab.widgets import viewer as viewer_module

    slab = slab_cost(ct_volume((256, 512, 512)), (0.78, 0.78, 2.5), args.repeat)
    print(f"{'512x512x256 CT, streamed':40s} {'slab':9s} {f(slab):>18s}   (one {viewer_module.SLAB_BYTES / 2**20:.0f} MiB "
          "slab handed to the comm after an acknowledgement)")
    print("\nmedlab (Python): trait change -> message with the raw slice bytes ready for the comm.")
    print("medlab JS W/L: the viewer's greyPixels() loop in Node.js on the same slice (no canvas draw).")
    print("baseline: reused matplotlib figure, set_data/set_clim, savefig PNG, ipywidgets.Image.value.")


if __name__ == "__main__":
    main()

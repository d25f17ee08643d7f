// medlab slice viewer (anywidget ES module). Python sends raw slice voxels; this file does
// window/level, overlays, crosshair, points, readout. Pixel formulas match medlab/render.py.

const PLANES = ["axial", "coronal", "sagittal"];
const NORMAL = { axial: 2, coronal: 1, sagittal: 0 };
const TYPED = {
  int8: Int8Array, uint8: Uint8Array, int16: Int16Array, uint16: Uint16Array,
  int32: Int32Array, uint32: Uint32Array, float32: Float32Array, float64: Float64Array,
};

function typed(buf, dtype) {
  const T = TYPED[dtype];
  if (!T) throw new Error("unsupported voxel type " + dtype);
  let view = buf;
  if (buf instanceof ArrayBuffer) view = new DataView(buf);
  let { buffer, byteOffset, byteLength } = view;
  if (byteOffset % T.BYTES_PER_ELEMENT !== 0) {
    buffer = buffer.slice(byteOffset, byteOffset + byteLength);
    byteOffset = 0;
  }
  return new T(buffer, byteOffset, byteLength / T.BYTES_PER_ELEMENT);
}

function el(tag, cls, attrs = {}) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

// window/level exactly as medlab.render.window_level
function wlFunction(window, level) {
  const lo = level - window / 2;
  const k = 255 / window;
  return (x) => {
    let v = (x - lo) * k;
    v = v < 0 ? 0 : v > 255 ? 255 : v;
    return Math.floor(v + 0.5);
  };
}

function greyLevels(raw, dtype, window, level) {
  const f = wlFunction(window, level);
  const n = raw.length;
  const out = new Uint8Array(n);
  if (dtype === "int16" || dtype === "uint16" || dtype === "int8" || dtype === "uint8") {
    // a lookup table over the slice's own value range
    let lo = Infinity, hi = -Infinity;
    for (let i = 0; i < n; i++) { const v = raw[i]; if (v < lo) lo = v; if (v > hi) hi = v; }
    const lut = new Uint8Array(hi - lo + 1);
    for (let v = lo; v <= hi; v++) lut[v - lo] = f(v);
    for (let i = 0; i < n; i++) out[i] = lut[raw[i] - lo];
  } else {
    for (let i = 0; i < n; i++) out[i] = f(raw[i]);
  }
  return out;
}

function pixelToDisplay(plane, index, row, col, nk) {
  if (plane === "axial") return [col, row, index];
  if (plane === "coronal") return [col, index, nk - 1 - row];
  return [index, col, nk - 1 - row];
}

function displayToPixel(plane, ijk, nk) {
  const [i, j, k] = ijk;
  if (plane === "axial") return [j, i];
  if (plane === "coronal") return [nk - 1 - k, i];
  return [nk - 1 - k, j];
}

function apply(m, v) {
  const out = [];
  for (let r = 0; r < 3; r++) out.push(m[r][0] * v[0] + m[r][1] * v[1] + m[r][2] * v[2] + m[r][3]);
  return out;
}

function fmt(x, digits = 1) {
  return Number.isInteger(x) ? String(x) : x.toFixed(digits);
}

function render({ model, el: host }) {
  // the data-* attributes keep JupyterLab's keyboard shortcuts and context menu off the viewer
  const root = el("div", "medlab-viewer", { tabindex: "0", "data-lm-suppress-shortcuts": "true",
    "data-jp-suppress-context-menu": "true" });
  host.appendChild(root);

  // ---------------------------------------------------------------- toolbar
  const bar = el("div", "medlab-toolbar");
  const planeSel = el("select", "medlab-plane", { title: "plane" });
  for (const p of PLANES) planeSel.appendChild(new Option(p, p));
  const layoutSel = el("select", "medlab-layout", { title: "layout" });
  layoutSel.appendChild(new Option("one plane", "single"));
  layoutSel.appendChild(new Option("three planes", "three"));
  const wIn = el("input", "medlab-window", { type: "number", step: "any", title: "window (width)" });
  const lIn = el("input", "medlab-level", { type: "number", step: "any", title: "level (centre)" });
  const presetSel = el("select", "medlab-preset", { title: "window/level preset" });
  const pointBtn = el("button", "medlab-pointmode", { type: "button", title: "click to add points; drag to move; shift-click or right-click to remove" });
  pointBtn.textContent = "points";
  const label = (text, input) => { const l = el("label", "medlab-field"); l.append(text, input); return l; };
  bar.append(planeSel, layoutSel, label("W", wIn), label("L", lIn), presetSel, pointBtn);
  const panes = el("div", "medlab-panes");
  const readout = el("div", "medlab-readout");
  readout.textContent = "\u00a0";
  const legend = el("div", "medlab-legend");
  const status = el("div", "medlab-status");
  root.append(bar, panes, readout, legend, status);

  const state = { active: model.get("plane"), panes: {}, raw: {}, drag: null, drawn: {},
    volCache: {}, sliceCache: {} };

  function geometry() { return model.get("_geometry") || {}; }

  function fail(err) {
    console.error(err);
    status.textContent = "Error (browser): " + err.message;
    status.dataset.kind = "error";
    try { model.send({ type: "error", message: String(err && err.message || err) }); } catch (e) { /* closed */ }
  }
  const guard = (fn) => (...args) => { try { return fn(...args); } catch (err) { fail(err); } };

  // ---------------------------------------------------------------- slices
  // Small volumes arrive whole in `_volumes` (display order [k, j, i]): slices are cut here,
  // so scrolling needs no kernel round trip. Otherwise Python sends each slice in `_<plane>`.
  function volumeMode() {
    const v = model.get("_volumes"), g = geometry();
    return !!(v && v.shape && g.shape && v.shape[0] === g.shape[2] && v.shape[1] === g.shape[1] && v.shape[2] === g.shape[0]);
  }

  function volumeArray(name) {
    const vols = model.get("_volumes");
    if (state.volCache.vols !== vols) state.volCache = { vols, arrays: {} };
    const arrays = state.volCache.arrays;
    if (!(name in arrays)) arrays[name] = vols[name] ? typed(vols[name], vols[name + "_dtype"]) : null;
    return arrays[name];
  }

  function cutSlice(arr, plane, index, nk, nj, ni) {
    if (plane === "axial") return arr.subarray(index * nj * ni, (index + 1) * nj * ni);
    const T = arr.constructor;
    if (plane === "coronal") { // rows: k from top (superior) down, cols: i
      const out = new T(nk * ni);
      for (let r = 0; r < nk; r++) {
        const src = ((nk - 1 - r) * nj + index) * ni;
        out.set(arr.subarray(src, src + ni), r * ni);
      }
      return out;
    }
    const out = new T(nk * nj); // sagittal: rows k from the top, cols j
    for (let r = 0; r < nk; r++) {
      const base = (nk - 1 - r) * nj * ni + index;
      for (let c = 0; c < nj; c++) out[r * nj + c] = arr[base + c * ni];
    }
    return out;
  }

  function payload(plane) {
    const sent = model.get("_" + plane);
    if (!volumeMode()) return sent;
    const vols = model.get("_volumes");
    const [nk, nj, ni] = vols.shape;
    const count = { axial: nk, coronal: nj, sagittal: ni }[plane];
    const index = Math.max(0, Math.min(count - 1, currentCursor()[NORMAL[plane]]));
    const key = plane + ":" + index;
    if (state.sliceCache.vols === vols && state.sliceCache[key]) return state.sliceCache[key];
    if (state.sliceCache.vols !== vols) state.sliceCache = { vols };
    const shape = { axial: [nj, ni], coronal: [nk, ni], sagittal: [nk, nj] }[plane];
    const out = { index, rows: shape[0], cols: shape[1], dtype: vols.base_dtype,
      data: cutSlice(volumeArray("base"), plane, index, nk, nj, ni) };
    for (const name of ["labels", "heat", "second"]) {
      const arr = volumeArray(name);
      if (arr) { out[name] = cutSlice(arr, plane, index, nk, nj, ni); out[name + "_dtype"] = vols[name + "_dtype"]; }
    }
    state.sliceCache[key] = out;
    return out;
  }

  // ---------------------------------------------------------------- panes
  function visiblePlanes() {
    return model.get("layout_mode") === "three" ? PLANES : [model.get("plane")];
  }

  function buildPanes() {
    panes.replaceChildren();
    state.panes = {};
    root.dataset.layout = model.get("layout_mode");
    for (const plane of visiblePlanes()) {
      const pane = el("div", "medlab-pane", { "data-plane": plane });
      const stack = el("div", "medlab-stack");
      const canvas = el("canvas", "medlab-canvas", { "data-plane": plane });
      const overlay = el("canvas", "medlab-overlay", { "data-plane": plane });
      stack.append(canvas, overlay);
      const letters = {};
      for (const side of ["left", "right", "top", "bottom"]) {
        letters[side] = el("span", "medlab-letter medlab-" + side);
        stack.appendChild(letters[side]);
      }
      const title = el("div", "medlab-pane-title");
      const slider = el("input", "medlab-slice", { type: "range", min: "0", max: "0", step: "1", "data-plane": plane, title: plane + " slice" });
      pane.append(title, stack, slider);
      panes.appendChild(pane);
      const entry = { plane, pane, stack, canvas, overlay, letters, title, slider };
      state.panes[plane] = entry;
      wirePane(entry);
    }
    layout();
  }

  function planeSize(plane) {
    const g = geometry();
    const p = payload(plane) || {};
    const sp = g.spacing || [1, 1, 1];
    const colSp = plane === "sagittal" ? sp[1] : sp[0];
    const rowSp = plane === "axial" ? sp[1] : sp[2];
    return { cols: p.cols || 1, rows: p.rows || 1, width: (p.cols || 1) * colSp, height: (p.rows || 1) * rowSp };
  }

  function layout() {
    const planes = Object.keys(state.panes);
    if (!planes.length) return;
    const total = Math.max(root.clientWidth || host.clientWidth || 640, 200);
    const maxW = (total - 12 * planes.length) / planes.length;
    const maxH = model.get("height");
    let scale = Infinity;
    for (const plane of planes) {
      const s = planeSize(plane);
      scale = Math.min(scale, maxW / s.width, maxH / s.height);
    }
    for (const plane of planes) {
      const s = planeSize(plane);
      const entry = state.panes[plane];
      const w = Math.max(1, Math.round(s.width * scale));
      const h = Math.max(1, Math.round(s.height * scale));
      for (const c of [entry.canvas, entry.overlay]) {
        c.style.width = w + "px";
        c.style.height = h + "px";
      }
      entry.stack.style.width = w + "px";
      entry.stack.style.height = h + "px";
      entry.slider.style.width = w + "px";
      const dpr = window.devicePixelRatio || 1;
      entry.overlay.width = Math.round(w * dpr);
      entry.overlay.height = Math.round(h * dpr);
      drawOverlay(plane);
    }
  }

  // ---------------------------------------------------------------- drawing
  function drawPlane(plane) {
    const entry = state.panes[plane];
    const p = payload(plane);
    const g = geometry();
    if (!entry || !p || !p.data) return;
    const { rows, cols } = p;
    const n = rows * cols;
    const channels = g.channels || 1;
    const raw = typed(p.data, p.dtype);
    state.raw[plane] = { raw, rows, cols, dtype: p.dtype, index: p.index,
      labels: p.labels ? typed(p.labels, p.labels_dtype) : null };
    const canvas = entry.canvas;
    if (canvas.width !== cols || canvas.height !== rows) {
      canvas.width = cols;
      canvas.height = rows;
    }
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    const image = ctx.createImageData(cols, rows);
    const out = image.data;
    if (channels > 1) {
      for (let i = 0; i < n; i++) {
        out[4 * i] = raw[channels * i];
        out[4 * i + 1] = raw[channels * i + 1];
        out[4 * i + 2] = raw[channels * i + 2];
        out[4 * i + 3] = 255;
      }
      ctx.putImageData(image, 0, 0);
      drawn(canvas, p.index);
      return;
    }
    let grey = greyLevels(raw, p.dtype, model.get("window"), model.get("level"));
    const second = model.get("_second_info");
    if (p.second && second && second.mode) {
      const g2 = greyLevels(typed(p.second, p.second_dtype), p.second_dtype, second.window, second.level);
      const mixed = new Float64Array(n);
      const a = second.alpha;
      for (let i = 0; i < n; i++) {
        if (second.mode === "blend") mixed[i] = Math.floor(grey[i] * (1 - a) + g2[i] * a + 0.5);
        else if (second.mode === "difference") mixed[i] = Math.abs(grey[i] - g2[i]);
        else {
          const r = Math.floor(i / cols), c = i % cols;
          const odd = (Math.floor(r / second.checker) + Math.floor(c / second.checker)) % 2 === 1;
          mixed[i] = odd ? g2[i] : grey[i];
        }
      }
      grey = mixed;
    }
    const rgb = new Float64Array(3 * n);
    for (let i = 0; i < n; i++) rgb[3 * i] = rgb[3 * i + 1] = rgb[3 * i + 2] = grey[i];
    const heat = model.get("_heat_info");
    if (p.heat && heat && heat.lut) {
      const h = typed(p.heat, p.heat_dtype);
      const [vmin, vmax] = heat.range;
      const span = vmax > vmin ? vmax - vmin : 1;
      const op = heat.opacity;
      for (let i = 0; i < n; i++) {
        const v = h[i];
        if (!(v > heat.threshold)) continue;
        let t = (v - vmin) / span;
        t = t < 0 ? 0 : t > 1 ? 1 : t;
        const idx = Math.floor(t * 255 + 0.5);
        for (let c = 0; c < 3; c++) rgb[3 * i + c] = Math.floor(rgb[3 * i + c] * (1 - op) + heat.lut[3 * idx + c] * op + 0.5);
      }
    }
    const labels = model.get("_labels_info");
    if (p.labels && labels && labels.legend) {
      const lab = state.raw[plane].labels;
      const colors = {};
      for (const item of labels.legend) colors[item.value] = item.color;
      const outline = labels.outline;
      const alpha = outline ? 1 : labels.opacity;
      for (let i = 0; i < n; i++) {
        const v = lab[i];
        if (v === 0) continue;
        if (outline) {
          const r = Math.floor(i / cols), c = i % cols;
          const up = r > 0 ? lab[i - cols] : 0, down = r < rows - 1 ? lab[i + cols] : 0;
          const left = c > 0 ? lab[i - 1] : 0, right = c < cols - 1 ? lab[i + 1] : 0;
          if (up === v && down === v && left === v && right === v) continue;
        }
        const color = colors[v] || [255, 0, 0];
        for (let c = 0; c < 3; c++) rgb[3 * i + c] = Math.floor(rgb[3 * i + c] * (1 - alpha) + color[c] * alpha + 0.5);
      }
    }
    for (let i = 0; i < n; i++) {
      out[4 * i] = rgb[3 * i];
      out[4 * i + 1] = rgb[3 * i + 1];
      out[4 * i + 2] = rgb[3 * i + 2];
      out[4 * i + 3] = 255;
    }
    ctx.putImageData(image, 0, 0);
    drawn(canvas, p.index);
  }

  // Tells tests and benchmarks that a new picture is on the canvas (and which slice).
  function drawn(canvas, index) {
    state.drawn[canvas.dataset.plane] = { index, vols: model.get("_volumes") };
    canvas.dataset.drawnIndex = String(index);
    canvas.dispatchEvent(new CustomEvent("medlab-drawn", { bubbles: true, detail: { index, time: performance.now() } }));
  }

  function drawOverlay(plane) {
    const entry = state.panes[plane];
    const p = payload(plane);
    const g = geometry();
    if (!entry || !p || !g.shape) return;
    const ov = entry.overlay;
    const ctx = ov.getContext("2d");
    ctx.clearRect(0, 0, ov.width, ov.height);
    const sx = ov.width / p.cols, sy = ov.height / p.rows;
    const nk = g.shape[2];
    const cursor = model.get("_cursor");
    if (model.get("layout_mode") === "three" || g.ndim === 3) {
      const [row, col] = displayToPixel(plane, cursor, nk);
      ctx.strokeStyle = "rgba(0, 255, 0, 0.6)";
      ctx.lineWidth = 1;
      ctx.beginPath();
      ctx.moveTo((col + 0.5) * sx, 0); ctx.lineTo((col + 0.5) * sx, ov.height);
      ctx.moveTo(0, (row + 0.5) * sy); ctx.lineTo(ov.width, (row + 0.5) * sy);
      ctx.stroke();
    }
    const dpr = window.devicePixelRatio || 1;
    for (const m of markersOn(plane)) {
      ctx.strokeStyle = "#ff0";
      ctx.lineWidth = 2 * dpr;
      ctx.beginPath();
      ctx.arc((m.col + 0.5) * sx, (m.row + 0.5) * sy, 5 * dpr, 0, 2 * Math.PI);
      ctx.stroke();
    }
    // letters and titles
    const letters = g.letters ? g.letters[plane] : null;
    ["left", "right", "top", "bottom"].forEach((side, n) => { entry.letters[side].textContent = letters ? letters[n] : ""; });
    const count = g.shape[NORMAL[plane]];
    entry.slider.max = String(count - 1);
    entry.slider.value = String(p.index);
    entry.slider.disabled = count <= 1;
    entry.title.textContent = g.ndim === 3 ? `${plane} ${p.index + 1}/${count}` : "";
  }

  function markersOn(plane) {
    const g = geometry();
    const p = payload(plane);
    if (!g.inverse || !p) return [];
    const out = [];
    (model.get("points") || []).forEach((pt, n) => {
      const ijk = apply(g.inverse, pt);
      if (Math.abs(ijk[NORMAL[plane]] - p.index) > 0.5) return;
      const [row, col] = displayToPixel(plane, ijk, g.shape[2]);
      out.push({ n, row, col });
    });
    return out;
  }

  function redrawAll() {
    for (const plane of Object.keys(state.panes)) { drawPlane(plane); drawOverlay(plane); }
  }

  // ---------------------------------------------------------------- interaction
  function pixelAt(entry, ev) {
    const p = payload(entry.plane);
    const rect = entry.overlay.getBoundingClientRect();
    const x = (ev.clientX - rect.left) * p.cols / rect.width;
    const y = (ev.clientY - rect.top) * p.rows / rect.height;
    return { row: Math.min(p.rows - 1, Math.max(0, Math.floor(y))), col: Math.min(p.cols - 1, Math.max(0, Math.floor(x))), x, y, p, rect };
  }

  function physicalAt(entry, px) {
    const g = geometry();
    const ijk = pixelToDisplay(entry.plane, px.p.index, px.row, px.col, g.shape[2]);
    return { ijk, mm: apply(g.affine, ijk) };
  }

  function nearMarker(entry, ev) {
    const px = pixelAt(entry, ev);
    const p = px.p;
    let best = null;
    for (const m of markersOn(entry.plane)) {
      const dx = ((m.col + 0.5) - px.x) * px.rect.width / p.cols;
      const dy = ((m.row + 0.5) - px.y) * px.rect.height / p.rows;
      const d = Math.hypot(dx, dy);
      if (d <= 8 && (!best || d < best.d)) best = { n: m.n, d };
    }
    return best;
  }

  function setPosition(mm) {
    model.set("position", mm);
    model.save_changes();
  }

  // The cursor the user asked for, until Python's reply catches up (fast key repeats and
  // wheel ticks step from it, not from a stale _cursor).
  function currentCursor() {
    const pending = state.pending;
    if (pending && performance.now() - pending.t < 1000) return pending.cursor.slice();
    return model.get("_cursor").slice();
  }

  function setSlice(plane, index) {
    const g = geometry();
    if (!g.shape) return;
    const count = g.shape[NORMAL[plane]];
    index = Math.max(0, Math.min(count - 1, index));
    const cursor = currentCursor();
    if (cursor[NORMAL[plane]] === index) return;
    cursor[NORMAL[plane]] = index;
    state.pending = { cursor, t: performance.now() };
    redrawLocal();
    setPosition(apply(g.affine, cursor));
  }

  // In volume mode, show the pending cursor's slices now; Python confirms afterwards.
  function redrawLocal() {
    if (!volumeMode()) return;
    for (const p of Object.keys(state.panes)) {
      const d = state.drawn[p];
      if (!d || d.index !== payload(p).index || d.vols !== model.get("_volumes")) drawPlane(p);
      drawOverlay(p);
    }
  }

  function stepSlice(plane, step) {
    setSlice(plane, currentCursor()[NORMAL[plane]] + step);
  }

  function setPoints(points) {
    model.set("points", points);
    model.save_changes();
  }

  let wlFrame = 0;
  function setWindowLevel(w, l) {
    model.set("window", Math.max(w, 1e-6));
    model.set("level", l);
    if (!wlFrame) {
      wlFrame = requestAnimationFrame(() => { wlFrame = 0; model.save_changes(); });
    }
  }

  function updateReadout(entry, ev) {
    const g = geometry();
    const cache = state.raw[entry.plane];
    if (!cache || !g.shape) return;
    const px = pixelAt(entry, ev);
    const { ijk, mm } = physicalAt(entry, px);
    const idx = apply(g.to_index, ijk).map((v) => Math.round(v));
    const i = px.row * cache.cols + px.col;
    const ch = g.channels || 1;
    let value;
    if (ch > 1) value = Array.from(cache.raw.slice(ch * i, ch * i + ch)).join(", ");
    else value = fmt(cache.raw[i], 4) + (g.units ? " " + g.units : "");
    const d = g.ndim === 2 ? 2 : 3;
    let text = `voxel (${idx.slice(0, d).join(", ")})  ·  (${mm.slice(0, d).map((v) => v.toFixed(1)).join(", ")}) mm  ·  ${value}`;
    const info = model.get("_labels_info");
    if (cache.labels && info && info.legend) {
      const v = cache.labels[i];
      if (v) {
        const item = info.legend.find((it) => it.value === v);
        text += "  ·  " + (item ? item.name : "label " + v);
      }
    }
    readout.textContent = text;
  }

  function wirePane(entry) {
    const ov = entry.overlay;
    ov.addEventListener("contextmenu", (ev) => { ev.preventDefault(); ev.stopPropagation(); });
    ov.addEventListener("mousedown", guard((ev) => {
      ev.preventDefault();
      root.focus({ preventScroll: true });
      state.active = entry.plane;
      const editing = model.get("point_mode") === "edit";
      if (ev.button === 2 || (ev.button === 0 && ev.shiftKey && !editing)) {
        state.drag = { kind: "wl", entry, x: ev.clientX, y: ev.clientY, w: model.get("window"), l: model.get("level"), moved: false };
        return;
      }
      if (ev.button !== 0) return;
      if (editing) {
        const near = nearMarker(entry, ev);
        if (near && (ev.shiftKey || ev.altKey)) {
          setPoints(model.get("points").filter((_, n) => n !== near.n));
        } else if (near) {
          state.drag = { kind: "point", entry, n: near.n };
        } else {
          const { mm } = physicalAt(entry, pixelAt(entry, ev));
          setPoints([...model.get("points"), mm]);
        }
        return;
      }
      const { ijk, mm } = physicalAt(entry, pixelAt(entry, ev));
      state.pending = { cursor: ijk, t: performance.now() };
      redrawLocal();
      setPosition(mm);
      state.drag = { kind: "cursor", entry };
    }));
    ov.addEventListener("mousemove", guard((ev) => updateReadout(entry, ev)));
    ov.addEventListener("mouseenter", () => { state.active = entry.plane; });
    ov.addEventListener("wheel", guard((ev) => {
      ev.preventDefault();
      stepSlice(entry.plane, ev.deltaY > 0 ? -1 : 1);
    }), { passive: false });
    entry.slider.addEventListener("input", guard(() => setSlice(entry.plane, parseInt(entry.slider.value, 10))));
  }

  const onMove = guard((ev) => {
    const d = state.drag;
    if (!d) return;
    if (d.kind === "wl") {
      const dx = ev.clientX - d.x, dy = ev.clientY - d.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) d.moved = true;
      if (d.moved) setWindowLevel(d.w * Math.exp(dx / 200), d.l - dy * d.w / 200);
    } else if (d.kind === "point") {
      const { mm } = physicalAt(d.entry, pixelAt(d.entry, ev));
      const pts = model.get("points").slice();
      pts[d.n] = mm;
      model.set("points", pts);
      drawOverlay(d.entry.plane);
    } else if (d.kind === "cursor") {
      const { ijk, mm } = physicalAt(d.entry, pixelAt(d.entry, ev));
      const c = currentCursor();
      if (ijk.every((v, i) => v === c[i])) return;
      state.pending = { cursor: ijk, t: performance.now() };
      redrawLocal();
      setPosition(mm);
    }
  });
  const onUp = guard((ev) => {
    const d = state.drag;
    state.drag = null;
    if (!d) return;
    if (d.kind === "point") model.save_changes();
    if (d.kind === "wl") {
      if (!d.moved && model.get("point_mode") === "edit") {
        const near = nearMarker(d.entry, ev);
        if (near) setPoints(model.get("points").filter((_, n) => n !== near.n));
      } else {
        model.save_changes();
      }
    }
  });
  window.addEventListener("mousemove", onMove);
  window.addEventListener("mouseup", onUp);

  root.addEventListener("keydown", guard((ev) => {
    const steps = { ArrowUp: 1, ArrowRight: 1, ArrowDown: -1, ArrowLeft: -1, PageUp: 10, PageDown: -10 };
    if (!(ev.key in steps) || ev.target.tagName === "INPUT" || ev.target.tagName === "SELECT") return;
    ev.preventDefault();
    ev.stopPropagation();
    const plane = state.panes[state.active] ? state.active : model.get("plane");
    stepSlice(plane, steps[ev.key]);
  }));

  planeSel.addEventListener("change", () => { model.set("plane", planeSel.value); model.save_changes(); });
  layoutSel.addEventListener("change", () => { model.set("layout_mode", layoutSel.value); model.save_changes(); });
  const onWL = () => {
    const w = parseFloat(wIn.value), l = parseFloat(lIn.value);
    if (!(w > 0) || !Number.isFinite(l)) { fail(new Error("window must be a positive number and level a number")); return; }
    model.set("window", w);
    model.set("level", l);
    model.save_changes();
  };
  wIn.addEventListener("change", onWL);
  lIn.addEventListener("change", onWL);
  // JupyterLab takes Enter (run cell) before a number box commits: stop it here, as ipywidgets do.
  for (const input of [wIn, lIn]) {
    input.addEventListener("keydown", (ev) => {
      ev.stopPropagation();
      if (ev.key === "Enter") onWL();
    });
  }
  presetSel.addEventListener("change", () => {
    const wl = (model.get("_presets") || {})[presetSel.value];
    if (wl) { model.set("window", wl[0]); model.set("level", wl[1]); model.save_changes(); }
  });
  pointBtn.addEventListener("click", () => {
    model.set("point_mode", model.get("point_mode") === "edit" ? "off" : "edit");
    model.save_changes();
  });

  // ---------------------------------------------------------------- model -> view
  function syncControls() {
    planeSel.value = model.get("plane");
    layoutSel.value = model.get("layout_mode");
    const g = geometry();
    planeSel.disabled = layoutSel.disabled = g.ndim === 2;
    const w = model.get("window"), l = model.get("level");
    if (document.activeElement !== wIn) wIn.value = +w.toPrecision(6);
    if (document.activeElement !== lIn) lIn.value = +l.toPrecision(6);
    const presets = model.get("_presets") || {};
    const names = Object.keys(presets);
    if (presetSel.options.length !== names.length + 1 || names.some((n, i) => presetSel.options[i + 1].value !== n)) {
      presetSel.replaceChildren(new Option("preset…", ""));
      for (const n of names) presetSel.appendChild(new Option(n, n));
    }
    const match = names.find((n) => presets[n][0] === w && presets[n][1] === l);
    presetSel.value = match || "";
    const mode = model.get("point_mode");
    pointBtn.dataset.mode = mode;
    pointBtn.setAttribute("aria-pressed", String(mode === "edit"));
    root.classList.toggle("medlab-editing", mode === "edit");
  }

  function syncStatus() {
    status.textContent = model.get("status");
    status.dataset.kind = model.get("status_kind");
  }

  function syncLegend() {
    legend.replaceChildren();
    const info = model.get("_labels_info");
    if (!info || !info.legend) return;
    for (const item of info.legend) {
      const entry = el("span", "medlab-legend-item", { "data-value": String(item.value) });
      const sw = el("span", "medlab-swatch");
      sw.style.background = `rgb(${item.color.join(",")})`;
      entry.append(sw, item.name);
      legend.appendChild(entry);
    }
  }

  // window and level often change together (a preset): draw once, after both
  let wlQueued = false;
  function onWindowLevel() {
    if (wlQueued) return;
    wlQueued = true;
    queueMicrotask(guard(() => {
      wlQueued = false;
      syncControls();
      for (const p of Object.keys(state.panes)) drawPlane(p);
    }));
  }

  function slicePayloadArrived(plane) {
    layout();
    const d = state.drawn[plane];
    const fresh = volumeMode() && d && d.index === payload(plane).index && d.vols === model.get("_volumes");
    if (!fresh) drawPlane(plane);
    drawOverlay(plane);
  }

  const handlers = [
    ["change:layout_mode change:plane", guard(() => { buildPanes(); syncControls(); redrawAll(); })],
    ["change:window change:level", onWindowLevel],
    ["change:_axial", guard(() => slicePayloadArrived("axial"))],
    ["change:_coronal", guard(() => slicePayloadArrived("coronal"))],
    ["change:_sagittal", guard(() => slicePayloadArrived("sagittal"))],
    ["change:_volumes", guard(() => { layout(); redrawAll(); })],
    ["change:_cursor", guard(() => {
      const c = model.get("_cursor"), p = state.pending;
      if (p && p.cursor.every((v, i) => v === c[i])) state.pending = null;
      // Python moved elsewhere (or echoes an older step): once the pending cursor expires,
      // show where Python is.
      else if (p) setTimeout(guard(redrawLocal), Math.max(0, 1010 - (performance.now() - p.t)));
      redrawLocal();
    })],
    ["change:_cursor change:points", guard(() => { for (const p of Object.keys(state.panes)) drawOverlay(p); })],
    ["change:point_mode change:_presets change:_geometry", guard(() => { syncControls(); layout(); })],
    ["change:_labels_info", guard(() => { syncLegend(); redrawAll(); })],
    ["change:_heat_info change:_second_info", guard(() => redrawAll())],
    ["change:status change:status_kind", syncStatus],
    ["change:height", guard(() => layout())],
  ];
  for (const [ev, fn] of handlers) model.on(ev, fn);

  const resize = new ResizeObserver(guard(() => layout()));
  resize.observe(root);

  guard(() => { buildPanes(); syncControls(); syncLegend(); syncStatus(); redrawAll(); })();

  return () => {
    for (const [ev, fn] of handlers) model.off(ev, fn);
    window.removeEventListener("mousemove", onMove);
    window.removeEventListener("mouseup", onUp);
    resize.disconnect();
  };
}

export default { render };

// medlab viewer · drawing one plane: grey levels, second image, heat map and labels composed
// into the canvas, one canvas pixel per voxel (formulas match medlab.render.compose).

function drawPlane(ctx, plane) {
  const entry = ctx.state.panes[plane];
  const t0 = performance.now();
  const p = payload(ctx, plane);
  ctx.state.phases = { t0, cut: performance.now() - t0 };
  const g = geometry(ctx);
  const model = ctx.model;
  if (!entry || !p || !p.data) return;
  const { rows, cols } = p;
  const n = rows * cols;
  const channels = g.channels || 1;
  const raw = typed(p.data, p.dtype);
  ctx.state.raw[plane] = { raw, rows, cols, dtype: p.dtype, index: p.index,
    labels: p.labels ? typed(p.labels, p.labels_dtype) : null };
  const canvas = entry.canvas;
  if (canvas.width !== cols || canvas.height !== rows) {
    canvas.width = cols;
    canvas.height = rows;
  }
  const c2d = canvas.getContext("2d", { willReadFrequently: true });
  // one ImageData per pane, reused while the size stays (no 1 MB allocation per step)
  if (!entry.image || entry.image.width !== cols || entry.image.height !== rows) entry.image = c2d.createImageData(cols, rows);
  const image = entry.image;
  const out = image.data;
  if (channels > 1) {
    for (let i = 0; i < n; i++) {
      out[4 * i] = raw[channels * i];
      out[4 * i + 1] = raw[channels * i + 1];
      out[4 * i + 2] = raw[channels * i + 2];
      out[4 * i + 3] = 255;
    }
    putPixels(ctx, c2d, image);
    drawn(ctx, canvas, p);
    return;
  }
  const second = model.get("_second_info"), heat = model.get("_heat_info"), labels = model.get("_labels_info");
  const withSecond = p.second && second && second.mode;
  const withHeat = p.heat && heat && heat.lut;
  const withLabels = p.labels && labels && labels.legend;
  if (!withSecond && !withHeat && !withLabels) {
    // grey only (the common case, and every slice step): one 32-bit write per pixel
    greyPixels(new Uint32Array(out.buffer, out.byteOffset, n), raw, p.dtype, model.get("window"), model.get("level"));
    putPixels(ctx, c2d, image);
    drawn(ctx, canvas, p);
    return;
  }
  let grey = greyLevels(raw, p.dtype, model.get("window"), model.get("level"));
  if (withSecond) grey = mixSecond(grey, typed(p.second, p.second_dtype), p.second_dtype, second, rows, cols);
  const rgb = new Float64Array(3 * n);
  for (let i = 0; i < n; i++) rgb[3 * i] = rgb[3 * i + 1] = rgb[3 * i + 2] = grey[i];
  if (withHeat) blendHeat(rgb, typed(p.heat, p.heat_dtype), heat);
  if (withLabels) blendLabels(rgb, ctx.state.raw[plane].labels, labels, rows, cols);
  for (let i = 0; i < n; i++) {
    out[4 * i] = rgb[3 * i];
    out[4 * i + 1] = rgb[3 * i + 1];
    out[4 * i + 2] = rgb[3 * i + 2];
    out[4 * i + 3] = 255;
  }
  putPixels(ctx, c2d, image);
  drawn(ctx, canvas, p);
}

// the picture onto the canvas; the time since the cut (colours) and of the put are recorded
function putPixels(ctx, c2d, image) {
  const ph = ctx.state.phases, t1 = performance.now();
  c2d.putImageData(image, 0, 0);
  if (ph) { ph.colour = t1 - ph.t0 - ph.cut; ph.put = performance.now() - t1; }
}

// opaque grey RGBA as one little-endian 32-bit word per grey level (every browser's byte order)
const GREY_RGBA = (() => {
  const pal = new Uint32Array(256);
  for (let v = 0; v < 256; v++) pal[v] = (0xff000000 | (v << 16) | (v << 8) | v) >>> 0;
  return pal;
})();

const INT_RANGE = { int8: [-128, 127], uint8: [0, 255], int16: [-32768, 32767], uint16: [0, 65535] };

// RGBA words for every value of a small integer type at this window/level (256 KiB for 16 bits),
// made once per window/level and shared by every pane: a slice step only looks values up
let RGBA_TABLE = null;
function rgbaTable(dtype, window, level) {
  const t = RGBA_TABLE;
  if (t && t.dtype === dtype && t.window === window && t.level === level) return t.lut;
  const [lo, hi] = INT_RANGE[dtype];
  const f = wlFunction(window, level);
  const lut = new Uint32Array(hi - lo + 1);
  for (let v = lo; v <= hi; v++) lut[v - lo] = GREY_RGBA[f(v)];
  RGBA_TABLE = { dtype, window, level, lut };
  return lut;
}

// window/level straight into RGBA words: the table of the integer type's whole range for
// integer voxels, the window/level function per pixel for floats (same values as greyLevels)
function greyPixels(out32, raw, dtype, window, level) {
  const n = raw.length;
  const lut = INT_RANGE[dtype] ? rgbaTable(dtype, window, level) : null;
  if (lut) {
    const lo = INT_RANGE[dtype][0];
    for (let i = 0; i < n; i++) out32[i] = lut[raw[i] - lo];
  } else {
    const f = wlFunction(window, level);
    for (let i = 0; i < n; i++) { const v = f(raw[i]); out32[i] = v >= 0 ? GREY_RGBA[v] : GREY_RGBA[0]; }  // NaN: black
  }
}

function mixSecond(grey, raw2, dtype2, second, rows, cols) {
  const n = rows * cols;
  const g2 = greyLevels(raw2, dtype2, second.window, second.level);
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
  return mixed;
}

function blendHeat(rgb, h, heat) {
  const [vmin, vmax] = heat.range;
  const span = vmax > vmin ? vmax - vmin : 1;
  const op = heat.opacity;
  for (let i = 0; i < h.length; i++) {
    const v = h[i];
    if (!(v > heat.threshold)) continue;
    let t = (v - vmin) / span;
    t = t < 0 ? 0 : t > 1 ? 1 : t;
    const idx = Math.floor(t * 255 + 0.5);
    for (let c = 0; c < 3; c++) rgb[3 * i + c] = Math.floor(rgb[3 * i + c] * (1 - op) + heat.lut[3 * idx + c] * op + 0.5);
  }
}

function blendLabels(rgb, lab, labels, rows, cols) {
  const colors = {};
  for (const item of labels.legend) colors[item.value] = item.color;
  const outline = labels.outline;
  const alpha = outline ? 1 : labels.opacity;
  const n = rows * cols;
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

// Tells tests and benchmarks that a new picture is on the canvas (which slice, and whether its
// voxels were held in the browser or came from the kernel).
function drawn(ctx, canvas, p) {
  const index = p.index, local = !!p.local;
  ctx.state.drawn[canvas.dataset.plane] = { index, src: p };
  canvas.dataset.drawnIndex = String(index);
  canvas.dataset.drawnFrom = local ? "browser" : "kernel";
  const time = performance.now();
  const ph = ctx.state.phases;
  let cut = ctx.state.lastCut;
  if (cut && (cut.plane !== canvas.dataset.plane || cut.index !== index)) cut = null;
  // where the step's time went (ms): cutting the slice (0 when it was cut before), colours, putImageData
  const phases = ph && ph.put !== undefined
    ? { cut: cut ? cut.ms : ph.cut, colour: ph.colour, put: ph.put, how: cut ? cut.how : "cached" } : null;
  ctx.state.phases = null;
  ctx.state.lastCut = null;
  canvas.dispatchEvent(new CustomEvent("medlab-drawn", { bubbles: true, detail: { index, local, time, phases } }));
}

// whether the plane already shows exactly what payload() gives now
function isDrawn(ctx, plane) {
  const d = ctx.state.drawn[plane];
  return !!d && d.src === payload(ctx, plane);
}

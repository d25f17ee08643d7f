// medlab viewer · the widget: builds the DOM, keeps the panes laid out, and redraws what a
// model change affects. Python sends raw voxels and the display geometry; this module does
// window/level, overlays, crosshair, points and the readout.

function buildPanes(ctx) {
  const { model, state, dom } = ctx;
  dom.panes.replaceChildren();
  state.panes = {};
  dom.root.dataset.layout = model.get("layout_mode");
  const planes = model.get("layout_mode") === "three" ? PLANES : [model.get("plane")];
  for (const plane of planes) {
    const pane = el("div", "medlab-pane", { "data-plane": plane });
    const stack = el("div", "medlab-stack");
    const canvas = el("canvas", "medlab-canvas", { "data-plane": plane });
    const overlay = el("canvas", "medlab-overlay", { "data-plane": plane });
    const title = el("div", "medlab-pane-title");
    const info = el("div", "medlab-pane-info");
    stack.append(canvas, overlay, title, info);
    const letters = {};
    for (const side of ["left", "right", "top", "bottom"]) {
      letters[side] = el("span", "medlab-letter medlab-" + side);
      stack.appendChild(letters[side]);
    }
    const slider = el("input", "medlab-slice", { type: "range", min: "0", max: "0", step: "1", "data-plane": plane, title: plane + " slice" });
    pane.append(stack, slider);
    dom.panes.appendChild(pane);
    const entry = { plane, pane, stack, canvas, overlay, letters, title, info, slider };
    state.panes[plane] = entry;
    wirePane(ctx, entry);
  }
  layout(ctx);
}

function planeSize(ctx, plane) {
  const pg = planeGeom(ctx, plane);
  if (!pg) return { width: 1, height: 1 };
  return { width: pg.cols * pg.pixel_mm[0], height: pg.rows * pg.pixel_mm[1] };
}

// Room around the panes inside the widget's host: the root's padding (4 px a side) and the
// image area's (2 px a side), from viewer.css.
const CHROME_PX = 12;
const PANE_GAP_PX = 4;

// Every pane gets the same height, and the width of its slice's physical aspect: a row of three
// planes leaves no black band below a shorter one, and together they are as wide as the notebook
// allows (each pane its own zoom, as workstations fit each view to its window). The root is only
// as wide as its panes (or its toolbar), so no black area is left beside them.
function layout(ctx) {
  const { state, dom, model } = ctx;
  const planes = Object.keys(state.panes);
  if (!planes.length) return;
  const room = Math.max((dom.host.clientWidth || 640) - CHROME_PX - PANE_GAP_PX * (planes.length - 1), 120);
  const aspects = planes.map((plane) => { const s = planeSize(ctx, plane); return s.width / s.height; });
  const height = Math.min(model.get("height"), room / aspects.reduce((a, b) => a + b, 0));
  const dpr = window.devicePixelRatio || 1;
  planes.forEach((plane, n) => {
    const entry = state.panes[plane];
    const w = Math.max(1, Math.floor(aspects[n] * height));
    const h = Math.max(1, Math.floor(height));
    const size = `${w}x${h}@${dpr}`;
    if (entry.size === size) return;  // unchanged: setting a canvas's size clears and reallocates it
    entry.size = size;
    for (const c of [entry.canvas, entry.overlay]) {
      c.style.width = w + "px";
      c.style.height = h + "px";
    }
    entry.stack.style.width = w + "px";
    entry.stack.style.height = h + "px";
    entry.slider.style.width = w + "px";
    entry.overlay.width = Math.round(w * dpr);
    entry.overlay.height = Math.round(h * dpr);
    drawOverlay(ctx, plane);
  });
}

function redrawAll(ctx) {
  for (const p of Object.keys(ctx.state.panes)) { drawPlane(ctx, p); drawOverlay(ctx, p); }
}

function render({ model, el: host }) {
  // the data-* attributes keep JupyterLab's keyboard shortcuts and context menu off the viewer
  const root = el("div", "medlab-viewer", { tabindex: "0", "data-lm-suppress-shortcuts": "true",
    "data-jp-suppress-context-menu": "true" });
  // as wide as the panes or the toolbar (up to the host's width): no empty black area beside them
  root.style.width = "fit-content";
  host.appendChild(root);
  const ctx = { model, state: { active: model.get("plane"), panes: {}, raw: {}, drag: null, drawn: {},
    volCache: {}, sliceCache: {}, pending: null, wlFrame: 0, lastIndex: {}, prefetch: null }, dom: { root, host } };
  ctx.fail = (err) => {
    console.error(err);
    ctx.dom.status.textContent = "Error (browser): " + err.message;
    ctx.dom.status.dataset.kind = "error";
    try { model.send({ type: "error", message: String(err && err.message || err) }); } catch (e) { /* closed */ }
  };
  ctx.guard = (fn) => (...args) => { try { return fn(...args); } catch (err) { ctx.fail(err); } };
  const guard = ctx.guard;

  const bar = buildToolbar(ctx);
  const image = el("div", "medlab-image-area");
  const panes = el("div", "medlab-panes");
  const readout = el("div", "medlab-readout");
  readout.textContent = "\u00a0";
  image.append(panes, readout);
  const legend = el("div", "medlab-legend");
  const pointsets = el("div", "medlab-pointsets");
  const status = el("div", "medlab-status");
  root.append(bar, image, pointsets, legend, status);
  // text and chips below the panes wrap at the panes' width instead of widening the root
  for (const e of [readout, legend, pointsets, status]) Object.assign(e.style, { width: "0", minWidth: "100%", boxSizing: "border-box" });
  panes.style.justifyContent = "center";
  Object.assign(ctx.dom, { panes, readout, legend, pointsets, status });
  const unwire = wireWindow(ctx);

  // window and level often change together (a preset): draw once, after both
  let wlQueued = false;
  function onWindowLevel() {
    if (wlQueued) return;
    wlQueued = true;
    queueMicrotask(guard(() => {
      wlQueued = false;
      syncControls(ctx);
      for (const p of Object.keys(ctx.state.panes)) { drawPlane(ctx, p); drawOverlay(ctx, p); }
    }));
  }

  function slicePayloadArrived(plane) {
    layout(ctx);
    if (!isDrawn(ctx, plane)) drawPlane(ctx, plane);
    drawOverlay(ctx, plane);
  }

  const overlays = () => { for (const p of Object.keys(ctx.state.panes)) drawOverlay(ctx, p); };
  const handlers = [
    ["change:layout_mode change:plane", guard(() => { buildPanes(ctx); syncControls(ctx); redrawAll(ctx); })],
    ["change:window change:level", onWindowLevel],
    ["change:_axial", guard(() => slicePayloadArrived("axial"))],
    ["change:_coronal", guard(() => slicePayloadArrived("coronal"))],
    ["change:_sagittal", guard(() => slicePayloadArrived("sagittal"))],
    ["change:_volumes", guard(() => { layout(ctx); redrawAll(ctx); })],
    ["change:_cursor", guard(() => {
      // Python moved elsewhere (not one of the steps on their way): show where Python is
      if (cursorEchoed(ctx, model.get("_cursor"))) ctx.state.pending = null;
      redrawLocal(ctx);
      overlays();
    })],
    ["change:point_sets change:active_set", guard(() => { overlays(); syncPointSets(ctx); syncControls(ctx); })],
    ["change:point_mode change:_presets change:_geometry change:interpolation", guard(() => { syncControls(ctx); layout(ctx); overlays(); })],
    ["change:_labels_info", guard(() => { syncLegend(ctx); redrawAll(ctx); })],
    ["change:_heat_info change:_second_info", guard(() => redrawAll(ctx))],
    ["change:status change:status_kind", () => syncStatus(ctx)],
    ["change:height", guard(() => layout(ctx))],
  ];
  for (const [ev, fn] of handlers) model.on(ev, fn);

  // the host follows the notebook's width (the root follows its panes)
  const resize = new ResizeObserver(guard(() => layout(ctx)));
  resize.observe(host);

  guard(() => { buildPanes(ctx); syncControls(ctx); syncLegend(ctx); syncPointSets(ctx); syncStatus(ctx); redrawAll(ctx); })();
  const unstream = watchStream(ctx);

  return () => {
    for (const [ev, fn] of handlers) model.off(ev, fn);
    unwire();
    unstream();
    resize.disconnect();
  };
}

// A shown view starts the stream of a large volume; as slabs arrive, a slice step still waiting
// for the kernel is drawn as soon as its slab is here. The root's data-streamed ("held/total"
// slabs), data-cache-bytes (slabs) and data-copy-bytes (their transposed copies, for sagittal
// slices) tell tests and benchmarks what the browser holds.
function watchStream(ctx) {
  const { model, dom } = ctx;
  let rec = null;
  const show = (r) => {
    dom.root.dataset.streamed = r ? `${streamHeld(r)}/${r.info.slabs}` : "";
    dom.root.dataset.cacheBytes = String(r ? r.bytes : 0);
    dom.root.dataset.copyBytes = String(r ? r.copyBytes : 0);  // the slabs' transposed copies (stream.js)
  };
  const onSlab = ctx.guard((r, what) => {
    show(r);
    if (what === "copy") return;  // a slab's transposed copy is ready (nothing new to draw)
    if (streamComplete(r)) dom.root.dispatchEvent(new CustomEvent("medlab-streamed", { bubbles: true, detail: { time: performance.now() } }));
    redrawLocal(ctx);
  });
  const bind = (r) => {
    if (rec) { rec.views -= 1; rec.listeners.delete(onSlab); }
    rec = r;
    if (rec) { rec.views += 1; rec.listeners.add(onSlab); }
  };
  const onStream = ctx.guard(() => {
    const r = STREAMS.get((model.get("_stream") || {}).id) || null;
    if (r !== rec) bind(r);
    const current = streamRecord(model);
    show(current);
    streamReady(current);
  });
  model.on("change:_stream", onStream);
  onStream();
  return () => {
    bind(null);
    model.off("change:_stream", onStream);
  };
}

export default { initialize, render };

// medlab viewer · interaction: clicks, drags, wheel and keys become model changes (position,
// window/level, points of the active point set); the readout follows the mouse.

function pixelAt(ctx, entry, ev) {
  const p = payload(ctx, entry.plane);
  const rect = entry.overlay.getBoundingClientRect();
  const x = (ev.clientX - rect.left) * p.cols / rect.width;
  const y = (ev.clientY - rect.top) * p.rows / rect.height;
  return { row: Math.min(p.rows - 1, Math.max(0, Math.floor(y))), col: Math.min(p.cols - 1, Math.max(0, Math.floor(x))), x, y, p, rect };
}

// display index and LPS mm of the voxel centre under pixel px
function physicalAt(ctx, entry, px) {
  const pg = planeGeom(ctx, entry.plane);
  const v = [px.col, px.row, px.p.index];
  return { ijk: apply(pg.to_display, v), mm: apply(pg.to_mm, v) };
}

function nearMarker(ctx, entry, ev, onlySet) {
  const px = pixelAt(ctx, entry, ev);
  const p = px.p;
  let best = null;
  for (const m of markersOn(ctx, entry.plane)) {
    if (onlySet && m.set !== onlySet) continue;
    const dx = ((m.col + 0.5) - px.x) * px.rect.width / p.cols;
    const dy = ((m.row + 0.5) - px.y) * px.rect.height / p.rows;
    const d = Math.hypot(dx, dy);
    if (d <= 8 && (!best || d < best.d)) best = { set: m.set, n: m.n, d };
  }
  return best;
}

function setPosition(ctx, mm) {
  ctx.model.set("position", mm);
  ctx.model.save_changes();
}

function setSlice(ctx, plane, index) {
  const pg = planeGeom(ctx, plane);
  if (!pg) return;
  index = Math.max(0, Math.min(pg.count - 1, index));
  const cursor = currentCursor(ctx);
  const [col, row, now] = apply(pg.from_display, cursor);
  if (Math.round(now) === index) return;
  const next = apply(pg.to_display, [col, row, index]).map((v) => Math.round(v));
  setPending(ctx, next);
  redrawLocal(ctx);
  setPosition(ctx, apply(geometry(ctx).affine, next));
}

// The cursor the user asked for, shown at once; `steps` are the cursors sent to Python and not yet
// echoed, so an echo of an older step is known as such while Python catches up.
function setPending(ctx, cursor) {
  const old = ctx.state.pending;
  const steps = old ? old.steps.slice(-255) : [];
  steps.push(cursor);
  ctx.state.pending = { cursor, t: performance.now(), steps };
}

// Python's cursor changed: it reached the pending cursor (done), or an older step (still on
// its way: keep the pending cursor alive), or somewhere else. Returns whether Python is elsewhere.
function cursorEchoed(ctx, c) {
  const p = ctx.state.pending;
  if (!p) return false;
  const same = (a) => a.every((v, i) => v === c[i]);
  if (same(p.cursor)) { ctx.state.pending = null; return false; }
  const n = p.steps.findIndex(same);
  if (n < 0) return true;
  p.steps = p.steps.slice(n + 1);
  p.t = performance.now();
  return false;
}

function stepSlice(ctx, plane, step) {
  setSlice(ctx, plane, cursorIndex(ctx, plane, currentCursor(ctx)) + step);
}

// Show the pending cursor's slices now wherever the browser holds their voxels; Python
// confirms afterwards (and sends the slices the browser lacks).
function redrawLocal(ctx) {
  for (const p of Object.keys(ctx.state.panes)) {
    const shown = payload(ctx, p);
    if (!shown || !shown.local) continue;
    if (!isDrawn(ctx, p)) drawPlane(ctx, p);
    drawOverlay(ctx, p);
  }
}

// replace the points of one set (the active one unless named) and send them to Python
function setPoints(ctx, points, name, save = true) {
  name = name || ctx.model.get("active_set");
  const sets = pointSets(ctx).map((s) => (s.name === name ? { ...s, points } : s));
  ctx.model.set("point_sets", sets);
  if (save) ctx.model.save_changes();
}

function pointsOf(ctx, name) {
  const set = pointSets(ctx).find((s) => s.name === name);
  return set ? (set.points || []).slice() : [];
}

function setWindowLevel(ctx, w, l) {
  ctx.model.set("window", Math.max(w, 1e-6));
  ctx.model.set("level", l);
  if (!ctx.state.wlFrame) {
    ctx.state.wlFrame = requestAnimationFrame(() => { ctx.state.wlFrame = 0; ctx.model.save_changes(); });
  }
}

function updateReadout(ctx, entry, ev) {
  const g = geometry(ctx);
  const cache = ctx.state.raw[entry.plane];
  if (!cache || !g.shape) return;
  const px = pixelAt(ctx, entry, ev);
  const { ijk, mm } = physicalAt(ctx, entry, px);
  const idx = apply(g.to_index, ijk).map((v) => Math.round(v));
  const i = px.row * cache.cols + px.col;
  const ch = g.channels || 1;
  let value;
  if (ch > 1) value = Array.from(cache.raw.slice(ch * i, ch * i + ch)).join(", ");
  else value = fmt(cache.raw[i], 4) + (g.units ? " " + g.units : "");
  const d = g.ndim === 2 ? 2 : 3;
  let text = `voxel (${idx.slice(0, d).join(", ")})  ·  (${mm.slice(0, d).map((v) => v.toFixed(1)).join(", ")}) mm  ·  ${value}`;
  const info = ctx.model.get("_labels_info");
  if (cache.labels && info && info.legend) {
    const v = cache.labels[i];
    if (v) {
      const item = info.legend.find((it) => it.value === v);
      text += "  ·  " + (item ? item.name : "label " + v);
    }
  }
  ctx.dom.readout.textContent = text;
}

function wirePane(ctx, entry) {
  const { model, state } = ctx;
  const ov = entry.overlay;
  const guard = ctx.guard;
  ov.addEventListener("contextmenu", (ev) => { ev.preventDefault(); ev.stopPropagation(); });
  ov.addEventListener("mousedown", guard((ev) => {
    ev.preventDefault();
    ctx.dom.root.focus({ preventScroll: true });
    state.active = entry.plane;
    const editing = model.get("point_mode") === "edit";
    if (ev.button === 2 || (ev.button === 0 && ev.shiftKey && !editing)) {
      state.drag = { kind: "wl", entry, x: ev.clientX, y: ev.clientY, w: model.get("window"), l: model.get("level"), moved: false };
      return;
    }
    if (ev.button !== 0) return;
    if (editing) {
      const activeSet = model.get("active_set");
      const near = nearMarker(ctx, entry, ev, activeSet);
      if (near && (ev.shiftKey || ev.altKey)) {
        setPoints(ctx, pointsOf(ctx, near.set).filter((_, n) => n !== near.n), near.set);
      } else if (near) {
        state.drag = { kind: "point", entry, set: near.set, n: near.n };
      } else {
        const { mm } = physicalAt(ctx, entry, pixelAt(ctx, entry, ev));
        setPoints(ctx, [...pointsOf(ctx, activeSet), mm], activeSet);
      }
      return;
    }
    const { ijk, mm } = physicalAt(ctx, entry, pixelAt(ctx, entry, ev));
    setPending(ctx, ijk);
    redrawLocal(ctx);
    setPosition(ctx, mm);
    state.drag = { kind: "cursor", entry };
  }));
  ov.addEventListener("mousemove", guard((ev) => updateReadout(ctx, entry, ev)));
  ov.addEventListener("mouseenter", () => { state.active = entry.plane; });
  ov.addEventListener("wheel", guard((ev) => {
    ev.preventDefault();
    stepSlice(ctx, entry.plane, ev.deltaY > 0 ? -1 : 1);
  }), { passive: false });
  entry.slider.addEventListener("input", guard(() => setSlice(ctx, entry.plane, parseInt(entry.slider.value, 10))));
}

function wireWindow(ctx) {
  const { model, state, guard } = ctx;
  const onMove = guard((ev) => {
    const d = state.drag;
    if (!d) return;
    if (d.kind === "wl") {
      const dx = ev.clientX - d.x, dy = ev.clientY - d.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) d.moved = true;
      if (d.moved) setWindowLevel(ctx, d.w * Math.exp(dx / 200), d.l - dy * d.w / 200);
    } else if (d.kind === "point") {
      const { mm } = physicalAt(ctx, d.entry, pixelAt(ctx, d.entry, ev));
      const pts = pointsOf(ctx, d.set);
      pts[d.n] = mm;
      setPoints(ctx, pts, d.set, false);
      drawOverlay(ctx, d.entry.plane);
    } else if (d.kind === "cursor") {
      const { ijk, mm } = physicalAt(ctx, d.entry, pixelAt(ctx, d.entry, ev));
      const c = currentCursor(ctx);
      if (ijk.every((v, i) => v === c[i])) return;
      setPending(ctx, ijk);
      redrawLocal(ctx);
      setPosition(ctx, mm);
    }
  });
  const onUp = guard((ev) => {
    const d = state.drag;
    state.drag = null;
    if (!d) return;
    if (d.kind === "point") model.save_changes();
    if (d.kind === "wl") {
      if (!d.moved && model.get("point_mode") === "edit") {
        const near = nearMarker(ctx, d.entry, ev, model.get("active_set"));
        if (near) setPoints(ctx, pointsOf(ctx, near.set).filter((_, n) => n !== near.n), near.set);
      } else {
        model.save_changes();
      }
    }
  });
  window.addEventListener("mousemove", onMove);
  window.addEventListener("mouseup", onUp);
  ctx.dom.root.addEventListener("keydown", guard((ev) => {
    const steps = { ArrowUp: 1, ArrowRight: 1, ArrowDown: -1, ArrowLeft: -1, PageUp: 10, PageDown: -10 };
    if (!(ev.key in steps) || ev.target.tagName === "INPUT" || ev.target.tagName === "SELECT") return;
    ev.preventDefault();
    ev.stopPropagation();
    const plane = state.panes[state.active] ? state.active : model.get("plane");
    stepSlice(ctx, plane, steps[ev.key]);
  }));
  return () => {
    window.removeEventListener("mousemove", onMove);
    window.removeEventListener("mouseup", onUp);
  };
}

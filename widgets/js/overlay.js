// medlab viewer · what is drawn over the picture: crosshair, point markers (one colour and shape
// per point set), orientation letters, and the on-image slice number and window/level.

const MARKERS = {
  circle(c, x, y, r) { c.arc(x, y, r, 0, 2 * Math.PI); },
  cross(c, x, y, r) { c.moveTo(x - r, y - r); c.lineTo(x + r, y + r); c.moveTo(x + r, y - r); c.lineTo(x - r, y + r); },
  plus(c, x, y, r) { c.moveTo(x - r, y); c.lineTo(x + r, y); c.moveTo(x, y - r); c.lineTo(x, y + r); },
  square(c, x, y, r) { c.rect(x - r, y - r, 2 * r, 2 * r); },
  diamond(c, x, y, r) { c.moveTo(x, y - r); c.lineTo(x + r, y); c.lineTo(x, y + r); c.lineTo(x - r, y); c.closePath(); },
  triangle(c, x, y, r) { c.moveTo(x, y - r); c.lineTo(x + r, y + r * 0.8); c.lineTo(x - r, y + r * 0.8); c.closePath(); },
};

function pointSets(ctx) { return ctx.model.get("point_sets") || []; }

// the markers of every point set that lie on the shown slice of `plane`
function markersOn(ctx, plane) {
  const pg = planeGeom(ctx, plane);
  const p = payload(ctx, plane);
  if (!pg || !p) return [];
  const out = [];
  for (const set of pointSets(ctx)) {
    (set.points || []).forEach((pt, n) => {
      const [col, row, index] = apply(pg.from_mm, pt);
      if (Math.abs(index - p.index) > 0.5) return;
      out.push({ set: set.name, n, row, col, color: set.color, marker: set.marker });
    });
  }
  return out;
}

function drawMarker(c, m, x, y, r, active) {
  const shape = MARKERS[m.marker] || MARKERS.circle;
  c.beginPath();
  shape(c, x, y, r);
  c.lineWidth = c.lineWidth * 2.2;
  c.strokeStyle = "rgba(0, 0, 0, 0.8)";
  c.stroke();
  c.lineWidth = c.lineWidth / 2.2;
  c.strokeStyle = `rgb(${m.color.join(",")})`;
  if (!active) c.setLineDash([3, 2]);
  c.stroke();
  c.setLineDash([]);
}

function drawOverlay(ctx, plane) {
  const entry = ctx.state.panes[plane];
  const p = payload(ctx, plane);
  const g = geometry(ctx);
  const pg = planeGeom(ctx, plane);
  if (!entry || !p || !pg) return;
  const ov = entry.overlay;
  const c = ov.getContext("2d");
  c.clearRect(0, 0, ov.width, ov.height);
  const sx = ov.width / p.cols, sy = ov.height / p.rows;
  const dpr = window.devicePixelRatio || 1;
  if (g.ndim === 3) {
    const [col, row] = apply(pg.from_display, ctx.model.get("_cursor"));
    c.strokeStyle = "rgba(0, 255, 0, 0.55)";
    c.lineWidth = dpr;
    c.beginPath();
    c.moveTo((col + 0.5) * sx, 0); c.lineTo((col + 0.5) * sx, ov.height);
    c.moveTo(0, (row + 0.5) * sy); c.lineTo(ov.width, (row + 0.5) * sy);
    c.stroke();
  }
  const active = ctx.model.get("active_set");
  for (const m of markersOn(ctx, plane)) {
    c.lineWidth = 1.6 * dpr;
    drawMarker(c, m, (m.col + 0.5) * sx, (m.row + 0.5) * sy, 5.5 * dpr, m.set === active);
  }
  const letters = g.letters ? g.letters[plane] : null;
  ["left", "right", "top", "bottom"].forEach((side, n) => { entry.letters[side].textContent = letters ? letters[n] : ""; });
  entry.slider.max = String(pg.count - 1);
  entry.slider.value = String(p.index);
  entry.slider.disabled = pg.count <= 1;
  entry.title.textContent = g.ndim === 3 ? `${plane} ${p.index + 1}/${pg.count}` : (g.caption || "");
  entry.info.textContent = `W ${fmtValue(ctx.model.get("window"))}\nL ${fmtValue(ctx.model.get("level"))}`;
}

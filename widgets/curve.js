// medlab curve plot (anywidget ES module): named series of (x, y) drawn as SVG polylines with
// axes, ticks, a legend, the best point and optional vertical markers (thresholds). Redrawn whenever
// Python sends new data.
const NS = "http://www.w3.org/2000/svg";
const COLORS = ["#56b4e9", "#e69f00", "#009e73", "#cc79a7", "#0072b2", "#d55e00", "#f0e442", "#999999"];

function svg(tag, attrs = {}, parent = null) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

function niceTicks(lo, hi, n = 5) {
  if (!(hi > lo)) { hi = lo + 1; lo = lo - 1; }
  const raw = (hi - lo) / n;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(+t.toPrecision(12));
  return ticks;
}

function label(v) {
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(1);
  return String(+v.toPrecision(4));
}

function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "medlab-curve";
  el.appendChild(root);

  function draw() {
    const series = model.get("series") || {};
    const names = Object.keys(series);
    const W = model.get("width"), H = model.get("height");
    const m = { l: 56, r: 12, t: 22, b: 34 };
    root.replaceChildren();
    const s = svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img" }, root);
    svg("rect", { x: 0, y: 0, width: W, height: H, fill: "#111", rx: 4 }, s);
    const title = svg("text", { x: m.l, y: 15, fill: "#ddd", "font-size": 12 }, s);
    title.textContent = model.get("title");
    let n = 0, xlo = Infinity, xhi = -Infinity, ylo = Infinity, yhi = -Infinity;
    for (const name of names) {
      const { x, y } = series[name];
      for (let i = 0; i < x.length; i++) {
        if (!Number.isFinite(y[i])) continue;
        n++;
        xlo = Math.min(xlo, x[i]); xhi = Math.max(xhi, x[i]);
        ylo = Math.min(ylo, y[i]); yhi = Math.max(yhi, y[i]);
      }
    }
    const markers = (model.get("markers") || []).filter((mk) => Number.isFinite(mk.x));
    for (const mk of markers) { xlo = Math.min(xlo, mk.x); xhi = Math.max(xhi, mk.x); }
    root.dataset.markers = String(markers.length);
    root.dataset.points = String(n);
    root.dataset.series = String(names.length);
    if (!n) {
      const t = svg("text", { x: W / 2, y: H / 2, fill: "#888", "font-size": 12, "text-anchor": "middle" }, s);
      t.textContent = "waiting for the first value…";
      return;
    }
    if (xhi === xlo) { xhi = xlo + 1; }
    if (yhi === ylo) { yhi = ylo + Math.abs(ylo || 1) * 0.05; ylo = ylo - Math.abs(ylo || 1) * 0.05; }
    const pad = (yhi - ylo) * 0.05;
    ylo -= pad; yhi += pad;
    const X = (v) => m.l + (v - xlo) / (xhi - xlo) * (W - m.l - m.r);
    const Y = (v) => H - m.b - (v - ylo) / (yhi - ylo) * (H - m.t - m.b);
    const axes = svg("g", { stroke: "#555", "font-size": 10, fill: "#aaa" }, s);
    for (const t of niceTicks(ylo, yhi)) {
      svg("line", { x1: m.l, x2: W - m.r, y1: Y(t), y2: Y(t), stroke: "#2a2a2a" }, axes);
      const txt = svg("text", { x: m.l - 4, y: Y(t) + 3, "text-anchor": "end", stroke: "none" }, axes);
      txt.textContent = label(t);
    }
    for (const t of niceTicks(xlo, xhi)) {
      const txt = svg("text", { x: X(t), y: H - m.b + 13, "text-anchor": "middle", stroke: "none" }, axes);
      txt.textContent = label(t);
    }
    const xl = svg("text", { x: (m.l + W - m.r) / 2, y: H - 4, "text-anchor": "middle", fill: "#aaa", "font-size": 11 }, s);
    xl.textContent = model.get("x_label");
    const yl = svg("text", { x: 12, y: (m.t + H - m.b) / 2, fill: "#aaa", "font-size": 11, "text-anchor": "middle",
      transform: `rotate(-90 12 ${(m.t + H - m.b) / 2})` }, s);
    yl.textContent = model.get("y_label");
    names.forEach((name, k) => {
      const { x, y } = series[name];
      const pts = [];
      for (let i = 0; i < x.length; i++) if (Number.isFinite(y[i])) pts.push(`${X(x[i]).toFixed(1)},${Y(y[i]).toFixed(1)}`);
      const color = COLORS[k % COLORS.length];
      svg("polyline", { points: pts.join(" "), fill: "none", stroke: color, "stroke-width": 1.6,
        class: "medlab-curve-series", "data-name": name }, s);
      const lg = svg("text", { x: W - m.r - 4, y: m.t + 12 + 13 * k, fill: color, "font-size": 11, "text-anchor": "end" }, s);
      lg.textContent = name;
    });
    markers.forEach((mk, k) => {
      const color = mk.color || "#fff";
      svg("line", { x1: X(mk.x), x2: X(mk.x), y1: m.t, y2: H - m.b, stroke: color, "stroke-width": 1.5,
        "stroke-dasharray": "4 3", class: "medlab-curve-marker", "data-x": mk.x }, s);
      if (mk.label) {
        const right = X(mk.x) > W - m.r - 80;
        const t = svg("text", { x: X(mk.x) + (right ? -3 : 3), y: H - m.b - 4 - 12 * (k % 3), fill: color, "font-size": 10,
          "text-anchor": right ? "end" : "start" }, s);
        t.textContent = mk.label;
      }
    });
    const best = model.get("best");
    if (best && best.length === 2) {
      svg("circle", { cx: X(best[0]), cy: Y(best[1]), r: 4, fill: "none", stroke: "#fff", "stroke-width": 1.5,
        class: "medlab-curve-best" }, s);
    }
  }

  const events = "change:series change:best change:markers change:title change:x_label change:y_label change:width change:height";
  model.on(events, draw);
  draw();
  return () => model.off(events, draw);
}

export default { render };

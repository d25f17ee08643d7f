// medlab viewer · controls around the picture: a compact toolbar (plane, layout, W/L, presets,
// interpolation, point mode), the label legend, the point-set legend (pick the active set), status.

function buildToolbar(ctx) {
  const bar = el("div", "medlab-toolbar");
  const planeSel = el("select", "medlab-plane", { title: "plane" });
  for (const p of PLANES) planeSel.appendChild(new Option(p, p));
  const layoutSel = el("select", "medlab-layout", { title: "layout" });
  layoutSel.appendChild(new Option("1 plane", "single"));
  layoutSel.appendChild(new Option("3 planes", "three"));
  const wIn = el("input", "medlab-window", { type: "number", step: "any", title: "window (width)" });
  const lIn = el("input", "medlab-level", { type: "number", step: "any", title: "level (centre)" });
  const presetSel = el("select", "medlab-preset", { title: "window/level preset" });
  const interpSel = el("select", "medlab-interp", { title: "display interpolation (the voxels are not changed)" });
  interpSel.appendChild(new Option("nearest", "nearest"));
  interpSel.appendChild(new Option("smooth", "linear"));
  const pointBtn = el("button", "medlab-pointmode", { type: "button",
    title: "point mode: click to add a point to the active set; drag to move; shift-click or right-click to remove" });
  pointBtn.textContent = "\u271a points";
  const label = (text, input) => { const l = el("label", "medlab-field"); l.append(text, input); return l; };
  bar.append(planeSel, layoutSel, label("W", wIn), label("L", lIn), presetSel, interpSel, pointBtn);
  ctx.dom.controls = { planeSel, layoutSel, wIn, lIn, presetSel, interpSel, pointBtn };
  wireToolbar(ctx);
  return bar;
}

function wireToolbar(ctx) {
  const { model } = ctx;
  const { planeSel, layoutSel, wIn, lIn, presetSel, interpSel, pointBtn } = ctx.dom.controls;
  planeSel.addEventListener("change", () => { model.set("plane", planeSel.value); model.save_changes(); });
  layoutSel.addEventListener("change", () => { model.set("layout_mode", layoutSel.value); model.save_changes(); });
  interpSel.addEventListener("change", () => { model.set("interpolation", interpSel.value); model.save_changes(); });
  const onWL = () => {
    const w = parseFloat(wIn.value), l = parseFloat(lIn.value);
    if (!(w > 0) || !Number.isFinite(l)) { ctx.fail(new Error("window must be a positive number and level a number")); return; }
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
}

function syncControls(ctx) {
  const { model } = ctx;
  const { planeSel, layoutSel, wIn, lIn, presetSel, interpSel, pointBtn } = ctx.dom.controls;
  planeSel.value = model.get("plane");
  layoutSel.value = model.get("layout_mode");
  interpSel.value = model.get("interpolation");
  const g = geometry(ctx);
  planeSel.disabled = layoutSel.disabled = g.ndim === 2;
  const w = model.get("window"), l = model.get("level");
  if (document.activeElement !== wIn) wIn.value = fmtValue(w);
  if (document.activeElement !== lIn) lIn.value = fmtValue(l);
  const presets = model.get("_presets") || {};
  const names = Object.keys(presets);
  if (presetSel.options.length !== names.length + 1 || names.some((n, i) => presetSel.options[i + 1].value !== n)) {
    presetSel.replaceChildren(new Option("preset…", ""));
    for (const n of names) presetSel.appendChild(new Option(n, n));
  }
  // a named preset wins over "auto" when both give the same window (CT: auto is the abdomen window)
  const matching = names.filter((n) => presets[n][0] === w && presets[n][1] === l);
  presetSel.value = matching.find((n) => !n.startsWith("auto")) || matching[0] || "";
  const mode = model.get("point_mode");
  pointBtn.dataset.mode = mode;
  pointBtn.setAttribute("aria-pressed", String(mode === "edit"));
  ctx.dom.root.classList.toggle("medlab-editing", mode === "edit");
  ctx.dom.root.dataset.interpolation = model.get("interpolation");
  const sets = pointSets(ctx);
  const active = sets.find((s) => s.name === model.get("active_set"));
  pointBtn.textContent = "\u271a " + (sets.length > 1 && active ? active.label : "points");
  if (active) pointBtn.style.setProperty("--medlab-set-color", `rgb(${active.color.join(",")})`);
}

function syncLegend(ctx) {
  const legend = ctx.dom.legend;
  legend.replaceChildren();
  const info = ctx.model.get("_labels_info");
  if (!info || !info.legend) return;
  for (const item of info.legend) {
    const entry = el("span", "medlab-legend-item", { "data-value": String(item.value) });
    const sw = el("span", "medlab-swatch");
    sw.style.background = `rgb(${item.color.join(",")})`;
    entry.append(sw, item.name);
    legend.appendChild(entry);
  }
}

// one chip per point set: its marker in its colour, its name and count; a click makes it active
function syncPointSets(ctx) {
  const box = ctx.dom.pointsets;
  const sets = pointSets(ctx);
  const active = ctx.model.get("active_set");
  box.replaceChildren();
  const show = sets.length > 1 || sets.some((s) => (s.points || []).length);
  box.style.display = show ? "" : "none";
  for (const set of sets) {
    const chip = el("button", "medlab-pointset", { type: "button", "data-name": set.name, "data-role": set.role,
      "aria-pressed": String(set.name === active), title: `make "${set.label}" the set that clicks add to` });
    const icon = el("canvas", "medlab-pointset-marker", { width: "14", height: "14" });
    const c = icon.getContext("2d");
    c.lineWidth = 1.6;
    drawMarker(c, { marker: set.marker, color: set.color }, 7, 7, 4.5, true);
    const n = (set.points || []).length;
    chip.append(icon, `${set.label} (${n})`);
    chip.addEventListener("click", ctx.guard(() => {
      ctx.model.set("active_set", set.name);
      if (ctx.model.get("point_mode") !== "edit") ctx.model.set("point_mode", "edit");
      ctx.model.save_changes();
    }));
    box.appendChild(chip);
  }
}

function syncStatus(ctx) {
  ctx.dom.status.textContent = ctx.model.get("status");
  ctx.dom.status.dataset.kind = ctx.model.get("status_kind");
}

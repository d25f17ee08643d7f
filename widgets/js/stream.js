// medlab viewer · the streamed volume: a volume too large to send at once arrives in slabs of
// whole axial slices (every array: base image and layers), nearest the cursor first, into
// numbered slots. Python decides which slab goes into which slot (medlab.widgets.viewer.SlabPlan),
// so both sides know what the browser holds; the browser acknowledges each slab, which paces the
// stream. Held memory is at most `_stream.slots` slabs (Python's BROWSER_CACHE_BYTES).
// One record per model (keyed by the Python model id in `_stream`), shared by all its views.
//
// Sagittal slices read one voxel per column from every axial slice, `ni` voxels apart: each
// pixel is its own cache line and, every 4 pixels, its own memory page (measured in Node.js on
// the 300 MiB CT under load: 24 ms a slice, 50-60 ms in the browser; a coronal slice, whose
// rows are contiguous, 2 ms). So when the whole volume fits in the browser, each held slab
// also gets a copy with every axial slice transposed
// ([k][i][j]: a sagittal row is contiguous, cut in 0.5 ms), made in the background one slice
// per task (about 4 ms each) as slabs arrive. It is made while the volume streams (the page is
// mostly idle then), not when the user first shows a sagittal plane: made then, on the shared
// 2-core machine, it took 29 s and slowed the steps meanwhile. A slice whose slabs are not all
// copied yet takes the copied rows from the copy and the others voxel by voxel. The copy
// doubles the memory of a wholly held volume (at most 2 x BROWSER_CACHE_BYTES per viewer); a
// tiled single copy (tiles of 32 columns) was measured too: sagittal 11 ms, coronal 14 ms.

const STREAMS = new Map();

function streamInfo(model) {
  const s = model.get("_stream");
  return s && s.slabs ? s : null;
}

// the model's record, reset when Python started a new stream (new image or layers)
function streamRecord(model) {
  const s = model.get("_stream");
  const rec = s ? STREAMS.get(s.id) : null;
  if (!rec) return null;
  if (rec.stream !== s) {
    Object.assign(rec, { stream: s, gen: s.gen, info: streamInfo(model), slots: [], slabSlot: new Map(), bytes: 0,
      copyBytes: 0, readyGen: null, wantCopy: true, transposeJob: null });
  }
  return rec.info ? rec : null;
}

function streamHeld(rec) { return rec ? rec.slabSlot.size : 0; }
function streamComplete(rec) { return !!rec && rec.slabSlot.size === rec.info.slabs; }

// Ask Python to (re)start sending: when a view is shown, when a new stream begins, or when the
// browser finds it lacks voxels Python thinks it has (a dropped connection).
function streamReady(rec, resync = false) {
  if (!rec || (rec.readyGen === rec.gen && !resync)) return;
  const now = performance.now();
  if (resync && now - (rec.resyncAt || -Infinity) < 2000) return;
  if (resync) { rec.resyncAt = now; rec.slots = []; rec.slabSlot = new Map(); rec.bytes = 0; rec.copyBytes = 0; }
  rec.readyGen = rec.gen;
  rec.model.send({ type: "stream-ready", gen: rec.gen });
}

function onSlab(rec, msg, buffers) {
  if (msg.gen !== rec.gen || !rec.info) return;  // an older stream's slab, still on its way
  const info = rec.info;
  const old = rec.slots[msg.slot];
  if (old) {
    if (rec.slabSlot.get(old.slab) === msg.slot) rec.slabSlot.delete(old.slab);
    rec.bytes -= old.bytes;
    rec.copyBytes -= old.copyBytes;
  }
  const arrays = {};
  let bytes = 0;
  info.names.forEach((name, n) => {
    arrays[name] = typed(buffers[n], info.dtypes[name]);
    bytes += arrays[name].byteLength;
  });
  rec.slots[msg.slot] = { slab: msg.slab, k0: msg.k0, k1: msg.k1, arrays, bytes, copy: null, copyBytes: 0 };
  rec.slabSlot.set(msg.slab, msg.slot);
  rec.bytes += bytes;
  rec.model.send({ type: "slab-ack", gen: msg.gen, slab: msg.slab });
  transposeHeld(rec);
  for (const f of rec.listeners) f(rec);
}

// Rows of the held slabs: [array, position] of element `e` of the volume (see cutRows), or
// null when its slab is not here.
function slabReader(rec) {
  const [, nj, ni] = rec.info.shape;
  const plane = nj * ni;
  return (name, e) => {
    const k = Math.floor(e / plane);
    const slot = rec.slabSlot.get(Math.floor(k / rec.info.per_slab));
    if (slot === undefined) return null;
    const held = rec.slots[slot];
    return [held.arrays[name], e - held.k0 * plane];
  };
}

// whether the whole volume fits in the browser (else a ring of slabs: sagittal slices come
// from the kernel, and no transposed copy is made)
function streamWhole(rec) { return !!rec && rec.info.slots >= rec.info.slabs; }

// Start (or resume) the transposed copies (see the top of this file).
function wantTransposed(rec) {
  if (!rec || rec.wantCopy || !streamWhole(rec)) return;
  rec.wantCopy = true;
  transposeHeld(rec);
}

// Transpose the held slabs that lack a copy, one axial slice per task, in the background.
function transposeHeld(rec) {
  if (!rec.wantCopy || rec.transposeJob || !streamWhole(rec)) return;
  const next = () => {
    for (const held of rec.slots) if (held && (!held.copy || held.copyDone < held.k1 - held.k0)) return held;
    return null;
  };
  if (!next()) return;
  const job = {};
  rec.transposeJob = job;
  const step = () => {
    if (rec.transposeJob !== job) return;  // a new stream began
    const held = next();
    if (!held) { rec.transposeJob = null; return; }
    const [, nj, ni] = rec.info.shape;
    if (!held.copy) {
      held.copy = {};
      held.copyDone = 0;
      for (const name of rec.info.names) held.copy[name] = new held.arrays[name].constructor(held.arrays[name].length);
    }
    const base = held.copyDone * nj * ni;
    for (const name of rec.info.names) transposeSlice(held.arrays[name], held.copy[name], base, nj, ni);
    held.copyDone += 1;
    if (held.copyDone === held.k1 - held.k0) {
      held.copyBytes = held.bytes;
      rec.copyBytes += held.bytes;
      for (const f of rec.listeners) f(rec, "copy");
    }
    nextTask(run);
  };
  const run = () => {
    try { step(); } catch (err) {
      rec.transposeJob = null;
      console.error(err);
      rec.model.send({ type: "error", message: "transposing the volume for sagittal slices: " + String(err && err.message || err) });
    }
  };
  nextTask(run);
}

// one axial slice [j][i] at `base` of `src` into [i][j] of `dst`, in 32 x 32 blocks (each
// block's reads and writes stay in cache)
function transposeSlice(src, dst, base, nj, ni) {
  for (let j0 = 0; j0 < nj; j0 += 32) {
    const j1 = Math.min(nj, j0 + 32);
    for (let i0 = 0; i0 < ni; i0 += 32) {
      const i1 = Math.min(ni, i0 + 32);
      for (let j = j0; j < j1; j++) {
        let e = base + j * ni + i0, d = base + i0 * nj + j;
        for (let i = i0; i < i1; i++, e++, d += nj) dst[d] = src[e];
      }
    }
  }
}

// Cut slice `index` of a plane whose columns run along j (sagittal): each row from its slab's
// transposed copy, or voxel by voxel while that copy is not made yet. Returns [{name: pixels},
// rows taken voxel by voxel], or null when a slab is missing.
function copyCut(rec, pg, index) {
  const [offset, s, r, c] = pg.strides;
  const [, nj, ni] = rec.info.shape;
  const plane = nj * ni, cols = pg.cols, step = c / ni;
  const out = newCuts(rec.info.names, rec.info.dtypes, pg.rows * cols, 1)[0];
  let slow = 0;
  for (let row = 0; row < pg.rows; row++) {
    const e = offset + index * s + row * r;
    const k = Math.floor(e / plane);
    const slot = rec.slabSlot.get(Math.floor(k / rec.info.per_slab));
    const held = slot === undefined ? null : rec.slots[slot];
    if (!held) return null;
    const local = e - held.k0 * plane, at = row * cols;
    if (!held.copyBytes) {
      slow += 1;
      for (const name of rec.info.names) {
        const src = held.arrays[name], dst = out[name];
        for (let col = 0; col < cols; col++) dst[at + col] = src[local + col * c];
      }
      continue;
    }
    const kk = Math.floor(local / plane), rem = local - kk * plane;
    const j = Math.floor(rem / ni), i = rem - j * ni;
    const start = kk * plane + i * nj + j;
    for (const name of rec.info.names) {
      const src = held.copy[name], dst = out[name];
      if (step === 1) dst.set(src.subarray(start, start + cols), at);
      else for (let col = 0; col < cols; col++) dst[at + col] = src[start + col * step];
    }
  }
  return [out, slow];
}

// Cut slices `indices` (consecutive) of a plane from the held slabs: one {name: pixels} per
// index, or null when a slab they need is missing. Pixels are copied: a slot may be refilled
// with another slab later.
function streamCut(rec, pg, indices) {
  const outs = newCuts(rec.info.names, rec.info.dtypes, pg.rows * pg.cols, indices.length);
  return cutRows(slabReader(rec), rec.info.names, pg, indices, outs, 0, pg.rows) ? outs : null;
}

// anywidget calls this once per model, before any view: slabs are stored here for every view.
function initialize({ model }) {
  const rec = { model, stream: null, gen: null, info: null, slots: [], slabSlot: new Map(), bytes: 0, readyGen: null,
    views: 0, listeners: new Set() };
  let id = null;
  const attach = () => {
    const s = model.get("_stream") || {};
    if (!s.id || s.id === id) return;
    if (id) STREAMS.delete(id);
    id = s.id;
    STREAMS.set(id, rec);
  };
  attach();
  const onMessage = (msg, buffers) => {
    if (!msg || msg.type !== "slab") return;
    try {
      const r = streamRecord(model);
      if (r) onSlab(r, msg, buffers);
    } catch (err) {
      console.error(err);
      model.send({ type: "error", message: "streaming the volume: " + String(err && err.message || err) });
    }
  };
  const onStream = () => { attach(); const r = streamRecord(model); if (r && rec.views > 0) streamReady(r); };
  model.on("msg:custom", onMessage);
  model.on("change:_stream", onStream);
  return () => {
    model.off("msg:custom", onMessage);
    model.off("change:_stream", onStream);
    STREAMS.delete(id);
  };
}

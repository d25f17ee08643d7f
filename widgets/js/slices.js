// medlab viewer · slices: where a plane's pixels come from. The display geometry (pixel sizes,
// screen flips, pixel <-> mm, strides into the volume) is computed once in Python
// (medlab.render.plane_geometry) and read here from `_geometry.planes`; nothing is recomputed.

function geometry(ctx) { return ctx.model.get("_geometry") || {}; }

function planeGeom(ctx, plane) {
  const planes = geometry(ctx).planes;
  return planes ? planes[plane] : null;
}

// Small volumes arrive whole in `_volumes` (display order [k, j, i]): slices are cut here, so
// scrolling needs no kernel round trip. Larger ones are streamed in slabs (stream.js); a slice
// the browser does not hold comes from Python in `_<plane>`.
function volumeMode(ctx) {
  const v = ctx.model.get("_volumes"), g = geometry(ctx);
  return !!(v && v.shape && g.shape && v.shape[0] === g.shape[2] && v.shape[1] === g.shape[1] && v.shape[2] === g.shape[0]);
}

function volumeArray(ctx, name) {
  const vols = ctx.model.get("_volumes");
  const cache = ctx.state.volCache;
  if (cache.vols !== vols) ctx.state.volCache = { vols, arrays: {} };
  const arrays = ctx.state.volCache.arrays;
  if (!(name in arrays)) arrays[name] = vols[name] ? typed(vols[name], vols[name + "_dtype"]) : null;
  return arrays[name];
}

// Pixel (row, col) of slice `index` is element offset + index*s + row*r + col*c of the volume.
// `read(name, element)` gives [array, position] of an element that starts a row (every row of
// any plane lies in one axial slice): the whole volume, or the streamed slab that holds it.
// Cuts rows r0..r1 of the consecutive slices `indices` into `outs` ({name: pixels} each);
// false when a row is not held.
function cutRows(read, names, pg, indices, outs, r0, r1) {
  const [offset, s, r, c] = pg.strides;
  const cols = pg.cols, nb = indices.length;
  for (const name of names) {
    const dsts = outs.map((o) => o[name]), d0 = dsts[0];
    for (let row = r0; row < r1; row++) {
      const hit = read(name, offset + indices[0] * s + row * r);
      if (!hit) return false;
      const [src, local] = hit, at = row * cols;
      if (nb === 1 && c === 1) d0.set(src.subarray(local, local + cols), at);
      else if (nb === 1) for (let col = 0; col < cols; col++) d0[at + col] = src[local + col * c];
      else {
        // neighbouring sagittal slices (|s| = 1) share each cache line read: one pass for all
        for (let col = 0; col < cols; col++) {
          const e = local + col * c;
          for (let b = 0; b < nb; b++) dsts[b][at + col] = src[e + b * s];
        }
      }
    }
  }
  return true;
}

function newCuts(names, dtypes, n, count) {
  return Array.from({ length: count }, () => Object.fromEntries(names.map((name) => [name, new TYPED[dtypes[name]](n)])));
}

function cutSlice(arr, pg, index) {
  const [offset, s, r, c] = pg.strides;
  const base = offset + index * s;
  if (c === 1 && r === pg.cols) return arr.subarray(base, base + pg.rows * pg.cols);  // no copy
  return cutBlock(arr, pg, [index])[0];
}

function cutBlock(arr, pg, indices) {
  const outs = indices.map(() => ({ base: new arr.constructor(pg.rows * pg.cols) }));
  cutRows((name, e) => [arr, e], ["base"], pg, indices, outs, 0, pg.rows);
  return outs.map((o) => o.base);
}

// The cursor the user asked for, until Python's reply catches up (fast key repeats and wheel
// ticks step from it, not from a stale _cursor). A busy kernel (a running cell, or a volume
// streaming ahead of the reply) can take seconds to answer; without any answer for
// PENDING_MS, Python's cursor is shown again.
const PENDING_MS = 5000;

function currentCursor(ctx) {
  const pending = ctx.state.pending;
  if (pending && performance.now() - pending.t < PENDING_MS) return pending.cursor.slice();
  return ctx.model.get("_cursor").slice();
}

// the slice index a plane shows: the cursor's coordinate along the plane's normal
function cursorIndex(ctx, plane, cursor) {
  const pg = planeGeom(ctx, plane);
  const [, , index] = apply(pg.from_display, cursor);
  return Math.round(index);
}

const SLICE_CACHE_SIZE = 24;  // cut slices kept per view: bounded memory
const PREFETCH = 8;  // sagittal slices cut together, ahead in the direction of travel
const PREFETCH_MS = 6;  // background work between two looks at user input

// The slices this view has cut, most recently used last; emptied when the voxels change.
function sliceCache(ctx, source) {
  if (ctx.state.sliceCache.source !== source) ctx.state.sliceCache = { source, map: new Map() };
  return ctx.state.sliceCache.map;
}

// Where this view's voxels are: names, dtypes, a row reader and a cache key (null: none held).
function voxelSource(ctx) {
  if (volumeMode(ctx)) {
    const vols = ctx.model.get("_volumes");
    const names = ["base", "labels", "heat", "second"].filter((n) => volumeArray(ctx, n));
    return { key: vols, names, dtypes: Object.fromEntries(names.map((n) => [n, vols[n + "_dtype"]])),
      read: (name, e) => [volumeArray(ctx, name), e], copy: false };
  }
  const rec = streamRecord(ctx.model);
  if (!streamHeld(rec)) return null;
  return { key: rec.gen + ":" + rec.stream.id, names: rec.info.names, dtypes: rec.info.dtypes,
    read: slabReader(rec), copy: true, rec };
}

function asPayload(pg, index, cut, src) {
  const slice = { index, rows: pg.rows, cols: pg.cols, local: true, dtype: src.dtypes.base, data: cut.base };
  for (const name of src.names) if (name !== "base") { slice[name] = cut[name]; slice[name + "_dtype"] = src.dtypes[name]; }
  return slice;
}

function remember(cache, key, slice) {
  cache.delete(key);
  cache.set(key, slice);
  while (cache.size > SLICE_CACHE_SIZE) cache.delete(cache.keys().next().value);
}

// Sagittal slices are slow to cut: every pixel is its own cache line (neighbouring pixels sit
// `ni` voxels apart), while the slices next to it (|s| = 1) share those lines, so several are
// cut in one pass for little more than the cost of one.
function strided(pg) { return Math.abs(pg.strides[1]) === 1 && pg.strides[3] !== 1; }

// the direction the user travels through a plane; it changes only when the slice does
// (payload() is asked for the same slice often)
function travel(ctx, plane, index) {
  const seen = ctx.state.lastIndex[plane] || { index, dir: 1 };
  const dir = index === seen.index ? seen.dir : index < seen.index ? -1 : 1;
  ctx.state.lastIndex[plane] = { index, dir };
  return dir;
}

// the slices from `index` on in direction `dir` that are not cut yet (at most PREFETCH, in a row)
function uncut(cache, plane, pg, index, dir) {
  const out = [];
  for (let i = index; out.length < PREFETCH && i >= 0 && i < pg.count && !cache.has(plane + ":" + i); i += dir) out.push(i);
  return out.sort((a, b) => a - b);
}

// Slice `index` of `plane` cut in the browser, or null when the browser does not hold its voxels.
function localSlice(ctx, plane, index) {
  const pg = planeGeom(ctx, plane);
  const src = pg ? voxelSource(ctx) : null;
  if (!src) return null;
  const cache = sliceCache(ctx, src.key);
  const key = plane + ":" + index;
  const dir = travel(ctx, plane, index);
  let out = cache.get(key);
  if (out) {
    remember(cache, key, out);
  } else {
    const t0 = performance.now();
    const [offset, s, r, c] = pg.strides;
    let how = "rows";
    if (!src.copy && c === 1 && r === pg.cols) {  // a contiguous slice of the whole volume: a view
      const base = offset + index * s;
      const cut = Object.fromEntries(src.names.map((n) => [n, volumeArray(ctx, n).subarray(base, base + pg.rows * pg.cols)]));
      out = asPayload(pg, index, cut, src);
      how = "view";
    } else {
      const got = src.rec && strided(pg) ? copyCut(src.rec, pg, index) : null;
      let cut = got && got[0];
      if (cut) how = got[1] === 0 ? "transposed" : got[1] === pg.rows ? "strided" : "mixed";
      else {
        [cut] = newCuts(src.names, src.dtypes, pg.rows * pg.cols, 1);
        if (!cutRows(src.read, src.names, pg, [index], [cut], 0, pg.rows)) return null;
        if (strided(pg)) how = "strided";
      }
      out = asPayload(pg, index, cut, src);
    }
    // what the last cut cost: medlab-drawn reports it (benchmarks split a step's time)
    ctx.state.lastCut = { plane, index, how, ms: performance.now() - t0 };
    remember(cache, key, out);
  }
  // cut the next sagittal slices ahead of the user until the transposed copy is complete
  if (strided(pg) && (!src.rec || src.rec.copyBytes < src.rec.bytes)) prefetch(ctx, plane, index, dir, src, cache);
  return out;
}

// run `fn` as a new task soon (a MessageChannel message: setTimeout would wait >= 4 ms once nested)
let taskChannel = null;  // made on first use
const taskQueue = [];
function nextTask(fn) {
  if (!taskChannel) {
    taskChannel = new MessageChannel();
    taskChannel.port1.onmessage = () => { const next = taskQueue.shift(); if (next) next(); };
  }
  taskQueue.push(fn);
  taskChannel.port2.postMessage(0);
}

// While the user steps through sagittal slices, cut the next ones (in the direction of travel)
// in the background, PREFETCH_MS at a time so that input is never held up for long.
function prefetch(ctx, plane, index, dir, src, cache) {
  const pg = planeGeom(ctx, plane);
  const job = ctx.state.prefetch;
  if (job && job.plane === plane && job.dir === dir && job.indices.includes(index + dir)) return;
  let held = 0;  // cut slices ahead
  while (held < PREFETCH / 2 && cache.has(plane + ":" + (index + dir * (held + 1)))) held += 1;
  if (held >= PREFETCH / 2) return;
  const indices = uncut(cache, plane, pg, index + dir * (held + 1), dir);
  if (!indices.length) return;
  const mine = { plane, dir, indices, outs: newCuts(src.names, src.dtypes, pg.rows * pg.cols, indices.length), row: 0 };
  ctx.state.prefetch = mine;
  const step = ctx.guard(() => {
    if (ctx.state.prefetch !== mine || ctx.state.sliceCache.map !== cache) return;  // superseded
    const until = performance.now() + PREFETCH_MS;
    while (mine.row < pg.rows && performance.now() < until) {
      const r1 = Math.min(pg.rows, mine.row + 8);
      if (!cutRows(src.read, src.names, pg, indices, mine.outs, mine.row, r1)) { ctx.state.prefetch = null; return; }
      mine.row = r1;
    }
    if (mine.row < pg.rows) { nextTask(step); return; }
    ctx.state.prefetch = null;
    const shown = cache.get(plane + ":" + index);
    indices.forEach((i, n) => { if (!cache.has(plane + ":" + i)) remember(cache, plane + ":" + i, asPayload(pg, i, mine.outs[n], src)); });
    if (shown) remember(cache, plane + ":" + index, shown);  // the shown slice stays the most recent
  });
  nextTask(step);
}

// What a plane shows: the slice at the cursor the user asked for, cut here when the browser
// holds it, else the last slice Python sent.
function payload(ctx, plane) {
  const sent = ctx.model.get("_" + plane);
  const pg = planeGeom(ctx, plane);
  if (!pg) return sent;
  const index = Math.max(0, Math.min(pg.count - 1, cursorIndex(ctx, plane, currentCursor(ctx))));
  const local = localSlice(ctx, plane, index);
  if (local) return local;
  if (sent && sent.data) return sent;
  if (sent && sent.index !== undefined) {
    // Python sent only the index of a slice it thinks the browser holds
    const held = localSlice(ctx, plane, sent.index);
    if (held) return held;
    streamReady(streamRecord(ctx.model), true);
  }
  return sent;
}

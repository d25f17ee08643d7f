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

// pixel (row, col) of slice `index` is element offset + index*s + row*r + col*c of the volume
function cutSlice(arr, pg, index) {
  const [offset, s, r, c] = pg.strides;
  const rows = pg.rows, cols = pg.cols;
  const base = offset + index * s;
  if (c === 1 && r === cols) return arr.subarray(base, base + rows * cols);
  if (c !== 1) return cutBlock(arr, pg, [index])[0];
  const out = new arr.constructor(rows * cols);
  for (let row = 0; row < rows; row++) {
    const start = base + row * r;
    out.set(arr.subarray(start, start + cols), row * cols);
  }
  return out;
}

// Neighbouring slices `indices` (consecutive) of a plane whose columns are strided, in one
// pass. Sagittal pixels sit `ni` voxels apart, so each read touches its own cache line; the
// slices next to it (|s| = 1) are on the same line, and reading 8 costs about as much as one.
function cutBlock(arr, pg, indices) {
  const [offset, s, r, c] = pg.strides;
  const rows = pg.rows, cols = pg.cols, nb = indices.length;
  const outs = indices.map(() => new arr.constructor(rows * cols));
  const base = offset + indices[0] * s;
  for (let row = 0; row < rows; row++) {
    for (let col = 0; col < cols; col++) {
      const e = base + row * r + col * c, at = row * cols + col;
      for (let b = 0; b < nb; b++) outs[b][at] = arr[e + b * s];
    }
  }
  return outs;
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

const SLICE_CACHE_SIZE = 24;  // cut slices kept per view (a block of 8 per plane): bounded memory
const BLOCK = 8;  // sagittal slices cut together

// The slices this view has cut, most recently used last; emptied when the voxels change.
function sliceCache(ctx, source) {
  if (ctx.state.sliceCache.source !== source) ctx.state.sliceCache = { source, map: new Map() };
  return ctx.state.sliceCache.map;
}

// Slice `index` of `plane` cut in the browser, or null when the browser does not hold its voxels.
// A plane whose neighbouring slices lie side by side in memory (sagittal) is cut 8 at a time.
function localSlice(ctx, plane, index) {
  const pg = planeGeom(ctx, plane);
  const vols = ctx.model.get("_volumes");
  const rec = volumeMode(ctx) ? null : streamRecord(ctx.model);
  if (!pg || !(volumeMode(ctx) || streamHeld(rec))) return null;
  const cache = sliceCache(ctx, rec ? rec.gen + ":" + rec.model.get("_stream").id : vols);
  const key = plane + ":" + index;
  const hit = cache.get(key);
  if (hit) {
    cache.delete(key);
    cache.set(key, hit);
    return hit;
  }
  const [, s, , c] = pg.strides;
  let indices = [index];
  if (Math.abs(s) === 1 && c !== 1) {
    const first = Math.floor(index / BLOCK) * BLOCK;
    indices = [];
    for (let n = first; n < Math.min(pg.count, first + BLOCK); n++) indices.push(n);
  }
  const names = rec ? rec.info.names : ["base", "labels", "heat", "second"].filter((n) => volumeArray(ctx, n));
  const dtypes = rec ? rec.info.dtypes : Object.fromEntries(names.map((n) => [n, vols[n + "_dtype"]]));
  let cuts;  // one {name: pixels} per index
  if (rec) {
    cuts = streamCut(rec, pg, indices);
    if (!cuts) return null;
  } else {
    cuts = indices.map(() => ({}));
    for (const name of names) {
      const arr = volumeArray(ctx, name);
      const pieces = indices.length > 1 ? cutBlock(arr, pg, indices) : [cutSlice(arr, pg, index)];
      pieces.forEach((piece, n) => { cuts[n][name] = piece; });
    }
  }
  let out = null;
  indices.forEach((i, n) => {
    const slice = { index: i, rows: pg.rows, cols: pg.cols, local: true, dtype: dtypes.base, data: cuts[n].base };
    for (const name of names) if (name !== "base") { slice[name] = cuts[n][name]; slice[name + "_dtype"] = dtypes[name]; }
    if (i === index) out = slice;
    else if (!cache.has(plane + ":" + i)) cache.set(plane + ":" + i, slice);
  });
  cache.set(key, out);  // the slice asked for is the most recent
  while (cache.size > SLICE_CACHE_SIZE) cache.delete(cache.keys().next().value);
  return out;
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

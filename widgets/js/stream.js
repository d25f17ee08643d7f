// medlab viewer · the streamed volume: a volume too large to send at once arrives in slabs of
// whole axial slices (every array: base image and layers), nearest the cursor first, into
// numbered slots. Python decides which slab goes into which slot (medlab.widgets.viewer.SlabPlan),
// so both sides know what the browser holds; the browser acknowledges each slab, which paces the
// stream. Held memory is at most `_stream.slots` slabs (Python's BROWSER_CACHE_BYTES).
// One record per model (keyed by the Python model id in `_stream`), shared by all its views.

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
    Object.assign(rec, { stream: s, gen: s.gen, info: streamInfo(model), slots: [], slabSlot: new Map(), bytes: 0, readyGen: null });
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
  if (resync) { rec.resyncAt = now; rec.slots = []; rec.slabSlot = new Map(); rec.bytes = 0; }
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
  }
  const arrays = {};
  let bytes = 0;
  info.names.forEach((name, n) => {
    arrays[name] = typed(buffers[n], info.dtypes[name]);
    bytes += arrays[name].byteLength;
  });
  rec.slots[msg.slot] = { slab: msg.slab, k0: msg.k0, k1: msg.k1, arrays, bytes };
  rec.slabSlot.set(msg.slab, msg.slot);
  rec.bytes += bytes;
  rec.model.send({ type: "slab-ack", gen: msg.gen, slab: msg.slab });
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

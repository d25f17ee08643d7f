// medlab viewer · core: typed arrays, DOM and matrix helpers, window/level.
// Every unit of the viewer (widgets/js/*.js) is concatenated, in the order given in
// widgets/viewer.py, into one ES module: functions here are shared by the units below.

const PLANES = ["axial", "coronal", "sagittal"];
const TYPED = {
  int8: Int8Array, uint8: Uint8Array, int16: Int16Array, uint16: Uint16Array,
  int32: Int32Array, uint32: Uint32Array, float32: Float32Array, float64: Float64Array,
};

function typed(buf, dtype) {
  const T = TYPED[dtype];
  if (!T) throw new Error("unsupported voxel type " + dtype);
  let view = buf;
  if (buf instanceof ArrayBuffer) view = new DataView(buf);
  if (ArrayBuffer.isView(buf) && buf.constructor === T) return buf;
  let { buffer, byteOffset, byteLength } = view;
  if (byteOffset % T.BYTES_PER_ELEMENT !== 0) {
    buffer = buffer.slice(byteOffset, byteOffset + byteLength);
    byteOffset = 0;
  }
  return new T(buffer, byteOffset, byteLength / T.BYTES_PER_ELEMENT);
}

function el(tag, cls, attrs = {}) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

// m (4x4, row-major nested arrays) applied to [x, y, z, 1]: the first three coordinates
function apply(m, v) {
  const out = [];
  for (let r = 0; r < 3; r++) out.push(m[r][0] * v[0] + m[r][1] * v[1] + m[r][2] * v[2] + m[r][3]);
  return out;
}

function fmt(x, digits = 1) {
  return Number.isInteger(x) ? String(x) : x.toFixed(digits);
}

// a number as a person reads it on a workstation: 400, 40.5, 0.961, 1.2e+04
function fmtValue(x) {
  const a = Math.abs(x);
  if (a === 0) return "0";
  if (a >= 1e5 || a < 1e-3) return x.toExponential(2);
  if (a >= 100) return String(Math.round(x));
  if (a >= 1) return String(+x.toFixed(1));
  return String(+x.toPrecision(3));
}

// window/level exactly as medlab.render.window_level
function wlFunction(window, level) {
  const lo = level - window / 2;
  const k = 255 / window;
  return (x) => {
    let v = (x - lo) * k;
    v = v < 0 ? 0 : v > 255 ? 255 : v;
    return Math.floor(v + 0.5);
  };
}

function greyLevels(raw, dtype, window, level) {
  const f = wlFunction(window, level);
  const n = raw.length;
  const out = new Uint8Array(n);
  if (dtype === "int16" || dtype === "uint16" || dtype === "int8" || dtype === "uint8") {
    // a lookup table over the slice's own value range
    let lo = Infinity, hi = -Infinity;
    for (let i = 0; i < n; i++) { const v = raw[i]; if (v < lo) lo = v; if (v > hi) hi = v; }
    const lut = new Uint8Array(hi - lo + 1);
    for (let v = lo; v <= hi; v++) lut[v - lo] = f(v);
    for (let i = 0; i < n; i++) out[i] = lut[raw[i] - lo];
  } else {
    for (let i = 0; i < n; i++) out[i] = f(raw[i]);
  }
  return out;
}

#!/usr/bin/env node
/*
 * port_minimal.js -- a 2-layer MLP in plain Node that records as little as possible.
 *
 *   node port_minimal.js PARAMS BATCHES TRACE [--bug NAME] [--bug-from-step K] [--full] [--binary]
 *
 * Written without memstate: no npm packages. Reads a memstate params file and batches file, trains with plain
 * SGD (rows = samples, W [fan_in, fan_out], z = a @ W + b) and records per step only, in canonical names and
 * canonical layout:
 *
 *   x [B,n0]  y [B,C]  L1.W [n0,n1]  L1.b [n1]  L2.W [n1,C]  L2.b [C]    (parameters after the update)
 *
 * Map: port_minimal.map.toml (identity).
 *
 * --full records the whole canonical trace instead, in dataflow order (what memstate's `cmd:` contract needs
 * to compare it with its own implementations, docs/ports.md section 5):
 *   x y L1.z L1.a L2.z probs loss L2.dz L2.dW L2.db L1.da L1.dz L1.dW L1.db L1.W L1.b L2.W L2.b
 *
 * --binary writes TRACE as a binary trace directory instead of JSONL (docs/format.md, section 3.2), by hand:
 * header.json, and per step a safetensors file whose tensors lie sorted by name (as safetensors libraries
 * lay them out, not in dataflow order, which the "order" metadata gives), its header padded with spaces to
 * a multiple of 8 bytes, written to a .tmp name and renamed.
 *
 * Bugs (--bug, only on steps >= --bug-from-step K): softmax-global-sum, softmax-global-max, bias-grad-scalar,
 * grad-not-zeroed, momentum, weight-decay, round8 (toFixed(8)), loss-mean-over-classes, output-sigmoid.
 * Not log-zero-replaced: the loss value is only computed under --full, with log(0) = -inf.
 */
'use strict';
const fs = require('fs');

const NF = { nan: NaN, inf: Infinity, '-inf': -Infinity };
const die = (msg) => { process.stderr.write(`${process.argv[1]}: error: ${msg}\n`); process.exit(2); };
const need = (ok, msg) => { if (!ok) die(msg); };

// Flat float64 array of a memstate tensor object ("data" or "b64"; float64 or float32).
function values(t, where) {
  need(t && typeof t === 'object' && Array.isArray(t.shape) && t.shape.every((d) => Number.isInteger(d) && d >= 0) &&
    (t.dtype === 'float64' || t.dtype === 'float32') && (('data' in t) !== ('b64' in t)),
    `${where}: bad tensor object (shape, dtype, exactly one of data/b64)`);
  const n = t.shape.reduce((a, d) => a * d, 1), f32 = t.dtype === 'float32';
  if ('b64' in t) {
    need(typeof t.b64 === 'string' && /^[A-Za-z0-9+/]*={0,2}$/.test(t.b64) && t.b64.length % 4 === 0, `${where}: bad base64`);
    const buf = Buffer.from(t.b64, 'base64');
    need(buf.length === n * (f32 ? 4 : 8), `${where}: b64 byte count does not match the shape`);
    return Array.from({ length: n }, (_, i) => (f32 ? buf.readFloatLE(4 * i) : buf.readDoubleLE(8 * i)));
  }
  need(Array.isArray(t.data) && t.data.length === n, `${where}: data length does not match the shape`);
  return t.data.map((e) => {
    let v = typeof e === 'string' && Object.prototype.hasOwnProperty.call(NF, e) ? NF[e] : e;
    need(typeof v === 'number' && (Number.isFinite(e) || typeof e === 'string'), `${where}: bad data value ${JSON.stringify(e)}`);
    if (f32) { const r = Math.fround(v); need(!Number.isFinite(v) || Number.isFinite(r), `${where}: ${v} overflows float32`); v = r; }
    return v;
  });
}

function load(path, jsonl) {
  let text;
  try { text = fs.readFileSync(path, 'utf8'); } catch (e) { die(`cannot read ${path}: ${e.message}`); }
  const lines = jsonl ? text.replace(/\n$/, '').split('\n') : [text];
  return lines.map((l, i) => { try { return JSON.parse(l); } catch (e) { return die(`${path}, line ${i + 1}: invalid JSON (${e.message})`); } });
}

// {settings, steps: [{step, B, x (flat), y (flat)}]} from a memstate batches file.
function readBatches(path) {
  const recs = load(path, true), h = recs[0];
  need(h && h.format === 'memstate.trace' && h.version === 1, `${path}: not a memstate.trace version 1 file`);
  const st = h.meta && h.meta.settings, L = st && st.layers;
  need(Array.isArray(L) && L.length === 3 && L.every((n) => Number.isInteger(n) && n > 0) &&
    ['relu', 'sigmoid'].includes(st.activation) && ['mean', 'sum'].includes(st.loss_reduction) &&
    typeof st.learning_rate === 'number' && Number.isFinite(st.learning_rate),
    `${path}: meta.settings needs layers [n0, n1, n2], activation, loss_reduction and learning_rate`);
  const steps = [];
  let cur = null, last = -1;
  recs.slice(1).forEach((r, i) => {
    const where = `${path}, line ${i + 2}`;
    need(r && typeof r === 'object' && Number.isInteger(r.step) && r.step > last && (!cur || r.step === cur.step),
      `${where}: not a record, or step out of order`);
    if (r.end === true) {
      const got = cur ? cur.t : {};
      need(got.x && got.y, `${where}: step ${r.step} lacks x or y`);
      const [xs, ys] = [got.x.shape, got.y.shape];
      need(xs.length === 2 && xs[0] > 0 && xs[1] === L[0] && ys.length === 2 && ys[0] === xs[0] && ys[1] === L[2],
        `${where}: x [${xs}] and y [${ys}] do not fit layers [${L}]`);
      steps.push({ step: r.step, B: xs[0], x: got.x.v, y: got.y.v });
      cur = null; last = r.step;
    } else {
      cur = cur || { step: r.step, t: {} };
      need(typeof r.name === 'string' && !Object.prototype.hasOwnProperty.call(cur.t, r.name), `${where}: missing or repeated name`);
      cur.t[r.name] = { shape: r.shape, v: values(r, where) };
    }
  });
  need(steps.length, `${path}: no complete step`);
  return { settings: st, steps };
}

// {name: flat array} of L1.W [n0,n1], L1.b, L2.W [n1,n2], L2.b from a memstate params file.
function readParams(path, L) {
  const d = load(path, false)[0];
  need(d && d.format === 'memstate.params' && d.version === 1 && Array.isArray(d.tensors), `${path}: not a memstate.params version 1 file`);
  const out = {};
  for (const [name, shape] of [['L1.W', [L[0], L[1]]], ['L1.b', [L[1]]], ['L2.W', [L[1], L[2]]], ['L2.b', [L[2]]]]) {
    const t = d.tensors.find((e) => e && e.name === name);
    need(t && JSON.stringify(t.shape) === JSON.stringify(shape), `${path}: needs ${name} with shape [${shape}]`);
    out[name] = values(t, `${path}, tensor ${name}`);
  }
  return out;
}

function parseArgs(supported) {
  const pos = [], a = process.argv.slice(2);
  let bug = null, start = '0', full = false, binary = false;
  for (let i = 0; i < a.length; i++) {
    if (a[i] === '--bug') bug = a[++i] || '';
    else if (a[i] === '--bug-from-step') start = a[++i] || '';
    else if (a[i] === '--full') full = true;
    else if (a[i] === '--binary') binary = true;
    else pos.push(a[i]);
  }
  need(pos.length === 3 && !pos.some((p) => p.startsWith('-')), `usage: node ${process.argv[1]} PARAMS BATCHES TRACE [--bug NAME] [--bug-from-step K] [--full] [--binary]`);
  need(/^-?\d+$/.test(start), '--bug-from-step needs an integer');
  need(bug === null || supported.includes(bug), `unsupported bug ${JSON.stringify(bug)} (supported: ${supported.join(', ')})`);
  return { params: pos[0], batches: pos[1], trace: pos[2], bug, start: parseInt(start, 10), full, binary };
}

const fmt = (v) => (Number.isNaN(v) ? '"nan"' : v === Infinity ? '"inf"' : v === -Infinity ? '"-inf"' : Object.is(v, -0) ? '-0.0' : String(v));

function openTrace(path, impl) {
  try {
    const fd = fs.openSync(path, 'w');
    fs.writeSync(fd, JSON.stringify({ format: 'memstate.trace', version: 1, meta: { impl, dtype: 'float64' } }) + '\n');
    return fd;
  } catch (e) { return die(`cannot write ${path}: ${e.message}`); }
}

// A record [name, number | array | array of rows] as {name, shape, data (flat)}.
function flat([name, v]) {
  const shape = !Array.isArray(v) ? [] : Array.isArray(v[0]) ? [v.length, v[0].length] : [v.length];
  return { name, shape, data: shape.length === 0 ? [v] : shape.length === 2 ? v.flat() : v };
}

// One step's records and its terminator, in one write.
function writeStep(fd, k, recs) {
  const lines = recs.map(flat).map(({ name, shape, data }) =>
    `{"step": ${k}, "name": ${JSON.stringify(name)}, "shape": ${JSON.stringify(shape)}, "dtype": "float64", "data": [${data.map(fmt).join(', ')}]}`);
  fs.writeSync(fd, lines.concat([`{"step": ${k}, "end": true}`]).join('\n') + '\n');
}

function openBinary(dir, impl) {
  try {
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(`${dir}/header.json`, JSON.stringify({ format: 'memstate.trace', version: 1, encoding: 'binary', meta: { impl, dtype: 'float64' } }));
  } catch (e) { die(`cannot write ${dir}: ${e.message}`); }
}

// One step as a safetensors file: tensors sorted by name, "order" keeps the dataflow order.
function writeBinaryStep(dir, k, recs) {
  const named = recs.map(flat);
  const laid = [...named].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const head = {};
  let size = 0;
  for (const t of laid) {
    head[t.name] = { dtype: 'F64', shape: t.shape, data_offsets: [size, size + 8 * t.data.length] };
    size += 8 * t.data.length;
  }
  head.__metadata__ = { step: String(k), order: JSON.stringify(named.map((t) => t.name)) };
  let text = JSON.stringify(head);
  text += ' '.repeat((8 - (Buffer.byteLength(text) % 8)) % 8);
  const n = Buffer.byteLength(text), buf = Buffer.alloc(8 + n + size);
  buf.writeBigUInt64LE(BigInt(n), 0);
  buf.write(text, 8, 'utf8');
  let at = 8 + n;
  for (const t of laid) for (const v of t.data) { buf.writeDoubleLE(v, at); at += 8; }
  const file = `${dir}/step-${String(k).padStart(8, '0')}.safetensors`;
  fs.writeFileSync(`${file}.tmp`, buf);
  fs.renameSync(`${file}.tmp`, file);
}

// maths
const sigmoid = (z) => (z >= 0 ? 1 / (1 + Math.exp(-z)) : Math.exp(z) / (1 + Math.exp(z)));
const tot = (a) => { let s = 0; for (const v of a) s += v; return s; };
const vmax = (a) => Math.max(...a);
const rows = (f, r, c) => Array.from({ length: r }, (_, i) => f.slice(i * c, (i + 1) * c));
const T = (m) => m[0].map((_, j) => m.map((r) => r[j]));
const mm = (a, b) => { const bt = T(b); return a.map((r) => bt.map((c) => { let s = 0; for (let i = 0; i < r.length; i++) s += r[i] * c[i]; return s; })); };
const ew = (f, ...ms) => (Array.isArray(ms[0]) ? ms[0].map((_, i) => ew(f, ...ms.map((m) => m[i]))) : f(...ms));
const logz = (v, zero) => (v === 0 ? zero : Math.log(v));
const r8 = (v) => (Number.isFinite(v) ? Number(v.toFixed(8)) : v);

const BUGS = ['softmax-global-sum', 'softmax-global-max', 'bias-grad-scalar', 'grad-not-zeroed', 'momentum',
  'weight-decay', 'round8', 'loss-mean-over-classes', 'output-sigmoid'];

function main() {
  const args = parseArgs(BUGS);
  const { settings: st, steps } = readBatches(args.batches);
  const [n0, n1, n2] = st.layers;
  const lr = st.learning_rate, relu = st.activation === 'relu', mean = st.loss_reduction === 'mean';
  const P = readParams(args.params, st.layers);
  let W1 = rows(P['L1.W'], n0, n1), b1 = P['L1.b'].slice(), W2 = rows(P['L2.W'], n1, n2), b2 = P['L2.b'].slice();
  const fd = args.binary ? null : openTrace(args.trace, 'port_minimal');
  if (args.binary) openBinary(args.trace, 'port_minimal');
  const write = (k, recs) => (args.binary ? writeBinaryStep(args.trace, k, recs) : writeStep(fd, k, recs));
  let prev = null, vel = null, rounded = false;
  for (const { step: k, B, x: xf, y: yf } of steps) {
    const on = (name) => args.bug === name && k >= args.start;
    if (on('round8') && !rounded) { [W1, b1, W2, b2] = [W1, b1, W2, b2].map((p) => ew(r8, p)); rounded = true; }
    const x = rows(xf, B, n0), y = rows(yf, B, n2);
    const z1 = mm(x, W1).map((r) => r.map((v, j) => v + b1[j]));
    const a1 = z1.map((r) => r.map((z) => (relu ? (z <= 0 ? 0 : z) : sigmoid(z))));
    const z2 = mm(a1, W2).map((r) => r.map((v, j) => v + b2[j]));
    let p;
    if (on('output-sigmoid')) {
      p = z2.map((r) => r.map(sigmoid));
    } else {
      const gmax = vmax(z2.flat());
      const e = z2.map((r) => r.map((v) => Math.exp(v - (on('softmax-global-max') ? gmax : vmax(r)))));
      const gsum = tot(e.flat());
      p = e.map((r) => r.map((v) => v / (on('softmax-global-sum') ? gsum : tot(r))));
    }
    const R = (mean ? B : 1) * (on('loss-mean-over-classes') ? n2 : 1);
    const dz2 = p.map((r, s) => r.map((v, j) => (v - y[s][j]) / R));
    const dW2 = mm(T(a1), dz2);
    const db2 = on('bias-grad-scalar') ? new Array(n2).fill(tot(dz2.flat())) : T(dz2).map(tot);
    const da1 = mm(dz2, T(W2));
    const dz1 = da1.map((r, s) => r.map((d, i) => d * (relu ? (z1[s][i] > 0 ? 1 : 0) : a1[s][i] * (1 - a1[s][i]))));
    const dW1 = mm(T(x), dz1);
    const db1 = T(dz1).map(tot);
    let grads = [dW1, db1, dW2, db2];
    if (on('grad-not-zeroed') && prev) grads = grads.map((g, i) => ew((a, b) => a + b, g, prev[i]));
    prev = grads;
    let params = [W1, b1, W2, b2];
    if (on('momentum')) {
      vel = (vel || grads.map((g) => ew(() => 0, g))).map((v, i) => ew((a, d) => 0.9 * a + d, v, grads[i]));
      params = params.map((w, i) => ew((a, v) => a - lr * v, w, vel[i]));
    } else if (on('weight-decay')) {
      params = params.map((w, i) => ew(i % 2 === 0 ? (a, d) => a - lr * (d + 1e-2 * a) : (a, d) => a - lr * d, w, grads[i]));
    } else {
      params = params.map((w, i) => ew((a, d) => a - lr * d, w, grads[i]));
    }
    [W1, b1, W2, b2] = params;
    if (!args.full) {
      write(k, [['x', x], ['y', y], ['L1.W', W1], ['L1.b', b1], ['L2.W', W2], ['L2.b', b2]]);
      continue;
    }
    let loss = 0;
    for (let s = 0; s < B; s++) {
      for (let j = 0; j < n2; j++) {
        if (y[s][j] !== 0) loss += y[s][j] * logz(p[s][j], -Infinity);
        if (on('output-sigmoid') && 1 - y[s][j] !== 0) loss += (1 - y[s][j]) * logz(1 - p[s][j], -Infinity);
      }
    }
    const [gW1, gb1, gW2, gb2] = grads; // recorded as used (accumulated under grad-not-zeroed)
    write(k, [['x', x], ['y', y], ['L1.z', z1], ['L1.a', a1], ['L2.z', z2], ['probs', p], ['loss', -loss / R],
      ['L2.dz', dz2], ['L2.dW', gW2], ['L2.db', gb2], ['L1.da', da1], ['L1.dz', dz1], ['L1.dW', gW1], ['L1.db', gb1],
      ['L1.W', W1], ['L1.b', b1], ['L2.W', W2], ['L2.b', b2]]);
  }
  if (fd !== null) fs.closeSync(fd);
}

main();

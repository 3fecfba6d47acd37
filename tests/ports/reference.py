"""reference.py -- a stdlib-only, deliberately plain trainer that writes the CANONICAL memstate trace.

    python3 reference.py PARAMS BATCHES TRACE [--bug NAME [--bug-from-step K]]... [--safe-loss]

(memstate's test copy of /work/ports_staging/reference.py: several --bug options may be combined, each with
its own --bug-from-step, to plant a second bug behind a first; --safe-loss computes the loss by log-softmax.)

Trains the 2-layer MLP (n0 -> n1 -> n2) of the batches file's meta.settings with plain SGD from PARAMS on
every batch in order and records, per step (same step numbers as the batches file), in canonical names,
canonical layout (rows = samples, W [fan_in, fan_out]) and canonical dataflow order:

    x y L1.z L1.a L2.z probs loss L2.dz L2.dW L2.db L1.da L1.dz L1.dW L1.db L1.W L1.b L2.W L2.b

It is the yardstick for the foreign ports in this directory (selfcheck.py). It supports every bug, each
only on steps >= K (--bug-from-step, default 0). Definitions shared by all ports (R = B for "mean", 1 for
"sum"; C = classes):
  loss                    -sum_{y!=0} y*log(p) / R   (log(0) = -inf, so an underflowed true class gives inf)
  softmax-global-sum      exp(z - rowmax) / sum over the whole batch matrix
  softmax-global-max      exp(z - max of the whole matrix) / row sum (0/0 = nan when a row underflows)
  bias-grad-scalar        L2.db = [s]*n2 with s = sum of L2.dz over units and batch (recorded so)
  grad-not-zeroed         recorded and used dW/db = this step's + previous step's used (all 4 params)
  momentum                v = 0.9*v + g; P -= lr*v (all 4 params; v starts at 0 on the first buggy step)
  weight-decay            W -= lr*(dW + 1e-2*W) for L1.W, L2.W only; recorded dW is the plain gradient
  round8                  all params rounded to 8 decimals (Python round) at the start of the first step >= K
  log-zero-replaced       in the loss, log(p) of an exact p == 0 is log(1e-12)
  loss-mean-over-classes  R becomes R*C in the loss and in L2.dz
  output-sigmoid          probs = sigmoid(L2.z); loss = -sum(y log p + (1-y) log(1-p)) / R (terms with a
                          zero coefficient skipped); L2.dz = (p - y)/R
"""
import base64, json, math, struct, sys

BUGS = ("softmax-global-sum", "softmax-global-max", "bias-grad-scalar", "grad-not-zeroed", "momentum",
        "weight-decay", "round8", "log-zero-replaced", "loss-mean-over-classes", "output-sigmoid")
NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def die(msg):
    sys.stderr.write("%s: error: %s\n" % (sys.argv[0], msg))
    sys.exit(2)


def _no_constant(tok):
    raise ValueError("non-standard token %s" % tok)


def loads(text, where):
    try:
        return json.loads(text, parse_constant=_no_constant)
    except ValueError as e:
        die("%s: invalid JSON (%s)" % (where, e))


def tensor_values(obj, where):
    """(shape, flat list of float64) of a tensor object (docs/format.md section 1); dies if malformed."""
    if not isinstance(obj, dict):
        die("%s: not a tensor object" % where)
    shape, dtype = obj.get("shape"), obj.get("dtype")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        die("%s: bad shape %r" % (where, shape))
    if dtype not in ("float64", "float32"):
        die("%s: dtype must be float64 or float32, not %r" % (where, dtype))
    n = 1
    for d in shape:
        n *= d
    if ("data" in obj) == ("b64" in obj):
        die('%s: needs exactly one of "data" and "b64"' % where)
    try:
        if "b64" in obj:
            raw = base64.b64decode(obj["b64"], validate=True)
            size = 8 if dtype == "float64" else 4
            if len(raw) != n * size:
                die('%s: "b64" holds %d bytes but shape %s needs %d' % (where, len(raw), shape, n * size))
            return shape, list(struct.unpack("<%d%s" % (n, "d" if size == 8 else "f"), raw))
        data = obj["data"]
        if not isinstance(data, list) or len(data) != n:
            die('%s: "data" must be a list of %d values' % (where, n))
        vals = []
        for v in data:
            if isinstance(v, str) and v in NONFINITE:
                v = NONFINITE[v]
            elif type(v) not in (int, float) or math.isinf(v):
                die("%s: bad value %r in data" % (where, v))
            v = float(v)
            if dtype == "float32":
                v = struct.unpack("<f", struct.pack("<f", v))[0]
            vals.append(v)
        return shape, vals
    except (TypeError, ValueError, OverflowError) as e:
        die("%s: bad tensor (%s)" % (where, e))


def read_batches(path):
    """(settings, [(step, B, x_flat, y_flat), ...]) from a memstate batches trace."""
    try:
        lines = open(path, encoding="utf-8").read().split("\n")
    except (OSError, UnicodeDecodeError) as e:
        die("cannot read %s: %s" % (path, e))
    if lines[-1] == "":
        lines.pop()
    head = loads(lines[0], path + ", line 1") if lines else None
    if not isinstance(head, dict) or head.get("format") != "memstate.trace" or head.get("version") != 1:
        die("%s: line 1 is not a memstate.trace version 1 header" % path)
    meta = head.get("meta")
    st = meta.get("settings") if isinstance(meta, dict) else None
    if not isinstance(st, dict):
        die("%s: header has no meta.settings" % path)
    layers, lr = st.get("layers"), st.get("learning_rate")
    if not isinstance(layers, list) or len(layers) != 3 or not all(type(n) is int and n > 0 for n in layers):
        die("%s: meta.settings.layers must be 3 positive integers, not %r" % (path, layers))
    if st.get("activation") not in ("relu", "sigmoid"):
        die("%s: meta.settings.activation must be relu or sigmoid" % path)
    if st.get("loss_reduction") not in ("mean", "sum"):
        die("%s: meta.settings.loss_reduction must be mean or sum" % path)
    if type(lr) not in (int, float) or not math.isfinite(lr):
        die("%s: meta.settings.learning_rate must be a number" % path)
    steps, recs, cur, last = [], None, None, -1
    for no, line in enumerate(lines[1:], 2):
        where = "%s, line %d" % (path, no)
        obj = loads(line, where)
        if not isinstance(obj, dict) or type(obj.get("step")) is not int or obj["step"] < 0:
            die('%s: not a record with an integer "step"' % where)
        k = obj["step"]
        if k <= last or (recs is not None and k != cur):
            die("%s: step %d out of order" % (where, k))
        if obj.get("end") is True:
            recs = recs or {}
            if "x" not in recs or "y" not in recs:
                die("%s: step %d lacks x or y" % (where, k))
            (xs, x), (ys, y) = recs["x"], recs["y"]
            if len(xs) != 2 or len(ys) != 2 or xs[0] < 1 or xs[1] != layers[0] or ys != [xs[0], layers[2]]:
                die("%s: step %d: x %s / y %s do not fit layers %s" % (where, k, xs, ys, layers))
            steps.append((k, xs[0], x, y))
            recs, last = None, k
            continue
        if recs is None:
            recs, cur = {}, k
        name = obj.get("name")
        if not isinstance(name, str) or name in recs:
            die("%s: missing or repeated name %r" % (where, name))
        recs[name] = tensor_values(obj, "%s, tensor %r" % (where, name))
    if recs is not None:
        sys.stderr.write("%s: warning: incomplete last step %d ignored\n" % (sys.argv[0], cur))
    if not steps:
        die("%s: no complete step" % path)
    return {"layers": layers, "activation": st["activation"], "loss_reduction": st["loss_reduction"],
            "learning_rate": float(lr)}, steps


def read_params(path, layers):
    """{name: flat list} for L1.W, L1.b, L2.W, L2.b (canonical layout) from a params file."""
    try:
        doc = loads(open(path, encoding="utf-8").read(), path)
    except (OSError, UnicodeDecodeError) as e:
        die("cannot read %s: %s" % (path, e))
    if not isinstance(doc, dict) or doc.get("format") != "memstate.params" or doc.get("version") != 1:
        die("%s: not a memstate.params version 1 file" % path)
    if not isinstance(doc.get("tensors"), list):
        die('%s: "tensors" must be a list' % path)
    found = {}
    for t in doc["tensors"]:
        name = t.get("name") if isinstance(t, dict) else None
        found[name] = tensor_values(t, "%s, tensor %r" % (path, name))
    n0, n1, n2 = layers
    out = {}
    for name, shape in (("L1.W", [n0, n1]), ("L1.b", [n1]), ("L2.W", [n1, n2]), ("L2.b", [n2])):
        if name not in found:
            die("%s: no tensor %s" % (path, name))
        if found[name][0] != shape:
            die("%s: %s has shape %s, layers %s need %s" % (path, name, found[name][0], layers, shape))
        out[name] = found[name][1]
    return out


def parse_args(argv, supported):
    """PARAMS BATCHES TRACE, then any number of --bug NAME [--bug-from-step K] (each K applies to the --bug
    before it) and --safe-loss (the loss from the logits by log-softmax: finite where log(0) is not)."""
    pos, bugs, safe, i = [], {}, False, 0
    last = None
    while i < len(argv):
        if argv[i] == "--safe-loss":
            safe, i = True, i + 1
        elif argv[i] in ("--bug", "--bug-from-step") and i + 1 < len(argv):
            if argv[i] == "--bug":
                last = argv[i + 1]
                if last not in supported:
                    die("unsupported bug %r (this port supports: %s)" % (last, ", ".join(supported)))
                bugs[last] = 0
            else:
                try:
                    k = int(argv[i + 1])
                except ValueError:
                    die("--bug-from-step needs an integer")
                if last is None:
                    die("--bug-from-step must follow a --bug")
                bugs[last] = k
            i += 2
        elif argv[i].startswith("-"):
            die("unknown option %s" % argv[i])
        else:
            pos.append(argv[i])
            i += 1
    if len(pos) != 3:
        die("usage: %s PARAMS BATCHES TRACE [--bug NAME [--bug-from-step K]]... [--safe-loss]" % sys.argv[0])
    return pos[0], pos[1], pos[2], bugs, safe


def fmt(v):
    return "nan" if v != v else "inf" if v == math.inf else "-inf" if v == -math.inf else v


class Trace:
    def __init__(self, path, impl):
        try:
            self.f = open(path, "w", encoding="utf-8")
        except OSError as e:
            die("cannot write %s: %s" % (path, e))
        self.f.write(json.dumps({"format": "memstate.trace", "version": 1,
                                 "meta": {"impl": impl, "dtype": "float64"}}) + "\n")

    def step(self, k, records):
        lines = [json.dumps({"step": k, "name": n, "shape": s, "dtype": "float64", "data": [fmt(v) for v in d]})
                 for n, s, d in records]
        self.f.write("\n".join(lines + [json.dumps({"step": k, "end": True})]) + "\n")
        self.f.flush()


# ---------------------------------------------------------------- maths (IEEE behaviour, no exceptions)
def exp_(v):
    try:
        return math.exp(v)
    except OverflowError:
        return math.inf


def log_(v, zero=-math.inf):
    return v if v != v else zero if v == 0 else math.nan if v < 0 else math.log(v)


def div(a, b):
    try:
        return a / b
    except ZeroDivisionError:
        return math.nan if a != a or a == 0 else math.copysign(math.inf, a) * math.copysign(1.0, b)


def sigmoid(z):
    if z >= 0:
        return 1.0 / (1.0 + exp_(-z))
    e = exp_(z)
    return e / (1.0 + e)


def vmax(v):
    return math.nan if any(t != t for t in v) else max(v)


def total(it):
    s = 0.0
    for v in it:
        s += v
    return s


def ew(f, *ms):
    """f applied elementwise over equally nested lists."""
    return [ew(f, *t) for t in zip(*ms)] if isinstance(ms[0], list) else f(*ms)


def flat(m):
    return [v for r in m for v in r] if m and isinstance(m[0], list) else list(m)


def rows(f, r, c):
    return [f[i * c:(i + 1) * c] for i in range(r)]


def main():
    pp, bp, tp, bugs, safe = parse_args(sys.argv[1:], BUGS)
    st, steps = read_batches(bp)
    n0, n1, n2 = st["layers"]
    lr, relu = st["learning_rate"], st["activation"] == "relu"
    P = read_params(pp, st["layers"])
    prm = {"L1.W": rows(P["L1.W"], n0, n1), "L1.b": P["L1.b"], "L2.W": rows(P["L2.W"], n1, n2), "L2.b": P["L2.b"]}
    out = Trace(tp, "reference")
    prev, vel, rounded = None, {}, False
    for k, B, xf, yf in steps:
        on = lambda name: name in bugs and k >= bugs[name]
        if on("round8") and not rounded:
            prm = {n: ew(lambda v: round(v, 8) if math.isfinite(v) else v, w) for n, w in prm.items()}
            rounded = True
        W1, b1, W2, b2 = prm["L1.W"], prm["L1.b"], prm["L2.W"], prm["L2.b"]
        x, y = rows(xf, B, n0), rows(yf, B, n2)
        z1 = [[total(x[s][i] * W1[i][j] for i in range(n0)) + b1[j] for j in range(n1)] for s in range(B)]
        a1 = [[(0.0 if v <= 0 else v) if relu else sigmoid(v) for v in r] for r in z1]
        z2 = [[total(a1[s][i] * W2[i][j] for i in range(n1)) + b2[j] for j in range(n2)] for s in range(B)]
        if on("output-sigmoid"):
            p = [[sigmoid(v) for v in r] for r in z2]
        else:
            gmax = vmax(flat(z2))
            e = [[exp_(v - (gmax if on("softmax-global-max") else vmax(r))) for v in r] for r in z2]
            gsum = total(flat(e))
            p = [[div(v, gsum if on("softmax-global-sum") else total(r)) for v in r] for r in e]
        R = (B if st["loss_reduction"] == "mean" else 1) * (n2 if on("loss-mean-over-classes") else 1)
        zero = math.log(1e-12) if on("log-zero-replaced") else -math.inf
        terms = []
        for s in range(B):
            for j in range(n2):
                terms.append((y[s][j], p[s][j]))
                if on("output-sigmoid"):
                    terms.append((1.0 - y[s][j], 1.0 - p[s][j]))
        loss = -total(c * log_(q, zero) for c, q in terms if c != 0) / R
        if safe and not on("output-sigmoid"):
            lse = [vmax(r) + math.log(total(exp_(v - vmax(r)) for v in r)) for r in z2]
            loss = -total(y[s][j] * (z2[s][j] - lse[s]) for s in range(B) for j in range(n2) if y[s][j] != 0) / R
        dz2 = [[(p[s][j] - y[s][j]) / R for j in range(n2)] for s in range(B)]
        dW2 = [[total(a1[s][i] * dz2[s][j] for s in range(B)) for j in range(n2)] for i in range(n1)]
        db2 = [total(dz2[s][j] for s in range(B)) for j in range(n2)]
        if on("bias-grad-scalar"):
            db2 = [total(flat(dz2))] * n2
        da1 = [[total(dz2[s][j] * W2[i][j] for j in range(n2)) for i in range(n1)] for s in range(B)]
        dz1 = [[da1[s][i] * ((1.0 if z1[s][i] > 0 else 0.0) if relu else a1[s][i] * (1.0 - a1[s][i]))
                for i in range(n1)] for s in range(B)]
        dW1 = [[total(x[s][i] * dz1[s][j] for s in range(B)) for j in range(n1)] for i in range(n0)]
        db1 = [total(dz1[s][j] for s in range(B)) for j in range(n1)]
        g = {"L1.W": dW1, "L1.b": db1, "L2.W": dW2, "L2.b": db2}
        if on("grad-not-zeroed") and prev is not None:
            g = {n: ew(lambda a, b: a + b, g[n], prev[n]) for n in g}
        prev = g
        dW1, db1, dW2, db2 = g["L1.W"], g["L1.b"], g["L2.W"], g["L2.b"]  # recorded as used (accumulated)
        new = {}
        for n, w in prm.items():
            if on("momentum"):
                vel[n] = ew(lambda v, d: 0.9 * v + d, vel.get(n) or ew(lambda v: 0.0, w), g[n])
                new[n] = ew(lambda v, d: v - lr * d, w, vel[n])
            elif on("weight-decay") and n.endswith(".W"):
                new[n] = ew(lambda v, d: v - lr * (d + 1e-2 * v), w, g[n])
            else:
                new[n] = ew(lambda v, d: v - lr * d, w, g[n])
        prm = new
        m = lambda a: [len(a), len(a[0])]
        out.step(k, [("x", m(x), xf), ("y", m(y), yf), ("L1.z", m(z1), flat(z1)), ("L1.a", m(a1), flat(a1)),
                     ("L2.z", m(z2), flat(z2)), ("probs", m(p), flat(p)), ("loss", [], [loss]),
                     ("L2.dz", m(dz2), flat(dz2)), ("L2.dW", m(dW2), flat(dW2)), ("L2.db", [n2], db2),
                     ("L1.da", m(da1), flat(da1)), ("L1.dz", m(dz1), flat(dz1)), ("L1.dW", m(dW1), flat(dW1)),
                     ("L1.db", [n1], db1)] +
                [(n, m(prm[n]) if n.endswith(".W") else [len(prm[n])], flat(prm[n])) for n in prm])


if __name__ == "__main__":
    main()

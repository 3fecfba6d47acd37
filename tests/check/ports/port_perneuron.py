"""port_perneuron.py -- a 2-layer MLP written neuron by neuron (lists of Neuron objects, loops over samples).

    python3 port_perneuron.py PARAMS BATCHES TRACE [--bug NAME] [--bug-from-step K]

Written without memstate: stdlib only. Reads a memstate params file and batches file, trains with plain SGD
and writes a memstate JSONL trace (meta has only impl and dtype). Each neuron holds its incoming weights
`w` (fan_in), its bias `b` and its own gradient accumulators. It records canonical names in canonical layout
(rows = samples, W [fan_in, fan_out]), but no gradients at all:

    x [B,n0]  y [B,C]  L1.z L1.a [B,n1]  L2.z probs [B,C]  loss []  L1.W [n0,n1] L1.b [n1] L2.W [n1,C] L2.b [C]

loss = -sum over y != 0 of y*log(p), divided by B ("mean") or 1 ("sum"). Map: port_perneuron.map.toml
(identity).

Bugs (--bug, only on steps >= --bug-from-step K): softmax-global-sum, softmax-global-max, bias-grad-scalar,
grad-not-zeroed (the neurons' accumulators are not reset), momentum, weight-decay, round8, log-zero-replaced,
loss-mean-over-classes, output-sigmoid (loss is then the binary cross-entropy of every output).
"""
import base64, json, math, struct, sys

NF = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}

def die(msg):
    sys.stderr.write("%s: error: %s\n" % (sys.argv[0], msg))
    sys.exit(2)

def need(ok, msg):
    if not ok:
        die(msg)

def values(t, where):
    """Flat float64 list of a memstate tensor object ("data" or "b64"; float64 or float32)."""
    need(isinstance(t, dict) and isinstance(t.get("shape"), list) and t.get("dtype") in ("float64", "float32")
         and all(type(d) is int and d >= 0 for d in t["shape"]) and ("data" in t) != ("b64" in t),
         where + ": bad tensor object (shape, dtype, exactly one of data/b64)")
    n, f32 = math.prod(t["shape"]), t["dtype"] == "float32"
    try:
        if "b64" in t:
            raw = base64.b64decode(t["b64"], validate=True)
            need(len(raw) == n * (4 if f32 else 8), where + ": b64 byte count does not match the shape")
            return list(struct.unpack("<%d%s" % (n, "f" if f32 else "d"), raw))
        need(isinstance(t["data"], list) and len(t["data"]) == n, where + ": data length does not match the shape")
        v = [NF[e] if isinstance(e, str) else float(e) if type(e) in (int, float) and not math.isinf(e)
             else die("%s: bad data value %r" % (where, e)) for e in t["data"]]
        return [struct.unpack("<f", struct.pack("<f", e))[0] for e in v] if f32 else v
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        die("%s: bad tensor data (%s)" % (where, e))

def load(path, jsonl=False):
    bad = lambda c: die("%s: non-standard JSON token %s" % (path, c))
    try:
        text = open(path, encoding="utf-8").read()
        lines = text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")
        return [json.loads(l, parse_constant=bad) for l in lines] if jsonl else json.loads(text, parse_constant=bad)
    except (OSError, ValueError) as e:
        die("cannot read %s: %s" % (path, e))

def read_batches(path):
    """(settings, [(step, B, x_flat, y_flat)]) from a memstate batches file."""
    recs = load(path, jsonl=True)
    h = recs[0] if recs else None
    need(isinstance(h, dict) and h.get("format") == "memstate.trace" and h.get("version") == 1,
         path + ": not a memstate.trace version 1 file")
    st = h["meta"].get("settings") if isinstance(h.get("meta"), dict) else None
    L, lr = (st.get("layers"), st.get("learning_rate")) if isinstance(st, dict) else (None, None)
    need(isinstance(L, list) and len(L) == 3 and all(type(n) is int and n > 0 for n in L)
         and st.get("activation") in ("relu", "sigmoid") and st.get("loss_reduction") in ("mean", "sum")
         and type(lr) in (int, float) and math.isfinite(lr),
         path + ": meta.settings needs layers [n0, n1, n2], activation, loss_reduction and learning_rate")
    steps, cur, last = [], None, -1
    for no, r in enumerate(recs[1:], 2):
        where = "%s, line %d" % (path, no)
        need(isinstance(r, dict) and type(r.get("step")) is int and r["step"] > last
             and (cur is None or r["step"] == cur[0]), where + ": not a record, or step out of order")
        if r.get("end") is True:
            got = cur[1] if cur else {}
            need("x" in got and "y" in got, "%s: step %d lacks x or y" % (where, r["step"]))
            (xs, x), (ys, y) = got["x"], got["y"]
            need(len(xs) == 2 and xs[0] > 0 and xs[1] == L[0] and ys == [xs[0], L[2]],
                 "%s: x %s and y %s do not fit layers %s" % (where, xs, ys, L))
            steps.append((r["step"], xs[0], x, y))
            cur, last = None, r["step"]
        else:
            cur = cur or (r["step"], {})
            need(isinstance(r.get("name"), str) and r["name"] not in cur[1], where + ": missing or repeated name")
            cur[1][r["name"]] = (r.get("shape"), values(r, where))
    need(steps, path + ": no complete step")
    return st, steps

def read_params(path, L):
    """{name: flat list} of L1.W [n0,n1], L1.b, L2.W [n1,n2], L2.b from a memstate params file."""
    d = load(path)
    need(isinstance(d, dict) and d.get("format") == "memstate.params" and d.get("version") == 1
         and isinstance(d.get("tensors"), list), path + ": not a memstate.params version 1 file")
    got = {t.get("name"): t for t in d["tensors"] if isinstance(t, dict)}
    out = {}
    for name, shape in (("L1.W", [L[0], L[1]]), ("L1.b", [L[1]]), ("L2.W", [L[1], L[2]]), ("L2.b", [L[2]])):
        need(name in got and got[name].get("shape") == shape, "%s: needs %s with shape %s" % (path, name, shape))
        out[name] = values(got[name], "%s, tensor %s" % (path, name))
    return out

def parse_args(supported):
    pos, bug, start, it = [], None, "0", iter(sys.argv[1:])
    for a in it:
        if a in ("--bug", "--bug-from-step"):
            bug, start = (next(it, ""), start) if a == "--bug" else (bug, next(it, ""))
        else:
            pos.append(a)
    need(len(pos) == 3 and not any(p.startswith("-") for p in pos),
         "usage: %s PARAMS BATCHES TRACE [--bug NAME] [--bug-from-step K]" % sys.argv[0])
    need(start.lstrip("-").isdigit(), "--bug-from-step needs an integer")
    need(bug is None or bug in supported, "unsupported bug %r (supported: %s)" % (bug, ", ".join(supported)))
    return pos[0], pos[1], pos[2], bug, int(start)

def open_trace(path, impl):
    try:
        f = open(path, "w", encoding="utf-8")
    except OSError as e:
        die("cannot write %s: %s" % (path, e))
    f.write(json.dumps({"format": "memstate.trace", "version": 1, "meta": {"impl": impl, "dtype": "float64"}}) + "\n")
    return f

def write_step(f, k, recs):
    """One step's records (name, scalar | vector | matrix as list of rows) and its terminator, in one write."""
    fmt = lambda v: "nan" if v != v else "inf" if v == math.inf else "-inf" if v == -math.inf else v
    out = []
    for name, v in recs:
        shape = [] if not isinstance(v, list) else [len(v), len(v[0])] if isinstance(v[0], list) else [len(v)]
        data = [v] if not shape else [e for r in v for e in r] if len(shape) == 2 else v
        out.append(json.dumps({"step": k, "name": name, "shape": shape, "dtype": "float64",
                               "data": [fmt(e) for e in data]}))
    f.write("\n".join(out + [json.dumps({"step": k, "end": True})]) + "\n")
    f.flush()

# maths with IEEE results where Python would raise
def exp_(v):
    try:
        return math.exp(v)
    except OverflowError:
        return math.inf

def div(a, b):
    try:
        return a / b
    except ZeroDivisionError:
        return math.nan if a != a or a == 0 else math.copysign(math.inf, a) * math.copysign(1.0, b)

def sigmoid(z):
    return 1.0 / (1.0 + exp_(-z)) if z >= 0 else exp_(z) / (1.0 + exp_(z))

def tot(it):
    s = 0.0
    for v in it:
        s += v
    return s


log_ = lambda v, zero=-math.inf: v if v != v else zero if v == 0 else math.nan if v < 0 else math.log(v)
vmax = lambda v: math.nan if any(t != t for t in v) else max(v)
ew = lambda f, *ms: [ew(f, *t) for t in zip(*ms)] if isinstance(ms[0], list) else f(*ms)
flat = lambda m: [v for r in m for v in r]
rows = lambda f, r, c: [f[i * c:(i + 1) * c] for i in range(r)]
T = lambda m: [list(c) for c in zip(*m)]
mm = lambda a, b: (lambda bt: [[tot(x * y for x, y in zip(r, c)) for c in bt] for r in a])(T(b))
r8 = lambda v: round(v, 8) if math.isfinite(v) else v

BUGS = ("softmax-global-sum", "softmax-global-max", "bias-grad-scalar", "grad-not-zeroed", "momentum",
        "weight-decay", "round8", "log-zero-replaced", "loss-mean-over-classes", "output-sigmoid")


class Neuron:
    def __init__(self, w, b):
        self.w, self.b = list(w), b
        self.gw, self.gb = [0.0] * len(w), 0.0
        self.vw, self.vb = [0.0] * len(w), 0.0

    def z(self, inputs):
        return tot(wi * xi for wi, xi in zip(self.w, inputs)) + self.b


def main():
    pp, bp, tp, bug, start = parse_args(BUGS)
    st, steps = read_batches(bp)
    n0, n1, n2 = st["layers"]
    lr, relu, mean = float(st["learning_rate"]), st["activation"] == "relu", st["loss_reduction"] == "mean"
    P = read_params(pp, st["layers"])
    W1, W2 = rows(P["L1.W"], n0, n1), rows(P["L2.W"], n1, n2)
    hidden = [Neuron([W1[i][j] for i in range(n0)], P["L1.b"][j]) for j in range(n1)]
    output = [Neuron([W2[i][j] for i in range(n1)], P["L2.b"][j]) for j in range(n2)]
    f = open_trace(tp, "port_perneuron")
    rounded = False
    for k, B, xf, yf in steps:
        on = lambda name: bug == name and k >= start
        if on("round8") and not rounded:
            for n in hidden + output:
                n.w, n.b = [r8(v) for v in n.w], r8(n.b)
            rounded = True
        xs, ys = rows(xf, B, n0), rows(yf, B, n2)
        Z1, A1, Z2, PR = [], [], [], []
        for x in xs:
            z1 = [n.z(x) for n in hidden]
            a1 = [(0.0 if z <= 0 else z) if relu else sigmoid(z) for z in z1]
            Z1.append(z1), A1.append(a1), Z2.append([n.z(a1) for n in output])
        top = vmax(flat(Z2))
        for z2 in Z2:
            if on("output-sigmoid"):
                PR.append([sigmoid(z) for z in z2])
            else:
                PR.append([exp_(z - (top if on("softmax-global-max") else vmax(z2))) for z in z2])
        if not on("output-sigmoid"):
            batch_sum = tot(flat(PR))
            PR = [[div(e, batch_sum if on("softmax-global-sum") else tot(r)) for e in r] for r in PR]
        R = (B if mean else 1) * (n2 if on("loss-mean-over-classes") else 1)
        zero = math.log(1e-12) if on("log-zero-replaced") else -math.inf
        acc = 0.0
        for p, y in zip(PR, ys):
            for pj, yj in zip(p, y):
                if yj != 0:
                    acc += yj * log_(pj, zero)
                if on("output-sigmoid") and 1.0 - yj != 0:
                    acc += (1.0 - yj) * log_(1.0 - pj, zero)
        loss = -acc / R
        # backward, neuron by neuron
        d2 = [[(pj - yj) / R for pj, yj in zip(p, y)] for p, y in zip(PR, ys)]
        d1 = [[tot(d2[s][j] * output[j].w[i] for j in range(n2)) *
               ((1.0 if Z1[s][i] > 0 else 0.0) if relu else A1[s][i] * (1.0 - A1[s][i]))
               for i in range(n1)] for s in range(B)]
        keep = on("grad-not-zeroed")
        everything = tot(flat(d2))
        for layer, deltas, inputs in ((output, d2, A1), (hidden, d1, xs)):
            for j, n in enumerate(layer):
                gw = [tot(inputs[s][i] * deltas[s][j] for s in range(B)) for i in range(len(n.w))]
                gb = everything if layer is output and on("bias-grad-scalar") else tot(deltas[s][j] for s in range(B))
                n.gw, n.gb = ([g + o for g, o in zip(gw, n.gw)], gb + n.gb) if keep else (gw, gb)
        for n in hidden + output:
            if on("momentum"):
                n.vw, n.vb = [0.9 * v + g for v, g in zip(n.vw, n.gw)], 0.9 * n.vb + n.gb
                n.w, n.b = [w - lr * v for w, v in zip(n.w, n.vw)], n.b - lr * n.vb
            elif on("weight-decay"):
                n.w, n.b = [w - lr * (g + 1e-2 * w) for w, g in zip(n.w, n.gw)], n.b - lr * n.gb
            else:
                n.w, n.b = [w - lr * g for w, g in zip(n.w, n.gw)], n.b - lr * n.gb
        write_step(f, k, [("x", xs), ("y", ys), ("L1.z", Z1), ("L1.a", A1), ("L2.z", Z2), ("probs", PR),
                          ("loss", loss), ("L1.W", T([n.w for n in hidden])), ("L1.b", [n.b for n in hidden]),
                          ("L2.W", T([n.w for n in output])), ("L2.b", [n.b for n in output])])


if __name__ == "__main__":
    main()

"""The pure-Python MLP: lists of floats, the `math` module and explicit loops. No numpy.

This is the port people write by hand. A matrix is a list of rows, `a @ W` is a `sum` of products per
(row, column) pair, and the gradients are derived by hand: `dz = (probs - y) / B` for softmax
cross-entropy, then `dW = a^T dz`, `db = sum of dz over the batch`, `da = dz W^T` layer by layer.

Python floats are IEEE doubles, so this computes in float64. Where Python refuses what IEEE allows
(`math.exp` raises OverflowError, `math.log(0)` raises ValueError, `x / 0` raises ZeroDivisionError),
the helpers below give numpy's answers (inf, -inf, nan) instead, so that the buggy variants fail the
way they fail in every other implementation rather than crashing this one.

Inputs arrive as numpy arrays; `.tolist()` (a method call) turns them into lists without importing
numpy here. The memstate modules imported below are numpy-free (tests/impls/test_python_mlp.py checks).
"""

from __future__ import annotations

import math
import struct

from memstate.runner.variants import LOG_EPSILON, LOG_ZERO_REPLACEMENT  # the module imports no numpy

NAME = "python"
DTYPES = ("float64",)
META = {"computes_in": "float64 (Python floats are doubles)"}

INF, NAN = math.inf, math.nan
_FLOAT32 = struct.Struct("f")


def make(spec, params):
    return PythonMLP(spec, params)


# ---------------------------------------------------------------- IEEE arithmetic, as numpy does it

def _exp(v):
    try:
        return math.exp(v)
    except OverflowError:  # numpy: inf
        return INF


def _log(v):
    if v > 0:
        return math.log(v)
    return -INF if v == 0 else NAN  # log(0) = -inf; log of a negative number or of nan = nan


def _div(a, b):
    if b:
        return a / b
    if a == 0 or a != a:  # 0/0 and nan/0
        return NAN
    return math.copysign(INF, a) * math.copysign(1.0, b)  # x/0 = +-inf, sign from both operands


def _max(values):
    """numpy's max: nan as soon as one value is nan (builtin max would depend on where the nan is)."""
    top = max(values)
    return NAN if any(v != v for v in values) else top


def _f32(v):
    """The float32 nearest to v (as a Python float); out of float32 range -> +-inf as in numpy."""
    try:
        return _FLOAT32.unpack(_FLOAT32.pack(v))[0]
    except OverflowError:
        return math.copysign(INF, v)


def _floats(t):
    """A numpy array (or nested list) as nested lists of Python floats."""
    t = t.tolist() if hasattr(t, "tolist") else t
    return [_floats(v) for v in t] if isinstance(t, (list, tuple)) else float(t)


# ---------------------------------------------------------------- the network

class PythonMLP:
    def __init__(self, spec, params):
        self.spec = spec
        self.variant = spec.variant
        mix = spec.variant.dtype_mix
        self.mixed_layer = int(mix[1:]) - 1 if mix else None
        self.set_params(params)

    def set_params(self, params):
        n = self.spec.n_layers
        self.W = [_floats(params[f"L{i}.W"]) for i in range(1, n + 1)]  # [fan_in][fan_out]
        self.b = [_floats(params[f"L{i}.b"]) for i in range(1, n + 1)]
        digits = self.variant.round_loaded
        if digits is not None:  # a rounded params file
            self.W = [[[round(w, digits) for w in row] for row in W] for W in self.W]
            self.b = [[round(v, digits) for v in b] for b in self.b]
        self.prev_grads = None  # grads = "accumulate": added to the next step's
        self.velocity = None  # momentum

    def params(self):
        out = {}
        for i, (W, b) in enumerate(zip(self.W, self.b), start=1):
            out[f"L{i}.W"], out[f"L{i}.b"] = [row[:] for row in W], b[:]
        return out

    # -- forward pieces
    def dense(self, i, a):
        """z = a @ W + b for layer i (0-based)."""
        if i == self.mixed_layer:
            return self.dense_float32(i, a)
        cols = list(zip(*self.W[i]))
        return [[sum(x * w for x, w in zip(row, col)) + bj for col, bj in zip(cols, self.b[i])] for row in a]

    def dense_float32(self, i, a):
        """z = a @ W + b computed in float32 (the dtype_mix variant), returned as doubles.

        Every input is rounded to float32, then every product and every partial sum. This is exactly
        float32 arithmetic: the product of two float32 values is exact in a double (24 + 24 bits <= 53),
        and a double has more than 2*24 + 2 bits, so rounding the double sum of two float32 values to
        float32 gives the correctly rounded float32 sum (double rounding is innocuous). The sum runs in
        row order; a BLAS sgemm may sum in another order, so results agree to float32 rounding, not bits.
        """
        cols = [[_f32(w) for w in col] for col in zip(*self.W[i])]
        bias = [_f32(v) for v in self.b[i]]
        out = []
        for row in a:
            row = [_f32(v) for v in row]
            zrow = []
            for col, bj in zip(cols, bias):
                acc = 0.0
                for x, w in zip(row, col):
                    acc = _f32(acc + _f32(x * w))
                zrow.append(_f32(acc + bj))
            out.append(zrow)
        return out

    def activate(self, z):
        act = self.spec.activation
        if act == "relu":
            return max(z, 0.0)  # max(nan, 0.0) is nan, as in numpy
        if act == "shifted-relu":
            return max(z, -1.0)
        return 1.0 / (1.0 + _exp(-z))

    def activation_grad(self, z, a):
        act = self.spec.activation
        if act == "relu":
            return z > 0
        if act == "shifted-relu":
            return z > -1
        return a * (1.0 - a)

    def softmax(self, z):
        v = self.variant
        if v.output == "sigmoid":  # a sigmoid output layer, element by element
            return [[self.sigmoid(zj) for zj in row] for row in z]
        if v.softmax_max == "row":
            shifts = [_max(row) for row in z]
        elif v.softmax_max == "global":  # np.exp(x - np.max(x)): one max for the whole batch
            shifts = [_max([zj for row in z for zj in row])] * len(z)
        else:
            shifts = [0.0] * len(z)
        e = [[_exp(zj - m) for zj in row] for row, m in zip(z, shifts)]
        if v.softmax_sum == "row":
            return [[_div(ej, s) for ej in row] for row, s in zip(e, [sum(row) for row in e])]
        if v.softmax_sum == "global":  # np.sum(e): the whole matrix
            total = sum(ej for row in e for ej in row)
            return [[_div(ej, total) for ej in row] for row in e]
        sums = [sum(col) for col in zip(*e)]  # builtin sum over the rows: one sum per column
        return [[_div(ej, s) for ej, s in zip(row, sums)] for row in e]

    @staticmethod
    def sigmoid(v):
        if v >= 0:
            return 1.0 / (1.0 + _exp(-v))
        e = _exp(v)
        return e / (1.0 + e)

    def loss(self, z, probs, y):
        log = self.variant.log
        if self.variant.output == "sigmoid":  # binary cross-entropy, zero-coefficient terms skipped
            total = 0.0
            for prow, yrow in zip(probs, y):
                for p, yj in zip(prow, yrow):
                    total += (yj * _log(p) if yj != 0 else 0.0) + ((1.0 - yj) * _log(1.0 - p) if yj != 1 else 0.0)
        elif log == "safe":  # log-softmax from the logits
            total = 0.0
            for zrow, yrow in zip(z, y):
                m = _max(zrow)
                lse = _log(sum(_exp(zj - m) for zj in zrow))
                total += sum(yj * (zj - m - lse) for zj, yj in zip(zrow, yrow))
        elif log == "raw":  # 0 * log(0) = 0 * -inf = nan
            total = sum(yj * _log(p) for prow, yrow in zip(probs, y) for p, yj in zip(prow, yrow))
        elif log == "eps":
            total = sum(yj * _log(p + LOG_EPSILON) for prow, yrow in zip(probs, y) for p, yj in zip(prow, yrow))
        elif log == "replace":  # log(0) taken as log(1e-12)
            total = sum(yj * _log(LOG_ZERO_REPLACEMENT if p == 0 else p)
                        for prow, yrow in zip(probs, y) for p, yj in zip(prow, yrow))
        else:  # masked: np.ma.log drops every term whose log is not finite (p <= 0, nan, inf)
            total = sum(yj * _log(p) for prow, yrow in zip(probs, y) for p, yj in zip(prow, yrow)
                        if math.isfinite(_log(p)))
        total = -total
        total = total / len(z) if self.spec.loss_reduction == "mean" else total
        return total / len(z[0]) if self.variant.class_reduction == "mean" else total

    def bias_grad(self, dz):
        if self.variant.bias_grad_axis == "features" and len(dz) == len(dz[0]):
            return [sum(row) for row in dz]  # the bug: summed over the features
        if self.variant.bias_grad_axis == "scalar":
            total = sum(v for row in dz for v in row)  # the bug: one sum over everything
            return [total] * len(dz[0])
        return [sum(col) for col in zip(*dz)]

    # -- the interface
    def logits(self, x):
        a = _floats(x)
        n = self.spec.n_layers
        for i in range(n):
            z = self.dense(i, a)
            a = z if i == n - 1 else [[self.activate(v) for v in row] for row in z]
        return a

    def train_step(self, x, labels, lr, record):
        n, layers = self.spec.n_layers, self.spec.layers
        x, lr = _floats(x), float(lr)
        labels = [int(k) for k in (labels.tolist() if hasattr(labels, "tolist") else labels)]
        batch = len(x)
        self.spec.check_batch(batch)
        y = [[1.0 if j == k else 0.0 for j in range(layers[-1])] for k in labels]
        record("x", x)
        record("y", y)

        acts, zs = [x], []
        for i in range(n):
            z = self.dense(i, acts[-1])
            zs.append(z)
            record(f"L{i + 1}.z", z)
            if i < n - 1:
                a = [[self.activate(v) for v in row] for row in z]
                acts.append(a)
                record(f"L{i + 1}.a", a)
        probs = self.softmax(zs[-1])
        record("probs", probs)
        loss = self.loss(zs[-1], probs, y)
        record("loss", loss)

        mean = self.spec.loss_reduction == "mean"
        dz = [[(p - t) / batch if mean else p - t for p, t in zip(prow, yrow)] for prow, yrow in zip(probs, y)]
        if self.variant.class_reduction == "mean":
            dz = [[v / layers[-1] for v in row] for row in dz]
        grads = [None] * n
        for i in reversed(range(n)):
            record(f"L{i + 1}.dz", dz)
            dW = [[sum(a * d for a, d in zip(acol, dcol)) for dcol in zip(*dz)] for acol in zip(*acts[i])]
            db = self.bias_grad(dz)
            if self.prev_grads is not None:  # never zeroed: the previous step's gradients are still there
                pW, pb = self.prev_grads[i]
                dW = [[g + q for g, q in zip(grow, qrow)] for grow, qrow in zip(dW, pW)]
                db = [g + q for g, q in zip(db, pb)]
            record(f"L{i + 1}.dW", dW)
            record(f"L{i + 1}.db", db)
            grads[i] = (dW, db)
            if i > 0:
                da = [[sum(d * w for d, w in zip(drow, wrow)) for wrow in self.W[i]] for drow in dz]
                record(f"L{i}.da", da)
                dz = [[g * self.activation_grad(zv, av) for g, zv, av in zip(grow, zrow, arow)]
                      for grow, zrow, arow in zip(da, zs[i - 1], acts[i])]

        v = self.variant
        if v.grads == "accumulate":
            self.prev_grads = grads
        if v.momentum is not None:  # v = mu * v + g, and the step follows v
            mu = v.momentum
            old = self.velocity or [([[0.0] * len(r) for r in g[0]], [0.0] * len(g[1])) for g in grads]
            self.velocity = [([[mu * a + c for a, c in zip(vr, gr)] for vr, gr in zip(vW, gW)],
                              [mu * a + c for a, c in zip(vb, gb)]) for (vW, vb), (gW, gb) in zip(old, grads)]
            grads = self.velocity
        digits = v.round_params
        lam = v.weight_decay
        for i in range(n):
            dW, db = grads[i]
            if lam is not None:  # weight decay on the weights: W -= lr * (dW + lambda * W)
                dW = [[g + lam * w for w, g in zip(wrow, grow)] for wrow, grow in zip(self.W[i], dW)]
            W = [[w - lr * g for w, g in zip(wrow, grow)] for wrow, grow in zip(self.W[i], dW)]
            b = [v - lr * g for v, g in zip(self.b[i], db)]
            if digits is not None:  # the toFixed(8) "fix"
                W = [[round(w, digits) for w in row] for row in W]
                b = [round(v, digits) for v in b]
            self.W[i], self.b[i] = W, b
            record(f"L{i + 1}.W", W)
            record(f"L{i + 1}.b", b)
        return loss

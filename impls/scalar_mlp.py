"""The scalar-autodiff MLP: every weight, activation and probability is a `Value` (impls/scalar_engine.py).

Nothing here knows a derivative. Each training step wraps the parameters in fresh leaf Values, builds the
forward pass from scalar operations, calls `loss.backward()`, and reads every recorded gradient off the
graph: `L{i}.dz`, `L{i}.da` from the `.grad` of the z and activation nodes, `L{i}.dW`, `L{i}.db` from the
leaves. This is how a program written against an autodiff engine behaves (docs/variants.md):

- with `log = "safe"` the loss is the log-softmax of the logits (row max detached, a constant), so a
  softmax bug shows in `probs` only;
- with `raw`, `eps` or `masked` the loss is computed from the `probs` Values, so the bug reaches the
  gradients through them.

Two variants are not things an autodiff program can get wrong by itself, so they are applied by hand:
`bias_grad_axis = "features"` replaces a qualifying layer's bias gradient by dz summed over the features
(read from the graph) before the update, and `round_params` rounds after the update. `dtype_mix` rounds
that layer's inputs, products and partial sums to float32 in the graph (`Value.f32`, straight-through).

float64 only (Python floats are doubles). `logits` runs on plain floats, with no graph, for speed.
"""

from __future__ import annotations

import gc
import math

from memstate.impls.scalar_engine import Value, exp, f32, log
from memstate.runner.variants import LOG_EPSILON, LOG_ZERO_REPLACEMENT

NAME = "scalar"
DTYPES = ("float64",)
META = {"computes_in": "float64 (scalar autodiff on Python floats)"}


def make(spec, params):
    return ScalarMLP(spec, params)


def _floats(t):
    t = t.tolist() if hasattr(t, "tolist") else t
    return [_floats(v) for v in t] if isinstance(t, (list, tuple)) else float(t)


def _data(rows):
    return [[v.data for v in row] for row in rows]


def _grad(rows):
    return [[v.grad for v in row] for row in rows]


def _nanmax(values):
    """The largest value, nan if any is nan (as numpy's max)."""
    top = max(values)
    return top if all(v == v for v in values) else float("nan")


class ScalarMLP:
    def __init__(self, spec, params):
        self.spec = spec
        self.variant = spec.variant
        mix = spec.variant.dtype_mix
        self.mixed_layer = int(mix[1:]) - 1 if mix else None
        self.floor = {"relu": 0.0, "shifted-relu": -1.0}.get(spec.activation)
        self.set_params(params)

    def set_params(self, params):
        n = self.spec.n_layers
        self.W = [_floats(params[f"L{i}.W"]) for i in range(1, n + 1)]  # [fan_in][fan_out] floats
        self.b = [_floats(params[f"L{i}.b"]) for i in range(1, n + 1)]
        digits = self.variant.round_loaded
        if digits is not None:  # a rounded params file
            self.W = [[[round(w, digits) for w in row] for row in W] for W in self.W]
            self.b = [[round(v, digits) for v in b] for b in self.b]
        self.prev_grads = None  # grads = "accumulate": the optimizer never zeroes them
        self.velocity = None  # momentum: the optimizer's state

    def params(self):
        out = {}
        for i, (W, b) in enumerate(zip(self.W, self.b), start=1):
            out[f"L{i}.W"], out[f"L{i}.b"] = [row[:] for row in W], b[:]
        return out

    # -- the graph
    def dense(self, i, a, W, b):
        """z = a @ W + b from Values (a may hold plain floats: the input is a constant)."""
        cols = list(zip(*W))
        if i != self.mixed_layer:
            return [[Value.sum([w * x for x, w in zip(row, col)]) + bj for col, bj in zip(cols, b)] for row in a]
        # dtype_mix: float32 inputs, products and partial sums, summed in order
        cols = [[w.f32() for w in col] for col in cols]
        b = [bj.f32() for bj in b]
        out = []
        for row in a:
            row = [x.f32() if isinstance(x, Value) else f32(x) for x in row]
            zrow = []
            for col, bj in zip(cols, b):
                terms = [(x * w).f32() for x, w in zip(row, col)]
                acc = terms[0]
                for t in terms[1:]:
                    acc = (acc + t).f32()
                zrow.append((acc + bj).f32())
            out.append(zrow)
        return out

    def activate(self, z):
        return z.sigmoid() if self.floor is None else z.relu(self.floor)

    def softmax(self, z):
        v = self.variant
        if v.output == "sigmoid":
            return [[zj.sigmoid() for zj in row] for row in z]
        if v.softmax_max == "row":
            shifts = [_nanmax([zj.data for zj in row]) for row in z]  # constants: detached
        elif v.softmax_max == "global":
            shifts = [_nanmax([zj.data for row in z for zj in row])] * len(z)
        else:
            shifts = [None] * len(z)
        e = [[(zj if m is None else zj - m).exp() for zj in row] for row, m in zip(z, shifts)]
        if v.softmax_sum == "row":
            return [[ej / s for ej in row] for row, s in zip(e, [Value.sum(row) for row in e])]
        if v.softmax_sum == "global":
            total = Value.sum([ej for row in e for ej in row])
            return [[ej / total for ej in row] for row in e]
        sums = [Value.sum(col) for col in zip(*e)]
        return [[ej / s for ej, s in zip(row, sums)] for row in e]

    def loss(self, z, probs, y):
        how = self.variant.log
        terms = []
        if self.variant.output == "sigmoid":  # binary cross-entropy; zero-coefficient terms skipped
            for prow, yrow in zip(probs, y):
                for p, yj in zip(prow, yrow):
                    if yj != 0:
                        terms.append(yj * p.log())
                    if yj != 1:
                        terms.append((1.0 - yj) * (1.0 - p).log())
        elif how == "safe":  # log-softmax of the logits, the row max a constant
            for zrow, yrow in zip(z, y):
                m = _nanmax([zj.data for zj in zrow])
                shifted = [zj - m for zj in zrow]
                lse = Value.sum([s.exp() for s in shifted]).log()
                terms += [yj * (s - lse) for s, yj in zip(shifted, yrow)]
        else:
            for prow, yrow in zip(probs, y):
                for p, yj in zip(prow, yrow):
                    if how == "raw":
                        terms.append(yj * p.log())
                    elif how == "eps":
                        terms.append(yj * (p + LOG_EPSILON).log())
                    elif how == "replace":  # log(0) swapped for the constant log(1e-12)
                        terms.append(yj * (p.log() if p.data != 0 else Value(math.log(LOG_ZERO_REPLACEMENT))))
                    elif math.isfinite(log(p.data)):
                        terms.append(yj * p.log())  # masked: terms with a non-finite log are dropped
        total = -Value.sum(terms)
        total = total / len(z) if self.spec.loss_reduction == "mean" else total
        return total / len(z[0]) if self.variant.class_reduction == "mean" else total

    # -- the interface
    def logits(self, x):
        """Forward pass on plain floats (no graph), for evaluation."""
        a = _floats(x)
        n = self.spec.n_layers
        for i in range(n):
            cols = list(zip(*self.W[i]))
            if i == self.mixed_layer:  # as in dense(): float32 operands, products and partial sums
                cols = [[f32(w) for w in col] for col in cols]
                z = []
                for row in a:
                    row = [f32(v) for v in row]
                    zrow = []
                    for col, bj in zip(cols, self.b[i]):
                        acc = f32(row[0] * col[0])
                        for xv, w in zip(row[1:], col[1:]):
                            acc = f32(acc + f32(xv * w))
                        zrow.append(f32(acc + f32(bj)))
                    z.append(zrow)
            else:
                z = [[sum([xv * w for xv, w in zip(row, col)]) + bj for col, bj in zip(cols, self.b[i])] for row in a]
            if i == n - 1:
                return z
            if self.floor is None:
                a = [[1.0 / (1.0 + exp(-v)) for v in row] for row in z]
            else:
                a = [[max(v, self.floor) for v in row] for row in z]
        return a

    def train_step(self, x, labels, lr, record):
        # A step makes some 55,000 Values and no reference cycles (a node points only at its
        # children), so reference counting frees them all; the cyclic collector would only rescan
        # the growing graph again and again, which costs more than half the step. Pause it.
        paused = gc.isenabled()
        gc.disable()
        try:
            return self._train_step(x, labels, lr, record)
        finally:
            if paused:
                gc.enable()

    def _train_step(self, x, labels, lr, record):
        n, layers = self.spec.n_layers, self.spec.layers
        x, lr = _floats(x), float(lr)
        labels = [int(k) for k in (labels.tolist() if hasattr(labels, "tolist") else labels)]
        batch = len(x)
        self.spec.check_batch(batch)
        y = [[1.0 if j == k else 0.0 for j in range(layers[-1])] for k in labels]
        record("x", x)
        record("y", y)

        W = [[[Value(w) for w in row] for row in Wi] for Wi in self.W]  # fresh leaves: grads start at 0
        b = [[Value(v) for v in bi] for bi in self.b]
        acts, zs = [x], []
        for i in range(n):
            z = self.dense(i, acts[-1], W[i], b[i])
            zs.append(z)
            record(f"L{i + 1}.z", _data(z))
            if i < n - 1:
                a = [[self.activate(v) for v in row] for row in z]
                acts.append(a)
                record(f"L{i + 1}.a", _data(a))
        probs = self.softmax(zs[-1])
        record("probs", _data(probs))
        loss = self.loss(zs[-1], probs, y)
        record("loss", loss.data)

        loss.backward()
        grads = [None] * n
        for i in reversed(range(n)):
            dz = _grad(zs[i])
            dW = _grad(W[i])
            db = [v.grad for v in b[i]]
            if self.variant.bias_grad_axis == "features" and batch == layers[i + 1]:
                db = [sum(row) for row in dz]  # the bug, by hand: dz summed over the features
            if self.variant.bias_grad_axis == "scalar":
                db = [sum(v for row in dz for v in row)] * len(db)  # np.sum(dz), by hand
            if self.prev_grads is not None:  # gradients never zeroed: they add up across steps
                pW, pb = self.prev_grads[i]
                dW = [[g + q for g, q in zip(grow, qrow)] for grow, qrow in zip(dW, pW)]
                db = [g + q for g, q in zip(db, pb)]
            record(f"L{i + 1}.dz", dz)
            record(f"L{i + 1}.dW", dW)
            record(f"L{i + 1}.db", db)
            grads[i] = (dW, db)
            if i > 0:
                record(f"L{i}.da", _grad(acts[i]))

        v = self.variant
        if v.grads == "accumulate":
            self.prev_grads = grads
        if v.momentum is not None:  # the optimizer's velocity: v = mu * v + g
            old = self.velocity or [([[0.0] * len(r) for r in g[0]], [0.0] * len(g[1])) for g in grads]
            self.velocity = [([[v.momentum * a + c for a, c in zip(vr, gr)] for vr, gr in zip(vW, gW)],
                              [v.momentum * a + c for a, c in zip(vb, gb)]) for (vW, vb), (gW, gb) in zip(old, grads)]
            grads = self.velocity
        digits = v.round_params
        for i in range(n):
            dW, db = grads[i]
            if v.weight_decay is not None:  # the optimizer's weight decay, on the weights
                dW = [[g + v.weight_decay * w for w, g in zip(wrow, grow)] for wrow, grow in zip(self.W[i], dW)]
            self.W[i] = [[w - lr * g for w, g in zip(wrow, grow)] for wrow, grow in zip(self.W[i], dW)]
            self.b[i] = [v - lr * g for v, g in zip(self.b[i], db)]
            if digits is not None:
                self.W[i] = [[round(w, digits) for w in row] for row in self.W[i]]
                self.b[i] = [round(v, digits) for v in self.b[i]]
            record(f"L{i + 1}.W", self.W[i])
            record(f"L{i + 1}.b", self.b[i])
        return loss.data

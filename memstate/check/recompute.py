"""Recomputation rules for `memstate check`: every canonical tensor re-derived from the tensors it depends on.

Each rule is one operation of the MLP's training step (docs/format.md, section 4) written with the NumPy
implementation's own operations (`memstate.impls.numpy_mlp`), evaluated in float64 on the tensors *as recorded* in
the same step, plus the parameters in force (the params file at step 0, the previous step's updated
parameters after it). Besides its value a rule returns a *scale*: the magnitude of the terms the operation
combines, element by element (`|a| @ |W| + |b|` for a dense layer), so that a comparison can allow for
rounding relative to the terms and not to a result that cancelled to nearly zero. `terms` is how many
rounded operations feed one element (the length of the dot product, the row of a softmax), which bounds
the rounding error an honest implementation in the trace's dtype may make: about `terms * eps * scale`.

The inference helpers say what a trace does not: the activation, the loss reduction and the learning rate.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from memstate.impls import numpy_mlp as ref

ACTIVATIONS = ("relu", "shifted-relu", "sigmoid")
#: where the derivative of each piecewise-linear activation jumps (either side is a valid subgradient)
KINKS = {"relu": 0.0, "shifted-relu": -1.0}
LAYER_NAME = re.compile(r"^L(\d+)\.(z|a|dz|dW|db|da|W|b)$")

Tensors = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Settings:
    """What the rules need besides the tensors: None means unknown (the rules that need it are skipped)."""

    n_layers: int
    activation: str | None = None
    reduction: str | None = None
    lr: float | None = None
    dz_factor: float | None = None  # c in L{n}.dz = c * (probs - y), fitted when the reduction has no name


@dataclass(frozen=True)
class Rule:
    """One operation: `name = formula`, from recorded `inputs` of the same step and parameters in force."""

    name: str
    formula: str
    inputs: tuple[str, ...]
    params: tuple[str, ...]
    terms: Callable[[Tensors], int]
    fn: Callable[[Tensors, Tensors], tuple[np.ndarray, np.ndarray | Lazy]]
    needs: tuple[str, ...] = ()  # settings it needs: "activation", "reduction", "lr"
    invariant: str | None = None  # the reference-free invariant this rule also is, if any

    def missing_settings(self, s: Settings) -> list[str]:
        """The settings this rule needs that are unknown (an activation "other" is unknown too)."""
        return [k for k in self.needs if getattr(s, k) in (None, "other")
                and not (k == "reduction" and s.dz_factor is not None)]


def f64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


class Lazy:
    """A rule's scale computed when first asked for, then kept (issue 14). The scale of a matmul is another
    matmul (|a| @ |W|); an operation the trace reproduces bit for bit never needs it."""

    __slots__ = ("fn", "value")

    def __init__(self, fn: Callable[[], np.ndarray]):
        self.fn: Callable[[], np.ndarray] | None = fn
        self.value: np.ndarray | None = None

    def __call__(self) -> np.ndarray:
        if self.fn is not None:
            self.value, self.fn = self.fn(), None
        assert self.value is not None
        return self.value


def materialize(scale: np.ndarray | Lazy) -> np.ndarray:
    """A rule's scale as an array (a Lazy one is computed now)."""
    return scale() if isinstance(scale, Lazy) else scale


def _quiet(fn):
    def wrapped(*args, **kwargs):
        with np.errstate(all="ignore"):
            return fn(*args, **kwargs)
    return wrapped


def _a_prev(i: int) -> str:
    return "x" if i == 1 else f"L{i - 1}.a"


def _last_axis(name: str, extra: int = 0) -> Callable[[Tensors], int]:
    """A rule's `terms`: the length of tensor `name`'s last axis plus `extra` (a named function rather than a
    lambda with a default argument, whose type mypy cannot infer)."""
    return lambda t: t[name].shape[-1] + extra


def _first_axis(name: str) -> Callable[[Tensors], int]:
    """A rule's `terms`: the length of tensor `name`'s first axis (the batch)."""
    return lambda t: t[name].shape[0]


def rules(settings: Settings) -> dict[str, list[Rule]]:
    """The rules of an `n_layers` network, by tensor name; the first rule whose inputs are recorded applies."""
    out: dict[str, list[Rule]] = {}
    for family in (_forward_rules, _loss_rules, _backward_rules, _update_rules):
        for rule in family(settings):
            out.setdefault(rule.name, []).append(rule)
    return out


def _forward_rules(settings: Settings) -> list[Rule]:
    """z = a_prev @ W + b and a = act(z), layer by layer."""
    n, act = settings.n_layers, settings.activation
    out: list[Rule] = []
    add = out.append
    for i in range(1, n + 1):
        ap, W, b = _a_prev(i), f"L{i}.W", f"L{i}.b"

        def z_fn(t, p, ap=ap, W=W, b=b):
            a, w, bb = f64(t[ap]), f64(p[W]), f64(p[b])
            return ref.dense(a, w, bb), Lazy(lambda: np.abs(a) @ np.abs(w) + np.abs(bb))

        add(Rule(f"L{i}.z", f"{ap} @ {W} + {b}", (ap,), (W, b), _last_axis(ap, 1),
                 _quiet(z_fn)))

        if i < n:
            def a_fn(t, p, i=i):
                z = f64(t[f"L{i}.z"])
                v = ref.activate(act, z)
                return v, np.abs(v) + (np.abs(z) if act == "sigmoid" else 0)

            add(Rule(f"L{i}.a", f"{act}(L{i}.z)", (f"L{i}.z",), (), lambda t: 4, _quiet(a_fn), ("activation",)))
    return out


def _loss_rules(settings: Settings) -> list[Rule]:
    """probs = softmax(logits), the loss, and the output layer's dz = (probs - y) (/ B)."""
    n, red = settings.n_layers, settings.reduction
    out: list[Rule] = []
    add = out.append
    zl = f"L{n}.z"

    def probs_fn(t, p):
        # each probability is exp(z - max) / sum: it carries the rounding of z - max, u * |z - max| relative
        z = f64(t[zl])
        v = ref.softmax(z)
        return v, v * (1 + np.abs(z - z.max(axis=1, keepdims=True)))

    add(Rule("probs", f"softmax({zl}), each row's max subtracted", (zl,), (), lambda t: t[zl].shape[-1] + 4,
             _quiet(probs_fn)))

    factor = settings.dz_factor if red is None else None  # an unnamed reduction: c * the summed loss

    def loss_fn(t, p):
        z, y = f64(t[zl]), f64(t["y"])
        v = ref.cross_entropy(z, ref.softmax(z), y, "safe", red or "sum") * (1.0 if factor is None else factor)
        terms = np.abs(y) * (np.abs(z) + np.abs(z).max(axis=1, keepdims=True) + np.log(z.shape[1]))
        scale = terms.sum() * (abs(factor) if factor is not None else 1 / z.shape[0] if red == "mean" else 1)
        return v, np.asarray(abs(float(v)) + scale)

    def loss_from_probs_fn(t, p):
        pr, y = f64(t["probs"]), f64(t["y"])
        terms = np.where(y != 0, y * np.log(pr), 0.0)
        c = abs(factor) if factor is not None else 1 / pr.shape[0] if red == "mean" else 1
        total = -np.sum(terms) * (c if factor is None else factor)
        return np.asarray(total), np.asarray(abs(total) + np.abs(terms).sum() * c + 1.0)

    how = red if factor is None else f"{factor:.6g} * the summed"
    add(Rule("loss", f"{how} cross-entropy of log_softmax({zl}) against y", (zl, "y"), (),
             lambda t: t[zl].size + 4, _quiet(loss_fn), ("reduction",)))
    add(Rule("loss", f"{how} cross-entropy of probs against y", ("probs", "y"), (),
             lambda t: t["probs"].size + 4, _quiet(loss_from_probs_fn), ("reduction",)))

    def out_dz_fn(t, p):
        pr, y = f64(t["probs"]), f64(t["y"])
        v = ref.output_grad(pr, y, red) if factor is None else (pr - y) * factor
        s = np.abs(pr)
        if zl in t and t[zl].shape == pr.shape:  # an implementation may take probs from log-space
            z = f64(t[zl])
            s = s * (1 + np.abs(z - z.max(axis=1, keepdims=True)))
        c = abs(factor) if factor is not None else 1.0 / pr.shape[0] if red == "mean" else 1.0
        return v, (s + np.abs(y)) * c

    formula = f"(probs - y){' / B' if red == 'mean' else ''}" if factor is None else \
        f"{factor:.6g} * (probs - y) (the factor fitted: the loss reduction is neither mean nor sum)"
    add(Rule(f"L{n}.dz", formula, ("probs", "y"), (), lambda t: 4, _quiet(out_dz_fn),
             ("reduction",), invariant="output-dz-is-probs-minus-y" if factor is None else None))
    return out


def _backward_rules(settings: Settings) -> list[Rule]:
    """dW, db, da and the hidden dz, from the output layer down."""
    n, act = settings.n_layers, settings.activation
    out: list[Rule] = []
    add = out.append
    for i in range(n, 0, -1):
        ap, dz = _a_prev(i), f"L{i}.dz"

        def dW_fn(t, p, ap=ap, dz=dz):
            a, d = f64(t[ap]), f64(t[dz])
            return ref.weight_grad(a, d), Lazy(lambda: np.abs(a).T @ np.abs(d))

        def db_fn(t, p, dz=dz):
            d = f64(t[dz])
            return ref.bias_grad(d), np.abs(d).sum(axis=0)

        add(Rule(f"L{i}.dW", f"{ap}^T @ {dz}", (ap, dz), (), _first_axis(dz), _quiet(dW_fn)))
        add(Rule(f"L{i}.db", f"{dz} summed over the batch", (dz,), (), _first_axis(dz),
                 _quiet(db_fn)))
        if i < n:
            up, W = f"L{i + 1}.dz", f"L{i + 1}.W"

            def da_fn(t, p, up=up, W=W):
                d, w = f64(t[up]), f64(p[W])
                return ref.input_grad(d, w), Lazy(lambda: np.abs(d) @ np.abs(w).T)

            add(Rule(f"L{i}.da", f"{up} @ {W}^T", (up,), (W,), _last_axis(up), _quiet(da_fn)))

            def dz_fn(t, p, i=i):
                da, z, a = f64(t[f"L{i}.da"]), f64(t[f"L{i}.z"]), f64(t[f"L{i}.a"])
                g = ref.activation_grad(act, z, a)
                v = da * g
                if act in KINKS:  # at the kink both one-sided derivatives are right: accept either
                    at = z == KINKS[act]
                    if at.any():
                        rec = t[dz_name(i)] if dz_name(i) in t else None
                        if rec is not None and rec.shape == v.shape:
                            v = np.where(at & (f64(rec) == da), da, v)
                return v, np.abs(v) if act in KINKS else np.abs(da) * (np.abs(g) + np.abs(a))

            add(Rule(f"L{i}.dz", f"L{i}.da * {act}'(L{i}.z)", (f"L{i}.da", f"L{i}.z", f"L{i}.a"), (),
                     lambda t: 4, _quiet(dz_fn), ("activation",)))
    return out


def _update_rules(settings: Settings) -> list[Rule]:
    """The SGD updates W' = W - lr * dW of every parameter."""
    n, lr = settings.n_layers, settings.lr
    out: list[Rule] = []
    add = out.append
    for i in range(1, n + 1):
        for kind in ("W", "b"):
            name, grad = f"L{i}.{kind}", f"L{i}.d{kind}"

            def upd_fn(t, p, name=name, grad=grad):
                w, g = f64(p[name]), f64(t[grad])
                return ref.sgd_update(w, g, lr), Lazy(lambda: np.abs(w) + abs(lr) * np.abs(g))

            add(Rule(name, f"{name} in force - lr * {grad}", (grad,), (name,), lambda t: 4, _quiet(upd_fn),
                     ("lr",)))
    return out


def dz_name(i: int) -> str:
    return f"L{i}.dz"


def inputs_finite(rule: Rule, t: Tensors, p: Tensors) -> bool:
    return all(np.isfinite(t[k]).all() for k in rule.inputs) and all(np.isfinite(p[k]).all() for k in rule.params)


# ---------------------------------------------------------------- tolerances

EPS = {np.dtype("float64"): float(np.finfo(np.float64).eps), np.dtype("float32"): float(np.finfo(np.float32).eps)}


def rounding_bound(dtype: np.dtype, terms: int) -> float:
    """Relative (to the scale) error a correct implementation computing in `dtype` may make: ~ terms * eps."""
    return 2.0 * max(terms, 1) * EPS.get(np.dtype(dtype), EPS[np.dtype("float32")])


# ---------------------------------------------------------------- inference

def n_layers_of(names: list[str]) -> int | None:
    """The number of dense layers, from the highest L{i}.z (or L{i}.W) name of a step."""
    found = [int(m.group(1)) for m in map(LAYER_NAME.match, names) if m and m.group(2) in ("z", "W", "dz")]
    return max(found) if found else None


def activation_error(act: str, z: np.ndarray, a: np.ndarray) -> float:
    """Largest error of `a` against act(z), relative to max(|act(z)|, |z|) (0 is an exact match)."""
    z, a = f64(z), f64(a)
    with np.errstate(all="ignore"):
        v = ref.activate(act, z)
        both = np.isnan(v) & np.isnan(a)
        err = np.where(both, 0.0, np.abs(v - a))
        scale = np.maximum(np.abs(v), np.abs(z)) + np.finfo(np.float64).tiny
        r = np.where(both, 0.0, err / scale)
    r = np.where(np.isnan(r), np.inf, r)
    return float(r.max()) if r.size else 0.0


def infer_activation(t: Tensors, n_layers: int, dtype: np.dtype) -> tuple[str | None, dict[str, float]]:
    """relu, shifted-relu or sigmoid, whichever reproduces every hidden L{i}.a from L{i}.z; "other" if none.

    Returns (None, {}) when the step has no hidden (z, a) pair to look at.
    """
    pairs = [(t[f"L{i}.z"], t[f"L{i}.a"]) for i in range(1, n_layers)
             if f"L{i}.z" in t and f"L{i}.a" in t and t[f"L{i}.z"].shape == t[f"L{i}.a"].shape]
    if not pairs:
        return None, {}
    errors = {act: max(activation_error(act, z, a) for z, a in pairs) for act in ACTIVATIONS}
    best = min(errors, key=errors.__getitem__)
    return (best if errors[best] <= rounding_bound(dtype, 8) else "other"), errors


def infer_reduction(t: Tensors, n_layers: int) -> tuple[str | None, str, float | None]:
    """mean or sum, from the first of these the step records: the output layer's dz against probs - y, its
    dW against a^T (probs - y), its db against the batch sum of probs - y, the loss against the per-sample
    losses. Several gradients vote (one wrong gradient cannot decide alone).

    Returns (reduction or None, how it was decided, the fitted factor c of dz = c * (probs - y) or None).
    """
    n = n_layers
    probs, y = t.get("probs"), t.get("y")
    ratios: list[tuple[str, float]] = []
    if probs is not None and y is not None and probs.shape == y.shape:
        diff = f64(probs) - f64(y)
        a = t.get("x" if n == 1 else f"L{n - 1}.a")
        for name, base in ((f"L{n}.dz", diff), (f"L{n}.dW", None if a is None else _quiet_matmul(a, diff)),
                           (f"L{n}.db", diff.sum(axis=0))):
            r = ratio_of(t.get(name), base)
            if r is not None:
                ratios.append((name, r))
    if ratios and probs is not None:
        return vote(ratios, probs.shape[0])
    z, loss = t.get(f"L{n}.z"), t.get("loss")
    if z is not None and loss is not None and y is not None and loss.size == 1 and z.shape == y.shape:
        per = -np.sum(f64(y) * ref.log_softmax(f64(z)), axis=1)
        total = float(np.sum(per))
        if np.isfinite(total) and total != 0 and np.isfinite(float(loss.reshape(()))):
            ratio = float(loss.reshape(())) / total
            red, how = _reduction_from_ratio(ratio, z.shape[0], f"loss = {ratio:.6g} * the sum of per-sample losses")
            return red, how, None
    return None, "neither the output layer's dz nor the loss could be compared with probs - y", None


def _quiet_matmul(a: np.ndarray, d: np.ndarray) -> np.ndarray | None:
    with np.errstate(all="ignore"):
        a = f64(a)
        return a.T @ d if a.ndim == 2 and a.shape[0] == d.shape[0] else None


def ratio_of(value: np.ndarray | None, base: np.ndarray | None) -> float | None:
    """c in value = c * base (least squares over the finite elements), or None."""
    if value is None or base is None or value.shape != base.shape:
        return None
    v = f64(value)
    ok = np.isfinite(base) & np.isfinite(v)
    denom = float(np.sum(base[ok] ** 2))
    return float(np.sum(v[ok] * base[ok]) / denom) if denom > 0 else None


def vote(ratios: list[tuple[str, float]], batch: int) -> tuple[str | None, str, float | None]:
    """The reduction most of the output layer's gradients name; dz's own factor when none names one."""
    named = [(name, r, _reduction_from_ratio(r, batch, f"{name} = {r:.6g} * (probs - y)")) for name, r in ratios]
    votes = [red for _, _, (red, _) in named if red is not None]
    if votes:
        red = max(dict.fromkeys(votes), key=votes.count)
        how = "; ".join(h for _, _, (_, h) in named)
        return red, how, None
    name, r, (_, how) = named[0]
    return None, how, r if name.endswith(".dz") else None


def _reduction_from_ratio(ratio: float, batch: int, how: str) -> tuple[str | None, str]:
    if batch == 1 and abs(ratio - 1) < 1e-3:
        return "mean", how + " (batch of 1: mean and sum agree)"
    if abs(ratio * batch - 1) < 1e-3:
        return "mean", how + f" = 1/B, B = {batch}"
    if abs(ratio - 1) < 1e-3:
        return "sum", how
    return None, how + f": neither 1/B (B = {batch}) nor 1"


@dataclass(frozen=True)
class TensorFit:
    """lr fitted to one parameter's update at one step: lr_t = <g, W - W'> / <g, g>, known to `allowance`."""

    step: int
    name: str
    lr: float
    allowance: float


MAX_FITS = 100_000  # per-tensor fits an LrFit keeps (all are counted, and bound lo and hi)


@dataclass
class LrFit:
    """The learning rate of `p_new = p_old - lr * grad`, fitted per tensor and step, and their consensus.

    Robust: the consensus is the largest group of per-tensor fits that agree within their rounding
    allowances (the median of the fits on a long trace), so one tensor whose update is wrong (a bias never
    updated, a momentum term) cannot move it; that tensor is the odd one out.
    """

    fits: list[TensorFit] = field(default_factory=list)
    count: int = 0
    lo: float = np.inf
    hi: float = -np.inf

    def add(self, step: int, name: str, old: np.ndarray, new: np.ndarray, grad: np.ndarray) -> float | None:
        """Fit lr_t for one tensor of one step; returns it (None when the gradient is all zero)."""
        f = fit_one(step, name, old, new, grad)
        if f is None:
            return None
        self.count += 1
        self.lo, self.hi = min(self.lo, f.lr), max(self.hi, f.lr)
        if len(self.fits) < MAX_FITS:
            self.fits.append(f)
        return f.lr

    @property
    def lr(self) -> float | None:
        return consensus(self.fits)[0]

    def consistency(self, lr: float | None = None) -> tuple[float, tuple[int, str] | None]:
        """Largest |lr_t - lr| / allowance over the fitted tensors, and where (<= 1: one lr explains all)."""
        lr = self.lr if lr is None else lr
        worst, at = 0.0, None
        if lr is None:
            return worst, at
        for f in self.fits:
            r = abs(f.lr - lr) / (f.allowance + abs(lr) * 1e-12)
            if r > worst:
                worst, at = r, (f.step, f.name)
        return worst, at

    def per_name(self, lr: float | None) -> tuple[tuple[str, float, float, float, int, bool], ...]:
        """Per parameter: (name, median lr_t, lowest, highest, updates fitted, every fit agrees with `lr`)."""
        by: dict[str, list[TensorFit]] = {}
        for f in self.fits:
            by.setdefault(f.name, []).append(f)
        out = []
        for name, fs in by.items():
            v = np.array([f.lr for f in fs])
            agrees = lr is not None and all(abs(f.lr - lr) <= f.allowance + abs(lr) * 1e-12 for f in fs)
            out.append((name, float(np.median(v)), float(v.min()), float(v.max()), len(fs), agrees))
        return tuple(out)


def fit_one(step: int, name: str, old: np.ndarray, new: np.ndarray, grad: np.ndarray) -> TensorFit | None:
    """lr_t for one tensor: least squares of old - new = lr * grad over its finite elements."""
    dtype = new.dtype
    old, new, grad = f64(old), f64(new), f64(grad)
    if old.shape != new.shape or grad.shape != new.shape:
        return None
    d = (old - new).reshape(-1)
    g, kept = grad.reshape(-1), new.reshape(-1)
    gg, gd, kk = float(g @ g), float(g @ d), float(kept @ kept)
    if not (math.isfinite(gg) and math.isfinite(gd) and math.isfinite(kk)):
        # (all finite, the dots are those of the finite elements: a nan or inf in g, d or new, hence in old,
        # makes its dot nan or inf, and only then are the masked copies made)
        ok = np.isfinite(old.reshape(-1)) & np.isfinite(kept) & np.isfinite(g)
        g, d, kept = g[ok], d[ok], kept[ok]
        gg, gd, kk = float(g @ g), float(g @ d), float(kept @ kept)
    if not gg > 0:
        return None
    lr_t = gd / gg
    # new is rounded to its dtype, so lr_t is known to about eps * (|new| + |lr * grad|) / |grad|
    eps = EPS.get(np.dtype(dtype), EPS[np.dtype("float32")])
    allowance = 4 * eps * (math.sqrt(kk) + abs(lr_t) * np.sqrt(gg)) / np.sqrt(gg)
    return TensorFit(step, name, lr_t, allowance)


def consensus(fits: list[TensorFit]) -> tuple[float | None, list[TensorFit]]:
    """The learning rate most per-tensor fits agree on, and those fits.

    Up to 64 fits: the largest group agreeing with one fit within both allowances (ties: the earlier fit,
    so a weight outvotes its bias); more: the fits within their allowance of the median. The value is the
    median of the group.
    """
    if not fits:
        return None, []
    if len(fits) <= 64:
        groups = [[g for g in fits if abs(g.lr - f.lr) <= f.allowance + g.allowance + 1e-12 * abs(f.lr)]
                  for f in fits]
        group = max(groups, key=len)
    else:
        med = float(np.median([f.lr for f in fits]))
        group = [f for f in fits if abs(f.lr - med) <= f.allowance + 1e-12 * abs(med)] or fits
    return float(np.median([f.lr for f in group])), group


def lr_precision(dtype: str | np.dtype | None) -> float:
    """How closely a learning rate fitted from updates in `dtype` can be known (relative): 100 eps."""
    return 100 * EPS.get(np.dtype(dtype or "float64"), EPS[np.dtype("float32")])


def nice_lr(lr: float, dtype: str | np.dtype | None = "float64") -> float:
    """The shortest decimal within the fit's precision of a fitted learning rate (0.1, not 0.09999999999999998)."""
    rel = lr_precision(dtype)
    for digits in range(1, 18):
        v = float(f"{lr:.{digits}g}")
        if abs(v - lr) <= rel * abs(lr):
            return v
    return lr

"""The parameters in force are not the ones the run was given (params-load-mismatch): the params file's
values rounded to N decimals, truncated, cast to float32 or transposed when they were loaded (or saved and
reloaded mid-run).

Two ways to see it. When the caller knows the parameters in force (`memstate check --params`, or the
previous step's updated parameters), the side's forward pass (L{i}.z) or update (L{i}.W, L{i}.b) is redone
with each candidate transformation of them. When it does not (`diff` at a trace's first step), each side's
parameters in force are recovered from its own step: z - (a·W' + b') = lr·(a·dW + db) gives lr, then
W = W' + lr·dW, and one side's recovered parameters are compared with the other's transformed.
"""

from __future__ import annotations

import re
from typing import Callable, Iterator

import numpy as np

from memstate.diagnose.common import (PARAM, Side, all_finite, before_of, diagnoser, f64, fmt, in_force_of, is_f32,
                                      lstsq_fit, make, other_label, rel_err, same, sides, step_of, who)
from memstate.diagnose.context import Diagnosis, DivergenceContext

_Z = re.compile(r"^L(\d+)\.z$")
_DA = re.compile(r"^L(\d+)\.da$")
Transform = Callable[[np.ndarray], np.ndarray]


def _rounded(n: int) -> Transform:
    return lambda v: np.round(v, n)


def _truncated(n: int) -> Transform:
    return lambda v: np.trunc(v * 10.0**n) / 10.0**n


def _float32(v: np.ndarray) -> np.ndarray:
    return v.astype(np.float32).astype(np.float64)


def _transposed(v: np.ndarray) -> np.ndarray:
    return v.T


def transforms(square: bool) -> Iterator[tuple[str, Transform]]:
    """The ways a loader changes parameters, simplest first: (description, function)."""
    for n in range(0, 16):
        yield f"rounded to {n} decimals", _rounded(n)
    for n in range(0, 16):
        yield f"truncated to {n} decimals", _truncated(n)
    yield "cast to float32", _float32
    if square:
        yield "transposed", _transposed


def _layer_params(force: dict, i: int) -> tuple[np.ndarray, np.ndarray] | None:
    w, b = force.get(f"L{i}.W"), force.get(f"L{i}.b")
    if w is None or b is None or np.ndim(w) != 2:
        return None
    return f64(w), f64(b)


def _dense(a: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    if a.ndim != 2 or a.shape[1] != w.shape[0] or b.shape != (w.shape[1],):
        return None
    return a @ w + b


def _matches(x: np.ndarray, candidate: np.ndarray | None, plain: np.ndarray | None, ctx: DivergenceContext) -> bool:
    """The candidate reproduces x to rounding, while the untransformed one does not and is a thousand times
    worse (when the parameters as given reproduce x, nothing was changed when loading them: a transformation
    that leaves them as they are, such as rounding integers, must not be named)."""
    if candidate is None or candidate.shape != x.shape or not all_finite(candidate):
        return False
    err = rel_err(x, candidate)
    base = rel_err(x, plain) if plain is not None and plain.shape == x.shape else np.inf
    tol = 1e-6 if is_f32(ctx) else 1e-12
    return err <= tol < base and err <= 1e-3 * base


def _recompute(ctx: DivergenceContext, side: Side, force: dict, t: Transform
               ) -> tuple[np.ndarray | None, np.ndarray | None] | None:
    """(transformed, untransformed) recomputation of the side's tensor from the parameters in force."""
    m, mp = _Z.match(ctx.name), PARAM.match(ctx.name)
    if m:
        i = int(m.group(1))
        a = side.inputs.get("x" if i == 1 else f"L{i - 1}.a")
        wb = _layer_params(force, i)
        if a is None or wb is None:
            return None
        w, b = wb
        tw = t(w)
        if tw.shape != w.shape:
            return None
        return _dense(f64(a), tw, t(b) if b.ndim == 1 else b), _dense(f64(a), w, b)
    md = _DA.match(ctx.name)
    if md:  # L{i}.da = L{i+1}.dz @ W_{i+1}^T, with W in force
        i = int(md.group(1))
        dz_in, w_in = side.inputs.get(f"L{i + 1}.dz"), force.get(f"L{i + 1}.W")
        if dz_in is None or w_in is None or np.ndim(dz_in) != 2 or np.ndim(w_in) != 2:
            return None
        dz, w = f64(dz_in), f64(w_in)
        tw = t(w)
        if tw.shape != w.shape or dz.shape[1] != w.shape[1]:
            return None
        return dz @ tw.T, dz @ w.T
    if mp and ctx.name in force and ctx.in_force_from.startswith("params file"):
        # (the learning rate is fitted here: with so free a hand, only right after the params file is loaded)
        g = side.inputs.get(f"L{mp.group(1)}.d{mp.group(2)}")
        p = f64(force[ctx.name])
        tp = t(p)
        if g is None or tp.shape != p.shape or f64(g).shape != p.shape:
            return None
        fit = lstsq_fit(tp - side.x, f64(g))  # W' = T(W) - lr·dW, lr unknown
        if fit is None:
            return None
        lr = float(fit[0][0])
        return tp - lr * f64(g), p - lr * f64(g)
    return None


def _with_known(ctx: DivergenceContext) -> Diagnosis | None:
    """Redo the side's forward pass or update with each transformation of the parameters in force."""
    for side in sides(ctx):
        force = in_force_of(ctx, side)
        if force is None:
            continue
        square = any(np.ndim(v) == 2 and np.shape(v)[0] == np.shape(v)[1] for v in force.values())
        for how, t in transforms(square):
            got = _recompute(ctx, side, force, t)
            if got is None or got[0] is None or got[1] is None or not _matches(side.x, got[0], got[1], ctx):
                continue
            src = ctx.in_force_from or "the previous step"
            err, base = rel_err(side.x, got[0]), rel_err(side.x, got[1])
            return make("params-load-mismatch", 0.95,
                        f"{who(side)}'s {ctx.name} at step {ctx.step} is computed from the parameters in force "
                        f"({src}) {how}: redone that way it matches to rounding (error {fmt(err)} against "
                        f"{fmt(base)} with the parameters as given). The parameters were changed when they were "
                        f"loaded (a rounded text format, toFixed, a float32 buffer, a transposed layout). Fix: load "
                        f"them bit for bit (repr / 17 significant digits, float64, the canonical [in, out] layout).",
                        {"side": side.label, "transform": how, "params_from": src,
                         "error_transformed": err, "error_as_given": base})
    return None


def recovered_params(step: dict, i: int) -> tuple[np.ndarray, np.ndarray, float] | None:
    """Layer i's parameters in force at a step, from the step alone: z - (a·W' + b') = lr·(a·dW + db)."""
    names = ("x" if i == 1 else f"L{i - 1}.a", f"L{i}.z", f"L{i}.W", f"L{i}.b", f"L{i}.dW", f"L{i}.db")
    if any(n not in step for n in names):
        return None
    a, z, w1, b1, dw, db = (f64(step[n]) for n in names)
    after, grad = _dense(a, w1, b1), _dense(a, dw, db)
    if after is None or grad is None or after.shape != z.shape:
        return None
    fit = lstsq_fit(z - after, grad)
    if fit is None or fit[1] > 1e-6:
        return None
    lr = float(fit[0][0])
    return w1 + lr * dw, b1 + lr * db, lr


def _recovered(ctx: DivergenceContext) -> Diagnosis | None:
    """At a trace's first step with no parameters known: recover both sides' and compare them."""
    m = _Z.match(ctx.name) or PARAM.match(ctx.name)
    if not m or ctx.before_a or ctx.before_b or ctx.in_force_a is not None or ctx.in_force_b is not None:
        return None
    i = int(m.group(1))
    got_a, got_b = recovered_params(step_of(ctx, "A"), i), recovered_params(step_of(ctx, "B"), i)
    if got_a is None or got_b is None:
        return None
    tol = 1e-6 if is_f32(ctx) else 1e-11
    for side in sides(ctx):
        (wx, bx, lr), (wo, bo, _) = (got_a, got_b) if side.label == "A" else (got_b, got_a)
        for how, t in transforms(wx.shape[0] == wx.shape[1]):
            tw, tb = t(wo), t(bo)
            if tw.shape != wx.shape:
                continue
            err = max(rel_err(wx, tw), rel_err(bx, tb))
            base = max(rel_err(wx, wo), rel_err(bx, bo))
            # (the recovered parameters must differ by more than rounding: the same start is no mismatch)
            if err <= tol < base and err <= 1e-3 * base:
                return make("params-load-mismatch", 0.9,
                            f"{who(side)}'s layer-{i} parameters in force at step {ctx.step}, recovered from its own "
                            f"step (z - (a·W' + b') = lr·(a·dW + db) gives lr = {fmt(lr)}, then W = W' + lr·dW), "
                            f"are {other_label(side)}'s {how} (to {fmt(err)}, while they differ by {fmt(base)}): the "
                            f"parameters were changed when they were loaded. Fix: load them bit for bit (repr / 17 "
                            f"significant digits, float64, the canonical layout).",
                            {"side": side.label, "transform": how, "layer": i, "learning_rate": lr,
                             "error_transformed": err, "difference": base, "params_from": "recovered from the step"})
    return None


@diagnoser("params-load-mismatch")
def params_load_mismatch(ctx: DivergenceContext) -> Diagnosis | None:
    """The parameters in force are the given ones rounded, truncated, cast to float32 or transposed."""
    return _params_load_mismatch(ctx)


def _params_load_mismatch(ctx: DivergenceContext) -> Diagnosis | None:
    if not (_Z.match(ctx.name) or _DA.match(ctx.name) or PARAM.match(ctx.name)) or same(ctx.a, ctx.b):
        return None
    return _with_known(ctx) or _recovered(ctx)


__all__ = ["params_load_mismatch", "recovered_params", "transforms"]


def recovered_in_force(ctx: DivergenceContext, label: str) -> dict | None:
    """At a trace's first step with no parameters known, the parameters in force on side `label`, recovered
    from its own step, else from the other side's when both sides' forward pass agrees (same start)."""
    if before_of(ctx, label) or ctx.in_force_a is not None or ctx.in_force_b is not None:
        return None
    own, other = step_of(ctx, label), step_of(ctx, "B" if label == "A" else "A")
    out: dict = {}
    i = 1
    while f"L{i}.z" in own:
        got = recovered_params(own, i)
        if got is None and f"L{i}.z" in other and rel_err(own[f"L{i}.z"], other[f"L{i}.z"]) <= 1e-12:
            got = recovered_params(other, i)
        if got is None:
            return None
        out[f"L{i}.W"], out[f"L{i}.b"] = got[0], got[1]
        i += 1
    return out or None


__all__ += ["recovered_in_force"]

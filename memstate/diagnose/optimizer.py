"""Optimizer diagnosers: gradients that are never reset between steps (grad-not-zeroed), an update with
momentum left on (momentum: W' = W - lr·v, v = μ·v + dW) and one with weight decay left on (weight-decay:
W' = W - lr·(dW + λ·W)). They look across steps: the caller gives each side's previous steps and the
parameters in force (memstate.diagnose.context.DivergenceContext's `before_*` and `in_force_*`)."""

from __future__ import annotations

import numpy as np

from memstate.diagnose.common import (GRAD, PARAM, Side, before_of, close, diagnoser, exact_rtol, f64, fmt, in_force_of,
                                      is_f32, lstsq_fit, make, other_label, own_gradient, same, scale, sides, who)
from memstate.diagnose.context import Diagnosis, DivergenceContext
from memstate.diagnose.params import recovered_in_force


def _fit_tol(ctx: DivergenceContext) -> float:
    """Residual (over the update's norm) below which a fitted update rule is taken as exact."""
    return 1e-4 if is_f32(ctx) else 1e-8


@diagnoser("grad-not-zeroed")
def grad_not_zeroed(ctx: DivergenceContext) -> Diagnosis | None:
    """dW (or db) is this step's gradient plus the previous step's recorded one: gradients accumulate."""
    return _grad_not_zeroed(ctx)


def _grad_not_zeroed(ctx: DivergenceContext) -> Diagnosis | None:
    m = GRAD.match(ctx.name)
    if not m or m.group(2) not in ("W", "b") or same(ctx.a, ctx.b):
        return None
    rtol = exact_rtol(ctx)
    for side in sides(ctx):
        before = before_of(ctx, side)
        prev = before[0].get(ctx.name) if before else None
        if prev is None or f64(prev).shape != side.x.shape or scale(prev) == 0:
            continue
        prev = f64(prev)
        own = own_gradient(side.inputs, ctx.name)
        if own is not None and own.shape == side.x.shape:
            if not close(side.x, own + prev, rtol) or close(side.x, own, rtol):
                continue
            own_o = own_gradient(side.other_inputs, ctx.name)
            other_ok = own_o is not None and close(side.o, own_o, rtol)
            conf, how = (0.95 if other_ok else 0.85), "recomputed from its own activations and dz"
        elif ctx.inputs_agree and side.o.shape == prev.shape and close(side.x, side.o + prev, rtol):
            conf, how = 0.85, f"taking {other_label(side)}'s (inputs agree) as this step's gradient"
        else:
            continue
        return make("grad-not-zeroed", conf,
                    f"{who(side)}'s {ctx.name} at step {ctx.step} is this step's gradient ({how}) plus its "
                    f"{ctx.name} of the previous step: the gradients accumulate across steps because they are "
                    f"never reset. Fix: zero the gradients before each backward pass (optimizer.zero_grad(), "
                    f"or assign dW = ... instead of dW += ...).",
                    {"side": side.label, "previous_step_added": True, "recomputed": own is not None,
                     "max_abs_previous": scale(prev)})
    return None


def _update(ctx: DivergenceContext, label: str, x: np.ndarray, inputs: dict) -> tuple | None:
    """(W_in, u = W_in - W', g) for a parameter update on side `label`, when the parameters in force and the
    gradient are known."""
    m = PARAM.match(ctx.name)
    force = in_force_of(ctx, label) or recovered_in_force(ctx, label)
    g = inputs.get(f"L{m.group(1)}.d{m.group(2)}") if m else None
    if force is None or g is None or ctx.name not in force:
        return None
    w_in, g = f64(force[ctx.name]), f64(g)
    if w_in.shape != x.shape or g.shape != x.shape or scale(g) == 0:
        return None
    return w_in, w_in - x, g


def _plain(ctx: DivergenceContext, side: Side) -> float | None:
    """The learning rate of the other side's plain update W' = W - lr·dW, when it is one."""
    got = _update(ctx, other_label(side), side.o, side.other_inputs)
    if got is None:
        return None
    fit = lstsq_fit(got[1], got[2])
    return float(fit[0][0]) if fit is not None and fit[1] <= _fit_tol(ctx) else None


def _optimizer_fit(ctx: DivergenceContext, second) -> tuple[Side, float, float, float, float | None] | None:
    """For the first side whose update is `u = lr·g + c·second(side)` exactly but not `u = lr·g`:
    (side, lr, c, residual, the other side's plain lr or None)."""
    if not PARAM.match(ctx.name) or same(ctx.a, ctx.b):
        return None
    tol = _fit_tol(ctx)
    for side in sides(ctx):
        got = _update(ctx, side.label, side.x, side.inputs)
        if got is None:
            continue
        w_in, u, g = got
        extra = second(side, w_in, g)
        if extra is None:
            continue
        plain = lstsq_fit(u, g)
        fit = lstsq_fit(u, g, extra)
        if fit is None or fit[1] > tol or (plain is not None and plain[1] <= 100 * max(fit[1], tol)):
            continue
        (lr, c), resid = fit[0], fit[1]
        if lr <= 0 or c == 0:
            continue
        return side, float(lr), float(c), resid, _plain(ctx, side)
    return None


def _two_back(ctx: DivergenceContext, side: Side) -> bool:
    """Whether the side's previous two steps both hold the parameter, so that its previous update is known."""
    before = before_of(ctx, side)
    return len(before) >= 2 and ctx.name in before[1] and ctx.name in before[0]


def _previous_velocity(ctx: DivergenceContext, side: Side, g: np.ndarray):
    """The previous step's update lr·v (two steps back known), else the previous step's gradient (v = g on the
    first step with momentum)."""
    before = before_of(ctx, side)
    if _two_back(ctx, side):
        return f64(before[1][ctx.name]) - f64(before[0][ctx.name])
    m = PARAM.match(ctx.name)
    gp = before[0].get(f"L{m.group(1)}.d{m.group(2)}") if before and m else None
    return None if gp is None or f64(gp).shape != g.shape else f64(gp)


@diagnoser("momentum")
def momentum(ctx: DivergenceContext) -> Diagnosis | None:
    """The update is W' = W - lr·v with v = μ·v + dW: the previous step's update carried over."""
    return _momentum(ctx)


def _momentum(ctx: DivergenceContext) -> Diagnosis | None:
    found = _optimizer_fit(ctx, lambda side, w, g: _previous_velocity(ctx, side, g))
    if found is None:
        return None
    side, lr, c, resid, other_lr = found
    two_back = _two_back(ctx, side)  # (the velocity fitted: lr·v_prev, so c = μ; else dW_prev, so c = lr·μ)
    mu = c if two_back else c / lr
    if not 0.05 <= mu <= 1.5:
        return None
    return make("momentum", 0.95 if other_lr is not None else 0.85,
                f"{who(side)}'s {ctx.name} after the update is W - lr·v with v = μ·v_prev + d{ctx.name[3:]}: "
                f"fitted lr = {fmt(lr)}, μ = {fmt(mu)} (residual {fmt(resid)} of the update), while a plain "
                f"W - lr·dW does not fit{'' if other_lr is None else f' and {other_label(side)} steps plainly with lr = ' + fmt(other_lr)}. "
                f"An SGD with momentum (or Adam-like state) is on. Fix: plain SGD (momentum=0), or the same "
                f"optimizer on both sides.",
                {"side": side.label, "momentum": mu, "learning_rate": lr, "residual": resid,
                 "other_learning_rate": other_lr, "velocity_from": "previous update" if two_back else "previous gradient"})


@diagnoser("weight-decay")
def weight_decay(ctx: DivergenceContext) -> Diagnosis | None:
    """The update is W' = W - lr·(dW + λ·W): weight decay (L2 regularisation) left on."""
    return _weight_decay(ctx)


def _weight_decay(ctx: DivergenceContext) -> Diagnosis | None:
    found = _optimizer_fit(ctx, lambda side, w, g: w)
    if found is None:
        return None
    side, lr, c, resid, other_lr = found
    lam = c / lr
    if lam <= 0:
        return None
    return make("weight-decay", 0.95 if other_lr is not None else 0.85,
                f"{who(side)}'s {ctx.name} after the update is W - lr·(d{ctx.name[3:]} + λ·W): fitted lr = "
                f"{fmt(lr)}, λ = {fmt(lam)} (residual {fmt(resid)} of the update), while a plain W - lr·dW does "
                f"not fit{'' if other_lr is None else f' and {other_label(side)} steps plainly with lr = ' + fmt(other_lr)}. "
                f"Weight decay (weight_decay=..., an L2 term in the update) is on. Fix: weight_decay=0, or the same "
                f"regularisation on both sides.",
                {"side": side.label, "weight_decay": lam, "learning_rate": lr, "residual": resid,
                 "other_learning_rate": other_lr})


__all__ = ["grad_not_zeroed", "momentum", "weight_decay"]

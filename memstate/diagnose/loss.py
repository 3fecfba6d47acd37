"""Loss diagnosers: a loss that takes log of probabilities that are exactly 0 (log-of-zero), drops those
terms with a masked log (log-masked), or adds an epsilon inside the log (log-epsilon)."""

from __future__ import annotations

import math

import numpy as np

from memstate.diagnose.common import (Side, all_finite, diagnoser, f64, first_positions, fmt, is_f32, labels, logits,
                                      make, other_label, same, sides, who)
from memstate.diagnose.context import Diagnosis, DivergenceContext
from memstate.runner.variants import LOG_EPSILON  # the usual log(p + eps)



def _reductions(B: int) -> dict[str, float]:
    return {"mean": 1.0 / B, "sum": 1.0}


def _safe_loss(z: np.ndarray, y: np.ndarray) -> float:
    sh = z - z.max(axis=1, keepdims=True)
    lp = sh - np.log(np.exp(sh).sum(axis=1, keepdims=True))
    return float(-np.sum(y * lp))


def _loss_inputs(ctx: DivergenceContext, side: Side) -> tuple[np.ndarray, np.ndarray] | None:
    p = side.inputs.get("probs")
    if p is None:
        return None
    p = f64(p)
    y = labels(side.inputs, p)
    return (p, y) if y is not None else None


@diagnoser("log-of-zero")
def log_of_zero(ctx: DivergenceContext) -> Diagnosis | None:
    """The loss is -inf/inf/nan on one side only and that side's probs contain exact zeros: log(0)."""
    if ctx.name != "loss":
        return None
    for side in sides(ctx):
        if all_finite(side.x) or not all_finite(side.o):
            continue
        value = float(side.x.ravel()[0]) if side.x.size else math.nan
        got = _loss_inputs(ctx, side)
        if got is None:
            return make("log-of-zero", 0.45,
                        f"{who(side)}'s loss is {value} while {other_label(side)}'s is finite; the probs are not "
                        f"in the trace, so log(0) could not be confirmed.",
                        {"side": side.label, "loss": value, "probs_checked": False})
        p, y = got
        if not all_finite(p):
            continue  # non-finite probs: the nan comes from earlier (nan-origin)
        zero = p == 0
        if not zero.any():
            continue
        on_label = zero & (y != 0)
        off_label = zero & (y == 0)
        expected = "nan" if off_label.any() else "inf"
        kind = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        text = (f"{who(side)}'s loss is {kind} while {other_label(side)}'s is {fmt(float(side.o.ravel()[0]))}: its "
                f"probs have {int(zero.sum())} entries that are exactly 0 ({int(on_label.sum())} on a labelled class, "
                f"where -log(0) = inf; {int(off_label.sum())} elsewhere, where y*log(p) = 0*-inf = nan). The loss "
                f"takes log of the probabilities. Fix: compute it from the logits with log-softmax "
                f"(z - logsumexp(z)).")
        ev = {"side": side.label, "loss": value, "zero_probs": int(zero.sum()), "zero_on_label": int(on_label.sum()),
              "zero_off_label": int(off_label.sum()), "positions": first_positions(zero, 10),
              "expected_loss": expected, "probs_checked": True}
        return make("log-of-zero", 0.95 if kind.lstrip("-") == expected else 0.8, text, ev)
    return None


@diagnoser("log-masked")
def log_masked(ctx: DivergenceContext) -> Diagnosis | None:
    """A finite loss that equals the cross-entropy with the log(0) terms dropped (np.ma.log)."""
    if ctx.name != "loss" or not (all_finite(ctx.a) and all_finite(ctx.b)) or same(ctx.a, ctx.b):
        return None
    for side in sides(ctx):
        got = _loss_inputs(ctx, side)
        if got is None:
            continue
        p, y = got
        if not all_finite(p):
            continue
        dropped = (p == 0) & (y != 0)
        if not dropped.any():
            continue
        with np.errstate(all="ignore"):
            masked = float(-np.sum(np.where(p > 0, y * np.log(np.where(p > 0, p, 1.0)), 0.0)))
        loss = float(side.x.ravel()[0])
        for red, k in _reductions(len(p)).items():
            if abs(masked * k - loss) <= 1e-6 * max(abs(loss), 1e-12):
                return make("log-masked", 0.9,
                            f"{who(side)}'s loss {fmt(loss)} equals the {red} cross-entropy with the log(0) terms "
                            f"dropped: its probs are exactly 0 on {int(dropped.sum())} labelled entries "
                            f"({first_positions(dropped)}), which a masked log (np.ma.log) skips instead of "
                            f"counting as -log(0) = inf; {other_label(side)}'s loss is "
                            f"{fmt(float(side.o.ravel()[0]))}. Fix: log-softmax from the logits.",
                            {"side": side.label, "loss": loss, "masked_loss": masked * k, "reduction": red,
                             "dropped_terms": int(dropped.sum())})
    return None


def _fit_eps(p: np.ndarray, y: np.ndarray, k: float, target: float) -> float | None:
    """eps with -k·sum(y·log(p + eps)) = target (the loss falls as eps grows)."""

    def g(eps: float) -> float:
        with np.errstate(all="ignore"):
            return float(-k * np.sum(np.where(y != 0, y * np.log(p + eps), 0.0)))

    lo, hi = -30.0, 0.0  # log10 eps
    if not g(10.0**hi) <= target <= g(10.0**lo):
        return None
    for _ in range(200):
        mid = (lo + hi) / 2
        if g(10.0**mid) > target:
            lo = mid
        else:
            hi = mid
    return 10.0 ** ((lo + hi) / 2)


@diagnoser("log-epsilon")
def log_epsilon(ctx: DivergenceContext) -> Diagnosis | None:
    """The loss is lower by exactly what log(p + eps) instead of log(p) gives, for a small eps."""
    if ctx.name != "loss" or not (all_finite(ctx.a) and all_finite(ctx.b)) or same(ctx.a, ctx.b):
        return None
    f32 = is_f32(ctx)
    for side in sides(ctx):
        got = _loss_inputs(ctx, side)
        if got is None or not all_finite(got[0]):
            continue
        p, y = got
        loss, other = float(side.x.ravel()[0]), float(side.o.ravel()[0])
        if not loss < other:
            continue
        # the other side must be the correct loss, from its logits (or its probs), in some reduction
        zo = logits(ctx, side.other_inputs)
        yo = labels(side.other_inputs)
        po = side.other_inputs.get("probs")
        if zo is not None and yo is not None and zo.shape == yo.shape:
            ref = _safe_loss(zo, yo)
        elif po is not None and yo is not None and np.all(f64(po)[yo != 0] > 0):
            ref = float(-np.sum(yo * np.log(np.where(yo != 0, f64(po), 1.0))))
        else:
            continue
        tol = (1e-6 if f32 else 1e-12) * max(abs(other), 1e-300)
        for red, k in _reductions(len(p)).items():
            if abs(ref * k - other) > tol or other - loss <= 100 * tol:
                continue
            eps = _fit_eps(p, y, k, loss)
            if eps is None or eps > 1e-3:
                continue
            with np.errstate(all="ignore"):
                at_default = float(-k * np.sum(np.where(y != 0, y * np.log(p + LOG_EPSILON), 0.0)))
            exact = abs(at_default - loss) <= 0.02 * (other - loss) + tol
            decade = round(math.log10(eps))
            round_eps = abs(math.log10(eps) - decade) < 0.01
            conf = 0.95 if exact else (0.8 if round_eps else 0.5)
            if f32:
                conf -= 0.1
            shown = LOG_EPSILON if exact else (10.0**decade if round_eps else eps)
            return make("log-epsilon", conf,
                        f"{who(side)}'s loss {fmt(loss)} is {fmt(other - loss)} below {other_label(side)}'s {fmt(other)}, "
                        f"which is the correct {red} cross-entropy of its logits. Recomputed from {who(side)}'s probs, "
                        f"-{red}(y·log(p + eps)) gives exactly its loss for eps = {fmt(eps)}"
                        f"{' (the usual 1e-8)' if exact else ''}: the loss adds an epsilon inside the log, which "
                        f"biases it by about eps/p. Fix: compute the loss from the logits with log-softmax.",
                        {"side": side.label, "loss": loss, "reference_loss": other, "difference": other - loss,
                         "eps_fit": eps, "eps": shown, "loss_with_1e-8": at_default, "reduction": red})
    return None



__all__ = ["log_epsilon", "log_masked", "log_of_zero"]

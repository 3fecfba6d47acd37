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


def _has_loss(ctx: DivergenceContext) -> bool:
    """Whether both sides hold a loss value: a malformed trace can record an empty one, and a diagnoser must
    answer None there rather than raise."""
    return np.size(ctx.a) > 0 and np.size(ctx.b) > 0


def _loss_inputs(side: Side) -> tuple[np.ndarray, np.ndarray] | None:
    p = side.inputs.get("probs")
    if p is None:
        return None
    p = f64(p)
    y = labels(side.inputs, p)
    return (p, y) if y is not None else None


@diagnoser("log-of-zero")
def log_of_zero(ctx: DivergenceContext) -> Diagnosis | None:
    """The loss is -inf/inf/nan on one side only and that side's probs contain exact zeros: log(0)."""
    return _log_of_zero(ctx)


def _log_of_zero(ctx: DivergenceContext) -> Diagnosis | None:
    if ctx.name != "loss" or not _has_loss(ctx):
        return None
    for side in sides(ctx):
        if all_finite(side.x) or not all_finite(side.o):
            continue
        value = float(side.x.ravel()[0])
        got = _loss_inputs(side)
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
        conf = 0.95 if kind.lstrip("-") == expected else 0.8
        if log_zero_replaced(ctx) is not None:
            conf = min(conf, 0.9)  # the other side's finite loss is the same log(0) with the zeros swapped out
        return make("log-of-zero", conf, text, ev)
    return None


@diagnoser("log-masked")
def log_masked(ctx: DivergenceContext) -> Diagnosis | None:
    """A finite loss that equals the cross-entropy with the log(0) terms dropped (np.ma.log)."""
    return _log_masked(ctx)


def _log_masked(ctx: DivergenceContext) -> Diagnosis | None:
    if ctx.name != "loss" or not _has_loss(ctx) or not (all_finite(ctx.a) and all_finite(ctx.b)) or same(ctx.a, ctx.b):
        return None
    for side in sides(ctx):
        got = _loss_inputs(side)
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


def _plain_log_of(p: np.ndarray, y: np.ndarray, loss: float) -> bool:
    """Whether loss is -Σ y·log p of these probs (mean or sum) to rounding."""
    if np.any((p == 0) & (y != 0)):
        return False
    with np.errstate(all="ignore"):
        total = float(-np.sum(np.where(y != 0, y * np.log(np.where(y != 0, p, 1.0)), 0.0)))
    return any(abs(total * k - loss) <= 1e-12 * max(abs(loss), 1e-300) for k in _reductions(len(p)).values())


@diagnoser("log-epsilon")
def log_epsilon(ctx: DivergenceContext) -> Diagnosis | None:
    """The loss is lower by exactly what log(p + eps) instead of log(p) gives, for a small eps."""
    return _log_epsilon(ctx)


def _log_epsilon(ctx: DivergenceContext) -> Diagnosis | None:
    if ctx.name != "loss" or not _has_loss(ctx) or not (all_finite(ctx.a) and all_finite(ctx.b)) or same(ctx.a, ctx.b):
        return None
    f32 = is_f32(ctx)
    for side in sides(ctx):
        got = _loss_inputs(side)
        if got is None or not all_finite(got[0]):
            continue
        p, y = got
        loss, other = float(side.x.ravel()[0]), float(side.o.ravel()[0])
        if not loss < other or replaced_log(p, y, loss) is not None:
            continue  # (only the exact zeros swapped for a constant: log-zero-replaced)
        if _plain_log_of(p, y, loss):
            continue  # the side's loss is the plain cross-entropy of its own probs: no eps in it
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


def _output_layer(ctx: DivergenceContext) -> str | None:
    from memstate.diagnose.common import last_layer

    n = last_layer(ctx, ctx.inputs_a) or last_layer(ctx, ctx.inputs_b)
    return f"L{n}.dz" if n is not None else None


def _own_ce(ctx: DivergenceContext, inputs: dict) -> float | None:
    """The summed cross-entropy from the side's own logits (log-softmax), else from its probs."""
    y = labels(inputs)
    z = logits(ctx, inputs, y)
    if y is None:
        return None
    if z is not None:
        return _safe_loss(z, y)
    p = inputs.get("probs")
    if p is None or f64(p).shape != y.shape:
        return None
    p = f64(p)
    with np.errstate(all="ignore"):
        total = float(-np.sum(np.where(y != 0, y * np.log(np.where(y != 0, p, 1.0)), 0.0)))
    return total if math.isfinite(total) else None


@diagnoser("loss-mean-over-classes")
def loss_mean_over_classes(ctx: DivergenceContext) -> Diagnosis | None:
    """The loss (and the output dz) divided by B·C (or C): averaged over every entry of the B×C matrix."""
    return _loss_mean_over_classes(ctx)


def _loss_mean_over_classes(ctx: DivergenceContext) -> Diagnosis | None:
    is_dz = ctx.name == _output_layer(ctx)
    if (ctx.name != "loss" and not is_dz) or same(ctx.a, ctx.b):
        return None
    rtol = 1e-5 if is_f32(ctx) else 1e-9
    for side in sides(ctx):
        y = labels(side.inputs)
        if y is None or y.shape[1] < 2 or not all_finite(side.x):
            continue
        B, C = y.shape
        if is_dz:
            p = side.inputs.get("probs")
            if p is None or f64(p).shape != y.shape or side.x.shape != y.shape:
                continue
            base, po, yo = f64(p) - y, side.other_inputs.get("probs"), labels(side.other_inputs)
            base_o = f64(po) - yo if po is not None and yo is not None and f64(po).shape == yo.shape else None
        else:
            ce, ce_o = _own_ce(ctx, side.inputs), _own_ce(ctx, side.other_inputs)
            if ce is None:
                continue
            base, base_o = np.asarray(ce), (np.asarray(ce_o) if ce_o is not None else None)
        for red, R in (("mean", B), ("sum", 1)):
            if R * C == B and red == "sum":
                continue  # (p - y)/C is the mean's (p - y)/B: nothing to tell them apart
            want = base / (R * C)
            if not _close_rel(side.x, want, rtol) or _close_rel(side.x, base / R, rtol):
                continue
            other_ok = base_o is not None and _close_rel(side.o, base_o / R, rtol)
            return make("loss-mean-over-classes", 0.95 if other_ok else 0.85,
                        f"{who(side)}'s {ctx.name} is the {red} cross-entropy divided again by the number of classes "
                        f"C = {C} (recomputed from its own {'probs' if is_dz else 'logits/probs'}): the loss is "
                        f"averaged over all {B}×{C} entries of the matrix (e.g. a mean over both axes, "
                        f"nn.BCELoss/MSE-style reduction) instead of summed over classes, so every gradient is "
                        f"{C} times too small. Fix: sum over the classes, then {'average' if red == 'mean' else 'sum'} "
                        f"over the batch.",
                        {"side": side.label, "classes": C, "batch_size": B, "reduction": red,
                         "factor": 1.0 / C, "other_side_correct": other_ok})
    return None


def _close_rel(x: np.ndarray, y: np.ndarray, rtol: float) -> bool:
    x, y = f64(x), f64(y)
    if x.shape != y.shape or not (all_finite(x) and all_finite(y)):
        return False
    s = max(float(np.abs(x).max(initial=0.0)), float(np.abs(y).max(initial=0.0)))
    return float(np.abs(x - y).max(initial=0.0)) <= rtol * s


def replaced_log(p: np.ndarray, y: np.ndarray, loss: float) -> tuple[str, float, int] | None:
    """(reduction, c, zero terms) when loss = -Σ y·log(p) / R with log(p) of each exact p == 0 taken as log(c),
    c a power of ten (or c = 0 for np.nan_to_num's most negative float), reproduced to rounding; else None."""
    zero = (p == 0) & (y != 0)
    if not zero.any() or not math.isfinite(loss):
        return None
    keep = (y != 0) & (p > 0)
    with np.errstate(all="ignore"):
        rest = float(-np.sum(y[keep] * np.log(p[keep])))
    n0 = float(y[zero].sum())
    for red, R in (("mean", len(p)), ("sum", 1)):
        log_c = (rest - loss * R) / n0
        if math.log(1e-300) < log_c < math.log(1e-3):
            c = 10.0 ** round(log_c / math.log(10))
            candidates = [(c, math.log(c))]
        else:  # np.nan_to_num(np.log(p)): -inf becomes the most negative float
            candidates = [(0.0, -float(np.finfo(np.float64).max))]
        for c, log_value in candidates:
            again = (rest - n0 * log_value) / R
            if abs(again - loss) <= 1e-11 * max(abs(loss), 1e-300):
                return red, c, int(zero.sum())
    return None


@diagnoser("log-zero-replaced")
def log_zero_replaced(ctx: DivergenceContext) -> Diagnosis | None:
    """A finite loss whose log(p) of exact zeros was swapped for a constant log(c) (only those terms)."""
    return _log_zero_replaced(ctx)


def _log_zero_replaced(ctx: DivergenceContext) -> Diagnosis | None:
    if ctx.name != "loss" or not _has_loss(ctx) or same(ctx.a, ctx.b):
        return None
    for side in sides(ctx):
        if not all_finite(side.x):
            continue
        got = _loss_inputs(side)
        if got is None or not all_finite(got[0]):
            continue
        p, y = got
        loss = float(side.x.ravel()[0])
        found = replaced_log(p, y, loss)
        if found is None:
            continue
        red, c, n = found
        log_c = math.log(c) if c > 0 else -float(np.finfo(np.float64).max)
        other = float(side.o.ravel()[0])
        ce_o = _own_ce(ctx, side.other_inputs)
        k = 1.0 / len(p) if red == "mean" else 1.0
        other_ok = not math.isfinite(other) or (ce_o is not None and abs(ce_o * k - other) <= 1e-9 * abs(other))
        return make("log-zero-replaced", 0.95 if other_ok else 0.85,
                    f"{who(side)}'s loss {fmt(loss)} is the {red} cross-entropy of its own probs with log(p) of the "
                    f"{n} labelled probabilities that are exactly 0 replaced by "
                    f"{f'log({fmt(c)}) = {fmt(log_c)}' if c > 0 else f'{fmt(log_c)} (np.nan_to_num of -inf)'}, "
                    f"every other term untouched (not log(p + eps)); {other_label(side)}'s loss is {fmt(other)}. "
                    f"The zeros (and nan) are swapped for a constant, which hides the underflowed rows. Fix: compute "
                    f"the loss from the logits with log-softmax.",
                    {"side": side.label, "loss": loss, "replacement": c, "log_replacement": log_c,
                     "zero_terms": n, "reduction": red, "other_loss": other, "other_side_correct": other_ok})
    return None


__all__ += ["log_zero_replaced", "loss_mean_over_classes", "replaced_log"]

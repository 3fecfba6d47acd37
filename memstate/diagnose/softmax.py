"""Softmax diagnosers: probs computed with the batch's max (softmax-global-max), normalised by the whole
matrix's sum (softmax-global-sum) or by column sums (softmax-column-sum), or with no max subtracted
(softmax-no-max). Each redoes the softmax from that side's own logits, in its own dtype."""

from __future__ import annotations

from typing import Callable

import numpy as np

import memstate.impls.numpy_mlp as numpy_reference
from memstate.diagnose.common import (Side, all_finite, close_each, diagnoser, f64, fmt, is_f32, labels, logits, make, same,
                                      sides, who)
from memstate.diagnose.context import Diagnosis, DivergenceContext

MAX_MODES = ("row", "global", "none")
SUM_MODES = ("row", "global", "column")


def softmax_form(z: np.ndarray, max_mode: str, sum_mode: str) -> np.ndarray:
    """Softmax of `z` the way memstate.runner.variants' softmax switches compute it: the reference's own function."""
    return numpy_reference.softmax(z, max_mode, sum_mode)


def softmax_match(ctx: DivergenceContext, side: Side) -> tuple[str, str, bool] | None:
    """The simplest softmax form that reproduces this side's probs from its own logits, when it is a
    wrong one the other side does not share: (max_mode, sum_mode, other side matches the correct form)."""
    if ctx.name != "probs" or side.x.ndim != 2 or same(side.x, side.o):
        return None
    z = logits(ctx, side.inputs, side.x)
    if z is None:
        return None
    # elementwise: a global max shows first as tiny probabilities turned to 0 (or to imprecise subnormals)
    rtol, atol = (1e-4, 1e-37) if is_f32(ctx) else (1e-9, 1e-290)
    forms = sorted(
        ((m, s) for m in MAX_MODES for s in SUM_MODES),
        key=lambda f: ((f[0] != "row") + (f[1] != "row"), MAX_MODES.index(f[0]), SUM_MODES.index(f[1])),
    )
    # recompute in the side's own dtype: a float32 global-max softmax underflows where a float64 one does not
    if side.raw_dtype.kind == "f":
        z = z.astype(side.raw_dtype)
    for m, s in forms:
        if close_each(softmax_form(z, m, s), side.x, rtol, atol):
            if (m, s) == ("row", "row"):
                return None  # this side is a correct softmax of its logits
            if close_each(softmax_form(z, m, s), side.o, rtol, atol):
                return None  # both sides share the form
            zo = logits(ctx, side.other_inputs, side.o)
            other_ok = (zo is not None and close_each(softmax_form(zo, "row", "row"), side.o, rtol, atol))
            return m, s, other_ok
    return None


def _softmax_diagnosis(ctx: DivergenceContext, code: str, wrong: Callable[[str, str], bool],
                       describe: Callable[[Side, np.ndarray, str, str], tuple[str, dict]],
                       fallback: Callable[[DivergenceContext, Side], Diagnosis | None]) -> Diagnosis | None:
    if ctx.name != "probs":
        return None
    for side in sides(ctx):
        found = softmax_match(ctx, side)
        if found is not None:
            m, s, other_ok = found
            if wrong(m, s):
                z = logits(ctx, side.inputs, side.x)
                assert z is not None  # softmax_match found a form, which it does only from these same logits
                text, ev = describe(side, z, m, s)
                ev.update(side=side.label, form={"max": m, "sum": s}, other_side_correct=other_ok)
                return make(code, 0.95 if other_ok else 0.85, text, ev)
        elif logits(ctx, side.inputs, side.x) is None:
            d = fallback(ctx, side)
            if d is not None:
                return d
    return None


def _bad_rows(x: np.ndarray, correct: np.ndarray, rtol: float = 1e-9, atol: float = 1e-290) -> np.ndarray:
    """Rows of `x` that differ from the correct softmax (elementwise, nan counted as different)."""
    with np.errstate(all="ignore"):
        ok = np.abs(x - correct) <= rtol * np.maximum(np.abs(x), np.abs(correct)) + atol
    return np.flatnonzero(~np.all(ok, axis=1))


def _rows_sum_to_one(p: np.ndarray, tol: float = 1e-6) -> bool:
    return p.ndim == 2 and all_finite(p) and bool(np.all(np.abs(p.sum(axis=1) - 1) <= tol))


def _describe_global_max(side: Side, z: np.ndarray, m: str, s: str) -> tuple[str, dict]:
    f32 = side.raw_dtype == np.float32
    rows = _bad_rows(side.x, softmax_form(z, "row", "row"), *((1e-4, 1e-37) if f32 else (1e-9, 1e-290)))
    nan_rows = np.isnan(side.x).any(axis=1)
    row_max, batch_max = z.max(axis=1), float(z.max())
    gaps = (row_max[rows] - batch_max).tolist()
    text = (f"{who(side)}'s probs are softmax(z - max(z)) with the whole batch's max logit {fmt(batch_max)} "
            f"instead of each row's: {len(rows)} of {len(z)} rows (rows {rows.tolist()}) sit "
            f"{fmt(-max(gaps))} or more below it, so exp underflows"
            f"{' to 0 and the row divides 0/0 = nan' if nan_rows.any() else ' and loses precision'} "
            f"({int(nan_rows.sum())} nan rows). Fix: subtract z.max(axis=1, keepdims=True).")
    ev = {"rows": rows, "row_max_logit": row_max[rows], "batch_max_logit": batch_max,
          "gap_to_batch_max": gaps, "nan_rows": int(nan_rows.sum()), "batch": int(len(z))}
    return text, ev


def _fallback_global_max(ctx: DivergenceContext, side: Side) -> Diagnosis | None:
    x, o = side.x, side.o
    if x.ndim != 2 or x.shape != o.shape or not _rows_sum_to_one(o):
        return None
    dead = np.all(np.isnan(x) | (x == 0), axis=1)
    live = ~dead
    if not dead.any() or not live.any() or not _rows_sum_to_one(x[live]):
        return None
    rows = np.flatnonzero(dead)
    return make("softmax-global-max", 0.8,
                f"{who(side)}'s probs have {len(rows)} rows (rows {rows.tolist()}) that are all nan or all "
                f"zero while its other rows sum to 1 and the other side's rows are fine: the signature of a "
                f"softmax that subtracts the batch's max (rows far below it underflow, then 0/0). The logits "
                f"are not in the trace, so the gap to the batch max could not be checked.",
                {"side": side.label, "rows": rows, "nan_rows": int(np.isnan(x).any(axis=1).sum()), "logits_checked": False})


@diagnoser("softmax-global-max")
def softmax_global_max(ctx: DivergenceContext) -> Diagnosis | None:
    """probs equal softmax with the batch's max subtracted: far rows underflow to 0 (or 0/0 = nan)."""
    return _softmax_global_max(ctx)


def _softmax_global_max(ctx: DivergenceContext) -> Diagnosis | None:
    # with a global sum the max cancels (one constant over the whole matrix): that is softmax-global-sum
    return _softmax_diagnosis(ctx, "softmax-global-max", lambda m, s: m == "global" and s != "global", _describe_global_max,
                              _fallback_global_max)


def _describe_global_sum(side: Side, z: np.ndarray, m: str, s: str) -> tuple[str, dict]:
    rs = side.x.sum(axis=1)
    B = len(z)
    text = (f"{who(side)}'s probs are normalised by the sum of the whole matrix (np.sum(e)) instead of each "
            f"row's: its rows sum to {fmt(float(rs.min()))}..{fmt(float(rs.max()))} (1/B = {fmt(1 / B)} "
            f"for batch {B}) and the whole matrix sums to {fmt(float(side.x.sum()))}. Fix: "
            f"e / e.sum(axis=1, keepdims=True).")
    return text, {"row_sums": rs, "total_sum": float(side.x.sum()), "batch": B, "one_over_batch": 1 / B}


def _fallback_global_sum(ctx: DivergenceContext, side: Side) -> Diagnosis | None:
    x, o = side.x, side.o
    if x.ndim != 2 or x.shape != o.shape or not all_finite(x) or not _rows_sum_to_one(o):
        return None
    rs = x.sum(axis=1)
    if abs(float(x.sum()) - 1) > 1e-6 or np.all(np.abs(rs - 1) <= 1e-6):
        return None
    ok = o > 1e-12
    ratio = np.where(ok, x / np.where(ok, o, 1), np.nan)
    for r, row in zip(ratio, ok):
        if row.any() and np.nanmax(r) - np.nanmin(r) > 1e-6 * np.nanmax(r):
            return None
    B = x.shape[0]
    return make("softmax-global-sum", 0.75,
                f"{who(side)}'s probs rows are the other side's rows each rescaled by one factor, and the whole "
                f"matrix sums to {fmt(float(x.sum()))} (rows sum to {fmt(float(rs.min()))}..{fmt(float(rs.max()))}, "
                f"1/B = {fmt(1 / B)}): normalised by the whole matrix's sum instead of each row's. The logits are "
                f"not in the trace, so the softmax was not recomputed.",
                {"side": side.label, "row_sums": rs, "total_sum": float(x.sum()), "batch": B, "logits_checked": False})


@diagnoser("softmax-global-sum")
def softmax_global_sum(ctx: DivergenceContext) -> Diagnosis | None:
    """probs normalised by the whole matrix's sum: rows sum to about 1/B, the matrix to 1."""
    return _softmax_global_sum(ctx)


def _softmax_global_sum(ctx: DivergenceContext) -> Diagnosis | None:
    return _softmax_diagnosis(ctx, "softmax-global-sum", lambda m, s: s == "global", _describe_global_sum,
                              _fallback_global_sum)


def _describe_column_sum(side: Side, z: np.ndarray, m: str, s: str) -> tuple[str, dict]:
    cs, rs = side.x.sum(axis=0), side.x.sum(axis=1)
    text = (f"{who(side)}'s probs are normalised by column sums (builtin sum over a 2-D array adds the rows "
            f"together): its columns sum to {fmt(float(cs.min()))}..{fmt(float(cs.max()))} while its rows sum "
            f"to {fmt(float(rs.min()))}..{fmt(float(rs.max()))}. Fix: e / e.sum(axis=1, keepdims=True).")
    return text, {"column_sums": cs, "row_sums": rs}


def _fallback_column_sum(ctx: DivergenceContext, side: Side) -> Diagnosis | None:
    x, o = side.x, side.o
    if x.ndim != 2 or x.shape != o.shape or not all_finite(x) or not _rows_sum_to_one(o):
        return None
    cs, rs = x.sum(axis=0), x.sum(axis=1)
    if np.any(np.abs(cs - 1) > 1e-6) or np.all(np.abs(rs - 1) <= 1e-6):
        return None
    return make("softmax-column-sum", 0.75,
                f"{who(side)}'s probs columns each sum to 1 (rows sum to {fmt(float(rs.min()))}..{fmt(float(rs.max()))}) "
                f"while the other side's rows sum to 1: normalised by column sums. The logits are not in the "
                f"trace, so the softmax was not recomputed.",
                {"side": side.label, "column_sums": cs, "row_sums": rs, "logits_checked": False})


@diagnoser("softmax-column-sum")
def softmax_column_sum(ctx: DivergenceContext) -> Diagnosis | None:
    """probs normalised by column sums: columns sum to 1."""
    return _softmax_column_sum(ctx)


def _softmax_column_sum(ctx: DivergenceContext) -> Diagnosis | None:
    return _softmax_diagnosis(ctx, "softmax-column-sum", lambda m, s: s == "column", _describe_column_sum,
                              _fallback_column_sum)


def _describe_no_max(side: Side, z: np.ndarray, m: str, s: str) -> tuple[str, dict]:
    over = np.log(np.finfo(side.raw_dtype if side.raw_dtype.kind == "f" else np.float64).max)
    row_max = z.max(axis=1)
    f32 = side.raw_dtype == np.float32  # judged at float32's precision, as in _describe_global_max
    rows = _bad_rows(side.x, softmax_form(z, "row", "row"), *((1e-4, 1e-37) if f32 else (1e-9, 1e-290)))
    text = (f"{who(side)}'s probs are exp(z) / sum(exp(z)) with no max subtracted: rows {rows.tolist()} have "
            f"logits up to {fmt(float(row_max.max()))}, above log(max float) = {fmt(float(over))}, so exp "
            f"overflows to inf and inf/inf = nan. Fix: subtract each row's max before exp.")
    return text, {"rows": rows, "row_max_logit": row_max[rows], "overflow_threshold": float(over)}


@diagnoser("softmax-no-max")
def softmax_no_max(ctx: DivergenceContext) -> Diagnosis | None:
    """probs equal exp(z)/sum without subtracting a max: large logits overflow to inf, then nan."""
    return _softmax_no_max(ctx)


def _softmax_no_max(ctx: DivergenceContext) -> Diagnosis | None:
    return _softmax_diagnosis(ctx, "softmax-no-max", lambda m, s: m == "none", _describe_no_max,
                              lambda c, s: None)



__all__ = ["MAX_MODES", "SUM_MODES", "softmax_column_sum", "softmax_form", "softmax_global_max",
           "softmax_global_sum", "softmax_match", "softmax_no_max"]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.where(z >= 0, 1.0 / (1.0 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1.0 + np.exp(-np.abs(z))))


def _binary_ce(p: np.ndarray, y: np.ndarray) -> float:
    """-Σ (y·log p + (1 - y)·log(1 - p)), terms with a zero coefficient skipped."""
    with np.errstate(all="ignore"):
        pos = np.where(y != 0, y * np.log(np.where(y != 0, p, 1.0)), 0.0)
        neg = np.where(y != 1, (1 - y) * np.log(np.where(y != 1, 1 - p, 1.0)), 0.0)
    return float(-np.sum(pos) - np.sum(neg))


def _sigmoid_probs(ctx: DivergenceContext, p: np.ndarray, inputs: dict) -> bool | None:
    """True when p is sigmoid of the side's own logits (and is not a softmax); None when no logits."""
    z = logits(ctx, inputs, p)
    if z is None:
        return None
    rtol, atol = (1e-4, 1e-37) if is_f32(ctx) else (1e-9, 1e-290)
    return close_each(_sigmoid(z), p, rtol, atol) and not close_each(softmax_form(z, "row", "row"), p, rtol, atol)


@diagnoser("output-sigmoid")
def output_sigmoid(ctx: DivergenceContext) -> Diagnosis | None:
    """probs are sigmoid(logits), element by element, instead of a softmax over each row (and the loss the
    binary cross-entropy of those)."""
    return _output_sigmoid(ctx)


def _output_sigmoid(ctx: DivergenceContext) -> Diagnosis | None:
    if ctx.name not in ("probs", "loss") or same(ctx.a, ctx.b):
        return None
    for side in sides(ctx):
        if ctx.name == "probs":
            if side.x.ndim != 2 or _rows_sum_to_one(side.x):
                continue
            sig = _sigmoid_probs(ctx, side.x, side.inputs)
            if sig is None or not sig:
                continue
            zo = logits(ctx, side.other_inputs, side.o)
            # at the dtype's tolerance, as softmax_match: a float32 softmax is 1e-7 off the float64 one
            rtol, atol = (1e-4, 1e-37) if is_f32(ctx) else (1e-9, 1e-290)
            other_ok = zo is not None and close_each(softmax_form(zo, "row", "row"), side.o, rtol, atol)
            rs = side.x.sum(axis=1)
            return make("output-sigmoid", 0.95 if other_ok else 0.85,
                        f"{who(side)}'s probs are sigmoid(z) of its own logits, element by element, not a softmax: "
                        f"its rows sum to {fmt(float(rs.min()))}..{fmt(float(rs.max()))} instead of 1. The output "
                        f"layer is a sigmoid (multi-label / binary head) where the scenario has a softmax. Fix: "
                        f"probs = softmax(z) over each row (and the cross-entropy of the softmax).",
                        {"side": side.label, "row_sums": rs, "other_side_correct": other_ok})
        p, y = side.inputs.get("probs"), labels(side.inputs)
        if p is None or y is None or f64(p).shape != y.shape or not all_finite(side.x):
            continue
        p = f64(p)
        sig = _sigmoid_probs(ctx, p, side.inputs)
        if sig is False or (sig is None and _rows_sum_to_one(p)):
            continue
        loss = float(side.x.ravel()[0])
        bce = _binary_ce(p, y)
        for red, R in (("mean", len(p)), ("sum", 1)):
            if abs(bce / R - loss) <= 1e-9 * max(abs(loss), 1e-300):
                return make("output-sigmoid", 0.95 if sig else 0.85,
                            f"{who(side)}'s loss {fmt(loss)} is the {red} binary cross-entropy "
                            f"-Σ(y·log p + (1-y)·log(1-p)) of its probs, which are "
                            f"{'sigmoid(z) of its logits' if sig else 'not a softmax (rows do not sum to 1)'}: the "
                            f"output layer is a sigmoid with binary cross-entropy, not a softmax with cross-entropy. "
                            f"Fix: softmax over each row and -Σ y·log p.",
                            {"side": side.label, "loss": loss, "binary_cross_entropy": bce / R, "reduction": red,
                             "logits_checked": sig is not None})
    return None


__all__ += ["output_sigmoid"]

"""The diagnoser catalogue: one small pure function per mistake, `(ctx) -> Diagnosis | None`.

Each diagnoser looks at the first divergent pair of a `DivergenceContext` and, when it needs to, at the
tensors each side recorded before it in the same step; it returns a `Diagnosis` only when the numbers
fit its mistake, for either side. `CATALOGUE` is the registration order, which `diagnose` uses to break
confidence ties. docs/diagnoses.md describes every code; the confidence scheme is:

    0.95  the buggy computation, redone from that side's own recorded inputs, reproduces that side
          (and the other side matches the correct computation)
    0.85-0.9  an exact structural relation between the pair (transpose, constant factor, sign flip,
          float32-representable side, decimal rounding) without a recomputation
    0.6-0.8  the relation holds but some evidence is missing (no logits, no probs, no learning rate)
    0.3-0.5  a pattern, not a proof (error magnitudes, error history)
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple

import numpy as np

import impls.numpy_mlp as numpy_reference
from memstate.diagnosis import CODES, Diagnosis, DivergenceContext, jsonable
from memstate.variants import LOG_EPSILON  # the usual log(p + eps)

Diagnoser = Callable[[DivergenceContext], "Diagnosis | None"]


@dataclass(frozen=True)
class Entry:
    code: str
    func: Diagnoser
    fallback: bool = False  # asked only when no primary diagnoser fits


CATALOGUE: list[Entry] = []


def diagnoser(code: str, fallback: bool = False) -> Callable[[Diagnoser], Diagnoser]:
    """Register `func` under `code` (catalogue order = definition order); it runs with numpy's floating
    point warnings off, since overflow and nan are what it looks at."""

    def register(func: Diagnoser) -> Diagnoser:
        @functools.wraps(func)
        def quiet(ctx: DivergenceContext) -> Diagnosis | None:
            with np.errstate(all="ignore"):
                return func(ctx)

        CATALOGUE.append(Entry(code, quiet, fallback))
        return quiet

    return register


# ------------------------------------------------------------------------------------------- helpers

_PARAM = re.compile(r"^L(\d+)\.(W|b)$")
_GRAD = re.compile(r"^L(\d+)\.d(z|W|b|a)$")
_LOGITS = re.compile(r"^L(\d+)\.z$")
F32_EPS, F64_EPS = float(np.finfo(np.float32).eps), float(np.finfo(np.float64).eps)


class Side(NamedTuple):
    """One side seen as the suspect: `x` its tensor, `o` the other side's."""

    label: str  # "A" or "B"
    x: np.ndarray
    o: np.ndarray
    inputs: dict
    other_inputs: dict
    meta: dict
    other_meta: dict
    raw_dtype: np.dtype  # the dtype the side's tensor came in


def sides(ctx: DivergenceContext) -> Iterator[Side]:
    a, b = f64(ctx.a), f64(ctx.b)
    yield Side("A", a, b, ctx.inputs_a, ctx.inputs_b, ctx.meta_a or {}, ctx.meta_b or {}, np.asarray(ctx.a).dtype)
    yield Side("B", b, a, ctx.inputs_b, ctx.inputs_a, ctx.meta_b or {}, ctx.meta_a or {}, np.asarray(ctx.b).dtype)


def who(side: Side) -> str:
    impl = side.meta.get("impl")
    return f"side {side.label} ({impl})" if impl else f"side {side.label}"


def other_label(side: Side) -> str:
    return "B" if side.label == "A" else "A"


def f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def is_f32(ctx: DivergenceContext) -> bool:
    """Whether either side is float32 (its arrays or its trace header)."""
    dts = {np.asarray(ctx.a).dtype, np.asarray(ctx.b).dtype}
    metas = {str((ctx.meta_a or {}).get("dtype", "")), str((ctx.meta_b or {}).get("dtype", ""))}
    return np.dtype(np.float32) in dts or "float32" in metas


def exact_rtol(ctx: DivergenceContext) -> float:
    """Relative tolerance (to the tensor's scale) of an exact relation computed two ways."""
    return 1e-4 if is_f32(ctx) else 1e-7


def scale(*arrays: np.ndarray) -> float:
    m = 0.0
    for x in arrays:
        x = f64(x)
        fin = x[np.isfinite(x)]
        if fin.size:
            m = max(m, float(np.abs(fin).max()))
    return m


def same(x: np.ndarray, y: np.ndarray) -> bool:
    """Bitwise equal values, nan equal to nan."""
    x, y = f64(x), f64(y)
    return x.shape == y.shape and bool(np.array_equal(x, y, equal_nan=True))


def same_pattern(x: np.ndarray, y: np.ndarray) -> bool:
    """Same shape, nan in the same places, the same infinities in the same places."""
    if x.shape != y.shape or not np.array_equal(np.isnan(x), np.isnan(y)):
        return False
    ix, iy = np.isinf(x), np.isinf(y)
    return bool(np.array_equal(ix, iy) and np.array_equal(x[ix], y[iy]))


def close(x: np.ndarray, y: np.ndarray, rtol: float, atol: float = 0.0) -> bool:
    """Same shape, same nan/inf pattern, finite values within rtol of the pair's scale (+ atol)."""
    x, y = f64(x), f64(y)
    if not same_pattern(x, y):
        return False
    fin = np.isfinite(x)
    if not fin.any():
        return True
    d = float(np.abs(x[fin] - y[fin]).max())
    return d <= rtol * scale(x, y) + atol


def close_each(x: np.ndarray, y: np.ndarray, rtol: float, atol: float) -> bool:
    """Like `close`, but every finite element within rtol of its own magnitude (+ atol): for probabilities,
    where a value of 1e-20 against 0 matters."""
    x, y = f64(x), f64(y)
    if not same_pattern(x, y):
        return False
    fin = np.isfinite(x)
    return bool(np.all(np.abs(x[fin] - y[fin]) <= rtol * np.maximum(np.abs(x[fin]), np.abs(y[fin])) + atol))


def rel_err(x: np.ndarray, y: np.ndarray) -> float:
    """Largest finite |x - y| over the pair's scale (0 when equal, inf when shapes differ)."""
    x, y = f64(x), f64(y)
    if x.shape != y.shape:
        return math.inf
    fin = np.isfinite(x) & np.isfinite(y)
    if not fin.any():
        return 0.0
    d = float(np.abs(x[fin] - y[fin]).max())
    s = scale(x[fin], y[fin])
    return d / s if s > 0 else (0.0 if d == 0 else math.inf)


def all_finite(x: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(f64(x))))


def last_layer(ctx: DivergenceContext, inputs: dict) -> int | None:
    layers = (ctx.meta_a or {}).get("layers") or (ctx.meta_b or {}).get("layers")
    if layers and f"L{len(layers) - 1}.z" in inputs:
        return len(layers) - 1
    found = [int(m.group(1)) for m in map(_LOGITS.match, inputs) if m]
    return max(found) if found else None


def logits(ctx: DivergenceContext, inputs: dict, like: np.ndarray | None = None) -> np.ndarray | None:
    """The last layer's z from a side's inputs, when it is a finite matrix (shaped like `like`)."""
    n = last_layer(ctx, inputs)
    if n is None:
        return None
    z = f64(inputs[f"L{n}.z"])
    if z.ndim != 2 or not all_finite(z) or (like is not None and z.shape != like.shape):
        return None
    return z


def labels(inputs: dict, like: np.ndarray | None = None) -> np.ndarray | None:
    y = inputs.get("y")
    if y is None:
        return None
    y = f64(y)
    if y.ndim != 2 or (like is not None and y.shape != like.shape):
        return None
    return y


def batch_size(ctx: DivergenceContext, inputs: dict) -> int | None:
    for key in ("y", "x"):
        if key in inputs and np.ndim(inputs[key]) >= 1:
            return int(np.shape(inputs[key])[0])
    for meta in (ctx.meta_a or {}, ctx.meta_b or {}):
        if isinstance(meta.get("batch_size"), int):
            return int(meta["batch_size"])
    return None


def fit_factor(x: np.ndarray, y: np.ndarray) -> tuple[float, float] | None:
    """Least-squares c with y ≈ c·x, and ||y - c·x|| / ||y||; None unless both finite and nonzero."""
    x, y = f64(x).ravel(), f64(y).ravel()
    if x.shape != y.shape or not (all_finite(x) and all_finite(y)):
        return None
    xx = float(x @ x)
    yy = float(np.sqrt(y @ y))
    if xx == 0 or yy == 0:
        return None
    c = float(x @ y) / xx
    return c, float(np.linalg.norm(y - c * x)) / yy


def first_positions(mask: np.ndarray, limit: int = 5) -> list:
    return [list(map(int, idx)) for idx in np.argwhere(mask)[:limit]]


def make(code: str, confidence: float, explanation: str, evidence: dict) -> Diagnosis:
    assert code in CODES, code
    text = explanation[:1].upper() + explanation[1:]
    return Diagnosis(code, round(float(min(max(confidence, 0.0), 1.0)), 3), text, jsonable(evidence))


def fmt(v: float) -> str:
    return f"{v:.6g}"


# --------------------------------------------------------------------------------------------- softmax

MAX_MODES = ("row", "global", "none")
SUM_MODES = ("row", "global", "column")


def softmax_form(z: np.ndarray, max_mode: str, sum_mode: str) -> np.ndarray:
    """Softmax of `z` the way memstate.variants' softmax switches compute it: the reference's own function."""
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
                text, ev = describe(side, logits(ctx, side.inputs, side.x), m, s)
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
    return _softmax_diagnosis(ctx, "softmax-global-max", lambda m, s: m == "global", _describe_global_max,
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
    return _softmax_diagnosis(ctx, "softmax-column-sum", lambda m, s: s == "column", _describe_column_sum,
                              _fallback_column_sum)


def _describe_no_max(side: Side, z: np.ndarray, m: str, s: str) -> tuple[str, dict]:
    over = np.log(np.finfo(side.raw_dtype if side.raw_dtype.kind == "f" else np.float64).max)
    row_max = z.max(axis=1)
    rows = _bad_rows(side.x, softmax_form(z, "row", "row"))
    text = (f"{who(side)}'s probs are exp(z) / sum(exp(z)) with no max subtracted: rows {rows.tolist()} have "
            f"logits up to {fmt(float(row_max.max()))}, above log(max float) = {fmt(float(over))}, so exp "
            f"overflows to inf and inf/inf = nan. Fix: subtract each row's max before exp.")
    return text, {"rows": rows, "row_max_logit": row_max[rows], "overflow_threshold": float(over)}


@diagnoser("softmax-no-max")
def softmax_no_max(ctx: DivergenceContext) -> Diagnosis | None:
    """probs equal exp(z)/sum without subtracting a max: large logits overflow to inf, then nan."""
    return _softmax_diagnosis(ctx, "softmax-no-max", lambda m, s: m == "none", _describe_no_max,
                              lambda c, s: None)


# ------------------------------------------------------------------------------------------------ loss


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


# ----------------------------------------------------------------------------------------- precision


def _quantised(x: np.ndarray, n: int) -> bool:
    """Every finite value is on the 10**-n grid (within 2 ulps)."""
    fin = x[np.isfinite(x)]
    with np.errstate(all="ignore"):
        return bool(np.all(np.abs(fin - np.round(fin, n)) <= 2 * np.spacing(np.abs(fin))))


@diagnoser("precision-rounding")
def precision_rounding(ctx: DivergenceContext) -> Diagnosis | None:
    """One side's values are the other side's rounded to N decimals (e.g. toFixed(8) on parameters)."""
    for side in sides(ctx):
        x, o = side.x, side.o
        if x.shape != o.shape or x.size < 4 or same(x, o) or not (all_finite(x) and all_finite(o)):
            continue
        s = scale(x, o)
        if s == 0 or np.count_nonzero(x) < 2:
            continue
        eps = F32_EPS if side.raw_dtype == np.float32 else F64_EPS
        for n in range(0, 16):
            if 10.0**-n > 0.01 * s:
                continue  # a grid this coarse for values this small is not "rounding to n decimals"
            if 10.0**-n < 1e3 * eps * s:
                break  # the grid is as fine as the float itself: rounding is invisible
            if not _quantised(x, n):
                continue
            if _quantised(o, n):
                break  # both sides are on the grid: not this
            diff = float(np.abs(x - o).max())
            exact = bool(np.all(np.abs(x - np.round(o, n)) <= 2 * np.spacing(np.abs(x))))
            if not exact and diff > 50 * 10.0**-n:
                break
            param = bool(_PARAM.match(ctx.name))
            conf = (0.95 if param else 0.85) if exact else (0.75 if param else 0.6)
            changed = int(np.count_nonzero(x != o))
            relation = (f"exactly {other_label(side)}'s rounded to {n} decimals" if exact else
                        f"all on the 10^-{n} grid while {other_label(side)}'s are not, within {fmt(diff)} of them")
            return make("precision-rounding", conf,
                        f"{who(side)}'s {ctx.name} values are {relation}: {changed} of {x.size} elements differ, "
                        f"by at most {fmt(diff)} (rounding bound {fmt(0.5 * 10.0**-n)}). Something rounds to {n} "
                        f"decimals (toFixed({n}), a JSON/print round trip, np.round) so that updates smaller than "
                        f"{fmt(0.5 * 10.0**-n)} vanish. Fix: keep full precision (repr / 17 significant digits).",
                        {"side": side.label, "decimals": n, "exact": exact, "max_abs_diff": diff,
                         "bound": 0.5 * 10.0**-n, "changed": changed, "size": int(x.size)})
    return None


def _f32_representable(x: np.ndarray, raw: np.dtype) -> bool:
    if raw == np.float32:
        return True
    fin = x[np.isfinite(x)]
    with np.errstate(all="ignore"):
        return bool(np.array_equal(fin.astype(np.float32).astype(np.float64), fin))


def _elementwise_rel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    fin = np.isfinite(x) & np.isfinite(y)
    x, y = x[fin], y[fin]
    m = np.maximum(np.abs(x), np.abs(y))
    keep = m > 1e-3 * (m.max() if m.size else 0)
    return np.abs(x - y)[keep] / m[keep]


@diagnoser("dtype-float32")
def dtype_float32(ctx: DivergenceContext) -> Diagnosis | None:
    """Differences of float32 rounding: one side float32-exact, a float32 trace header, or (weakly)
    scattered relative errors of 1e-9..1e-5 appearing at once."""
    a, b = f64(ctx.a), f64(ctx.b)
    if a.shape != b.shape or same(a, b):
        return None
    err = rel_err(a, b)
    if not 1e-10 <= err <= 1e-3:
        return None
    if precision_rounding(ctx) is not None:
        return None
    for side in sides(ctx):
        rep_x = _f32_representable(side.x, side.raw_dtype)
        rep_o = _f32_representable(side.o, np.dtype(np.float64)) if side.o.size else True
        header = str(side.meta.get("dtype", "")) == "float32" and str(side.other_meta.get("dtype", "")) == "float64"
        mix = (side.meta.get("variant") or {}).get("dtype_mix") if isinstance(side.meta.get("variant"), dict) else None
        mix_here = bool(mix) and ctx.name.startswith(f"{mix}.")
        if rep_x and not rep_o:
            conf = 0.95 if (header or mix_here) else 0.9
            why = ("its trace header says float32" if header else
                   f"its header's variant computes {mix} in float32" if mix_here else
                   "no header says so")
            return make("dtype-float32", conf,
                        f"{who(side)}'s {ctx.name} is exactly representable in float32 (every value survives a "
                        f"float32 round trip) while {other_label(side)}'s is not, and they differ by at most "
                        f"{fmt(err)} of the tensor's scale: float32 rounding ({why}). Typical causes: a float32 "
                        f"run compared with a float64 one, or one layer computed in float32 (an astype, a float32 "
                        f"constant, a GPU matmul) inside a float64 run. Fix: use one dtype throughout, or compare "
                        f"with a float32 tolerance.",
                        {"side": side.label, "max_rel_err": err, "float32_exact": True, "header_dtype": header,
                         "dtype_mix": mix if mix_here else None})
        if header:
            return make("dtype-float32", 0.85,
                        f"{who(side)}'s trace is float32 and {other_label(side)}'s float64; {ctx.name} differs by "
                        f"{fmt(err)} of its scale, the size of float32 rounding. Fix: compare runs of one dtype, or "
                        f"use a float32 tolerance.",
                        {"side": side.label, "max_rel_err": err, "float32_exact": False, "header_dtype": True})
    # weak: fresh, scattered relative errors of float32 size, inputs still agreeing, in a float64 comparison
    # (between two float32 sides such errors are plain rounding)
    if ctx.inputs_agree is False or is_f32(ctx):
        return None
    previous = [e for s, e in ctx.history if s < ctx.step and np.isfinite(e)]
    if previous and max(previous) > 1e-3 * err:
        return None  # errors were already there before: drift, not a local cast
    rel = _elementwise_rel(a, b)
    if rel.size < 4:
        return None
    med, frac = float(np.median(rel)), float(np.mean(rel > 0))
    if not (1e-9 <= med <= 1e-5 and frac >= 0.5 and err <= 1e-4):
        return None
    fit = fit_factor(a, b)
    if fit is not None and fit[1] < 0.1 * med:
        return None  # a constant factor, not rounding
    return make("dtype-float32", 0.4,
                f"{ctx.name} differs everywhere at once by relative errors of float32 size (median {fmt(med)}, "
                f"{fmt(100 * frac)}% of elements) while its inputs agree; neither side is exactly float32, so "
                f"this is a guess: a float32 intermediate somewhere in this computation.",
                {"side": "unknown", "median_rel_err": med, "fraction_differing": frac, "max_rel_err": err,
                 "float32_exact": False})


# ---------------------------------------------------------------------------------- factors and layout


def _reduction_factor(ctx: DivergenceContext, c: float, B: int | None, rtol: float) -> str | None:
    """'B' when c ≈ B, '1/B' when c ≈ 1/B."""
    if not B or B < 2:
        return None
    if abs(c - B) <= rtol * B:
        return "B"
    if abs(c - 1 / B) <= rtol / B:
        return "1/B"
    return None


@diagnoser("reduction-mean-vs-sum")
def reduction_mean_vs_sum(ctx: DivergenceContext) -> Diagnosis | None:
    """The loss or a gradient differs by exactly the batch size B: one side sums, the other averages."""
    gm = _GRAD.match(ctx.name)
    if ctx.name != "loss" and not gm:
        return None
    a, b = f64(ctx.a), f64(ctx.b)
    if a.shape != b.shape or not (all_finite(a) and all_finite(b)):
        return None
    if a.size == 1:
        if a.ravel()[0] == 0:
            return None
        c, resid = float(b.ravel()[0] / a.ravel()[0]), 0.0
    else:
        fit = fit_factor(a, b)
        if fit is None:
            return None
        c, resid = fit
    rtol = 1e-4 if is_f32(ctx) else 1e-6
    B = batch_size(ctx, ctx.inputs_a) or batch_size(ctx, ctx.inputs_b)
    which = _reduction_factor(ctx, c, B, rtol)
    if which is None or resid > rtol:
        return None
    summer, averager = ("B", "A") if which == "B" else ("A", "B")
    n = last_layer(ctx, ctx.inputs_a)
    output_dz = bool(gm) and gm.group(2) == "z" and n is not None and int(gm.group(1)) == n
    conf = 0.95 if ctx.name == "loss" or output_dz else 0.85
    loss_agrees = None
    if "loss" in ctx.inputs_a and "loss" in ctx.inputs_b:
        loss_agrees = close(ctx.inputs_a["loss"], ctx.inputs_b["loss"], rtol)
    where = ("the loss" if ctx.name == "loss" else
             f"{ctx.name}, though the loss agrees (the backward pass scales differently)" if loss_agrees else ctx.name)
    return make("reduction-mean-vs-sum", conf,
                f"Side B's {ctx.name} is {fmt(c)} × side A's, and the batch size is {B}: side {summer} sums over the "
                f"batch where side {averager} averages, so {where} differs by B (and every gradient after it). "
                f"Fix: use the scenario's loss_reduction (divide by the batch size once, in the loss or in dz).",
                {"ratio_b_over_a": c, "batch_size": B, "summing_side": summer, "averaging_side": averager,
                 "residual": resid, "loss_agrees": loss_agrees})


@diagnoser("bias-grad-axis")
def bias_grad_axis(ctx: DivergenceContext) -> Diagnosis | None:
    """db summed over the feature axis of a square dz (batch == layer width) instead of the batch axis."""
    m = _GRAD.match(ctx.name)
    if not m or m.group(2) != "b":
        return None
    dz_name = f"L{m.group(1)}.dz"
    rtol = exact_rtol(ctx)
    for side in sides(ctx):
        dz = side.inputs.get(dz_name)
        dzo = side.other_inputs.get(dz_name)
        if dz is None or dzo is None:
            continue
        dz, dzo = f64(dz), f64(dzo)
        if dz.ndim != 2 or dz.shape[0] != dz.shape[1] or side.x.shape != (dz.shape[1],):
            continue
        if close(side.x, dz.sum(axis=1), rtol) and not close(side.x, dz.sum(axis=0), rtol) \
                and close(side.o, dzo.sum(axis=0), rtol):
            return make("bias-grad-axis", 0.95,
                        f"{who(side)}'s {ctx.name} equals {dz_name}.sum(axis=1), the sum over the feature axis, while "
                        f"{other_label(side)}'s equals {dz_name}.sum(axis=0), the sum over the batch; {dz_name} is "
                        f"{dz.shape[0]}×{dz.shape[1]} (batch size = layer width), so the wrong axis still has the "
                        f"right shape. Fix: db = dz.sum(axis=0).",
                        {"side": side.label, "dz_shape": list(dz.shape),
                         "err_vs_feature_sum": rel_err(side.x, dz.sum(axis=1)),
                         "err_vs_batch_sum": rel_err(side.x, dz.sum(axis=0))})
    return None


@diagnoser("transposed")
def transposed(ctx: DivergenceContext) -> Diagnosis | None:
    """One side is the transpose of the other (square, or with the shape swapped or kept)."""
    a, b = f64(ctx.a), f64(ctx.b)
    if a.ndim != 2 or b.ndim != 2 or a.size < 2 or same(a, b) or scale(a) == 0:
        return None
    rtol = exact_rtol(ctx)
    if a.shape == b.shape and a.shape[0] == a.shape[1]:
        if close(a, a.T, 10 * rtol):
            return None  # symmetric: a transpose would not show
        if close(b, a.T, rtol):
            kind, conf = "transpose", 0.9
        else:
            return None
    elif b.shape == a.T.shape and close(b, a.T, rtol):
        kind, conf = "transpose", 0.9
    elif a.shape == b.shape and (close(b, a.T.reshape(a.shape), rtol) or close(a, b.T.reshape(b.shape), rtol)):
        kind, conf = "transposed-then-reshaped", 0.85
    elif b.shape == a.T.shape and close(b.ravel(), a.ravel(), rtol):
        kind, conf = "reshaped", 0.6
    else:
        return None
    what = {"transpose": "side B's is the transpose of side A's",
            "transposed-then-reshaped": "one side holds the other's transpose, reshaped back to the original shape "
                                        "(column-major data read as row-major)",
            "reshaped": "side B holds side A's values in the same order under the swapped shape"}[kind]
    return make("transposed", conf,
                f"{ctx.name}: {what} (A {list(a.shape)}, B {list(b.shape)}), equal to within {fmt(rtol)} of the "
                f"scale. Usual causes: W stored as [out, in] instead of [in, out], x @ W vs W @ x, or a "
                f"column-major buffer. Fix: transpose at the boundary (or record in the canonical layout).",
                {"kind": kind, "shape_a": list(a.shape), "shape_b": list(b.shape)})


def _lr_step(ctx: DivergenceContext) -> Diagnosis | None:
    """Updated params whose steps differ by a multiple of the (agreeing) gradient: a learning-rate mismatch."""
    m = _PARAM.match(ctx.name)
    if not m:
        return None
    g_name = f"L{m.group(1)}.d{m.group(2)}"
    ga, gb = ctx.inputs_a.get(g_name), ctx.inputs_b.get(g_name)
    if ga is None or gb is None:
        return None
    rtol = exact_rtol(ctx)
    a, b, g = f64(ctx.a), f64(ctx.b), f64(ga)
    if g.shape != a.shape or b.shape != a.shape or not close(ga, gb, rtol) or scale(g) == 0:
        return None
    fit = fit_factor(g, a - b)  # a - b = (lr_b - lr_a)·g
    if fit is None or fit[1] > (1e-3 if is_f32(ctx) else 1e-6):
        return None
    k = fit[0]
    la, lb = (ctx.meta_a or {}).get("learning_rate"), (ctx.meta_b or {}).get("learning_rate")
    ev: dict = {"lr_difference_b_minus_a": k, "residual": fit[1], "learning_rate_a": la, "learning_rate_b": lb}
    if isinstance(la, (int, float)) and isinstance(lb, (int, float)) and la != lb and abs(k - (lb - la)) <= 1e-6 * max(abs(la), abs(lb)):
        factor, conf = lb / la, 0.9
        how = f"the trace headers say so (learning_rate {la} vs {lb})"
    elif isinstance(la, (int, float)) and la > 0 and la == lb:
        # one step cannot tell which side uses the header's rate: A (then B's is la + k) or B (A's is la - k);
        # a rate that comes out as 0 means that side did not update at all
        tiny = 1e-6 * la
        hyps = [("A", la, la + k), ("B", la - k, la)]
        ev["hypotheses"] = [{"uses_header_lr": h, "lr_a": ra, "lr_b": rb,
                             "factor": rb / ra if ra > tiny and rb > tiny else None} for h, ra, rb in hyps]
        valid = [h for h in ev["hypotheses"] if h["factor"] is not None]
        factor, conf = (valid[0]["factor"], 0.85) if valid else (None, 0.7)
        parts = []
        for h, ra, rb in hyps:
            other, rate = ("B", rb) if h == "A" else ("A", ra)
            parts.append(f"if side {h} uses it, side {other} " +
                         (f"steps with {fmt(rate)}" if rate > tiny else "does not apply the update at all"))
        how = f"both headers say learning_rate {la}: " + "; ".join(parts)
    else:
        factor, conf = None, 0.7
        how = "no trace header gives the learning rate, so only the difference is known"
    ev["factor"] = factor
    return make("scaled", conf,
                f"{ctx.name} after the update: side A's minus side B's is exactly {fmt(k)} × {g_name}, the gradient "
                f"both sides agree on (residual {fmt(fit[1])}), so side B's learning rate minus side A's is "
                f"{fmt(k)}{'' if factor is None else f', a factor {fmt(factor)} (B over A)'}; {how}. "
                f"Fix: use the scenario's learning rate (look for a hard-coded or rescaled lr).", ev)


@diagnoser("scaled")
def scaled(ctx: DivergenceContext) -> Diagnosis | None:
    """b ≈ c·a for one constant c (not ±1; not B or 1/B for the loss/gradients), or updated params whose
    steps differ by a constant factor (a learning-rate mismatch)."""
    a, b = f64(ctx.a), f64(ctx.b)
    if a.shape != b.shape or a.size < 2 or same(a, b):
        return None
    fit = fit_factor(a, b)
    rtol = exact_rtol(ctx)
    if fit is not None and fit[1] <= rtol and abs(fit[0] - 1) >= 1e-4 and abs(fit[0] + 1) >= 1e-4:
        c = fit[0]
        B = batch_size(ctx, ctx.inputs_a) or batch_size(ctx, ctx.inputs_b)
        is_grad = ctx.name == "loss" or bool(_GRAD.match(ctx.name))
        if not (is_grad and _reduction_factor(ctx, c, B, 1e-4 if is_f32(ctx) else 1e-6)):
            note = (f" The factor equals the batch size {B}, but {ctx.name} is not a gradient, so this is not a "
                    f"mean/sum mix-up." if B and _reduction_factor(ctx, c, B, 1e-6) else "")
            return make("scaled", 0.85,
                        f"Side B's {ctx.name} is side A's times {fmt(c)} (residual {fmt(fit[1])} of its norm): one "
                        f"constant factor, e.g. a learning rate, a scale in an init or a missing/extra division.{note}",
                        {"factor": c, "residual": fit[1], "batch_size": B})
    return _lr_step(ctx)


@diagnoser("sign-flip")
def sign_flip(ctx: DivergenceContext) -> Diagnosis | None:
    """b ≈ -a, everywhere or on a consistent subset (rows/columns) with equal magnitudes."""
    a, b = f64(ctx.a), f64(ctx.b)
    if a.shape != b.shape or a.size < 1 or not (all_finite(a) and all_finite(b)):
        return None
    s = scale(a, b)
    if s == 0:
        return None
    tol = exact_rtol(ctx) * s
    if not np.all(np.abs(np.abs(a) - np.abs(b)) <= tol):
        return None
    sig = np.maximum(np.abs(a), np.abs(b)) > 10 * tol
    flipped = sig & (np.sign(a) != np.sign(b))
    if not flipped.any():
        return None
    frac = float(flipped.sum() / sig.sum())
    ev: dict = {"flipped": int(flipped.sum()), "significant": int(sig.sum()), "fraction": frac}
    if flipped.sum() == sig.sum():
        conf, where = 0.9, "every element"
    else:
        conf, where = 0.6, f"{int(flipped.sum())} of {int(sig.sum())} elements"
        if a.ndim == 2:
            for axis, label in ((1, "rows"), (0, "columns")):
                hit = flipped.any(axis=axis)
                whole = np.all(np.where(sig, flipped, True), axis=axis)
                if np.all(whole[hit]):
                    idx = np.flatnonzero(hit)
                    conf, where = 0.8, f"whole {label} {idx.tolist()[:20]}"
                    ev[label] = idx
                    break
    return make("sign-flip", conf,
                f"Side B's {ctx.name} is minus side A's on {where} (magnitudes equal to within {fmt(exact_rtol(ctx))} "
                f"of the scale): a sign error, e.g. y - p for p - y, W += lr·g for W -= lr·g, or a negated term "
                f"in one component.", ev)


@diagnoser("nan-origin")
def nan_origin(ctx: DivergenceContext) -> Diagnosis | None:
    """The first tensor where nan/inf appears on one side only, while that side's inputs are finite."""
    a, b = f64(ctx.a), f64(ctx.b)
    if a.shape != b.shape:
        return None
    for side in sides(ctx):
        bad = ~np.isfinite(side.x) & np.isfinite(side.o)
        if not bad.any():
            continue
        dirty = [k for k, v in side.inputs.items() if not all_finite(v)]
        if dirty:
            continue  # it came from an earlier tensor on that side
        x = side.x
        n_nan, n_pos, n_neg = int(np.isnan(x).sum()), int(np.isposinf(x).sum()), int(np.isneginf(x).sum())
        return make("nan-origin", 0.75,
                    f"{ctx.name} is the first tensor where non-finite values appear on {who(side)} only: {n_nan} nan, "
                    f"{n_pos} +inf, {n_neg} -inf (first at {first_positions(bad)}), while all {len(side.inputs)} "
                    f"tensors it recorded before it in this step are finite. The operation computing {ctx.name} "
                    f"overflows, divides by zero or takes log/sqrt of an out-of-range value there.",
                    {"side": side.label, "nan": n_nan, "posinf": n_pos, "neginf": n_neg,
                     "positions": first_positions(bad), "inputs_checked": list(side.inputs)})
    return None


@diagnoser("drift", fallback=True)
def drift(ctx: DivergenceContext) -> Diagnosis | None:
    """No local cause: the worst error per step started at rounding level and its running maximum rose by
    a decade or more over several steps, never jumping by more than 1.5 decades at once."""
    if any(not np.isfinite(e) for _, e in ctx.history):
        return None
    pts = [(int(s), float(e)) for s, e in ctx.history if e > 0]
    if len(pts) < 3:
        return None
    steps = np.array([s for s, _ in pts], dtype=float)
    logs = np.log10([e for _, e in pts])
    env = np.maximum.accumulate(logs)  # the largest error so far, in decades
    floor = -4.0 if is_f32(ctx) else -9.0
    rises = np.diff(env)
    growth = float(env[-1] - logs[0])
    if logs[0] > floor or growth < 1 or rises.max() > 1.5 or np.count_nonzero(rises > 0.1) < 2 or np.ptp(steps) == 0:
        return None
    slope, icpt = np.polyfit(steps, env, 1)
    ss = float(np.sum((env - env.mean()) ** 2))
    r2 = 1 - float(np.sum((env - (slope * steps + icpt)) ** 2)) / ss if ss > 0 else 0.0
    growth_per_step = 10.0 ** (growth / float(steps[-1] - steps[0]))
    conf = 0.5 + (0.1 if r2 >= 0.9 else 0.0) + (0.1 if ctx.inputs_agree is False else 0.0)
    return make("drift", conf,
                f"No local cause fits {ctx.name}: the worst relative error per step started at rounding level "
                f"({fmt(pts[0][1])} at step {pts[0][0]}) and grew to {fmt(10.0 ** env[-1])} by step {pts[-1][0]} "
                f"(about ×{fmt(growth_per_step)} per step, never more than ×{fmt(10.0 ** rises.max())} in one step; "
                f"R² {fmt(r2)} for a geometric trend){'; its inputs already disagree' if ctx.inputs_agree is False else ''}. "
                f"That is rounding (summation order, fused multiply-add, libm) amplified by training, not a bug in "
                f"this tensor. Fix: nothing to fix; compare with a tolerance that grows with the step, or fewer steps.",
                {"first_step": pts[0][0], "first_error": pts[0][1], "last_step": pts[-1][0],
                 "last_error": pts[-1][1], "max_error": 10.0 ** env[-1], "growth_decades": growth,
                 "growth_per_step": growth_per_step, "largest_jump_decades": float(rises.max()), "r2": r2,
                 "points": len(pts), "inputs_agree": ctx.inputs_agree})


def unknown(ctx: DivergenceContext, failures: list[str] | None = None) -> Diagnosis:
    """What `diagnose` returns when no diagnoser fits: a summary of the pair for a person to read."""
    a, b = f64(ctx.a), f64(ctx.b)
    ev: dict = {"shape_a": list(a.shape), "shape_b": list(b.shape), "inputs_agree": ctx.inputs_agree,
                "nonfinite_a": int((~np.isfinite(a)).sum()), "nonfinite_b": int((~np.isfinite(b)).sum())}
    if a.shape == b.shape:
        fin = np.isfinite(a) & np.isfinite(b)
        ev["max_abs_err"] = float(np.abs(a[fin] - b[fin]).max()) if fin.any() else 0.0
        ev["max_rel_err"] = rel_err(a, b)
        ev["differing"] = int(np.count_nonzero(~np.isclose(a, b, rtol=0, atol=0, equal_nan=True)))
    if failures:
        ev["diagnoser_failures"] = failures
    summary = (f"max abs error {fmt(ev['max_abs_err'])}, relative {fmt(ev['max_rel_err'])}, {ev['differing']} of "
               f"{a.size} elements differ" if "max_abs_err" in ev else f"shapes {list(a.shape)} vs {list(b.shape)}")
    inputs = {True: "its inputs agree, so the cause is in how this tensor is computed",
              False: "its inputs already disagree slightly", None: "no inputs were recorded before it"}[ctx.inputs_agree]
    return make("unknown", 0.0,
                f"No known mistake explains {ctx.name} at step {ctx.step}: {summary}; {inputs}. Compare the code "
                f"that computes {ctx.name} on both sides.", ev)


__all__ = ["CATALOGUE", "Entry", "diagnoser", "unknown"]

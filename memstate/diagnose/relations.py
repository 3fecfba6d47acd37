"""What `unknown` still says when no mistake in the catalogue fits: the simplest exact relation between the
two sides, for a person to follow up. In order of simplicity: a constant factor, a transpose, one side
equal to the other's previous step (an off-by-one in batch slicing), rows shifted, rows permuted, the error
confined to one row or one column, a subset of rows equal."""

from __future__ import annotations

import numpy as np

from memstate.diagnose.common import before_of, close, exact_rtol, f64, fit_factor, fmt, same, scale
from memstate.diagnose.context import DivergenceContext

MAX_ROWS = 4096  # row matching is quadratic in the rows: larger tensors skip the permutation test


def _equal(x: np.ndarray, y: np.ndarray, atol: float) -> np.ndarray:
    """Which elements of x equal y's: within atol, the same infinity, or nan on both sides."""
    with np.errstate(all="ignore"):
        return (np.abs(x - y) <= atol) | (x == y) | (np.isnan(x) & np.isnan(y))


def _rows_equal(x: np.ndarray, y: np.ndarray, rtol: float) -> np.ndarray:
    """Which rows of x equal the same row of y (to rtol of the pair's scale: its largest finite |value|, so
    that an infinity on both sides does not make every difference small)."""
    ok = _equal(x, y, rtol * scale(x, y))
    return np.all(ok.reshape(len(x), -1), axis=1)


def _shift(a: np.ndarray, b: np.ndarray, rtol: float) -> int | None:
    """k != 0 with b[k:] == a[:-k] (b is a shifted down by k) or b[:k] == a[-k:] (k < 0), at least 2 rows kept."""
    n = len(a)
    for k in range(1, n - 1):
        if close(b[k:], a[:-k], rtol):
            return k
        if close(b[:-k], a[k:], rtol):
            return -k
    return None


def _permutation(a: np.ndarray, b: np.ndarray, rtol: float) -> list[int] | None:
    """perm with b[i] == a[perm[i]] for every row, when it is not the identity."""
    if len(a) > MAX_ROWS or len(a) < 2:
        return None
    fa, fb = a.reshape(len(a), -1), b.reshape(len(b), -1)
    atol = rtol * scale(fa, fb)
    perm = []
    for row in fb:
        with np.errstate(all="ignore"):
            hits = np.flatnonzero(np.all((np.abs(fa - row) <= atol) | (fa == row), axis=1))
        if hits.size == 0:
            return None
        perm.append(int(hits[0]))
    return perm if perm != list(range(len(a))) and len(set(perm)) == len(perm) else None


def _confined(a: np.ndarray, b: np.ndarray, rtol: float) -> tuple[str, int] | None:
    """("row", i) or ("column", j) when every differing element of a 2-D pair is in that one row or column."""
    if a.ndim != 2 or a.shape[0] < 2 or a.shape[1] < 2:
        return None
    diff = ~_equal(a, b, rtol * scale(a, b))
    rows, cols = np.flatnonzero(diff.any(axis=1)), np.flatnonzero(diff.any(axis=0))
    if len(rows) == 1:
        return "row", int(rows[0])
    if len(cols) == 1:
        return "column", int(cols[0])
    return None


def simplest_relation(ctx: DivergenceContext) -> tuple[str, dict] | None:
    """(a sentence, evidence) for the simplest exact relation between side A and side B, or None."""
    a, b = f64(ctx.a), f64(ctx.b)
    rtol = exact_rtol(ctx)
    if a.shape == b.shape and a.size >= 2:
        fit = fit_factor(a, b)
        if fit is not None and fit[1] <= rtol and abs(fit[0] - 1) > 1e-6:
            return f"B = {fmt(fit[0])} × A exactly (a constant factor)", {"relation": "factor", "factor": fit[0]}
    if a.ndim == 2 and b.shape == a.T.shape and a.size >= 2 and close(b, a.T, rtol) and not same(a, b):
        return "B is the transpose of A", {"relation": "transpose"}
    for label, side, other in (("B", "B", a), ("A", "A", b)):
        before = before_of(ctx, side)
        if before and ctx.name in before[0] and f64(before[0][ctx.name]).shape == other.shape \
                and close(f64(before[0][ctx.name]), other, rtol):
            who = "A" if label == "B" else "B"
            return (f"{who}'s {ctx.name} at step {ctx.step} is {label}'s of step {ctx.step - 1}: {who} is one step "
                    f"behind, {label} one step ahead (an off-by-one in batch slicing or in when it records)",
                    {"relation": "previous-step", "behind": who, "ahead": label})
    if a.shape != b.shape or a.ndim < 1 or len(a) < 2:
        return None
    k = _shift(a, b, rtol) if a.ndim >= 1 and len(a) >= 3 else None
    if k is not None:
        return (f"B's rows are A's shifted by {k} (B[{k}:] = A[:-{k}])" if k > 0 else
                f"B's rows are A's shifted by {k} (B[:{k}] = A[{-k}:])"), {"relation": "shifted-rows", "shift": k}
    perm = _permutation(a, b, rtol)
    if perm is not None:
        return f"B's rows are A's permuted (B[i] = A[perm[i]], perm starts {perm[:10]})", \
            {"relation": "permuted-rows", "permutation": perm[:100]}
    where = _confined(a, b, rtol)
    if where is not None:
        return f"the difference is confined to {where[0]} {where[1]}", {"relation": f"one-{where[0]}", "index": where[1]}
    equal = _rows_equal(a, b, rtol)
    if equal.any():
        rows = np.flatnonzero(equal)
        return (f"{len(rows)} of {len(a)} rows are equal (rows {rows.tolist()[:10]}); the others differ",
                {"relation": "rows-equal", "rows": rows.tolist()[:100], "count": int(len(rows))})
    return None


__all__ = ["simplest_relation"]

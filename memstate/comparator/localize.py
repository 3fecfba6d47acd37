"""Where inside a divergent tensor the two sides differ: rows, columns, the worst elements, and the pattern.

Rows are the first axis (samples, for activations) and columns the rest flattened (units). A 1-d tensor
(a bias or its gradient) has columns only; a 0-d tensor (the loss) has neither.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from memstate.comparator.metrics import ElementErrors

MAX_LISTED = 64  # rows and columns listed; the counts are always exact
TOP = 5

PATTERNS = ("everywhere", "some rows", "some columns", "single elements", "none")


@dataclass(frozen=True)
class WorstElement:
    """One element out of tolerance, with both values and its errors."""

    index: tuple[int, ...]
    a: float
    b: float
    abs_error: float
    rel_error: float  # elementwise: |a - b| / max(|a|, |b|)
    ulps: float  # in the lower dtype


@dataclass(frozen=True)
class Localization:
    """The shape of a divergence inside one tensor; `pattern` is one of PATTERNS."""

    pattern: str
    n_out: int
    size: int
    rows: tuple[int, ...]  # affected rows, ascending, at most MAX_LISTED
    n_rows: int  # affected rows in all
    total_rows: int  # 0 for 0-d and 1-d tensors
    columns: tuple[int, ...]
    n_columns: int
    total_columns: int  # 0 for 0-d tensors
    worst: tuple[WorstElement, ...]  # the largest abs errors among the failing elements, worst first


def _as_matrix(mask: np.ndarray) -> np.ndarray:
    if mask.ndim == 0:
        return mask.reshape(1, 1)
    if mask.ndim == 1:
        return mask.reshape(1, -1)
    return mask.reshape(mask.shape[0], -1)


def pattern_of(out: np.ndarray) -> str:
    """Classify a failing-element mask: everywhere, some rows, some columns, single elements, or none."""
    m = _as_matrix(out)
    n_out, (n_r, n_c) = int(np.count_nonzero(m)), m.shape
    if n_out == 0:
        return "none"
    rows_hit, cols_hit = int(m.any(axis=1).sum()), int(m.any(axis=0).sum())
    if n_out >= 0.5 * m.size or (rows_hit >= 0.9 * n_r and cols_hit >= 0.9 * n_c):
        return "everywhere"
    if n_c > 1 and rows_hit < n_r and n_out > 0.5 * rows_hit * n_c:
        return "some rows"
    if n_r > 1 and cols_hit < n_c and n_out > 0.5 * cols_hit * n_r:
        return "some columns"
    return "single elements"


def worst_elements(a: np.ndarray, b: np.ndarray, errors: ElementErrors, out: np.ndarray,
                   top: int = TOP) -> tuple[WorstElement, ...]:
    """The `top` failing elements with the largest abs error (non-finite mismatches first)."""
    flat = np.flatnonzero(out)
    if flat.size == 0:
        return ()
    errs = errors.abs.ravel()[flat]
    if flat.size > top:
        keep = np.argpartition(-errs, top - 1)[:top]
        flat, errs = flat[keep], errs[keep]
    order = np.lexsort((flat, -errs))  # worst first; ties in index order
    result = []
    for i in flat[order]:
        index = tuple(int(k) for k in np.unravel_index(i, a.shape)) if a.ndim else ()
        result.append(WorstElement(index=index, a=float(a.ravel()[i]), b=float(b.ravel()[i]),
                                   abs_error=float(errors.abs.ravel()[i]), rel_error=float(errors.rel.ravel()[i]),
                                   ulps=float(errors.ulp.ravel()[i])))
    return tuple(result)


def localize(a: np.ndarray, b: np.ndarray, errors: ElementErrors, out: np.ndarray, top: int = TOP) -> Localization:
    """Rows, columns, worst elements and pattern of the failing elements `out` of b against a."""
    m = _as_matrix(out)
    rows = np.flatnonzero(m.any(axis=1)) if out.ndim >= 2 else np.array([], dtype=int)
    cols = np.flatnonzero(m.any(axis=0)) if out.ndim >= 1 else np.array([], dtype=int)
    return Localization(
        pattern=pattern_of(out),
        n_out=int(np.count_nonzero(out)),
        size=int(out.size),
        rows=tuple(int(r) for r in rows[:MAX_LISTED]),
        n_rows=int(rows.size),
        total_rows=int(m.shape[0]) if out.ndim >= 2 else 0,
        columns=tuple(int(c) for c in cols[:MAX_LISTED]),
        n_columns=int(cols.size),
        total_columns=int(m.shape[1]) if out.ndim >= 1 else 0,
        worst=worst_elements(a, b, errors, out, top),
    )

"""Comparing one recomputed operation with the recorded tensor, by the comparator's metrics and tolerances.

The tolerance is resolved in the trace's own dtype and widened to the operation's rounding bound
(`op_tolerance`); the magnitude an element is judged against is widened to the scale of the operation's
terms (`compare_op`), so a result that cancels to nearly zero keeps the rounding of its terms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from memstate.check import recompute as rc
from memstate.check.result import LOGITS
from memstate.comparator.compare import TensorComparison
from memstate.comparator.metrics import (TensorMetrics, bit_identical, dtype_name, element_errors,
                                        identical_metrics, tensor_metrics)
from memstate.comparator.tolerance import Tolerance, Tolerances, min_passing


@dataclass(frozen=True)
class _Cmp:
    ok: bool
    metrics: TensorMetrics | None
    max_abs: float
    max_rel: float
    ratio: float
    index: tuple[int, ...] | None
    rec: float | None
    ref: float | None
    tolerance: Tolerance
    message: str = ""


def op_tolerance(tolerances: Tolerances, name: str, dtype: np.dtype, terms: int) -> Tolerance:
    """The comparator's tolerance for `name` in the recorded dtype (both sides: the reference stands in for
    an exact computation in that dtype), its rtol raised to the operation's rounding bound `2 * terms *
    eps` when that is larger: an honest sum of many float32 terms may be off by that much."""
    tol = tolerances.resolve(name, dtype, dtype)
    bound = rc.rounding_bound(dtype, terms)
    if bound > tol.rtol:
        tol = replace(tol, rtol=bound, source=f"{tol.source} + rounding bound of {terms} terms")
    return tol


def _widened(errors, scale: np.ndarray | rc.Lazy):
    """The comparator's elementwise errors with the magnitude raised to the scale of the operation's terms."""
    with np.errstate(all="ignore"):
        s = np.broadcast_to(np.abs(rc.f64(rc.materialize(scale))), errors.abs.shape)
        s = np.where(np.isfinite(s), s, 0.0)
    return replace(errors, magnitude=np.maximum(errors.magnitude, s))


def compare_op(recorded: np.ndarray, ref: np.ndarray, scale: np.ndarray | rc.Lazy, tol: Tolerance,
               full: bool = True) -> _Cmp:
    """Recorded against recomputed with the comparator's metrics and its element test under `tol`.

    An element passes when |recorded - recomputed| <= atol + rtol * magnitude (or is within `tol.ulps`),
    the magnitude being the largest of |recorded|, |recomputed| and the `scale` of the operation's terms: a
    result that cancels to nearly zero keeps the rounding of its terms. nan matches nan and an infinity the
    same infinity; a non-finite value against anything else fails. With `full=False` an operation whose
    elements are all finite and within tolerance is summarised without the full metrics (the fast path).
    """
    ref = np.asarray(ref, dtype=np.float64)
    if recorded.shape != ref.shape:
        return _Cmp(False, None, math.inf, math.inf, math.inf, None, None, None, tol,
                    f"recorded shape {list(recorded.shape)} but the operation gives {list(ref.shape)}")
    if ref.size == 0:
        return _Cmp(True, tensor_metrics(ref, recorded), 0.0, 0.0, 0.0, None, None, None, tol)
    if not full and tol.ulps is None:
        # bit-identical and finite (a finite sum: no nan or inf in it; an overflowing sum takes the long way)
        if bit_identical(recorded, ref) and _finite_sum(recorded):  # issue 14
            idx = tuple(0 for _ in ref.shape)
            return _Cmp(True, None, 0.0, 0.0, 0.0, idx, float(recorded.flat[0]), float(ref.flat[0]), tol)
        with np.errstate(all="ignore"):
            rec = rc.f64(recorded).reshape(-1)  # 1-d inside: ufuncs on 0-d arrays return scalars
            s = np.broadcast_to(np.abs(rc.f64(rc.materialize(scale))), ref.shape).reshape(-1)
            d = rec - ref.reshape(-1)
            np.abs(d, out=d)
            allowed = np.abs(rec)
            np.maximum(allowed, np.abs(ref.reshape(-1)), out=allowed)
            np.maximum(allowed, s, out=allowed)
            allowed *= tol.rtol
            allowed += tol.atol
            if bool(np.all(d <= allowed)) and bool(np.isfinite(d).all()):  # any nan or inf: the full path
                ratio = np.divide(d, allowed, out=np.zeros_like(d), where=allowed > 0)
                flat = int(np.argmax(ratio))
                dmax = float(d.max())
                top = float(max(np.abs(rec).max(), np.abs(ref).max()))
                max_rel = 0.0 if dmax == 0 else (dmax / top if top > 0 else math.inf)
                idx = tuple(int(i) for i in np.unravel_index(flat, ref.shape))
                return _Cmp(True, None, dmax, max_rel, float(ratio.flat[flat]), idx, float(rec.flat[flat]),
                            float(ref.flat[flat]), tol)
    errors = element_errors(ref, recorded)
    widened = _widened(errors, scale)
    fail = tol.out_of_tolerance(widened)
    with np.errstate(all="ignore"):
        allowed = tol.atol + tol.rtol * widened.magnitude
        ratio = np.where(errors.abs == 0, 0.0, errors.abs / np.where(allowed > 0, allowed, np.inf))
        if tol.ulps is not None:  # within the ULP allowance passes whatever the ratio
            ratio = np.where(fail, np.maximum(ratio, 1.0 + 1e-9), np.minimum(ratio, 1.0))
        ratio = np.where(errors.mismatch, np.inf, ratio)
    metrics = tensor_metrics(ref, recorded, errors, fail, argmax=_argmax(ref.ndim, ref.shape))
    flat = int(np.argmax(ratio))
    idx = tuple(int(i) for i in np.unravel_index(flat, ref.shape))
    return _Cmp(not fail.any(), metrics, metrics.max_abs_error, metrics.max_rel_error, float(ratio.flat[flat]), idx,
                float(recorded.flat[flat]), float(ref.flat[flat]), tol)


def _finite_sum(x: np.ndarray) -> bool:
    with np.errstate(over="ignore", invalid="ignore"):
        return math.isfinite(float(x.sum(dtype=np.float64)))


def _argmax(ndim: int, shape: tuple[int, ...]) -> bool:
    return ndim == 2 and shape[-1] > 1


def tensor_comparison(k: int, name: str, ref: np.ndarray, value: np.ndarray, scale: np.ndarray | rc.Lazy,
                      tol: Tolerance) -> tuple[TensorComparison, Any, np.ndarray | None]:
    """The comparator's TensorComparison of one operation, with its elementwise errors and failing mask."""
    ref = np.asarray(ref, dtype=np.float64)
    common: dict[str, Any] = dict(step=k, name=name, shape_a=tuple(ref.shape), shape_b=tuple(value.shape), dtype_a="float64",
                  dtype_b=dtype_name(value.dtype), tolerance=tol)
    if ref.shape != value.shape:
        return TensorComparison(**common, within_tolerance=False, metrics=None), None, None
    if bit_identical(ref, value):  # the exact fast path (issue 14): every error 0, nothing to localise
        argmax = name == "probs" or bool(LOGITS.match(name))
        return TensorComparison(**common, within_tolerance=True, metrics=identical_metrics(ref, argmax)), None, None
    errors = element_errors(ref, value)
    widened = _widened(errors, scale)
    fail = tol.out_of_tolerance(widened)
    metrics = tensor_metrics(ref, value, errors, fail, argmax=name == "probs" or bool(LOGITS.match(name)))
    within = metrics.n_out == 0
    return (TensorComparison(**common, within_tolerance=within, metrics=metrics,
                             min_tolerance=None if within else min_passing(widened, tol)), errors, fail)

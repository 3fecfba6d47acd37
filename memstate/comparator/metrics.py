"""How far apart two tensors of one shape are: elementwise errors and their per-tensor summary.

Definitions (docs/report-schema.md repeats them), all computed in float64:

- abs error: |a - b|.
- elementwise rel error: |a - b| / max(|a|, |b|), 0 where a == b. Near zero it blows up (a sum that
  cancels to 1e-9 carries the rounding of its O(1) terms), so it is shown per element but never summarised.
- max rel error: max |a - b| / scale, where scale = max(max |a|, max |b|): the error relative to the
  tensor's scale (the normwise relative error in the infinity norm). It is scale-free, symmetric, about
  one unit roundoff for a rounding-level difference, and not fooled by cancellation; every summary,
  table and history of "rel error" means this one.
- ULP distance: how many representable numbers lie between a and b, counted in the LOWER of the two
  dtypes (both are cast to float32 when either is float32), so a float32 result is judged on float32's grid.
- non-finite values: a nan on both sides at one place, or the same infinity on both, agrees (error 0);
  a non-finite value on one side only, or two different non-finite values, is a mismatch: its abs, rel
  and ULP errors are inf, and so are the tensor's max errors.

Speed (issue 14): most tensors of two runs that agree are bit-identical, and most of the rest are within
tolerance. `bit_identical` settles the first kind by comparing integer views, block by block, and
`identical_metrics` then gives the same TensorMetrics `tensor_metrics` would (zeros, cosine 1) from two
passes over one side. `within_tolerance` is the one-pass test for the second kind; `summary_metrics`
gives the summary the buckets need (max abs, scale, max rel, non-finite counts) without the ULPs, cosine
and elementwise rel, which only tensors out of tolerance, or shown in a report, pay for.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

_IntType = type[np.integer[Any]]
_ORDERED: dict[int, tuple[_IntType, _IntType]] = {4: (np.int32, np.int64), 8: (np.int64, np.uint64)}
_INTS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
BLOCK = 1 << 16  # elements per block in the block-wise passes: a block of both sides stays in the L2 cache
HEAD = 1 << 10  # elements bit_identical compares before the rest


@dataclass(frozen=True)
class ElementErrors:
    """Elementwise errors between two same-shaped tensors, float64 arrays of their shape."""

    abs: np.ndarray  # |a - b|; 0 where non-finite values agree; inf at a mismatch
    rel: np.ndarray  # abs / magnitude; 0 where abs == 0
    magnitude: np.ndarray  # max(|a|, |b|) where both are finite, else 0
    ulp: np.ndarray  # ULP distance in the lower dtype; inf at a mismatch
    mismatch: np.ndarray  # bool: non-finite on one side only, or different non-finite values
    finite: np.ndarray  # bool: finite on both sides
    ulp_dtype: str  # the dtype the ULPs are counted in


@dataclass(frozen=True)
class TensorMetrics:
    """The summary of one tensor's errors; see the module docstring for the definitions."""

    size: int
    scale: float  # max(|a|, |b|) over the elements finite on both sides
    max_abs_error: float
    max_rel_error: float  # relative to the tensor's scale
    max_elem_rel_error: float  # the largest elementwise rel error
    max_ulp: float  # in `ulp_dtype`
    ulp_dtype: str
    cosine: float  # cosine similarity over the elements finite on both sides
    n_out: int  # elements out of tolerance
    frac_out: float
    nan_a: int
    nan_b: int
    inf_a: int
    inf_b: int
    nonfinite_mismatch: int
    argmax_mismatch: float | None = None  # fraction of rows whose argmax differs (probs and logits only)
    detail: str = "full"  # "full"; "summary": max_elem_rel_error, max_ulp and cosine not computed (nan);
    #                       "identical": bit-identical, scale and non-finite counts not computed


def lower_dtype(a: np.ndarray, b: np.ndarray) -> np.dtype:
    """float32 when either side is float32 (or narrower), else float64."""
    return np.dtype(np.float32) if min(a.dtype.itemsize, b.dtype.itemsize) <= 4 else np.dtype(np.float64)


def _ordinals(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Integers in the order of the floats: neighbours differ by 1, and +0 and -0 are both 0."""
    signed, _ = _ORDERED[dtype.itemsize]
    with np.errstate(over="ignore", invalid="ignore"):
        bits = np.ascontiguousarray(x, dtype=dtype).view(signed)
    low = np.iinfo(signed).min
    return np.where(bits < 0, low - bits, bits)


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise count of representable numbers between a and b in the lower dtype (non-finite not special-cased)."""
    dt = lower_dtype(a, b)
    oa, ob = _ordinals(a, dt), _ordinals(b, dt)
    if dt.itemsize == 4:
        return np.abs(oa.astype(np.int64) - ob.astype(np.int64)).astype(np.float64)
    ua, ub = oa.view(np.uint64), ob.view(np.uint64)  # the true distance fits in uint64; wrap-around is exact
    return np.where(oa >= ob, ua - ub, ub - ua).astype(np.float64)


def element_errors(a: np.ndarray, b: np.ndarray) -> ElementErrors:
    """Abs, rel and ULP error of every element; the arrays must have the same shape."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    shape, a, b = a.shape, a.reshape(-1), b.reshape(-1)  # 1-d inside: ufuncs on 0-d arrays return scalars
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        abs_err = np.abs(a64 - b64)
        magnitude = np.maximum(np.abs(a64), np.abs(b64))
    finite = np.isfinite(magnitude)  # nan and inf both propagate through maximum
    ulp = ulp_distance(a, b)
    if finite.all():
        mismatch = np.zeros(a.shape, dtype=bool)
    else:
        same = (a64 == b64) | (np.isnan(a64) & np.isnan(b64))
        mismatch = ~finite & ~same
        abs_err[~finite] = 0.0
        magnitude[~finite] = 0.0
        ulp[~finite] = 0.0
        abs_err[mismatch] = ulp[mismatch] = np.inf
    with np.errstate(over="ignore", invalid="ignore"):
        rel = np.divide(abs_err, magnitude, out=np.zeros(a.shape), where=abs_err > 0)
    rel[mismatch] = np.inf
    return ElementErrors(abs_err.reshape(shape), rel.reshape(shape), magnitude.reshape(shape), ulp.reshape(shape),
                         mismatch.reshape(shape), finite.reshape(shape), ulp_dtype=lower_dtype(a, b).name)


def _max(x: np.ndarray) -> float:
    return float(x.max()) if x.size else 0.0


def max_abs_error(a: np.ndarray, b: np.ndarray) -> float:
    """The largest |a - b| (inf when a non-finite value has no match)."""
    return _max(element_errors(a, b).abs)


def tensor_scale(a: np.ndarray, b: np.ndarray) -> float:
    """max(|a|, |b|) over the elements finite on both sides: what `max_rel_error` is relative to."""
    return _max(element_errors(a, b).magnitude)


def relative_to_scale(max_abs: float, scale: float) -> float:
    """max_abs / scale, with 0/0 = 0 (equal zero tensors) and x/0 = inf."""
    if max_abs == 0:
        return 0.0
    return max_abs / scale if scale > 0 else float("inf")


def max_rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """The largest |a - b| relative to the tensor's scale max(max|a|, max|b|)."""
    return relative_to_scale(max_abs_error(a, b), tensor_scale(a, b))


def max_ulp_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The largest ULP distance, counted in the lower of the two dtypes."""
    return _max(element_errors(a, b).ulp)


def _cosine(a64: np.ndarray, b64: np.ndarray) -> float:
    scale = max(np.abs(a64).max(initial=0.0), np.abs(b64).max(initial=0.0))
    if scale == 0:
        return 1.0
    a64, b64 = a64.ravel() / scale, b64.ravel() / scale  # no overflow in the squares
    na, nb = float(np.dot(a64, a64)), float(np.dot(b64, b64))
    if na == 0 or nb == 0:
        return 0.0
    return float(np.clip(np.dot(a64, b64) / np.sqrt(na * nb), -1.0, 1.0))


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of the angle between a and b over the elements finite on both sides (1.0 for two zero tensors)."""
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    both = np.isfinite(a64) & np.isfinite(b64)
    return _cosine(a64[both], b64[both])


def argmax_mismatch(a: np.ndarray, b: np.ndarray) -> float | None:
    """Fraction of rows whose argmax differs (2-D tensors: rows are samples); None for other shapes."""
    if a.ndim != 2 or a.shape != b.shape or a.shape[0] == 0 or a.shape[1] == 0:
        return None
    return float(np.mean(np.argmax(a, axis=1) != np.argmax(b, axis=1)))


def _flat_view(x: np.ndarray) -> np.ndarray:
    """x as a 1-d array of unsigned integers of its item size (a copy only when x is not contiguous)."""
    x = np.ascontiguousarray(x).reshape(-1)
    return x.view(_INTS[x.dtype.itemsize])


def bit_identical(a: np.ndarray, b: np.ndarray) -> bool:
    """Same shape, same dtype and the same bits everywhere (a nan agrees with a nan of the same payload).

    Compares integer views: the first HEAD elements, then block by block, so a difference early on stops
    the pass and no full-size temporary is made (two tensors that differ mostly differ from the start: a
    tensor of a block or less was compared whole before, which cost a copy within tolerance one more pass
    over every such tensor). -0.0 against 0.0 is not identical here (the full path finds them equal).
    """
    if a.shape != b.shape or a.dtype != b.dtype or a.dtype.itemsize not in _INTS:
        return False
    ia, ib = _flat_view(a), _flat_view(b)
    n = ia.size
    if n <= HEAD:
        return bool(np.array_equal(ia, ib))
    if not np.array_equal(ia[:HEAD], ib[:HEAD]):
        return False
    if n <= HEAD + BLOCK:
        return bool(np.array_equal(ia[HEAD:], ib[HEAD:]))
    eq = np.empty(BLOCK, dtype=bool)
    for start in range(HEAD, n, BLOCK):
        stop = min(start + BLOCK, n)
        chunk = eq[: stop - start]
        np.equal(ia[start:stop], ib[start:stop], out=chunk)
        if not chunk.all():
            return False
    return True


def _finite_extremes(x: np.ndarray) -> tuple[float, bool]:
    """(max |x| over the finite elements, whether every element is finite), in float64."""
    if x.size == 0:
        return 0.0, True
    lo, hi = float(x.min()), float(x.max())
    if math.isfinite(lo) and math.isfinite(hi):
        return max(abs(lo), abs(hi)), True
    finite = x[np.isfinite(x)]
    return (float(np.abs(finite).max()) if finite.size else 0.0), False


_NAMES: dict[np.dtype, str] = {}


def dtype_name(dt: np.dtype) -> str:
    """dt.name, remembered (numpy 2 computes it in Python, at about a microsecond a call, per call)."""
    name = _NAMES.get(dt)
    if name is None:
        name = _NAMES[dt] = dt.name
    return name


def _argmax_same(a: np.ndarray) -> float | None:
    """argmax_mismatch(a, a) without computing an argmax: 0 where it applies, else None."""
    return 0.0 if a.ndim == 2 and a.shape[0] > 0 and a.shape[1] > 0 else None


_IDENTICAL: dict[tuple[int, bool, float | None], TensorMetrics] = {}  # identical_summary's answers by their key
IDENTICAL_LIMIT = 1024  # answers remembered before the memo starts over


def identical_summary(a: np.ndarray, argmax: bool = False) -> TensorMetrics:
    """The metrics of a bit-identical pair before anything is computed from it (detail "identical"): errors
    0; scale, non-finite counts and the rest are filled in by `completed_metrics` if a report shows it.

    They depend only on a's size, whether it is float32 or narrower, and the argmax field, so each answer
    is made once and shared (TensorMetrics is frozen): an identical diff asked for one per tensor per step."""
    key = (int(a.size), a.dtype.itemsize <= 4, _argmax_same(a) if argmax else None)
    hit = _IDENTICAL.get(key)
    if hit is not None:
        return hit
    if len(_IDENTICAL) >= IDENTICAL_LIMIT:
        _IDENTICAL.clear()
    made = _IDENTICAL[key] = TensorMetrics(
        size=key[0], scale=math.nan, max_abs_error=0.0, max_rel_error=0.0, max_elem_rel_error=0.0, max_ulp=0.0,
        ulp_dtype="float32" if key[1] else "float64", cosine=1.0, n_out=0, frac_out=0.0, nan_a=0, nan_b=0,
        inf_a=0, inf_b=0, nonfinite_mismatch=0, argmax_mismatch=key[2], detail="identical")
    return made


def identical_metrics(a: np.ndarray, argmax: bool = False) -> TensorMetrics:
    """What `tensor_metrics(a, a)` gives, in two passes over a: zero errors, cosine 1, a's non-finite counts.

    For a pair `bit_identical` has accepted; the cosine is exactly 1 (sqrt of a rounded square is exact)
    except for a tensor with no finite nonzero element, where `tensor_metrics` gives 1 (all zero) too.
    """
    size = int(a.size)
    scale, all_finite = _finite_extremes(a)
    nan = inf = 0
    if not all_finite:
        nan = int(np.count_nonzero(np.isnan(a)))
        inf = int(np.count_nonzero(np.isinf(a)))
    return TensorMetrics(size=size, scale=scale, max_abs_error=0.0, max_rel_error=0.0, max_elem_rel_error=0.0,
                         max_ulp=0.0, ulp_dtype=lower_dtype(a, a).name, cosine=1.0, n_out=0, frac_out=0.0,
                         nan_a=nan, nan_b=nan, inf_a=inf, inf_b=inf, nonfinite_mismatch=0,
                         argmax_mismatch=_argmax_same(a) if argmax else None)


_SCRATCH = threading.local()


def _scratch(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Three float64 blocks and one bool block of at least n elements, kept per thread and reused: for
    the many small tensors of a step, allocating them per call cost as much as the pass itself."""
    held = getattr(_SCRATCH, "blocks", None)
    if held is None or held[0].size < n:
        held = _SCRATCH.blocks = (np.empty(n), np.empty(n), np.empty(n), np.empty(n, dtype=bool))
    return held


def within_tolerance(a: np.ndarray, b: np.ndarray, rtol: float, atol: float) -> tuple[bool, float, float]:
    """One block-wise pass: (every element finite on both sides and |a-b| <= atol + rtol*max(|a|,|b|),
    max |a-b|, max(|a|,|b|)), all in float64, for same-shaped a and b.

    Any non-finite element answers False at once (the full path judges those), as does the first failing
    block; the maxima are then those of the blocks seen so far and must not be used. A block whose
    largest |a-b| is at most atol passes without the elementwise test (atol + rtol*m >= atol, also rounded).
    """
    fa, fb = a.reshape(-1), b.reshape(-1)
    n = fa.size
    step = min(n, BLOCK) or 1
    d, m, t, ok = _scratch(step)
    max_d = max_m = 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, n, step):
            stop = min(start + step, n)
            k = stop - start
            dd, mm, tt = d[:k], m[:k], t[:k]
            xa, xb = fa[start:stop], fb[start:stop]
            np.subtract(xa, xb, out=dd, dtype=np.float64)
            np.abs(dd, out=dd)
            np.abs(xa, out=mm, dtype=np.float64)
            bd, bm = float(dd.max()), _largest(float(mm.max()), float(xb.max()), -float(xb.min()))
            if not (math.isfinite(bm) and math.isfinite(bd)):
                return False, bd, bm
            if bd > atol and not _block_within(dd, mm, tt, ok[:k], xb, rtol, atol):
                return False, bd, bm
            max_d, max_m = max(max_d, bd), max(max_m, bm)
    return True, max_d, max_m


def _largest(*values: float) -> float:
    """max(values), nan if any is nan (as numpy's max; Python's depends on the order)."""
    return math.nan if any(v != v for v in values) else max(values)


def _block_within(dd: np.ndarray, mm: np.ndarray, tt: np.ndarray, ok: np.ndarray, xb: np.ndarray, rtol: float,
                  atol: float) -> bool:
    """Whether every |a-b| (dd) <= atol + rtol*max(|a|,|b|), |a| given (mm). First against atol + rtol*|a|,
    which is no larger (also rounded), so passing it passes; only a block that fails it pays for |b|."""
    np.multiply(mm, rtol, out=tt)
    tt += atol
    if bool(np.less_equal(dd, tt, out=ok).all()):
        return True
    np.abs(xb, out=tt, dtype=np.float64)
    np.maximum(mm, tt, out=mm)
    np.multiply(mm, rtol, out=tt)
    tt += atol
    return bool(np.less_equal(dd, tt, out=ok).all())


def summary_metrics(a: np.ndarray, b: np.ndarray, max_abs: float, scale: float, argmax: bool = False) -> TensorMetrics:
    """The metrics of a pair `within_tolerance` passed (so every element is finite): the maxima it found,
    and nan in place of the max elementwise rel, ULPs and cosine, which were not computed (detail "summary")."""
    size = int(a.size)
    return TensorMetrics(size=size, scale=scale, max_abs_error=max_abs, max_rel_error=relative_to_scale(max_abs, scale),
                         max_elem_rel_error=math.nan, max_ulp=math.nan, ulp_dtype=dtype_name(lower_dtype(a, b)),
                         cosine=math.nan, n_out=0, frac_out=0.0, nan_a=0, nan_b=0, inf_a=0, inf_b=0,
                         nonfinite_mismatch=0, argmax_mismatch=argmax_mismatch(a, b) if argmax else None,
                         detail="summary")


def completed_metrics(m: TensorMetrics, a: np.ndarray, b: np.ndarray) -> TensorMetrics:
    """Metrics from `identical_summary` or `summary_metrics` (every element finite) made full; for the
    latter in one block-wise pass:
    the max elementwise rel error, the max ULP distance and the cosine, as `tensor_metrics` defines them
    (the cosine's sums are added block by block, so it may differ from tensor_metrics' in the last bit)."""
    if m.detail == "full":
        return m
    if m.detail == "identical":
        return identical_metrics(a, argmax=m.argmax_mismatch is not None)
    fa, fb = a.reshape(-1), b.reshape(-1)
    n, scale = fa.size, m.scale
    max_rel = max_ulp = 0.0
    dots = np.zeros(3)  # a.a, b.b, a.b of the scaled tensors
    # No floating-point flag can rise below: |a - b| is finite (within_tolerance passed), rel divides only
    # where d > 0 (so mag > 0), and a / scale with scale >= max |a| stays within [-1, 1].
    for start in range(0, n, BLOCK):
        xa, xb = fa[start:start + BLOCK], fb[start:start + BLOCK]
        a64, b64 = np.asarray(xa, dtype=np.float64), np.asarray(xb, dtype=np.float64)
        d = np.abs(a64 - b64)
        mag = np.maximum(np.abs(a64), np.abs(b64))
        rel = np.divide(d, mag, out=np.zeros_like(d), where=d > 0)
        max_rel = max(max_rel, float(rel.max()))  # a block is never empty
        max_ulp = max(max_ulp, float(ulp_distance(xa, xb).max()))  # counted in the lower dtype
        if scale > 0:
            sa, sb = a64 / scale, b64 / scale
            dots += (float(np.dot(sa, sa)), float(np.dot(sb, sb)), float(np.dot(sa, sb)))
    if scale == 0:
        cos = 1.0
    elif dots[0] == 0 or dots[1] == 0:
        cos = 0.0
    else:
        cos = float(np.clip(dots[2] / np.sqrt(dots[0] * dots[1]), -1.0, 1.0))
    return replace(m, max_elem_rel_error=max_rel, max_ulp=max_ulp, cosine=cos, detail="full")


def tensor_metrics(a: np.ndarray, b: np.ndarray, errors: ElementErrors | None = None,
                   out_of_tolerance: np.ndarray | None = None, *, argmax: bool = False) -> TensorMetrics:
    """Summarise the errors of b against a; `out_of_tolerance` (bool, their shape) gives n_out and frac_out."""
    errors = element_errors(a, b) if errors is None else errors
    size = int(a.size)
    scale = _max(errors.magnitude)
    max_abs = _max(errors.abs)
    n_out = int(np.count_nonzero(out_of_tolerance)) if out_of_tolerance is not None else 0
    all_finite = bool(errors.finite.all())
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)

    def count(test, x: np.ndarray) -> int:
        return 0 if all_finite else int(np.count_nonzero(test(x)))

    return TensorMetrics(
        size=size,
        scale=scale,
        max_abs_error=max_abs,
        max_rel_error=relative_to_scale(max_abs, scale),
        max_elem_rel_error=_max(errors.rel),
        max_ulp=_max(errors.ulp),
        ulp_dtype=errors.ulp_dtype,
        cosine=_cosine(a64, b64) if all_finite else _cosine(a64[errors.finite], b64[errors.finite]),
        n_out=n_out,
        frac_out=n_out / size if size else 0.0,
        nan_a=count(np.isnan, a),
        nan_b=count(np.isnan, b),
        inf_a=count(np.isinf, a),
        inf_b=count(np.isinf, b),
        nonfinite_mismatch=0 if all_finite else int(np.count_nonzero(errors.mismatch)),
        argmax_mismatch=argmax_mismatch(a, b) if argmax else None,
    )

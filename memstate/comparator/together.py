"""Small float64 tensors of one step judged together, in one pass over all of them (issue 14).

A step of a small net holds a dozen tensors of a few hundred to a few thousand elements (biases, a
batch's activations, probabilities, the loss). Judged one by one, each costs a dozen numpy calls
(`bit_identical`, then `metrics.within_tolerance`'s block), and at that size the calls, not the
arithmetic, are the cost: in a diff of a numpy run against a JAX run of 784-100-10, where most tensors
differ in their last bits, judging tensors one by one was most of the time (cProfile). `verdicts` concatenates the small pairs of a step and asks each question
once for all of them, then takes each tensor's answer by segment (`np.ufunc.reduceat`):

- bit-identical: no differing 64-bit word in its segment (nan payloads included, -0 against 0 not);
- within tolerance: every element finite on both sides and |a - b| <= atol + rtol * max(|a|, |b|),
  with the tensor's own rtol and atol, computed as metrics.within_tolerance computes it (the product
  rounded, then the sum), so the two agree element for element; then its max |a - b| and its scale,
  max(|a|, |b|), which are maxima and do not depend on the order they are taken in;
- anything else is left to the one-by-one path (`None`), which says why in full.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

SMALL = 1 << 13  # elements: float64 tensors up to this size are judged together (larger ones pay their way)
GROUP = 1 << 16  # elements judged in one group at most (the scratch arrays' size)
_SCRATCH = threading.local()
_PER_ELEMENT: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

Verdict = tuple[bool, float, float] | None  # (bit-identical, max |a - b|, scale), or None: judge it alone


def eligible(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether a pair can be judged together: both float64, of one shape, 1 to SMALL elements."""
    return a.dtype == b.dtype == np.float64 and a.shape == b.shape and 0 < a.size <= SMALL


def verdicts(pairs: Sequence[tuple[np.ndarray, np.ndarray]], rtols: Sequence[float],
             atols: Sequence[float]) -> list[Verdict]:
    """For each (a, b) pair (all `eligible`), in order: (True, 0.0, nan) if bit-identical; (False, max
    |a - b|, max(|a|, |b|)) if within its tolerance (rtols[i], atols[i]) with every element finite; None
    otherwise. The scale of an identical pair is not computed (nan), as identical_summary leaves it.

    The pairs go in groups of at most GROUP elements through scratch arrays kept per thread: temporaries
    made per step were of the size at which malloc hands memory back to the system and takes it again, and
    faulting it in again cost several times the arithmetic (test_together checks that no array of a
    group's size is allocated)."""
    out: list[Verdict] = []
    start = held = 0  # the group is pairs[start:i], of `held` elements
    for i, (a, _) in enumerate(pairs):
        if held and held + a.size > GROUP:
            out += _group(pairs[start:i], rtols[start:i], atols[start:i])
            start, held = i, 0
        held += a.size
    return out + _group(pairs[start:], rtols[start:], atols[start:]) if held else out


def _scratch(n: int) -> tuple[np.ndarray, ...]:
    """Five float64 and two bool arrays of at least n elements, kept per thread."""
    held = getattr(_SCRATCH, "arrays", None)
    if held is None or held[0].size < n:
        held = _SCRATCH.arrays = tuple(np.empty(n) for _ in range(5)) + (np.empty(n, bool), np.empty(n, bool))
    return held


def _group(pairs: Sequence[tuple[np.ndarray, np.ndarray]], rtols: Sequence[float],
           atols: Sequence[float]) -> list[Verdict]:
    """`verdicts` for one group of pairs of at most GROUP elements in all, through the scratch arrays."""
    sizes = np.array([a.size for a, _ in pairs])
    n = int(sizes.sum())
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    fa, fb, d, m, t, yes, also = (x[:n] for x in _scratch(n))
    np.concatenate([x.reshape(-1) for x, _ in pairs], out=fa)
    np.concatenate([y.reshape(-1) for _, y in pairs], out=fb)
    differs = np.logical_or.reduceat(np.not_equal(fa.view(np.uint64), fb.view(np.uint64), out=yes), starts)
    with np.errstate(over="ignore", invalid="ignore"):
        np.abs(np.subtract(fa, fb, out=d), out=d)
        np.maximum(np.abs(fa, out=m), np.abs(fb, out=t), out=m)
        np.logical_and(np.isfinite(d, out=yes), np.isfinite(m, out=also), out=yes)
        finite = np.logical_and.reduceat(yes, starts)
        rt, at = _per_element(tuple(sizes.tolist()), tuple(rtols), tuple(atols))
        np.multiply(rt, m, out=t)
        t += at
        within = np.logical_and.reduceat(np.less_equal(d, t, out=yes), starts)
    max_d, max_m = np.maximum.reduceat(d, starts), np.maximum.reduceat(m, starts)
    return [(True, 0.0, float("nan")) if not differs[i] else
            (False, float(max_d[i]), float(max_m[i])) if finite[i] and within[i] else None
            for i in range(len(pairs))]


def _per_element(sizes: tuple[int, ...], rtols: tuple[float, ...],
                 atols: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Each tensor's rtol and atol repeated over its elements; remembered, as every step asks the same."""
    key = (sizes, rtols, atols)
    hit = _PER_ELEMENT.get(key)
    if hit is None:
        if len(_PER_ELEMENT) >= 64:
            _PER_ELEMENT.clear()
        hit = _PER_ELEMENT[key] = (np.repeat(np.asarray(rtols, dtype=np.float64), sizes),
                                   np.repeat(np.asarray(atols, dtype=np.float64), sizes))
    return hit

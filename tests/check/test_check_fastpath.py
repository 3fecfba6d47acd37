"""check's exact fast path (issue 14): an operation recomputed bit for bit gives what the general path gives."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from memstate.check import recompute as rc
from memstate.check.opcompare import compare_op, tensor_comparison
from memstate.comparator.tolerance import DEFAULTS

TOL = DEFAULTS["float64"]



@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=0, max_dims=2, max_side=6),
                  elements=st.floats(-1e6, 1e6, width=64)))
def test_identical_operation_matches_the_general_path(x):
    scale = np.abs(x)
    fast = compare_op(x.copy(), x, scale, TOL, full=False)
    assert fast.ok and fast.max_abs == 0.0 and fast.max_rel == 0.0 and fast.ratio == 0.0
    assert fast.index == tuple(0 for _ in x.shape) and fast.rec == fast.ref == float(x.flat[0])
    x2 = x.copy()
    x2.flat[0] = 0.0
    slow = compare_op(np.where(x2 == 0, -0.0, x2), x2, np.abs(x2), TOL, full=False)  # not the same bits
    assert slow.ok and slow.max_abs == 0.0 and slow.ratio == 0.0 and slow.index == fast.index


def test_identical_with_infinities_takes_the_full_path():
    x = np.array([-np.inf, 1.0, 2.0])
    got = compare_op(x.copy(), x, np.abs(x), TOL, full=False)
    assert got.metrics is not None and got.ok  # the same infinity agrees, judged by the full path


def test_identical_tensor_comparison_has_the_full_metrics():
    x = np.array([[0.5, -2.0], [np.nan, 3.0]])
    tc, errors, fail = tensor_comparison(4, "probs", x, x.copy(), np.abs(x), TOL)
    m = tc.metrics
    assert tc.within_tolerance and m.detail == "full" and errors is None and fail is None
    assert (m.max_abs_error, m.max_ulp, m.cosine, m.scale, m.nan_a, m.argmax_mismatch) == (0.0, 0.0, 1.0, 3.0, 1, 0.0)


def test_a_matmul_scale_is_computed_only_for_an_operation_that_is_not_bit_identical():
    """The scale |a| @ |W| is another matmul: Lazy computes it once, when compare_op needs it."""
    calls = []
    rng = np.random.default_rng(3)
    a, w = rng.standard_normal((4, 3)), rng.standard_normal((3, 2))

    def bound():
        calls.append(1)
        return np.abs(a) @ np.abs(w)

    ref = a @ w
    assert compare_op(ref.copy(), ref, rc.Lazy(bound), TOL, full=False).ok and calls == []
    scale = rc.Lazy(bound)
    off = ref * (1 + 1e-13)  # not bit-identical, within tolerance: judged against the scale
    assert compare_op(off, ref, scale, TOL, full=False).ok and calls == [1]
    assert compare_op(off, ref, scale, TOL).ok and calls == [1]  # kept, not computed again
    assert np.array_equal(rc.materialize(scale), np.abs(a) @ np.abs(w)) and calls == [1]
    plain = np.abs(ref)
    assert rc.materialize(plain) is plain


def _fit_by_masks(old, new, grad):
    """fit_one as it was before its fast path: least squares over the finite elements, made by masks."""
    eps = rc.EPS[np.dtype(new.dtype)]
    old, new, grad = (np.asarray(x, dtype=np.float64) for x in (old, new, grad))
    ok = np.isfinite(old) & np.isfinite(new) & np.isfinite(grad)
    g, d = grad[ok], (old - new)[ok]
    gg = float(g @ g)
    if not gg > 0:
        return None
    lr = float(g @ d) / gg
    return lr, 4 * eps * (float(np.linalg.norm(new[ok])) + abs(lr) * np.sqrt(gg)) / np.sqrt(gg)


SPOILERS = st.lists(st.tuples(st.sampled_from(["old", "new", "grad"]), st.integers(0, 11),
                              st.sampled_from([np.nan, np.inf, -np.inf, 0.0, 1e300])), max_size=4)


@settings(max_examples=80, deadline=None)
@given(SPOILERS, st.sampled_from([np.float64, np.float32]), st.integers(0, 2**16))
def test_lr_fit_fast_path_equals_the_masked_fit(spoilers, dtype, seed):
    rng = np.random.default_rng(seed)
    arrays = {"old": rng.standard_normal((3, 4)), "grad": rng.standard_normal((3, 4))}
    arrays["new"] = (arrays["old"] - 0.1 * arrays["grad"]).astype(dtype)
    with np.errstate(all="ignore"):  # (1e300 squared overflows both ways alike; in float32 it is inf)
        for which, i, v in spoilers:
            arrays[which].reshape(-1)[i] = v
        got = rc.fit_one(0, "W", arrays["old"], arrays["new"], arrays["grad"])
        want = _fit_by_masks(arrays["old"], arrays["new"], arrays["grad"])
    if want is None:
        assert got is None
    else:
        assert np.array_equal([got.lr, got.allowance], want, equal_nan=True), (got, want)
        assert math.copysign(1, got.lr) == math.copysign(1, want[0])


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=0, max_dims=2, max_side=6),
                  elements=st.floats(allow_nan=True, allow_infinity=True, width=64)))
def test_nonfinite_counts_nan_and_inf(x):
    from memstate.check.invariants import nonfinite
    assert nonfinite(x) == int(np.count_nonzero(~np.isfinite(x)))
    with np.errstate(over="ignore"):  # (beyond float32's range is inf there)
        narrow = x.astype(np.float32)
    assert nonfinite(narrow) == int(np.count_nonzero(~np.isfinite(narrow)))

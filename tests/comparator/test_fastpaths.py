"""The comparator's fast paths (issue 14) give what the full computation gives.

Bit-identical tensors (integer views, equal nans agree), the one-pass tolerance test and the summary
metrics of steps the report does not show are checked against the full path on the same data: nan, -0,
float32 against float64, and a difference in the last element of a large tensor.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from memstate.comparator.compare import AROUND, HEAD_STEPS, TAIL_STEPS, compare, compare_tensors
from memstate.comparator.metrics import (BLOCK, bit_identical, element_errors, identical_metrics, tensor_metrics,
                                         within_tolerance)
from memstate.comparator.tolerance import DEFAULTS, Tolerance
from memstate.formats.recorder import Recorder

TOL = DEFAULTS["float64"]
FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=64)


def same_metrics(fast, full) -> None:
    """Every field equal (nan equal to nan), the cosine to one rounding."""
    for f in dataclasses.fields(full):
        x, y = getattr(fast, f.name), getattr(full, f.name)
        if f.name == "cosine":
            assert x == pytest.approx(y, rel=1e-15, abs=1e-15), f.name
        elif isinstance(y, float) and math.isnan(y):
            assert isinstance(x, float) and math.isnan(x), f.name
        else:
            assert x == y, (f.name, x, y)


def test_bit_identical_compares_bits():
    x = np.array([1.0, np.nan, -np.inf, 0.0])
    assert bit_identical(x, x.copy())
    assert not bit_identical(x, np.array([1.0, np.nan, -np.inf, -0.0]))  # -0 is not the same bits
    assert not bit_identical(x, x.astype(np.float32))  # another dtype
    assert not bit_identical(x, x.reshape(2, 2))  # another shape
    other_nan = x.copy()
    other_nan.view(np.uint64)[1] = 0x7FF8000000000001  # a nan with another payload
    assert not bit_identical(x, other_nan)


def test_minus_zero_against_zero_is_not_identical_but_passes_with_zero_error():
    a, b = np.array([0.0, 1.0]), np.array([-0.0, 1.0])
    t = compare_tensors("t", 0, a, b, TOL)
    assert t.within_tolerance and t.metrics.max_abs_error == 0.0 and t.metrics.max_ulp == 0.0


def test_difference_in_the_last_element_of_a_large_tensor():
    n = 3 * BLOCK + 17  # several blocks and a short last one
    a = np.linspace(-1.0, 1.0, n)
    b = a.copy()
    b[-1] = np.nextafter(b[-1], 2.0)
    assert bit_identical(a, a.copy()) and not bit_identical(a, b)
    ok, dmax, scale = within_tolerance(a, b, TOL.rtol, TOL.atol)
    assert ok and dmax == abs(b[-1] - a[-1]) and scale == 1.0 + 2.220446049250313e-16
    b[-1] += 1e-3
    assert not within_tolerance(a, b, TOL.rtol, TOL.atol)[0]
    t = compare_tensors("t", 0, a, b, TOL, detail="summary")
    assert not t.within_tolerance and t.metrics.n_out == 1 and t.metrics.detail == "full"
    assert t.metrics.max_abs_error == pytest.approx(1e-3)


def test_float32_against_float64_goes_the_full_way():
    a = np.array([0.1, 0.2, 0.3])
    t = compare_tensors("t", 0, a, a.astype(np.float32), TOL, detail="summary")
    assert not t.within_tolerance  # float32 rounding fails the float64 tolerance (docs: dtype-float32)
    assert t.metrics.max_ulp == 0.0 and t.metrics.ulp_dtype == "float32"
    loose = Tolerance(rtol=1e-6, atol=0.0)
    t = compare_tensors("t", 0, a, a.astype(np.float32), loose, detail="summary")
    assert t.within_tolerance and t.metrics.detail == "summary" and math.isnan(t.metrics.max_ulp)
    assert t.metrics.max_abs_error == float(np.abs(a - a.astype(np.float32)).max())


def test_identical_metrics_count_non_finite_values_and_argmax():
    x = np.array([[1.0, np.nan, -3.0], [np.inf, 0.0, -np.inf]])
    same_metrics(identical_metrics(x, argmax=True), tensor_metrics(x, x.copy(), argmax=True))
    m = identical_metrics(x)
    assert (m.nan_a, m.inf_a, m.scale) == (1, 2, 3.0)


ARRAYS = hnp.arrays(np.float64, hnp.array_shapes(min_dims=0, max_dims=3, max_side=5), elements=FLOATS)


@settings(max_examples=60, deadline=None)
@given(ARRAYS, st.booleans())
def test_identical_fast_path_equals_the_full_metrics(x, argmax):
    fast = compare_tensors("t", 0, x, x.copy(), TOL, argmax=argmax)
    errors = element_errors(x, x.copy())
    full = tensor_metrics(x, x.copy(), errors, TOL.out_of_tolerance(errors), argmax=argmax)
    assert fast.within_tolerance
    same_metrics(fast.metrics, full)


PAIRS = st.integers(1, 40).flatmap(lambda n: st.tuples(
    hnp.arrays(np.float64, n, elements=st.floats(-1e3, 1e3, width=64)),
    hnp.arrays(np.float64, n, elements=st.sampled_from([0.0, 1e-13, -1e-12, 1e-9, 1e-6, np.nan, np.inf])),
    st.sampled_from([np.float64, np.float32])))


@settings(max_examples=80, deadline=None)
@given(PAIRS)
def test_one_pass_tolerance_test_agrees_with_the_full_test(pair):
    a, noise, dtype = pair
    b = (a + noise).astype(dtype)
    for tol in (TOL, DEFAULTS["float32"], Tolerance(rtol=0.0, atol=0.0)):
        ok, dmax, scale = within_tolerance(a, b, tol.rtol, tol.atol)
        errors = element_errors(a, b)
        full_ok = not tol.out_of_tolerance(errors).any()
        assert ok == (full_ok and bool(errors.finite.all()))
        if ok:
            assert dmax == float(errors.abs.max()) and scale == float(errors.magnitude.max())
        fast = compare_tensors("t", 0, a, b, tol, detail="summary")
        full = compare_tensors("t", 0, a, b, tol)
        assert fast.within_tolerance == full.within_tolerance
        assert fast.max_abs_error == full.max_abs_error and fast.max_rel_error == full.max_rel_error
        if fast.metrics.detail == "full":
            same_metrics(fast.metrics, full.metrics)


def _trace(path, steps, noise_at=(), bump_at=None):
    """Random steps; +1e-13 everywhere in the steps `noise_at` (within tolerance), +1e-3 on L1.z at `bump_at`."""
    rng = np.random.default_rng(0)
    with Recorder(path, {"steps": steps}) as rec:
        for k in range(steps):
            with rec.step(k):
                for name in ("x", "L1.z", "probs"):
                    v = rng.standard_normal((6, 4))
                    if k in noise_at:
                        v = v + 1e-13
                    if k == bump_at and name == "L1.z":
                        v = v + 1e-3
                    rec.record(name, v)


@pytest.mark.parametrize("encoding", ["jsonl", "binary"])
@pytest.mark.parametrize("diverge_at", [None, 7])
def test_shown_steps_have_full_metrics_and_equal_the_full_comparison(tmp_path, encoding, diverge_at):
    steps = 14
    suffix = ".jsonl" if encoding == "jsonl" else ".memstate"
    a, b = tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"
    _trace(a, steps)
    _trace(b, steps, noise_at=set(range(0, steps, 2)), bump_at=diverge_at)  # within tolerance every other step
    fast, full = compare(a, b), compare(a, b, detail="full")
    assert fast.verdict == full.verdict == ("agree" if diverge_at is None else "diverge")
    assert [s.step for s in fast.steps] == [s.step for s in full.steps]
    shown = {s.step for s in fast.steps}
    assert set(range(HEAD_STEPS)) | set(range(steps - TAIL_STEPS, steps)) <= shown
    if diverge_at is not None:
        assert set(range(diverge_at - AROUND, diverge_at + AROUND + 1)) <= shown
    for s, t in zip(fast.steps, full.steps):
        assert [x.name for x in s.tensors] == [x.name for x in t.tensors]
        for x, y in zip(s.tensors, t.tensors):
            assert x.metrics.detail == "full"
            same_metrics(x.metrics, y.metrics)
    assert fast.overview == full.overview and fast.series == full.series
    assert fast.divergent_steps == full.divergent_steps

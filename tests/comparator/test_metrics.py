"""memstate.comparator.metrics: the error definitions, ULPs in the lower dtype, non-finite values, and their symmetry."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from memstate.comparator.metrics import (
    argmax_mismatch,
    cosine_similarity,
    element_errors,
    lower_dtype,
    max_abs_error,
    max_rel_error,
    max_ulp_distance,
    tensor_metrics,
    ulp_distance,
)


def test_abs_and_rel_error_definitions():
    a = np.array([1.0, 1e-9, -2.0])
    b = np.array([1.0, 2e-9, -2.5])
    assert max_abs_error(a, b) == 0.5
    # relative to the tensor's scale (2.5), not per element (where 1e-9 vs 2e-9 would count 0.5)
    assert max_rel_error(a, b) == pytest.approx(0.5 / 2.5)
    e = element_errors(a, b)
    assert e.rel[1] == pytest.approx(0.5) and e.rel[2] == pytest.approx(0.2) and e.rel[0] == 0.0
    np.testing.assert_array_equal(e.magnitude, [1.0, 2e-9, 2.5])


def test_rel_error_of_zero_tensors_and_scale_zero():
    z = np.zeros(3)
    assert max_rel_error(z, z) == 0.0
    assert max_rel_error(z, np.array([0.0, 0.0, 5e-324])) == 1.0  # scale is the subnormal itself


def test_ulp_distance_float64_neighbours_and_signed_zero():
    one = np.array([1.0, 0.0, -0.0, -1.0])
    nxt = np.array([np.nextafter(1.0, 2.0), -0.0, 5e-324, np.nextafter(-1.0, 0.0)])
    np.testing.assert_array_equal(ulp_distance(one, nxt), [1, 0, 1, 1])
    big = np.array([-np.finfo(np.float64).max])
    assert ulp_distance(big, -big)[0] == pytest.approx(2.0 * 0x7FEFFFFFFFFFFFFF)  # no overflow across zero


def test_ulp_distance_is_counted_in_the_lower_dtype():
    x = np.array([0.1, 1 / 3, 2.0 / 7.0, 12345.678])
    x32 = x.astype(np.float32)
    assert lower_dtype(x, x32) == np.float32 and lower_dtype(x, x) == np.float64
    # a float32 copy of a float64 tensor is 0 ULPs away on float32's grid ...
    assert max_ulp_distance(x, x32) == 0.0
    # ... but millions of ULPs on float64's, and its relative error is float32 rounding (< 2**-24)
    assert ulp_distance(x, x32.astype(np.float64)).max() > 1e6
    assert 0 < max_rel_error(x, x32) < 2.0**-24
    up = np.nextafter(x32, np.float32(np.inf))
    np.testing.assert_array_equal(ulp_distance(x, up), [1, 1, 1, 1])


def test_nonfinite_values_agree_in_place_and_mismatch_otherwise():
    a = np.array([np.nan, np.inf, -np.inf, 1.0, np.nan, np.inf])
    b = np.array([np.nan, np.inf, -np.inf, np.nan, 1.0, -np.inf])
    e = element_errors(a, b)
    np.testing.assert_array_equal(e.mismatch, [False, False, False, True, True, True])
    np.testing.assert_array_equal(e.abs, [0, 0, 0, np.inf, np.inf, np.inf])
    m = tensor_metrics(a, b)
    assert (m.nan_a, m.nan_b, m.inf_a, m.inf_b, m.nonfinite_mismatch) == (2, 2, 3, 3, 3)
    assert m.max_abs_error == math.inf and m.max_rel_error == math.inf and m.max_ulp == math.inf
    same = tensor_metrics(a, a.copy())
    assert same.max_abs_error == 0.0 and same.nonfinite_mismatch == 0


def test_cosine_similarity():
    assert cosine_similarity(np.array([1.0, 0.0]), np.array([0.0, 3.0])) == 0.0
    assert cosine_similarity(np.array([1.0, 2.0]), np.array([-2.0, -4.0])) == pytest.approx(-1.0)
    assert cosine_similarity(np.zeros(4), np.zeros(4)) == 1.0
    assert cosine_similarity(np.zeros(2), np.ones(2)) == 0.0
    huge = np.array([1e300, 1e300])
    assert cosine_similarity(huge, huge) == pytest.approx(1.0)  # no overflow in the squares


def test_argmax_mismatch_counts_rows():
    a = np.array([[0.1, 0.9], [0.8, 0.2], [0.5, 0.4], [0.3, 0.7]])
    b = np.array([[0.2, 0.8], [0.3, 0.7], [0.4, 0.5], [0.3, 0.7]])
    assert argmax_mismatch(a, b) == 0.5
    assert argmax_mismatch(a[0], b[0]) is None
    assert tensor_metrics(a, b, argmax=True).argmax_mismatch == 0.5
    assert tensor_metrics(a, b).argmax_mismatch is None


def test_counts_out_of_tolerance_from_mask():
    a, b = np.zeros((2, 5)), np.zeros((2, 5))
    mask = np.zeros((2, 5), dtype=bool)
    mask[1, 3] = True
    m = tensor_metrics(a, b, out_of_tolerance=mask)
    assert (m.n_out, m.frac_out, m.size) == (1, 0.1, 10)


# ---------------------------------------------------------------- properties

floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64, min_value=-1e30, max_value=1e30)


@st.composite
def pairs(draw, elements=floats):
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=5))
    dt_a = draw(st.sampled_from([np.float64, np.float32]))
    dt_b = draw(st.sampled_from([np.float64, np.float32]))
    a = draw(hnp.arrays(np.float64, shape, elements=elements))
    b = draw(hnp.arrays(np.float64, shape, elements=elements))
    with np.errstate(over="ignore"):
        return a.astype(dt_a), b.astype(dt_b)


@settings(max_examples=200, deadline=None)
@given(pairs())
def test_metrics_are_symmetric(pair):
    a, b = pair
    ab, ba = tensor_metrics(a, b, argmax=True), tensor_metrics(b, a, argmax=True)
    for field in ("max_abs_error", "max_rel_error", "max_elem_rel_error", "max_ulp", "scale",
                  "nonfinite_mismatch", "argmax_mismatch", "ulp_dtype"):
        assert getattr(ab, field) == getattr(ba, field), field
    assert ab.cosine == pytest.approx(ba.cosine, abs=1e-15)
    assert (ab.nan_a, ab.inf_a) == (ba.nan_b, ba.inf_b)


@settings(max_examples=200, deadline=None)
@given(pairs(finite))
def test_max_abs_error_equals_numpy_on_finite_arrays(pair):
    a, b = pair
    expected = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
    assert max_abs_error(a, b) == expected


@settings(max_examples=200, deadline=None)
@given(pairs())
def test_a_tensor_against_itself_has_no_error(pair):
    a, _ = pair
    m = tensor_metrics(a, a.copy())
    assert (m.max_abs_error, m.max_rel_error, m.max_ulp, m.nonfinite_mismatch) == (0.0, 0.0, 0.0, 0)

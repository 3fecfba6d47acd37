"""memstate.comparator.metrics, definition by definition: exact values on cases chosen so that a changed rule
gives a different number (found by mutation testing, docs/testing.md)."""

from __future__ import annotations

import math
import warnings

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
    relative_to_scale,
    tensor_metrics,
    tensor_scale,
    ulp_distance,
)

NAN, INF = math.nan, math.inf


def up(x: float, n: int = 1, dtype=np.float64) -> float:
    """x moved n representable numbers up in dtype."""
    v = dtype(x)
    for _ in range(n):
        v = np.nextafter(v, dtype(INF))
    return v


def test_one_nan_leaves_the_other_ulp_distances_alone():
    a = np.array([1.0, NAN, 2.0, 5.0])
    b = np.array([up(1.0), NAN, up(2.0, 3), 5.0])
    e = element_errors(a, b)
    assert e.ulp.tolist() == [1.0, 0.0, 3.0, 0.0]
    assert e.abs.tolist() == [float(up(1.0) - 1.0), 0.0, float(up(2.0, 3) - 2.0), 0.0]
    assert e.finite.tolist() == [True, False, True, True] and not e.mismatch.any()
    assert max_ulp_distance(a, b) == 3.0


def test_a_mismatch_is_inf_in_every_error_and_agreeing_nonfinite_values_are_zero():
    a = np.array([NAN, INF, -INF, 1.0, NAN, 2.0])
    b = np.array([NAN, INF, INF, NAN, 1.0, 3.0])
    e = element_errors(a, b)
    assert e.mismatch.tolist() == [False, False, True, True, True, False]
    assert e.abs.tolist() == [0.0, 0.0, INF, INF, INF, 1.0]
    assert e.ulp.tolist()[:5] == [0.0, 0.0, INF, INF, INF]
    assert e.rel.tolist() == [0.0, 0.0, INF, INF, INF, 1.0 / 3.0]
    assert e.magnitude.tolist() == [0.0, 0.0, 0.0, 0.0, 0.0, 3.0]


def test_element_errors_are_silent_and_keep_the_shape():
    a = np.array([[INF, 1e308], [0.0, NAN]])
    b = np.array([[INF, -1e308], [0.0, 2.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        e = element_errors(a, b)
        m = tensor_metrics(a, b, argmax=True)
    assert e.abs.shape == (2, 2) and e.abs[0, 1] == INF and e.rel[0, 1] == INF
    assert (m.max_abs_error, m.nonfinite_mismatch, m.scale) == (INF, 1, 1e308)
    scalar = element_errors(np.array(1.0), np.array(3.0))
    assert (scalar.abs.shape, float(scalar.abs), float(scalar.rel)) == ((), 2.0, 2.0 / 3.0)
    with pytest.raises(ValueError, match=r"shapes differ: \(2,\) vs \(3,\)"):
        element_errors(np.zeros(2), np.zeros(3))


def test_counts_on_all_finite_tensors_are_zero():
    a = np.arange(6.0).reshape(2, 3)
    m = tensor_metrics(a, a + 0.5)
    assert (m.nan_a, m.nan_b, m.inf_a, m.inf_b, m.nonfinite_mismatch) == (0, 0, 0, 0, 0)
    assert (m.size, m.scale, m.max_abs_error, m.max_rel_error) == (6, 5.5, 0.5, 0.5 / 5.5)
    assert m.argmax_mismatch is None and m.n_out == 0 and m.frac_out == 0.0


def test_counts_on_nonfinite_tensors_are_exact():
    a = np.array([NAN, INF, 1.0, -INF, NAN, 2.0], dtype=np.float32)
    b = np.array([NAN, 1.0, INF, -INF, 3.0, 2.0], dtype=np.float64)
    m = tensor_metrics(a, b)
    assert (m.nan_a, m.nan_b, m.inf_a, m.inf_b, m.nonfinite_mismatch) == (2, 1, 2, 2, 3)
    assert (m.scale, m.max_abs_error, m.max_ulp, m.ulp_dtype) == (2.0, INF, INF, "float32")


def test_tensor_scale_is_the_largest_magnitude_finite_on_both_sides():
    assert tensor_scale(np.array([1.0, -3.0]), np.array([2.0, 0.5])) == 3.0
    assert tensor_scale(np.array([1.0, -30.0]), np.array([2.0, NAN])) == 2.0
    assert tensor_metrics(np.array([1.0, -30.0]), np.array([2.0, NAN])).scale == 2.0
    assert tensor_scale(np.zeros(0), np.zeros(0)) == 0.0
    assert max_rel_error(np.array([4.0, -8.0]), np.array([4.0, -6.0])) == 0.25
    assert max_abs_error(np.array([4.0, -8.0]), np.array([4.5, -6.0])) == 2.0


def test_relative_to_scale_edge_cases():
    assert relative_to_scale(0.0, 0.0) == 0.0
    assert relative_to_scale(0.0, 5.0) == 0.0
    assert relative_to_scale(1.0, 0.0) == INF
    assert relative_to_scale(1.0, 4.0) == 0.25


def test_cosine_uses_only_the_elements_finite_on_both_sides():
    a, b = np.array([1.0, 0.0, NAN, INF]), np.array([1.0, 5.0, 3.0, INF])
    expected = 1.0 / math.sqrt(26.0)
    assert cosine_similarity(a, b) == pytest.approx(expected, rel=1e-15)
    assert tensor_metrics(a, b).cosine == pytest.approx(expected, rel=1e-15)
    assert tensor_metrics(np.array([INF, 2.0]), np.array([INF, 2.0])).cosine == 1.0


def test_cosine_edge_cases():
    assert cosine_similarity(np.zeros(3), np.zeros(3)) == 1.0
    assert cosine_similarity(np.zeros(3), np.array([0.0, 1.0, 0.0])) == 0.0
    assert cosine_similarity(np.array([1e300, -2e300]), np.array([-1e300, 2e300])) == -1.0
    assert cosine_similarity(np.array([3.0, 0.0]), np.array([0.0, 4.0])) == 0.0
    assert cosine_similarity(np.array([1.0, 1.0]), np.array([1.0, 0.0])) == pytest.approx(math.sqrt(0.5), rel=1e-15)
    assert tensor_metrics(np.array([NAN]), np.array([1.0])).cosine == 1.0  # nothing finite on both sides


def test_cosine_is_clipped_to_minus_one_and_one_when_rounding_overshoots():
    """dot(a, b) / sqrt(|a|^2 |b|^2) rounds above 1 for these pairs whatever the order of the sums and
    whether the dots fuse their multiply-adds (found by exact search over every such variant), so the
    clip to [-1, 1] is what keeps the cosine a cosine, on any BLAS."""
    for t, u in [(0.5160685855478787, 0.516068585547879), (0.48221238819933654, 0.48221238819933676),
                 (0.29500644280551946, 0.29500644280551985)]:
        a, b = np.array([1.0, t]), np.array([1.0, u])
        assert cosine_similarity(a, b) == 1.0
        assert cosine_similarity(a, -b) == -1.0


@pytest.mark.parametrize("rows_differing, n_rows", [(0, 4), (1, 4), (3, 4), (2, 3), (5, 5)])
def test_argmax_mismatch_is_the_fraction_of_rows_that_differ(rows_differing, n_rows):
    a = np.tile(np.array([0.1, 0.7, 0.2]), (n_rows, 1))
    b = a.copy()
    b[:rows_differing] = [0.6, 0.3, 0.1]
    assert argmax_mismatch(a, b) == rows_differing / n_rows
    assert tensor_metrics(a, b, argmax=True).argmax_mismatch == rows_differing / n_rows
    assert tensor_metrics(a, b).argmax_mismatch is None


def test_argmax_mismatch_is_none_where_rows_make_no_sense():
    assert argmax_mismatch(np.zeros(3), np.zeros(3)) is None
    assert argmax_mismatch(np.zeros((2, 3)), np.zeros((3, 2))) is None
    assert argmax_mismatch(np.zeros((0, 3)), np.zeros((0, 3))) is None
    assert argmax_mismatch(np.zeros((3, 0)), np.zeros((3, 0))) is None
    assert argmax_mismatch(np.zeros((2, 2, 2)), np.zeros((2, 2, 2))) is None
    assert argmax_mismatch(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])) == 1.0


def test_ulp_distances_exact():
    tiny = np.array([-5e-324]), np.array([5e-324])
    assert ulp_distance(*tiny).tolist() == [2.0]
    assert ulp_distance(np.array([-0.0]), np.array([0.0])).tolist() == [0.0]
    assert ulp_distance(np.array([-1.0]), np.array([1.0])).tolist() == [float(2 * 0x3FF0000000000000)]
    big = np.finfo(np.float64).max
    assert ulp_distance(np.array([-big]), np.array([big])).tolist() == [float(2 * 0x7FEFFFFFFFFFFFFF)]
    assert ulp_distance(np.array([big]), np.array([-big])).tolist() == [float(2 * 0x7FEFFFFFFFFFFFFF)]
    f32 = np.array([1.0, -1.0], dtype=np.float32)
    assert ulp_distance(f32, np.array([up(1.0, 5, np.float32), 1.0], dtype=np.float32)).tolist() == [
        5.0, float(2 * 0x3F800000)]
    # float64 values that round to the same float32 are 0 float32-ulps apart
    assert ulp_distance(np.array([1.0], dtype=np.float32), np.array([1.0 + 1e-12])).tolist() == [0.0]


def test_lower_dtype():
    f16, f32, f64 = (np.zeros(1, dtype=d) for d in (np.float16, np.float32, np.float64))
    assert lower_dtype(f64, f64) == np.float64
    assert lower_dtype(f64, f32) == np.float32 and lower_dtype(f32, f64) == np.float32
    assert lower_dtype(f16, f64) == np.float32


def test_out_of_tolerance_mask_gives_n_out_and_frac_out():
    a = np.zeros((2, 4))
    mask = np.zeros((2, 4), dtype=bool)
    mask[1, 1:4] = True
    m = tensor_metrics(a, a, out_of_tolerance=mask)
    assert (m.n_out, m.frac_out) == (3, 3 / 8)
    empty = tensor_metrics(np.zeros(0), np.zeros(0), out_of_tolerance=np.zeros(0, dtype=bool))
    assert (empty.size, empty.frac_out, empty.scale, empty.max_abs_error, empty.max_ulp) == (0, 0.0, 0.0, 0.0, 0.0)


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=64)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float64, st.integers(1, 12), elements=finite), st.data())
def test_metrics_equal_a_direct_computation(a, data):
    """Against numpy written out (not a symmetry that a constant would also satisfy)."""
    b = data.draw(hnp.arrays(np.float64, a.shape, elements=finite))
    m = tensor_metrics(a, b)
    diff = np.abs(a - b)
    scale = max(np.abs(a).max(), np.abs(b).max())
    assert m.max_abs_error == diff.max()
    assert m.scale == scale
    assert m.max_rel_error == (0.0 if diff.max() == 0 else diff.max() / scale)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na > 1e-3 and nb > 1e-3:
        assert m.cosine == pytest.approx(float(np.dot(a, b) / (na * nb)), abs=1e-9)


PARALLEL = np.array([-0.12853466294403426, 1.3664634705496859, -0.6651946734866135, 0.3515100700930197,
                     0.9034701816518086, 0.09401229776087457, -0.7434992493538084, -0.9217253762584194])


def test_cosine_of_parallel_vectors_is_clipped_to_one():
    """dot / sqrt(|a|^2 |b|^2) rounds to 1 + 2.2e-16 for these; a cosine is never outside [-1, 1]."""
    k = 6.886865646358878
    assert cosine_similarity(PARALLEL, k * PARALLEL) == 1.0
    assert cosine_similarity(PARALLEL, -k * PARALLEL) == -1.0
    assert tensor_metrics(PARALLEL, k * PARALLEL).cosine == 1.0


def test_float32_inputs_are_measured_in_float64():
    a = np.array([1.0, 3.0], dtype=np.float32)
    b = np.array([1e-8, 3.0 + 2.0 ** -22], dtype=np.float32)
    e = element_errors(a, b)
    assert e.abs.tolist() == [1.0 - float(np.float32(1e-8)), 2.0 ** -22]  # float32 subtraction would round to 1.0
    assert element_errors(b, a).abs.tolist() == e.abs.tolist()
    x = np.array([1.0, 1e-4], dtype=np.float32)
    y = np.array([1.0, -1e-4], dtype=np.float32)
    expected = (1.0 - float(np.float32(1e-4)) ** 2) / (1.0 + float(np.float32(1e-4)) ** 2)
    assert cosine_similarity(x, y) == pytest.approx(expected, rel=1e-15)
    assert cosine_similarity(y, x) == pytest.approx(expected, rel=1e-15)


def test_ulps_of_a_float64_beyond_float32s_range_are_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = ulp_distance(np.array([1e300, -1e300]), np.array([1.0, 1.0], dtype=np.float32))
    assert d.tolist() == [float(0x7F800000 - 0x3F800000), float(0x7F800000 + 0x3F800000)]


def test_largest_elementwise_rel_error():
    a = np.arange(6.0)
    m = tensor_metrics(a, a + 0.5)
    assert m.max_elem_rel_error == 1.0  # 0 against 0.5
    assert tensor_metrics(a + 1.0, a + 1.5).max_elem_rel_error == 0.5 / 1.5

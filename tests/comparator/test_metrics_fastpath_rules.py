"""memstate.comparator.metrics' fast paths (issue 14), rule by rule: exact values on small hand-built arrays
chosen so that a changed rule gives a different number (found by mutation testing, docs/testing.md).

`bit_identical`, `within_tolerance` and `completed_metrics` work in blocks of BLOCK elements, so the cases
put a difference at element 0, at a block's first element and in the last (short) block; `within_tolerance`
keeps its blocks per thread (`_scratch`), so a fresh thread sees them made, kept and grown. Every completed
summary is compared field by field with `tensor_metrics` on the same pair.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from memstate.comparator import metrics
from memstate.comparator.metrics import (BLOCK, HEAD, TensorMetrics, _finite_extremes, _scratch, bit_identical,
                                         completed_metrics, dtype_name, element_errors, identical_metrics,
                                         identical_summary, summary_metrics, tensor_metrics, ulp_distance,
                                         within_tolerance)

NAN, INF = math.nan, math.inf


def in_fresh_thread(fn):
    """fn() run in a new thread, where no scratch blocks exist yet; its result, or its exception re-raised."""
    out: dict = {}

    def body() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # handed back to the test
            out["error"] = exc

    t = threading.Thread(target=body)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def fields(m: TensorMetrics) -> dict:
    """The metrics as a dict, nan replaced by the string "nan" so that == compares them."""
    return {k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in dataclasses.asdict(m).items()}


def assert_same_as_full(got: TensorMetrics, full: TensorMetrics) -> None:
    """Every field of `got` equal to `full`'s, exactly, but the cosine (block sums: last bits may differ)."""
    assert got.detail == "full"
    assert type(got.cosine) is float and got.cosine == pytest.approx(full.cosine, rel=1e-14, abs=1e-14)
    assert {**fields(got), "cosine": 0} == {**fields(full), "cosine": 0}


def summary_of(a: np.ndarray, b: np.ndarray, argmax: bool = False) -> TensorMetrics:
    """summary_metrics with the maxima the full path finds (a and b finite)."""
    e = element_errors(a, b)
    return summary_metrics(a, b, float(e.abs.max(initial=0.0)), float(e.magnitude.max(initial=0.0)), argmax)


def completes_to_full(a: np.ndarray, b: np.ndarray, argmax: bool = False) -> TensorMetrics:
    """completed_metrics of the summary, checked field by field against tensor_metrics; returned."""
    got = completed_metrics(summary_of(a, b, argmax), a, b)
    assert_same_as_full(got, tensor_metrics(a, b, argmax=argmax))
    return got


# --- bit_identical ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, HEAD - 1, HEAD, HEAD + 1, BLOCK, HEAD + BLOCK, HEAD + BLOCK + 1, 2 * BLOCK + 3])
def test_bit_identical_sees_a_difference_in_any_block(n):
    # the head (HEAD elements), then blocks of BLOCK from there: a difference at either edge of each
    a = np.linspace(-1.0, 1.0, n)
    assert bit_identical(a, a.copy())
    edges = {0, 1, HEAD - 1, HEAD, HEAD + 1, BLOCK - 1, BLOCK, HEAD + BLOCK - 1, HEAD + BLOCK, n - 2, n - 1}
    for at in sorted(e for e in edges if 0 <= e < n):
        b = a.copy()
        b[at] = np.nextafter(b[at], INF)
        assert not bit_identical(a, b), at


def test_bit_identical_on_large_matrices_compares_every_row():
    a = np.arange(3 * (BLOCK + 1), dtype=np.float32).reshape(3, BLOCK + 1)
    assert bit_identical(a, a.copy())
    assert bit_identical(a.T, a.T.copy())  # not contiguous: compared in a's element order
    b = a.copy()
    b[2, 5] = -1.0
    assert not bit_identical(a, b) and not bit_identical(a.T, b.T)


def test_bit_identical_needs_the_same_dtype_and_a_known_item_size():
    assert not bit_identical(np.zeros(3), np.zeros(3, dtype=np.float32))  # all bits 0 on both sides
    assert not bit_identical(np.zeros(3, dtype=np.float32), np.zeros(3, dtype=np.int32))
    assert not bit_identical(np.zeros((2, 3)), np.zeros((3, 2)))
    z = np.zeros(3, dtype=np.complex128)  # 16-byte items: no integer view, left to the full path
    assert not bit_identical(z, z.copy())
    h = np.array([1.5, -0.0, np.nan], dtype=np.float16)
    assert bit_identical(h, h.copy())


# --- _finite_extremes, identical_summary, identical_metrics, _argmax_same -------------------------------


def test_finite_extremes():
    assert _finite_extremes(np.zeros(0)) == (0.0, True)
    assert _finite_extremes(np.array([-3.0, 2.0])) == (3.0, True)
    assert _finite_extremes(np.array([0.5, 2.0], dtype=np.float32)) == (2.0, True)
    assert _finite_extremes(np.array([NAN, -2.0, INF, 1.0])) == (2.0, False)
    assert _finite_extremes(np.array([-INF, 0.25])) == (0.25, False)
    assert _finite_extremes(np.array([NAN, NAN])) == (0.0, False)


@pytest.fixture(autouse=True)
def _fresh_identical_memo(monkeypatch):
    """identical_summary's answers start unremembered in every test here: one remembered before (another
    test, or mutmut's run of the whole suite that forks each mutant) would hide how it makes them."""
    monkeypatch.setattr(metrics, "_IDENTICAL", {})


IDENTICAL = {"scale": "nan", "max_abs_error": 0.0, "max_rel_error": 0.0, "max_elem_rel_error": 0.0,
             "max_ulp": 0.0, "cosine": 1.0, "n_out": 0, "frac_out": 0.0, "nan_a": 0, "nan_b": 0, "inf_a": 0,
             "inf_b": 0, "nonfinite_mismatch": 0, "detail": "identical"}


@pytest.mark.parametrize("dtype, ulp_dtype", [(np.float16, "float32"), (np.float32, "float32"),
                                               (np.float64, "float64")])
def test_identical_summary_fills_in_only_the_errors(dtype, ulp_dtype):
    x = np.array([[1.0, NAN, -3.0], [INF, 0.0, 2.0]], dtype=dtype)  # non-finite counts are not made here
    assert fields(identical_summary(x)) == {**IDENTICAL, "size": 6, "ulp_dtype": ulp_dtype, "argmax_mismatch": None}
    assert identical_summary(x, argmax=True).argmax_mismatch == 0.0
    m = identical_summary(np.ones(7, dtype=dtype), argmax=True)
    assert (m.size, m.argmax_mismatch) == (7, None)
    for v in (m.max_abs_error, m.max_elem_rel_error, m.max_ulp, m.cosine, m.frac_out):
        assert type(v) is float
    for v in (m.size, m.n_out, m.nan_a, m.nan_b, m.inf_a, m.inf_b, m.nonfinite_mismatch):
        assert type(v) is int


def test_identical_summaries_are_remembered_by_size_width_and_argmax(monkeypatch):
    from memstate.comparator import metrics

    monkeypatch.setattr(metrics, "_IDENTICAL", {})
    monkeypatch.setattr(metrics, "IDENTICAL_LIMIT", 3)
    cases = [(np.zeros((2, 3)), True, "float64", 0.0), (np.zeros(6), True, "float64", None),
             (np.zeros(6, np.float32), False, "float32", None), (np.zeros((2, 3), np.float32), True, "float32", 0.0),
             (np.zeros((3, 2)), True, "float64", 0.0), (np.zeros(6), False, "float64", None)]
    for _ in range(2):  # made, then (the memo holding at most 3) made again or remembered: the same answers
        for x, argmax, ulp_dtype, want in cases:
            m = identical_summary(x, argmax=argmax)
            assert (m.size, m.ulp_dtype, m.argmax_mismatch, m.detail) == (6, ulp_dtype, want, "identical")
            assert identical_summary(x, argmax=argmax) is m  # shared (TensorMetrics is frozen)
            assert 1 <= len(metrics._IDENTICAL) <= 3


@pytest.mark.parametrize("shape, expected", [((3, 4), 0.0), ((0, 4), None), ((4, 0), None), ((1, 1), 0.0),
                                             ((5,), None), ((2, 2, 2), None)])
def test_argmax_of_an_identical_pair(shape, expected):
    x = np.arange(math.prod(shape), dtype=np.float64).reshape(shape)
    assert identical_summary(x, argmax=True).argmax_mismatch == expected
    assert identical_metrics(x, argmax=True).argmax_mismatch == expected
    assert tensor_metrics(x, x.copy(), argmax=True).argmax_mismatch == expected
    assert identical_metrics(x).argmax_mismatch is None and identical_summary(x).argmax_mismatch is None


@pytest.mark.parametrize("x", [np.zeros(0), np.zeros((0, 3)), np.array([[0.5, -4.0], [NAN, INF]]),
                               np.array([NAN, -INF, INF], dtype=np.float32), np.array([0.0, -0.0])])
def test_identical_metrics_equal_the_full_metrics(x):
    for argmax in (False, True):
        got, full = identical_metrics(x, argmax), tensor_metrics(x, x.copy(), argmax=argmax)
        assert fields(got) == fields(full)


def test_completing_an_identical_summary_gives_the_identical_metrics():
    x = np.array([[2.0, NAN], [-INF, -5.0]], dtype=np.float32)
    for argmax in (False, True):
        got = completed_metrics(identical_summary(x, argmax), x, x.copy())
        assert fields(got) == fields(tensor_metrics(x, x.copy(), argmax=argmax))
        assert (got.scale, got.nan_a, got.inf_b, got.detail) == (5.0, 1, 1, "full")


# --- summary_metrics, dtype_name --------------------------------------------------------------------------


def test_summary_metrics_keep_the_maxima_and_leave_the_rest_nan():
    a = np.array([[1.0, -4.0], [2.0, 1.75]])
    b = np.array([[1.0, -4.0], [2.0, 2.25]], dtype=np.float32)  # the second row's argmax moves
    m = summary_metrics(a, b, 0.5, 4.0)
    assert fields(m) == {"size": 4, "scale": 4.0, "max_abs_error": 0.5, "max_rel_error": 0.125,
                         "max_elem_rel_error": "nan", "max_ulp": "nan", "ulp_dtype": "float32", "cosine": "nan",
                         "n_out": 0, "frac_out": 0.0, "nan_a": 0, "nan_b": 0, "inf_a": 0, "inf_b": 0,
                         "nonfinite_mismatch": 0, "argmax_mismatch": None, "detail": "summary"}
    assert summary_metrics(a, b, 0.5, 4.0, argmax=True).argmax_mismatch == 0.5
    assert summary_metrics(a, a, 0.0, 4.0).ulp_dtype == "float64"
    assert summary_metrics(a, a, 0.0, 0.0).max_rel_error == 0.0
    for v in (m.max_elem_rel_error, m.max_ulp, m.cosine):
        assert type(v) is float


def test_dtype_name_is_remembered(monkeypatch):
    monkeypatch.setattr(metrics, "_NAMES", {})
    f32, f64 = np.dtype(np.float32), np.dtype(np.float64)
    assert dtype_name(f32) == "float32" and metrics._NAMES == {f32: "float32"}
    assert dtype_name(f32) == "float32" and dtype_name(f64) == "float64"
    monkeypatch.setitem(metrics._NAMES, f32, "remembered")
    assert dtype_name(f32) == "remembered"


# --- _scratch, within_tolerance ---------------------------------------------------------------------------


def test_scratch_blocks_are_made_per_thread_kept_and_grown():
    def run():
        first = _scratch(5)
        assert [x.dtype for x in first] == [np.float64, np.float64, np.float64, np.bool_]
        assert [x.shape for x in first] == [(5,)] * 4
        again, smaller = _scratch(5), _scratch(2)
        assert all(x is y for x, y in zip(again, first)) and all(x is y for x, y in zip(smaller, first))
        grown = _scratch(9)
        assert [x.shape for x in grown] == [(9,)] * 4 and grown[0] is not first[0]
        assert [x.dtype for x in grown] == [np.float64, np.float64, np.float64, np.bool_]
        assert all(x is y for x, y in zip(_scratch(9), grown))
        assert all(x is y for x, y in zip(_scratch(1), grown))
        return True

    assert in_fresh_thread(run)


def big_pair(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Block 1 holds the largest magnitude (8), the last block the largest difference (0.25)."""
    a = np.linspace(-1.0, 1.0, n)
    a[3] = 8.0
    b = a.copy()
    b[-1] += 0.25
    return a, b


def test_within_tolerance_reuses_its_blocks_across_sizes():
    n = 2 * BLOCK + 3

    def run():
        a, b = big_pair(n)
        large = within_tolerance(a, b, 0.0, 0.25)
        small = within_tolerance(np.array([1.0, -6.0]), np.array([1.5, -6.0]), 0.0, 0.5)
        large_again = within_tolerance(a, b, 0.0, 0.25)
        tiny = within_tolerance(np.array([2.0]), np.array([3.0]), 0.0, 0.5)
        return large, small, large_again, tiny

    expected = ((True, 0.25, 8.0), (True, 0.5, 6.0), (True, 0.25, 8.0), (False, 1.0, 3.0))
    assert in_fresh_thread(run) == expected
    assert run_here(n) == expected[0]


def run_here(n: int) -> tuple[bool, float, float]:
    a, b = big_pair(n)
    return within_tolerance(a, b, 0.0, 0.25)


@pytest.mark.parametrize("n", [BLOCK + 1, 2 * BLOCK + 3])
def test_within_tolerance_judges_every_block(n):
    a, b = big_pair(n)
    assert within_tolerance(a, b, 0.0, 0.25) == (True, 0.25, 8.0)
    assert within_tolerance(a, b, 0.0, 0.2) == (False, 0.25, 1.25)  # fails in the last block: its maxima
    assert within_tolerance(a, b, 0.24, 0.0) == (True, 0.25, 8.0)  # 0.25 <= 0.24 * 1.25
    c = a.copy()
    c[0] += 0.5  # the first block fails
    assert within_tolerance(a, c, 0.0, 0.25)[0] is False
    for bad in (NAN, INF, -INF):
        d = b.copy()
        d[-2] = bad  # non-finite in a later block
        assert within_tolerance(a, d, 0.0, 1e9)[0] is False
        assert within_tolerance(d, a, 0.0, 1e9)[0] is False


def test_within_tolerance_at_atol_and_rtol():
    a, b = np.array([0.0, 4.0, -2.0]), np.array([0.5, 4.0, -2.0])
    assert within_tolerance(a, b, 0.0, 0.5) == (True, 0.5, 4.0)  # a difference exactly at atol passes
    assert within_tolerance(a, b, 0.0, 0.4375) == (False, 0.5, 4.0)
    assert within_tolerance(a, b, 1.0, 0.0) == (True, 0.5, 4.0)  # 0.5 <= 1.0 * 0.5
    assert within_tolerance(a, b, 0.875, 0.0) == (False, 0.5, 4.0)  # 0.5 > 0.875 * 0.5, though < 0.875 * 4
    assert within_tolerance(a, b, 0.5, 0.25) == (True, 0.5, 4.0)  # 0.5 <= 0.25 + 0.5 * 0.5
    assert within_tolerance(a, a, 0.0, 0.0) == (True, 0.0, 4.0)
    z = np.zeros((0, 3))
    assert within_tolerance(z, z, 0.0, 0.0) == (True, 0.0, 0.0)


def test_within_tolerance_works_in_float64():
    a = np.array([1.0, 0.5], dtype=np.float32)
    b = np.array([1e-8, 0.5], dtype=np.float32)  # 1 - 1e-8 rounds to 1 in float32
    d = float(np.float64(np.float32(1.0)) - np.float64(np.float32(1e-8)))
    assert d != 1.0 and within_tolerance(a, b, 0.0, 2.0) == (True, d, 1.0)
    assert within_tolerance(a, b.astype(np.float64), 0.0, 2.0) == (True, d, 1.0)
    lo, one = np.array([-128], dtype=np.int8), np.array([1], dtype=np.int8)  # int8 -128 - 1 wraps
    assert within_tolerance(lo, one, 0.0, 200.0) == (True, 129.0, 128.0)
    assert within_tolerance(one, lo, 0.0, 200.0) == (True, 129.0, 128.0)
    assert within_tolerance(lo, one, 0.0, 100.0) == (False, 129.0, 128.0)


def test_within_tolerance_is_quiet_and_refuses_an_overflowing_difference():
    big, minus_big = np.array([1e308, 1.0]), np.array([-1e308, 1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert within_tolerance(big, minus_big, 0.0, INF) == (False, INF, 1e308)  # |a-b| overflows to inf
        assert within_tolerance(big, minus_big, 2.0, 0.0) == (False, INF, 1e308)
        ok, d, m = within_tolerance(np.array([INF, 1.0]), np.array([INF, 1.0]), 0.0, 1.0)  # inf - inf
        assert ok is False and math.isnan(d) and m == INF
        ok, d, m = within_tolerance(np.array([NAN]), np.array([1.0]), 0.0, 1.0)
        assert ok is False and math.isnan(d) and math.isnan(m)


# --- completed_metrics ------------------------------------------------------------------------------------


def test_full_metrics_are_returned_as_they_are():
    a, b = np.array([1.0, NAN, 3.0]), np.array([1.0, 2.0, INF])
    full = tensor_metrics(a, b)
    assert completed_metrics(full, a, b) is full


def test_completed_metrics_small_pairs():
    # zeros on both sides (0/0 is no error), the difference in element 0, a cosine well below 1
    got = completes_to_full(np.array([3.0, 0.0, 1.0, -2.0, 0.0]), np.array([1.0, 0.0, 1.0, -2.0, 0.0]))
    assert (got.max_elem_rel_error, got.max_rel_error) == (2 / 3, 2 / 3)
    assert got.cosine == pytest.approx(8 / math.sqrt(14 * 6), rel=1e-15)
    # a scale below 1 and another above it; magnitudes of 100 where the pair agrees
    completes_to_full(np.array([0.5, -0.25, 0.125]), np.array([0.25, -0.25, 0.5]))
    completes_to_full(np.array([100.0, 100.0, 100.0, 7.0]), np.array([100.0, 100.0, 100.0, 7.5]))
    # extreme scales: the sums are of a / scale, which neither overflows nor underflows
    completes_to_full(np.array([1e200, -2e200, 3e200]), np.array([1e200, -2.5e200, 3e200]))
    completes_to_full(np.array([1e-200, -2e-200, 3e-200]), np.array([1e-200, -2.5e-200, 3e-200]))
    # equal but not identical in the summary's eyes: no error at all
    a = np.array([1.5, -2.0, 0.0])
    got = completes_to_full(a, a.copy())
    assert (got.max_elem_rel_error, got.max_ulp, got.cosine) == (0.0, 0.0, 1.0)


def test_completed_cosine_of_zero_tensors():
    z, t = np.zeros(3), np.array([0.0, 1e-300, 0.0])
    assert completes_to_full(z, z.copy()).cosine == 1.0
    assert completes_to_full(z, t).cosine == 0.0
    assert completes_to_full(t, z).cosine == 0.0
    assert completes_to_full(np.array([1.0, 0.0]), np.array([0.0, 1.0])).cosine == 0.0


def test_completed_cosine_is_clipped_to_one():
    # the scaled sums give 1 + 2**-52 and -1 - 2**-52 here (found by search), which are clipped
    a, b = np.array([2.12, -1.11, -0.38]), np.array([2.12, -1.11, -0.379999999999999])
    assert completes_to_full(a, b).cosine == 1.0
    assert completes_to_full(a, -b).cosine == -1.0


def test_completed_metrics_float32_and_mixed():
    rng = np.random.default_rng(3)
    a = rng.standard_normal(50).astype(np.float32)
    b = (a + rng.standard_normal(50).astype(np.float32)).astype(np.float32)  # cosine ~0.7: float32 sums would show
    got = completes_to_full(a, b)
    assert got.ulp_dtype == "float32" and 0.5 < got.cosine < 0.9
    b32 = np.nextafter(a, np.float32(INF))
    got = completes_to_full(a.astype(np.float64), b32)  # ULPs on float32's grid: 1 each
    assert (got.ulp_dtype, got.max_ulp) == ("float32", 1.0)
    got = completes_to_full(a.astype(np.float64), np.nextafter(a.astype(np.float64), INF))
    assert (got.ulp_dtype, got.max_ulp) == ("float64", 1.0)


@pytest.mark.parametrize("n", [BLOCK + 1, 2 * BLOCK + 3])
def test_completed_metrics_over_several_blocks(n):
    a = np.linspace(1.0, 2.0, n)
    b = a.copy()
    b[0] = 1.5  # the largest elementwise rel error, in block 1
    b[-1] = -2.0  # the last block alone would give a cosine of -1
    b[BLOCK] = np.nextafter(b[BLOCK], INF)
    got = completes_to_full(a, b)
    assert got.max_elem_rel_error == 2.0  # |2 - (-2)| / 2 in the last block
    assert got.max_ulp == ulp_distance(a[-1:], b[-1:])[0] > 2**62  # across zero: the last block's
    assert 0.99 < got.cosine < 1.0


def test_completed_metrics_on_matrices_with_argmax():
    a = np.array([[1.0, 2.0, 0.0], [4.0, 3.0, 0.0]])
    b = np.array([[1.0, 2.0, 0.0], [2.0, 3.0, 0.0]])
    got = completes_to_full(a, b, argmax=True)
    assert got.argmax_mismatch == 0.5 and got.size == 6


PAIRS = st.integers(0, 30).flatmap(lambda n: st.tuples(
    hnp.arrays(np.float64, n, elements=st.floats(-1e6, 1e6, width=64)),
    hnp.arrays(np.float64, n, elements=st.sampled_from([0.0, 0.0, 1e-12, -3e-7, 0.5])),
    st.sampled_from([np.float64, np.float32])))


@settings(max_examples=60, deadline=None)
@given(PAIRS)
def test_completed_summary_equals_the_full_metrics(pair):
    a, noise, dtype = pair
    b = (a + noise).astype(dtype)
    ok, max_abs, scale = within_tolerance(a, b, 1e-6, 1e-9)
    if ok:
        e = element_errors(a, b)
        assert (max_abs, scale) == (float(e.abs.max(initial=0.0)), float(e.magnitude.max(initial=0.0)))
        got = completed_metrics(summary_metrics(a, b, max_abs, scale), a, b)
        assert_same_as_full(got, tensor_metrics(a, b))


def test_completed_metrics_raise_no_floating_point_warning():
    tiny, big = 5e-324, 1.7e308
    pairs = [(np.zeros(4), np.zeros(4)),  # scale 0: nothing is divided by it
             (np.array([big, -big, 1.0]), np.array([np.nextafter(big, 0.0), -big, 1.0])),
             (np.array([tiny, 0.0, -tiny]), np.array([2 * tiny, 0.0, -tiny])),
             (np.array([1.0, 0.0], dtype=np.float32), np.array([1.0, 1e-45], dtype=np.float32))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for a, b in pairs:
            assert within_tolerance(a, b, 1e-6, 1e-9)[0] and completes_to_full(a, b).detail == "full"
    assert completes_to_full(*pairs[0]).cosine == 1.0
    assert completes_to_full(*pairs[2]).max_elem_rel_error == 0.5


def test_within_tolerance_takes_b_s_magnitude_when_a_s_alone_is_not_enough():
    """The first test uses atol + rtol*|a| only; a pair it refuses is judged again with max(|a|, |b|), |b| taken in
    float64 (int8's -128 has no int8 absolute value)."""
    a, b = np.array([1], dtype=np.int8), np.array([-128], dtype=np.int8)
    assert within_tolerance(a, b, 2.0, 0.0) == (True, 129.0, 128.0)  # 129 <= 2 * 128, not 2 * 1
    assert within_tolerance(a, b, 1.0, 0.0) == (False, 129.0, 128.0)
    x, y = np.array([1.0, 0.5]), np.array([1.0, 3.0])
    assert within_tolerance(x, y, 0.9, 0.0) == (True, 2.5, 3.0)  # 2.5 <= 0.9 * 3, though > 0.9 * 0.5


def test_within_tolerance_returns_nan_for_the_scale_when_b_holds_a_nan():
    ok, dmax, scale = within_tolerance(np.array([1.0, 2.0]), np.array([1.0, np.nan]), 1e-9, 0.0)
    assert not ok and math.isnan(dmax) and math.isnan(scale)
    ok, dmax, scale = within_tolerance(np.array([np.nan, 2.0]), np.array([1.0, 2.0]), 1e-9, 0.0)
    assert not ok and math.isnan(dmax) and math.isnan(scale)

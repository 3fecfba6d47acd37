"""memstate.diagnose.relations on small hand-made pairs: each relation `unknown` reports, at the boundaries of
its rule (the smallest shapes it takes, the factor's distance from 1, the longest shift, the row limit of the
permutation test, nan beside finite values, float32 against float64), with the exact sentence and evidence
(found by mutation testing, docs/testing.md)."""

from __future__ import annotations

import numpy as np
import pytest

from memstate.diagnose.context import DivergenceContext
from memstate.diagnose.relations import MAX_ROWS, _permutation, simplest_relation

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

NAN = float("nan")
#: six distinct rows (no two equal, no constant factor or shift between them)
R = np.array([[1.0, -2.0], [3.5, 0.25], [-1.5, 4.0], [2.0, 2.5], [0.75, -3.0], [-2.25, 1.25]])


def ctx(a, b, name="L1.a", step=3, dtype=np.float64, **kw) -> DivergenceContext:
    return DivergenceContext(step, name, np.asarray(a, dtype), np.asarray(b, dtype), {}, {}, (), True, **kw)


def rel(a, b, **kw):
    return simplest_relation(ctx(a, b, **kw))


def kind(a, b, **kw):
    found = rel(a, b, **kw)
    return None if found is None else found[1]["relation"]


# ------------------------------------------------------------------------------------------------ factor

def test_a_constant_factor_with_its_value():
    assert rel(R, 3 * R) == ("B = 3 × A exactly (a constant factor)", {"relation": "factor", "factor": 3.0})
    assert rel(R, 0.5 * R) == ("B = 0.5 × A exactly (a constant factor)", {"relation": "factor", "factor": 0.5})
    assert rel([1.0, 2.0], [-2.0, -4.0]) == ("B = -2 × A exactly (a constant factor)",
                                             {"relation": "factor", "factor": -2.0})


def test_a_factor_must_be_more_than_1e_6_from_one():
    s, ev = rel(R, R * (1 + 3e-6))
    assert ev["relation"] == "factor" and ev["factor"] == pytest.approx(1 + 3e-6, rel=1e-12)
    assert s == "B = 1 × A exactly (a constant factor)"  # (six digits)
    # 5e-7 from one is no factor; no row of B equals A's (they differ by 5e-7 of the scale, above 1e-7)
    assert rel(R, R * (1 + 5e-7)) is None


def test_a_factor_needs_two_elements_and_the_same_shape():
    assert rel([2.0], [6.0]) is None
    a = R[:3].T  # 2 x 3
    assert rel(a, 2 * a.reshape(3, 2)) is None  # same elements in another shape: no factor, no transpose


def test_a_factor_must_fit_exactly_to_the_dtype_s_tolerance():
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(R.shape)
    noise /= np.linalg.norm(noise)
    b = 3 * R + 3 * np.linalg.norm(R) * 1e-5 * noise  # residual about 1e-5 of B: float32's rtol, not float64's
    assert kind(R, b, dtype=np.float32) == "factor"
    assert kind(R, b) is None
    b = 3 * R + 3 * np.linalg.norm(R) * 3e-8 * noise
    assert kind(R, b) == "factor"


def test_no_factor_with_nan():
    a = R.copy()
    a[0, 0] = NAN
    b = 3 * a
    b[0, 0] = NAN
    # not finite: no factor; every row differs (the nan row too, its other element is tripled)
    assert rel(a, b) is None


# ------------------------------------------------------------------------------------------------ transpose

def test_a_transpose():
    a = R[:3]  # 3 x 2
    assert rel(a, a.T) == ("B is the transpose of A", {"relation": "transpose"})
    sq = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert rel(sq, sq.T) == ("B is the transpose of A", {"relation": "transpose"})


def test_a_transpose_needs_a_matrix_of_two_elements_that_differs():
    # a 1 x 1 matrix that differs by rounding: no transpose (too small), no rows to compare
    assert rel([[2.0]], [[2.0 + 1e-12]]) is None
    # a vector differing by rounding is its own "transpose", but vectors are not transposed: rows equal
    assert rel([1.0, 2.0, 3.0], [1.0, 2.0, 3.0 + 1e-12]) == (
        "3 of 3 rows are equal (rows [0, 1, 2]); the others differ",
        {"relation": "rows-equal", "rows": [0, 1, 2], "count": 3})
    # a symmetric matrix equal on both sides is no transpose either
    sym = np.array([[1.0, 2.0], [2.0, 5.0]])
    assert rel(sym, sym) == ("2 of 2 rows are equal (rows [0, 1]); the others differ",
                             {"relation": "rows-equal", "rows": [0, 1], "count": 2})


def test_a_transpose_to_the_dtype_s_tolerance():
    a = R[:3]
    b = a.T.copy()
    b[0, 0] *= 1 + 2e-5
    assert kind(a, b, dtype=np.float32) == "transpose"
    assert kind(a, b) is None


# ------------------------------------------------------------------------------------------------ previous step

def test_one_side_is_the_other_s_previous_step():
    prev = R * 7 - 1
    s, ev = rel(R, prev, name="L2.dz", step=5, before_a=({"L2.dz": prev},))
    assert s == ("B's L2.dz at step 5 is A's of step 4: B is one step behind, A one step ahead (an off-by-one in "
                 "batch slicing or in when it records)")
    assert ev == {"relation": "previous-step", "behind": "B", "ahead": "A"}
    s, ev = rel(prev, R, name="L2.dz", step=5, before_a=({"L2.dz": R * 0 + 9},), before_b=({"L2.dz": prev},))
    assert s == ("A's L2.dz at step 5 is B's of step 4: A is one step behind, B one step ahead (an off-by-one in "
                 "batch slicing or in when it records)")
    assert ev == {"relation": "previous-step", "behind": "A", "ahead": "B"}


def test_both_sides_matching_a_previous_step_b_s_is_looked_at_first():
    prev_a, prev_b = R * 7 - 1, R * 5 + 2
    # B's previous step is A's value and A's previous step is B's: B's is reported (A behind)
    _, ev = rel(prev_b, prev_a, name="x", before_a=({"x": prev_a},), before_b=({"x": prev_b},))
    assert ev == {"relation": "previous-step", "behind": "A", "ahead": "B"}


def test_the_previous_step_must_have_the_name_and_shape_and_match():
    prev = R * 7 - 1
    assert rel(R, prev, before_a=({"other": prev},)) is None
    assert rel(R, prev, before_a=({"L1.a": prev[:4]},)) is None
    assert rel(R, prev, before_a=({"L1.a": prev + 1},)) is None
    assert rel(R, prev, before_a=()) is None
    # only the most recent previous step counts
    assert rel(R, prev, before_a=({"L1.a": prev + 1}, {"L1.a": prev})) is None
    near = prev.copy()
    near[2, 1] *= 1 + 2e-5
    assert kind(R, prev, dtype=np.float32, before_a=({"L1.a": near},)) == "previous-step"
    assert kind(R, prev, before_a=({"L1.a": near},)) is None


# ------------------------------------------------------------------------------------------------ shifted rows

def test_rows_shifted_down_and_up():
    junk = np.array([[9.0, -9.0]])
    b = np.vstack([junk, R[:-1]])
    assert rel(R, b) == ("B's rows are A's shifted by 1 (B[1:] = A[:-1])", {"relation": "shifted-rows", "shift": 1})
    b = np.vstack([R[1:], junk])
    assert rel(R, b) == ("B's rows are A's shifted by -1 (B[:-1] = A[1:])", {"relation": "shifted-rows", "shift": -1})


def test_the_longest_shift_keeps_two_rows():
    junk = np.array([[9.0, -9.0], [8.0, -7.5], [6.5, 5.0], [-4.0, 7.0]])
    assert rel(R, np.vstack([junk, R[:2]])) == ("B's rows are A's shifted by 4 (B[4:] = A[:-4])",
                                                {"relation": "shifted-rows", "shift": 4})
    assert rel(R, np.vstack([R[4:], junk])) == ("B's rows are A's shifted by -4 (B[:-4] = A[4:])",
                                                {"relation": "shifted-rows", "shift": -4})
    junk5 = np.vstack([junk, [[3.0, 3.5]]])
    assert rel(R, np.vstack([junk5, R[:1]])) is None  # one row kept is no shift
    assert rel(R, np.vstack([R[5:], junk5])) is None


def test_a_shift_of_three_rows():
    a = R[:3]
    assert rel(a, np.vstack([[[9.0, -9.0]], a[:2]]))[1] == {"relation": "shifted-rows", "shift": 1}
    # the smallest shift is reported: rows that are all equal shift by any k
    ones = np.ones((5, 2))
    b = ones.copy()
    b[0] = 4.0
    assert rel(ones, b)[1] == {"relation": "shifted-rows", "shift": 1}


def test_a_two_row_swap_is_a_permutation_not_a_shift():
    a = R[:2]
    assert rel(a, a[::-1]) == ("B's rows are A's permuted (B[i] = A[perm[i]], perm starts [1, 0])",
                               {"relation": "permuted-rows", "permutation": [1, 0]})


# ------------------------------------------------------------------------------------------------ permuted rows

def test_rows_permuted():
    perm = [2, 0, 1, 5, 3, 4]
    assert rel(R, R[perm]) == ("B's rows are A's permuted (B[i] = A[perm[i]], perm starts [2, 0, 1, 5, 3, 4])",
                               {"relation": "permuted-rows", "permutation": perm})


def test_a_long_permutation_is_cut_in_the_sentence_and_the_evidence():
    a = np.arange(206.0).reshape(103, 2) * np.array([1.0, -1.5]) + 0.25
    rev = list(range(102, -1, -1))
    s, ev = rel(a, a[rev])
    assert s == f"B's rows are A's permuted (B[i] = A[perm[i]], perm starts {rev[:10]})"
    assert ev == {"relation": "permuted-rows", "permutation": rev[:100]}


def test_the_permutation_test_stops_at_max_rows():
    """(called directly: through simplest_relation the shift test before it takes seconds on 4096 rows)"""
    assert MAX_ROWS == 4096
    for n, expect in ((MAX_ROWS, True), (MAX_ROWS + 1, False)):
        a = np.arange(1.0, n + 1.0).reshape(n, 1)
        perm = np.arange(n)
        perm[[0, 1, n - 2, n - 1]] = perm[[1, 0, n - 1, n - 2]]  # two swaps: 0-1 and the last two
        assert _permutation(a, a[perm], 1e-7) == (perm.tolist() if expect else None)


def test_repeated_rows_are_no_permutation():
    r0, r1, r2 = [1.0, 2.0], [3.0, -4.0], [-5.0, 6.5]
    a = np.array([r0, r0, r1, r2])
    b = np.array([r1, r0, r2, r0])  # every row of B is one of A's, but A's row 0 would be used twice
    assert rel(a, b) == ("1 of 4 rows are equal (rows [1]); the others differ",
                         {"relation": "rows-equal", "rows": [1], "count": 1})


def test_a_permutation_to_the_scale_of_the_pair():
    small = R[:4] * 1e-3
    b = small[[1, 0, 3, 2]].copy()
    b[0, 0] += 1e-9  # 1e-6 of the pair's scale 4e-3... above float64's 1e-7
    assert kind(small, b) is None
    assert kind(small, b, dtype=np.float32) == "permuted-rows"
    b[0, 0] = small[1, 0] + 1e-11  # 2.5e-9 of the scale: within
    assert kind(small, b) == "permuted-rows"
    # a scale from B alone (A's rows are all small): the same 1e-9 counts against max|B|
    big = np.array([[1e-4, 2e-4], [3e-4, 1e-4], [5.0, 6.0]])
    bb = big[[1, 0, 2]].copy()
    bb[0, 0] += 2e-7  # 4e-8 of max|B| = 6: within
    assert kind(big, bb) == "permuted-rows"


def test_a_row_with_nan_matches_no_row():
    a = np.array([[NAN, 1.0], [2.0, 3.0], [4.0, -5.0]])
    b = a[[1, 0, 2]]
    assert rel(a, b) == ("1 of 3 rows are equal (rows [2]); the others differ",
                         {"relation": "rows-equal", "rows": [2], "count": 1})


# ------------------------------------------------------------------------------------------------ one row, one column

def test_the_difference_confined_to_one_row_or_one_column():
    b = R.copy()
    b[4] += [1.0, -2.0]
    assert rel(R, b) == ("the difference is confined to row 4", {"relation": "one-row", "index": 4})
    b = R.copy()
    b[:, 1] *= 1.5
    assert rel(R, b) == ("the difference is confined to column 1", {"relation": "one-column", "index": 1})
    b = R.copy()
    b[0, 0] += 1.0  # one element: its row is named
    assert rel(R, b) == ("the difference is confined to row 0", {"relation": "one-row", "index": 0})


def test_one_row_or_column_needs_a_matrix_of_at_least_two_by_two():
    a = np.array([[1.0, 2.0], [3.0, 5.0]])
    b = a.copy()
    b[1, 1] = 7.0
    assert rel(a, b) == ("the difference is confined to row 1", {"relation": "one-row", "index": 1})
    col = np.array([[1.0], [2.5], [-3.0]])
    cb = col.copy()
    cb[1] = 4.0
    assert rel(col, cb) == ("2 of 3 rows are equal (rows [0, 2]); the others differ",
                            {"relation": "rows-equal", "rows": [0, 2], "count": 2})
    cube = np.arange(1.0, 9.0).reshape(2, 2, 2)
    cb = cube.copy()
    cb[1, 0, 1] = 20.0
    assert rel(cube, cb) == ("1 of 2 rows are equal (rows [0]); the others differ",
                             {"relation": "rows-equal", "rows": [0], "count": 1})


def test_nan_on_both_sides_is_no_difference():
    a = np.array([[NAN, 2.0], [3.0, 5.0]])
    b = a.copy()
    b[1, 1] = 7.0
    assert rel(a, b) == ("the difference is confined to row 1", {"relation": "one-row", "index": 1})
    b = a.copy()
    b[0, 1] = 7.0
    assert rel(a, b) == ("the difference is confined to row 0", {"relation": "one-row", "index": 0})
    b = a.copy()
    b[0, 0] = 1.0  # nan against a number is a difference
    assert rel(a, b) == ("the difference is confined to row 0", {"relation": "one-row", "index": 0})


def test_confinement_to_the_scale_of_the_pair():
    small = np.array([[1e-3, 2e-3, -1e-3], [3e-3, 1e-3, 2e-3], [-2e-3, 4e-3, 1e-3]])
    b = small.copy()
    b[0, 0] += 1e-9
    b[2, 2] += 1e-9  # two rows, two columns, each 2.5e-7 of the scale
    assert rel(small, b)[1] == {"relation": "rows-equal", "rows": [1], "count": 1}
    assert rel(small, b, dtype=np.float32)[1] == {"relation": "rows-equal", "rows": [0, 1, 2], "count": 3}
    b[2, 2] = small[2, 2] + 1e-11
    assert rel(small, b) == ("the difference is confined to row 0", {"relation": "one-row", "index": 0})


# ------------------------------------------------------------------------------------------------ rows equal

def test_some_rows_equal():
    b = R.copy()
    b[1] += [1.0, 1.0]
    b[3] += [-1.0, 2.0]
    assert rel(R, b) == ("4 of 6 rows are equal (rows [0, 2, 4, 5]); the others differ",
                         {"relation": "rows-equal", "rows": [0, 2, 4, 5], "count": 4})


def test_many_equal_rows_are_cut_in_the_sentence_and_the_evidence():
    a = np.arange(206.0).reshape(103, 2) * np.array([1.0, -1.5]) + 0.25
    b = a.copy()
    b[101] = [1000.0, 2000.0]
    b[102] = [-3000.0, 4000.0]
    s, ev = rel(a, b)
    assert s == f"101 of 103 rows are equal (rows {list(range(10))}); the others differ"
    assert ev == {"relation": "rows-equal", "rows": list(range(100)), "count": 101}


def test_equal_rows_with_nan_and_to_the_scale():
    a = np.array([[NAN, 1.0], [2.0, 3.0], [4.0, -5.0]])
    b = a.copy()
    b[1] = [2.5, 3.5]
    b[2] = [4.5, -5.5]
    assert rel(a, b) == ("1 of 3 rows are equal (rows [0]); the others differ",
                         {"relation": "rows-equal", "rows": [0], "count": 1})
    small = np.array([[1e-3, 2e-3], [3e-3, -1e-3], [2e-3, 4e-3]])
    b = small.copy()
    b[0] += 1e-9
    b[1] = [5e-3, 5e-3]
    b[2] = [-5e-3, 6e-3]
    assert kind(small, b) is None  # row 0 differs by 1.7e-7 of the pair's scale (6e-3)
    b[0] = small[0] + 1e-10
    assert rel(small, b)[1] == {"relation": "rows-equal", "rows": [0], "count": 1}
    assert rel(b, small)[1] == {"relation": "rows-equal", "rows": [0], "count": 1}


def test_nothing_in_common():
    assert rel(R, R[::-1] * [[2.0, -3.0]] + 1) is None
    assert rel(R, R[:3]) is None  # shapes differ
    assert rel(5.0, 6.0) is None  # scalars
    assert rel(np.zeros((0, 2)), np.zeros((0, 2))) is None


# ------------------------------------------------------------------------------------------------ edges

def test_a_one_by_two_matrix_transposed_and_a_vector_shifted():
    assert rel([[1.0, 2.0]], [[1.0], [2.0]]) == ("B is the transpose of A", {"relation": "transpose"})
    assert rel([1.0, 2.0, 3.0, 4.0], [9.0, 1.0, 2.0, 3.0]) == ("B's rows are A's shifted by 1 (B[1:] = A[:-1])",
                                                               {"relation": "shifted-rows", "shift": 1})


def test_rows_of_no_elements_are_equal():
    e = np.zeros((2, 0))
    assert rel(e, e.copy()) == ("2 of 2 rows are equal (rows [0, 1]); the others differ",
                                {"relation": "rows-equal", "rows": [0, 1], "count": 2})


def test_infinities_on_both_sides_raise_no_warning():
    """inf - inf is nan (numpy's invalid flag, an error in these tests): the row tests run quietly."""
    inf = float("inf")
    a = np.array([[inf, 1.0], [2.0, 3.0], [4.0, 5.0]])
    b = np.array([[inf, 1.0], [7.0, 8.0], [9.0, 10.0]])
    # the same infinity on both sides is equal; the scale is the largest finite value (it once was inf, which
    # made every finite difference small and named the one row that did not differ)
    assert rel(a, b) == ("1 of 3 rows are equal (rows [0]); the others differ",
                         {"relation": "rows-equal", "rows": [0], "count": 1})
    b = a.copy()
    b[2, 1] = 6.0
    assert rel(a, b) == ("the difference is confined to row 2", {"relation": "one-row", "index": 2})
    assert rel(a, a[[1, 0, 2]]) == ("B's rows are A's permuted (B[i] = A[perm[i]], perm starts [1, 0, 2])",
                                    {"relation": "permuted-rows", "permutation": [1, 0, 2]})
    b = a[[1, 0, 2]]
    b[2, 1] = -inf  # another infinity is a difference
    assert rel(a, b) is None


def test_a_difference_of_exactly_rtol_times_the_scale_is_none():
    """The scale is 1.0, so 1e-7 (float64's rtol) is the threshold itself: 0 against 1e-7 is equal."""
    a = np.array([[1.0, 0.0], [0.5, 0.25], [-0.75, 0.125]])
    b = np.array([[1.0, 1e-7], [0.3, 0.9], [0.1, -0.2]])
    assert rel(a, b)[1] == {"relation": "rows-equal", "rows": [0], "count": 1}
    a = np.array([[0.5, 0.0], [1.0, 0.25], [-0.75, 0.125]])
    b = np.array([[1.0, 0.25], [0.5, 1e-7], [-0.75, 0.125]])
    assert rel(a, b)[1] == {"relation": "permuted-rows", "permutation": [1, 0, 2]}
    a = np.array([[1.0, 0.0], [0.5, 0.25]])
    b = np.array([[1.0, 1e-7], [0.5, 0.75]])
    assert rel(a, b)[1] == {"relation": "one-row", "index": 1}


def test_the_scale_is_the_larger_side_s():
    """Each row test takes the tolerance from the larger of the two sides' largest values, whichever side."""
    x = np.array([[1e-3, 0.0], [1e-3, 2e-3], [3e-3, 1e-3]])
    y = np.array([[1e-3, 1e-9], [10.0, 5e-3], [-4e-3, 7e-3]])  # row 0 differs by 1e-10 of the scale 10
    assert rel(x, y)[1] == {"relation": "rows-equal", "rows": [0], "count": 1}
    assert rel(y, x)[1] == {"relation": "rows-equal", "rows": [0], "count": 1}
    # 1 + 1e-7 against 1 is within 1e-7 of the scale 1 + 1e-7, not of the scale 1
    up = 1 + 1e-7
    a, b = np.array([[1.0, 0.0], [0.5, 0.25]]), np.array([[0.5, 0.25], [up, 0.0]])
    assert rel(a, b)[1] == {"relation": "permuted-rows", "permutation": [1, 0]}
    assert rel(b, a)[1] == {"relation": "permuted-rows", "permutation": [1, 0]}
    b = np.array([[up, 0.0], [0.5, 0.75]])
    assert rel(a, b)[1] == {"relation": "one-row", "index": 1}
    assert rel(b, a)[1] == {"relation": "one-row", "index": 1}

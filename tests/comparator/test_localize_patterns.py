"""memstate.comparator.localize: each pattern rule at its boundary, where moving a threshold or dropping one
half of a rule changes the answer (found by mutation testing, docs/testing.md)."""

from __future__ import annotations

import numpy as np
import pytest

from memstate.comparator.localize import localize, pattern_of
from memstate.comparator.metrics import element_errors
from memstate.comparator.tolerance import DEFAULTS


def mask(shape, cells) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    for cell in cells:
        m[cell] = True
    return m


def test_everywhere_by_count_alone_exactly_half():
    """Half the elements out (>= 0.5) is everywhere even when they cover only half the rows."""
    assert pattern_of(mask((10, 10), [(slice(0, 5), slice(None))])) == "everywhere"
    # one element fewer than half is some rows
    m = mask((10, 10), [(slice(0, 5), slice(None))])
    m[4, 9] = False
    assert pattern_of(m) == "some rows"


def test_everywhere_by_coverage_alone_at_ninety_percent():
    """A diagonal touches every row and column with only 10% of the elements out: everywhere."""
    assert pattern_of(np.eye(10, dtype=bool)) == "everywhere"
    # 9 of 10 rows and 9 of 10 columns is still >= 0.9 of each
    assert pattern_of(mask((10, 10), [(i, i) for i in range(9)])) == "everywhere"
    # 8 of 10 is not
    assert pattern_of(mask((10, 10), [(i, i) for i in range(8)])) == "single elements"
    # 9 rows but 8 columns: both halves of the coverage rule are needed
    assert pattern_of(mask((10, 10), [(i, min(i, 7)) for i in range(9)])) == "single elements"
    assert pattern_of(mask((10, 10), [(min(i, 7), i) for i in range(9)])) == "single elements"


def test_some_rows_needs_more_than_half_of_each_hit_row():
    two_of_four = mask((10, 4), [(0, 0), (0, 1), (1, 0), (1, 1)])  # exactly half of rows 0 and 1
    assert pattern_of(two_of_four) == "single elements"
    three_of_four = mask((10, 4), [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)])
    assert pattern_of(three_of_four) == "some rows"


def test_some_rows_with_two_columns_and_never_with_one():
    assert pattern_of(mask((10, 2), [(0, slice(None)), (1, slice(None))])) == "some rows"
    assert pattern_of(mask((10, 1), [(0, 0), (1, 0), (2, 0)])) == "single elements"


def test_some_columns_needs_more_than_half_of_each_hit_column():
    half = mask((4, 10), [(0, 2), (1, 2), (0, 5), (1, 5)])  # exactly half of columns 2 and 5
    assert pattern_of(half) == "single elements"
    more = mask((4, 10), [(0, 2), (1, 2), (2, 2), (0, 5), (1, 5), (2, 5)])
    assert pattern_of(more) == "some columns"


def test_some_columns_with_two_rows_and_never_with_one():
    assert pattern_of(mask((2, 10), [(slice(None), 3)])) == "some columns"
    assert pattern_of(mask((1, 10), [(0, 3), (0, 4)])) == "single elements"


def test_one_dimensional_and_scalar_masks():
    assert pattern_of(np.zeros(8, dtype=bool)) == "none"
    assert pattern_of(mask((8,), [2])) == "single elements"
    assert pattern_of(mask((8,), [slice(0, 4)])) == "everywhere"
    assert pattern_of(np.array(True)) == "everywhere" and pattern_of(np.array(False)) == "none"
    assert pattern_of(mask((3, 2, 2), [(0, slice(None), slice(None))])) == "some rows"


def test_localize_passes_top_on_and_lists_exact_rows_and_columns():
    a = np.arange(1.0, 41.0).reshape(4, 10)
    b = a.copy()
    b[1, 2] += 5.0
    b[3, 7] += 9.0
    b[3, 8] += 1.0
    errors = element_errors(a, b)
    loc = localize(a, b, errors, DEFAULTS["float64"].out_of_tolerance(errors), top=2)
    assert [w.index for w in loc.worst] == [(3, 7), (1, 2)]
    assert [w.abs_error for w in loc.worst] == [9.0, 5.0]
    assert (loc.rows, loc.n_rows, loc.columns, loc.n_columns) == ((1, 3), 2, (2, 7, 8), 3)
    assert (loc.pattern, loc.n_out, loc.size, loc.total_rows, loc.total_columns) == ("single elements", 3, 40, 4, 10)


def test_localize_of_a_scalar_and_a_vector_has_no_rows():
    for a, b, cols in ((np.array(1.0), np.array(2.0), ()), (np.ones(3), np.array([1.0, 5.0, 1.0]), (1,))):
        errors = element_errors(a, b)
        loc = localize(a, b, errors, DEFAULTS["float64"].out_of_tolerance(errors))
        assert (loc.rows, loc.n_rows, loc.total_rows, loc.columns) == ((), 0, 0, cols)
        assert all(isinstance(c, int) for c in loc.columns + loc.rows)


@pytest.mark.parametrize("top", [1, 2, 3, 5])
def test_worst_elements_are_the_largest_errors_worst_first(top):
    rng = np.random.default_rng(top)
    for n in (top + 1, 7, 50, 300):  # top + 1: one more than kept; 300: numpy selects differently above 256
        for _ in range(10):
            a = np.zeros(n)
            b = rng.permutation(n).astype(float) + 1.0
            errors = element_errors(a, b)
            loc = localize(a, b, errors, np.ones(n, dtype=bool), top=top)
            assert [w.abs_error for w in loc.worst] == [float(n - k) for k in range(top)]

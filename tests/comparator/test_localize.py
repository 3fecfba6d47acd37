"""memstate.comparator.localize: rows, columns, worst elements and the pattern of a divergence inside one tensor."""

from __future__ import annotations

import numpy as np
import pytest

from memstate.comparator.localize import MAX_LISTED, localize, pattern_of
from memstate.comparator.metrics import element_errors
from memstate.comparator.tolerance import DEFAULTS

TOL = DEFAULTS["float64"]


def where(a: np.ndarray, b: np.ndarray):
    errors = element_errors(a, b)
    return localize(a, b, errors, TOL.out_of_tolerance(errors))


def base(shape=(8, 10)) -> np.ndarray:
    return np.arange(1, np.prod(shape) + 1, dtype=np.float64).reshape(shape) / 10


def test_single_element():
    a = base()
    b = a.copy()
    b[3, 7] += 0.25
    w = where(a, b)
    assert (w.pattern, w.rows, w.columns, w.n_out, w.size) == ("single elements", (3,), (7,), 1, 80)
    assert (w.total_rows, w.total_columns) == (8, 10)
    (e,) = w.worst
    assert e.index == (3, 7) and e.a == pytest.approx(3.8) and e.b == pytest.approx(4.05)
    assert e.abs_error == pytest.approx(0.25) and e.rel_error == pytest.approx(0.25 / 4.05)
    assert e.ulps > 1e14


def test_some_rows_lists_them():
    a = base()
    b = a.copy()
    b[[1, 6]] = np.nan
    w = where(a, b)
    assert (w.pattern, w.rows, w.n_rows, w.n_columns) == ("some rows", (1, 6), 2, 10)
    assert all(np.isnan(e.b) and e.abs_error == np.inf for e in w.worst)


def test_some_columns():
    a = base()
    b = a.copy()
    b[:, 4] *= 2
    w = where(a, b)
    assert (w.pattern, w.columns, w.n_rows) == ("some columns", (4,), 8)


def test_everywhere():
    a = base()
    w = where(a, a * (1 + 1e-7))
    assert w.pattern == "everywhere" and w.n_out == 80
    assert [e.index for e in w.worst] == [(7, 9), (7, 8), (7, 7), (7, 6), (7, 5)]  # largest abs errors first


def test_scattered_elements_are_single_elements_and_nothing_is_none():
    a = base()
    b = a.copy()
    b[0, 0] += 1
    b[5, 3] += 2
    b[7, 9] += 3
    assert pattern_of(TOL.out_of_tolerance(element_errors(a, b))) == "single elements"
    w = where(a, b)
    assert [e.index for e in w.worst] == [(7, 9), (5, 3), (0, 0)]
    assert where(a, a.copy()).pattern == "none" and where(a, a.copy()).worst == ()


def test_zero_and_one_dimensional_tensors():
    w = where(np.array(2.3), np.array(2.4))
    assert (w.pattern, w.rows, w.columns, w.total_rows, w.total_columns) == ("everywhere", (), (), 0, 0)
    assert w.worst[0].index == ()
    bias = np.linspace(0.1, 1.0, 32)
    bad = bias.copy()
    bad[[5, 20]] = 0.0
    w = where(bias, bad)
    assert (w.pattern, w.rows, w.columns, w.total_rows, w.total_columns) == ("single elements", (), (5, 20), 0, 32)


def test_listed_rows_are_capped_but_counted():
    a = np.ones((200, 3))
    b = a.copy()
    b[:150, 1] = 5.0
    w = where(a, b)
    assert w.n_rows == 150 and len(w.rows) == MAX_LISTED and w.rows[-1] == MAX_LISTED - 1
    assert w.pattern == "some columns" and w.columns == (1,)

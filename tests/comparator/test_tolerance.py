"""memstate.comparator.tolerance: dtype defaults, the --tol/--ulp syntax, rule resolution, and the least passing tolerance."""

from __future__ import annotations

import math

import numpy as np
import pytest

from memstate.errors import MemstateError
from memstate.comparator.metrics import element_errors
from memstate.comparator.tolerance import (
    DEFAULTS,
    Rule,
    Tolerance,
    Tolerances,
    default_tolerance,
    min_passing,
    oracle_allowance,
    parse_tol,
    parse_ulp,
    tolerances_from_specs,
)


def fails(tol: Tolerance, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return tol.out_of_tolerance(element_errors(a, b))


def test_defaults_follow_the_dtypes():
    assert default_tolerance("float64", "float64") == DEFAULTS["float64"]
    assert default_tolerance("float32", "float32") == DEFAULTS["float32"]
    # a mixed pair is judged at float64's tolerance: float32 rounding is the divergence to find
    assert default_tolerance("float64", "float32") == DEFAULTS["float64"]
    assert default_tolerance(np.dtype("float32"), np.dtype("float64")) == DEFAULTS["float64"]
    assert (DEFAULTS["float64"].rtol, DEFAULTS["float64"].atol) == (1e-10, 1e-12)
    assert (DEFAULTS["float32"].rtol, DEFAULTS["float32"].atol) == (1e-5, 1e-5)


def test_float32_copy_of_float64_is_flagged_by_default():
    x = np.random.default_rng(0).normal(size=(8, 32))
    x32 = x.astype(np.float32)
    # numpy's assert_allclose (rtol 1e-7) lets it pass silently ...
    np.testing.assert_allclose(x32, x, rtol=1e-7)
    # ... memstate's default does not
    tol = Tolerances().resolve("L1.z", x.dtype, x32.dtype)
    assert fails(tol, x, x32).mean() > 0.9
    # accepting float32 rounding is explicit: the float32 preset, or 0 ULPs on float32's grid
    assert not fails(Tolerances(rules=(parse_tol("*=float32"),)).resolve("L1.z", x.dtype, x32.dtype), x, x32).any()
    assert not fails(Tolerances(rules=(parse_ulp("*=0"),)).resolve("L1.z", x.dtype, x32.dtype), x, x32).any()


def test_check_is_symmetric_and_handles_nonfinite():
    tol = Tolerance(rtol=0.1, atol=0.0)
    a, b = np.array([1.0, 10.0, np.nan, np.inf, np.nan]), np.array([1.1, 9.0, np.nan, np.inf, 0.0])
    np.testing.assert_array_equal(fails(tol, a, b), [False, False, False, False, True])
    np.testing.assert_array_equal(fails(tol, b, a), fails(tol, a, b))
    assert fails(Tolerance(rtol=math.inf, atol=math.inf, ulps=10**9), a, b)[4]  # no tolerance passes a lone nan


def test_parse_tol_forms():
    assert parse_tol("L*.dW=1e-6") == Rule("L*.dW", rtol=1e-6, text="--tol 'L*.dW=1e-6'")
    r = parse_tol("probs=rtol:1e-5,atol:1e-12")
    assert (r.pattern, r.rtol, r.atol, r.ulps) == ("probs", 1e-5, 1e-12, None)
    r = parse_tol("loss=atol: 0, ulps:8")
    assert (r.rtol, r.atol, r.ulps) == (None, 0.0, 8)
    r = parse_tol("*=float32")
    assert (r.pattern, r.rtol, r.atol) == ("*", 1e-5, 1e-5)
    assert parse_ulp("loss=64") == Rule("loss", ulps=64, text="--ulp 'loss=64'")


@pytest.mark.parametrize("spec, words", [
    ("L1.dW", "PATTERN=RTOL"),
    ("=1e-6", "PATTERN=RTOL"),
    ("L1.dW=abc", "'abc' is not a number"),
    ("L1.dW=-1", "must be a finite number >= 0"),
    ("L1.dW=nan", "must be a finite number >= 0"),
    ("probs=rtol:1e-5,btol:3", "cannot read 'btol:3'"),
    ("probs=rtol:1,rtol:2", "'rtol' given twice"),
    ("loss=ulps:1.5", "not a whole number of ULPs"),
])
def test_parse_tol_errors_show_the_syntax(spec, words):
    with pytest.raises(MemstateError) as err:
        parse_tol(spec)
    msg = str(err.value)
    assert msg.startswith(f"--tol {spec!r}") and words in msg
    assert "rtol:X,atol:Y" in msg and "e.g. 'L*.dW=1e-6'" in msg


def test_parse_ulp_errors():
    with pytest.raises(MemstateError, match=r"--ulp 'loss=-3'.*whole number of ULPs.*e\.g\. 'loss=64'"):
        parse_ulp("loss=-3")
    with pytest.raises(MemstateError, match="PATTERN=N"):
        parse_ulp("loss")


def test_resolution_order_last_matching_rule_wins_per_field():
    tols = tolerances_from_specs([("tol", "L*=1e-6"), ("ulp", "L1.*=4"), ("tol", "L1.dW=atol:1e-3")],
                                 rtol=1e-8, atol=1e-9)
    t = tols.resolve("L1.dW", "float64", "float64")
    assert (t.rtol, t.atol, t.ulps) == (1e-6, 1e-3, 4)
    assert t.source == "float64 default + --rtol 1e-08 --atol 1e-09 + --tol 'L*=1e-6' + --ulp 'L1.*=4' + " \
                       "--tol 'L1.dW=atol:1e-3'"
    t = tols.resolve("probs", "float32", "float32")
    assert (t.rtol, t.atol, t.ulps) == (1e-8, 1e-9, None)
    assert [r.text for r in tols.unused_rules({"probs", "loss"})] == \
        ["--tol 'L*=1e-6'", "--ulp 'L1.*=4'", "--tol 'L1.dW=atol:1e-3'"]
    assert tols.unused_rules({"L1.dW"}) == []
    assert any("--tol 'L*=1e-6'" in line for line in tols.describe())


def test_bad_global_tolerances():
    with pytest.raises(MemstateError, match="--rtol -1.*finite number >= 0"):
        Tolerances(rtol=-1.0)
    with pytest.raises(MemstateError, match="--oracle-factor 0.5"):
        Tolerances(oracle_factor=0.5)


def test_min_passing_tolerance_is_tight():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(16, 8))
    b = a * (1 + rng.normal(scale=1e-7, size=a.shape)) + rng.normal(scale=1e-13, size=a.shape)
    tol = DEFAULTS["float64"]
    errors = element_errors(a, b)
    assert tol.out_of_tolerance(errors).any()
    need = min_passing(errors, tol)
    for field in ("rtol", "atol"):
        value = getattr(need, field)
        assert not Tolerance(**{**vars(tol), field: value}).out_of_tolerance(errors).any()
        assert Tolerance(**{**vars(tol), field: value * (1 - 1e-6)}).out_of_tolerance(errors).any()
    assert not Tolerance(tol.rtol, tol.atol, ulps=int(need.ulps)).out_of_tolerance(errors).any()
    assert Tolerance(tol.rtol, tol.atol, ulps=int(need.ulps) - 1).out_of_tolerance(errors).any()
    lone_nan = element_errors(np.array([1.0, np.nan]), np.array([1.0, 2.0]))
    assert min_passing(lone_nan, tol).rtol == math.inf


def test_oracle_allowance_is_factor_times_a_plus_one_rounding():
    assert oracle_allowance(1e-9, 2.0, np.float64, 10) == pytest.approx(1e-8 + 2.0 * 2.0**-52)
    assert oracle_allowance(0.0, 1.0, np.float32, 10) == pytest.approx(2.0**-23)


def test_printed_minimum_tolerance_rounds_up_so_it_passes():
    from memstate.comparator.tolerance import ceil_3g

    for x in (1.0441e-5, 1.2345678e-7, 0.0019999, 7.01e-07, 123.4501):
        assert float(ceil_3g(x)) >= x
        assert float(ceil_3g(x)) <= x * 1.01
    assert ceil_3g(1.04e-05) == "1.04e-05"

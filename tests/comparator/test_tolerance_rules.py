"""memstate.comparator.tolerance, rule by rule: exact values on cases chosen so that each rule, changed, gives a
different answer (found by mutation testing, docs/testing.md)."""

from __future__ import annotations

import math
import warnings
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memstate.comparator.metrics import element_errors
from memstate.comparator.tolerance import (
    DEFAULTS,
    MinTolerance,
    Rule,
    Tolerance,
    TOL_SYNTAX,
    ULP_SYNTAX,
    ToleranceError,
    Tolerances,
    ceil_3g,
    default_tolerance,
    min_passing,
    oracle_allowance,
    parse_tol,
    parse_ulp,
    tolerances_from_specs,
)

EPS32 = float(np.finfo(np.float32).eps)


def out(tol: Tolerance, a, b) -> list[bool]:
    return tol.out_of_tolerance(element_errors(np.asarray(a, dtype=float), np.asarray(b, dtype=float))).tolist()


def test_ulps_widen_rtol_atol_they_do_not_replace_them():
    """--ulp is "within rtol/atol OR within N ulps": each side alone lets an element pass."""
    one_up2 = np.nextafter(np.nextafter(1.0, 2.0), 2.0)  # 2 ulps above 1.0
    a, b = [0.0, 1.0, 1.0], [1e-300, one_up2, 1.1]
    # element 0 is inside atol but ~7e18 ulps away; element 1 is outside atol but 2 ulps away
    assert out(Tolerance(rtol=0.0, atol=1e-20, ulps=2), a, b) == [False, False, True]
    assert out(Tolerance(rtol=0.0, atol=1e-20), a, b) == [False, True, True]
    assert out(Tolerance(rtol=0.0, atol=0.0, ulps=2), a, b) == [True, False, True]
    assert out(Tolerance(rtol=0.0, atol=0.0, ulps=1), a, b) == [True, True, True]
    assert out(Tolerance(rtol=1e-15, atol=0.0, ulps=0), a, b) == [True, False, True]  # rtol alone, ulps 0


def test_tolerance_checks_are_silent_on_extreme_values():
    """inf * 0 and 1e300 * 1e300 inside the check must not print numpy RuntimeWarnings at the user."""
    errors = element_errors(np.array([0.0, 1e300, 2.0]), np.array([0.0, -1e300, 3.0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Tolerance(rtol=math.inf, atol=0.0).out_of_tolerance(errors).tolist() == [True, False, False]
        assert Tolerance(rtol=1e300, atol=0.0).out_of_tolerance(errors).tolist() == [False, False, False]
        m = min_passing(errors, Tolerance(rtol=0.0, atol=0.0))
    assert (m.rtol, m.atol) == (2.0, 2e300) and m.ulps == float(errors.ulp[1]) > 1e19


def test_describe_names_every_part():
    assert Tolerance(rtol=1e-10, atol=1e-12).describe() == "rtol 1e-10, atol 1e-12"
    assert Tolerance(rtol=1e-5, atol=0.0, ulps=4).describe() == "rtol 1e-05, atol 0, or 4 ulps"
    assert Tolerance(rtol=0.0, atol=0.0, ulps=0).describe() == "rtol 0, atol 0, or 0 ulps"


def test_min_passing_when_everything_passes_is_the_tolerance_itself():
    errors = element_errors(np.array([1.0, 2.0]), np.array([1.0, 2.0 + 1e-13]))
    assert min_passing(errors, Tolerance(rtol=1e-10, atol=1e-12)) == MinTolerance(rtol=1e-10, atol=1e-12, ulps=0.0)
    assert min_passing(errors, Tolerance(rtol=1e-10, atol=1e-12, ulps=3)) == MinTolerance(1e-10, 1e-12, 3.0)
    for m in (min_passing(errors, Tolerance(rtol=1e-10, atol=1e-12)),):
        assert all(type(v) is float for v in (m.rtol, m.atol, m.ulps))


def test_min_passing_with_a_nonfinite_mismatch_is_inf_everywhere():
    errors = element_errors(np.array([1.0, 2.0]), np.array([1.5, np.nan]))
    m = min_passing(errors, Tolerance(rtol=1e-10, atol=1e-12))
    assert (m.rtol, m.atol, m.ulps) == (math.inf, math.inf, math.inf)


@pytest.mark.parametrize("a, b, rtol", [
    # (abs - atol) / magnitude rounds below the least passing rtol; one nudge up makes it pass
    ([0.8791606182879853, -1.0717874168774442, 0.9144672031287812],
     [0.8791605982245307, -1.0717886656263345, 0.9144668892293092], 1.165106452737691e-06),
    ([-0.7796379162397445, 0.08697924857190435, -1.5547311319959862],
     [-0.7796377476093376, 0.08697878950034864, -1.5547299057253858], 5.277931957925593e-06),
])
def test_min_passing_rtol_is_nudged_until_it_really_passes(a, b, rtol):
    a, b = np.array(a), np.array(b)
    tol = Tolerance(rtol=1e-10, atol=1e-12)
    errors = element_errors(a, b)
    m = min_passing(errors, tol)
    assert m.rtol == rtol
    assert not replace(tol, rtol=m.rtol).out_of_tolerance(errors).any()
    assert replace(tol, rtol=float(np.nextafter(m.rtol, 0))).out_of_tolerance(errors).any()


def test_min_passing_ulps_counts_only_what_rtol_atol_fail():
    a = np.array([1.0, 1.0, 100.0])
    b = np.array([np.nextafter(1.0, 2.0), 1.0 + 1e-9, 100.0])
    tol = Tolerance(rtol=1e-10, atol=0.0, ulps=1)
    m = min_passing(element_errors(a, b), tol)
    assert m.ulps == float(element_errors(a, b).ulp[1]) and m.ulps > 1000
    assert m.rtol == pytest.approx(1e-9, rel=1e-6) and m.atol == pytest.approx(1e-9 - 1e-10, rel=1e-5)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=6),
       st.lists(st.floats(-1e-3, 1e-3, allow_nan=False), min_size=6, max_size=6),
       st.sampled_from([None, 0, 2]))
def test_min_passing_values_each_pass(a, noise, ulps):
    a = np.array(a)
    b = a + np.array(noise[: a.size])
    tol = Tolerance(rtol=1e-10, atol=1e-12, ulps=ulps)
    errors = element_errors(a, b)
    m = min_passing(errors, tol)
    assert not replace(tol, rtol=m.rtol).out_of_tolerance(errors).any() or m.rtol == math.inf
    assert not replace(tol, atol=m.atol).out_of_tolerance(errors).any()
    assert not replace(tol, ulps=math.ceil(m.ulps)).out_of_tolerance(errors).any()
    assert m.atol >= tol.atol and m.rtol >= tol.rtol


def test_default_tolerance_is_float32s_only_when_both_sides_are_float32():
    assert default_tolerance("float32", "float32") is DEFAULTS["float32"]
    assert default_tolerance("float16", "float32") is DEFAULTS["float32"]
    assert default_tolerance("float32", "float64") is DEFAULTS["float64"]
    assert default_tolerance("float64", "float32") is DEFAULTS["float64"]
    assert default_tolerance("float64", "float64") is DEFAULTS["float64"]


@pytest.mark.parametrize("kwargs, message", [
    ({"rtol": math.nan}, "--rtol nan: --rtol must be a finite number >= 0, e.g. 1e-9"),
    ({"rtol": math.inf}, "--rtol inf: --rtol must be a finite number >= 0, e.g. 1e-9"),
    ({"atol": math.nan}, "--atol nan: --atol must be a finite number >= 0, e.g. 1e-9"),
    ({"atol": -math.inf}, "--atol -inf: --atol must be a finite number >= 0, e.g. 1e-9"),
    ({"atol": -1e-9}, "--atol -1e-09: --atol must be a finite number >= 0, e.g. 1e-9"),
    ({"rtol": True}, "--rtol True: --rtol must be a finite number >= 0, e.g. 1e-9"),
    ({"rtol": "1e-9"}, "--rtol '1e-9': --rtol must be a finite number >= 0, e.g. 1e-9"),
    ({"oracle_factor": 0.999}, "--oracle-factor 0.999: give a number >= 1 (default 10)"),
    ({"oracle_factor": math.nan}, "--oracle-factor nan: give a number >= 1 (default 10)"),
    ({"oracle_factor": math.inf}, "--oracle-factor inf: give a number >= 1 (default 10)"),
    ({"oracle_factor": "10"}, "--oracle-factor '10': give a number >= 1 (default 10)"),
])
def test_global_settings_that_are_not_finite_or_negative_are_rejected(kwargs, message):
    with pytest.raises(ToleranceError) as info:
        Tolerances(**kwargs)
    assert str(info.value) == message


def test_global_settings_at_their_limits_are_accepted():
    t = Tolerances(rtol=0.0, atol=0, oracle_factor=1)
    assert (t.rtol, t.atol, t.oracle_factor) == (0.0, 0, 1)
    assert Tolerances(oracle_factor=1.5).oracle_factor == 1.5


def test_global_rtol_and_atol_each_apply_alone_and_are_named_in_the_source():
    f64 = ("x", "float64", "float64")
    assert Tolerances(rtol=1e-3).resolve(*f64) == Tolerance(1e-3, 1e-12, None, "float64 default + --rtol 0.001")
    assert Tolerances(atol=1e-6).resolve(*f64) == Tolerance(1e-10, 1e-6, None, "float64 default + --atol 1e-06")
    assert Tolerances(rtol=0.0, atol=0.0).resolve(*f64) == Tolerance(0.0, 0.0, None,
                                                                     "float64 default + --rtol 0 --atol 0")
    assert Tolerances().resolve("x", "float32", "float32") == Tolerance(1e-5, 1e-5, None, "float32 default")
    assert Tolerances().resolve("x", "float32", "float64") == Tolerance(1e-10, 1e-12, None, "float64 default")


def test_rules_override_field_by_field_in_order():
    t = Tolerances(rtol=1e-3, rules=(parse_tol("L1.*=atol:1e-4"), parse_ulp("L1.z=7"), parse_tol("*.z=2e-2")))
    assert t.resolve("L1.z", "float64", "float64") == Tolerance(
        2e-2, 1e-4, 7, "float64 default + --rtol 0.001 + --tol 'L1.*=atol:1e-4' + --ulp 'L1.z=7' + --tol '*.z=2e-2'")
    assert t.resolve("L2.a", "float32", "float32") == Tolerance(1e-3, 1e-5, None, "float32 default + --rtol 0.001")
    assert t.unused_rules({"L2.a", "L1.a"}) == [t.rules[1], t.rules[2]]


def test_policy_description_lists_defaults_globals_and_rules():
    defaults = ("defaults: float64 rtol 1e-10, atol 1e-12; float32 rtol 1e-05, atol 1e-05 "
                "(float64's whenever either side is float64)")
    assert Tolerances().describe() == [defaults]
    assert Tolerances(rtol=1e-6).describe() == [defaults, "global: rtol 1e-06"]
    assert Tolerances(atol=2e-7).describe() == [defaults, "global: atol 2e-07"]
    assert Tolerances(rtol=1e-6, atol=0.0, rules=(parse_ulp("loss=3"), Rule("W*", rtol=0.1))).describe() == [
        defaults, "global: rtol 1e-06, atol 0", "rule: --ulp 'loss=3'", "rule: W*"]


def test_parse_tol_reads_every_form_exactly():
    assert parse_tol("L1.*=float32") == Rule("L1.*", rtol=1e-5, atol=1e-5, text="--tol 'L1.*=float32'")
    assert parse_tol("p=float64") == Rule("p", rtol=1e-10, atol=1e-12, text="--tol 'p=float64'")
    assert parse_tol(" a = 1e-3 ") == Rule("a", rtol=1e-3, text="--tol ' a = 1e-3 '")
    assert parse_tol("odd=name=1e-3") == Rule("odd=name", rtol=1e-3, text="--tol 'odd=name=1e-3'")  # last '='
    assert parse_tol("p=atol: 0 , ulps:4") == Rule("p", atol=0.0, ulps=4, text="--tol 'p=atol: 0 , ulps:4'")
    assert parse_ulp("loss=64") == Rule("loss", ulps=64, text="--ulp 'loss=64'")


@pytest.mark.parametrize("parse, spec, message", [
    (parse_tol, "p=rtol:abc", "--tol 'p=rtol:abc': 'abc' is not a number; "),
    (parse_tol, "p=rtol:1:2", "--tol 'p=rtol:1:2': '1:2' is not a number; "),
    (parse_tol, "p=atol:inf", "--tol 'p=atol:inf': 'inf' must be a finite number >= 0; "),
    (parse_tol, "p=ulps:1.5", "--tol 'p=ulps:1.5': '1.5' is not a whole number of ULPs; "),
    (parse_tol, "p=rtol:1,rtol:2", "--tol 'p=rtol:1,rtol:2': 'rtol' given twice; "),
    (parse_tol, "p=rtl:1", "--tol 'p=rtl:1': cannot read 'rtl:1'; "),
    (parse_tol, "noequals", "--tol 'noequals': write PATTERN=RTOL"),
    (parse_ulp, "noequals", "--ulp 'noequals': write PATTERN=N with N a whole number of ULPs"),
    (parse_ulp, "loss=-1", "--ulp 'loss=-1': '-1' is not a whole number of ULPs; write PATTERN=N"),
])
def test_parse_errors_name_the_option_the_value_and_the_syntax(parse, spec, message):
    with pytest.raises(ToleranceError) as info:
        parse(spec)
    assert str(info.value).startswith(message)
    assert str(info.value).endswith(TOL_SYNTAX if parse is parse_tol else ULP_SYNTAX)


def test_tolerances_from_specs_keeps_order_globals_and_the_oracle_factor():
    t = tolerances_from_specs([("ulp", "a=2"), ("tol", "b=1e-3")], rtol=1e-4, atol=None, oracle_factor=3.0)
    assert t == Tolerances(rtol=1e-4, atol=None, rules=(parse_ulp("a=2"), parse_tol("b=1e-3")), oracle_factor=3.0)
    assert tolerances_from_specs().oracle_factor == 10.0


def test_oracle_allowance_is_factor_times_error_plus_one_rounding():
    assert oracle_allowance(1e-6, 4.0, "float32", 10.0) == 10.0 * 1e-6 + EPS32 * 4.0
    assert oracle_allowance(0.0, 0.5, np.dtype("float64"), 2.0) == 2.0 ** -52 * 0.5
    assert oracle_allowance(3e-9, 0.0, "float64", 1.0) == 3e-9


@pytest.mark.parametrize("x, text", [
    (1.04e-05, "1.04e-05"),  # 1.04e-05 / 1e-07 is 104.00000000000001: not rounded up to 1.05
    (1.040000000005e-05, "1.05e-05"),  # just above 1.04e-05: the correction loop adds one unit
    (1.041e-05, "1.05e-05"),
    (0.12345, "0.124"),
    (123990.0, "1.24e+05"),
    (123456.0, "1.24e+05"),
    (7.0, "7"),
    (0.0, "0"),
    (-2.5, "-2.5"),
    (math.inf, "inf"),
])
def test_ceil_3g_rounds_up_to_three_digits(x, text):
    assert ceil_3g(x) == text
    assert not math.isfinite(x) or x <= 0 or float(text) >= x


def test_the_least_atol_is_nudged_as_an_atol_not_as_an_rtol():
    """min_passing's atol is the least atol that passes (one ulp less fails): it is tried as an atol. Tried as
    an rtol (times a magnitude of 1e-6), the same value would fail and be pushed far past the least one."""
    a, b = np.array([1e-6]), np.array([1e-6 + 1e-3])
    tol = Tolerance(rtol=1e-10, atol=1e-12)
    errors = element_errors(a, b)
    least = min_passing(errors, tol).atol
    assert not replace(tol, atol=least).out_of_tolerance(errors).any()
    assert replace(tol, atol=float(np.nextafter(least, 0.0))).out_of_tolerance(errors).all()
    assert least == pytest.approx(1e-3, rel=1e-9)

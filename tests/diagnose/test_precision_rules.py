"""memstate.diagnose.precision on small hand-made tensors: precision-rounding at every threshold (8 decimals and
others, float64 and float32 sides), dtype-float32 (float32 against float64, by values, header or variant) and
the drift fallback's rules on hand-written error histories (found by mutation testing, docs/testing.md)."""

from __future__ import annotations

import numpy as np
import pytest

from memstate.diagnose.common import fmt
from memstate.diagnose.context import DivergenceContext
from memstate.diagnose.precision import _f32_representable, _quantised, drift, dtype_float32, precision_rounding

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

# scale exactly 1 (the 1.0 is on every grid): a 10^-2 grid is the coarsest allowed, 10^-12 the finest in float64
O = np.array([[0.123456789012345, -0.987654321098765, 0.555555555555555, 1.0],
              [-0.314159265358979, 0.271828182845904, -0.707106781186547, 0.044721359549995]])
F64, F32 = np.dtype(np.float64), np.dtype(np.float32)


def ctx(a, b, name="L1.W", meta_a=None, meta_b=None, history=((0, 1.0),), agree=None) -> DivergenceContext:
    return DivergenceContext(0, name, np.asarray(a), np.asarray(b), {}, {}, tuple(history), agree, meta_a or {},
                             meta_b or {})


# ------------------------------------------------------------------------------------------ precision-rounding


def test_quantised_within_two_ulps_of_the_sides_dtype():
    assert _quantised(np.round(O, 8), 8, F64) and not _quantised(O, 8, F64)
    two, three = np.nextafter(np.nextafter(0.1, 1), 1), np.nextafter(np.nextafter(np.nextafter(0.1, 1), 1), 1)
    assert _quantised(np.array([two, np.nan, np.inf]), 1, F64)  # 2 ulps off; nan and inf are ignored
    assert not _quantised(np.array([three]), 1, F64)
    assert _quantised(np.array([np.float32(0.1)], np.float64), 1, F32)
    f32 = np.round(O, 3).astype(np.float32).astype(np.float64)  # the float32 nearest each grid point
    assert not _quantised(f32, 3, F64) and _quantised(f32, 3, F32)
    assert not _quantised(O.astype(np.float32).astype(np.float64), 3, F32)
    assert not _quantised(np.array([1e300, 0.5]), 15, F64)  # 1e300 * 1e15 overflows quietly: not on the grid
    assert not _f32_representable(np.array([1e300, 0.5]), F64) and _f32_representable(np.array([np.inf, 0.5]), F64)


@pytest.mark.parametrize("name, conf", [("L1.W", 0.95), ("L2.b", 0.95), ("L1.z", 0.85), ("L1.dW", 0.85)])
def test_rounded_to_8_decimals(name, conf):
    x = np.round(O, 8)
    diff = float(np.abs(x - O).max())
    d = precision_rounding(ctx(O, x, name, meta_b={"impl": "js"}))
    assert (d.code, d.confidence) == ("precision-rounding", conf)
    assert d.evidence == {"side": "B", "decimals": 8, "exact": True, "max_abs_diff": diff, "bound": 0.5e-8,
                          "changed": 7, "size": 8}
    assert d.explanation == (
        f"Side B (js)'s {name} values are exactly A's rounded to 8 decimals: 7 of 8 elements differ, by at most "
        f"{fmt(diff)} (rounding bound 5e-09). Something rounds to 8 decimals (toFixed(8), a JSON/print round trip, "
        f"np.round) so that updates smaller than 5e-09 vanish. Fix: keep full precision (repr / 17 significant "
        f"digits).")
    assert precision_rounding(ctx(x, O, name)).evidence["side"] == "A"


@pytest.mark.parametrize("name, conf", [("L1.W", 0.75), ("L1.z", 0.6)])
def test_on_the_grid_but_not_the_other_sides_rounding(name, conf):
    """The trajectories have split: on the 10^-8 grid, within 50 grid steps of the other side, not its rounding."""
    x = np.round(O, 8)
    x[0, 0] = np.round(x[0, 0] + 49e-8, 8)
    diff = float(np.abs(x - O).max())
    d = precision_rounding(ctx(O, x, name))
    assert (d.confidence, d.evidence["decimals"], d.evidence["exact"], d.evidence["max_abs_diff"]) == (
        conf, 8, False, diff)
    assert d.explanation.startswith(
        f"Side B's {name} values are all on the 10^-8 grid while A's are not, within {fmt(diff)} of them: 7 of 8")
    x[0, 0] = np.round(x[0, 0] + 1e-8, 8)  # now 50 grid steps and 0.1 of one away: not rounding
    assert 50e-8 < float(np.abs(x - O).max()) < 50.2e-8
    assert precision_rounding(ctx(O, x, name)) is None


def test_the_grid_is_looked_for_between_1e2_scale_and_1e3_ulps():
    for n in (2, 5, 12):
        d = precision_rounding(ctx(O, np.round(O, n)))
        assert (d.evidence["decimals"], d.evidence["exact"], d.confidence) == (n, True, 0.95)
    assert precision_rounding(ctx(O, np.round(O, 13))) is None  # 1e-13 < 1e3 float64 ulps of 1: invisible
    d = precision_rounding(ctx(O, np.round(O, 1)))  # a 0.1 grid is coarser than 1% of the scale: seen as 10^-2
    assert (d.evidence["decimals"], d.evidence["exact"], d.confidence) == (2, False, 0.75)
    small = O * 1e-3  # scale 1e-3: 10^-5 is the coarsest grid looked at
    d = precision_rounding(ctx(small, np.round(small, 5)))
    assert (d.evidence["decimals"], d.evidence["exact"]) == (5, True)
    d = precision_rounding(ctx(small, np.round(small, 4)))
    assert (d.evidence["decimals"], d.evidence["exact"], d.confidence) == (5, False, 0.75)


def test_float32_side_rounded_to_n_decimals():
    """A float32 trace rounded to 3 decimals holds the float32 nearest each grid point: found (it used to be
    judged against float64 ulps, missed, and called dtype-float32); 4 decimals are finer than 1e3 float32 ulps."""
    for n in (2, 3):
        x = np.round(O, n).astype(np.float32)
        d = precision_rounding(ctx(O, x))
        assert (d.evidence["side"], d.evidence["decimals"], d.evidence["exact"], d.confidence) == ("B", n, True, 0.95)
        assert dtype_float32(ctx(O, x)) is None
    assert precision_rounding(ctx(O, np.round(O, 4).astype(np.float32))) is None
    assert precision_rounding(ctx(O, O.astype(np.float32))) is None  # float32 rounding is not decimal rounding
    # both sides float32, one rounded: the other's float32 values are not on the grid
    d = precision_rounding(ctx(O.astype(np.float32), np.round(O, 3).astype(np.float32)))
    assert (d.evidence["side"], d.evidence["decimals"], d.evidence["exact"]) == ("B", 3, True)
    # both float32 and both rounded, differently: not this
    a = np.round(O, 3).astype(np.float32)
    b = a.copy()
    b[0, 0] = np.float32(np.round(O[0, 0] + 1e-3, 3))
    assert precision_rounding(ctx(a, b)) is None


@pytest.mark.parametrize("order", ["AB", "BA"])
def test_the_other_sides_dtype_decides_whether_it_is_on_the_grid(order):
    """Float64 values 1e-9 off the 10^-3 grid are not rounded (float64 ulps), though float32's would be."""
    near = np.round(O, 3) + 1e-9
    rounded = np.round(O, 3).astype(np.float32)
    a, b, side = (near, rounded, "B") if order == "AB" else (rounded, near, "A")
    d = precision_rounding(ctx(a, b))
    assert (d.evidence["side"], d.evidence["decimals"], d.evidence["exact"], d.confidence) == (side, 3, True, 0.95)


def test_the_scale_is_of_both_sides():
    """Rounding that moves the largest value changes which grids are looked at: the scale is the larger side's."""
    up = O * 0.996  # 0.996 rounds up to 1.0: the scale is 1, so 10^-2 is looked at
    d = precision_rounding(ctx(up, np.round(up, 2)))
    assert (d.evidence["side"], d.evidence["decimals"], d.evidence["exact"]) == ("B", 2, True)
    o = O.copy()
    o[0, 3] = 1.003
    x = np.round(O, 2)
    x[0, 3] = 0.99  # on the grid, but no longer the other side's rounding, and below it
    d = precision_rounding(ctx(o, x))
    assert (d.evidence["side"], d.evidence["decimals"], d.evidence["exact"], d.confidence) == ("B", 2, False, 0.75)
    below = O * 0.9  # scale 0.9: 10^-2 is coarser than 1% of it
    d = precision_rounding(ctx(below, np.round(below, 2)))
    assert (d.evidence["decimals"], d.evidence["exact"]) == (3, False)


def test_the_finest_and_coarsest_grids_looked_at():
    big = O * 300.0  # integers are a grid when the scale is 100 or more
    d = precision_rounding(ctx(big, np.round(big)))
    assert (d.evidence["decimals"], d.evidence["exact"]) == (0, True)
    tiny = O * 1e-13
    assert precision_rounding(ctx(tiny, np.round(tiny, 15))).evidence["decimals"] == 15
    assert precision_rounding(ctx(tiny, np.round(tiny, 16))) is None  # 15 decimals at most
    milli = O * 1e-3  # the finest grid is 1e3 ulps of the scale, not of 1 / scale
    assert precision_rounding(ctx(milli, np.round(milli, 14))).evidence["decimals"] == 14
    for k, found in ((2.0, True), (4.5, True), (4.51, False)):  # 10^-12 against 1e3 ulps of 2, 4.5 and 4.51
        o = O * k
        d = precision_rounding(ctx(o, np.round(o, 12)))
        assert (d is not None and d.evidence["decimals"] == 12) is found


def test_a_side_with_one_nonzero_value_is_skipped_not_the_end():
    """Side A (one nonzero) is not looked at; side B, on the 10^-8 grid within a step of it, still is."""
    a = np.array([0.3000000012, 0.0, 0.0, 0.0])
    b = np.array([0.3, 1e-8, 0.0, 0.0])
    d = precision_rounding(ctx(a, b))
    assert (d.evidence["side"], d.evidence["decimals"], d.evidence["exact"], d.confidence) == ("B", 8, False, 0.75)


def test_both_sides_on_the_grid_is_not_rounding():
    a, b = np.round(O, 4), np.round(O, 4)
    b[1, 1] += 1e-4
    b = np.round(b, 4)
    assert precision_rounding(ctx(a, b)) is None


def test_precision_rounding_conditions():
    x = np.round(O, 8)
    assert precision_rounding(ctx(O[0, :3], x[0, :3])) is None  # fewer than 4 elements
    assert precision_rounding(ctx(O[:, :2], x[:, :2])).evidence["size"] == 4
    assert precision_rounding(ctx(O, x.T)) is None
    assert precision_rounding(ctx(O, O.copy())) is None
    o = O.copy()
    o[1, 3] = np.nan
    assert precision_rounding(ctx(o, x)) is None and precision_rounding(ctx(x, o)) is None
    assert precision_rounding(ctx(np.zeros(8), np.zeros(8) + 0.0)) is None
    # two nonzero rounded values are enough, one is not
    o = np.array([0.30000000123, 4e-9, 3e-9, 0.70000000456])
    d = precision_rounding(ctx(o, np.round(o, 8)))
    assert (d.evidence["side"], d.evidence["decimals"], d.evidence["changed"]) == ("B", 3, 4)  # 0.3, 0, 0, 0.7
    o[3] = 2e-9
    assert precision_rounding(ctx(o, np.round(o, 8))) is None


# ----------------------------------------------------------------------------------------------- dtype-float32


def f32_exact(x):
    return np.asarray(x, np.float32).astype(np.float64)


def test_float32_against_float64_by_values():
    b = O.astype(np.float32)
    err = float(np.abs(O - f32_exact(O)).max())  # the scale is 1
    d = dtype_float32(ctx(O, b, "L1.z"))
    assert (d.code, d.confidence) == ("dtype-float32", 0.9)
    assert d.evidence == {"side": "B", "max_rel_err": err, "float32_exact": True, "header_dtype": False,
                          "dtype_mix": None}
    assert d.explanation == (
        f"Side B's L1.z is exactly representable in float32 (every value survives a float32 round trip) while A's "
        f"is not, and they differ by at most {fmt(err)} of the tensor's scale: float32 rounding (no header says so). "
        f"Typical causes: a float32 run compared with a float64 one, or one layer computed in float32 (an astype, a "
        f"float32 constant, a GPU matmul) inside a float64 run. Fix: use one dtype throughout, or compare with a "
        f"float32 tolerance.")
    d = dtype_float32(ctx(f32_exact(O), O, "L1.z"))  # float64 arrays holding float32 values count too
    assert (d.confidence, d.evidence["side"]) == (0.9, "A")


def test_float32_header_and_variant_raise_the_confidence():
    b = O.astype(np.float32)
    d = dtype_float32(ctx(O, b, "L1.z", {"dtype": "float64"}, {"dtype": "float32", "impl": "f32"}))
    assert (d.confidence, d.evidence["header_dtype"]) == (0.95, True)
    assert "float32 rounding (its trace header says float32). Typical" in d.explanation
    assert d.explanation.startswith("Side B (f32)'s L1.z is exactly")
    for ma, mb in (({}, {"dtype": "float32"}), ({"dtype": "float32"}, {"dtype": "float32"})):
        d = dtype_float32(ctx(O, b, "L1.z", ma, mb))
        assert (d.confidence, d.evidence["header_dtype"]) == (0.9, False)
    mix = {"variant": {"dtype_mix": "L1"}}
    d = dtype_float32(ctx(O, b, "L1.z", {}, mix))
    assert (d.confidence, d.evidence["dtype_mix"], d.evidence["header_dtype"]) == (0.95, "L1", False)
    assert "float32 rounding (its header's variant computes L1 in float32)." in d.explanation
    d = dtype_float32(ctx(O, b, "L2.z", {}, mix))  # the variant names another layer
    assert (d.confidence, d.evidence["dtype_mix"]) == (0.9, None)
    d = dtype_float32(ctx(O, b, "L12.z", {}, mix))  # "L1" is not a prefix of L12's layer
    assert (d.confidence, d.evidence["dtype_mix"]) == (0.9, None)
    for variant in ("L1", None, {"dtype_mix": None}, {}):
        assert dtype_float32(ctx(O, b, "L1.z", {}, {"variant": variant})).confidence == 0.9
    # the header and variant of the float32 side, not of the other
    assert dtype_float32(ctx(O, b, "L1.z", mix | {"dtype": "float32"}, {"dtype": "float64"})).confidence == 0.9


def test_dtype_float32_error_range():
    a = f32_exact(O)
    assert dtype_float32(ctx(a, O + 0.0)).evidence["max_rel_err"] == float(np.abs(a - O).max())
    tiny = a.copy()
    tiny[0, 0] += 5e-11  # only 5e-11 of the scale away (and not float32-exact)
    assert dtype_float32(ctx(a, tiny)) is None
    near = a.copy()
    near[0, 0] += 2e-10
    assert dtype_float32(ctx(a, near)).evidence["side"] == "A"
    for off, found in ((9e-4, True), (1.1e-3, False)):
        far = O.copy()
        far[0, 0] += off
        assert (dtype_float32(ctx(a, far)) is not None) is found


def test_dtype_float32_error_range_includes_both_ends():
    """Errors of exactly 1e-10 and 1e-3 of the scale (1.0) are inside the range (values on no decimal grid)."""
    a = np.array([1.0, 0.0, 2.0**-20, 3 * 2.0**-21])
    for off in (1e-10, 1e-3):
        b = a.copy()
        b[1] = off
        d = dtype_float32(ctx(a, b))
        assert (d.evidence["side"], d.evidence["max_rel_err"]) == ("A", off)


def test_dtype_float32_needs_exactly_one_float32_exact_side():
    a = f32_exact(O)
    assert dtype_float32(ctx(a, f32_exact(O * (1 + 1e-5)))) is None  # both float32-exact
    assert dtype_float32(ctx(O, O * (1 + 1e-5))) is None  # neither
    nan_a = a.copy()
    nan_a[0, 1] = np.nan
    d = dtype_float32(ctx(nan_a, O))  # the nan is left out of the round trip
    assert d.evidence["side"] == "A"
    assert dtype_float32(ctx(a, O.T)) is None and dtype_float32(ctx(a, a.copy())) is None


def test_rounded_values_that_are_float32_exact_are_precision_rounding():
    """Quarters are float32-exact and on the 10^-2 grid: the rounding to 2 decimals explains them, not float32."""
    a = np.array([0.25, -0.5, 0.75, 1.0, -0.25, 0.5])
    b = a + np.array([3e-5, -2e-5, 1e-5, 0.0, 4e-5, -1e-5]) * np.pi  # on no decimal grid
    d = precision_rounding(ctx(a, b))
    assert (d.evidence["side"], d.evidence["decimals"], d.evidence["exact"]) == ("A", 2, True)
    assert dtype_float32(ctx(a, b)) is None
    assert dtype_float32(ctx(a + 2.0**-20, b)).evidence["side"] == "A"  # off the grid: float32 rounding again


# ------------------------------------------------------------------------------------------------------- drift


def decades(*logs, start=0):
    return tuple((start + k, 10.0 ** v) for k, v in enumerate(logs))


def test_drift_on_a_clean_geometric_trend():
    d = drift(ctx(O, O * 1.1, "L1.z", history=decades(-12, -11, -10, -9), agree=False))
    assert (d.code, d.confidence) == ("drift", 0.7)
    ev = d.evidence
    assert (ev["first_step"], ev["last_step"], ev["points"], ev["inputs_agree"]) == (0, 3, 4, False)
    assert (ev["first_error"], ev["last_error"], ev["max_error"]) == (1e-12, 1e-9, 10.0 ** -9)
    assert ev["growth_decades"] == 3.0 and ev["largest_jump_decades"] == 1.0
    assert ev["growth_per_step"] == pytest.approx(10.0, rel=1e-12) and ev["r2"] == pytest.approx(1.0, abs=1e-12)
    assert d.explanation == (
        f"No local cause fits L1.z: the worst relative error per step started at rounding level (1e-12 at step 0) "
        f"and grew to 1e-09 by step 3 (about ×{fmt(ev['growth_per_step'])} per step, never more than ×10 in one "
        f"step; R² {fmt(ev['r2'])} for a geometric trend); its inputs already disagree. That is rounding "
        f"(summation order, fused multiply-add, libm) amplified by training, not a bug in this tensor. Fix: nothing "
        f"to fix; compare with a tolerance that grows with the step, or fewer steps.")
    for agree in (True, None):
        d = drift(ctx(O, O * 1.1, "L1.z", history=decades(-12, -11, -10, -9), agree=agree))
        assert d.confidence == 0.6 and "disagree" not in d.explanation


def test_drift_text_with_a_half_decade_per_step_from_step_5():
    d = drift(ctx(O, O, "L2.W", history=decades(-12, -11.5, -11, -10.5, -10, start=5), agree=True))
    ev = d.evidence
    assert (ev["first_step"], ev["last_step"], d.confidence) == (5, 9, 0.6)
    assert ev["growth_per_step"] == pytest.approx(10 ** 0.5, rel=1e-12)
    assert ev["largest_jump_decades"] == pytest.approx(0.5, rel=1e-12)
    assert d.explanation == (
        f"No local cause fits L2.W: the worst relative error per step started at rounding level (1e-12 at step 5) "
        f"and grew to 1e-10 by step 9 (about ×3.16228 per step, never more than ×3.16228 in one step; R² 1 for a "
        f"geometric trend). That is rounding (summation order, fused multiply-add, libm) amplified by training, not "
        f"a bug in this tensor. Fix: nothing to fix; compare with a tolerance that grows with the step, or fewer "
        f"steps.")
    d = drift(ctx(O, O, history=decades(-12, -11.5, -11)))  # a short trend still fits (its spread is under 1)
    assert d.evidence["r2"] == pytest.approx(1.0, abs=1e-12) and d.confidence == 0.6


def test_drift_r2_from_the_running_maximum():
    """The envelope (running maximum) is fitted, not the raw errors; a bent trend scores 0.5."""
    logs = [-12.0, -11.9, -11.8, -10.4, -10.3, -10.2]
    d = drift(ctx(O, O, history=decades(*logs)))
    steps = np.arange(6.0)
    r2 = float(np.corrcoef(steps, logs)[0, 1] ** 2)
    assert r2 < 0.9 and d.evidence["r2"] == pytest.approx(r2, rel=1e-9) and d.confidence == 0.5
    dip = decades(-12, -11, -13, -10, -9)  # the dip at step 2 is below the envelope, which stays at -11
    d = drift(ctx(O, O, history=dip))
    r2 = float(np.corrcoef(np.arange(5.0), [-12, -11, -11, -10, -9])[0, 1] ** 2)
    assert d.evidence["r2"] == pytest.approx(r2, rel=1e-9) and r2 >= 0.9 and d.confidence == 0.6
    assert d.evidence["growth_decades"] == 3.0 and d.evidence["largest_jump_decades"] == 1.0
    assert d.evidence["growth_per_step"] == pytest.approx(10.0 ** 0.75, rel=1e-12)


def test_drift_floor_in_each_dtype():
    assert drift(ctx(O, O, history=decades(-9, -8, -7))).evidence["first_error"] == 1e-9
    assert drift(ctx(O, O, history=decades(-8.9, -7.9, -6.9))) is None  # starts above float64 rounding
    f32 = drift(ctx(O.astype(np.float32), O, history=decades(-5, -4, -3)))
    assert f32.evidence["first_error"] == 1e-5
    assert drift(ctx(O, O.astype(np.float32), history=decades(-4, -3, -2))) is not None
    assert drift(ctx(O, O, history=decades(-3.9, -2.9, -1.9), meta_a={"dtype": "float32"})) is None
    assert drift(ctx(O, O, history=decades(-4, -3, -2), meta_b={"dtype": "float32"})) is not None
    assert drift(ctx(O, O, history=decades(-5, -4, -3))) is None


def test_drift_rules_on_the_history():
    ok = decades(-12, -11, -10, -9)
    assert drift(ctx(O, O, history=ok)) is not None
    assert drift(ctx(O, O, history=ok + ((4, float("nan")),))) is None
    assert drift(ctx(O, O, history=ok + ((4, float("inf")),))) is None
    assert drift(ctx(O, O, history=((0, 0.0), (1, 0.0)) + decades(-12, -11, -10, start=2))).evidence[
        "first_step"] == 2  # exact steps are left out
    assert drift(ctx(O, O, history=((0, 0.0),) + decades(-12, -11, start=1))) is None  # two points only
    assert drift(ctx(O, O, history=decades(-12, -11.6, -11.05))) is None  # grew 0.95 decades: less than 1
    assert drift(ctx(O, O, history=decades(-12, -11.5, -11.0))) is not None  # exactly 1
    assert drift(ctx(O, O, history=decades(-12, -11.8, -10.2))) is None  # a 1.6-decade jump
    assert drift(ctx(O, O, history=decades(-13, -11.5, -11.3))).evidence["largest_jump_decades"] == 1.5  # at most 1.5
    assert drift(ctx(O, O, history=decades(-12, -11.8, -10.4))) is not None  # 1.4
    assert drift(ctx(O, O, history=decades(-12, -12, -12, -10.6, -10.6))) is None  # one rise only
    assert drift(ctx(O, O, history=decades(-12, -11.95, -10.6))) is None  # the second rise is under 0.1
    assert drift(ctx(O, O, history=decades(-12, -11.85, -10.6))) is not None
    assert drift(ctx(O, O, history=((3, 1e-12), (3, 1e-11), (3, 1e-10)))) is None  # one step: no trend
    d = drift(ctx(O, O, history=decades(-12, -11, -12.5, -10)))  # a later error below the first
    assert (d.evidence["growth_decades"], d.evidence["largest_jump_decades"]) == (2.0, 1.0)

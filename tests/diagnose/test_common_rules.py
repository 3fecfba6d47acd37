"""memstate.diagnose.common, the helpers every diagnoser stands on, on small hand-made arrays: each closeness test
at its exact boundary, nan and inf beside finite values, float32 and float64 sides, traces with and without
headers, and the cross-step lookups (found by mutation testing, docs/testing.md). Quick: no diagnoser runs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from memstate.diagnose import common as c
from memstate.diagnose.context import CODES, Diagnosis, DivergenceContext

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

NAN, INF = math.nan, math.inf


def ctx(a=(1.0,), b=(1.0,), ia=None, ib=None, meta_a=None, meta_b=None, **kw) -> DivergenceContext:
    return DivergenceContext(3, "t", np.asarray(a), np.asarray(b), ia or {}, ib or {}, ((3, 1.0),), None,
                             meta_a, meta_b, **kw)


# ------------------------------------------------------------------------------------ registration


def test_diagnoser_registers_its_code_and_silences_numpy():
    def divide(cx: DivergenceContext) -> Diagnosis | None:
        """Divides by zero."""
        value = np.float64(1.0) / np.float64(0.0)
        return c.make("drift", 0.5, "x", {"v": value, "name": cx.name})

    wrapped = c.diagnoser("drift")(divide)
    assert wrapped is not divide and wrapped.__name__ == "divide" and wrapped.__doc__ == "Divides by zero."
    assert c.entry(wrapped) == c.Entry("drift", wrapped, False)
    with np.errstate(all="raise"):
        assert wrapped(ctx()).evidence == {"v": "inf", "name": "t"}  # the context itself is passed on
        with pytest.raises(FloatingPointError):
            divide(ctx())
    fallback = c.diagnoser("unknown", fallback=True)(divide)
    assert c.entry(fallback) == c.Entry("unknown", fallback, True)
    assert c.Entry("x", divide).fallback is False


# ------------------------------------------------------------------------------------ sides


def test_sides_sees_each_side_as_the_suspect():
    a32 = np.array([1.5, 2.0], dtype=np.float32)
    b = np.array([1.0, 3.0])
    ia, ib = {"x": np.ones(2)}, {"x": np.zeros(2)}
    sa, sb = c.sides(ctx(a32, b, ia, ib, {"impl": "numpy"}, {"impl": "torch"}))
    assert (sa.label, sb.label) == ("A", "B")
    assert sa.x.dtype == np.float64 and sa.x.tolist() == [1.5, 2.0] and sa.o.tolist() == [1.0, 3.0]
    assert sb.x.tolist() == [1.0, 3.0] and sb.o.tolist() == [1.5, 2.0] and sb.o.dtype == np.float64
    assert sa.inputs is ia and sa.other_inputs is ib and sb.inputs is ib and sb.other_inputs is ia
    assert sa.meta == {"impl": "numpy"} and sa.other_meta == {"impl": "torch"}
    assert sb.meta == {"impl": "torch"} and sb.other_meta == {"impl": "numpy"}
    assert sa.raw_dtype == np.float32 and sb.raw_dtype == np.float64
    assert (c.who(sa), c.who(sb)) == ("side A (numpy)", "side B (torch)")
    assert (c.other_label(sa), c.other_label(sb)) == ("B", "A")
    na, nb = c.sides(ctx(a32, a32.astype(np.float64)))
    assert (na.meta, na.other_meta, nb.meta, nb.other_meta) == ({}, {}, {}, {})
    assert (c.who(na), c.who(nb)) == ("side A", "side B")
    assert nb.raw_dtype == np.float64 and na.raw_dtype == np.float32


def test_is_f32_from_arrays_or_headers_and_exact_rtol():
    f32, f64 = np.ones(2, np.float32), np.ones(2)
    assert c.is_f32(ctx(f32, f64)) and c.is_f32(ctx(f64, f32))
    assert c.is_f32(ctx(f64, f64, meta_a={"dtype": "float32"}))
    assert c.is_f32(ctx(f64, f64, meta_b={"dtype": "float32"}))
    assert c.is_f32(ctx(f64, f64, meta_a={"dtype": np.dtype(np.float32)}))
    assert not c.is_f32(ctx(f64, f64, meta_a={"dtype": "float64"}, meta_b={"dtype": "float64"}))
    assert not c.is_f32(ctx(f64, f64))
    assert c.exact_rtol(ctx(f32, f64)) == 1e-4
    assert c.exact_rtol(ctx(f64, f64)) == 1e-7
    assert c.exact_rtol(ctx(f64, f64, meta_b={"dtype": "float32"})) == 1e-4


# ------------------------------------------------------------------------------------ closeness


def test_scale_is_the_largest_finite_magnitude_over_all_arrays():
    assert c.scale(np.array([0.25, -0.5, NAN, INF]), np.array([0.125, -INF])) == 0.5
    assert c.scale(np.array([0.25]), np.array([-0.75, 0.5])) == 0.75
    assert c.scale(np.array([-3.0, 2.0]), np.array([1.0])) == 3.0
    assert c.scale(np.array([NAN, INF])) == 0.0
    assert c.scale(np.array([])) == 0.0
    assert c.scale() == 0.0
    assert c.scale([0.5, NAN]) == 0.5


def test_same_is_bitwise_with_nan_equal_to_nan():
    assert c.same(np.array([1.0, NAN]), np.array([1.0, NAN]))
    assert c.same(np.array([1.0], np.float32), np.array([1.0]))
    assert not c.same(np.array([1.0, 2.0]), np.array([1.0, 2.0 + 2 ** -51]))
    assert not c.same(np.array([1.0, NAN]), np.array([1.0, 1.0]))
    assert not c.same(np.array([1.0, 1.0]), np.array([[1.0, 1.0]]))
    assert not c.same(np.ones(2), np.ones(3))


def test_same_pattern_places_of_nan_and_signed_inf():
    x = np.array([1.0, NAN, INF, -INF])
    assert c.same_pattern(x, np.array([5.0, NAN, INF, -INF]))
    assert not c.same_pattern(x, np.array([1.0, 1.0, INF, -INF]))
    assert not c.same_pattern(x, np.array([NAN, NAN, INF, -INF]))
    assert not c.same_pattern(x, np.array([1.0, NAN, -INF, -INF]))
    assert not c.same_pattern(x, np.array([1.0, NAN, INF, 2.0]))
    assert not c.same_pattern(x, np.array([INF, NAN, INF, -INF]))
    assert not c.same_pattern(np.ones(2), np.ones((1, 2)))
    assert not c.same_pattern(np.ones(2), np.ones((2, 1)))


def test_close_at_the_boundary_of_rtol_and_atol():
    x, y = np.array([4.0, 0.0]), np.array([4.0, 1.0])  # largest difference 1, scale 4
    assert c.close(x, y, 0.25) and not c.close(x, y, 0.2)
    assert c.close(x, y, 0.0, 1.0) and not c.close(x, y, 0.0, 0.875)
    assert c.close(x, y, 0.125, 0.5) and not c.close(x, y, 0.125, 0.4375)
    assert c.close(x, y, 0.25, 0.0) and c.close(y, x, 0.25)
    assert c.close(np.array([-4.0, 0.0]), np.array([-4.0, -1.0]), 0.25)
    assert not c.close(np.array([-4.0, 0.0]), np.array([-4.0, -1.0]), 0.2)
    # the scale is the pair's: y's 8 makes 2 of difference fit in 0.25
    assert c.close(np.array([1.0, 6.0]), np.array([1.0, 8.0]), 0.25)
    assert not c.close(np.array([1.0, 6.0]), np.array([1.0, 8.0]), 0.24)
    assert c.close(np.array([1.0, 8.0]), np.array([1.0, 6.0]), 0.25)  # ... and x's 8 the same way


def test_close_needs_the_same_nonfinite_pattern_and_ignores_the_nonfinite_values():
    x = np.array([NAN, 4.0, INF])
    assert c.close(x, np.array([NAN, 4.0, INF]), 0.0)
    assert c.close(x, np.array([NAN, 5.0, INF]), 0.25) and not c.close(x, np.array([NAN, 5.0, INF]), 0.1)
    assert not c.close(x, np.array([1.0, 4.0, INF]), 1.0, 10.0)
    assert not c.close(np.ones(2), np.ones(3), 1.0, 10.0)
    assert c.close(np.array([NAN, INF]), np.array([NAN, INF]), 0.0)
    assert c.close(np.array([], np.float32), np.array([]), 0.0)
    assert c.close([1.0, 2.0], [1.0, 2.0], 0.0)


def test_close_each_is_relative_to_each_element():
    x, y = np.array([1e-20, 8.0]), np.array([0.0, 8.0])
    assert not c.close_each(x, y, 0.5, 0.0)  # 1e-20 against 0 is 100% off, however small
    assert c.close(x, y, 1e-9)
    assert c.close_each(x, y, 1.0, 0.0) and c.close_each(y, x, 1.0, 0.0)
    assert c.close_each(x, y, 0.0, 1e-20) and not c.close_each(x, y, 0.0, 5e-21)
    p, q = np.array([2.0, 8.0]), np.array([1.5, 8.0])  # 0.5 off, magnitude 2
    assert c.close_each(p, q, 0.25, 0.0) and c.close_each(q, p, 0.25, 0.0) and not c.close_each(p, q, 0.2, 0.0)
    assert c.close_each(p, q, 0.125, 0.25) and not c.close_each(p, q, 0.125, 0.2)
    assert c.close_each(-p, -q, 0.25, 0.0) and not c.close_each(-p, -q, 0.2, 0.0)
    assert c.close_each(np.array([NAN, INF, 2.0]), np.array([NAN, INF, 1.5]), 0.25, 0.0)
    assert not c.close_each(np.array([NAN, 2.0]), np.array([2.0, 2.0]), 1.0, 1.0)
    assert not c.close_each(np.ones(2), np.ones(3), 1.0, 1.0)


def test_rel_err_over_the_finite_pairs():
    assert c.rel_err(np.array([4.0, 1.0]), np.array([3.0, 1.0])) == 0.25
    assert c.rel_err(np.array([3.0, 1.0]), np.array([4.0, 1.0])) == 0.25
    assert c.rel_err(np.array([0.5, 0.25]), np.array([0.5, 0.125])) == 0.25  # a scale below 1
    assert c.rel_err(np.array([-4.0, 1.0]), np.array([-3.0, 2.0])) == 0.25
    assert c.rel_err(np.array([2.0, NAN, 1.0]), np.array([2.0, 100.0, 1.5])) == 0.25
    assert c.rel_err(np.array([2.0, 100.0, 1.0]), np.array([2.0, INF, 1.5])) == 0.25
    assert c.rel_err(np.array([NAN, INF]), np.array([1.0, 2.0])) == 0.0
    assert c.rel_err(np.zeros(3), np.zeros(3)) == 0.0
    assert c.rel_err(np.ones(2), np.ones(3)) == math.inf
    assert c.rel_err(np.array([0.5]), np.array([0.5])) == 0.0


def test_all_finite():
    assert c.all_finite(np.array([1.0, -2.0])) and c.all_finite(np.array([]))
    assert not c.all_finite(np.array([1.0, NAN])) and not c.all_finite(np.array([-INF]))


# ------------------------------------------------------------------------------------ names in the trace


def test_last_layer_from_the_header_or_the_inputs():
    ins = {"x": 1, "L1.z": 1, "L2.z": 1, "L1.a": 1}
    assert c.last_layer(ctx(meta_a={"layers": [3, 4, 2]}), ins) == 2
    assert c.last_layer(ctx(meta_b={"layers": [3, 4, 2]}), ins) == 2
    assert c.last_layer(ctx(meta_b={"layers": [3, 4]}), ins) == 1  # the header, not the highest z
    assert c.last_layer(ctx(meta_a={"layers": [3, 4]}, meta_b={"layers": [3, 4, 5, 2]}), ins) == 1
    # the header's last layer not recorded yet: the highest z in the inputs
    assert c.last_layer(ctx(meta_a={"layers": [3, 4, 4, 2]}), ins) == 2
    assert c.last_layer(ctx(), {"L3.z": 1, "L12.z": 1, "L12.a": 1, "L7.zz": 1}) == 12
    assert c.last_layer(ctx(), {"x": 1, "L1.a": 1, "L1.dz": 1}) is None
    assert c.last_layer(ctx(meta_a={"layers": []}), {"L0.z": 1}) == 0


def test_logits_only_a_finite_matrix_of_the_right_shape():
    z = np.arange(6.0, dtype=np.float32).reshape(2, 3)
    got = c.logits(ctx(), {"L1.z": np.zeros((2, 3)), "L2.z": z})
    assert got.dtype == np.float64 and got.tolist() == z.tolist()
    assert c.logits(ctx(), {"L2.z": z}, like=np.zeros((2, 3))).tolist() == z.tolist()
    assert c.logits(ctx(), {"L2.z": z}, like=np.zeros((3, 2))) is None
    assert c.logits(ctx(), {"L2.z": z.ravel()}) is None
    assert c.logits(ctx(), {"L2.z": np.where(z > 4, np.inf, z)}) is None
    assert c.logits(ctx(), {"x": z}) is None


def test_labels_only_a_matrix_of_the_right_shape():
    y = np.eye(3, dtype=np.float32)[[0, 2]]
    got = c.labels({"y": y})
    assert got.dtype == np.float64 and got.tolist() == y.tolist()
    assert c.labels({"y": y}, like=np.zeros((2, 3))).tolist() == y.tolist()
    assert c.labels({"y": y}, like=np.zeros((3, 2))) is None
    assert c.labels({"y": np.array([0.0, 2.0])}) is None
    assert c.labels({"x": y}) is None


def test_batch_size_from_y_then_x_then_the_headers():
    assert c.batch_size(ctx(), {"x": np.zeros((5, 2)), "y": np.zeros((4, 3))}) == 4
    assert c.batch_size(ctx(), {"x": np.zeros((5, 2)), "y": np.float64(1.0)}) == 5
    assert c.batch_size(ctx(), {"x": np.zeros(7)}) == 7
    assert c.batch_size(ctx(meta_a={"batch_size": 8}, meta_b={"batch_size": 9}), {"x": np.float64(2.0)}) == 8
    assert c.batch_size(ctx(meta_a={"batch_size": "8"}, meta_b={"batch_size": 9}), {}) == 9
    assert c.batch_size(ctx(meta_b={"batch_size": 6}), {}) == 6
    assert c.batch_size(ctx(meta_a={"batch_size": 6.0}), {}) is None
    assert c.batch_size(ctx(), {}) is None


# ------------------------------------------------------------------------------------ fits and reporting


def test_fit_factor():
    x = np.array([1.0, 2.0, -1.0])
    c_, resid = c.fit_factor(x, -2.5 * x)
    assert c_ == -2.5 and resid == 0.0
    c_, resid = c.fit_factor(np.array([1.0, 0.0]), np.array([3.0, 4.0]))
    assert c_ == 3.0 and resid == 0.8
    c_, resid = c.fit_factor(np.array([[2.0], [0.0]]), np.array([3.0, 4.0]))
    assert c_ == 1.5 and resid == 0.8
    assert c.fit_factor(np.ones(2), np.ones(3)) is None
    assert c.fit_factor(np.array([1.0, NAN]), np.ones(2)) is None
    assert c.fit_factor(np.ones(2), np.array([1.0, INF])) is None
    assert c.fit_factor(np.zeros(2), np.ones(2)) is None
    assert c.fit_factor(np.ones(2), np.zeros(2)) is None


def test_first_positions():
    mask = np.zeros((3, 4), bool)
    mask[0, 1] = mask[1, 0] = mask[1, 3] = mask[2, 0] = mask[2, 1] = mask[2, 3] = True
    assert c.first_positions(mask) == [[0, 1], [1, 0], [1, 3], [2, 0], [2, 1]]
    assert c.first_positions(mask, 2) == [[0, 1], [1, 0]]
    assert c.first_positions(np.zeros(3, bool)) == []
    assert type(c.first_positions(mask)[0][0]) is int


def test_make_clamps_rounds_capitalises_and_checks_the_code():
    d = c.make("scaled", 0.87654, "side B is scaled", {"f": np.float32(0.5), "n": np.int64(2)})
    assert d == Diagnosis("scaled", 0.877, "Side B is scaled", {"f": 0.5, "n": 2})
    assert type(d.evidence["n"]) is int
    assert c.make("drift", 1.7, "x", {}).confidence == 1.0
    assert c.make("drift", -0.2, "", {}) == Diagnosis("drift", 0.0, "", {})
    assert c.make("drift", 0.5, "Already", {}).explanation == "Already"
    with pytest.raises(AssertionError, match="no-such-code"):
        c.make("no-such-code", 0.5, "x", {})
    assert all(c.make(code, 0.5, "x", {}).code == code for code in CODES)


def test_fmt_six_significant_digits():
    assert c.fmt(1 / 3) == "0.333333" and c.fmt(1234567.0) == "1.23457e+06" and c.fmt(2.0) == "2"


def test_constants():
    assert c.F32_EPS == 2.0 ** -23 and c.F64_EPS == 2.0 ** -52
    assert c.PARAM.match("L12.W").groups() == ("12", "W") and not c.PARAM.match("L1.Wx")
    assert c.GRAD.match("L2.da").groups() == ("2", "a") and not c.GRAD.match("L2.W")


# ------------------------------------------------------------------------------------ across steps


def test_step_before_and_in_force_of_each_side():
    sa, sb = {"x": 1}, {"x": 2}
    ia, ib = {"i": 1}, {"i": 2}
    full = ctx(ia=ia, ib=ib, step_a=sa, step_b=sb)
    assert c.step_of(full, "A") is sa and c.step_of(full, "B") is sb
    side_a, side_b = c.sides(full)
    assert c.step_of(full, side_a) is sa and c.step_of(full, side_b) is sb
    bare = ctx(ia=ia, ib=ib)
    assert c.step_of(bare, "A") is ia and c.step_of(bare, "B") is ib
    assert c.step_of(ctx(ia=ia, ib=ib, step_a=sa), "B") is ib
    assert c.step_of(ctx(ia=ia, ib=ib, step_b=sb), "A") is ia
    pa, pb = {"L1.W": 1}, {"L1.W": 2}
    before = ctx(before_a=[pa, {"old": 1}], before_b=(pb,))
    assert c.before_of(before, "A") == (pa, {"old": 1}) and c.before_of(before, "B") == (pb,)
    assert c.before_of(bare, "A") == () and c.before_of(bare, "B") == ()
    assert c.in_force_of(before, "A") is pa and c.in_force_of(before, "B") is pb
    fa, fb = {"L1.W": 3}, {"L1.W": 4}
    given = ctx(before_a=(pa,), before_b=(pb,), in_force_a=fa, in_force_b=fb)
    assert c.in_force_of(given, "A") is fa and c.in_force_of(given, "B") is fb
    assert c.in_force_of(ctx(before_a=(pa,), in_force_b=fb), "A") is pa
    assert c.in_force_of(ctx(before_b=(pb,), in_force_a=fa), "B") is pb
    assert c.in_force_of(bare, "A") is None and c.in_force_of(bare, "B") is None


def test_own_gradient_from_the_sides_own_tensors():
    x = np.array([[1.0, 2.0], [3.0, 4.0], [0.5, -1.0]])
    dz1 = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0], [2.0, 2.0, 0.0]])
    a1 = np.array([[1.0, -1.0, 0.0], [2.0, 0.0, 1.0], [0.0, 1.0, 3.0]])
    dz2 = np.array([[1.0, 2.0], [-1.0, 0.5], [0.0, 4.0]])
    ins = {"x": x, "L1.dz": dz1, "L1.a": a1, "L2.dz": dz2.astype(np.float32)}
    assert c.own_gradient(ins, "L1.dW").tolist() == (x.T @ dz1).tolist()
    assert c.own_gradient(ins, "L2.dW").tolist() == (a1.T @ dz2).tolist()
    assert c.own_gradient(ins, "L2.db").tolist() == [0.0, 6.5]
    assert c.own_gradient(ins, "L1.db").tolist() == [3.0, 3.0, 1.0]
    for name in ("L1.dz", "L1.da", "L1.W", "probs", "L3.dW", "L3.db"):
        assert c.own_gradient(ins, name) is None
    assert c.own_gradient(dict(ins, **{"L2.dz": dz2.ravel()}), "L2.db") is None
    assert c.own_gradient(dict(ins, **{"L1.a": a1[:2]}), "L2.dW") is None
    assert c.own_gradient(dict(ins, **{"L1.a": a1.ravel()}), "L2.dW") is None
    assert c.own_gradient(dict(ins, **{"L1.a": a1[:, 0]}), "L2.dW") is None  # a vector as long as the batch
    assert c.own_gradient({"L2.dz": dz2, "x": x}, "L2.dW") is None
    assert c.own_gradient({"L1.dz": dz1, "L1.a": a1}, "L1.dW") is None


def test_lstsq_fit():
    g, h = np.array([1.0, 0.0, 2.0]), np.array([0.0, 1.0, 1.0])
    coef, resid = c.lstsq_fit(2.0 * g - 3.0 * h, g, h)
    assert np.allclose(coef, [2.0, -3.0], rtol=0, atol=1e-12) and resid < 1e-15
    coef, resid = c.lstsq_fit(np.array([3.0, 4.0]), np.array([1.0, 0.0]))
    assert coef.tolist() == [3.0] and resid == 0.8
    coef, resid = c.lstsq_fit(np.array([[3.0], [4.0]]), np.array([2.0, 0.0]))
    assert coef.tolist() == [1.5] and resid == 0.8
    assert c.lstsq_fit(np.ones(3), np.ones(2)) is None
    assert c.lstsq_fit(np.ones(3), g, np.ones(2)) is None
    assert c.lstsq_fit(np.array([1.0, NAN, 1.0]), g) is None
    assert c.lstsq_fit(np.ones(3), g, np.array([1.0, INF, 0.0])) is None
    assert c.lstsq_fit(np.zeros(3), g) is None
    assert c.lstsq_fit(np.ones(3), g, np.zeros(3)) is None
    assert c.lstsq_fit(np.ones(3), np.zeros(3), g) is None

"""memstate.check.recompute rule by rule, on the independent conformance trace (tests/conformance/small.*): each
rule re-derives its recorded tensor with the scale its tolerance rests on, and each inference helper decides
at its thresholds (found by mutation testing, docs/testing.md)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from memstate.check import recompute as rc
from memstate.formats.params import read_params
from memstate.formats.trace import read_trace

CONFORMANCE = Path(__file__).resolve().parents[1] / "conformance"
STEPS = read_trace(CONFORMANCE / "small.memstate.jsonl")
PARAMS = read_params(CONFORMANCE / "small.params.json").tensors
SETTINGS = rc.Settings(n_layers=2, activation="relu", reduction="mean", lr=0.1)


def in_force(k: int) -> dict[str, np.ndarray]:
    """The parameters each step starts from: the params file, then the previous step's updated ones."""
    return PARAMS if k == 0 else {n: STEPS[k - 1].tensors[n] for n in PARAMS}


def test_every_rule_reproduces_the_conformance_trace():
    table = rc.rules(SETTINGS)
    assert sorted(table) == sorted(STEPS[0].names()[2:])  # every tensor but x and y has a rule
    for k, step in enumerate(STEPS):
        t, p = step.tensors, in_force(k)
        for name, rules in table.items():
            for rule in rules:
                value, scale = rule.fn(t, p)
                scale = rc.materialize(scale)
                assert value.shape == t[name].shape and scale.shape == np.shape(value), (k, name, rule.formula)
                err = float(np.max(np.abs(value - t[name])))
                assert err <= rc.rounding_bound(np.float64, rule.terms(t)) * float(np.max(scale)), (k, name)
                assert np.all(scale >= np.abs(value) * (1 - 1e-12)), (k, name)


def test_rule_formulas_inputs_and_terms():
    table = rc.rules(SETTINGS)
    t = STEPS[0].tensors
    described = {n: [(r.formula, r.inputs, r.params, r.terms(t), r.needs, r.invariant) for r in rs]
                 for n, rs in table.items()}
    assert described["L1.z"] == [("x @ L1.W + L1.b", ("x",), ("L1.W", "L1.b"), 197, (), None)]
    assert described["L2.z"] == [("L1.a @ L2.W + L2.b", ("L1.a",), ("L2.W", "L2.b"), 33, (), None)]
    assert described["L1.a"] == [("relu(L1.z)", ("L1.z",), (), 4, ("activation",), None)]
    assert described["probs"] == [("softmax(L2.z), each row's max subtracted", ("L2.z",), (), 14, (), None)]
    assert described["loss"] == [
        ("mean cross-entropy of log_softmax(L2.z) against y", ("L2.z", "y"), (), 84, ("reduction",), None),
        ("mean cross-entropy of probs against y", ("probs", "y"), (), 84, ("reduction",), None)]
    assert described["L2.dz"] == [("(probs - y) / B", ("probs", "y"), (), 4, ("reduction",),
                                   "output-dz-is-probs-minus-y")]
    assert described["L2.dW"] == [("L1.a^T @ L2.dz", ("L1.a", "L2.dz"), (), 8, (), None)]
    assert described["L1.db"] == [("L1.dz summed over the batch", ("L1.dz",), (), 8, (), None)]
    assert described["L1.da"] == [("L2.dz @ L2.W^T", ("L2.dz",), ("L2.W",), 10, (), None)]
    assert described["L1.dz"] == [("L1.da * relu'(L1.z)", ("L1.da", "L1.z", "L1.a"), (), 4, ("activation",), None)]
    assert described["L2.b"] == [("L2.b in force - lr * L2.db", ("L2.db",), ("L2.b",), 4, ("lr",), None)]
    summed = rc.rules(rc.Settings(2, "sigmoid", "sum", 0.5))
    assert summed["L2.dz"][0].formula == "(probs - y)" and summed["loss"][0].formula.startswith("sum cross")


def test_scales_are_the_magnitudes_of_the_terms():
    t, p = STEPS[0].tensors, PARAMS
    table = rc.rules(SETTINGS)
    _, s = table["L1.z"][0].fn(t, p)
    s = rc.materialize(s)
    np.testing.assert_array_equal(s, np.abs(t["x"]) @ np.abs(p["L1.W"]) + np.abs(p["L1.b"]))
    _, s = table["L2.dW"][0].fn(t, p)
    s = rc.materialize(s)
    np.testing.assert_array_equal(s, np.abs(t["L1.a"]).T @ np.abs(t["L2.dz"]))
    _, s = table["L1.db"][0].fn(t, p)
    s = rc.materialize(s)
    np.testing.assert_array_equal(s, np.abs(t["L1.dz"]).sum(axis=0))
    _, s = table["L1.da"][0].fn(t, p)
    s = rc.materialize(s)
    np.testing.assert_array_equal(s, np.abs(t["L2.dz"]) @ np.abs(p["L2.W"]).T)
    _, s = table["L1.W"][0].fn(t, p)
    s = rc.materialize(s)
    np.testing.assert_array_equal(s, np.abs(p["L1.W"]) + 0.1 * np.abs(t["L1.dW"]))
    z = t["L2.z"]
    v, s = table["probs"][0].fn(t, p)
    s = rc.materialize(s)
    np.testing.assert_array_equal(s, v * (1 + np.abs(z - z.max(axis=1, keepdims=True))))
    v, s = table["L2.dz"][0].fn(t, p)
    s = rc.materialize(s)
    pr = t["probs"]
    np.testing.assert_allclose(s, (pr * (1 + np.abs(z - z.max(axis=1, keepdims=True))) + t["y"]) / 8, rtol=1e-15)
    v, s = table["L1.a"][0].fn(t, p)
    s = rc.materialize(s)
    np.testing.assert_array_equal(s, np.abs(v))
    v, s = table["loss"][1].fn(t, p)
    s = rc.materialize(s)
    terms = np.where(t["y"] != 0, t["y"] * np.log(pr), 0.0)
    assert float(v) == pytest.approx(-terms.sum() / 8, rel=1e-15)
    # the terms' magnitude carries the reduction's 1/B, as the value does (was unscaled before the rework)
    assert float(s) == pytest.approx(abs(float(v)) + np.abs(terms).sum() / 8 + 1.0, rel=1e-15)
    v, s = table["loss"][0].fn(t, p)
    s = rc.materialize(s)
    expect = np.abs(t["y"]) * (np.abs(z) + np.abs(z).max(axis=1, keepdims=True) + np.log(10))
    assert float(s) == pytest.approx(abs(float(v)) + expect.sum() / 8, rel=1e-15)


def test_sigmoid_scale_adds_z_and_the_relu_kink_accepts_either_side():
    z = np.array([[-1.0, 0.0, 2.0]])
    t = {"L1.z": z, "L1.a": np.maximum(z, 0), "L1.da": np.array([[0.5, 0.25, -1.0]]),
         "L1.dz": np.array([[0.0, 0.25, -1.0]])}
    relu = rc.rules(rc.Settings(2, "relu", "mean", 0.1))
    v, s = relu["L1.dz"][0].fn(t, {})
    assert v.tolist() == [[0.0, 0.25, -1.0]] and s.tolist() == [[0.0, 0.25, 1.0]]  # at z = 0: dz = da accepted
    t0 = dict(t, **{"L1.dz": np.array([[0.0, 0.0, -1.0]])})
    assert relu["L1.dz"][0].fn(t0, {})[0].tolist() == [[0.0, 0.0, -1.0]]  # ... and 0 too
    sig = rc.rules(rc.Settings(2, "sigmoid", "mean", 0.1))
    a = 1 / (1 + np.exp(-z))
    v, s = sig["L1.a"][0].fn({"L1.z": z}, {})
    np.testing.assert_allclose(v, a, rtol=1e-15)
    np.testing.assert_allclose(s, np.abs(a) + np.abs(z), rtol=1e-15)
    ts = {"L1.z": z, "L1.a": a, "L1.da": t["L1.da"]}
    v, s = sig["L1.dz"][0].fn(ts, {})
    g = a * (1 - a)
    np.testing.assert_allclose(v, t["L1.da"] * g, rtol=1e-15)
    np.testing.assert_allclose(s, np.abs(t["L1.da"]) * (np.abs(g) + np.abs(a)), rtol=1e-15)


def test_missing_settings_and_finite_inputs():
    rule = rc.rules(rc.Settings(2))["L1.a"][0]
    assert rule.missing_settings(rc.Settings(2)) == ["activation"]
    assert rule.missing_settings(rc.Settings(2, activation="other")) == ["activation"]
    assert rule.missing_settings(SETTINGS) == []
    upd = rc.rules(SETTINGS)["L1.W"][0]
    assert upd.missing_settings(rc.Settings(2, "relu", "mean")) == ["lr"]
    t, p = dict(STEPS[0].tensors), dict(PARAMS)
    assert rc.inputs_finite(upd, t, p)
    p["L1.W"] = p["L1.W"].copy()
    p["L1.W"][0, 0] = np.inf
    assert not rc.inputs_finite(upd, t, p)
    t["L1.dW"] = t["L1.dW"].copy()
    t["L1.dW"][1, 1] = np.nan
    assert not rc.inputs_finite(upd, t, PARAMS)
    assert rc.dz_name(3) == "L3.dz"


def test_rounding_bound_and_layers():
    assert rc.rounding_bound(np.float64, 10) == 2 * 10 * 2.0 ** -52
    assert rc.rounding_bound(np.float32, 0) == 2 * 1 * 2.0 ** -23
    assert rc.rounding_bound(np.float16, 3) == 2 * 3 * 2.0 ** -23  # unknown dtypes: float32's eps
    assert rc.n_layers_of(["x", "L1.z", "L3.W", "L2.a", "L7.b"]) == 3
    assert rc.n_layers_of(["x", "L4.dz", "loss"]) == 4 and rc.n_layers_of(["x", "y", "L9.a"]) is None


def test_activation_error_and_inference():
    z = np.array([[-2.0, -0.5, 0.0, 1.5]])
    assert rc.activation_error("relu", z, np.maximum(z, 0)) == 0.0
    assert rc.activation_error("relu", z, np.maximum(z, 0) * 1.5) == pytest.approx(0.5 * 1.5 / 1.5)
    assert rc.activation_error("relu", z, np.array([[np.nan, 0, 0, 1.5]])) == math.inf
    assert rc.activation_error("relu", np.zeros((0, 3)), np.zeros((0, 3))) == 0.0
    assert rc.activation_error("shifted-relu", z, np.maximum(z, -1)) == 0.0
    t = {"L1.z": z, "L1.a": np.maximum(z, -1)}
    act, errors = rc.infer_activation(t, 2, np.dtype("float64"))
    assert act == "shifted-relu" and set(errors) == set(rc.ACTIVATIONS) and errors["shifted-relu"] == 0.0
    assert errors["relu"] == 1.0  # z = -0.5: relu 0, recorded -0.5, scale max(0, 0.5)
    assert rc.infer_activation({"L1.z": z, "L1.a": np.tanh(z)}, 2, np.dtype("float64"))[0] == "other"
    assert rc.infer_activation({"L1.z": z}, 2, np.dtype("float64")) == (None, {})
    near = np.maximum(z, 0) * (1 + 1e-6)  # float32-sized rounding: relu within float32's bound, not float64's
    assert rc.infer_activation({"L1.z": z, "L1.a": near}, 2, np.dtype("float32"))[0] == "relu"
    assert rc.infer_activation({"L1.z": z, "L1.a": near}, 2, np.dtype("float64"))[0] == "other"


MEAN8 = "0.125 * (probs - y) = 1/B, B = 8"


def test_reduction_inference_from_dz_and_from_the_loss():
    t = STEPS[0].tensors
    # every output-layer gradient recorded votes: dz against probs - y, dW against a^T (probs - y), db against
    # the batch sum of probs - y
    assert rc.infer_reduction(t, 2) == ("mean", f"L2.dz = {MEAN8}; L2.dW = {MEAN8}; L2.db = {MEAN8}", None)
    only_dz = {k: v for k, v in t.items() if k not in ("L2.dW", "L2.db")}
    only_dW = {k: v for k, v in t.items() if k not in ("L2.dz", "L2.db")}
    only_db = {k: v for k, v in t.items() if k not in ("L2.dz", "L2.dW")}
    assert rc.infer_reduction(only_dW, 2) == ("mean", f"L2.dW = {MEAN8}", None)
    assert rc.infer_reduction(only_db, 2) == ("mean", f"L2.db = {MEAN8}", None)
    summed = dict(only_dz, **{"L2.dz": t["L2.dz"] * 8})
    assert rc.infer_reduction(summed, 2) == ("sum", "L2.dz = 1 * (probs - y)", None)
    # one wrong gradient is outvoted by the two others; a tie goes to the first gradient (dz)
    outvoted = dict(t, **{"L2.dz": t["L2.dz"] * 8})
    assert rc.infer_reduction(outvoted, 2) == (
        "mean", f"L2.dz = 1 * (probs - y); L2.dW = {MEAN8}; L2.db = {MEAN8}", None)
    tie = {k: v for k, v in outvoted.items() if k != "L2.db"}
    assert rc.infer_reduction(tie, 2) == ("sum", f"L2.dz = 1 * (probs - y); L2.dW = {MEAN8}", None)
    odd = dict(only_dz, **{"L2.dz": t["L2.dz"] * 3})
    red, how, factor = rc.infer_reduction(odd, 2)
    assert (red, how) == (None, "L2.dz = 0.375 * (probs - y): neither 1/B (B = 8) nor 1")
    assert factor == pytest.approx(0.375, rel=1e-12)  # dz's own factor: checked as dz = c * (probs - y)
    odd_dW = dict(only_dW, **{"L2.dW": t["L2.dW"] * 3})  # no dz: no factor to check it with
    assert rc.infer_reduction(odd_dW, 2) == (None, "L2.dW = 0.375 * (probs - y): neither 1/B (B = 8) nor 1", None)
    all_odd = dict(t, **{n: t[n] * 3 for n in ("L2.dz", "L2.dW", "L2.db")})  # none votes: dz's text and factor
    red, how, factor = rc.infer_reduction(all_odd, 2)
    assert (red, how, factor) == (None, "L2.dz = 0.375 * (probs - y): neither 1/B (B = 8) nor 1",
                                  pytest.approx(0.375, rel=1e-12))
    no_grad = {k: v for k, v in t.items() if k not in ("L2.dz", "L2.dW", "L2.db")}
    red, how, factor = rc.infer_reduction(no_grad, 2)
    assert red == "mean" and how.startswith("loss = 0.125") and how.endswith("= 1/B, B = 8") and factor is None
    total = dict(no_grad, loss=np.asarray(float(t["loss"]) * 8))
    assert rc.infer_reduction(total, 2)[0] == "sum"
    assert rc.infer_reduction({"x": t["x"]}, 2) == (
        None, "neither the output layer's dz nor the loss could be compared with probs - y", None)
    one = {k: v[:1] for k, v in t.items() if k in ("probs", "y", "L2.dz")}
    one["L2.dz"] = one["probs"] - one["y"]
    assert rc.infer_reduction(one, 2) == (
        "mean", "L2.dz = 1 * (probs - y) (batch of 1: mean and sum agree)", None)


def test_reduction_ratio_thresholds():
    assert rc._reduction_from_ratio(0.125 * (1 + 9e-4), 8, "h")[0] == "mean"
    assert rc._reduction_from_ratio(0.125 * (1 + 2e-3), 8, "h")[0] is None
    assert rc._reduction_from_ratio(1 + 9e-4, 8, "h") == ("sum", "h")
    assert rc._reduction_from_ratio(1 + 2e-3, 8, "h")[0] is None


def test_learning_rate_fit_over_steps():
    fit = rc.LrFit()
    for k in (1,):
        for name in PARAMS:
            lr_t = fit.add(k, name, STEPS[0].tensors[name], STEPS[1].tensors[name], STEPS[1].tensors[f"{name[:3]}d{name[3]}"])
            assert lr_t == pytest.approx(0.1, rel=1e-12)
    assert fit.count == 4 and fit.lr == pytest.approx(0.1, rel=1e-13) and fit.lo <= 0.1 + 1e-12 <= fit.hi + 2e-12
    worst, at = fit.consistency()
    assert worst <= 1 and at is not None and at[0] == 1
    assert rc.nice_lr(fit.lr) == 0.1
    g = np.ones(3)
    assert fit.add(2, "zero", np.ones(3), np.ones(3), np.zeros(3)) is None  # no gradient: nothing to fit
    assert fit.add(2, "shape", np.ones(3), np.ones(2), g[:2]) is None
    assert fit.count == 4
    bad = rc.LrFit()
    bad.add(0, "a", np.ones(3), np.ones(3) - 0.1 * g, g)
    bad.add(1, "b", np.ones(3), np.ones(3) - 0.2 * g, g)
    # consensus, not least squares (which gave 0.15): two disagreeing fits, the earlier one's group wins
    assert bad.lr == pytest.approx(0.1, rel=1e-12) and (bad.lo, bad.hi) == pytest.approx((0.1, 0.2))
    worst, at = bad.consistency()
    assert worst > 1e6 and at == (1, "b")  # b is the odd one out
    bad.add(2, "c", np.ones(3), np.ones(3) - 0.2 * g, g)  # a second fit at 0.2: the larger group moves it
    assert bad.lr == pytest.approx(0.2, rel=1e-12) and bad.count == 3
    assert bad.consistency()[1] == (0, "a")
    assert rc.LrFit().lr is None and rc.LrFit().consistency() == (0.0, None)


def test_nice_lr_and_its_precision():
    assert rc.lr_precision("float64") == 100 * 2.0 ** -52
    assert rc.lr_precision(None) == 100 * 2.0 ** -52
    assert rc.lr_precision("float32") == 100 * 2.0 ** -23
    assert rc.nice_lr(0.09999999999999998) == 0.1
    assert rc.nice_lr(0.1 * (1 + 1e-9)) == 0.1000000001  # ten digits: the float64 fit knows them
    assert rc.nice_lr(0.1 * (1 + 1e-9), "float32") == 0.1
    assert rc.nice_lr(0.012345678) == 0.012345678


def test_layers_from_z_names_alone():
    assert rc.n_layers_of(["x", "L3.z", "L1.a", "L2.a"]) == 3


def test_activation_error_is_silent_on_overflow():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rc.activation_error("sigmoid", np.array([-1000.0, 0.0]), np.array([0.0, 0.5])) == 0.0


@pytest.mark.parametrize("dtype, eps", [(np.float64, 2.0 ** -52), (np.float32, 2.0 ** -23), (np.float16, 2.0 ** -23)])
def test_lr_fit_allowance_is_four_roundings_of_the_update(dtype, eps):
    old = np.array([1.0, 2.0, 4.0], dtype=dtype)
    grad = np.array([1.0, -2.0, 0.5], dtype=dtype)
    new = (old - dtype(0.25) * grad).astype(dtype)
    fit = rc.LrFit()
    lr_t = fit.add(3, "L1.b", old, new, grad)
    g, n = grad.astype(np.float64), new.astype(np.float64)
    assert lr_t == 0.25
    expected = 4 * eps * (float(np.linalg.norm(n)) + 0.25 * np.sqrt(g @ g)) / np.sqrt(g @ g)
    assert fit.fits == [rc.TensorFit(3, "L1.b", 0.25, pytest.approx(expected, rel=1e-12))]
    assert rc.lr_precision(dtype) == 100 * eps


def test_lr_fit_ignores_nonfinite_elements():
    fit = rc.LrFit()
    g = np.array([1.0, 2.0, 3.0, 4.0])
    old = np.array([1.0, 2.0, np.nan, 7.0])
    new = np.array([0.9, 1.8, 5.0, np.inf])
    assert fit.add(0, "w", old, new, g) == pytest.approx(0.1, rel=1e-12)
    assert fit.add(1, "w", np.array([1.0, 2.0, 3.0]), np.array([0.9, 1.8, 2.0]), np.array([1.0, 2.0, np.nan])) == \
        pytest.approx(0.1, rel=1e-12)


def test_lr_consistency_reports_the_first_of_equally_bad_fits():
    fit = rc.LrFit(fits=[rc.TensorFit(0, "a", 0.25, 1e-3), rc.TensorFit(1, "b", 0.75, 1e-3)])
    worst, at = fit.consistency(0.5)  # checked against a given rate: both 0.25 off, the first is reported
    assert at == (0, "a") and worst == 0.25 / (1e-3 + 0.5e-12)
    worst, at = fit.consistency()  # against the consensus: the earlier fit's group (0.25), b is 0.5 off
    assert at == (1, "b") and worst == 0.5 / (1e-3 + 0.25e-12)


def test_nice_lr_precision_is_relative_to_the_rate():
    assert rc.nice_lr(1000 * (1 + 1e-15)) == 1000.0
    assert rc.nice_lr(0.0) == 0.0


def test_activation_error_of_nan_on_both_sides_is_zero_and_near_zero_is_relative_to_tiny():
    assert rc.activation_error("relu", np.array([np.nan, 1.0]), np.array([np.nan, 1.0])) == 0.0
    assert rc.activation_error("relu", np.array([np.nan, 2.0]), np.array([np.nan, 3.0])) == 0.5
    tiny = np.finfo(np.float64).tiny
    assert rc.activation_error("relu", np.array([0.0, 1.0]), np.array([1e-300, 1.0])) == 1e-300 / tiny


def test_activation_inference_threshold_is_eight_terms_of_rounding():
    eps = 2.0 ** -52
    within = {"L1.z": np.array([[1.0, -1.0]]), "L1.a": np.array([[1.0 + 15 * eps, 0.0]])}
    beyond = {"L1.z": np.array([[1.0, -1.0]]), "L1.a": np.array([[1.0 + 17 * eps, 0.0]])}
    assert rc.infer_activation(within, 2, np.dtype("float64"))[0] == "relu"
    assert rc.infer_activation(beyond, 2, np.dtype("float64"))[0] == "other"


def test_summed_reduction_rules_scale_by_the_batch():
    t, p = STEPS[0].tensors, PARAMS
    table = rc.rules(rc.Settings(2, "relu", "sum", 0.1))
    for rule in table["loss"]:
        v, s = rule.fn(t, p)
        assert float(v) == pytest.approx(8 * float(t["loss"]), rel=1e-12), rule.formula
    mean_scales = [float(r.fn(t, p)[1]) for r in rc.rules(SETTINGS)["loss"]]
    z = t["L2.z"]
    terms = np.abs(t["y"]) * (np.abs(z) + np.abs(z).max(axis=1, keepdims=True) + np.log(10))
    assert float(table["loss"][0].fn(t, p)[1]) == pytest.approx(8 * float(t["loss"]) + terms.sum(), rel=1e-12)
    assert mean_scales[0] == pytest.approx(float(t["loss"]) + terms.sum() / 8, rel=1e-12)
    v, s = table["L2.dz"][0].fn(t, p)
    s = rc.materialize(s)
    np.testing.assert_allclose(v, 8 * t["L2.dz"], rtol=1e-12, atol=1e-15)
    pr = t["probs"]
    np.testing.assert_allclose(s, pr * (1 + np.abs(z - z.max(axis=1, keepdims=True))) + t["y"], rtol=1e-15)
    without_z = {k: v for k, v in t.items() if k != "L2.z"}
    v, s = rc.rules(SETTINGS)["L2.dz"][0].fn(without_z, p)
    np.testing.assert_allclose(s, (pr + t["y"]) / 8, rtol=1e-15)


def test_dense_scale_includes_the_bias():
    t, p = STEPS[1].tensors, in_force(1)
    assert np.abs(p["L1.b"]).max() > 0
    _, s = rc.rules(SETTINGS)["L1.z"][0].fn(t, p)
    assert isinstance(s, rc.Lazy)  # a matmul: computed only when an element is not bit-identical
    np.testing.assert_array_equal(rc.materialize(s), np.abs(t["x"]) @ np.abs(p["L1.W"]) + np.abs(p["L1.b"]))


def test_relu_kink_without_a_recorded_dz():
    z = np.array([[-1.0, 0.0, 2.0]])
    t = {"L1.z": z, "L1.a": np.maximum(z, 0), "L1.da": np.array([[0.5, 0.25, -1.0]])}
    v, _ = rc.rules(SETTINGS)["L1.dz"][0].fn(t, {})
    assert v.tolist() == [[0.0, 0.0, -1.0]]


def test_reduction_inference_edge_cases():
    t = STEPS[0].tensors
    dz = t["L2.dz"].copy()
    dz[0, 0] = np.nan  # one non-finite element: the others still decide
    assert rc.infer_reduction(dict(t, **{"L2.dz": dz}), 2)[0] == "mean"
    assert rc.infer_reduction(dict(t, **{"L2.dz": dz}), 2)[1].startswith("L2.dz = 0.125")
    exact = dict(t, probs=t["y"].copy(), **{"L2.dz": np.zeros_like(t["y"])})  # probs == y: dz says nothing
    assert rc.infer_reduction(exact, 2)[1].startswith("loss = ")
    one = {"probs": np.array([[0.7, 0.2, 0.1]]), "y": np.array([[1.0, 0.0, 0.0]])}
    one["L2.dz"] = one["probs"] - one["y"]  # sum of squares 0.14: small, still decides
    assert rc.infer_reduction(one, 2) == ("mean", "L2.dz = 1 * (probs - y) (batch of 1: mean and sum agree)",
                                          None)
    neither = "neither the output layer's dz nor the loss could be compared with probs - y"
    assert rc.infer_reduction({"L2.z": t["L2.z"], "loss": t["loss"]}, 2) == (None, neither, None)
    no_labels = {"L2.z": t["L2.z"], "loss": t["loss"], "y": np.zeros_like(t["y"])}  # per-sample losses sum to 0
    assert rc.infer_reduction(no_labels, 2) == (None, neither, None)
    nan_loss = {"L2.z": t["L2.z"], "loss": np.array(np.nan), "y": t["y"]}
    assert rc.infer_reduction(nan_loss, 2) == (None, neither, None)
    assert rc._reduction_from_ratio(1.5, 1, "h") == (None, "h: neither 1/B (B = 1) nor 1")


def test_loss_rule_uses_log_softmax_not_the_log_of_probs():
    """A label probability that underflows to 0: log_softmax still gives the loss (800), a log of probs cannot."""
    t = {"L2.z": np.array([[0.0, -800.0]]), "y": np.array([[0.0, 1.0]])}
    v, _ = rc.rules(SETTINGS)["loss"][0].fn(t, {})
    assert float(v) == 800.0


def test_rules_are_silent_on_zero_probabilities():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        v, s = rc.rules(SETTINGS)["loss"][1].fn({"probs": np.array([[0.0, 1.0]]), "y": np.array([[1.0, 0.0]])}, {})
    assert float(v) == np.inf and float(s) == np.inf


def test_reduction_inference_without_a_scalar_loss():
    t = STEPS[0].tensors
    neither = "neither the output layer's dz nor the loss could be compared with probs - y"
    assert rc.infer_reduction({"L2.z": t["L2.z"], "y": t["y"]}, 2) == (None, neither, None)
    per_sample = {"L2.z": t["L2.z"], "y": t["y"], "loss": np.ones(8)}
    assert rc.infer_reduction(per_sample, 2) == (None, neither, None)


def _fits(values: list[float], allowance: float = 1e-9) -> list[rc.TensorFit]:
    return [rc.TensorFit(k, f"p{k}", v, allowance) for k, v in enumerate(values)]


def test_lr_consensus_largest_group_up_to_64_fits_then_the_median():
    spread = [0.3 + 0.01 * i for i in range(35)]  # 35 fits that agree with nothing
    few = _fits([0.1] * 29 + spread)  # 64 fits: the largest agreeing group (29 at 0.1) decides
    lr, group = rc.consensus(few)
    assert lr == 0.1 and len(group) == 29
    many = _fits([0.1] * 30 + spread)  # 65: the fits within their allowance of the median (the 33rd, 0.32)
    lr, group = rc.consensus(many)
    assert lr == pytest.approx(0.32, rel=1e-12) and [f.name for f in group] == ["p32"]
    halves = _fits([0.1] * 33 + [0.2] * 33)  # median 0.15 agrees with none: the median of all fits
    lr, group = rc.consensus(halves)
    assert lr == pytest.approx(0.15, rel=1e-12) and len(group) == 66
    assert rc.consensus([]) == (None, [])
    # agreement within both allowances: 0.75 - 0.5 = 0.25 = 0.125 + 0.125 agrees, with 0.1249 each it does not
    assert len(rc.consensus([rc.TensorFit(0, "a", 0.5, 0.125), rc.TensorFit(1, "b", 0.75, 0.125)])[1]) == 2
    assert len(rc.consensus([rc.TensorFit(0, "a", 0.5, 0.1249), rc.TensorFit(1, "b", 0.75, 0.1249)])[1]) == 1


def test_lr_fit_per_name_summary_and_agreement_at_the_allowance():
    fit = rc.LrFit(fits=[rc.TensorFit(0, "a", 0.5, 0.25), rc.TensorFit(1, "a", 0.75, 0.25),
                         rc.TensorFit(0, "b", 1.0, 0.25)])
    assert fit.per_name(0.5) == (("a", 0.625, 0.5, 0.75, 2, True), ("b", 1.0, 1.0, 1.0, 1, False))
    assert fit.per_name(0.75) == (("a", 0.625, 0.5, 0.75, 2, True), ("b", 1.0, 1.0, 1.0, 1, True))
    assert [row[5] for row in fit.per_name(None)] == [False, False]
    tight = rc.LrFit(fits=[rc.TensorFit(0, "a", 0.75, 0.2499)])
    assert tight.per_name(0.5)[0][5] is False
    assert tight.consistency(0.5) == (pytest.approx(0.25 / (0.2499 + 0.5e-12), rel=1e-15), (0, "a"))
    assert rc.LrFit(fits=[rc.TensorFit(0, "a", 0.5, 0.25)]).consistency(0.5) == (0.0, None)


def test_ratio_of_is_least_squares_over_the_finite_elements():
    assert rc.ratio_of(np.array([2.0, 4.0, np.nan]), np.array([1.0, 2.0, 3.0])) == 2.0
    assert rc.ratio_of(np.array([2.0, 4.0, 7.0]), np.array([1.0, 2.0, np.inf])) == 2.0
    assert rc.ratio_of(np.array([1.0, 3.0]), np.array([1.0, 1.0])) == 2.0  # (1 + 3) / (1 + 1)
    assert rc.ratio_of(np.array([1.0, 2.0]), np.zeros(2)) is None
    assert rc.ratio_of(np.array([1.0, 2.0]), np.ones(3)) is None
    assert rc.ratio_of(None, np.ones(2)) is None and rc.ratio_of(np.ones(2), None) is None
    assert rc.vote([("L2.dW", 0.375)], 8) == (None, "L2.dW = 0.375 * (probs - y): neither 1/B (B = 8) nor 1", None)
    assert rc.vote([("L2.dz", 0.375)], 8)[2] == 0.375
    assert rc.vote([("L2.db", 1.0), ("L2.dz", 0.125), ("L2.dW", 0.125)], 8)[0] == "mean"


def test_rules_with_a_fitted_dz_factor_instead_of_a_reduction():
    """An unnamed reduction: dz = c * (probs - y) and the loss is c * the summed loss, c signed, scales |c|."""
    t, p = STEPS[0].tensors, PARAMS
    c = -0.375
    s = rc.Settings(2, "relu", None, 0.1, c)
    table = rc.rules(s)
    dz = table["L2.dz"][0]
    assert dz.formula == "-0.375 * (probs - y) (the factor fitted: the loss reduction is neither mean nor sum)"
    assert dz.invariant is None and dz.missing_settings(s) == []
    assert dz.missing_settings(rc.Settings(2, "relu", None, 0.1)) == ["reduction"]
    assert table["L1.a"][0].missing_settings(rc.Settings(2, None, None, 0.1, c)) == ["activation"]
    pr, y, z = t["probs"], t["y"], t["L2.z"]
    v, sc = dz.fn(t, p)
    np.testing.assert_allclose(v, (pr - y) * c, rtol=1e-15)
    np.testing.assert_allclose(sc, (pr * (1 + np.abs(z - z.max(axis=1, keepdims=True))) + y) * 0.375, rtol=1e-15)
    assert table["loss"][0].formula == "-0.375 * the summed cross-entropy of log_softmax(L2.z) against y"
    v, sc = table["loss"][0].fn(t, p)
    assert float(v) == pytest.approx(c * 8 * float(t["loss"]), rel=1e-12)
    terms = np.abs(y) * (np.abs(z) + np.abs(z).max(axis=1, keepdims=True) + np.log(10))
    assert float(sc) == pytest.approx(abs(float(v)) + terms.sum() * 0.375, rel=1e-12)
    v, sc = table["loss"][1].fn(t, p)
    logs = np.where(y != 0, y * np.log(pr), 0.0)
    assert float(v) == pytest.approx(-logs.sum() * c, rel=1e-12)
    assert float(sc) == pytest.approx(abs(float(v)) + np.abs(logs).sum() * 0.375 + 1.0, rel=1e-12)
    named = rc.rules(rc.Settings(2, "relu", "mean", 0.1, c))  # a named reduction: the factor is ignored
    np.testing.assert_allclose(named["L2.dz"][0].fn(t, p)[0], (pr - y) / 8, rtol=1e-12)


def test_lr_consensus_agreement_is_inclusive_where_the_relative_slack_is_zero():
    # at lr 0 the 1e-12 relative slack is 0: 0.25 - 0 = 0.125 + 0.125 exactly, so the fit at 0 agrees with both
    # neighbours (which do not agree with each other) and its group of three wins
    fits = [rc.TensorFit(0, "a", 0.0, 0.125), rc.TensorFit(1, "b", 0.25, 0.125), rc.TensorFit(2, "c", -0.25, 0.125)]
    lr, group = rc.consensus(fits)
    assert lr == 0.0 and [f.name for f in group] == ["a", "b", "c"]
    # more than 64 fits: the median (0.0) takes those within their own allowance, the boundary included
    many = ([rc.TensorFit(k, f"m{k}", -1.0, 0.0) for k in range(31)] + [rc.TensorFit(31, "edge", -0.25, 0.25)]
            + [rc.TensorFit(32, "mid", 0.0, 0.0)] + [rc.TensorFit(33 + k, f"p{k}", 1.0, 0.0) for k in range(32)])
    lr, group = rc.consensus(many)
    assert lr == -0.125 and [f.name for f in group] == ["edge", "mid"]


def test_lr_consensus_relative_slack_is_1e_minus_12_of_the_rate():
    base = 1e-3
    inside = [rc.TensorFit(0, "a", base, 0.0), rc.TensorFit(1, "b", base + 5e-16, 0.0)]  # 5e-13 relative
    assert len(rc.consensus(inside)[1]) == 2
    outside = [rc.TensorFit(0, "a", base, 0.0), rc.TensorFit(1, "b", base + 2e-15, 0.0)]  # 2e-12 relative
    assert rc.consensus(outside) == (base, [outside[0]])
    many = [rc.TensorFit(k, f"p{k}", base + (2e-15 if k % 2 else 0.0), 0.0) for k in range(65)]
    lr, group = rc.consensus(many)  # median base: the fits 2e-12 away are out
    assert lr == base and len(group) == 33
    many = [rc.TensorFit(k, f"p{k}", base + (5e-16 if k % 2 else 0.0), 0.0) for k in range(65)]
    assert len(rc.consensus(many)[1]) == 65


def test_lr_agreement_per_name_and_consistency_at_lr_zero_and_relative_slack():
    fit = rc.LrFit(fits=[rc.TensorFit(0, "a", 0.25, 0.25), rc.TensorFit(0, "b", 0.5, 0.25)])
    assert [row[5] for row in fit.per_name(0.0)] == [True, False]  # 0.25 off with an allowance of 0.25: agrees
    assert fit.consistency(0.0) == (2.0, (0, "b"))
    base = 1e-3
    fit = rc.LrFit(fits=[rc.TensorFit(0, "a", base + 5e-16, 0.0), rc.TensorFit(0, "b", base + 2e-15, 0.0)])
    assert [row[5] for row in fit.per_name(base)] == [True, False]
    worst, at = fit.consistency(base)
    assert at == (0, "b") and worst == pytest.approx(2.0, rel=1e-3)


def test_reduction_from_the_output_dW_needs_the_layer_input_of_the_right_batch():
    probs = np.array([[0.5, 0.5]] * 4)
    y = np.array([[1.0, 0.0]] * 4)
    x = np.arange(12.0).reshape(4, 3)
    dW = x.T @ (probs - y) / 4
    red, how, factor = rc.infer_reduction({"probs": probs, "y": y, "x": x, "L1.dW": dW}, 1)
    assert (red, how, factor) == ("mean", "L1.dW = 0.25 * (probs - y) = 1/B, B = 4", None)
    a1 = np.arange(12.0).reshape(4, 3)
    assert rc.infer_reduction({"probs": probs, "y": y, "L1.a": a1, "L2.dW": a1.T @ (probs - y)}, 2)[0] == "sum"
    # a layer input of another batch size (or not a matrix) cannot be multiplied with probs - y: no ratio
    neither = (None, "neither the output layer's dz nor the loss could be compared with probs - y", None)
    assert rc.infer_reduction({"probs": probs, "y": y, "L1.a": np.ones((5, 3)), "L2.dW": dW}, 2) == neither
    assert rc.infer_reduction({"probs": probs, "y": y, "L1.a": np.ones((4, 3, 1)), "L2.dW": dW}, 2) == neither
    assert rc.infer_reduction({"probs": probs, "y": y, "L2.dW": dW}, 2) == neither


def test_reduction_inference_is_silent_when_the_output_dW_overflows():
    import warnings
    probs = np.array([[0.5, 0.5]] * 4)
    y = np.array([[1.0, 0.0]] * 4)
    a1 = np.full((4, 3), 1e308)  # a1^T (probs - y) is +-2e308: inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        red, how, _ = rc.infer_reduction({"probs": probs, "y": y, "L1.a": a1, "L2.dW": np.ones((3, 2)),
                                          "L2.dz": (probs - y) / 4}, 2)
    assert red == "mean" and how == "L2.dz = 0.25 * (probs - y) = 1/B, B = 4"


def test_activation_inference_at_exactly_its_bound_takes_the_activation():
    bound = rc.rounding_bound(np.dtype("float32"), 8)
    assert bound == 2.0 ** -19
    at = {"L1.z": np.array([[1.0, -2.0]]), "L1.a": np.array([[1.0 + 2.0 ** -19, 0.0]])}
    inferred, errors = rc.infer_activation(at, 2, np.dtype("float32"))
    assert errors["relu"] == bound and inferred == "relu"
    above = {"L1.z": np.array([[1.0, -2.0]]), "L1.a": np.array([[1.0 + 2.0 ** -18, 0.0]])}
    assert rc.infer_activation(above, 2, np.dtype("float32"))[0] == "other"


def test_lr_fit_keeps_the_first_100000_fits_and_counts_the_rest():
    one = rc.TensorFit(0, "w", 0.5, 0.0)
    fit = rc.LrFit(fits=[one] * 99_999, count=99_999)
    old, new, g = np.array([1.0, 2.0]), np.array([0.5, 1.5]), np.array([1.0, 1.0])
    assert fit.add(1, "w", old, new, g) == 0.5
    assert len(fit.fits) == 100_000 and fit.fits[-1] == rc.TensorFit(1, "w", 0.5, fit.fits[-1].allowance)
    assert fit.add(2, "w", old, new, g) == 0.5
    assert len(fit.fits) == 100_000 and fit.count == 100_001


def test_reduction_inference_from_a_loss_recorded_as_a_one_element_array():
    t = STEPS[0].tensors
    base = {n: t[n] for n in ("L2.z", "y")}
    for shape in ((), (1,), (1, 1)):
        red, how, factor = rc.infer_reduction(dict(base, loss=np.asarray(t["loss"]).reshape(shape)), 2)
        assert red == "mean" and how.startswith("loss = 0.125") and factor is None, shape
    assert rc.infer_reduction(dict(base, loss=np.array([np.inf])), 2)[0] is None


def test_lr_fit_of_a_matrix_with_non_finite_elements_uses_the_finite_ones():
    """fit_one's masked path on 2-d tensors (the fast path's dots are not finite): the same fit as on the
    finite elements alone, flattened."""
    rng = np.random.default_rng(5)
    old, grad = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    new = old - 0.25 * grad
    old[0, 1], new[2, 3], grad[1, 0] = np.nan, np.inf, np.nan
    ok = np.isfinite(old) & np.isfinite(new) & np.isfinite(grad)
    g, d = grad[ok], (old - new)[ok]
    fit = rc.fit_one(7, "L1.W", old, new, grad)
    assert (fit.step, fit.name) == (7, "L1.W")
    assert fit.lr == float(g @ d) / float(g @ g)
    assert fit.lr == pytest.approx(0.25, rel=1e-14)
    eps = float(np.finfo(np.float64).eps)
    assert fit.allowance == 4 * eps * (float(np.linalg.norm(new[ok])) + abs(fit.lr) * np.sqrt(g @ g)) / np.sqrt(g @ g)


def test_rules_compute_in_float64_from_float32_tensors():
    t32 = {k: np.asarray(v, dtype=np.float32) for k, v in STEPS[1].tensors.items()}
    p32 = {k: np.asarray(v, dtype=np.float32) for k, v in in_force(1).items()}
    assert rc.f64(t32["x"]).dtype == np.float64
    value, scale = rc.rules(SETTINGS)["L1.z"][0].fn(t32, p32)
    want = rc.f64(t32["x"]) @ rc.f64(p32["L1.W"]) + rc.f64(p32["L1.b"])
    assert value.dtype == np.float64 and np.array_equal(value, want)
    fit = rc.fit_one(1, "L1.W", p32["L1.W"], t32["L1.W"], t32["L1.dW"])
    old, new, grad = (rc.f64(a).reshape(-1) for a in (p32["L1.W"], t32["L1.W"], t32["L1.dW"]))
    assert fit.lr == float(grad @ (old - new)) / float(grad @ grad)

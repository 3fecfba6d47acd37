"""Quick rule tests of memstate.check.infer: what check takes as the settings (declared, read off the header,
inferred from the tensors) and how a partial trace decides what it does not record: the reduction voted by
the recorded gradients, the hidden logits derived for the activation, the activation and reduction chosen by
the candidate whose derived updates agree. Small hand-built networks with exact values; these are the tests
`scripts/mutation.py check/infer.py` runs (pyproject)."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from memstate.check import infer
from memstate.check import recompute as rc
from memstate.check.infer import Spec
from memstate.check.result import Inferred
from memstate.check.state import State
from memstate.comparator.tolerance import Tolerances

ACT = {"relu": lambda z: np.maximum(z, 0.0), "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
       "shifted-relu": lambda z: np.maximum(z, -1.0)}


def net(act="relu", red="mean", lr=0.5, seed=3, batch=4, widths=(3, 5, 2)):
    """One step of a 2-layer network computed here in float64: its tensors and the parameters in force."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, widths[0]))
    y = np.eye(widths[2])[rng.integers(0, widths[2], batch)]
    p = {"L1.W": rng.standard_normal((widths[0], widths[1])), "L1.b": rng.standard_normal(widths[1]),
         "L2.W": rng.standard_normal((widths[1], widths[2])), "L2.b": rng.standard_normal(widths[2])}
    z1 = x @ p["L1.W"] + p["L1.b"]
    a1 = ACT[act](z1)
    z2 = a1 @ p["L2.W"] + p["L2.b"]
    e = np.exp(z2 - z2.max(axis=1, keepdims=True))
    probs = e / e.sum(axis=1, keepdims=True)
    c = 1 / batch if red == "mean" else 1.0
    loss = -np.sum(y * np.log(probs)) * c
    dz2 = (probs - y) * c
    da1 = dz2 @ p["L2.W"].T
    deriv = {"relu": (z1 > 0) * 1.0, "shifted-relu": (z1 > -1) * 1.0, "sigmoid": a1 * (1 - a1)}[act]
    dz1 = da1 * deriv
    g = {"L1.dW": x.T @ dz1, "L1.db": dz1.sum(axis=0), "L2.dW": a1.T @ dz2, "L2.db": dz2.sum(axis=0)}
    t = {"x": x, "y": y, "L1.z": z1, "L1.a": a1, "L2.z": z2, "probs": probs, "loss": np.asarray(loss),
         "L2.dz": dz2, "L1.da": da1, "L1.dz": dz1, **g}
    for n in p:
        t[n] = p[n] - lr * g[n.replace(".", ".d")]
    return t, p


def keep(t, *names):
    return {n: t[n] for n in names}


# ---------------------------------------------------------------- declared settings

def test_declared_from_a_scenario_takes_every_setting_from_it():
    s = SimpleNamespace(model=SimpleNamespace(layers=[3, 5, 2], activation="sigmoid"),
                        training=SimpleNamespace(loss_reduction="sum", learning_rate=1))
    out = infer.declared({"activation": "relu", "learning_rate": 0.1}, s, "scenario S")
    assert out == {"layers": ((3, 5, 2), "scenario S"), "activation": ("sigmoid", "scenario S"),
                   "reduction": ("sum", "scenario S"), "lr": (1.0, "scenario S")}
    assert isinstance(out["lr"][0], float)


def test_declared_from_the_header_keeps_only_well_formed_settings():
    good = {"layers": [3, 5, 2], "activation": "tanh", "loss_reduction": "sum", "learning_rate": 2}
    assert infer.declared(good, None, "x") == {"layers": ((3, 5, 2), "header"), "activation": ("tanh", "header"),
                                               "reduction": ("sum", "header"), "lr": (2.0, "header")}
    for bad in ({"layers": [3]}, {"layers": [3, 0]}, {"layers": [3, True]}, {"layers": [3, 2.0]},
                {"layers": "3,2"}, {"activation": 1}, {"loss_reduction": "none"}, {"learning_rate": True},
                {"learning_rate": float("nan")}, {"learning_rate": float("inf")}, {"learning_rate": "0.1"}):
        assert infer.declared(bad, None, "x") == {}, bad
    assert infer.declared({"layers": [1, 1]}, None, "x") == {"layers": ((1, 1), "header")}
    assert infer.declared({"loss_reduction": "mean", "learning_rate": 0.25}, None, "x") == \
        {"reduction": ("mean", "header"), "lr": (0.25, "header")}
    # meta.settings wins over the header's own keys
    meta = {"activation": "relu", "learning_rate": 0.1,
            "settings": {"activation": "sigmoid", "learning_rate": 0.5, "layers": [2, 2]}}
    assert infer.declared(meta, None, "x") == {"layers": ((2, 2), "header"), "activation": ("sigmoid", "header"),
                                               "lr": (0.5, "header")}


def test_header_settings_reads_the_well_formed_ones():
    assert infer.header_settings({}) == {}
    assert infer.header_settings({"settings": [1]}) == {}
    given = {"activation": "relu", "loss_reduction": "mean", "layers": [4, 3], "learning_rate": 0.1, "x": 1}
    assert infer.header_settings({"settings": given}) == {"activation": "relu", "loss_reduction": "mean",
                                                          "layers": [4, 3], "learning_rate": 0.1}
    bad = {"activation": 1, "loss_reduction": None, "layers": [4, -3], "learning_rate": False}
    assert infer.header_settings({"settings": bad}) == {}
    assert infer.header_settings({"settings": {"layers": [4], "learning_rate": float("inf")}}) == {}
    assert infer.header_settings({"settings": {"layers": [4, 1.5]}}) == {}
    assert infer.header_settings({"settings": {"layers": (4, 3)}}) == {}


def test_header_scenario_is_used_only_when_it_fits_the_header():
    assert infer.header_scenario({}) == (None, None)
    assert infer.header_scenario({"scenario": ""}) == (None, None)
    assert infer.header_scenario({"scenario": 3}) == (None, None)
    assert infer.header_scenario({"scenario": "no-such-scenario"}) == (None, None)
    s, note = infer.header_scenario({"scenario": "mnist14-relu-f32"})
    assert note is None and s.name == "mnist14-relu-f32"
    s, note = infer.header_scenario({"scenario": "mnist14-relu-f32", "layers": [196, 32, 10],
                                     "settings": {"learning_rate": 0.1, "activation": "relu"}})
    assert note is None and s is not None
    assert infer.header_scenario({"scenario": "mnist14-relu-f32", "layers": [196, 16, 10]}) == (None, (
        "the header names scenario 'mnist14-relu-f32', whose layers [196, 32, 10] are not the trace's "
        "[196, 16, 10]: using the header's own settings"))
    assert infer.header_scenario({"scenario": "mnist14-relu-f32", "settings": {"activation": "sigmoid",
                                                                               "learning_rate": 0.2}}) == (None, (
        "the header names scenario 'mnist14-relu-f32', whose activation ('relu') is not the run's ('sigmoid', "
        "meta.settings): using the header's own settings"))
    assert infer.header_scenario({"scenario": "mnist14-relu-f32", "settings": {"learning_rate": 0.2}})[1] == (
        "the header names scenario 'mnist14-relu-f32', whose learning_rate (0.1) is not the run's (0.2, "
        "meta.settings): using the header's own settings")
    # the reduction is not compared: the header says what the run computed
    assert infer.header_scenario({"scenario": "mnist14-relu-f32", "settings": {"loss_reduction": "sum"}})[1] is None


def test_setting_with_inference_and_evidence():
    assert infer.setting(None) == Inferred(None, "unknown")
    assert infer.setting((0.1, "header")) == Inferred(0.1, "header")
    assert infer.with_inference(Inferred(None, "unknown"), "relu", "e") == Inferred("relu", "inferred", "relu", "e")
    assert infer.with_inference(Inferred(None, "unknown"), None, "e") == Inferred(None, "unknown", None, "e")
    assert infer.with_inference(Inferred("relu", "header"), "relu", "e") == \
        Inferred("relu", "header", "relu", "e", True)
    assert infer.with_inference(Inferred("relu", "header"), None, "e") == Inferred("relu", "header", None, "e", True)
    assert infer.with_inference(Inferred("relu", "header"), "sigmoid", "e") == \
        Inferred("relu", "header", "sigmoid", "e", False)
    errors = {"relu": 0.5, "sigmoid": 0.0, "shifted-relu": 0.25}
    assert infer.activation_evidence("sigmoid", errors, 3) == \
        "step 3: L{i}.a = sigmoid(L{i}.z) (max rel errors: sigmoid 0, shifted-relu 0.25, relu 0.5)"
    assert infer.activation_evidence("other", {"relu": 0.123456}, 0) == \
        "step 0: L{i}.a is not relu, shifted-relu or sigmoid of L{i}.z (max rel errors: relu 0.12)"


def test_spec_from_declared_and_settings():
    s = Spec.from_declared({"activation": ("tanh", "header"), "reduction": ("sum", "scenario"), "lr": (0.5, "h")})
    assert s.activation == Inferred("other", "header", None, "the header says 'tanh', which check cannot "
                                    "recompute (it knows relu, shifted-relu, sigmoid)")
    assert s.reduction == Inferred("sum", "scenario") and s.learning_rate == Inferred(0.5, "h")
    assert s.settings(3) == rc.Settings(3, "other", "sum", 0.5, None)
    s = Spec.from_declared({"activation": ("sigmoid", "header")})
    assert s.activation == Inferred("sigmoid", "header") and s.reduction == Inferred(None, "unknown")
    assert (s.act_seen, s.red_seen, s.dz_factor, s.lr_fit.count) == (False, False, None, 0)


# ---------------------------------------------------------------- observing a step

@pytest.mark.parametrize("act", ["relu", "sigmoid", "shifted-relu"])
def test_observe_infers_the_activation_from_z_and_a(act):
    t, p = net(act)
    s = Spec.from_declared({})
    s.observe(2, keep(t, "x", "L1.z", "L1.a"), 2, "float64")
    assert s.act_seen and s.activation.value == act and s.activation.source == "inferred"
    assert s.activation.evidence.startswith(f"step 2: L{{i}}.a = {act}(L{{i}}.z)")


def test_observe_derives_the_hidden_logits_from_the_parameters_in_force():
    t, p = net("sigmoid")
    s = Spec.from_declared({})
    s.observe(0, keep(t, "x", "L1.a"), 2, "float64")
    assert not s.act_seen  # without the parameters L1.z cannot be derived
    s.observe(0, keep(t, "x", "L1.a"), 2, "float64", p)
    assert s.act_seen and s.activation.value == "sigmoid"
    view = infer._with_logits(keep(t, "x", "L1.a"), 2, p)
    np.testing.assert_allclose(view["L1.z"], t["L1.z"], rtol=1e-13)
    assert infer._with_logits(keep(t, "x", "L1.z", "L1.a"), 2, p) == keep(t, "x", "L1.z", "L1.a")
    # a layer input of the wrong width: not derived, no traceback
    assert "L1.z" not in infer._with_logits({"x": np.ones((4, 7)), "L1.a": t["L1.a"]}, 2, p)


def test_observe_one_layer_and_declared_other():
    s = Spec.from_declared({})
    s.observe(0, {"x": np.ones((2, 3))}, 1, None)
    assert s.act_seen and s.activation == Inferred(None, "unknown", None, "one layer: no hidden activation")
    s = Spec.from_declared({})
    s.observe(0, {"x": np.ones((2, 3))}, 2, None)
    assert not s.act_seen and s.activation == Inferred(None, "unknown")
    t, _ = net("relu")
    s = Spec.from_declared({"activation": ("relu", "header")})
    z = t["L1.z"]
    s.observe(1, {"L1.z": z, "L1.a": 1 / (1 + np.exp(-z))}, 2, "float64")
    assert s.activation.value == "relu" and s.activation.inferred == "sigmoid" and not s.activation.consistent


@pytest.mark.parametrize("red", ["mean", "sum"])
def test_observe_infers_the_reduction_from_dz_or_the_loss(red):
    t, p = net(red=red)
    s = Spec.from_declared({})
    s.observe(4, keep(t, "x", "y", "L1.a", "probs", "L2.dz"), 2, None)
    assert s.red_seen and s.reduction.value == red
    assert s.reduction.evidence.startswith("step 4: L2.dz = ")
    s = Spec.from_declared({})
    s.observe(0, keep(t, "y", "L2.z", "loss"), 2, None)
    assert s.reduction.value == red and s.reduction.evidence.startswith("step 0: loss = ")


def test_observe_derives_probs_and_the_layer_input_for_the_output_gradients():
    t, p = net(red="sum")
    s = Spec.from_declared({"activation": ("relu", "header")})
    s.observe(0, keep(t, "x", "y", "L2.dW"), 2, None, p)
    assert s.red_seen and s.reduction == Inferred("sum", "inferred", "sum", "step 0: L2.dW = 1 * (probs - y)")
    # without the parameters nothing can be compared: a later step may show it
    s = Spec.from_declared({"activation": ("relu", "header")})
    s.observe(0, keep(t, "x", "y", "L2.dW"), 2, None)
    assert not s.red_seen and s.reduction == Inferred(None, "unknown")


def test_a_hidden_gradient_votes_on_the_reduction():
    t, p = net(red="mean")
    s = Spec.from_declared({"activation": ("relu", "header")})
    s.observe(0, keep(t, "x", "y", "L1.z", "L1.a", "L2.z", "probs", "L1.dW", "L1.db"), 2, None, p)
    assert s.red_seen and s.reduction.value == "mean"
    assert s.reduction.evidence == ("step 0: L1.dW = 0.25 * its value derived with a summed loss = 1/B, B = 4; "
                                    "L1.db = 0.25 * its value derived with a summed loss = 1/B, B = 4")
    red, how = infer._backward_vote(keep(t, "x", "y", "probs", "L1.a", "L1.dW"), ["L1.dW"], 2, "relu", p, "H")
    assert (red, how) == ("mean", "L1.dW = 0.25 * its value derived with a summed loss = 1/B, B = 4")
    # nothing derivable (no parameters for da): the reason given stands
    assert infer._backward_vote(keep(t, "x", "y", "probs", "L1.a", "L1.dW"), ["L1.dW"], 2, "relu", None, "H") == \
        (None, "H")
    # derivable but every gradient is zero: no ratio
    zero = keep(t, "x", "y", "probs", "L1.a")
    zero["L1.dW"] = np.zeros_like(t["L1.dW"])
    assert infer._backward_vote(zero, ["L1.dW"], 2, "relu", p, "H")[0] is None
    # the batch comes from y when there is no x
    no_x = keep(t, "y", "probs", "L1.z", "L1.a", "L1.db")
    assert infer._backward_vote(no_x, ["L1.db"], 2, "relu", p, "H") == \
        ("mean", "L1.db = 0.25 * its value derived with a summed loss = 1/B, B = 4")


def test_observe_a_factor_that_is_neither_mean_nor_sum():
    t, p = net(red="sum")
    odd = keep(t, "x", "y", "L1.a", "probs")
    odd["L2.dz"] = 0.5 * t["L2.dz"]
    s = Spec.from_declared({})
    s.observe(0, odd, 2, None)
    assert s.red_seen and s.reduction.value is None and s.dz_factor == 0.5
    assert s.reduction.evidence == ("step 0: L2.dz = 0.5 * (probs - y): neither 1/B (B = 4) nor 1; L2.dz is "
                                    "checked as the proportionality dz = c * (probs - y), c = 0.5")
    assert s.settings(2).dz_factor == 0.5
    s = Spec.from_declared({"reduction": ("sum", "header")})
    s.observe(0, odd, 2, None)
    assert s.dz_factor is None and s.reduction.value == "sum" and s.reduction.inferred is None


def test_observe_only_once_each():
    t, _ = net(red="mean")
    s = Spec.from_declared({})
    s.observe(0, keep(t, "L1.z", "L1.a", "probs", "y", "L2.dz"), 2, None)
    first = (s.activation, s.reduction)
    t2, _ = net("sigmoid", red="sum")
    s.observe(1, keep(t2, "L1.z", "L1.a", "probs", "y", "L2.dz"), 2, None)
    assert (s.activation, s.reduction) == first


# ---------------------------------------------------------------- fitting the learning rate, searching settings

def test_fit_step_with_recorded_gradients_fits_each_update():
    t, p = net(lr=0.5)
    s = Spec.from_declared({})
    assert s.fit_step(0, keep(t, "L1.W", "L1.dW", "L2.b", "L2.db"), 2, p, "float64") is None
    assert s.lr_fit.count == 2 and s.learning_rate == Inferred(0.5, "fitted")
    s = Spec.from_declared({"lr": (0.25, "header")})
    s.fit_step(0, keep(t, "L1.W", "L1.dW"), 2, p, "float64")
    assert s.learning_rate == Inferred(0.25, "header") and s.lr_fit.lr == pytest.approx(0.5, rel=1e-12)


@pytest.mark.parametrize("act", ["relu", "sigmoid", "shifted-relu"])
@pytest.mark.parametrize("red", ["mean", "sum"])
def test_fit_step_without_gradients_chooses_the_settings_whose_updates_agree(act, red):
    t, p = net(act, red, lr=0.5)
    s = Spec.from_declared({"lr": (0.5, "header")})
    d = s.fit_step(3, keep(t, "x", "y", "L1.W", "L1.b", "L2.W", "L2.b"), 2, p, "float64", Tolerances())
    assert d is not None and "L1.dW" in d
    assert s.activation.value == act and s.activation.source == "inferred" and s.act_seen
    assert s.reduction.value == red and s.red_seen
    assert s.activation.evidence.startswith("step 3: the updates, derived through each activation (relu, mean: ")
    assert s.reduction.evidence == "step 3: the updates, derived with each reduction"
    assert s.lr_fit.count == 4 and s.lr_fit.lr == pytest.approx(0.5, rel=1e-9)


def test_without_a_declared_rate_mean_and_sum_tie_and_the_evidence_says_so():
    t, p = net("relu", "mean", lr=0.5)
    s = Spec.from_declared({"activation": ("relu", "header")})
    s.fit_step(0, keep(t, "x", "y", "L1.W", "L1.b", "L2.W", "L2.b"), 2, p, "float64")
    assert s.reduction.value in ("mean", "sum")
    assert s.reduction.evidence == ("step 0: the updates, derived with each reduction (mean and sum are told apart "
                                    "only by a declared learning rate: sum with lr / B fits as well)")
    assert s.activation == Inferred("relu", "header")
    # the recorded loss breaks the tie when the comparator's tolerances are given
    s = Spec.from_declared({"activation": ("relu", "header")})
    s.fit_step(0, keep(t, "x", "y", "loss", "L1.W", "L1.b", "L2.W", "L2.b"), 2, p, "float64", Tolerances())
    assert s.reduction.value == "mean" and s.reduction.evidence == "step 0: the updates, derived with each reduction"
    assert s.learning_rate == Inferred(0.5, "fitted")


def test_fit_step_with_everything_declared_tries_one_candidate():
    t, p = net("sigmoid", "sum", lr=0.5)
    s = Spec.from_declared({"activation": ("sigmoid", "h"), "reduction": ("sum", "h")})
    s.fit_step(0, keep(t, "x", "y", "L1.W", "L2.b"), 2, p, "float64", Tolerances())
    assert s.activation == Inferred("sigmoid", "h") and s.reduction == Inferred("sum", "h")
    assert s.lr_fit.count == 2 and s.learning_rate.value == 0.5
    assert s._candidates(2) == [rc.Settings(2, "sigmoid", "sum")]
    u = Spec.from_declared({})
    assert len(u._candidates(2)) == 6 and u._candidates(1) == [rc.Settings(1, None, "mean"),
                                                               rc.Settings(1, None, "sum")]
    u.dz_factor = 0.5
    assert u._candidates(1) == [rc.Settings(1, None, None, None, 0.5)]


def test_score_orders_by_agreement_then_declared_rate_then_other_tensors_then_spread():
    s = Spec.from_declared({"lr": (0.5, "h")})
    fits = [rc.TensorFit(0, "a", 0.5, 1e-9), rc.TensorFit(0, "b", 0.5 + 1e-10, 1e-9), rc.TensorFit(0, "c", 9, 0)]
    c = infer._Candidate(rc.Settings(2), "x", {}, fits, None, 3)
    assert s._score(c) == (2, 1, 3, pytest.approx(-2e-10, rel=1e-6))
    s2 = Spec.from_declared({"lr": (0.5 * (1 + 2e-6), "h")})
    assert s2._score(c)[1] == 0
    s3 = Spec.from_declared({"lr": (0.5 * (1 + 0.9e-6), "h")})
    assert s3._score(c)[1] == 1
    assert Spec.from_declared({})._score(c)[1] == 0
    empty = infer._Candidate(rc.Settings(2), "x", {}, [], None)
    assert s._score(empty) == (0, 0, 0, -np.inf)
    zero = infer._Candidate(rc.Settings(2), "x", {}, [rc.TensorFit(0, "a", 0.0, 0.0)], None)
    assert s._score(zero) == (1, 0, 0, -np.inf)


def test_others_passing_counts_the_recorded_tensors_that_check():
    t, p = net("relu", "mean")
    kept = keep(t, "x", "y", "loss", "probs", "L1.W")
    good = infer._try_settings(rc.Settings(2, "relu", "mean"), 0, kept, ["L1.W"], p)
    bad = infer._try_settings(rc.Settings(2, "relu", "sum"), 0, kept, ["L1.W"], p)
    assert infer._others_passing(good, kept, 2, Tolerances()) == 2
    assert infer._others_passing(bad, kept, 2, Tolerances()) == 1  # probs checks, the loss does not
    assert infer._others_passing(replace(good, derivation=None), kept, 2, Tolerances()) == 0
    assert infer._others_passing(good, keep(t, "x", "y", "L1.W"), 2, Tolerances()) == 0
    assert good.label == "relu, mean" and [f.name for f in good.fits] == ["L1.W"]
    np.testing.assert_allclose(good.grads["L1.W"], t["L1.dW"], rtol=1e-12)


def test_try_settings_uses_recorded_gradients_and_skips_what_cannot_be_derived():
    t, p = net()
    c = infer._try_settings(rc.Settings(2, "relu", "mean"), 1, keep(t, "x", "y", "L1.dW", "L1.W", "L2.W"),
                            ["L1.W", "L2.W"], p)
    assert c.grads["L1.W"] is t["L1.dW"] and "L2.W" in c.grads and c.label == "relu, mean"
    # the activation unknown: nothing derivable
    c = infer._try_settings(rc.Settings(2, None, "mean"), 1, keep(t, "x", "y", "L1.W"), ["L1.W"], p)
    assert c.grads == {} and c.fits == [] and c.label == "mean"
    # shapes that do not fit: skipped, no traceback
    c = infer._try_settings(rc.Settings(2, "relu", "mean"), 1, {"x": np.ones((4, 7)), "y": t["y"],
                                                                "L1.W": t["L1.W"]}, ["L1.W"], p)
    assert c.grads == {} and c.fits == []


def test_derived_adds_what_can_be_derived_and_skips_the_rest():
    t, p = net()
    kept = keep(t, "x", "y")
    view = infer._derived(kept, ["probs", "L1.a", "L1.dW"], rc.Settings(2, "relu", "mean"), p)
    assert set(view) == {"x", "y", "L1.z", "L1.a", "L2.z", "probs", "L2.dz", "L1.da", "L1.dz", "L1.dW"}
    np.testing.assert_allclose(view["L1.dW"], t["L1.dW"], rtol=1e-12)
    np.testing.assert_allclose(view["probs"], t["probs"], rtol=1e-12)
    assert infer._derived(kept, ["x"], rc.Settings(2, "relu"), p) is kept
    assert set(infer._derived(kept, ["L1.a"], rc.Settings(2, None), p)) == {"x", "y"}
    assert set(infer._derived(kept, ["L1.a"], rc.Settings(2, "relu"), None)) == {"x", "y"}
    wrong = {"x": np.ones((4, 7)), "y": t["y"]}
    assert set(infer._derived(wrong, ["L1.z"], rc.Settings(2, "relu"), p)) == {"x", "y"}


# ---------------------------------------------------------------- searching the activation

@pytest.mark.parametrize("act", ["relu", "sigmoid", "shifted-relu"])
def test_search_activation_takes_the_candidate_under_which_the_blocked_tensors_check(act):
    t, p = net(act)
    s = Spec.from_declared({"reduction": ("mean", "h")})
    infer.search_activation(s, 5, keep(t, "x", "y", "L1.z", "probs", "L2.dz"), 2, p, Tolerances())
    assert s.act_seen and s.activation.value == act and s.activation.source == "inferred"
    counts = {a: int(a == act) for a in rc.ACTIVATIONS}
    assert s.activation.evidence == ("step 5: the recorded tensors that need the activation (probs) check with "
                                     + ", ".join(f"{a} {counts[a]} of 1" for a in rc.ACTIVATIONS))


def test_search_activation_leaves_it_unknown_when_nothing_or_everything_checks():
    t, p = net("relu")
    s = Spec.from_declared({})
    bad = keep(t, "x", "y", "L1.z")
    bad["probs"] = np.full_like(t["probs"], 0.5)
    infer.search_activation(s, 0, bad, 2, p, Tolerances())
    assert not s.act_seen and s.activation == Inferred(None, "unknown")
    # z > 0 everywhere: relu and shifted-relu reproduce it alike: a tie
    t, p = net("relu")
    p = {**p, "L1.b": p["L1.b"] + 100.0}
    t, p = _with_params(t, p)
    infer.search_activation(s, 0, keep(t, "x", "y", "L1.z", "probs"), 2, p, Tolerances())
    assert not s.act_seen


def _with_params(t, p):
    """Recompute the forward pass of `t` with parameters `p` (relu)."""
    z1 = t["x"] @ p["L1.W"] + p["L1.b"]
    z2 = np.maximum(z1, 0) @ p["L2.W"] + p["L2.b"]
    e = np.exp(z2 - z2.max(axis=1, keepdims=True))
    return {**t, "L1.z": z1, "L2.z": z2, "probs": e / e.sum(axis=1, keepdims=True)}, p


def test_search_activation_is_not_needed_when_known_one_layer_or_not_blocked():
    t, p = net("sigmoid")
    kept = keep(t, "x", "y", "L1.z", "probs")
    s = Spec.from_declared({"activation": ("relu", "h")})
    infer.search_activation(s, 0, kept, 2, p, Tolerances())
    assert s.activation == Inferred("relu", "h")
    s = Spec.from_declared({})
    infer.search_activation(s, 0, kept, 1, p, Tolerances())
    assert s.activation == Inferred(None, "unknown")
    infer.search_activation(s, 0, keep(t, "x", "L1.z"), 2, p, Tolerances())  # nothing needs the activation
    assert s.activation == Inferred(None, "unknown")
    infer.search_activation(s, 0, kept, 2, None, Tolerances())  # probs needs the parameters as well
    assert s.activation == Inferred(None, "unknown")


def test_passes_within_tolerance_and_on_shapes_that_do_not_fit():
    t, p = net()
    plans = infer.plan_step(frozenset(["x", "L1.z"]), rc.rules(rc.Settings(2)), True, rc.Settings(2))
    d = infer.Derivation(keep(t, "x", "L1.z"), p)
    assert infer._passes(t["L1.z"], plans["L1.z"], d, Tolerances())
    assert not infer._passes(t["L1.z"] * 1.01, plans["L1.z"], d, Tolerances())
    wrong = infer.Derivation({"x": np.ones((4, 7)), "L1.z": t["L1.z"]}, p)
    assert not infer._passes(t["L1.z"], plans["L1.z"], wrong, Tolerances())


# ---------------------------------------------------------------- the learning rate's consistency

def _state():
    return State(Tolerances(), {}, False)


def test_lr_consistency_unfitted_and_fitted():
    st = _state()
    lr = infer.lr_consistency(st, Inferred(0.1, "header"), rc.LrFit(), "float64")
    assert lr == Inferred(0.1, "header", None, "not fitted: no step had both its parameters in force and a "
                                               "finite, non-zero gradient")
    fit = rc.LrFit(fits=[rc.TensorFit(0, "a", 0.1 + 1e-17, 1e-12), rc.TensorFit(0, "b", 0.1, 1e-12)], count=2,
                   lo=0.1, hi=0.1 + 1e-17)
    lr = infer.lr_consistency(st, Inferred(0.1, "fitted"), fit, "float64")
    assert lr.value == 0.1 and lr.source == "fitted" and lr.inferred == 0.1 and lr.consistent
    assert lr.evidence == ("W' = W - lr * dW fitted per tensor over 2 parameter updates: consensus lr = "
                           f"{0.1:.17g} (the median of the agreeing fits), per-tensor fits 0.1 to 0.1")
    assert st.findings == {}
    # the fitted value of the first step differs from the consensus: not consistent
    assert not infer.lr_consistency(st, Inferred(0.2, "fitted"), fit, "float64").consistent


def test_lr_consistency_against_a_declared_rate_and_the_odd_one_out():
    fit = rc.LrFit(fits=[rc.TensorFit(0, "a", 0.1, 1e-9), rc.TensorFit(1, "a", 0.1, 1e-9),
                         rc.TensorFit(1, "b", 0.3, 1e-9)], count=3, lo=0.1, hi=0.3)
    st = _state()
    lr = infer.lr_consistency(st, Inferred(0.1, "header"), fit, "float64")
    assert lr.value == 0.1 and lr.inferred == 0.1 and not lr.consistent
    assert lr.evidence.endswith("per-tensor fits 0.1 to 0.3; the odd one out: b (worst b at step 1, "
                                f"{0.2 / (1e-9 + 0.1e-12):.3g}x its rounding allowance)")
    f = st.first_finding
    assert (f.kind, f.code, f.step, f.name) == ("inference", "lr-consistent", 1, "b")
    assert f.message == "no single learning rate explains the parameter updates: " + lr.evidence
    two = rc.LrFit(fits=[rc.TensorFit(0, "a", 0.1, 1e-9), rc.TensorFit(0, "b", 0.1, 1e-9),
                         rc.TensorFit(0, "c", 0.3, 1e-9), rc.TensorFit(0, "d", 0.5, 1e-9)], count=4, lo=0.1, hi=0.5)
    assert "the odd ones out: c, d (worst d at step 0" in infer.lr_consistency(_state(), Inferred(0.1, "h"), two,
                                                                              "float64").evidence


def test_lr_consistency_declared_rate_agreement_is_within_the_fit_precision():
    fit = rc.LrFit(fits=[rc.TensorFit(0, "a", 0.1, 1e-3)], count=1, lo=0.1, hi=0.1)
    prec = rc.lr_precision("float32")
    ok = infer.lr_consistency(_state(), Inferred(0.1 * (1 + 0.9 * prec), "h"), fit, "float32")
    assert ok.consistent and ok.inferred == 0.1
    off = infer.lr_consistency(_state(), Inferred(0.1 * (1 + 1.5 * prec), "h"), fit, "float32")
    assert not off.consistent and "odd one" not in off.evidence
    exact = infer.lr_consistency(_state(), Inferred(0.1 + 0.1 * prec, "h"), fit, "float32")
    assert exact.consistent


# ---------------------------------------------------------------- cases found by mutation testing

def test_header_scenario_compares_the_layers_of_meta_settings_and_positive_widths():
    note = infer.header_scenario({"scenario": "mnist14-relu-f32", "settings": {"layers": [196, 16, 10]}})
    assert note == (None, "the header names scenario 'mnist14-relu-f32', whose layers ([196, 32, 10]) is not the "
                          "run's ([196, 16, 10], meta.settings): using the header's own settings")
    assert infer.header_settings({"settings": {"layers": [4, 0]}}) == {}
    assert infer.header_settings({"settings": {"layers": [1, 1]}}) == {"layers": [1, 1]}


def test_the_backward_vote_leaves_out_the_loss_and_needs_the_batch_of_x_or_y():
    t, p = net(red="mean")
    kept = keep(t, "x", "y", "L1.a", "L2.z", "probs", "loss", "L1.dW")
    assert infer._backward_vote(kept, ["loss", "L1.dW"], 2, "relu", p, "H") == \
        ("mean", "L1.dW = 0.25 * its value derived with a summed loss = 1/B, B = 4")
    # x and y alone: the whole pass derived, the batch read off them
    assert infer._backward_vote(keep(t, "x", "y", "L2.db"), ["L2.db"], 2, "relu", p, "H") == \
        ("mean", "L2.db = 0.25 * its value derived with a summed loss = 1/B, B = 4")


def test_observe_derives_the_layer_input_when_probs_is_recorded_and_probs_when_the_input_is():
    t, p = net(red="mean")
    for names in (("x", "y", "probs", "L2.dW"), ("x", "y", "L1.a", "L2.dW")):
        s = Spec.from_declared({"activation": ("relu", "header")})
        s.observe(0, keep(t, *names), 2, None, p)
        assert s.reduction == Inferred("mean", "inferred", "mean", "step 0: L2.dW = 0.25 * (probs - y) = 1/B, "
                                                                   "B = 4"), names


def test_observe_a_loss_that_cannot_be_compared_ends_the_search_with_the_reason():
    s = Spec.from_declared({})
    s.observe(2, {"x": np.ones((4, 3)), "loss": np.asarray(1.0)}, 2, None)
    assert s.red_seen and s.reduction == Inferred(None, "unknown", None, "step 2: neither the output layer's dz "
                                                  "nor the loss could be compared with probs - y")
    s = Spec.from_declared({})
    s.observe(2, {"x": np.ones((4, 3)), "L2.dz": np.ones((4, 2))}, 2, None)
    assert s.red_seen and s.reduction.evidence == ("step 2: neither the output layer's dz nor the loss could be "
                                                   "compared with probs - y")


def test_observe_the_activation_bound_is_the_recorded_dtype_s():
    t, _ = net("sigmoid")
    z = t["L1.z"].astype(np.float32)
    a = (1 / (1 + np.exp(-z))).astype(np.float32)
    assert not np.array_equal(a.astype(np.float64), 1 / (1 + np.exp(-z.astype(np.float64))))
    s = Spec.from_declared({})
    s.observe(0, {"L1.z": z, "L1.a": a}, 2, "float32")
    assert s.activation.value == "sigmoid"
    s = Spec.from_declared({})
    s.observe(0, {"L1.z": z, "L1.a": a}, 2, None)  # read as float64: float32 rounding is too much
    assert s.activation.value == "other"


def test_derived_goes_on_after_a_name_that_cannot_be_derived():
    t, p = net()
    bad = {"x": np.ones((4, 7)), "y": t["y"], "L2.z": t["L2.z"]}
    view = infer._derived(bad, ["L1.z", "probs"], rc.Settings(2, "relu", "mean"), p)
    assert "L1.z" not in view and "probs" in view
    np.testing.assert_allclose(view["probs"], t["probs"], rtol=1e-12)


def test_try_settings_goes_on_after_a_gradient_that_cannot_be_derived_and_fits_at_step_k():
    t, p = net()
    kept = keep(t, "y", "L1.z", "L1.a", "probs", "L1.W", "L2.W")
    kept["x"] = np.ones((5, 3))  # another batch size: L1.dW = x^T L1.dz cannot be computed
    c = infer._try_settings(rc.Settings(2, "relu", "mean"), 7, kept, ["L1.W", "L2.W"], p)
    assert list(c.grads) == ["L2.W"] and [(f.step, f.name) for f in c.fits] == [(7, "L2.W")]


def test_passes_uses_the_tensor_s_own_tolerance_its_dtype_and_the_terms_scale():
    from memstate.comparator.tolerance import Rule
    t, p = net()
    plans = infer.plan_step(frozenset(["x", "L1.z"]), rc.rules(rc.Settings(2)), True, rc.Settings(2))
    d = infer.Derivation(keep(t, "x", "L1.z"), p)
    loose = Tolerances(rules=(Rule("L1.z", rtol=0.1),))
    assert infer._passes(t["L1.z"] * 1.01, plans["L1.z"], d, loose)
    assert not infer._passes(t["L1.z"] * 1.01, plans["L1.z"], d, Tolerances())
    z32 = t["L1.z"].astype(np.float32)
    assert infer._passes(z32, plans["L1.z"], d, Tolerances())
    # z = 1e8 - 1e8 + 1 cancels: an error of 1e-6 is tiny against the terms (2e8), not against z (1)
    x = np.array([[1.0, 1.0]])
    q = {"L1.W": np.array([[1e8], [-1e8]]), "L1.b": np.array([1.0])}
    d = infer.Derivation({"x": x}, q)
    assert infer._passes(np.array([[1.0 + 1e-6]]), plans["L1.z"], d, Tolerances())
    assert not infer._passes(np.array([[2.0]]), plans["L1.z"], d, Tolerances())  # 1 > 1e-10 * 2e8


def test_search_activation_keeps_a_declared_other_and_lists_every_blocked_tensor():
    # (the listing is in the step's order: it was in set order, which changed with PYTHONHASHSEED)
    t, p = net("sigmoid")
    kept = keep(t, "x", "y", "L1.z", "probs", "L2.dW")
    s = Spec.from_declared({"activation": ("tanh", "header"), "reduction": ("mean", "h")})
    before = s.activation
    infer.search_activation(s, 0, kept, 2, p, Tolerances())
    assert s.activation == before and not s.act_seen
    s = Spec.from_declared({"reduction": ("mean", "h")})
    infer.search_activation(s, 1, kept, 2, p, Tolerances())
    assert s.activation == Inferred("sigmoid", "inferred", "sigmoid", "step 1: the recorded tensors that need the "
                                    "activation (probs, L2.dW) check with relu 0 of 2, shifted-relu 0 of 2, "
                                    "sigmoid 2 of 2")


def test_fit_step_records_each_fit_at_its_step_and_tensor_and_rounds_the_rate_in_the_dtype():
    lr = 0.5 * (1 + 1e-9)  # a float32 fit cannot tell this from 0.5
    t, p = net("relu", "mean", lr=lr)
    s = Spec.from_declared({})
    s.fit_step(6, keep(t, "L1.W", "L1.dW", "L2.b", "L2.db"), 2, p, "float32")
    assert [(f.step, f.name) for f in s.lr_fit.fits] == [(6, "L1.W"), (6, "L2.b")]
    assert s.learning_rate == Inferred(0.5, "fitted")
    s = Spec.from_declared({})
    s.fit_step(6, keep(t, "L1.W", "L1.dW"), 2, p, "float64")
    assert s.learning_rate == Inferred(0.5000000005, "fitted")
    s = Spec.from_declared({"activation": ("relu", "h")})
    s.fit_step(8, keep(t, "x", "y", "loss", "L1.W", "L2.b"), 2, p, "float32", Tolerances())
    assert [(f.step, f.name) for f in s.lr_fit.fits] == [(8, "L1.W"), (8, "L2.b")]
    assert s.learning_rate == Inferred(0.5, "fitted")


def test_the_search_adopts_exactly_what_it_chose_with_every_candidate_listed():
    t, p = net("sigmoid", "sum", lr=0.5)
    s = Spec.from_declared({"lr": (0.5, "header")})
    s.fit_step(3, keep(t, "x", "y", "L1.W", "L1.b", "L2.W", "L2.b"), 2, p, "float64", Tolerances())
    listing = s.activation.evidence[len("step 3: the updates, derived through each activation ("):-1]
    parts = listing.split("; ")
    assert [q.split(":")[0] for q in parts] == [f"{a}, {r}" for a in rc.ACTIVATIONS for r in ("mean", "sum")]
    assert parts[5] == "sigmoid, sum: 4 of 4 updates agree"
    assert s.activation == Inferred("sigmoid", "inferred", "sigmoid", s.activation.evidence)
    assert s.reduction == Inferred("sum", "inferred", "sum", "step 3: the updates, derived with each reduction")
    # a declared reduction stays as declared while the activation is searched
    s = Spec.from_declared({"lr": (0.5, "header"), "reduction": ("sum", "header")})
    s.fit_step(3, keep(t, "x", "y", "L1.W", "L1.b", "L2.W", "L2.b"), 2, p, "float64", Tolerances())
    assert s.activation.value == "sigmoid" and s.reduction == Inferred("sum", "header") and not s.red_seen


def test_score_agreement_with_a_declared_rate_of_zero():
    c = infer._Candidate(rc.Settings(2), "x", {}, [rc.TensorFit(0, "a", 0.0, 0.0)], None)
    assert Spec.from_declared({"lr": (0.0, "h")})._score(c)[:3] == (1, 1, 0)


def test_lr_consistency_checks_the_declared_rate_not_the_consensus():
    fit = rc.LrFit(fits=[rc.TensorFit(0, "a", 0.1, 1e-9)], count=1, lo=0.1, hi=0.1)
    st = _state()
    lr = infer.lr_consistency(st, Inferred(0.2, "header"), fit, "float64")
    assert not lr.consistent and lr.inferred == 0.1
    assert st.first_finding is not None and st.first_finding.name == "a"
    assert "the odd one out: a (worst a at step 0" in lr.evidence
    # unknown (the walk adopts a step's fit, so only a direct call): the consensus, checked as the value
    st = _state()
    lr = infer.lr_consistency(st, Inferred(None, "unknown"), fit, "float64")
    assert lr == Inferred(0.1, "fitted", 0.1, lr.evidence, True) and st.findings == {}
    odd = rc.LrFit(fits=[rc.TensorFit(0, "a", 0.1, 1e-9), rc.TensorFit(0, "b", 0.1, 1e-9),
                         rc.TensorFit(0, "c", 0.3, 1e-9)], count=3, lo=0.1, hi=0.3)
    st = _state()
    lr = infer.lr_consistency(st, Inferred(None, "unknown"), odd, "float64")
    assert (lr.value, lr.consistent, st.first_finding.name) == (0.1, False, "c")


def test_lr_consistency_rounds_the_fit_in_the_dtype():
    fit = rc.LrFit(fits=[rc.TensorFit(0, "a", 0.1 * (1 + 1e-9), 1e-3)], count=1, lo=0.1, hi=0.1)
    assert infer.lr_consistency(_state(), Inferred(0.1, "fitted"), fit, "float32").inferred == 0.1
    assert infer.lr_consistency(_state(), Inferred(0.1, "fitted"), fit, "float64").inferred == 0.1000000001


def test_lr_consistency_boundaries_at_a_rate_of_zero():
    # checked lr 0: 0.25 off with an allowance of 0.25 is exactly 1x: consistent, no finding
    fit = rc.LrFit(fits=[rc.TensorFit(0, "a", 0.25, 0.25)], count=1, lo=0.25, hi=0.25)
    st = _state()
    infer.lr_consistency(st, Inferred(0.0, "header"), fit, "float64")
    assert st.findings == {}
    # 1.5x: inconsistent
    fit = rc.LrFit(fits=[rc.TensorFit(0, "a", 0.375, 0.25)], count=1, lo=0.375, hi=0.375)
    st = _state()
    assert not infer.lr_consistency(st, Inferred(0.0, "header"), fit, "float64").consistent
    assert st.first_finding.code == "lr-consistent"
    # a declared 0 and a consensus of exactly 0 agree
    zero = rc.LrFit(fits=[rc.TensorFit(0, "a", 0.0, 1e-3)], count=1, lo=0.0, hi=0.0)
    assert infer.lr_consistency(_state(), Inferred(0.0, "header"), zero, "float64").consistent


def test_lr_consistency_of_a_fitted_rate_needs_both_consistency_and_the_same_value():
    fit = rc.LrFit(fits=[rc.TensorFit(0, "a", 0.1, 1e-9), rc.TensorFit(0, "b", 0.1, 1e-9),
                         rc.TensorFit(1, "c", 0.3, 1e-9)], count=3, lo=0.1, hi=0.3)
    lr = infer.lr_consistency(_state(), Inferred(0.1, "fitted"), fit, "float64")
    assert lr.source == "fitted" and lr.value == 0.1 and not lr.consistent
    close = rc.LrFit(fits=[rc.TensorFit(0, "a", 0.1, 1e-3)], count=1, lo=0.1, hi=0.1)
    lr = infer.lr_consistency(_state(), Inferred(0.1 * (1 + 1e-15), "fitted"), close, "float64")
    assert lr.inferred == 0.1 and lr.consistent is False


def test_lr_consistency_of_an_unknown_rate_checks_the_rounded_consensus_with_its_evidence():
    # a float32 fit rounds 0.1 * (1 + 1e-9) to 0.1; with an allowance of 1e-20 the fit is 1000x off that
    fit = rc.LrFit(fits=[rc.TensorFit(0, "a", 0.1 * (1 + 1e-9), 1e-20)], count=1, lo=0.1, hi=0.1)
    st = _state()
    lr = infer.lr_consistency(st, Inferred(None, "unknown"), fit, "float32")
    assert lr.value == 0.1 and not lr.consistent and st.first_finding.name == "a"
    assert lr.evidence.startswith("W' = W - lr * dW fitted per tensor over 1 parameter updates: consensus lr = ")

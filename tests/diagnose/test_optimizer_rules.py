"""memstate.diagnose.optimizer on small hand-made steps: gradients not zeroed (recomputed from the side's own
activations and dz, or taken from the other side when the inputs agree), momentum (from the previous gradient
or the previous update) and weight decay, at the boundaries of each rule (the fit tolerances of float64 and
float32, the plain update that must not fit, the μ range, the 0.95-vs-0.85 confidence) with the exact numbers
and sentences (found by mutation testing, docs/testing.md)."""

from __future__ import annotations

import numpy as np
import pytest

from memstate.diagnose.common import fmt, lstsq_fit
from memstate.diagnose.context import DivergenceContext
from memstate.diagnose.optimizer import grad_not_zeroed, momentum, weight_decay

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

RNG = np.random.default_rng(16)
X = RNG.standard_normal((4, 3))  # the batch
DZ = RNG.standard_normal((4, 2))  # L1.dz
A1 = RNG.standard_normal((4, 3))  # L1.a, the input of layer 2
DZ2 = RNG.standard_normal((4, 2))  # L2.dz
P = RNG.standard_normal((3, 2))  # the previous step's dW
INPUTS = {"x": X, "L1.dz": DZ}


def ctx(name, a, b, inputs_a=None, inputs_b=None, agree=True, step=4, dtype=np.float64, **kw) -> DivergenceContext:
    return DivergenceContext(step, name, np.asarray(a, dtype), np.asarray(b, dtype),
                             INPUTS if inputs_a is None else inputs_a, INPUTS if inputs_b is None else inputs_b,
                             (), agree, **kw)


# ------------------------------------------------------------------------------------------------ grad-not-zeroed

def gnz_text(side, name, step, how):
    return (f"{side}'s {name} at step {step} is this step's gradient ({how}) plus its {name} of the previous step: "
            f"the gradients accumulate across steps because they are never reset. Fix: zero the gradients before "
            f"each backward pass (optimizer.zero_grad(), or assign dW = ... instead of dW += ...).")


def test_accumulated_dw_recomputed_on_both_sides():
    own = X.T @ DZ
    d = grad_not_zeroed(ctx("L1.dW", own, own + P, before_b=({"L1.dW": P},), meta_b={"impl": "torch"}))
    assert (d.code, d.confidence) == ("grad-not-zeroed", 0.95)
    assert d.evidence == {"side": "B", "previous_step_added": True, "recomputed": True,
                          "max_abs_previous": float(np.abs(P).max())}
    assert d.explanation == gnz_text("Side B (torch)", "L1.dW", 4, "recomputed from its own activations and dz")


def test_accumulated_db_on_side_a_and_the_other_side_s_gradient_decides_the_confidence():
    own = DZ.sum(axis=0)
    prev = np.array([0.5, -1.0])  # its largest |value| is exactly 1
    c = ctx("L1.db", own + prev, own, before_a=({"L1.db": prev},), before_b=({"L1.db": prev},))
    d = grad_not_zeroed(c)
    assert (d.confidence, d.evidence["side"], d.evidence["max_abs_previous"]) == (0.95, "A", 1.0)
    # the other side's own recomputation fails (no dz, or a dz that does not give its value): 0.85
    d = grad_not_zeroed(ctx("L1.db", own + prev, own, inputs_b={"x": X}, before_a=({"L1.db": prev},)))
    assert (d.confidence, d.evidence["recomputed"]) == (0.85, True)
    d = grad_not_zeroed(ctx("L1.db", own + prev, own, inputs_b={"L1.dz": DZ * 2}, before_a=({"L1.db": prev},)))
    assert (d.confidence, d.evidence["recomputed"]) == (0.85, True)


def test_accumulated_dw_of_layer_two():
    own = A1.T @ DZ2
    inputs = {"x": X, "L1.a": A1, "L2.dz": DZ2}
    d = grad_not_zeroed(ctx("L2.dW", own, own + P, inputs, inputs, before_b=({"L2.dW": P},)))
    assert (d.confidence, d.evidence["side"]) == (0.95, "B")
    # layer 2 reads L1.a, not x: with x alone nothing is recomputed and the inputs do not agree
    d = grad_not_zeroed(ctx("L2.dW", own, own + P, {"L2.dz": DZ2, "x": A1}, {"L2.dz": DZ2, "x": A1},
                            agree=False, before_b=({"L2.dW": P},)))
    assert d is None


def test_without_dz_the_other_side_is_this_step_s_gradient_when_the_inputs_agree():
    own = X.T @ DZ
    c = dict(inputs_a={}, inputs_b={}, before_b=({"L1.dW": P},))
    d = grad_not_zeroed(ctx("L1.dW", own, own + P, **c))
    assert (d.confidence, d.evidence) == (0.85, {"side": "B", "previous_step_added": True, "recomputed": False,
                                                 "max_abs_previous": float(np.abs(P).max())})
    assert d.explanation == gnz_text("Side B", "L1.dW", 4, "taking A's (inputs agree) as this step's gradient")
    assert grad_not_zeroed(ctx("L1.dW", own, own + P, agree=False, **c)) is None
    assert grad_not_zeroed(ctx("L1.dW", own, own + P, agree=None, **c)) is None
    # side A accumulated
    d = grad_not_zeroed(ctx("L1.dW", own + P, own, inputs_a={}, inputs_b={}, before_a=({"L1.dW": P},)))
    assert d.explanation == gnz_text("Side A", "L1.dW", 4, "taking B's (inputs agree) as this step's gradient")


def test_a_recomputed_gradient_of_another_shape_falls_back_to_the_other_side():
    own = X.T @ DZ  # 3 x 2, while the sides record 2 x 3
    c = ctx("L1.dW", own.T, own.T + P.T, before_b=({"L1.dW": P.T},))
    d = grad_not_zeroed(c)
    assert (d.confidence, d.evidence["recomputed"]) == (0.85, True)
    assert "taking A's (inputs agree)" in d.explanation


def test_the_previous_gradient_must_be_there_with_the_shape_and_not_zero():
    own = X.T @ DZ
    assert grad_not_zeroed(ctx("L1.dW", own, own + P)) is None  # no previous step
    assert grad_not_zeroed(ctx("L1.dW", own, own + P, before_b=({"L1.db": P},))) is None
    row = P[0]  # a row: own + row broadcasts to the shape, but a previous dW of another shape is not it
    assert grad_not_zeroed(ctx("L1.dW", own, own + row, before_b=({"L1.dW": row},))) is None
    assert grad_not_zeroed(ctx("L1.dW", own, own + row, inputs_a={}, inputs_b={}, before_b=({"L1.dW": row},))) is None
    # a previous dW of zeros (or nan only): nothing was added, even where the sides agree to rounding
    near = own * (1 + 1e-12)
    assert grad_not_zeroed(ctx("L1.dW", own, near, inputs_a={}, inputs_b={}, before_b=({"L1.dW": P * 0},))) is None
    nan = np.full_like(P, np.nan)
    assert grad_not_zeroed(ctx("L1.dW", own, near, inputs_a={}, inputs_b={}, before_b=({"L1.dW": nan},))) is None
    # the other side of another shape than the previous dW: not its gradient
    o = own[:, :1]
    assert grad_not_zeroed(ctx("L1.dW", o, own + P, inputs_a={}, inputs_b={}, before_b=({"L1.dW": P},))) is None
    o1 = own[0]  # a row of the right length: o + P broadcasts, but o is not this step's dW
    assert grad_not_zeroed(ctx("L1.dW", o1, o1 + P, inputs_a={}, inputs_b={}, before_b=({"L1.dW": P},))) is None


def test_only_dw_and_db_and_only_when_the_sides_differ():
    own = X.T @ DZ
    for name in ("L1.dz", "L1.da", "L1.W", "dW"):
        assert grad_not_zeroed(ctx(name, own, own + P, inputs_a={}, inputs_b={}, before_b=({name: P},))) is None
    assert grad_not_zeroed(ctx("L1.dW", own + P, own + P, before_b=({"L1.dW": P},))) is None


def test_the_sum_must_hold_and_the_own_gradient_alone_must_not():
    own = X.T @ DZ
    assert grad_not_zeroed(ctx("L1.dW", own, own + 2 * P, before_b=({"L1.dW": P},))) is None
    tiny = P * 1e-9  # the sum holds, but so does the own gradient alone (to 1e-7)
    assert grad_not_zeroed(ctx("L1.dW", own + 1, own + tiny, before_b=({"L1.dW": tiny},))) is None


def test_float32_sums_hold_to_float32_s_tolerance():
    own = X.T @ DZ
    off = 1e-5 * np.abs(own + P).max()
    b = own + P
    b[0, 0] += off
    for dtype, expect in ((np.float32, 0.95), (np.float64, None)):
        inputs = {"x": X.astype(dtype), "L1.dz": DZ.astype(dtype)}
        d = grad_not_zeroed(ctx("L1.dW", (X.astype(dtype).T.astype(float) @ DZ.astype(dtype).astype(float)), b,
                                inputs, inputs, dtype=dtype, before_b=({"L1.dW": P},)))
        assert (d and d.confidence) == (expect or None), dtype


# ------------------------------------------------------------------------------------------------ momentum, weight decay

W0 = RNG.standard_normal((3, 2))  # the parameters in force
G = RNG.standard_normal((3, 2))  # this step's dW
GP = RNG.standard_normal((3, 2))  # the previous step's dW
LR = 0.1


def opt_ctx(a, b, before_a=(), before_b=(), inputs=None, dtype=np.float64, **kw) -> DivergenceContext:
    inputs = {"L1.dW": G} if inputs is None else inputs
    return DivergenceContext(4, "L1.W", np.asarray(a, dtype), np.asarray(b, dtype), inputs, inputs, (), True,
                             before_a=before_a, before_b=before_b, **kw)


def first_step(force=W0):
    """Both sides' previous step: the parameters in force and the previous gradient."""
    return ({"L1.W": force, "L1.dW": GP},)


def mom_text(side, lr, mu, resid, other=None, other_side="A"):
    tail = "" if other is None else f" and {other_side} steps plainly with lr = {fmt(other)}"
    return (f"{side}'s L1.W after the update is W - lr·v with v = μ·v_prev + dW: fitted lr = {fmt(lr)}, μ = {fmt(mu)} "
            f"(residual {fmt(resid)} of the update), while a plain W - lr·dW does not fit{tail}. An SGD with momentum "
            f"(or Adam-like state) is on. Fix: plain SGD (momentum=0), or the same optimizer on both sides.")


def wd_text(side, lr, lam, resid, other=None, other_side="A"):
    tail = "" if other is None else f" and {other_side} steps plainly with lr = {fmt(other)}"
    return (f"{side}'s L1.W after the update is W - lr·(dW + λ·W): fitted lr = {fmt(lr)}, λ = {fmt(lam)} (residual "
            f"{fmt(resid)} of the update), while a plain W - lr·dW does not fit{tail}. Weight decay (weight_decay=..., "
            f"an L2 term in the update) is on. Fix: weight_decay=0, or the same regularisation on both sides.")


def test_momentum_from_the_previous_gradient():
    plain, mom = W0 - LR * G, W0 - LR * (0.9 * GP + G)
    d = momentum(opt_ctx(plain, mom, first_step(), first_step(), meta_b={"impl": "torch"}))
    ev = d.evidence
    assert (d.code, d.confidence, ev["side"], ev["velocity_from"]) == ("momentum", 0.95, "B", "previous gradient")
    assert ev["momentum"] == pytest.approx(0.9, rel=1e-12) and ev["learning_rate"] == pytest.approx(LR, rel=1e-12)
    assert ev["other_learning_rate"] == pytest.approx(LR, rel=1e-12) and 0 <= ev["residual"] < 1e-14
    assert d.explanation == mom_text("Side B (torch)", ev["learning_rate"], ev["momentum"], ev["residual"],
                                     ev["other_learning_rate"])
    assert set(ev) == {"side", "momentum", "learning_rate", "residual", "other_learning_rate", "velocity_from"}
    # side A with momentum; side B's update is not known: 0.85 and no plain lr
    d = momentum(opt_ctx(mom, plain, first_step(), ()))
    assert (d.confidence, d.evidence["side"], d.evidence["other_learning_rate"]) == (0.85, "A", None)
    assert d.explanation == mom_text("Side A", d.evidence["learning_rate"], d.evidence["momentum"],
                                     d.evidence["residual"])
    # side B's update known but not plain (it has momentum too, another μ): 0.85
    d = momentum(opt_ctx(mom, W0 - LR * (0.5 * GP + G), first_step(), first_step()))
    assert (d.confidence, d.evidence["side"], d.evidence["other_learning_rate"]) == (0.85, "A", None)
    assert d.evidence["momentum"] == pytest.approx(0.9, rel=1e-12)


def test_momentum_from_the_previous_update():
    w_prev2 = W0 + 0.05 * GP  # two steps back: W0 = w_prev2 - lr·v_prev, lr·v_prev = 0.05·GP
    before = ({"L1.W": W0, "L1.dW": GP * 0 + 7}, {"L1.W": w_prev2})
    plain, mom = W0 - LR * G, W0 - LR * G - 0.8 * (w_prev2 - W0)
    d = momentum(opt_ctx(plain, mom, before, before))
    ev = d.evidence
    assert (d.confidence, ev["side"], ev["velocity_from"]) == (0.95, "B", "previous update")
    assert ev["momentum"] == pytest.approx(0.8, rel=1e-12) and ev["learning_rate"] == pytest.approx(LR, rel=1e-12)
    # two steps back without the parameter: the previous gradient is the velocity
    before = ({"L1.W": W0, "L1.dW": GP}, {"L1.b": w_prev2})
    d = momentum(opt_ctx(plain, W0 - LR * (0.6 * GP + G), before, before))
    assert (d.evidence["velocity_from"], round(d.evidence["momentum"], 12)) == ("previous gradient", 0.6)
    before = ({"L1.dW": GP}, {"L1.W": w_prev2})  # no parameter one step back: in force unknown
    assert momentum(opt_ctx(plain, mom, before, before)) is None


@pytest.mark.parametrize("mu, found", [(0.04, False), (0.06, True), (1.45, True), (1.55, False), (-0.5, False)])
def test_momentum_between_0_05_and_1_5(mu, found):
    d = momentum(opt_ctx(W0 - LR * G, W0 - LR * (mu * GP + G), first_step(), first_step()))
    assert (d is not None) == found
    if found:
        assert d.evidence["momentum"] == pytest.approx(mu, rel=1e-10)
    two = ({"L1.W": W0}, {"L1.W": W0 + 0.05 * GP})  # the fitted c is μ itself
    d = momentum(opt_ctx(W0 - LR * G, W0 - LR * G - mu * 0.05 * GP, two, two))
    assert (d is not None) == found


def test_momentum_needs_a_previous_gradient_of_the_shape():
    plain, mom = W0 - LR * G, W0 - LR * (0.9 * GP + G)
    assert momentum(opt_ctx(plain, mom, ({"L1.W": W0},), ({"L1.W": W0},))) is None
    bad = ({"L1.W": W0, "L1.dW": GP[:, :1]},)
    assert momentum(opt_ctx(plain, mom, bad, bad)) is None


def test_weight_decay():
    plain, wd = W0 - LR * G, W0 - LR * (G + 0.01 * W0)
    d = weight_decay(opt_ctx(plain, wd, first_step(), first_step(), meta_b={"impl": "jax"}))
    ev = d.evidence
    assert (d.code, d.confidence, ev["side"]) == ("weight-decay", 0.95, "B")
    assert ev["weight_decay"] == pytest.approx(0.01, rel=1e-10) and ev["learning_rate"] == pytest.approx(LR, rel=1e-12)
    assert ev["other_learning_rate"] == pytest.approx(LR, rel=1e-12) and 0 <= ev["residual"] < 1e-14
    assert set(ev) == {"side", "weight_decay", "learning_rate", "residual", "other_learning_rate"}
    assert d.explanation == wd_text("Side B (jax)", ev["learning_rate"], ev["weight_decay"], ev["residual"],
                                    ev["other_learning_rate"])
    d = weight_decay(opt_ctx(wd, plain, first_step(), ()))
    assert (d.confidence, d.evidence["side"], d.evidence["other_learning_rate"]) == (0.85, "A", None)
    assert d.explanation == wd_text("Side A", d.evidence["learning_rate"], d.evidence["weight_decay"],
                                    d.evidence["residual"])
    # growing weights (λ < 0) are no weight decay
    assert weight_decay(opt_ctx(plain, W0 - LR * (G - 0.01 * W0), first_step(), first_step())) is None


def test_weight_decay_with_the_parameters_in_force_given():
    plain, wd = W0 - LR * G, W0 - LR * (G + 0.02 * W0)
    force = {"L1.W": W0}
    d = weight_decay(opt_ctx(plain, wd, in_force_a=force, in_force_b=force))
    assert (d.confidence, d.evidence["side"]) == (0.95, "B")
    assert d.evidence["weight_decay"] == pytest.approx(0.02, rel=1e-10)
    # parameters in force without this one, or of another shape: nothing to fit
    assert weight_decay(opt_ctx(plain, wd, in_force_a={"L1.b": W0}, in_force_b={"L1.b": W0})) is None
    assert weight_decay(opt_ctx(plain, wd, in_force_a={"L1.W": W0[:2]}, in_force_b={"L1.W": W0[:2]})) is None


def test_weight_decay_at_the_first_step_with_the_parameters_recovered():
    """diff at a trace's first step: no previous step, the parameters in force recovered from the clean side's
    step (both sides' forward pass agrees)."""
    b0 = np.array([0.25, -0.5])
    z = X @ W0 + b0
    db = DZ.sum(axis=0)
    clean = {"x": X, "L1.z": z, "L1.dW": G, "L1.db": db, "L1.W": W0 - LR * G, "L1.b": b0 - LR * db}
    buggy = dict(clean, **{"L1.W": W0 - LR * (G + 0.01 * W0)})
    inputs = {"x": X, "L1.z": z, "L1.dW": G, "L1.db": db}
    c = DivergenceContext(0, "L1.W", clean["L1.W"], buggy["L1.W"], inputs, inputs, (), True,
                          step_a=clean, step_b=buggy)
    d = weight_decay(c)
    assert (d.confidence, d.evidence["side"]) == (0.95, "B")
    assert d.evidence["weight_decay"] == pytest.approx(0.01, rel=1e-8)


def test_the_update_needs_its_gradient_and_a_parameter_name():
    plain, wd = W0 - LR * G, W0 - LR * (G + 0.01 * W0)
    assert weight_decay(opt_ctx(plain, wd, first_step(), first_step(), inputs={"L1.db": G})) is None
    assert weight_decay(opt_ctx(plain, wd, first_step(), first_step(), inputs={"L1.dW": G[:2]})) is None
    assert weight_decay(opt_ctx(plain, wd, first_step(), first_step(), inputs={"L1.dW": G * 0})) is None
    c = DivergenceContext(4, "L1.dW", plain, wd, {"L1.dW": G}, {"L1.dW": G}, (), True,
                          before_a=first_step(), before_b=first_step())
    assert weight_decay(c) is None and momentum(c) is None
    assert weight_decay(opt_ctx(wd, wd, first_step(), first_step())) is None
    # the bias of layer 2, with db
    b0 = np.array([0.5, -0.25, 1.0])
    g = np.array([0.3, -0.2, 0.1])
    before = ({"L2.b": b0},)
    c = DivergenceContext(4, "L2.b", b0 - LR * g, b0 - LR * (g + 0.1 * b0), {"L2.db": g}, {"L2.db": g}, (), True,
                          before_a=before, before_b=before)
    assert weight_decay(c).evidence["weight_decay"] == pytest.approx(0.1, rel=1e-10)


def test_a_plain_update_is_neither():
    plain = W0 - LR * G
    other = W0 - 0.2 * G  # another learning rate: plain too
    assert momentum(opt_ctx(plain, other, first_step(), first_step())) is None
    assert weight_decay(opt_ctx(plain, other, first_step(), first_step())) is None
    # a negative learning rate is no update
    assert weight_decay(opt_ctx(plain, W0 + LR * G - 0.001 * W0, first_step(), first_step())) is None
    assert momentum(opt_ctx(plain, W0 + LR * G - 0.1 * GP, first_step(), first_step())) is None


def _orth(v, *against):
    """v made orthogonal to the others (all of them at once) and of unit norm."""
    m = np.stack([u.ravel() for u in against], axis=1)
    v = v.ravel() - m @ np.linalg.lstsq(m, v.ravel(), rcond=None)[0]
    return (v / np.linalg.norm(v)).reshape(W0.shape)


H = _orth(RNG.standard_normal((3, 2)), G)  # a unit direction orthogonal to G


@pytest.mark.parametrize("eps, found", [(3e-7, False), (3e-6, True)])
def test_the_plain_update_must_miss_by_100_times_the_tolerance_float64(eps, found):
    """A weight decay along a direction almost parallel to dW: the plain update's residual is about eps."""
    w = G + eps * np.linalg.norm(G) * H  # W in force nearly parallel to dW
    u = LR * G + 0.5 * w  # λ = 5
    plain_resid = np.linalg.norm(u - (u.ravel() @ G.ravel()) / (G.ravel() @ G.ravel()) * G) / np.linalg.norm(u)
    assert 0.3 < plain_resid / eps < 3
    d = weight_decay(opt_ctx(w - LR * G, w - u, ({"L1.W": w},), ({"L1.W": w},)))
    assert (d is not None) == found
    if found:
        assert d.evidence["weight_decay"] == pytest.approx(5.0, rel=1e-6)


@pytest.mark.parametrize("eps, found", [(3e-3, False), (3e-2, True)])
def test_the_plain_update_must_miss_by_100_times_the_tolerance_float32(eps, found):
    w = G + eps * np.linalg.norm(G) * H
    u = LR * G + 0.5 * w
    before = ({"L1.W": w},)
    d = weight_decay(opt_ctx(w - LR * G, w - u, before, before, meta_a={"dtype": "float32"}))
    assert (d is not None) == found


def test_the_fit_must_be_exact_to_the_dtype_s_tolerance():
    plain, wd = W0 - LR * G, W0 - LR * (G + 0.5 * W0)
    u = W0 - wd
    k = _orth(RNG.standard_normal((3, 2)), G, W0)
    off = 1e-6 * np.linalg.norm(u) * k  # a residual of 1e-6 of the update
    assert weight_decay(opt_ctx(plain, wd - off, first_step(), first_step())) is None
    d = weight_decay(opt_ctx(plain, wd - off, first_step(), first_step(), meta_b={"dtype": "float32"}))
    assert d.evidence["residual"] == pytest.approx(1e-6, rel=1e-3)
    # and the other side's plain lr is only given when its own fit is exact to the tolerance
    d = weight_decay(opt_ctx(plain - off, wd, first_step(), first_step()))
    assert (d.confidence, d.evidence["other_learning_rate"]) == (0.85, None)
    d = weight_decay(opt_ctx(plain - off, wd, first_step(), first_step(), meta_a={"dtype": "float32"}))
    assert d.confidence == 0.95 and d.evidence["other_learning_rate"] == pytest.approx(LR, rel=1e-5)


# ------------------------------------------------------------------------------------------------ found by mutation

def test_a_side_whose_update_is_unknown_or_wrong_is_passed_over_for_the_other():
    plain, wd = W0 - LR * G, W0 - LR * (G + 0.01 * W0)
    d = weight_decay(opt_ctx(plain, wd, in_force_b={"L1.W": W0}))  # A's parameters in force unknown
    assert (d.confidence, d.evidence["side"]) == (0.85, "B")
    # A's previous velocity unknown (no previous step), B's known
    d = momentum(opt_ctx(plain, W0 - LR * (0.9 * GP + G), (), first_step(), in_force_a={"L1.W": W0}))
    assert (d.evidence["side"], round(d.evidence["momentum"], 10)) == ("B", 0.9)
    # A's update fits with a negative learning rate (no update), B's is weight decay
    d = weight_decay(opt_ctx(W0 + LR * G - 0.05 * W0, wd, first_step(), first_step()))
    assert (d.evidence["side"], round(d.evidence["weight_decay"], 10)) == ("B", 0.01)


def test_a_negative_learning_rate_is_no_update_even_with_a_positive_ratio():
    """lr < 0 and c < 0 would give λ = c/lr > 0 and μ > 0."""
    plain = W0 - LR * G
    assert weight_decay(opt_ctx(plain, W0 + LR * G + 0.001 * W0, first_step(), first_step())) is None
    assert momentum(opt_ctx(plain, W0 + LR * (G + 0.9 * GP), first_step(), first_step())) is None


#: dyadic parameters, gradient and previous update along other axes: the fits come out exact
GD = np.array([[1.0, 0.0], [0.0, -2.0], [0.0, 0.0]])
VD = np.array([[0.0, 1.5], [0.0, 0.0], [0.5, 0.0]])
WD = np.array([[0.5, -1.0], [2.0, 1.5], [-0.5, 0.25]])
TWO_BACK = ({"L1.W": WD}, {"L1.W": WD + VD})  # the previous update lr·v_prev = VD


def test_an_update_of_the_previous_velocity_alone_has_a_learning_rate_of_zero():
    c = DivergenceContext(4, "L1.W", WD - 0.125 * GD, WD - 0.25 * VD, {"L1.dW": GD}, {"L1.dW": GD}, (), True,
                          before_a=TWO_BACK, before_b=TWO_BACK)
    assert momentum(c) is None and weight_decay(c) is None


def test_momentum_of_exactly_one():
    c = DivergenceContext(4, "L1.W", WD - 0.125 * GD, WD - 0.125 * GD - VD, {"L1.dW": GD}, {"L1.dW": GD}, (), True,
                          before_a=TWO_BACK, before_b=TWO_BACK)
    d = momentum(c)
    assert (d.evidence["momentum"], d.evidence["learning_rate"], d.evidence["velocity_from"]) == (
        1.0, 0.125, "previous update")


def test_a_gradient_whose_largest_value_is_one():
    g = G / np.abs(G).max()
    c = opt_ctx(W0 - LR * g, W0 - LR * (g + 0.01 * W0), first_step(), first_step(), inputs={"L1.dW": g})
    assert weight_decay(c).evidence["weight_decay"] == pytest.approx(0.01, rel=1e-10)


def test_momentum_with_the_parameters_given_and_the_previous_step_without_them():
    """Two steps back hold the parameter but the last one does not (the parameters in force given by the
    caller): the velocity is the previous gradient, and μ = c / lr as for it (it was once taken as c, as if
    it were the previous update)."""
    before = ({"L1.dW": GP}, {"L1.W": W0 + 0.3 * GP})
    c = opt_ctx(W0 - LR * G, W0 - LR * (0.9 * GP + G), before, before, in_force_a={"L1.W": W0},
                in_force_b={"L1.W": W0})
    d = momentum(c)
    assert (d.evidence["velocity_from"], round(d.evidence["momentum"], 10)) == ("previous gradient", 0.9)


def _weight_along(plain_resid):
    """W in force making the plain update's residual `plain_resid` for a weight decay of λ = 5 (c = 0.5)."""
    g = np.linalg.norm(G)
    t = plain_resid * (LR + 0.5) * g / (0.5 * np.sqrt(1 - plain_resid**2))
    return G + t * H


@pytest.mark.parametrize("resid, dtype, found", [(0.995e-6, "float64", False), (1.005e-6, "float64", True),
                                                 (0.995e-2, "float32", False), (1.005e-2, "float32", True)])
def test_the_plain_update_must_miss_by_exactly_100_times_the_tolerance(resid, dtype, found):
    w = _weight_along(resid)
    u = LR * G + 0.5 * w
    assert lstsq_fit(u, G)[1] == pytest.approx(resid, rel=1e-6)
    before = ({"L1.W": w},)
    d = weight_decay(opt_ctx(w - LR * G, w - u, before, before, meta_a={"dtype": dtype}))
    assert (d is not None) == found


def test_a_side_with_history_that_did_not_accumulate_is_passed_over_for_the_other():
    """Both sides recorded the previous step's dW; A's is this step's gradient alone, B's adds the previous
    one: A is passed over (not the end of the search) and B is named, recomputed or taken from A."""
    own = X.T @ DZ
    both = dict(before_a=({"L1.dW": P},), before_b=({"L1.dW": P},))
    d = grad_not_zeroed(ctx("L1.dW", own, own + P, **both))
    assert (d.confidence, d.evidence["side"], d.evidence["recomputed"]) == (0.95, "B", True)
    # without dz: A's value is not B's plus the previous gradient, so A is passed over and B is taken against A
    d = grad_not_zeroed(ctx("L1.dW", own, own + P, inputs_a={}, inputs_b={}, **both))
    assert (d.confidence, d.evidence["side"], d.evidence["recomputed"]) == (0.85, "B", False)


#: a previous gradient and parameters in force of powers of two on other entries than GD's: μ = c / lr is exact
VP = np.array([[0.0, 1.0], [0.0, 0.0], [0.5, 0.0]])
WP = np.array([[0.5, 0.0], [2.0, 1.5], [0.0, 0.25]])


@pytest.mark.parametrize("mu", [0.05, 1.5])
def test_momentum_of_exactly_the_ends_of_its_range(mu):
    first = ({"L1.W": WP, "L1.dW": VP},)
    c = DivergenceContext(4, "L1.W", WP - 0.125 * GD, WP - 0.125 * GD - 0.125 * mu * VP, {"L1.dW": GD},
                          {"L1.dW": GD}, (), True, before_a=first, before_b=first)
    d = momentum(c)
    assert (d.evidence["momentum"], d.evidence["learning_rate"], d.evidence["velocity_from"]) == (
        mu, 0.125, "previous gradient")

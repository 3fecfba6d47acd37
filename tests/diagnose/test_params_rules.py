"""memstate.diagnose.params on small hand-made steps: the loader's transformations (rounded, truncated, float32,
transposed) found by redoing a forward pass (L{i}.z), a backward product (L{i}.da) or an update (L{i}.W) with
the parameters in force, and at a trace's first step by recovering both sides' parameters from their own step;
each at the boundaries of its rule (the match tolerances of float64 and float32, the thousandfold improvement
over the parameters as given) with the exact numbers and sentences (found by mutation testing,
docs/testing.md)."""

from __future__ import annotations

import numpy as np
import pytest

from memstate.diagnose.common import fmt, rel_err
from memstate.diagnose.context import DivergenceContext
from memstate.diagnose.params import (
    _dense,
    _layer_params,
    _matches,
    _recompute,
    params_load_mismatch,
    recovered_in_force,
    recovered_params,
    transforms,
)
from memstate.diagnose.common import sides

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

RNG = np.random.default_rng(7)
X = RNG.standard_normal((4, 3))
W1 = RNG.standard_normal((3, 2))
B1 = RNG.standard_normal(2)
A1 = RNG.standard_normal((4, 2))  # L1.a
W2 = RNG.standard_normal((2, 2))  # square: may be transposed
B2 = RNG.standard_normal(2)
DZ2 = RNG.standard_normal((4, 2))
FORCE = {"L1.W": W1, "L1.b": B1, "L2.W": W2, "L2.b": B2}
INPUTS = {"x": X, "L1.a": A1, "L2.dz": DZ2}
F64 = DivergenceContext(0, "L1.z", np.zeros(1), np.zeros(1), {}, {}, (), True)
F32 = DivergenceContext(0, "L1.z", np.zeros(1), np.zeros(1), {}, {}, (), True, meta_b={"dtype": "float32"})


def ctx(name, a, b, inputs=None, force=FORCE, src="params file p.json", step=2, **kw) -> DivergenceContext:
    inputs = INPUTS if inputs is None else inputs
    return DivergenceContext(step, name, np.asarray(a), np.asarray(b), inputs, inputs, (), True,
                             in_force_a=force, in_force_b=force, in_force_from=src, **kw)


def known_text(side, name, step, src, how, err, base):
    return (f"{side}'s {name} at step {step} is computed from the parameters in force ({src}) {how}: redone that "
            f"way it matches to rounding (error {fmt(err)} against {fmt(base)} with the parameters as given). The "
            f"parameters were changed when they were loaded (a rounded text format, toFixed, a float32 buffer, a "
            f"transposed layout). Fix: load them bit for bit (repr / 17 significant digits, float64, the canonical "
            f"[in, out] layout).")


# ------------------------------------------------------------------------------------------------ the transformations

def test_the_transformations_in_order():
    names = [how for how, _ in transforms(False)]
    assert names == ([f"rounded to {n} decimals" for n in range(16)] + [f"truncated to {n} decimals" for n in range(16)]
                     + ["cast to float32"])
    assert [how for how, _ in transforms(True)] == names + ["transposed"]
    t = dict(transforms(True))
    v = np.array([[1.23456789, -2.98765432], [0.5, -0.0049]])
    assert t["rounded to 0 decimals"](v).tolist() == [[1.0, -3.0], [0.0, -0.0]]
    assert t["rounded to 3 decimals"](v).tolist() == [[1.235, -2.988], [0.5, -0.005]]
    assert t["rounded to 15 decimals"](v).tolist() == np.round(v, 15).tolist()
    assert t["truncated to 0 decimals"](v).tolist() == [[1.0, -2.0], [0.0, -0.0]]
    assert t["truncated to 3 decimals"](v).tolist() == [[1.234, -2.987], [0.5, -0.004]]
    assert t["truncated to 15 decimals"](v).tolist() == (np.trunc(v * 1e15) / 1e15).tolist()
    assert t["cast to float32"](v).dtype == np.float64
    assert t["cast to float32"](v).tolist() == v.astype(np.float32).astype(float).tolist()
    assert t["transposed"](v).tolist() == v.T.tolist()


def test_layer_params_and_the_dense_layer():
    assert [x.tolist() for x in _layer_params(FORCE, 1)] == [W1.tolist(), B1.tolist()]
    assert _layer_params(FORCE, 3) is None
    assert _layer_params({"L1.W": W1}, 1) is None
    assert _layer_params({"L1.b": B1}, 1) is None
    assert _layer_params({"L1.W": B1, "L1.b": B1}, 1) is None  # W must be a matrix
    w, b = _layer_params({"L1.W": W1.astype(np.float32), "L1.b": B1.astype(np.float32)}, 1)
    assert w.dtype == b.dtype == np.float64
    assert np.array_equal(_dense(X, W1, B1), X @ W1 + B1)
    assert _dense(X[0], W1, B1) is None  # a vector
    assert _dense(X[:, :2], W1, B1) is None  # the inner sizes differ
    assert _dense(X, W1, B1[:1]) is None  # the bias of another size
    assert _dense(X, W1, B1[None, :]) is None  # a 1 x out bias


def test_a_match_is_to_rounding_and_a_thousand_times_better_than_as_given():
    x = np.array([1.0, 2.0, 4.0])
    assert _matches(x, x, None, F64)
    assert not _matches(x, None, x, F64)
    assert not _matches(x, x[:2], None, F64)
    assert not _matches(x, np.array([1.0, np.nan, 4.0]), None, F64)
    assert not _matches(np.array([1.0, np.nan, 4.0]), np.array([1.0, np.nan, 4.0]), None, F64)
    near = x * (1 + 2.0**-41)  # about 4.5e-13 of the scale
    assert _matches(x, near, None, F64) and _matches(x, near, x * (1 + 1e-9), F64)
    assert not _matches(x, near, x * (1 + 4e-10), F64)  # as given is not a thousand times worse
    assert not _matches(x, x * (1 + 2.0**-38), None, F64)  # 3.6e-12: not rounding in float64
    assert _matches(x, x * (1 + 2.0**-38), None, F32)
    assert _matches(x, x * (1 + 2.0**-21), None, F32) and not _matches(x, x * (1 + 2.0**-18), None, F32)
    assert not _matches(x, x, x, F64)  # as given matches as well: no transformation to name
    # as given within rounding (a transformation such as rounding to 15 decimals that changes nothing)
    assert not _matches(x, x, x * (1 + 2.0**-41), F64) and _matches(x, x, x * (1 + 2.0**-38), F64)
    assert not _matches(x, x, x * (1 + 2.0**-21), F32) and _matches(x, x, x * (1 + 2.0**-18), F32)
    assert _matches(x, near, x[:2], F64)  # as given of another shape: infinitely worse
    assert not _matches(x, x * (1 + 2.0**-38), x[:2], F64)


# ------------------------------------------------------------------------------------------------ parameters known

def test_a_forward_pass_with_rounded_parameters():
    good = X @ W1 + B1
    bad = X @ np.round(W1, 3) + np.round(B1, 3)
    d = params_load_mismatch(ctx("L1.z", good, bad, meta_b={"impl": "js"}))
    base = rel_err(bad, good)
    assert (d.code, d.confidence) == ("params-load-mismatch", 0.95)
    assert d.evidence == {"side": "B", "transform": "rounded to 3 decimals", "params_from": "params file p.json",
                          "error_transformed": 0.0, "error_as_given": base}
    assert d.explanation == known_text("Side B (js)", "L1.z", 2, "params file p.json", "rounded to 3 decimals", 0.0,
                                       base)


def test_side_a_truncated_and_the_previous_step_s_parameters():
    good = A1 @ W2 + B2
    bad = A1 @ (np.trunc(W2 * 1e5) / 1e5) + np.trunc(B2 * 1e5) / 1e5
    d = params_load_mismatch(ctx("L2.z", bad, good, src=""))
    assert (d.evidence["side"], d.evidence["transform"], d.evidence["params_from"]) == (
        "A", "truncated to 5 decimals", "the previous step")
    assert d.explanation == known_text("Side A", "L2.z", 2, "the previous step", "truncated to 5 decimals", 0.0,
                                       rel_err(bad, good))


def test_a_transposed_square_matrix_and_a_float32_buffer():
    good = A1 @ W2 + B2
    d = params_load_mismatch(ctx("L2.z", good, A1 @ W2.T + B2))
    assert d.evidence["transform"] == "transposed"
    f32 = A1 @ W2.astype(np.float32).astype(float) + B2.astype(np.float32).astype(float)
    assert params_load_mismatch(ctx("L2.z", good, f32)).evidence["transform"] == "cast to float32"
    # layer 1's W is 3 x 2: there is no transposed layout to try, even with a square L2.W in force
    bad = X @ W1.reshape(2, 3).T + B1
    assert params_load_mismatch(ctx("L1.z", X @ W1 + B1, bad)) is None
    # only square matrices in force: "transposed" is tried
    only = {"L2.W": W2, "L2.b": B2}
    assert params_load_mismatch(ctx("L2.z", good, A1 @ W2.T + B2, force=only)).evidence["transform"] == "transposed"


def test_the_forward_pass_needs_its_input_and_parameters():
    good = X @ W1 + B1
    bad = X @ np.round(W1, 3) + np.round(B1, 3)
    assert params_load_mismatch(ctx("L1.z", good, bad, inputs={"L1.a": X})) is None
    assert params_load_mismatch(ctx("L1.z", good, bad, force={"L1.W": W1})) is None
    assert params_load_mismatch(ctx("L1.z", good, bad, force=None)) is None
    good2 = A1 @ W2 + B2
    bad2 = A1 @ np.round(W2, 3) + np.round(B2, 3)
    assert params_load_mismatch(ctx("L2.z", good2, bad2, inputs={"x": A1})) is None
    # a layer-1 z of another shape than its recomputation
    assert params_load_mismatch(ctx("L1.z", good[:, :1], bad[:, :1])) is None


def test_a_backward_product_with_rounded_parameters():
    good = DZ2 @ W2.T
    bad = DZ2 @ np.round(W2, 2).T
    d = params_load_mismatch(ctx("L1.da", good, bad))
    assert d.evidence == {"side": "B", "transform": "rounded to 2 decimals", "params_from": "params file p.json",
                          "error_transformed": 0.0, "error_as_given": rel_err(bad, good)}
    assert params_load_mismatch(ctx("L1.da", good, DZ2 @ W2)).evidence["transform"] == "transposed"
    assert params_load_mismatch(ctx("L1.da", good, bad, inputs={"x": X})) is None  # no L2.dz
    assert params_load_mismatch(ctx("L1.da", good, bad, force={"L1.W": W2})) is None  # no L2.W
    assert params_load_mismatch(ctx("L1.da", good, bad, inputs={"L2.dz": DZ2[0]})) is None
    assert params_load_mismatch(ctx("L1.da", good, bad, force={"L2.W": W2[0]})) is None
    w3 = np.hstack([W2, W2])  # 2 x 4: dz's 2 columns cannot multiply it
    assert params_load_mismatch(ctx("L1.da", good, bad, force={"L2.W": w3})) is None


def test_an_update_right_after_the_params_file():
    g = RNG.standard_normal((3, 2))
    lr = 0.05
    good, bad = W1 - lr * g, np.round(W1, 4) - lr * g
    inputs = {"L1.dW": g}
    d = params_load_mismatch(ctx("L1.W", good, bad, inputs=inputs))
    assert (d.evidence["side"], d.evidence["transform"]) == ("B", "rounded to 4 decimals")
    assert d.evidence["error_transformed"] < 1e-15
    # not after the previous step (the learning rate is fitted, too free a hand), nor without dW of the shape
    assert params_load_mismatch(ctx("L1.W", good, bad, inputs=inputs, src="step 3")) is None
    assert params_load_mismatch(ctx("L1.W", good, bad, inputs={"L1.db": g})) is None
    assert params_load_mismatch(ctx("L1.W", good, bad, inputs={"L1.dW": g[:2]})) is None
    assert params_load_mismatch(ctx("L1.W", good, bad, inputs=inputs, force={"L1.b": B1})) is None
    # the bias, and a dW of zeros (no fit)
    gb = RNG.standard_normal(2)
    d = params_load_mismatch(ctx("L1.b", B1 - lr * gb, np.trunc(B1 * 100) / 100 - lr * gb, inputs={"L1.db": gb}))
    assert d.evidence["transform"] == "truncated to 2 decimals"
    assert params_load_mismatch(ctx("L1.W", good, bad, inputs={"L1.dW": g * 0})) is None


def test_the_update_s_recomputation_returns_both_candidates():
    g = RNG.standard_normal((3, 2))
    bad = np.round(W1, 4) - 0.05 * g
    c = ctx("L1.W", W1 - 0.05 * g, bad, inputs={"L1.dW": g})
    side_b = list(sides(c))[1]
    got = _recompute(c, side_b, FORCE, lambda v: np.round(v, 4))
    assert np.allclose(got[0], bad, rtol=0, atol=1e-15)
    assert np.allclose(got[1], W1 - 0.05 * g, rtol=0, atol=1e-15)
    assert _recompute(c, side_b, FORCE, lambda v: v[:1]) is None  # a transformation that changes the shape
    # z and da likewise
    cz = ctx("L1.z", X @ W1 + B1, X @ W1 + B1)
    got = _recompute(cz, list(sides(cz))[0], FORCE, lambda v: 2 * v)
    assert np.array_equal(got[0], X @ (2 * W1) + 2 * B1) and np.array_equal(got[1], X @ W1 + B1)
    assert _recompute(cz, list(sides(cz))[0], FORCE, lambda v: v[:1]) is None
    cd = ctx("L1.da", DZ2 @ W2.T, DZ2 @ W2.T)
    got = _recompute(cd, list(sides(cd))[0], FORCE, lambda v: 2 * v)
    assert np.array_equal(got[0], DZ2 @ (2 * W2).T) and np.array_equal(got[1], DZ2 @ W2.T)
    assert _recompute(cd, list(sides(cd))[0], FORCE, lambda v: v[:1]) is None
    assert _recompute(ctx("L1.a", A1, A1), list(sides(cd))[0], FORCE, lambda v: v) is None


def test_float32_matches_to_float32_s_rounding():
    good = X @ W1 + B1
    bad = X @ np.round(W1, 3) + np.round(B1, 3)
    noisy = bad * (1 + 1e-8)
    assert params_load_mismatch(ctx("L1.z", good, noisy)) is None
    d = params_load_mismatch(ctx("L1.z", good, noisy, meta_a={"dtype": "float32"}))
    assert d.evidence["transform"] == "rounded to 3 decimals"
    assert d.evidence["error_transformed"] == pytest.approx(1e-8, rel=1e-3)


def test_the_side_that_the_parameters_as_given_reproduce_is_not_blamed():
    """Integer parameters are their own rounding to 0 decimals: side B, computed with them as given, was once
    named (rounded to 0 decimals) for side A's mistake; likewise a clean update whose rounding to 15 decimals
    changes nothing."""
    w, b = np.array([[1.0, 0.0], [2.0, -1.0], [0.0, 3.0]]), np.array([1.0, -2.0])
    force = {"L1.W": w, "L1.b": b}
    assert params_load_mismatch(ctx("L1.z", 2 * (X @ w + b), X @ w + b, force=force)) is None
    gb = np.array([0.5, -0.25])
    b0 = np.array([0.175, 2.56])
    bad = np.trunc(b0 * 10) / 10 - 0.05 * gb
    d = params_load_mismatch(ctx("L1.b", b0 - 0.05 * gb, bad, inputs={"L1.db": gb}, force={"L1.b": b0}))
    assert (d.evidence["side"], d.evidence["transform"]) == ("B", "truncated to 1 decimals")


def test_only_z_da_and_parameters_and_only_when_the_sides_differ():
    good = X @ W1 + B1
    bad = X @ np.round(W1, 3) + np.round(B1, 3)
    assert params_load_mismatch(ctx("L1.a", good, bad)) is None
    assert params_load_mismatch(ctx("L1.z", bad, bad)) is None


# ------------------------------------------------------------------------------------------------ recovered

LR = 0.1
G1 = RNG.standard_normal((3, 2))
GB = RNG.standard_normal(2)


def step(w, b, lr=LR, g=G1, gb=GB, x=X):
    """A first step's tensors: forward with (w, b), then the plain update."""
    return {"x": x, "L1.z": x @ w + b, "L1.dW": g, "L1.db": gb, "L1.W": w - lr * g, "L1.b": b - lr * gb}


def rec_ctx(sa, sb, name="L1.z", **kw):
    return DivergenceContext(0, name, sa[name], sb[name], sa, sb, (), False, step_a=sa, step_b=sb, **kw)


def test_recovered_params_from_one_step():
    w, b, lr = recovered_params(step(W1, B1), 1)
    assert lr == pytest.approx(LR, rel=1e-12)
    assert np.allclose(w, W1, rtol=0, atol=1e-14) and np.allclose(b, B1, rtol=0, atol=1e-14)
    s2 = {"L1.a": A1, "L2.z": A1 @ W2 + B2, "L2.W": W2 - 0.5 * G1[:2], "L2.b": B2 - 0.5 * GB,
          "L2.dW": G1[:2], "L2.db": GB}
    assert recovered_params(s2, 2)[2] == pytest.approx(0.5, rel=1e-12)
    for missing in ("x", "L1.z", "L1.W", "L1.b", "L1.dW", "L1.db"):
        s = step(W1, B1)
        del s[missing]
        assert recovered_params(s, 1) is None, missing
    assert recovered_params(dict(step(W1, B1), **{"L1.z": (X @ W1 + B1)[:, :1]}), 1) is None
    assert recovered_params(dict(step(W1, B1), **{"L1.db": GB[:1]}), 1) is None
    assert recovered_params(dict(step(W1, B1), **{"L1.b": B1[:1]}), 1) is None


def test_recovered_params_need_an_exact_fit():
    s = step(W1, B1)
    grad = X @ G1 + GB
    k = RNG.standard_normal(grad.shape)
    k -= (k.ravel() @ grad.ravel()) / (grad.ravel() @ grad.ravel()) * grad
    k /= np.linalg.norm(k)
    t = LR * grad
    for off, ok in ((3e-7, True), (3e-6, False)):
        z = s["L1.z"] + off * np.linalg.norm(t) * k
        assert (recovered_params(dict(s, **{"L1.z": z}), 1) is not None) == ok
    assert recovered_params(dict(s, **{"L1.z": X @ s["L1.W"] + s["L1.b"]}), 1) is None  # no change: no lr


def test_recovered_both_sides_one_rounded():
    sa, sb = step(W1, B1), step(np.round(W1, 4), np.round(B1, 4))
    d = params_load_mismatch(rec_ctx(sa, sb, meta_b={"impl": "js"}))
    ev = d.evidence
    assert (d.code, d.confidence) == ("params-load-mismatch", 0.9)
    assert (ev["side"], ev["transform"], ev["layer"], ev["params_from"]) == (
        "B", "rounded to 4 decimals", 1, "recovered from the step")
    assert ev["learning_rate"] == pytest.approx(LR, rel=1e-12) and 0 <= ev["error_transformed"] < 1e-13
    base = max(rel_err(np.round(W1, 4), W1), rel_err(np.round(B1, 4), B1))
    assert ev["difference"] == pytest.approx(base, rel=1e-6)
    assert d.explanation == (
        f"Side B (js)'s layer-1 parameters in force at step 0, recovered from its own step (z - (a·W' + b') = "
        f"lr·(a·dW + db) gives lr = {fmt(ev['learning_rate'])}, then W = W' + lr·dW), are A's rounded to 4 decimals "
        f"(to {fmt(ev['error_transformed'])}, while they differ by {fmt(ev['difference'])}): the parameters were "
        f"changed when they were loaded. Fix: load them bit for bit (repr / 17 significant digits, float64, the "
        f"canonical layout).")
    # side A's, from its update, and a transposed square matrix
    d = params_load_mismatch(rec_ctx(sb, sa, name="L1.W"))
    assert (d.evidence["side"], d.evidence["transform"]) == ("A", "rounded to 4 decimals")
    x2 = RNG.standard_normal((4, 2))
    sq = step(W2, B2, g=G1[:2], x=x2)
    sqt = step(W2.T, B2, g=G1[:2], x=x2)
    assert params_load_mismatch(rec_ctx(sq, sqt)).evidence["transform"] == "transposed"


def test_recovered_only_at_a_first_step_with_nothing_known():
    sa, sb = step(W1, B1), step(np.round(W1, 4), np.round(B1, 4))
    assert params_load_mismatch(rec_ctx(sa, sb, before_a=({"L1.W": W1},))) is None
    assert params_load_mismatch(rec_ctx(sa, sb, before_b=({"L1.W": W1},))) is None
    # (the parameters in force known and not transformed: nothing)
    other = {"L1.W": W1 * 3, "L1.b": B1 * 3}
    assert params_load_mismatch(rec_ctx(sa, sb, in_force_a=other)) is None
    assert params_load_mismatch(rec_ctx(sa, sb, in_force_b=other)) is None
    assert params_load_mismatch(rec_ctx(sa, dict(sb, **{"L1.dW": G1[:2]}))) is None
    assert params_load_mismatch(rec_ctx(dict(sa, **{"L1.dW": G1[:2]}), sb)) is None
    # other parameters entirely: no transformation gives them
    assert params_load_mismatch(rec_ctx(sa, step(W1 * 1.5, B1))) is None
    # the same recovered parameters (another learning rate): nothing was changed when loading
    assert params_load_mismatch(rec_ctx(sa, step(W1, B1, lr=0.2), name="L1.W")) is None


def test_recovered_to_the_dtype_s_tolerance():
    sa = step(W1, B1)
    wr, br = np.round(W1, 4), np.round(B1, 4)
    sb = step(wr, br)
    sb["L1.W"] = sb["L1.W"] + 1e-9  # its recovered W is 1e-9 (about 5e-10 of the scale) off the rounded one
    assert params_load_mismatch(rec_ctx(sa, sb, name="L1.W")) is None
    d = params_load_mismatch(rec_ctx(sa, sb, name="L1.W", meta_a={"dtype": "float32"}))
    assert d.evidence["transform"] == "rounded to 4 decimals"
    # float32 rounding to 6 decimals: the difference is not a thousand times the error
    sb = step(np.round(W1, 6), np.round(B1, 6))
    sb["L1.W"] = sb["L1.W"] + 1e-8
    assert params_load_mismatch(rec_ctx(sa, sb, name="L1.W", meta_a={"dtype": "float32"})) is None


def test_recovered_in_force():
    sa, sb = step(W1, B1), step(W1, B1)
    sb["L1.W"] = sb["L1.W"] + 0.001 * W1  # B's update is no plain one: its own step gives nothing
    c = rec_ctx(sa, sb, name="L1.W")
    got = recovered_in_force(c, "A")
    assert set(got) == {"L1.W", "L1.b"} and np.allclose(got["L1.W"], W1, rtol=0, atol=1e-14)
    got = recovered_in_force(c, "B")  # from A's step, since the forward passes agree
    assert np.allclose(got["L1.W"], W1, rtol=0, atol=1e-14) and np.allclose(got["L1.b"], B1, rtol=0, atol=1e-14)
    sb["L1.z"] = sb["L1.z"] * (1 + 1e-11)  # the forward passes differ: not the same start
    assert recovered_in_force(rec_ctx(sa, sb, name="L1.W"), "B") is None
    assert recovered_in_force(rec_ctx(sa, sa, name="L1.W", before_a=({},)), "A") is None
    assert recovered_in_force(rec_ctx(sa, sa, name="L1.W", in_force_b=FORCE), "A") is None
    assert recovered_in_force(rec_ctx(sa, sa, name="L1.W", in_force_a=FORCE), "B") is None
    assert recovered_in_force(rec_ctx({"x": X}, sa, name="x"), "A") is None  # no layer
    # two layers: both recovered
    s2 = dict(step(W1, B1), **{"L1.a": A1, "L2.z": A1 @ W2 + B2, "L2.W": W2 - LR * G1[:2], "L2.b": B2 - LR * GB,
                               "L2.dW": G1[:2], "L2.db": GB})
    got = recovered_in_force(rec_ctx(s2, s2, name="L2.W"), "B")
    assert sorted(got) == ["L1.W", "L1.b", "L2.W", "L2.b"] and np.allclose(got["L2.W"], W2, rtol=0, atol=1e-14)


# ------------------------------------------------------------------------------------------------ found by mutation

def test_exact_thresholds_of_a_match():
    """With a scale of 1.0 the relative errors are the differences themselves: exactly on each threshold."""
    x = np.array([1.0, 0.0])
    assert _matches(x, np.array([1.0, 1e-12]), None, F64)  # err == 1e-12
    assert _matches(x, np.array([1.0, 1e-6]), None, F32)  # err == 1e-6
    assert not _matches(x, x, np.array([1.0, 1e-12]), F64)  # as given within 1e-12: not changed
    base = 5e-10
    assert _matches(x, np.array([1.0, 1e-3 * base]), np.array([1.0, base]), F64)  # err == 1e-3 · base


def test_a_side_without_parameters_in_force_is_passed_over():
    good = X @ W1 + B1
    bad = X @ np.round(W1, 3) + np.round(B1, 3)
    c = DivergenceContext(2, "L1.z", good, bad, INPUTS, INPUTS, (), True, in_force_b=FORCE,
                          in_force_from="params file p.json")
    assert params_load_mismatch(c).evidence["transform"] == "rounded to 3 decimals"


def test_the_same_start_with_other_batches_is_no_mismatch():
    """Both sides start from the same parameters (values with two decimals, their own rounding to 2 decimals)
    but use other batches: the recovered parameters differ by rounding only (once named 'rounded to 2
    decimals', a difference of 1e-16)."""
    w, b = np.array([[0.5, -0.25], [1.0, 0.75], [-1.5, 2.0]]), np.array([0.5, 0.25])
    rng = np.random.default_rng(3)
    for _ in range(8):
        x1, x2, g1, g2 = (rng.standard_normal(s) for s in ((4, 3), (4, 3), (3, 2), (3, 2)))
        gb1, gb2 = rng.standard_normal(2), rng.standard_normal(2)
        c = rec_ctx(step(w, b, g=g1, gb=gb1, x=x1), step(w, b, g=g2, gb=gb2, x=x2))
        assert params_load_mismatch(c) is None
    # exactly the same recovered parameters (dyadic values, lr = 1/8): nothing either
    g = np.array([[1.0, 0.5], [-0.5, 0.25], [0.75, -1.0]])
    xx = np.array([[1.0, 0.5, -0.5], [0.25, 1.0, 0.0], [0.5, -1.0, 2.0], [1.5, 0.25, -0.75]])
    sa, sb = step(w, b, lr=0.125, g=g, gb=np.array([0.5, -0.25]), x=xx), step(w, b, lr=0.125, g=g, x=xx[::-1])
    assert np.array_equal(recovered_params(sa, 1)[0], w) and np.array_equal(recovered_params(sb, 1)[0], w)
    assert params_load_mismatch(rec_ctx(sa, sb)) is None


def test_only_the_bias_rounded_is_found_from_the_recovered_parameters():
    w = np.array([[0.5, -0.25], [1.0, 0.75], [-1.5, 2.0]])  # its own rounding to 2 decimals
    g = np.array([[1.0, 0.5], [-0.5, 0.25], [0.75, -1.0]])
    xx = np.array([[1.0, 0.5, -0.5], [0.25, 1.0, 0.0], [0.5, -1.0, 2.0], [1.5, 0.25, -0.75]])
    sa = step(w, B1, lr=0.125, g=g, x=xx)
    sb = step(w, np.round(B1, 2), lr=0.125, g=g, x=xx)
    assert np.allclose(recovered_params(sb, 1)[0], recovered_params(sa, 1)[0], rtol=0, atol=1e-15)  # W alike
    d = params_load_mismatch(rec_ctx(sa, sb))
    assert (d.evidence["side"], d.evidence["transform"]) == ("B", "rounded to 2 decimals")


def test_recovered_float32_tolerance_is_1e_6():
    sa = step(W1, B1)
    sb = step(np.round(W1, 1), np.round(B1, 1))
    sb["L1.W"] = sb["L1.W"] * (1 + 1e-5)  # recovered 1e-5 off the rounding; the rounding differs by ~2e-2
    assert params_load_mismatch(rec_ctx(sa, sb, name="L1.W", meta_a={"dtype": "float32"})) is None


def test_recovered_in_force_from_the_other_side_for_either_label():
    sa, sb = step(W1, B1), step(W1, B1)
    sa["L1.W"] = sa["L1.W"] + 0.001 * W1  # A's own step gives nothing
    got = recovered_in_force(rec_ctx(sa, sb, name="L1.W"), "A")
    assert np.allclose(got["L1.W"], W1, rtol=0, atol=1e-14)


def test_recovered_in_force_takes_the_other_side_when_the_forward_passes_agree_to_1e_12():
    """z = [[2, 0], [0, 0.5]]: a scale of 2, so a difference of 2e-12 is exactly 1e-12 of it."""
    x, w, b = np.eye(2), np.array([[2.0, 0.0], [0.0, 0.5]]), np.zeros(2)
    other = step(w, b, g=np.array([[0.5, 1.0], [-1.0, 0.25]]), gb=np.array([0.5, -0.5]), x=x)
    own = dict(other)
    del own["L1.dW"]
    own["L1.z"] = other["L1.z"].copy()
    own["L1.z"][0, 1] = 2e-12
    assert rel_err(own["L1.z"], other["L1.z"]) == 1e-12
    got = recovered_in_force(rec_ctx(own, other, name="L1.W"), "A")
    assert np.allclose(got["L1.W"], w, rtol=0, atol=1e-14)
    own["L1.z"][0, 1] = 4e-12
    assert recovered_in_force(rec_ctx(own, other, name="L1.W"), "A") is None


def test_recovered_params_need_z_of_the_shape_of_the_forward_pass():
    """Identical rows: z's first row alone would broadcast against the forward pass and fit."""
    x = np.tile(X[:1], (4, 1))
    s = step(W1, B1, x=x)
    assert recovered_params(s, 1) is not None
    assert recovered_params(dict(s, **{"L1.z": s["L1.z"][:1]}), 1) is None


def test_recovered_must_be_a_thousand_times_closer_transformed():
    """Rounded to 10 decimals, the sides differ by about 2e-11 of the scale (above float64's 1e-11); recovered
    1e-12 off the rounding is within 1e-11 but not a thousand times closer than that."""
    sa = step(W1, B1)
    sb = step(np.round(W1, 10), np.round(B1, 10))
    base = max(rel_err(np.round(W1, 10), W1), rel_err(np.round(B1, 10), B1))
    assert 1e-11 < base < 1e-10
    d = params_load_mismatch(rec_ctx(sa, sb, name="L1.W"))
    assert (d.evidence["side"], d.evidence["transform"]) == ("B", "rounded to 10 decimals")
    sb["L1.W"] = sb["L1.W"] + 1e-12
    assert params_load_mismatch(rec_ctx(sa, sb, name="L1.W")) is None

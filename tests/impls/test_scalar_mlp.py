"""The scalar autodiff engine and the MLP built on it: gradients by backward() alone, numpy's trace."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from memstate.impls.scalar_engine import Value
from memstate.errors import ScenarioError
from memstate.runner.initparams import init_params
from memstate.names import canonical_names
from memstate.runner.registry import get_impl
from memstate.runner.harness import prepare_data, run
from memstate.runner.scenario import NetSpec, load_scenario
from memstate.formats.trace import read_trace
from memstate.runner.variants import Variant
from impl_helpers import disagreement, real_batches, record_steps

LAYERS = (196, 32, 10)

# Agreement with numpy (hand-derived gradients). The same maths in another order: sums run in another
# order (float64 error <= ~K * 2**-53 * sum|terms|, K <= 196, so ~2e-14 of the terms' size), and the
# gradients come out of the chain rule through log-softmax instead of `(probs - y) / B`, a few more
# roundings of the same size. Measured worst case over three steps: ~3e-16 of max(1, max|tensor|).
# 1e-12 leaves room and is 1e4 below the smallest variant effect (~1e-8).
TOL = 1e-12
TOL_F32 = 1e-5  # dtype_mix: float32 sums in different orders (2**-24 ~ 6e-8 per rounding)
FORWARD = ["x", "y", "L1.z", "L1.a", "L2.z", "probs", "loss"]


def spec_for(activation="relu", reduction="mean", **variant):
    return NetSpec(LAYERS, activation, reduction, "float64", Variant(**variant))


def scaled(factor):
    return {k: v * factor for k, v in init_params(LAYERS, "he", 0).items()}


# ---------------------------------------------------------------- the engine

def numeric_grads(f, xs, h=1e-6):
    out = []
    for i in range(len(xs)):
        up, down = list(xs), list(xs)
        up[i] += h
        down[i] -= h
        out.append((f(*[Value(v) for v in up]).data - f(*[Value(v) for v in down]).data) / (2 * h))
    return out


EXPRESSIONS = {
    "mul-add": lambda a, b, c: a * b + c * a,
    "sub-div": lambda a, b, c: (a - b) / (c * c + 1.0) - 2.0 / (b + 3.0) + (1.0 - c),
    "exp-log": lambda a, b, c: (a * b).exp().log() + (c.exp() + 1.0).log() * a,
    "relu": lambda a, b, c: (a * 3.0).relu() * b + (c - 0.5).relu(-1.0) + (-a).relu(),
    "sigmoid": lambda a, b, c: (a * b + c).sigmoid() * c,
    "shared": lambda a, b, c: (lambda d: d * d + d / b + Value.sum([d, a, c, d]))(a * b + c),
    "softmax-ce": lambda a, b, c: -((a - Value.sum([a.exp(), b.exp(), c.exp()]).log()) * 1.0),
    "f32": lambda a, b, c: (a * b).f32() + c,
}


@pytest.mark.parametrize("name", sorted(EXPRESSIONS))
def test_gradients_match_central_differences(name):
    f = EXPRESSIONS[name]
    xs = [0.7, -1.3, 0.4]
    values = [Value(v) for v in xs]
    f(*values).backward()
    # central differences: O(h^2) truncation plus ~eps/h rounding, ~1e-9 here; f32 rounds at ~1e-7 (/h)
    tol = 0.2 if name == "f32" else 1e-6
    for v, numeric in zip(values, numeric_grads(f, xs, h=1e-3 if name == "f32" else 1e-6)):
        assert abs(v.grad - numeric) <= tol * max(1.0, abs(numeric)), (name, v.grad, numeric)


def test_chain_of_100000_nodes_needs_no_recursion():
    x = Value(1.0)
    v = x
    for _ in range(100_000):
        v = v * 1.000001
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(200)  # backward must not recurse at all
    try:
        v.backward()
    finally:
        sys.setrecursionlimit(limit)
    assert math.isclose(x.grad, 1.000001**100_000, rel_tol=1e-9)


def test_shared_nodes_accumulate_and_backward_can_run_twice():
    a = Value(3.0)
    square = a * a
    b = square + a  # a used three times
    b.backward()
    assert a.grad == 7.0 and square.grad == 1.0
    assert a._users == square._users == b._users == 0  # backward's bookkeeping is left clean
    b.backward()  # as in micrograd, every grad accumulates: square.grad 2, a.grad 7 + (2 * 2 * 3 + 1)
    assert square.grad == 2.0 and a.grad == 20.0


def test_ieee_semantics():
    assert Value(1000.0).exp().data == math.inf
    zero = Value(0.0)
    assert zero.log().data == -math.inf
    assert math.isnan((zero / zero).data) and (Value(1.0) / zero).data == math.inf
    y = Value(0.0) * zero.log()  # 0 * log(0): the raw-log bug
    assert math.isnan(y.data)
    p = Value(0.0)
    (0.0 * p.log()).backward()
    assert math.isnan(p.grad)  # d/dp of 0 * log(p) at 0 is 0 * inf = nan, as in JAX


# ---------------------------------------------------------------- the network against numpy

@pytest.mark.parametrize("activation", ["relu", "sigmoid", "shifted-relu"])
def test_steps_agree_with_numpy(activation):
    steps = 3 if activation == "relu" else 2
    spec, params, batches = spec_for(activation), init_params(LAYERS, "he", 0), real_batches(steps)
    ours, theirs = record_steps("scalar", spec, params, batches), record_steps("numpy", spec, params, batches)
    for mine, ref in zip(ours, theirs):
        assert list(mine) == list(ref) == canonical_names(2)
        for name in ref:
            assert mine[name].shape == ref[name].shape, name
            assert disagreement(mine[name], ref[name]) <= TOL, name


AGREEING = [  # variants an autodiff program reproduces exactly as the hand-derived one does
    ({"round_params": 8}, "mean", 8, TOL),
    ({"loss_reduction": "sum"}, "sum", 8, TOL),
    ({"bias_grad_axis": "features"}, "mean", 10, TOL),
    ({"dtype_mix": "L1"}, "mean", 8, TOL_F32),
    ({"dtype_mix": "L2"}, "mean", 8, TOL_F32),
    ({"log": "raw"}, "mean", 8, TOL),      # no p == 0 here: d(-log p)/dz is p - y
    ({"log": "masked"}, "mean", 8, TOL),
]


@pytest.mark.parametrize("variant,reduction,size,tol", AGREEING, ids=lambda v: str(v))
def test_variants_agree_with_numpy(variant, reduction, size, tol):
    spec, params, batches = spec_for(reduction=reduction, **variant), init_params(LAYERS, "he", 0), real_batches(2, size)
    for mine, ref in zip(record_steps("scalar", spec, params, batches), record_steps("numpy", spec, params, batches)):
        for name in ref:
            assert disagreement(mine[name], ref[name]) <= tol, name


def first_step(params=None, batch=8, reduction="mean", **variant):
    params = init_params(LAYERS, "he", 0) if params is None else params
    return record_steps("scalar", spec_for(reduction=reduction, **variant), params, real_batches(1, batch))[0]


@pytest.mark.parametrize("variant", [{"softmax_max": "global"}, {"softmax_max": "none"},
                                     {"softmax_sum": "global"}, {"softmax_sum": "column"}], ids=str)
def test_softmax_bugs_with_safe_log_show_in_probs_only(variant):
    """Autodiff of a loss from the logits never sees the broken probs (docs/variants.md)."""
    params = scaled(50) if "softmax_max" in variant else None
    clean, buggy = first_step(params), first_step(params, **variant)
    ref = record_steps("numpy", spec_for(**variant), params or init_params(LAYERS, "he", 0), real_batches(1))[0]
    for name in FORWARD:  # the forward pass is numpy's, bug included
        assert disagreement(buggy[name], ref[name]) <= TOL, name
    assert not np.array_equal(buggy["probs"], clean["probs"], equal_nan=True)
    for name in canonical_names(2)[len(FORWARD):]:  # the gradients are the clean network's
        assert np.array_equal(buggy[name], clean[name]), name


def test_softmax_bug_reaches_gradients_through_a_loss_from_probs():
    clean = first_step(softmax_sum="global", log="safe")
    buggy = first_step(softmax_sum="global", log="eps")
    assert np.isfinite(buggy["L2.dz"]).all()
    assert disagreement(buggy["L2.dz"], clean["L2.dz"]) > 1e-3


def test_raw_log_of_zero_probability_poisons_every_gradient():
    rec = first_step(scaled(50), log="raw")
    assert (rec["probs"] == 0).any() and math.isnan(rec["loss"])
    assert np.isnan(rec["L2.dz"]).all() and np.isnan(rec["L1.W"]).any()
    eps, masked = first_step(scaled(50), log="eps"), first_step(scaled(50), log="masked")
    for rec in (eps, masked):
        assert math.isfinite(rec["loss"]) and np.isfinite(rec["L1.dW"]).all()


def test_eps_biases_the_gradients_slightly():
    eps, clean = first_step(log="eps"), first_step()
    assert 0 < disagreement(eps["L2.dz"], clean["L2.dz"]) < 1e-5


def test_round_params_and_bias_axis_and_dtype_mix_effects():
    rec = first_step(round_params=8)
    values = rec["L1.W"].ravel().tolist()
    assert values == [round(v, 8) for v in values]
    clean, buggy = first_step(batch=10), first_step(batch=10, bias_grad_axis="features")
    assert np.allclose(buggy["L2.db"], buggy["L2.dz"].sum(axis=1), rtol=0, atol=1e-15)
    assert not np.allclose(buggy["L2.db"], clean["L2.db"]) and np.array_equal(buggy["L1.db"], clean["L1.db"])
    with pytest.raises(ScenarioError, match="as wide as the batch"):
        first_step(bias_grad_axis="features")
    clean, mixed = first_step(), first_step(dtype_mix="L2")
    assert np.array_equal(clean["L1.z"], mixed["L1.z"])
    rel = np.max(np.abs(mixed["L2.z"] - clean["L2.z"])) / np.max(np.abs(clean["L2.z"]))
    assert 1e-9 < rel < 1e-5


# ---------------------------------------------------------------- the rest of the interface

def test_params_logits_and_set_params():
    params = init_params(LAYERS, "he", 0)
    for mix in (None, "L1"):
        net = get_impl("scalar").make(spec_for(dtype_mix=mix), params)
        x = prepare_data(load_scenario("mnist14-relu").data).test_x[:50]
        ref = get_impl("numpy").make(spec_for(dtype_mix=mix), params).logits(x)
        assert disagreement(net.logits(x), ref) <= (TOL if mix is None else TOL_F32)
    out = net.params()
    assert isinstance(out["L1.W"], list) and all(np.array_equal(np.asarray(out[k]), v) for k, v in params.items())
    net.set_params(scaled(2))
    assert np.array_equal(np.asarray(net.params()["L2.W"]), scaled(2)["L2.W"])


def test_runs_through_the_harness(tmp_path):
    scenario = load_scenario("mnist14-relu")
    result = run(scenario, "scalar", steps=2, out=tmp_path / "scalar.memstate.jsonl")
    reference = run(scenario, "numpy", steps=2, out=None, evaluate=False)
    assert np.allclose(result.losses, reference.losses, rtol=TOL, atol=0)
    steps = read_trace(tmp_path / "scalar.memstate.jsonl")
    assert [s.index for s in steps] == [0, 1] and steps[0].names() == canonical_names(2)
    assert result.meta["computes_in"].startswith("float64")


def test_reproduces_the_independent_conformance_trace():
    """tests/conformance/small.*: two steps written by an independent float64 writer (lr 0.1, mean)."""
    from memstate.formats.params import read_params

    conformance = Path(__file__).resolve().parents[1] / "conformance"
    params = read_params(conformance / "small.params.json").tensors
    steps = read_trace(conformance / "small.memstate.jsonl")
    batches = [(s.tensors["x"], np.argmax(s.tensors["y"], axis=1)) for s in steps]
    ours = record_steps("scalar", spec_for(), params, batches)
    for mine, ref in zip(ours, steps):
        assert list(mine) == ref.names()
        for name, value in ref.tensors.items():
            assert disagreement(mine[name], value) <= TOL, name

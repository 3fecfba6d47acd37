"""The pure-Python MLP: no numpy anywhere in it, and the NumPy implementation's trace, bugs included."""

from __future__ import annotations

import ast
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from memstate.errors import ScenarioError
from memstate.runner.initparams import init_params
from memstate.names import canonical_names
from memstate.runner.registry import get_impl
from memstate.runner.harness import prepare_data, run
from memstate.runner.scenario import NetSpec, load_scenario
from memstate.formats.trace import read_trace
from memstate.runner.variants import Variant
from impl_helpers import disagreement, real_batches, record_steps

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "impls" / "python_mlp.py"
LAYERS = (196, 32, 10)

# Agreement with numpy. Both compute every tensor with the same formula and differ only in summation
# order (BLAS blocking and pairwise sums against left-to-right `sum`). For a sum of K terms the float64
# rounding error is at most about K * 2**-53 * sum|terms| (K <= 196 here: ~2e-14 of the terms'
# magnitude), and the measured worst case over three steps is ~3e-16 of max(1, max|tensor|). 1e-12
# leaves a wide margin for the a-priori bound and is still 1e4 below the smallest effect of any variant
# (round_params=8 and log=eps move values by ~1e-8).
TOL = 1e-12
# dtype_mix: numpy's sgemm and this row-order float32 sum both round to float32 (2**-24 ~ 6e-8 per
# operation), in different orders: the mixed layer and everything after it agree to float32 rounding.
TOL_F32 = 1e-5


def spec_for(activation="relu", reduction="mean", layers=LAYERS, **variant):
    return NetSpec(layers, activation, reduction, "float64", Variant(**variant))


def scaled(factor, seed=0):
    return {k: v * factor for k, v in init_params(LAYERS, "he", seed).items()}


# ---------------------------------------------------------------- no numpy

def test_source_imports_no_numpy():
    tree = ast.parse(SOURCE.read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    assert imported == {"__future__", "math", "struct", "memstate.runner.variants"}


def test_imports_and_trains_with_numpy_poisoned():
    """With `numpy` unimportable, the module still imports and trains on plain lists."""
    code = """
import sys
sys.modules["numpy"] = None  # any `import numpy`, direct or indirect, now raises ImportError
from types import SimpleNamespace
from memstate.runner.variants import Variant
import memstate.impls.python_mlp as m
spec = SimpleNamespace(layers=(4, 3, 10), activation="relu", loss_reduction="mean", dtype="float64",
                       variant=Variant(), n_layers=2, check_batch=lambda batch: None)
params = {"L1.W": [[0.1 * (i - j) for j in range(3)] for i in range(4)], "L1.b": [0.0] * 3,
          "L2.W": [[0.05 * (i + j) for j in range(10)] for i in range(3)], "L2.b": [0.0] * 10}
net = m.make(spec, params)
names = []
loss = net.train_step([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 1.0]], [3, 7], 0.1, lambda n, v: names.append(n))
assert names[:2] == ["x", "y"] and names[-1] == "L2.b" and loss == loss, (names, loss)
assert [k for k in sys.modules if k == "numpy" or k.startswith("numpy.")] == ["numpy"]
print("ok", loss)
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok")


def test_ieee_helpers():
    from memstate.impls import python_mlp as m

    assert m._exp(1000.0) == math.inf and m._exp(-1000.0) == 0.0
    assert m._log(0.0) == -math.inf and math.isnan(m._log(-1.0)) and math.isnan(m._log(math.nan))
    assert math.isnan(m._div(0.0, 0.0)) and m._div(1.0, 0.0) == math.inf and m._div(-1.0, 0.0) == -math.inf
    assert m._div(1.0, -0.0) == -math.inf
    assert math.isnan(0.0 * m._log(0.0))  # the raw-log bug: 0 * -inf
    assert math.isnan(m._max([1.0, math.nan, 2.0])) and m._max([1.0, 3.0]) == 3.0
    assert m._f32(0.1) == float(np.float32(0.1)) and m._f32(1e39) == math.inf and m._f32(-1e39) == -math.inf
    with np.errstate(over="ignore"):  # near float32's top: rounds to FLT_MAX, or to inf from halfway up
        for v in (3.4028235e38, 3.4028235677973366e38, -3.40282357e38, 1e-46, 2.0**-149 * 0.75):
            assert m._f32(v) == float(np.float32(v)), v


# ---------------------------------------------------------------- agreement with numpy

def test_three_steps_agree_with_numpy_names_order_and_values():
    spec, params, batches = spec_for(), init_params(LAYERS, "he", 0), real_batches()
    ours, theirs = record_steps("python", spec, params, batches), record_steps("numpy", spec, params, batches)
    for mine, ref in zip(ours, theirs):
        assert list(mine) == list(ref) == canonical_names(2)
        for name in ref:
            assert mine[name].shape == ref[name].shape, name
            assert disagreement(mine[name], ref[name]) <= TOL, name


@pytest.mark.parametrize("activation", ["sigmoid", "shifted-relu"])
def test_other_activations_agree_with_numpy(activation):
    spec, params, batches = spec_for(activation), init_params(LAYERS, "xavier", 1), real_batches(2)
    for mine, ref in zip(record_steps("python", spec, params, batches), record_steps("numpy", spec, params, batches)):
        for name in ref:
            assert disagreement(mine[name], ref[name]) <= TOL, name


VARIANTS = [  # (variant, loss reduction, params scale, batch size, tolerance)
    ({"softmax_max": "global"}, "mean", 50, 8, TOL),
    ({"softmax_max": "none"}, "mean", 50, 8, TOL),
    ({"softmax_sum": "global"}, "mean", 1, 8, TOL),
    ({"softmax_sum": "column"}, "mean", 1, 8, TOL),
    ({"log": "raw"}, "mean", 50, 8, TOL),
    ({"log": "eps"}, "mean", 50, 8, TOL),
    ({"log": "masked"}, "mean", 50, 8, TOL),
    ({"softmax_max": "global", "log": "masked"}, "mean", 50, 8, TOL),
    ({"round_params": 8}, "mean", 1, 8, TOL),
    ({"round_params": 3}, "mean", 1, 8, TOL),
    ({"loss_reduction": "sum"}, "sum", 1, 8, TOL),
    ({"dtype_mix": "L1"}, "mean", 1, 8, TOL_F32),
    ({"dtype_mix": "L2"}, "mean", 1, 8, TOL_F32),
    ({"bias_grad_axis": "features"}, "mean", 1, 10, TOL),
]


@pytest.mark.parametrize("variant,reduction,scale,size,tol", VARIANTS, ids=lambda v: str(v))
def test_every_variant_agrees_with_numpy(variant, reduction, scale, size, tol):
    """The hand-derived backward passes share the bugs' semantics, nan and inf included."""
    spec, params, batches = spec_for(reduction=reduction, **variant), scaled(scale), real_batches(3, size)
    for mine, ref in zip(record_steps("python", spec, params, batches), record_steps("numpy", spec, params, batches)):
        assert list(mine) == list(ref)
        for name in ref:
            assert disagreement(mine[name], ref[name]) <= tol, name


# ---------------------------------------------------------------- each variant's own effect

def first_step(params=None, batch=8, reduction="mean", **variant):
    params = init_params(LAYERS, "he", 0) if params is None else params
    return record_steps("python", spec_for(reduction=reduction, **variant), params, real_batches(1, batch))[0]


def test_softmax_max_global_underflows_rows_that_row_max_keeps():
    big = scaled(50)
    bad, good = first_step(big, softmax_max="global")["probs"], first_step(big)["probs"]
    assert not np.isnan(good).any() and np.allclose(good.sum(axis=1), 1)
    broken = np.isnan(bad).all(axis=1) | (bad == 0).all(axis=1)
    assert broken.any() and not broken.all()


def test_softmax_max_none_overflows():
    probs = first_step(scaled(50), softmax_max="none")["probs"]
    assert np.isnan(probs).any()  # exp overflows to inf, inf / inf = nan


def test_softmax_sum_global_and_column():
    rows = first_step(softmax_sum="global")["probs"].sum(axis=1)
    assert np.allclose(rows.sum(), 1) and np.all(rows < 0.5)  # each row ~1/B, not 1
    cols = first_step(softmax_sum="column")["probs"]
    assert np.allclose(cols.sum(axis=0), 1) and not np.allclose(cols.sum(axis=1), 1)


def test_log_variants_on_zero_probabilities():
    big = scaled(50)
    raw, eps, masked, safe = (first_step(big, log=how) for how in ("raw", "eps", "masked", "safe"))
    assert (raw["probs"] == 0).any()
    assert math.isnan(raw["loss"])
    assert math.isfinite(eps["loss"]) and math.isfinite(masked["loss"]) and math.isfinite(safe["loss"])
    assert (eps["probs"][eps["y"] == 1] == 0).any()  # some label has p == 0 exactly
    # eps charges at most -log(1e-8) per sample; masked drops the p == 0 terms, so it falls below the
    # true loss (safe, from the logits), which counts them in full
    assert eps["loss"] <= -math.log(1e-8) + 1e-12
    assert masked["loss"] < safe["loss"]


def test_round_params_rounds_every_update():
    rec = first_step(round_params=8)
    for name in ("L1.W", "L1.b", "L2.W", "L2.b"):
        values = rec[name].ravel().tolist()
        assert values == [round(v, 8) for v in values], name
    clean = first_step()
    assert 0 < np.max(np.abs(rec["L1.W"] - clean["L1.W"])) <= 5e-9 + 1e-17


def test_loss_reduction_sum_scales_loss_and_gradients_by_batch():
    mean, total = first_step(), first_step(reduction="sum", loss_reduction="sum")
    assert abs(total["loss"] - 8 * mean["loss"]) <= 1e-12 * total["loss"]
    assert np.allclose(total["L1.dW"], 8 * mean["L1.dW"], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("layer", ["L1", "L2"])
def test_dtype_mix_rounds_one_layer_to_float32(layer):
    clean, mixed = first_step(), first_step(dtype_mix=layer)
    before = ["x", "y"] + (["L1.z", "L1.a"] if layer == "L2" else [])
    for name in before:
        assert np.array_equal(clean[name], mixed[name]), name
    z = f"{layer}.z"
    rel = np.max(np.abs(mixed[z] - clean[z])) / np.max(np.abs(clean[z]))
    assert 1e-9 < rel < 1e-5
    assert np.array_equal(mixed[z].astype(np.float32).astype(np.float64), mixed[z])  # float32 values


def test_bias_grad_axis_features():
    clean, buggy = first_step(batch=10), first_step(batch=10, bias_grad_axis="features")
    assert np.array_equal(clean["L2.dz"], buggy["L2.dz"])
    assert not np.allclose(buggy["L2.db"], clean["L2.db"])
    assert np.allclose(buggy["L2.db"], buggy["L2.dz"].sum(axis=1), rtol=0, atol=1e-15)
    assert np.array_equal(clean["L1.db"], buggy["L1.db"])  # width 32 != batch 10: left alone
    with pytest.raises(ScenarioError, match="as wide as the batch"):
        first_step(batch=8, bias_grad_axis="features")


# ---------------------------------------------------------------- the rest of the interface

def test_params_logits_and_set_params():
    params = init_params(LAYERS, "he", 0)
    net = get_impl("python").make(spec_for(), params)
    out = net.params()
    assert isinstance(out["L1.W"], list) and len(out["L1.W"]) == 196 and len(out["L1.W"][0]) == 32
    assert all(np.array_equal(np.asarray(out[k]), v) for k, v in params.items())
    x = prepare_data(load_scenario("mnist14-relu").data).test_x[:50]
    ref = get_impl("numpy").make(spec_for(), params).logits(x)
    assert disagreement(net.logits(x), ref) <= TOL
    net.set_params(scaled(2))
    assert np.array_equal(np.asarray(net.params()["L2.W"]), scaled(2)["L2.W"])


def test_runs_through_the_harness(tmp_path):
    scenario = load_scenario("mnist14-relu")
    result = run(scenario, "python", steps=3, out=tmp_path / "py.memstate.jsonl")
    reference = run(scenario, "numpy", steps=3, out=None, evaluate=False)
    assert np.allclose(result.losses, reference.losses, rtol=TOL, atol=0)
    steps = read_trace(tmp_path / "py.memstate.jsonl")
    assert [s.index for s in steps] == [0, 1, 2] and steps[0].names() == canonical_names(2)
    assert result.final_test_accuracy is not None


def test_reproduces_the_independent_conformance_trace():
    """tests/conformance/small.*: two steps written by an independent float64 writer (lr 0.1, mean)."""
    from memstate.formats.params import read_params

    conformance = Path(__file__).resolve().parents[1] / "conformance"
    params = read_params(conformance / "small.params.json").tensors
    steps = read_trace(conformance / "small.memstate.jsonl")
    batches = [(s.tensors["x"], np.argmax(s.tensors["y"], axis=1)) for s in steps]
    ours = record_steps("python", spec_for(), params, batches)
    for mine, ref in zip(ours, steps):
        assert list(mine) == ref.names()
        for name, value in ref.tensors.items():
            assert disagreement(mine[name], value) <= TOL, name

"""The NumPy implementation: hand-derived gradients match finite differences; runs are bit-reproducible."""

from __future__ import annotations

import numpy as np
import pytest

from memstate.runner.initparams import init_params
from memstate.names import canonical_names
from memstate.runner.registry import get_impl
from memstate.runner.scenario import NetSpec

LAYERS = (12, 7, 5, 10)


def collect(net, x, labels, lr=0.0):
    out: dict[str, np.ndarray] = {}
    net.train_step(x, labels, lr, lambda name, value: out.__setitem__(name, np.array(value)))
    return out


def batch(seed=1, n=6, inputs=LAYERS[0]):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, inputs)), rng.integers(0, 10, n)


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "shifted-relu"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gradients_match_central_differences(activation, reduction):
    spec = NetSpec(LAYERS, activation, reduction, "float64")
    params = init_params(LAYERS, "xavier", 3)
    params = {k: v + 0.05 for k, v in params.items()}  # non-zero biases
    x, labels = batch()
    impl = get_impl("numpy")
    grads = collect(impl.make(spec, params), x, labels)
    h = 1e-6
    rng = np.random.default_rng(0)
    worst = 0.0
    for name in params:
        grad = grads[name.replace(".", ".d")]
        for flat in rng.choice(params[name].size, size=min(6, params[name].size), replace=False):
            idx = np.unravel_index(flat, params[name].shape)
            losses = []
            for sign in (+1, -1):
                p = {k: v.copy() for k, v in params.items()}
                p[name][idx] += sign * h
                losses.append(float(collect(impl.make(spec, p), x, labels)["loss"]))
            numeric = (losses[0] - losses[1]) / (2 * h)
            worst = max(worst, abs(numeric - grad[idx]) / max(1e-3, abs(numeric)))
    # central differences are accurate to O(h^2) + eps*|loss|/h ~ 1e-10 relative; 1e-6 leaves room for kinks
    assert worst < 1e-6


def test_records_canonical_names_shapes_and_dtypes():
    spec = NetSpec((196, 32, 10), "relu", "mean", "float32")
    net = get_impl("numpy").make(spec, init_params((196, 32, 10), "he", 0, "float32"))
    rec = collect(net, *batch(n=8, inputs=196), lr=0.1)
    assert list(rec) == canonical_names(2)
    assert rec["L1.z"].shape == (8, 32) and rec["L2.dW"].shape == (32, 10) and rec["loss"].shape == ()
    assert {str(v.dtype) for v in rec.values()} == {"float32"}
    np.testing.assert_allclose(rec["probs"].sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(rec["y"].argmax(axis=1), batch(n=8, inputs=196)[1])


def test_update_is_sgd_and_dz_is_probs_minus_y():
    spec = NetSpec((196, 32, 10), "relu", "mean", "float64")
    params = init_params((196, 32, 10), "he", 0)
    rec = collect(get_impl("numpy").make(spec, params), *batch(n=8, inputs=196), lr=0.1)
    np.testing.assert_array_equal(rec["L2.dz"], (rec["probs"] - rec["y"]) / 8)
    np.testing.assert_array_equal(rec["L1.W"], params["L1.W"] - 0.1 * rec["L1.dW"])


def test_runs_are_bit_identical(tmp_path):
    from memstate.runner.harness import run
    from memstate.runner.scenario import load_scenario
    from memstate.formats.trace import read_trace

    s = load_scenario("mnist14-relu")
    a = run(s, "numpy", steps=3, out=tmp_path / "a.memstate", evaluate=False)
    b = run(s, "numpy", steps=3, out=tmp_path / "b.memstate", evaluate=False)
    assert a.losses == b.losses
    for sa, sb in zip(read_trace(a.trace), read_trace(b.trace), strict=True):
        assert sa.names() == sb.names()
        for name in sa.names():
            assert sa.tensors[name].tobytes() == sb.tensors[name].tobytes(), name


def test_training_learns_on_real_digits():
    from memstate.runner.harness import run
    from memstate.runner.scenario import load_scenario

    result = run(load_scenario("mnist14-relu"), "numpy", steps=300)
    assert np.mean(result.losses[-50:]) < 0.6 * np.mean(result.losses[:20])
    assert result.final_test_accuracy > 0.75

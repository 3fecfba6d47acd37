"""Each variant switch of the NumPy implementation does what docs/variants.md says, measured on one step."""

from __future__ import annotations

import numpy as np
import pytest

from memstate.errors import ScenarioError
from memstate.runner.initparams import init_params
from memstate.runner.registry import get_impl
from memstate.runner.scenario import NetSpec
from memstate.runner.variants import Variant

LAYERS = (196, 32, 10)


def step(variant=Variant(), scale=1.0, batch=8, reduction="mean", layers=LAYERS):
    params = {k: v * scale for k, v in init_params(layers, "he", 0).items()}
    net = get_impl("numpy").make(NetSpec(layers, "relu", reduction, "float64", variant), params)
    rng = np.random.default_rng(5)
    x, labels = (rng.random((batch, layers[0])) > 0.5).astype(float), rng.integers(0, 10, batch)
    rec: dict[str, np.ndarray] = {}
    net.train_step(x, labels, 0.1, lambda n, v: rec.__setitem__(n, np.array(v)))
    return rec


def test_global_max_underflows_whole_rows_where_row_max_does_not():
    good, bad = step(scale=40), step(Variant(softmax_max="global"), scale=40)
    assert np.isfinite(good["probs"]).all()
    dead = np.isnan(bad["probs"]).all(axis=1) | (bad["probs"] == 0).all(axis=1)
    assert dead.sum() >= 1
    gap = good["L2.z"].max() - good["L2.z"].max(axis=1)
    assert (gap[dead] > 708).all()  # exp(-708) is the edge of float64


def test_no_max_overflows_to_nan():
    assert np.isnan(step(Variant(softmax_max="none"), scale=40)["probs"]).any()
    np.testing.assert_allclose(step(Variant(softmax_max="none"))["probs"], step()["probs"], rtol=1e-13)


def test_global_and_column_sums():
    g = step(Variant(softmax_sum="global"))["probs"]
    np.testing.assert_allclose(g.sum(), 1.0, rtol=1e-14)
    np.testing.assert_allclose(g.sum(axis=1).mean(), 1 / 8, rtol=1e-14)
    c = step(Variant(softmax_sum="column"))["probs"]
    np.testing.assert_allclose(c.sum(axis=0), np.ones(10), rtol=1e-14)


def test_log_variants():
    raw, eps, masked, safe = (step(Variant(log=v), scale=40)["loss"] for v in ("raw", "eps", "masked", "safe"))
    assert np.isnan(raw)  # some p == 0 and 0 * log(0) = nan
    assert np.isfinite(eps) and np.isfinite(masked) and np.isfinite(safe)
    assert masked < safe  # the log(0) terms that would be +inf are dropped
    small_eps, small_safe = step(Variant(log="eps"))["loss"], step()["loss"]
    assert 0 < small_safe - small_eps < 1e-6  # log(p + 1e-8) > log(p)


def test_round_params_and_loss_reduction():
    r = step(Variant(round_params=8))
    for name in ("L1.W", "L1.b", "L2.W", "L2.b"):
        np.testing.assert_array_equal(r[name], np.round(r[name], 8))
    mean, total = step(), step(reduction="sum")
    np.testing.assert_allclose(total["loss"], 8 * mean["loss"], rtol=1e-14)
    np.testing.assert_allclose(total["L1.dW"], 8 * mean["L1.dW"], rtol=1e-12, atol=1e-15)


def test_dtype_mix_rounds_one_layer_to_float32():
    mixed, clean = step(Variant(dtype_mix="L1")), step()
    rel = np.abs(mixed["L1.z"] - clean["L1.z"]).max() / np.abs(clean["L1.z"]).max()
    assert 1e-9 < rel < 1e-6
    np.testing.assert_array_equal(mixed["L1.z"], mixed["L1.z"].astype(np.float32).astype(np.float64))


def test_bias_grad_axis_needs_a_layer_as_wide_as_the_batch():
    wrong, right = step(Variant(bias_grad_axis="features"), batch=10), step(batch=10)
    np.testing.assert_allclose(wrong["L2.db"], right["L2.dz"].sum(axis=1))
    np.testing.assert_array_equal(wrong["L1.db"], right["L1.db"])  # 32 wide: unaffected
    with pytest.raises(ScenarioError, match="needs a layer as wide as the batch"):
        step(Variant(bias_grad_axis="features"), batch=8)

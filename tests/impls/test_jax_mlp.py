"""The JAX implementation: autodiff agrees with the NumPy implementation's hand-derived maths, and every
variant switch does what docs/variants.md says, as an autodiff program would."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("jax")

from memstate.errors import ScenarioError  # noqa: E402
from memstate.runner.initparams import init_params  # noqa: E402
from memstate.names import canonical_names  # noqa: E402
from memstate.runner.registry import get_impl  # noqa: E402
from memstate.runner.scenario import NetSpec, iter_batches, load_scenario  # noqa: E402
from memstate.runner.variants import Variant  # noqa: E402

LAYERS = (196, 32, 10)
B = 8
LR = 0.1

# Tolerances, relative to the larger max |value| of the two tensors compared (docs: "relative to the
# tensor's magnitude"). Both implementations compute the same formulas in IEEE arithmetic, but with
# different summation orders (BLAS vs XLA dot kernels, pairwise vs tree reductions, log-softmax vs
# exp/sum). A dot product of length K carries an error of at most gamma_K * sum|a_i w_i| with
# gamma_K ~ K*u (Higham); with K = 196 and sum|a_i w_i| a few times max|z| for He-initialised
# layers this bounds one forward layer at ~ 1e3 u, and three SGD steps at lr 0.1 barely amplify it
# (the update is W - 0.1 dW with |dW| << |W|). In practice errors add like a random walk,
# ~ sqrt(K) u, and the measured worst cases are a few ulps (float64: 7e-16 over 50 mnist14 steps;
# float32: 4.5e-7, i.e. ~4 ulps of 2^-23). The tolerances sit between the two: a few hundred ulps.
TOL_F64 = 1e-13  # ~450 ulps of float64 (eps = 2^-52 = 2.2e-16)
TOL_F32 = 2.0**-16  # 128 ulps of float32 (eps = 2^-23 = 1.2e-7), 1.5e-5


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max(|a|, |b|); nan and inf must sit in the same places with the same values."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape
    bad_a, bad_b = ~np.isfinite(a), ~np.isfinite(b)
    np.testing.assert_array_equal(bad_a, bad_b, err_msg="non-finite values in different places")
    np.testing.assert_array_equal(a[bad_a], b[bad_b])  # nan == nan here; inf signs must match
    fa, fb = a[~bad_a], b[~bad_b]
    if fa.size == 0:
        return 0.0
    scale = max(np.abs(fa).max(), np.abs(fb).max())
    return 0.0 if scale == 0 else float(np.abs(fa - fb).max() / scale)


def collect(net, batches, lr=LR) -> list[dict[str, np.ndarray]]:
    """Run one step per batch, recording every tensor into a dict per step (dict order = record order)."""
    steps = []
    for x, labels in batches:
        rec: dict[str, np.ndarray] = {}

        def record(name, value, rec=rec):
            assert name not in rec, f"{name} recorded twice"
            rec[name] = np.array(value)

        loss = net.train_step(x, labels, lr, record)
        assert isinstance(loss, float)
        np.testing.assert_equal(loss, float(rec["loss"]))
        steps.append(rec)
    return steps


def random_batches(n_steps=3, batch=B, inputs=LAYERS[0], seed=1):
    rng = np.random.default_rng(seed)
    return [((rng.random((batch, inputs)) < 0.3).astype(np.float64), rng.integers(0, 10, batch))
            for _ in range(n_steps)]


def mnist_batches(n_steps=3):
    """The first steps of the mnist14-relu schedule on the real (bundled) digits."""
    from memstate.runner.harness import prepare_data

    scenario = load_scenario("mnist14-relu")
    data = prepare_data(scenario.data)
    return [(data.train_x[b.indices], data.train_y[b.indices])
            for b in iter_batches(scenario, len(data.train_y), n_steps)]


def both(spec, params, batches, lr=LR):
    return (collect(get_impl("numpy").make(spec, params), batches, lr),
            collect(get_impl("jax").make(spec, params), batches, lr))


def worst_per_tensor(ref, got) -> dict[str, float]:
    worst: dict[str, float] = {}
    for r, g in zip(ref, got, strict=True):
        assert list(g) == list(r)
        for name in r:
            assert g[name].dtype == r[name].dtype, name
            worst[name] = max(worst.get(name, 0.0), rel_err(r[name], g[name]))
    return worst


def report(record_property, label, worst):
    record_property(label, {k: f"{v:.1e}" for k, v in worst.items()})
    print(f"\n{label}: " + " ".join(f"{k}={v:.1e}" for k, v in worst.items()))


# ---------------------------------------------------------------- agreement with numpy


@pytest.mark.parametrize("data", ["random", "mnist"])
def test_float64_agrees_with_numpy(data, record_property):
    batches = random_batches() if data == "random" else mnist_batches()
    spec = NetSpec(LAYERS, "relu", "mean", "float64")
    ref, got = both(spec, init_params(LAYERS, "he", 0), batches)
    for rec in got:
        assert list(rec) == canonical_names(2)
        assert all(v.dtype == np.float64 for v in rec.values())
    worst = worst_per_tensor(ref, got)
    report(record_property, f"float64 worst relative error ({data})", worst)
    assert max(worst.values()) < TOL_F64, worst
    assert worst["x"] == worst["y"] == 0.0


@pytest.mark.parametrize("data", ["random", "mnist"])
def test_float32_agrees_with_numpy_and_stays_float32(data, record_property):
    batches = random_batches() if data == "random" else mnist_batches()
    spec = NetSpec(LAYERS, "relu", "mean", "float32")
    ref, got = both(spec, init_params(LAYERS, "he", 0, "float32"), batches)
    for rec in got:
        assert list(rec) == canonical_names(2)
        bad = {k: str(v.dtype) for k, v in rec.items() if v.dtype != np.float32}
        assert not bad, f"x64 mode promoted: {bad}"
    worst = worst_per_tensor(ref, got)
    report(record_property, f"float32 worst relative error ({data})", worst)
    assert max(worst.values()) < TOL_F32, worst


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "shifted-relu"])
@pytest.mark.parametrize("layers,batch,reduction",
                         [((196, 32, 10), 8, "sum"), ((12, 7, 5, 10), 6, "mean"), ((20, 10), 1, "mean")])
def test_shapes_activations_reductions_agree(activation, layers, batch, reduction):
    spec = NetSpec(layers, activation, reduction, "float64")
    params = {k: v + 0.05 for k, v in init_params(layers, "xavier", 3).items()}  # non-zero biases
    rng = np.random.default_rng(7)
    batches = [(rng.standard_normal((batch, layers[0])), rng.integers(0, 10, batch)) for _ in range(3)]
    ref, got = both(spec, params, batches)
    assert list(got[0]) == canonical_names(len(layers) - 1)
    worst = worst_per_tensor(ref, got)
    assert max(worst.values()) < TOL_F64, worst


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_output_dz_is_probs_minus_y(reduction):
    """Autodiff of softmax cross-entropy gives the textbook (probs - y)/B (mean) or probs - y (sum)."""
    spec = NetSpec(LAYERS, "relu", reduction, "float64")
    for rec in collect(get_impl("jax").make(spec, init_params(LAYERS, "he", 0)), random_batches()):
        expected = (rec["probs"] - rec["y"]) / (B if reduction == "mean" else 1)
        # jax's log_softmax gradient forms exp(shifted) / sum rather than reusing probs: a few ulps
        assert rel_err(expected, rec["L2.dz"]) < 1e-14


def test_params_logits_set_params():
    spec = NetSpec(LAYERS, "relu", "mean", "float32")
    start = init_params(LAYERS, "he", 0, "float32")
    net = get_impl("jax").make(spec, start)
    got = net.params()
    assert list(got) == ["L1.W", "L1.b", "L2.W", "L2.b"]
    for k, v in got.items():
        assert type(v) is np.ndarray and v.dtype == np.float32
        np.testing.assert_array_equal(v, start[k])
    x, labels = random_batches(1)[0]
    rec = collect(net, [(x, labels)])[0]
    for k, v in net.params().items():
        np.testing.assert_array_equal(v, rec[k])  # params() are the recorded updated params
    ref = get_impl("numpy").make(spec, net.params())
    logits = np.asarray(net.logits(x))
    assert logits.dtype == np.float32 and logits.shape == (B, 10)
    assert rel_err(ref.logits(x), logits) < TOL_F32
    net.set_params(start)
    np.testing.assert_array_equal(net.params()["L1.W"], start["L1.W"])


def test_meta_names_version_and_backend():
    impl = get_impl("jax")
    import jax

    assert impl.dtypes == ("float64", "float32")
    assert impl.meta["jax_version"] == jax.__version__
    assert impl.meta["jax_backend"] == jax.default_backend()
    assert impl.meta["computes_in"]


# ---------------------------------------------------------------- variants


def run_variant(variant: Variant, params=None, batches=None, layers=LAYERS, reduction="mean", impl="jax"):
    spec = NetSpec(layers, "relu", variant.loss_reduction or reduction, "float64", variant)
    params = init_params(layers, "he", 0) if params is None else params
    batches = random_batches(1) if batches is None else batches
    return collect(get_impl(impl).make(spec, params), batches)[0]


def scaled_params(factor=50.0):
    """Params ×50: with zero biases and ReLU the logits scale by 2500, spreads of thousands."""
    return {k: v * factor for k, v in init_params(LAYERS, "he", 0).items()}


def test_softmax_max_global_empties_rows_that_row_keeps():
    params = scaled_params()
    good = run_variant(Variant(), params)
    assert np.isfinite(good["probs"]).all()
    np.testing.assert_allclose(good["probs"].sum(axis=1), 1.0, rtol=1e-15)
    bad = run_variant(Variant(softmax_max="global"), params)
    broken_rows = [i for i, row in enumerate(bad["probs"]) if np.isnan(row).all() or (row == 0).all()]
    assert broken_rows, bad["probs"]
    ref = run_variant(Variant(softmax_max="global"), params, impl="numpy")
    for name in ("probs", "loss"):
        assert rel_err(ref[name], bad[name]) < TOL_F64
    # with log = "safe" autodiff differentiates the loss, which comes from the logits: the bug stays
    # in probs. numpy's hand-derived dz = (probs - y)/B carries the nan rows into its gradients
    # (docs/variants.md), so the two part ways at L2.dz, as documented.
    assert np.isfinite(bad["loss"]) and np.isfinite(bad["L2.dz"]).all() and np.isfinite(bad["L1.W"]).all()
    assert np.isnan(ref["L2.dz"]).any()


@pytest.mark.parametrize("softmax_sum", ["global", "column"])
def test_softmax_sum_variants_match_numpy_probs(softmax_sum):
    got = run_variant(Variant(softmax_sum=softmax_sum))
    ref = run_variant(Variant(softmax_sum=softmax_sum), impl="numpy")
    assert rel_err(ref["probs"], got["probs"]) < TOL_F64
    if softmax_sum == "global":
        np.testing.assert_allclose(got["probs"].sum(), 1.0, rtol=1e-14)  # rows sum to about 1/B
    else:
        np.testing.assert_allclose(got["probs"].sum(axis=0), 1.0, rtol=1e-14)


def test_log_raw_gives_nan_loss_when_a_probability_is_zero():
    params = scaled_params()
    safe = run_variant(Variant(), params)
    assert (safe["probs"] == 0).any() and np.isfinite(safe["loss"])
    raw = run_variant(Variant(log="raw"), params)
    assert not np.isfinite(raw["loss"])
    assert not np.isfinite(raw["L2.dW"]).all()  # and autodiff carries it into the gradients
    assert not np.isfinite(run_variant(Variant(log="raw"), params, impl="numpy")["loss"])


def test_log_raw_matches_numpy_when_no_probability_is_zero():
    """-sum(y log softmax) differentiated through softmax is probs - y: same as the hand-derived one."""
    got, ref = run_variant(Variant(log="raw")), run_variant(Variant(log="raw"), impl="numpy")
    assert max(worst_per_tensor([ref], [got]).values()) < TOL_F64


def test_log_masked_drops_zero_terms_without_nan_gradients():
    params = scaled_params()
    got = run_variant(Variant(log="masked"), params)
    ref = run_variant(Variant(log="masked"), params, impl="numpy")
    assert (got["probs"] == 0).any()
    assert np.isfinite(got["loss"]) and rel_err(ref["loss"], got["loss"]) < TOL_F64
    # the double where keeps 0 * (1/0) out of the backward pass
    for name in ("L2.dz", "L2.dW", "L1.dz", "L1.dW", "L1.W"):
        assert np.isfinite(got[name]).all(), name


def test_log_eps_loss_matches_numpy():
    got, ref = run_variant(Variant(log="eps")), run_variant(Variant(log="eps"), impl="numpy")
    assert rel_err(ref["loss"], got["loss"]) < TOL_F64
    clean = run_variant(Variant())
    assert got["loss"] != clean["loss"] and abs(got["loss"] - clean["loss"]) < 1e-6  # biased by ~1e-8/p


def test_sum_reduction_multiplies_loss_and_gradients_by_batch_size():
    mean = run_variant(Variant())
    total = run_variant(Variant(loss_reduction="sum"))
    assert rel_err(B * mean["loss"], total["loss"]) < TOL_F64
    for name in ("L2.dz", "L2.dW", "L2.db", "L1.da", "L1.dz", "L1.dW", "L1.db"):
        assert rel_err(B * mean[name], total[name]) < TOL_F64, name


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_round_params_rounds_every_updated_parameter(dtype):
    """Bit for bit np.round(., 8) of the unrounded update: the double nearest the 8-decimal number."""
    params = init_params(LAYERS, "he", 0, dtype)
    batches = random_batches(1)
    jax_impl = get_impl("jax")
    clean = collect(jax_impl.make(NetSpec(LAYERS, "relu", "mean", dtype), params), batches)[0]
    spec = NetSpec(LAYERS, "relu", "mean", dtype, Variant(round_params=8))
    rounded = collect(jax_impl.make(spec, params), batches)[0]
    for name in ("L1.W", "L1.b", "L2.W", "L2.b"):
        assert rounded[name].dtype == np.dtype(dtype)
        np.testing.assert_array_equal(rounded[name], np.round(clean[name], 8))
        np.testing.assert_array_equal(rounded[name], np.round(rounded[name], 8))


def test_dtype_mix_computes_one_layer_in_float32(record_property):
    clean = run_variant(Variant())
    mixed = run_variant(Variant(dtype_mix="L1"))
    assert mixed["L1.z"].dtype == np.float64
    diff = rel_err(clean["L1.z"], mixed["L1.z"])
    record_property("dtype_mix L1.z relative difference", f"{diff:.1e}")
    # float32 rounding of inputs, weights and a 196-term dot product: far above float64 noise
    # (~1e-16), and below the float32 bound gamma_196 * u32 ~ 196 * 6e-8 = 1.2e-5
    assert 1e-10 < diff < 1.2e-5
    ref = run_variant(Variant(dtype_mix="L1"), impl="numpy")
    assert rel_err(ref["L1.z"], mixed["L1.z"]) < TOL_F32  # the same float32 computation as numpy's


def test_bias_grad_axis_features_sums_over_the_wrong_axis():
    layers = (196, B, 10)  # L1 is as wide as the batch, L2 is not
    params = init_params(layers, "he", 0)
    v = Variant(bias_grad_axis="features")
    got = run_variant(v, params, layers=layers)
    # (XLA and numpy sum in different orders: equal to rounding, not bit for bit)
    assert rel_err(got["L1.db"], got["L1.dz"].sum(axis=1)) < TOL_F64
    assert rel_err(got["L1.db"], got["L1.dz"].sum(axis=0)) > 1e-3  # really the wrong axis
    assert rel_err(got["L2.db"], got["L2.dz"].sum(axis=0)) < TOL_F64
    ref = run_variant(v, params, layers=layers, impl="numpy")
    assert max(worst_per_tensor([ref], [got]).values()) < TOL_F64
    with pytest.raises(ScenarioError, match="as wide as the batch"):
        run_variant(v)  # no layer of 196-32-10 is 8 wide

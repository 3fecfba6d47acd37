"""Tests for memstate.diagnose.context: each code recognised from the matching variant of the numpy
implementation (either side buggy), no false positives between codes, silence on clean pairs."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from memstate.diagnose.catalogue import CATALOGUE
from memstate.diagnose.context import CODES, Diagnosis, DivergenceContext
from memstate.diagnose.catalogue import diagnose
from memstate.runner.initparams import scenario_params
from memstate.names import canonical_names
from memstate.runner.registry import get_impl
from memstate.runner.harness import prepare_data
from memstate.runner.scenario import load_scenario
from memstate.runner.variants import Variant

DOCS = Path(__file__).resolve().parents[2] / "docs" / "diagnoses.md"
ORDERS = ["B-buggy", "A-buggy"]
NAMES = canonical_names(2)

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


# ------------------------------------------------------------------------------------------ building pairs


@lru_cache(maxsize=None)
def _recorded(scenario: str, variant: Variant, scale: float, batch: int, lr: float, steps: int) -> tuple:
    sc = load_scenario(scenario)
    data = prepare_data(sc.data)
    params = {k: v * scale for k, v in scenario_params(sc).items()}
    net = get_impl("numpy").make(sc.net_spec(variant), params)
    out = []
    for s in range(steps):
        rec: dict[str, np.ndarray] = {}
        x, labels = data.train_x[s * batch:(s + 1) * batch], data.train_y[s * batch:(s + 1) * batch]
        net.train_step(x, labels, lr, lambda k, v: rec.__setitem__(k, np.array(v, copy=True)))
        out.append(rec)
    return tuple(out)


def record(variant: Variant = Variant(), *, scale: float = 1.0, batch: int = 8, lr: float = 0.1,
           scenario: str = "mnist14-relu", steps: int = 1, step: int = 0) -> dict[str, np.ndarray]:
    """The tensors the numpy implementation records in one training step (copies: safe to edit)."""
    rec = _recorded(scenario, variant, scale, batch, lr, steps)[step]
    return {k: v.copy() for k, v in rec.items()}


def agree(x: np.ndarray, y: np.ndarray) -> bool:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or not np.array_equal(np.isnan(x), np.isnan(y)):
        return False
    fin = np.isfinite(x) & np.isfinite(y)
    if not np.array_equal(x[~fin], y[~fin]):
        return False
    s = max(np.abs(x[fin]).max(initial=0), np.abs(y[fin]).max(initial=0))
    return bool(np.all(np.abs(x[fin] - y[fin]) <= 1e-9 * s))


def first_divergent(ta: dict, tb: dict) -> str:
    return next(k for k in ta if not agree(ta[k], tb[k]))


def context(ta: dict, tb: dict, name: str | None = None, *, step: int = 0, history=None,
            meta_a: dict | None = None, meta_b: dict | None = None, drop: tuple = ()) -> DivergenceContext:
    """What the comparator passes: the pair, each side's earlier tensors of the step, the history."""
    name = name or first_divergent(ta, tb)
    before = list(ta)[: list(ta).index(name)]
    ia = {k: ta[k] for k in before if k not in drop}
    ib = {k: tb[k] for k in before if k not in drop}
    if history is None:
        a, b = np.asarray(ta[name], float), np.asarray(tb[name], float)
        fin = np.isfinite(a) & np.isfinite(b)
        err = float(np.abs(a[fin] - b[fin]).max(initial=0) / max(np.abs(a[fin]).max(initial=0), 1e-300))
        history = ((step, err),)
    inputs_agree = all(agree(ia[k], ib[k]) for k in ia) if ia else None
    return DivergenceContext(step, name, ta[name], tb[name], ia, ib, tuple(history), inputs_agree,
                             dict(meta_a or {}), dict(meta_b or {}))


def ordered(clean: dict, buggy: dict, order: str) -> tuple[dict, dict, str]:
    """(side A, side B, the buggy side's label)."""
    return (clean, buggy, "B") if order == "B-buggy" else (buggy, clean, "A")


def check(diags: list[Diagnosis]) -> list[Diagnosis]:
    """The invariants of every answer: non-empty, sorted, known codes, JSON-ready evidence."""
    assert diags, "diagnose must never return an empty list"
    assert [d.confidence for d in diags] == sorted((d.confidence for d in diags), reverse=True)
    for d in diags:
        assert d.code in CODES
        assert 0.0 <= d.confidence <= 1.0
        assert isinstance(d.explanation, str) and len(d.explanation) > 40
        json.dumps(d.evidence, allow_nan=False)
    assert diags[-1].code != "unknown" or len(diags) == 1
    return diags


def top(ctx: DivergenceContext) -> Diagnosis:
    return check(diagnose(ctx))[0]


def codes(ctx: DivergenceContext) -> list[str]:
    return [d.code for d in check(diagnose(ctx))]


# ---------------------------------------------------------------------------------------------- softmax


@pytest.mark.parametrize("order", ORDERS)
def test_softmax_global_max_underflow_to_nan(order):
    clean, bug = record(scale=60), record(Variant(softmax_max="global"), scale=60)
    ctx = context(*ordered(clean, bug, order)[:2])
    side = ordered(clean, bug, order)[2]
    assert ctx.name == "probs" and ctx.inputs_agree
    d = top(ctx)
    assert d.code == "softmax-global-max" and d.confidence == 0.95
    ev, z = d.evidence, clean["L2.z"]
    assert ev["side"] == side and ev["other_side_correct"] is True
    nan_rows = np.flatnonzero(np.isnan(bug["probs"]).any(axis=1)).tolist()
    assert ev["nan_rows"] == len(nan_rows) > 0 and set(nan_rows) <= set(ev["rows"])
    assert ev["batch_max_logit"] == pytest.approx(z.max())
    assert ev["row_max_logit"] == pytest.approx(z.max(axis=1)[ev["rows"]].tolist())
    assert max(ev["gap_to_batch_max"]) < -745  # exp(-745) underflows to 0 in float64
    assert "nan-origin" in codes(ctx)  # also true, but less specific


def test_softmax_global_max_precision_loss_without_nan():
    """×30: no row underflows completely, but tiny probabilities become 0 or imprecise subnormals; only
    an elementwise comparison flags it (the errors are 1e-22 of the scale), so name the tensor."""
    clean, bug = record(scale=30), record(Variant(softmax_max="global"), scale=30)
    assert not np.isnan(bug["probs"]).any() and not np.array_equal(clean["probs"], bug["probs"])
    d = top(context(clean, bug, "probs"))
    assert d.code == "softmax-global-max" and d.evidence["nan_rows"] == 0 and d.evidence["rows"]


@pytest.mark.parametrize("order", ORDERS)
def test_softmax_global_sum(order):
    ta, tb, side = ordered(record(), record(Variant(softmax_sum="global")), order)
    ctx = context(ta, tb)
    assert ctx.name == "probs"
    d = top(ctx)
    assert (d.code, d.confidence, d.evidence["side"]) == ("softmax-global-sum", 0.95, side)
    assert d.evidence["total_sum"] == pytest.approx(1.0, abs=1e-12)
    assert np.mean(d.evidence["row_sums"]) == pytest.approx(1 / 8, abs=1e-12)
    assert not np.allclose(d.evidence["row_sums"], 1.0)
    assert codes(ctx) == ["softmax-global-sum"]


@pytest.mark.parametrize("order", ORDERS)
def test_softmax_column_sum(order):
    ta, tb, side = ordered(record(), record(Variant(softmax_sum="column")), order)
    d = top(context(ta, tb))
    assert (d.code, d.confidence, d.evidence["side"]) == ("softmax-column-sum", 0.95, side)
    assert np.allclose(d.evidence["column_sums"], 1.0, atol=1e-12)
    assert not np.allclose(d.evidence["row_sums"], 1.0)


@pytest.mark.parametrize("order", ORDERS)
def test_softmax_without_max_overflows(order):
    ta, tb, side = ordered(record(scale=60), record(Variant(softmax_max="none"), scale=60), order)
    d = top(context(ta, tb))
    assert (d.code, d.evidence["side"]) == ("softmax-no-max", side)
    assert max(d.evidence["row_max_logit"]) > d.evidence["overflow_threshold"] == pytest.approx(np.log(np.finfo(float).max))


@pytest.mark.parametrize("variant, scale, code, confidence", [
    (Variant(softmax_sum="global"), 1, "softmax-global-sum", 0.75),
    (Variant(softmax_sum="column"), 1, "softmax-column-sum", 0.75),
    (Variant(softmax_max="global"), 60, "softmax-global-max", 0.8),
])
def test_softmax_without_logits_in_the_trace(variant, scale, code, confidence):
    """With L2.z missing the softmax cannot be recomputed: the row/column sums still tell, less surely."""
    d = top(context(record(scale=scale), record(variant, scale=scale), drop=("L2.z",)))
    assert (d.code, d.confidence, d.evidence["logits_checked"]) == (code, confidence, False)


# ------------------------------------------------------------------------------------------------- loss


@pytest.mark.parametrize("order", ORDERS)
def test_log_of_zero(order):
    clean, bug = record(scale=30), record(Variant(log="raw"), scale=30)
    ta, tb, side = ordered(clean, bug, order)
    ctx = context(ta, tb)
    assert ctx.name == "loss" and np.isnan(bug["loss"])
    d = top(ctx)
    assert (d.code, d.confidence, d.evidence["side"]) == ("log-of-zero", 0.95, side)
    p, y = bug["probs"], bug["y"]
    assert d.evidence["zero_probs"] == int((p == 0).sum()) > 0
    assert d.evidence["zero_on_label"] == int(((p == 0) & (y == 1)).sum())
    assert d.evidence["loss"] == "nan" and d.evidence["expected_loss"] == "nan"
    assert codes(ctx)[1] == "nan-origin"


def test_log_of_zero_on_the_label_only_gives_inf():
    clean = record(scale=30)
    bug = dict(clean)
    p, y = clean["probs"], clean["y"]
    row = int(np.flatnonzero(((p == 0) & (y == 1)).any(axis=1))[0])
    keep = np.zeros_like(p, dtype=bool)
    keep[row] = True
    q = np.where(keep | (p > 0), p, 1e-300)  # leave zeros only in that row
    q[row] = np.where((p[row] == 0) & (y[row] == 0), 1e-300, p[row])
    bug = {**clean, "probs": q, "loss": np.array(np.inf)}
    clean = {**clean, "probs": q}
    d = top(context(clean, bug, "loss"))
    assert d.code == "log-of-zero" and d.evidence["expected_loss"] == "inf" and d.evidence["loss"] == "inf"
    assert d.evidence["zero_off_label"] == 0 and d.evidence["zero_on_label"] == 1


@pytest.mark.parametrize("order", ORDERS)
def test_log_masked_drops_the_zero_terms(order):
    ta, tb, side = ordered(record(scale=30), record(Variant(log="masked"), scale=30), order)
    d = top(context(ta, tb))
    assert (d.code, d.evidence["side"], d.evidence["reduction"]) == ("log-masked", side, "mean")
    assert d.evidence["dropped_terms"] == 4


@pytest.mark.parametrize("order", ORDERS)
def test_log_epsilon(order):
    clean, bug = record(), record(Variant(log="eps"))
    ta, tb, side = ordered(clean, bug, order)
    ctx = context(ta, tb)
    assert ctx.name == "loss"
    d = top(ctx)
    assert (d.code, d.confidence, d.evidence["side"]) == ("log-epsilon", 0.95, side)
    assert d.evidence["eps_fit"] == pytest.approx(1e-8, rel=1e-3)
    assert d.evidence["eps"] == 1e-8 and d.evidence["reduction"] == "mean"
    p, y = clean["probs"], clean["y"]
    expected_offset = np.sum(y * np.log1p(1e-8 / p)) / 8  # mean of log(p + eps) - log(p) on the labels
    assert d.evidence["difference"] == pytest.approx(expected_offset, rel=1e-6)
    assert codes(ctx) == ["log-epsilon"]


@pytest.mark.parametrize("eps, confidence", [(1e-6, 0.8), (1e-10, 0.8), (3.7e-7, 0.5)])
def test_log_epsilon_fits_other_epsilons(eps, confidence):
    clean = record()
    bug = {**clean, "loss": np.array(-np.sum(clean["y"] * np.log(clean["probs"] + eps)) / 8)}
    d = top(context(clean, bug, "loss"))
    assert d.code == "log-epsilon" and d.confidence == confidence
    assert d.evidence["eps_fit"] == pytest.approx(eps, rel=1e-3)


def test_loss_sum_is_not_an_epsilon():
    d = top(context(record(), record(Variant(loss_reduction="sum"))))
    assert d.code == "reduction-mean-vs-sum"


# ------------------------------------------------------------------------------------------- precision


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("name", ["L1.W", "L1.b", "L2.W", "L2.b"])
def test_precision_rounding(order, name):
    ta, tb, side = ordered(record(), record(Variant(round_params=8)), order)
    ctx = context(ta, tb, name)
    if name == "L1.W":
        assert first_divergent(ta, tb) == "L1.W"
    d = top(ctx)
    assert (d.code, d.confidence, d.evidence["side"]) == ("precision-rounding", 0.95, side)
    assert d.evidence["decimals"] == 8 and d.evidence["exact"] is True
    assert 0 < d.evidence["max_abs_diff"] <= 5e-9
    assert "dtype-float32" not in codes(ctx)


@pytest.mark.parametrize("digits", [3, 5, 10])
def test_precision_rounding_reports_the_decimals(digits):
    d = top(context(record(), record(Variant(round_params=digits)), "L1.W"))
    assert (d.code, d.evidence["decimals"]) == ("precision-rounding", digits)


def test_precision_rounding_after_trajectories_split():
    """At a later step the rounded side is still on the 10^-8 grid but no longer round(other side)."""
    clean = record(steps=3, step=2)
    bug = record(Variant(round_params=8), steps=3, step=2)
    d = top(context(clean, bug, "L1.W", step=2))
    assert (d.code, d.evidence["decimals"], d.evidence["exact"]) == ("precision-rounding", 8, False)
    assert d.confidence == 0.75


@pytest.mark.parametrize("order", ORDERS)
def test_dtype_mix_layer_in_float32(order):
    ta, tb, side = ordered(record(), record(Variant(dtype_mix="L1")), order)
    ctx = context(ta, tb)
    assert ctx.name == "L1.z" and ctx.inputs_agree
    d = top(ctx)
    assert (d.code, d.confidence, d.evidence["side"]) == ("dtype-float32", 0.9, side)
    assert d.evidence["float32_exact"] is True
    assert 1e-9 < d.evidence["max_rel_err"] < 1e-5
    assert codes(ctx) == ["dtype-float32"]


def test_dtype_mix_named_in_the_header_raises_confidence():
    ctx = context(record(), record(Variant(dtype_mix="L1")), meta_b={"variant": {"dtype_mix": "L1"}})
    d = top(ctx)
    assert (d.code, d.confidence, d.evidence["dtype_mix"]) == ("dtype-float32", 0.95, "L1")


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("with_headers", [True, False])
def test_float32_trace_vs_float64_trace(order, with_headers):
    f64_run, f32_run = record(), record(scenario="mnist14-relu-f32")
    assert f32_run["L1.z"].dtype == np.float32
    ta, tb, side = ordered(f64_run, f32_run, order)
    metas = {}
    if with_headers:
        m64, m32 = {"dtype": "float64"}, {"dtype": "float32"}
        metas = {"meta_a": m64, "meta_b": m32} if side == "B" else {"meta_a": m32, "meta_b": m64}
    ctx = context(ta, tb, **metas)
    assert ctx.name == "L1.z"
    d = top(ctx)
    assert (d.code, d.evidence["side"], d.evidence["header_dtype"]) == ("dtype-float32", side, with_headers)
    assert d.confidence == (0.95 if with_headers else 0.9)


def test_float32_header_without_exact_values_is_not_float32_rounding():
    """Issue 11: a side whose values do not survive a float32 round trip is not float32 rounding, whatever its
    header says (parameters rounded to 8 decimals were named dtype-float32)."""
    a = record()["L1.dW"]
    b = a * (1 + 3e-8 * np.random.default_rng(0).standard_normal(a.shape))
    ds = diagnose(DivergenceContext(0, "L1.dW", a, b, {}, {}, ((0, 1e-7),), None, {"dtype": "float64"},
                                    {"dtype": "float32"}))
    assert "dtype-float32" not in [d.code for d in ds]


def test_float32_sized_errors_alone_are_not_float32_rounding():
    a = record()["L1.z"]
    b = a * (1 + 1e-7 * np.random.default_rng(1).standard_normal(a.shape))
    ds = diagnose(DivergenceContext(0, "L1.z", a, b, {"x": np.ones(3)}, {"x": np.ones(3)}, ((0, 1e-7),), True))
    assert "dtype-float32" not in [d.code for d in ds]
    # the same errors on a float32-exact side are float32 rounding
    ds = diagnose(DivergenceContext(0, "L1.z", a, a.astype(np.float32).astype(np.float64), {"x": np.ones(3)},
                                    {"x": np.ones(3)}, ((0, 1e-7),), True))
    assert (ds[0].code, ds[0].confidence, ds[0].evidence["side"]) == ("dtype-float32", 0.9, "B")


# ------------------------------------------------------------------------------------- factors, layout


@pytest.mark.parametrize("order", ORDERS)
def test_reduction_mean_vs_sum_on_the_loss(order):
    ta, tb, side = ordered(record(), record(Variant(loss_reduction="sum")), order)
    ctx = context(ta, tb)
    assert ctx.name == "loss"
    d = top(ctx)
    assert (d.code, d.confidence, d.evidence["summing_side"]) == ("reduction-mean-vs-sum", 0.95, side)
    assert d.evidence["batch_size"] == 8
    assert d.evidence["ratio_b_over_a"] == pytest.approx(8.0 if side == "B" else 0.125, rel=1e-12)
    assert codes(ctx) == ["reduction-mean-vs-sum"]


@pytest.mark.parametrize("name, confidence", [("L2.dz", 0.95), ("L2.dW", 0.85), ("L2.db", 0.85), ("L1.da", 0.85),
                                              ("L1.dz", 0.85), ("L1.dW", 0.85), ("L1.db", 0.85)])
def test_reduction_mean_vs_sum_on_gradients(name, confidence):
    """A side that averages the loss but sums the gradient shows first at L2.dz, with the loss agreeing."""
    clean, summed = record(), record(Variant(loss_reduction="sum"))
    bug = {**summed, "loss": clean["loss"]}
    ctx = context(clean, bug, name)
    d = top(ctx)
    assert (d.code, d.confidence, d.evidence["ratio_b_over_a"]) == ("reduction-mean-vs-sum", confidence, pytest.approx(8.0))
    assert d.evidence["loss_agrees"] is True
    assert "scaled" not in codes(ctx)


def test_batch_size_factor_on_a_forward_tensor_is_scaled_not_reduction():
    clean = record()
    ctx = context(clean, {**clean, "L1.z": clean["L1.z"] * 8}, "L1.z")
    d = top(ctx)
    assert (d.code, d.evidence["factor"]) == ("scaled", pytest.approx(8.0))
    assert "reduction-mean-vs-sum" not in codes(ctx)


@pytest.mark.parametrize("order", ORDERS)
def test_bias_grad_axis(order):
    clean, bug = record(batch=10), record(Variant(bias_grad_axis="features"), batch=10)
    ta, tb, side = ordered(clean, bug, order)
    ctx = context(ta, tb)
    assert ctx.name == "L2.db" and ctx.inputs_agree
    d = top(ctx)
    assert (d.code, d.confidence, d.evidence["side"]) == ("bias-grad-axis", 0.95, side)
    assert d.evidence["dz_shape"] == [10, 10] and d.evidence["err_vs_feature_sum"] < 1e-12


@pytest.mark.parametrize("order", ORDERS)
def test_scaled_learning_rate_mismatch(order):
    """Same params, learning rates 0.1 and 0.2: the updated W differs by 0.1·dW; headers say 0.1."""
    ta, tb, side = ordered(record(lr=0.1), record(lr=0.2), order)
    ctx = context(ta, tb, meta_a={"learning_rate": 0.1}, meta_b={"learning_rate": 0.1})
    assert ctx.name == "L1.W" and ctx.inputs_agree
    d = top(ctx)
    assert (d.code, d.confidence) == ("scaled", 0.85)
    assert d.evidence["factor"] == pytest.approx(2.0 if side == "B" else 0.5, rel=1e-9)
    assert d.evidence["lr_difference_b_minus_a"] == pytest.approx(0.1 if side == "B" else -0.1, rel=1e-9)
    assert codes(ctx) == ["scaled"]


def test_scaled_learning_rate_from_different_headers():
    ctx = context(record(lr=0.1), record(lr=0.2), meta_a={"learning_rate": 0.1}, meta_b={"learning_rate": 0.2})
    d = top(ctx)
    assert (d.code, d.confidence, d.evidence["factor"]) == ("scaled", 0.9, pytest.approx(2.0))


def test_scaled_learning_rate_without_headers_gives_the_difference():
    d = top(context(record(lr=0.1), record(lr=0.25)))
    assert (d.code, d.confidence, d.evidence["factor"]) == ("scaled", 0.7, None)
    assert d.evidence["lr_difference_b_minus_a"] == pytest.approx(0.15, rel=1e-9)


def test_scaled_zero_initialised_bias_gives_the_factor_directly():
    """L2.b starts at 0, so after one step it is -lr·db: the ratio is the learning-rate factor."""
    d = top(context(record(lr=0.1), record(lr=0.3), "L2.b"))
    assert (d.code, d.evidence["factor"]) == ("scaled", pytest.approx(3.0))


@pytest.mark.parametrize("factor", [3.0, 1 / 3, -2.5, 1e-3, 42.0])
@pytest.mark.parametrize("name", ["L1.z", "L2.W", "L1.dW"])
def test_scaled_constant_factor(factor, name):
    clean = record()
    d = top(context(clean, {**clean, name: clean[name] * factor}, name))
    assert (d.code, d.confidence, d.evidence["factor"]) == ("scaled", 0.85, pytest.approx(factor, rel=1e-12))


@pytest.mark.parametrize("name", ["L2.z", "L1.dW", "L2.W"])
def test_sign_flip_everywhere(name):
    clean = record()
    ctx = context(clean, {**clean, name: -clean[name]}, name)
    d = top(ctx)
    assert (d.code, d.confidence, d.evidence["fraction"]) == ("sign-flip", 0.9, 1.0)
    assert "scaled" not in codes(ctx)


def test_sign_flip_on_whole_columns():
    clean = record()
    W = clean["L2.W"].copy()
    W[:, [2, 7]] *= -1
    d = top(context(clean, {**clean, "L2.W": W}, "L2.W"))
    assert (d.code, d.confidence, d.evidence["columns"]) == ("sign-flip", 0.8, [2, 7])
    assert d.evidence["fraction"] == pytest.approx(0.2)


def test_sign_flip_on_scattered_elements():
    a = np.random.default_rng(2).standard_normal((6, 5))
    b = a.copy()
    b[0, 1], b[3, 4] = -b[0, 1], -b[3, 4]
    d = top(DivergenceContext(0, "L1.dz", a, b, {}, {}, ((0, 1.0),), None))
    assert (d.code, d.confidence, d.evidence["flipped"]) == ("sign-flip", 0.6, 2)


def test_transposed_square():
    a = np.random.default_rng(3).standard_normal((10, 10))
    ctx = DivergenceContext(0, "L2.dz", a, a.T.copy(), {}, {}, ((0, 1.0),), None)
    d = top(ctx)
    assert (d.code, d.confidence, d.evidence["kind"]) == ("transposed", 0.9, "transpose")


@pytest.mark.parametrize("make_b, kind, confidence", [
    (lambda a: a.T.copy(), "transpose", 0.9),
    (lambda a: a.T.reshape(a.shape).copy(), "transposed-then-reshaped", 0.85),
    (lambda a: a.reshape(a.shape[::-1]).copy(), "reshaped", 0.6),
])
def test_transposed_non_square(make_b, kind, confidence):
    a = record()["L2.W"]  # [32, 10]
    d = top(DivergenceContext(0, "L2.W", a, make_b(a), {}, {}, ((0, 1.0),), None))
    assert (d.code, d.evidence["kind"], d.confidence) == ("transposed", kind, confidence)


def test_symmetric_matrix_is_not_transposed():
    a = np.random.default_rng(4).standard_normal((6, 6))
    a = a + a.T
    b = a * (1 + 1e-3 * np.random.default_rng(5).standard_normal(a.shape))
    assert "transposed" not in codes(DivergenceContext(0, "L1.dz", a, b, {}, {}, ((0, 1e-3),), None))


# ------------------------------------------------------------------------------------- nan, drift, unknown


@pytest.mark.parametrize("order", ORDERS)
def test_nan_origin(order):
    clean = record()
    bug = dict(clean)
    for name in list(bug)[list(bug).index("L1.a"):]:
        bug[name] = bug[name].copy()
    bug["L1.a"][3, 5] = np.nan
    ta, tb, side = ordered(clean, bug, order)
    ctx = context(ta, tb)
    assert ctx.name == "L1.a"
    d = top(ctx)
    assert (d.code, d.confidence, d.evidence["side"]) == ("nan-origin", 0.75, side)
    assert d.evidence["positions"] == [[3, 5]] and d.evidence["nan"] == 1


def test_nan_from_an_earlier_tensor_is_not_the_origin():
    clean = record()
    bug = {**clean, "L1.z": clean["L1.z"].copy(), "L1.a": clean["L1.a"].copy()}
    bug["L1.z"][0, 0] = np.inf
    bug["L1.a"][0, 0] = np.nan
    # both sides agree on L1.z except the inf: pretend the comparator let it pass, diagnose L1.a
    assert "nan-origin" not in codes(context(clean, bug, "L1.a"))
    assert top(context(clean, bug, "L1.z")).code == "nan-origin"


def _noisy(rel: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    a = record()["L1.z"]
    return a, a * (1 + rel * np.random.default_rng(seed).standard_normal(a.shape))


def test_drift():
    history = tuple((k, 1e-15 * 3.0**k) for k in range(20))
    a, b = _noisy(history[-1][1])
    ctx = DivergenceContext(19, "L1.z", a, b, {"x": np.ones(4)}, {"x": np.ones(4) * (1 + 1e-9)}, history, False)
    d = top(ctx)
    assert (d.code, d.confidence) == ("drift", 0.7)
    assert d.evidence["growth_per_step"] == pytest.approx(3.0, rel=1e-6)
    assert d.evidence["first_error"] == 1e-15 and d.evidence["points"] == 20


def test_drift_with_exact_early_steps_and_noise():
    rng = np.random.default_rng(6)
    history = tuple([(k, 0.0) for k in range(5)] + [(k, 1e-16 * 2.0**k * 10 ** rng.uniform(-0.3, 0.3)) for k in range(5, 40)])
    a, b = _noisy(history[-1][1])
    d = top(DivergenceContext(39, "L1.z", a, b, {}, {}, history, None))
    assert d.code == "drift" and d.evidence["first_step"] == 5 and d.evidence["growth_per_step"] == pytest.approx(2.0, rel=0.1)


def test_drift_in_a_real_run():
    """numpy vs the reversed-order step at lr 1.0: rounding differences grow for ~80 steps until an
    element differs by 1e-10 of itself; nothing but drift explains it."""
    sc = load_scenario("mnist14-relu")
    data = prepare_data(sc.data)
    params = scenario_params(sc)
    net, theirs, history = get_impl("numpy").make(sc.net_spec(), params), dict(params), []
    for step in range(150):
        x, labels = data.train_x[step * 8:(step + 1) * 8], data.train_y[step * 8:(step + 1) * 8]
        ours: dict[str, np.ndarray] = {}
        net.train_step(x, labels, 1.0, lambda k, v: ours.__setitem__(k, np.array(v)))
        other = reversed_step(theirs, x, labels, 1.0)
        theirs = {k: other[k] for k in ("L1.W", "L1.b", "L2.W", "L2.b")}
        elementwise, of_scale = {}, {}
        for n in NAMES:
            a, b = ours[n], other[n]
            m = np.maximum(np.abs(a), np.abs(b))
            elementwise[n] = float(np.max(np.where(m > 0, np.abs(a - b) / np.where(m > 0, m, 1), 0)))
            of_scale[n] = float(np.abs(a - b).max() / max(m.max(), 1e-300))
        history.append((step, max(of_scale.values())))  # the history: errors relative to each tensor's scale
        bad = [n for n in NAMES if elementwise[n] > 1e-10]  # flagged: an element off by 1e-10 of itself
        if bad:
            break
    assert bad, "the runs never drifted apart"
    ctx = context(ours, other, bad[0], step=step, history=history,
                  meta_a={"dtype": "float64", "learning_rate": 1.0}, meta_b={"dtype": "float64", "learning_rate": 1.0})
    d = top(ctx)
    assert d.code == "drift" and step > 20
    assert d.evidence["first_error"] < 1e-14 and d.evidence["largest_jump_decades"] <= 1.5


@pytest.mark.parametrize("history", [
    tuple((k, 1e-15) for k in range(10)) + ((10, 1e-3),),  # a jump: a local cause at step 10
    ((0, 1e-15), (1, 1e-13)),  # too short to call a trend
    tuple((k, 1e-15 / 2.0**k) for k in range(10)),  # shrinking
])
def test_not_drift(history):
    a, b = _noisy(1e-6, seed=7)
    ctx = DivergenceContext(history[-1][0], "L1.z", a, b, {}, {}, history, False)
    assert codes(ctx) == ["unknown"]


def test_drift_is_only_a_fallback():
    history = tuple((k, 1e-15 * 3.0**k) for k in range(20))
    a = record()["L2.W"]
    assert codes(DivergenceContext(19, "L2.W", a, -a, {}, {}, history, False)) == ["sign-flip"]


def test_unknown():
    rng = np.random.default_rng(8)
    a, b = rng.standard_normal((8, 10)), rng.standard_normal((8, 10))
    diags = check(diagnose(DivergenceContext(3, "L2.z", a, b, {}, {}, ((3, 1.0),), True)))
    assert [d.code for d in diags] == ["unknown"]
    ev = diags[0].evidence
    assert ev["max_abs_err"] == pytest.approx(np.abs(a - b).max()) and ev["differing"] == 80
    assert diags[0].confidence == 0.0


# ---------------------------------------------------------------------------------------- clean pairs


def reversed_step(params: dict, x: np.ndarray, labels: np.ndarray, lr: float) -> dict:
    """The clean network's step, computed independently with every sum in the opposite order (in x's dtype)."""
    B, dt = x.shape[0], x.dtype.type
    W1, b1, W2, b2 = (params[k] for k in ("L1.W", "L1.b", "L2.W", "L2.b"))
    y = np.eye(10, dtype=x.dtype)[labels]
    out: dict[str, np.ndarray] = {"x": x.copy(), "y": y}
    out["L1.z"] = z1 = x[:, ::-1] @ W1[::-1] + b1
    out["L1.a"] = a1 = np.maximum(z1, 0)
    out["L2.z"] = z2 = a1[:, ::-1] @ W2[::-1] + b2
    sh = z2 - z2.max(axis=1, keepdims=True)
    e = np.exp(sh)
    s = e[:, ::-1].sum(axis=1, keepdims=True)
    out["probs"] = probs = e / s
    out["loss"] = np.array((-(y * (sh - np.log(s)))[::-1, ::-1].sum()) / dt(B))
    out["L2.dz"] = dz2 = (probs - y) / dt(B)
    out["L2.dW"] = dW2 = a1.T[:, ::-1] @ dz2[::-1]
    out["L2.db"] = db2 = dz2[::-1].sum(axis=0)
    out["L1.da"] = da1 = dz2[:, ::-1] @ W2.T[::-1]
    out["L1.dz"] = dz1 = da1 * (z1 > 0)
    out["L1.dW"] = dW1 = x.T[:, ::-1] @ dz1[::-1]
    out["L1.db"] = db1 = dz1[::-1].sum(axis=0)
    out["L1.W"], out["L1.b"] = W1 - dt(lr) * dW1, b1 - dt(lr) * db1
    out["L2.W"], out["L2.b"] = W2 - dt(lr) * dW2, b2 - dt(lr) * db2
    assert list(out) == NAMES and all(v.dtype == x.dtype for v in out.values())
    return out


@lru_cache(maxsize=None)
def _clean_pair(scale: float, start: int, scenario: str = "mnist14-relu") -> tuple[dict, dict]:
    sc = load_scenario(scenario)
    data = prepare_data(sc.data)
    params = {k: v * scale for k, v in scenario_params(sc).items()}
    x, labels = data.train_x[start:start + 8].astype(sc.dtype), data.train_y[start:start + 8]
    ours: dict[str, np.ndarray] = {}
    get_impl("numpy").make(sc.net_spec(), params).train_step(x, labels, 0.1, lambda k, v: ours.__setitem__(k, np.array(v)))
    return ours, reversed_step(params, x, labels, 0.1)


@pytest.mark.parametrize("scenario, scale, start", [
    ("mnist14-relu", 1.0, 0), ("mnist14-relu", 1.0, 800), ("mnist14-relu", 3.0, 1600), ("mnist14-relu", 30.0, 2400),
    ("mnist14-relu-f32", 1.0, 0), ("mnist14-relu-f32", 10.0, 3200),
])
@pytest.mark.parametrize("name", NAMES)
def test_every_diagnoser_is_silent_on_clean_pairs(scenario, scale, start, name):
    """Two computations in one dtype that differ only in summation order: nothing to diagnose."""
    ours, theirs = _clean_pair(scale, start, scenario)
    assert ours[name].shape == theirs[name].shape and ours[name].dtype == theirs[name].dtype
    dtype = str(ours["x"].dtype)
    for ta, tb in ((ours, theirs), (theirs, ours), (ours, ours)):
        ctx = context(ta, tb, name, history=((0, 1e-15),), meta_a={"dtype": dtype, "learning_rate": 0.1},
                      meta_b={"dtype": dtype, "learning_rate": 0.1})
        for entry in CATALOGUE:
            assert entry.func(ctx) is None, f"{entry.code} fired on clean {name}"
        assert codes(ctx) == ["unknown"]


def test_clean_pairs_really_differ():
    ours, theirs = _clean_pair(1.0, 0)
    differing = [n for n in NAMES if not np.array_equal(ours[n], theirs[n])]
    assert len(differing) >= 12
    assert all(agree(ours[n], theirs[n]) for n in NAMES)


# ------------------------------------------------------------------------------------ catalogue, fuzzing


def test_codes_match_the_catalogue_and_the_docs():
    assert [e.code for e in CATALOGUE] + ["unknown"] == list(CODES)
    assert len(set(CODES)) == len(CODES)
    assert [e.code for e in CATALOGUE if e.fallback] == ["drift"]
    documented = re.findall(r"^## `([a-z0-9-]+)`", DOCS.read_text(), flags=re.M)
    assert documented == list(CODES)


def test_diagnosis_rejects_a_confidence_outside_0_1():
    with pytest.raises(ValueError):
        Diagnosis("scaled", 1.5, "x", {})


_floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
_arrays = hnp.arrays(np.float64, hnp.array_shapes(min_dims=0, max_dims=2, max_side=6), elements=_floats)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(a=_arrays, data=st.data(), name=st.sampled_from(NAMES), step=st.integers(0, 5))
def test_diagnosers_never_raise(a, data, name, step):
    """Any pair, any shapes, nan and inf included: every diagnoser answers None or a valid Diagnosis."""
    with np.errstate(all="ignore"):
        times8 = a * 8
    b = data.draw(st.one_of(st.just(-a), st.just(times8), st.just(a.T.copy()),
                            hnp.arrays(np.float64, a.shape, elements=_floats), _arrays))
    inputs = {k: data.draw(_arrays) for k in NAMES[: NAMES.index(name)][:4]}
    history = tuple((k, data.draw(st.floats(0, 1))) for k in range(step + 1))
    ctx = DivergenceContext(step, name, a, b, inputs, dict(inputs), history, data.draw(st.sampled_from([True, False, None])))
    for entry in CATALOGUE:
        result = entry.func(ctx)
        assert result is None or isinstance(result, Diagnosis)
    check(diagnose(ctx))


@settings(max_examples=60, deadline=None)
@given(a=hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=2, min_side=2, max_side=8),
                    elements=st.floats(-10, 10, width=64)).filter(lambda a: np.linalg.norm(a) > 1e-3 and np.ptp(np.abs(a)) > 1e-3),
       c=st.one_of(st.floats(1.01, 1e3), st.floats(-1e3, -1.01), st.floats(1e-3, 0.99)))
def test_any_constant_factor_is_scaled(a, c):
    d = top(DivergenceContext(0, "L1.z", a, a * c, {}, {}, ((0, 1.0),), None))
    assert d.code == "scaled" and d.evidence["factor"] == pytest.approx(c, rel=1e-9)

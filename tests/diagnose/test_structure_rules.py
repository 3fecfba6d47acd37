"""memstate.diagnose.structure on small hand-made pairs: every structural diagnoser (reduction-mean-vs-sum,
bias-grad-axis, transposed, scaled and its learning-rate reading, sign-flip, nan-origin, bias-grad-scalar) with
its exact confidence, explanation and evidence, at the boundaries of each threshold, in float64 and float32,
and with the optional tensors (dz, y, the loss, the headers) present or missing. Written to kill the mutants
mutation testing found (docs/testing.md); each test runs in milliseconds."""

from __future__ import annotations

import numpy as np
import pytest

from memstate.diagnose.common import fit_factor, fmt, rel_err
from memstate.diagnose.context import Diagnosis, DivergenceContext
from memstate.diagnose.structure import (
    _reduction_factor,
    bias_grad_axis,
    bias_grad_scalar,
    nan_origin,
    reduction_mean_vs_sum,
    scaled,
    sign_flip,
    transposed,
)

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

RNG = np.random.default_rng(16)
M43 = RNG.uniform(0.5, 2.0, (4, 3)) * RNG.choice([-1.0, 1.0], (4, 3))  # no zero, no element twice
X4 = np.zeros((4, 2))  # an input batch of 4
FIX_RED = "Fix: use the scenario's loss_reduction (divide by the batch size once, in the loss or in dz)."


def ctx(a, b, name, ia=None, ib=None, meta_a=None, meta_b=None, **kw) -> DivergenceContext:
    return DivergenceContext(0, name, a, b, ia or {}, ib or {}, ((0, 1.0),), None, meta_a or {}, meta_b or {},
                             **kw)


def expect(d: Diagnosis | None, code: str, conf: float, text: str, evidence: dict) -> None:
    assert d is not None
    assert (d.code, d.confidence) == (code, conf)
    assert d.explanation == text
    assert d.evidence == evidence


# ------------------------------------------------------------------------------ reduction-mean-vs-sum


def test_reduction_factor_boundaries():
    assert _reduction_factor(5.0, 4, 0.25) == "B"  # |5 - 4| = 0.25·4 exactly
    assert _reduction_factor(3.0, 4, 0.25) == "B"
    assert _reduction_factor(5.25, 4, 0.25) is None
    assert _reduction_factor(0.3125, 4, 0.25) == "1/B"  # |0.3125 - 1/4| = 0.25/4 exactly
    assert _reduction_factor(0.1875, 4, 0.25) == "1/B"
    assert _reduction_factor(0.375, 4, 0.25) is None  # within 0.25·4 of 1/4, not within 0.25/4
    assert _reduction_factor(2.0, 2, 1e-6) == "B"  # the smallest batch that counts
    assert _reduction_factor(0.5, 2, 1e-6) == "1/B"
    assert _reduction_factor(1.0, 1, 1e-6) is None  # a batch of 1: every factor 1 is B
    assert _reduction_factor(4.0, None, 1e-6) is None
    assert _reduction_factor(0.0, 0, 1e-6) is None
    assert _reduction_factor(4.0000003, 4, 1e-7) == "B" and _reduction_factor(4.000001, 4, 1e-7) is None


def red_text(name, c, B, summer, where, doubt=None):
    averager = "A" if summer == "B" else "B"
    return (f"Side B's {name} is {fmt(c)} × side A's, and the batch size is {B}: side {summer} sums over the batch "
            f"where side {averager} averages, so {where} differs by B (and every gradient after it)"
            f"{'' if doubt is None else f' ({doubt})'}. {FIX_RED}")


def red_ev(c, B, summer, resid=0.0, loss_agrees=None, doubt=None):
    return {"ratio_b_over_a": c, "batch_size": B, "summing_side": summer,
            "averaging_side": "A" if summer == "B" else "B", "residual": resid, "loss_agrees": loss_agrees,
            "doubt": doubt}


@pytest.mark.parametrize("a, b, c, summer", [(1.0, 4.0, 4.0, "B"), (2.0, 0.5, 0.25, "A"), (-1.5, -6.0, 4.0, "B")])
def test_reduction_on_the_loss(a, b, c, summer):
    d = reduction_mean_vs_sum(ctx(np.float64(a), np.array(b), "loss", {"x": X4}))
    expect(d, "reduction-mean-vs-sum", 0.95, red_text("loss", c, 4, summer, "the loss"), red_ev(c, 4, summer))


def test_reduction_takes_the_batch_size_from_either_side():
    d = reduction_mean_vs_sum(ctx(np.float64(1.0), np.float64(4.0), "loss", {}, {"y": np.zeros((4, 10))}))
    assert d is not None and d.evidence["batch_size"] == 4
    assert reduction_mean_vs_sum(ctx(np.float64(1.0), np.float64(4.0), "loss")) is None  # no batch size
    assert reduction_mean_vs_sum(ctx(np.float64(1.0), np.float64(3.0), "loss", {"x": X4})) is None  # not B


def test_reduction_refuses_what_it_cannot_read():
    one = np.float64(1.0)
    assert reduction_mean_vs_sum(ctx(one, np.float64(4.0), "L1.z", {"x": X4})) is None  # not loss or gradient
    assert reduction_mean_vs_sum(ctx(one, np.float64(4.0), "L1.W", {"x": X4})) is None
    assert reduction_mean_vs_sum(ctx(np.float64(0.0), np.float64(4.0), "loss", {"x": X4})) is None
    assert reduction_mean_vs_sum(ctx(M43, 4 * M43.T, "L2.dz", {"x": X4})) is None  # shapes differ
    assert reduction_mean_vs_sum(ctx(np.zeros((4, 3)), 4 * M43, "L2.dz", {"x": X4})) is None  # no factor
    nan_a = M43.copy()
    nan_a[0, 0] = np.nan
    assert reduction_mean_vs_sum(ctx(nan_a, 4 * M43, "L2.dz", {"x": X4})) is None
    assert reduction_mean_vs_sum(ctx(M43, 4 * nan_a, "L2.dz", {"x": X4})) is None


@pytest.mark.parametrize("name, ia, conf", [
    ("L2.dz", {"L1.z": 0, "L2.z": 0}, 0.95),  # the output layer's dz: as sure as the loss
    ("L2.dz", {"L1.z": 0}, 0.85),  # the output layer is L1 here
    ("L2.dz", {}, 0.85),  # no logits: no output layer known
    ("L1.dz", {"L1.z": 0, "L2.z": 0}, 0.85),
    ("L2.dW", {"L1.z": 0, "L2.z": 0}, 0.85),
    ("L2.db", {"L1.z": 0, "L2.z": 0}, 0.85),
])
def test_reduction_on_gradients_and_the_output_dz_confidence(name, ia, conf):
    d = reduction_mean_vs_sum(ctx(M43, M43 / 4, name, {"x": X4, **ia}))
    expect(d, "reduction-mean-vs-sum", conf, red_text(name, 0.25, 4, "A", name), red_ev(0.25, 4, "A"))


def test_reduction_output_layer_from_the_headers():
    ia = {"x": X4, "L1.z": 0, "L2.z": 0, "L3.z": 0}
    assert reduction_mean_vs_sum(ctx(M43, 4 * M43, "L2.dz", ia)).confidence == 0.85  # L3 is the output layer
    d = reduction_mean_vs_sum(ctx(M43, 4 * M43, "L2.dz", ia, meta_a={"layers": [2, 3, 4]}))
    assert d.confidence == 0.95


@pytest.mark.parametrize("loss_b, agrees", [(1.5, True), (6.0, False)])
def test_reduction_says_whether_the_loss_agrees(loss_b, agrees):
    ia, ib = {"x": X4, "loss": np.float64(1.5)}, {"loss": np.float64(loss_b)}
    d = reduction_mean_vs_sum(ctx(M43, 4 * M43, "L1.dW", ia, ib))
    where = "L1.dW, though the loss agrees (the backward pass scales differently)" if agrees else "L1.dW"
    expect(d, "reduction-mean-vs-sum", 0.85, red_text("L1.dW", 4.0, 4, "B", where),
           red_ev(4.0, 4, "B", loss_agrees=agrees))


def test_reduction_loss_agreement_needs_the_loss_on_both_sides_and_uses_the_dtype_tolerance():
    d = reduction_mean_vs_sum(ctx(M43, 4 * M43, "L1.dW", {"x": X4, "loss": np.float64(1.5)}))
    assert d.evidence["loss_agrees"] is None and d.explanation == red_text("L1.dW", 4.0, 4, "B", "L1.dW")
    d = reduction_mean_vs_sum(ctx(M43, 4 * M43, "L1.dW", {"x": X4}, {"loss": np.float64(1.5)}))
    assert d.evidence["loss_agrees"] is None
    ia, ib = {"x": X4, "loss": np.float64(1.0)}, {"loss": np.float64(1.00001)}
    assert reduction_mean_vs_sum(ctx(M43, 4 * M43, "L1.dW", ia, ib)).evidence["loss_agrees"] is False
    a32 = M43.astype(np.float32)
    assert reduction_mean_vs_sum(ctx(a32, 4 * a32, "L1.dW", ia, ib)).evidence["loss_agrees"] is True


def test_reduction_tolerance_of_the_factor_is_the_dtype_s():
    """c = 4.0002: within float32's 1e-4 of B = 4, not within float64's 1e-6."""
    assert reduction_mean_vs_sum(ctx(np.float64(1.0), np.float64(4.0002), "loss", {"x": X4})) is None
    d = reduction_mean_vs_sum(ctx(np.float32(1.0), np.float32(4.0002), "loss", {"x": X4}))
    c = float(np.float32(4.0002))
    expect(d, "reduction-mean-vs-sum", 0.95, red_text("loss", c, 4, "B", "the loss"), red_ev(c, 4, "B"))
    assert reduction_mean_vs_sum(ctx(np.float32(1.0), np.float32(4.002), "loss", {"x": X4})) is None


def test_reduction_residual_is_held_to_the_dtype_s_tolerance():
    """4·a with one element off by ~1e-5 of the norm: a float32 pair passes, a float64 pair does not."""
    b = 4 * M43
    b[1, 2] *= 1 + 1e-4
    c, resid = fit_factor(M43, b)
    assert 1e-6 < resid < 1e-4
    assert reduction_mean_vs_sum(ctx(M43, b, "L1.dW", {"x": X4})) is None
    a32, b32 = M43.astype(np.float32), b.astype(np.float32)
    c32, r32 = fit_factor(a32, b32)
    d = reduction_mean_vs_sum(ctx(a32, b32, "L1.dW", {"x": X4}))
    expect(d, "reduction-mean-vs-sum", 0.85, red_text("L1.dW", c32, 4, "B", "L1.dW"), red_ev(c32, 4, "B", r32))
    b[1, 2] *= 1 + 1e-2
    assert reduction_mean_vs_sum(ctx(a32, b.astype(np.float32), "L1.dW", {"x": X4})) is None


# ---- the factor is also the number of classes (B == C): _reduction_doubt

Y3 = np.eye(3)
P3 = np.array([[0.7, 0.2, 0.1], [0.3, 0.5, 0.2], [0.25, 0.25, 0.5]])
DOUBT = "the factor is also the number of classes C = 3: a loss averaged over classes looks the same"


def doubt_ctx(summer="B", dz=None, ia_y=True, meta=None, with_step=True):
    a, b = (np.float64(1.0), np.float64(3.0)) if summer == "B" else (np.float64(3.0), np.float64(1.0))
    ia = {"x": np.zeros((3, 2)), "L1.z": 0, "L2.z": 0}
    ib = {}
    (ia if ia_y else ib)["y"] = Y3
    step = {"probs": P3, "L2.dz": dz} if with_step and dz is not None else ({"probs": P3} if with_step else None)
    kw = {"step_b": step} if summer == "B" else {"step_a": step}
    metas = {"meta_b": meta} if summer == "B" else {"meta_a": meta}
    return ctx(a, b, "loss", ia, ib, **metas, **kw)


@pytest.mark.parametrize("summer", ["A", "B"])
def test_reduction_ruled_out_when_the_summing_side_dz_is_the_mean_s(summer):
    """B = C = 3 and the summing side's output dz is (p - y)/B: its loss is averaged over the classes."""
    assert reduction_mean_vs_sum(doubt_ctx(summer, (P3 - Y3) / 3)) is None
    assert reduction_mean_vs_sum(doubt_ctx(summer, (P3 - Y3) / 3, ia_y=False)) is None
    # the other side's step does not count: its dz says nothing about the summing side's loss
    c = doubt_ctx(summer)
    mean_step = {"probs": P3, "L2.dz": (P3 - Y3) / 3}
    other = {"step_a": mean_step} if summer == "B" else {"step_b": mean_step}
    d = reduction_mean_vs_sum(ctx(c.a, c.b, "loss", c.inputs_a, c.inputs_b, **other))
    assert d is not None and d.evidence["doubt"] == DOUBT and d.confidence == 0.6


@pytest.mark.parametrize("summer", ["A", "B"])
@pytest.mark.parametrize("dz", [P3 - Y3, (P3 - Y3) / 3 * 1.001])
def test_reduction_kept_when_the_summing_side_dz_is_not_the_mean_s(summer, dz):
    c = 3.0 if summer == "B" else 1 / 3
    d = reduction_mean_vs_sum(doubt_ctx(summer, dz))
    expect(d, "reduction-mean-vs-sum", 0.95, red_text("loss", c, 3, summer, "the loss"), red_ev(c, 3, summer))


@pytest.mark.parametrize("summer", ["A", "B"])
def test_reduction_doubtful_when_dz_is_not_in_the_trace(summer):
    c = 3.0 if summer == "B" else 1 / 3
    for d in (reduction_mean_vs_sum(doubt_ctx(summer)), reduction_mean_vs_sum(doubt_ctx(summer, with_step=False)),
              reduction_mean_vs_sum(doubt_ctx(summer, np.zeros((3, 2)))),  # dz of another shape
              reduction_mean_vs_sum(doubt_ctx(summer, ia_y=False))):
        expect(d, "reduction-mean-vs-sum", 0.6, red_text("loss", c, 3, summer, "the loss", DOUBT),
               red_ev(c, 3, summer, doubt=DOUBT))
    said = DOUBT + "; its settings say loss_reduction mean"
    d = reduction_mean_vs_sum(doubt_ctx(summer, meta={"loss_reduction": "mean"}))
    expect(d, "reduction-mean-vs-sum", 0.6, red_text("loss", c, 3, summer, "the loss", said),
           red_ev(c, 3, summer, doubt=said))
    assert reduction_mean_vs_sum(doubt_ctx(summer, meta={"loss_reduction": "sum"})).evidence["doubt"] == DOUBT


def test_reduction_doubt_only_when_the_batch_is_the_class_count():
    ia = {"x": np.zeros((4, 2)), "y": np.eye(4)[:, :3]}  # B = 4, C = 3
    d = reduction_mean_vs_sum(ctx(np.float64(1.0), np.float64(4.0), "loss", ia))
    assert (d.confidence, d.evidence["doubt"]) == (0.95, None)
    ia = {"x": np.zeros((3, 2)), "y": np.array([0.0, 1.0, 2.0])}  # labels as indices: no C
    d = reduction_mean_vs_sum(ctx(np.float64(1.0), np.float64(3.0), "loss", ia))
    assert (d.confidence, d.evidence["doubt"]) == (0.95, None)
    # a gradient other than the loss keeps its 0.85 under doubt (min with 0.6 -> 0.6) and its own name
    d = reduction_mean_vs_sum(ctx(M43[:3], 3 * M43[:3], "L1.dW", {"x": np.zeros((3, 2)), "y": Y3}))
    assert (d.confidence, d.evidence["doubt"]) == (0.6, DOUBT)


# ------------------------------------------------------------------------------------------ bias-grad-axis

DZ3 = np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75], [-2.0, 1.0, 0.125]])  # rows and columns sum differently


def axis_text(side, name="L2.db", dz="L2.dz", n=3, impl=None):
    other = "A" if side == "B" else "B"
    who = f"side {side} ({impl})" if impl else f"side {side}"
    return (f"{who[:1].upper() + who[1:]}'s {name} equals {dz}.sum(axis=1), the sum over the feature axis, while "
            f"{other}'s equals {dz}.sum(axis=0), the sum over the batch; {dz} is {n}×{n} (batch size = layer "
            f"width), so the wrong axis still has the right shape. Fix: db = dz.sum(axis=0).")


@pytest.mark.parametrize("side", ["A", "B"])
def test_bias_grad_axis_on_either_side(side):
    good, bad = DZ3.sum(axis=0), DZ3.sum(axis=1)
    a, b = (good, bad) if side == "B" else (bad, good)
    d = bias_grad_axis(ctx(a, b, "L2.db", {"L2.dz": DZ3}, {"L2.dz": DZ3}, meta_b={"impl": "port"}))
    expect(d, "bias-grad-axis", 0.95, axis_text(side, impl="port" if side == "B" else None),
           {"side": side, "dz_shape": [3, 3], "err_vs_feature_sum": 0.0, "err_vs_batch_sum": rel_err(bad, good)})


def test_bias_grad_axis_other_layers_and_float32():
    dz = np.arange(1.0, 17.0).reshape(4, 4) ** 1.5
    d = bias_grad_axis(ctx(dz.sum(axis=0), dz.sum(axis=1), "L1.db", {"L1.dz": dz}, {"L1.dz": dz}))
    assert d.explanation == axis_text("B", "L1.db", "L1.dz", 4) and d.evidence["dz_shape"] == [4, 4]
    # off by 1e-5 of the scale: float32's exact tolerance (1e-4) takes it, float64's (1e-7) does not
    good, bad = DZ3.sum(axis=0), DZ3.sum(axis=1) * (1 + 1e-5)
    assert bias_grad_axis(ctx(good, bad, "L2.db", {"L2.dz": DZ3}, {"L2.dz": DZ3})) is None
    g32, b32, dz32 = good.astype(np.float32), bad.astype(np.float32), DZ3.astype(np.float32)
    d = bias_grad_axis(ctx(g32, b32, "L2.db", {"L2.dz": dz32}, {"L2.dz": dz32}))
    assert (d.code, d.evidence["side"]) == ("bias-grad-axis", "B")
    assert d.evidence["err_vs_feature_sum"] == rel_err(b32, dz32.astype(np.float64).sum(axis=1)) > 0


def test_bias_grad_axis_needs_every_piece():
    good, bad = DZ3.sum(axis=0), DZ3.sum(axis=1)
    both = {"L2.dz": DZ3}
    assert bias_grad_axis(ctx(good, bad, "L2.dW", both, both)) is None  # not a bias gradient
    assert bias_grad_axis(ctx(good, bad, "L2.b", both, both)) is None
    assert bias_grad_axis(ctx(good, bad, "L2.db", both, {})) is None  # dz on one side only
    assert bias_grad_axis(ctx(good, bad, "L2.db", {}, both)) is None
    assert bias_grad_axis(ctx(good, bad, "L2.db", {"L1.dz": DZ3}, {"L1.dz": DZ3})) is None  # another layer's dz
    assert bias_grad_axis(ctx(good, bad, "L2.db", {"L2.dz": DZ3[:2]}, {"L2.dz": DZ3[:2]})) is None  # not square
    flat = {"L2.dz": DZ3.ravel()}
    assert bias_grad_axis(ctx(good, bad, "L2.db", flat, flat)) is None  # not a matrix
    assert bias_grad_axis(ctx(good[:2], bad[:2], "L2.db", both, both)) is None  # db not one per unit
    assert bias_grad_axis(ctx(good + 1, bad, "L2.db", both, both)) is None  # the other side is not the batch sum
    sym = DZ3 + DZ3.T  # rows sum as columns do: the axis cannot be told
    assert bias_grad_axis(ctx(sym.sum(axis=0), sym.sum(axis=1) * 2, "L2.db", {"L2.dz": sym}, {"L2.dz": sym})) is None
    eq = np.array([[1.0, 2.0, 3.0], [3.0, 1.0, 2.0], [2.0, 3.0, 1.0]])  # every row and column sums to 6
    assert bias_grad_axis(ctx(eq.sum(axis=0) + 1, eq.sum(axis=1), "L2.db", {"L2.dz": eq}, {"L2.dz": eq})) is None


# -------------------------------------------------------------------------------------------- transposed

A34 = np.arange(12.0).reshape(3, 4) ** 1.3 - 2.0
S3 = np.array([[1.0, 2.0, 3.0], [-4.0, 5.0, 6.0], [7.0, -8.0, 9.5]])
TR_TAIL = ("Usual causes: W stored as [out, in] instead of [in, out], x @ W vs W @ x, or a column-major buffer. "
           "Fix: transpose at the boundary (or record in the canonical layout).")
WHAT = {"transpose": "side B's is the transpose of side A's",
        "transposed-then-reshaped": "one side holds the other's transpose, reshaped back to the original shape "
                                    "(column-major data read as row-major)",
        "reshaped": "side B holds side A's values in the same order under the swapped shape"}


def tr_expect(d, name, a, b, kind, conf, rtol=1e-7):
    expect(d, "transposed", conf,
           f"{name}: {WHAT[kind]} (A {list(a.shape)}, B {list(b.shape)}), equal to within {fmt(rtol)} of the scale. "
           f"{TR_TAIL}", {"kind": kind, "shape_a": list(a.shape), "shape_b": list(b.shape)})


@pytest.mark.parametrize("a, b, kind, conf", [
    (S3, S3.T.copy(), "transpose", 0.9),
    (A34, A34.T.copy(), "transpose", 0.9),
    (A34, A34.T.reshape(3, 4).copy(), "transposed-then-reshaped", 0.85),
    (A34.T.reshape(3, 4).copy(), A34, "transposed-then-reshaped", 0.85),  # A holds the reshaped transpose
    (A34, A34.reshape(4, 3).copy(), "reshaped", 0.6),
    (np.array([[1.0, 2.0]]), np.array([[1.0], [2.0]]), "transpose", 0.9),  # two elements are enough
])
def test_transposed_kinds(a, b, kind, conf):
    tr_expect(transposed(ctx(a, b, "L1.W")), "L1.W", a, b, kind, conf)


def test_transposed_float32_tolerance():
    b = S3.T * (1 + 1e-5)
    assert transposed(ctx(S3, b, "L2.dz")) is None
    a32, b32 = S3.astype(np.float32), b.astype(np.float32)
    tr_expect(transposed(ctx(a32, b32, "L2.dz")), "L2.dz", a32, b32, "transpose", 0.9, 1e-4)
    b = A34.T * (1 + 1e-5)
    assert transposed(ctx(A34, b, "L2.W")) is None
    assert transposed(ctx(A34.astype(np.float32), b.astype(np.float32), "L2.W")).evidence["kind"] == "transpose"
    b = A34.reshape(4, 3) * (1 + 1e-5)
    assert transposed(ctx(A34, b, "L2.W")) is None
    assert transposed(ctx(A34.astype(np.float32), b.astype(np.float32), "L2.W")).evidence["kind"] == "reshaped"
    b = A34.T.reshape(3, 4) * (1 + 1e-5)
    assert transposed(ctx(A34, b, "L2.W")) is None
    d = transposed(ctx(A34.astype(np.float32), b.astype(np.float32), "L2.W"))
    assert d.evidence["kind"] == "transposed-then-reshaped"
    d = transposed(ctx(b.astype(np.float32), A34.astype(np.float32), "L2.W"))
    assert d.evidence["kind"] == "transposed-then-reshaped"


def test_transposed_refusals():
    assert transposed(ctx(S3, S3.T.copy() + 1, "L1.W")) is None  # square, not the transpose
    assert transposed(ctx(A34, A34.T + 1, "L1.W")) is None
    assert transposed(ctx(A34, A34 + 1, "L1.W")) is None
    assert transposed(ctx(A34.ravel(), A34.T.ravel(), "L1.W")) is None  # vectors
    assert transposed(ctx(A34, A34.T.ravel(), "L1.W")) is None
    assert transposed(ctx(A34.ravel(), A34.T.copy(), "L1.W")) is None
    assert transposed(ctx(np.array([[2.0]]), np.array([[3.0]]), "L1.W")) is None  # one element
    assert transposed(ctx(S3, S3.copy(), "L1.W")) is None  # the same
    assert transposed(ctx(np.zeros((3, 4)), np.zeros((4, 3)), "L1.W")) is None  # all zero
    assert transposed(ctx(np.zeros((3, 3)), S3, "L1.W")) is None


def test_transposed_is_silent_on_a_nearly_symmetric_matrix():
    """Asymmetric by 5e-7 of the scale (within 10 x 1e-7): a transpose would not show, so nothing is said;
    asymmetric by 2e-6, it is said."""
    sym = np.array([[1.0, 0.5, 0.25], [0.5, 1.0, 0.75], [0.25, 0.75, 0.5]])
    near = sym.copy()
    near[0, 1] += 5e-7
    assert transposed(ctx(near, near.T.copy(), "L1.dz")) is None
    far = sym.copy()
    far[0, 1] += 2e-6
    tr_expect(transposed(ctx(far, far.T.copy(), "L1.dz")), "L1.dz", far, far, "transpose", 0.9)


# ------------------------------------------------------------------------------------- scaled: a constant


def sc_text(name, c, resid, note=""):
    return (f"Side B's {name} is side A's times {fmt(c)} (residual {fmt(resid)} of its norm): one constant factor, "
            f"e.g. a learning rate, a scale in an init or a missing/extra division.{note}")


def note_text(B, name):
    return f" The factor equals the batch size {B}, but {name} is not a gradient, so this is not a mean/sum mix-up."


@pytest.mark.parametrize("factor", [3.0, 1 / 3, -2.5, 1.00011, -1.00011, 0.99989, -0.99989])
def test_scaled_constant_factor_exactly(factor):
    b = M43 * factor
    c, resid = fit_factor(M43, b)
    expect(scaled(ctx(M43, b, "L1.a")), "scaled", 0.85, sc_text("L1.a", c, resid),
           {"factor": c, "residual": resid, "batch_size": None})


@pytest.mark.parametrize("factor", [1.0, -1.0, 1.00009, -1.00009, 0.99991, -0.99991])
def test_scaled_is_not_a_factor_within_1e4_of_plus_or_minus_one(factor):
    assert scaled(ctx(M43, M43 * factor, "L1.a")) is None


def test_scaled_residual_is_held_to_the_exact_tolerance_of_the_dtype():
    b = 3 * M43
    b[2, 1] *= 1 + 1e-5
    assert 1e-7 < fit_factor(M43, b)[1] < 1e-4
    assert scaled(ctx(M43, b, "L1.a")) is None
    a32, b32 = M43.astype(np.float32), b.astype(np.float32)
    c, resid = fit_factor(a32, b32)
    expect(scaled(ctx(a32, b32, "L1.a")), "scaled", 0.85, sc_text("L1.a", c, resid),
           {"factor": c, "residual": resid, "batch_size": None})
    b[2, 1] *= 1 + 1e-3
    assert scaled(ctx(a32, b.astype(np.float32), "L1.a")) is None


@pytest.mark.parametrize("ia, ib", [({"x": X4}, {}), ({}, {"x": X4})])
def test_scaled_says_the_batch_size_factor_is_not_a_mean_sum_mixup_on_a_forward_tensor(ia, ib):
    for factor in (4.0, 0.25, 4.000003):
        b = M43 * factor
        c, resid = fit_factor(M43, b)
        expect(scaled(ctx(M43, b, "L1.a", ia, ib)), "scaled", 0.85, sc_text("L1.a", c, resid, note_text(4, "L1.a")),
               {"factor": c, "residual": resid, "batch_size": 4})
    b = M43 * 4.00003  # beyond 1e-6 of B: no note
    c, resid = fit_factor(M43, b)
    expect(scaled(ctx(M43, b, "L1.a", ia, ib)), "scaled", 0.85, sc_text("L1.a", c, resid),
           {"factor": c, "residual": resid, "batch_size": 4})


@pytest.mark.parametrize("name", ["L2.dz", "L1.dW", "L2.da"])
@pytest.mark.parametrize("ia, ib", [({"x": X4}, {}), ({}, {"y": X4})])
def test_scaled_leaves_the_batch_size_factor_of_a_gradient_to_reduction(name, ia, ib):
    assert scaled(ctx(M43, 4 * M43, name, ia, ib)) is None
    assert scaled(ctx(M43, M43 / 4, name, ia, ib)) is None
    b = 3 * M43
    c, resid = fit_factor(M43, b)
    expect(scaled(ctx(M43, b, name, ia, ib)), "scaled", 0.85, sc_text(name, c, resid),
           {"factor": c, "residual": resid, "batch_size": 4})


def test_scaled_batch_size_tolerance_of_a_gradient_is_the_dtype_s():
    """4.0002 = B·(1 + 5e-5): a mean/sum mix-up in float32 (left to reduction), a factor in float64."""
    b = M43 * 4.0002
    c, resid = fit_factor(M43, b)
    expect(scaled(ctx(M43, b, "L1.dW", {"x": X4})), "scaled", 0.85, sc_text("L1.dW", c, resid),
           {"factor": c, "residual": resid, "batch_size": 4})
    assert scaled(ctx(M43.astype(np.float32), b.astype(np.float32), "L1.dW", {"x": X4})) is None
    b32 = (M43 * 4.002).astype(np.float32)
    assert scaled(ctx(M43.astype(np.float32), b32, "L1.dW", {"x": X4})).evidence["batch_size"] == 4


def test_scaled_refusals():
    assert scaled(ctx(M43, M43.copy(), "L1.a")) is None
    assert scaled(ctx(M43, 3 * M43.T, "L1.a")) is None
    assert scaled(ctx(np.zeros((0, 3)), np.zeros((0, 3)), "L1.a")) is None
    assert scaled(ctx(np.zeros((4, 3)), M43, "L1.a")) is None
    assert scaled(ctx(M43, M43 + 1, "L1.a")) is None


# ----------------------------------------------------------------------------- scaled: one number only


def sf_text(name, c, simple, by):
    return (f"Side B's {name} is side A's times {fmt(c)} = {simple}: one simple constant factor (a single number "
            f"cannot show more; look for a missing or extra division or multiplication by {by}).")


@pytest.mark.parametrize("a, b, simple, by", [
    (1.0, 3.0, "3", "3"), (2.0, 4.0, "2", "2"), (4.0, 2.0, "1/2", "2"), (1.0, 0.1, "1/10", "10"),
    (10.0, 1.0, "1/10", "10"), (1.0, 10.0, "10", "10"), (1.0, 11.0, "11", "11"), (1.0, 100.0, "100", "100"),
    (3.0, 1.0, "1/3", "3"), (1.0, -3.0, "-3", "-3"), (-2.0, 1.0, "1/-2", "-2"), (1.0, 999999999999.0,
                                                                                  "999999999999", "999999999999"),
    (1.0, 3.000000001, "3", "3"),  # within 1e-9
])
def test_scaled_single_numbers_with_a_simple_ratio(a, b, simple, by):
    """The number to look for is the whole integer: 10 for 1/10 (not '0'), 11 for 11 (not '')."""
    c = b / a
    d = scaled(ctx(np.array([a]), np.array([b]), "loss"))
    expect(d, "scaled", 0.6, sf_text("loss", c, simple, by),
           {"factor": c, "simple": simple, "residual": 0.0, "batch_size": None})


@pytest.mark.parametrize("a, b", [
    (1.0, 2.5), (1.0, 1.0e12), (1.0e12, 1.0), (1.0, 1.5), (1.0, 3.00000001), (1.0, 1.0000001), (0.0, 3.0),
    (3.0, 0.0), (np.nan, 3.0), (3.0, np.inf), (-np.inf, 3.0), (1e300, 1e-300), (1e-300, 1e300), (1.0, 1.9999),
])
def test_scaled_single_numbers_without_a_simple_ratio(a, b):
    assert scaled(ctx(np.float64(a), np.float64(b), "loss")) is None


def test_scaled_single_number_tolerance_is_the_dtype_s():
    b = 3.0000003  # 1e-7 off: a float32 round-off, not a float64 one
    assert scaled(ctx(np.float64(1.0), np.float64(b), "L1.z")) is None
    c = float(np.float32(b))
    d = scaled(ctx(np.float32(1.0), np.float32(b), "L1.z"))
    expect(d, "scaled", 0.6, sf_text("L1.z", c, "3", "3"), {"factor": c, "simple": "3", "residual": 0.0,
                                                            "batch_size": None})
    assert scaled(ctx(np.float32(1.0), np.float32(3.0003), "L1.z")) is None


@pytest.mark.parametrize("name", ["loss", "L2.dz", "L1.db"])
@pytest.mark.parametrize("ia, ib", [({"x": X4}, {}), ({}, {"x": X4})])
def test_scaled_single_number_batch_size_is_left_to_reduction_for_the_loss_and_gradients(name, ia, ib):
    assert scaled(ctx(np.float64(1.0), np.float64(4.0), name, ia, ib)) is None
    assert scaled(ctx(np.float64(4.0), np.float64(1.0), name, ia, ib)) is None
    d = scaled(ctx(np.float64(1.0), np.float64(3.0), name, ia, ib))
    expect(d, "scaled", 0.6, sf_text(name, 3.0, "3", "3"), {"factor": 3.0, "simple": "3", "residual": 0.0,
                                                           "batch_size": 4})
    d = scaled(ctx(np.float64(1.0), np.float64(4.0), "L1.z", ia, ib))  # a forward value: the factor is said
    expect(d, "scaled", 0.6, sf_text("L1.z", 4.0, "4", "4"), {"factor": 4.0, "simple": "4", "residual": 0.0,
                                                             "batch_size": 4})
    # 4·(1 + 1e-6): beyond float64's 1e-9 of B, so not a batch-size factor, and not a simple one either
    assert scaled(ctx(np.float64(1.0), np.float64(4.000004), name, ia, ib)) is None
    b32 = np.float32(4.00001)  # within float32's 1e-5 of B: left to reduction
    assert scaled(ctx(np.float32(1.0), b32, name, ia, ib)) is None
    assert scaled(ctx(np.float32(1.0), b32, "L1.z", ia, ib)).evidence["simple"] == "4"


# ------------------------------------------------------------------ scaled: a learning-rate mismatch (_lr_step)

W0 = RNG.uniform(-1.0, 1.0, (3, 4))
G = RNG.uniform(-1.0, 1.0, (3, 4))
LR_FIX = "Fix: use the scenario's learning rate (look for a hard-coded or rescaled lr)."


def lr_pair(lr_a, lr_b, name="L1.W", g=G, w0=W0, meta_a=None, meta_b=None, gb=None, dtype=np.float64):
    g_name = f"L1.d{name[-1]}"
    a, b = (w0 - lr_a * g).astype(dtype), (w0 - lr_b * g).astype(dtype)
    return ctx(a, b, name, {g_name: g.astype(dtype)}, {g_name: (g if gb is None else gb).astype(dtype)},
               meta_a, meta_b)


def lr_text(name, k, resid, factor, how):
    return (f"{name} after the update: side A's minus side B's is exactly {fmt(k)} × L1.d{name[-1]}, the gradient "
            f"both sides agree on (residual {fmt(resid)}), so side B's learning rate minus side A's is {fmt(k)}"
            f"{'' if factor is None else f', a factor {fmt(factor)} (B over A)'}; {how}. {LR_FIX}")


def lr_fit(c):
    return fit_factor(G, f64(c.a) - f64(c.b))


def f64(x):
    return np.asarray(x, dtype=np.float64)


@pytest.mark.parametrize("name", ["L1.W", "L1.b"])
@pytest.mark.parametrize("la, lb", [(0.1, 0.2), (0.2, 0.1), (1, 2), (0.1, 0.2 + 1.5e-7)])
def test_lr_step_with_different_headers_gives_the_factor(name, la, lb):
    """Headers 0.1 and 0.2 and a step difference within 1e-6 of the larger rate (1.5e-7 off: within 1e-6·0.2,
    not within 1e-6·0.1): the factor is lb/la."""
    ha, hb = la, (0.2 if lb == 0.2 + 1.5e-7 else lb)
    c = lr_pair(la, lb, name, meta_a={"learning_rate": ha}, meta_b={"learning_rate": hb})
    k, r = lr_fit(c)
    how = f"the trace headers say so (learning_rate {ha} vs {hb})"
    expect(scaled(c), "scaled", 0.9, lr_text(name, k, r, hb / ha, how),
           {"lr_difference_b_minus_a": k, "residual": r, "learning_rate_a": ha, "learning_rate_b": hb,
            "factor": hb / ha})


@pytest.mark.parametrize("la, lb, ha, hb", [
    (0.1, 0.2 + 3e-7, 0.1, 0.2),  # the step difference is 3e-7 off the headers' (beyond 1e-6·0.2)
    (0.1, 0.3, 0.1, 0.2),
    (0.1, 0.2, None, None), (0.1, 0.2, 0.1, None), (0.1, 0.2, None, 0.2), (0.1, 0.2, "0.1", "0.2"),
    (0.1, 0.2, -0.1, -0.1), (0.1, 0.2, 0, 0), (0.1, 0.2, 0.0, 0.0),
])
def test_lr_step_without_usable_headers_gives_only_the_difference(la, lb, ha, hb):
    ma = {} if ha is None else {"learning_rate": ha}
    mb = {} if hb is None else {"learning_rate": hb}
    c = lr_pair(la, lb, meta_a=ma, meta_b=mb)
    k, r = lr_fit(c)
    expect(scaled(c), "scaled", 0.7,
           lr_text("L1.W", k, r, None, "no trace header gives the learning rate, so only the difference is known"),
           {"lr_difference_b_minus_a": k, "residual": r, "learning_rate_a": ha, "learning_rate_b": hb,
            "factor": None})


def hyp(h, ra, rb, la):
    tiny = 1e-6 * la
    return {"uses_header_lr": h, "lr_a": ra, "lr_b": rb, "factor": rb / ra if ra > tiny and rb > tiny else None}


@pytest.mark.parametrize("la, lr_a, lr_b", [(0.1, 0.1, 0.2), (0.1, 0.1, 0.15), (0.1, 0.05, 0.1), (0.1, 0.2, 0.1),
                                            (0.1, 0.1, 0.0), (0.1, 0.0, 0.1), (1, 1, 3)])
def test_lr_step_with_one_header_rate_weighs_both_readings(la, lr_a, lr_b):
    """Both headers say la: either side A steps with la (then B's rate is la + k) or side B does (A's is la - k);
    a rate of 0 means that side did not update at all."""
    c = lr_pair(lr_a, lr_b, meta_a={"learning_rate": la}, meta_b={"learning_rate": la})
    k, r = lr_fit(c)
    hyps = [hyp("A", la, la + k, la), hyp("B", la - k, la, la)]
    valid = [h for h in hyps if h["factor"] is not None]
    assert valid
    parts = []
    for h, ra, rb in (("A", la, la + k), ("B", la - k, la)):
        other, rate = ("B", rb) if h == "A" else ("A", ra)
        parts.append(f"if side {h} uses it, side {other} " +
                     (f"steps with {fmt(rate)}" if rate > 1e-6 * la else "does not apply the update at all"))
    how = f"both headers say learning_rate {la}: " + "; ".join(parts)
    expect(scaled(c), "scaled", 0.85, lr_text("L1.W", k, r, valid[0]["factor"], how),
           {"lr_difference_b_minus_a": k, "residual": r, "learning_rate_a": la, "learning_rate_b": la,
            "hypotheses": hyps, "factor": valid[0]["factor"]})


def test_lr_step_reads_a_rate_just_above_the_tiny_threshold_as_a_step():
    """Side B's rate 2e-6·la (above the 1e-6·la of 'no update'): a real, tiny step."""
    la = 0.1
    c = lr_pair(0.1, 2e-7, meta_a={"learning_rate": la}, meta_b={"learning_rate": la})
    k, _ = lr_fit(c)
    d = scaled(c)
    assert d.evidence["hypotheses"][0]["lr_b"] == la + k and d.evidence["factor"] == (la + k) / la
    assert f"side B steps with {fmt(la + k)}" in d.explanation
    c = lr_pair(0.1, 5e-8, meta_a={"learning_rate": la}, meta_b={"learning_rate": la})
    d = scaled(c)
    assert d.evidence["hypotheses"][0]["factor"] is None and d.evidence["factor"] is not None
    assert "side B does not apply the update at all" in d.explanation


def test_lr_step_residual_is_held_to_the_dtype_s_tolerance():
    noisy = np.zeros_like(W0)
    noisy[1, 2] = 1e-5  # a - b = 0.1·g + noise: residual ~3e-5, within float32's 1e-3, beyond float64's 1e-6
    c = lr_pair(0.1, 0.2, w0=W0)
    b = c.b - noisy
    c64 = ctx(c.a, b, "L1.W", c.inputs_a, c.inputs_b)
    k, r = fit_factor(G, c64.a - c64.b)
    assert 1e-6 < r < 1e-3
    assert scaled(c64) is None
    c32 = ctx(c.a.astype(np.float32), b.astype(np.float32), "L1.W",
              {"L1.dW": G.astype(np.float32)}, {"L1.dW": G.astype(np.float32)})
    k, r = fit_factor(G.astype(np.float32), f64(c32.a) - f64(c32.b))
    expect(scaled(c32), "scaled", 0.7,
           lr_text("L1.W", k, r, None, "no trace header gives the learning rate, so only the difference is known"),
           {"lr_difference_b_minus_a": k, "residual": r, "learning_rate_a": None, "learning_rate_b": None,
            "factor": None})
    noisy[1, 2] = 1e-3  # residual ~3e-3: beyond float32's too
    b = c.b - noisy
    assert scaled(ctx(c.a.astype(np.float32), b.astype(np.float32), "L1.W", c32.inputs_a, c32.inputs_b)) is None


def test_lr_step_needs_an_agreeing_gradient_of_the_same_shape():
    assert scaled(lr_pair(0.1, 0.2, "L1.a")) is None  # not a parameter
    assert scaled(lr_pair(0.1, 0.2, gb=G * (1 + 1e-6))) is None  # the gradients differ
    g32 = G.astype(np.float32)
    c = lr_pair(0.1, 0.2, gb=G * (1 + 1e-6), dtype=np.float32)  # ... but not beyond float32's tolerance
    assert scaled(c).evidence["lr_difference_b_minus_a"] == fit_factor(g32, f64(c.a) - f64(c.b))[0]
    c = lr_pair(0.1, 0.2)
    assert scaled(ctx(c.a, c.b, "L1.W", {"L1.dW": G}, {})) is None
    assert scaled(ctx(c.a, c.b, "L1.W", {}, {"L1.dW": G})) is None
    assert scaled(ctx(c.a, c.b, "L1.W", {"L1.dW": G}, {"L2.dW": G})) is None
    assert scaled(ctx(c.a, c.b, "L1.W", {"L1.dW": G.T}, {"L1.dW": G.T})) is None
    assert scaled(ctx(c.a, c.b, "L1.W", {"L1.dW": G.ravel()}, {"L1.dW": G.ravel()})) is None
    assert scaled(ctx(c.a, c.b, "L1.W", {"L1.db": G}, {"L1.db": G})) is None  # a bias's gradient
    z = np.zeros_like(G)
    assert scaled(ctx(c.a, c.b, "L1.W", {"L1.dW": z}, {"L1.dW": z})) is None
    assert scaled(ctx(c.a, c.a + W0, "L1.W", {"L1.dW": G}, {"L1.dW": G})) is None  # the steps are not along g
    assert scaled(lr_pair(0.1, 0.2, "L2.W")) is None  # L2.W's gradient is L2.dW, which is not there


# --------------------------------------------------------------------------------------------- sign-flip


def sf_expect(d, name, where, conf, flipped, sig, rtol=1e-7, **extra):
    expect(d, "sign-flip", conf,
           f"Side B's {name} is minus side A's on {where} (magnitudes equal to within {fmt(rtol)} of the scale): a "
           f"sign error, e.g. y - p for p - y, W += lr·g for W -= lr·g, or a negated term in one component.",
           {"flipped": flipped, "significant": sig, "fraction": flipped / sig, **extra})


def test_sign_flip_everywhere():
    sf_expect(sign_flip(ctx(M43, -M43, "L2.dz")), "L2.dz", "every element", 0.9, 12, 12)
    v = np.array([0.5, -2.0, 3.0])
    sf_expect(sign_flip(ctx(v, -v, "L2.b")), "L2.b", "every element", 0.9, 3, 3)
    sf_expect(sign_flip(ctx(np.float64(2.0), np.float64(-2.0), "loss")), "loss", "every element", 0.9, 1, 1)


def test_sign_flip_on_whole_rows_ignores_their_insignificant_elements():
    a = M43.copy()
    a[1, 0] = 0.0
    b = a.copy()
    b[1] *= -1
    sf_expect(sign_flip(ctx(a, b, "L1.dz")), "L1.dz", "whole rows [1]", 0.8, 2, 11, rows=[1])


def test_sign_flip_on_whole_columns():
    b = M43.copy()
    b[:, 2] *= -1
    sf_expect(sign_flip(ctx(M43, b, "L2.W")), "L2.W", "whole columns [2]", 0.8, 4, 12, columns=[2])
    b[:, 0] *= -1
    sf_expect(sign_flip(ctx(M43, b, "L2.W")), "L2.W", "whole columns [0, 2]", 0.8, 8, 12, columns=[0, 2])


def test_sign_flip_rows_are_named_before_columns():
    a = np.array([[1.0, 0.0], [0.0, 0.5]])
    b = np.array([[-1.0, 0.0], [0.0, 0.5]])  # one element: a whole row and a whole column
    sf_expect(sign_flip(ctx(a, b, "L2.W")), "L2.W", "whole rows [0]", 0.8, 1, 2, rows=[0])


def test_sign_flip_names_at_most_20_rows():
    a = np.random.default_rng(3).uniform(0.5, 1.0, (25, 2))
    b = a.copy()
    b[:22] *= -1
    sf_expect(sign_flip(ctx(a, b, "L1.z")), "L1.z", f"whole rows {list(range(20))}", 0.8, 44, 50,
              rows=list(range(22)))


def test_sign_flip_on_scattered_elements():
    b = M43.copy()
    b[0, 0], b[2, 1] = -b[0, 0], -b[2, 1]
    sf_expect(sign_flip(ctx(M43, b, "L1.dz")), "L1.dz", "2 of 12 elements", 0.6, 2, 12)
    v, w = np.array([1.0, -2.0, 3.0, 0.5]), np.array([1.0, 2.0, 3.0, 0.5])
    sf_expect(sign_flip(ctx(v, w, "L1.b")), "L1.b", "1 of 4 elements", 0.6, 1, 4)
    m, n = v.reshape(1, 4), w.reshape(1, 4)  # one row: the flipped column is whole
    sf_expect(sign_flip(ctx(m, n, "L1.b")), "L1.b", "whole columns [1]", 0.8, 1, 4, columns=[1])


def test_sign_flip_tolerance_boundaries():
    """scale 1, float64: |a| and |b| may differ by exactly 1e-7; an element of magnitude exactly 10·1e-7 is not
    significant, so its sign does not count."""
    tol = 1e-7 * 1.0
    d = sign_flip(ctx(np.array([1.0, 0.0]), np.array([-1.0, -tol]), "L1.z"))
    sf_expect(d, "L1.z", "every element", 0.9, 1, 1)
    assert sign_flip(ctx(np.array([1.0, 0.0]), np.array([-1.0, -2 * tol]), "L1.z")) is None
    t = 10 * tol
    sf_expect(sign_flip(ctx(np.array([1.0, t]), np.array([-1.0, t]), "L1.z")), "L1.z", "every element", 0.9, 1, 1)
    t = 11 * tol
    sf_expect(sign_flip(ctx(np.array([1.0, t]), np.array([-1.0, t]), "L1.z")), "L1.z", "1 of 2 elements", 0.6, 1,
              2)


def test_sign_flip_float32_tolerance():
    b = -M43 * (1 + 1e-5)
    assert sign_flip(ctx(M43, b, "L1.dW")) is None
    d = sign_flip(ctx(M43.astype(np.float32), b.astype(np.float32), "L1.dW"))
    sf_expect(d, "L1.dW", "every element", 0.9, 12, 12, rtol=1e-4)
    assert sign_flip(ctx(M43.astype(np.float32), (-M43 * 1.001).astype(np.float32), "L1.dW")) is None


def test_sign_flip_refusals():
    assert sign_flip(ctx(M43, M43 * (1 + 1e-9), "L1.z")) is None  # no sign differs
    assert sign_flip(ctx(M43, -M43.T, "L1.z")) is None
    assert sign_flip(ctx(np.zeros(0), np.zeros(0), "L1.z")) is None
    assert sign_flip(ctx(np.zeros(3), -np.zeros(3), "L1.z")) is None
    n = M43.copy()
    n[0, 0] = np.nan
    assert sign_flip(ctx(n, -M43, "L1.z")) is None
    assert sign_flip(ctx(M43, -n, "L1.z")) is None
    i = M43.copy()
    i[3, 2] = np.inf
    assert sign_flip(ctx(M43, -i, "L1.z")) is None
    assert sign_flip(ctx(i, -M43, "L1.z")) is None


# -------------------------------------------------------------------------------------------- nan-origin


def nan_text(name, who, nan, pos, neg, positions, n_inputs):
    text = (f"{name} is the first tensor where non-finite values appear on {who} only: {nan} nan, {pos} +inf, "
            f"{neg} -inf (first at {positions}), while all {n_inputs} tensors it recorded before it in this step "
            f"are finite. The operation computing {name} overflows, divides by zero or takes log/sqrt of an "
            f"out-of-range value there.")
    return text[:1].upper() + text[1:]


def test_nan_origin_counts_every_kind_on_side_b():
    a, b = M43.copy(), M43.copy()
    b[0, 1], b[2, 0], b[3, 2] = np.nan, np.inf, -np.inf
    a[1, 1] = b[1, 1] = np.nan  # non-finite on both sides: counted, but not where it started
    ins = {"x": X4, "L1.z": M43}
    d = nan_origin(ctx(a, b, "L1.a", ins, ins))
    pos = [[0, 1], [2, 0], [3, 2]]
    expect(d, "nan-origin", 0.75, nan_text("L1.a", "side B", 2, 1, 1, pos, 2),
           {"side": "B", "nan": 2, "posinf": 1, "neginf": 1, "positions": pos, "inputs_checked": ["x", "L1.z"]})


def test_nan_origin_on_side_a_and_the_first_five_positions():
    a = np.full((2, 4), np.inf)
    a[1, 3] = 1.0
    b = np.ones((2, 4))
    d = nan_origin(ctx(a, b, "probs", {}, {}, {"impl": "numpy"}))
    pos = [[0, 0], [0, 1], [0, 2], [0, 3], [1, 0]]
    expect(d, "nan-origin", 0.75, nan_text("probs", "side A (numpy)", 0, 7, 0, pos, 0),
           {"side": "A", "nan": 0, "posinf": 7, "neginf": 0, "positions": pos, "inputs_checked": []})


def test_nan_origin_skips_a_side_whose_inputs_already_were_not_finite():
    a, b = M43.copy(), M43.copy()
    a[0, 0], b[1, 1] = np.nan, -np.inf
    dirty = {"x": X4, "L1.z": np.array([1.0, np.inf])}
    d = nan_origin(ctx(a, b, "L1.a", dirty, {"x": X4}))
    assert (d.evidence["side"], d.evidence["neginf"], d.evidence["positions"]) == ("B", 1, [[1, 1]])
    assert nan_origin(ctx(a, b, "L1.a", dirty, dirty)) is None
    d = nan_origin(ctx(a, b, "L1.a", {"x": X4}, dirty))
    assert (d.evidence["side"], d.evidence["nan"], d.evidence["positions"]) == ("A", 1, [[0, 0]])


def test_nan_origin_refusals():
    a = M43.copy()
    a[0, 0] = np.nan
    assert nan_origin(ctx(M43, M43 * 2, "L1.a")) is None  # all finite
    assert nan_origin(ctx(a, a.copy(), "L1.a")) is None  # the same non-finite values on both sides
    b = a.copy()
    b[0, 0] = np.inf  # nan against inf: non-finite on both
    assert nan_origin(ctx(a, b, "L1.a")) is None
    assert nan_origin(ctx(a, M43.T, "L1.a")) is None  # shapes differ


# ------------------------------------------------------------------------------------- bias-grad-scalar


def bs_text(who, name, how, n):
    return (f"Every element of {who}'s {name} is the same number, {how}: the bias gradient is one scalar (np.sum(dz) "
            f"with no axis) broadcast to all {n} biases, instead of one sum per unit. Fix: db = dz.sum(axis=0).")


@pytest.mark.parametrize("side", ["A", "B"])
def test_bias_grad_scalar_with_dz_on_both_sides(side):
    total = float(M43.sum())
    good, bad = M43.sum(axis=0), np.full(3, total)
    a, b = (good, bad) if side == "B" else (bad, good)
    meta = {"impl": "port"}
    d = bias_grad_scalar(ctx(a, b, "L2.db", {"L2.dz": M43}, {"L2.dz": M43}, meta, meta))
    expect(d, "bias-grad-scalar", 0.95,
           bs_text(f"side {side} (port)", "L2.db", f"L2.dz.sum() = {fmt(total)}, over the batch and the units", 3),
           {"side": side, "value": total, "units": 3, "dz_checked": True})


def test_bias_grad_scalar_other_side_unconfirmed_is_085():
    total = float(M43.sum())
    good, bad = M43.sum(axis=0), np.full(3, total)
    how = f"L2.dz.sum() = {fmt(total)}, over the batch and the units"
    ev = {"side": "B", "value": total, "units": 3, "dz_checked": True}
    for ia in ({}, {"L2.dz": M43[:3]}, {"L2.dz": M43 * 2}, {"L1.dz": M43}):
        expect(bias_grad_scalar(ctx(good, bad, "L2.db", ia, {"L2.dz": M43})), "bias-grad-scalar", 0.85,
               bs_text("side B", "L2.db", how, 3), ev)


def test_bias_grad_scalar_without_dz_reads_the_other_side_s_sum():
    good = M43.sum(axis=0)
    total = float(good.sum())
    bad = np.full(3, total)
    expect(bias_grad_scalar(ctx(good, bad, "L1.db")), "bias-grad-scalar", 0.85,
           bs_text("side B", "L1.db", "the sum of A's L1.db (L1.dz is not recorded)", 3),
           {"side": "B", "value": total, "units": 3, "dz_checked": False})
    d = bias_grad_scalar(ctx(bad, good, "L1.db", {"L1.dz": M43.ravel()}, {}))  # a dz that is not a matrix
    assert (d.evidence["side"], d.confidence, d.evidence["value"]) == ("A", 0.85, total)
    assert "the sum of B's L1.db (L1.dz is not recorded)" in d.explanation
    d = bias_grad_scalar(ctx(bad, good, "L1.db", {"L1.dz": M43[:, :2]}, {}))  # a dz of another width
    assert (d.evidence["side"], d.confidence) == ("A", 0.85)
    two = np.array([0.25, -1.0])  # two units are enough
    d = bias_grad_scalar(ctx(two, np.full(2, -0.75), "L1.db"))
    assert (d.evidence["side"], d.evidence["units"], d.evidence["value"]) == ("B", 2, -0.75)
    assert bias_grad_scalar(ctx(two, np.full(2, -0.7), "L1.db")) is None  # not the sum
    n = good.copy()
    n[0] = np.nan
    assert bias_grad_scalar(ctx(n, bad, "L1.db")) is None  # the other side is not finite
    assert bias_grad_scalar(ctx(good[:2], bad, "L1.db")) is None  # shapes differ


def test_bias_grad_scalar_sum_that_cancels_is_held_to_the_sum_of_magnitudes():
    """Rows of p - y sum to 0, so dz.sum() is round-off: a constant db of 1e-12 is that sum (within 1e-7 of
    sum |dz|), while the per-unit sums are not constant."""
    dz = np.array([[0.7, 0.2, 0.1], [0.3, 0.5, 0.2], [0.25, 0.25, 0.5]]) - np.eye(3)
    good, bad = dz.sum(axis=0), np.full(3, 1e-12)
    d = bias_grad_scalar(ctx(good, bad, "L2.db", {"L2.dz": dz}, {"L2.dz": dz}))
    assert (d.confidence, d.evidence["side"], d.evidence["value"]) == (0.95, "B", float(dz.sum()))
    assert bias_grad_scalar(ctx(good, np.full(3, 1e-6), "L2.db", {"L2.dz": dz}, {"L2.dz": dz})) is None
    # a db within 1e-7·sum|dz| of the per-unit sums is a correct db that happens to be constant
    dz = np.array([[0.5, -0.5, 0.25], [-0.5 + 1.1e-10, 0.5 + 0.9e-10, -0.25 + 1e-10]])
    const = np.full(3, 1e-10)
    assert bias_grad_scalar(ctx(const, dz.sum(axis=0), "L2.db", {"L2.dz": dz}, {"L2.dz": dz})) is None


def test_bias_grad_scalar_float32_tolerance():
    total = float(M43.sum())
    good, bad = M43.sum(axis=0), np.full(3, total * (1 + 1e-5))
    assert bias_grad_scalar(ctx(good, bad, "L2.db", {"L2.dz": M43}, {"L2.dz": M43})) is None
    g32, b32, dz32 = good.astype(np.float32), bad.astype(np.float32), M43.astype(np.float32)
    d = bias_grad_scalar(ctx(g32, b32, "L2.db", {"L2.dz": dz32}, {"L2.dz": dz32}))
    assert (d.confidence, d.evidence["side"], d.evidence["value"]) == (0.95, "B", float(dz32.astype(np.float64).sum()))
    assert bias_grad_scalar(ctx(good, bad, "L2.db")) is None  # without dz: the other side's sum, float64
    d = bias_grad_scalar(ctx(g32, b32, "L2.db"))
    assert (d.confidence, d.evidence["side"]) == (0.85, "B")


def test_bias_grad_scalar_refusals():
    total = float(M43.sum())
    good, bad = M43.sum(axis=0), np.full(3, total)
    dz = {"L2.dz": M43}
    assert bias_grad_scalar(ctx(good, bad, "L2.dW", dz, dz)) is None
    assert bias_grad_scalar(ctx(good, bad, "L2.W", dz, dz)) is None
    assert bias_grad_scalar(ctx(bad, bad.copy(), "L2.db", dz, dz)) is None  # the same
    assert bias_grad_scalar(ctx(good[:1], bad[:1], "L2.db", {"L2.dz": M43[:, :1]}, {"L2.dz": M43[:, :1]})) is None
    bad2 = bad.copy()
    bad2[1] *= 1 + 1e-9  # not one number
    assert bias_grad_scalar(ctx(good, bad2, "L2.db", dz, dz)) is None
    assert bias_grad_scalar(ctx(good, np.full(3, np.inf), "L2.db", dz, dz)) is None
    assert bias_grad_scalar(ctx(good, np.full(3, total * 2), "L2.db", dz, dz)) is None  # not dz's sum
    eq = np.array([[1.0, 2.0, 3.0], [3.0, 1.0, 2.0], [2.0, 3.0, 1.0]])
    assert bias_grad_scalar(ctx(M43.sum(axis=0), np.full(3, 7.0), "L2.db", {"L2.dz": eq}, {"L2.dz": M43})) is None


# ----------------------------------------------------------------- bias-grad-scalar read from the update

OLD = np.array([0.5, -0.25, 1.0, 0.125])
GB = np.array([0.3, -0.2, 0.1, 0.4])


def moved_text(who, name, u, lo, hi, other, frozen):
    tail = ("; with a softmax output that sum is 0, so the biases do not move at all, which a frozen bias would do "
            "too") if frozen else ""
    return (f"The update moved every one of {who}'s {name} by the same amount ({fmt(u)}) while {other}'s moved by "
            f"{fmt(lo)}..{fmt(hi)}: its bias gradient is one number for all units (np.sum(dz) with no axis{tail}). "
            f"db is not in the trace, so this is read from the update. Fix: db = dz.sum(axis=0).")


@pytest.mark.parametrize("side", ["A", "B"])
def test_bias_moved_as_one_on_either_side(side):
    good, bad = OLD - 0.1 * GB, OLD - 0.1 * 0.15
    a, b = (good, bad) if side == "B" else (bad, good)
    force = {"L2.b": OLD, "L2.W": np.zeros((2, 4))}
    d = bias_grad_scalar(ctx(a, b, "L2.b", meta_a={"impl": "x"}, meta_b={"impl": "x"},
                             in_force_a=force, in_force_b=force))
    u, uo = OLD - bad, OLD - good
    expect(d, "bias-grad-scalar", 0.8,
           moved_text(f"side {side} (x)", "L2.b", float(u[0]), float(uo.min()), float(uo.max()),
                      "A" if side == "B" else "B", False),
           {"side": side, "update": float(u[0]), "units": 4, "dz_checked": False, "frozen": False})


def test_bias_moved_as_one_from_the_previous_step_and_frozen():
    """The parameters in force from the step before; side B's biases did not move: frozen, 0.6."""
    good = OLD - 0.1 * GB
    d = bias_grad_scalar(ctx(good, OLD.copy(), "L1.b", before_a=({"L1.b": OLD},), before_b=({"L1.b": OLD},)))
    uo = OLD - good
    expect(d, "bias-grad-scalar", 0.6, moved_text("side B", "L1.b", 0.0, float(uo.min()), float(uo.max()), "A", True),
           {"side": "B", "update": 0.0, "units": 4, "dz_checked": False, "frozen": True})


def test_bias_moved_as_one_frozen_boundary():
    """From zeros: side B moved every bias by exactly 1e-7 of the largest update of side A (1.0): frozen;
    by 2e-7: moved."""
    zero = {"L1.b": np.zeros(3)}
    good = np.array([-1.0, -0.5, -0.25])
    d = bias_grad_scalar(ctx(good, np.full(3, -1e-7 * 1.0), "L1.b", in_force_a=zero, in_force_b=zero))
    assert (d.confidence, d.evidence["frozen"], d.evidence["update"]) == (0.6, True, 1e-7)
    d = bias_grad_scalar(ctx(good, np.full(3, -2e-7), "L1.b", in_force_a=zero, in_force_b=zero))
    assert (d.confidence, d.evidence["frozen"]) == (0.8, False)


def test_bias_moved_as_one_spread_is_held_to_the_larger_of_spread_and_scale():
    zero = {"L1.b": np.zeros(3)}
    # side A moved by 1.0 .. 1.001 (spread 1e-3, scale ~1): side B's spread of 5e-8 is within 1e-7 of the scale
    good = -np.array([1.0, 1.001, 1.0005])
    bad = -np.array([0.5, 0.5 + 5e-8, 0.5])
    d = bias_grad_scalar(ctx(good, bad, "L1.b", in_force_a=zero, in_force_b=zero))
    assert (d.confidence, d.evidence["side"], d.evidence["update"]) == (0.8, "B", 0.5)
    assert bias_grad_scalar(ctx(good, -np.array([0.5, 0.5 + 2e-7, 0.5]), "L1.b", in_force_a=zero,
                                in_force_b=zero)) is None
    # side A moved by -1 .. 1 (spread 2 > scale 1): side B's spread of 1.5e-7 is within 1e-7 of the spread
    good = -np.array([-1.0, 1.0, 0.5])
    d = bias_grad_scalar(ctx(good, -np.array([0.5, 0.5 + 1.5e-7, 0.5]), "L1.b", in_force_a=zero, in_force_b=zero))
    assert (d.confidence, d.evidence["side"]) == (0.8, "B")
    assert bias_grad_scalar(ctx(good, -np.array([0.5, 0.5 + 3e-7, 0.5]), "L1.b", in_force_a=zero,
                                in_force_b=zero)) is None
    # float32: within 1e-4
    g32, b32 = good.astype(np.float32), (-np.array([0.5, 0.5 + 1e-5, 0.5])).astype(np.float32)
    z32 = {"L1.b": np.zeros(3, np.float32)}
    assert bias_grad_scalar(ctx(g32, b32, "L1.b", in_force_a=z32, in_force_b=z32)).evidence["side"] == "B"
    assert bias_grad_scalar(ctx(good, b32.astype(np.float64), "L1.b", in_force_a=zero, in_force_b=zero)) is None


def test_bias_moved_as_one_refusals():
    good, bad = OLD - 0.1 * GB, OLD - 0.015
    f = {"L2.b": OLD}
    assert bias_grad_scalar(ctx(good, bad, "L2.b")) is None  # no parameters in force
    assert bias_grad_scalar(ctx(good, bad, "L2.b", in_force_a=f)) is None
    assert bias_grad_scalar(ctx(good, bad, "L2.b", in_force_b=f)) is None
    assert bias_grad_scalar(ctx(good, bad, "L2.b", in_force_a=f, in_force_b={"L1.b": OLD})) is None
    assert bias_grad_scalar(ctx(good, bad, "L2.b", in_force_a={"L1.b": OLD}, in_force_b=f)) is None
    assert bias_grad_scalar(ctx(good, good.copy(), "L2.b", in_force_a=f, in_force_b=f)) is None  # the same
    # both moved every bias by one amount (exactly, in binary)
    assert bias_grad_scalar(ctx(OLD - 0.25, OLD - 0.5, "L2.b", in_force_a=f, in_force_b=f)) is None
    # parameters in force of another shape: nothing to read (they used to raise or broadcast)
    for other in ({"L2.b": OLD[:3]}, {"L2.b": OLD[:1]}, {"L2.b": OLD.reshape(1, 4)}):
        assert bias_grad_scalar(ctx(good, bad, "L2.b", in_force_a=other, in_force_b=other)) is None
        assert bias_grad_scalar(ctx(good, bad, "L2.b", in_force_a=f, in_force_b=other)) is None
        assert bias_grad_scalar(ctx(good, bad, "L2.b", in_force_a=other, in_force_b=f)) is None
    one = {"L2.b": OLD[:1]}
    assert bias_grad_scalar(ctx(good[:1], bad[:1], "L2.b", in_force_a=one, in_force_b=one)) is None
    nan = {"L2.b": np.array([0.5, np.nan, 1.0, 0.125])}
    assert bias_grad_scalar(ctx(good, bad, "L2.b", in_force_a=nan, in_force_b=f)) is None
    assert bias_grad_scalar(ctx(good, bad, "L2.b", in_force_a=f, in_force_b=nan)) is None
    assert bias_grad_scalar(ctx(good, bad, "L2.W", in_force_a=f, in_force_b=f)) is None
    # sides of different shapes (each with its own parameters in force): nothing to read; an empty side
    # used to raise in np.ptp
    empty = np.zeros(0)
    assert bias_grad_scalar(ctx(empty, bad, "L2.b", in_force_a={"L2.b": empty}, in_force_b=f)) is None
    assert bias_grad_scalar(ctx(good, empty, "L2.b", in_force_a=f, in_force_b={"L2.b": empty})) is None
    assert bias_grad_scalar(ctx(good[:2], bad, "L2.b", in_force_a={"L2.b": OLD[:2]}, in_force_b=f)) is None


def test_bias_moved_as_one_exact_boundaries():
    """From zeros, side A moved by 1.0, 0.5, 0.25 (scale and spread below 1: the allowance is 1e-7 of 1.0)."""
    good = np.array([-1.0, -0.5, -0.25])

    def moved(u, g=good):
        zero = {"L1.b": np.zeros(len(g))}
        return bias_grad_scalar(ctx(g, -np.asarray(u), "L1.b", in_force_a=zero, in_force_b=zero))

    d = moved([0.0, 1e-7, 0.0])  # a spread of exactly the allowance still counts as one amount
    assert (d.evidence["side"], d.evidence["update"], d.confidence) == ("B", 0.0, 0.6)
    assert moved([0.0, 1.1e-7, 0.0]) is None
    d = moved([1e-7, 1.5e-7, 1e-7])  # the first bias's update decides: 1e-7 is frozen, 1.5e-7 would not be
    assert (d.evidence["update"], d.evidence["frozen"], d.confidence) == (1e-7, True, 0.6)
    assert d.explanation.startswith(f"The update moved every one of side B's L1.b by the same amount ({fmt(1e-7)})")
    d = moved([1.5e-7, 1e-7, 1.5e-7])
    assert (d.evidence["update"], d.evidence["frozen"], d.confidence) == (1.5e-7, False, 0.8)
    big = np.array([-2.0, -1.0, -0.5])  # scale 2: frozen up to 2e-7
    assert moved([2e-7] * 3, big).evidence["frozen"] is True
    assert moved([2.5e-7] * 3, big).evidence["frozen"] is False
    d = moved([0.75, 0.75], good[:2])  # two biases are enough
    assert (d.evidence["units"], d.evidence["update"]) == (2, 0.75)
    assert moved([0.75], good[:1]) is None


def test_bias_moved_as_one_needs_the_two_sides_to_differ():
    """Equal biases on both sides, but different parameters in force: what moved is not the bias's doing."""
    now = OLD - 0.1 * GB
    d = bias_grad_scalar(ctx(now, now.copy(), "L2.b", in_force_a={"L2.b": now + 0.25}, in_force_b={"L2.b": OLD}))
    assert d is None


def test_lr_step_rates_exactly_at_the_tiny_threshold():
    """Headers 1e6 (tiny = 1e-6·1e6 = 1.0 exactly); a - b = k·g exactly with g = ones: a rate of exactly 1.0 is
    'does not apply the update', not a step."""
    g = np.ones(4)
    la = 1e6

    def pair(k):
        c = ctx(np.zeros(4), np.full(4, -k), "L1.b", {"L1.db": g}, {"L1.db": g},
                {"learning_rate": la}, {"learning_rate": la})
        return scaled(c)

    d = pair(1.0 - la)  # if side A uses la, side B's rate is la + k = 1.0
    assert d.evidence["hypotheses"][0] == {"uses_header_lr": "A", "lr_a": la, "lr_b": 1.0, "factor": None}
    assert d.evidence["factor"] == la / (la - (1.0 - la)) and d.confidence == 0.85
    assert "if side A uses it, side B does not apply the update at all; if side B uses it, side A steps with" \
        in d.explanation
    d = pair(la - 1.0)  # if side B uses la, side A's rate is la - k = 1.0
    assert d.evidence["hypotheses"][1] == {"uses_header_lr": "B", "lr_a": 1.0, "lr_b": la, "factor": None}
    assert d.evidence["factor"] == (2 * la - 1.0) / la
    assert d.explanation.count("does not apply the update at all") == 1


def test_lr_step_header_difference_exactly_at_its_tolerance():
    """lb - la = 2^-17, and k is off it by exactly 1e-6·lb: the headers still give the factor."""
    la, lb, k = 1.0, 1.0 + 2.0**-17, 8.629402160644531e-06
    assert abs(k - (lb - la)) == 1e-6 * lb
    g = np.ones(4)
    d = scaled(ctx(np.zeros(4), np.full(4, -k), "L1.b", {"L1.db": g}, {"L1.db": g},
                   {"learning_rate": la}, {"learning_rate": lb}))
    assert (d.confidence, d.evidence["factor"], d.evidence["lr_difference_b_minus_a"]) == (0.9, lb / la, k)


def test_bias_grad_axis_each_side_is_judged_by_its_own_dz():
    """Side A's dz is not square (it is passed over), side B's is: B is still read, with A's batch sums."""
    dz_a = np.arange(1.0, 13.0).reshape(4, 3) ** 1.5
    d = bias_grad_axis(ctx(dz_a.sum(axis=0), DZ3.sum(axis=1), "L2.db", {"L2.dz": dz_a}, {"L2.dz": DZ3}))
    assert (d.code, d.evidence["side"], d.evidence["dz_shape"]) == ("bias-grad-axis", "B", [3, 3])


def test_bias_grad_axis_needs_the_feature_sum_to_differ_from_the_batch_sum():
    """Side A's dz sums to 6 along both axes: its db is both sums, so nothing says which axis it took, though
    side B's db is its own dz's batch sum."""
    eq = np.array([[1.0, 2.0, 3.0], [3.0, 1.0, 2.0], [2.0, 3.0, 1.0]])
    assert bias_grad_axis(ctx(eq.sum(axis=1), DZ3.sum(axis=0), "L2.db", {"L2.dz": eq}, {"L2.dz": DZ3})) is None
    # the same with a side A that does differ: found
    d = bias_grad_axis(ctx(DZ3.sum(axis=1), DZ3.sum(axis=0), "L2.db", {"L2.dz": DZ3}, {"L2.dz": DZ3}))
    assert (d.code, d.evidence["side"]) == ("bias-grad-axis", "A")


def test_sign_flip_tolerance_is_relative_to_the_larger_side():
    """|b| exceeds |a| by 1e-7 and a fraction of an ulp: more than 1e-7 of side A's scale, within 1e-7 of the
    pair's (the larger side's), which is the one that counts, whichever side it is."""
    big = 1.0 + 450359963 * 2.0**-52
    assert 1e-7 < big - 1.0 <= 1e-7 * big
    for a, b in ((np.array([1.0, 0.5]), np.array([-big, -0.5])), (np.array([-big, -0.5]), np.array([1.0, 0.5]))):
        sf_expect(sign_flip(ctx(a, b, "L1.z")), "L1.z", "every element", 0.9, 2, 2)


def test_sign_flip_tolerance_grows_with_the_scale():
    """Scale 4: an element of 2e-6 is below 10·(4·1e-7) and so not significant; at scale 1 it counts."""
    sf_expect(sign_flip(ctx(np.array([4.0, 2e-6]), np.array([-4.0, 2e-6]), "L1.z")), "L1.z", "every element", 0.9,
              1, 1)
    sf_expect(sign_flip(ctx(np.array([1.0, 2e-6]), np.array([-1.0, 2e-6]), "L1.z")), "L1.z", "1 of 2 elements", 0.6,
              1, 2)
    # and the magnitudes may differ by 4e-7 at scale 4
    sf_expect(sign_flip(ctx(np.array([4.0, 0.0]), np.array([-4.0, -4e-7]), "L1.z")), "L1.z", "every element", 0.9,
              1, 1)


def test_transposed_identical_vectors_are_not_a_transpose():
    """A 1×n (or n×1) matrix read back under its own shape is its own transpose reshaped: equal sides say
    nothing."""
    row, col = np.array([[1.0, 2.0, 3.0]]), np.array([[1.0], [2.0], [3.0]])
    assert transposed(ctx(row, row.copy(), "L1.b")) is None
    assert transposed(ctx(col, col.copy(), "L1.b")) is None
    tr_expect(transposed(ctx(row, col, "L1.b")), "L1.b", row, col, "transpose", 0.9)


def test_transposed_symmetry_threshold_is_10_times_the_tolerance():
    """Asymmetric by 1.05e-6 of the scale: just above 10 x 1e-7, so a transpose does show."""
    far = np.array([[1.0, 0.5, 0.25], [0.5, 1.0, 0.75], [0.25, 0.75, 0.5]])
    far[0, 1] += 1.05e-6
    tr_expect(transposed(ctx(far, far.T.copy(), "L1.dz")), "L1.dz", far, far, "transpose", 0.9)


def test_bias_moved_as_one_only_for_a_layer_s_bias():
    """A tensor whose name ends in .b but is not L<n>.b is no bias: its update is not read."""
    good, bad = OLD - 0.1 * GB, OLD - 0.015
    f = {"out.b": OLD, "L2.b": OLD}
    assert bias_grad_scalar(ctx(good, bad, "out.b", in_force_a=f, in_force_b=f)) is None
    assert bias_grad_scalar(ctx(good, bad, "L2.b", in_force_a=f, in_force_b=f)).evidence["side"] == "B"


def test_bias_grad_scalar_needs_a_vector_db():
    """A db recorded as a 1×n matrix is not read (the trace's db is one number per unit, a vector)."""
    total = float(M43.sum())
    good, bad = M43.sum(axis=0).reshape(1, 3), np.full((1, 3), total)
    assert bias_grad_scalar(ctx(good, bad, "L2.db", {"L2.dz": M43}, {"L2.dz": M43})) is None
    assert bias_grad_scalar(ctx(good.ravel(), bad.ravel(), "L2.db", {"L2.dz": M43}, {"L2.dz": M43})) is not None


def test_bias_grad_scalar_cancelling_sum_tolerance_is_1e7_of_the_sum_of_magnitudes():
    """dz sums to exactly 0 with sum |dz| = 4: a constant db within 4e-7 (+ 1e-7 of itself) of 0 is that sum;
    4.1e-7 is not. The same without dz, from the other side's db [2, -2]."""
    dz = np.array([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]])
    good = dz.sum(axis=0)
    for c in (3e-7, 3.9e-7):
        d = bias_grad_scalar(ctx(good, np.full(3, c), "L2.db", {"L2.dz": dz}, {"L2.dz": dz}))
        assert (d.confidence, d.evidence) == (0.95, {"side": "B", "value": 0.0, "units": 3, "dz_checked": True})
        d = bias_grad_scalar(ctx(np.array([2.0, -2.0]), np.full(2, c), "L1.db"))
        assert (d.confidence, d.evidence) == (0.85, {"side": "B", "value": 0.0, "units": 2, "dz_checked": False})
    assert bias_grad_scalar(ctx(good, np.full(3, 4.1e-7), "L2.db", {"L2.dz": dz}, {"L2.dz": dz})) is None
    assert bias_grad_scalar(ctx(np.array([2.0, -2.0]), np.full(2, 4.1e-7), "L1.db")) is None


def test_bias_grad_scalar_reads_side_b_after_a_constant_side_a_that_is_no_sum():
    """Both sides constant: side A's 7s are not its dz's sum (nor, without dz, the sum of B's), side B's are."""
    total = float(M43.sum())
    d = bias_grad_scalar(ctx(np.full(3, 7.0), np.full(3, total), "L2.db", {"L2.dz": M43}, {"L2.dz": M43}))
    assert (d.confidence, d.evidence) == (0.85, {"side": "B", "value": total, "units": 3, "dz_checked": True})
    d = bias_grad_scalar(ctx(np.full(2, 7.0), np.full(2, 14.0), "L1.db"))
    assert (d.confidence, d.evidence) == (0.85, {"side": "B", "value": 14.0, "units": 2, "dz_checked": False})


def test_reduction_needs_the_same_shape_and_reads_two_elements_by_a_fit():
    one = np.float64(1.0)
    assert reduction_mean_vs_sum(ctx(one, np.array([4.0]), "loss", {"x": X4})) is None  # () vs (1,)
    assert reduction_mean_vs_sum(ctx(M43, 4 * M43.reshape(3, 4), "L2.dz", {"x": X4})) is None  # same values
    # two elements: the factor is fitted to both, not read from the first
    assert reduction_mean_vs_sum(ctx(np.array([1.0, 1.0]), np.array([4.0, 5.0]), "L2.db", {"x": X4})) is None
    d = reduction_mean_vs_sum(ctx(np.array([1.0, 2.0]), np.array([4.0, 8.0]), "L2.db", {"x": X4}))
    assert (d.evidence["ratio_b_over_a"], d.evidence["residual"]) == (4.0, 0.0)


def test_scaled_needs_the_same_shape_even_for_one_number():
    assert scaled(ctx(np.float64(1.0), np.array([3.0]), "L1.z")) is None
    assert scaled(ctx(np.array([1.0]), np.array([3.0]), "L1.z")).evidence["simple"] == "3"


def test_scaled_leaves_a_per_sample_loss_times_the_batch_size_to_reduction():
    """A loss recorded per sample (a vector) counts as a loss: a factor B there is a mean/sum mix-up."""
    v = np.array([0.5, 1.25, 0.75, 2.0])
    assert scaled(ctx(v, 4 * v, "loss", {"x": X4})) is None
    assert scaled(ctx(v, 4 * v, "L2.a", {"x": X4})).evidence["factor"] == 4.0

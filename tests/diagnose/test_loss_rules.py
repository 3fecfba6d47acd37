"""memstate.diagnose.loss on small hand-made probs and losses: log-of-zero, log-masked, log-epsilon,
loss-mean-over-classes and log-zero-replaced, each rule at its thresholds, in float64 and float32, with and
without logits in the trace (found by mutation testing, docs/testing.md). Everything here is exact arithmetic
on a 4×3 batch, so the whole file runs in well under a second."""

from __future__ import annotations

import math

import numpy as np
import pytest

from memstate.diagnose.common import fmt
from memstate.diagnose.context import DivergenceContext
from memstate.diagnose.loss import (
    _close_rel,
    _fit_eps,
    _own_ce,
    _plain_log_of,
    _safe_loss,
    log_epsilon,
    log_masked,
    log_of_zero,
    log_zero_replaced,
    loss_mean_over_classes,
    replaced_log,
)

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

Z = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [2.0, 2.0, 1.0], [0.5, -0.5, 0.0]])
Y = np.eye(3)[[1, 2, 0, 1]]


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


P = softmax(Z)
CE = float(-np.sum(Y * np.log(P)))  # summed over the batch; the mean is CE / 4
# probs with exact zeros: row 0 has one on its label (class 1), row 1 two off its label (class 2)
PZ = P.copy()
PZ[0] = [0.5, 0.0, 0.5]
PZ[1] = [0.0, 0.0, 1.0]


def ctx(a, b, ia=None, ib=None, name="loss", meta_a=None, meta_b=None, dt=np.float64) -> DivergenceContext:
    return DivergenceContext(0, name, np.asarray(a, dt), np.asarray(b, dt), ia or {}, ib or {}, ((0, 1.0),), None,
                             meta_a or {}, meta_b or {})


def eps_loss(p: np.ndarray, y: np.ndarray, eps: float, k: float = 0.25) -> float:
    return float(-k * np.sum(y * np.log(p + eps)))


# -------------------------------------------------------------------------------------------- helpers


def test_safe_loss_is_the_summed_cross_entropy_even_for_huge_logits():
    assert _safe_loss(Z, Y) == pytest.approx(CE, rel=1e-15)
    assert _safe_loss(Z + 1000.0, Y) == pytest.approx(CE, rel=1e-12)  # no overflow: the row max is subtracted
    z = Z.copy()
    z[1] += 800.0  # one row far above the others: only that row's own max keeps it finite
    assert _safe_loss(z, Y) == pytest.approx(CE, rel=1e-12)


def test_plain_log_of():
    assert _plain_log_of(P, Y, CE / 4) and _plain_log_of(P, Y, CE)
    assert not _plain_log_of(P, Y, CE / 2)
    assert _plain_log_of(P, Y, CE / 4 * (1 + 5e-13)) and not _plain_log_of(P, Y, CE / 4 * (1 + 3e-12))
    assert not _plain_log_of(PZ, Y, math.inf)  # a labelled zero: no finite plain log
    assert not _plain_log_of(PZ, Y, -math.inf)  # (inf - -inf would be within any relative tolerance)
    ones = np.eye(3)[[1, 2, 0, 1]]
    assert _plain_log_of(ones, Y, 0.0)
    near = np.where(Y > 0, 1 - 1e-13, 0.0)
    assert not _plain_log_of(near, Y, 0.0)  # 4e-13 is not 0 to rounding
    # the labels' zeros are never logged: off-label zero probs are fine
    assert _plain_log_of(np.where(Y > 0, P, 0.0), Y, CE)


def test_fit_eps_recovers_the_epsilon_and_its_range():
    for eps in (1e-8, 3.7e-7, 1e-3, 1e-12):
        assert _fit_eps(P, Y, 0.25, eps_loss(P, Y, eps)) == pytest.approx(eps, rel=1e-6)
    assert _fit_eps(P, Y, 1.0, eps_loss(P, Y, 2e-6, 1.0)) == pytest.approx(2e-6, rel=1e-6)
    assert _fit_eps(P, Y, 0.25, eps_loss(P, Y, 5.0)) is None  # above eps = 1
    assert _fit_eps(P, Y, 0.25, eps_loss(P, Y, 0.5)) == pytest.approx(0.5, rel=1e-9)
    assert _fit_eps(P, Y, 0.25, CE / 4 + 1e-3) is None  # above the loss at eps = 0
    tiny, y = np.array([[1e-29, 1.0]]), np.array([[1.0, 0.0]])
    assert _fit_eps(tiny, y, 1.0, -math.log(1e-29 + 3e-31)) is None  # eps below 1e-30
    assert _fit_eps(tiny, y, 1.0, -math.log(1e-29 + 2e-30)) == pytest.approx(2e-30, rel=1e-6)
    assert _fit_eps(tiny, y, 1.0, -math.log(1.0 + 1e-29)) == pytest.approx(1.0, rel=1e-9)
    at_bound = float(-np.sum(np.where(y != 0, y * np.log(tiny + 1e-30), 0.0)))  # the loss at eps = 1e-30 exactly
    assert _fit_eps(tiny, y, 1.0, at_bound) == pytest.approx(1e-30, rel=1e-6)


def test_close_rel():
    x = np.array([1.0, -2.0, 4.0])
    assert _close_rel(x, x * (1 + 5e-10), 1e-9) and not _close_rel(x, x + 1e-8, 1e-9)
    assert _close_rel(x, x + 3.9e-9, 1e-9) and not _close_rel(x, x + 4.1e-9, 1e-9)  # relative to the max, 4
    assert _close_rel(np.zeros(3), np.zeros(3), 1e-9) and _close_rel(np.zeros(0), np.zeros(0), 1e-9)
    assert not _close_rel(np.zeros(3), np.full(3, 1e-20), 1e-9) and _close_rel(1e-20, 1e-20 * (1 + 1e-10), 1e-9)
    assert not _close_rel(x, x[:2], 1.0) and not _close_rel(x, np.array([1.0, np.nan, 4.0]), 1.0)
    assert not _close_rel(np.array([np.inf, 1.0, 1.0]), x, 1e9)
    assert _close_rel(np.array([0.0, 0.0, 4.0 + 3e-9]), np.array([0.0, 0.0, 4.0]), 1e-9)


def test_own_ce_from_logits_else_from_probs():
    c = ctx(0, 1)
    assert _own_ce(c, {"L2.z": Z, "y": Y, "probs": PZ}) == pytest.approx(CE, rel=1e-15)  # logits first
    assert _own_ce(c, {"y": Y, "probs": P}) == pytest.approx(CE, rel=1e-15)
    assert _own_ce(c, {"y": Y, "probs": np.where(Y > 0, P, 0.0)}) == pytest.approx(CE, rel=1e-15)
    assert _own_ce(c, {"y": Y, "probs": PZ}) is None  # log(0) on a label: no finite cross-entropy
    assert _own_ce(c, {"y": Y, "probs": P[:, :2]}) is None
    assert _own_ce(c, {"y": Y}) is None and _own_ce(c, {"probs": P, "L2.z": Z}) is None
    assert _own_ce(c, {"y": Y, "L2.z": Z[:, :2], "probs": P}) == pytest.approx(CE, rel=1e-15)  # logits of another shape


# ---------------------------------------------------------------------------------------------- log-of-zero


def test_log_of_zero_without_probs_in_the_trace():
    d = log_of_zero(ctx(CE / 4, np.inf, meta_b={"impl": "port"}))
    assert (d.code, d.confidence) == ("log-of-zero", 0.45)
    assert d.evidence == {"side": "B", "loss": "inf", "probs_checked": False}
    assert d.explanation == ("Side B (port)'s loss is inf while A's is finite; the probs are not in the trace, so "
                             "log(0) could not be confirmed.")
    d = log_of_zero(ctx(np.nan, CE / 4))
    assert (d.confidence, d.evidence["side"], d.evidence["loss"]) == (0.45, "A", "nan")
    assert d.explanation.startswith("Side A's loss is nan while B's is finite;")
    assert log_of_zero(ctx(np.inf, np.nan)) is None and log_of_zero(ctx(1.0, 2.0)) is None
    assert log_of_zero(ctx(CE / 4, np.inf, name="L2.a")) is None
    # a probs tensor with a label of another shape is not checked either
    assert log_of_zero(ctx(CE / 4, np.inf, {}, {"probs": PZ, "y": Y[:2]})).evidence["probs_checked"] is False


SOFT = Y.copy()
SOFT[1] = [0.5, 0.5, 0.0]  # row 1's two zeros both labelled


@pytest.mark.parametrize("y, loss, expected, conf", [
    (np.eye(3)[[1, 2, 0, 1]], np.nan, "nan", 0.95),  # zeros off the labels: 0 * -inf = nan
    (np.eye(3)[[1, 2, 0, 1]], np.inf, "nan", 0.8),
    (SOFT, np.inf, "inf", 0.95),  # every zero on a label: -log(0) = inf
    (SOFT, -np.inf, "inf", 0.95),
    (SOFT, np.nan, "inf", 0.8),
])
def test_log_of_zero_confidence_follows_the_expected_kind(y, loss, expected, conf):
    d = log_of_zero(ctx(CE / 4, loss, {"probs": P, "y": Y}, {"probs": PZ, "y": y}))
    assert (d.code, d.confidence, d.evidence["expected_loss"]) == ("log-of-zero", conf, expected)


def test_log_of_zero_on_the_label_only():
    pz = P.copy()
    pz[0] = [0.5, 0.0, 0.5]  # one zero, on row 0's label
    for loss, kind, conf in ((np.inf, "inf", 0.95), (-np.inf, "-inf", 0.95), (np.nan, "nan", 0.8)):
        d = log_of_zero(ctx(loss, CE / 4, {"probs": pz, "y": Y}, {"probs": P, "y": Y}))
        assert (d.confidence, d.evidence["side"], d.evidence["expected_loss"]) == (conf, "A", "inf")
        assert (d.evidence["zero_probs"], d.evidence["zero_on_label"], d.evidence["zero_off_label"]) == (1, 1, 0)
        assert d.explanation.startswith(f"Side A's loss is {kind} while B's is {fmt(CE / 4)}: its probs have 1 ")


def test_log_of_zero_text_and_evidence():
    d = log_of_zero(ctx(CE / 4, np.nan, {"probs": P, "y": Y}, {"probs": PZ, "y": Y}))
    assert (d.code, d.confidence) == ("log-of-zero", 0.95)
    assert d.evidence == {"side": "B", "loss": "nan", "zero_probs": 3, "zero_on_label": 1, "zero_off_label": 2,
                          "positions": [[0, 1], [1, 0], [1, 1]], "expected_loss": "nan", "probs_checked": True}
    assert d.explanation == (
        f"Side B's loss is nan while A's is {fmt(CE / 4)}: its probs have 3 entries that are exactly 0 (1 on a "
        f"labelled class, where -log(0) = inf; 2 elsewhere, where y*log(p) = 0*-inf = nan). The loss takes log of "
        f"the probabilities. Fix: compute it from the logits with log-softmax (z - logsumexp(z)).")


def test_log_of_zero_lists_ten_positions():
    p = np.tile([0.0, 0.0, 1.0], (6, 1))
    y = np.tile([0.0, 0.0, 1.0], (6, 1))
    d = log_of_zero(ctx(0.0, np.nan, {}, {"probs": p, "y": y}))
    assert d.evidence["zero_probs"] == 12 and d.evidence["zero_off_label"] == 12
    assert d.evidence["positions"] == [[r, c] for r in range(5) for c in (0, 1)]


def test_log_of_zero_needs_zero_and_finite_probs():
    assert log_of_zero(ctx(CE / 4, np.inf, {}, {"probs": P, "y": Y})) is None  # no zero in the probs
    nanp = PZ.copy()
    nanp[3, 0] = np.nan
    assert log_of_zero(ctx(CE / 4, np.nan, {}, {"probs": nanp, "y": Y})) is None  # the nan comes from earlier
    # side A's loss finite, side B's too: nothing
    assert log_of_zero(ctx(CE / 4, 1.0, {"probs": PZ, "y": Y}, {"probs": PZ, "y": Y})) is None


def test_log_of_zero_beside_a_replaced_log_is_at_most_090():
    """The other side's finite loss is the same log(0) with the zeros swapped for log(1e-12)."""
    pz = P.copy()
    pz[0] = [0.5, 0.0, 0.5]
    rest = float(-np.sum(np.where(Y > 0, np.log(np.where(pz > 0, pz, 1.0)), 0.0)))
    replaced = (rest - math.log(1e-12)) / 4
    inputs = {"probs": pz, "y": Y}
    assert log_zero_replaced(ctx(np.inf, replaced, inputs, inputs)).evidence["replacement"] == 1e-12
    assert log_of_zero(ctx(np.inf, replaced, inputs, inputs)).confidence == 0.9
    assert log_of_zero(ctx(np.nan, replaced, inputs, inputs)).confidence == 0.8


# ----------------------------------------------------------------------------------------------- log-masked

MASKED = float(-np.sum(np.where(PZ > 0, Y * np.log(np.where(PZ > 0, PZ, 1.0)), 0.0)))  # the labelled 0 dropped


def test_log_masked_mean_and_sum():
    inputs = {"probs": PZ, "y": Y}
    d = log_masked(ctx(5.0, MASKED / 4, inputs, inputs, meta_b={"impl": "np"}))
    assert (d.code, d.confidence) == ("log-masked", 0.9)
    assert d.evidence == {"side": "B", "loss": MASKED / 4, "masked_loss": MASKED / 4, "reduction": "mean",
                          "dropped_terms": 1}
    assert d.explanation == (
        f"Side B (np)'s loss {fmt(MASKED / 4)} equals the mean cross-entropy with the log(0) terms dropped: its "
        f"probs are exactly 0 on 1 labelled entries ([[0, 1]]), which a masked log (np.ma.log) skips instead of "
        f"counting as -log(0) = inf; A's loss is 5. Fix: log-softmax from the logits.")
    d = log_masked(ctx(MASKED, 5.0, inputs, inputs))
    assert (d.evidence["side"], d.evidence["reduction"], d.evidence["masked_loss"]) == ("A", "sum", MASKED)


def test_log_masked_tolerance_and_conditions():
    inputs = {"probs": PZ, "y": Y}
    assert log_masked(ctx(5.0, MASKED / 4 * (1 + 9e-7), inputs, inputs)) is not None
    assert log_masked(ctx(5.0, MASKED / 4 * (1 + 1.1e-6), inputs, inputs)) is None
    assert log_masked(ctx(5.0, MASKED / 4, inputs, inputs, name="probs")) is None
    assert log_masked(ctx(np.inf, MASKED / 4, inputs, inputs)) is None
    assert log_masked(ctx(MASKED / 4, np.nan, inputs, inputs)) is None
    assert log_masked(ctx(MASKED / 4, MASKED / 4, inputs, inputs)) is None
    assert log_masked(ctx(5.0, MASKED / 4, inputs, {})) is None  # no probs on side B
    assert log_masked(ctx(5.0, MASKED / 4, {}, {"probs": PZ})) is None  # no labels
    offonly = {"probs": PZ, "y": np.eye(3)[[0, 2, 0, 1]]}  # row 0 labelled 0.5: only off-label zeros
    assert log_masked(ctx(5.0, MASKED / 4, offonly, offonly)) is None
    nanp = PZ.copy()
    nanp[3, 2] = np.nan
    assert log_masked(ctx(5.0, MASKED / 4, {"probs": nanp, "y": Y}, {"probs": nanp, "y": Y})) is None


def test_log_masked_looks_at_side_b_when_side_a_does_not_fit():
    inputs = {"probs": PZ, "y": Y}
    nanp = PZ.copy()
    nanp[3, 2] = np.nan
    for a_inputs in ({}, {"probs": nanp, "y": Y}, {"probs": P, "y": Y}):  # no probs, nan probs, no zero
        assert log_masked(ctx(5.0, MASKED / 4, a_inputs, inputs)).evidence["side"] == "B"


def test_log_masked_at_a_zero_loss():
    """Every kept label has p = 1: the masked loss is 0, matched by a loss of 0 but not by one of 1e-20."""
    p = np.eye(3)[[1, 2, 0, 1]]
    p[0] = [1.0, 0.0, 0.0]  # row 0's label (class 1) is 0
    inputs = {"probs": p, "y": Y}
    assert log_masked(ctx(1.0, 0.0, inputs, inputs)).evidence["reduction"] == "mean"
    near = np.where(p > 0, 1 - 1e-10, 0.0)
    assert log_masked(ctx(1.0, 0.0, {"probs": near, "y": Y}, {"probs": near, "y": Y})) is None


# ---------------------------------------------------------------------------------------------- log-epsilon

LOGITS = {"L2.z": Z, "y": Y, "probs": P}


@pytest.mark.parametrize("eps, conf, shown", [
    (1e-8, 0.95, 1e-8), (1.015e-8, 0.95, 1e-8),  # within 2% of the usual 1e-8's effect
    (1e-6, 0.8, 1e-6), (1e-10, 0.8, 1e-10), (10 ** -6.009, 0.8, 1e-6),  # a round decade
    (1.025e-8, 0.5, None), (10 ** -6.011, 0.5, None), (3.7e-7, 0.5, None), (9e-4, 0.5, None),
    (2.97e-11, 0.5, None),  # its effect just above 100 times the tolerance
])
def test_log_epsilon_confidence_and_shown_eps(eps, conf, shown):
    bug = eps_loss(P, Y, eps)
    d = log_epsilon(ctx(CE / 4, bug, LOGITS, LOGITS))
    assert (d.code, d.confidence, d.evidence["side"], d.evidence["reduction"]) == ("log-epsilon", conf, "B", "mean")
    assert d.evidence["eps_fit"] == pytest.approx(eps, rel=1e-5)
    assert d.evidence["eps"] == (d.evidence["eps_fit"] if shown is None else shown)
    assert d.evidence["loss_with_1e-8"] == eps_loss(P, Y, 1e-8)
    assert (d.evidence["loss"], d.evidence["reference_loss"], d.evidence["difference"]) == (bug, CE / 4, CE / 4 - bug)


def test_log_epsilon_text_and_sum_reduction():
    bug = eps_loss(P, Y, 1e-8, 1.0)
    d = log_epsilon(ctx(bug, CE, LOGITS, LOGITS, meta_a={"impl": "js"}))
    assert (d.confidence, d.evidence["side"], d.evidence["reduction"], d.evidence["eps"]) == (0.95, "A", "sum", 1e-8)
    assert d.explanation == (
        f"Side A (js)'s loss {fmt(bug)} is {fmt(CE - bug)} below B's {fmt(CE)}, which is the correct sum "
        f"cross-entropy of its logits. Recomputed from side A (js)'s probs, -sum(y·log(p + eps)) gives exactly its "
        f"loss for eps = {fmt(d.evidence['eps_fit'])} (the usual 1e-8): the loss adds an epsilon inside the log, "
        f"which biases it by about eps/p. Fix: compute the loss from the logits with log-softmax.")
    d = log_epsilon(ctx(eps_loss(P, Y, 1e-6, 1.0), CE, LOGITS, LOGITS))
    assert "for eps = 1e-06: the loss adds" in d.explanation


@pytest.mark.parametrize("eps", [2e-3, 2.9e-11, 1e-11])
def test_log_epsilon_too_large_or_too_small(eps):
    """eps above 1e-3 is not an epsilon; an effect within 100 times the tolerance is rounding."""
    assert log_epsilon(ctx(CE / 4, eps_loss(P, Y, eps), LOGITS, LOGITS)) is None


def test_log_epsilon_needs_the_other_side_to_be_the_correct_loss():
    bug = eps_loss(P, Y, 1e-6)
    assert log_epsilon(ctx(CE / 4 * (1 + 5e-13), bug, LOGITS, LOGITS)) is not None
    assert log_epsilon(ctx(CE / 4 * (1 + 2e-12), bug, LOGITS, LOGITS)) is None
    assert log_epsilon(ctx(CE / 4 * 1.01, bug, LOGITS, LOGITS)) is None
    assert log_epsilon(ctx(CE / 4, bug, {"y": Y}, LOGITS)) is None  # nothing to recompute the other side from
    assert log_epsilon(ctx(CE / 4, bug, {"L2.z": Z}, LOGITS)) is None  # no labels
    # from the other side's probs when its logits are missing or of another shape
    for other in ({"y": Y, "probs": P}, {"L2.z": Z[:, :2], "y": Y, "probs": P}):
        d = log_epsilon(ctx(CE / 4, bug, other, LOGITS))
        assert (d.confidence, d.evidence["eps"]) == (0.8, 1e-6)
    assert log_epsilon(ctx(CE / 4, bug, {"y": Y, "probs": PZ}, LOGITS)) is None  # its probs have a labelled 0
    off = np.where(Y > 0, P, 0.0)  # zeros off the labels do not matter
    assert log_epsilon(ctx(CE / 4, bug, {"y": Y, "probs": off}, LOGITS)).confidence == 0.8


def test_log_epsilon_conditions():
    bug = eps_loss(P, Y, 1e-6)
    assert log_epsilon(ctx(CE / 4, bug, LOGITS, LOGITS, name="L2.dz")) is None
    assert log_epsilon(ctx(np.nan, bug, LOGITS, LOGITS)) is None
    assert log_epsilon(ctx(CE / 4, np.inf, LOGITS, LOGITS)) is None
    assert log_epsilon(ctx(bug, bug, LOGITS, LOGITS)) is None
    assert log_epsilon(ctx(CE / 4, bug * 2, LOGITS, LOGITS)) is None  # higher, not lower
    assert log_epsilon(ctx(CE / 4, bug, LOGITS, {"y": Y})) is None  # no probs to refit
    nanp = P.copy()
    nanp[2, 2] = np.nan
    assert log_epsilon(ctx(CE / 4, bug, LOGITS, {"y": Y, "probs": nanp})) is None
    # the side's loss is the plain cross-entropy of its own (different) probs: no eps in it
    q = P.copy()
    q[0] = [0.2, 0.7, 0.1]
    plain = float(-np.sum(Y * np.log(q))) / 4
    assert plain < CE / 4 and log_epsilon(ctx(CE / 4, plain, LOGITS, {"y": Y, "probs": q})) is None


def test_log_epsilon_looks_at_side_b_when_side_a_has_no_probs():
    """Side A's loss is recomputed from its logits alone (no probs there): side B's eps is found."""
    d = log_epsilon(ctx(CE / 4, eps_loss(P, Y, 1e-6), {"L2.z": Z, "y": Y}, LOGITS))
    assert (d.evidence["side"], d.confidence) == ("B", 0.8)
    wrong = {"L2.z": Z, "y": Y, "probs": P * 0.9}  # logits first: its probs are not used when logits are there
    assert log_epsilon(ctx(CE / 4, eps_loss(P, Y, 1e-6), wrong, LOGITS)).confidence == 0.8


def test_log_epsilon_other_side_from_probs_must_match_too():
    bug = eps_loss(P, Y, 1e-6)
    assert log_epsilon(ctx(CE / 4 * 1.01, bug, {"y": Y, "probs": P}, LOGITS)) is None


def test_log_epsilon_effect_within_2_percent_but_not_a_round_decade():
    """A labelled p of 1e-9 makes the effect of eps far from linear: eps = 1.04e-8 is within 2% of what the usual
    1e-8 gives (shown as 1e-8) although its decade is 0.017 off; 1.06e-8 is not."""
    pt = np.array([[0.5, 1e-9, 0.5 - 1e-9], [0.2, 0.3, 0.5], [0.6, 0.2, 0.2], [0.1, 0.7, 0.2]])
    ce = float(-np.sum(Y * np.log(pt)))
    inputs = {"probs": pt, "y": Y}
    d = log_epsilon(ctx(ce / 4, eps_loss(pt, Y, 1.04e-8), inputs, inputs))
    assert (d.confidence, d.evidence["eps"]) == (0.95, 1e-8) and "(the usual 1e-8)" in d.explanation
    assert d.evidence["eps_fit"] == pytest.approx(1.04e-8, rel=1e-9)
    d = log_epsilon(ctx(ce / 4, eps_loss(pt, Y, 1.06e-8), inputs, inputs))
    assert (d.confidence, d.evidence["eps"]) == (0.5, d.evidence["eps_fit"])


def test_log_epsilon_exact_threshold_includes_the_tolerance():
    """The loss whose distance to the usual 1e-8's loss is exactly 2% of its distance to the other side's: 'the
    usual 1e-8' (0.95) by the tolerance added to the 2%, not 0.8 (its eps, 1.0204e-8, is a round decade)."""
    other = CE / 4
    at_default = float(-0.25 * np.sum(np.where(Y != 0, Y * np.log(P + 1e-8), 0.0)))
    loss = (at_default - 0.02 * other) / 0.98
    d = log_epsilon(ctx(other, loss, LOGITS, LOGITS))
    assert (d.confidence, d.evidence["eps"]) == (0.95, 1e-8)
    assert d.evidence["eps_fit"] == pytest.approx(1e-8 / 0.98, rel=1e-4)
    d = log_epsilon(ctx(other, loss - 1e-11, LOGITS, LOGITS))  # beyond the 2% by 13 times the tolerance
    assert (d.confidence, d.evidence["eps"]) == (0.8, 1e-8)


def test_log_epsilon_leaves_a_replaced_log_to_log_zero_replaced():
    """A zero replaced by log(1e-4) also fits log(p + eps) with eps about 1e-4; it is not called log-epsilon."""
    loss = (REST - math.log(1e-4)) / 4
    zo = Z - 20.0 * Y  # the other side's labels far below: its loss is larger
    other = _safe_loss(zo, Y) / 4
    assert loss < other
    c = ctx(other, loss, {"L2.z": zo, "y": Y}, {"probs": PR, "y": Y})
    assert log_zero_replaced(c).evidence["replacement"] == 1e-4
    assert log_epsilon(c) is None


def test_log_epsilon_in_float32():
    """Float32 losses: the other side correct within 1e-6, and 0.1 off each confidence."""
    z = np.array([[20.0, 4.0, 0.0], [0.0, 18.0, 3.0], [1.0, 0.0, 19.0], [17.0, 2.0, 1.0]], np.float32)
    y = np.eye(3)[[2, 0, 1, 2]]  # every label far below its row's max: p about 1e-7
    p = softmax(z.astype(np.float64)).astype(np.float32)
    pf = p.astype(np.float64)
    good = np.float32(_safe_loss(z.astype(np.float64), y) / 4)
    inputs = {"L2.z": z, "y": y, "probs": p}
    for eps, conf in ((1e-8, 0.85), (1e-7, 0.7), (3.7e-7, 0.4)):
        bug = np.float32(eps_loss(pf, y, eps))
        d = log_epsilon(ctx(good, bug, inputs, inputs, dt=np.float32))
        assert (d.confidence, d.evidence["side"]) == (conf, "B")
        assert d.evidence["eps_fit"] == pytest.approx(eps, rel=1e-3)
    bug = np.float32(eps_loss(pf, y, 1e-8))
    assert log_epsilon(ctx(good * np.float32(1 + 5e-7), bug, inputs, inputs, dt=np.float32)) is not None
    assert log_epsilon(ctx(good * np.float32(1 + 3e-6), bug, inputs, inputs, dt=np.float32)) is None
    # float32 by its header only
    d = log_epsilon(ctx(float(good), float(bug), inputs, inputs, meta_a={"dtype": "float32"}))
    assert d.confidence == 0.85


# ---------------------------------------------------------------------------------- loss-mean-over-classes


@pytest.mark.parametrize("red, R", [("mean", 4), ("sum", 1)])
def test_loss_mean_over_classes_on_the_loss(red, R):
    inputs = {"L2.z": Z, "y": Y}
    d = loss_mean_over_classes(ctx(CE / R, CE / (3 * R), inputs, inputs))
    assert (d.code, d.confidence) == ("loss-mean-over-classes", 0.95)
    assert d.evidence == {"side": "B", "classes": 3, "batch_size": 4, "reduction": red, "factor": 1 / 3,
                          "other_side_correct": True}
    assert d.explanation == (
        f"Side B's loss is the {red} cross-entropy divided again by the number of classes C = 3 (recomputed from its "
        f"own logits/probs): the loss is averaged over all 4×3 entries of the matrix (e.g. a mean over both axes, "
        f"nn.BCELoss/MSE-style reduction) instead of summed over classes, so every gradient is 3 times too small. "
        f"Fix: sum over the classes, then {'average' if red == 'mean' else 'sum'} over the batch.")
    d = loss_mean_over_classes(ctx(CE / (3 * R), CE / R * 1.5, inputs, inputs))
    assert (d.confidence, d.evidence["side"], d.evidence["other_side_correct"]) == (0.85, "A", False)


def test_loss_mean_over_classes_tolerances():
    inputs = {"L2.z": Z, "y": Y}
    assert loss_mean_over_classes(ctx(CE / 4, CE / 12 * (1 + 5e-10), inputs, inputs)).confidence == 0.95
    assert loss_mean_over_classes(ctx(CE / 4, CE / 12 * (1 + 2e-9), inputs, inputs)) is None
    assert loss_mean_over_classes(ctx(CE / 4 * (1 + 2e-9), CE / 12, inputs, inputs)).confidence == 0.85
    f32 = {"L2.z": Z.astype(np.float32), "y": Y}
    d = loss_mean_over_classes(ctx(CE / 4, CE / 12, f32, f32, dt=np.float32))
    assert (d.confidence, d.evidence["reduction"]) == (0.95, "mean")
    assert loss_mean_over_classes(ctx(CE / 4, CE / 12 * (1 + 5e-6), f32, f32, dt=np.float32)).confidence == 0.95
    assert loss_mean_over_classes(ctx(CE / 4, CE / 12 * (1 + 2e-5), f32, f32, dt=np.float32)) is None


def test_loss_mean_over_classes_from_probs_and_with_two_classes():
    inputs = {"probs": P, "y": Y}
    assert loss_mean_over_classes(ctx(CE / 4, CE / 12, inputs, inputs)).confidence == 0.95
    assert loss_mean_over_classes(ctx(CE / 4, CE / 12, {"y": Y}, inputs)).confidence == 0.85  # A unknown
    assert loss_mean_over_classes(ctx(CE / 4, CE / 12, inputs, {"y": Y})) is None  # B's own loss unknown
    z2, y2 = Z[:, :2], np.eye(2)[[1, 0, 0, 1]]
    ce2 = _safe_loss(z2, y2)
    two = {"L2.z": z2, "y": y2}
    d = loss_mean_over_classes(ctx(ce2 / 4, ce2 / 8, two, two))
    assert (d.evidence["classes"], d.evidence["factor"]) == (2, 0.5)
    one = {"probs": np.ones((4, 1)), "y": np.ones((4, 1))}
    assert loss_mean_over_classes(ctx(1.0, 0.5, one, one)) is None


def test_loss_mean_over_classes_when_batch_equals_classes():
    """B = C: the sum divided by C is the correct mean, so only the mean over both axes can be told apart."""
    z, y = Z[:3], np.eye(3)[[1, 2, 0]]
    ce = _safe_loss(z, y)
    inputs = {"L2.z": z, "y": y}
    assert loss_mean_over_classes(ctx(ce / 3 * 1.5, ce / 3, inputs, inputs)) is None
    assert loss_mean_over_classes(ctx(ce / 3, ce / 9, inputs, inputs)).evidence["reduction"] == "mean"


def test_loss_mean_over_classes_on_the_output_dz():
    inputs = {"L2.z": Z, "probs": P, "y": Y}
    good, bad = (P - Y) / 4, (P - Y) / 12
    d = loss_mean_over_classes(ctx(good, bad, inputs, inputs, name="L2.dz"))
    assert (d.confidence, d.evidence["side"], d.evidence["reduction"]) == (0.95, "B", "mean")
    assert "C = 3 (recomputed from its own probs)" in d.explanation
    d = loss_mean_over_classes(ctx(P - Y, (P - Y) / 3, inputs, inputs, name="L2.dz"))
    assert (d.confidence, d.evidence["reduction"]) == (0.95, "sum")
    assert "then sum over the batch." in d.explanation
    assert loss_mean_over_classes(ctx(good, bad, inputs, {"probs": P, "y": Y}, name="L2.dz")).confidence == 0.95
    # the other side's probs missing or of another shape
    assert loss_mean_over_classes(ctx(good, bad, {"L2.z": Z, "y": Y}, inputs, name="L2.dz")).confidence == 0.85
    assert loss_mean_over_classes(ctx(good, bad, {"probs": P[:, :2], "y": Y}, inputs, name="L2.dz")).confidence == 0.85
    assert loss_mean_over_classes(ctx(good, bad, inputs, inputs, name="L1.dz")) is None  # not the output layer
    assert loss_mean_over_classes(ctx(good, bad, {}, {}, name="L2.dz")) is None
    assert loss_mean_over_classes(ctx(good, bad[:, :2], inputs, inputs, name="L2.dz")) is None
    assert loss_mean_over_classes(ctx(good, bad, inputs, {"L2.z": Z, "y": Y}, name="L2.dz")) is None
    assert loss_mean_over_classes(ctx(good, bad, inputs, {"L2.z": Z, "y": Y, "probs": P[:2]}, name="L2.dz")) is None


def test_loss_mean_over_classes_conditions():
    inputs = {"L2.z": Z, "y": Y}
    perfect = {"probs": Y, "y": Y}  # a cross-entropy of 0: every reduction of it is 0, nothing to tell apart
    assert loss_mean_over_classes(ctx(0.5, 0.0, perfect, perfect)) is None
    assert loss_mean_over_classes(ctx(Y * 0.5, Y * 0.0, perfect, perfect, name="L2.dz")) is None
    assert loss_mean_over_classes(ctx(CE / 12, CE / 12, inputs, inputs)) is None
    assert loss_mean_over_classes(ctx(CE / 4, CE / 12, inputs, inputs, name="L2.a")) is None
    assert loss_mean_over_classes(ctx(CE / 4, np.nan, inputs, inputs)) is None
    assert loss_mean_over_classes(ctx(np.nan, CE / 12, inputs, inputs)).confidence == 0.85
    assert loss_mean_over_classes(ctx(CE / 4, CE / 12, inputs, {"L2.z": Z, "y": Y[:, 0]})) is None
    assert loss_mean_over_classes(ctx(CE / 4, CE / 7, inputs, inputs)) is None


# --------------------------------------------------------------------------------------- log-zero-replaced

PR = P.copy()
PR[0] = [0.5, 0.0, 0.5]  # one labelled zero (row 0, class 1)
REST = float(-np.sum(np.where(Y > 0, Y * np.log(np.where(PR > 0, PR, 1.0)), 0.0)))  # the other three terms


@pytest.mark.parametrize("c", [1e-3 * 0.1, 1e-12, 1e-30, 1e-299])
@pytest.mark.parametrize("red, R", [("mean", 4), ("sum", 1)])
def test_replaced_log_finds_each_power_of_ten(c, red, R):
    loss = (REST - math.log(c)) / R
    assert replaced_log(PR, Y, loss) == (red, c, 1)
    assert replaced_log(PR, Y, loss * (1 + 5e-12)) == (red, c, 1)
    assert replaced_log(PR, Y, loss * (1 + 3e-11)) is None


def test_replaced_log_bounds_and_nan_to_num():
    assert replaced_log(PR, Y, (REST - math.log(1e-3)) / 4) is None  # log(1e-3) is the upper bound, excluded
    assert replaced_log(PR, Y, (REST - math.log(1e-2)) / 4) is None
    assert replaced_log(PR, Y, (REST - math.log(1e-300)) / 4) is None  # log(1e-300) the lower one, excluded
    big = float(np.finfo(np.float64).max)
    assert replaced_log(PR, Y, (REST + big) / 4) == ("mean", 0.0, 1)
    assert replaced_log(PR, Y, REST + big) == ("sum", 0.0, 1)
    assert replaced_log(PR, Y, (REST + big) / 4 * (1 + 3e-11)) is None
    assert replaced_log(PR, Y, math.inf) is None and replaced_log(PR, Y, math.nan) is None
    assert replaced_log(P, Y, CE / 4) is None  # no labelled zero
    off = P.copy()
    off[0] = [0.0, 0.5, 0.5]
    assert replaced_log(off, Y, CE / 4) is None  # a zero off the labels only
    # soft labels: a zero weighted 2 counts twice in the loss, once in the count
    y2 = Y * np.array([[2.0], [1.0], [1.0], [1.0]])
    loss = (REST - 2 * math.log(1e-12)) / 4
    assert replaced_log(PR, y2, loss) == ("mean", 1e-12, 1)
    # a small loss (labels weighted 1e-3) is matched to 1e-11 of itself, not to 1e-11
    small = (1e-3 * REST - 1e-3 * math.log(1e-12)) / 4
    assert replaced_log(PR, Y * 1e-3, small) == ("mean", 1e-12, 1)
    assert replaced_log(PR, Y * 1e-3, small * (1 + 5e-11)) is None
    # the rounding of log_c to the nearest decade
    assert replaced_log(PR, Y, (REST - math.log(3e-12)) / 4) is None


def test_log_zero_replaced_diagnosis():
    loss = (REST - math.log(1e-12)) / 4
    inputs, other = {"probs": PR, "y": Y}, {"L2.z": Z, "y": Y}
    d = log_zero_replaced(ctx(CE / 4, loss, other, inputs, meta_b={"impl": "js"}))
    assert (d.code, d.confidence) == ("log-zero-replaced", 0.95)
    assert d.evidence == {"side": "B", "loss": loss, "replacement": 1e-12, "log_replacement": math.log(1e-12),
                          "zero_terms": 1, "reduction": "mean", "other_loss": CE / 4, "other_side_correct": True}
    assert d.explanation == (
        f"Side B (js)'s loss {fmt(loss)} is the mean cross-entropy of its own probs with log(p) of the 1 labelled "
        f"probabilities that are exactly 0 replaced by log(1e-12) = {fmt(math.log(1e-12))}, every other term "
        f"untouched (not log(p + eps)); A's loss is {fmt(CE / 4)}. The zeros (and nan) are swapped for a constant, "
        f"which hides the underflowed rows. Fix: compute the loss from the logits with log-softmax.")
    assert log_zero_replaced(ctx(CE / 4 * (1 + 5e-10), loss, other, inputs)).confidence == 0.95
    assert log_zero_replaced(ctx(CE / 4 * (1 + 2e-9), loss, other, inputs)).confidence == 0.85
    assert log_zero_replaced(ctx(CE / 4 * (1 + 1.5e-9), loss, other, inputs)).confidence == 0.85  # |A| is 0.77
    assert log_zero_replaced(ctx(CE, loss, other, inputs)).confidence == 0.85  # A is the sum, B a mean
    d = log_zero_replaced(ctx(np.inf, loss, {}, inputs))
    assert (d.confidence, d.evidence["other_loss"], d.evidence["other_side_correct"]) == (0.95, "inf", True)
    assert log_zero_replaced(ctx(CE / 4, loss, {}, inputs)).confidence == 0.85  # A's loss cannot be checked
    assert log_epsilon(ctx(CE / 4, loss, other, inputs)) is None


def test_log_zero_replaced_sum_and_nan_to_num():
    big = float(np.finfo(np.float64).max)
    inputs = {"probs": PR, "y": Y}
    d = log_zero_replaced(ctx(REST + big, CE, inputs, {"L2.z": Z, "y": Y}))
    assert (d.confidence, d.evidence["side"], d.evidence["reduction"], d.evidence["replacement"]) == (
        0.95, "A", "sum", 0.0)
    assert d.evidence["log_replacement"] == -big
    assert f"replaced by {fmt(-big)} (np.nan_to_num of -inf), every" in d.explanation
    assert log_zero_replaced(ctx(REST + big, CE * (1 + 2e-9), inputs, {"L2.z": Z, "y": Y})).confidence == 0.85


def test_log_zero_replaced_conditions():
    loss = (REST - math.log(1e-12)) / 4
    inputs = {"probs": PR, "y": Y}
    assert log_zero_replaced(ctx(loss, loss, inputs, inputs)) is None
    assert log_zero_replaced(ctx(CE / 4, loss, inputs, inputs, name="probs")) is None
    assert log_zero_replaced(ctx(CE / 4, loss, inputs, {})) is None
    assert log_zero_replaced(ctx(CE / 4, loss * 1.01, inputs, inputs)) is None
    nanp = PR.copy()
    nanp[3, 0] = np.nan
    assert log_zero_replaced(ctx(CE / 4, loss, inputs, {"probs": nanp, "y": Y})) is None
    # side A's finite loss with probs that do not fit: side B is looked at
    d = log_zero_replaced(ctx(CE / 4, loss, inputs, inputs))
    assert (d.evidence["side"], d.confidence) == ("B", 0.85)  # A's own probs have a labelled zero: not checked
    # a non-finite side is skipped, not diagnosed: the other side is then the finite replaced one
    assert log_zero_replaced(ctx(np.nan, loss, inputs, inputs)).evidence["side"] == "B"


@pytest.mark.parametrize("f", [log_of_zero, log_masked, log_epsilon, log_zero_replaced, loss_mean_over_classes])
def test_an_empty_loss_on_either_side_is_no_diagnosis(f):
    """A malformed trace with an empty loss: None, not an IndexError (log-of-zero, log-masked, log-epsilon and
    log-zero-replaced used to read element 0 of it)."""
    inputs = {"probs": PR, "y": Y, "L2.z": Z}
    for a, b in ((np.zeros(0), 1.0), (1.0, np.zeros(0)), (np.zeros(0), np.inf), (np.inf, np.zeros(0))):
        assert f(ctx(a, b, inputs, inputs)) is None

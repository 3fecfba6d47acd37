"""memstate.diagnose.softmax on small hand-made probs: every mistake in float64 and float32, with and without the
logits in the trace, the 0.95-vs-0.85 confidence rule and each fallback's thresholds (found by mutation
testing, docs/testing.md). The probs are made with the reference softmax in the side's own dtype."""

from __future__ import annotations

import numpy as np
import pytest

from memstate.diagnose.catalogue import diagnose
from memstate.diagnose.common import fmt
from memstate.diagnose.context import DivergenceContext
from memstate.diagnose.softmax import (
    _binary_ce,
    _sigmoid,
    output_sigmoid,
    softmax_column_sum,
    softmax_form,
    softmax_global_max,
    softmax_global_sum,
    softmax_match,
    softmax_no_max,
)
from memstate.diagnose.common import sides

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

Z = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [2.0, 2.0, 1.0], [0.5, -0.5, 0.0]])
DTYPES = [np.float64, np.float32]
FAR = {np.float64: 900.0, np.float32: 120.0}  # below the batch max by more than exp can reach in that dtype
BIG = {np.float64: 800.0, np.float32: 100.0}  # above log(max float) of that dtype


def ctx(pa, pb, za=None, zb=None, name="probs", meta_a=None, meta_b=None) -> DivergenceContext:
    ia = {} if za is None else {"L2.z": za}
    ib = {} if zb is None else {"L2.z": zb}
    return DivergenceContext(0, name, pa, pb, ia, ib, ((0, 1.0),), None, meta_a or {}, meta_b or {})


def probs(z, m="row", s="row"):
    return softmax_form(z, m, s)


@pytest.mark.parametrize("dt", DTYPES)
def test_global_sum_in_each_dtype(dt):
    z = Z.astype(dt)
    good, bad = probs(z), probs(z, "row", "global")
    assert bad.dtype == dt
    d = softmax_global_sum(ctx(good, bad, z, z))
    rs = bad.astype(np.float64).sum(axis=1)
    assert (d.code, d.confidence, d.evidence["side"], d.evidence["batch"]) == ("softmax-global-sum", 0.95, "B", 4)
    assert d.evidence["row_sums"] == rs.tolist() and d.evidence["one_over_batch"] == 0.25
    assert d.evidence["form"] == {"max": "row", "sum": "global"} and d.evidence["other_side_correct"] is True
    assert d.explanation == (
        f"Side B's probs are normalised by the sum of the whole matrix (np.sum(e)) instead of each row's: its rows "
        f"sum to {fmt(rs.min())}..{fmt(rs.max())} (1/B = 0.25 for batch 4) and the whole matrix sums to "
        f"{fmt(bad.astype(np.float64).sum())}. Fix: e / e.sum(axis=1, keepdims=True).")
    assert [x.code for x in diagnose(ctx(good, bad, z, z))][0] == "softmax-global-sum"
    for other in (softmax_global_max, softmax_column_sum, softmax_no_max):
        assert other(ctx(good, bad, z, z)) is None


@pytest.mark.parametrize("dt", DTYPES)
def test_column_sum_in_each_dtype(dt):
    z = Z.astype(dt)
    good, bad = probs(z), probs(z, "row", "column")
    d = softmax_column_sum(ctx(bad, good, z, z))  # side A is the wrong one
    cs, rs = bad.astype(np.float64).sum(axis=0), bad.astype(np.float64).sum(axis=1)
    assert (d.code, d.confidence, d.evidence["side"]) == ("softmax-column-sum", 0.95, "A")
    assert d.evidence["column_sums"] == cs.tolist() and d.evidence["row_sums"] == rs.tolist()
    assert d.explanation == (
        f"Side A's probs are normalised by column sums (builtin sum over a 2-D array adds the rows together): its "
        f"columns sum to {fmt(cs.min())}..{fmt(cs.max())} while its rows sum to {fmt(rs.min())}..{fmt(rs.max())}. "
        f"Fix: e / e.sum(axis=1, keepdims=True).")
    assert softmax_global_sum(ctx(bad, good, z, z)) is None


@pytest.mark.parametrize("dt", DTYPES)
def test_global_max_in_each_dtype(dt):
    z = Z.astype(dt)
    z[3] -= FAR[dt]
    good, bad = probs(z), probs(z, "global", "row")
    assert np.isnan(bad[3]).all() and not np.isnan(bad[:3]).any()
    d = softmax_global_max(ctx(good, bad, z, z, meta_b={"impl": "port"}))
    gap = float(z[3].max()) - 3.0
    assert (d.code, d.confidence, d.evidence["rows"], d.evidence["nan_rows"]) == ("softmax-global-max", 0.95, [3], 1)
    assert d.evidence["gap_to_batch_max"] == [gap] and d.evidence["batch_max_logit"] == 3.0
    assert d.evidence["row_max_logit"] == [float(z[3].max())] and d.evidence["batch"] == 4
    assert d.explanation == (
        f"Side B (port)'s probs are softmax(z - max(z)) with the whole batch's max logit 3 instead of each row's: "
        f"1 of 4 rows (rows [3]) sit {fmt(-gap)} or more below it, so exp underflows to 0 and the row divides "
        f"0/0 = nan (1 nan rows). Fix: subtract z.max(axis=1, keepdims=True).")


def test_global_max_that_only_loses_precision():
    z = Z.copy()
    z[3] -= 740.0  # exp(-743) is a subnormal: no nan, but the row is far from the correct softmax
    good, bad = probs(z), probs(z, "global", "row")
    assert not np.isnan(bad).any()
    d = softmax_global_max(ctx(good, bad, z, z))
    assert (d.evidence["rows"], d.evidence["nan_rows"]) == ([3], 0)
    assert " so exp underflows and loses precision (0 nan rows)." in d.explanation


@pytest.mark.parametrize("dt", DTYPES)
def test_no_max_in_each_dtype_names_only_the_overflowing_rows(dt):
    z = Z.astype(dt)
    z[1] += BIG[dt]
    good, bad = probs(z), probs(z, "none", "row")
    d = softmax_no_max(ctx(good, bad, z, z))
    over = float(np.log(np.finfo(dt).max))
    assert (d.code, d.confidence, d.evidence["rows"]) == ("softmax-no-max", 0.95, [1])
    assert d.evidence["row_max_logit"] == [float(z[1].max())] and d.evidence["overflow_threshold"] == over
    assert d.explanation == (
        f"Side B's probs are exp(z) / sum(exp(z)) with no max subtracted: rows [1] have logits up to "
        f"{fmt(float(z.max()))}, above log(max float) = {fmt(over)}, so exp overflows to inf and inf/inf = nan. "
        f"Fix: subtract each row's max before exp.")


def test_confidence_is_095_when_the_other_side_is_correct_and_085_when_not():
    z = Z.copy()
    a, b = probs(z, "row", "global"), probs(z, "row", "column")  # both wrong, differently
    da, db = softmax_global_sum(ctx(a, b, z, z)), softmax_column_sum(ctx(a, b, z, z))
    assert (da.confidence, da.evidence["side"], da.evidence["other_side_correct"]) == (0.85, "A", False)
    assert (db.confidence, db.evidence["side"], db.evidence["other_side_correct"]) == (0.85, "B", False)
    # the other side's logits missing: its correctness cannot be shown either
    d = softmax_global_sum(ctx(probs(z), a, None, z))
    assert (d.confidence, d.evidence["side"], d.evidence["other_side_correct"]) == (0.85, "B", False)
    d = softmax_global_sum(ctx(probs(z), a, z, z))
    assert (d.confidence, d.evidence["other_side_correct"]) == (0.95, True)


def test_both_sides_with_the_same_wrong_softmax_is_not_a_softmax_divergence():
    z = Z.copy()
    bad = probs(z, "row", "global")
    other = bad * (1 + 1e-3)  # differs, but this side's probs are the same wrong form only within 1e-3
    same_ctx = ctx(bad, bad.copy(), z, z)
    assert softmax_match(same_ctx, next(sides(same_ctx))) is None  # identical: nothing to explain
    near_ctx = ctx(bad, other, z, z)
    assert [softmax_match(near_ctx, s) for s in sides(near_ctx)] == [("row", "global", False), None]
    shared = ctx(bad, bad * (1 + 1e-12), z, z)  # both the same wrong form, within the match tolerance
    assert [softmax_match(shared, s) for s in sides(shared)] == [None, None]


def test_float32_match_tolerance_is_tight_enough_to_tell_the_forms_apart():
    """A float32 side matches a form within 1e-4 of each element, not more: probs 1% off match nothing."""
    z = Z.astype(np.float32)
    good = probs(z)
    off = (good * np.float32(1.01)).astype(np.float32)
    for f in (softmax_global_sum, softmax_column_sum, softmax_global_max, softmax_no_max):
        assert f(ctx(good, off, z, z)) is None
    side_b = list(sides(ctx(good, off, z, z)))[1]
    assert softmax_match(ctx(good, off, z, z), side_b) is None
    # a float32 global-sum matched against the float64 thresholds would fail; in float32 it is found
    bad = probs(z, "row", "global")
    assert softmax_match(ctx(good, bad, z, z), list(sides(ctx(good, bad, z, z)))[1]) == ("row", "global", True)
    assert softmax_match(ctx(good, bad, z, z, name="L2.a"), list(sides(ctx(good, bad, z, z)))[1]) is None


def test_only_probs_are_softmax_divergences():
    z = Z.copy()
    good, bad = probs(z), probs(z, "row", "global")
    for f in (softmax_global_sum, softmax_column_sum, softmax_global_max, softmax_no_max):
        assert f(ctx(good, bad, z, z, name="L2.a")) is None
    flat = ctx(good.ravel(), bad.ravel(), z, z)
    assert softmax_global_sum(flat) is None


# ----------------------------------------------------------------------------- without logits in the trace


def test_global_max_without_logits_and_its_thresholds():
    z = Z.copy()
    z[3] -= 900.0
    good, bad = probs(z), probs(z, "global", "row")
    d = softmax_global_max(ctx(good, bad))
    assert (d.code, d.confidence, d.evidence) == ("softmax-global-max", 0.8, {
        "side": "B", "rows": [3], "nan_rows": 1, "logits_checked": False})
    assert d.explanation.startswith("Side B's probs have 1 rows (rows [3]) that are all nan or all zero while")
    zero = bad.copy()
    zero[3] = 0.0  # an all-zero row counts as dead too
    assert softmax_global_max(ctx(good, zero)).evidence == {"side": "B", "rows": [3], "nan_rows": 0,
                                                            "logits_checked": False}
    # the other side must be a softmax (rows sum to 1 within 1e-6)
    assert softmax_global_max(ctx(good * (1 + 2e-6), bad)) is None
    assert softmax_global_max(ctx(good * (1 + 5e-7), bad)).confidence == 0.8
    # the live rows must sum to 1, there must be a dead row, and not every row may be dead
    assert softmax_global_max(ctx(good, np.where(np.isnan(bad), np.nan, bad * 1.01))) is None
    assert softmax_global_max(ctx(good, np.full_like(bad, np.nan))) is None
    assert softmax_global_max(ctx(good, good * 0.5)) is None
    assert softmax_global_max(ctx(good[:, :2], bad)) is None


def test_global_sum_without_logits_and_its_thresholds():
    z = Z.copy()
    good, bad = probs(z), probs(z, "row", "global")
    d = softmax_global_sum(ctx(good, bad))
    rs = bad.sum(axis=1)
    assert (d.code, d.confidence, d.evidence["side"], d.evidence["logits_checked"]) == (
        "softmax-global-sum", 0.75, "B", False)
    assert d.evidence["row_sums"] == rs.tolist() and d.evidence["batch"] == 4
    assert d.explanation == (
        f"Side B's probs rows are the other side's rows each rescaled by one factor, and the whole matrix sums to "
        f"{fmt(bad.sum())} (rows sum to {fmt(rs.min())}..{fmt(rs.max())}, 1/B = 0.25): normalised by the whole "
        f"matrix's sum instead of each row's. The logits are not in the trace, so the softmax was not recomputed.")
    # the whole matrix must sum to 1 within 1e-6
    assert softmax_global_sum(ctx(good, bad * (1 + 2e-6))) is None
    assert softmax_global_sum(ctx(good, bad * (1 + 5e-7))).confidence == 0.75
    # each row must be one factor times the other side's row (within 1e-6 of the largest ratio)
    skew = bad.copy()
    skew[0, 0] *= 1 + 1e-5
    skew[0, 1] -= bad[0, 0] * 1e-5  # keeps the total at 1
    assert softmax_global_sum(ctx(good, skew)) is None
    # rows that already sum to 1, or a non-finite value, or another side that is no softmax: not this
    assert softmax_global_sum(ctx(good, good[::-1].copy())) is None
    assert softmax_global_sum(ctx(good, np.where(bad > 0.1, np.nan, bad))) is None
    assert softmax_global_sum(ctx(good * 0.9, bad)) is None


def test_global_sum_without_logits_ignores_ratios_to_zero_probabilities():
    z = Z.copy()
    z[0, 2] -= 60.0  # a probability of 1e-26 on the other side: its ratio says nothing
    good, bad = probs(z), probs(z, "row", "global")
    bad[0, 2] = 0.0
    bad[0, 0] += good[0, 2] / 4
    assert softmax_global_sum(ctx(good, bad)).confidence == 0.75


def test_column_sum_without_logits_and_its_thresholds():
    z = Z.copy()
    good, bad = probs(z), probs(z, "row", "column")
    d = softmax_column_sum(ctx(good, bad))
    cs, rs = bad.sum(axis=0), bad.sum(axis=1)
    assert (d.code, d.confidence, d.evidence) == ("softmax-column-sum", 0.75, {
        "side": "B", "column_sums": cs.tolist(), "row_sums": rs.tolist(), "logits_checked": False})
    assert d.explanation == (
        f"Side B's probs columns each sum to 1 (rows sum to {fmt(rs.min())}..{fmt(rs.max())}) while the other "
        f"side's rows sum to 1: normalised by column sums. The logits are not in the trace, so the softmax was not "
        f"recomputed.")
    # every column within 1e-6 of 1
    tilted = bad.copy()
    tilted[:, 0] *= 1 + 2e-6
    assert softmax_column_sum(ctx(good, tilted)) is None
    tilted[:, 0] = bad[:, 0] * (1 + 5e-7)
    assert softmax_column_sum(ctx(good, tilted)).confidence == 0.75
    assert softmax_column_sum(ctx(good, np.where(bad > 0.4, np.inf, bad))) is None
    assert softmax_column_sum(ctx(good * 0.9, bad)) is None


def test_no_max_has_no_logit_free_fallback():
    z = Z.copy()
    z[1] += 800.0
    good, bad = probs(z), probs(z, "none", "row")
    assert softmax_no_max(ctx(good, bad)) is None
    assert softmax_no_max(ctx(good, bad, z, z)).confidence == 0.95


def test_the_correct_side_matches_no_wrong_form():
    z = Z.copy()
    c = ctx(probs(z), probs(z, "row", "global"), z, z)
    assert [softmax_match(c, s) for s in sides(c)] == [None, ("row", "global", True)]


def test_float32_global_max_that_only_loses_precision_names_that_row():
    z = Z.astype(np.float32)
    z[3] -= np.float32(95.0)  # exp(-98) is a float32 subnormal: no nan, but far from the correct row
    good, bad = probs(z), probs(z, "global", "row")
    assert not np.isnan(bad).any() and bad.dtype == np.float32
    d = softmax_global_max(ctx(good, bad, z, z))
    assert (d.evidence["rows"], d.evidence["nan_rows"], d.confidence) == ([3], 0, 0.95)


def test_fallbacks_need_the_same_shape_on_both_sides():
    z = Z.copy()
    good5 = probs(np.vstack([z, z[:1]]))  # five rows that sum to 1
    far = z.copy()
    far[3] -= 900.0
    assert softmax_global_max(ctx(good5, probs(far, "global", "row"))) is None
    assert softmax_global_sum(ctx(good5, probs(z, "row", "global"))) is None
    assert softmax_column_sum(ctx(good5, probs(z, "row", "column"))) is None


def test_column_sum_fallback_needs_rows_that_do_not_sum_to_one():
    """A doubly stochastic matrix sums to 1 both ways: a different softmax, not a column-normalised one."""
    z = Z[:3].copy()
    doubly = np.array([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.25, 0.25, 0.5]])
    assert softmax_column_sum(ctx(probs(z), doubly)) is None
    assert softmax_column_sum(ctx(probs(z), probs(z, "row", "column"))).confidence == 0.75


def test_global_max_fallback_counts_every_nan_row():
    z = Z.copy()
    z[[0, 3]] -= 900.0
    z[0, 0] = 3.0  # row 0 keeps the batch max; rows 3 and ... are far below it
    z[1] -= 900.0
    good, bad = probs(z), probs(z, "global", "row")
    d = softmax_global_max(ctx(good, bad))
    assert (d.evidence["rows"], d.evidence["nan_rows"]) == ([1, 3], 2)
    assert d.explanation.startswith("Side B's probs have 2 rows (rows [1, 3]) that are all nan or all zero")


def test_global_sum_fallback_evidence():
    z = Z.copy()
    bad = probs(z, "row", "global")
    d = softmax_global_sum(ctx(probs(z), bad))
    assert d.evidence == {"side": "B", "row_sums": bad.sum(axis=1).tolist(), "total_sum": float(bad.sum()),
                          "batch": 4, "logits_checked": False}


def test_global_sum_fallback_needs_rows_that_do_not_sum_to_one():
    """One row 1e-7 off the other side's: its matrix and its row both sum to 1, so nothing says global sum."""
    one = probs(Z[:1].copy())
    assert softmax_global_sum(ctx(one, one * (1 + 1e-7))) is None


# ----------------------------------------------------------------------------------------- output-sigmoid


def plain_sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def bce(p, y):
    return float(-np.sum(y * np.log(p) + (1 - y) * np.log(1 - p)))


Y = np.eye(3)[[0, 2, 1, 0]]  # one-hot labels for Z


def sig_text(who, rs):
    return (f"{who}'s probs are sigmoid(z) of its own logits, element by element, not a softmax: its rows sum to "
            f"{fmt(float(rs.min()))}..{fmt(float(rs.max()))} instead of 1. The output layer is a sigmoid "
            f"(multi-label / binary head) where the scenario has a softmax. Fix: probs = softmax(z) over each row "
            f"(and the cross-entropy of the softmax).")


def bce_text(who, loss, red, sig):
    return (f"{who}'s loss {fmt(loss)} is the {red} binary cross-entropy -Σ(y·log p + (1-y)·log(1-p)) of its probs, "
            f"which are {'sigmoid(z) of its logits' if sig else 'not a softmax (rows do not sum to 1)'}: the output "
            f"layer is a sigmoid with binary cross-entropy, not a softmax with cross-entropy. Fix: softmax over each "
            f"row and -Σ y·log p.")


def test_sigmoid_is_exact_in_both_branches_and_never_nan():
    z = np.array([-800.0, -3.0, -1e-300, 0.0, 2.0, 800.0])
    s = _sigmoid(z)
    e = np.exp(-np.abs(z))
    assert s.tolist() == [0.0, e[1] / (1 + e[1]), e[2] / (1 + e[2]), 0.5, 1 / (1 + e[4]), 1.0]
    assert s[1] == pytest.approx(plain_sigmoid(-3.0), rel=1e-15) and s[4] == pytest.approx(plain_sigmoid(2.0), rel=1e-15)


def test_binary_cross_entropy_skips_terms_with_a_zero_coefficient():
    p = np.array([[0.25, 0.5, 0.0], [1.0, 0.125, 0.75]])
    y = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    want = -(np.log(0.25) + np.log(0.5) + 0.0 + 0.0 + np.log(0.875) + np.log(0.25))
    assert _binary_ce(p, y) == pytest.approx(want, rel=1e-15)
    # soft labels: both terms count
    ys = np.array([[0.25, 0.5, 0.0], [0.75, 0.0, 0.0]])
    ps = np.array([[0.5, 0.25, 0.5], [0.5, 0.5, 0.5]])
    want = -(0.25 * np.log(0.5) + 0.75 * np.log(0.5) + 0.5 * np.log(0.25) + 0.5 * np.log(0.75) + np.log(0.5)
             + 0.75 * np.log(0.5) + 0.25 * np.log(0.5) + np.log(0.5) + np.log(0.5))
    assert _binary_ce(ps, ys) == pytest.approx(want, rel=1e-15)
    assert _binary_ce(np.array([[0.0, 1.0]]), np.array([[1.0, 0.0]])) == np.inf  # log(0) on a label
    # the formula holds for any coefficient: y = 2 takes -log(1 - p) once
    assert _binary_ce(np.array([[0.5, 0.75]]), np.array([[2.0, 0.0]])) == pytest.approx(
        -(2 * np.log(0.5) - np.log(0.5) + np.log(0.25)), rel=1e-15)


@pytest.mark.parametrize("dt", DTYPES)
def test_output_sigmoid_on_the_probs_in_each_dtype(dt):
    z = Z.astype(dt)
    good, bad = probs(z), _sigmoid(Z).astype(dt)
    rs = bad.astype(np.float64).sum(axis=1)
    for a, b, who in ((good, bad, "Side B"), (bad, good, "Side A")):
        d = output_sigmoid(ctx(a, b, z, z))
        assert (d.code, d.confidence) == ("output-sigmoid", 0.95)
        assert d.evidence == {"side": who[-1], "row_sums": rs.tolist(), "other_side_correct": True}
        assert d.explanation == sig_text(who, rs)
    # the other side's logits missing, or its probs no softmax of them: 0.85
    d = output_sigmoid(ctx(good, bad, None, z, meta_b={"impl": "port"}))
    assert (d.confidence, d.evidence["other_side_correct"]) == (0.85, False)
    assert d.explanation == sig_text("Side B (port)", rs)
    d = output_sigmoid(ctx(probs(z, "row", "global"), bad, z, z))
    assert (d.confidence, d.evidence["other_side_correct"]) == (0.85, False)


def test_output_sigmoid_on_the_probs_needs_sigmoid_of_its_own_logits():
    z = Z.copy()
    good, bad = probs(z), _sigmoid(z)
    assert output_sigmoid(ctx(good, bad, z, None)) is None  # no logits: no sigmoid shown
    assert output_sigmoid(ctx(good, bad, z, z + 1e-3)) is None  # sigmoid of other logits
    assert output_sigmoid(ctx(good, bad * (1 + 2e-9), z, z)) is None  # float64: within 1e-9 of each element
    assert output_sigmoid(ctx(good, bad * (1 + 5e-10), z, z)).confidence == 0.95
    z32 = z.astype(np.float32)
    b32 = _sigmoid(z).astype(np.float32)
    assert output_sigmoid(ctx(probs(z32), b32 * np.float32(1 + 2e-4), z32, z32)) is None  # float32: 1e-4
    assert output_sigmoid(ctx(probs(z32), b32 * np.float32(1 + 5e-5), z32, z32)).confidence == 0.95
    assert output_sigmoid(ctx(good, bad, z, z, name="L2.a")) is None  # only probs and the loss
    assert output_sigmoid(ctx(bad, bad.copy(), z, z)) is None  # both sides the same
    assert output_sigmoid(ctx(good.ravel(), bad.ravel(), z, z)) is None


def test_output_sigmoid_rows_that_sum_to_one_are_not_a_sigmoid():
    """sigmoid(a) + sigmoid(-a) = 1: such rows look like a softmax's, and a 2-class softmax is itself a sigmoid
    (of 2a), so that is not read as a sigmoid head."""
    z = np.array([[1.0, -1.0], [0.5, -0.5], [-2.0, 2.0]])
    sig = _sigmoid(z)
    assert np.abs(sig.sum(axis=1) - 1).max() < 1e-15
    assert output_sigmoid(ctx(probs(z), sig, z, z)) is None
    skew = sig.copy()
    skew[:, 0] = _sigmoid(z[:, 0] + 1e-5)  # rows now sum to 1 + ~2e-6: no longer a softmax's
    zs = z.copy()
    zs[:, 0] += 1e-5
    assert output_sigmoid(ctx(probs(z), skew, z, zs)).evidence["row_sums"] == skew.sum(axis=1).tolist()


def test_output_sigmoid_probs_that_are_a_softmax_of_the_logits_are_not_a_sigmoid():
    """A softmax row equals its sigmoid only in the limit: with logits of -800, 0 and +800 the two agree to the
    last bit on every element, so the probs are read as the softmax they also are."""
    z = np.array([[800.0, -800.0, -800.0], [-800.0, 800.0, -800.0]])
    p = probs(z)
    assert (p == _sigmoid(z)).all() and (p.sum(axis=1) == 1).all()
    zo = z.copy()
    zo[0, 0] = 799.0
    c = ctx(probs(zo) * 0.5, p, zo, z)
    assert output_sigmoid(c) is None


def loss_ctx(la, lb, pb, zb=None, y=Y, meta_b=None) -> DivergenceContext:
    """Side A a correct softmax and its cross-entropy; side B's loss `lb` of probs `pb` (with logits `zb`)."""
    ia = {"L2.z": Z, "probs": probs(Z), "y": y}
    ib = {"probs": pb, "y": y} if zb is None else {"L2.z": zb, "probs": pb, "y": y}
    return DivergenceContext(0, "loss", np.float64(la), np.float64(lb), ia, ib, ((0, 1.0),), None, {}, meta_b or {})


def test_output_sigmoid_on_the_loss_mean_and_sum_with_logits():
    ps = _sigmoid(Z)
    ce = float(-np.sum(Y * np.log(probs(Z)))) / 4
    total = _binary_ce(ps, Y)
    assert total == pytest.approx(bce(ps, Y), rel=1e-14)
    for red, loss in (("mean", total / 4), ("sum", total)):
        d = output_sigmoid(loss_ctx(ce, loss, ps, Z))
        assert (d.code, d.confidence) == ("output-sigmoid", 0.95)
        assert d.evidence == {"side": "B", "loss": loss, "binary_cross_entropy": loss, "reduction": red,
                              "logits_checked": True}
        assert d.explanation == bce_text("Side B", loss, red, True)


def test_output_sigmoid_on_the_loss_without_logits():
    ps = _sigmoid(Z)
    total = _binary_ce(ps, Y)
    d = output_sigmoid(loss_ctx(1.0, total, ps, meta_b={"impl": "js"}))
    assert (d.confidence, d.evidence["logits_checked"], d.evidence["reduction"]) == (0.85, False, "sum")
    assert d.explanation == bce_text("Side B (js)", total, "sum", False)
    # without logits, probs whose rows sum to 1 are taken for a softmax
    pairs = _sigmoid(np.array([[1.0, -1.0], [0.5, -0.5], [-2.0, 2.0], [0.0, 0.0]]))
    y2 = np.eye(2)[[0, 1, 1, 0]]
    assert output_sigmoid(loss_ctx(1.0, _binary_ce(pairs, y2), pairs, y=y2)) is None
    # with logits the probs must be their sigmoid
    assert output_sigmoid(loss_ctx(1.0, total, ps, Z + 0.5)) is None
    sm = probs(Z)
    assert output_sigmoid(loss_ctx(1.0, _binary_ce(sm, Y), sm, Z)) is None  # a softmax: no
    assert output_sigmoid(loss_ctx(1.0, _binary_ce(sm, Y), sm)) is None


def test_output_sigmoid_on_the_loss_tolerance_and_refusals():
    ps = _sigmoid(Z)
    total = _binary_ce(ps, Y)
    assert output_sigmoid(loss_ctx(1.0, total * (1 + 5e-10), ps, Z)).evidence["reduction"] == "sum"
    assert output_sigmoid(loss_ctx(1.0, total * (1 + 2e-9), ps, Z)) is None
    assert output_sigmoid(loss_ctx(1.0, total / 4 * (1 - 5e-10), ps, Z)).evidence["reduction"] == "mean"
    assert output_sigmoid(loss_ctx(1.0, total / 4 * (1 - 2e-9), ps, Z)) is None
    assert output_sigmoid(loss_ctx(1.0, np.nan, ps, Z)) is None  # a non-finite loss
    assert output_sigmoid(loss_ctx(1.0, total, ps, Z, y=Y[:, :2])) is None  # labels of another shape
    c = loss_ctx(1.0, total, ps, Z)
    del c.inputs_b["probs"]
    assert output_sigmoid(c) is None
    c = loss_ctx(1.0, total, ps, Z)
    del c.inputs_b["y"]
    assert output_sigmoid(c) is None
    assert output_sigmoid(loss_ctx(total, total, ps, Z)) is None  # the same loss on both sides


def test_output_sigmoid_on_a_loss_of_exactly_zero():
    """Saturated sigmoids on multi-label targets give probs of exactly 0 and 1 on the labels: a binary
    cross-entropy of exactly 0, which is matched exactly (the tolerance is relative to the loss)."""
    y = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    ps = _sigmoid(np.where(y > 0, 800.0, -800.0))
    assert _binary_ce(ps, y) == 0.0 and (ps == y).all()
    c = DivergenceContext(0, "loss", np.float64(0.5), np.float64(0.0), {}, {"probs": ps, "y": y}, ((0, 1.0),),
                          None, {}, {})
    d = output_sigmoid(c)
    assert (d.evidence["reduction"], d.evidence["loss"], d.confidence) == ("mean", 0.0, 0.85)
    c = DivergenceContext(0, "loss", np.float64(0.5), np.float64(1e-290), {}, {"probs": ps, "y": y}, ((0, 1.0),),
                          None, {}, {})
    assert output_sigmoid(c) is None


def test_output_sigmoid_on_the_loss_of_side_a():
    ps = _sigmoid(Z)
    total = _binary_ce(ps, Y)
    c = loss_ctx(1.0, total, ps, Z)
    swapped = DivergenceContext(0, "loss", c.b, c.a, c.inputs_b, c.inputs_a, ((0, 1.0),), None, {}, {})
    d = output_sigmoid(swapped)
    assert (d.evidence["side"], d.confidence) == ("A", 0.95)
    assert d.explanation == bce_text("Side A", total, "sum", True)


def test_output_sigmoid_on_the_loss_probs_that_are_also_the_softmax_are_not_a_sigmoid():
    """Logits of ±800 saturate: sigmoid and softmax give the same exact 0s and 1s, so probs equal to the labels
    (a binary cross-entropy of 0) are no evidence of a sigmoid."""
    y = np.eye(3)[[0, 2]]
    z = np.where(y > 0, 800.0, -800.0)
    p = probs(z)
    assert (p == _sigmoid(z)).all() and (p == y).all()
    c = DivergenceContext(0, "loss", np.float64(0.5), np.float64(0.0), {}, {"L2.z": z, "probs": p, "y": y},
                          ((0, 1.0),), None, {}, {})
    assert output_sigmoid(c) is None


def test_output_sigmoid_on_the_loss_ignores_logits_of_another_shape():
    """Logits that are not the probs' shape are no logits of them: the probs are judged without logits."""
    ps = _sigmoid(Z)
    total = _binary_ce(ps, Y)
    d = output_sigmoid(loss_ctx(1.0, total, ps, Z[:, :2]))
    assert (d.confidence, d.evidence["logits_checked"], d.evidence["reduction"]) == (0.85, False, "sum")


def test_a_global_max_with_a_global_sum_is_a_global_sum():
    """exp(z - max(z)) / sum over the whole matrix: the batch's max cancels (one constant), so it is the global
    sum that is wrong, not the max."""
    z = Z.copy()
    good, bad = probs(z), probs(z, "global", "global")
    c = ctx(good, bad, z, z)
    assert softmax_match(c, list(sides(c))[1]) == ("global", "global", True)
    assert softmax_global_max(c) is None
    d = softmax_global_sum(c)
    assert (d.confidence, d.evidence["form"]) == (0.95, {"max": "global", "sum": "global"})


def test_output_sigmoid_other_side_is_judged_at_the_dtype_s_tolerance():
    """The other side counts as a correct softmax within 1e-9 of each element in float64 (1e-4 in float32)."""
    z = Z.copy()
    good, bad = probs(z), _sigmoid(z)
    assert output_sigmoid(ctx(good * (1 + 5e-10), bad, z, z)).confidence == 0.95
    d = output_sigmoid(ctx(good * (1 + 2e-9), bad, z, z))
    assert (d.confidence, d.evidence["other_side_correct"]) == (0.85, False)
    z32 = z.astype(np.float32)
    g32, b32 = probs(z32), _sigmoid(z).astype(np.float32)
    assert output_sigmoid(ctx(g32 * np.float32(1 + 5e-5), b32, z32, z32)).confidence == 0.95
    assert output_sigmoid(ctx(g32 * np.float32(1 + 2e-4), b32, z32, z32)).confidence == 0.85


def test_output_sigmoid_other_side_correct_with_logits_beyond_exp_s_range():
    """The other side's logits are near 800: its correct softmax subtracts each row's max (exp(800) is inf)."""
    zo = Z + 800.0
    d = output_sigmoid(ctx(probs(zo), _sigmoid(Z), zo, Z))
    assert (d.confidence, d.evidence["other_side_correct"]) == (0.95, True)

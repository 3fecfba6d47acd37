"""memstate.diagnose.catalogue: how `diagnose` asks the catalogue (primaries, then the fallbacks only when no primary
fits; sorted by confidence, ties in catalogue order; a diagnoser that raises is reported, not fatal) and what
`unknown` says of a pair, on small hand-made pairs and a stand-in catalogue of fixed answers (found by mutation
testing, docs/testing.md). Quick: the real diagnosers run only on a few tiny pairs."""

from __future__ import annotations

import linecache
import math

import numpy as np
import pytest

from memstate.diagnose import catalogue
from memstate.diagnose.catalogue import CATALOGUE, diagnose, unknown
from memstate.diagnose.common import Entry
from memstate.diagnose.context import CODES, Diagnosis, DivergenceContext

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

NAN, INF = math.nan, math.inf


def ctx(a, b, agree=None, name="L1.z", step=4, **kw) -> DivergenceContext:
    return DivergenceContext(step, name, np.asarray(a), np.asarray(b), {}, {}, ((step, 1.0),), agree, **kw)


def fixed(code: str, confidence: float):
    def answer(_ctx: DivergenceContext) -> Diagnosis:
        return Diagnosis(code, confidence, f"{code} fits", {})
    return answer


def silent(_ctx: DivergenceContext) -> None:
    return None


def broken(_ctx: DivergenceContext) -> None:
    raise KeyError("L9.z")


def overflowing(_ctx: DivergenceContext) -> Diagnosis:
    """Fits only when numpy's floating point errors are off (as `diagnose` promises its diagnosers)."""
    np.float64(1e308) * np.float64(10.0)
    return Diagnosis("scaled", 0.5, "overflowed quietly", {})


def use(monkeypatch, *entries: Entry) -> None:
    monkeypatch.setattr(catalogue, "CATALOGUE", list(entries))


# ------------------------------------------------------------------------------------ the catalogue


def test_the_catalogue_is_in_code_order_with_drift_the_only_fallback():
    assert [e.code for e in CATALOGUE] + ["unknown"] == list(CODES)
    assert [e.code for e in CATALOGUE if e.fallback] == ["drift"]
    assert all(catalogue.entry(e.func) is e for e in CATALOGUE)


# ------------------------------------------------------------------------------------ diagnose


def test_sorted_by_confidence_ties_in_catalogue_order(monkeypatch):
    use(monkeypatch, Entry("scaled", fixed("scaled", 0.6)), Entry("sign-flip", silent),
        Entry("transposed", fixed("transposed", 0.9)), Entry("nan-origin", fixed("nan-origin", 0.6)),
        Entry("drift", fixed("drift", 0.99), True), Entry("log-masked", fixed("log-masked", 0.3)))
    got = diagnose(ctx([1.0, 2.0], [2.0, 4.0]))
    assert [(d.code, d.confidence) for d in got] == [
        ("transposed", 0.9), ("scaled", 0.6), ("nan-origin", 0.6), ("log-masked", 0.3)]


def test_fallbacks_only_when_no_primary_fits(monkeypatch):
    use(monkeypatch, Entry("scaled", silent), Entry("drift", fixed("drift", 0.4), True),
        Entry("nan-origin", fixed("nan-origin", 0.2), True), Entry("sign-flip", silent))
    assert [(d.code, d.confidence) for d in diagnose(ctx([1.0], [2.0]))] == [("drift", 0.4), ("nan-origin", 0.2)]
    use(monkeypatch, Entry("scaled", silent), Entry("drift", silent, True))
    got = diagnose(ctx([1.0, 2.0], [1.0, 3.0], agree=True))
    assert [(d.code, d.confidence) for d in got] == [("unknown", 0.0)]
    assert "diagnoser_failures" not in got[0].evidence


def test_a_diagnoser_that_raises_is_reported_and_the_others_still_asked(monkeypatch):
    use(monkeypatch, Entry("scaled", broken), Entry("sign-flip", fixed("sign-flip", 0.85)),
        Entry("drift", fixed("drift", 0.5), True))
    with pytest.warns(RuntimeWarning) as caught:
        got = diagnose(ctx([1.0], [-1.0], name="L2.z"))
    assert [(d.code, d.confidence) for d in got] == [("sign-flip", 0.85)]
    assert [str(w.message) for w in caught] == ["diagnoser scaled failed on 'L2.z': KeyError('L9.z')"]
    w = caught[0]
    assert w.filename.endswith("catalogue.py") and "ask(" in linecache.getline(w.filename, w.lineno)


def test_failures_land_in_unknowns_evidence(monkeypatch):
    use(monkeypatch, Entry("scaled", broken), Entry("drift", broken, True), Entry("sign-flip", silent))
    with pytest.warns(RuntimeWarning) as caught:
        got = diagnose(ctx([1.0], [3.0]))
    assert len(caught) == 2 and [d.code for d in got] == ["unknown"]
    assert got[0].evidence["diagnoser_failures"] == ["scaled: KeyError: 'L9.z'", "drift: KeyError: 'L9.z'"]


def test_diagnosers_run_with_floating_point_errors_off(monkeypatch):
    use(monkeypatch, Entry("scaled", overflowing))
    with np.errstate(all="raise"):
        got = diagnose(ctx([1.0], [3.0]))
    assert [(d.code, d.explanation) for d in got] == [("scaled", "overflowed quietly")]


def test_unknown_of_a_pair_that_overflows_says_inf(monkeypatch):
    use(monkeypatch)
    got = diagnose(ctx([1e308, 0.0, 1.0], [-1e308, 0.0, 1.0], agree=False))
    assert [d.code for d in got] == ["unknown"]
    ev = got[0].evidence
    assert ev["max_abs_err"] == "inf" and ev["max_rel_err"] == "inf" and ev["differing"] == 1


def test_the_real_catalogue_on_a_sign_flip_and_on_noise():
    a = np.array([[0.5, -1.25, 2.0], [3.0, 0.75, -0.5]])
    got = diagnose(ctx(a, -a, agree=True, name="L1.b"))
    assert got[0].code == "sign-flip" and got[-1].code != "unknown"
    noise = diagnose(ctx(a, a + np.array([[0.1, 0.0, -0.3], [0.0, 0.2, 0.05]]), agree=True, name="L1.b"))
    assert [d.code for d in noise] == ["unknown"]


# ------------------------------------------------------------------------------------ unknown


def test_unknown_summarises_a_pair_of_one_shape():
    a = np.array([[1.0, 2.0, NAN], [4.0, 8.0, 3.0]])
    b = np.array([[1.0, 2.5, NAN], [4.0 + 2 ** -50, 6.0, NAN]])
    d = unknown(ctx(a, b, agree=True, name="L2.dz", step=7))
    assert d.code == "unknown" and d.confidence == 0.0
    assert d.evidence == {"shape_a": [2, 3], "shape_b": [2, 3], "inputs_agree": True, "nonfinite_a": 1,
                          "nonfinite_b": 2, "max_abs_err": 2.0, "max_rel_err": 0.25, "differing": 4,
                          "relation": None}
    assert d.explanation == (
        "No known mistake explains L2.dz at step 7: max abs error 2, relative 0.25, 4 of 6 elements differ; its "
        "inputs agree, so the cause is in how this tensor is computed. Compare the code that computes L2.dz on "
        "both sides.")


def test_unknown_of_pairs_with_nothing_finite_in_common():
    d = unknown(ctx([NAN, 1.0], [2.0, NAN], agree=False))
    assert d.evidence == {"shape_a": [2], "shape_b": [2], "inputs_agree": False, "nonfinite_a": 1,
                          "nonfinite_b": 1, "max_abs_err": 0.0, "max_rel_err": 0.0, "differing": 2,
                          "relation": None}
    assert d.explanation == (
        "No known mistake explains L1.z at step 4: max abs error 0, relative 0, 2 of 2 elements differ; its inputs "
        "already disagree slightly. Compare the code that computes L1.z on both sides.")


def test_unknown_of_different_shapes():
    d = unknown(ctx(np.ones((2, 3)), np.array([1.0, NAN, INF, -INF]), agree=None), ["scaled: ValueError: x"])
    assert d.evidence == {"shape_a": [2, 3], "shape_b": [4], "inputs_agree": None, "nonfinite_a": 0,
                          "nonfinite_b": 3, "diagnoser_failures": ["scaled: ValueError: x"], "relation": None}
    assert d.explanation == (
        "No known mistake explains L1.z at step 4: shapes [2, 3] vs [4]; no inputs were recorded before it. "
        "Compare the code that computes L1.z on both sides.")
    assert "diagnoser_failures" not in unknown(ctx([1.0], [2.0]), []).evidence


def test_unknown_names_the_simplest_relation():
    a = np.array([[1.0, 2.0], [3.0, 5.0]])
    d = unknown(ctx(a, 3.0 * a, agree=True))
    assert d.evidence["relation"] == "factor" and d.evidence["factor"] == 3.0
    assert d.evidence["max_abs_err"] == 10.0 and d.evidence["differing"] == 4
    assert d.explanation == (
        "No known mistake explains L1.z at step 4: max abs error 10, relative 0.666667, 4 of 4 elements differ; "
        "its inputs agree, so the cause is in how this tensor is computed. The simplest exact relation between "
        "the sides: B = 3 × A exactly (a constant factor). Compare the code that computes L1.z on both sides.")


def test_unknown_counts_tiny_differences_and_equal_nans():
    a = np.array([1.0, 1e-300, NAN, 0.0, -0.0])
    b = np.array([1.0 + 2 ** -52, 0.0, NAN, -0.0, 0.0])
    d = unknown(ctx(a, b))
    assert d.evidence["differing"] == 2 and d.evidence["max_abs_err"] == 2 ** -52
    assert d.evidence["nonfinite_a"] == 1 and d.evidence["nonfinite_b"] == 1

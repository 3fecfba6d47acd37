"""memstate.diagnose.roots: which failures are root causes, on hand-made steps (stand-ins for the comparator's
step results) and a stand-in catalogue whose answers each test fixes: grouping and counting, the bounds on how
often a name is diagnosed or probed, the JUMP and new-nan/inf rules at their boundaries, the parameters in force,
the contexts handed to the diagnosers (found by mutation testing, docs/testing.md). Quick: no real diagnoser."""

from __future__ import annotations

import math
from types import SimpleNamespace as NS

import numpy as np
import pytest

from memstate.diagnose import catalogue, roots
from memstate.diagnose.common import Entry
from memstate.diagnose.context import Diagnosis, DivergenceContext
from memstate.diagnose.roots import JUMP, MAX_DIAGNOSED, MAX_PROBED, PROVEN, DiffRoots, RootCause, RootCauses


class Catalogue:
    """A one-entry stand-in catalogue: answers[(step, name)] = (code, confidence); records every context."""

    def __init__(self, monkeypatch, answers: dict | None = None) -> None:
        self.answers = dict(answers or {})
        self.seen: list[DivergenceContext] = []
        monkeypatch.setattr(catalogue, "CATALOGUE", [Entry("scaled", self.answer)])

    def answer(self, ctx: DivergenceContext) -> Diagnosis | None:
        self.seen.append(ctx)
        found = self.answers.get((ctx.step, ctx.name)) or self.answers.get(ctx.name)
        return None if found is None else Diagnosis(found[0], found[1], "stand-in", {})

    @property
    def asked(self) -> list[tuple[int, str]]:
        return [(c.step, c.name) for c in self.seen]


def diag(code: str, conf: float) -> Diagnosis:
    return Diagnosis(code, conf, "x", {})


def ctx_of(name: str, step: int = 0) -> DivergenceContext:
    return DivergenceContext(step, name, np.ones(1), np.zeros(1), {}, {}, ((step, 1.0),), True)


# ------------------------------------------------------------------------------------ RootCauses


def test_constants():
    assert (MAX_DIAGNOSED, MAX_PROBED, JUMP, PROVEN) == (3, 3, 10.0, 0.95)


def test_add_groups_by_name_and_code_keeping_the_first_step_and_the_best_confidence():
    rc = RootCauses()
    rc.add(2, "L1.z", [diag("scaled", 0.6), diag("drift", 0.9)])
    rc.add(3, "L1.z", (diag("scaled", 0.8),))
    rc.add(4, "L1.z", [diag("scaled", 0.7)])
    rc.add(5, "L1.z", [diag("sign-flip", 0.5)])
    rc.add(1, "L2.z", [])
    assert rc.result() == (RootCause(1, "L2.z", "unknown", 0.0, 1), RootCause(2, "L1.z", "scaled", 0.8, 3),
                           RootCause(5, "L1.z", "sign-flip", 0.5, 1))
    assert rc.last_code == {"L1.z": "sign-flip", "L2.z": "unknown"} and rc.first is None
    assert RootCause(0, "x", "drift", 0.5).count == 1


def test_the_first_divergence_comes_first_and_is_set_once():
    rc = RootCauses()
    rc.add(0, "L1.z", [diag("scaled", 0.9)])
    rc.add(1, "L1.a", [diag("drift", 0.4)], first=True)
    rc.add(2, "L2.z", [diag("scaled", 0.9)], first=True)
    rc.add(3, "L1.a", [diag("drift", 0.3)])
    assert rc.first == ("L1.a", "drift")
    assert [(r.name, r.step, r.count) for r in rc.result()] == [("L1.a", 1, 2), ("L1.z", 0, 1), ("L2.z", 2, 1)]
    rc.add(0, "L9.z", [diag("scaled", 0.9)], first=False)
    assert rc.first == ("L1.a", "drift") and [r.name for r in rc.result()] == ["L1.a", "L1.z", "L9.z", "L2.z"]


def test_agreeing_diagnoses_a_name_three_times_then_counts_under_its_last_code(monkeypatch):
    cat = Catalogue(monkeypatch, {(0, "L1.z"): ("scaled", 0.5), (1, "L1.z"): ("sign-flip", 0.85),
                                  (2, "L1.z"): ("scaled", 0.9), (3, "L1.z"): ("sign-flip", 0.99)})
    rc = RootCauses()
    for k in range(6):
        rc.agreeing(k, "L1.z", lambda k=k: ctx_of("L1.z", k))
    assert cat.asked == [(0, "L1.z"), (1, "L1.z"), (2, "L1.z")]
    assert rc.result() == (RootCause(0, "L1.z", "scaled", 0.9, 5), RootCause(1, "L1.z", "sign-flip", 0.85, 1))
    assert rc.diagnosed == {"L1.z": 3}


def test_agreeing_diagnoses_even_when_the_name_was_seen_before(monkeypatch):
    cat = Catalogue(monkeypatch, {"L1.z": ("scaled", 0.5)})
    rc = RootCauses()
    rc.add(0, "L1.z", [diag("drift", 0.4)], first=True)
    rc.agreeing(1, "L1.z", lambda: ctx_of("L1.z", 1))
    assert cat.asked == [(1, "L1.z")]
    assert rc.result() == (RootCause(0, "L1.z", "drift", 0.4, 1), RootCause(1, "L1.z", "scaled", 0.5, 1))


def test_probe_keeps_only_proofs_from_one_side(monkeypatch):
    cat = Catalogue(monkeypatch, {"a": ("log-masked", 0.95), "b": ("log-masked", 0.949), "c": ("drift", 0.99),
                                  "d": ("nan-origin", 0.99), "e": ("unknown", 1.0), "f": ("sign-flip", 1.0)})
    rc = RootCauses()
    for name in "abcdefg":
        rc.probe(7, name, lambda name=name: ctx_of(name, 7))
    assert len(cat.seen) == 7
    assert rc.result() == (RootCause(7, "a", "log-masked", 0.95, 1), RootCause(7, "f", "sign-flip", 1.0, 1))
    assert rc.probed == {n: 1 for n in "abcdefg"} and rc.diagnosed == {}


def test_probe_asks_a_name_at_most_three_times(monkeypatch):
    cat = Catalogue(monkeypatch, {"a": ("log-masked", 0.95)})
    rc = RootCauses()
    for k in range(5):
        rc.probe(k, "a", lambda k=k: ctx_of("a", k))
    assert cat.asked == [(0, "a"), (1, "a"), (2, "a")]
    assert rc.result() == (RootCause(0, "a", "log-masked", 0.95, 3),)
    assert rc.last_code == {"a": "log-masked"}


# ------------------------------------------------------------------------------------ DiffRoots


def T(name: str, err: float = 0.0, ok: bool = True, nonfinite: int = 0, metrics: bool = True, within=None) -> NS:
    """A stand-in TensorComparison: passed, within tolerance, its max rel error and nan/inf mismatches."""
    return NS(name=name, passed=ok, within_tolerance=ok if within is None else within, max_rel_error=err,
              metrics=NS(nonfinite_mismatch=nonfinite) if metrics else None)


def sides(k: int, names: list[str], extra_b: bool = True) -> tuple[NS, NS]:
    """Both sides' recorded steps: A's tensors hold k, B's k + 100; B records one more tensor first."""
    sa = NS(tensors={n: np.full(2, float(k)) for n in names})
    sb = NS(tensors=({"b_only": np.zeros(1)} if extra_b else {}) | {n: np.full(2, k + 100.0) for n in names})
    return sa, sb


def make_context(**kw) -> DivergenceContext:
    return DivergenceContext(history=((kw["step"], 1.0),), **kw)


def run(steps: list[list[NS]], first=None, dr: DiffRoots | None = None, start: int = 0) -> DiffRoots:
    dr = dr or DiffRoots()
    for i, tensors in enumerate(steps):
        k = start + i
        sa, sb = sides(k, [t.name for t in tensors])
        dr.step(NS(step=k, tensors=tensors, passed=all(t.passed for t in tensors)), sa, sb, first, make_context)
    return dr


NAMES = ["x", "L1.z", "L1.a", "L1.W"]


def test_a_failure_whose_inputs_agree_is_diagnosed_with_its_own_inputs(monkeypatch):
    cat = Catalogue(monkeypatch, {0: None, "L1.z": ("scaled", 0.9)})
    steps = [[T("x"), T("L1.z", 0.5, False), T("L1.a", 0.5, False), T("L1.W")] for _ in range(5)]
    dr = run(steps)
    assert dr.result() == (RootCause(0, "L1.z", "scaled", 0.9, 5),)
    assert cat.asked == [(0, "L1.z"), (1, "L1.z"), (2, "L1.z")]
    c0, c1, c2 = cat.seen
    assert c0.a.tolist() == [0.0, 0.0] and c0.b.tolist() == [100.0, 100.0] and c2.a.tolist() == [2.0, 2.0]
    assert list(c0.inputs_a) == ["x"] and list(c0.inputs_b) == ["b_only", "x"]
    assert c1.inputs_a["x"].tolist() == [1.0, 1.0] and c1.inputs_b["x"].tolist() == [101.0, 101.0]
    assert c0.inputs_agree is True and c0.name == "L1.z"
    assert list(c0.step_a) == NAMES and list(c0.step_b) == ["b_only"] + NAMES and c0.step_b["L1.W"][0] == 100.0
    assert (c0.before_a, c0.before_b) == ((), ())
    assert [s["x"][0] for s in c2.before_a] == [1.0, 0.0] and [s["x"][0] for s in c2.before_b] == [101.0, 100.0]
    assert dr.params_ok and dr.params_err == 0.0 and dr.last_err == {"x": 0.0, "L1.z": 0.5, "L1.a": 0.5, "L1.W": 0.0}


def test_the_first_divergence_is_added_first_and_not_diagnosed_again(monkeypatch):
    cat = Catalogue(monkeypatch, {"L1.a": ("scaled", 0.96), "L2.z": ("sign-flip", 0.9)})
    first = NS(step=1, name="L1.a", diagnoses=[diag("log-masked", 0.95)])
    dr = DiffRoots()
    run([[T("x"), T("L2.z", 0.5, False)]], first, dr)
    run([[T("x"), T("L1.a", 0.5, False), T("L2.z", 0.5, False)]], first, dr, start=1)
    run([[T("x"), T("L1.a", 0.5, False)]], first, dr, start=2)
    assert cat.asked == [(0, "L2.z"), (2, "L1.a")]
    assert dr.result() == (RootCause(1, "L1.a", "log-masked", 0.95, 1), RootCause(0, "L2.z", "sign-flip", 0.9, 1),
                           RootCause(2, "L1.a", "scaled", 0.96, 1))
    assert cat.seen[1].inputs_agree is False  # step 1 failed and recorded no parameters: they may have moved


def test_a_first_divergence_without_a_name_or_elsewhere_adds_nothing(monkeypatch):
    cat = Catalogue(monkeypatch, {"L1.z": ("scaled", 0.7)})
    run([[T("x"), T("L1.z", 0.5, False)]], NS(step=0, name=None, diagnoses=[diag("drift", 0.3)]))
    assert cat.asked == [(0, "L1.z")]
    dr = run([[T("x"), T("L1.z")]], NS(step=5, name="L1.z", diagnoses=[diag("drift", 0.3)]))
    assert dr.result() == () and dr.causes.first is None


def test_no_metrics_means_no_diagnosis(monkeypatch):
    cat = Catalogue(monkeypatch, {"L1.z": ("scaled", 0.7)})
    dr = run([[T("x"), T("L1.z", math.inf, False, metrics=False), T("L1.a", 0.5, False)]])
    assert cat.asked == [] and dr.result() == ()


def _after_params(err: float) -> DiffRoots:
    """A DiffRoots whose previous step (0) failed in its updated parameters, by `err`, after a shape mismatch
    (not diagnosed, and everything after it a consequence)."""
    return run([[T("x"), T("L1.z", math.inf, False, metrics=False), T("L1.W", err, False)]])


def test_after_failing_parameters_a_tensor_is_probed_only_past_jump_times_their_error(monkeypatch):
    cat = Catalogue(monkeypatch, {"L1.z": ("log-masked", 0.95)})
    dr = _after_params(0.125)
    assert not dr.params_ok and dr.params_err == 0.125 and cat.asked == []
    run([[T("x"), T("L1.z", 1.25, False)]], dr=dr, start=1)  # exactly JUMP times: a consequence
    assert cat.asked == [] and dr.result() == ()
    dr = _after_params(0.125)
    run([[T("x"), T("L1.z", 1.2500001, False)]], dr=dr, start=1)
    assert cat.asked == [(1, "L1.z")] and dr.result() == (RootCause(1, "L1.z", "log-masked", 0.95, 1),)
    assert cat.seen[0].inputs_agree is False
    assert [s["L1.W"][0] for s in cat.seen[0].before_a] == [0.0]


def test_the_jump_is_measured_from_the_worst_error_before_it_in_the_step(monkeypatch):
    cat = Catalogue(monkeypatch, {"L1.a": ("log-masked", 0.95)})
    dr = _after_params(0.125)
    run([[T("x"), T("L1.z", 0.25, False), T("L1.a", 2.5, False)]], dr=dr, start=1)
    assert cat.asked == [] and dr.result() == ()
    dr = _after_params(0.125)
    run([[T("x"), T("L1.z", 0.25, False), T("L1.a", 2.50001, False)]], dr=dr, start=1)
    assert cat.asked == [(1, "L1.a")]  # the bar is 10 x L1.z's 0.25, not 10 x the parameters' 0.125
    assert dr.result() == (RootCause(1, "L1.a", "log-masked", 0.95, 1),)


def test_errors_within_tolerance_do_not_raise_the_bar(monkeypatch):
    cat = Catalogue(monkeypatch, {"L1.a": ("log-masked", 0.95)})
    dr = _after_params(0.125)
    run([[T("x", 50.0, True), T("L1.a", 2.0, False)]], dr=dr, start=1)
    assert cat.asked == [(1, "L1.a")]


def test_the_floor_of_the_jump_when_nothing_before_erred(monkeypatch):
    cat = Catalogue(monkeypatch, {"L1.a": ("log-masked", 0.95)})
    dr = _after_params(0.0)
    run([[T("x"), T("L1.a", 1e-11, False)]], dr=dr, start=1)
    assert cat.asked == []
    dr = _after_params(0.0)
    run([[T("x"), T("L1.a", 1.01e-11, False)]], dr=dr, start=1)
    assert cat.asked == [(1, "L1.a")]


def test_a_tensor_whose_own_error_jumps_is_probed(monkeypatch):
    cat = Catalogue(monkeypatch, {"L1.a": ("log-masked", 0.95)})
    dr = _after_params(1.0)
    run([[T("x"), T("L1.a", 0.01, False)]], dr=dr, start=1)
    run([[T("x"), T("L1.z", 1.0, False), T("L1.a", 0.1, False), T("L1.W", 1.0, False)]], dr=dr, start=2)
    assert cat.asked == []  # 0.1 is exactly JUMP times its own 0.01
    run([[T("x"), T("L1.z", 1.0, False), T("L1.a", 1.0001, False), T("L1.W", 1.0, False)]], dr=dr, start=3)
    assert cat.asked == [(3, "L1.a")]


def test_an_own_error_of_zero_is_no_reason(monkeypatch):
    cat = Catalogue(monkeypatch, {"L1.a": ("log-masked", 0.95)})
    dr = _after_params(1.0)
    run([[T("x"), T("L1.a", 0.0, False, within=False)]], dr=dr, start=1)
    run([[T("x"), T("L1.a", 5.0, False), T("L1.W", 1.0, False)]], dr=dr, start=2)
    assert cat.asked == []
    assert dr.last_err == {"x": 0.0, "L1.a": 5.0, "L1.W": 1.0}


def test_new_nan_or_inf_is_probed_while_everything_before_was_finite(monkeypatch):
    cat = Catalogue(monkeypatch, {"L1.a": ("log-masked", 0.95)})
    dr = _after_params(1.0)
    run([[T("x"), T("L1.a", 0.5, False, nonfinite=2)]], dr=dr, start=1)
    assert cat.asked == [(1, "L1.a")]
    dr = _after_params(1.0)
    run([[T("x", math.nan, False), T("L1.a", 0.5, False, nonfinite=2)]], dr=dr, start=1)
    assert cat.asked == [(1, "L1.a"), (1, "x")]  # x's nan error counts as inf: L1.a's nan is not new
    dr = _after_params(1.0)
    run([[T("x"), T("L1.a", 0.5, False, nonfinite=0)]], dr=dr, start=1)
    assert cat.asked == [(1, "L1.a"), (1, "x")]


def test_an_inf_error_jumps_past_any_finite_one(monkeypatch):
    cat = Catalogue(monkeypatch, {"L1.a": ("log-masked", 0.95)})
    dr = _after_params(1.0)
    run([[T("x"), T("L1.a", -math.inf, False)]], dr=dr, start=1)
    assert cat.asked == [(1, "L1.a")]
    dr = _after_params(math.nan)
    assert dr.params_err == math.inf
    run([[T("x"), T("L1.a", 1e300, False)]], dr=dr, start=1)
    assert cat.asked == [(1, "L1.a")]  # parameters off by nan (taken as inf): no finite error is a jump


def test_parameters_in_force(monkeypatch):
    Catalogue(monkeypatch)
    dr = run([[T("x"), T("L1.W", 0.25), T("L2.b", 0.5, False), T("L3.z", 9.0, False)]])
    assert not dr.params_ok and dr.params_err == 0.5
    run([[T("x"), T("L1.W", 0.125), T("L2.b", 0.0625)]], dr=dr, start=1)
    assert dr.params_ok and dr.params_err == 0.125
    run([[T("x"), T("L1.z", 3.0, False)]], dr=dr, start=2)  # no parameters recorded: a failing step moves them
    assert not dr.params_ok and dr.params_err == 0.125
    run([[T("x"), T("L1.z")]], dr=dr, start=3)
    assert not dr.params_ok
    dr = run([[T("x"), T("L1.z")]])
    assert dr.params_ok and dr.params_err == 0.0
    assert DiffRoots().params_ok and DiffRoots().params_err == 0.0 and DiffRoots().last_err == {}


def test_previous_steps_are_kept_only_while_contiguous(monkeypatch):
    Catalogue(monkeypatch)
    dr = DiffRoots()
    for k in (0, 1, 3, 4, 5):
        run([[T("x")]], dr=dr, start=k)
    sa, sb = sides(6, ["x"])
    ex = dr.extra(6, sa, sb)
    assert [s["x"][0] for s in ex["before_a"]] == [5.0, 4.0] and [s["x"][0] for s in ex["before_b"]] == [105.0, 104.0]
    assert ex["step_a"] == sa.tensors and ex["step_a"] is not sa.tensors and ex["step_b"] == sb.tensors
    assert ex["step_b"] is not sb.tensors
    assert dr.extra(7, sa, sb)["before_a"] == ()
    dr = DiffRoots()
    for k in (0, 1, 3):
        run([[T("x")]], dr=dr, start=k)
    assert [s["x"][0] for s in dr.extra(4, sa, sb)["before_a"]] == [3.0]
    assert [s["x"][0] for s in dr.extra(2, sa, sb)["before_a"]] == []
    dr = DiffRoots()
    for k in (0, 1):
        run([[T("x")]], dr=dr, start=k)
    assert [s["x"][0] for s in dr.extra(2, sa, sb)["before_b"]] == [101.0, 100.0]


def test_probes_are_bounded_per_name(monkeypatch):
    cat = Catalogue(monkeypatch, {"L1.a": ("log-masked", 0.95)})
    dr = _after_params(1.0)
    for k in range(1, 6):
        run([[T("x"), T("L1.a", 20.0, False), T("L1.W", 1.0, False)]], dr=dr, start=k)
    assert cat.asked == [(1, "L1.a"), (2, "L1.a"), (3, "L1.a")]
    assert dr.result() == (RootCause(1, "L1.a", "log-masked", 0.95, 3),)


@pytest.mark.parametrize("bad", [True, False])
def test_diagnose_is_the_catalogues(monkeypatch, bad):
    Catalogue(monkeypatch, {"L1.z": ("scaled", 0.9)} if bad else {})
    got = roots._diagnose(ctx_of("L1.z"))
    assert [d.code for d in got] == (["scaled"] if bad else ["unknown"])


def test_passing_parameters_set_no_bar_and_a_failure_makes_the_rest_of_the_step_disagree(monkeypatch):
    cat = Catalogue(monkeypatch, {"L1.z": ("scaled", 0.9), "L1.a": ("log-masked", 0.95)})
    dr = run([[T("x"), T("L1.z", 0.0625), T("L1.a", 0.25), T("L1.W", 0.125)]])  # all within tolerance
    assert dr.params_ok and dr.params_err == 0.125
    assert dr.last_err == {"x": 0.0, "L1.z": 0.0, "L1.a": 0.0, "L1.W": 0.0}
    run([[T("x"), T("L1.z", 0.01, False), T("L1.a", 0.5, False), T("L1.W", 0.125)]], dr=dr, start=1)
    assert cat.asked == [(1, "L1.z"), (1, "L1.a")]  # 0.5 > 10 x 0.01: the passing parameters' 0.125 is no bar
    assert [c.inputs_agree for c in cat.seen] == [True, False]
    assert dr.result() == (RootCause(1, "L1.z", "scaled", 0.9, 1), RootCause(1, "L1.a", "log-masked", 0.95, 1))
    run([[T("x"), T("L1.z", 0.5, False), T("L1.a", 0.5, False), T("L1.W", 0.125)]], dr=dr, start=2)
    assert cat.asked == [(1, "L1.z"), (1, "L1.a"), (2, "L1.z")]  # L1.a's own 0.5 before: no jump

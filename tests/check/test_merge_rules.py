"""memstate.check.merge: each accumulated field of check's walk merged over two consecutive ranges as the
serial walk accumulates it, and the decision when a range cannot be merged (quick: no worker processes).

The last tests walk small traces in this process, once in one piece and once split (the second part walked
as a worker walks it, `parallel.check_range` called directly), and compare every field of the two States.
"""

from __future__ import annotations

from dataclasses import fields, replace

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from check_writer import initial_params, train
from trace_helpers import write_steps

from memstate.check import merge, parallel
from memstate.check import recompute as rc
from memstate.check.infer import Spec, declared
from memstate.check.result import Finding, Inferred, NameStats, OpCheck
from memstate.check.root_causes import CheckRoots
from memstate.check.state import State
from memstate.check.walk import Walk
from memstate.comparator.compare import _Buckets
from memstate.comparator.tolerance import Tolerance, Tolerances
from memstate.diagnose.roots import MAX_DIAGNOSED, RootCauses
from memstate.formats.trace import open_trace


def op(step: int, ratio: float) -> OpCheck:
    return OpCheck(step, "L1.z", "x @ W + b", ("x",), ("L1.W",), "", "float64", (2,), ratio <= 1, None, ratio,
                   ratio, ratio, None, None, None, Tolerance(1e-9, 0.0))


# ---------------------------------------------------------------- one field at a time
def test_name_stats_add_counts_and_keep_the_step_that_first_reached_the_worst():
    a = NameStats(3, 1, 2, 0.5, 1e-9, 4)
    assert merge.name_stats(a, NameStats(2, 0, 1, 0.7, 1e-10, 9)) == NameStats(5, 1, 3, 0.7, 1e-9, 9)
    assert merge.name_stats(a, NameStats(2, 3, 0, 0.5, 2e-9, 9)) == NameStats(5, 4, 2, 0.5, 2e-9, 4)  # a tie: a's
    assert merge.name_stats(NameStats(0, 0, 2), NameStats(1, 0, 0, 0.0, 0.0, 7)) == NameStats(1, 0, 2, 0.0, 0.0, 7)
    assert merge.name_stats(a, NameStats(0, 0, 1)) == NameStats(3, 1, 3, 0.5, 1e-9, 4)  # only skipped in b


def test_by_name_keeps_the_order_of_first_appearance():
    a = {"L1.z": NameStats(1, 0, 0, 0.1, 0.1, 0), "probs": NameStats(1)}
    b = {"loss": NameStats(1, 0, 0, 0.2, 0.2, 5), "L1.z": NameStats(1, 0, 0, 0.3, 0.3, 5)}
    out = merge.by_name(a, b)
    assert list(out) == ["L1.z", "probs", "loss"]
    assert out["L1.z"] == NameStats(2, 0, 0, 0.3, 0.3, 5) and out["loss"] == b["loss"]
    assert a["L1.z"] == NameStats(1, 0, 0, 0.1, 0.1, 0)  # the inputs are not changed


def test_worst_is_the_later_range_only_when_strictly_worse():
    first, same, worse = op(1, 0.5), op(6, 0.5), op(7, 0.6)
    assert merge.worst(first, same) is first
    assert merge.worst(first, worse) is worse
    assert merge.worst(None, same) is same and merge.worst(first, None) is first and merge.worst(None, None) is None


def test_findings_are_counted_with_their_last_step():
    f = Finding("invariant", "loss-finite", 2, "loss", "the loss is nan")
    a = {("loss-finite", "loss"): replace(f, count=2, last_step=3)}
    b = {("loss-finite", "loss"): replace(f, step=6), ("y-one-hot", "y"): Finding("invariant", "y-one-hot", 7, "y", "")}
    out = merge.findings(a, b)
    assert out[("loss-finite", "loss")] == replace(f, count=3, last_step=6)
    assert list(out) == [("loss-finite", "loss"), ("y-one-hot", "y")] and out[("y-one-hot", "y")].count == 1
    assert merge.finding(f, replace(f, step=5, count=4, last_step=9)) == replace(f, count=5, last_step=9)
    assert a[("loss-finite", "loss")].count == 2


def test_notes_skips_gaps_and_tolerances_keep_first_appearance_order():
    notes = merge.steps_by_key({"a": [0], "b": [1]}, {"c": [4], "a": [5, 6]})
    assert notes == {"a": [0, 5, 6], "b": [1], "c": [4]} and list(notes) == ["a", "b", "c"]
    skips = merge.skips({"why": ({"L1.z": None}, {0: None})}, {"why": ({"L2.z": None, "L1.z": None}, {5: None}),
                                                             "other": ({"x": None}, {6: None})})
    assert skips == {"why": ({"L1.z": None, "L2.z": None}, {0: None, 5: None}), "other": ({"x": None}, {6: None})}
    assert list(skips["why"][0]) == ["L1.z", "L2.z"] and list(skips) == ["why", "other"]
    gaps = merge.unverified({("L1.z", "w"): ("params", [0])}, {("L1.z", "w"): ("other", [4]), ("y", "v"): ("", [5])})
    assert gaps == {("L1.z", "w"): ("params", [0, 4]), ("y", "v"): ("", [5])}
    t1, t2 = Tolerance(1e-9, 0.0), Tolerance(1e-6, 0.0)
    used = merge.used({t1: ["L1.z", "probs"]}, {t1: ["loss", "L1.z"], t2: ["L1.W"]})
    assert used == {t1: ["L1.z", "probs", "loss"], t2: ["L1.W"]}


def test_the_inputs_of_the_dict_merges_are_not_changed():
    a_notes, a_skips, a_gaps, a_used = {"a": [0]}, {"w": ({"x": None}, {0: None})}, {("x", "w"): ("", [0])}, \
        {Tolerance(1e-9, 0.0): ["x"]}
    merge.steps_by_key(a_notes, {"a": [1]})
    merge.skips(a_skips, {"w": ({"y": None}, {1: None})})
    merge.unverified(a_gaps, {("x", "w"): ("", [1])})
    merge.used(a_used, {Tolerance(1e-9, 0.0): ["y"]})
    assert a_notes == {"a": [0]} and a_skips == {"w": ({"x": None}, {0: None})}
    assert a_gaps == {("x", "w"): ("", [0])} and a_used == {Tolerance(1e-9, 0.0): ["x"]}


def test_a_series_replayed_step_by_step_is_the_serial_series():
    rng = np.random.default_rng(0)
    rows = [(k, float(rng.random()), float(rng.random()), f"n{k % 3}", bool(k % 5 == 0)) for k in range(300)]
    serial = _Buckets(8)
    for row in rows:
        serial.add(*row)
    head, tail = _Buckets(8), _Buckets(merge.UNBOUNDED)
    for row in rows[:37]:
        head.add(*row)
    for row in rows[37:]:
        tail.add(*row)
    assert len(tail.items) == 263  # one bucket per step
    merged = merge.replay(head, tail)
    assert merged is head and merged.items == serial.items and merged.width == serial.width


def test_unbounded_state_keeps_every_step_of_every_series():
    s = merge.unbounded_state(State(Tolerances(), {}, False))
    assert s.overview.limit == merge.UNBOUNDED
    assert s.series.setdefault("L1.z", _Buckets()).limit == merge.UNBOUNDED
    first = s.series["L1.z"]
    assert s.series.setdefault("L1.z", _Buckets()) is first


def test_lr_fits_add_up_and_keep_the_first_max_fits(monkeypatch):
    fit = [rc.TensorFit(k, "L1.W", 0.5 + k * 1e-9, 1e-6) for k in range(5)]
    a, b = rc.LrFit(fit[:2], 2, 0.5, 0.5 + 1e-9), rc.LrFit(fit[2:], 3, 0.5 + 2e-9, 0.5 + 4e-9)
    out = merge.lr_fit(a, b)
    assert (out.fits, out.count, out.lo, out.hi) == (fit, 5, 0.5, 0.5 + 4e-9)
    assert merge.lr_fit(b, a).lo == 0.5 and merge.lr_fit(b, a).hi == 0.5 + 4e-9
    monkeypatch.setattr(rc, "MAX_FITS", 3)
    assert merge.lr_fit(a, b).fits == fit[:3] and merge.lr_fit(a, b).count == 5
    assert merge.lr_fit(rc.LrFit(fit[:4], 4), b).fits == fit[:4]


def test_redo_reason_says_why_a_range_is_walked_again():
    s = ("relu", "mean", 0.1)
    assert merge.redo_reason(s, s, False) == ""
    assert merge.redo_reason(s, ("relu", "mean", None), False) == "the settings changed in it"
    assert merge.redo_reason(s, s, True) == "it fitted a learning rate that was not yet known"
    assert merge.redo_reason(s, ("x",), True) == "the settings changed in it"


def test_failures_are_merged_only_when_the_serial_walk_would_only_count_them():
    causes = RootCauses()
    assert merge.failures_reason(0, False, [(5, "probs")], causes) == ""  # nothing failed
    assert merge.failures_reason(2, False, [], None) == "the first failing operation is in it"
    assert merge.failures_reason(2, True, [(5, "probs")], None) == ""  # not diagnosing: only counted
    assert merge.failures_reason(2, True, [], causes) == ""  # consequences only
    why = "step 5: probs failed, a cause still to be diagnosed"
    assert merge.failures_reason(2, True, [(5, "probs")], causes) == why  # the first cause is still to come
    causes.add(1, "probs", [], first=True)
    causes.diagnosed["probs"] = MAX_DIAGNOSED - 1
    assert merge.failures_reason(2, True, [(5, "probs")], causes) == why
    causes.diagnosed["probs"] = MAX_DIAGNOSED
    assert merge.failures_reason(2, True, [(5, "probs")], causes) == ""
    assert merge.failures_reason(2, True, [(5, "probs"), (6, "loss")], causes) == \
        "step 6: loss failed, a cause still to be diagnosed"
    causes.diagnosed["loss"] = MAX_DIAGNOSED + 1
    assert merge.failures_reason(2, True, [(5, "probs"), (6, "loss")], causes) == \
        "step 6: loss failed, a cause still to be diagnosed"  # diagnosed, but never under a code
    causes.last_code["loss"] = "unknown"
    assert merge.failures_reason(2, True, [(5, "probs"), (6, "loss")], causes) == ""


def test_failure_list_keeps_the_first_max_failures(monkeypatch):
    a, b = [op(k, 2.0) for k in range(3)], [op(k, 2.0) for k in range(3, 6)]
    assert merge.failure_list(a, b) == a + b
    monkeypatch.setattr(merge, "MAX_FAILURES", 4)
    assert merge.failure_list(a, b) == a + b[:1]
    assert merge.failure_list(a + b, b) == a + b[:1]


def test_decisions_and_settled():
    known = Inferred("relu", "header")
    spec = Spec(known, Inferred("mean", "header"), Inferred(0.1, "header"), act_seen=True, red_seen=True)
    assert merge.settled(spec)
    assert not merge.settled(replace(spec, act_seen=False))
    assert not merge.settled(replace(spec, red_seen=False))
    assert not merge.settled(replace(spec, learning_rate=Inferred(None, "unknown")))
    assert merge.decisions(spec) == merge.decisions(replace(spec, lr_fit=rc.LrFit([], 9)))
    for change in ({"activation": Inferred("sigmoid", "inferred")}, {"reduction": Inferred("sum", "inferred")},
                   {"learning_rate": Inferred(0.2, "fitted")}, {"act_seen": False}, {"red_seen": False},
                   {"dz_factor": 0.5}):
        assert merge.decisions(replace(spec, **change)) != merge.decisions(spec), change


def test_absorb_merges_every_field_into_the_main_state():
    main, part = State(Tolerances(), {}, True), merge.unbounded_state(State(Tolerances(), {}, False))
    main.operations, main.invariant_checks, main.recorded, main.verified, main.per_step = 10, 4, 12, 10, {7}
    part.operations, part.invariant_checks, part.recorded, part.verified, part.per_step = 7, 3, 9, 7, {5, 6}
    main.unchecked, part.unchecked = {"a": None}, {"b": None, "a": None}
    main.history, part.history = [(0, 0.1)], [(1, 0.2), (2, 0.3)]
    main.worst, part.worst = op(0, 0.2), op(2, 0.4)
    f = Finding("invariant", "loss-finite", 2, "loss", "nan")
    part.findings, part.first_finding = {("loss-finite", "loss"): f}, f
    part.notes, part.skips = {"n": [1]}, {"w": ({"x": None}, {1: None})}
    part.unverified, part.used = {("x", "w"): ("", [1])}, {Tolerance(1e-9, 0.0): ["x"]}
    part.by_name = {"loss": NameStats(2, 0, 0, 0.1, 0.1, 1)}
    part.overview.add(1, 0.1, 0.2, "loss", False)
    part.series.setdefault("loss", _Buckets()).add(1, 0.1, 0.2, "loss", False)
    main.n_failures, main.failing_steps, main.failures, main.last_failing_step = 2, 1, [op(0, 2.0)], 0
    part.n_failures, part.failing_steps, part.failures, part.last_failing_step = 3, 2, [op(1, 3.0), op(2, 4.0)], 2
    merge.absorb(main, part)
    assert (main.n_failures, main.failing_steps, main.last_failing_step) == (5, 3, 2)
    assert main.failures == [op(0, 2.0), op(1, 3.0), op(2, 4.0)]
    assert (main.operations, main.invariant_checks, main.recorded, main.verified) == (17, 7, 21, 17)
    assert main.per_step == {5, 6, 7} and list(main.unchecked) == ["a", "b"]
    assert main.history == [(0, 0.1), (1, 0.2), (2, 0.3)] and main.worst == part.worst
    assert main.findings == part.findings and main.first_finding is f
    assert main.notes == {"n": [1]} and main.skips == part.skips and main.unverified == part.unverified
    assert main.used == part.used and main.by_name == part.by_name
    assert [b.first_step for b in main.overview.items] == [1] and main.overview.limit != merge.UNBOUNDED
    assert [b.first_step for b in main.series["loss"].items] == [1]
    g = Finding("invariant", "y-one-hot", 0, "y", "")
    main.first_finding = g
    part.last_failing_step = None
    merge.absorb(main, part)
    assert main.first_finding is g  # the earlier range's
    assert main.last_failing_step == 2 and main.n_failures == 8


# ---------------------------------------------------------------- a split walk equals the serial walk
def _trace(folder, drop=(), every=1, steps=8, corrupt=()):
    params = initial_params()
    out = {}
    for k, record in enumerate(train(params, steps=steps)):
        if k % every == 0:
            out[k] = {n: v * (1.01 if (k, n) in corrupt else 1.0) for n, v in record if (k, n) not in drop}
    return write_steps(folder / "t.memstate", out), params


def _walk(reader, params) -> Walk:
    meta = dict(reader.meta)
    st_ = State(Tolerances(), meta, True, roots=CheckRoots(meta, True))
    return Walk(st_, Spec.from_declared(declared(meta, None, "")), params, "params file", None)


def _fields(walk: Walk) -> dict:
    """Everything the walk accumulated, comparable (buckets by their items)."""
    out = {}
    for f in fields(State):
        if f.name in ("roots", "tol_cache", "last_kept"):
            continue
        v = getattr(walk.st, f.name)
        if f.name == "first_context":
            v = None if v is None else (v.step, v.name, v.history)
        elif isinstance(v, _Buckets):
            v = (v.items, v.width)
        elif f.name == "series":
            v = [(n, b.items, b.width) for n, b in v.items()]
        elif isinstance(v, dict):
            v = list(v.items())
        out[f.name] = v
    fit = walk.spec.lr_fit
    out["lr_fit"] = (fit.fits, fit.count, fit.lo, fit.hi)
    roots = walk.st.roots
    out["walk"] = (walk.count, walk.first_step, walk.last_step, walk.prev_index, walk.dtype, walk.n_layers)
    out["prev_params"] = None if walk.prev_params is None else [(n, v.tobytes()) for n, v in walk.prev_params.items()]
    out["roots"] = ([(k, list(t)) for k, t in roots.before], roots.k, list(roots.t),
                    [(k, list(t)) for k, t in roots.dz_steps], roots.causes.groups, roots.causes.diagnosed,
                    roots.causes.last_code, roots.causes.first, roots.first)
    return out


PROBS = tuple((k, "probs") for k in (1, 2, 3, 5, 6, 7))  # diagnosed at 1, 2 and 3; only counted after


@pytest.mark.parametrize("drop, every, corrupt", [((), 1, ()), (((6, "loss"), (3, "L1.dz")), 1, ()),
                                                  ((), 2, ()), (((5, "L2.W"),), 1, ((2, "L1.z"),)),
                                                  ((), 1, PROBS)])
@settings(max_examples=5, deadline=None)
@given(split=st.integers(1, 6))
def test_a_range_walked_apart_and_merged_is_the_serial_walk(tmp_path_factory, drop, every, corrupt, split):
    path, params = _trace(tmp_path_factory.mktemp("t"), drop, every, corrupt=corrupt)
    with open_trace(path) as reader:
        steps = list(reader.steps(mapped=True, populate=False))
        serial = _walk(reader, params)
        for s in steps:
            serial.step(s.index, s.tensors)
        split = min(max(split, 4) if corrupt else split, len(steps) - 1)  # the diagnosed failures: main walk
        main = _walk(reader, params)
        for s in steps[:split]:
            main.step(s.index, s.tensors)
        unit = parallel.CheckRange(str(path), tuple(s.index for s in steps[split:]), steps[split - 1].index,
                                   reader.run_id, replace(main.spec, lr_fit=rc.LrFit()), main.n_layers, main.dtype,
                                   main.st.tolerances, last=True)
    result = parallel.check_range(unit)
    assert parallel._why(main, result) == "" and result.state is not None
    assert result.state.failing_steps == sum(k >= steps[split].index for k, _ in corrupt)
    for s in steps[split:]:
        main.skip(s.index, s.tensors)
    parallel._absorb(main, result)
    assert _fields(main) == _fields(serial)
    assert main.st.last_kept[0] == serial.st.last_kept[0] == steps[-1].index

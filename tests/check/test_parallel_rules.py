"""memstate.check.parallel's decisions, quick: the worker pool replaced by one that runs each range at once in
this process (InlinePool), so that settling, planning, merging and every fallback run without processes.
test_check_jobs.py runs the same with real worker processes."""

from __future__ import annotations

from concurrent.futures import Future

import numpy as np

import pytest

from jobs_cases import CASES, report, serial_case, writer_trace
from trace_helpers import write_steps

from memstate.check import parallel
from memstate.check.checker import check_trace
from memstate.check.infer import Spec
from memstate.comparator.tolerance import Tolerances
from memstate.formats.trace import open_trace, step_file_name


class LazyFuture(Future):
    """A range checked only when its result is asked for (never, when it is cancelled first)."""

    def __init__(self, fn, unit, ran: list):
        super().__init__()
        self.fn, self.unit, self.ran = fn, unit, ran

    def result(self, timeout=None):
        if not self.done():
            self.ran.append(self.unit.steps)
            try:
                self.set_result(self.fn(self.unit))
            except Exception as exc:  # a worker that died: its future holds the error
                self.set_exception(exc)
        return super().result(timeout)


class InlinePool:
    """A ProcessPoolExecutor stand-in that checks each range in this process when its result is asked for;
    what it was given, what it ran and how it was shut down are kept."""

    made: list["InlinePool"] = []

    def __init__(self, max_workers: int, mp_context: object):
        self.max_workers, self.mp_context, self.shut = max_workers, mp_context, None
        self.units: list[parallel.CheckRange] = []
        self.ran: list[tuple[int, ...]] = []
        InlinePool.made.append(self)

    def submit(self, fn, unit):
        self.units.append(unit)
        return LazyFuture(fn, unit, self.ran)

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        self.shut = (wait, cancel_futures)


@pytest.fixture(autouse=True)
def inline(monkeypatch):
    InlinePool.made = []
    monkeypatch.setattr(parallel, "ProcessPoolExecutor", InlinePool)
    monkeypatch.setattr(parallel, "process_context", lambda preload: ("context", preload))
    monkeypatch.setattr(parallel, "MIN_BYTES", 0)


@pytest.mark.parametrize("case", CASES)
def test_inline_ranges_give_the_serial_report(tmp_path, case):
    path, params, redone, serial = serial_case(tmp_path, case)
    kwargs = CASES[case][0]
    assert InlinePool.made == []
    for jobs in (2, 3, 5):
        got = check_trace(path, params=params, jobs=jobs)
        assert report(got) == report(serial), (case, jobs)
        pool = InlinePool.made[-1]
        assert pool.max_workers == jobs and pool.mp_context == ("context", ("memstate.check.parallel",))
        assert pool.shut == (True, True)
        assert [u.steps for u in pool.units] == [tuple(range(a, b + 1, kwargs.get("every", 1)))
                                                 for a, b, _ in got.ranges]
        assert [why != "" for _, _, why in got.ranges] == [any(a <= k <= b for k in redone) for a, b, _ in got.ranges]


def test_the_main_process_walks_until_the_settings_are_settled(tmp_path):
    path, params = writer_trace(tmp_path, "t", steps=16)
    assert check_trace(path, params=params, jobs=2).ranges[0][0] == 1  # step 0 settles all three
    assert check_trace(path, jobs=2).ranges[0][0] == 2  # no params: the learning rate is fitted at step 1
    units = InlinePool.made[-1].units
    assert units[0].prev == 1 and [u.prev for u in units[1:]] == [u.steps[-1] for u in units[:-1]]
    assert [u.last for u in units] == [False] * (len(units) - 1) + [True]
    assert all(u.spec.lr_fit.count == 0 and u.spec.learning_rate.value is not None for u in units)
    assert all((u.n_layers, u.dtype) == (2, "float64") for u in units)


def test_settings_never_settled_leave_the_first_range_to_the_main_process(tmp_path, monkeypatch):
    """Without probs - y, a loss or a gradient, the reduction never shows: the main process walks at most
    the first range (here 4 steps) or SETTLE_STEPS, then hands out the rest with what it knows."""
    path, _ = writer_trace(tmp_path, "t", steps=12, keep=("x", "y", "L1.z", "L1.a", "L2.z"))
    monkeypatch.setattr(parallel, "plan_ranges", lambda steps, jobs: [tuple(steps[i:i + 4])
                                                                      for i in range(0, len(steps), 4)])
    got = check_trace(path, jobs=2)
    assert got.ranges == ((4, 7, ""), (8, 11, ""))  # the learning rate unknown, and nothing fitted to it
    assert report(got) == report(check_trace(path, jobs=1))
    monkeypatch.setattr(parallel, "plan_ranges", lambda steps, jobs: [(k,) for k in steps])
    assert check_trace(path, jobs=2).ranges[0][0] == parallel.SETTLE_STEPS


def test_a_failed_worker_or_a_result_that_is_not_one_is_walked_here(tmp_path, monkeypatch):
    path, params = writer_trace(tmp_path, "t")
    serial = check_trace(path, params=params, jobs=1)
    real = parallel.check_range

    def flaky(unit):
        if 3 in unit.steps:
            raise RuntimeError("worker killed")
        return "not a RangeResult" if 5 in unit.steps else real(unit)

    monkeypatch.setattr(parallel, "check_range", flaky)
    got = check_trace(path, params=params, jobs=2)
    assert report(got) == report(serial)
    whys = {a: why for a, _, why in got.ranges}
    assert whys[3] == whys[5] == "its worker failed" and whys[4] == whys[6] == ""


def test_steps_that_are_not_the_ones_listed_end_the_parallel_walk(tmp_path, monkeypatch):
    path, params = writer_trace(tmp_path, "t")
    serial = check_trace(path, params=params, jobs=1)
    # a plan that misses step 3 (as if the trace changed between listing and reading): every step is still
    # walked once, in order, the ranges from the mismatch on here
    monkeypatch.setattr(parallel, "plan_ranges", lambda steps, jobs: [(1,), (2,), (4, 5), (6,), (7,)]
                        if steps[0] == 1 else [tuple(steps)])
    got = check_trace(path, params=params, jobs=2)
    assert report(got) == report(serial)
    assert got.ranges == ((1, 1, ""), (2, 2, ""), (4, 5, "the steps are not the ones listed"),
                          (6, 6, "the steps are not the ones listed"), (7, 7, "the steps are not the ones listed"))
    monkeypatch.setattr(parallel, "plan_ranges", lambda steps, jobs: [(1,), (2, 3), (4,), (5, 6, 7)]
                        if steps[0] == 1 else [tuple(steps)])
    real = parallel.check_range
    monkeypatch.setattr(parallel, "check_range", lambda unit: parallel.RangeResult(None, why="no")
                        if unit.steps == (2, 3) else real(unit))
    got = check_trace(path, params=params, jobs=2)
    assert report(got) == report(serial)
    assert got.ranges == ((1, 1, ""), (2, 3, "no"), (4, 4, ""), (5, 7, ""))  # one redone range ends nothing


def test_a_range_whose_settings_changed_ends_the_parallel_walk(tmp_path, monkeypatch):
    """Settings handed out unsettled (the first step only walked here): the next range adopts the learning
    rate, and every range after it is walked here."""
    path, _ = writer_trace(tmp_path, "t")
    serial = check_trace(path, jobs=1)
    monkeypatch.setattr(parallel, "SETTLE_STEPS", 1)
    monkeypatch.setattr(parallel, "plan_ranges", lambda steps, jobs: [(k,) for k in steps])
    monkeypatch.setattr(parallel.merge, "settled", lambda spec: True)
    got = check_trace(path, jobs=2)
    assert report(got) == report(serial)
    assert got.ranges[0] == (1, 1, "step 1: the settings changed in it")
    assert {why for _, _, why in got.ranges[1:]} == {"it follows a range whose settings or steps changed"}
    assert InlinePool.made[-1].ran == [(1,)]  # the later ranges were cancelled, never checked


def test_a_step_a_worker_cannot_read_comes_back_with_the_error(tmp_path):
    path, params = writer_trace(tmp_path, "t")
    (path / step_file_name(6)).write_bytes(b"\0" * 10)
    with open_trace(path) as reader:
        run_id = reader.run_id
    unit = parallel.CheckRange(str(path), (6, 7), 5, run_id, Spec.from_declared({}), 2, "float64", Tolerances())
    result = parallel.check_range(unit)
    assert result.state is None and result.why.startswith("FormatError: ") and step_file_name(6) in result.why


def test_traces_without_layers_or_too_small_stay_in_process(tmp_path, monkeypatch):
    path, params = writer_trace(tmp_path, "t")
    monkeypatch.setattr(parallel, "MIN_BYTES", sum(p.stat().st_size for p in path.glob("step-*")) + 1)
    assert check_trace(path, params=params, jobs=2).ranges == () and InlinePool.made == []
    monkeypatch.setattr(parallel, "MIN_BYTES", sum(p.stat().st_size for p in path.glob("step-*")))
    assert check_trace(path, params=params, jobs=2).ranges != ()
    assert check_trace(path, params=params, jobs=1).ranges == ()
    one = writer_trace(tmp_path, "one", steps=1)
    assert check_trace(one[0], params=one[1], jobs=2).ranges == ()


def test_nothing_left_to_hand_out_or_no_layers_or_no_dtype_start_no_workers(tmp_path):
    two, _ = writer_trace(tmp_path, "two", steps=2)  # both steps walked while settling (no params)
    assert check_trace(two, jobs=2).ranges == () and InlinePool.made == []
    path = tmp_path / "names.memstate"
    write_steps(path, {k: {"a": np.ones(3), "b": np.ones(3)} for k in range(6)})  # no canonical name: no layers
    assert check_trace(path, jobs=2).ranges == () and InlinePool.made == []
    empty, params = writer_trace(tmp_path, "empty", keep=())  # steps without tensors: no dtype
    assert check_trace(empty, params=params, jobs=2).ranges == () and InlinePool.made == []
    assert report(check_trace(empty, params=params, jobs=2)) == report(check_trace(empty, params=params, jobs=1))


def test_a_range_that_is_walked_here_is_not_checked_by_a_worker_too(tmp_path, monkeypatch):
    path, params = writer_trace(tmp_path, "t")
    monkeypatch.setattr(parallel, "plan_ranges", lambda steps, jobs: [(1,), (2,), (4, 5), (6,), (7,)]
                        if steps[0] == 1 else [tuple(steps)])
    check_trace(path, params=params, jobs=2)
    assert InlinePool.made[-1].ran == [(1,), (2,)]


def test_a_trace_read_through_a_layout_map_stays_in_process(tmp_path):
    """A foreign port's tensors are renamed as the trace is read: the workers, which read step files
    themselves, would see other names."""
    from memstate.formats.map import parse_map

    path, params = writer_trace(tmp_path, "t")
    identity = parse_map({"layout": {"batch": "rows", "weights": "in,out"}})
    got = check_trace(path, params=params, jobs=2, layout=identity)
    assert got.ranges == () and InlinePool.made == []
    assert report(got) == report(check_trace(path, params=params, jobs=1, layout=identity))


def test_without_diagnoses_every_range_after_the_first_failure_is_merged(tmp_path):
    path, params = writer_trace(tmp_path, "t", bug="softmax-global-sum")
    serial = check_trace(path, params=params, jobs=1, diagnose=False)
    got = check_trace(path, params=params, jobs=2, diagnose=False)
    assert report(got) == report(serial) and serial.first_failure.step == 0
    assert got.ranges and all(why == "" for _, _, why in got.ranges)
    assert got.n_failures == serial.n_failures and got.failing_steps == 8
    with_diagnoses = check_trace(path, params=params, jobs=2)
    assert [why != "" for _, _, why in with_diagnoses.ranges][:3] == [True, True, False]
    assert with_diagnoses.comparison.root_causes == check_trace(path, params=params, jobs=1).comparison.root_causes
    assert with_diagnoses.comparison.root_causes[0].count == 8  # counted at every step, 3 of them diagnosed


def test_a_worker_keeps_the_causes_and_drops_the_consequences():
    causes = parallel._Causes()
    y = np.eye(3)[[0, 1]]
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])
    loss = np.array(-np.sum(y * np.log(probs)) / 2)
    causes.step(4, {"x": np.ones((2, 3)), "L1.z": np.array([[np.nan, 1.0, 1.0]] * 2), "probs": probs, "y": y,
                    "loss": loss}, None, "")
    causes.failed(4, "L1.z", 1, None)  # nan from finite inputs: a cause
    causes.step(5, {"x": np.array([[np.nan, 1.0, 1.0]] * 2), "L1.z": np.array([[np.nan, 1.0, 1.0]] * 2),
                    "probs": probs, "y": y, "loss": loss}, None, "")
    causes.failed(5, "L1.z", 1, None)  # nan that flowed in from x: a consequence
    causes.failed(5, "probs", 2, None)  # a cause
    causes.failed(5, "loss", 4, None)  # the loss of the (wrong) recorded probs: a consequence of them
    assert causes.events == [(4, "L1.z"), (5, "probs")]
    assert causes.failed_here == {"probs"} and causes.first is True  # nothing diagnosed


def test_a_merged_cause_is_never_diagnosed():
    with pytest.raises(AssertionError, match="^a merged cause was to be diagnosed: memstate.check.merge.failures_reason "
                       "let it through$"):
        parallel._diagnosed_enough()

"""--jobs and read-ahead (issue 14): the same Comparison and the same converted file, whatever the jobs."""

from __future__ import annotations

import numpy as np
import pytest

from memstate.comparator.compare import compare
from memstate.formats.trace import open_trace
from memstate.comparator.compare import judge_step
from memstate.comparator.parallel import StepRange, judge_range, plan_ranges
from memstate.comparator.tolerance import Tolerances
from memstate.formats.convert import convert_trace
from memstate.formats.readahead import ReadAhead
from memstate.formats.recorder import Recorder
from memstate.report.json import to_dict

STEPS = 12


@pytest.fixture(autouse=True)
def workers_even_for_small_traces(monkeypatch):
    """These traces are far below the sizes where workers pay off; use them anyway."""
    monkeypatch.setattr("memstate.comparator.parallel.MIN_BYTES", 0)
    monkeypatch.setattr("memstate.formats.convert.MIN_BYTES", 0)


def _trace(path, bumps=(), noise=1e-13, crash_at=None):
    rng = np.random.default_rng(1)
    with Recorder(path, {"steps": STEPS}) as rec:
        for k in range(STEPS):
            if k == crash_at:
                break
            with rec.step(k):
                for name in ("x", "L1.z", "L1.a", "probs", "loss"):
                    v = rng.standard_normal((5, 3)) if name != "loss" else np.array(rng.standard_normal())
                    if k % 3 == 1:
                        v = v + noise  # within tolerance
                    if (k, name) in bumps:
                        v = v + 1e-3
                    rec.record(name, v)


def test_plan_ranges_cover_every_step_once_in_order():
    steps = list(range(0, 200, 3))
    for jobs in (1, 2, 3, 16):
        ranges = plan_ranges(steps, jobs)
        assert [k for r in ranges for k in r] == steps
        assert all(len(r) >= 1 for r in ranges)
    assert plan_ranges([], 4) == []


@pytest.mark.parametrize("bumps", [(), ((9, "L1.a"), (4, "probs"), (10, "x"))])
def test_jobs_give_the_same_comparison(tmp_path, bumps):
    a, b = tmp_path / "a.memstate", tmp_path / "b.memstate"
    _trace(a)
    _trace(b, bumps=bumps)
    one, two = compare(a, b, jobs=1), compare(a, b, jobs=2)
    assert to_dict(one) == to_dict(two)
    if bumps:  # the smallest failing step, though a later range may finish first
        assert two.first_divergence.step == 4 and two.first_divergence.name == "probs"
        assert two.divergent_steps == 3


def test_a_range_is_judged_on_its_own(tmp_path):
    a, b = tmp_path / "a.memstate", tmp_path / "b.memstate"
    _trace(a)
    _trace(b, bumps=((5, "L1.z"),))
    with open_trace(a) as ra, open_trace(b) as rb:
        run_ids = (ra.run_id, rb.run_id)
    assert all(run_ids)  # step files carry their run's id; a range is read with them
    got = dict(judge_range(StepRange(str(a), str(b), (4, 5, 6), Tolerances(), *run_ids, judge_step)))
    assert sorted(got) == [4, 5, 6]
    assert [t.name for t in got[5] if not t.within_tolerance] == ["L1.z"]
    assert all(t.within_tolerance for t in got[4] + got[6])


def test_jobs_with_an_incomplete_and_a_missing_step(tmp_path):
    a, b = tmp_path / "a.memstate", tmp_path / "b.memstate"
    _trace(a)
    _trace(b, crash_at=8)
    (b / "step-00000003.safetensors").unlink()
    assert to_dict(compare(a, b, jobs=1)) == to_dict(compare(a, b, jobs=3))


@pytest.mark.parametrize("b64", [False, True])
def test_parallel_convert_writes_the_same_file(tmp_path, b64):
    src = tmp_path / "a.memstate"
    _trace(src, crash_at=None)
    convert_trace(src, tmp_path / "one.jsonl", b64=b64, jobs=1)
    convert_trace(src, tmp_path / "two.jsonl", b64=b64, jobs=2)
    assert (tmp_path / "one.jsonl").read_bytes() == (tmp_path / "two.jsonl").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".convert-")]  # parts cleaned up


def test_parallel_convert_carries_the_incomplete_step(tmp_path):
    src = tmp_path / "a.memstate"
    _trace(src)
    from memstate.formats.recorder import open_writer
    from memstate.formats.trace import read_trace

    steps = read_trace(src)
    crashed = tmp_path / "crashed.memstate"
    with open_writer(crashed, {"steps": STEPS}) as w:
        for s in steps[:5]:
            w.begin_step(s.index)
            for name, arr in s.tensors.items():
                w.write_tensor(name, arr)
            if s.index < 4:
                w.end_step()
            else:
                w.abort_step()
    assert convert_trace(crashed, tmp_path / "one.jsonl", jobs=1) == 4
    assert convert_trace(crashed, tmp_path / "two.jsonl", jobs=2) == 4
    assert (tmp_path / "one.jsonl").read_bytes() == (tmp_path / "two.jsonl").read_bytes()
    assert read_trace(tmp_path / "two.jsonl", include_incomplete=True)[-1].complete is False


def test_small_traces_stay_in_process(tmp_path, monkeypatch):
    monkeypatch.setattr("memstate.comparator.parallel.MIN_BYTES", 1 << 30)
    a, b = tmp_path / "a.memstate", tmp_path / "b.memstate"
    _trace(a)
    _trace(b)

    def no_workers(*args, **kwargs):
        raise AssertionError("workers started for a small trace")

    monkeypatch.setattr("memstate.comparator.compare.RangeJudge", no_workers)
    assert compare(a, b, jobs=4)


def test_read_ahead_yields_everything_and_passes_errors_on():
    assert list(ReadAhead(iter(range(5)))) == [0, 1, 2, 3, 4]

    def bad():
        yield 1
        raise ValueError("step 2 is unreadable")

    it = ReadAhead(bad())
    assert next(it) == 1
    with pytest.raises(ValueError, match="step 2 is unreadable"):
        next(it)
    it.close()

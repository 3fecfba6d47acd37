"""`check --jobs N` (issue 14): ranges of a binary trace checked in worker processes give the serial report.

Every trace here is far below the size where workers pay off (memstate.check.parallel.MIN_BYTES); the
fixture lowers the threshold so that they are used anyway. Each test also asserts which ranges the workers
checked (`CheckResult.ranges`), so that a silent fallback to the serial walk cannot pass for a merge.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from jobs_cases import CASES, report, serial_case, writer_trace

from memstate.check import parallel
from memstate.check.checker import check_trace
from memstate.errors import MemstateError
from memstate.formats.trace import open_trace, step_file_name

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def workers_even_for_small_traces(monkeypatch):
    monkeypatch.setattr("memstate.check.parallel.MIN_BYTES", 0)


@pytest.mark.parametrize("case", CASES)
def test_jobs_give_the_serial_report(tmp_path, case):
    path, params, redone, serial = serial_case(tmp_path, case)
    assert serial.ranges == ()
    for jobs in (2, 3):
        got = check_trace(path, params=params, jobs=jobs)
        assert report(got) == report(serial), (case, jobs)
        assert got.ranges, "no range was handed to a worker"
        for first, last, why in got.ranges:
            again = any(first <= k <= last for k in redone)
            assert (why != "") == again, (case, jobs, first, last, why)
            assert not again or why.endswith(("the first failing operation is in it",
                                               "a cause still to be diagnosed"))


def test_a_bug_in_two_ranges_counts_both_and_the_smaller_step_wins(tmp_path):
    path, params = writer_trace(tmp_path, "t", corrupt=((2, "probs"), (6, "L2.dW")))
    serial, parallel_ = check_trace(path, params=params, jobs=1), check_trace(path, params=params, jobs=2)
    assert parallel_.first_failure.step == 2 and parallel_.first_failure.name == "probs"
    assert parallel_.failing_steps == serial.failing_steps == 2
    assert parallel_.n_failures == serial.n_failures > 2
    assert parallel_.first_divergence == serial.first_divergence
    assert [d.code for d in parallel_.diagnoses] == [d.code for d in serial.diagnoses]


def test_a_runner_variant_that_first_fails_in_a_later_range(tmp_path):
    """memstate's own runner, softmax with the batch's max (docs/check.md): nan appears at a later step."""
    from memstate.formats.trace import read_trace
    from memstate.runner.harness import run
    from memstate.runner.initparams import init_params
    from memstate.runner.scenario import load_scenario
    from memstate.runner.variants import Variant

    params = {k: v * 30 for k, v in init_params((196, 32, 10), "he", 0).items()}
    path = tmp_path / "global-max.memstate"
    run(load_scenario("mnist14-relu"), "numpy", steps=8, out=path, variant=Variant(softmax_max="global"),
        params=params, evaluate=False)
    nan_step = next(s.index for s in read_trace(path) if np.isnan(s.tensors["probs"]).any())
    serial, two = check_trace(path, params=params, jobs=1), check_trace(path, params=params, jobs=2)
    assert report(two) == report(serial)
    assert two.first_failure.step == nan_step > 1
    assert any(why == "" for first, _, why in two.ranges if first < nan_step)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.sets(st.integers(3, 15), max_size=5), jobs=st.integers(2, 3))
def test_any_split_gives_the_serial_report(tmp_path_factory, cuts, jobs):
    """Ranges cut anywhere (the first steps stay in the main process): the same report."""
    folder = tmp_path_factory.mktemp("split")
    path, params = writer_trace(folder, "t", steps=16, corrupt=((4, "L2.z"), (11, "L1.dW")))
    serial = check_trace(path, params=params, jobs=1)

    def plan(steps, jobs):
        bounds = [0] + sorted(i for i in cuts if i < len(steps)) + [len(steps)]
        return [tuple(steps[a:b]) for a, b in zip(bounds, bounds[1:]) if b > a]

    with mock.patch("memstate.check.parallel.plan_ranges", plan):
        got = check_trace(path, params=params, jobs=jobs)
    assert report(got) == report(serial)
    assert [k for first, last, _ in got.ranges for k in range(first, last + 1)] == list(range(got.ranges[0][0], 16))


def test_an_unreadable_step_file_is_the_serial_error(tmp_path):
    path, params = writer_trace(tmp_path, "t")
    (path / step_file_name(5)).write_bytes(b"not a safetensors file")
    errors = []
    for jobs in (1, 2):
        with pytest.raises(MemstateError) as caught:
            check_trace(path, params=params, jobs=jobs)
        errors.append(str(caught.value))
    assert errors[0] == errors[1] and step_file_name(5) in errors[0]


def test_a_missing_step_is_a_gap_as_in_the_serial_walk(tmp_path):
    path, params = writer_trace(tmp_path, "t")
    (path / step_file_name(4)).unlink()
    serial, two = check_trace(path, params=params, jobs=1), check_trace(path, params=params, jobs=2)
    assert report(two) == report(serial)
    assert any("steps are not contiguous: step 5 follows step 3" in n for n in two.notes)
    assert all(why == "" for _, _, why in two.ranges)


def test_small_and_jsonl_traces_stay_in_process(tmp_path, monkeypatch):
    path, params = writer_trace(tmp_path, "t")

    def no_workers(*args, **kwargs):
        raise AssertionError("workers started")

    monkeypatch.setattr("memstate.check.parallel.ProcessPoolExecutor", no_workers)
    monkeypatch.setattr("memstate.check.parallel.MIN_BYTES", 1 << 40)
    assert check_trace(path, params=params, jobs=4).ranges == ()
    monkeypatch.setattr("memstate.check.parallel.MIN_BYTES", 0)
    from memstate.formats.convert import convert_trace

    convert_trace(path, tmp_path / "t.memstate.jsonl")
    assert check_trace(tmp_path / "t.memstate.jsonl", params=params, jobs=4).ranges == ()


def test_a_range_checked_on_its_own(tmp_path):
    """The unit of work: a worker's State for steps 3-5, from step 2's parameters and the settled settings."""
    from memstate.check.infer import Spec

    path, params = writer_trace(tmp_path, "t", corrupt=((7, "loss"),))
    serial = check_trace(path, params=params, jobs=1)
    spec = Spec(serial.activation, serial.reduction, serial.learning_rate, act_seen=True, red_seen=True)
    with open_trace(path) as reader:
        unit = parallel.CheckRange(str(path), (3, 4, 5), 2, reader.run_id, spec, 2, "float64", serial.tolerances)
    got = parallel.check_range(unit)
    assert got.why == "" and got.state is not None
    assert got.state.operations == 3 * serial.operations // 8
    assert [k for k, _ in got.state.history] == [3, 4, 5]
    assert got.state.n_failures == 0 and got.state.roots is None
    failing = parallel.check_range(replace(unit, steps=(6, 7), prev=5))  # walked as if a step before failed
    assert failing.why == "" and failing.state.n_failures >= 1 and failing.state.failing_steps == 1
    assert failing.state.first_failure is None and failing.state.full_steps == []
    assert failing.state.failures[0].step == 7 and failing.events[0] == (7, "loss")
    wrong_run = parallel.check_range(replace(unit, run_id="another run"))
    assert wrong_run.state is None and "run" in wrong_run.why


def test_cli_check_jobs_2_in_its_own_process(tmp_path):
    path, params = writer_trace(tmp_path, "t", corrupt=((5, "L1.a"),))
    from check_writer import write_params

    write_params(tmp_path / "p.params.json", params)
    code = ("import sys; import memstate.check.parallel as p; p.MIN_BYTES = 0; from memstate.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    docs = []
    for jobs in ("1", "2"):
        done = subprocess.run([sys.executable, "-c", code, "check", str(path), "--params", str(tmp_path / "p.params.json"),
                               "--format", "json", "--jobs", jobs], capture_output=True, text=True, cwd=ROOT,
                              timeout=300)
        assert done.returncode == 1, done.stderr
        doc = json.loads(done.stdout)
        doc["check"].pop("seconds")
        docs.append(doc)
    assert docs[0] == docs[1]
    assert docs[1]["first_divergence"]["step"] == 5

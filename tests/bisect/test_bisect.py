"""Checkpoint runs, checkpoint bisection, replay and lockstep (memstate.runner.checkpoint, memstate.bisect.search)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from memstate.bisect.search import (
    BisectState,
    RunSpec,
    bisect,
    params_error,
)
from memstate.report.bisect import render_json, render_text, sparkline
from memstate.runner.checkpoint import CheckpointRun, checkpoint_positions
from memstate.cli.main import main
from memstate.runner.initparams import scenario_params
from memstate.runner.harness import run
from memstate.runner.scenario import load_scenario
from memstate.comparator.tolerance import Tolerances
from memstate.formats.trace import read_trace
from memstate.runner.variants import Variant


@pytest.fixture(scope="module")
def small():
    return load_scenario("mnist14-relu")


# ---------------------------------------------------------------- checkpoint runs


@pytest.mark.parametrize("suffix", [".memstate", ".memstate.jsonl"])
def test_checkpoint_run_records_loss_every_step_and_params_every_k(tmp_path, small, suffix):
    path = tmp_path / f"c{suffix}"
    result = run(small, "numpy", steps=10, out=path, checkpoint_every=4, evaluate=False)
    full = run(small, "numpy", steps=10, out=tmp_path / "full.memstate", evaluate=False)
    steps = read_trace(path)
    assert [s.index for s in steps] == list(range(10))
    assert steps[0].names() == ["init.L1.W", "init.L1.b", "init.L2.W", "init.L2.b", "loss", "batch_accuracy"]
    assert steps[1].names() == ["loss", "batch_accuracy"]
    assert steps[3].names() == ["loss", "batch_accuracy", "L1.W", "L1.b", "L2.W", "L2.b"]
    ck = CheckpointRun.load(path)
    assert ck.every == 4 and ck.meta["checkpoint_every"] == 4 and ck.meta["impl"] == "numpy"
    assert ck.checkpoints == (0, 4, 8, 10) == tuple(checkpoint_positions(10, 4))
    assert ck.losses.tolist() == list(result.losses) == list(full.losses)
    assert np.all((ck.accuracies >= 0) & (ck.accuracies <= 1))
    # the checkpoints are the full trace's updated parameters, bit for bit
    full_steps = read_trace(tmp_path / "full.memstate")
    for done in (4, 8, 10):
        for name, value in ck.params(done).items():
            assert value.tobytes() == full_steps[done - 1].tensors[name].tobytes()
    for name, value in scenario_params(small).items():
        assert ck.params(0)[name].tobytes() == value.tobytes()


def test_checkpoint_run_needs_an_output_and_a_positive_k(tmp_path, small, capsys):
    assert main(["run", "mnist14-relu", "--steps", "3", "--checkpoint-every", "2", "-q"]) == 2
    assert "checkpoint_every needs an output path" in capsys.readouterr().err
    assert main(["run", "mnist14-relu", "--steps", "3", "--checkpoint-every", "0", "-q",
                 "-o", str(tmp_path / "x.memstate")]) == 2
    assert "--checkpoint-every 0" in capsys.readouterr().err


def test_bisect_state_finds_the_first_bad_index():
    flags = [False] * 37 + [True] * 63
    state = BisectState(good=-1, bad=99)
    tested = 0
    while not state.done:
        k = state.next
        state = state.mark(k, flags[k])
        tested += 1
    assert (state.good, state.bad) == (36, 37) and tested <= 7
    with pytest.raises(ValueError):
        BisectState(3, 9).mark(9, True)
    assert BisectState(3, 4).done and BisectState(3, 4).next is None


def test_sparkline():
    assert sparkline([0.0, 1e-16, 1e-8, 1.0, math.inf]) == "·▁▅█×"


# ---------------------------------------------------------------- bisect


def test_identical_runs_agree(small):
    r = bisect(RunSpec(small), RunSpec(small), steps=20, checkpoint_every=5)
    assert r.verdict == "agree" and r.exit_code == 0 and not r.episodes and r.steps_replayed == 0
    assert r.checkpoint_steps == (0, 5, 10, 15, 20) and all(e == 0 for e in r.checkpoint_errors)


def test_loss_only_divergence_is_found_from_the_per_step_losses(small):
    # log = "eps" changes the loss, not the gradients (numpy differentiates through probs): the parameters agree
    r = bisect(RunSpec(small), RunSpec(small, variant=Variant(log="eps")), steps=30, checkpoint_every=10)
    assert r.verdict == "divergent" and r.exit_code == 1
    assert r.first_divergent_checkpoint is None and r.first_loss_divergence == 0
    (ep,) = r.episodes
    assert (ep.start, ep.stop) == (0, 10) and ep.reproduced == (True, True)
    assert ep.first_divergence.step == 0 and ep.first_divergence.tensor == "loss"


def test_story_global_max_lockstep_names_the_underflow_step_and_the_bug():
    """The seed story: global-max softmax trains like the correct one, drifts apart by rounding, then a probs
    row underflows to 0/0 = nan. Lockstep calls the early divergence drift and the collapse a local bug."""
    story = load_scenario("story-global-max")
    assert story.variant.softmax_max == "global"
    r = bisect(RunSpec(story, variant=Variant()), RunSpec(story), steps=1500, lockstep=True)
    assert r.verdict == "local" and r.exit_code == 1 and r.reference == "b" and r.break_side == "b"
    f = r.headline
    # the row underflows in step s (probs turns nan), so the parameters and the loss of step s + 1 are nan
    assert f.tensor == "probs" and f.step == r.break_step - 1 and 300 <= f.step < 1500
    assert f.error == math.inf
    # the free-running runs diverge beyond tolerance long before, and lockstep calls that drift
    drift_ep, break_ep = r.episodes
    assert drift_ep.stop <= f.step and drift_ep.local is None
    assert max(drift_ep.lockstep_errors) <= r.rounding_level < max(drift_ep.free_errors)
    assert break_ep.local is f and break_ep.non_finite.step == f.step and break_ep.non_finite.side == "b"
    assert all(all(e.reproduced) for e in r.episodes)
    # the replayed B step shows the underflow: every value of some probs row is 0 or nan
    codes = [d.code for d in f.diagnoses]
    assert "softmax-global-max" in codes, codes
    assert r.diagnosis == "softmax-global-max"
    # and only a small fraction of the steps was recorded in full
    assert r.steps_replayed == sum(e.steps for e in r.episodes) and r.recorded_fraction < 0.06
    text = render_text(r)
    assert "LOCAL" in text and f"step {f.step}" in text and "lockstep" in text
    doc = json.loads(render_json(r))
    assert doc["verdict"] == "local" and doc["headline"]["step"] == f.step
    assert doc["episodes"][1]["lockstep_errors"][f.step - break_ep.start] == "inf"
    assert len(doc["checkpoint_errors"]) == len(doc["checkpoint_steps"]) == len(r.checkpoint_steps)


def test_float32_against_float64_is_drift_not_a_bug():
    a, b = load_scenario("mnist14-relu"), load_scenario("mnist14-relu-f32")
    r = bisect(RunSpec(a), RunSpec(b), steps=300, lockstep=True)
    assert r.verdict == "drift" and r.diagnosis == "drift" and r.exit_code == 1
    assert r.headline is None and all(e.local is None for e in r.episodes)
    # the float64 tolerance sees the float32 rounding at once; lockstep keeps it at float32 rounding level
    assert r.first_divergent_checkpoint == 0 and r.rounding_level == 1e-4
    assert max(max(e.lockstep_errors) for e in r.episodes) < 1e-5
    assert r.checkpoint_errors[-1] > r.checkpoint_errors[0] > 0  # the free-running runs drift apart
    assert "DRIFT" in render_text(r)
    # without lockstep the same pair is only "divergent": the comparator sees float32 rounding
    plain = bisect(RunSpec(a), RunSpec(b), steps=60)
    assert plain.verdict == "divergent" and plain.episodes[0].first_divergence.step == 0
    assert plain.diagnosis == "dtype-float32"


def test_bisection_over_many_checkpoints_matches_a_linear_scan(tmp_path):
    story = load_scenario("story-global-max")
    r = bisect(RunSpec(story, variant=Variant()), RunSpec(story), steps=240, checkpoint_every=2, workdir=tmp_path)
    ra, rb = CheckpointRun.load(tmp_path / "a.memstate"), CheckpointRun.load(tmp_path / "b.memstate")
    linear = next(c for c in ra.checkpoints if params_error(ra.params(c), rb.params(c), Tolerances())[1])
    assert r.first_divergent_checkpoint == linear and r.last_agreeing_checkpoint == linear - 2
    assert len(ra.checkpoints) == 121 and len(r.checkpoint_steps) == 64 and r.checkpoints_loaded < 121
    assert r.episodes[0].traces is not None  # kept in the work directory


# ---------------------------------------------------------------- the command line


def test_cli_bisect_scenarios_and_checkpoint_runs(tmp_path, capsys):
    assert main(["bisect", "mnist14-relu", "mnist14-relu-f32", "--steps", "40", "--lockstep", "-q"]) == 1
    out = capsys.readouterr().out
    assert "DRIFT" in out and "recorded in full" in out

    a, b = tmp_path / "a.memstate", tmp_path / "b.memstate"
    assert main(["run", "mnist14-relu", "--steps", "30", "--checkpoint-every", "10", "-o", str(a), "-q"]) == 0
    assert main(["run", "mnist14-relu", "--steps", "30", "--checkpoint-every", "10", "-o", str(b), "-q",
                 "--variant", "softmax_sum=global"]) == 0
    capsys.readouterr()
    report = tmp_path / "r.json"
    assert main(["bisect", str(a), str(b), "--lockstep", "--format", "json", "-o", str(report)]) == 1
    doc = json.loads(report.read_text())
    assert doc["verdict"] == "local" and doc["headline"]["step"] == 0
    assert doc["headline"]["diagnoses"][0]["code"] == "softmax-global-sum"
    assert doc["b"]["variant"] == {"softmax_sum": "global"}
    assert main(["bisect", str(a), str(b), "--steps", "20", "--format", "json", "-o", str(report), "-q"]) == 1
    doc = json.loads(report.read_text())
    assert doc["steps"] == 20 and doc["checkpoint_steps"] == [0, 10, 20]

    assert main(["bisect", str(a), str(a), "-q"]) == 0
    assert "AGREE" in capsys.readouterr().out

    summed = tmp_path / "sum.memstate"
    assert main(["run", "mnist14-relu", "--steps", "30", "--checkpoint-every", "10", "-o", str(summed), "-q",
                 "--variant", "loss_reduction=sum"]) == 0
    assert main(["bisect", str(a), str(summed), "--lockstep", "--format", "json", "-o", str(report)]) == 1
    doc = json.loads(report.read_text())
    assert doc["verdict"] == "local" and doc["headline"]["step"] == 0 and doc["headline"]["tensor"] == "loss"


def test_cli_bisect_progress_goes_to_stderr(capsys):
    assert main(["bisect", "mnist14-relu", "--variant-b", "softmax_sum=global", "--steps", "20"]) == 1
    captured = capsys.readouterr()
    assert "bisect run a:" in captured.err and "bisect replay:" in captured.err
    assert captured.out.startswith("memstate bisect: DIVERGENT")


@pytest.mark.parametrize(
    "argv, words",
    [
        (["bisect", "mnist14-relu", "--checkpoint-every", "0"], "--checkpoint-every 0"),
        (["bisect", "mnist14-relu", "--impls", "numpy,python,jax"], "--impls"),
        (["bisect", "no-such-scenario"], "no scenario named"),
        (["bisect", "mnist14-relu", "--variant-b", "softmax_max=sideways"], "softmax_max"),
        (["bisect", "mnist14-relu", "mnist784-100-10"], "do not train on the same batches"),
        (["bisect", "a", "b", "c"], "got 3 arguments"),
        (["bisect", "mnist14-relu", "--steps", "0"], "--steps 0"),
    ],
)
def test_cli_bisect_usage_errors_exit_2(argv, words, capsys):
    assert main(argv + ["-q"]) == 2
    assert words in capsys.readouterr().err


def test_cli_bisect_rejects_a_plain_trace(tmp_path, capsys):
    trace = tmp_path / "t.memstate"
    assert main(["run", "mnist14-relu", "--steps", "2", "-o", str(trace), "-q"]) == 0
    assert main(["bisect", str(trace), str(trace), "-q"]) == 2
    assert "not a checkpoint run" in capsys.readouterr().err

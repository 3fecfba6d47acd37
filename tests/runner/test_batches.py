"""Batches files (memstate.runner.batches, `memstate batches`): exactly the batches the harness feeds, as a trace."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from cmd_ports import PY_PORT, tiny_scenario
from memstate.cli.main import main
from memstate.errors import FormatError
from memstate.formats.recorder import Recorder
from memstate.formats.trace import open_trace, read_trace
from memstate.runner.batches import StepBatch, one_hot, read_batches, write_batches

SETTINGS = {"scenario": "mnist14-relu", "layers": [196, 32, 10], "activation": "relu", "loss_reduction": "mean",
            "learning_rate": 0.1, "dtype": "float64", "batch_size": 8}


def test_batches_are_the_harness_batches_with_their_step_numbers(tmp_path, capsys):
    batches, run = tmp_path / "b.jsonl", tmp_path / "numpy.memstate"
    assert main(["batches", "mnist14-relu", "--first-step", "3", "--steps", "4", "-o", str(batches)]) == 0
    assert "steps 3..6 of mnist14-relu" in capsys.readouterr().out
    with open_trace(batches) as t:
        assert t.meta == {"kind": "batches", "scenario": "mnist14-relu", "settings": SETTINGS}
    assert main(["run", "mnist14-relu", "--steps", "7", "-o", str(run), "-q"]) == 0
    fed = {s.index: s.tensors for s in read_trace(run)}  # what numpy was given, as it recorded it
    written = read_trace(batches)
    assert [s.index for s in written] == [3, 4, 5, 6]
    for s in written:
        assert list(s.tensors) == ["x", "y"]
        for name in ("x", "y"):
            assert s.tensors[name].dtype == np.float64
            np.testing.assert_array_equal(s.tensors[name], fed[s.index][name])
    settings_, steps = read_batches(batches)
    assert settings_ == SETTINGS and [b.step for b in steps] == [3, 4, 5, 6]
    np.testing.assert_array_equal(steps[0].labels, np.argmax(fed[3]["y"], axis=1))


def test_a_port_trains_on_a_batches_file_by_hand(tmp_path):
    sc = tiny_scenario(tmp_path, activation="sigmoid", reduction="sum", lr=0.05)
    params, batches, trace = tmp_path / "p.json", tmp_path / "b.jsonl", tmp_path / "t.jsonl"
    assert main(["init-params", str(sc), "-o", str(params)]) == 0
    assert main(["batches", str(sc), "--first-step", "2", "-o", str(batches)]) == 0
    done = subprocess.run([sys.executable, str(PY_PORT), str(params), str(batches), str(trace)], capture_output=True)
    assert done.returncode == 0, done.stderr
    assert [s.index for s in read_trace(trace)] == [2, 3, 4, 5]  # to the scenario's last step (6 steps)
    ref = tmp_path / "ref.jsonl"  # the same steps from the numpy implementation, started at the same params
    assert main(["run", str(sc), "--params", str(params), "-o", str(ref), "-q"]) == 0
    fed = read_trace(ref)
    assert json.loads(batches.read_text().splitlines()[0])["meta"]["settings"]["activation"] == "sigmoid"
    for got, want in zip(read_trace(trace), fed[2:]):
        np.testing.assert_array_equal(got.tensors["x"], want.tensors["x"])
        np.testing.assert_array_equal(got.tensors["y"], want.tensors["y"])


def test_float32_scenarios_write_float32_batches(tmp_path):
    out = tmp_path / "b.jsonl"
    assert main(["batches", "mnist14-relu-f32", "--steps", "2", "-o", str(out)]) == 0
    settings_, steps = read_batches(out)
    assert settings_["dtype"] == "float32" and steps[0].x.dtype == np.float32


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "--steps 0: need at least one step"),
    (["--first-step", "-1"], "--first-step -1"),
    (["--first-step", "999999"], "is past its end"),
])
def test_bad_ranges_are_exit_2(tmp_path, capsys, args, message):
    assert main(["batches", "mnist14-relu", *args, "-o", str(tmp_path / "b.jsonl")]) == 2
    assert message in capsys.readouterr().err


def test_a_trace_that_is_not_a_batches_file_is_refused(tmp_path):
    path = tmp_path / "t.jsonl"
    with Recorder(path, meta={"impl": "x"}) as rec, rec.step(0):
        rec.record("x", np.zeros((1, 2)))
    with pytest.raises(FormatError, match="not a batches file"):
        read_batches(path)


@settings(max_examples=30, deadline=None)
@given(steps=st.lists(st.integers(0, 10_000), min_size=1, max_size=5, unique=True).map(sorted),
       batch=st.integers(1, 5), features=st.integers(1, 6), classes=st.integers(2, 5),
       dtype=st.sampled_from(["float64", "float32"]), seed=st.integers(0, 2**32 - 1))
def test_batches_round_trip(tmp_path_factory, steps, batch, features, classes, dtype, seed):
    rng = np.random.default_rng(seed)
    given_ = [StepBatch(k, rng.normal(size=(batch, features)).astype(dtype), rng.integers(0, classes, size=batch))
              for k in steps]
    cfg = {**SETTINGS, "layers": [features, 3, classes], "dtype": dtype, "batch_size": batch}
    path = tmp_path_factory.mktemp("b") / "b.jsonl"
    assert write_batches(path, cfg, given_) == len(steps)
    got_settings, got = read_batches(path)
    assert got_settings == cfg
    assert [b.step for b in got] == steps
    for a, b in zip(given_, got):
        assert b.x.dtype == np.dtype(dtype) and np.array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.labels, b.labels)
    y = read_trace(path)[0].tensors["y"]
    np.testing.assert_array_equal(y, one_hot(given_[0].labels, classes, dtype))

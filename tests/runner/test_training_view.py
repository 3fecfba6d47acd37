"""The training view in the harness: validation split, evaluations in the trace, runs stopped by a rule."""

from __future__ import annotations

import numpy as np
import pytest

from memstate.errors import ScenarioError
from memstate.formats.trace import open_trace
from memstate.runner.checkpoint import CheckpointRun
from memstate.runner.harness import prepare_data, run
from memstate.runner.scenario import DataSpec, is_evaluation, iter_batches, scenario_from_table
from memstate.runner.stopping import first_stop

TINY = {
    "description": "tiny training view",
    "data": {"size": 14, "train": 240, "validation": 40, "test": 60},
    "model": {"layers": [196, 8, 10]},
    "training": {"steps": 200, "batch_size": 8, "eval_every": 10, "stop": {"early": {"patience": 3}}},
}


def tiny(**training):
    t = {k: dict(v) for k, v in TINY.items() if isinstance(v, dict)}
    t["description"] = TINY["description"]
    t["training"].update(training)
    return scenario_from_table(t, name="tiny")


def test_validation_split_is_the_last_samples_of_the_training_split_and_deterministic():
    spec = DataSpec(size=14, train=240, validation=40, test=60)
    whole = prepare_data(DataSpec(size=14, train=240, test=60))
    prepare_data.cache_clear()
    a = prepare_data(spec)
    prepare_data.cache_clear()
    b = prepare_data(spec)
    assert a.train_x.shape == (200, 196) and a.validation_x.shape == (40, 196)
    np.testing.assert_array_equal(a.validation_x, b.validation_x)
    np.testing.assert_array_equal(a.validation_y, b.validation_y)
    np.testing.assert_array_equal(a.train_x, whole.train_x[:200])
    np.testing.assert_array_equal(a.validation_x, whole.train_x[200:])
    np.testing.assert_array_equal(a.test_x, whole.test_x)  # the test split does not move


@pytest.mark.parametrize("change, words", [
    ({"training": {"steps": 5, "stop": {"early": {"patiense": 2}}}},
     r"unknown key 'training.stop.early.patiense'; did you mean 'training.stop.early.patience'"),
    ({"training": {"steps": 5, "stop": {"platau": {}}}}, r"did you mean 'training.stop.plateau'"),
    ({"training": {"steps": 5, "stop": {"early": {}}}, "data": {"size": 14, "train": 100}},
     r"training.stop.early compares the training loss with the validation loss: set data.validation"),
    ({"training": {"steps": 5, "stop": {"plateau": {"window": 1}}}}, r"training.stop.plateau.window = 1 must be"),
    ({"training": {"steps": 5, "stop": {"plateau": {"threshold": 0}}}}, r"threshold = 0.0 must be a positive"),
    ({"training": {"steps": 5, "eval_every": "epochs"}}, r"training.eval_every = 'epochs' must be a number"),
    ({"data": {"size": 14, "train": 100, "validation": 100}}, r"data.validation = 100 must be from 0 to"),
    ({"data": {"size": 14, "train": 100, "validation": 95}}, r"training.batch_size = 8 is larger than the 5"),
    ({"training": {"steps": 5, "stop": 3}}, r"\[training.stop\] must be a table"),
    ({"sweep": {"set": ["batch_size"]}}, r"sweep.set must be a list"),
])
def test_bad_training_view_keys_name_the_key(change, words):
    t = {"description": "x", "data": {"size": 14, "train": 100, "validation": 20}, "model": {"layers": [196, 8, 10]},
         "training": {"steps": 5}}
    t.update(change)
    with pytest.raises(ScenarioError, match=words):
        scenario_from_table(t, name="x")


def test_defaults_of_the_rules():
    s = scenario_from_table({"description": "x", "data": {"size": 14, "train": 100, "validation": 20},
                             "model": {"layers": [196, 8, 10]},
                             "training": {"steps": 5, "stop": {"early": {}, "plateau": {}}}}, name="x")
    assert (s.training.stop.early.patience, s.training.stop.plateau.window,
            s.training.stop.plateau.threshold) == (5, 10, 0.001)
    assert s.meta()["stop"] == {"early": {"patience": 5}, "plateau": {"window": 10, "threshold": 0.001}}


def test_eval_every_epoch_evaluates_at_each_epochs_last_batch():
    s = tiny(eval_every="epoch", steps=60)
    points = [b.step for b in iter_batches(s, 200) if is_evaluation(s, b, 200, 60)]
    assert points == [24, 49, 59]  # 200 // 8 = 25 batches an epoch, and the last step


def test_a_stopped_run_records_evaluations_and_the_rule_and_ends_there(tmp_path):
    s = tiny()
    out = tmp_path / "run.memstate.jsonl"
    r = run(s, "numpy", out=out)
    assert r.stop is not None and r.stop.rule == "early" and r.steps == r.stop.step + 1 < 200
    assert r.stop.step % 10 == 9 and r.stop.value == 3.0 and r.stop.epoch == r.stop.step // 25 + 1
    # the rule fires exactly where the pure function says on the recorded evaluations
    assert first_stop(r.training, s.training.stop) == r.stop.__class__(**{**r.stop.__dict__, "epoch": None})
    with open_trace(out) as t:
        assert t.meta["stop"] == {"early": {"patience": 3}} and t.meta["validation"] == 40
        steps = list(t)
    assert [s.index for s in steps][-1] == r.stop.step
    last = steps[-1].tensors
    names = list(last)
    assert names[-6:] == ["eval.train_loss", "eval.train_accuracy", "eval.validation_loss",
                          "eval.validation_accuracy", "eval.test_accuracy", "stop.early"]
    assert names.index("L2.b") < names.index("eval.train_loss")
    assert float(last["eval.validation_loss"]) == r.training[-1].validation_loss
    assert "eval.train_loss" not in steps[0].tensors and "eval.train_loss" in steps[9].tensors
    # training loss is the mean of the batch losses since the previous evaluation
    batch = [float(steps[k].tensors["loss"]) for k in range(r.stop.step - 9, r.stop.step + 1)]
    assert float(last["eval.train_loss"]) == pytest.approx(np.mean(batch), rel=1e-15)


def test_every_implementation_stops_at_the_same_step():
    s = tiny(steps=60, stop={"early": {"patience": 2}})
    results = [run(s, impl, evaluate=False) for impl in ("numpy", "python")]
    assert results[0].stop.step == results[1].stop.step
    assert results[0].training[-1].validation_loss == pytest.approx(results[1].training[-1].validation_loss, rel=1e-12)


def test_a_checkpoint_run_keeps_the_parameters_where_it_stopped(tmp_path):
    s = tiny()
    full = run(s, "numpy", out=tmp_path / "f.memstate.jsonl")
    r = run(s, "numpy", out=tmp_path / "c.memstate", checkpoint_every=7)
    cr = CheckpointRun.load(tmp_path / "c.memstate")
    assert cr.steps == r.steps == full.steps and cr.checkpoints[-1] == r.steps and r.steps % 7 != 0
    with open_trace(tmp_path / "f.memstate.jsonl") as t:
        last = list(t)[-1].tensors
    for name in ("L1.W", "L2.b"):
        np.testing.assert_array_equal(cr.params(r.steps)[name], last[name])
    with open_trace(tmp_path / "c.memstate") as t:
        names = list(list(t)[-1].tensors)
    assert names.index("L2.b") < names.index("eval.train_loss") < names.index("stop.early")


def test_without_the_training_view_nothing_changes(tmp_path):
    s = scenario_from_table({"description": "x", "data": {"size": 14, "train": 100}, "model": {"layers": [196, 8, 10]},
                             "training": {"steps": 12, "eval_every": 5}}, name="x")
    r = run(s, "numpy", out=tmp_path / "t.memstate.jsonl")
    assert r.training == () and r.stop is None and r.steps == 12
    with open_trace(tmp_path / "t.memstate.jsonl") as t:
        assert "stop" not in t.meta and not any(n.startswith("eval.") for st in t for n in st.tensors)

"""Scenario files: the bundled ones load, bad keys and values are errors that name the key."""

from __future__ import annotations

import pytest

from memstate.errors import ScenarioError
from memstate.runner.scenario import iter_batches, list_scenarios, load_scenario, scenario_from_table

GOOD = {
    "description": "test",
    "data": {"size": 14, "train": 100, "test": 10},
    "model": {"layers": [196, 16, 10]},
    "training": {"steps": 5, "batch_size": 8},
}


def table(**changes):
    t = {k: dict(v) if isinstance(v, dict) else v for k, v in GOOD.items()}
    for dotted, value in changes.items():
        section, _, key = dotted.partition("__")
        if key:
            t.setdefault(section, {})[key] = value
        else:
            t[section] = value
    return t


@pytest.mark.parametrize("name", list_scenarios())
def test_every_bundled_scenario_loads(name):
    s = load_scenario(name)
    assert s.name == name and s.description
    assert s.model.layers[0] == s.data.size**2


def test_small_scenario_is_what_the_issue_names():
    s = load_scenario("mnist14-relu")
    assert s.model.layers == (196, 32, 10)
    assert (s.model.activation, s.model.init, s.training.batch_size) == ("relu", "he", 8)
    assert s.data.size == 14 and s.data.binarize


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"model__activaton": "relu"}, r"unknown key 'model.activaton'; did you mean 'model.activation'"),
        ({"model__activation": "tanh"}, r"model.activation = 'tanh' must be one of relu, sigmoid, shifted-relu"),
        ({"model__layers": [100, 10]}, r"model.layers starts with 100 but the data has 14x14 = 196 inputs"),
        ({"training__learning_rate": -1.0}, r"training.learning_rate = -1.0 must be a positive number"),
        ({"training__epochs": 2}, r"training needs exactly one of steps or epochs"),
        ({"data__size": 5}, r"data.size = 5 must divide the cropped side 28"),
        ({"training__batch_size": "8"}, r"training.batch_size must be an integer"),
        ({"dtype": "float16"}, r"dtype = 'float16' is not one of float64, float32"),
        ({"variant": {"softmax_max": "batch"}}, r"softmax_max = 'batch' is not one of row, global, none"),
        ({"variant": {"dtype_mix": "L7"}}, r"variant.dtype_mix = 'L7' names no layer"),
        ({"bogus": 1}, r"unknown key 'bogus'"),
    ],
)
def test_bad_scenarios_name_the_key(changes, words):
    with pytest.raises(ScenarioError, match=words):
        scenario_from_table(table(**changes), name="t")


def test_missing_description_is_an_error():
    t = table()
    del t["description"]
    with pytest.raises(ScenarioError, match="'description' is required"):
        scenario_from_table(t, name="t")


def test_bad_toml_and_unknown_name(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n")
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load_scenario(bad)
    with pytest.raises(ScenarioError, match="no scenario named 'nope'; bundled scenarios: .*mnist14-relu"):
        load_scenario("nope")


def test_batch_schedule_is_deterministic_and_ramps():
    s = scenario_from_table(table(training={"epochs": 3, "batch_size": 8, "batch_size_cap": 16}), name="t")
    batches = list(iter_batches(s, 100))
    sizes = [len(b.indices) for b in batches]
    # epoch 0: 12 batches of 8; epoch 1: 6 of 16; epoch 2: capped at 16, 6 more
    assert sizes == [8] * 12 + [16] * 6 + [16] * 6
    assert s.total_steps(100) == 24
    again = list(iter_batches(s, 100))
    assert all((a.indices == b.indices).all() for a, b in zip(batches, again))
    first_epoch = sorted(int(i) for b in batches[:12] for i in b.indices)
    assert len(set(first_epoch)) == 96  # no sample twice within an epoch


@pytest.mark.parametrize("name", list_scenarios())
def test_every_bundled_scenario_runs(name):
    from memstate.runner.harness import run

    s = load_scenario(name)
    result = run(s, "numpy", steps=2, evaluate=False)
    assert result.steps == 2 and len(result.losses) == 2


def test_variant_overrides_from_the_command_line():
    from memstate.runner.variants import Variant

    v = Variant(round_params=8).with_overrides(["softmax_max=none", "round_params=none", "dtype_mix=L1"])
    assert (v.softmax_max, v.round_params, v.dtype_mix) == ("none", None, "L1")
    assert v.changes() == {"softmax_max": "none", "dtype_mix": "L1"}
    assert Variant().with_overrides(["round_params=8"]).round_params == 8

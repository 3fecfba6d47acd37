"""memstate sweep: the grid, the table's contents, identical files on a second run, errors that name the key."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from memstate.cli.main import main
from memstate.errors import ScenarioError
from memstate.runner.harness import run
from memstate.runner.scenario import load_scenario
from memstate.runner.sweep import parse_set, parse_value, plan, split_values

SCENARIO = """\
description = "tiny sweep"
[data]
size = 14
train = 240
validation = 40
test = 40
[model]
layers = [196, 8, 10]
[training]
steps = 200
batch_size = 8
eval_every = 10
[training.stop.early]
patience = 2
"""


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    (d / "tiny.toml").write_text(SCENARIO)
    args = ["sweep", str(d / "tiny.toml"), "--set", "training.batch_size=8,16", "--steps", "80", "-q"]
    assert main([*args, "-o", str(d / "one"), "--jobs", "2"]) == 0
    assert main([*args, "-o", str(d / "two"), "--jobs", "1"]) == 0
    return d


def test_the_table_holds_each_runs_stop_and_final_figures(swept):
    doc = json.loads((swept / "one" / "sweep.json").read_text())
    assert [r["settings"] for r in doc["runs"]] == [{"training.batch_size": "8"}, {"training.batch_size": "16"}]
    text = (swept / "one" / "sweep.txt").read_text()
    base = load_scenario(swept / "tiny.toml")
    from dataclasses import replace

    for r, bs in zip(doc["runs"], (8, 16)):
        expect = run(replace(base, training=replace(base.training, batch_size=bs)), "numpy", steps=80,
                     evaluate=False)
        assert r["steps"] == expect.steps and r["planned_steps"] == 80
        assert r["stop"] == (None if expect.stop is None else {"step": expect.stop.step, "rule": "early",
                                                                "value": 2.0, "epoch": expect.stop.epoch})
        final = expect.training[-1]
        assert r["final"]["validation_loss"] == final.validation_loss
        assert r["test_accuracy"] == final.test_accuracy
        stop = f"early @ {expect.stop.step} (epoch {expect.stop.epoch})" if expect.stop else "-"
        row = next(line for line in text.splitlines() if line.startswith(f"{r['index'] + 1} "))
        assert row.split() [:3] == [str(r["index"] + 1), str(bs), f"{expect.steps}/80"]
        assert stop in row and f"{final.validation_loss:.4g}" in row and f"{final.test_accuracy:.2%}" in row


def test_the_same_sweep_twice_writes_identical_files(swept):
    for name in ("sweep.txt", "sweep.json", "sweep.html"):
        assert (swept / "one" / name).read_bytes() == (swept / "two" / name).read_bytes()


def test_html_page_has_the_curves_and_the_final_accuracies(swept):
    html = (swept / "one" / "sweep.html").read_text()
    assert html.count("<svg") == 3  # loss, accuracy, final-accuracy bars
    assert "batch_size=8 train" in html and "batch_size=16 validation" in html


def test_bad_settings_name_the_key_and_the_grid_point(tmp_path, capsys):
    (tmp_path / "tiny.toml").write_text(SCENARIO)
    assert main(["sweep", str(tmp_path / "tiny.toml"), "--set", "training.batch_sise=8", "-o", str(tmp_path)]) == 2
    assert "did you mean 'training.batch_size'" in capsys.readouterr().err
    assert main(["sweep", str(tmp_path / "tiny.toml"), "--set", "training.batch_size=8,1000", "-o",
                 str(tmp_path)]) == 2
    assert "(in the grid point training.batch_size=1000)" in capsys.readouterr().err
    assert main(["sweep", str(tmp_path / "tiny.toml"), "--set", "batch_size", "-o", str(tmp_path)]) == 2
    assert "write SECTION.KEY=V1,V2" in capsys.readouterr().err


def test_values_split_outside_brackets_and_parse_as_toml_or_words():
    assert split_values("[784,100,10],[784,800,800,10]") == ["[784,100,10]", "[784,800,800,10]"]
    assert split_values("he,uniform(0,1), xavier") == ["he", "uniform(0,1)", "xavier"]
    assert [parse_value(v) for v in ("8", "0.05", "[1,2]", "true", "he", "uniform(0,1)", '"x"')] == \
        [8, 0.05, [1, 2], True, "he", "uniform(0,1)", "x"]
    axis = parse_set("model.layers=[196,8,10],[196,4,4,10]")
    assert axis.values == ([196, 8, 10], [196, 4, 4, 10])


def test_the_grid_is_the_product_first_axis_slowest(tmp_path):
    (tmp_path / "tiny.toml").write_text(SCENARIO)
    jobs = plan(str(tmp_path / "tiny.toml"), [parse_set("training.batch_size=8,16"),
                                              parse_set("model.init=he,uniform(0,1)")], ["numpy", "python"])
    assert [(j.scenario.training.batch_size, j.scenario.model.init, j.impl) for j in jobs][:5] == [
        (8, "he", "numpy"), (8, "he", "python"), (8, "uniform(0,1)", "numpy"), (8, "uniform(0,1)", "python"),
        (16, "he", "numpy")]
    with pytest.raises(ScenarioError, match="twice"):
        plan(str(tmp_path / "tiny.toml"), [parse_set("training.steps=1"), parse_set("training.steps=2")], ["numpy"])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 999).map(str),
                          st.lists(st.integers(0, 99), min_size=1, max_size=4).map(lambda v: f"[{','.join(map(str, v))}]"),
                          st.sampled_from(["he", "uniform(0,1)", "uniform(-1,1)"])), min_size=1, max_size=5))
def test_split_values_inverts_joining(values):
    assert split_values(",".join(values)) == values


@pytest.mark.parametrize("name", ["sweep-batch-size", "sweep-architecture", "sweep-init"])
def test_bundled_experiments_carry_their_grid(name):
    s = load_scenario(name)
    assert s.sweep and s.evaluates
    jobs = plan(name, [parse_set(x) for x in s.sweep], ["numpy"])
    assert len(jobs) >= 2 and len({j.scenario for j in jobs}) == len(jobs)

"""The training view of a comparison: runs that stop differently, one-sided evaluations, where curves part."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memstate.cli.main import main
from memstate.comparator.compare import compare
from memstate.formats.recorder import Recorder
from memstate.formats.trace import open_trace
from memstate.report import json as report_json
from memstate.report import text as report_text
from memstate.runner.harness import run
from memstate.runner.scenario import scenario_from_table


def tiny(patience: int, name: str):
    return scenario_from_table({
        "description": "tiny", "data": {"size": 14, "train": 240, "validation": 40, "test": 40},
        "model": {"layers": [196, 6, 10]},
        "training": {"steps": 120, "batch_size": 8, "eval_every": 5, "stop": {"early": {"patience": patience}}},
    }, name=name)


@pytest.fixture(scope="module")
def stopped_runs(tmp_path_factory):
    """The same run under patience 2 and patience 4: identical values until the first one stops."""
    d = tmp_path_factory.mktemp("curves")
    ra = run(tiny(2, "p2"), "numpy", out=d / "a.memstate.jsonl", evaluate=False)
    rb = run(tiny(4, "p4"), "numpy", out=d / "b.memstate.jsonl", evaluate=False)
    assert ra.stop is not None and (rb.stop is None or rb.stop.step > ra.stop.step)
    return d, ra, rb


def test_runs_that_stop_differently_diverge_at_the_stop(stopped_runs):
    d, ra, rb = stopped_runs
    c = compare(d / "a.memstate.jsonl", d / "b.memstate.jsonl")
    assert c.verdict == "diverge"
    f = c.first_divergence
    assert (f.kind, f.step, f.name) == ("missing", ra.stop.step, "stop.early")
    assert f.detail == f"A stops after step {ra.stop.step} by the early rule; B does not stop there"
    assert c.curves.a.stop.step == ra.stop.step and c.curves.stops_differ
    assert c.curves.loss_parts is None and c.curves.visible_parts is None  # the curves are the same until then
    kinds = {x.kind: x for x in c.findings}
    assert "truncated" not in kinds and "missing-name" not in kinds
    assert kinds["stop"].severity == "error"
    b_end = rb.stop.step if rb.stop else 119
    assert f"B goes on for {b_end - ra.stop.step} more steps" in kinds["stop"].message
    text = report_text.render(c)
    assert "the runs stop differently" in text
    assert f"A stops after step {ra.stop.step} ({ra.stop.step + 1} steps) by the early rule" in text


def test_the_cli_says_so_in_text_and_json(stopped_runs, capsys):
    d, ra, rb = stopped_runs
    assert main(["diff", str(d / "a.memstate.jsonl"), str(d / "b.memstate.jsonl")]) == 1
    out = capsys.readouterr().out
    assert f"DIVERGE at step {ra.stop.step}: A stops after step {ra.stop.step} by the early rule" in out
    assert main(["diff", str(d / "a.memstate.jsonl"), str(d / "b.memstate.jsonl"), "--format", "json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    t = doc["training"]
    assert t["stops_differ"] is True
    assert t["a"]["stop"] == {"step": ra.stop.step, "rule": "early", "value": 2.0}
    assert t["b"]["stop"] == (None if rb.stop is None else {"step": rb.stop.step, "rule": "early", "value": 4.0})
    assert [p[0] for p in t["a"]["evaluations"]["validation_loss"]] == list(range(4, ra.stop.step + 1, 5))
    assert t["a"]["evaluations"]["validation_loss"][-1][1] == ra.training[-1].validation_loss
    assert any(f["kind"] == "stop" and f["severity"] == "error" for f in doc["findings"])


def test_html_report_draws_both_runs_curves_with_the_divergence_marked(stopped_runs, tmp_path):
    import xml.etree.ElementTree as ET
    import re

    d, ra, _ = stopped_runs
    out = tmp_path / "r.html"
    assert main(["diff", str(d / "a.memstate.jsonl"), str(d / "b.memstate.jsonl"), "--format", "html",
                 "-o", str(out)]) == 1
    html = out.read_text()
    section = html[html.index("<h2 id='training'>"):html.index("<h2 id='chart'>")]
    svgs = re.findall(r"<svg.*?</svg>", section, re.S)
    assert len(svgs) == 2  # loss and accuracy, side by side
    for svg in svgs:
        root = ET.fromstring(svg)
        titles = [t.text for t in root.iter("{http://www.w3.org/2000/svg}title")]
        assert f"first divergence: step {ra.stop.step}, stop.early" in titles
        assert any(t.startswith("A ") for t in titles) and any(t.startswith("B ") for t in titles)
    assert "The runs stop differently." in section


def test_a_run_agrees_with_itself_and_is_not_truncated(stopped_runs):
    d, ra, _ = stopped_runs
    c = compare(d / "a.memstate.jsonl", d / "a.memstate.jsonl")
    assert c.verdict == "agree" and not c.findings
    assert not c.curves.stops_differ and c.curves.a.stop.rule == "early"


def _drop_evals(src: Path, dst: Path) -> None:
    with open_trace(src) as t, Recorder(dst, meta=dict(t.meta)) as rec:
        for step in t:
            with rec.step(step.index):
                for name, value in step.tensors.items():
                    if not name.startswith("eval."):
                        rec.record(name, value)


def test_evaluations_on_one_side_only_are_notes_not_divergences(stopped_runs, tmp_path):
    d, _, _ = stopped_runs
    _drop_evals(d / "a.memstate.jsonl", tmp_path / "plain.memstate.jsonl")
    c = compare(d / "a.memstate.jsonl", tmp_path / "plain.memstate.jsonl")
    assert c.verdict == "agree"
    assert {x.kind: x.severity for x in c.findings} == {"eval-one-sided": "info"}


def _trace(path: Path, train: list[float], stop_at: int | None, rule: str = "early") -> None:
    with Recorder(path, meta={"impl": "hand", "steps": len(train)}) as rec:
        for k, v in enumerate(train):
            with rec.step(k):
                rec.record("loss", np.float64(v))
                rec.record("eval.train_loss", np.float64(v))
                if k == stop_at:
                    rec.record(f"stop.{rule}", np.float64(1.0))
            if k == stop_at:
                break


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.floats(0.1, 10), min_size=2, max_size=12), st.data())
def test_stops_and_parting_are_found_where_they_are(train, data):
    n = len(train)
    other = [v * data.draw(st.sampled_from([1.0, 1.0, 1.005, 1.5])) for v in train]
    stop_a = data.draw(st.one_of(st.none(), st.integers(0, n - 1)))
    stop_b = data.draw(st.one_of(st.none(), st.integers(0, n - 1)))
    rule_b = data.draw(st.sampled_from(["early", "plateau"]))
    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp) / "a.jsonl", Path(tmp) / "b.jsonl"
        _trace(a, train, stop_a)
        _trace(b, other, stop_b, rule_b)
        c = compare(a, b)
    both = min(stop_a if stop_a is not None else n - 1, stop_b if stop_b is not None else n - 1)
    differ = (stop_a, "early" if stop_a is not None else None) != (stop_b, rule_b if stop_b is not None else None)
    assert c.curves.stops_differ == differ
    if differ:
        assert c.verdict == "diverge" and any(x.kind == "stop" for x in c.findings)
    rel = [abs(x - y) / max(x, y) for x, y in zip(train[:both + 1], other[:both + 1])]
    assert c.curves.visible_parts == next((k for k, r in enumerate(rel) if r > 0.01), None)
    assert c.curves.loss_parts == next((k for k, (x, y) in enumerate(zip(train, other[:both + 1]))
                                        if abs(x - y) > 1e-12 + 1e-10 * max(x, y)), None)
    assert not any(x.kind == "truncated" for x in c.findings if x.side in (
        "a" if stop_a is not None else "", "b" if stop_b is not None else ""))

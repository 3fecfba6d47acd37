"""A foreign port (tests/ports/reference.py: plain Python, no memstate, no evaluations, no stopping) against
our run that stopped by a rule: the common steps are compared, the stop is a warning, not a divergence."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from memstate.comparator.compare import compare
from memstate.formats.params import write_params
from memstate.formats.recorder import Recorder
from memstate.formats.trace import open_trace
from memstate.runner.harness import run
from memstate.runner.initparams import scenario_params
from memstate.runner.scenario import scenario_from_table

PORT = Path(__file__).resolve().parents[1] / "ports" / "reference.py"


def _batches(trace: Path, out: Path, s) -> None:
    settings = {"layers": list(s.model.layers), "activation": s.model.activation,
                "loss_reduction": s.training.loss_reduction, "learning_rate": s.training.learning_rate}
    with open_trace(trace) as t, Recorder(out, meta={"settings": settings}) as rec:
        for step in t:
            with rec.step(step.index):
                rec.record("x", step.tensors["x"])
                rec.record("y", step.tensors["y"])


def test_port_without_the_training_view_against_a_stopped_run(tmp_path):
    s = scenario_from_table({
        "description": "tiny", "data": {"size": 14, "train": 160, "validation": 40, "test": 0},
        "model": {"layers": [196, 6, 10]},
        "training": {"steps": 200, "batch_size": 8, "eval_every": 5, "stop": {"early": {"patience": 2}}},
    }, name="tiny")
    ours = tmp_path / "ours.memstate.jsonl"
    r = run(s, "numpy", out=ours, evaluate=False)
    assert r.stop is not None and r.steps < 200
    write_params(tmp_path / "p.params.json", scenario_params(s))
    _batches(ours, tmp_path / "b.jsonl", s)
    port = tmp_path / "port.memstate.jsonl"
    for bug, name in ((None, port), ("softmax-global-sum", tmp_path / "bug.memstate.jsonl")):
        cmd = [sys.executable, str(PORT), str(tmp_path / "p.params.json"), str(tmp_path / "b.jsonl"), str(name)]
        subprocess.run(cmd + (["--bug", bug] if bug else []), check=True, capture_output=True)

    c = compare(ours, port)
    assert c.verdict == "agree" and c.steps_compared == r.steps
    kinds = {x.kind: x for x in c.findings}
    assert set(kinds) == {"eval-one-sided", "stop"}
    assert kinds["stop"].severity == "warning" and "B records no evaluations" in kinds["stop"].message
    assert c.curves.a.stop.step == r.stop.step and c.curves.b.stop is None

    bug = compare(ours, tmp_path / "bug.memstate.jsonl")
    assert bug.verdict == "diverge"
    assert (bug.first_divergence.step, bug.first_divergence.name) == (0, "probs")
    assert bug.curves.loss_parts == 0 and bug.curves.visible_parts == 0

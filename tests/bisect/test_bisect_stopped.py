"""A run stopped by a rule (docs/training.md) is bisected like any other."""

from __future__ import annotations

import json

from memstate.bisect.search import RunSpec, bisect
from memstate.cli.main import main
from memstate.runner.checkpoint import CheckpointRun
from memstate.runner.scenario import load_scenario

SCENARIO = """\
description = "tiny, stopped early"
[data]
size = 14
train = 240
validation = 40
test = 0
[model]
layers = [196, 8, 10]
[training]
steps = 200
batch_size = 8
eval_every = 10
[training.stop.early]
patience = 2
"""


def test_stopped_checkpoint_runs_bisect_to_the_bug(tmp_path, capsys):
    (tmp_path / "tiny.toml").write_text(SCENARIO)
    a, b = tmp_path / "a.memstate", tmp_path / "b.memstate"
    assert main(["run", str(tmp_path / "tiny.toml"), "--checkpoint-every", "7", "-o", str(a), "-q"]) == 0
    assert main(["run", str(tmp_path / "tiny.toml"), "--checkpoint-every", "7", "-o", str(b), "-q",
                 "--variant", "softmax_sum=global"]) == 0
    ra, rb = CheckpointRun.load(a), CheckpointRun.load(b)
    assert ra.steps < 200 and ra.checkpoints[-1] == ra.steps  # stopped, with its last parameters kept
    capsys.readouterr()
    report = tmp_path / "r.json"
    assert main(["bisect", str(a), str(b), "--lockstep", "--format", "json", "-o", str(report), "-q"]) == 1
    doc = json.loads(report.read_text())
    assert doc["steps"] == min(ra.steps, rb.steps)
    assert doc["verdict"] == "local" and doc["headline"]["step"] == 0
    assert doc["headline"]["diagnoses"][0]["code"] == "softmax-global-sum"
    assert main(["bisect", str(a), str(a), "-q"]) == 0


def test_bisect_of_scenarios_whose_runs_stop():
    # runs made by bisect itself stop by the rule too; the identical sides agree over the steps they have
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tiny.toml"
        path.write_text(SCENARIO)
        s = load_scenario(path)
        r = bisect(RunSpec(s), RunSpec(s), checkpoint_every=5)
    assert r.verdict == "agree" and r.steps < 200 and r.steps % 10 == 0

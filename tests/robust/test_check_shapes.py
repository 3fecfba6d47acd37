"""`memstate check` on canonical traces whose tensors do not fit together (issue 13): the tensor whose own
operation has the wrong shape is the finding (exit 1); operations fed by it are skipped with a note, never a crash."""

from __future__ import annotations

import numpy as np
import pytest

from memstate.cli.main import main
from memstate.formats.recorder import Recorder
from memstate.formats.trace import read_trace


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("shapes")
    assert main(["run", "mnist14-relu", "--steps", "2", "-q", "--no-eval", "-o", str(d / "base.memstate")]) == 0
    assert main(["init-params", "mnist14-relu", "-o", str(d / "p.params.json")]) == 0
    return d, read_trace(d / "base.memstate")


def _damaged(d, steps, name, how):
    path = d / f"{name}-{how}.memstate.jsonl"
    with Recorder(path, meta={"steps": 2, "activation": "relu"}) as rec:
        for s in steps:
            with rec.step(s.index):
                for n, a in s.tensors.items():
                    if n == name:
                        a = {"empty-batch": lambda a: np.zeros((0,) + a.shape[1:]), "flat": lambda a: a.reshape(-1),
                             "transposed": lambda a: a.T.copy(), "scalar": lambda a: np.float64(3.0)}[how](a)
                    rec.record(n, a)
    return path


@pytest.mark.parametrize("name, how, first", [
    ("L1.z", "empty-batch", "step 0, L1.z"),
    ("x", "empty-batch", "step 0, L1.z"),  # the batch is what L1.z is computed from
    ("L1.a", "empty-batch", "step 0, L1.a"),
    ("L2.dz", "empty-batch", "step 0, L2.dz"),
    ("L2.dz", "flat", "step 0, L2.dz"),
    ("L1.dW", "transposed", "step 0, L1.dW"),
    ("L2.z", "scalar", "step 0, L2.z"),
])
def test_misshapen_tensor_is_a_finding_not_a_crash(run, capsys, name, how, first):
    d, steps = run
    capsys.readouterr()
    assert main(["check", str(_damaged(d, steps, name, how)), "--params", str(d / "p.params.json")]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"FAIL at {first}:") and "shape" in out

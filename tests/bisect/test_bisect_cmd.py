"""`memstate bisect` with a `cmd:` side: checkpoint runs, replay and lockstep through the port's command line,
and what bisect says when a side cannot be replayed (it still reports what its search found)."""

from __future__ import annotations

import json
import os
import stat
import sys
import tempfile
from pathlib import Path

import pytest

from cmd_ports import PY_PORT, py_cmd, script_cmd, tiny_scenario
from memstate.cli.main import main

BUG = ("--bug", "softmax-global-sum", "--bug-from-step", "4")


@pytest.fixture(autouse=True)
def _temp_here(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def _bisect_json(capsys, *args: str) -> tuple[int, dict, str]:
    capsys.readouterr()
    rc = main(["bisect", *args, "--format", "json"])
    out, err = capsys.readouterr()
    return rc, json.loads(out), err


def test_a_port_with_a_bug_from_step_k_is_local_at_step_k(tmp_path, capsys):
    """The issue's acceptance: bisect mnist14-relu --impls 'numpy,cmd:python3 port.py ...' --lockstep."""
    rc, r, err = _bisect_json(capsys, "mnist14-relu", "--impls", "numpy," + py_cmd(*BUG), "--steps", "6",
                              "--checkpoint-every", "3", "--lockstep")
    assert rc == 1 and r["verdict"] == "local" and r["diagnosis"] == "softmax-global-sum"
    assert (r["headline"]["step"], r["headline"]["tensor"]) == (4, "probs")
    (ep,) = r["episodes"]
    assert (ep["start"], ep["stop"]) == (3, 6) and ep["reproduced"] == [True, True]
    assert ep["first_divergence"]["step"] == 4 and ep["local"]["step"] == 4
    assert "cannot be replayed" not in err


def test_a_clean_port_agrees_with_numpy(tmp_path, capsys):
    rc, r, _ = _bisect_json(capsys, str(tiny_scenario(tmp_path)), "--impls", "numpy," + py_cmd(),
                            "--checkpoint-every", "2", "--lockstep")
    assert rc == 0 and r["verdict"] == "agree" and r["steps"] == 6


DROP_LOSS = """import subprocess, sys
rc = subprocess.call([sys.executable, {port!r}] + sys.argv[1:])
path = sys.argv[3]
lines = [l for l in open(path).read().splitlines() if '"name": "loss"' not in l]
open(path, "w").write("\\n".join(lines) + "\\n")
sys.exit(rc)
"""


def test_a_port_without_a_loss_is_bisected_on_its_parameters(tmp_path, capsys):
    script = tmp_path / "no_loss.py"
    script.write_text(DROP_LOSS.format(port=str(PY_PORT)), encoding="utf-8")
    cmd = script_cmd(script) + " " + " ".join(BUG)
    rc, r, _ = _bisect_json(capsys, str(tiny_scenario(tmp_path)), "--impls", "numpy," + cmd,
                            "--checkpoint-every", "3", "--lockstep")
    assert rc == 1 and r["verdict"] == "local" and r["headline"]["step"] == 4
    assert r["break_step"] is None and r["first_loss_divergence"] is None
    assert any("records no loss" in w for w in r["warnings"])


def _executable_port(folder: Path) -> Path:
    exe = folder / "port_exe.py"
    exe.write_text(f"#!{sys.executable}\n" + PY_PORT.read_text(encoding="utf-8"), encoding="utf-8")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe


def test_a_side_that_cannot_be_replayed_is_said_before_the_search_and_the_search_is_kept(tmp_path, capsys):
    sc = tiny_scenario(tmp_path)
    exe = _executable_port(tmp_path)
    a, b = tmp_path / "a.memstate", tmp_path / "b.memstate"
    assert main(["run", str(sc), "--checkpoint-every", "3", "-o", str(a), "-q"]) == 0
    cmd = f"cmd:{exe} {{params}} {{batches}} {{trace}} " + " ".join(BUG)
    assert main(["run", str(sc), "--impl", cmd, "--checkpoint-every", "3", "-o", str(b), "-q"]) == 0
    os.remove(exe)  # the port moved away since the run: its run cannot be replayed
    rc, r, err = _bisect_json(capsys, str(a), str(b), "--lockstep")
    assert f"side B ({cmd}) cannot be replayed here: {exe}: no such executable file; the search still runs" in err
    assert rc == 1 and r["verdict"] == "divergent" and r["episodes"] == []
    assert r["first_divergent_checkpoint"] == 6 and r["last_agreeing_checkpoint"] == 3
    assert r["first_loss_divergence"] == 4
    assert r["summary"].startswith("the runs diverge in steps 3..5 (")
    assert "but no step or tensor can be named: side B cannot be replayed here" in r["summary"]
    capsys.readouterr()
    assert main(["bisect", str(a), str(b), "-q"]) == 1  # --quiet still says it, and the text report has the search
    out, err = capsys.readouterr()
    assert "cannot be replayed here" in err and "DIVERGENT" in out and "first checkpoint beyond tolerance: 6" in out


def test_an_unknown_implementation_in_a_checkpoint_run_keeps_the_search(tmp_path, capsys):
    sc = tiny_scenario(tmp_path)
    a, b = tmp_path / "a.memstate", tmp_path / "b.memstate"
    assert main(["run", str(sc), "--checkpoint-every", "3", "-o", str(a), "-q"]) == 0
    assert main(["run", str(sc), "--variant", "softmax_sum=global", "--checkpoint-every", "3", "-o", str(b),
                 "-q"]) == 0
    header = b / "header.json"
    doc = json.loads(header.read_text())
    doc["meta"]["impl"] = "mynet"
    header.write_text(json.dumps(doc))
    rc, r, err = _bisect_json(capsys, str(a), str(b))
    assert "side B (mynet) cannot be replayed here: no implementation named 'mynet'" in err
    assert rc == 1 and r["verdict"] == "divergent" and r["episodes"] == []
    assert r["first_divergent_checkpoint"] == 3 and "steps 0..2" in r["summary"]


ONE_STEP_FAILS = """import subprocess, sys
batches = open(sys.argv[2]).read()
if batches.count('"end"') == 1:
    sys.stderr.write("this port cannot train a single step\\n")
    sys.exit(3)
sys.exit(subprocess.call([sys.executable, {port!r}] + sys.argv[1:]))
"""


def test_a_port_failing_in_lockstep_keeps_what_was_found(tmp_path, capsys):
    script = tmp_path / "one_step_fails.py"
    script.write_text(ONE_STEP_FAILS.format(port=str(PY_PORT)), encoding="utf-8")
    cmd = script_cmd(script) + " " + " ".join(BUG)
    rc, r, _ = _bisect_json(capsys, str(tiny_scenario(tmp_path)), "--impls", "numpy," + cmd,
                            "--checkpoint-every", "3", "--lockstep")
    assert rc == 1 and r["verdict"] == "divergent"
    assert "lockstep over steps 3..5 failed" in r["summary"] and "cannot train a single step" in r["summary"]
    (ep,) = r["episodes"]  # the free-running replay happened and is reported
    assert ep["first_divergence"]["step"] == 4 and ep["lockstep_errors"] is None

"""The command as a user runs it, in its own process: `python -m memstate` and the installed `memstate` script.
Exit status 0/1/2, Ctrl-C, a closed output pipe, and `memstate show` on the conformance traces."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memstate.cli.main import main
from memstate.formats.recorder import Recorder
from memstate.formats.trace import read_trace

CONFORMANCE = Path(__file__).resolve().parents[1] / "conformance"
SMALL, TRUNCATED = CONFORMANCE / "small.memstate.jsonl", CONFORMANCE / "truncated.memstate.jsonl"
PARAMS = CONFORMANCE / "small.params.json"
SCRIPT = Path(sys.executable).parent / "memstate"  # installed by `pip install -e .` next to the interpreter
COMMANDS = {"python -m memstate": [sys.executable, "-m", "memstate"], "memstate script": [str(SCRIPT)]}


def memstate(how: str, *args: str | os.PathLike, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*COMMANDS[how], *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def diverging(tmp_path_factory) -> Path:
    """The conformance trace with step 1's loss changed in the 7th digit: a diff against it exits 1."""
    path = tmp_path_factory.mktemp("cli") / "changed.memstate.jsonl"
    lines = SMALL.read_text().splitlines()
    for i, line in enumerate(lines):
        rec = json.loads(line)
        if rec.get("step") == 1 and rec.get("name") == "loss":
            rec["data"] = [rec["data"][0] * (1 + 1e-7)] if isinstance(rec["data"], list) else rec["data"] * (1 + 1e-7)
            lines[i] = json.dumps(rec)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_console_script_is_installed():
    assert SCRIPT.is_file() and os.access(SCRIPT, os.X_OK), f"{SCRIPT} missing: install with `make .venv/.installed`"


def test_show_summarises_the_conformance_trace():
    done = memstate("memstate script", "show", SMALL)
    assert (done.returncode, done.stderr) == (0, "")
    lines = done.stdout.splitlines()
    steps = read_trace(SMALL)
    assert lines[0] == f"{SMALL} (jsonl): 2 complete steps, 0..1"
    assert lines[1:4] == ["  impl      independent-writer", "  scenario  conformance-small", "  dtype     float64"]
    assert lines[4] == "  tensors per step (dataflow order):"
    listed = "".join(lines[5:lines.index("  loss:")]).replace(" ", "")
    assert listed == "".join(f"{n}{list(a.shape)}" for n, a in steps[0].tensors.items()).replace(" ", "")
    assert all(line.startswith("    ") and len(line) <= 78 for line in lines[5:lines.index("  loss:")])
    losses = lines[lines.index("  loss:") + 1:]
    assert losses == [f"    step {s.index:>7}  {float(s.tensors['loss']):.6g}" for s in steps]


def test_show_of_a_crashed_trace_names_the_incomplete_step(capsys):
    assert main(["show", str(TRUNCATED)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{TRUNCATED} (jsonl): 1 complete steps, 0..0"
    assert lines[4] == "  ended early: 1 complete step, then step 1 unfinished"  # (issue 13's wording)


def test_show_points_thins_the_loss_curve_and_keeps_the_last_step(tmp_path, capsys):
    path = tmp_path / "long.memstate.jsonl"
    with Recorder(path, {"impl": "hand"}) as rec:
        for k in range(25):
            with rec.step(k):
                rec.record("loss", 1.0 / (k + 1))
    assert main(["show", str(path), "--points", "4"]) == 0
    out = capsys.readouterr().out
    losses = out.split("  loss:\n")[1].splitlines()
    assert [int(line.split()[1]) for line in losses] == [0, 7, 14, 21, 24]
    assert [float(line.split()[2]) for line in losses] == [float(f"{1 / (k + 1):.6g}") for k in (0, 7, 14, 21, 24)]
    assert out.splitlines()[:2] == [f"{path} (jsonl): 25 complete steps, 0..24", "  impl      hand"]
    assert main(["show", str(path), "--points", "100"]) == 0
    assert capsys.readouterr().out.count("    step ") == 25


def test_exit_status_0_when_agreeing_and_1_when_diverging(diverging):
    same = memstate("python -m memstate", "diff", SMALL, SMALL)
    assert same.returncode == 0, same.stderr
    clean = memstate("python -m memstate", "check", SMALL, "--params", PARAMS)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    for how in COMMANDS:
        differ = memstate(how, "diff", SMALL, diverging)
        assert differ.returncode == 1, differ.stderr
        assert "loss" in differ.stdout and "step 1" in differ.stdout


@pytest.mark.parametrize("how, args, words", [
    ("python -m memstate", ["diff", "no-such.memstate.jsonl", str(SMALL)], "no-such.memstate.jsonl"),
    ("memstate script", ["show", str(PARAMS)], "small.params.json"),
])
def test_exit_status_2_for_bad_input_is_one_line_without_traceback(how, args, words):
    done = memstate(how, *args)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert words in done.stderr and done.stderr.startswith(f"memstate {args[0]}: ")


def test_usage_errors_exit_2():
    done = memstate("python -m memstate", "diff", "--max-steps", "many", str(SMALL), str(SMALL))
    assert done.returncode == 2 and "usage: memstate diff" in done.stderr and "Traceback" not in done.stderr
    helped = memstate("memstate script", "--help")
    assert (helped.returncode, helped.stderr) == (0, "") and "memstate check" in helped.stdout


def test_ctrl_c_exits_130_quietly(tmp_path):
    """SIGINT in the middle of a long run: exit 130, one line on stderr, no traceback."""
    proc = subprocess.Popen([*COMMANDS["python -m memstate"], "run", "mnist14-relu", "--steps", "1000000", "--no-eval",
                             "-o", str(tmp_path / "long.memstate")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline()  # the first progress line: training has started
        assert "step" in first, first
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err


def test_a_closed_pipe_is_quiet_and_exits_141(tmp_path):
    """`memstate show BIG | head -1`: head exits after one line; memstate must stop quietly (141, like
    SIGPIPE) instead of printing a BrokenPipeError at exit."""
    path = tmp_path / "long.memstate.jsonl"
    with Recorder(path, {"impl": "hand"}) as rec:
        for k in range(6000):  # 6000 loss lines, ~180 KB: more than a pipe holds
            with rec.step(k):
                rec.record("loss", 1.0 / (k + 1))
    command = " ".join(f"'{c}'" for c in COMMANDS["memstate script"])
    script = f"{command} show '{path}' --points 100000 2>'{tmp_path}/err' | head -1; echo \"${{PIPESTATUS[0]}}\""
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
    first, status = done.stdout.splitlines()
    assert first == f"{path} (jsonl): 6000 complete steps, 0..5999"
    assert (tmp_path / "err").read_text() == ""
    assert status == "141"


def test_bash_is_there_for_the_pipe_test():
    assert shutil.which("bash") and shutil.which("head")

"""Exit codes (issue 13): 0 agree/clean, 1 a finding, 2 bad input, 3 a bug; every hostile input is a clear exit 2."""

from __future__ import annotations

import importlib

import pytest

from hostile_cases import CASES, Case
from memstate.cli.main import main


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input_exit_status_and_message(tmp_path, capsys, case: Case):
    argv = case.build(tmp_path)
    status = main(argv)
    out, err = capsys.readouterr()
    text = err if case.status >= 2 else out
    assert status == case.status, f"{argv}: exit {status}\nstdout: {out[-2000:]}\nstderr: {err[-2000:]}"
    for word in case.words:
        assert word in text, f"{word!r} not in {text!r}"
    if case.status >= 2:
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def _boom(args):
    raise ValueError("a bug\nsecond line")


@pytest.fixture
def broken_show(monkeypatch):
    monkeypatch.setattr(importlib.import_module("memstate.cli.main"), "cmd_show", _boom)


def test_internal_error_is_exit_3_in_one_line(tmp_path, capsys, broken_show, monkeypatch):
    monkeypatch.delenv("MEMSTATE_DEBUG", raising=False)
    assert main(["show", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("memstate show: internal error: ValueError: a bug (a bug in memstate")
    assert "--debug" in err and "MEMSTATE_DEBUG=1" in err and "report it" in err


@pytest.mark.parametrize("how", ["--debug first", "--debug last", "env"])
def test_debug_prints_the_traceback(tmp_path, capsys, broken_show, monkeypatch, how):
    monkeypatch.delenv("MEMSTATE_DEBUG", raising=False)
    argv = ["show", str(tmp_path)]
    if how == "env":
        monkeypatch.setenv("MEMSTATE_DEBUG", "1")
    argv = ["--debug", *argv] if how == "--debug first" else [*argv, "--debug"] if how == "--debug last" else argv
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "in _boom" in err and "internal error: ValueError" in err


def test_ctrl_c_is_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module("memstate.cli.main"), "cmd_scenarios", interrupted)
    assert main(["scenarios"]) == 130
    assert capsys.readouterr().err == "memstate scenarios: interrupted\n"


def test_usage_error_is_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["diff", "--max-steps", "many"])
    assert exc.value.code == 2


def test_broken_pipe_is_quiet(tmp_path):
    import subprocess
    import sys

    trace = tmp_path / "t.memstate.jsonl"
    assert main(["run", "mnist14-relu", "--steps", "30", "-q", "--no-eval", "-o", str(trace)]) == 0
    proc = subprocess.Popen([sys.executable, "-m", "memstate", "show", str(trace), "--points", "100000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader goes away before memstate writes
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and err == ""


def test_oserror_naming_a_file_is_exit_2(tmp_path, capsys):
    trace = tmp_path / "t.memstate.jsonl"
    assert main(["run", "mnist14-relu", "--steps", "1", "-q", "--no-eval", "-o", str(trace)]) == 0
    out = tmp_path / "no" / "such" / "dir" / "report.txt"
    assert main(["diff", str(trace), str(trace), "-o", str(out)]) == 2
    assert "cannot write the report" in capsys.readouterr().err

"""`memstate diff`: exit status 0 agree / 1 diverge / 2 usage or input error, the formats, and --impls."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import memstate
import memstate.report
from memstate.cli.main import main
from memstate.formats.recorder import open_writer

CONFORMANCE = Path(__file__).resolve().parents[1] / "conformance"


def write(path: Path, n: int = 4, offset: float = 0.0, at: int = 2) -> Path:
    with open_writer(path, {"impl": path.name.split(".")[0], "dtype": "float64"}) as w:
        for k in range(n):
            w.begin_step(k)
            rng = np.random.default_rng(k)
            w.write_tensor("x", rng.normal(size=(3, 4)))
            z = rng.normal(size=(3, 2))
            if k >= at:
                z[1, 0] += offset
            w.write_tensor("L1.z", z)
            w.write_tensor("loss", np.array(1.0 + k))
            w.end_step()
    return path


@pytest.fixture
def pair(tmp_path):
    return (write(tmp_path / "a.memstate.jsonl"), write(tmp_path / "b.memstate.jsonl"),
            write(tmp_path / "c.memstate", offset=1e-6))


def test_agree_exits_0(pair, capsys):
    a, b, _ = pair
    assert main(["diff", str(a), str(b)]) == 0
    assert capsys.readouterr().out.startswith("AGREE: 4 steps compared")


def test_diverge_exits_1_and_shows_where(pair, capsys):
    a, _, c = pair
    assert main(["diff", str(a), str(c)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("DIVERGE at step 2: L1.z differs in 1 of 6 elements (single elements)")
    assert "rows (1 of 3): 1" in out and "tolerances:" in out


def test_tolerance_options_change_the_verdict(pair, capsys):
    a, _, c = pair
    assert main(["diff", str(a), str(c), "--rtol", "1e-5"]) == 0
    assert main(["diff", str(a), str(c), "--tol", "L1.*=rtol:0,atol:2e-6"]) == 0
    assert main(["diff", str(a), str(c), "--tol", "L1.*=atol:2e-6", "--tol", "*=atol:0"]) == 1  # last rule wins
    assert main(["diff", str(a), str(c), "--max-steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "--tol 'L1.*=rtol:0,atol:2e-6'" in out and "--rtol 1e-05" in out


def test_json_report_to_a_file(pair, tmp_path, capsys):
    a, _, c = pair
    report = tmp_path / "report.json"
    assert main(["diff", str(a), str(c), "--format", "json", "-o", str(report)]) == 1
    assert capsys.readouterr().out == f"diverge at step 2, L1.z; report written to {report}\n"
    doc = json.loads(report.read_text())
    assert doc["schema_version"] == 1 and doc["verdict"] == "diverge"
    assert (doc["first_divergence"]["step"], doc["first_divergence"]["name"]) == (2, "L1.z")
    assert doc["first_divergence"]["rows"] == [1] and doc["first_divergence"]["columns"] == [0]


def test_conformance_traces_written_elsewhere(capsys):
    small, cut = CONFORMANCE / "small.memstate.jsonl", CONFORMANCE / "truncated.memstate.jsonl"
    assert main(["diff", str(small), str(small)]) == 0
    assert main(["diff", str(small), str(cut)]) == 1
    assert "DIVERGE at step 1: B has no L1.b in step 1 (its step 1 is incomplete" in capsys.readouterr().out


@pytest.mark.parametrize("argv, words", [
    (["diff", "no-such.memstate.jsonl", "also-not.memstate.jsonl"], "no such file or directory"),
    (["diff", "{a}"], "diff takes two traces, A (the reference) and B; got 1"),
    (["diff", "{a}", "{a}", "--tol", "L1.z=fast"], "--tol 'L1.z=fast': 'fast' is not a number; write PATTERN=RTOL"),
    (["diff", "{a}", "{a}", "--ulp", "loss"], "--ulp 'loss': write PATTERN=N"),
    (["diff", "{a}", "{a}", "--rtol", "-1"], "--rtol -1.0: --rtol must be a finite number >= 0"),
    (["diff", "{a}", "{a}", "--steps", "3"], "--steps runs implementations: use it with --impls"),
    (["diff", "{a}", "{a}", "--max-steps", "0"], "--max-steps 0: give a positive number of steps"),
    (["diff", "{a}", "{bad}"], "line 1: bad header"),
    (["diff", "{a}", "{a}", "-o", "{a}/../nowhere/r.txt"], "cannot write the report"),
    (["diff", "--impls", "numpy", "mnist14-relu"], "name at least two implementations"),
    (["diff", "--impls", "numpy,python", "mnist14-relu", "--oracle", "{a}"], "--oracle compares existing traces"),
    (["diff", "--impls", "numpy,python", "mnist14-relu", "--variant", "torch:log=raw"], "'torch' is not one of"),
])
def test_input_errors_exit_2_with_one_line(pair, tmp_path, capsys, argv, words):
    bad = tmp_path / "bad.memstate.jsonl"
    bad.write_text("not json\n")
    argv = [w.format(a=pair[0], bad=bad) for w in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("memstate diff: error: ") and words in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["diff", "a", "b", "--format", "pdf"])
    assert exc.value.code == 2
    help_text = main_help(capsys)
    assert "--tol PATTERN=rtol:X,atol:Y,ulps:N" in help_text and "exit status: 0 the traces agree" in help_text


def main_help(capsys) -> str:
    with pytest.raises(SystemExit):
        main(["diff", "--help"])
    return capsys.readouterr().out


def test_html_without_the_html_report(pair, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "memstate.report.html", None)
    monkeypatch.delattr(memstate.report, "html", raising=False)
    assert main(["diff", str(pair[0]), str(pair[1]), "--format", "html"]) == 2
    assert "html report not available" in capsys.readouterr().err


def test_html_report_when_available(pair, tmp_path):
    out = tmp_path / "r.html"
    assert main(["diff", str(pair[0]), str(pair[2]), "--format", "html", "-o", str(out)]) == 1
    assert "<html" in out.read_text().lower()


def test_impls_matrix_reports_unavailable_ones(tmp_path, capsys):
    assert main(["diff", "--impls", "numpy,nosuch", "mnist14-relu", "--steps", "2", "-q"]) == 2
    out = capsys.readouterr().out
    assert "numpy vs nosuch: n/a" in out and "nosuch: unavailable: no implementation named 'nosuch'" in out


def test_impls_matrix_agree_and_diverge(tmp_path, capsys):
    keep = tmp_path / "kept"
    assert main(["diff", "--impls", "numpy,python", "mnist14-relu", "--steps", "3", "-q", "--keep", str(keep)]) == 0
    assert (keep / "numpy.memstate").is_dir() and (keep / "python.memstate").is_dir()
    assert "numpy vs python: agree" in capsys.readouterr().out
    argv = ["diff", "--impls", "numpy,python", "mnist14-relu", "--steps", "2", "-q",
            "--variant", "python:softmax_sum=global", "--format", "json"]
    assert main(argv) == 1
    doc = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in doc["runs"]] == ["ok", "ok"]
    (p,) = doc["pairs"]
    assert p["cell"] == "diverge@0:probs:softmax-global-sum"
    assert p["comparison"]["first_divergence"]["name"] == "probs"

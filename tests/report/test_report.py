"""memstate.report.text and memstate.report.json: what a person reads and what a script parses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from memstate.report import json as report_json
from memstate.report import text as report_text
from memstate.comparator.compare import compare
from memstate.formats.recorder import open_writer
from memstate.comparator.tolerance import Tolerances, parse_ulp

NAMES = ("x", "L1.z", "L1.a", "L2.z", "probs", "loss")


def tensors(k: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(k)
    out = {n: rng.normal(size=(4, 6)) for n in NAMES}
    out["loss"] = np.array(2.5 + k)
    return out


def write(path: Path, n: int, change=None, meta: dict | None = None) -> Path:
    with open_writer(path, meta or {"impl": path.stem.split(".")[0], "dtype": "float64"}) as w:
        for k in range(n):
            w.begin_step(k)
            for name, value in tensors(k).items():
                if change is not None:
                    value = change(k, name, value)
                w.write_tensor(name, value)
            w.end_step()
    return path


def plant(k: int, name: str, value: np.ndarray) -> np.ndarray:
    """One element of L2.z off in step 3, and what follows from it: probs then, both later."""
    if k >= 3 and name == "L2.z":
        value = value.copy()
        value[2, 4] += 0.5 if k == 3 else 1e-3
    if k >= 3 and name == "probs":
        value = value + 1e-3
    return value


@pytest.fixture
def planted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # short relative paths in the report
    return compare(write(Path("a.memstate.jsonl"), 8), write(Path("b.memstate.jsonl"), 8, plant))


def test_text_report_of_a_divergence(planted):
    text = report_text.render(planted)
    lines = text.splitlines()
    assert lines[0] == "DIVERGE at step 3: L2.z differs in 1 of 24 elements (single elements)"
    assert lines[1] == "  A  a.memstate.jsonl  (a, float64, 8 steps)"
    assert "first divergence: step 3, L2.z" in text
    assert "  rows (1 of 4): 2" in lines and "  columns (1 of 6): 4" in lines
    assert "inputs agree: the 3 tensors recorded before it in step 3 are identical" in text
    (row,) = [line for line in lines if line.lstrip().startswith("[2, 4]")]
    a, b = tensors(3)["L2.z"][2, 4], tensors(3)["L2.z"][2, 4] + 0.5
    assert f"{a:.16e}" in row and f"{b:.16e}" in row and "5.0e-01" in row
    assert "consequences: in step 3: probs; then 4 later steps diverge (the last is step 7)" in " ".join(
        line.strip() for line in lines)
    assert "diagnosis:" in text
    assert "tolerances:" in text and "rtol 1e-10, atol 1e-12 (float64 default)" in text
    assert "impl: 'a' → 'b'" in text
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)


def test_text_table_marks_failures_per_tensor_and_step(planted):
    lines = report_text.render(planted).splitlines()
    header = next(line for line in lines if line.startswith("step "))
    assert header.split() == ["step", "0", "1", "2", "3", "4", "5", "6", "7", "all"]
    row = {line.split()[0]: line.split()[1:] for line in lines[lines.index(header) + 1:] if line[:1].isalpha()}
    assert row["x"] == ["."] * 9
    assert row["L2.z"][:3] == [".", ".", "."] and row["L2.z"][3] == "-1*" and row["L2.z"][4] == "-4*"
    assert row["probs"][3].endswith("*") and row["loss"][3] == "."


def test_text_report_of_agreement_prints_tolerances(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = compare(write(Path("a.memstate.jsonl"), 3), write(Path("b.memstate.jsonl"), 3),
                tolerances=Tolerances(rules=(parse_ulp("loss=64"),)))
    text = report_text.render(c)
    assert text.startswith("AGREE: 3 steps compared, every tensor within tolerance\n")
    assert "first divergence" not in text and "diagnosis" not in text
    assert "rtol 1e-10, atol 1e-12, or 64 ulps (float64 default + --ulp 'loss=64'): loss" in text
    assert "rule: --ulp 'loss=64'" in text


def test_long_trace_table_shows_head_divergence_and_tail(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def late(k, name, value):
        return value + 1e-6 if k >= 150 and name == "L1.a" else value

    c = compare(write(Path("a.memstate"), 300), write(Path("b.memstate"), 300, late))
    lines = report_text.render(c).splitlines()
    header = next(line for line in lines if line.startswith("step "))
    assert header.split() == ["step", "0", "1", "2", "..", "148", "149", "150", "151", "152", "..", "297", "298",
                              "299", "all"]
    assert any(line.startswith("worst tensor per range of") for line in lines)
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)


def test_json_report_schema(planted):
    doc = json.loads(report_json.render(planted))
    assert doc["schema_version"] == 1 and doc["verdict"] == "diverge"
    assert doc["steps_compared"] == 8 and doc["divergent_steps"] == 5
    f = doc["first_divergence"]
    assert (f["kind"], f["step"], f["name"], f["rows"], f["columns"], f["pattern"]) == \
        ("values", 3, "L2.z", [2], [4], "single elements")
    assert f["inputs_agree"] is True and f["inputs"] == ["x", "L1.z", "L1.a"]
    assert f["worst"][0]["index"] == [2, 4] and f["worst"][0]["abs_error"] == pytest.approx(0.5)
    assert set(f["min_tolerance"]) == {"rtol", "atol", "ulps"} and f["consequences"] == ["probs"]
    assert f["metrics"]["n_out"] == 1 and f["tolerance"]["source"] == "float64 default"
    assert doc["diagnoses"] and set(doc["diagnoses"][0]) == {"code", "confidence", "explanation", "evidence"}
    tol = doc["tolerances"]
    assert tol["defaults"]["float64"] == {"rtol": 1e-10, "atol": 1e-12} and tol["oracle_factor"] == 10
    assert tol["used"][0]["names"] == list(NAMES)
    assert {m["path"]: (m["a"], m["b"]) for m in doc["meta_diff"]} == {"impl": ("a", "b")}
    assert doc["findings"] == [] and doc["oracle"] is None and doc["a"]["steps"] == 8
    step3 = next(s for s in doc["steps"] if s["step"] == 3)
    assert step3["passed"] is False and step3["worst_name"] == "L2.z"
    assert {t["name"]: t["passed"] for t in step3["tensors"]}["probs"] is False
    assert [b["failed"] for b in doc["series"]["L2.z"]] == [0, 0, 0, 1, 1, 1, 1, 1]


def test_json_agree_has_null_first_divergence(tmp_path):
    c = compare(write(tmp_path / "a.memstate.jsonl", 2), write(tmp_path / "b.memstate.jsonl", 2))
    doc = json.loads(report_json.render(c))
    assert doc["verdict"] == "agree" and doc["first_divergence"] is None and doc["diagnoses"] == []


def test_json_writes_nonfinite_numbers_as_strings(tmp_path):
    def nan(k, name, value):
        if name == "L1.a" and k == 1:
            value = value.copy()
            value[0, 0] = np.nan
        return value

    c = compare(write(tmp_path / "a.memstate.jsonl", 2), write(tmp_path / "b.memstate.jsonl", 2, nan))
    text = report_json.render(c)
    doc = json.loads(text, parse_constant=lambda token: pytest.fail(f"bare {token} in JSON"))
    f = doc["first_divergence"]
    assert f["metrics"]["max_abs_error"] == "inf" and f["worst"][0]["b"] == "nan"
    assert f["min_tolerance"] == {"rtol": "inf", "atol": "inf", "ulps": "inf"}
    assert report_json.jsonable([float("-inf"), np.float32(1.5), np.arange(2), (1, None)]) == \
        ["-inf", 1.5, [0, 1], [1, None]]

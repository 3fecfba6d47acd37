"""The HTML pages of `memstate diff` and `memstate check`, parsed with html.parser: which sections, in which
order, the rows of each table, and the pictures, on traces made so that every part of the page has to appear
(a long trace summarised by ranges, a nan on one side, findings, an oracle)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from page_tree import parse, rows, section_after, sections
from memstate.check.checker import check_trace
from memstate.comparator.compare import compare
from memstate.formats.params import read_params
from memstate.formats.recorder import Recorder
from memstate.report import check as report_check
from memstate.report import html as report_html

CONFORMANCE = Path(__file__).resolve().parents[1] / "conformance"
Z = np.random.default_rng(0).normal(size=(300, 4, 3))


def write(path: Path, meta: dict, steps: int, tensors) -> Path:
    with Recorder(path, meta) as rec:
        for k in range(steps):
            with rec.step(k):
                for name, value in tensors(k).items():
                    rec.record(name, value)
    return path


@pytest.fixture(scope="module")
def long_pair(tmp_path_factory):
    """300 steps of A against 290 of B; from step 150 one element of B's L1.z is nan."""
    d = tmp_path_factory.mktemp("pages")

    def b(k):
        z = Z[k].copy()
        if k >= 150:
            z[1, 2] = np.nan
        return {"L1.z": z, "loss": np.float64(1 / (k + 1))}

    a = write(d / "a.memstate.jsonl", {"impl": "ref", "dtype": "float64"}, 300,
              lambda k: {"L1.z": Z[k], "loss": np.float64(1 / (k + 1))})
    c = compare(a, write(d / "b.memstate.jsonl", {"impl": "port", "dtype": "float64"}, 290, b))
    return c, parse(report_html.render(c))


def test_diff_page_sections_in_order(long_pair):
    c, root = long_pair
    assert sections(root) == ["First divergence: step 150, L1.z", "Diagnosis", "Root causes", "Error against step",
                              "Error per tensor and step", "Findings", "Metadata differences", "Tolerances"]
    assert root.find("title").text == "memstate diff: diverge at step 150, L1.z"
    assert root.find("div", class_="banner diverge").text == report_html.verdict_line(c)
    assert rows(root.find("table", class_="traces")) == [
        ["A", str(c.a.path), "ref, float64, 300 steps (the reference)"],
        ["B", str(c.b.path), "port, float64, 290 steps"]]


def test_diff_page_facts_of_a_nonfinite_divergence(long_pair):
    _, root = long_pair
    facts = dict((r[0], r[1]) for r in rows(section_after(root, "First divergence", "table")))
    assert (facts["step"], facts["tensor"], facts["kind"]) == ("150", "L1.z", "values")
    assert facts["out of tolerance"] == "1 of 12 elements (8.33%): single elements"
    assert facts["rows"] == "1 of 4: 1" and facts["columns"] == "1 of 3: 2"
    assert facts["non-finite"] == "nan 0 in A, 1 in B; inf 0 in A, 0 in B"
    assert facts["passes with"] == "no tolerance passes it: non-finite values on one side only"
    assert "oracle" not in facts
    worst = rows(root.find("table", class_="worst"))
    assert worst == [["index", "A", "B", "abs err", "rel err", "ulps"],
                     ["[1, 2]", f"{Z[150, 1, 2]:.16e}", "nan", "inf", "inf", "inf"]]
    first = root.find("div", class_="side")
    assert len(first.find_all("svg")) >= 1  # the heatmap of the first divergent tensor


def test_diff_page_error_table_keeps_head_around_and_tail(long_pair):
    c, root = long_pair
    table = rows(root.find("table", class_="errors"))
    kept = [str(s.step) for s in c.steps]
    assert kept == ["0", "1", "2", "148", "149", "150", "151", "152", "287", "288", "289"]
    assert table[0] == ["tensor", "0", "1", "2", "...", "148", "149", "150", "151", "152", "...", "287", "288",
                        "289", "all"]
    assert table[1] == ["L1.z", "0", "0", "0", "...", "0", "0", "inf*", "inf*", "inf*", "...", "inf*", "inf*",
                        "inf*", "inf*"]
    assert table[2] == ["loss"] + ["0", "0", "0", "...", "0", "0", "0", "0", "0", "...", "0", "0", "0"] + ["0"]
    outlined = [td for td in root.find("table", class_="errors").iter("td") if "first" in td.classes]
    assert len(outlined) == 1 and outlined[0].text == "inf*"


def test_diff_page_overview_of_a_long_trace(long_pair):
    c, root = long_pair
    overview = root.find("table", class_="errors overview")
    cells = list(overview.iter("td"))
    assert len(cells) == len(c.overview) > 8
    assert len(rows(overview)) == -(-len(c.overview) // 8)  # 8 ranges a row
    for td, b in zip(cells, c.overview):
        spans = [s.text for s in td.find_all("span")]
        assert spans == [f"{b.first_step}..{b.last_step}", b.worst_name]
        assert ("*" in td.text) == (b.failed > 0)
    assert cells[0].text.startswith("0..7") and "f3" in cells[-1].classes


def test_diff_page_findings_meta_and_tolerances(long_pair):
    _, root = long_pair
    assert rows(section_after(root, "Findings", "table")) == [
        ["severity", "kind", "message", "steps"],
        ["warning", "extra-steps", "A has steps that B lacks at its end; only the steps both have are compared",
         "steps 290..299, 10 times"]]
    assert rows(section_after(root, "Metadata differences", "table")) == [
        ["path", "change", "A", "B"], ["impl", "changed", "'ref'", "'port'"]]
    assert rows(section_after(root, "Tolerances", "table")) == [
        ["tolerance", "source", "tensors"], ["rtol 1e-10, atol 1e-12", "float64 default", "L1.z, loss"]]


def test_diff_page_pictures(long_pair):
    c, root = long_pair
    figure = section_after(root, "Error against step", "figure")
    assert len(figure.find_all("svg")) == 1 and figure.find("figcaption").text.startswith("Max rel error")
    per_tensor = [h for h in root.iter("h3") if h.text == "Per tensor"]
    assert per_tensor and len(list(root.iter("svg"))) >= 1 + 1 + len(c.series)


def test_diff_page_with_an_oracle(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 4))
    a = write(tmp_path / "a.memstate.jsonl", {"dtype": "float64"}, 2, lambda k: {"h": x + k})
    b32 = lambda k: {"h": ((x + k) * (1 + (k == 1) * 1e-3)).astype(np.float32)}  # noqa: E731
    b = write(tmp_path / "b.memstate.jsonl", {"dtype": "float32"}, 2, b32)
    oracle = write(tmp_path / "c.memstate.jsonl", {"dtype": "float64"}, 2, lambda k: {"h": x + k})
    c = compare(a, b, oracle=oracle)
    root = parse(report_html.render(c))
    assert [r[0] for r in rows(root.find("table", class_="traces"))] == ["A", "B", "C"]
    facts = dict((r[0], r[1]) for r in rows(section_after(root, "First divergence", "table")))
    o = c.first_divergence.tensor.oracle
    assert facts["oracle"] == (f"B is {report_html._e(o.error_b)} from it, A {report_html._e(o.error_a)}; B is "
                               f"blamed beyond {report_html._e(o.allowed)}")
    items = [li.text for li in section_after(root, "Tolerances", "ul").iter("li")]
    assert items[-1] == "oracle: B is blamed when its error to C exceeds 10 x A's error to C plus one rounding"


def test_diff_page_of_agreeing_traces(tmp_path):
    a = write(tmp_path / "a.memstate.jsonl", {}, 3, lambda k: {"w": np.arange(4.0) + k})
    c = compare(a, a)
    root = parse(report_html.render(c))
    assert sections(root) == ["Error against step", "Error per tensor and step", "Metadata differences",
                              "Tolerances"]
    assert root.find("div", class_="banner agree") is not None
    assert rows(root.find("table", class_="errors")) == [["tensor", "0", "1", "2", "all"], ["w", "0", "0", "0", "0"]]
    assert not root.find_all("table", class_="worst") and not root.find_all("table", class_="errors overview")


# ------------------------------------------------------------------------------------------ the check page


def test_check_page_of_a_clean_trace():
    r = check_trace(CONFORMANCE / "small.memstate.jsonl", params=read_params(CONFORMANCE / "small.params.json").tensors)
    root = parse(report_check.render_html(r))
    assert sections(root) == ["Settings", f"Operations verified ({r.operations})", "Text report"]
    assert root.find("p", class_="clean").text == report_check.verdict(r)
    settings = rows(section_after(root, "Settings", "table"))
    assert [s[0] for s in settings] == ["activation", "loss reduction", "learning rate", "step 0 params"]
    assert settings[0][1] == "relu" and settings[1][1] == "mean"
    ops = rows(section_after(root, "Operations verified", "table"))
    assert ops[0] == ["tensor", "checked", "failed", "skipped", "worst rel", "x tolerance", "at step"]
    assert [o[0] for o in ops[1:]] == list(r.by_name)
    for o in ops[1:]:
        s = r.by_name[o[0]]
        assert [int(v) for v in o[1:4]] == [s.checked, s.failed, s.skipped] and s.failed == 0
    assert root.find("pre").text == report_check.render(r)
    assert not list(root.iter("svg"))


def test_check_page_of_a_wrong_operation(tmp_path):
    lines = (CONFORMANCE / "small.memstate.jsonl").read_text().splitlines()
    for i, line in enumerate(lines):
        rec = json.loads(line)
        if rec.get("step") == 0 and rec.get("name") == "L1.a":
            rec["data"] = [v * 1.5 for v in rec["data"]]  # the activation, wrong: everything after follows
            lines[i] = json.dumps(rec)
    bad = tmp_path / "bad.memstate.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    r = check_trace(bad, params=read_params(CONFORMANCE / "small.params.json").tensors)
    root = parse(report_check.render_html(r))
    top = r.diagnoses[0]
    assert sections(root) == (["First wrong operation", f"Diagnosis: {top.code} (confidence {top.confidence:.2f})"]
                              + ["Findings"] * bool(r.findings)
                              + ["Settings", f"Operations verified ({r.operations})"]
                              + ["Notes"] * bool(r.notes) + ["Text report"])
    if r.notes:
        assert [li.text for li in section_after(root, "Notes", "ul").iter("li")] == list(r.notes)
    assert root.find("p", class_="fail").text == report_check.verdict(r)
    first = dict((row[0], row[1]) for row in rows(section_after(root, "First wrong operation", "table")))
    op = r.first_failure
    assert (first["step"], first["tensor"]) == (str(op.step), op.name) and op.step == 0
    assert first["operation"] == f"{op.name} = {op.formula}"
    assert first["elements out of tolerance"].startswith(f"{op.n_out} of {int(np.prod(op.shape))}") and op.n_out > 0
    assert len(list(root.iter("svg"))) >= 1  # the heatmap of the failing operation
    ops = rows(section_after(root, "Operations verified", "table"))
    bad_rows = [tr for tr in section_after(root, "Operations verified", "table").iter("tr") if "bad" in tr.classes]
    assert {tr.find("td").text for tr in bad_rows} == {n for n, s in r.by_name.items() if s.failed}
    assert len(ops) == 1 + len(r.by_name)

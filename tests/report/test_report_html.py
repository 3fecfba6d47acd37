"""memstate.report.html: the self-contained HTML page of `memstate diff --format html`."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from memstate.report import html as report_html
from memstate.report import svg as report_svg
from memstate.cli.main import main
from memstate.comparator.compare import GRID_LIMIT, compare, error_grid, grid_bin
from memstate.formats.recorder import open_writer
from memstate.runner.harness import run
from memstate.runner.scenario import load_scenario
from memstate.runner.variants import Variant

TEXT_REPORT = "<summary>the text report</summary>"


def own(page: str) -> str:
    """The page without the folded-in text report, so that assertions are about the page's own sections."""
    assert TEXT_REPORT in page
    return page.split(TEXT_REPORT)[0]


def heatmaps(page: str) -> list[str]:
    return re.findall(r"<svg class='heatmap'.*?</svg>.*?</svg>", page, re.DOTALL)  # the cells are an inner svg


def cells(svg: str) -> int:
    return len(re.findall(r"<rect x='\d+' y='\d+' width='1' height='1'", svg))


class Balance(HTMLParser):
    """Checks that every element the page opens is closed, in order (void elements and `<x/>` excepted)."""

    VOID = frozenset({"meta", "br", "hr", "img", "input", "link", "col", "wbr"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def assert_well_formed(page: str) -> None:
    parser = Balance()
    parser.feed(page)
    parser.close()
    assert not parser.errors, parser.errors[:5]
    assert parser.stack == [], parser.stack


def assert_self_contained(page: str) -> None:
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert not re.search(r"""(src|href)\s*=\s*['"]?\s*(https?:)?//""", page, re.IGNORECASE), "fetches something"
    assert "<script" not in page.lower() and "@import" not in page and "url(" not in page
    assert "<img" not in page and "<link" not in page


# ---------------------------------------------------------------- the softmax_sum=global pair


@pytest.fixture(scope="module")
def traces(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("html")
    scenario = load_scenario("mnist14-relu")
    a, b = d / "clean.memstate.jsonl", d / "global-sum.memstate.jsonl"
    run(scenario, "numpy", steps=3, out=a)
    run(scenario, "numpy", steps=3, out=b, variant=Variant(softmax_sum="global"))
    return a, b


@pytest.fixture(scope="module")
def divergent(traces):
    c = compare(*traces)
    return c, report_html.render(c)


def test_the_page_is_self_contained_and_well_formed(divergent):
    _, page = divergent
    assert_self_contained(page)
    assert_well_formed(page)
    assert len(page.encode()) < 200_000


def test_the_page_says_what_the_text_report_says(divergent):
    c, page = divergent
    f = c.first_divergence
    body = own(page)
    assert "DIVERGE at step 0: probs differs in 80 of 80 elements (everywhere)" in body
    assert "First divergence: step 0, probs" in body and "everywhere" in body
    assert "[8, 10] float64 in A, [8, 10] float64 in B" in body
    assert "rows</th><td>8 of 8: 0, 1, 2, 3, 4, 5, 6, 7" in body
    assert "inputs agree: the 5 tensors recorded before it in step 0 are identical" in body
    assert "rtol &gt;= " in body and "(at atol 1e-12)" in body  # the least tolerance that passes it
    for e in f.worst:  # worst elements side by side, at full precision
        row = body[body.index(f"<td class='n'>{list(e.index)}</td>"):]
        row = re.sub(r"<[^>]+>", "", row[:row.index("</tr>")])
        assert f"{e.a:.16e}" in row and f"{e.b:.16e}" in row
    assert "consequences: in step 0: L2.dz, L2.dW" in body and "then 2 later steps diverge" in body
    top = c.diagnoses[0]
    assert top.code == "softmax-global-sum" and f"<span class='code'>{top.code}</span>" in body
    assert f"confidence {top.confidence:.2f}" in body and report_html.esc(top.explanation) in body
    assert "variant.softmax_sum" in body and "&#x27;global&#x27;" in body  # metadata differences
    assert "rtol 1e-10, atol 1e-12" in body and "float64 default" in body  # tolerances used
    assert "Error per tensor and step" in body and "9.0e-01*" in body  # the table: probs at step 0
    assert "class='f3 first'" in body  # the first divergence's cell, outlined
    assert "all 3 compared steps diverge" in body


def test_the_chart_and_the_heatmap(divergent):
    c, page = divergent
    assert page.count("<svg") >= 2 + len(c.series)  # the chart, the heatmap (two svgs), a small one per tensor
    chart = re.search(r"<svg class='chart'.*?</svg>", page, re.DOTALL).group(0)
    assert chart.count("<polyline") == len(c.series)
    assert "first divergence: step 0, probs" in chart and "tolerance: rtol 1e-10" in chart
    (svg,) = heatmaps(page)
    assert "data-rows='8' data-cols='10'" in svg and cells(svg) == 80  # probs is 8 x 10: one rect per element
    assert "|a - b|, log scale" in svg


def test_the_first_divergence_carries_its_error_grid(divergent, traces):
    c, _ = divergent
    f = c.first_divergence
    assert len(f.error_grid) == 8 and {len(row) for row in f.error_grid} == {10}
    assert max(max(row) for row in f.error_grid) == f.tensor.metrics.max_abs_error


def test_cli_writes_the_page_and_exits_1_on_a_divergent_pair(traces, tmp_path, capsys):
    a, b = traces
    out = tmp_path / "report.html"
    assert main(["diff", str(a), str(b), "--format", "html", "-o", str(out)]) == 1
    page = out.read_text(encoding="utf-8")
    assert_self_contained(page)
    assert "softmax-global-sum" in page and cells(heatmaps(page)[0]) == 80
    assert "report written to" in capsys.readouterr().out
    assert main(["diff", str(a), str(a), "--format", "html", "-o", str(tmp_path / "same.html")]) == 0
    assert "AGREE" in (tmp_path / "same.html").read_text(encoding="utf-8")


# ---------------------------------------------------------------- small traces written here


def write(path: Path, n: int, tensors, change=None, meta: dict | None = None) -> Path:
    with open_writer(path, meta or {"impl": path.stem.split(".")[0], "dtype": "float64"}) as w:
        for k in range(n):
            w.begin_step(k)
            for name, value in tensors(k).items():
                w.write_tensor(name, change(k, name, value) if change is not None else value)
            w.end_step()
    return path


EVIL = "<script>alert('x')</script>"


def tensors(k: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(k)
    return {"x": rng.normal(size=(4, 6)), EVIL: rng.normal(size=(3, 5)), "a&b": rng.normal(size=7),
            "loss": np.array(2.5 + k)}


def test_names_and_metadata_are_escaped(tmp_path):
    meta = {"impl": EVIL, "dtype": "float64", "note": "fish & <b>chips</b>"}

    def plant(k, name, value):
        if name == EVIL and k >= 1:
            value = value.copy()
            value[1, 2] += 1e-3
        return value

    a = write(tmp_path / "a.memstate.jsonl", 3, tensors, meta=meta)
    b = write(tmp_path / "b.memstate.jsonl", 3, tensors, plant, meta={**meta, "impl": "B & <i>co</i>"})
    c = compare(a, b)
    assert c.first_divergence.name == EVIL
    page = report_html.render(c)
    assert_self_contained(page)  # no <script anywhere: every name and value is escaped
    assert_well_formed(page)
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in own(page)
    assert "a&amp;b" in page and "a&b" not in page
    assert "B &amp; &lt;i&gt;co&lt;/i&gt;" in page and "<i>" not in page and "<b>chips" not in page
    assert "fish &amp; &lt;b&gt;chips&lt;/b&gt;" in page  # the headers, folded in
    (svg,) = heatmaps(page)
    assert cells(svg) == 15  # 3 x 5


def test_the_agreeing_case_renders(tmp_path):
    a = write(tmp_path / "a.memstate.jsonl", 3, tensors)
    c = compare(a, a)
    page = report_html.render(c)
    assert_self_contained(page)
    assert_well_formed(page)
    body = own(page)
    assert "AGREE: 3 steps compared, every tensor within tolerance" in body and "banner agree" in body
    assert "First divergence" not in body and not heatmaps(page)
    assert "<svg class='chart'" in body and "Tolerances" in body and "rtol 1e-10, atol 1e-12" in body
    assert "Error per tensor and step" in body and "none: the two headers" in body


@pytest.mark.parametrize("name, shape, rows, cols", [
    ("loss", (), 1, 1),  # 0-d: one cell
    ("a&b", (7,), 1, 7),  # 1-d: one row
])
def test_small_tensors_are_one_row(tmp_path, name, shape, rows, cols):
    def plant(k, n, value):
        return value + 1e-3 if n == name and k >= 1 else value

    c = compare(write(tmp_path / "a.memstate.jsonl", 2, tensors), write(tmp_path / "b.memstate.jsonl", 2, tensors,
                                                                          plant))
    f = c.first_divergence
    assert f.name == name and f.tensor.shape_a == shape
    (svg,) = heatmaps(report_html.render(c))
    assert f"data-rows='{rows}' data-cols='{cols}'" in svg and cells(svg) == rows * cols


def test_large_tensors_are_binned_by_max_pooling():
    rng = np.random.default_rng(0)
    errors = rng.random((784, 100))
    errors[101, 7] = 5.0
    grid = error_grid(errors)
    assert (len(grid), len(grid[0])) == (196, 100)  # 4 rows a cell, columns as they are
    assert grid[25][7] == 5.0 and grid[0][0] == errors[:4, 0].max()
    assert len(error_grid(rng.random((16, 784)))[0]) == GRID_LIMIT - 4  # 784 columns by 4: 196
    assert grid_bin(200) == 1 and grid_bin(201) == 2
    big = error_grid(rng.random((1000, 1000)))
    assert len(big) == len(big[0]) == GRID_LIMIT
    assert error_grid(np.array(3.0)) == ((3.0,),) and error_grid(np.arange(3.0)) == ((0.0, 1.0, 2.0),)
    svg = report_svg.heatmap(grid, (784, 100), mark=1e-3, mark_label="tolerance")
    assert "data-rows='196' data-cols='100'" in svg and cells(svg) == 196 * 100
    assert "<title>" not in svg  # no per-cell tooltips on large grids: the file stays small
    assert len(svg) < 1_200_000


def test_zero_and_non_finite_errors_have_their_own_colours():
    svg = report_svg.heatmap(((0.0, 1e-3), (float("inf"), 1e-6)), (2, 2))
    assert "class='qz'" in svg and "class='qi'" in svg and "0 (equal)" in svg and "inf (non-finite)" in svg
    assert cells(svg) == 4

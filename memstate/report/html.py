"""A comparison as one self-contained HTML page: the text report's content, plus pictures.

`render(comparison)` returns the page `memstate diff A B --format html` writes. It carries what the text
report (memstate.report.text) says: the verdict, the first divergence (step, tensor, where, the worst
elements side by side, whether its inputs agree, the least tolerance that passes it), the diagnoses with
their confidence and explanation, the consequences, findings, metadata differences, the tolerances used
and the per-step, per-tensor error table; the text report itself is folded in at the end. Two pictures:

- error against step, one line per tensor on a log scale, with the tolerance and the first divergence
  marked, and the same as small multiples (one small chart per tensor, on a shared scale);
- a heatmap of the first divergent tensor's |a - b| by row and column (FirstDivergence.error_grid, binned
  to at most 200 cells a side), on a log colour scale with a legend.

Everything is inline (CSS, SVG drawn here): no script, font or image is fetched, so the file can be mailed
or archived. Every name and value from a trace is escaped. The page skeleton lives in memstate.report.page and
the pictures in memstate.report.svg, both shared with `memstate check --format html` (memstate.report.check).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable

from memstate.report import training
from memstate.report.curves_svg import CSS as CURVES_CSS
from memstate.report import text as report_text
from memstate.comparator.compare import (
    Comparison,
    FirstDivergence,
    TensorComparison,
    TraceInfo,
)
from memstate.report.page import DIFF_CSS, esc, page
from memstate.report.svg import HEAT_CSS, error_chart, heatmap_figure, small_multiples
from memstate.comparator.tolerance import ceil_3g

_e, _g, _value = report_text._e, report_text._g, report_text._value

# ---------------------------------------------------------------- small helpers

def _para(lines: list[str]) -> str:
    """The text report's wrapped lines (memstate.report.text) back as one sentence."""
    return " ".join(line.strip() for line in lines if line.strip())


def _table(rows: Iterable[tuple[str, str]], cls: str = "facts") -> str:
    """Rows of (label, HTML): the label is escaped here, the value must be HTML already."""
    return f"<table class='{cls}'>" + "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


# ---------------------------------------------------------------- sections

def verdict_line(c: Comparison) -> str:
    """The text report's first line."""
    f = c.first_divergence
    if c:
        warn = sum(x.severity == "warning" for x in c.findings)
        tail = f"; {warn} warning{'s' * (warn != 1)} below" if warn else ""
        excused = " or excused by the oracle" if any(x.kind == "excused" for x in c.findings) else ""
        return f"AGREE: {c.steps_compared} steps compared, every tensor within tolerance{excused}{tail}"
    if f is not None:
        return f"DIVERGE at step {f.step}: {f.detail}"
    return "DIVERGE: the traces differ in structure (see findings)"


def _trace_row(label: str, info: TraceInfo, role: str = "") -> str:
    facts = report_text.trace_facts(info)
    return (f"<tr><th>{label}</th><td><code>{esc(info.path)}</code></td><td>{esc(', '.join(facts))}"
            f"{esc(role)}</td></tr>")


def _header(c: Comparison) -> list[str]:
    f = c.first_divergence
    cls = "agree" if c else "diverge"
    parts = ["<h1>memstate diff</h1>", f"<div class='banner {cls}'>{esc(verdict_line(c))}</div>",
             "<table class='traces'>", _trace_row("A", c.a, " (the reference)"), _trace_row("B", c.b)]
    if c.oracle is not None:
        parts.append(_trace_row("C", c.oracle, ", the oracle"))
    parts.append("</table>")
    n, m = c.divergent_steps, c.steps_compared
    if not c and n:
        parts.append("<p>" + esc(f"all {n} compared steps diverge" if n == m else
                                 f"{n} of the {m} compared steps diverge" if n < m else
                                 f"{n} steps diverge ({m} compared; one side stops early)") + "</p>")
    cards = [("verdict", f"<span class='{cls}'>{esc(c.verdict)}</span>"),
             ("steps compared", esc(m)), ("divergent steps", esc(n))]
    if f is not None:
        cards[0:1] = [("first divergence", esc(f"step {f.step}")), ("tensor", (f"<code>{esc(f.name or 'the whole step')}"
                                                                             "</code>"))]
    if c.diagnoses:
        d = c.diagnoses[0]
        cards.append(("diagnosis", f"<code>{esc(d.code)}</code> <span class='muted'>{d.confidence:.2f}</span>"))
    parts.append("<div class='cards'>" + "".join(f"<div class='card'><div class='k'>{esc(k)}</div>"
                                                  f"<div class='v'>{v}</div></div>" for k, v in cards) + "</div>")
    return parts


def _listed(items: tuple[int, ...], n: int, total: int) -> str:
    return esc(f"{n} of {total}: {report_text._listed(items, n)}")


def _facts(c: Comparison, f: FirstDivergence) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = [("step", esc(f.step)), ("tensor", f"<code>{esc(f.name or 'the whole step')}</code>"),
                                   ("kind", esc(f.kind)), ("detail", esc(f.detail))]
    t = f.tensor
    if t is not None:
        rows.append(("shape", esc(f"{list(t.shape_a)} {t.dtype_a} in A, {list(t.shape_b)} {t.dtype_b} in B")))
        rows.append(("tolerance", esc(f"{t.tolerance.describe()} ({t.tolerance.source})")))
    w = f.where
    if w is not None and t is not None and t.metrics is not None:
        m = t.metrics
        rows.append(("out of tolerance", esc(f"{w.n_out} of {w.size} elements ({100 * m.frac_out:.3g}%): ")
                     + f"<b>{esc(w.pattern)}</b>"))
        if w.total_rows:
            rows.append(("rows", _listed(w.rows, w.n_rows, w.total_rows)))
        if w.total_columns:
            rows.append(("columns", _listed(w.columns, w.n_columns, w.total_columns)))
        rows.append(("max abs error", esc(_e(m.max_abs_error))))
        rows.append(("max rel error", esc(f"{_e(m.max_rel_error)} (of scale {_e(m.scale)})")))
        rows.append(("ulps", esc(f"{_g(m.max_ulp)} ulps ({m.ulp_dtype})")))
        rows.append(("cosine", esc(f"1 - {_e(1 - m.cosine)}")))
        if m.nan_a or m.nan_b or m.inf_a or m.inf_b:
            rows.append(("non-finite", esc(f"nan {m.nan_a} in A, {m.nan_b} in B; inf {m.inf_a} in A, "
                                           f"{m.inf_b} in B")))
        if m.argmax_mismatch is not None:
            rows.append(("argmax", esc(f"differs in {m.argmax_mismatch:.1%} of rows")))
    if t is not None and t.min_tolerance is not None:
        mt = t.min_tolerance
        if math.isinf(mt.rtol):
            rows.append(("passes with", "no tolerance passes it: non-finite values on one side only"))
        else:
            ways = [f"rtol >= {ceil_3g(mt.rtol)} (at atol {_g(t.tolerance.atol)})",
                    f"or atol >= {ceil_3g(mt.atol)} (at rtol {_g(t.tolerance.rtol)})"]
            if mt.ulps <= report_text.MAX_ULP_HINT:
                ways.append(f"or --ulp '{f.name}={int(mt.ulps)}'")
            rows.append(("passes with", "<br>".join(esc(w) for w in ways)))
    if t is not None and t.oracle is not None:
        o = t.oracle
        rows.append(("oracle", esc(f"B is {_e(o.error_b)} from it, A {_e(o.error_a)}; B is blamed beyond "
                                   f"{_e(o.allowed)}")))
    return rows


def _split_digits(a: str, b: str) -> tuple[str, str]:
    """The two values with the leading digits they share muted and the rest marked (digits are shared only
    between numbers of the same exponent)."""
    if a == b:
        return esc(a), esc(b)
    k = 0
    if a.partition("e")[2] == b.partition("e")[2]:
        while k < min(len(a), len(b)) and a[k] == b[k]:
            k += 1
    return tuple(f"<span class='same'>{esc(x[:k])}</span><span class='diff'>{esc(x[k:])}</span>" if k else
                 f"<span class='diff'>{esc(x)}</span>" for x in (a, b))  # type: ignore[return-value]


def _worst(f: FirstDivergence) -> str:
    t = f.tensor
    da, db = (t.dtype_a, t.dtype_b) if t is not None else ("float64", "float64")
    rows = [("<table class='worst'><tr><th>index</th><th>A</th><th>B</th><th>abs err</th><th>rel err</th>"
            "<th>ulps</th></tr>")]
    for e in f.worst:
        a, b = _split_digits(_value(e.a, da), _value(e.b, db))
        rows.append(f"<tr><td class='n'>{esc(list(e.index))}</td><td class='n'>{a}</td><td class='n'>{b}</td>"
                    f"<td class='n'>{esc(_e(e.abs_error))}</td><td class='n'>{esc(_e(e.rel_error))}</td>"
                    f"<td class='n'>{esc(_g(e.ulps))}</td></tr>")
    rows.append("</table>")
    return "".join(rows)


def _first(c: Comparison, f: FirstDivergence) -> list[str]:
    title = f"First divergence: step {f.step}" + (f", {f.name}" if f.name else "")
    parts = [f"<h2 id='first'>{esc(title)}</h2>", "<div class='side'>", "<div class='factbox'>", _table(_facts(c, f)),
             "</div>"]
    fig = heatmap_figure(f)
    if fig:
        parts.append(f"<div>{fig}</div>")
    parts.append("</div>")
    parts.append(f"<p>{esc(_para(report_text._inputs(f)))}</p>")
    if f.worst:
        parts.append("<h3>Worst elements, side by side</h3>" + _worst(f))
    parts.append(f"<p>{esc(_para(report_text._consequences(c, f)))}</p>")
    return parts


def _evidence(evidence: dict) -> str:
    from memstate.report.json import jsonable

    rows = []
    for k, v in evidence.items():
        text = v if isinstance(v, str) else json.dumps(jsonable(v))
        if len(text) > 300:
            text = text[:300] + " ..."
        rows.append((str(k), f"<code>{esc(text)}</code>"))
    return _table(rows) if rows else ""


def _diagnoses(c: Comparison) -> list[str]:
    f = c.first_divergence
    if f is None or f.kind == "missing":
        return []
    if not c.diagnoses:
        return ["<h2>Diagnosis</h2><p>none available (memstate.diagnose.context is not installed)</p>"]
    parts = ["<h2 id='diagnosis'>Diagnosis</h2>"]
    for i, d in enumerate(c.diagnoses):
        pct = max(0.0, min(1.0, float(d.confidence))) * 100
        label = "" if i == 0 else "also possible: "
        parts.append(f"<div class='diag{' top' if i == 0 else ''}'><div class='head'>{label}<span class='code'>"
                     f"{esc(d.code)}</span> <span class='conf'><span style='width:{pct:.0f}%'></span></span>"
                     f"confidence {d.confidence:.2f}</div><p>{esc(d.explanation)}</p>")
        evidence = _evidence(getattr(d, "evidence", {}) or {})
        if evidence:
            parts.append(f"<details><summary>evidence</summary>{evidence}</details>")
        parts.append("</div>")
    return parts + _root_causes(c)


def _root_causes(c: Comparison) -> list[str]:
    """Every independent cause (memstate.diagnose.roots), the first divergence first."""
    if not c.root_causes:
        return []
    rows = "".join(f"<tr><td>{r.step}</td><td><code>{esc(r.name)}</code></td><td><code>{esc(r.code)}</code></td>"
                   f"<td>{r.confidence:.2f}</td><td>{r.count}</td></tr>" for r in c.root_causes)
    return ["<h2 id='root-causes'>Root causes</h2><p class='muted'>each fails on its own; the rest are "
            "consequences</p><table><tr><th>step</th><th>tensor</th><th>code</th><th>confidence</th>"
            f"<th>times</th></tr>{rows}</table>"]


def _findings(c: Comparison) -> list[str]:
    if not c.findings:
        return []
    rank = {"error": 0, "warning": 1, "info": 2}
    rows = [("<h2 id='findings'>Findings</h2><table><tr><th>severity</th><th>kind</th><th>message</th>"
            "<th>steps</th></tr>")]
    for x in sorted(c.findings, key=lambda x: rank.get(x.severity, 3)):
        steps = ""
        if x.first_step is not None:
            steps = f"step {x.first_step}" if x.count == 1 or x.first_step == x.last_step else \
                f"steps {x.first_step}..{x.last_step}, {x.count} times"
        rows.append(f"<tr><td><span class='sev {esc(x.severity)}'>{esc(x.severity)}</span></td><td><code>"
                    f"{esc(x.kind)}</code></td><td>{esc(x.message)}</td><td>{esc(steps)}</td></tr>")
    rows.append("</table>")
    return rows


def _one_sided(c: Comparison) -> list[str]:
    """The text report's notes on names one side records (not compared, not a divergence), one paragraph each."""
    notes = " ".join(report_text._one_sided(c)).split("note: ") if c.one_sided or c.names else []
    paras = [f"<p class='note'>{esc(' '.join(n.split()))}</p>" for n in notes if n.strip()]
    return ["<h2 id='one-sided'>Names compared</h2>", *paras] if paras else []


def _meta(c: Comparison) -> list[str]:
    parts = ["<h2 id='meta'>Metadata differences</h2>"]
    if not c.meta_diff:
        parts.append("<p>none: the two headers' metadata are the same</p>")
    else:
        parts.append("<table><tr><th>path</th><th>change</th><th>A</th><th>B</th></tr>")
        for m in c.meta_diff:
            a = "-" if m.change == "added" else repr(m.a)
            b = "-" if m.change == "removed" else repr(m.b)
            parts.append(f"<tr><td><code>{esc(m.path)}</code></td><td>{esc(m.change)}</td><td><code>{esc(a)}</code>"
                         f"</td><td><code>{esc(b)}</code></td></tr>")
        parts.append("</table>")
    sides = [("A", c.a), ("B", c.b)] + ([("C", c.oracle)] if c.oracle is not None else [])
    headers = "".join(f"<h3>{label}: <code>{esc(info.path)}</code> ({esc(info.encoding)})</h3>"
                      f"<pre>{esc(json.dumps(info.meta, indent=2, sort_keys=True, default=str))}</pre>"
                      for label, info in sides)
    parts.append(f"<details><summary>trace headers (metadata)</summary>{headers}</details>")
    return parts


def _tolerances(c: Comparison) -> list[str]:
    parts = ["<h2 id='tolerances'>Tolerances</h2><table><tr><th>tolerance</th><th>source</th><th>tensors</th></tr>"]
    for u in c.tolerances_used:
        parts.append(f"<tr><td class='nw'>{esc(u.tolerance.describe())}</td><td>{esc(u.tolerance.source)}</td><td>"
                     + ", ".join(f"<code>{esc(n)}</code>" for n in u.names) + "</td></tr>")
    parts.append("</table><ul>")
    parts += [f"<li>{esc(line)}</li>" for line in c.tolerances.describe()]
    if c.oracle is not None:
        parts.append(f"<li>oracle: B is blamed when its error to C exceeds {c.tolerances.oracle_factor:g} x A's "
                     "error to C plus one rounding</li>")
    parts.append("</ul><p class='muted'>An element passes when |a - b| &lt;= atol + rtol x max(|a|, |b|), or is "
                 "within its ULP allowance.</p>")
    return parts


def _cell(t: TensorComparison | None, first: bool) -> str:
    if t is None:
        return "<td class='na' title='absent'>-</td>"
    tip = f"step {t.step}, {t.name}: "
    if t.metrics is None:
        tip += f"shape {list(t.shape_a)} in A, {list(t.shape_b)} in B"
        cls, text = "f3", "shape*"
    else:
        rel = t.max_rel_error
        tip += (f"max rel {_e(rel)}, max abs {_e(t.max_abs_error)}, {t.metrics.n_out} of {t.metrics.size} out of "
                f"tolerance ({t.tolerance.describe()})")
        mark = "" if t.within_tolerance else "~" if t.passed else "*"
        text = ("0" if rel == 0 else _e(rel)) + mark
        if t.within_tolerance:
            cls = "eq" if rel == 0 else ""
        elif t.passed:
            cls = "ex"
        else:
            cls = _fail_class(rel, True)
    if first:
        cls += " first"
    return f"<td class='{cls.strip()}' title='{esc(tip)}'>{esc(text)}</td>"


def _error_table(c: Comparison) -> list[str]:
    if not c.steps:
        return []
    f = c.first_divergence
    names = [s.name for s in c.series]
    head, prev = ["<th>tensor</th>"], None
    gaps = []
    for s in c.steps:
        gap = prev is not None and s.step != prev + 1
        gaps.append(gap)
        if gap:
            head.append("<th class='gap'>...</th>")
        mark = " class='fail'" if not s.passed else ""
        head.append(f"<th{mark}>{s.step}</th>")
        prev = s.step
    head.append("<th>all</th>")
    rows = [f"<table class='errors'><thead><tr>{''.join(head)}</tr></thead><tbody>"]
    worst_all = {s.name: (max((b.max_rel_error for b in s.buckets), default=0.0), sum(b.failed for b in s.buckets))
                 for s in c.series}
    for name in names:
        cells = [f"<th><code>{esc(name)}</code></th>"]
        for s, gap in zip(c.steps, gaps):
            if gap:
                cells.append("<td class='gap'>...</td>")
            t = next((x for x in s.tensors if x.name == name), None)
            cells.append(_cell(t, f is not None and f.step == s.step and f.name == name))
        rel, failed = worst_all[name]
        cls = _fail_class(rel, failed > 0)
        text = ("0" if rel == 0 else _e(rel)) + ("*" if failed else "")
        cells.append(f"<td class='{cls}' title='{esc(f'{name}: worst over every step; fails in {failed} steps')}'>"
                     f"{esc(text)}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    rows.append("</tbody></table>")
    parts = ["<h2 id='table'>Error per tensor and step</h2>",
             ("<p class='muted'>max rel error (relative to the tensor's scale) per tensor and step; * out of tolerance "
             "(shaded by size), ~ excused by the oracle, - absent, ... steps not kept; the outlined cell is the first "
             "divergence; 'all' is the worst over every step. Hover a cell for its abs error and tolerance.</p>")]
    parts += rows
    parts += _overview(c)
    return parts


def _fail_class(rel: float, failed: bool) -> str:
    return "" if not failed else "f1" if rel < 1e-6 else "f2" if rel < 1e-2 else "f3"


def _overview(c: Comparison, per_row: int = 8) -> list[str]:
    """The worst tensor per range of steps (as the text report shows it: only when steps were merged)."""
    if len(c.overview) <= 1 or all(b.steps == 1 for b in c.overview) and len(c.overview) <= len(c.steps):
        return []
    per = max(b.steps for b in c.overview)
    rows = [(f"<h3>Worst tensor per range of {per} step{'s' * (per != 1)}</h3><p class='muted'>each cell: the steps "
            "it covers, the largest max rel error among them (* when any of them fails) and its tensor</p>"
            "<table class='errors overview'><tbody>")]
    for i in range(0, len(c.overview), per_row):
        cells = []
        for b in c.overview[i:i + per_row]:
            tip = (f"steps {b.first_step}..{b.last_step}: worst {b.worst_name} at step {b.worst_step}, max rel "
                   f"{_e(b.max_rel_error)}, max abs {_e(b.max_abs_error)}, {b.failed} of {b.steps} steps fail")
            text = ("0" if b.max_rel_error == 0 else _e(b.max_rel_error)) + ("*" if b.failed else "")
            cells.append(f"<td class='{_fail_class(b.max_rel_error, b.failed > 0)}' title='{esc(tip)}'>"
                         f"<span class='muted'>{b.first_step}..{b.last_step}</span><br>{esc(text)}<br>"
                         f"<span class='muted'>{esc(b.worst_name or '')}</span></td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    rows.append("</tbody></table>")
    return rows


def _charts(c: Comparison) -> list[str]:
    if not c.series or not any(s.buckets for s in c.series):
        return ["<h2 id='chart'>Error against step</h2><p>no step was compared: nothing to draw</p>"]
    per = max((b.steps for s in c.series for b in s.buckets), default=1)
    binned = (f" Steps are merged in runs of {per}: each run is drawn level at the worst error in it."
              if per > 1 else "")
    return ["<h2 id='chart'>Error against step</h2>",
            (f"<figure>{error_chart(c)}<figcaption>Max rel error (max |a - b| / max(|a|, |b|) over the tensor) "
            "against step, one line per tensor, log scale; dashed blue: the tolerance's rtol; dashed red: the first "
            f"divergence. Errors of exactly 0 lie on the band at the bottom.{binned}</figcaption></figure>"),
            "<h3>Per tensor</h3>", small_multiples(c)]


def render(c: Comparison) -> str:
    """The whole HTML report: one self-contained page."""
    f = c.first_divergence
    body = _header(c)
    if f is not None:
        body += _first(c, f)
    body += _diagnoses(c)
    body += training.html_section(c)
    body += _charts(c)
    body += _error_table(c)
    body += _one_sided(c)
    body += _findings(c)
    body += _meta(c)
    body += _tolerances(c)
    body.append(f"<details><summary>the text report</summary><pre>{esc(report_text.render(c))}</pre></details>")
    title = f"memstate diff: {c.verdict}" + (f" at step {f.step}, {f.name}" if f is not None and f.name else "")
    return page(title, body, DIFF_CSS + HEAT_CSS + (CURVES_CSS if c.curves is not None else ""))

"""A comparison as one self-contained HTML page: the text report's content, plus pictures.

`render(comparison)` returns the page `memstate diff A B --format html` writes. It carries what the text
report (memstate.report_text) says: the verdict, the first divergence (step, tensor, where, the worst
elements side by side, whether its inputs agree, the least tolerance that passes it), the diagnoses with
their confidence and explanation, the consequences, findings, metadata differences, the tolerances used
and the per-step, per-tensor error table; the text report itself is folded in at the end. Two pictures:

- error against step, one line per tensor on a log scale, with the tolerance and the first divergence
  marked, and the same as small multiples (one small chart per tensor, on a shared scale);
- a heatmap of the first divergent tensor's |a - b| by row and column (FirstDivergence.error_grid, binned
  to at most 200 cells a side), on a log colour scale with a legend.

Everything is inline (CSS, SVG drawn here): no script, font or image is fetched, so the file can be mailed
or archived. Every name and value from a trace is escaped. The page skeleton and its CSS (`page`, `CSS`,
`esc`) are shared with `memstate check --format html` (memstate.report_check).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

from memstate import report_text
from memstate.compare import (
    Bucket,
    Comparison,
    FirstDivergence,
    TensorComparison,
    TraceInfo,
    grid_bin,
)
from memstate.tolerance import ceil_3g

_e, _g, _value = report_text._e, report_text._g, report_text._value

# ---------------------------------------------------------------- the page skeleton (shared with report_check)

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 72em;
  padding: 0 1.2em; color: #222; }
h1 { font-size: 1.35em; margin-bottom: .3em; }
h2 { font-size: 1.12em; margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: .15em; }
h3 { font-size: 1em; margin: 1.2em 0 .4em; }
.clean, .agree { color: #17692a; } .fail, .diverge { color: #b00020; }
table { border-collapse: collapse; }
td, th { padding: .15em .7em; text-align: left; border-bottom: 1px solid #eee; vertical-align: top; }
td.n { text-align: right; font-variant-numeric: tabular-nums; } tr.bad td { background: #fde8ea; }
pre { background: #f6f6f6; padding: .8em; overflow-x: auto; font-size: 12.5px; }
.code, code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.code { font-weight: 600; }
.muted { color: #777; } .nw { white-space: nowrap; }
"""

DIFF_CSS = """
.banner { padding: .6em .9em; border-radius: 6px; font-weight: 600; font-size: 1.05em; margin: .6em 0; }
.banner.agree { background: #e6f4ea; border: 1px solid #9bd3a9; }
.banner.diverge { background: #fdecee; border: 1px solid #f0a8b2; }
.cards { display: flex; flex-wrap: wrap; gap: .6em; margin: .8em 0; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: .35em .8em; min-width: 7em; }
.card .k { font-size: .78em; color: #666; text-transform: uppercase; letter-spacing: .04em; }
.card .v { font-size: 1.1em; font-weight: 600; overflow-wrap: anywhere; }
.traces td, .traces th { border: none; padding: .05em .6em .05em 0; }
.side { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
.side > * { flex: 0 1 auto; } .side > .factbox { flex: 1 1 24em; max-width: 36em; }
table.facts th { font-weight: 500; color: #555; white-space: nowrap; }
table.facts td { overflow-wrap: break-word; }
table.worst td.n, table.worst th { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  font-size: 12.5px; }
table.worst .same { color: #999; } table.worst .diff { color: #b00020; font-weight: 600; }
figure { margin: .4em 0 1em; } figure.fit { width: min-content; } figcaption { font-size: .85em; color: #555; max-width: 60em; }
.diag { border-left: 4px solid #bbb; padding: .3em .9em; margin: .7em 0; background: #fafafa; }
.diag.top { border-left-color: #b00020; background: #fff6f7; }
.diag .head { font-weight: 600; } .conf { display: inline-block; width: 8em; height: .6em; background: #eee;
  border-radius: 3px; vertical-align: middle; margin: 0 .4em; overflow: hidden; }
.conf > span { display: block; height: 100%; background: #b00020; }
details { margin: .5em 0; } summary { cursor: pointer; color: #444; }
.legend { list-style: none; padding: 0; margin: .3em 0; display: flex; flex-wrap: wrap; gap: .2em 1.1em;
  font-size: .85em; }
.legend .sw { display: inline-block; width: 1.8em; height: 0; border-top: 3px solid; vertical-align: middle;
  margin-right: .35em; }
.legend .hl { font-weight: 700; }
.multiples { display: flex; flex-wrap: wrap; gap: .3em .8em; }
.multiples figure { margin: 0; } .multiples figcaption { font-size: .8em; }
table.errors { font-size: 12.5px; } table.errors td { text-align: right; font-variant-numeric: tabular-nums;
  font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; white-space: nowrap;
  border: 1px solid #fff; }
table.errors th { white-space: nowrap; } table.errors thead th { text-align: right; }
table.errors thead th:first-child { text-align: left; }
table.errors td.f1 { background: #fde0e3; } table.errors td.f2 { background: #f9b3bc; }
table.errors td.f3 { background: #f07c8b; } table.errors td.ex { background: #fff1c2; }
table.errors td.na { color: #aaa; text-align: center; } table.errors td.eq { color: #9a9a9a; }
table.errors td.first { outline: 2px solid #222; outline-offset: -2px; }
table.errors .gap { color: #aaa; text-align: center; border: none; }
.sev { font-size: .8em; font-weight: 700; padding: 0 .4em; border-radius: 3px; text-transform: uppercase; }
.sev.error { background: #b00020; color: #fff; } .sev.warning { background: #f2c14e; }
.sev.info { background: #dde6f0; }
svg text { font: 11px system-ui, -apple-system, "Segoe UI", sans-serif; fill: #333; }
svg .grid { stroke: #e6e6e6; } svg .axis { stroke: #999; } svg .tol { stroke: #2a7ab0; stroke-dasharray: 5 3; }
svg .fd { stroke: #b00020; stroke-dasharray: 4 3; } svg text.tol { fill: #2a7ab0; stroke: none; }
svg text.fd { fill: #b00020; stroke: none; } svg .band { fill: #f6f6f6; }
"""


def esc(x: Any) -> str:
    """`x` as text safe inside HTML and SVG, attribute values included."""
    return html.escape(str(x), quote=True)


def page(title: str, body: str | Iterable[str], css: str = "") -> str:
    """A whole self-contained page: doctype, charset, the shared CSS (plus `css`), and `body` (HTML)."""
    body = body if isinstance(body, str) else "\n".join(body)
    return ("<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{esc(title)}</title>\n<style>{CSS}{css}</style></head><body>\n{body}\n</body></html>\n")


# ---------------------------------------------------------------- small helpers

def _n(x: float) -> str:
    """An SVG coordinate: at most one decimal."""
    s = f"{x:.1f}"
    return s.removesuffix(".0")


def _para(lines: list[str]) -> str:
    """The text report's wrapped lines (memstate.report_text) back as one sentence."""
    return " ".join(line.strip() for line in lines if line.strip())


def _table(rows: Iterable[tuple[str, str]], cls: str = "facts") -> str:
    """Rows of (label, HTML): the label is escaped here, the value must be HTML already."""
    return f"<table class='{cls}'>" + "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def _ramp(anchors: Sequence[str], n: int) -> list[str]:
    """n colours evenly along the piecewise-linear ramp through `anchors`."""
    out = []
    for i in range(n):
        t = i / (n - 1) * (len(anchors) - 1)
        j = min(int(t), len(anchors) - 2)
        f = t - j
        c0, c1 = _rgb(anchors[j]), _rgb(anchors[j + 1])
        out.append("#" + "".join(f"{round(a + (b - a) * f):02x}" for a, b in zip(c0, c1)))
    return out


#: The heat colours, light (small) to dark (large): a magma-like ramp that prints and reads in grey.
LEVELS = 24
HEAT = _ramp(("#fcfdbf", "#feca8d", "#fd9668", "#f1605d", "#cd4071", "#9e2f7f", "#721f81", "#3b0f70"), LEVELS)
ZERO_FILL, INF_FILL = "#e4e9ee", "#000000"
HEAT_CSS = "".join(f".q{i}{{fill:{c}}}" for i, c in enumerate(HEAT)) + f".qz{{fill:{ZERO_FILL}}}.qi{{fill:{INF_FILL}}}\n"

#: Line colours (Tableau 10); tensors past the tenth are dashed.
LINE_COLORS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
               "#9c755f", "#bab0ac")
HIGHLIGHT = "#b00020"


def _decade(d: int) -> str:
    return "1" if d == 0 else f"1e{d}"


def _nice_ticks(lo: float, hi: float, n: int = 6) -> list[int]:
    """Whole-number ticks from lo to hi, about n of them, at 1, 2 or 5 times a power of ten."""
    if hi <= lo:
        return [round(lo)]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = max(1, int(next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)))
    first = math.ceil(lo / step) * step
    return list(range(int(first), int(hi) + 1, step))


def _decade_range(values: Iterable[float], extra: Iterable[float] = (), span: int = 20) -> tuple[int, int]:
    """Whole decades lo < hi covering the finite positive `values` (and `extra`), at most `span` apart."""
    pos = [v for v in values if 0 < v < math.inf]
    more = [v for v in extra if 0 < v < math.inf]
    if not pos and not more:
        return -16, 0
    lo = math.floor(math.log10(min(pos + more)))
    hi = math.ceil(math.log10(max(pos + more)))
    if hi <= lo:
        hi = lo + 1
    if hi - lo > span:
        lo = hi - span
    return lo, hi


# ---------------------------------------------------------------- the error-against-step chart

class _LogPlot:
    """Maps (step, error) to pixels: steps linear, errors on a log scale from 1e`lo` to 1e`hi`, with a band
    below for errors of exactly 0 and one above for non-finite errors."""

    def __init__(self, steps: tuple[int, int], decades: tuple[int, int], width: int, height: int, *,
                 left: int, right: int, top: int, bottom: int, zero: bool, inf: bool, band: int = 16):
        self.s0, self.s1 = steps
        if self.s1 <= self.s0:
            self.s0, self.s1 = self.s0 - 0.5, self.s1 + 0.5
        self.lo, self.hi = decades
        self.w, self.h = width, height
        self.x0, self.x1 = left, width - right
        self.zero_y = height - bottom if zero else None
        self.inf_y = top if inf else None
        self.y0 = height - bottom - (band if zero else 0)  # the bottom of the log region (1e`lo`)
        self.y1 = top + (band if inf else 0)  # its top (1e`hi`)

    def x(self, step: float) -> float:
        return self.x0 + (step - self.s0) / (self.s1 - self.s0) * (self.x1 - self.x0)

    def y(self, v: float) -> float:
        if v == 0 and self.zero_y is not None:
            return self.zero_y
        if not v < math.inf and self.inf_y is not None:
            return self.inf_y
        d = math.log10(v) if 0 < v < math.inf else (self.lo if v <= 0 else self.hi)
        d = min(max(d, self.lo), self.hi)
        return self.y0 - (d - self.lo) / (self.hi - self.lo) * (self.y0 - self.y1)

    def decade_step(self, most: int) -> int:
        span = self.hi - self.lo
        return next(k for k in (1, 2, 3, 4, 5, 10) if span / k <= most) if span > most else 1

    def frame(self, *, most_y: int = 9, x_ticks: int = 6, labels: bool = True) -> list[str]:
        """Grid lines, the axes, and their labels."""
        out = []
        k = self.decade_step(most_y)
        for d in range(self.lo, self.hi + 1):
            y = self.y(10.0 ** d)
            if d % k == 0:
                out.append(f"<line class='grid' x1='{_n(self.x0)}' x2='{_n(self.x1)}' y1='{_n(y)}' y2='{_n(y)}'/>")
                if labels:
                    out.append(f"<text x='{_n(self.x0 - 4)}' y='{_n(y + 3.5)}' text-anchor='end'>{_decade(d)}</text>")
        for label, y in (("0", self.zero_y), ("inf", self.inf_y)):
            if y is not None:
                out.append(f"<rect class='band' x='{_n(self.x0)}' y='{_n(y - 5)}' width='{_n(self.x1 - self.x0)}' "
                           "height='10'/>")
                out.append(f"<text x='{_n(self.x0 - 4)}' y='{_n(y + 3.5)}' text-anchor='end'>{label}</text>")
        bottom = self.zero_y + 6 if self.zero_y is not None else self.y0
        out.append(f"<line class='axis' x1='{_n(self.x0)}' x2='{_n(self.x1)}' y1='{_n(bottom)}' y2='{_n(bottom)}'/>")
        out.append(f"<line class='axis' x1='{_n(self.x0)}' x2='{_n(self.x0)}' y1='{_n(self.y1 - 4)}' "
                   f"y2='{_n(bottom)}'/>")
        lo, hi = math.ceil(self.s0), math.floor(self.s1)
        ticks = _nice_ticks(lo, hi, x_ticks) if x_ticks > 2 else sorted({lo, hi})
        for t in ticks:
            x = self.x(t)
            anchor = "end" if x > self.w - 12 else "middle"
            out.append(f"<line class='axis' x1='{_n(x)}' x2='{_n(x)}' y1='{_n(bottom)}' y2='{_n(bottom + 4)}'/>")
            out.append(f"<text x='{_n(x + (4 if anchor == 'end' else 0))}' y='{_n(bottom + 15)}' "
                       f"text-anchor='{anchor}'>{t}</text>")
        return out

    def hline(self, v: float, cls: str, label: str = "") -> list[str]:
        if not 10.0 ** self.lo <= v <= 10.0 ** self.hi:
            return []
        y = self.y(v)
        out = [f"<line class='{cls}' x1='{_n(self.x0)}' x2='{_n(self.x1)}' y1='{_n(y)}' y2='{_n(y)}'/>"]
        if label:
            out.append(f"<text class='{cls}' x='{_n(self.x1 - 3)}' y='{_n(y - 3)}' text-anchor='end'>{esc(label)}</text>")
        return out

    def vline(self, step: float, cls: str, label: str = "") -> list[str]:
        x = self.x(step)
        top = self.inf_y - 6 if self.inf_y is not None else self.y1
        bottom = self.zero_y + 6 if self.zero_y is not None else self.y0
        out = [f"<line class='{cls}' x1='{_n(x)}' x2='{_n(x)}' y1='{_n(top)}' y2='{_n(bottom)}'/>"]
        if label:  # above the plot: the chart leaves room for it
            anchor, dx = ("end", 3) if x > (self.x0 + self.x1) / 2 else ("start", -3)
            out.append(f"<text class='{cls}' x='{_n(x + dx)}' y='{_n(top - 5)}' text-anchor='{anchor}'>"
                       f"{esc(label)}</text>")
        return out


def _points(buckets: tuple[Bucket, ...]) -> list[tuple[int, float, bool]]:
    """(step, max rel error, failed) per bucket, at the step where the bucket's error peaks."""
    return [(b.worst_step, b.max_rel_error if not math.isnan(b.max_rel_error) else math.inf, b.failed > 0)
            for b in buckets]


def _path(plot: _LogPlot, buckets: tuple[Bucket, ...]) -> str:
    """A polyline's points: a single step at its error, a merged bucket as a level run over its steps (the
    worst of them), so a rise shows in the bucket where it happens."""
    coords = []
    for b in buckets:
        v = b.max_rel_error if not math.isnan(b.max_rel_error) else math.inf
        y = _n(plot.y(v))
        coords += [f"{_n(plot.x(b.first_step))},{y}"] + ([f"{_n(plot.x(b.last_step))},{y}"] if b.steps > 1 else [])
    return " ".join(coords)


def _chart_domain(c: Comparison) -> tuple[tuple[int, int], tuple[int, int], bool, bool, list[float]]:
    """Shared by the big chart and the small multiples: step range, decade range, zero/inf bands, tolerances."""
    buckets = [b for s in c.series for b in s.buckets]
    rels = [b.max_rel_error for b in buckets]
    rtols = sorted({u.tolerance.rtol for u in c.tolerances_used if u.tolerance.rtol > 0})
    marks = [c.first_divergence.step] if c.first_divergence is not None else []
    steps = (min([b.first_step for b in buckets] + marks), max([b.last_step for b in buckets] + marks))
    decades = _decade_range(rels, rtols + [r / 10 for r in rtols])
    zero = any(r == 0 for r in rels)
    inf = any(not r < math.inf for r in rels)
    return steps, decades, zero, inf, rtols


def _tolerance_of(c: Comparison, name: str) -> float | None:
    return next((u.tolerance.rtol for u in c.tolerances_used if name in u.names), None)


def error_chart(c: Comparison, width: int = 920, height: int = 330) -> str:
    """Max rel error against step, one line per tensor, log scale; the tolerance and first divergence marked."""
    steps, decades, zero, inf, rtols = _chart_domain(c)
    plot = _LogPlot(steps, decades, width, height, left=58, right=14, top=24, bottom=34, zero=zero, inf=inf)
    f = c.first_divergence
    out = [(f"<svg class='chart' xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
           f"viewBox='0 0 {width} {height}' role='img' aria-label='max rel error against step, per tensor'>")]
    out += plot.frame()
    for rtol in rtols[:3]:
        out += plot.hline(rtol, "tol", f"tolerance: rtol {rtol:g}")
    if f is not None:
        out += plot.vline(f.step, "fd", f"first divergence: step {f.step}" + (f", {f.name}" if f.name else ""))
    highlight = f.name if f is not None else None
    lines: list[str] = []
    top: list[str] = []
    dots: list[str] = []
    for i, s in enumerate(c.series):
        pts = _points(s.buckets)
        color = HIGHLIGHT if s.name == highlight else LINE_COLORS[i % len(LINE_COLORS)]
        dash = " stroke-dasharray='6 3'" if i >= len(LINE_COLORS) and s.name != highlight else ""
        wide = "3" if s.name == highlight else "1.6"
        coords = _path(plot, s.buckets)
        title = f"<title>{esc(s.name)}</title>"
        line = (f"<polyline fill='none' stroke='{color}' stroke-width='{wide}'{dash} stroke-linejoin='round' "
                f"points='{coords}'>{title}</polyline>")
        if s.name == highlight:
            top.append(line)  # drawn last, over the others
        else:
            lines.append(line)
        if len(pts) <= 16:
            for x, v, _ in pts:
                dots.append(f"<circle cx='{_n(plot.x(x))}' cy='{_n(plot.y(v))}' r='{2.8 if s.name == highlight else 2}' "
                            f"fill='{color}'><title>{esc(s.name)}, step {x}: {_e(v)}</title></circle>")
    out += lines + top + dots
    out.append(f"<text x='12' y='{_n(height / 2)}' transform='rotate(-90 12 {_n(height / 2)})' "
               "text-anchor='middle'>max rel error</text>")
    out.append(f"<text x='{_n(width - 14)}' y='{height - 4}' text-anchor='end'>step</text>")
    out.append("</svg>")
    legend = ["<ul class='legend'>"]
    for i, s in enumerate(c.series):
        color = HIGHLIGHT if s.name == highlight else LINE_COLORS[i % len(LINE_COLORS)]
        style = f"border-color:{color}" + (";border-top-style:dashed" if i >= len(LINE_COLORS)
                                           and s.name != highlight else "")
        cls = " class='hl'" if s.name == highlight else ""
        legend.append(f"<li{cls}><span class='sw' style='{style}'></span>{esc(s.name)}</li>")
    legend.append("</ul>")
    return "".join(out) + "\n" + "".join(legend)


def small_multiples(c: Comparison, width: int = 214, height: int = 104) -> str:
    """One small chart per tensor, all on the scale of the big one: its errors, its tolerance, failing steps red."""
    steps, decades, zero, inf, _ = _chart_domain(c)
    f = c.first_divergence
    figs = ["<div class='multiples'>"]
    for s in c.series:
        plot = _LogPlot(steps, decades, width, height, left=38, right=6, top=6, bottom=20, zero=zero, inf=inf,
                        band=13)
        out = [(f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
               f"viewBox='0 0 {width} {height}' role='img' aria-label='{esc(s.name)}: max rel error against step'>")]
        out += plot.frame(most_y=3, x_ticks=2)
        rtol = _tolerance_of(c, s.name)
        if rtol:
            out += plot.hline(rtol, "tol")
        if f is not None:
            out += plot.vline(f.step, "fd")
        pts = _points(s.buckets)
        hl = f is not None and s.name == f.name
        color = HIGHLIGHT if hl else "#4e79a7"
        coords = _path(plot, s.buckets)
        out.append(f"<polyline fill='none' stroke='{color}' stroke-width='{2.2 if hl else 1.5}' points='{coords}'/>")
        for x, v, failed in pts:
            if failed or len(pts) <= 16:
                fill = "#b00020" if failed else color
                out.append(f"<circle cx='{_n(plot.x(x))}' cy='{_n(plot.y(v))}' r='{2.4 if failed else 1.8}' "
                           f"fill='{fill}'><title>step {x}: {_e(v)}{' (fails)' if failed else ''}</title></circle>")
        out.append("</svg>")
        worst = max((b.max_rel_error for b in s.buckets), default=0.0)
        failed = sum(b.failed for b in s.buckets)
        status = (f"<span class='fail'>fails in {failed} step{'s' * (failed != 1)}</span>" if failed
                  else "<span class='agree'>within tolerance</span>")
        name = f"<b>{esc(s.name)}</b>" if hl else esc(s.name)
        figs.append(f"<figure class='fit'>{''.join(out)}<figcaption><code>{name}</code> worst {_e(worst)}, {status}"
                    "</figcaption></figure>")
    figs.append("</div>")
    return "".join(figs)


# ---------------------------------------------------------------- the heatmap

def _matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return 1, shape[0]
    return shape[0], math.prod(shape[1:])


def _level(v: float, lo: float, hi: float) -> str:
    """The CSS class of one heat cell."""
    if v == 0:
        return "qz"
    if not v < math.inf:
        return "qi"
    t = (math.log10(v) - lo) / (hi - lo)
    return f"q{min(LEVELS - 1, max(0, int(t * LEVELS)))}"


def _span(i: int, size: int, total: int) -> str:
    a, b = i * size, min(total, (i + 1) * size) - 1
    return str(a) if a == b else f"{a}-{b}"


def heatmap(grid: Sequence[Sequence[float]], shape: tuple[int, ...], *, mark: float | None = None,
            mark_label: str = "", title: str = "") -> str:
    """|a - b| by row and column as SVG rects (one per grid cell), log colour scale, with a legend.

    `shape` is the tensor's: its rows are the first axis and its columns the rest flattened (a 1-d tensor is
    one row, a 0-d tensor one cell); a grid smaller than that is max-pooled over blocks (compare.grid_bin).
    `mark` puts a tick on the legend (the tolerance at the tensor's scale).
    """
    n_rows, n_cols = len(grid), len(grid[0])
    total_rows, total_cols = _matrix_shape(shape)
    br, bc = grid_bin(total_rows), grid_bin(total_cols)
    values = [v for row in grid for v in row]
    lo, hi = _decade_range(values)
    has_zero = any(v == 0 for v in values)
    has_inf = any(not v < math.inf for v in values)
    cw, ch = max(2, min(28, 720 // n_cols)), max(2, min(28, 480 // n_rows))
    cw, ch = min(cw, 4 * ch), min(ch, 4 * cw)  # cells at most 4:1
    hw, hh = n_cols * cw, n_rows * ch
    left, top = (54 if n_rows > 1 else 16), 30
    legend_w = max(260, min(420, hw))
    width = max(left + hw + (60 if hw < 300 else 16), left + legend_w + (130 if has_zero or has_inf else 24))
    ly = top + hh + 26  # the legend bar's top
    height = ly + 48
    out = [(f"<svg class='heatmap' xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
           f"viewBox='0 0 {width} {height}' role='img' aria-label='{esc(title)}' "
           f"data-rows='{n_rows}' data-cols='{n_cols}'>")]
    # the cells, in cell units
    tips = n_rows * n_cols <= 4096
    out.append(f"<svg x='{left}' y='{top}' width='{hw}' height='{hh}' viewBox='0 0 {n_cols} {n_rows}' "
               "preserveAspectRatio='none' shape-rendering='crispEdges'>")
    for r, row in enumerate(grid):
        for col, v in enumerate(row):
            rect = f"<rect x='{col}' y='{r}' width='1' height='1' class='{_level(v, lo, hi)}'"
            if tips:
                where = (f"row {_span(r, br, total_rows)}, " if total_rows > 1 or n_rows > 1 else "") + \
                    (f"column {_span(col, bc, total_cols)}" if len(shape) >= 1 else "the value")
                out.append(f"{rect}><title>{where}: {_e(v)}</title></rect>")
            else:
                out.append(rect + "/>")
    out.append("</svg>")
    out.append(f"<rect x='{left}' y='{top}' width='{hw}' height='{hh}' fill='none' stroke='#888'/>")
    # axes: original indices at the centre of their cell
    if len(shape) >= 1 and total_cols > 1:
        for t in _nice_ticks(0, total_cols - 1, max(2, min(8, hw // 70))):
            x = left + (t // bc + 0.5) * cw
            out.append(f"<line class='axis' x1='{_n(x)}' x2='{_n(x)}' y1='{top - 4}' y2='{top}'/>"
                       f"<text x='{_n(x)}' y='{top - 7}' text-anchor='middle'>{t}</text>")
    if n_rows > 1:
        for t in _nice_ticks(0, total_rows - 1, max(2, min(8, hh // 40))):
            y = top + (t // br + 0.5) * ch
            out.append(f"<line class='axis' x1='{left - 4}' x2='{left}' y1='{_n(y)}' y2='{_n(y)}'/>"
                       f"<text x='{left - 7}' y='{_n(y + 3.5)}' text-anchor='end'>{t}</text>")
        out.append(f"<text x='12' y='{_n(top + hh / 2)}' transform='rotate(-90 12 {_n(top + hh / 2)})' "
                   "text-anchor='middle'>row</text>")
    col_title = "column" if len(shape) <= 2 else "column (axes 1.. flattened)"
    if len(shape) >= 1:
        out.append(f"<text x='{left + hw + 6}' y='{top - 7}'>{col_title}</text>" if hw < 300 else
                   f"<text x='{left}' y='11'>{col_title}</text>")
    # the legend: the colour bar by decade, then 0 and inf swatches
    step = legend_w / LEVELS
    for i, color in enumerate(HEAT):
        out.append(f"<rect x='{_n(left + i * step)}' y='{ly}' width='{_n(step + 0.5)}' height='10' fill='{color}'/>")
    k = next((k for k in (1, 2, 3, 4, 5, 10) if (hi - lo) / k <= 8), 10)
    for d in range(lo, hi + 1):
        if d % k == 0:
            x = left + (d - lo) / (hi - lo) * legend_w
            out.append(f"<line class='axis' x1='{_n(x)}' x2='{_n(x)}' y1='{ly + 10}' y2='{ly + 14}'/>"
                       f"<text x='{_n(x)}' y='{ly + 25}' text-anchor='middle'>{_decade(d)}</text>")
    out.append(f"<text x='{left}' y='{ly - 5}'>|a - b|, log scale</text>")
    if mark is not None and 10.0 ** lo <= mark <= 10.0 ** hi and mark > 0:
        x = left + (math.log10(mark) - lo) / (hi - lo) * legend_w
        out.append(f"<path d='M{_n(x)} {ly - 1}l-4 -6h8z' fill='#2a7ab0'/><line x1='{_n(x)}' x2='{_n(x)}' "
                   f"y1='{ly}' y2='{ly + 10}' stroke='#2a7ab0' stroke-width='2'/>")
        anchor = "end" if x > left + legend_w / 2 else "start"
        out.append(f"<text class='tol' x='{_n(x)}' y='{ly + 38}' text-anchor='{anchor}'>{esc(mark_label)}</text>")
    sx = left + legend_w + 24
    for label, fill, present in (("0 (equal)", ZERO_FILL, has_zero), ("inf (non-finite)", INF_FILL, has_inf)):
        if present:
            out.append(f"<rect x='{sx}' y='{ly}' width='10' height='10' fill='{fill}' stroke='#bbb'/>"
                       f"<text x='{sx + 14}' y='{ly + 9}'>{label}</text>")
            ly += 16
    out.append("</svg>")
    return "".join(out)


def heatmap_figure(f: FirstDivergence) -> str:
    t = f.tensor
    if f.error_grid is None or not f.error_grid or t is None or t.metrics is None:
        return ""
    total_rows, total_cols = _matrix_shape(t.shape_a)
    n_rows, n_cols = len(f.error_grid), len(f.error_grid[0])
    tol = t.tolerance
    at_scale = tol.atol + tol.rtol * t.metrics.scale
    svg = heatmap(f.error_grid, t.shape_a, mark=at_scale, mark_label=f"tolerance at scale {_e(at_scale)}",
                  title=f"|a - b| of {f.name} at step {f.step} by row and column")
    what = {0: "a 0-d tensor: one cell", 1: f"a 1-d tensor: one row of {total_cols} elements"}.get(
        len(t.shape_a), f"{total_rows} rows (axis 0) by {total_cols} columns"
        + (" (the other axes flattened)" if len(t.shape_a) > 2 else ""))
    binned = ""
    br, bc = grid_bin(total_rows), grid_bin(total_cols)
    if br > 1 or bc > 1:
        binned = (f"; binned to {n_rows} x {n_cols} cells, each the largest error of a block of {br} row"
                  f"{'s' * (br != 1)} by {bc} column{'s' * (bc != 1)}")
    lo, hi = _decade_range(v for row in f.error_grid for v in row)
    where = ("marked on the colour bar" if 10.0 ** lo <= at_scale <= 10.0 ** hi else
             "below the colour bar's range" if at_scale < 10.0 ** lo else "above the colour bar's range")
    caption = (f"|a - b| per element of <code>{esc(f.name)}</code> at step {f.step}, {what}{binned}. Darker is "
               f"larger. The tolerance at the tensor's scale, atol + rtol x max(|a|, |b|) = {_e(at_scale)}, is "
               f"{where}; an element fails when its error exceeds atol + rtol x its own magnitude.")
    return f"<figure class='fit'>{svg}<figcaption>{caption}</figcaption></figure>"


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
    meta = info.meta
    facts = [str(meta[k]) for k in ("impl", "scenario", "dtype") if k in meta]
    facts.append(f"{info.steps} step{'s' * (info.steps != 1)}")
    if info.incomplete_step is not None:
        facts.append(f"crashed in step {info.incomplete_step}")
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
    from memstate.report_json import jsonable

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
        return ["<h2>Diagnosis</h2><p>none available (memstate.diagnosis is not installed)</p>"]
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
    return parts


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
    body += _charts(c)
    body += _error_table(c)
    body += _findings(c)
    body += _meta(c)
    body += _tolerances(c)
    body.append(f"<details><summary>the text report</summary><pre>{esc(report_text.render(c))}</pre></details>")
    title = f"memstate diff: {c.verdict}" + (f" at step {f.step}, {f.name}" if f is not None and f.name else "")
    return page(title, body, DIFF_CSS + HEAT_CSS)

"""Pictures for the HTML reports, drawn as inline SVG: error against step (log scale) and error heatmaps."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from memstate.comparator.compare import Bucket, Comparison, FirstDivergence, grid_bin
from memstate.report.page import esc
from memstate.numfmt import short as _e


def _n(x: float) -> str:
    """An SVG coordinate: at most one decimal."""
    s = f"{x:.1f}"
    return s.removesuffix(".0")


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
        self.s0, self.s1 = float(steps[0]), float(steps[1])
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
        band_ys: tuple[tuple[str, int | None], ...] = (("0", self.zero_y), ("inf", self.inf_y))
        for label, band_y in band_ys:
            if band_y is not None:
                out.append(f"<rect class='band' x='{_n(self.x0)}' y='{_n(band_y - 5)}' width='{_n(self.x1 - self.x0)}' "
                           "height='10'/>")
                out.append(f"<text x='{_n(self.x0 - 4)}' y='{_n(band_y + 3.5)}' text-anchor='end'>{label}</text>")
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
        n_failed = sum(int(b.failed) for b in s.buckets)
        status = (f"<span class='fail'>fails in {n_failed} step{'s' * (n_failed != 1)}</span>" if n_failed
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


def _heat_cells(grid: Sequence[Sequence[float]], shape: tuple[int, ...], left: int, top: int, hw: int,
                hh: int) -> list[str]:
    """The heatmap's cells as one nested SVG in cell units, each with a tooltip when there are few."""
    n_rows, n_cols = len(grid), len(grid[0])
    total_rows, total_cols = _matrix_shape(shape)
    br, bc = grid_bin(total_rows), grid_bin(total_cols)
    values = [v for row in grid for v in row]
    lo, hi = _decade_range(values)
    out: list[str] = []
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
    return out


def _heat_axes(shape: tuple[int, ...], n_rows: int, left: int, top: int, hw: int, hh: int, cw: int,
               ch: int) -> list[str]:
    """Ticks at the original indices (at the centre of their cell) and the axis titles."""
    total_rows, total_cols = _matrix_shape(shape)
    br, bc = grid_bin(total_rows), grid_bin(total_cols)
    out: list[str] = []
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
    return out


def _heat_legend(lo: int, hi: int, left: int, legend_w: int, ly: int, mark: float | None, mark_label: str,
                 has_zero: bool, has_inf: bool) -> list[str]:
    """The colour bar by decade, the tolerance tick, then the 0 and inf swatches."""
    out: list[str] = []
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
    return out


def heatmap(grid: Sequence[Sequence[float]], shape: tuple[int, ...], *, mark: float | None = None,
            mark_label: str = "", title: str = "") -> str:
    """|a - b| by row and column as SVG rects (one per grid cell), log colour scale, with a legend.

    `shape` is the tensor's: its rows are the first axis and its columns the rest flattened (a 1-d tensor is
    one row, a 0-d tensor one cell); a grid smaller than that is max-pooled over blocks (compare.grid_bin).
    `mark` puts a tick on the legend (the tolerance at the tensor's scale).
    """
    n_rows, n_cols = len(grid), len(grid[0])
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
    out += _heat_cells(grid, shape, left, top, hw, hh)
    out += _heat_axes(shape, n_rows, left, top, hw, hh, cw, ch)
    out += _heat_legend(lo, hi, left, legend_w, ly, mark, mark_label, has_zero, has_inf)
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

"""Line charts of training curves (loss, accuracy against step) as inline SVG, for diff and sweep pages.

Linear axes; non-finite values break a line (a run that blows up stops being drawn where it turns nan
or inf). Vertical marks (the first divergence, a stop) are dashed lines with a label and a tooltip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from memstate.report.page import esc

A_COLOR, B_COLOR = "#4e79a7", "#f28e2b"
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
           "#9c755f", "#bab0ac")
CSS = (".curves{display:flex;flex-wrap:wrap;gap:12px}.curves figure{margin:0}"
       ".mark{stroke-dasharray:5 3;stroke-width:1.5}.grid{stroke:#e4e9ee}\n")


@dataclass(frozen=True)
class Line:
    label: str
    color: str
    points: tuple[tuple[int, float], ...]
    dashed: bool = False


@dataclass(frozen=True)
class Mark:
    step: int
    label: str
    color: str


def _n(x: float) -> str:
    return f"{x:.1f}".removesuffix(".0")


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _segments(points: Sequence[tuple[int, float]]) -> list[list[tuple[int, float]]]:
    out: list[list[tuple[int, float]]] = [[]]
    for s, v in points:
        if math.isfinite(v):
            out[-1].append((s, v))
        elif out[-1]:
            out.append([])
    return [seg for seg in out if seg]


def line_chart(title: str, lines: Sequence[Line], marks: Sequence[Mark] = (), *, y_label: str = "",
               percent: bool = False, width: int = 450, height: int = 260) -> str:
    """One chart: every line against step on shared linear axes, with vertical marks and a legend."""
    values = [v for ln in lines for _, v in ln.points if math.isfinite(v)]
    steps = [s for ln in lines for s, _ in ln.points] + [m.step for m in marks]
    if not values or not steps:
        return f"<figure><figcaption>{esc(title)}: nothing recorded to draw</figcaption></figure>"
    x0, x1 = min(steps), max(max(steps), min(steps) + 1)
    y0, y1 = (0.0, 1.0) if percent else (min(0.0, min(values)), max(values) * 1.05 or 1.0)
    left, right, top, bottom = 52, 10, 22, 30
    pw, ph = width - left - right, height - top - bottom

    def px(s: float) -> float:
        return left + (s - x0) / (x1 - x0) * pw

    def py(v: float) -> float:
        return top + (1 - (v - y0) / (y1 - y0)) * ph

    out = [f"<svg class='chart' xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
           f"viewBox='0 0 {width} {height}' role='img' aria-label='{esc(title)}'>",
           f"<text x='{left}' y='14' font-weight='bold'>{esc(title)}</text>"]
    for t in _ticks(y0, y1):
        label = f"{t:.0%}" if percent else f"{t:g}"
        out.append(f"<line class='grid' x1='{left}' x2='{width - right}' y1='{_n(py(t))}' y2='{_n(py(t))}'/>"
                   f"<text x='{left - 4}' y='{_n(py(t) + 4)}' text-anchor='end' font-size='11'>{label}</text>")
    for t in _ticks(x0, x1):
        out.append(f"<text x='{_n(px(t))}' y='{height - 12}' text-anchor='middle' font-size='11'>{t:g}</text>")
    out.append(f"<rect x='{left}' y='{top}' width='{pw}' height='{ph}' fill='none' stroke='#888'/>")
    for ln in lines:
        dash = " stroke-dasharray='6 3'" if ln.dashed else ""
        for seg in _segments(ln.points):
            pts = " ".join(f"{_n(px(s))},{_n(py(v))}" for s, v in seg)
            out.append(f"<polyline fill='none' stroke='{ln.color}' stroke-width='1.8'{dash} points='{pts}'>"
                       f"<title>{esc(ln.label)}</title></polyline>")
    for m in marks:
        x = _n(px(m.step))
        out.append(f"<line class='mark' x1='{x}' x2='{x}' y1='{top}' y2='{top + ph}' stroke='{m.color}'>"
                   f"<title>{esc(m.label)}</title></line>"
                   f"<text x='{x}' y='{top - 3}' text-anchor='middle' font-size='10' fill='{m.color}'>"
                   f"{esc(m.label.split(':')[0])}</text>")
    out.append(f"<text x='{width - right}' y='{height - 1}' text-anchor='end' font-size='11'>step</text>")
    if y_label:
        out.append(f"<text x='12' y='{_n(top + ph / 2)}' transform='rotate(-90 12 {_n(top + ph / 2)})' "
                   f"text-anchor='middle' font-size='11'>{esc(y_label)}</text>")
    out.append("</svg>")
    legend = "".join(f"<li><span class='sw' style='border-color:{ln.color}"
                     f"{';border-top-style:dashed' if ln.dashed else ''}'></span>{esc(ln.label)}</li>" for ln in lines)
    return f"<figure>{''.join(out)}<ul class='legend'>{legend}</ul></figure>"


__all__ = ["Line", "Mark", "line_chart", "A_COLOR", "B_COLOR", "PALETTE", "CSS"]

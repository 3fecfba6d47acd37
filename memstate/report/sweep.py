"""Reports of `memstate sweep`: the table as text and JSON, and an HTML page of curves and final accuracies.

Every file holds only the runs' figures (no timings, no paths of temporary files), so two runs of the
same sweep write identical files.
"""

from __future__ import annotations

import math
from typing import Any

from memstate.report.curves_svg import CSS as CURVES_CSS, PALETTE, Line, Mark, line_chart
from memstate.report.json import dumps, jsonable
from memstate.report.page import esc, page
from memstate.runner.sweep import Sweep, SweepRun

SCHEMA = "memstate.sweep"
VERSION = 1


def _pct(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.2%}"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def _stop(r: SweepRun) -> str:
    return f"{r.stop[1]} @ {r.stop[0]} (epoch {r.stop[3]})" if r.stop is not None else "-"


def rows(sweep: Sweep) -> tuple[list[str], list[list[str]]]:
    """The table's header and cells, one row per run, in grid order."""
    keys = [a.key.rsplit(".", 1)[-1] for a in sweep.axes]
    multi = len(sweep.impls) > 1
    header = ["#", *(["impl"] if multi else []), *keys, "steps", "stopped by @ step", "train loss", "val loss",
              "train acc", "val acc", "test acc"]
    body = []
    for r in sweep.runs:
        f = r.final
        body.append([str(r.index + 1), *([r.impl] if multi else []), *(v for _, v in r.settings),
                     f"{r.steps}/{r.planned}", _stop(r),
                     _num(f.train_loss if f is not None else r.final_loss),
                     _num(f.validation_loss if f is not None else None),
                     _pct(f.train_accuracy if f is not None else None),
                     _pct(f.validation_accuracy if f is not None else None), _pct(r.test_accuracy)])
    return header, body


def render_text(sweep: Sweep) -> str:
    """The table, aligned, with a line on what the columns mean."""
    header, body = rows(sweep)
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    impls = ",".join(sweep.impls)
    out = [f"memstate sweep {sweep.scenario} ({len(sweep.runs)} runs, {impls})",
           *(f"  {a.key} = {', '.join(a.texts)}" for a in sweep.axes), "",
           line(header).rstrip(), *(line(b).rstrip() for b in body), "",
           "steps: trained/planned; stopped by: the [training.stop] rule that fired, the last step trained and its epoch;",
           "losses and accuracies: the last evaluation (docs/training.md); without one, train loss is the last",
           "batch loss and test acc the harness's test accuracy."]
    return "\n".join(out) + "\n"


def _run_dict(r: SweepRun) -> dict[str, Any]:
    return {"index": r.index, "impl": r.impl, "settings": dict(r.settings), "label": r.label, "steps": r.steps,
            "planned_steps": r.planned,
            "stop": None if r.stop is None else {"step": r.stop[0], "rule": r.stop[1], "value": r.stop[2],
                                                 "epoch": r.stop[3]},
            "final_loss": r.final_loss, "final": jsonable(r.final), "test_accuracy": r.test_accuracy,
            "evaluations": [jsonable(e) for e in r.evaluations],
            "loss_curve": [list(p) for p in r.loss_curve]}


def to_dict(sweep: Sweep) -> dict[str, Any]:
    """The sweep as JSON-ready values (documented in docs/training.md)."""
    return {"format": SCHEMA, "version": VERSION, "scenario": sweep.scenario,
            "axes": [{"key": a.key, "values": list(a.texts)} for a in sweep.axes], "impls": list(sweep.impls),
            "runs": [_run_dict(r) for r in sweep.runs]}


def render_json(sweep: Sweep) -> str:
    return dumps(to_dict(sweep))


def _bars(sweep: Sweep, width: int = 620) -> str:
    """Final test (else validation) accuracy per run, as horizontal bars."""
    bar_h, left = 18, 260
    height = bar_h * len(sweep.runs) + 10
    out = [f"<svg class='chart' xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
           f"viewBox='0 0 {width} {height}' role='img' aria-label='final accuracy per run'>"]
    for i, r in enumerate(sweep.runs):
        acc = r.test_accuracy if r.test_accuracy is not None else (r.final.validation_accuracy if r.final else None)
        y = 5 + i * bar_h
        w = 0.0 if acc is None or not math.isfinite(acc) else acc * (width - left - 60)
        color = PALETTE[i % len(PALETTE)]
        out.append(f"<text x='{left - 6}' y='{y + 13}' text-anchor='end' font-size='12'>{esc(r.label)}"
                   f"{esc(' · ' + r.impl) if len(sweep.impls) > 1 else ''}</text>"
                   f"<rect x='{left}' y='{y + 2}' width='{w:.1f}' height='{bar_h - 5}' fill='{color}'/>"
                   f"<text x='{left + w + 4:.1f}' y='{y + 13}' font-size='12'>{_pct(acc)} ({_stop(r)})</text>")
    out.append("</svg>")
    return "".join(out)


def render_html(sweep: Sweep) -> str:
    """One self-contained page: the table, loss and accuracy curves of every run, final accuracies."""
    header, body = rows(sweep)
    table = ["<table class='facts'><thead><tr>", *(f"<th>{esc(h)}</th>" for h in header), "</tr></thead><tbody>"]
    for cells in body:
        table.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
    table.append("</tbody></table>")
    loss, acc, marks = [], [], []
    for i, r in enumerate(sweep.runs):
        color, name = PALETTE[i % len(PALETTE)], f"{r.label}" + (f" · {r.impl}" if len(sweep.impls) > 1 else "")
        if r.evaluations:
            loss.append(Line(f"{name} train", color, tuple((e.step, e.train_loss) for e in r.evaluations)))
            if r.evaluations[0].validation_loss is not None:
                loss.append(Line(f"{name} validation", color, tuple((e.step, e.validation_loss or math.nan)
                                                                    for e in r.evaluations), dashed=True))
            key = "validation_accuracy" if r.evaluations[0].validation_accuracy is not None else "test_accuracy"
            pts = tuple((e.step, getattr(e, key)) for e in r.evaluations if getattr(e, key) is not None)
            acc.append(Line(f"{name} {key.replace('_', ' ')}", color, pts))
        else:
            loss.append(Line(f"{name} batch loss", color, r.loss_curve))
        if r.stop is not None:
            marks.append(Mark(r.stop[0], f"{r.stop[1]}: {name} stops after step {r.stop[0]}", color))
    charts = [line_chart("loss (solid: training, dashed: validation)", loss, marks, y_label="loss", width=560)]
    if acc:
        charts.append(line_chart("accuracy", acc, marks, y_label="accuracy", percent=True, width=560))
    axes = "; ".join(f"{esc(a.key)} = {esc(', '.join(a.texts))}" for a in sweep.axes)
    body_html = [f"<h1>memstate sweep {esc(sweep.scenario)}</h1>",
                 f"<p>{len(sweep.runs)} runs ({esc(', '.join(sweep.impls))}); {axes}. Dashed vertical lines: where a "
                 "stopping rule ended a run.</p>", *table, "<h2>Curves</h2>",
                 f"<div class='curves'>{''.join(charts)}</div>", "<h2>Final accuracy</h2>", _bars(sweep),
                 f"<details><summary>the text table</summary><pre>{esc(render_text(sweep))}</pre></details>"]
    return page(f"memstate sweep {sweep.scenario}", body_html, CURVES_CSS)


__all__ = ["render_text", "render_json", "render_html", "to_dict", "rows"]

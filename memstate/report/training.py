"""The training view in diff reports: how each run stopped, where the curves part, the evaluations side by side.

Text lines, JSON values and the HTML section (two charts, loss and accuracy, each with both runs' curves
and the first divergence marked) for `Comparison.curves` (memstate.comparator.curves). Shown only when a
trace records evaluations or a stop (docs/training.md).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from memstate.comparator.compare import Comparison
from memstate.comparator.curves import VISIBLE, Curves, SideCurves

TABLE_ROWS = 10
COLUMNS = (("train_loss", "train loss"), ("validation_loss", "val loss"), ("validation_accuracy", "val acc"),
           ("test_accuracy", "test acc"))  # the text table's; JSON and HTML have every figure


def parting_lines(cv: Curves) -> list[str]:
    """Where the curves part, in words (one item per criterion that found a step)."""
    out = []
    if cv.loss_parts is not None:
        out.append(f"the per-step loss is out of tolerance from step {cv.loss_parts}")
    if cv.eval_parts is not None:
        out.append(f"the evaluations from step {cv.eval_parts[0]} ({cv.eval_parts[1]})")
    if cv.visible_parts is not None:
        what = "training or validation losses" if cv.a.evaluated and cv.b.evaluated else "losses"
        out.append(f"the {what} are more than {VISIBLE:.0%} apart from step {cv.visible_parts}")
    return out or ["the curves do not part within the steps both runs recorded"]


def _rows(cv: Curves) -> list[int]:
    steps = sorted({s for side in (cv.a, cv.b) for series in side.evaluations.values() for s, _ in series})
    if len(steps) <= TABLE_ROWS:
        return steps
    keep = {steps[0], steps[-1]}
    keep |= {x.step for x in (cv.a.stop, cv.b.stop) if x is not None}
    if cv.visible_parts is not None:
        keep.add(cv.visible_parts)
    spare = max(0, TABLE_ROWS - len(keep))
    keep |= {steps[round(i * (len(steps) - 1) / max(1, spare))] for i in range(spare)}
    return sorted(k for k in keep if k in steps)


def _value(side: SideCurves, name: str, step: int) -> float | None:
    return next((v for s, v in side.evaluations.get(name, ()) if s == step), None)


def _fmt(name: str, v: float | None) -> str:
    if v is None:
        return "-"
    if name.endswith("accuracy"):
        return f"{v:.2%}" if math.isfinite(v) else str(v)
    return f"{v:.5g}"


def text_lines(c: Comparison) -> list[str]:
    """The text report's 'training view' section (empty without one)."""
    cv = c.curves
    if cv is None:
        return []
    lines = ["", "training view (docs/training.md):"]
    for label, side in (("A", cv.a), ("B", cv.b)):
        lines.append(f"  {label} {side.stop.describe()}" if side.stop is not None else
                     f"  {label} does not stop by a rule (its trace ends at step {side.last_step})")
    if cv.stops_differ:
        lines.append("  the runs stop differently")
    lines += [f"  {p}" for p in parting_lines(cv)]
    cols = [(n, h) for n, h in COLUMNS if n in cv.a.evaluations or n in cv.b.evaluations]
    rows = _rows(cv)
    if rows and cols:
        head = " ".join(f"{h:>10}" for _, h in cols)
        lines += ["", f"  {'step':>7}  A {head}  |  B {head}"]
        for k in rows:
            a = " ".join(f"{_fmt(n, _value(cv.a, n, k)):>10}" for n, _ in cols)
            b = " ".join(f"{_fmt(n, _value(cv.b, n, k)):>10}" for n, _ in cols)
            mark = " <" if k == cv.visible_parts else ""
            lines.append(f"  {k:>7}    {a}  |    {b}{mark}".rstrip())
        if cv.visible_parts in rows:
            lines.append(f"  ('<' marks the first evaluation more than {VISIBLE:.0%} apart)")
    return lines


def _side_dict(side: SideCurves) -> dict[str, Any]:
    return {"stop": None if side.stop is None else {"step": side.stop.step, "rule": side.stop.rule,
                                                     "value": side.stop.value},
            "last_step": side.last_step,
            "loss": [list(p) for p in side.loss],
            "evaluations": {k: [list(p) for p in v] for k, v in side.evaluations.items()}}


def to_dict(c: Comparison) -> dict[str, Any] | None:
    """The JSON report's "training" object (docs/report-schema.md), or None without a training view."""
    cv = c.curves
    if cv is None:
        return None
    return {"a": _side_dict(cv.a), "b": _side_dict(cv.b), "stops_differ": cv.stops_differ,
            "stop_summary": cv.stop_summary(), "loss_parts": cv.loss_parts,
            "eval_parts": None if cv.eval_parts is None else {"step": cv.eval_parts[0], "name": cv.eval_parts[1]},
            "visible_parts": cv.visible_parts}


__all__ = ["text_lines", "to_dict", "parting_lines"]


# ---------------------------------------------------------------- HTML

def _html_lines(cv: Curves, names: Sequence[tuple[str, str]]) -> list[Any]:
    from memstate.report.curves_svg import A_COLOR, B_COLOR, Line

    lines = []
    for label, side, color in (("A", cv.a, A_COLOR), ("B", cv.b, B_COLOR)):
        for i, (name, text) in enumerate(names):
            pts = side.evaluations.get(name) if name != "loss" else side.loss
            if pts:
                lines.append(Line(f"{label} {text}", color, tuple(pts), dashed=i % 2 == 1))
    return lines


def html_section(c: Comparison) -> list[str]:
    """Both runs' loss and accuracy curves side by side, the first divergence and the stops marked."""
    from memstate.report.curves_svg import A_COLOR, B_COLOR, Mark, line_chart
    from memstate.report.page import esc

    cv = c.curves
    if cv is None:
        return []
    marks = []
    f = c.first_divergence
    if f is not None:
        marks.append(Mark(f.step, f"first divergence: step {f.step}" + (f", {f.name}" if f.name else ""), "#b00020"))
    if cv.visible_parts is not None:
        marks.append(Mark(cv.visible_parts, f"apart: more than {VISIBLE:.0%} from step {cv.visible_parts}", "#555"))
    for label, side, color in (("A", cv.a, A_COLOR), ("B", cv.b, B_COLOR)):
        if side.stop is not None:
            marks.append(Mark(side.stop.step, f"{label} stop: {side.stop.describe()}", color))
    evaluated = cv.a.evaluated or cv.b.evaluated
    loss_names = [("train_loss", "train loss"), ("validation_loss", "validation loss")] if evaluated else \
        [("loss", "batch loss")]
    acc_names = [("train_accuracy", "train accuracy"), ("validation_accuracy", "validation accuracy"),
                 ("test_accuracy", "test accuracy")]
    charts = [line_chart("loss", _html_lines(cv, loss_names), marks, y_label="loss")]
    if evaluated:
        charts.append(line_chart("accuracy", _html_lines(cv, acc_names), marks, y_label="accuracy", percent=True))
    facts = [esc(cv.a.stop.describe()) if cv.a.stop else "A does not stop by a rule",
             esc(cv.b.stop.describe()) if cv.b.stop else "B does not stop by a rule"]
    return (["<h2 id='training'>Training curves</h2>",
             f"<p>A (blue) {facts[0].removeprefix('A ')}; B (orange) {facts[1].removeprefix('B ')}."
             + (" <b>The runs stop differently.</b>" if cv.stops_differ else "") + "</p>",
             "<p>" + "; ".join(esc(p) for p in parting_lines(cv)) + ".</p>",
             f"<div class='curves'>{''.join(charts)}</div>"])

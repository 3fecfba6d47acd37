"""The `memstate bisect` report (docs/bisect.md): text for a terminal, and JSON.

`render_text` draws the error curves as log-scale sparklines and lists each replayed interval with
its findings; `to_dict` / `render_json` give the whole `BisectResult` as JSON-ready data.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Sequence

from memstate.bisect.result import BisectResult, Episode, Finding
from memstate.numfmt import short as _e

SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float], low: float = 1e-16, high: float = 1.0) -> str:
    """One character per value on a log scale from `low` to `high`: · for 0 (exact), × for inf/nan."""
    out = []
    span = math.log10(high) - math.log10(low)
    for v in values:
        if v == 0:
            out.append("·")
        elif not math.isfinite(v):
            out.append("×")
        else:
            t = (math.log10(min(max(v, low), high)) - math.log10(low)) / span
            out.append(SPARK[min(len(SPARK) - 1, int(t * len(SPARK)))])
    return "".join(out)


def _finding_lines(f: Finding, indent: str = "    ") -> list[str]:
    import textwrap

    lines = [f"{indent}{f.detail}"]
    for d in f.diagnoses[:2]:
        lines += textwrap.wrap(f"{d.code} ({d.confidence:.2f}): {d.explanation}", 96, initial_indent=indent + "-> ",
                               subsequent_indent=indent + "   ")
    return lines


def _rows(ep: Episode, limit: int = 12) -> list[int]:
    n = ep.steps
    interesting = {0, n - 1}
    for f in (ep.local, ep.first_divergence, ep.non_finite):
        if f is not None and ep.start <= f.step < ep.stop:
            i = f.step - ep.start
            interesting |= {i - 1, i, i + 1}
    rest = max(0, limit - len(interesting))
    interesting |= {round(j * (n - 1) / max(rest - 1, 1)) for j in range(rest)} if n > 1 else set()
    return sorted(i for i in interesting if 0 <= i < n)


def render_text(r: BisectResult) -> str:
    """The report for a terminal."""
    lines = [f"memstate bisect: {r.verdict.upper()}" + (f" ({r.diagnosis})" if r.diagnosis else "")]
    lines += [f"  {r.summary}", ""]
    for s in (r.a, r.b):
        where = f"  [{s.checkpoint_run}]" if s.checkpoint_run else ""
        lines.append(f"  {s.label.upper()}  {s.description}{where}")
    lines.append(f"  {r.steps} steps, parameters checkpointed every {r.checkpoint_every}; tolerance: {r.tolerance}")
    lines += ["", "free-running, parameters at the checkpoints (max rel error; sparkline 1e-16 .. 1, × non-finite):"]
    lines.append(f"  {sparkline(r.checkpoint_errors)}  steps {r.checkpoint_steps[0]}..{r.checkpoint_steps[-1]}")
    cells = [f"{s}:{_e(e)}" for s, e in zip(r.checkpoint_steps, r.checkpoint_errors)]
    shown = cells if len(cells) <= 10 else cells[:5] + ["..."] + cells[-4:]
    lines.append("  " + "  ".join(shown))
    lines.append(f"  loss, per step (worst relative difference per bucket): {sparkline(r.loss_errors)}")
    if r.first_divergent_checkpoint is not None:
        lines.append(f"  first checkpoint beyond tolerance: {r.first_divergent_checkpoint} (last agreeing: "
                     f"{r.last_agreeing_checkpoint if r.last_agreeing_checkpoint is not None else 'none'}; "
                     f"{r.checkpoints_loaded} checkpoints compared)")
    if r.first_loss_divergence is not None:
        lines.append(f"  first step whose loss is beyond tolerance: {r.first_loss_divergence}")
    if r.break_step is not None:
        lines.append(f"  {r.break_side.upper()}'s loss turns non-finite at step {r.break_step}; "  # type: ignore[union-attr]
                     f"{'B' if r.break_side == 'a' else 'A'}'s stays finite")
    for i, ep in enumerate(r.episodes, 1):
        lines += ["", f"replay {i}: steps {ep.start}..{ep.stop - 1} ({ep.steps} steps, {ep.kind}): {ep.reason}"]
        if not all(ep.reproduced):
            lines.append("  warning: the replay did not reproduce the checkpoint run bit for bit")
        if ep.first_divergence is not None:
            lines.append(f"  free-running, comparator: first divergence at step {ep.first_divergence.step}, "
                         f"{ep.first_divergence.tensor}")
            lines += _finding_lines(ep.first_divergence)
        elif ep.free_errors:
            lines.append("  free-running, comparator: the replayed steps agree within tolerance")
        if ep.non_finite is not None:
            nf = ep.non_finite
            lines.append(f"  first non-finite tensor: step {nf.step}, {nf.tensor} ({nf.side.upper()})")  # type: ignore[union-attr]
            same = ep.local is not None and (ep.local.step, ep.local.tensor) == (nf.step, nf.tensor)
            lines += _finding_lines(replace(nf, diagnoses=()) if same else nf)  # lockstep below says the same
        if ep.lockstep_errors is not None:
            if ep.local is not None:
                lines.append(f"  lockstep (from {r.reference.upper()}'s parameters): LOCAL error at step "  # type: ignore[union-attr]
                             f"{ep.local.step}, {ep.local.tensor}")
                lines += _finding_lines(ep.local)
            else:
                lines.append(f"  lockstep (from {r.reference.upper()}'s parameters): every one-step error at "  # type: ignore[union-attr]
                             f"rounding level (<= {_e(max(ep.lockstep_errors or (0.0,)))}, level "
                             f"{_e(r.rounding_level or 0.0)}): drift")
        lines.append(f"  free-running {sparkline(ep.free_errors)}")
        if ep.lockstep_errors is not None:
            lines.append(f"  lockstep     {sparkline(ep.lockstep_errors)}")
        lines.append("    step   free-running" + ("   lockstep" if ep.lockstep_errors is not None else ""))
        for j in _rows(ep):
            row = f"  {ep.start + j:>6}   {_e(ep.free_errors[j]):>12}"
            if ep.lockstep_errors is not None:
                row += f"   {_e(ep.lockstep_errors[j]):>8}"
            lines.append(row)
        if ep.traces:
            lines.append(f"  traces: {ep.traces[0]}  {ep.traces[1]}")
    lines.append("")
    lock = f"; {r.lockstep_steps} more re-run in lockstep (compared in memory)" if r.lockstep else ""
    lines.append(f"recorded in full: {r.steps_replayed} of {r.steps} steps per side "
                 f"({100 * r.recorded_fraction:.1f}% of a full recording){lock}")
    lines.append("time: " + ", ".join(f"{k} {v:.2f}s" for k, v in r.seconds.items()))
    lines += [f"warning: {w}" for w in r.warnings]
    return "\n".join(lines) + "\n"


def to_dict(r: BisectResult) -> dict:
    """The report as JSON-ready data (nan/inf as strings)."""
    from dataclasses import asdict

    from memstate.diagnose.context import jsonable

    d = asdict(r)
    d["exit_code"] = r.exit_code
    d["recorded_fraction"] = r.recorded_fraction
    d["full_recording_steps"] = r.steps
    d["loss_steps"] = [list(s) for s in r.loss_steps]
    return jsonable(d)


def render_json(r: BisectResult) -> str:
    import json

    return json.dumps(to_dict(r), indent=1, allow_nan=False) + "\n"

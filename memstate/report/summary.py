"""A one-screen summary of a trace: header, tensors per step, loss curve, completeness."""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memstate.formats.map import LayoutMap
from memstate.formats.trace import EndedEarly, open_trace


@dataclass(frozen=True)
class TraceSummary:
    path: Path
    encoding: str
    meta: dict[str, Any]
    steps: int
    first_step: int | None
    last_step: int | None
    tensors: tuple[tuple[str, tuple[int, ...], str], ...]  # name, shape, dtype of the first step
    losses: tuple[tuple[int, float], ...]
    incomplete_step: int | None
    ended_early: EndedEarly | None = None


def summarize(path: str | Path, layout: LayoutMap | None = None) -> TraceSummary:
    """Stream a trace once and collect what a person wants to see first (through `layout` when given)."""
    with open_trace(path, layout) as trace:
        count, first, last = 0, None, None
        tensors: tuple[tuple[str, tuple[int, ...], str], ...] = ()
        losses: list[tuple[int, float]] = []
        for step in trace:
            if first is None:
                first = step.index
                tensors = tuple((n, tuple(a.shape), str(a.dtype)) for n, a in step.tensors.items())
            count, last = count + 1, step.index
            if "loss" in step.tensors and step.tensors["loss"].size == 1:
                losses.append((step.index, float(step.tensors["loss"])))
        incomplete = trace.incomplete.index if trace.incomplete is not None else None
        return TraceSummary(Path(path), trace.encoding, dict(trace.meta), count, first, last, tensors,
                            tuple(losses), incomplete, trace.ended_early)


def render(summary: TraceSummary, points: int = 10) -> str:
    """Text for a terminal: header facts, one line per tensor, the loss at evenly spaced steps."""
    s = summary
    lines = [f"{s.path} ({s.encoding}): {s.steps} complete steps"
             + (f", {s.first_step}..{s.last_step}" if s.steps else "")]
    for key in ("impl", "scenario", "dtype", "variant"):
        if key in s.meta:
            lines.append(f"  {key:<9} {s.meta[key]}")
    if s.ended_early is not None:
        lines.append(f"  {s.ended_early}: the run stopped before the end its header declares"
                     if s.ended_early.unfinished_step is None else f"  {s.ended_early}")
    if s.incomplete_step is not None:
        lines.append(f"  step {s.incomplete_step} is incomplete: the run stopped in the middle of it")
    if s.tensors:
        lines.append("  tensors per step (dataflow order):")
        listing = "  ".join(f"{n}{list(shape)}" for n, shape, _ in s.tensors)
        lines.extend(textwrap.wrap(listing, width=78, initial_indent="    ", subsequent_indent="    "))
    if s.losses:
        lines.append("  loss:")
        stride = max(1, math.ceil(len(s.losses) / points))
        picked = s.losses[::stride]
        if picked[-1] != s.losses[-1]:
            picked += (s.losses[-1],)
        lines.extend(f"    step {k:>7}  {v:.6g}" for k, v in picked)
    return "\n".join(lines)

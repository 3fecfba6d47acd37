"""The training view of a comparison: both runs' curves, where they part ways, and how each run stopped.

A trace of the training view (docs/training.md) records at each evaluation 0-d tensors `eval.train_loss`,
`eval.validation_loss`, `eval.train_accuracy`, ... and, in the step where a stopping rule fired, one
tensor `stop.RULE`. `CurveTracker` is fed every step of both traces by memstate.comparator.compare and
keeps, in memory that does not grow with the number of steps beyond MAX_POINTS per series:

* each side's per-step `loss` (decimated: every 2nd, 4th, ... point once a series is long) and every
  evaluation figure;
* the step at which each side stopped by a rule, the rule and its value;
* where the curves part ways: the first step whose `loss` is out of tolerance, the first evaluation with
  an eval.* figure out of tolerance, and the first evaluation where the training or validation loss of
  the two runs differ by more than VISIBLE (1%) relative: the point where the curves visibly separate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

EVAL_PREFIX = "eval."
STOP_PREFIX = "stop."
MAX_POINTS = 2048  # per series; longer series keep every 2nd, then 4th, ... step
VISIBLE = 0.01  # relative difference of the losses at which curves visibly part


@dataclass(frozen=True)
class StopInfo:
    """A rule that stopped a run: after step `step` (so `step + 1` steps), rule `rule`, recorded value."""

    step: int
    rule: str
    value: float

    def describe(self) -> str:
        what = (f"training loss below validation loss at {self.value:g} consecutive evaluations"
                if self.rule == "early" else f"std/mean of the recent training losses {self.value:.3g}"
                if self.rule == "plateau" else f"value {self.value:g}")
        return f"stops after step {self.step} ({self.step + 1} steps) by the {self.rule} rule: {what}"


@dataclass(frozen=True)
class SideCurves:
    """One run's curves: (step, value) pairs per series; `loss` per step, evaluation figures by name."""

    loss: tuple[tuple[int, float], ...]
    evaluations: dict[str, tuple[tuple[int, float], ...]]  # "train_loss" -> ((step, value), ...)
    stop: StopInfo | None
    last_step: int | None

    @property
    def evaluated(self) -> bool:
        return bool(self.evaluations)


@dataclass(frozen=True)
class Curves:
    """Both runs' curves and where they part ways (None: they do not, within what both recorded)."""

    a: SideCurves
    b: SideCurves
    loss_parts: int | None  # first step with `loss` out of tolerance
    eval_parts: tuple[int, str] | None  # first evaluation step with an eval.* out of tolerance, and which
    visible_parts: int | None  # first evaluation (or step, without evaluations) with losses > VISIBLE apart

    @property
    def present(self) -> bool:
        """Whether there is a training view to show: evaluations or a stop on either side."""
        return self.a.evaluated or self.b.evaluated or self.a.stop is not None or self.b.stop is not None

    @property
    def stops_differ(self) -> bool:
        sa, sb = self.a.stop, self.b.stop
        if sa is None and sb is None:
            return False
        return sa is None or sb is None or (sa.step, sa.rule) != (sb.step, sb.rule)

    def stop_summary(self) -> str:
        """One sentence on how the runs stop: the same way, or how they differ."""
        sa, sb = self.a.stop, self.b.stop
        if sa is None and sb is None:
            return "neither run stops by a rule"
        if not self.stops_differ:
            assert sa is not None
            return f"both runs {sa.describe()}"
        parts = []
        for label, s, side in (("A", sa, self.a), ("B", sb, self.b)):
            parts.append(f"{label} {s.describe()}" if s is not None else
                         f"{label} does not stop by a rule (its trace ends at step {side.last_step})")
        return "the runs stop differently: " + "; ".join(parts)


class _Series:
    """(step, value) pairs, decimated by 2 whenever they exceed MAX_POINTS."""

    def __init__(self) -> None:
        self.points: list[tuple[int, float]] = []
        self.stride = 1
        self.seen = 0

    def add(self, step: int, value: float) -> None:
        if self.seen % self.stride == 0:
            self.points.append((step, value))
            if len(self.points) > MAX_POINTS:
                self.points = self.points[::2]
                self.stride *= 2
        self.seen += 1


@dataclass
class _Side:
    loss: _Series = field(default_factory=_Series)
    evaluations: dict[str, _Series] = field(default_factory=dict)
    stop: StopInfo | None = None
    last_step: int | None = None


class CurveTracker:
    """Collects the training view while compare() streams both traces."""

    def __init__(self) -> None:
        self.sides = {"a": _Side(), "b": _Side()}
        self.loss_parts: int | None = None
        self.eval_parts: tuple[int, str] | None = None
        self.visible_parts: int | None = None

    def observe(self, side: str, step: int, tensors: Mapping[str, np.ndarray]) -> None:
        """Take one complete step of one side."""
        s = self.sides[side]
        s.last_step = step
        if "loss" in tensors and np.asarray(tensors["loss"]).size == 1:
            s.loss.add(step, float(np.asarray(tensors["loss"]).reshape(())))
        for name, value in tensors.items():
            if np.asarray(value).size != 1:
                continue
            v = float(np.asarray(value).reshape(()))
            if name.startswith(EVAL_PREFIX):
                s.evaluations.setdefault(name[len(EVAL_PREFIX):], _Series()).add(step, v)
            elif name.startswith(STOP_PREFIX) and s.stop is None:
                s.stop = StopInfo(step, name[len(STOP_PREFIX):], v)

    def judge(self, step: int, failed: Mapping[str, bool], a: Mapping[str, np.ndarray],
              b: Mapping[str, np.ndarray]) -> None:
        """Take the verdicts of one step both sides have: `failed[name]` for each name compared."""
        if self.loss_parts is None and failed.get("loss"):
            self.loss_parts = step
        if self.eval_parts is None:
            bad = [n for n, f in failed.items() if f and n.startswith(EVAL_PREFIX)]
            if bad:
                self.eval_parts = (step, bad[0])
        if self.visible_parts is None:
            names = [n for n in ("eval.train_loss", "eval.validation_loss") if n in a and n in b]
            if not names and not any(n.startswith(EVAL_PREFIX) for n in a):
                names = ["loss"] if "loss" in a and "loss" in b else []
            if any(_apart(a[n], b[n]) for n in names):
                self.visible_parts = step

    def stopped(self, side: str) -> bool:
        return self.sides[side].stop is not None

    def evaluates(self, side: str) -> bool:
        """Whether `side` has recorded any evaluation (eval.*) so far."""
        return bool(self.sides[side].evaluations)

    def result(self) -> Curves:
        def side(s: _Side) -> SideCurves:
            return SideCurves(tuple(s.loss.points), {k: tuple(v.points) for k, v in s.evaluations.items()}, s.stop,
                              s.last_step)

        return Curves(side(self.sides["a"]), side(self.sides["b"]), self.loss_parts, self.eval_parts,
                      self.visible_parts)


def _apart(x: Any, y: Any) -> bool:
    """|x - y| > VISIBLE * max(|x|, |y|), or one finite and the other not (scalars only)."""
    x, y = np.asarray(x), np.asarray(y)
    if x.size != 1 or y.size != 1:
        return False
    u, v = float(x.reshape(())), float(y.reshape(()))
    if np.isfinite(u) != np.isfinite(v):
        return True
    if not (np.isfinite(u) and np.isfinite(v)):
        return False
    return abs(u - v) > VISIBLE * max(abs(u), abs(v))


__all__ = ["Curves", "CurveTracker", "SideCurves", "StopInfo", "EVAL_PREFIX", "STOP_PREFIX", "VISIBLE"]

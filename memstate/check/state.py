"""The mutable state of `memstate check`'s walk over a trace: what it has found so far, frozen into a
CheckResult at the end (memstate.check.checker)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from memstate.check.result import Finding, NameStats, OpCheck
from memstate.comparator.compare import FirstDivergence, StepComparison, _Buckets
from memstate.comparator.tolerance import Tolerance, Tolerances


@dataclass
class Op:
    """An operation of the current step, kept until the step ends (for the steps reported in full)."""

    name: str
    ref: np.ndarray
    value: np.ndarray
    scale: Any  # np.ndarray or memstate.check.recompute.Lazy (computed when the report needs it)
    tol: Tolerance


@dataclass
class State:
    """What the walk accumulates (mutable; frozen into a CheckResult at the end)."""

    tolerances: Tolerances
    meta: dict
    diagnose: bool
    operations: int = 0
    invariant_checks: int = 0
    by_name: dict[str, NameStats] = field(default_factory=dict)
    worst: OpCheck | None = None
    failures: list[OpCheck] = field(default_factory=list)
    n_failures: int = 0
    findings: dict[tuple, Finding] = field(default_factory=dict)  # (code, name) -> first occurrence, counted
    first_finding: Finding | None = None
    first_failure: OpCheck | None = None
    first_divergence: FirstDivergence | None = None
    first_context: Any = None
    consequences: list[str] = field(default_factory=list)  # later failing operations of the first failure's step
    last_failing_step: int | None = None
    failing_steps: int = 0
    notes: dict[str, list[int]] = field(default_factory=dict)  # text -> steps
    skips: dict[str, tuple[dict, dict]] = field(default_factory=dict)  # why -> (names, steps) not checked
    unchecked: dict[str, None] = field(default_factory=dict)
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, worst max rel error), for diagnoses
    used: dict[Tolerance, list[str]] = field(default_factory=dict)
    tol_cache: dict[tuple, Tolerance] = field(default_factory=dict)
    overview: _Buckets = field(default_factory=_Buckets)
    series: dict[str, _Buckets] = field(default_factory=dict)
    full_steps: list[StepComparison] = field(default_factory=list)  # the first step and the first failing one
    last_kept: tuple[int, list[Op] | StepComparison] | None = None  # the last step's operations (reported in full
    # too; compared already when a worker of check --jobs walked it)
    recorded: int = 0  # recorded tensors other than x and y, over every step
    verified: int = 0  # of those, checked by an operation
    per_step: set[int] = field(default_factory=set)  # recorded tensors per step (one value: the same each step)
    unverified: dict[tuple[str, str], tuple[str, list[int]]] = field(default_factory=dict)  # (name, why) -> needs, steps
    roots: Any = None  # memstate.check.root_causes.CheckRoots: every independent cause

    def note(self, text: str, step: int) -> None:
        self.notes.setdefault(text, []).append(step)

    def skip(self, k: int, name: str, why: str, needs: str = "") -> None:
        """A recorded tensor that could not be checked at step k: a note, and a gap in the coverage."""
        self.unverified.setdefault((name, why), (needs, []))[1].append(k)
        names, steps = self.skips.setdefault(why, ({}, {}))
        names.setdefault(name)
        steps.setdefault(k)
        s = self.by_name.get(name, NameStats())
        self.by_name[name] = replace(s, skipped=s.skipped + 1)

    def find(self, f: Finding) -> None:
        if self.first_finding is None:
            self.first_finding = f
        key = (f.code, f.name)
        old = self.findings.get(key)
        self.findings[key] = f if old is None else replace(old, count=old.count + 1, last_step=f.step)


def note_text(text: str, steps: list[int]) -> str:
    if len(steps) == 1:
        return f"step {steps[0]}: {text}"
    shown = ", ".join(map(str, steps[:5])) + (", ..." if len(steps) > 5 else "")
    return f"{len(steps)} steps ({shown}): {text}"

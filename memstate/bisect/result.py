"""What `memstate bisect` reports (docs/bisect.md): progress as it goes, and the result with its findings.

All frozen dataclasses: `BisectResult` holds the verdict, the search's curves and one `Episode` per
replayed interval; a `Finding` is a step and tensor that explain something, with the diagnoses
(`DiagnosisInfo`) the diagnosers give it. memstate.report.bisect renders a result as text or JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

Progress = Callable[["BisectProgress"], None]


@dataclass(frozen=True)
class BisectProgress:
    """What `bisect` reports as it goes: phase is "run a", "run b", "check" (a side that cannot be replayed),
    "search", "replay" or "lockstep"."""

    phase: str
    done: int
    total: int
    detail: str = ""


@dataclass(frozen=True)
class DiagnosisInfo:
    code: str
    confidence: float
    explanation: str


@dataclass(frozen=True)
class Finding:
    """A step and tensor that explain something, and what the diagnosers make of it."""

    step: int
    tensor: str | None
    error: float  # max rel error of the tensor, relative to its scale (inf: non-finite on one side only)
    how: str  # "comparator" (free-running replay), "non-finite" (first tensor gone nan/inf), "lockstep"
    detail: str
    side: str | None = None  # for "non-finite": the side that broke
    diagnoses: tuple[DiagnosisInfo, ...] = ()

    @property
    def code(self) -> str | None:
        return self.diagnoses[0].code if self.diagnoses else None


@dataclass(frozen=True)
class Episode:
    """One replayed interval, steps start..stop-1."""

    kind: str  # "divergence" (first beyond tolerance), "break" (one side turns non-finite), or both joined by "+"
    start: int
    stop: int
    reason: str
    free_errors: tuple[float, ...]  # worst max rel error over all tensors, per step, free-running
    first_divergence: Finding | None  # the comparator's, on the free-running replay
    non_finite: Finding | None  # break episodes: the first tensor that turns non-finite on one side
    reproduced: tuple[bool, bool]  # each side's replay matched its checkpoint run (losses and end checkpoint)
    lockstep_errors: tuple[float, ...] | None = None  # one-step errors, per step, from the reference's params
    local: Finding | None = None  # lockstep: the first step whose one-step error is above rounding level
    traces: tuple[str, str] | None = None  # the free-running replay traces, when kept

    @property
    def steps(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class SideInfo:
    label: str
    description: str
    impl: str
    scenario: str
    dtype: str
    variant: dict
    checkpoint_run: str | None  # the path, when kept or given


@dataclass(frozen=True)
class BisectResult:
    """What `bisect` found; `verdict` is agree, divergent (no lockstep), drift or local (lockstep)."""

    verdict: str
    diagnosis: str | None  # the headline code: e.g. softmax-global-max, drift; None when agree
    summary: str  # one sentence
    a: SideInfo
    b: SideInfo
    steps: int
    checkpoint_every: int
    tolerance: str
    rounding_level: float | None
    lockstep: bool
    reference: str | None  # "a" or "b": whose parameters lockstep starts both sides from
    checkpoint_steps: tuple[int, ...]  # the coarse scan's checkpoints (steps done)
    checkpoint_errors: tuple[float, ...]  # max rel error of the parameters there, free-running
    loss_steps: tuple[tuple[int, int], ...]  # buckets of steps (first, last)
    loss_errors: tuple[float, ...]  # the worst relative loss difference in each bucket
    first_divergent_checkpoint: int | None  # steps done at the first checkpoint beyond tolerance
    last_agreeing_checkpoint: int | None
    first_loss_divergence: int | None  # the first step whose loss is beyond tolerance
    break_step: int | None  # the first step whose loss is non-finite on one side only
    break_side: str | None
    checkpoints_loaded: int
    episodes: tuple[Episode, ...]
    headline: Finding | None
    steps_replayed: int  # steps re-run with full recording, per side, free-running
    lockstep_steps: int  # steps re-run in lockstep (every tensor compared in memory; nothing written)
    seconds: dict[str, float]
    warnings: tuple[str, ...] = ()

    @property
    def exit_code(self) -> int:
        """0 when the runs agree within tolerance, 1 when they diverge (drift included)."""
        return 0 if self.verdict == "agree" else 1

    @property
    def recorded_fraction(self) -> float:
        """Steps recorded in full (replays written as traces) per side, over a full recording's steps."""
        return self.steps_replayed / self.steps if self.steps else 0.0

    def __bool__(self) -> bool:
        return self.verdict == "agree"

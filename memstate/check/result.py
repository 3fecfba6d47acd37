"""What `memstate check` returns: the operations it recomputed, its findings, the settings it checked against.

Frozen dataclasses only (no logic beyond derived properties), so the reports (memstate.report.check) and
the walk (memstate.check.checker) share one vocabulary without importing each other.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from memstate.formats.trace import EndedEarly
from memstate.comparator.compare import Comparison, FirstDivergence
from memstate.comparator.metrics import TensorMetrics
from memstate.comparator.tolerance import Tolerance, Tolerances

#: How many failing operations are kept in full (all of them are counted).
MAX_FAILURES = 50
LOGITS = re.compile(r"^L\d+\.z$")
REFERENCE_PATH = "(recomputed by memstate check)"

#: The reference-free invariants, by the code a failure is reported under.
INVARIANTS = {
    "y-one-hot": "every row of y is one-hot (a single 1, zeros elsewhere)",
    "probs-non-negative": "probabilities are non-negative",
    "probs-rows-sum-to-1": "each row of probs sums to 1",
    "loss-finite": "the loss is finite",
    "nan-from-finite": "no nan or inf appears from finite inputs",
    "output-dz-is-probs-minus-y": "the output layer's dz is (probs - y) / B for softmax with cross-entropy "
                                  "(probs - y for a summed loss)",
    "lr-consistent": "one learning rate explains every parameter update (W' = W - lr * dW)",
}


@dataclass(frozen=True)
class OpCheck:
    """One operation recomputed and compared: the recorded tensor (side B) against the recomputed one (A)."""

    step: int
    name: str
    formula: str
    inputs: tuple[str, ...]  # recorded tensors of the step it was computed from
    params: tuple[str, ...]  # parameters in force it used
    params_from: str  # where those came from: "params file", "step 4", "" (none used)
    dtype: str  # the recorded dtype
    shape: tuple[int, ...]
    ok: bool
    metrics: TensorMetrics | None  # the comparator's metrics; None on the fast path (it passed) or for a shape
    max_abs: float  # max |recorded - recomputed|
    max_rel: float  # the comparator's max rel error: max |recorded - recomputed| / the tensor's scale
    ratio: float  # largest error / allowed error over the elements (> 1 fails)
    index: tuple[int, ...] | None  # the element with the largest ratio
    recorded_value: float | None
    recomputed_value: float | None
    tolerance: Tolerance
    message: str = ""  # e.g. a shape mismatch
    invariants: tuple[str, ...] = ()  # invariants this tensor violates at this step

    @property
    def n_out(self) -> int:
        """Elements out of tolerance."""
        if self.metrics is not None:
            return self.metrics.n_out
        return 0 if self.ok else int(np.prod(self.shape))


@dataclass(frozen=True)
class Finding:
    """Something wrong: a failing operation, a violated invariant, or an inconsistent inference."""

    kind: str  # "operation", "invariant" or "inference"
    code: str  # "mismatch", "shape", or an INVARIANTS key
    step: int | None
    name: str | None
    message: str
    count: int = 1  # how many times (steps) it was seen
    last_step: int | None = None


@dataclass(frozen=True)
class Inferred:
    """A setting of the network: its value, where it came from, and what the trace itself shows."""

    value: Any  # None when unknown
    source: str  # "scenario", "scenario NAME (named in the header)", "header", "inferred", "fitted", "unknown"
    inferred: Any = None  # what the trace shows, whatever the source
    evidence: str = ""
    consistent: bool = True  # the trace agrees with the value (and, for the learning rate, with itself)


@dataclass(frozen=True)
class NameStats:
    """Per tensor name: operations checked, failed and skipped, and the worst error."""

    checked: int = 0
    failed: int = 0
    skipped: int = 0
    worst_ratio: float = 0.0  # largest error / allowed error
    worst_rel: float = 0.0  # largest max rel error
    worst_step: int | None = None


@dataclass(frozen=True)
class Unverified:
    """A recorded tensor that could not be checked (in `steps` steps from `first_step`), why, and what would help."""

    name: str
    why: str
    steps: int
    first_step: int
    needs: str = ""  # what to do, e.g. "pass the params file the run started from with --params"


@dataclass(frozen=True)
class Coverage:
    """Recorded tensors (x and y excluded: inputs) against those verified by an operation, over every step."""

    recorded: int = 0
    verified: int = 0
    steps: int = 0
    per_step: int | None = None  # recorded tensors per step, when every step records the same number
    unverified: tuple[Unverified, ...] = ()

    @property
    def complete(self) -> bool:
        return self.verified == self.recorded and not self.unverified

    def line(self) -> str:
        """"verified 16 of 16 recorded tensors in every step", or how many were not and where."""
        if self.complete and self.per_step is not None:
            return f"verified {self.per_step} of {self.per_step} recorded tensors in every step"
        text = f"verified {self.verified} of {self.recorded} recorded tensors over {self.steps} steps"
        if self.complete:
            return text
        names = ", ".join(dict.fromkeys(u.name for u in self.unverified))
        return f"{text}; not verified: {names}"


@dataclass(frozen=True)
class CheckResult:
    path: Path
    encoding: str
    meta: dict[str, Any]
    n_layers: int | None
    dtype: str | None
    steps: int  # complete steps read
    first_step: int | None
    last_step: int | None
    incomplete_step: int | None  # a crashed run's last step (not checked)
    activation: Inferred
    reduction: Inferred
    learning_rate: Inferred
    params_source: str  # what step 0's parameters in force were ("unknown" without a params file)
    operations: int  # operations recomputed and compared
    invariant_checks: int  # invariants evaluated
    by_name: dict[str, NameStats]
    worst: OpCheck | None  # the operation with the largest error relative to its tolerance
    first_failure: OpCheck | None  # the first failing operation in (step, dataflow) order
    first_divergence: FirstDivergence | None  # the same in the comparator's terms (A = recomputed, B = trace)
    first_finding: Finding | None  # the first thing wrong of any kind, in (step, dataflow) order
    failures: tuple[OpCheck, ...]  # the first MAX_FAILURES failing operations
    n_failures: int  # failing operations in all
    failing_steps: int  # steps with a failing operation
    findings: tuple[Finding, ...]  # invariants and inferences, one per (code, name), with counts
    diagnoses: tuple[Any, ...]  # memstate.diagnose.context.Diagnosis of the first failing operation
    notes: tuple[str, ...]  # checks skipped and why, and other remarks
    unchecked: tuple[str, ...]  # recorded names no rule covers
    tolerances: Tolerances
    comparison: Comparison  # the result in the comparator's terms (what the JSON report renders)
    coverage: Coverage = Coverage()  # what was verified of what the trace records
    lr_fits: tuple[tuple[str, float, float, float, int, bool], ...] = ()  # per parameter: (name, median lr,
    #   lowest, highest, updates fitted, agrees with the consensus)
    seconds: float = 0.0
    ended_early: EndedEarly | None = None  # the run stopped before the steps its header declares
    ranges: tuple[tuple[int, int, str], ...] = ()  # check --jobs: (first step, last step, "" when a worker
    # process checked it, else why the main process walked it again); () when every step was checked in-process

    @property
    def ok(self) -> bool:
        """CLEAN: nothing failed, and every recorded tensor was verified."""
        return self.n_failures == 0 and not self.findings and self.coverage.complete

    @property
    def verified_all(self) -> bool:
        return self.coverage.complete

    @property
    def first(self) -> tuple[int | None, str | None] | None:
        """(step, name) of the first thing wrong, or None."""
        f = self.first_finding
        return (f.step, f.name) if f is not None else None

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else math.inf

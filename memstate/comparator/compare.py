"""Compare two traces step by step: where they first part ways, what follows from it, and small summaries.

`compare(a, b)` streams both traces (and an optional float64 oracle) one step at a time, aligns tensors
by (step, name), judges each against its tolerance (memstate.comparator.tolerance), and returns a `Comparison`. It
never prints and never raises on a divergence; it raises MemstateError only for unreadable input.
Memory is bounded: one step of each trace (two with read-ahead), the arrays of at most TAIL_STEPS recent
steps whose tensors differ within tolerance (kept until it is known whether the report shows them), plus
summaries whose size does not grow with the number of steps (a few selected steps, bucketed series,
findings compressed per name).

Speed (issue 14): bit-identical tensors take the exact fast path; tensors within tolerance in steps the
report does not show get summary metrics from one pass; the shown steps (HEAD_STEPS, AROUND the first
divergence, TAIL_STEPS) are brought to full metrics. With `jobs` > 1 and two binary traces, step ranges
are judged in worker processes (memstate.comparator.parallel) and this module only does the bookkeeping.
"""

from __future__ import annotations

import os
import re
from array import array
from collections.abc import Sequence
from collections import deque
from contextlib import ExitStack
from functools import lru_cache
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from typing import Any

import numpy as np

from memstate.blas import blas_threads
from memstate.comparator import together
from memstate.comparator.identical import known_identical
from memstate.comparator.curves import EVAL_PREFIX, STOP_PREFIX, Curves, CurveTracker
from memstate.comparator.localize import Localization, WorstElement, localize
from memstate.comparator.metadiff import MetaChange, meta_diff
from memstate.comparator.parallel import RangeJudge, worth_it
from memstate.formats.readahead import InLine, ReadAhead, read_ahead, reading_pool
from memstate.comparator.metrics import (TensorMetrics, bit_identical, completed_metrics, element_errors,
                                        dtype_name, identical_metrics, identical_summary,
                                        max_abs_error, summary_metrics, tensor_metrics, within_tolerance)
from memstate.comparator.tolerance import MinTolerance, Tolerance, Tolerances, min_passing, oracle_allowance
from memstate.formats.map import CANONICAL
from memstate.formats.trace import EndedEarly, Step, TraceReader, ended_early, open_trace

TraceLike = str | os.PathLike | TraceReader

HEAD_STEPS = 3  # steps kept in full at the start,
AROUND = 2  # before and after the first divergence,
TAIL_STEPS = 3  # and at the end
MAX_BUCKETS = 64  # per series: longer traces are summarised by merging neighbouring steps
GRID_LIMIT = 200  # the first divergent tensor's error grid: at most this many rows and columns (max-pooled)
_LOGITS = re.compile(r"L(\d+)\.z")


@dataclass(frozen=True)
class OracleCheck:
    """Oracle mode: is B's difference from A B's fault? (see memstate.comparator.tolerance)"""

    error_a: float  # max abs error of A against the oracle
    error_b: float  # max abs error of B against the oracle
    allowed: float  # oracle_factor * error_a + one rounding of the oracle into B's dtype
    blamed: bool  # error_b > allowed


@dataclass(frozen=True)
class TensorComparison:
    """One tensor of one step on both sides; truthy when it passes."""

    step: int
    name: str
    shape_a: tuple[int, ...]
    shape_b: tuple[int, ...]
    dtype_a: str
    dtype_b: str
    tolerance: Tolerance
    within_tolerance: bool
    metrics: TensorMetrics | None  # None when the shapes differ
    min_tolerance: MinTolerance | None = None  # the least tolerance that passes it, when it does not pass
    oracle: OracleCheck | None = None  # oracle mode, for tensors out of tolerance

    @property
    def passed(self) -> bool:
        """Within tolerance, or (oracle mode) out of it but not blamed on B."""
        return self.within_tolerance or (self.oracle is not None and not self.oracle.blamed)

    @property
    def excused(self) -> bool:
        return self.passed and not self.within_tolerance

    @property
    def max_abs_error(self) -> float:
        return self.metrics.max_abs_error if self.metrics else float("inf")

    @property
    def max_rel_error(self) -> float:
        """Relative to the tensor's scale; inf when the shapes differ."""
        return self.metrics.max_rel_error if self.metrics else float("inf")

    def __bool__(self) -> bool:
        return self.passed


@dataclass(frozen=True)
class StepComparison:
    """One step on both sides: its tensors in A's dataflow order, and the names only one side recorded.

    A name one side records and the other does not is a note (`Comparison.one_sided`), not a failure: ports
    record different subsets of the canonical tensors. A step one side cut short (a crash) fails.
    """

    step: int
    tensors: tuple[TensorComparison, ...]
    only_a: tuple[str, ...] = ()
    only_b: tuple[str, ...] = ()
    complete_a: bool = True
    complete_b: bool = True

    @property
    def passed(self) -> bool:
        return all(self.tensors) and self.complete_a and self.complete_b

    @property
    def worst(self) -> TensorComparison | None:
        """The tensor with the largest rel error (the first one on ties)."""
        return max(self.tensors, key=lambda t: t.max_rel_error, default=None)

    @property
    def worst_rel_error(self) -> float:
        return worst.max_rel_error if (worst := self.worst) is not None else 0.0  # None: no tensors

    def __bool__(self) -> bool:
        return self.passed


@dataclass(frozen=True)
class Bucket:
    """A run of consecutive compared steps summarised: the worst errors in it and how many steps failed."""

    first_step: int
    last_step: int
    steps: int
    max_abs_error: float
    max_rel_error: float
    worst_step: int
    worst_name: str | None
    failed: int


@dataclass(frozen=True)
class TensorSeries:
    """One tensor's errors over the whole trace, in at most MAX_BUCKETS buckets."""

    name: str
    buckets: tuple[Bucket, ...]


@dataclass(frozen=True)
class Finding:
    """Something structural: a missing step or name, a crash, a shape or dtype difference; compressed per name."""

    kind: str  # missing-step, extra-steps, truncated, incomplete, nothing-compared, shape-mismatch, dtype-mismatch,
    #            order, oracle-missing, excused, unused-rule, not-canonical, stop, eval-one-sided
    severity: str  # error (makes the traces diverge), warning, info
    message: str
    side: str | None = None  # "a", "b", or None for both/neither
    name: str | None = None
    first_step: int | None = None
    last_step: int | None = None
    count: int = 1


@dataclass(frozen=True)
class OneSided:
    """A tensor name that only one side records (in complete steps): not compared, never a divergence."""

    name: str
    recorded_by: str  # "a" or "b"
    first_step: int
    last_step: int
    steps: int  # complete steps in which only that side records it


@dataclass(frozen=True)
class NameFilter:
    """Which tensor names a comparison looks at: fnmatch patterns as in --tol (`--only`, `--ignore`)."""

    only: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.only or self.ignore)

    def keeps(self, name: str) -> bool:
        """Whether `name` is compared: it matches an --only pattern (when any) and no --ignore pattern."""
        if self.only and not any(fnmatchcase(name, p) for p in self.only):
            return False
        return not any(fnmatchcase(name, p) for p in self.ignore)

    def unused(self, names: set[str]) -> list[str]:
        """Patterns that matched none of `names` (a typo?)."""
        return [p for p in (*self.only, *self.ignore) if not any(fnmatchcase(n, p) for n in names)]


def name_filter(only: Sequence[str] = (), ignore: Sequence[str] = ()) -> NameFilter:
    """A NameFilter from option values, each a pattern or a comma-separated list of patterns."""
    def split(values: Sequence[str]) -> tuple[str, ...]:
        return tuple(p.strip() for v in values for p in v.split(",") if p.strip())
    return NameFilter(split(only), split(ignore))


@dataclass(frozen=True)
class TraceInfo:
    """What was read of one trace."""

    path: str
    encoding: str
    meta: dict
    steps: int  # complete steps read
    last_step: int | None
    incomplete_step: int | None  # the crashed step at its end, if any
    ended_early: EndedEarly | None = None  # its run stopped before its end (None too when not read to its end)


@dataclass(frozen=True)
class ToleranceUse:
    """A resolved tolerance and the tensor names it was applied to."""

    tolerance: Tolerance
    names: tuple[str, ...]


@dataclass(frozen=True)
class FirstDivergence:
    """Where the traces first part ways: the earliest step, and in it the first tensor in A's dataflow order."""

    kind: str  # values, shape, or missing (a step or name one side lacks, or a crash)
    step: int
    name: str | None  # None when a whole step is missing
    detail: str  # one sentence
    tensor: TensorComparison | None = None  # kinds values and shape
    where: Localization | None = None  # kind values
    inputs: tuple[str, ...] = ()  # the names recorded before it in the step, A's order
    inputs_agree: bool | None = None  # None: nothing was recorded before it
    inputs_worst: tuple[str, float] | None = None  # the input with the largest rel error
    consequences: tuple[str, ...] = ()  # tensors after it in the same step that fail too
    divergent_steps: int = 1  # steps with any divergence, this one included (a run that stops early counts once)
    last_divergent_step: int | None = None
    diagnoses: tuple = ()  # memstate.diagnose.context.Diagnosis, most likely first (empty if no diagnoser)
    # kind values: |a - b| by row (first axis) and column (the other axes flattened; a 1-d tensor is one row,
    # a 0-d one a single cell), max-pooled over blocks of grid_bin(n) rows/columns to at most GRID_LIMIT a side
    error_grid: tuple[tuple[float, ...], ...] | None = None

    @property
    def rows(self) -> tuple[int, ...]:
        return self.where.rows if self.where is not None else ()

    @property
    def columns(self) -> tuple[int, ...]:
        return self.where.columns if self.where is not None else ()

    @property
    def pattern(self) -> str | None:
        return self.where.pattern if self.where is not None else None

    @property
    def worst(self) -> tuple[WorstElement, ...]:
        return self.where.worst if self.where is not None else ()

    @property
    def min_tolerance(self) -> MinTolerance | None:
        return self.tensor.min_tolerance if self.tensor is not None else None


@dataclass(frozen=True)
class Comparison:
    """The result of comparing two traces; truthy when they agree."""

    verdict: str  # "agree" or "diverge"
    first_divergence: FirstDivergence | None
    a: TraceInfo
    b: TraceInfo
    oracle: TraceInfo | None
    tolerances: Tolerances
    tolerances_used: tuple[ToleranceUse, ...]
    steps_compared: int
    divergent_steps: int
    steps: tuple[StepComparison, ...]  # first steps, steps around the first divergence, last steps
    overview: tuple[Bucket, ...]  # per step: the worst tensor, bucketed
    series: tuple[TensorSeries, ...]  # per tensor, bucketed
    findings: tuple[Finding, ...]
    meta_diff: tuple[MetaChange, ...]
    curves: Curves | None = None  # the training view: loss and eval.* curves, stops (memstate.comparator.curves)
    root_causes: tuple = ()  # memstate.diagnose.roots.RootCause: every independent cause, the first divergence first
    one_sided: tuple[OneSided, ...] = ()  # names only one side records: notes, not divergences
    names: NameFilter = NameFilter()  # the --only / --ignore patterns applied

    @property
    def diagnoses(self) -> tuple:
        return self.first_divergence.diagnoses if self.first_divergence else ()

    def __bool__(self) -> bool:
        return self.verdict == "agree"


# ---------------------------------------------------------------- tensors

def compare_tensors(name: str, step: int, a: np.ndarray, b: np.ndarray, tolerance: Tolerance, *,
                    argmax: bool = False, detail: str = "full") -> TensorComparison:
    """Judge b against a under `tolerance`; shapes that differ fail without metrics.

    Bit-identical tensors take the exact fast path (the metrics of identical tensors, from two passes; with
    detail="summary", none: detail "identical"). With detail="summary", a tensor within tolerance is
    judged in one block-wise pass and gets summary metrics (no ULPs, cosine or elementwise rel: nan,
    detail "summary"); anything else gets them in full. `completed_metrics` makes either full.
    """
    if bit_identical(a, b):
        return identical_comparison(name, step, a, tolerance, argmax=argmax, detail=detail)
    common: dict[str, Any] = dict(step=step, name=name, shape_a=tuple(a.shape), shape_b=tuple(b.shape),
                                  dtype_a=dtype_name(a.dtype), dtype_b=dtype_name(b.dtype), tolerance=tolerance)
    if a.shape != b.shape:
        return TensorComparison(**common, within_tolerance=False, metrics=None)
    if detail == "summary":
        ok, max_abs, scale = within_tolerance(a, b, tolerance.rtol, tolerance.atol)
        if ok:
            return _summary_comparison(name, step, a, b, tolerance, max_abs, scale, argmax)
    errors = element_errors(a, b)
    out = tolerance.out_of_tolerance(errors)
    metrics = tensor_metrics(a, b, errors, out, argmax=argmax)
    within = metrics.n_out == 0
    return TensorComparison(**common, within_tolerance=within, metrics=metrics,
                            min_tolerance=None if within else min_passing(errors, tolerance))


def _summary_comparison(name: str, step: int, a: np.ndarray, b: np.ndarray, tolerance: Tolerance, max_abs: float,
                        scale: float, argmax: bool) -> TensorComparison:
    """The judgement of a same-shaped pair found within tolerance (every element finite), with the maxima
    that test found: summary metrics (detail "summary")."""
    return TensorComparison(step=step, name=name, shape_a=tuple(a.shape), shape_b=tuple(b.shape),
                            dtype_a=dtype_name(a.dtype), dtype_b=dtype_name(b.dtype), tolerance=tolerance,
                            within_tolerance=True, metrics=summary_metrics(a, b, max_abs, scale, argmax))


def identical_comparison(name: str, step: int, a: np.ndarray, tolerance: Tolerance, *, argmax: bool = False,
                         detail: str = "full") -> TensorComparison:
    """The judgement of a tensor bit-identical on both sides: within tolerance, errors 0 (the exact fast path;
    with detail="summary" the metrics are not computed at all: detail "identical")."""
    shape, dt = tuple(a.shape), dtype_name(a.dtype)
    metrics = identical_summary(a, argmax) if detail == "summary" else identical_metrics(a, argmax)
    return TensorComparison(step=step, name=name, shape_a=shape, shape_b=shape, dtype_a=dt, dtype_b=dt,
                            tolerance=tolerance, within_tolerance=True, metrics=metrics)


def oracle_check(a: np.ndarray, b: np.ndarray, oracle: np.ndarray, factor: float) -> OracleCheck:
    """Blame B only when it is further from the oracle than `factor` times A, plus one rounding."""
    error_a, error_b = max_abs_error(a, oracle), max_abs_error(b, oracle)
    finite = oracle[np.isfinite(oracle)]
    top = float(np.abs(finite).max()) if finite.size else 0.0
    allowed = oracle_allowance(error_a, top, b.dtype, factor)
    return OracleCheck(error_a=error_a, error_b=error_b, allowed=allowed, blamed=not error_b <= allowed)


def grid_bin(n: int, limit: int = GRID_LIMIT) -> int:
    """How many rows (or columns) of n one cell of an error grid covers: at most `limit` cells a side."""
    return max(1, -(-n // limit))


def error_grid(errors: np.ndarray, limit: int = GRID_LIMIT) -> tuple[tuple[float, ...], ...]:
    """Elementwise errors as a row-by-column grid, max-pooled to at most `limit` cells a side.

    Rows are the first axis, columns the other axes flattened (memstate.comparator.localize); a 1-d tensor is one
    row, a 0-d tensor one cell. Block (i, j) covers rows i*grid_bin(R)... and columns j*grid_bin(C)...
    """
    m = np.asarray(errors, dtype=np.float64)
    m = m.reshape(1, -1) if m.ndim <= 1 else m.reshape(m.shape[0], -1)
    rows, cols = m.shape
    if rows == 0 or cols == 0:
        return ()
    br, bc = grid_bin(rows, limit), grid_bin(cols, limit)
    nr, nc = -(-rows // br), -(-cols // bc)
    if br > 1 or bc > 1:
        padded = np.full((nr * br, nc * bc), -np.inf)
        padded[:rows, :cols] = m
        m = padded.reshape(nr, br, nc, bc).max(axis=(1, 3))
    return tuple(tuple(float(x) for x in row) for row in m)


# ---------------------------------------------------------------- the bounded summaries

def _fields_of(b: Bucket) -> tuple[Any, ...]:
    """A Bucket's fields in order (dataclasses.astuple would deep-copy them)."""
    return (b.first_step, b.last_step, b.steps, b.max_abs_error, b.max_rel_error, b.worst_step, b.worst_name,
            b.failed)


def _merge(x: Bucket, y: Bucket) -> Bucket:
    worst = y if y.max_rel_error > x.max_rel_error else x
    return Bucket(x.first_step, y.last_step, x.steps + y.steps, max(x.max_abs_error, y.max_abs_error),
                  worst.max_rel_error, worst.worst_step, worst.worst_name, x.failed + y.failed)


class _Buckets:
    """A series downsampled to at most `limit` buckets of equal step counts (doubling as it grows).

    The last bucket stays open as a plain list of Bucket's fields while steps are added to it, and becomes
    a Bucket when the next one opens: adding a step was two Bucket objects (the step's and the merge), for
    every tensor of every step. `items` gives every bucket, the open one included."""

    def __init__(self, limit: int = MAX_BUCKETS):
        self.limit, self.width = limit, 1
        self.closed: list[Bucket] = []
        self.open: list[Any] | None = None  # first, last, steps, max abs, max rel, worst step, worst name, failed

    @property
    def items(self) -> list[Bucket]:
        return self.closed + ([Bucket(*self.open)] if self.open is not None else [])

    def add(self, step: int, abs_err: float, rel_err: float, name: str | None, failed: bool) -> None:
        o = self.open
        if o is not None and o[2] < self.width:  # what _merge(open bucket, this step's) gives, in place
            o[1], o[2], o[7] = step, o[2] + 1, o[7] + int(failed)
            if abs_err > o[3]:
                o[3] = abs_err
            if rel_err > o[4]:
                o[4], o[5], o[6] = rel_err, step, name
        else:
            if o is not None:
                self.closed.append(Bucket(*o))
            self.open = [step, step, 1, abs_err, rel_err, step, name, int(failed)]
        if len(self.closed) >= self.limit:  # one more than the limit, counting the open bucket
            items = self.items
            pairs = [items[i:i + 2] for i in range(0, len(items), 2)]
            merged = [_merge(*p) if len(p) == 2 else p[0] for p in pairs]
            self.closed, self.open, self.width = merged[:-1], list(_fields_of(merged[-1])), self.width * 2


class _Findings:
    """Findings compressed by (kind, side, name): first and last step, and a count."""

    def __init__(self) -> None:
        self.items: dict[tuple, Finding] = {}

    def add(self, kind: str, severity: str, message: str, side: str | None = None, name: str | None = None,
            step: int | None = None, key: tuple | None = None) -> None:
        key = (kind, side, name) if key is None else key
        old = self.items.get(key)
        if old is None:
            self.items[key] = Finding(kind, severity, message, side, name, step, step, 1)
        else:
            self.items[key] = replace(old, last_step=step, count=old.count + 1)


# ---------------------------------------------------------------- the comparison

def _logits_name(names: list[str]) -> str | None:
    layers = [(int(m.group(1)), n) for n in names if (m := _LOGITS.fullmatch(n))]
    return max(layers)[1] if layers else None


def judge_step(sa: Step, sb: Step, tolerances: Tolerances, detail: str = "summary") -> tuple[TensorComparison, ...]:
    """Every tensor both steps record, judged in A's order (the work a worker process does for a step).

    A tensor whose bytes lie in the two step files' identical prefix (memstate.comparator.identical: all of
    them in a bit-identical step) is bit-identical to its namesake without being looked at again. With
    detail="summary", the step's small float64 tensors are judged together (memstate.comparator.together),
    with the answers compare_tensors would give; the rest, and any of them not settled there, one by one."""
    names_b = set(sb.tensors)
    logits = _logits_name(list(sa.tensors))
    known = known_identical(sa.payload, sb.payload)
    names = [n for n in sa.tensors if n in names_b]
    tols = {n: _resolve(tolerances, n, sa.tensors[n].dtype, sb.tensors[n].dtype) for n in names}
    settled = _judged_together(names, known, sa, sb, tols) if detail == "summary" else {}
    out = []
    for name in names:
        a, b, tol, argmax = sa.tensors[name], sb.tensors[name], tols[name], name in ("probs", logits)
        verdict = settled.get(name)
        if name in known or (verdict is not None and verdict[0]):
            out.append(identical_comparison(name, sa.index, a, tol, argmax=argmax, detail=detail))
        elif verdict is not None:
            out.append(_summary_comparison(name, sa.index, a, b, tol, verdict[1], verdict[2], argmax))
        else:
            out.append(compare_tensors(name, sa.index, a, b, tol, argmax=argmax, detail=detail))
    return tuple(out)


def _judged_together(names: list[str], known: set[str], sa: Step, sb: Step,
                     tols: dict[str, Tolerance]) -> dict[str, tuple[bool, float, float]]:
    """The verdicts of together.verdicts for the step's small float64 pairs not known identical, by name
    (those it leaves to the one-by-one path are absent); nothing for fewer than two such pairs."""
    small = [n for n in names if n not in known and together.eligible(sa.tensors[n], sb.tensors[n])]
    if len(small) < 2:
        return {}
    got = together.verdicts([(sa.tensors[n], sb.tensors[n]) for n in small], [tols[n].rtol for n in small],
                            [tols[n].atol for n in small])
    return {n: v for n, v in zip(small, got) if v is not None}


@lru_cache(maxsize=4096)
def _resolve(tolerances: Tolerances, name: str, dtype_a: np.dtype, dtype_b: np.dtype) -> Tolerance:
    """tolerances.resolve, remembered: it is asked the same few questions for every step of a trace."""
    return tolerances.resolve(name, dtype_a, dtype_b)


def _has_summary(s: StepComparison) -> bool:
    return any(t.metrics is not None and t.metrics.detail != "full" for t in s.tensors)


class _Comparer:
    """The mutable state of one comparison; `compare` feeds it aligned steps and asks for the result."""

    def __init__(self, tolerances: Tolerances, readers: dict[str, TraceReader], detail: str = "shown",
                 names: NameFilter = NameFilter()):
        self.tol = tolerances
        self.detail = detail  # "shown": full metrics for the steps the report shows; "full": for every step;
        #                       "divergent": only for tensors out of tolerance (what the text report shows)
        self.readers = readers
        self.filter = names
        self.all_names: set[str] = set()  # every name seen, before filtering (to report unused patterns)
        self.sided: dict[str, OneSided] = {}
        self.findings = _Findings()
        self.overview = _Buckets()
        self.series: dict[str, _Buckets] = {}
        self.used: dict[Tolerance, list[str]] = {}
        self.names: set[str] = set()
        self.head: list[StepComparison] = []
        self.before: deque[StepComparison] = deque(maxlen=AROUND)
        self.around: list[StepComparison] = []
        self.tail: deque[StepComparison] = deque(maxlen=TAIL_STEPS)
        self.hist_steps, self.hist_errors = array("q"), array("d")
        self.first: FirstDivergence | None = None
        self.kept_after = 0  # steps kept from the first divergence on
        self.consequences: list[str] = []
        self.divergent_steps = 0
        self.last_divergent: int | None = None
        self.compared = 0
        self.count = {"a": 0, "b": 0, "oracle": 0}
        self.last: dict[str, Step | None] = {"a": None, "b": None, "oracle": None}
        self.complete_span: dict[str, tuple[int, int] | None] = {"a": None, "b": None, "oracle": None}
        self.pending: dict[int, tuple[Step, Step]] = {}  # recent steps with summary metrics, until known shown or not
        self.curves = CurveTracker()
        self.after_stop = {"a": 0, "b": 0}  # steps one side has after the other stopped by a rule
        self.roots = _root_collector()  # every independent cause (memstate.diagnose.roots), when installed

    # -- one step present on both sides
    def both(self, sa: Step, sb: Step, sc: Step | None,
             computed: tuple[TensorComparison, ...] | None = None) -> None:
        """Judge one step both sides have; `computed` is its tensors already judged (by a worker process)."""
        k = sa.index
        names_a, names_b = list(sa.tensors), list(sb.tensors)
        if self.filter:
            self.all_names.update(names_a, names_b)
            names_a = [n for n in names_a if self.filter.keeps(n)]
            names_b = [n for n in names_b if self.filter.keeps(n)]
        set_a, set_b = set(names_a), set(names_b)
        only_a = tuple(n for n in names_a if n not in set_b)
        only_b = tuple(n for n in names_b if n not in set_a)
        only_a, only_b = self._eval_notes(k, only_a, "a"), self._eval_notes(k, only_b, "b")
        only_a, only_b = self._blind_stops(only_a, "b", sb), self._blind_stops(only_b, "a", sa)
        if computed is None:
            # summaries: the steps the report shows are completed in _keep (detail "full": every step, the long way)
            ja, jb = (sa, sb) if not self.filter else (Step(k, {n: sa.tensors[n] for n in names_a}, sa.complete),
                                                       Step(k, {n: sb.tensors[n] for n in names_b}, sb.complete))
            computed = judge_step(ja, jb, self.tol, "full" if self.detail == "full" else "summary")
        elif self.filter:
            computed = tuple(tc for tc in computed if tc.name in set_a and tc.name in set_b)
        tensors = [self._tensor(tc, sa.tensors[tc.name], sb.tensors[tc.name], sc) for tc in computed]
        common_b = [n for n in names_b if n in set_a]
        if common_b != [n for n in names_a if n in set_b]:
            self.findings.add("order", "info", "B records the tensors in a different order than A "
                              "(compared by name; the first divergence follows A's order)", "b", None, k)
        self._structure(k, sa, sb, only_a, only_b)
        if not tensors and sa.complete and sb.complete and (names_a or names_b):
            side = "B" if names_a else "A"
            self._missing_step(k, f"{side} records none of the other side's tensors in step {k} (a step with "
                               "nothing in common is a missing step)")
        result = StepComparison(k, tuple(tensors), only_a, only_b, sa.complete, sb.complete)
        if self.detail != "divergent" and _has_summary(result):
            self.pending[k] = (sa, sb)
        if sa.complete and sb.complete:
            self.curves.judge(k, {t.name: not t.passed for t in tensors}, sa.tensors, sb.tensors)
        self._summarise(result)
        if self.first is None:
            self._divergence(result, sa, sb, names_a, names_b)
            if self.roots is not None:
                self.roots.step(result, sa, sb, self.first, self._later_context)
        elif self.roots is not None:
            self.roots.step(result, sa, sb, None, self._later_context)
        self._keep(result)
        tail = {s.step for s in self.tail}
        for j in [j for j in self.pending if j not in tail]:
            del self.pending[j]

    def _later_context(self, **fields: Any) -> Any:
        return _context(meta_a=self.readers["a"].meta, meta_b=self.readers["b"].meta, **fields)

    def _upgrade(self, s: StepComparison) -> StepComparison:
        """`s` with full metrics for its tensors that had only the summary (from the arrays kept in `pending`)."""
        if self.detail == "divergent" or not _has_summary(s):
            return s
        sa, sb = self.pending[s.step]
        tensors = tuple(
            replace(t, metrics=completed_metrics(t.metrics, sa.tensors[t.name], sb.tensors[t.name]))
            if t.metrics is not None and t.metrics.detail != "full" else t for t in s.tensors)
        return replace(s, tensors=tensors)

    def _tensor(self, tc: TensorComparison, a: np.ndarray, b: np.ndarray, sc: Step | None) -> TensorComparison:
        """Record what a judged tensor says about the traces (findings, tolerances used, oracle mode)."""
        k, name, tol = tc.step, tc.name, tc.tolerance
        self.names.add(name)
        uses = self.used.setdefault(tol, [])
        if name not in uses:
            uses.append(name)
        if a.shape != b.shape:
            self.findings.add("shape-mismatch", "error", f"{name} has shape {list(a.shape)} in A but "
                              f"{list(b.shape)} in B", None, name, k)
        elif a.dtype != b.dtype:
            self.findings.add("dtype-mismatch", "info", f"A records {a.dtype.name} where B records {b.dtype.name} "
                              f"(first: {name}); compared at the tolerance of the wider dtype", None, None, k,
                              key=("dtype-mismatch", a.dtype.name, b.dtype.name))
        if not tc.within_tolerance and tc.metrics is not None and "oracle" in self.readers:
            c = sc.tensors.get(name) if sc is not None else None
            if c is None or c.shape != a.shape:
                why = "has no step" if sc is None else "has no such tensor" if c is None else "has another shape"
                self.findings.add("oracle-missing", "warning", f"the oracle {why} to judge {name} by; "
                                  "B is blamed for it", None, name, k)
            else:
                tc = replace(tc, oracle=oracle_check(a, b, c, self.tol.oracle_factor))
                if tc.excused:
                    self.findings.add("excused", "info", f"tensors differ beyond tolerance (first: {name}), but B "
                                      f"is within {self.tol.oracle_factor:g}x A's error to the oracle: counted "
                                      "per tensor and step", None, None, k)
        return tc

    def _eval_notes(self, k: int, only: tuple[str, ...], side: str) -> tuple[str, ...]:
        """eval.* recorded by one side only are notes, not divergences: drop them, with an info finding."""
        notes = [n for n in only if n.startswith(EVAL_PREFIX)]
        if notes:
            other = "B" if side == "a" else "A"
            self.findings.add("eval-one-sided", "info", f"{side.upper()} records evaluations ({', '.join(notes)}) "
                              f"that {other} does not at this step; they are shown, not compared", side, None, k)
        return tuple(n for n in only if not n.startswith(EVAL_PREFIX))

    def _blind_stops(self, only: tuple[str, ...], side: str, other: Step) -> tuple[str, ...]:
        """Drop stop.* when the other side (`side`, step `other`) records no evaluations at all: it cannot stop
        by a rule (the stop finding, a warning then, says so)."""
        blind = not self.curves.evaluates(side) and not any(n.startswith(EVAL_PREFIX) for n in other.tensors)
        return tuple(n for n in only if not (blind and n.startswith(STOP_PREFIX)))

    def _structure(self, k: int, sa: Step, sb: Step, only_a: tuple[str, ...], only_b: tuple[str, ...]) -> None:
        for side, step, missing in (("b", sb, only_a), ("a", sa, only_b)):
            if not step.complete:
                continue  # the incomplete finding says why
            for name in missing:
                if name.startswith(STOP_PREFIX):
                    continue  # the stop finding says how the runs stop
                has = "a" if side == "b" else "b"
                old = self.sided.get(name)
                self.sided[name] = OneSided(name, has, k, k, 1) if old is None or old.recorded_by != has else \
                    replace(old, last_step=k, steps=old.steps + 1)
        for side, step in (("a", sa), ("b", sb)):
            if not step.complete:
                self._incomplete(side, step, same_crash=_same_crash(sa, sb))

    def _incomplete(self, side: str, step: Step, same_crash: bool = False) -> None:
        """A crashed step: an error, unless both runs crashed at the same point (then the steps both have are
        what is compared, and the crash is only noted)."""
        last = list(step.tensors)[-1] if step.tensors else None
        after = f"after recording {last}" if last else "before recording any tensor"
        both = "; so did the other run, at the same point" if same_crash else ""
        self.findings.add("incomplete", "warning" if same_crash else "error", f"{side.upper()}'s step {step.index} "
                          f"is incomplete: its run crashed {after} ({self.readers[side].path}){both}", side, None,
                          step.index)

    def _summarise(self, result: StepComparison) -> None:
        k = result.step
        self.compared += 1
        failed = not result.passed
        worst = result.worst
        if worst is not None:
            self.overview.add(k, max(t.max_abs_error for t in result.tensors), worst.max_rel_error, worst.name, failed)
        for t in result.tensors:
            series = self.series.get(t.name)
            if series is None:  # (not setdefault: that would build a _Buckets for every tensor of every step)
                series = self.series[t.name] = _Buckets()
            series.add(k, t.max_abs_error, t.max_rel_error, t.name, not t.passed)
        if self.first is None:
            self.hist_steps.append(k)
            self.hist_errors.append(result.worst_rel_error)
        if failed:
            self.divergent_steps += 1
            self.last_divergent = k

    def _keep(self, result: StepComparison) -> None:
        if len(self.head) < HEAD_STEPS:
            self.head.append(self._upgrade(result))
        if self.first is None:
            self.before.append(result)
        elif self.kept_after <= AROUND:
            self.around.append(self._upgrade(result))
            self.kept_after += 1
        self.tail.append(result)

    # -- finding the first divergence
    def _divergence(self, result: StepComparison, sa: Step, sb: Step, names_a: list[str],
                    names_b: list[str]) -> None:
        by_name = {t.name: t for t in result.tensors}
        order = names_a + list(result.only_b)
        for pos, name in enumerate(order):
            t = by_name.get(name)
            if t is not None and t.passed or t is None and name not in result.only_a + result.only_b:
                continue  # (a name neither compared nor missing is a one-sided eval.* note)
            earlier = [by_name[n] for n in names_a[:pos] if n in by_name]
            if t is None:
                side, step = ("b", sb) if name in result.only_a else ("a", sa)
                if step.complete and not name.startswith(STOP_PREFIX):
                    continue  # recorded by one side only: a note, not a divergence (a stop is: runs stop apart)
                crash = "" if step.complete else f" (its step {step.index} is incomplete: the run crashed)"
                detail = _stop_detail(result.step, names_a, names_b) if name.startswith(STOP_PREFIX) else \
                    f"{side.upper()} has no {name} in step {result.step}{crash}"
                self._found(FirstDivergence("missing", result.step, name, detail), earlier, names_a[:pos])
            else:
                self._found_tensor(t, sa, sb, names_a[:pos], names_b, earlier)
            self.consequences = [n for n in order[pos + 1:] if n in by_name and not by_name[n].passed]
            return
        if not (sa.complete and sb.complete) and not _same_crash(sa, sb):
            side = "a" if not sa.complete else "b"
            self._found(FirstDivergence("missing", result.step, None, f"{side.upper()}'s step {result.step} is "
                                        "incomplete: its run crashed after recording every tensor"), [], [])

    def _found(self, first: FirstDivergence, earlier: list[TensorComparison], inputs: list[str]) -> None:
        worst = max(earlier, key=lambda t: t.max_rel_error, default=None)
        self.first = replace(
            first, inputs=tuple(inputs),
            inputs_agree=all(t.within_tolerance for t in earlier) and len(earlier) == len(inputs) if inputs else None,
            inputs_worst=(worst.name, worst.max_rel_error) if worst is not None else None)
        self.around = [self._upgrade(s) for s in self.before]

    def _found_tensor(self, t: TensorComparison, sa: Step, sb: Step, inputs: list[str], names_b: list[str],
                      earlier: list[TensorComparison]) -> None:
        a, b = sa.tensors[t.name], sb.tensors[t.name]
        if t.metrics is None:
            first = FirstDivergence("shape", t.step, t.name, f"{t.name} has shape {list(t.shape_a)} in A but "
                                    f"{list(t.shape_b)} in B", tensor=t)
        else:
            errors = element_errors(a, b)
            where = localize(a, b, errors, t.tolerance.out_of_tolerance(errors))
            first = FirstDivergence("values", t.step, t.name, f"{t.name} differs in {where.n_out} of {where.size} "
                                    f"elements ({where.pattern})", tensor=t, where=where,
                                    error_grid=error_grid(errors.abs))
        self._found(first, earlier, inputs)
        assert self.first is not None  # _found just set it
        inputs_b = names_b[:names_b.index(t.name)]
        self.first = replace(self.first, diagnoses=_diagnose(
            step=t.step, name=t.name, a=a, b=b,
            inputs_a={n: sa.tensors[n] for n in inputs}, inputs_b={n: sb.tensors[n] for n in inputs_b},
            history=tuple(zip(self.hist_steps, self.hist_errors)), inputs_agree=self.first.inputs_agree,
            meta_a=self.readers["a"].meta, meta_b=self.readers["b"].meta,
            **(self.roots.extra(t.step, sa, sb) if self.roots is not None else {})))

    # -- a step on one side only
    def one_sided(self, side: str, step: Step, other_ended: bool) -> None:
        other, k = ("b" if side == "a" else "a"), step.index
        if not step.complete:
            self._incomplete(side, step)
            self._missing_step(k, f"{side.upper()}'s step {k} is incomplete: its run crashed")
        if other_ended and self.curves.stopped(other):  # the stop finding says it
            self.after_stop[side] += 1
        elif not other_ended:  # traces may record every n-th step: a gap is not a divergence
            self.findings.add("missing-step", "warning", f"{other.upper()} has no step {k}, which {side.upper()} "
                              "has; only the steps both have are compared", other, None, k)
        elif self._stopped_early(other):
            last = self.last[other]
            assert last is not None  # _stopped_early holds only for a trace with a last step
            if ("truncated", other, None) not in self.findings.items:
                self._missing_step(k, f"{other.upper()} ends before step {k}: its run stopped early")
            self.findings.add("truncated", "error", f"{other.upper()} ends after step {last.index} "
                              f"although its header says {self.readers[other].meta['steps']} steps: the run "
                              f"stopped early ({self.readers[other].path})", other, None, k)
        elif (last := self.last[other]) is None or last.complete:  # (after a crash, the crash is the error)
            self.findings.add("extra-steps", "warning", f"{side.upper()} has steps that {other.upper()} lacks at "
                              "its end; only the steps both have are compared", side, None, k)

    def _stopped_early(self, side: str) -> bool:
        """Whether a trace of every step from 0 ended complete, short of the steps its header declares."""
        declared, last = self.readers[side].meta.get("steps"), self.last[side]
        return (not self.curves.stopped(side) and isinstance(declared, int) and last is not None and last.complete
                and self.count[side] == last.index + 1 < declared)

    def _missing_step(self, k: int, detail: str) -> None:
        self.divergent_steps += 1
        self.last_divergent = k
        if self.first is None:
            self._found(FirstDivergence("missing", k, None, detail), [], [])

    # -- the result
    def result(self, stopped_early: bool) -> Comparison:
        if not stopped_early:
            self._check_lengths()
        curves = self.curves.result()
        if curves.stops_differ:
            extra = "; ".join(f"{s.upper()} goes on for {n} more steps" for s, n in self.after_stop.items() if n)
            blind = [s for s, side in (("a", curves.a), ("b", curves.b)) if side.stop is None and not side.evaluated]
            why = (f"; {blind[0].upper()} records no evaluations (eval.*), so it cannot stop by a rule: only the "
                   "steps both traces have are compared") if blind else ""
            self.findings.add("stop", "warning" if blind else "error",
                              curves.stop_summary() + (f" ({extra})" if extra else "") + why)
        for rule in self.tol.unused_rules(self.names):
            self.findings.add("unused-rule", "warning", f"{rule.text} matches no tensor name; names are e.g. "
                              f"{', '.join(sorted(self.names)[:4])}")
        for pattern in self.filter.unused(self.all_names):
            self.findings.add("unused-rule", "warning", f"--only/--ignore pattern {pattern!r} matches no tensor "
                              f"name; names are e.g. {', '.join(sorted(self.all_names)[:4])}")
        for side in ("a", "b"):
            odd = [o.name for o in self.sided.values() if o.recorded_by == side and not CANONICAL.match(o.name)]
            if odd:
                self.findings.add("not-canonical", "warning", f"{side.upper()} records names that are not canonical "
                                  f"({', '.join(odd[:6])}{', ...' if len(odd) > 6 else ''}), so they are not compared: "
                                  "read it through a layout map (--map-a/--map-b, docs/ports.md)", side)
        if self.compared and not self.names and (self.sided or self.filter):  # (steps with no tensor at
            # all on both sides are valid and agree: nothing to compare, nothing that differs)
            why = ("no tensor name is recorded by both sides" + (" among those --only/--ignore select" if self.filter
                                                                 else ""))
            self.findings.add("nothing-compared", "error", f"{why}: nothing was compared (a layout map, "
                              "--map-a/--map-b, gives a port's tensors their canonical names)")
            if self.first is None and self.head:
                self._missing_step(self.head[0].step, f"{why}: nothing was compared")
        findings = tuple(self.findings.items.values())
        diverge = self.first is not None or any(f.severity == "error" for f in findings)
        first = self.first
        if first is not None:
            first = replace(first, consequences=tuple(dict.fromkeys(self.consequences)),
                            divergent_steps=self.divergent_steps, last_divergent_step=self.last_divergent)
        chosen: dict[int, StepComparison] = {}
        for s in [*self.tail, *self.head, *self.around]:  # head and around are in full already
            chosen[s.step] = s
        chosen = {k: self._upgrade(s) for k, s in chosen.items()}
        return Comparison(
            verdict="diverge" if diverge else "agree",
            first_divergence=first,
            a=self._info("a", not stopped_early), b=self._info("b", not stopped_early),
            oracle=self._info("oracle", False) if "oracle" in self.readers else None,
            tolerances=self.tol,
            tolerances_used=tuple(ToleranceUse(t, tuple(n)) for t, n in self.used.items()),
            steps_compared=self.compared,
            divergent_steps=self.divergent_steps,
            steps=tuple(chosen[k] for k in sorted(chosen)),
            overview=tuple(self.overview.items),
            series=tuple(TensorSeries(n, tuple(s.items)) for n, s in self.series.items()),
            findings=findings,
            meta_diff=meta_diff(self.readers["a"].meta, self.readers["b"].meta),
            curves=curves if curves.present else None,
            root_causes=self.roots.result() if self.roots is not None else (),
            one_sided=tuple(self.sided.values()),
            names=self.filter,
        )

    def _check_lengths(self) -> None:
        for side in ("a", "b"):
            last = self.last[side]
            if self._stopped_early(side) and ("truncated", side, None) not in self.findings.items:
                assert last is not None  # _stopped_early holds only for a trace with a last step
                self.findings.add("truncated", "warning", f"{side.upper()} ends after step {last.index} "
                                  f"although its header says {self.readers[side].meta['steps']} steps", side)

    def _info(self, side: str, read_to_end: bool = True) -> TraceInfo:
        r, last = self.readers[side], self.last[side]
        unfinished = last.index if last is not None and not last.complete else None
        span = self.complete_span[side]
        first, last_done = span if span is not None else (None, None)
        stopped = side in ("a", "b") and self.curves.stopped(side)
        early = ended_early(r.meta, self.count[side], first, last_done, unfinished, stopped) if read_to_end else None
        return TraceInfo(str(r.path), r.encoding, dict(r.meta), self.count[side],
                         last.index if last is not None else None, unfinished, early)

    def seen(self, side: str, step: Step) -> None:
        self.last[side] = step
        self.count[side] += step.complete
        if step.complete:
            span = self.complete_span[side]
            self.complete_span[side] = (step.index if span is None else span[0], step.index)
        if side in ("a", "b") and step.complete:
            self.curves.observe(side, step.index, step.tensors)


def _same_crash(sa: Step, sb: Step) -> bool:
    """Both steps crashed, after recording the same tensors: a crashed run compared with itself, or two runs
    killed at the same point."""
    return not sa.complete and not sb.complete and list(sa.tensors) == list(sb.tensors)


def _stop_detail(k: int, names_a: list[str], names_b: list[str]) -> str:
    """Why a stop.RULE is on one side only: which run stops at step k, by which rule."""
    rules = {side: [n[len(STOP_PREFIX):] for n in names if n.startswith(STOP_PREFIX)]
             for side, names in (("A", names_a), ("B", names_b))}
    said = [f"{side} stops after step {k} by the {r[0]} rule" if r else f"{side} does not stop there"
            for side, r in rules.items()]
    return "; ".join(said)


def _diagnose(**context: Any) -> tuple:
    """The colleague's diagnosers (memstate.diagnose.context), when that module exists."""
    try:
        from memstate.diagnose.context import DivergenceContext
        from memstate.diagnose.catalogue import diagnose
    except ModuleNotFoundError as exc:
        if exc.name != "memstate.diagnose.context":
            raise
        return ()
    return tuple(diagnose(DivergenceContext(**context)))


def _root_collector() -> Any:
    """memstate.diagnose.roots' collector of every independent cause, when that module exists."""
    try:
        from memstate.diagnose.roots import DiffRoots
    except ModuleNotFoundError as exc:
        if exc.name != "memstate.diagnose.roots":
            raise
        return None
    return DiffRoots()


def _context(**fields: Any) -> Any:
    """A DivergenceContext for a later failing tensor, with this comparison's history and headers."""
    from memstate.diagnose.context import DivergenceContext

    return DivergenceContext(history=(), **fields)


def _open(trace: TraceLike, stack: ExitStack) -> TraceReader:
    if isinstance(trace, TraceReader):
        return trace
    return stack.enter_context(open_trace(trace))


def _range_judge(readers: dict[str, TraceReader], tolerances: Tolerances, jobs: int,
                 max_steps: int | None, stack: ExitStack) -> RangeJudge | None:
    """Worker processes for the steps both binary traces hold, when jobs > 1 and there are enough of them."""
    if jobs <= 1 or "oracle" in readers or any(readers[s].encoding != "binary" for s in ("a", "b")):
        return None
    steps = sorted(set(readers["a"].complete_steps()) & set(readers["b"].complete_steps()))
    if max_steps is not None:
        steps = steps[:max_steps]
    if len(steps) < 2 or not worth_it(readers["a"].path, steps):
        return None
    return stack.enter_context(RangeJudge(readers["a"].path, readers["b"].path, steps, tolerances, jobs,
                                          (readers["a"].run_id, readers["b"].run_id), judge_step))


def compare(a: TraceLike, b: TraceLike, *, tolerances: Tolerances | None = None, oracle: TraceLike | None = None,
            max_steps: int | None = None, detail: str = "shown", jobs: int = 1,
            names: NameFilter | None = None) -> Comparison:
    """Compare trace B against reference trace A (paths or open readers), step by step, in bounded memory.

    `names`: compare only the tensors it keeps (--only/--ignore). A name recorded by one side only is listed
    in `one_sided`, not a divergence; a step one side lacks or cut short still is.
    detail="shown" computes ULPs, cosine and elementwise rel for tensors out of tolerance and for the steps
    the Comparison keeps; detail="full" computes them for every tensor (slower; the result is the same);
    detail="divergent" only for tensors out of tolerance: the kept steps' tensors within tolerance keep the
    summary metrics (max abs and rel error, scale; the rest nan, metrics.detail "summary" or "identical"),
    all that the text report shows of them (`memstate diff` uses it for --format text).
    jobs > 1 judges the steps of two binary traces in that many worker processes (memstate.comparator.parallel)
    when they hold at least parallel.MIN_BYTES (1 GiB) a side; the result is the same. A JSONL trace is
    read one step ahead in a background thread.
    """
    if detail not in ("shown", "full", "divergent"):
        raise ValueError(f"detail={detail!r}: use 'shown', 'full' or 'divergent'")
    tolerances = Tolerances() if tolerances is None else tolerances
    with ExitStack() as stack:
        stack.enter_context(blas_threads())
        readers = {"a": _open(a, stack), "b": _open(b, stack)}
        if oracle is not None:
            readers["oracle"] = _open(oracle, stack)
        comparer = _Comparer(tolerances, readers, detail, names if names is not None else NameFilter())
        judge = _range_judge(readers, tolerances, jobs, max_steps, stack)
        # mapped, not populated: pages are faulted in as they are read, which costs less than populating
        # them first, and the workers (when there are) read the data, so this process touches only what the
        # report needs
        pool = reading_pool()
        stack.callback(pool.shutdown)
        its = {side: read_ahead(r.steps(include_incomplete=True, mapped=True, populate=False), r.encoding, pool)
               for side, r in readers.items()}
        for it in its.values():
            stack.callback(it.close)
        stopped = _walk(comparer, its, judge, max_steps)
        return comparer.result(stopped)


def _walk(comparer: _Comparer, its: dict[str, ReadAhead | InLine], judge: RangeJudge | None,
          max_steps: int | None) -> bool:
    """Feed the comparer the aligned steps of both traces (and the oracle); True when max_steps stopped it."""
    cur: dict[str, Any] = {side: next(it, None) for side, it in its.items()}

    def advance(side: str) -> None:
        comparer.seen(side, cur[side])
        cur[side] = next(its[side], None)

    done = 0
    while cur["a"] is not None or cur["b"] is not None:
        if max_steps is not None and done >= max_steps:
            return True
        done += 1
        k = min(cur[s].index for s in ("a", "b") if cur[s] is not None)
        here: dict[str, Any] = {s: cur[s] if cur[s] is not None and cur[s].index == k else None for s in ("a", "b")}
        sc = None
        if "oracle" in cur:
            while cur["oracle"] is not None and cur["oracle"].index < k:
                advance("oracle")
            sc = cur["oracle"] if cur["oracle"] is not None and cur["oracle"].index == k else None
        if here["a"] is not None and here["b"] is not None:
            both_complete = here["a"].complete and here["b"].complete
            computed = judge.get(k) if judge is not None and both_complete else None
            comparer.both(here["a"], here["b"], sc, computed)
        else:
            side = "a" if here["a"] is not None else "b"
            comparer.one_sided(side, here[side], other_ended=cur["b" if side == "a" else "a"] is None)
        for s in ("a", "b"):
            if here[s] is not None:
                advance(s)
        if sc is not None:
            advance("oracle")
    return False

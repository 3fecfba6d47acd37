"""`check --jobs N`: ranges of consecutive steps of a binary trace walked in worker processes (issue 14).

Each step is recomputed from the parameters the step before it recorded, and the walk learns its settings
(activation, loss reduction, learning rate) from the first steps that show them. So the main process walks
the first steps itself until the settings are settled (at least SETTLE_STEPS, at most the first range's
worth), then hands every later range to a worker with those settings: `check_range` reads the step before
its range for the parameters in force, walks the range with a fresh State and returns that State (counts,
per-name statistics, findings, notes, the series one bucket per step: no arrays but the last step's
comparison when asked).

The main process walks the steps in order as before: where it reaches a range a worker walked, it only
maps the step files (for the parameters in force and the steps the root causes look back on) and merges
the worker's State (memstate.check.merge). A worker walks as if an earlier step had failed; a range that
cannot be merged exactly (it holds the first failing operation, or a cause still to be diagnosed; its
settings changed; a learning rate was still being fitted; a step could not be read; its steps are not the
ones listed) is walked again by the main process with the true State, so the report is the serial one:
the smallest failing step wins, with its diagnosis. After a range whose settings changed, or whose steps
were not the listed ones, every later range is walked in the main process.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from memstate.blas import blas_threads
from memstate.check import merge
from memstate.check import recompute as rc
from memstate.check.infer import Spec
from memstate.check.root_causes import CheckRoots
from memstate.check.result import OpCheck
from memstate.check.state import State
from memstate.check.step import full_step
from memstate.check.walk import Walk
from memstate.comparator.compare import StepComparison
from memstate.comparator.parallel import plan_ranges
from memstate.comparator.tolerance import Tolerance, Tolerances
from memstate.formats.trace import Step, read_step, step_file_name
from memstate.names import param_names
from memstate.workers import files_hold, process_context

MIN_BYTES = 512 << 20  # less data than this is checked in-process: starting workers costs more
# (check recomputes every operation: about 1 GB/s of float64 step files a core on issue 14's net, against 0.3
# to 1 s to start a worker and import numpy; --jobs 2 broke even at about 500 MB on 2 cores: docs/scale.md)
SETTLE_STEPS = 2  # the main process walks at least these first steps itself, until the settings are settled
# (without a params file the learning rate is first fitted at step 1)
PRELOAD = ("memstate.check.parallel",)


@dataclass(frozen=True)
class CheckRange:
    """The unit of work: these consecutive steps of a binary trace, checked under settled settings."""

    path: str
    steps: tuple[int, ...]
    prev: int | None  # the step the walk checks just before steps[0] (its parameters are in force at steps[0])
    run_id: str | None
    spec: Spec  # the settings the main process settled (with no learning-rate fits of its own)
    n_layers: int
    dtype: str
    tolerances: Tolerances
    last: bool = False  # the trace's last range: return the last step's comparison in full


@dataclass
class RangeResult:
    """A range walked: its State and learning-rate fits to merge, or why the main process must walk it
    itself (`why`, with state None)."""

    state: State | None
    lr_fit: rc.LrFit = field(default_factory=rc.LrFit)
    last: tuple[int, StepComparison] | None = None
    why: str = ""
    events: tuple[tuple[int, str], ...] = ()  # (step, name) of each failing operation that is a cause


class _Causes(CheckRoots):
    """A worker's root causes: each failing operation that is a cause, not a consequence, kept as (step,
    name) for the main walk to count (memstate.check.merge.failures_reason says when it may)."""

    def __init__(self) -> None:
        super().__init__({})
        self.events: list[tuple[int, str]] = []

    def failed(self, k: int, name: str, pos: int, context: Any) -> None:
        if not self.consequence(name, pos):
            self.failed_here.add(name)
            self.events.append((k, name))


#: a worker walks its range as if an earlier step had failed (no first divergence, nothing kept in full)
FAILED_BEFORE = OpCheck(-1, "", "", (), (), "", "", (), False, None, 0.0, 0.0, 0.0, None, None, None,
                        Tolerance(0.0, 0.0))


def check_range(unit: CheckRange) -> RangeResult:
    """Walk one range in a worker. Any error (a step file that cannot be read, a bug) sends the range back
    to the main process, whose own walk meets it and reports it as the serial walk does."""
    try:
        with blas_threads():
            return _walk_range(unit)
    except Exception as exc:  # noqa: BLE001 - the main process walks the range again and raises the right error
        return RangeResult(None, why=f"{type(exc).__name__}: {exc}")


def _walk_range(unit: CheckRange) -> RangeResult:
    """The worker's walk: fresh State, the settled settings, the parameters in force from step `prev`, as if
    an earlier step had failed. No diagnosis and no header (only diagnoses read it): a range that holds the
    first failure or a cause still to be diagnosed is walked again by the main process."""
    st = merge.unbounded_state(State(unit.tolerances, {}, False, roots=_Causes()))
    st.first_failure = FAILED_BEFORE
    spec = replace(unit.spec, lr_fit=rc.LrFit())
    walk = Walk(st, spec, None, "", unit.n_layers, unit.dtype, count=1, prev_index=unit.prev)
    if unit.prev == unit.steps[0] - 1:
        t = _read(unit, unit.prev)
        names = param_names(unit.n_layers)
        walk.prev_params = {n: t[n] for n in names} if all(n in t for n in names) else None
    before = merge.decisions(spec)
    for k in unit.steps:
        walk.step(k, _read(unit, k))
        why = merge.redo_reason(before, merge.decisions(spec),
                                unit.spec.learning_rate.value is None and spec.lr_fit.count > 0)
        if why:
            return RangeResult(None, why=f"step {k}: {why}")
    last = None
    if unit.last:
        assert st.last_kept is not None
        k, kept = st.last_kept
        last = (k, full_step(k, kept))  # type: ignore[arg-type]  # a list of Op: this walk merged nothing
    events = tuple(st.roots.events)
    st.roots, st.last_kept, st.tol_cache, st.first_failure = None, None, {}, None
    return RangeResult(st, spec.lr_fit, last, events=events)


def _read(unit: CheckRange, k: int) -> dict[str, np.ndarray]:
    """Step k's tensors, mapped as the main walk maps them (pages read as they are used)."""
    return read_step(Path(unit.path) / step_file_name(k), k, unit.run_id, mapped=True, populate=False)[0]


def worth_it(path: str | os.PathLike, steps: list[int]) -> bool:
    """Whether the step files of `steps` in trace `path` hold at least MIN_BYTES."""
    return files_hold((Path(path) / step_file_name(k) for k in steps), MIN_BYTES)


def walk_in_ranges(walk: Walk, steps: Iterator[Step], listed: list[int], path: str | os.PathLike,
                   run_id: str | None, jobs: int) -> tuple[tuple[int, int, str], ...]:
    """Walk `steps` (the trace's complete steps, in order; `listed`: their numbers from the file names) as the
    serial walk does, with the ranges after the first settled steps checked by `jobs` worker processes.
    Returns each range handed out: (first step, last step, "" when merged, else why it was walked here)."""
    for step in islice(steps, max(SETTLE_STEPS, len(plan_ranges(listed, jobs)[0]))):
        walk.step(step.index, step.tensors)
        if merge.settled(walk.spec):
            break
    rest = listed[walk.count:]
    out: list[tuple[int, int, str]] = []
    if rest and walk.n_layers is not None and walk.dtype is not None:  # a dtype: a step was walked
        ranges = [tuple(r) for r in plan_ranges(rest, jobs)]
        spec = replace(walk.spec, lr_fit=rc.LrFit())
        units = [CheckRange(str(path), r, prev, run_id, spec, walk.n_layers, walk.dtype, walk.st.tolerances,
                            i == len(ranges) - 1)
                 for i, (r, prev) in enumerate(zip(ranges, [walk.last_step] + [r[-1] for r in ranges[:-1]]))]
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=process_context(PRELOAD))
        try:
            out = _fold(walk, steps, [(u.steps, pool.submit(check_range, u)) for u in units])
        finally:
            pool.shutdown(cancel_futures=True)
    for step in steps:  # the serial walk of whatever is left (steps listed after the plan was made)
        walk.step(step.index, step.tensors)
    return tuple(out)


def _fold(walk: Walk, steps: Iterator[Step], planned: list[tuple[tuple[int, ...], Future]]
          ) -> list[tuple[int, int, str]]:
    """Each planned range in order: merged from its worker, or walked here (and then every later one too,
    when the settings changed in it or its steps were not the ones planned)."""
    before = merge.decisions(walk.spec)
    trusted, out = True, []
    for rng, fut in planned:
        got = list(islice(steps, len(rng)))
        same = tuple(s.index for s in got) == rng
        result = _result(fut) if trusted and same else None
        why = _why(walk, result) if result is not None else "the steps are not the ones listed" if not same \
            else "it follows a range whose settings or steps changed" if not trusted else "its worker failed"
        out.append((rng[0], rng[-1], why))
        if not why:
            for s in got:
                walk.skip(s.index, s.tensors)
            _absorb(walk, result)  # type: ignore[arg-type]  # no why: a result with a State
            continue
        fut.cancel()
        for s in got:
            walk.step(s.index, s.tensors)
        trusted = trusted and same and merge.decisions(walk.spec) == before
        if not trusted:
            for _, later in planned:
                later.cancel()
    return out


def _result(fut: Future) -> RangeResult | None:
    """A worker's result; None when the pool failed (a worker killed, a result that would not pickle)."""
    try:
        result = fut.result()
    except Exception:  # noqa: BLE001 - the main process walks the range itself
        return None
    return result if isinstance(result, RangeResult) else None


def _why(walk: Walk, result: RangeResult) -> str:
    """Why a worker's range is walked here ("" to merge it): the worker's reason, or the main walk's."""
    if result.state is None:
        return result.why
    roots = walk.st.roots
    return merge.failures_reason(result.state.n_failures, walk.st.first_failure is not None, result.events,
                                 roots.causes if roots.on else None)


def _absorb(walk: Walk, result: RangeResult) -> None:
    """A worker's range merged into the walk: its State, its learning-rate fits, its last step, its causes
    (each counted under its name's last diagnosis, as the serial walk counts it)."""
    assert result.state is not None
    merge.absorb(walk.st, result.state)
    walk.spec.lr_fit = merge.lr_fit(walk.spec.lr_fit, result.lr_fit)
    walk.st.last_kept = result.last
    if walk.st.roots.on:
        for k, name in result.events:
            walk.st.roots.causes.agreeing(k, name, _diagnosed_enough)


def _diagnosed_enough() -> Any:
    """The context of a cause that failures_reason let through: never asked for (its name is only counted)."""
    raise AssertionError("a merged cause was to be diagnosed: memstate.check.merge.failures_reason let it through")


__all__ = ["CheckRange", "MIN_BYTES", "RangeResult", "check_range", "walk_in_ranges", "worth_it"]

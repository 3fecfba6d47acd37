"""Step ranges of binary traces judged in worker processes, and reading one step ahead (issue 14).

The unit of work is a `StepRange`: a run of step numbers that two binary traces both hold as complete
step files, with the tolerance policy to judge them by. `judge_range` does one unit with no other input
and returns small, picklable results (a TensorComparison per tensor, metrics summarised unless out of
tolerance), so the same unit is what a distributed engine would schedule when a trace outgrows one
machine (docs/scale.md). `compare` (memstate.comparator.compare) keeps every step in order: it takes the
judged tensors from `RangeJudge.get` as its walk reaches each step, so the first divergence is the
smallest failing step whatever order the workers finish in.

`ReadAhead` (memstate.formats.readahead) reads the next step of a JSONL trace in a background thread
while the current one is compared.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from memstate.comparator.tolerance import Tolerances
from memstate.formats.readahead import ReadAhead
from memstate.workers import default_jobs, files_hold, process_context
from memstate.formats.trace import Step, read_step, step_file_name

RANGES_PER_JOB = 4  # ranges per worker: small enough to balance, large enough to amortise a task
MAX_RANGE = 64  # steps in one range at most
MIN_BYTES = 1 << 30  # less data than this per side is compared in-process: starting workers costs more
# (one core compares 3 to 9 GB/s of bit-identical or within-tolerance steps; a worker takes 0.3 to 1 s to
# start and import numpy, so below about 1 GiB a side --jobs 2 was slower than --jobs 1: docs/scale.md)


@dataclass(frozen=True)
class StepRange:
    """The unit of work: these steps of two binary traces (complete in both), judged under `tolerances`."""

    path_a: str
    path_b: str
    steps: tuple[int, ...]
    tolerances: Tolerances
    run_a: str | None = None  # the run ids the headers declare (each step file must carry its trace's)
    run_b: str | None = None
    judge: Callable[..., Any] | None = None  # judge(sa, sb, tolerances, detail): the comparator's judge_step,
    # passed in (a module-level function pickles by name) so that this module never imports the comparator


def judge_range(unit: StepRange) -> tuple[tuple[int, Any], ...]:
    """(step, judged tensors) for each step of the unit; None in place of the tensors where a step file
    cannot be read here (the caller reads it again and reports the error where the walk meets it)."""
    from memstate.blas import blas_threads

    if unit.judge is None:
        raise ValueError("StepRange.judge: pass the comparator's judge_step")
    out: list[tuple[int, Any]] = []
    with blas_threads():
        for k in unit.steps:
            try:
                ta, pa = read_step(Path(unit.path_a) / step_file_name(k), k, unit.run_a, mapped=True, populate=False)
                tb, pb = read_step(Path(unit.path_b) / step_file_name(k), k, unit.run_b, mapped=True, populate=False)
                sa, sb = Step(k, ta, payload=pa), Step(k, tb, payload=pb)
            except Exception:  # noqa: BLE001 - the caller's own read raises the right error
                out.append((k, None))
                continue
            out.append((k, unit.judge(sa, sb, unit.tolerances, "summary")))
    return tuple(out)


def plan_ranges(steps: list[int], jobs: int) -> list[tuple[int, ...]]:
    """Consecutive runs of `steps`, about RANGES_PER_JOB per job and at most MAX_RANGE steps each."""
    if not steps:
        return []
    size = max(1, min(MAX_RANGE, -(-len(steps) // (jobs * RANGES_PER_JOB))))
    return [tuple(steps[i:i + size]) for i in range(0, len(steps), size)]


def worth_it(path: str | os.PathLike, steps: list[int]) -> bool:
    """Whether the step files of `steps` in trace `path` hold at least MIN_BYTES."""
    return files_hold((Path(path) / step_file_name(k) for k in steps), MIN_BYTES)


class RangeJudge:
    """Every common step of two binary traces judged by `jobs` worker processes, handed out by step."""

    def __init__(self, path_a: str | os.PathLike, path_b: str | os.PathLike, steps: list[int],
                 tolerances: Tolerances, jobs: int, run_ids: tuple[str | None, str | None] = (None, None),
                 judge: Callable[..., Any] | None = None):
        self.pool = ProcessPoolExecutor(max_workers=jobs, mp_context=process_context())
        self.futures: dict[int, Future] = {}
        self.results: dict[int, Any] = {}
        for rng in plan_ranges(steps, jobs):
            fut = self.pool.submit(judge_range, StepRange(str(path_a), str(path_b), rng, tolerances, *run_ids, judge))
            for k in rng:
                self.futures[k] = fut

    def get(self, k: int) -> Any:
        """The judged tensors of step k, or None when the workers do not have it (the caller judges it)."""
        if k in self.results:
            return self.results.pop(k)
        fut = self.futures.pop(k, None)
        if fut is None:
            return None
        for j, tensors in fut.result():
            self.results[j] = tensors
            self.futures.pop(j, None)
        return self.results.pop(k, None)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> RangeJudge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["RangeJudge", "ReadAhead", "StepRange", "default_jobs", "judge_range", "plan_ranges"]

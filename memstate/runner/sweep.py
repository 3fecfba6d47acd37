"""Sweeps: one scenario run over a grid of settings (and implementations), in parallel processes.

`memstate sweep SCENARIO --set training.batch_size=8,32,64 --set model.layers=[784,100,10],[784,800,800,10]`
expands to the cartesian product of the `--set` values (the first axis varies slowest), builds one validated
scenario per grid point from the scenario file's own table (so a bad key or value is the scenario error
with its "did you mean"), runs every (grid point, implementation) pair with the harness, and returns
each run's figures: how many steps it trained, which rule stopped it, its final evaluation and its
curves. Runs are deterministic (the harness is), so the same sweep gives the same numbers in any order
and with any number of processes; timings are kept apart from the figures for that reason.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import sys
import tomllib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from memstate.errors import ScenarioError
from memstate.runner.registry import get_impl
from memstate.runner.scenario import Scenario, resolve_scenario_path, scenario_from_table
from memstate.runner.stopping import Evaluation

MAX_CURVE_POINTS = 400  # per-step loss curves are averaged down to at most this many points


@dataclass(frozen=True)
class Axis:
    """One `--set KEY=V1,V2,...`: a dotted scenario key and its values (as parsed, and as written)."""

    key: str
    values: tuple[Any, ...]
    texts: tuple[str, ...]


@dataclass(frozen=True)
class Job:
    index: int
    scenario: Scenario
    impl: str
    settings: tuple[tuple[str, str], ...]  # (key, value as written) per axis
    steps: int | None = None


@dataclass(frozen=True)
class SweepRun:
    """One run of the grid: its settings and what it did."""

    index: int
    impl: str
    settings: tuple[tuple[str, str], ...]
    steps: int  # steps trained
    planned: int  # steps the scenario asked for
    stop: tuple[int, str, float, int] | None  # (last step, rule, value, epoch from 1) when a rule stopped the run
    final_loss: float  # the last batch loss
    final: Evaluation | None  # the last evaluation (scenarios with a training view)
    test_accuracy: float | None  # the final evaluation's, else the harness's test accuracy
    evaluations: tuple[Evaluation, ...]
    loss_curve: tuple[tuple[int, float], ...]  # (step, batch loss), averaged over blocks for long runs
    seconds: float  # wall time; not part of the figures

    @property
    def label(self) -> str:
        return " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in self.settings) or "(scenario as is)"


@dataclass(frozen=True)
class Sweep:
    scenario: str
    axes: tuple[Axis, ...]
    impls: tuple[str, ...]
    runs: tuple[SweepRun, ...]


def split_values(text: str) -> list[str]:
    """Split on the commas outside brackets and parentheses: '[1,2],[3]' -> ['[1,2]', '[3]']."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return out


def parse_value(text: str) -> Any:
    """A TOML value (8, 0.1, [784,100,10], true, "he"), or the bare text as a string (he, uniform(0,1))."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_set(text: str) -> Axis:
    """`KEY=V1,V2,...` -> Axis; a ScenarioError saying the form for anything else."""
    key, eq, values = text.partition("=")
    key = key.strip()
    texts = split_values(values) if eq else []
    if not eq or not key or not all(texts) or key.count(".") < 1:
        raise ScenarioError(f"--set {text!r}: write SECTION.KEY=V1,V2,..., e.g. --set training.batch_size=8,32,64 "
                            "or --set model.layers=[784,100,10],[784,800,800,10]")
    return Axis(key, tuple(parse_value(t) for t in texts), tuple(texts))


def with_settings(table: Mapping[str, Any], settings: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """A deep copy of a scenario table with each dotted key set (sections created as needed)."""
    out: dict[str, Any] = _copy(table)
    for key, value in settings:
        *path, last = key.split(".")
        node = out
        for part in path:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ScenarioError(f"--set {key}: {part!r} is a value, not a section")
            node = nxt
        node[last] = value
    return out


def _copy(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _copy(v) for k, v in x.items()}
    return list(x) if isinstance(x, list) else x


def plan(scenario: str, axes: Sequence[Axis], impls: Sequence[str], steps: int | None = None) -> list[Job]:
    """Every (grid point, implementation) as a validated job, first axis slowest, implementations fastest."""
    path = resolve_scenario_path(scenario)
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    keys = [a.key for a in axes]
    if len(set(keys)) != len(keys):
        raise ScenarioError(f"--set names {sorted(k for k in keys if keys.count(k) > 1)[0]} twice; give each key once")
    jobs: list[Job] = []
    for point in itertools.product(*[list(zip(a.values, a.texts)) for a in axes]):
        settings = [(a.key, v) for a, (v, _) in zip(axes, point)]
        written = tuple((a.key, t) for a, (_, t) in zip(axes, point))
        where = ", ".join(f"{k}={t}" for k, t in written)
        try:
            s = scenario_from_table(with_settings(table, settings), name=path.stem, path=path)
        except ScenarioError as exc:
            raise ScenarioError(f"{exc}" + (f" (in the grid point {where})" if where else "")) from None
        for impl in impls:
            if s.dtype not in get_impl(impl).dtypes:
                raise ScenarioError(f"implementation {impl!r} does not compute in {s.dtype} (scenario {s.name}); "
                                    "drop it from --impls or change the scenario's dtype")
            jobs.append(Job(len(jobs), s, impl, written, steps))
    return jobs


def loss_curve(losses: Sequence[float], limit: int = MAX_CURVE_POINTS) -> tuple[tuple[int, float], ...]:
    """(step, loss) per step, or the mean of blocks of steps (at the block's last step) when longer."""
    n = len(losses)
    block = max(1, -(-n // limit))
    arr = np.asarray(losses, dtype=np.float64)
    with np.errstate(all="ignore"):
        return tuple((min(i + block, n) - 1, float(np.mean(arr[i:i + block]))) for i in range(0, n, block))


def run_job(job: Job) -> SweepRun:
    """One run (in a worker process): the harness, no trace."""
    import time

    from memstate.runner.harness import run

    began = time.perf_counter()
    s = job.scenario
    r = run(s, job.impl, steps=job.steps, evaluate=not s.evaluates)
    final = r.training[-1] if r.training else None
    test = final.test_accuracy if final is not None else r.final_test_accuracy
    planned = job.steps if job.steps is not None else r.meta.get("steps", r.steps)
    stop = (r.stop.step, r.stop.rule, r.stop.value, r.stop.epoch or 0) if r.stop is not None else None
    return SweepRun(job.index, job.impl, job.settings, r.steps, int(planned), stop, r.losses[-1], final, test,
                    r.training, loss_curve(r.losses), time.perf_counter() - began)


def run_sweep(jobs: Sequence[Job], axes: Sequence[Axis], *, processes: int | None = None,
              done: Callable[[SweepRun, int, int], None] | None = None) -> Sweep:
    """Run every job, `processes` at a time (default: the CPUs, at most the jobs), results in job order."""
    n = max(1, min(processes or os.cpu_count() or 1, len(jobs)))
    results: list[SweepRun] = []
    if n == 1:
        for job in jobs:
            results.append(run_job(job))
            if done is not None:
                done(results[-1], len(results), len(jobs))
    else:  # fork is quick; spawn when this process already holds JAX's threads
        ctx = multiprocessing.get_context("spawn" if "jax" in sys.modules else "fork")
        with ProcessPoolExecutor(max_workers=n, mp_context=ctx) as pool:
            for f in as_completed([pool.submit(run_job, job) for job in jobs]):
                results.append(f.result())
                if done is not None:
                    done(results[-1], len(results), len(jobs))
    name = jobs[0].scenario.name if jobs else ""
    impls = tuple(dict.fromkeys(j.impl for j in jobs))
    return Sweep(name, tuple(axes), impls, tuple(sorted(results, key=lambda r: r.index)))


__all__ = ["Axis", "Job", "Sweep", "SweepRun", "parse_set", "split_values", "parse_value", "plan", "run_sweep",
           "run_job", "loss_curve", "with_settings"]

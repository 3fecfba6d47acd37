"""`memstate bisect`: find where two long runs part ways without recording every step (docs/bisect.md).

1. **Checkpoint runs.** Each side trains once with `checkpoint_every=K` (memstate.runner.checkpoint): loss and
   batch accuracy every step, parameters every K steps. Cheap enough for thousands of steps.
2. **Search.** The parameters at the checkpoints and the per-step losses are compared under the
   comparator's tolerances. A `BisectState` (good/bad/next/done, as in Polygraphy's debug reduce)
   narrows the first checkpoint whose parameters diverge, loading only O(log n) checkpoints after a
   coarse scan. Separately, the per-step losses show the first step where one side turns non-finite
   while the other does not (a *break*).
3. **Replay.** Only the intervals that matter are re-run with full recording, each side from its own
   checkpointed parameters (via `set_params`) on the same batches, and handed to the comparator
   (memstate.comparator.compare). A break's interval is scanned for the first tensor that turns non-finite.
4. **Lockstep** (optional). The same intervals are re-run with both sides starting every step from the
   *same* parameters, the reference side's. A real bug is a large one-step error where it first bites;
   rounding drift keeps every one-step error at rounding level while the free-running runs still drift
   apart. The verdict says which (`drift` or `local` with the diagnosis).

The modules: memstate.bisect.search (this one: the search, and `bisect`), memstate.bisect.runspec (`RunSpec`, one
side), memstate.bisect.replay (replay and lockstep), memstate.bisect.result (the result types),
memstate.report.bisect (text and JSON reports: `render_text`, `render_json`) and memstate.cli.bisect (the
command line). Nothing here imports the report layer: reports sit above bisect.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from memstate.bisect.result import BisectProgress, BisectResult, DiagnosisInfo, Episode, Finding, Progress, SideInfo
from memstate.runner.checkpoint import CheckpointRun, check_every
from memstate.errors import MemstateError
from memstate.runner.command import CommandError
from memstate.comparator.metrics import element_errors, max_rel_error
from memstate.bisect.replay import Replayer
from memstate.numfmt import short as _e
from memstate.bisect.runspec import RunSpec, check_pair, replay_problem, spec_from_run
from memstate.runner.scenario import Scenario
from memstate.comparator.tolerance import Tolerances

DEFAULT_CHECKPOINTS = 40  # checkpoints per run when K is not given: K = ceil(steps / 40)
CURVE_POINTS = 64  # checkpoints compared in the coarse scan (and shown in the report)
#: One-step errors at or below this (max rel error, relative to the tensor's scale) are rounding, by the
#: lower of the two dtypes. float32 vs float64 one-step errors measure <= 2e-6 on mnist14-relu and
#: story-global-max; float64 rounding differences are ~1e-15. The same floors as the `drift` diagnoser.
ROUNDING_LEVEL = {"float32": 1e-4, "float64": 1e-9}


# ---------------------------------------------------------------- the search state


@dataclass(frozen=True)
class BisectState:
    """Binary search for the first bad index: `good` is known to agree (-1: nothing yet), `bad` to diverge.

    `next` is the index to test (None when `done`); `mark(index, diverged)` returns the narrowed state.
    As in Polygraphy's debug reduce, the caller runs the test; the state only remembers what it learned.
    """

    good: int
    bad: int

    @property
    def done(self) -> bool:
        return self.bad - self.good <= 1

    @property
    def next(self) -> int | None:
        return None if self.done else (self.good + self.bad) // 2

    def mark(self, index: int, diverged: bool) -> BisectState:
        if not self.good < index < self.bad:
            raise ValueError(f"index {index} is outside the open interval ({self.good}, {self.bad})")
        return replace(self, bad=index) if diverged else replace(self, good=index)


# ---------------------------------------------------------------- small helpers


def _dtype(s: Scenario) -> str:
    return s.dtype


def _lower(a: str, b: str) -> str:
    return "float32" if "float32" in (a, b) else "float64"


def params_error(pa: Mapping[str, np.ndarray], pb: Mapping[str, np.ndarray], tolerances: Tolerances,
                 ) -> tuple[float, bool, str]:
    """(worst max rel error, out of tolerance anywhere, the worst tensor) over the parameter tensors."""
    worst, name, out = 0.0, "", False
    for n, a in pa.items():
        b = pb[n]
        errors = element_errors(a, b)
        tol = tolerances.resolve(n, a.dtype, b.dtype)
        out = out or bool(tol.out_of_tolerance(errors).any())
        e = max_rel_error(a, b)
        if e > worst or not name:
            worst, name = e, n
    return worst, out, name


def _loss_error(a: float, b: float) -> float:
    fa, fb = math.isfinite(a), math.isfinite(b)
    if not (fa and fb):
        return 0.0 if (math.isnan(a) and math.isnan(b)) or a == b else math.inf
    m = max(abs(a), abs(b))
    return abs(a - b) / m if m > 0 else 0.0


def _bucket(values: np.ndarray, limit: int) -> tuple[tuple[tuple[int, int], ...], tuple[float, ...]]:
    n = len(values)
    if n == 0:
        return (), ()
    width = max(1, math.ceil(n / limit))
    spans, worst = [], []
    for s in range(0, n, width):
        chunk = values[s:s + width]
        spans.append((s, min(s + width, n) - 1))
        worst.append(float(np.max(chunk)))
    return tuple(spans), tuple(worst)


# ---------------------------------------------------------------- the bisection


class _Bisector:
    def __init__(self, a: RunSpec, b: RunSpec, runs: tuple[CheckpointRun, CheckpointRun], *, tolerances: Tolerances,
                 lockstep: bool, reference: str, rounding_level: float | None, workdir: Path, keep: bool,
                 progress: Progress | None, steps: int | None = None):
        self.specs, self.runs = (a, b), runs
        self.tol, self.lockstep, self.keep = tolerances, lockstep, keep
        self.reference_opt = reference
        self.workdir = workdir
        self.progress = progress
        self.total = min([r.steps for r in runs] + ([steps] if steps is not None else []))
        self.dtype_a, self.dtype_b = _dtype(a.scenario), _dtype(b.scenario)
        self.level = rounding_level if rounding_level is not None else ROUNDING_LEVEL[_lower(self.dtype_a, self.dtype_b)]
        self.common = tuple(c for c in runs[0].checkpoints if c in runs[1].checkpoints and c <= self.total)
        self.errors: dict[int, tuple[float, bool, str]] = {}
        self.replayer = Replayer(self.specs, runs, self.total, tolerances=tolerances, level=self.level,
                                 workdir=workdir, keep=keep, progress=progress)
        self.warnings: list[str] = self.replayer.warnings  # the replays' warnings
        self.seconds: dict[str, float] = {}
        self.unreplayable: dict[str, str] = {}  # side -> why it cannot be re-run (replay is skipped)
        self.no_loss = [r.meta.get("loss_recorded") is False for r in runs]  # a port that records no loss

    def _say(self, phase: str, done: int, total: int, detail: str = "") -> None:
        if self.progress is not None:
            self.progress(BisectProgress(phase, done, total, detail))

    # -- search
    def checkpoint_error(self, i: int) -> tuple[float, bool, str]:
        c = self.common[i]
        if c not in self.errors:
            self.errors[c] = params_error(self.runs[0].params(c), self.runs[1].params(c), self.tol)
        return self.errors[c]

    def search(self) -> tuple[list[int], int | None]:
        """The coarse scan's checkpoint indexes, and the index of the first divergent checkpoint."""
        n = len(self.common)
        picks = sorted({round(i * (n - 1) / (CURVE_POINTS - 1)) for i in range(CURVE_POINTS)}) if n > CURVE_POINTS \
            else list(range(n))
        first_bad = None
        for j, i in enumerate(picks):
            self._say("search", j + 1, len(picks), f"checkpoint {self.common[i]}")
            if self.checkpoint_error(i)[1] and first_bad is None:
                first_bad = j
        if first_bad is None:
            return picks, None
        state = BisectState(good=picks[first_bad - 1] if first_bad > 0 else -1, bad=picks[first_bad])
        while not state.done:
            k = state.next
            assert k is not None  # the state is not done, so next names the checkpoint to test
            self._say("search", 0, 0, f"bisecting checkpoints {self.common[max(state.good, 0)]}.."
                      f"{self.common[state.bad]}: testing {self.common[k]}")
            state = state.mark(k, self.checkpoint_error(k)[1])
        return picks, state.bad

    def interval_of(self, step: int) -> tuple[int, int]:
        """The checkpoint interval [c, c') holding `step`."""
        c = max(x for x in self.common if x <= step)
        nxt = [x for x in self.common if x > step]
        return c, (nxt[0] if nxt else self.total)



def default_every(total: int) -> int:
    return max(1, math.ceil(total / DEFAULT_CHECKPOINTS))


def _is_run_path(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike))


def bisect(a: RunSpec | str | os.PathLike, b: RunSpec | str | os.PathLike, *, checkpoint_every: int | None = None,
           steps: int | None = None, lockstep: bool = False, reference: str = "auto",
           tolerances: Tolerances | None = None, rounding_level: float | None = None,
           workdir: str | os.PathLike | None = None, progress: Progress | None = None,
           impl_timeout: float | None = None) -> BisectResult:
    """Find where runs A (the reference) and B part ways, replaying only the intervals that matter.

    `a` and `b` are run descriptions (RunSpec: both are trained here with checkpoints) or paths to
    checkpoint runs (`memstate run ... --checkpoint-every K -o RUN.memstate`), which are replayed from
    the scenario, implementation and variant their headers name. `reference` ("a", "b" or "auto": the
    side that turns non-finite, else A) is whose parameters lockstep starts both sides from.
    `workdir` keeps the checkpoint runs and replay traces (default: a temporary directory, removed).
    `impl_timeout`: seconds per run of a `cmd:` port's command, for sides read from checkpoint runs.
    A side that cannot be re-run here (memstate.bisect.runspec.replay_problem) is reported before the search;
    the result then holds what the search found, with no replay.
    """
    if reference not in ("a", "b", "auto"):
        raise MemstateError(f"reference {reference!r}: use 'a', 'b' or 'auto'")
    if rounding_level is not None and not (rounding_level > 0 and math.isfinite(rounding_level)):
        raise MemstateError(f"rounding level {rounding_level!r}: give a positive number, e.g. 1e-4")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise MemstateError(f"--steps {steps!r}: give a positive number of steps")
    tolerances = Tolerances() if tolerances is None else tolerances
    keep = workdir is not None
    work = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="memstate-bisect-"))
    work.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    try:
        runs, specs, seconds = _checkpoint_runs(a, b, checkpoint_every, steps, work, progress, impl_timeout)
        problems = {label: why for label, spec in zip("ab", specs) if (why := replay_problem(spec))}
        for label, why in problems.items():
            if progress is not None:
                progress(BisectProgress("check", 0, 0, f"side {label.upper()} ({specs['ab'.index(label)].impl}) "
                                                       f"cannot be replayed here: {why}; the search still runs"))
        bis = _Bisector(specs[0], specs[1], runs, tolerances=tolerances, lockstep=lockstep, reference=reference,
                        rounding_level=rounding_level, workdir=work, keep=keep, progress=progress, steps=steps)
        bis.seconds.update(seconds)
        bis.unreplayable = {k: f"side {k.upper()} cannot be replayed here: {v}" for k, v in problems.items()}
        result = _bisect(bis, keep, a, b)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return replace(result, seconds={**result.seconds, "total": time.perf_counter() - began})


def _checkpoint_runs(a: Any, b: Any, every: int | None, steps: int | None, work: Path, progress: Progress | None,
                     impl_timeout: float | None = None) -> tuple[tuple[CheckpointRun, CheckpointRun], tuple[RunSpec, RunSpec], dict[str, float]]:
    from memstate.runner.harness import Progress as RunProgress, prepare_data, run

    loaded: dict[str, CheckpointRun] = {}
    for label, x in (("a", a), ("b", b)):
        if _is_run_path(x):
            loaded[label] = CheckpointRun.load(x)
    if loaded:
        given = {r.every for r in loaded.values()}
        if every is not None and every not in given:
            raise MemstateError(f"--checkpoint-every {every} does not match the checkpoint runs given "
                                f"(every {', '.join(map(str, sorted(given)))})")
        every = every or min(given)
        lengths = {r.steps for r in loaded.values()}
        steps = steps if steps is not None else min(lengths)
    seconds: dict[str, float] = {}
    runs: dict[str, CheckpointRun] = dict(loaded)
    specs: dict[str, RunSpec] = {}
    for label, x in (("a", a), ("b", b)):
        if label in loaded:
            specs[label] = spec_from_run(loaded[label], impl_timeout)
        elif isinstance(x, RunSpec):
            specs[label] = replace(x, label=x.label or label)
        else:
            raise MemstateError(f"side {label}: give a RunSpec or the path of a checkpoint run, not {x!r}")
    check_pair(specs["a"], specs["b"])
    for label, x in (("a", a), ("b", b)):
        if label in loaded:
            continue
        total = steps if steps is not None else x.scenario.total_steps(len(prepare_data(x.scenario.data).train_y))
        k = check_every(every) if every is not None else default_every(total)
        path = work / f"{label}.memstate"

        def relay(p: RunProgress, label: str = label) -> None:
            if progress is not None:
                progress(BisectProgress(f"run {label}", p.step, p.total, f"loss {p.loss:.6g}"))

        t0 = time.perf_counter()
        run(x.scenario, x.impl, params=x.params, params_source=f"side {label} params", steps=total, out=path,
            variant=x.the_variant, encoding="binary", evaluate=False, progress=relay, checkpoint_every=k,
            impl_timeout=x.impl_timeout)
        seconds[f"run {label}"] = time.perf_counter() - t0
        runs[label] = CheckpointRun.load(path)
    if runs["a"].every != runs["b"].every:
        ka, kb = runs["a"].every, runs["b"].every
        if not set(runs["a"].checkpoints) & set(runs["b"].checkpoints) - {0}:
            raise MemstateError(f"the checkpoint runs keep parameters every {ka} and every {kb} steps and share no "
                                "checkpoint after the start; record them with the same --checkpoint-every")
    if steps is not None and any(r.steps < steps for r in runs.values()):
        short = min(runs.values(), key=lambda r: r.steps)
        raise MemstateError(f"{short.path} has {short.steps} steps, fewer than the {steps} asked for")
    return (runs["a"], runs["b"]), (specs["a"], specs["b"]), seconds


def _bisect(bis: _Bisector, keep: bool, a_in: Any, b_in: Any) -> BisectResult:
    t0 = time.perf_counter()
    ra, rb = bis.runs
    total = bis.total
    # per-step losses: the first beyond tolerance, and the first non-finite on one side only
    la, lb = ra.losses[:total], rb.losses[:total]
    if any(bis.no_loss):  # a port without a loss: compare the parameters only
        side = "A" if bis.no_loss[0] else "B"
        bis.warnings.append(f"side {side}'s port records no loss: the search compares the parameters at the "
                            "checkpoints only (no loss divergence, no break detection)")
        la, lb = np.zeros(total), np.zeros(total)
    loss_tol = bis.tol.resolve("loss", bis.dtype_a, bis.dtype_b)
    errs = element_errors(la, lb)
    out = loss_tol.out_of_tolerance(errs)
    first_loss = int(np.argmax(out)) if out.any() else None
    fa, fb = np.isfinite(la), np.isfinite(lb)
    broken = np.flatnonzero(fa != fb)
    break_step = int(broken[0]) if broken.size else None
    break_side = None if break_step is None else ("a" if not fa[break_step] else "b")
    loss_rel = np.array([_loss_error(x, y) for x, y in zip(la, lb)])
    loss_spans, loss_worst = _bucket(loss_rel, CURVE_POINTS)
    # parameters at the checkpoints: coarse scan, then bisection
    picks, bad = bis.search()
    first_ck = bis.common[bad] if bad is not None else None
    last_good = (bis.common[bad - 1] if bad > 0 else None) if bad is not None else None
    bis.seconds["search"] = time.perf_counter() - t0

    intervals: list[tuple[str, int, int, str]] = []
    candidates: list[tuple[int, int, str]] = []
    if first_ck == 0:
        candidates.append((0, bis.interval_of(0)[1], "the initial parameters already differ beyond tolerance"))
    elif first_ck is not None:
        assert last_good is not None  # bad > 0: bad == 0 is checkpoint 0 (every run's first), handled above
        candidates.append((last_good, first_ck, f"the parameters agree at checkpoint {last_good} and diverge "
                                                f"beyond tolerance at checkpoint {first_ck}"))
    if first_loss is not None:
        start, stop = bis.interval_of(first_loss)
        candidates.append((start, stop, f"the loss diverges beyond tolerance at step {first_loss}"))
    if candidates:
        start, stop, why = min(candidates, key=lambda c: c[0])  # the earliest; the checkpoints' on a tie
        intervals.append(("divergence", start, stop, why))
    if break_step is not None:
        start, stop = bis.interval_of(max(break_step - 1, 0))[0], break_step + 1
        why = (f"{break_side.upper()}'s loss is non-finite at step {break_step} while "  # type: ignore[union-attr]
               f"{'B' if break_side == 'a' else 'A'}'s is finite")
        if intervals and start < intervals[0][2]:
            kind, s0, e0, w0 = intervals[0]
            intervals[0] = (f"{kind}+break", min(s0, start), max(e0, stop), f"{w0}; {why}")
        else:
            intervals.append(("break", start, stop, why))

    reference = None
    if bis.lockstep and intervals:
        reference = bis.reference_opt if bis.reference_opt != "auto" else (break_side or "a")
    episodes = _replay_intervals(bis, intervals, break_side, reference)

    if bis.unreplayable and intervals:
        verdict, diagnosis, headline, summary = _search_only(bis, intervals)
    else:
        verdict, diagnosis, headline, summary = _verdict(bis, episodes, break_step, break_side, reference)
    scan_steps = tuple(bis.common[i] for i in picks)
    scan_errors = tuple(bis.errors[c][0] for c in scan_steps)
    return BisectResult(
        verdict=verdict, diagnosis=diagnosis, summary=summary,
        a=_side_info("a", bis.specs[0], ra, a_in, keep), b=_side_info("b", bis.specs[1], rb, b_in, keep),
        steps=total, checkpoint_every=ra.every, tolerance=_tol_text(bis),
        rounding_level=bis.level if bis.lockstep else None, lockstep=bis.lockstep, reference=reference,
        checkpoint_steps=scan_steps, checkpoint_errors=scan_errors,
        loss_steps=loss_spans, loss_errors=loss_worst,
        first_divergent_checkpoint=first_ck, last_agreeing_checkpoint=last_good, first_loss_divergence=first_loss,
        break_step=break_step, break_side=break_side, checkpoints_loaded=len(bis.errors),
        episodes=tuple(episodes), headline=headline,
        steps_replayed=sum(e.steps for e in episodes),
        lockstep_steps=sum(e.steps for e in episodes) if bis.lockstep else 0,
        seconds=dict(bis.seconds), warnings=tuple(bis.warnings))


def _replay_intervals(bis: _Bisector, intervals: list[tuple[str, int, int, str]], break_side: str | None,
                      reference: str | None) -> list[Episode]:
    """Replay (and with lockstep, re-run in lockstep) each interval; none when a side cannot be replayed. A port
    that fails on the way stops the replays there (`bis.unreplayable` says why), keeping the ones done."""
    episodes: list[Episode] = []
    t_replay = t_lock = 0.0
    for kind, start, stop, why in intervals if not bis.unreplayable else ():
        t1 = time.perf_counter()
        try:
            ep = bis.replayer.replay(start, stop, kind, break_side if "break" in kind else None)
        except CommandError as exc:  # a port that fails now: keep what the search found
            bis.unreplayable["run"] = f"replaying steps {start}..{stop - 1} failed: {exc}"
            break
        ep = replace(ep, reason=why)
        t_replay += time.perf_counter() - t1
        if bis.lockstep:
            t1 = time.perf_counter()
            try:
                lerrs, local = bis.replayer.lockstep_replay(start, stop, reference)  # type: ignore[arg-type]
            except CommandError as exc:
                bis.unreplayable["run"] = f"lockstep over steps {start}..{stop - 1} failed: {exc}"
                episodes.append(ep)
                break
            ep = replace(ep, lockstep_errors=lerrs, local=local)
            t_lock += time.perf_counter() - t1
        episodes.append(ep)
    bis.seconds["replay"] = t_replay
    if bis.lockstep:
        bis.seconds["lockstep"] = t_lock
    return episodes


def _search_only(bis: _Bisector, intervals: list[tuple[str, int, int, str]],
                 ) -> tuple[str, str | None, Finding | None, str]:
    """The verdict when the divergent interval cannot be replayed: what the search found, and why no more."""
    kind, start, stop, why = intervals[0]
    reasons = "; ".join(bis.unreplayable.values())
    bis.warnings.append(reasons)
    return "divergent", None, None, (f"the runs diverge in steps {start}..{stop - 1} ({why}), but no step or tensor "
                                     f"can be named: {reasons}")


def _tol_text(bis: _Bisector) -> str:
    names = list(bis.runs[0].params(0))
    seen = dict.fromkeys(bis.tol.resolve(n, bis.dtype_a, bis.dtype_b).describe() for n in names)
    return "; ".join(seen)


def _side_info(label: str, spec: RunSpec, run: CheckpointRun, given: Any, keep: bool) -> SideInfo:
    v = spec.the_variant.changes()
    return SideInfo(label, spec.describe(), spec.impl, spec.scenario.name, spec.scenario.dtype, v,
                    str(run.path) if keep or _is_run_path(given) else None)


def _verdict(bis: _Bisector, episodes: list[Episode], break_step: int | None, break_side: str | None,
             reference: str | None) -> tuple[str, str | None, Finding | None, str]:
    if not episodes:
        return "agree", None, None, (f"the runs agree within tolerance at every checkpoint and every step's loss "
                                     f"({bis.total} steps)")
    first = episodes[0]
    if bis.lockstep:
        locals_ = [e.local for e in episodes if e.local is not None]
        if locals_:
            f = locals_[0]
            code: str | None = f.code or "unknown"  # declared for the code below, which may be None
            drift_before = [e for e in episodes if e.local is None and e.start < f.step]
            tail = " (the free-running divergence before it is rounding drift)" if drift_before else ""
            return "local", code, f, (f"a local error at step {f.step} in {f.tensor}: {code}{tail}")
        worst = max((max(e.lockstep_errors or (0.0,)) for e in episodes), default=0.0)
        curve = sorted(bis.errors.items())
        nonzero = [(c, e) for c, (e, _, _) in curve if e > 0]
        apart = (f"from {_e(nonzero[0][1])} at step {nonzero[0][0]} to {_e(curve[-1][1][0])} at step "
                 f"{curve[-1][0]}" if nonzero else "")
        text = (f"drift: from the same parameters every replayed step agrees to rounding level (one-step errors "
                f"<= {_e(worst)}, level {_e(bis.level)}), while the free-running parameters drift apart "
                f"{apart}".rstrip())
        if break_step is not None:
            text += (f"; {break_side.upper()} still turns non-finite at step {break_step} on its own trajectory, "  # type: ignore[union-attr]
                     f"not from {reference.upper()}'s parameters")  # type: ignore[union-attr]
        return "drift", "drift", None, text
    nf = next((e.non_finite for e in episodes if e.non_finite is not None), None)
    found = first.first_divergence or nf
    code = found.code if found is not None else None
    text = "the runs diverge"
    if first.first_divergence is not None:
        fd = first.first_divergence
        text += f": first beyond tolerance at step {fd.step} in {fd.tensor}" + (f" ({fd.code})" if fd.code else "")
    if nf is not None:
        text += (f"; {nf.side.upper()} turns non-finite at step {nf.step} in {nf.tensor}"  # type: ignore[union-attr]
                 + (f" ({nf.code})" if nf.code else ""))
    text += "; run with lockstep to tell rounding drift from a local bug"
    return "divergent", (nf.code if nf is not None and nf.code else code), (nf or found), text


__all__ = ["BisectProgress", "BisectResult", "BisectState", "DiagnosisInfo", "Episode", "Finding", "RunSpec",
           "SideInfo", "bisect", "check_pair", "default_every", "params_error", "spec_from_run"]

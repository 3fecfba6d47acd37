"""Replay and lockstep for `memstate bisect` (docs/bisect.md): re-run an interval of two checkpoint runs.

A *replay* re-runs steps start..stop-1 of both sides with full recording, each side from its own
checkpointed parameters (via `set_params`) on the same batches, checks that it reproduces the
checkpoint run bit for bit, and hands the two traces to the comparator (memstate.comparator.compare). For a
*break* (one side turns non-finite) it also finds the first tensor that turns non-finite.

A *lockstep* replay re-runs the same steps with both sides starting every step from the *same*
parameters, the reference side's, and compares every tensor in memory: a real bug is a large one-step
error where it first bites; rounding drift keeps every one-step error at rounding level.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, Generator, Iterator, Mapping, Sequence

import numpy as np

from memstate.bisect.result import BisectProgress, DiagnosisInfo, Episode, Finding, Progress
from memstate.runner.checkpoint import CheckpointRun
from memstate.comparator.metrics import relative_to_scale
from memstate.formats.recorder import Recorder, as_float_array
from memstate.numfmt import short as _e
from memstate.bisect.runspec import RunSpec
from memstate.runner.batches import StepBatch
from memstate.runner.command import CommandNet, step_loss
from memstate.runner.scenario import iter_batches
from memstate.comparator.tolerance import Tolerances

# ---------------------------------------------------------------- per-step errors and diagnoses


def _nonfinite(x: np.ndarray) -> bool:
    return not bool(np.all(np.isfinite(x)))


def _diag_infos(diagnoses: Sequence[Any]) -> tuple[DiagnosisInfo, ...]:
    return tuple(DiagnosisInfo(d.code, float(d.confidence), d.explanation) for d in diagnoses)


def _diagnose(step: int, name: str, ta: Mapping[str, np.ndarray], tb: Mapping[str, np.ndarray],
              history: Sequence[tuple[int, float]], inputs_agree: bool | None, meta_a: dict,
              meta_b: dict) -> tuple[DiagnosisInfo, ...]:
    try:
        from memstate.diagnose.context import DivergenceContext
        from memstate.diagnose.catalogue import diagnose
    except ModuleNotFoundError as exc:  # pragma: no cover - the diagnosers ship with memstate
        if exc.name != "memstate.diagnose.context":
            raise
        return ()
    names_a, names_b = list(ta), list(tb)
    ctx = DivergenceContext(
        step=step, name=name, a=ta[name], b=tb[name],
        inputs_a={n: ta[n] for n in names_a[:names_a.index(name)]},
        inputs_b={n: tb[n] for n in names_b[:names_b.index(name)]},
        history=tuple((int(s), float(e)) for s, e in history), inputs_agree=inputs_agree,
        meta_a=meta_a, meta_b=meta_b)
    return _diag_infos(diagnose(ctx))


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """memstate.comparator.metrics.max_rel_error (max |a - b| over the tensor's scale; inf where a non-finite value has no
    match), computed without the ULP distances that function also works out: replays call it per tensor."""
    if a.shape != b.shape:
        return math.inf
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    fa, fb = np.isfinite(a64), np.isfinite(b64)
    if not (fa.all() and fb.all()):
        with np.errstate(invalid="ignore"):
            same = ~fa & ~fb & ((a64 == b64) | (np.isnan(a64) & np.isnan(b64)))
        if np.any((~fa | ~fb) & ~same):
            return math.inf
        both = fa & fb
        a64, b64 = a64[both], b64[both]
    if a64.size == 0:
        return 0.0
    scale = max(float(np.max(np.abs(a64))), float(np.max(np.abs(b64))))
    return relative_to_scale(float(np.max(np.abs(a64 - b64))), scale)


def _step_errors(ta: Mapping[str, np.ndarray], tb: Mapping[str, np.ndarray]) -> dict[str, float]:
    """max rel error of every tensor both sides recorded, in A's dataflow order (inf: shapes differ)."""
    return {n: rel_error(a, tb[n]) for n, a in ta.items() if n in tb}


# ---------------------------------------------------------------- one side, re-run step by step


class _Side:
    """One side's network, rebuilt to re-run steps from given parameters on the scenario's batches."""

    def __init__(self, spec: RunSpec, label: str):
        from memstate.runner.registry import get_impl
        from memstate.runner.harness import prepare_data

        self.spec, self.label = spec, label
        self.impl = get_impl(spec.impl, timeout=spec.impl_timeout)
        self.settings = spec.scenario.settings(spec.the_variant)
        self.net_spec = spec.scenario.net_spec(spec.the_variant)
        self.lr = spec.scenario.training.learning_rate
        self.data = prepare_data(spec.scenario.data)
        self.net: Any = None
        self.meta: dict = {}

    def load(self, params: Mapping[str, np.ndarray]) -> None:
        from memstate.runner.harness import check_params

        clean = check_params(params, self.spec.scenario, f"{self.label} parameters")
        if self.net is None:
            self.net = self.impl.make(self.net_spec, clean)
        else:
            self.net.set_params(clean)

    def params(self) -> dict[str, np.ndarray]:
        return {k: np.array(as_float_array(v)) for k, v in self.net.params().items()}

    def step(self, x: np.ndarray, labels: np.ndarray, recorder: Recorder | None, k: int,
             ) -> tuple[float, dict[str, np.ndarray]]:
        got: dict[str, np.ndarray] = {}

        def record(name: str, value: Any) -> None:
            got[name] = np.array(as_float_array(value))
            if recorder is not None:
                recorder.record(name, got[name])

        if recorder is not None:
            with recorder.step(k):
                loss = self.net.train_step(x, labels, self.lr, record)
        else:
            loss = self.net.train_step(x, labels, self.lr, record)
        return float(loss), got

    def steps(self, batches: Sequence[tuple[int, np.ndarray, np.ndarray]], recorder: Recorder | None,
              ) -> Generator[tuple[float, dict[str, np.ndarray]], None, None]:
        """(loss, tensors) of each of `batches`, run from the loaded parameters: a Python implementation one
        step at a time, a `cmd:` port in one run of its command (read it to the end: the port's parameters
        become the last step's then)."""
        if not isinstance(self.net, CommandNet):
            for k, x, labels in batches:
                yield self.step(x, labels, recorder, k)
            return
        with self.net.call([StepBatch(k, x, labels) for k, x, labels in batches], self.settings) as port:
            for step in port:
                got = {n: np.array(as_float_array(v)) for n, v in step.tensors.items()}
                if recorder is not None:
                    with recorder.step(step.index):
                        for n, v in got.items():
                            recorder.record(n, v)
                yield step_loss(step), got

    def one_step(self, k: int, x: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """One step from the loaded parameters, nothing written (lockstep: one run per step for a port)."""
        return list(self.steps([(k, x, labels)], None))[0]


def _batches(spec: RunSpec, total: int, start: int, stop: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    from memstate.runner.harness import prepare_data

    data = prepare_data(spec.scenario.data)
    for batch in itertools.islice(iter_batches(spec.scenario, len(data.train_y), total), start, stop):
        yield batch.step, data.train_x[batch.indices], data.train_y[batch.indices]


def _trace_meta(side: _Side, extra: dict) -> dict:
    from memstate.runner.harness import trace_meta

    return trace_meta(side.spec.scenario, side.impl, side.spec.the_variant, extra)


# ---------------------------------------------------------------- replaying an interval


class Replayer:
    """Replays intervals of two checkpoint runs, `runs` of `specs`, free-running (`replay`) or in lockstep.

    `level` is the rounding level that separates a local error from rounding in lockstep; `workdir`
    receives the replay traces, kept when `keep`; `warnings` collects the replays that did not
    reproduce their checkpoint run bit for bit.
    """

    def __init__(self, specs: tuple[RunSpec, RunSpec], runs: tuple[CheckpointRun, CheckpointRun], total: int, *,
                 tolerances: Tolerances, level: float, workdir: Path, keep: bool, progress: Progress | None):
        self.specs, self.runs, self.total = specs, runs, total
        self.tol, self.level = tolerances, level
        self.workdir, self.keep = workdir, keep
        self.progress = progress
        self.warnings: list[str] = []

    def _say(self, phase: str, done: int, total: int, detail: str = "") -> None:
        if self.progress is not None:
            self.progress(BisectProgress(phase, done, total, detail))

    # -- replay
    def replay(self, start: int, stop: int, kind: str, break_side: str | None) -> Episode:
        sides = [_Side(spec, label) for spec, label in zip(self.specs, ("a", "b"))]
        recorders = []
        paths = []
        for side, run in zip(sides, self.runs):
            side.load(run.params(start))
            path = self.workdir / f"replay-{start}-{stop}.{side.label}.memstate"
            paths.append(path)
            recorders.append(Recorder(path, meta=_trace_meta(side, {"steps": stop - start, "replay_of": str(run.path),
                                                                     "replay_steps": [start, stop]})))
        free: list[float] = []
        history: list[tuple[int, float]] = []
        non_finite: Finding | None = None
        same_losses = [True, True]
        batches = list(_batches(self.specs[0], self.total, start, stop))
        streams = [s.steps(batches, r) for s, r in zip(sides, recorders)]
        try:
            for (k, x, labels), (la, ta), (lb, tb) in zip(batches, *streams):
                self._say("replay", k - start + 1, stop - start, f"steps {start}..{stop - 1}")
                for i, (loss, run) in enumerate(((la, self.runs[0]), (lb, self.runs[1]))):
                    if np.float64(loss).tobytes() != np.float64(run.losses[k]).tobytes():
                        same_losses[i] = False
                errs = _step_errors(ta, tb)
                worst = max(errs.values(), default=0.0)
                free.append(worst)
                history.append((k, worst))
                if non_finite is None and break_side is not None:
                    non_finite = self._first_non_finite(k, ta, tb, errs, history)
            for stream in streams:  # a port's run ends (and its parameters update) when it is read to the end
                for _ in stream:
                    pass
        finally:
            for stream in streams:
                stream.close()
            for r in recorders:
                r.close()
        reproduced = []
        for i, (side, run) in enumerate(zip(sides, self.runs)):
            ok = same_losses[i]
            if stop in run.checkpoints:
                want, got = run.params(stop), side.params()
                ok = ok and all(np.asarray(got[n], dtype=want[n].dtype).tobytes() == want[n].tobytes() for n in want)
            if not ok:
                self.warnings.append(f"{side.label}: replaying steps {start}..{stop - 1} from its checkpoint did not "
                                     "reproduce its checkpoint run bit for bit (a nondeterministic implementation?); "
                                     "the replayed steps may differ from the run's")
            reproduced.append(ok)
        first = self._compare(paths)
        traces = tuple(str(p) for p in paths) if self.keep else None
        return Episode(kind, start, stop, "", tuple(free), first, non_finite, (reproduced[0], reproduced[1]),
                       traces=traces)  # type: ignore[arg-type]

    def _first_non_finite(self, k: int, ta: dict, tb: dict, errs: dict, history: list) -> Finding | None:
        for n in ta:
            if n not in tb or ta[n].shape != tb[n].shape:
                continue
            na, nb = _nonfinite(ta[n]), _nonfinite(tb[n])
            if na == nb:
                continue
            side = "a" if na else "b"
            where = ta if na else tb
            bad = int(np.count_nonzero(~np.isfinite(where[n])))
            earlier = [errs[m] for m in list(ta)[:list(ta).index(n)] if m in errs]
            agree = all(e <= self.level for e in earlier) if earlier else None
            diags = _diagnose(k, n, ta, tb, history, agree, self.runs[0].meta, self.runs[1].meta)
            return Finding(k, n, math.inf, "non-finite",
                           f"{n} is the first tensor with non-finite values on {side.upper()} only "
                           f"({bad} of {where[n].size} elements), in step {k}", side, diags)
        return None

    def _compare(self, paths: list[Path]) -> Finding | None:
        try:
            from memstate.comparator.compare import compare
        except ModuleNotFoundError as exc:  # pragma: no cover - the comparator ships with memstate
            if exc.name != "memstate.comparator.compare":
                raise
            return None
        c = compare(paths[0], paths[1], tolerances=self.tol)
        f = c.first_divergence
        if f is None:
            return None
        err = f.tensor.max_rel_error if f.tensor is not None else math.inf
        return Finding(f.step, f.name, err, "comparator", f.detail, None, _diag_infos(f.diagnoses))

    # -- lockstep
    def lockstep_replay(self, start: int, stop: int, reference: str) -> tuple[tuple[float, ...], Finding | None]:
        sides = [_Side(spec, label) for spec, label in zip(self.specs, ("a", "b"))]
        ref = 0 if reference == "a" else 1
        theta = self.runs[ref].params(start)
        for s in sides:
            s.load(theta)
        errors: list[float] = []
        history: list[tuple[int, float]] = []
        local: Finding | None = None
        for k, x, labels in _batches(self.specs[0], self.total, start, stop):
            self._say("lockstep", k - start + 1, stop - start, f"steps {start}..{stop - 1}, reference {reference}")
            for s in sides:
                s.load(theta)
            (_, ta), (_, tb) = (s.one_step(k, x, labels) for s in sides)
            errs = _step_errors(ta, tb)
            worst = max(errs.values(), default=0.0)
            errors.append(worst)
            history.append((k, worst))
            if local is None and not worst <= self.level:
                names = list(errs)
                name = next(n for n in names if not errs[n] <= self.level)
                earlier = [errs[m] for m in names[:names.index(name)]]
                agree = all(e <= self.level for e in earlier) if earlier else None
                diags = _diagnose(k, name, ta, tb, history, agree, self.runs[0].meta, self.runs[1].meta)
                local = Finding(k, name, errs[name], "lockstep",
                                f"from the same parameters ({reference.upper()}'s), one step gives {name} a max rel "
                                f"error of {_e(errs[name])}, above the rounding level {_e(self.level)}",
                                None, diags)
            theta = sides[ref].params()
        return tuple(errors), local

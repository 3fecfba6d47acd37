"""`memstate bisect`: find where two long runs part ways without recording every step (docs/bisect.md).

1. **Checkpoint runs.** Each side trains once with `checkpoint_every=K` (memstate.checkpoint): loss and
   batch accuracy every step, parameters every K steps. Cheap enough for thousands of steps.
2. **Search.** The parameters at the checkpoints and the per-step losses are compared under the
   comparator's tolerances. A `BisectState` (good/bad/next/done, as in Polygraphy's debug reduce)
   narrows the first checkpoint whose parameters diverge, loading only O(log n) checkpoints after a
   coarse scan. Separately, the per-step losses show the first step where one side turns non-finite
   while the other does not (a *break*).
3. **Replay.** Only the intervals that matter are re-run with full recording, each side from its own
   checkpointed parameters (via `set_params`) on the same batches, and handed to the comparator
   (memstate.compare). A break's interval is scanned for the first tensor that turns non-finite.
4. **Lockstep** (optional). The same intervals are re-run with both sides starting every step from the
   *same* parameters, the reference side's. A real bug is a large one-step error where it first bites;
   rounding drift keeps every one-step error at rounding level while the free-running runs still drift
   apart. The verdict says which (`drift` or `local` with the diagnosis).
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from memstate.checkpoint import CheckpointRun, check_every
from memstate.errors import MemstateError, ScenarioError
from memstate.metrics import element_errors, max_rel_error, relative_to_scale
from memstate.recorder import Recorder, as_float_array
from memstate.report_text import _e
from memstate.scenario import Scenario, iter_batches, load_scenario
from memstate.tolerance import Tolerances
from memstate.variants import Variant

DEFAULT_CHECKPOINTS = 40  # checkpoints per run when K is not given: K = ceil(steps / 40)
CURVE_POINTS = 64  # checkpoints compared in the coarse scan (and shown in the report)
#: One-step errors at or below this (max rel error, relative to the tensor's scale) are rounding, by the
#: lower of the two dtypes. float32 vs float64 one-step errors measure <= 2e-6 on mnist14-relu and
#: story-global-max; float64 rounding differences are ~1e-15. The same floors as the `drift` diagnoser.
ROUNDING_LEVEL = {"float32": 1e-4, "float64": 1e-9}

Progress = Callable[["BisectProgress"], None]


# ---------------------------------------------------------------- run descriptions


@dataclass(frozen=True)
class RunSpec:
    """One side of a bisection: a scenario, an implementation, a variant and the initial parameters."""

    scenario: Scenario
    impl: str = "numpy"
    variant: Variant | None = None  # None: the scenario's own [variant]
    params: Mapping[str, np.ndarray] | None = field(default=None, repr=False)  # None: the scenario's init
    label: str = ""

    @property
    def the_variant(self) -> Variant:
        return self.scenario.variant if self.variant is None else self.variant

    def describe(self) -> str:
        changes = self.the_variant.changes()
        var = ", ".join(f"{k}={v}" for k, v in changes.items()) if changes else "correct"
        return f"{self.impl} on {self.scenario.name} ({self.scenario.dtype}, variant {var})"


def spec_from_run(run: CheckpointRun) -> RunSpec:
    """The run description a checkpoint run's header gives, with its scenario loaded and checked."""
    meta = run.meta
    file = meta.get("scenario_file")
    source = file if isinstance(file, str) and Path(file).is_file() else meta["scenario"]
    try:
        scenario = load_scenario(source)
    except ScenarioError as exc:
        raise MemstateError(f"{run.path}: cannot load its scenario {meta['scenario']!r} to replay it: {exc}") from None
    variant = Variant.from_mapping(meta.get("variant") or {}, f"{run.path} header variant")
    expected = scenario.meta()
    expected["loss_reduction"] = variant.loss_reduction or expected["loss_reduction"]  # as run.trace_meta says it
    changed = [k for k, v in expected.items() if k in meta and meta[k] != v]
    if changed:
        k = changed[0]
        raise MemstateError(f"{run.path}: the run had {k} = {meta[k]!r} but scenario {scenario.name} now says "
                            f"{expected[k]!r}; the scenario changed since the run, so it cannot be replayed")
    return RunSpec(scenario, str(meta["impl"]), variant, run.params(0), label=str(run.path))


def check_pair(a: RunSpec, b: RunSpec) -> None:
    """Both sides must see the same batches and have the same layers, or bisecting them means nothing."""
    sa, sb = a.scenario, b.scenario
    for what, x, y in (("data", sa.data, sb.data), ("model.layers", sa.model.layers, sb.model.layers),
                       ("training.batch_size", sa.training.batch_size, sb.training.batch_size),
                       ("training.batch_size_cap", sa.training.batch_size_cap, sb.training.batch_size_cap)):
        if x != y:
            raise MemstateError(f"the two runs differ in {what} ({sa.name}: {x}; {sb.name}: {y}): they do not "
                                "train on the same batches, so there is no step where they should agree")


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


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class BisectProgress:
    """What `bisect` reports as it goes: phase is "run a", "run b", "search", "replay" or "lockstep"."""

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


# ---------------------------------------------------------------- small helpers


def _dtype(s: Scenario) -> str:
    return s.dtype


def _lower(a: str, b: str) -> str:
    return "float32" if "float32" in (a, b) else "float64"


def _nonfinite(x: np.ndarray) -> bool:
    return not bool(np.all(np.isfinite(x)))


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


def _diag_infos(diagnoses: Sequence[Any]) -> tuple[DiagnosisInfo, ...]:
    return tuple(DiagnosisInfo(d.code, float(d.confidence), d.explanation) for d in diagnoses)


def _diagnose(step: int, name: str, ta: Mapping[str, np.ndarray], tb: Mapping[str, np.ndarray],
              history: Sequence[tuple[int, float]], inputs_agree: bool | None, meta_a: dict,
              meta_b: dict) -> tuple[DiagnosisInfo, ...]:
    try:
        from memstate.diagnosis import DivergenceContext, diagnose
    except ModuleNotFoundError as exc:  # pragma: no cover - the diagnosers ship with memstate
        if exc.name != "memstate.diagnosis":
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
    """memstate.metrics.max_rel_error (max |a - b| over the tensor's scale; inf where a non-finite value has no
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


# ---------------------------------------------------------------- replaying


class _Side:
    """One side's network, rebuilt to re-run steps from given parameters on the scenario's batches."""

    def __init__(self, spec: RunSpec, label: str):
        from memstate.registry import get_impl
        from memstate.run import prepare_data

        self.spec, self.label = spec, label
        self.impl = get_impl(spec.impl)
        self.net_spec = spec.scenario.net_spec(spec.the_variant)
        self.lr = spec.scenario.training.learning_rate
        self.data = prepare_data(spec.scenario.data)
        self.net: Any = None
        self.meta: dict = {}

    def load(self, params: Mapping[str, np.ndarray]) -> None:
        from memstate.run import check_params

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


def _batches(spec: RunSpec, total: int, start: int, stop: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    from memstate.run import prepare_data

    data = prepare_data(spec.scenario.data)
    for batch in itertools.islice(iter_batches(spec.scenario, len(data.train_y), total), start, stop):
        yield batch.step, data.train_x[batch.indices], data.train_y[batch.indices]


def _trace_meta(side: _Side, extra: dict) -> dict:
    from memstate.run import trace_meta

    return trace_meta(side.spec.scenario, side.impl, side.spec.the_variant, extra)


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
        self.warnings: list[str] = []
        self.seconds: dict[str, float] = {}

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
            self._say("search", 0, 0, f"bisecting checkpoints {self.common[max(state.good, 0)]}.."
                      f"{self.common[state.bad]}: testing {self.common[k]}")
            state = state.mark(k, self.checkpoint_error(k)[1])
        return picks, state.bad

    def interval_of(self, step: int) -> tuple[int, int]:
        """The checkpoint interval [c, c') holding `step`."""
        c = max(x for x in self.common if x <= step)
        nxt = [x for x in self.common if x > step]
        return c, (nxt[0] if nxt else self.total)

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
        try:
            for k, x, labels in _batches(self.specs[0], self.total, start, stop):
                self._say("replay", k - start + 1, stop - start, f"steps {start}..{stop - 1}")
                (la, ta), (lb, tb) = (s.step(x, labels, r, k) for s, r in zip(sides, recorders))
                for i, (loss, run) in enumerate(((la, self.runs[0]), (lb, self.runs[1]))):
                    if np.float64(loss).tobytes() != np.float64(run.losses[k]).tobytes():
                        same_losses[i] = False
                errs = _step_errors(ta, tb)
                worst = max(errs.values(), default=0.0)
                free.append(worst)
                history.append((k, worst))
                if non_finite is None and break_side is not None:
                    non_finite = self._first_non_finite(k, ta, tb, errs, history)
        finally:
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
            from memstate.compare import compare
        except ModuleNotFoundError as exc:  # pragma: no cover - the comparator ships with memstate
            if exc.name != "memstate.compare":
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
            (_, ta), (_, tb) = (s.step(x, labels, None, k) for s in sides)
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


def default_every(total: int) -> int:
    return max(1, math.ceil(total / DEFAULT_CHECKPOINTS))


def _is_run_path(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike))


def bisect(a: RunSpec | str | os.PathLike, b: RunSpec | str | os.PathLike, *, checkpoint_every: int | None = None,
           steps: int | None = None, lockstep: bool = False, reference: str = "auto",
           tolerances: Tolerances | None = None, rounding_level: float | None = None,
           workdir: str | os.PathLike | None = None, progress: Progress | None = None) -> BisectResult:
    """Find where runs A (the reference) and B part ways, replaying only the intervals that matter.

    `a` and `b` are run descriptions (RunSpec: both are trained here with checkpoints) or paths to
    checkpoint runs (`memstate run ... --checkpoint-every K -o RUN.memstate`), which are replayed from
    the scenario, implementation and variant their headers name. `reference` ("a", "b" or "auto": the
    side that turns non-finite, else A) is whose parameters lockstep starts both sides from.
    `workdir` keeps the checkpoint runs and replay traces (default: a temporary directory, removed).
    """
    if reference not in ("a", "b", "auto"):
        raise MemstateError(f"reference {reference!r}: use 'a', 'b' or 'auto'")
    if rounding_level is not None and not (rounding_level > 0 and math.isfinite(rounding_level)):
        raise MemstateError(f"rounding level {rounding_level!r}: give a positive number, e.g. 1e-4")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise MemstateError(f"--steps {steps!r}: give a positive number of steps")
    tolerances = Tolerances() if tolerances is None else tolerances
    keep = workdir is not None
    work = Path(workdir) if keep else Path(tempfile.mkdtemp(prefix="memstate-bisect-"))
    work.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    try:
        runs, specs, seconds = _checkpoint_runs(a, b, checkpoint_every, steps, work, progress)
        bis = _Bisector(specs[0], specs[1], runs, tolerances=tolerances, lockstep=lockstep, reference=reference,
                        rounding_level=rounding_level, workdir=work, keep=keep, progress=progress, steps=steps)
        bis.seconds.update(seconds)
        result = _bisect(bis, keep, a, b)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return replace(result, seconds={**result.seconds, "total": time.perf_counter() - began})


def _checkpoint_runs(a: Any, b: Any, every: int | None, steps: int | None, work: Path, progress: Progress | None,
                     ) -> tuple[tuple[CheckpointRun, CheckpointRun], tuple[RunSpec, RunSpec], dict[str, float]]:
    from memstate.run import Progress as RunProgress, prepare_data, run

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
            specs[label] = spec_from_run(loaded[label])
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
            variant=x.the_variant, encoding="binary", evaluate=False, progress=relay, checkpoint_every=k)
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
    episodes: list[Episode] = []
    t_replay = t_lock = 0.0
    for kind, start, stop, why in intervals:
        t1 = time.perf_counter()
        ep = bis.replay(start, stop, kind, break_side if "break" in kind else None)
        ep = replace(ep, reason=why)
        t_replay += time.perf_counter() - t1
        if bis.lockstep:
            t1 = time.perf_counter()
            lerrs, local = bis.lockstep_replay(start, stop, reference)  # type: ignore[arg-type]
            ep = replace(ep, lockstep_errors=lerrs, local=local)
            t_lock += time.perf_counter() - t1
        episodes.append(ep)
    bis.seconds["replay"] = t_replay
    if bis.lockstep:
        bis.seconds["lockstep"] = t_lock

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
            code = f.code or "unknown"
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
    f = first.first_divergence or nf
    code = f.code if f is not None else None
    text = "the runs diverge"
    if first.first_divergence is not None:
        fd = first.first_divergence
        text += f": first beyond tolerance at step {fd.step} in {fd.tensor}" + (f" ({fd.code})" if fd.code else "")
    if nf is not None:
        text += (f"; {nf.side.upper()} turns non-finite at step {nf.step} in {nf.tensor}"  # type: ignore[union-attr]
                 + (f" ({nf.code})" if nf.code else ""))
    text += "; run with lockstep to tell rounding drift from a local bug"
    return "divergent", (nf.code if nf is not None and nf.code else code), (nf or f), text


# ---------------------------------------------------------------- reports


SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float], low: float = 1e-16, high: float = 1.0) -> str:
    """One character per value on a log scale from `low` to `high`: · for 0 (exact), × for inf/nan."""
    out = []
    span = math.log10(high) - math.log10(low)
    for v in values:
        if v == 0:
            out.append("·")
        elif not math.isfinite(v):
            out.append("×")
        else:
            t = (math.log10(min(max(v, low), high)) - math.log10(low)) / span
            out.append(SPARK[min(len(SPARK) - 1, int(t * len(SPARK)))])
    return "".join(out)


def _finding_lines(f: Finding, indent: str = "    ") -> list[str]:
    import textwrap

    lines = [f"{indent}{f.detail}"]
    for d in f.diagnoses[:2]:
        lines += textwrap.wrap(f"{d.code} ({d.confidence:.2f}): {d.explanation}", 96, initial_indent=indent + "-> ",
                               subsequent_indent=indent + "   ")
    return lines


def _rows(ep: Episode, limit: int = 12) -> list[int]:
    n = ep.steps
    interesting = {0, n - 1}
    for f in (ep.local, ep.first_divergence, ep.non_finite):
        if f is not None and ep.start <= f.step < ep.stop:
            i = f.step - ep.start
            interesting |= {i - 1, i, i + 1}
    rest = max(0, limit - len(interesting))
    interesting |= {round(j * (n - 1) / max(rest - 1, 1)) for j in range(rest)} if n > 1 else set()
    return sorted(i for i in interesting if 0 <= i < n)


def render_text(r: BisectResult) -> str:
    """The report for a terminal."""
    lines = [f"memstate bisect: {r.verdict.upper()}" + (f" ({r.diagnosis})" if r.diagnosis else "")]
    lines += [f"  {r.summary}", ""]
    for s in (r.a, r.b):
        where = f"  [{s.checkpoint_run}]" if s.checkpoint_run else ""
        lines.append(f"  {s.label.upper()}  {s.description}{where}")
    lines.append(f"  {r.steps} steps, parameters checkpointed every {r.checkpoint_every}; tolerance: {r.tolerance}")
    lines += ["", "free-running, parameters at the checkpoints (max rel error; sparkline 1e-16 .. 1, × non-finite):"]
    lines.append(f"  {sparkline(r.checkpoint_errors)}  steps {r.checkpoint_steps[0]}..{r.checkpoint_steps[-1]}")
    cells = [f"{s}:{_e(e)}" for s, e in zip(r.checkpoint_steps, r.checkpoint_errors)]
    shown = cells if len(cells) <= 10 else cells[:5] + ["..."] + cells[-4:]
    lines.append("  " + "  ".join(shown))
    lines.append(f"  loss, per step (worst relative difference per bucket): {sparkline(r.loss_errors)}")
    if r.first_divergent_checkpoint is not None:
        lines.append(f"  first checkpoint beyond tolerance: {r.first_divergent_checkpoint} (last agreeing: "
                     f"{r.last_agreeing_checkpoint if r.last_agreeing_checkpoint is not None else 'none'}; "
                     f"{r.checkpoints_loaded} checkpoints compared)")
    if r.first_loss_divergence is not None:
        lines.append(f"  first step whose loss is beyond tolerance: {r.first_loss_divergence}")
    if r.break_step is not None:
        lines.append(f"  {r.break_side.upper()}'s loss turns non-finite at step {r.break_step}; "  # type: ignore[union-attr]
                     f"{'B' if r.break_side == 'a' else 'A'}'s stays finite")
    for i, ep in enumerate(r.episodes, 1):
        lines += ["", f"replay {i}: steps {ep.start}..{ep.stop - 1} ({ep.steps} steps, {ep.kind}): {ep.reason}"]
        if not all(ep.reproduced):
            lines.append("  warning: the replay did not reproduce the checkpoint run bit for bit")
        if ep.first_divergence is not None:
            lines.append(f"  free-running, comparator: first divergence at step {ep.first_divergence.step}, "
                         f"{ep.first_divergence.tensor}")
            lines += _finding_lines(ep.first_divergence)
        elif ep.free_errors:
            lines.append("  free-running, comparator: the replayed steps agree within tolerance")
        if ep.non_finite is not None:
            nf = ep.non_finite
            lines.append(f"  first non-finite tensor: step {nf.step}, {nf.tensor} ({nf.side.upper()})")  # type: ignore[union-attr]
            same = ep.local is not None and (ep.local.step, ep.local.tensor) == (nf.step, nf.tensor)
            lines += _finding_lines(replace(nf, diagnoses=()) if same else nf)  # lockstep below says the same
        if ep.lockstep_errors is not None:
            if ep.local is not None:
                lines.append(f"  lockstep (from {r.reference.upper()}'s parameters): LOCAL error at step "  # type: ignore[union-attr]
                             f"{ep.local.step}, {ep.local.tensor}")
                lines += _finding_lines(ep.local)
            else:
                lines.append(f"  lockstep (from {r.reference.upper()}'s parameters): every one-step error at "  # type: ignore[union-attr]
                             f"rounding level (<= {_e(max(ep.lockstep_errors or (0.0,)))}, level "
                             f"{_e(r.rounding_level or 0.0)}): drift")
        lines.append(f"  free-running {sparkline(ep.free_errors)}")
        if ep.lockstep_errors is not None:
            lines.append(f"  lockstep     {sparkline(ep.lockstep_errors)}")
        lines.append("    step   free-running" + ("   lockstep" if ep.lockstep_errors is not None else ""))
        for j in _rows(ep):
            row = f"  {ep.start + j:>6}   {_e(ep.free_errors[j]):>12}"
            if ep.lockstep_errors is not None:
                row += f"   {_e(ep.lockstep_errors[j]):>8}"
            lines.append(row)
        if ep.traces:
            lines.append(f"  traces: {ep.traces[0]}  {ep.traces[1]}")
    lines.append("")
    lock = f"; {r.lockstep_steps} more re-run in lockstep (compared in memory)" if r.lockstep else ""
    lines.append(f"recorded in full: {r.steps_replayed} of {r.steps} steps per side "
                 f"({100 * r.recorded_fraction:.1f}% of a full recording){lock}")
    lines.append("time: " + ", ".join(f"{k} {v:.2f}s" for k, v in r.seconds.items()))
    lines += [f"warning: {w}" for w in r.warnings]
    return "\n".join(lines) + "\n"


def to_dict(r: BisectResult) -> dict:
    """The report as JSON-ready data (nan/inf as strings)."""
    from dataclasses import asdict

    from memstate.diagnosis import jsonable

    d = asdict(r)
    d["exit_code"] = r.exit_code
    d["recorded_fraction"] = r.recorded_fraction
    d["full_recording_steps"] = r.steps
    d["loss_steps"] = [list(s) for s in r.loss_steps]
    return jsonable(d)


def render_json(r: BisectResult) -> str:
    import json

    return json.dumps(to_dict(r), indent=1, allow_nan=False) + "\n"


# ---------------------------------------------------------------- the command line (memstate.cli calls this)


def _variant(base: Variant, items: Sequence[str], flag: str) -> Variant:
    """`base` with KEY=VALUE overrides; the word `clean` (or `correct`) starts from the correct network."""
    v, rest = base, []
    for item in items:
        if item.strip() in ("clean", "correct"):
            v = Variant()
        else:
            rest.append(item)
    return v.with_overrides(rest, flag) if rest else v


class ProgressLines:
    """Prints bisect progress to a stream: every phase change, then at most one line per `interval` seconds."""

    def __init__(self, stream: Any = None, interval: float = 1.0):
        self.stream, self.interval = stream, interval
        self.phase, self.last = "", 0.0

    def __call__(self, p: BisectProgress) -> None:
        import sys

        now = time.monotonic()
        if p.phase == self.phase and now - self.last < self.interval and not (p.total and p.done == p.total):
            return
        self.phase, self.last = p.phase, now
        count = f" {p.done}/{p.total}" if p.total else ""
        print(f"bisect {p.phase}:{count} {p.detail}".rstrip(), file=self.stream or sys.stderr, flush=True)


def command(args: Any) -> int:
    """`memstate bisect`: parse the targets, run `bisect`, write the report; returns the exit status."""
    import sys

    from memstate.checkpoint import is_checkpoint_run
    from memstate.tolerance import tolerances_from_specs

    targets = list(args.targets)
    if len(targets) not in (1, 2):
        raise MemstateError(f"bisect takes a SCENARIO (and optionally SCENARIO_B) or two checkpoint runs; "
                            f"got {len(targets)} arguments")
    tolerances = tolerances_from_specs(args.tol_rules, rtol=args.rtol, atol=args.atol)
    runs = [is_checkpoint_run(t) for t in targets]
    a: Any
    b: Any
    if len(targets) == 2 and all(runs):
        given = [o for o, v in (("--impls", args.impls), ("--variant-a", args.variant_a),
                                ("--variant-b", args.variant_b), ("--params", args.params)) if v]
        if given:
            raise MemstateError(f"{given[0]} describes runs to make; two checkpoint runs are replayed as their "
                                "headers say (impl, scenario, variant, initial parameters)")
        a, b = targets
    else:
        for t, is_run in zip(targets, runs):
            p = Path(t)
            if is_run or (p.exists() and p.suffix != ".toml"):
                raise MemstateError(f"{t}: give two checkpoint runs (memstate run SCENARIO --checkpoint-every K "
                                    "-o RUN.memstate) or scenarios, not a mix" if is_run else
                                    f"{t} is not a checkpoint run (its header has no \"checkpoint_every\"); record "
                                    "one with memstate run SCENARIO --checkpoint-every K -o RUN.memstate")
        from memstate.params import read_params

        sa = load_scenario(targets[0])
        sb = load_scenario(targets[1]) if len(targets) == 2 else sa
        impls = [n.strip() for n in (args.impls or "numpy").split(",") if n.strip()]
        if len(impls) not in (1, 2):
            raise MemstateError(f"--impls {args.impls!r}: name one implementation (both sides) or two (A,B)")
        impl_a, impl_b = impls[0], impls[-1]
        va = _variant(sa.variant, args.variant_a, "--variant-a")
        vb = _variant(sb.variant, args.variant_b, "--variant-b")
        if len(targets) == 1 and not args.variant_a and not args.variant_b and not sa.variant.is_clean:
            va = Variant()  # the scenario's [variant] holds the bug: A is the correct network, B the scenario
        params = read_params(args.params).tensors if args.params else None
        a, b = RunSpec(sa, impl_a, va, params, "a"), RunSpec(sb, impl_b, vb, params, "b")
    result = bisect(a, b, checkpoint_every=args.checkpoint_every, steps=args.steps, lockstep=args.lockstep,
                    reference=args.reference, tolerances=tolerances, rounding_level=args.rounding_level,
                    workdir=args.keep, progress=None if args.quiet else ProgressLines())
    text = render_json(result) if args.format == "json" else render_text(result)
    if args.output is None:
        sys.stdout.write(text)
    else:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise MemstateError(f"{args.output}: cannot write the report: {exc.strerror}") from None
        print(f"{result.verdict}: {result.summary}; report written to {args.output}")
    return result.exit_code


__all__ = ["BisectProgress", "BisectResult", "BisectState", "DiagnosisInfo", "Episode", "Finding", "RunSpec",
           "SideInfo", "bisect", "check_pair", "default_every", "params_error", "render_json", "render_text",
           "sparkline", "spec_from_run", "to_dict"]

"""`memstate check`: find the first wrong operation in a single trace, with no second implementation.

A canonical trace records every operation's inputs and outputs, so each recorded tensor can be re-derived
from the tensors it depends on *as recorded* (memstate.check.recompute) and compared on the spot: a bug shows
at the operation that makes it, with no drift and no second run. Parameters in force at step 0 come from
a params file (or are unknown: the checks that need them are skipped with a note); at step k > 0 they are
the updated parameters recorded at step k - 1 (unknown again when step k - 1 is not in the trace).

What the trace does not say (its header's `activation`, `loss_reduction`, `learning_rate`, or a scenario
given with it) is inferred and reported. Reference-free invariants are checked too. The first failing
operation is reported as the comparator's `FirstDivergence` (side A = recomputed, side B = the trace),
with the comparator's metrics, tolerances and localisation, and diagnosed by memstate.diagnosis; the
whole result converts to a `memstate.comparator.compare.Comparison` (`CheckResult.comparison`), so the JSON report
has the diff report's schema.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from memstate.check import recompute as rc
from memstate.comparator.compare import (Comparison, FirstDivergence, StepComparison, TensorComparison, TensorSeries,
                              ToleranceUse, TraceInfo, _Buckets, error_grid)
from memstate.comparator.compare import Finding as CompareFinding
from memstate.errors import MemstateError
from memstate.comparator.localize import localize
from memstate.comparator.metrics import TensorMetrics, element_errors, tensor_metrics
from memstate.names import param_names
from memstate.comparator.tolerance import Tolerance, Tolerances, min_passing
from memstate.formats.trace import EndedEarly, open_trace

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


# ---------------------------------------------------------------- results

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
    seconds: float = 0.0
    ended_early: EndedEarly | None = None  # the run stopped before the steps its header declares

    @property
    def ok(self) -> bool:
        return self.n_failures == 0 and not self.findings

    @property
    def first(self) -> tuple[int | None, str | None] | None:
        """(step, name) of the first thing wrong, or None."""
        f = self.first_finding
        return (f.step, f.name) if f is not None else None

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else math.inf


# ---------------------------------------------------------------- comparing one operation

@dataclass(frozen=True)
class _Cmp:
    ok: bool
    metrics: TensorMetrics | None
    max_abs: float
    max_rel: float
    ratio: float
    index: tuple[int, ...] | None
    rec: float | None
    ref: float | None
    tolerance: Tolerance
    message: str = ""


def op_tolerance(tolerances: Tolerances, name: str, dtype: np.dtype, terms: int) -> Tolerance:
    """The comparator's tolerance for `name` in the recorded dtype (both sides: the reference stands in for
    an exact computation in that dtype), its rtol raised to the operation's rounding bound `2 * terms *
    eps` when that is larger: an honest sum of many float32 terms may be off by that much."""
    tol = tolerances.resolve(name, dtype, dtype)
    bound = rc.rounding_bound(dtype, terms)
    if bound > tol.rtol:
        tol = replace(tol, rtol=bound, source=f"{tol.source} + rounding bound of {terms} terms")
    return tol


def _widened(errors, scale: np.ndarray):
    """The comparator's elementwise errors with the magnitude raised to the scale of the operation's terms."""
    with np.errstate(all="ignore"):
        s = np.broadcast_to(np.abs(rc.f64(scale)), errors.abs.shape)
        s = np.where(np.isfinite(s), s, 0.0)
    return replace(errors, magnitude=np.maximum(errors.magnitude, s))


def compare_op(recorded: np.ndarray, ref: np.ndarray, scale: np.ndarray, tol: Tolerance, full: bool = True) -> _Cmp:
    """Recorded against recomputed with the comparator's metrics and its element test under `tol`.

    An element passes when |recorded - recomputed| <= atol + rtol * magnitude (or is within `tol.ulps`),
    the magnitude being the largest of |recorded|, |recomputed| and the `scale` of the operation's terms: a
    result that cancels to nearly zero keeps the rounding of its terms. nan matches nan and an infinity the
    same infinity; a non-finite value against anything else fails. With `full=False` an operation whose
    elements are all finite and within tolerance is summarised without the full metrics (the fast path).
    """
    ref = np.asarray(ref, dtype=np.float64)
    if recorded.shape != ref.shape:
        return _Cmp(False, None, math.inf, math.inf, math.inf, None, None, None, tol,
                    f"recorded shape {list(recorded.shape)} but the operation gives {list(ref.shape)}")
    if ref.size == 0:
        return _Cmp(True, tensor_metrics(ref, recorded), 0.0, 0.0, 0.0, None, None, None, tol)
    if not full and tol.ulps is None:
        with np.errstate(all="ignore"):
            rec = rc.f64(recorded)
            s = np.broadcast_to(np.abs(rc.f64(scale)), ref.shape)
            d = np.abs(rec - ref)
            allowed = tol.atol + tol.rtol * np.maximum(np.maximum(np.abs(rec), np.abs(ref)), s)
            if bool(np.all(d <= allowed)) and bool(np.isfinite(d).all()):  # any nan or inf: the full path
                ratio = np.where(d == 0, 0.0, d / np.where(allowed > 0, allowed, np.inf))
                flat = int(np.argmax(ratio))
                dmax = float(d.max())
                top = float(max(np.abs(rec).max(), np.abs(ref).max()))
                max_rel = 0.0 if dmax == 0 else (dmax / top if top > 0 else math.inf)
                idx = tuple(int(i) for i in np.unravel_index(flat, ref.shape))
                return _Cmp(True, None, dmax, max_rel, float(ratio.flat[flat]), idx, float(rec.flat[flat]),
                            float(ref.flat[flat]), tol)
    errors = element_errors(ref, recorded)
    widened = _widened(errors, scale)
    fail = tol.out_of_tolerance(widened)
    with np.errstate(all="ignore"):
        allowed = tol.atol + tol.rtol * widened.magnitude
        ratio = np.where(errors.abs == 0, 0.0, errors.abs / np.where(allowed > 0, allowed, np.inf))
        if tol.ulps is not None:  # within the ULP allowance passes whatever the ratio
            ratio = np.where(fail, np.maximum(ratio, 1.0 + 1e-9), np.minimum(ratio, 1.0))
        ratio = np.where(errors.mismatch, np.inf, ratio)
    metrics = tensor_metrics(ref, recorded, errors, fail, argmax=_argmax(ref.ndim, ref.shape))
    flat = int(np.argmax(ratio))
    idx = tuple(int(i) for i in np.unravel_index(flat, ref.shape))
    return _Cmp(not fail.any(), metrics, metrics.max_abs_error, metrics.max_rel_error, float(ratio.flat[flat]), idx,
                float(recorded.flat[flat]), float(ref.flat[flat]), tol)


def _argmax(ndim: int, shape: tuple[int, ...]) -> bool:
    return ndim == 2 and shape[-1] > 1


def tensor_comparison(k: int, name: str, ref: np.ndarray, value: np.ndarray, scale: np.ndarray,
                      tol: Tolerance) -> tuple[TensorComparison, Any, np.ndarray | None]:
    """The comparator's TensorComparison of one operation, with its elementwise errors and failing mask."""
    ref = np.asarray(ref, dtype=np.float64)
    common = dict(step=k, name=name, shape_a=tuple(ref.shape), shape_b=tuple(value.shape), dtype_a="float64",
                  dtype_b=value.dtype.name, tolerance=tol)
    if ref.shape != value.shape:
        return TensorComparison(**common, within_tolerance=False, metrics=None), None, None
    errors = element_errors(ref, value)
    widened = _widened(errors, scale)
    fail = tol.out_of_tolerance(widened)
    metrics = tensor_metrics(ref, value, errors, fail, argmax=name == "probs" or bool(LOGITS.match(name)))
    within = metrics.n_out == 0
    return (TensorComparison(**common, within_tolerance=within, metrics=metrics,
                             min_tolerance=None if within else min_passing(widened, tol)), errors, fail)


# ---------------------------------------------------------------- invariants

def invariants(name: str, value: np.ndarray) -> list[tuple[str, str]]:
    """Reference-free invariants of one recorded tensor: (code, what is wrong) for each that fails."""
    out: list[tuple[str, str]] = []
    v = rc.f64(value)
    eps = rc.EPS.get(np.dtype(value.dtype), rc.EPS[np.dtype("float32")])
    if name == "y" and v.ndim == 2 and v.size:
        ok = np.isin(v, (0.0, 1.0)).all(axis=1) & (v.sum(axis=1) == 1)
        if not ok.all():
            out.append(("y-one-hot", f"{int(np.count_nonzero(~ok))} of {v.shape[0]} rows of y are not one-hot "
                                     f"(row {int(np.argmin(ok))} first)"))
    elif name == "probs" and v.ndim == 2 and v.size:
        with np.errstate(all="ignore"):
            neg = v < 0
            if neg.any():
                r, c = (int(i) for i in np.argwhere(neg)[0])
                out.append(("probs-non-negative", f"{int(np.count_nonzero(neg))} probabilities are negative "
                                                  f"(probs[{r}, {c}] = {v[r, c]:.6g})"))
            sums = v.sum(axis=1)
            off = np.abs(sums - 1)
            off = np.where(np.isnan(off), np.inf, off)
            limit = 4 * (v.shape[1] + 1) * eps
            if (off > limit).any():
                r = int(np.argmax(off))
                bad = int(np.count_nonzero(off > limit))
                out.append(("probs-rows-sum-to-1", f"{bad} of {v.shape[0]} rows of probs do not sum to 1 "
                                                   f"(row {r} sums to {sums[r]:.6g})"))
    elif name == "loss" and not np.isfinite(v).all():
        out.append(("loss-finite", f"the loss is {float(v.reshape(-1)[0])}"))
    return out


INVARIANT_NAMES = {"y": 1, "probs": 2, "loss": 1}  # invariants evaluated per recorded tensor of that name


def _inputs_finite_for_invariants(name: str, t: Mapping[str, np.ndarray], n_layers: int) -> bool:
    """probs and loss are held to their invariants only when what they come from is finite (nan logits
    give nan probabilities honestly; the first nan is reported where it appears)."""
    if name == "probs":
        deps = [f"L{n_layers}.z"]
    elif name == "loss":
        deps = [f"L{n_layers}.z", "probs"]
    else:
        return True
    return all(bool(np.isfinite(t[d]).all()) for d in deps if d in t)


def _nonfinite(a: np.ndarray) -> int:
    return int(a.size - np.count_nonzero(np.isfinite(a)))


# ---------------------------------------------------------------- the walk

@dataclass
class _Op:
    """An operation of the current step, kept until the step ends (for the steps reported in full)."""

    name: str
    ref: np.ndarray
    value: np.ndarray
    scale: np.ndarray
    tol: Tolerance


@dataclass
class _State:
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
    last_kept: tuple[int, list[_Op]] | None = None  # the last step's operations (reported in full too)

    def note(self, text: str, step: int) -> None:
        self.notes.setdefault(text, []).append(step)

    def skip(self, k: int, name: str, why: str) -> None:
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


def _declared(meta: Mapping[str, Any], scenario: Any, source: str) -> dict[str, tuple[Any, str]]:
    """Settings the scenario or the trace header states, with their source."""
    out: dict[str, tuple[Any, str]] = {}
    if scenario is not None:
        out["layers"] = (tuple(scenario.model.layers), source)
        out["activation"] = (scenario.model.activation, source)
        out["reduction"] = (scenario.training.loss_reduction, source)
        out["lr"] = (float(scenario.training.learning_rate), source)
        return out
    layers = meta.get("layers")
    if isinstance(layers, list) and len(layers) >= 2 and all(type(v) is int and v > 0 for v in layers):
        out["layers"] = (tuple(layers), "header")
    if isinstance(meta.get("activation"), str):
        out["activation"] = (meta["activation"], "header")
    if meta.get("loss_reduction") in ("mean", "sum"):
        out["reduction"] = (meta["loss_reduction"], "header")
    lr = meta.get("learning_rate")
    if isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr):
        out["lr"] = (float(lr), "header")
    return out


def header_scenario(meta: Mapping[str, Any]) -> tuple[Any, str | None]:
    """The scenario the header names, when it can be loaded and fits the header's layers: it is the spec the run
    claims to follow (the header's own `loss_reduction` says what the run computed, variants included).
    Returns (scenario or None, a note saying why it was not used, or None)."""
    from memstate.runner.scenario import load_scenario

    name = meta.get("scenario")
    if not isinstance(name, str) or not name:
        return None, None
    try:
        s = load_scenario(name)
    except (MemstateError, OSError, ValueError):
        return None, None
    layers = meta.get("layers")
    if isinstance(layers, list) and tuple(layers) != tuple(s.model.layers):
        return None, (f"the header names scenario {name!r}, whose layers {list(s.model.layers)} are not the "
                      f"trace's {layers}: using the header's own settings")
    return s, None


def check_trace(path: str | os.PathLike, params: Mapping[str, np.ndarray] | None = None,
                tolerances: Tolerances | None = None, *, scenario: Any = None, params_source: str | None = None,
                diagnose: bool = True) -> CheckResult:
    """Walk a trace step by step, recompute every recorded tensor from its recorded inputs, and compare.

    `params`: the parameters in force at step 0 (the params file the run started from); without them the
    checks that need step 0's parameters are skipped with a note. `tolerances`: the comparator's policy
    (memstate.tolerance; default its dtype-aware defaults), resolved per tensor in the recorded dtype and
    widened to each operation's rounding bound (`op_tolerance`, `compare_op`). `scenario`: a
    memstate.runner.scenario.Scenario whose layers, activation, loss reduction and learning rate are the spec the
    trace is checked against; without one, the scenario the header names (when it loads and has the trace's
    layers), else the header's own settings, else what the trace shows. Raises MemstateError for unreadable input (a bad trace or params file).
    """
    began = time.perf_counter()
    tolerances = tolerances if tolerances is not None else Tolerances()
    with open_trace(path) as reader:
        meta = dict(reader.meta)
        st = _State(tolerances, meta, diagnose)
        source = "scenario"
        if scenario is None:
            scenario, why = header_scenario(meta)
            source = f"scenario {meta.get('scenario')} (named in the header)"
            if why:
                st.note(why, 0)
        declared = _declared(meta, scenario, source)
        start = {k: np.asarray(v) for k, v in params.items()} if params is not None else None
        p_source = params_source or "params file"

        n_layers: int | None = len(declared["layers"][0]) - 1 if "layers" in declared else None
        activation = _setting(declared.get("activation"))
        if activation.value is not None and activation.value not in rc.ACTIVATIONS:
            activation = replace(activation, value="other",
                                 evidence=f"the {activation.source} says {activation.value!r}, which check cannot "
                                          f"recompute (it knows {', '.join(rc.ACTIVATIONS)})")
        reduction = _setting(declared.get("reduction"))
        learning_rate = _setting(declared.get("lr"))
        lr_fit = rc.LrFit()
        dtype: str | None = None
        count, first_step, last_step = 0, None, None
        prev_index: int | None = None
        prev_params: dict[str, np.ndarray] | None = None
        act_seen = red_seen = False
        settings: rc.Settings | None = None
        rules: dict[str, list[rc.Rule]] = {}

        for step in reader:
            t, k = step.tensors, step.index
            count += 1
            first_step = k if first_step is None else first_step
            last_step = k
            if dtype is None and t:
                dtype = next(iter(t.values())).dtype.name
            if n_layers is None:
                n_layers = rc.n_layers_of(list(t))
            if n_layers is None:
                st.note("no L{i}.z or L{i}.W names: not an MLP trace in the canonical names; nothing checked", k)
                for name in t:
                    st.unchecked.setdefault(name)
                prev_index, prev_params = k, None
                continue

            # the parameters in force at this step
            in_force, in_force_from = None, ""
            if prev_index is None:
                if k == 0 and start is not None:
                    in_force, in_force_from = _start_params(start, t, n_layers), p_source
                else:
                    why = "pass the params file the run started from with --params" if k == 0 else \
                        f"the trace starts at step {k}, not 0"
                    st.note(f"parameters in force unknown at the first step ({why})", k)
            elif prev_index == k - 1 and prev_params is not None:
                in_force, in_force_from = prev_params, f"step {prev_index}"
            else:
                why = f"steps are not contiguous: step {k} follows step {prev_index}" if prev_index != k - 1 \
                    else f"step {prev_index} did not record every updated parameter"
                st.note(f"parameters in force unknown ({why})", k)

            # what the header does not say, from the first step that shows it
            if not act_seen:
                inferred, errors = rc.infer_activation(t, n_layers, np.dtype(dtype or "float64"))
                if inferred is not None or n_layers == 1:
                    act_seen = True
                    activation = _with_inference(activation, inferred, _activation_evidence(inferred, errors, k)
                                                 if inferred is not None else "one layer: no hidden activation")
            if not red_seen and (f"L{n_layers}.dz" in t or "loss" in t):
                red_seen = True
                inferred, how = rc.infer_reduction(t, n_layers)
                reduction = _with_inference(reduction, inferred, f"step {k}: {how}")

            # the learning rate: fitted on every step whose parameters in force are known
            if in_force is not None:
                for pname in param_names(n_layers):
                    grad = pname.replace(".", ".d")
                    if pname in t and grad in t:
                        lr_fit.add(k, pname, in_force[pname], t[pname], t[grad])
            if learning_rate.value is None and lr_fit.lr is not None:
                learning_rate = Inferred(rc.nice_lr(lr_fit.lr, dtype), "fitted")

            new = rc.Settings(n_layers, activation.value, reduction.value, learning_rate.value)
            if new != settings:
                settings, rules = new, rc.rules(new)
            _check_step(st, k, t, in_force, in_force_from, settings, rules, keep=count == 1)

            names = param_names(n_layers)
            prev_params = {n: t[n] for n in names} if all(n in t for n in names) else None
            prev_index = k
        incomplete = reader.incomplete.index if reader.incomplete is not None else None
        if incomplete is not None:
            st.note("the trace ends with an incomplete step (the run crashed); it was not checked", incomplete)
        early = reader.ended_early
        if early is not None and incomplete is None:
            st.note(f"{early}: the run stopped before the end its header declares",
                    last_step if last_step is not None else 0)
        encoding = reader.encoding

    if st.last_kept is not None and st.last_kept[0] not in {s.step for s in st.full_steps}:
        st.full_steps.append(_full_step(*st.last_kept))
    st.last_kept = None
    learning_rate = _lr_consistency(st, learning_rate, lr_fit, dtype)
    if learning_rate.value is None:
        st.note("learning rate unknown: no step had its parameters in force and a non-zero gradient",
                first_step if first_step is not None else 0)

    diagnoses: tuple[Any, ...] = ()
    if diagnose and st.first_context is not None:
        from memstate.diagnose.catalogue import diagnose as run_diagnosers

        diagnoses = tuple(run_diagnosers(st.first_context))
    first_divergence = st.first_divergence
    if first_divergence is not None:
        first_divergence = replace(first_divergence, consequences=tuple(dict.fromkeys(st.consequences)),
                                   divergent_steps=st.failing_steps, last_divergent_step=st.last_failing_step,
                                   diagnoses=diagnoses)
    notes = tuple(_note_text(text, steps) for text, steps in st.notes.items())
    notes += tuple(_note_text(f"not checked ({why}): {', '.join(names)}", list(steps))
                   for why, (names, steps) in st.skips.items())
    findings = tuple(st.findings.values())
    ok = st.n_failures == 0 and not findings
    ref_meta = _reference_meta(meta, activation.value, reduction.value, learning_rate.value)
    comparison = Comparison(
        verdict="agree" if ok else "diverge",
        first_divergence=first_divergence,
        a=TraceInfo(REFERENCE_PATH, "recomputed", ref_meta, count, last_step, None),
        b=TraceInfo(str(path), encoding, meta, count, last_step, incomplete, early),
        oracle=None,
        tolerances=tolerances,
        tolerances_used=tuple(ToleranceUse(tol, tuple(names)) for tol, names in st.used.items()),
        steps_compared=count,
        divergent_steps=st.failing_steps,
        steps=tuple(sorted({s.step: s for s in st.full_steps}.values(), key=lambda s: s.step)),
        overview=tuple(st.overview.items),
        series=tuple(TensorSeries(n, tuple(b.items)) for n, b in st.series.items()),
        findings=tuple(_compare_finding(f) for f in findings)
        + tuple(CompareFinding("not-checked", "info", n) for n in notes),
        meta_diff=(),
    )
    return CheckResult(
        path=Path(path), encoding=encoding, meta=meta, n_layers=n_layers, dtype=dtype, steps=count,
        first_step=first_step, last_step=last_step, incomplete_step=incomplete,
        activation=activation, reduction=reduction, learning_rate=learning_rate,
        params_source=p_source if start is not None else "unknown",
        operations=st.operations, invariant_checks=st.invariant_checks, by_name=dict(st.by_name),
        worst=st.worst, first_failure=st.first_failure, first_divergence=first_divergence,
        first_finding=st.first_finding, failures=tuple(st.failures), n_failures=st.n_failures,
        failing_steps=st.failing_steps, findings=findings, diagnoses=diagnoses, notes=notes,
        unchecked=tuple(st.unchecked), tolerances=tolerances, comparison=comparison,
        seconds=time.perf_counter() - began, ended_early=early,
    )


def _setting(declared: tuple[Any, str] | None) -> Inferred:
    return Inferred(declared[0], declared[1]) if declared else Inferred(None, "unknown")


def _with_inference(s: Inferred, inferred: Any, evidence: str) -> Inferred:
    """A setting updated with what the trace shows: taken as the value when nothing declared one."""
    if s.value is None:
        return Inferred(inferred, "inferred" if inferred is not None else "unknown", inferred, evidence)
    return replace(s, inferred=inferred, evidence=evidence, consistent=inferred in (None, s.value))


def _lr_consistency(st: _State, lr: Inferred, fit: rc.LrFit, dtype: str | None) -> Inferred:
    """The learning rate with the fit over every update; an inconsistent fit is a finding."""
    if fit.lr is None:
        return replace(lr, evidence="not fitted: no step had both its parameters in force and a finite, non-zero "
                                    "gradient")
    fitted = rc.nice_lr(fit.lr, dtype)
    worst, at = fit.consistency()
    consistent = worst <= 1.0
    where = f"; worst {at[1]} at step {at[0]}, {worst:.3g}x its rounding allowance" if at and not consistent else ""
    evidence = (f"W' = W - lr * dW fitted over {fit.count} parameter updates: lr = {fit.lr:.17g}, per-tensor "
                f"fits {fit.lo:.9g} to {fit.hi:.9g}{where}")
    if lr.source == "fitted":  # the value the updates were checked with: the fit of the first fitted step
        lr = Inferred(lr.value, "fitted", fitted, evidence, consistent and fitted == lr.value)
    else:
        agrees = abs(fit.lr - lr.value) <= rc.lr_precision(dtype) * abs(lr.value)
        lr = replace(lr, inferred=fitted, evidence=evidence, consistent=consistent and agrees)
    if not consistent:
        st.find(Finding("inference", "lr-consistent", at[0] if at else None, at[1] if at else None,
                        f"no single learning rate explains the parameter updates: {evidence}"))
    return lr


def _shapes(rule: Any, t: Mapping[str, np.ndarray], p: Mapping[str, np.ndarray]) -> str:
    """`x [8, 196], L1.W [196, 32]`: the recorded shapes a rule computes from."""
    shapes = [(n, np.shape(t[n])) for n in rule.inputs if n in t] + [(n, np.shape(p[n])) for n in rule.params if n in p]
    return ", ".join(f"{n} {list(shape)}" for n, shape in shapes)


def _start_params(params: Mapping[str, np.ndarray], t: Mapping[str, np.ndarray], n_layers: int
                  ) -> dict[str, np.ndarray]:
    """The params file's tensors, checked against the shapes the trace records for the updated parameters."""
    out = {}
    unknown = [n for n in params if n not in param_names(n_layers)]
    if unknown:
        raise MemstateError(f"the params file has tensors a {n_layers}-layer trace does not use: "
                            f"{', '.join(map(repr, unknown))}; it needs exactly {', '.join(param_names(n_layers))}: "
                            "is it the params file of this run?")
    for name in param_names(n_layers):
        if name not in params:
            raise MemstateError(f"the params file has no {name}; a {n_layers}-layer trace needs "
                                f"{', '.join(param_names(n_layers))}")
        arr = np.asarray(params[name])
        if name in t and t[name].shape != arr.shape:
            raise MemstateError(f"the params file's {name} has shape {list(arr.shape)} but the trace records "
                                f"{name} with shape {list(t[name].shape)}: is it the params file of this run?")
        out[name] = arr
    return out


def _activation_evidence(inferred: str | None, errors: dict[str, float], k: int) -> str:
    listing = ", ".join(f"{a} {e:.2g}" for a, e in sorted(errors.items(), key=lambda kv: kv[1]))
    if inferred == "other":
        return f"step {k}: L{{i}}.a is not relu, shifted-relu or sigmoid of L{{i}}.z (max rel errors: {listing})"
    return f"step {k}: L{{i}}.a = {inferred}(L{{i}}.z) (max rel errors: {listing})"


def _note_text(text: str, steps: list[int]) -> str:
    if len(steps) == 1:
        return f"step {steps[0]}: {text}"
    shown = ", ".join(map(str, steps[:5])) + (", ..." if len(steps) > 5 else "")
    return f"{len(steps)} steps ({shown}): {text}"


def _check_step(st: _State, k: int, t: Mapping[str, np.ndarray], in_force: Mapping[str, np.ndarray] | None,
                in_force_from: str, settings: rc.Settings, rules: dict[str, list[rc.Rule]], keep: bool) -> None:
    """Check every recorded tensor of one step, in dataflow order."""
    names = list(t)
    position = {n: i for i, n in enumerate(names)}
    step_worst_rel, step_worst_abs, step_worst_name, step_failed = 0.0, 0.0, None, False
    kept: list[_Op] = []
    first_here = False
    for pos, name in enumerate(names):
        value = t[name]
        violated = []
        if _inputs_finite_for_invariants(name, t, settings.n_layers):
            st.invariant_checks += INVARIANT_NAMES.get(name, 0)
            violated = invariants(name, value)
        for code, what in violated:
            st.find(Finding("invariant", code, k, name, what))
        if name == "x":
            continue
        candidates = rules.get(name)
        if not candidates:
            if name != "y":
                st.unchecked.setdefault(name)
            continue
        rule = next((r for r in candidates if all(i in t for i in r.inputs)), None)
        if rule is None:
            st.skip(k, name, f"{', '.join(i for i in candidates[0].inputs if i not in t)} not recorded")
            continue
        if rule.params and in_force is None:
            st.skip(k, name, "the parameters in force are unknown")
            continue
        unknown = rule.missing_settings(settings)
        if unknown:
            what = {"activation": "the activation is unknown (not relu, shifted-relu or sigmoid)",
                    "reduction": "the loss reduction is unknown", "lr": "the learning rate is unknown"}
            st.skip(k, name, "; ".join(what[u] for u in unknown))
            continue
        late = [i for i in rule.inputs if position[i] > pos]
        if late:
            st.note(f"{name} is recorded before {', '.join(late)}, which it is computed from "
                    "(docs/format.md asks for dataflow order)", k)
        p = in_force or {}
        try:
            ref, scale = rule.fn(t, p)
            key = (name, value.dtype.name, rule.terms(t))
        except (ValueError, IndexError, ZeroDivisionError):  # recorded inputs that do not fit together (each is
            # checked by its own rule): not this operation's fault
            st.skip(k, name, f"the shapes of {_shapes(rule, t, p)} do not fit {rule.formula}")
            continue
        tol = st.tol_cache.get(key)
        if tol is None:
            tol = st.tol_cache[key] = op_tolerance(st.tolerances, name, value.dtype, key[2])
        c = compare_op(value, ref, scale, tol, full=False)
        if c.metrics is None and (st.worst is None or c.ratio > st.worst.ratio):
            c = compare_op(value, ref, scale, tol)  # the worst so far: keep its full metrics
        st.operations += 1
        st.used.setdefault(tol, [])
        if name not in st.used[tol]:
            st.used[tol].append(name)

        bad = [code for code, _ in violated]
        if _nonfinite(value) and rc.inputs_finite(rule, t, p):
            st.find(Finding("invariant", "nan-from-finite", k, name,
                            f"{name} has {_nonfinite(value)} nan/inf values although "
                            f"{', '.join(rule.inputs + rule.params)} are finite"))
            bad.append("nan-from-finite")
        st.invariant_checks += 1
        if rule.invariant:
            st.invariant_checks += 1
            if not c.ok:
                st.find(Finding("invariant", rule.invariant, k, name, f"{name} is not {rule.formula}"))
                bad.append(rule.invariant)
        op = OpCheck(k, name, rule.formula, rule.inputs, rule.params, in_force_from if rule.params else "",
                     value.dtype.name, tuple(value.shape), c.ok, c.metrics, c.max_abs, c.max_rel, c.ratio, c.index,
                     c.rec, c.ref, c.tolerance, c.message, tuple(bad))
        s = st.by_name.get(name, NameStats())
        st.by_name[name] = NameStats(s.checked + 1, s.failed + (not c.ok), s.skipped, max(s.worst_ratio, c.ratio),
                                     max(s.worst_rel, c.max_rel),
                                     k if s.worst_step is None or c.ratio > s.worst_ratio else s.worst_step)
        st.series.setdefault(name, _Buckets()).add(k, c.max_abs, c.max_rel, name, not c.ok)
        if c.max_rel >= step_worst_rel:
            step_worst_rel, step_worst_name = c.max_rel, name
        step_worst_abs = max(step_worst_abs, c.max_abs)
        if st.worst is None or c.ratio > st.worst.ratio:
            st.worst = op
        kept.append(_Op(name, ref, value, scale, tol))
        if c.ok:
            continue

        step_failed = True
        st.n_failures += 1
        if len(st.failures) < MAX_FAILURES:
            st.failures.append(op)
        detail = c.message or (f"{name} is not {rule.formula}: {op.n_out} of {value.size} elements out of "
                               f"tolerance, max rel error {c.max_rel:.3g}")
        if st.first_finding is None or (st.first_finding.step, st.first_finding.name) == (k, name):
            st.first_finding = Finding("operation", "shape" if c.message else "mismatch", k, name, detail)
        if st.first_failure is None:
            first_here = True
            st.first_failure = op
            st.first_divergence = _divergence(k, name, rule, ref, value, scale, tol, names[:pos])
            if st.diagnose:
                st.first_context = _context(k, name, ref, value, t, pos, st.meta, settings,
                                            st.history + [(k, max(step_worst_rel, c.max_rel))])
        elif st.first_failure.step == k:
            st.consequences.append(name)

    if step_failed:
        st.failing_steps += 1
        st.last_failing_step = k
    st.history.append((k, step_worst_rel))
    st.overview.add(k, step_worst_abs, step_worst_rel, step_worst_name, step_failed)
    if keep or first_here:
        st.full_steps.append(_full_step(k, kept))
    st.last_kept = (k, kept)


def _full_step(k: int, kept: list[_Op]) -> StepComparison:
    """A step's operations as the comparator's StepComparison (full metrics), for the report's table."""
    return StepComparison(k, tuple(tensor_comparison(k, o.name, o.ref, o.value, o.scale, o.tol)[0] for o in kept))


def _divergence(k: int, name: str, rule: rc.Rule, ref: np.ndarray, value: np.ndarray, scale: np.ndarray,
                tol: Tolerance, inputs: list[str]) -> FirstDivergence:
    """The first failing operation as the comparator's FirstDivergence (A = recomputed, B = the trace)."""
    tc, errors, fail = tensor_comparison(k, name, ref, value, scale, tol)
    agree = True if inputs else None  # recomputed from B's own inputs: they agree by construction
    if errors is None:
        return FirstDivergence("shape", k, name, f"{name} has shape {list(value.shape)}, but {rule.formula} has "
                               f"shape {list(np.shape(ref))}", tensor=tc, inputs=tuple(inputs), inputs_agree=agree)
    where = localize(np.asarray(ref, dtype=np.float64), value, errors, fail)
    return FirstDivergence("values", k, name, f"{name} is not {rule.formula}: it differs in {where.n_out} of "
                           f"{where.size} elements ({where.pattern})", tensor=tc, where=where, inputs=tuple(inputs),
                           inputs_agree=agree, error_grid=error_grid(errors.abs))


def _reference_meta(meta: Mapping[str, Any], activation: Any, reduction: Any, lr: Any) -> dict[str, Any]:
    """The header of side A, the recomputation: what it computed with."""
    out: dict[str, Any] = {"impl": "reference", "dtype": "float64",
                           "computes_in": "float64 (memstate check: each operation recomputed by the NumPy "
                                          "implementation's maths from the trace's recorded inputs)"}
    for key in ("layers", "batch_size", "scenario"):
        if key in meta:
            out[key] = meta[key]
    for key, value in (("activation", activation), ("loss_reduction", reduction), ("learning_rate", lr)):
        if value is not None:
            out[key] = value
    return out


def _context(k: int, name: str, ref: np.ndarray, value: np.ndarray, t: Mapping[str, np.ndarray], pos: int,
             meta: Mapping[str, Any], settings: rc.Settings, history: list[tuple[int, float]]):
    from memstate.diagnose.context import DivergenceContext

    before = {n: t[n] for n in list(t)[:pos]}
    return DivergenceContext(step=k, name=name, a=np.asarray(ref, dtype=np.float64), b=np.asarray(value),
                             inputs_a=before, inputs_b=before, history=tuple(history),
                             inputs_agree=True if before else None,
                             meta_a=_reference_meta(meta, settings.activation, settings.reduction, settings.lr),
                             meta_b=dict(meta))


def _compare_finding(f: Finding) -> CompareFinding:
    return CompareFinding(f"{f.kind}:{f.code}" if f.kind != "operation" else f.code, "error", f.message, "b", f.name,
                          f.step, f.last_step if f.last_step is not None else f.step, f.count)


__all__ = ["CheckResult", "OpCheck", "Finding", "Inferred", "NameStats", "INVARIANTS", "check_trace", "compare_op",
           "invariants", "op_tolerance"]

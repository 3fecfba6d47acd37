"""One step of `memstate check`: every recorded tensor recomputed from its recorded inputs and compared, in
dataflow order, into the walk's State; the first failing operation in the comparator's terms."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from memstate.check import recompute as rc
from memstate.check.invariants import INVARIANT_NAMES, inputs_finite_for_invariants, invariants, nonfinite
from memstate.check.plan import Derivation, Plan, Unreachable
from memstate.check.opcompare import _Cmp, compare_op, op_tolerance, tensor_comparison
from memstate.check.result import MAX_FAILURES, Finding, NameStats, OpCheck
from memstate.check.state import Op, State
from memstate.comparator.compare import FirstDivergence, StepComparison, _Buckets, error_grid
from memstate.comparator.localize import localize
from memstate.comparator.metrics import dtype_name
from memstate.comparator.tolerance import Tolerance



class _StepTally:
    """The step's running worst error and its operations kept for the report."""

    def __init__(self) -> None:
        self.worst_rel, self.worst_abs, self.failed = 0.0, 0.0, False
        self.worst_name: str | None = None
        self.kept: list[Op] = []
        self.first_here = False


def check_step(st: State, k: int, t: Mapping[str, np.ndarray], in_force: Mapping[str, np.ndarray] | None,
               in_force_from: str, settings: rc.Settings, plans: Mapping[str, Plan | Unreachable],
               keep: bool, derivation: Derivation | None = None) -> None:
    """Check every recorded tensor of one step, in dataflow order: by its own operation when its inputs are
    recorded, else through the composition from the nearest recorded tensors (`plans`)."""
    names = list(t)
    tally = _StepTally()
    recorded = 0
    for pos, name in enumerate(names):
        violated = _invariants(st, k, name, t, settings.n_layers)
        if name in ("x", "y"):
            continue
        recorded += 1
        plan = plans.get(name)
        if plan is None:
            st.unchecked.setdefault(name)
            st.skip(k, name, "not a canonical name, so no operation gives it", "canonical")
            continue
        if isinstance(plan, Unreachable):
            st.skip(k, name, plan.why, plan.needs)
            continue
        if plan.direct:
            late = [i for i in plan.rule.inputs if names.index(i) > pos]
            if late:
                st.note(f"{name} is recorded before {', '.join(late)}, which it is computed from "
                        "(docs/format.md asks for dataflow order)", k)
            view: Mapping[str, np.ndarray] = t
        else:
            derivation = derivation or Derivation(t, in_force or {})
            view = derivation
        st.verified += 1
        _check_op(st, k, name, pos, names, t, view, plan, in_force or {}, in_force_from, settings, violated, tally)
    st.recorded += recorded
    st.per_step.add(recorded)
    if tally.failed:
        st.failing_steps += 1
        st.last_failing_step = k
    st.history.append((k, tally.worst_rel))
    st.overview.add(k, tally.worst_abs, tally.worst_rel, tally.worst_name, tally.failed)
    if keep or tally.first_here:
        st.full_steps.append(full_step(k, tally.kept))
    st.last_kept = (k, tally.kept)


def _invariants(st: State, k: int, name: str, t: Mapping[str, np.ndarray], n_layers: int) -> list[tuple[str, str]]:
    """The reference-free invariants of one recorded tensor, each failure a finding."""
    violated: list[tuple[str, str]] = []
    if inputs_finite_for_invariants(name, t, n_layers):
        st.invariant_checks += INVARIANT_NAMES.get(name, 0)
        violated = invariants(name, t[name])
    for code, what in violated:
        st.find(Finding("invariant", code, k, name, what))
    return violated


def _compare(st: State, name: str, value: np.ndarray, ref: np.ndarray, scale: np.ndarray | rc.Lazy,
             terms: int) -> _Cmp:
    """The comparison of one operation under its (cached) tolerance; full metrics for the worst so far."""
    key = (name, dtype_name(value.dtype), terms)
    tol = st.tol_cache.get(key)
    if tol is None:
        tol = st.tol_cache[key] = op_tolerance(st.tolerances, name, value.dtype, terms)
    c = compare_op(value, ref, scale, tol, full=False)
    if c.metrics is None and (st.worst is None or c.ratio > st.worst.ratio):
        c = compare_op(value, ref, scale, tol)  # the worst so far: keep its full metrics
    st.operations += 1
    st.used.setdefault(tol, [])
    if name not in st.used[tol]:
        st.used[tol].append(name)
    return c


def _recompute(plan: Plan, view: Mapping[str, np.ndarray], p: Mapping[str, np.ndarray]
               ) -> tuple[np.ndarray, np.ndarray | rc.Lazy, str]:
    """The plan's value and scale; a shape that does not fit the operation is a message, not a traceback."""
    try:
        if isinstance(view, Derivation):
            view.evaluate(plan)
        ref, scale = plan.rule.fn(view, p)
        return ref, scale, ""
    except (ValueError, IndexError) as exc:  # numpy's shape errors: matmul, broadcast, reshape
        shapes = ", ".join(f"{n} {list(np.shape(view[n]))}" for n in plan.leaves if n in view)
        shapes += "".join(f", {n} in force {list(np.shape(p[n]))}" for n in plan.params if n in p)
        return np.empty(0), np.empty(0), (f"{plan.name} cannot be computed as {plan.rule.formula} from {shapes}: "
                                          f"{exc}; is a tensor stored in another layout (W as [fan_out, fan_in], "
                                          f"biases as [n, 1])? see docs/ports.md")


def _check_op(st: State, k: int, name: str, pos: int, names: list[str], t: Mapping[str, np.ndarray],
              view: Mapping[str, np.ndarray], plan: Plan, p: Mapping[str, np.ndarray], in_force_from: str,
              settings: rc.Settings, violated: list[tuple[str, str]], tally: _StepTally) -> None:
    """Recompute one operation (or composition), compare it, and record the outcome."""
    value, rule = t[name], plan.rule
    ref, scale, problem = _recompute(plan, view, p)
    if problem:
        c = _Cmp(False, None, np.inf, np.inf, np.inf, None, None, None,
                 op_tolerance(st.tolerances, name, value.dtype, 1), problem)
        st.operations += 1
    else:
        c = _compare(st, name, value, ref, scale, plan.terms(view))
    bad = [code for code, _ in violated]
    if not problem and nonfinite(value) and _leaves_finite(plan, t, p):
        st.find(Finding("invariant", "nan-from-finite", k, name,
                        f"{name} has {nonfinite(value)} nan/inf values although "
                        f"{', '.join(plan.leaves + plan.params)} are finite"))
        bad.append("nan-from-finite")
    st.invariant_checks += 1
    if rule.invariant and plan.direct:
        st.invariant_checks += 1
        if not c.ok:
            st.find(Finding("invariant", rule.invariant, k, name, f"{name} is not {rule.formula}"))
            bad.append(rule.invariant)
    op = OpCheck(k, name, plan.formula, plan.leaves, plan.params, in_force_from if plan.params else "",
                 dtype_name(value.dtype), tuple(value.shape), c.ok, c.metrics, c.max_abs, c.max_rel, c.ratio, c.index,
                 c.rec, c.ref, c.tolerance, c.message, tuple(bad))
    _tally(st, k, op, c, tally)
    if not problem:
        tally.kept.append(Op(name, ref, value, scale, c.tolerance))
    if not c.ok:
        _failure(st, k, op, plan, ref, value, scale, t, pos, names, settings, tally)


def _leaves_finite(plan: Plan, t: Mapping[str, np.ndarray], p: Mapping[str, np.ndarray]) -> bool:
    return all(np.isfinite(t[n]).all() for n in plan.leaves) and all(np.isfinite(p[n]).all() for n in plan.params)


def _tally(st: State, k: int, op: OpCheck, c: _Cmp, tally: _StepTally) -> None:
    """Per-name statistics, the error series and the worst operation."""
    name = op.name
    s = st.by_name.get(name, NameStats())
    st.by_name[name] = NameStats(s.checked + 1, s.failed + (not c.ok), s.skipped, max(s.worst_ratio, c.ratio),
                                 max(s.worst_rel, c.max_rel),
                                 k if s.worst_step is None or c.ratio > s.worst_ratio else s.worst_step)
    st.series.setdefault(name, _Buckets()).add(k, c.max_abs, c.max_rel, name, not c.ok)
    if c.max_rel >= tally.worst_rel:
        tally.worst_rel, tally.worst_name = c.max_rel, name
    tally.worst_abs = max(tally.worst_abs, c.max_abs)
    if st.worst is None or c.ratio > st.worst.ratio:
        st.worst = op


def _failure(st: State, k: int, op: OpCheck, plan: Plan, ref: np.ndarray, value: np.ndarray,
             scale: np.ndarray | rc.Lazy, t: Mapping[str, np.ndarray], pos: int, names: list[str],
             settings: rc.Settings, tally: _StepTally) -> None:
    """A failing operation: counted, kept, and (the first) turned into the first divergence and its context."""
    name = op.name
    tally.failed = True
    if st.roots is not None:
        st.roots.failed(k, name, pos, lambda: _context(k, name, ref, value, t, pos, st.meta, settings, st.history))
    st.n_failures += 1
    if len(st.failures) < MAX_FAILURES:
        st.failures.append(op)
    detail = op.message or (f"{name} is not {plan.formula}: {op.n_out} of {value.size} elements out of "
                            f"tolerance, max rel error {op.max_rel:.3g}")
    if st.first_finding is None or (st.first_finding.step, st.first_finding.name) == (k, name):
        st.first_finding = Finding("operation", "shape" if op.message else "mismatch", k, name, detail)
    if st.first_failure is None:
        tally.first_here = True
        st.first_failure = op
        st.first_divergence = divergence(k, name, plan, ref, value, scale, op.tolerance, names[:pos], op.message)
        if st.diagnose and not op.message.endswith("see docs/ports.md"):
            st.first_context = _context(k, name, ref, value, t, pos, st.meta, settings,
                                        st.history + [(k, max(tally.worst_rel, op.max_rel))])
            if st.roots is not None:
                st.first_context = st.roots.enrich(st.first_context)
    elif st.first_failure.step == k:
        st.consequences.append(name)


def full_step(k: int, kept: list[Op]) -> StepComparison:
    """A step's operations as the comparator's StepComparison (full metrics), for the report's table."""
    return StepComparison(k, tuple(tensor_comparison(k, o.name, o.ref, o.value, o.scale, o.tol)[0] for o in kept))


def divergence(k: int, name: str, plan: Plan, ref: np.ndarray, value: np.ndarray, scale: np.ndarray | rc.Lazy,
               tol: Tolerance, inputs: list[str], problem: str = "") -> FirstDivergence:
    """The first failing operation as the comparator's FirstDivergence (A = recomputed, B = the trace)."""
    tc, errors, fail = tensor_comparison(k, name, ref, value, scale, tol)
    agree = True if inputs else None  # recomputed from B's own inputs: they agree by construction
    if problem:
        return FirstDivergence("shape", k, name, problem, tensor=tc, inputs=tuple(inputs), inputs_agree=agree)
    if errors is None or fail is None:
        return FirstDivergence("shape", k, name, f"{name} has shape {list(value.shape)}, but {plan.formula} has "
                               f"shape {list(np.shape(ref))}", tensor=tc, inputs=tuple(inputs), inputs_agree=agree)
    where = localize(np.asarray(ref, dtype=np.float64), value, errors, fail)
    return FirstDivergence("values", k, name, f"{name} is not {plan.formula}: it differs in {where.n_out} of "
                           f"{where.size} elements ({where.pattern})", tensor=tc, where=where, inputs=tuple(inputs),
                           inputs_agree=agree, error_grid=error_grid(errors.abs))


def reference_meta(meta: Mapping[str, Any], activation: Any, reduction: Any, lr: Any) -> dict[str, Any]:
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
             meta: Mapping[str, Any], settings: rc.Settings, history: list[tuple[int, float]]) -> Any:
    """The diagnosers' view of the first failing operation: recorded (B) against recomputed (A)."""
    from memstate.diagnose.context import DivergenceContext

    before = {n: t[n] for n in list(t)[:pos]}
    return DivergenceContext(step=k, name=name, a=np.asarray(ref, dtype=np.float64), b=np.asarray(value),
                             inputs_a=before, inputs_b=before, history=tuple(history),
                             inputs_agree=True if before else None,
                             meta_a=reference_meta(meta, settings.activation, settings.reduction, settings.lr),
                             meta_b=dict(meta))

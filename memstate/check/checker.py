"""`memstate check`: find the first wrong operation in a single trace, with no second implementation.

A canonical trace records every operation's inputs and outputs, so each recorded tensor can be re-derived
from the tensors it depends on *as recorded* (memstate.check.recompute) and compared on the spot: a bug shows
at the operation that makes it, with no drift and no second run. A tensor whose inputs are not recorded
(a partial trace) is checked through the composition of the operations between it and the nearest
recorded tensors (memstate.check.plan). Parameters in force at step 0 come from a params file; at step
k > 0 they are the updated parameters recorded at step k - 1. What cannot be reached (parameters unknown,
a setting nothing shows) is listed in the result's coverage with why, and the result is then not CLEAN.

What the trace does not say (its header's `activation`, `loss_reduction`, `learning_rate`, or a scenario
given with it) is inferred and reported. Reference-free invariants are checked too. The first failing
operation is reported as the comparator's `FirstDivergence` (side A = recomputed, side B = the trace),
with the comparator's metrics, tolerances and localisation, and diagnosed by memstate.diagnosis; the
whole result converts to a `memstate.comparator.compare.Comparison` (`CheckResult.comparison`), so the JSON report
has the diff report's schema.
"""

from __future__ import annotations

import os
import time
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from memstate.check.infer import Spec, declared, header_scenario, lr_consistency
from memstate.check.invariants import invariants
from memstate.check.root_causes import CheckRoots
from memstate.blas import blas_threads
from memstate.check.plan import NEEDED
from memstate.check.opcompare import compare_op, op_tolerance
from memstate.check.result import (INVARIANTS, REFERENCE_PATH, CheckResult, Coverage, Finding, Inferred,
                                   NameStats, OpCheck, Unverified)
from memstate.check.parallel import walk_in_ranges, worth_it
from memstate.check.state import State, note_text
from memstate.check.walk import Walk
from memstate.check.step import full_step, reference_meta
from memstate.comparator.compare import Comparison, StepComparison, ToleranceUse, TraceInfo, TensorSeries
from memstate.comparator.compare import Finding as CompareFinding
from memstate.comparator.tolerance import Tolerances
from memstate.formats.map import LayoutMap
from memstate.formats.readahead import read_ahead
from memstate.formats.trace import EndedEarly, TraceReader, open_trace


def check_trace(path: str | os.PathLike, params: Mapping[str, np.ndarray] | None = None,
                tolerances: Tolerances | None = None, *, scenario: Any = None, params_source: str | None = None,
                diagnose: bool = True, layout: LayoutMap | None = None, jobs: int = 1) -> CheckResult:
    """Walk a trace step by step, recompute every recorded tensor from its recorded inputs, and compare.

    `params`: the parameters in force at step 0 (the params file the run started from); without them the
    checks that need step 0's parameters are skipped with a note. `tolerances`: the comparator's policy
    (memstate.tolerance; default its dtype-aware defaults), resolved per tensor in the recorded dtype and
    widened to each operation's rounding bound (`op_tolerance`, `compare_op`). `scenario`: a
    memstate.runner.scenario.Scenario whose layers, activation, loss reduction and learning rate are the spec the
    trace is checked against; without one, the scenario the header names (when it loads and has the trace's
    layers), else the header's own settings, else what the trace shows. `layout`: a layout map for a foreign
    port's trace (memstate.formats.map; the header's `meta.map` applies without it). `jobs` > 1: ranges of
    steps of a binary trace of at least memstate.check.parallel.MIN_BYTES are checked by that many worker
    processes, with the same result (docs/scale.md). Raises MemstateError for unreadable input (a bad trace
    or params file).
    """
    began = time.perf_counter()
    tolerances = tolerances if tolerances is not None else Tolerances()
    with blas_threads(), open_trace(path, layout) as reader, \
            closing(read_ahead(reader.steps(mapped=True, populate=False), reader.encoding)) as ahead:
        meta = dict(reader.meta)
        st = State(tolerances, meta, diagnose, roots=CheckRoots(meta, diagnose))
        source = "scenario"
        if scenario is None:
            scenario, why = header_scenario(meta)
            source = f"scenario {meta.get('scenario')} (named in the header)"
            if why:
                st.note(why, 0)
        decl = declared(meta, scenario, source)
        start = {k: np.asarray(v) for k, v in params.items()} if params is not None else None
        walk = Walk(st, Spec.from_declared(decl), start, params_source or "params file",
                    len(decl["layers"][0]) - 1 if "layers" in decl else None)
        listed = _parallel_steps(reader, jobs)
        ranges = walk_in_ranges(walk, ahead, listed, path, reader.run_id, jobs) if listed else ()
        for step in ahead:
            walk.step(step.index, step.tensors)
        incomplete = reader.incomplete.index if reader.incomplete is not None else None
        if incomplete is not None:
            st.note("the trace ends with an incomplete step (the run crashed); it was not checked", incomplete)
        early = reader.ended_early
        if early is not None and incomplete is None:
            st.note(f"{early}: the run stopped before the end its header declares",
                    walk.last_step if walk.last_step is not None else 0)
        encoding = reader.encoding
    return replace(_finish(walk, Path(path), encoding, meta, incomplete, began, early), ranges=ranges)


def _parallel_steps(reader: TraceReader, jobs: int) -> list[int]:
    """The steps to check in worker processes ([] to check them here): a binary trace without a layout map,
    big enough to pay for starting the workers."""
    if jobs < 2 or reader.encoding != "binary" or reader.layout is not None:
        return []
    listed = reader.complete_steps()
    return listed if len(listed) > 1 and worth_it(reader.path, listed) else []


def _finish(walk: Walk, path: Path, encoding: str, meta: dict[str, Any], incomplete: int | None,
            began: float, early: EndedEarly | None) -> CheckResult:
    """Freeze the walk into a CheckResult: the learning rate's consistency, the diagnoses, the comparison."""
    st, spec = walk.st, walk.spec
    if st.last_kept is not None and st.last_kept[0] not in {s.step for s in st.full_steps}:
        k, kept = st.last_kept  # a worker of check --jobs returns the last step already compared
        st.full_steps.append(kept if isinstance(kept, StepComparison) else full_step(k, kept))
    st.last_kept = None
    learning_rate = lr_consistency(st, spec.learning_rate, spec.lr_fit, walk.dtype)
    root_causes, extra = st.roots.finish(spec.reduction.value, walk.n_layers,
                                         reference_meta(meta, spec.activation.value, None, None))
    for kwargs in extra:
        st.find(Finding(**kwargs))
    if learning_rate.value is None:
        st.note("learning rate unknown: no step had its parameters in force and a non-zero gradient",
                walk.first_step if walk.first_step is not None else 0)
    diagnoses: tuple[Any, ...] = ()
    if st.diagnose and st.first_context is not None:
        from memstate.diagnose.catalogue import diagnose as run_diagnosers

        diagnoses = tuple(run_diagnosers(st.first_context))
    first_divergence = st.first_divergence
    if first_divergence is not None:
        first_divergence = replace(first_divergence, consequences=tuple(dict.fromkeys(st.consequences)),
                                   divergent_steps=st.failing_steps, last_divergent_step=st.last_failing_step,
                                   diagnoses=diagnoses)
    notes = tuple(note_text(text, steps) for text, steps in st.notes.items())
    notes += tuple(note_text(f"not checked ({why}): {', '.join(names)}", list(steps))
                   for why, (names, steps) in st.skips.items())
    findings = tuple(st.findings.values())
    coverage = _coverage(st, walk.count, walk.first_step)
    comparison = _comparison(walk, path, encoding, meta, incomplete, learning_rate, first_divergence, findings,
                             notes, coverage, early, root_causes)
    return CheckResult(
        path=path, encoding=encoding, meta=meta, n_layers=walk.n_layers, dtype=walk.dtype, steps=walk.count,
        first_step=walk.first_step, last_step=walk.last_step, incomplete_step=incomplete,
        activation=spec.activation, reduction=spec.reduction, learning_rate=learning_rate,
        params_source=walk.p_source if walk.start is not None else "unknown",
        operations=st.operations, invariant_checks=st.invariant_checks, by_name=dict(st.by_name),
        worst=st.worst, first_failure=st.first_failure, first_divergence=first_divergence,
        first_finding=st.first_finding, failures=tuple(st.failures), n_failures=st.n_failures,
        failing_steps=st.failing_steps, findings=findings, diagnoses=diagnoses, notes=notes,
        unchecked=tuple(st.unchecked), tolerances=st.tolerances, comparison=comparison, coverage=coverage,
        lr_fits=spec.lr_fit.per_name(learning_rate.value),
        seconds=time.perf_counter() - began, ended_early=early,
    )


def _coverage(st: State, steps: int, first_step: int | None) -> Coverage:
    """What was verified of what the trace records, and each gap with its reason and what would close it."""
    later = "the trace records every step and every updated parameter (L{i}.W, L{i}.b) in each"
    gaps = [Unverified(name, why, len(ks), min(ks), later if needs == "params" and min(ks) != first_step
                       else NEEDED.get(needs, ""))
            for (name, why), (needs, ks) in st.unverified.items()]
    gaps.sort(key=lambda u: (u.first_step, u.name))
    per_step = next(iter(st.per_step)) if len(st.per_step) == 1 else None
    return Coverage(st.recorded, st.verified, steps, per_step, tuple(gaps))


def _comparison(walk: Walk, path: Path, encoding: str, meta: dict[str, Any], incomplete: int | None,
                learning_rate: Inferred, first_divergence: Any, findings: tuple[Finding, ...],
                notes: tuple[str, ...], coverage: Coverage, early: EndedEarly | None = None,
                root_causes: tuple = ()) -> Comparison:
    """The result in the comparator's terms (side A = the recomputation, side B = the trace)."""
    st, spec, count = walk.st, walk.spec, walk.count
    ok = st.n_failures == 0 and not findings
    ref_meta = reference_meta(meta, spec.activation.value, spec.reduction.value, learning_rate.value)
    return Comparison(
        verdict="agree" if ok else "diverge",
        first_divergence=first_divergence,
        a=TraceInfo(REFERENCE_PATH, "recomputed", ref_meta, count, walk.last_step, None),
        b=TraceInfo(str(path), encoding, meta, count, walk.last_step, incomplete, early),
        oracle=None,
        tolerances=st.tolerances,
        tolerances_used=tuple(ToleranceUse(tol, tuple(names)) for tol, names in st.used.items()),
        steps_compared=count,
        divergent_steps=st.failing_steps,
        steps=tuple(sorted({s.step: s for s in st.full_steps}.values(), key=lambda s: s.step)),
        overview=tuple(st.overview.items),
        series=tuple(TensorSeries(n, tuple(b.items)) for n, b in st.series.items()),
        findings=tuple(_compare_finding(f) for f in findings)
        + tuple(CompareFinding("not-checked", "info", n) for n in notes)
        + tuple(CompareFinding("not-verified", "warning", f"{u.name}: {u.why}", "b", u.name, u.first_step, None,
                               u.steps) for u in coverage.unverified),
        meta_diff=(),
        root_causes=root_causes,
    )


def _compare_finding(f: Finding) -> CompareFinding:
    return CompareFinding(f"{f.kind}:{f.code}" if f.kind != "operation" else f.code, "error", f.message, "b", f.name,
                          f.step, f.last_step if f.last_step is not None else f.step, f.count)


__all__ = ["CheckResult", "OpCheck", "Finding", "Inferred", "NameStats", "INVARIANTS", "check_trace", "compare_op",
           "invariants", "op_tolerance"]

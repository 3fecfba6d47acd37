"""Folding the State of a range of steps, walked by a worker of `check --jobs`, into the main walk's State.

The main process walks the steps in order; a range a worker walked is merged where the walk reaches it, so
that the merged State is the one the serial walk would have at the range's end. One function per
accumulated field, each the serial walk's own rule applied to a whole range at once:

- counts add up; a per-name statistic keeps the larger worst error and the step that first reached it;
- dicts keyed by first occurrence (findings, notes, skips, gaps, names) keep the earlier range's order and
  append the keys the later range adds, with their steps and counts;
- a series is replayed step by step into the main walk's downsampled buckets: the worker keeps one bucket
  per step (UNBOUNDED), so that the main walk's downsampling happens exactly as in a serial walk.

`redo_reason` and `failures_reason` decide when a range cannot be merged exactly (the settings changed, a
learning rate was still to be fitted, it holds the first failing operation or a cause still to be
diagnosed): the main process then walks that range itself (docs/scale.md).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import Any, Iterable

from memstate.check import recompute as rc
from memstate.check.infer import Spec
from memstate.check.result import MAX_FAILURES, Finding, NameStats, OpCheck
from memstate.check.state import State
from memstate.comparator.compare import _Buckets
from memstate.comparator.tolerance import Tolerance
from memstate.diagnose.roots import MAX_DIAGNOSED, RootCauses

UNBOUNDED = sys.maxsize  # a worker's bucket limit: one bucket per step, never downsampled


class UnboundedSeries(dict):
    """A worker State's `series`: each name's buckets are created UNBOUNDED (the walk calls setdefault)."""

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            self[key] = _Buckets(UNBOUNDED)
        return self[key]


def unbounded_state(st: State) -> State:
    """`st` with its overview and series kept per step, for a worker (they are replayed by `replay`)."""
    st.overview = _Buckets(UNBOUNDED)
    st.series = UnboundedSeries()
    return st


def name_stats(a: NameStats, b: NameStats) -> NameStats:
    """A name's statistics over two consecutive ranges (b after a)."""
    later = a.worst_step is None or b.worst_ratio > a.worst_ratio
    return NameStats(a.checked + b.checked, a.failed + b.failed, a.skipped + b.skipped,
                     max(a.worst_ratio, b.worst_ratio), max(a.worst_rel, b.worst_rel),
                     b.worst_step if later else a.worst_step)


def by_name(a: dict[str, NameStats], b: dict[str, NameStats]) -> dict[str, NameStats]:
    """Per-name statistics over two consecutive ranges, in order of first appearance."""
    out = dict(a)
    for name, s in b.items():
        out[name] = name_stats(out.get(name, NameStats()), s)
    return out


def worst(a: OpCheck | None, b: OpCheck | None) -> OpCheck | None:
    """The worst operation: the later range's only when strictly worse (the serial walk keeps the first)."""
    if b is not None and (a is None or b.ratio > a.ratio):
        return b
    return a


def finding(a: Finding, b: Finding) -> Finding:
    """One finding (same code and name) first seen in range a and seen again in range b."""
    return replace(a, count=a.count + b.count, last_step=b.step if b.last_step is None else b.last_step)


def findings(a: dict[tuple, Finding], b: dict[tuple, Finding]) -> dict[tuple, Finding]:
    """The findings of two consecutive ranges, counted, by (code, name)."""
    out = dict(a)
    for key, f in b.items():
        old = out.get(key)
        out[key] = f if old is None else finding(old, f)
    return out


def steps_by_key(a: dict[Any, list[int]], b: dict[Any, list[int]]) -> dict[Any, list[int]]:
    """Notes (text -> steps): the steps of each, earlier range first."""
    out = {key: list(steps) for key, steps in a.items()}
    for key, steps in b.items():
        out.setdefault(key, []).extend(steps)
    return out


def skips(a: dict[str, tuple[dict, dict]], b: dict[str, tuple[dict, dict]]) -> dict[str, tuple[dict, dict]]:
    """Not checked (why -> (names, steps)): names and steps in order of first appearance."""
    out = {why: (dict(names), dict(steps)) for why, (names, steps) in a.items()}
    for why, (names, steps) in b.items():
        have_names, have_steps = out.setdefault(why, ({}, {}))
        have_names.update(names)
        have_steps.update(steps)
    return out


def unverified(a: dict[tuple[str, str], tuple[str, list[int]]], b: dict[tuple[str, str], tuple[str, list[int]]]
               ) -> dict[tuple[str, str], tuple[str, list[int]]]:
    """Coverage gaps ((name, why) -> (what would close it, steps)): the first range's `needs`, every step."""
    out = {key: (needs, list(steps)) for key, (needs, steps) in a.items()}
    for key, (needs, steps) in b.items():
        out.setdefault(key, (needs, []))[1].extend(steps)
    return out


def used(a: dict[Tolerance, list[str]], b: dict[Tolerance, list[str]]) -> dict[Tolerance, list[str]]:
    """Each tolerance and the names judged by it, each name once, in order of first use."""
    out = {tol: list(names) for tol, names in a.items()}
    for tol, names in b.items():
        have = out.setdefault(tol, [])
        have.extend(n for n in names if n not in have)
    return out


def replay(target: _Buckets, per_step: _Buckets) -> _Buckets:
    """`per_step`'s steps (one bucket each) added to `target` in order, as the serial walk adds them."""
    for b in per_step.items:
        target.add(b.first_step, b.max_abs_error, b.max_rel_error, b.worst_name, bool(b.failed))
    return target


def lr_fit(a: rc.LrFit, b: rc.LrFit) -> rc.LrFit:
    """The learning-rate fits of two consecutive ranges (the first MAX_FITS kept, all counted)."""
    return rc.LrFit(a.fits + b.fits[:max(0, rc.MAX_FITS - len(a.fits))], a.count + b.count,
                    min(a.lo, b.lo), max(a.hi, b.hi))


def absorb(st: State, part: State) -> None:
    """Merge `part` (a range walked by a worker, which `redo_reason` passed) into `st`, the walk up to it."""
    st.operations += part.operations
    st.invariant_checks += part.invariant_checks
    st.recorded += part.recorded
    st.verified += part.verified
    st.per_step |= part.per_step
    st.by_name = by_name(st.by_name, part.by_name)
    st.worst = worst(st.worst, part.worst)
    st.findings = findings(st.findings, part.findings)
    st.first_finding = st.first_finding if st.first_finding is not None else part.first_finding
    st.notes = steps_by_key(st.notes, part.notes)
    st.skips = skips(st.skips, part.skips)
    st.unverified = unverified(st.unverified, part.unverified)
    st.unchecked = {**st.unchecked, **part.unchecked}
    st.used = used(st.used, part.used)
    st.history = st.history + part.history
    st.full_steps = st.full_steps + part.full_steps  # none: only the first step and a failing one are kept
    st.n_failures += part.n_failures
    st.failing_steps += part.failing_steps
    st.failures = failure_list(st.failures, part.failures)
    st.last_failing_step = part.last_failing_step if part.last_failing_step is not None else st.last_failing_step
    replay(st.overview, part.overview)
    for name, per_step in part.series.items():
        replay(st.series.setdefault(name, _Buckets()), per_step)


def decisions(spec: Spec) -> tuple:
    """What of the settings steers the walk (the learning-rate fits aside): equal before and after a range
    when nothing in it changed them (each only ever goes from unknown to known)."""
    return spec.activation, spec.reduction, spec.learning_rate, spec.act_seen, spec.red_seen, spec.dz_factor


def settled(spec: Spec) -> bool:
    """Whether the walk has learnt every setting it can learn (nothing later changes them)."""
    return spec.act_seen and spec.red_seen and spec.learning_rate.value is not None


def redo_reason(settled: tuple, now: tuple, fitted_unknown_lr: bool) -> str:
    """Why a range a worker is walking cannot be merged ("" when it can, as far as the worker can tell):
    settings that changed in it (the later ranges assumed the old ones), or fits of a learning rate not yet
    known (adopting one depends on every earlier fit)."""
    if now != settled:
        return "the settings changed in it"
    if fitted_unknown_lr:
        return "it fitted a learning rate that was not yet known"
    return ""


def failures_reason(n_failures: int, first_known: bool, events: Iterable[tuple[int, str]],
                    causes: RootCauses | None) -> str:
    """Why a range with failing operations cannot be merged ("" when it can). A worker walks its range as if
    an earlier step had failed (no first divergence of its own, nothing diagnosed); that is the serial walk
    only when the main walk has its first failure already (`first_known`) and, when it diagnoses the root
    causes (`causes`: the main walk's, None when it does not), its first cause, and every cause the range
    adds (`events`: (step, name)) is of a name already diagnosed MAX_DIAGNOSED times, which the serial walk
    only counts."""
    if n_failures == 0:
        return ""
    if not first_known:
        return "the first failing operation is in it"
    if causes is None:
        return ""
    for k, name in events:
        if causes.first is None or causes.diagnosed.get(name, 0) < MAX_DIAGNOSED or name not in causes.last_code:
            return f"step {k}: {name} failed, a cause still to be diagnosed"
    return ""


def failure_list(a: list[OpCheck], b: list[OpCheck]) -> list[OpCheck]:
    """The failing operations kept in full: the first MAX_FAILURES of both ranges."""
    return (a + b)[:MAX_FAILURES]


__all__ = ["UNBOUNDED", "absorb", "decisions", "failures_reason", "redo_reason", "replay", "settled", "unbounded_state"]

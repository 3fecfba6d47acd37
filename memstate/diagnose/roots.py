"""Every independent cause, not only the first: the root causes of a `diff` or a `check`.

A failing tensor is a *root cause* when it fails on its own: in `diff`, every tensor recorded before it in
the step agrees and so do the parameters in force (the previous step's updated parameters), or a diagnoser
reproduces it at 0.95 from that side's own recorded inputs although they disagree (a second bug behind a
first, e.g. a log that swaps zeros behind 8-decimal rounding; such a tensor is probed when its error jumps
to JUMP times its inputs' worst or its own previous step's, or nan/inf appear in it from finite inputs); in `check`, every failing operation is
recomputed from its own recorded inputs, so each one is, unless non-finite values merely flow into it
from an earlier tensor of its step. Everything else is a consequence of an earlier cause.

Root causes are grouped by (tensor name, diagnosis code) with a count of occurrences; the first item is the
first divergence. The cost is bounded: at most `MAX_DIAGNOSED` occurrences of each name are diagnosed
(later ones count under the name's last code) and at most `MAX_PROBED` of each name whose inputs disagree.
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from memstate.diagnose.context import Diagnosis, DivergenceContext

MAX_DIAGNOSED = 3  # occurrences diagnosed per name whose inputs agree
MAX_PROBED = 3  # occurrences diagnosed per name whose inputs disagree (looking for a second, hidden bug)
JUMP = 10.0  # a tensor whose error is this many times its inputs' worst is probed for a cause of its own
PROVEN = 0.95  # the confidence of a recomputation from the side's own inputs
_PARAM = re.compile(r"^L\d+\.(W|b)$")


@dataclass(frozen=True)
class RootCause:
    """One independent cause: where it first shows, its diagnosis, and how many times it showed."""

    step: int
    name: str
    code: str
    confidence: float
    count: int = 1


class RootCauses:
    """Groups diagnosed failures by (name, code), counting; bounds how many are diagnosed per name."""

    def __init__(self) -> None:
        self.groups: dict[tuple[str, str], RootCause] = {}
        self.diagnosed: dict[str, int] = {}
        self.probed: dict[str, int] = {}
        self.last_code: dict[str, str] = {}
        self.first: tuple[str, str] | None = None

    def add(self, step: int, name: str, diagnoses: tuple | list, *, first: bool = False) -> None:
        top: Diagnosis | None = diagnoses[0] if diagnoses else None
        code, conf = (top.code, top.confidence) if top is not None else ("unknown", 0.0)
        key = (name, code)
        old = self.groups.get(key)
        self.groups[key] = RootCause(step, name, code, conf) if old is None else \
            RootCause(old.step, name, code, max(old.confidence, conf), old.count + 1)
        self.last_code[name] = code
        if first and self.first is None:
            self.first = key

    def agreeing(self, step: int, name: str, context: Callable[[], DivergenceContext]) -> None:
        """A failure whose inputs agree: a root cause; diagnosed for its first few occurrences."""
        n = self.diagnosed.get(name, 0)
        if n >= MAX_DIAGNOSED and name in self.last_code:
            key = (name, self.last_code[name])
            old = self.groups[key]
            self.groups[key] = RootCause(old.step, name, old.code, old.confidence, old.count + 1)
            return
        self.diagnosed[name] = n + 1
        self.add(step, name, _diagnose(context()))

    def probe(self, step: int, name: str, context: Callable[[], DivergenceContext]) -> None:
        """A failure whose inputs disagree: a root cause only when a diagnoser proves it from that side alone."""
        n = self.probed.get(name, 0)
        if n >= MAX_PROBED:
            return
        self.probed[name] = n + 1
        found = _diagnose(context())
        if found and found[0].confidence >= PROVEN and found[0].code not in ("unknown", "drift", "nan-origin"):
            self.add(step, name, found)

    def result(self) -> tuple[RootCause, ...]:
        """The groups, the first divergence first, then by first step (stable)."""
        items = sorted(self.groups.items(), key=lambda kv: (kv[0] != self.first, kv[1].step))
        return tuple(v for _, v in items)


def _diagnose(ctx: DivergenceContext) -> list[Diagnosis]:
    from memstate.diagnose.catalogue import diagnose

    return diagnose(ctx)


def _finite_rel(t: Any) -> float:
    """A TensorComparison's max rel error, as a finite number (inf for a shape mismatch or a nan).

    math.isfinite, not np.isfinite: this runs for every tensor of every step, and numpy's costs a
    microsecond on a Python float."""
    e = float(t.max_rel_error)
    return e if math.isfinite(e) else math.inf


class DiffRoots:
    """The diff side: fed each step both traces have (memstate.comparator.compare), it keeps the two previous
    steps of each side (for the diagnosers that look across steps) and collects the root causes."""

    def __init__(self) -> None:
        self.causes = RootCauses()
        self.before: dict[str, deque] = {"a": deque(maxlen=2), "b": deque(maxlen=2)}
        self.params_err = 0.0  # worst rel error of the previous step's updated parameters
        self.params_ok = True
        self.last_err: dict[str, float] = {}  # each name's rel error at the previous step

    def extra(self, k: int, sa: Any, sb: Any) -> dict:
        """The cross-step fields of a DivergenceContext for step k."""
        return {"step_a": dict(sa.tensors), "step_b": dict(sb.tensors),
                "before_a": self._before("a", k), "before_b": self._before("b", k)}

    def _before(self, side: str, k: int) -> tuple:
        out = []
        for i, (index, tensors) in enumerate(reversed(self.before[side])):
            if index != k - 1 - i:
                break
            out.append(tensors)
        return tuple(out)

    def step(self, result: Any, sa: Any, sb: Any, first: Any, make_context: Callable[..., DivergenceContext]) -> None:
        """Look at one compared step; `first` is the first divergence when this step holds it."""
        k = result.step
        if first is not None and first.step == k and first.name is not None:
            self.causes.add(k, first.name, tuple(first.diagnoses), first=True)
        worst_before = self.params_err if not self.params_ok else 0.0
        agree = self.params_ok
        names_b = list(sb.tensors)
        for t in result.tensors:
            if not t.passed and not (first is not None and (first.step, first.name) == (k, t.name)) \
                    and t.metrics is not None:
                def context(t: Any = t, agree: bool = agree) -> DivergenceContext:
                    inputs_a = {n: sa.tensors[n] for n in list(sa.tensors)[:list(sa.tensors).index(t.name)]}
                    inputs_b = {n: sb.tensors[n] for n in names_b[:names_b.index(t.name)]}
                    return make_context(step=k, name=t.name, a=sa.tensors[t.name], b=sb.tensors[t.name],
                                        inputs_a=inputs_a, inputs_b=inputs_b, inputs_agree=agree,
                                        **self.extra(k, sa, sb))
                own = self.last_err.get(t.name, 0.0)
                if agree:
                    self.causes.agreeing(k, t.name, context)
                elif _finite_rel(t) > JUMP * max(worst_before, 1e-12) or _new_nonfinite(t, worst_before) \
                        or (own > 0 and _finite_rel(t) > JUMP * own):
                    self.causes.probe(k, t.name, context)
            if not t.passed:
                agree = False
            worst_before = max(worst_before, _finite_rel(t) if not t.within_tolerance else 0.0)
        self.last_err = {t.name: (_finite_rel(t) if not t.within_tolerance else 0.0) for t in result.tensors}
        params = [t for t in result.tensors if _PARAM.match(t.name)]
        # without recorded parameters, any failing step is taken to have moved them
        self.params_ok = all(t.passed for t in params) if params else (self.params_ok and result.passed)
        self.params_err = max((_finite_rel(t) for t in params), default=self.params_err)
        for side, s in (("a", sa), ("b", sb)):
            self.before[side].append((k, dict(s.tensors)))

    def result(self) -> tuple[RootCause, ...]:
        return self.causes.result()


def _new_nonfinite(t: Any, worst_before: float) -> bool:
    """nan/inf on one side only, while everything before it was finite-equal (worst error finite)."""
    return bool(t.metrics is not None and t.metrics.nonfinite_mismatch and math.isfinite(worst_before))


__all__ = ["DiffRoots", "MAX_DIAGNOSED", "MAX_PROBED", "RootCause", "RootCauses"]

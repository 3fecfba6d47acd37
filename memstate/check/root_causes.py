"""`memstate check`'s every independent cause: each failing operation diagnosed from its own recorded
inputs, grouped by tensor name and code (memstate.diagnose.roots), with what the diagnosers that look
across steps need (the previous steps' recorded tensors and the parameters in force).

A failing operation whose non-finite values merely flow in from an earlier tensor of its step is a
consequence, not a root cause. When the loss reduction could not be named, the dz and loss checks were
skipped: the output dz (or the loss) is then diagnosed against the correct value under each reduction,
and a loss averaged over the classes (dz = (probs - y)/(B·C)) or one that swaps log(0) for a constant is
reported as an inference finding and a root cause.
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace
from typing import Any, Mapping

import numpy as np

from memstate.diagnose.context import DivergenceContext
from memstate.diagnose.roots import RootCause, RootCauses



class CheckRoots:
    """Fed by the checker's walk: `step` at the start of each step, `failed` for each failing operation,
    `enrich` for the first failure's context, `finish` at the end."""

    def __init__(self, meta: Mapping[str, Any], diagnose: bool = True):
        self.meta = dict(meta)
        self.on = diagnose
        self.causes = RootCauses()
        self.before: deque = deque(maxlen=2)  # (step, tensors) of the previous steps
        self.k: int | None = None
        self.t: Mapping[str, np.ndarray] = {}
        self.in_force: Mapping[str, np.ndarray] | None = None
        self.in_force_from = ""
        self.first = True
        self.failed_here: set[str] = set()
        self.dz_steps: list[tuple[int, Mapping[str, np.ndarray]]] = []  # the first steps with an output dz

    def step(self, k: int, t: Mapping[str, np.ndarray], in_force: Mapping[str, np.ndarray] | None,
             in_force_from: str) -> None:
        if self.k is not None:
            self.before.append((self.k, self.t))
        self.k, self.t, self.in_force, self.in_force_from = k, t, in_force, in_force_from
        self.failed_here = set()
        if len(self.dz_steps) < 2 and "probs" in t and "y" in t:
            self.dz_steps.append((k, t))

    def _before(self) -> tuple:
        out: list[dict] = []
        if self.k is None:
            return ()
        for i, (index, tensors) in enumerate(reversed(self.before)):
            if index != self.k - 1 - i:
                break
            out.append(dict(tensors))
        return tuple(out)

    def enrich(self, ctx: Any) -> Any:
        """The checker's context of a failing operation with the previous steps and the parameters in force."""
        if ctx is None:
            return None
        force = dict(self.in_force) if self.in_force is not None else None
        before = self._before()
        src = self.in_force_from
        if src and not src.startswith(("step ", "params file")):
            src = f"params file {src}"  # the parameters the run started from (--params)
        return replace(ctx, step_b=dict(self.t), before_a=before, before_b=before, in_force_a=force,
                       in_force_b=force, in_force_from=src)

    def failed(self, k: int, name: str, pos: int, context: Any) -> None:
        """A failing operation of the current step; `context()` builds the checker's DivergenceContext."""
        if not self.on or self.consequence(name, pos):
            return
        self.failed_here.add(name)
        first, self.first = self.first, False
        if first:
            self.causes.diagnosed[name] = self.causes.diagnosed.get(name, 0) + 1
            from memstate.diagnose.catalogue import diagnose

            self.causes.add(k, name, diagnose(self.enrich(context())), first=True)
        else:
            self.causes.agreeing(k, name, lambda: self.enrich(context()))

    def consequence(self, name: str, pos: int) -> bool:
        """Whether the current step's failing `name` (at `pos`) is a consequence of an earlier tensor of the
        step, not a cause: nan/inf that flowed in, or the loss of the recorded (wrong) probs."""
        value = self.t[name]
        earlier = list(self.t)[:pos]
        if not np.all(np.isfinite(np.asarray(value, dtype=np.float64))) and any(
                not np.all(np.isfinite(np.asarray(self.t[n], dtype=np.float64))) for n in earlier):
            return True
        return name == "loss" and "probs" in self.failed_here and _loss_of_probs(self.t, value)

    def finish(self, reduction: Any, n_layers: int | None, reference_meta: Mapping[str, Any]
               ) -> tuple[tuple[RootCause, ...], list[dict]]:
        """(root causes, extra findings as Finding keyword arguments)."""
        extra: list[dict] = []
        if self.on and reduction is None and n_layers:
            extra += self._over_classes(n_layers, reference_meta)
        return self.causes.result(), extra

    def _over_classes(self, n: int, reference_meta: Mapping[str, Any]) -> list[dict]:
        """When the reduction could not be named, the output dz (or, without dz, the loss) redone with each
        reduction and diagnosed: a loss averaged over the classes, or a loss that swaps log(0), is why."""
        from memstate.diagnose.catalogue import diagnose

        out: list[dict] = []
        for k, t in self.dz_steps:
            for name, ctx in _reduction_contexts(k, t, n, reference_meta, self.meta):
                found = diagnose(ctx)
                if found and found[0].code in UNNAMED_REDUCTION_CODES and found[0].confidence >= 0.95:
                    self.causes.add(k, name, found, first=not self.causes.groups)
                    out.append({"kind": "inference", "code": found[0].code, "step": k, "name": name,
                                "message": found[0].explanation})
                    return out
        return out


#: what can make the loss reduction unnameable (dz or the loss not 1/B or 1 times the correct one)
UNNAMED_REDUCTION_CODES = ("loss-mean-over-classes", "log-zero-replaced", "log-masked", "log-epsilon", "output-sigmoid")


def _reduction_contexts(k: int, t: Mapping[str, np.ndarray], n: int, reference_meta: Mapping[str, Any],
                        meta: Mapping[str, Any]):
    """(name, DivergenceContext) for the output dz, else the loss, against the correct value under each
    reduction (mean first)."""
    from memstate.check.recompute import ref

    p, y = (np.asarray(t[x], dtype=np.float64) for x in ("probs", "y"))
    z = t.get(f"L{n}.z")
    if p.shape != y.shape or p.ndim != 2:
        return
    B = p.shape[0]
    name = f"L{n}.dz" if f"L{n}.dz" in t else "loss" if "loss" in t else None
    if name is None:
        return
    if name == "loss":
        if z is None or np.shape(z) != y.shape:
            return
        with np.errstate(all="ignore"):
            base = np.asarray(-np.sum(y * ref.log_softmax(np.asarray(z, dtype=np.float64))))
    else:
        base = p - y
    before = {m: t[m] for m in list(t)[:list(t).index(name)]}
    for R in (B, 1):
        yield name, DivergenceContext(step=k, name=name, a=base / R, b=t[name], inputs_a=before, inputs_b=before,
                                      history=(), inputs_agree=True, meta_a=dict(reference_meta), meta_b=dict(meta))


def _loss_of_probs(t: Mapping[str, np.ndarray], loss: np.ndarray) -> bool:
    """Whether the recorded loss is the cross-entropy -Σ y·log p (mean or sum) of the recorded probs."""
    p, y = t.get("probs"), t.get("y")
    if p is None or y is None or np.shape(p) != np.shape(y) or np.ndim(p) != 2:
        return False
    p, y = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.float64)
    with np.errstate(all="ignore"):
        total = float(-np.sum(np.where(y != 0, y * np.log(np.where(y != 0, p, 1.0)), 0.0)))
    value = float(np.asarray(loss, dtype=np.float64).reshape(-1)[0])
    for R in (len(p), 1):
        if total / R == value or abs(total / R - value) <= 1e-9 * abs(value):
            return True
    return False


__all__ = ["CheckRoots"]

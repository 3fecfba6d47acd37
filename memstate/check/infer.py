"""What a trace does not say, and what it shows: the settings `memstate check` checks against.

The spec comes from a scenario (given, or named by the header), else the header's own settings; each
setting is also inferred from the tensors (the activation from (z, a) pairs, the loss reduction from the
output dz or the loss, the learning rate fitted to the updates) and reported with its evidence, agreeing
or not. The inference maths is in memstate.check.recompute; this module decides and records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import numpy as np

from memstate.check import recompute as rc
from memstate.check.result import Finding, Inferred
from memstate.check.state import State
from memstate.errors import MemstateError
from memstate.names import param_names


def declared(meta: Mapping[str, Any], scenario: Any, source: str) -> dict[str, tuple[Any, str]]:
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


def setting(declared_value: tuple[Any, str] | None) -> Inferred:
    """A declared setting (value, source), or unknown."""
    return Inferred(declared_value[0], declared_value[1]) if declared_value else Inferred(None, "unknown")


def with_inference(s: Inferred, inferred: Any, evidence: str) -> Inferred:
    """A setting updated with what the trace shows: taken as the value when nothing declared one."""
    if s.value is None:
        return Inferred(inferred, "inferred" if inferred is not None else "unknown", inferred, evidence)
    return replace(s, inferred=inferred, evidence=evidence, consistent=inferred in (None, s.value))


def activation_evidence(inferred: str | None, errors: dict[str, float], k: int) -> str:
    """What the activation inference saw at step k, for the report."""
    listing = ", ".join(f"{a} {e:.2g}" for a, e in sorted(errors.items(), key=lambda kv: kv[1]))
    if inferred == "other":
        return f"step {k}: L{{i}}.a is not relu, shifted-relu or sigmoid of L{{i}}.z (max rel errors: {listing})"
    return f"step {k}: L{{i}}.a = {inferred}(L{{i}}.z) (max rel errors: {listing})"


@dataclass
class Spec:
    """The settings as the walk learns them: declared values, updated from the first step that shows each."""

    activation: Inferred
    reduction: Inferred
    learning_rate: Inferred
    lr_fit: rc.LrFit = field(default_factory=rc.LrFit)
    act_seen: bool = False
    red_seen: bool = False

    @classmethod
    def from_declared(cls, decl: Mapping[str, tuple[Any, str]]) -> "Spec":
        activation = setting(decl.get("activation"))
        if activation.value is not None and activation.value not in rc.ACTIVATIONS:
            activation = replace(activation, value="other",
                                 evidence=f"the {activation.source} says {activation.value!r}, which check cannot "
                                          f"recompute (it knows {', '.join(rc.ACTIVATIONS)})")
        return cls(activation, setting(decl.get("reduction")), setting(decl.get("lr")))

    def observe(self, k: int, t: Mapping[str, np.ndarray], n_layers: int, dtype: str | None,
                in_force: Mapping[str, np.ndarray] | None) -> None:
        """Infer what step k shows that no earlier step did, and fit the learning rate to its updates."""
        if not self.act_seen:
            inferred, errors = rc.infer_activation(t, n_layers, np.dtype(dtype or "float64"))
            if inferred is not None or n_layers == 1:
                self.act_seen = True
                self.activation = with_inference(self.activation, inferred,
                                                 activation_evidence(inferred, errors, k) if inferred is not None
                                                 else "one layer: no hidden activation")
        if not self.red_seen and (f"L{n_layers}.dz" in t or "loss" in t):
            self.red_seen = True
            inferred, how = rc.infer_reduction(t, n_layers)
            self.reduction = with_inference(self.reduction, inferred, f"step {k}: {how}")
        if in_force is not None:
            for pname in param_names(n_layers):
                grad = pname.replace(".", ".d")
                if pname in t and grad in t:
                    self.lr_fit.add(k, pname, in_force[pname], t[pname], t[grad])
        if self.learning_rate.value is None and self.lr_fit.lr is not None:
            self.learning_rate = Inferred(rc.nice_lr(self.lr_fit.lr, dtype), "fitted")

    def settings(self, n_layers: int) -> rc.Settings:
        return rc.Settings(n_layers, self.activation.value, self.reduction.value, self.learning_rate.value)


def lr_consistency(st: State, lr: Inferred, fit: rc.LrFit, dtype: str | None) -> Inferred:
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

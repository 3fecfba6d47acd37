"""What a trace does not say, and what it shows: the settings `memstate check` checks against.

The spec comes from a scenario (given, or named by the header), else the header's own settings; each
setting is also inferred from the tensors (the activation from (z, a) pairs, the loss reduction from the
output dz or the loss, the learning rate fitted to the updates) and reported with its evidence, agreeing
or not. The inference maths is in memstate.check.recompute; this module decides and records.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import numpy as np

from memstate.check import recompute as rc
from memstate.check.result import Finding, Inferred
from memstate.check.opcompare import compare_op, op_tolerance
from memstate.check.plan import Derivation, Plan, Unreachable, plan_step, reach
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
    meta = {**meta, **header_settings(meta)}
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
    own = header_settings(meta)
    differ = [k for k in ("layers", "activation", "learning_rate") if k in own and own[k] != s.settings()[k]]
    if differ:
        return None, (f"the header names scenario {name!r}, whose {differ[0]} ({s.settings()[differ[0]]!r}) is not "
                      f"the run's ({own[differ[0]]!r}, meta.settings): using the header's own settings")
    return s, None


def header_settings(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The training settings a header's `meta.settings` states (written by `memstate run` and in batches files,
    docs/format.md): the well-formed ones among layers, activation, loss_reduction, learning_rate."""
    given = meta.get("settings")
    if not isinstance(given, Mapping):
        return {}
    out = {k: given[k] for k in ("activation", "loss_reduction") if isinstance(given.get(k), str)}
    layers = given.get("layers")
    if isinstance(layers, list) and len(layers) >= 2 and all(type(v) is int and v > 0 for v in layers):
        out["layers"] = list(layers)
    lr = given.get("learning_rate")
    if isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr):
        out["learning_rate"] = lr
    return out


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
    dz_factor: float | None = None  # c in L{n}.dz = c * (probs - y) when the reduction has no name

    @classmethod
    def from_declared(cls, decl: Mapping[str, tuple[Any, str]]) -> "Spec":
        activation = setting(decl.get("activation"))
        if activation.value is not None and activation.value not in rc.ACTIVATIONS:
            activation = replace(activation, value="other",
                                 evidence=f"the {activation.source} says {activation.value!r}, which check cannot "
                                          f"recompute (it knows {', '.join(rc.ACTIVATIONS)})")
        return cls(activation, setting(decl.get("reduction")), setting(decl.get("lr")))

    def observe(self, k: int, t: Mapping[str, np.ndarray], n_layers: int, dtype: str | None,
                in_force: Mapping[str, np.ndarray] | None = None) -> None:
        """Infer the activation and the loss reduction from the first step that shows each."""
        if not self.act_seen:
            inferred, errors = rc.infer_activation(_with_logits(t, n_layers, in_force), n_layers,
                                                   np.dtype(dtype or "float64"))
            if inferred is not None or n_layers == 1:
                self.act_seen = True
                self.activation = with_inference(self.activation, inferred,
                                                 activation_evidence(inferred, errors, k) if inferred is not None
                                                 else "one layer: no hidden activation")
        if self.red_seen:
            return
        backward = [n for n in t if n == "loss" or BACKWARD.match(n)]
        if backward:
            a_prev = "x" if n_layers == 1 else f"L{n_layers - 1}.a"
            view = t if "probs" in t and a_prev in t else \
                _derived(t, ["probs", a_prev], rc.Settings(n_layers, self.activation.value), in_force)
            inferred, how, factor = rc.infer_reduction(view, n_layers)
            if inferred is None and factor is None:
                inferred, how = _backward_vote(t, backward, n_layers, self.activation.value, in_force, how)
            if inferred is None and factor is None and f"L{n_layers}.dz" not in t and "loss" not in t:
                return  # gradients without probs - y to compare with: a later step may show it
            self.red_seen = True
            self.reduction = with_inference(self.reduction, inferred, f"step {k}: {how}")
            if self.reduction.value is None and factor is not None:
                self.dz_factor = factor
                self.reduction = replace(self.reduction, evidence=self.reduction.evidence + (
                    f"; L{n_layers}.dz is checked as the proportionality dz = c * (probs - y), c = {factor:.6g}"))

    def settings(self, n_layers: int) -> rc.Settings:
        return rc.Settings(n_layers, self.activation.value, self.reduction.value, self.learning_rate.value,
                           self.dz_factor)

    def fit_step(self, k: int, t: Mapping[str, np.ndarray], n_layers: int, in_force: Mapping[str, np.ndarray],
                 dtype: str | None, tolerances: Any = None) -> Derivation | None:
        """Fit the learning rate to step k's recorded updates, with each gradient as recorded or, when it is
        not, derived from the nearest recorded tensors (then returned, to be reused by the step's checks).
        Settings the derivation needs and nothing showed (an activation, mean or sum) are chosen here: the
        candidate under which the most per-tensor fits agree."""
        updates = [n for n in param_names(n_layers) if n in t]
        if all(n.replace(".", ".d") in t for n in updates):
            for n in updates:
                self.lr_fit.add(k, n, in_force[n], t[n], t[n.replace(".", ".d")])
            self._adopt_lr(dtype)
            return None
        tried = [_try_settings(s, k, t, updates, in_force) for s in self._candidates(n_layers)]
        if len(tried) > 1 and tolerances is not None:  # the other recorded tensors break ties (mean vs sum)
            for c in tried:
                c.others = _others_passing(c, t, n_layers, tolerances)
        best = max(tried, key=lambda c: self._score(c))
        if len(tried) > 1:
            self._adopt_search(best, tried, k)
        for f in best.fits:
            self.lr_fit.add(k, f.name, in_force[f.name], t[f.name], best.grads[f.name])
        self._adopt_lr(dtype)
        return best.derivation

    def _adopt_lr(self, dtype: str | None) -> None:
        if self.learning_rate.value is None and self.lr_fit.lr is not None:
            self.learning_rate = Inferred(rc.nice_lr(self.lr_fit.lr, dtype), "fitted")

    def _candidates(self, n_layers: int) -> list[rc.Settings]:
        """The settings to try: each unknown activation (relu, shifted-relu, sigmoid) and reduction (mean, sum)."""
        acts = list(rc.ACTIVATIONS) if self.activation.value is None and n_layers > 1 else [self.activation.value]
        reds = ["mean", "sum"] if self.reduction.value is None and self.dz_factor is None else \
            [self.reduction.value]
        return [rc.Settings(n_layers, a, r, None, self.dz_factor) for a in acts for r in reds]

    def _score(self, c: "_Candidate") -> tuple[int, int, int, float]:
        """More agreeing fits first; then agreement with a declared learning rate; then more of the other
        recorded tensors checking (the loss or a gradient tells mean from sum); then a tighter group."""
        lr, group = rc.consensus(c.fits)
        declared_lr = self.learning_rate.value
        agrees = int(lr is not None and declared_lr is not None
                     and abs(lr - declared_lr) <= 1e-6 * abs(declared_lr))
        spread = (max(f.lr for f in group) - min(f.lr for f in group)) / abs(lr) if group and lr else np.inf
        return len(group), agrees, c.others, -spread

    def _adopt_search(self, best: "_Candidate", tried: list["_Candidate"], k: int) -> None:
        """Take the settings the search chose, with the evidence of every candidate."""
        listing = "; ".join(f"{c.label}: {len(rc.consensus(c.fits)[1])} of {len(c.fits)} updates agree"
                            for c in tried)
        s = best.settings
        if self.activation.value is None and s.activation is not None:
            self.act_seen = True
            self.activation = Inferred(s.activation, "inferred", s.activation,
                                       f"step {k}: the updates, derived through each activation ({listing})")
        if self.reduction.value is None and s.reduction is not None:
            self.red_seen = True
            same = [c for c in tried if c.settings.activation == s.activation and c.settings.reduction != s.reduction]
            tie = bool(same) and self._score(same[0])[:3] == self._score(best)[:3]
            why = (" (mean and sum are told apart only by a declared learning rate: sum with lr / B fits as well)"
                   if tie else "")
            self.reduction = Inferred(s.reduction, "inferred", s.reduction,
                                      f"step {k}: the updates, derived with each reduction{why}")


BACKWARD = re.compile(r"^L\d+\.(dz|dW|db|da)$")
FORWARD = re.compile(r"^(x|y|probs|L\d+\.(z|a))$")


def _backward_vote(t: Mapping[str, np.ndarray], backward: list[str], n_layers: int, activation: str | None,
                   in_force: Mapping[str, np.ndarray] | None, how: str) -> tuple[str | None, str]:
    """The reduction from any recorded gradient: every backward tensor is linear in the output layer's dz,
    so each recorded one, against the same tensor derived from the recorded forward pass with a summed loss,
    gives c (1/B: mean, 1: sum). The gradients vote; one wrong gradient cannot decide alone."""
    forward = {n: v for n, v in t.items() if FORWARD.match(n)}
    settings = rc.Settings(n_layers, activation, "sum")
    view = _derived(forward, [n for n in backward if n != "loss"], settings, in_force)
    if view is forward:
        return None, how
    batch = next((v.shape[0] for n, v in forward.items() if n in ("x", "y") and v.ndim == 2), 1)
    ratios = [(n, r) for n in backward if n in view and n not in forward
              and (r := rc.ratio_of(t[n], np.asarray(view[n]))) is not None]
    if not ratios:
        return None, how
    red, text, _ = rc.vote(ratios, batch)
    return red, text.replace("(probs - y)", "its value derived with a summed loss")


def _with_logits(t: Mapping[str, np.ndarray], n_layers: int, in_force: Mapping[str, np.ndarray] | None
                 ) -> Mapping[str, np.ndarray]:
    """The step's tensors, plus each hidden L{i}.z that is not recorded but whose L{i}.a is, derived from the
    recorded layer input and the parameters in force (a dense layer needs no activation), so that the
    activation can be inferred from (z, a) pairs all the same."""
    missing = [f"L{i}.z" for i in range(1, n_layers) if f"L{i}.a" in t and f"L{i}.z" not in t]
    return _derived(t, missing, rc.Settings(n_layers), in_force) if missing else t


def _derived(t: Mapping[str, np.ndarray], names: list[str], settings: rc.Settings,
             in_force: Mapping[str, np.ndarray] | None) -> Mapping[str, np.ndarray]:
    """The step's tensors plus those of `names` that are not recorded but can be derived under `settings`."""
    missing = [n for n in names if n not in t]
    if not missing:
        return t
    rules = rc.rules(settings)
    d = Derivation(t, in_force or {})
    for name in missing:
        plan = reach(name, frozenset(t), rules, in_force is not None, settings)
        if isinstance(plan, Plan):
            try:
                d.evaluate(plan)
                d.derived[name] = np.asarray(plan.rule.fn(d, d.p)[0], dtype=np.float64)
            except (ValueError, IndexError):  # shapes that do not fit: the checks say so
                continue
    return d


def search_activation(spec: Spec, k: int, t: Mapping[str, np.ndarray], n_layers: int,
                      in_force: Mapping[str, np.ndarray] | None, tolerances: Any) -> None:
    """When nothing showed the activation and a recorded tensor cannot be reached without it (L1.z recorded
    but not L1.a), take the candidate under which the most of those tensors check within tolerance, with
    every candidate's count as evidence; none passing leaves it unknown (and those tensors unverified)."""
    if spec.activation.value is not None or n_layers < 2:
        return
    base = spec.settings(n_layers)
    first = plan_step(frozenset(t), rc.rules(base), in_force is not None, base)
    blocked = [n for n in t if isinstance(p := first.get(n), Unreachable) and p.needs == "activation"]  # t's order
    if not blocked:
        return
    counts: dict[str, int] = {}
    for act in rc.ACTIVATIONS:
        s = replace(base, activation=act)
        plans = plan_step(frozenset(t), rc.rules(s), in_force is not None, s)
        d = Derivation(t, in_force or {})
        counts[act] = sum(_passes(t[n], p, d, tolerances) for n in blocked if isinstance(p := plans[n], Plan))
    best = max(counts, key=lambda a: counts[a])
    if counts[best] == 0 or list(counts.values()).count(counts[best]) > 1:
        return
    listing = ", ".join(f"{a} {c} of {len(blocked)}" for a, c in counts.items())
    spec.act_seen = True
    spec.activation = Inferred(best, "inferred", best, f"step {k}: the recorded tensors that need the activation "
                                                       f"({', '.join(blocked)}) check with {listing}")


def _passes(value: np.ndarray, plan: Plan, d: Derivation, tolerances: Any) -> bool:
    """Whether `value` is its plan's result within the comparator's tolerance."""
    try:
        d.evaluate(plan)
        ref, scale = plan.rule.fn(d, d.p)
    except (ValueError, IndexError):
        return False
    tol = op_tolerance(tolerances, plan.name, value.dtype, plan.terms(d))
    return compare_op(value, ref, scale, tol, full=False).ok


@dataclass
class _Candidate:
    """Step k's gradients and per-tensor learning-rate fits under one choice of settings."""

    settings: rc.Settings
    label: str
    grads: dict[str, np.ndarray]
    fits: list[rc.TensorFit]
    derivation: Derivation | None
    others: int = 0  # recorded tensors other than the updates that check under these settings


def _others_passing(c: _Candidate, t: Mapping[str, np.ndarray], n_layers: int, tolerances: Any) -> int:
    """How many recorded tensors besides x, y and the updates check under the candidate's settings."""
    if c.derivation is None:
        return 0
    params = set(param_names(n_layers))
    others = frozenset(n for n in t if n not in params and n not in ("x", "y"))
    if not others:
        return 0
    plans = plan_step(frozenset(t), rc.rules(c.settings), True, c.settings)
    return sum(_passes(t[n], p, c.derivation, tolerances) for n in others if isinstance(p := plans.get(n), Plan))


def _try_settings(s: rc.Settings, k: int, t: Mapping[str, np.ndarray], updates: list[str],
                  in_force: Mapping[str, np.ndarray]) -> _Candidate:
    """Derive the gradients the updates need under settings `s`, and fit lr to each update."""
    rules = rc.rules(s)
    d = Derivation(t, in_force)
    grads: dict[str, np.ndarray] = {}
    for n in updates:
        g = n.replace(".", ".d")
        if g in t:
            grads[n] = t[g]
            continue
        plan = reach(g, frozenset(t), rules, True, s)
        if isinstance(plan, Plan):
            try:
                d.evaluate(plan)
                d.derived[g] = np.asarray(plan.rule.fn(d, in_force)[0], dtype=np.float64)
            except (ValueError, IndexError):  # shapes that do not fit: the checks say so
                continue
            grads[n] = d.derived[g]
    fits = [f for n, g in grads.items() if (f := rc.fit_one(k, n, in_force[n], t[n], g)) is not None]
    label = ", ".join(v for v in (s.activation, s.reduction) if v)
    return _Candidate(s, label, grads, fits, d)


def lr_consistency(st: State, lr: Inferred, fit: rc.LrFit, dtype: str | None) -> Inferred:
    """The learning rate with the consensus of the per-tensor fits; a fit that disagrees is a finding at
    that tensor (the odd one out), never a reason to move the consensus."""
    consensus = fit.lr
    if consensus is None:
        return replace(lr, evidence="not fitted: no step had both its parameters in force and a finite, non-zero "
                                    "gradient")
    fitted = rc.nice_lr(consensus, dtype)
    checked = lr.value if lr.value is not None else fitted
    worst, at = fit.consistency(checked)
    consistent = worst <= 1.0
    odd = [name for name, _, _, _, _, agrees in fit.per_name(checked) if not agrees]
    where = (f"; the odd one{'s' * (len(odd) > 1)} out: {', '.join(odd)} (worst {at[1]} at step {at[0]}, "
             f"{worst:.3g}x its rounding allowance)" if at and not consistent else "")
    evidence = (f"W' = W - lr * dW fitted per tensor over {fit.count} parameter updates: consensus lr = "
                f"{consensus:.17g} (the median of the agreeing fits), per-tensor fits {fit.lo:.9g} to "
                f"{fit.hi:.9g}{where}")
    if lr.value is None:  # not declared and not adopted from a step's fit (the walk adopts one): the consensus
        lr = Inferred(fitted, "fitted", fitted, evidence, consistent)
    elif lr.source == "fitted":  # the value the updates were checked with: the fit of the first fitted step
        lr = Inferred(lr.value, "fitted", fitted, evidence, consistent and fitted == lr.value)
    else:
        agrees = abs(consensus - lr.value) <= rc.lr_precision(dtype) * abs(lr.value)
        lr = replace(lr, inferred=fitted, evidence=evidence, consistent=consistent and agrees)
    if not consistent and at is not None:
        st.find(Finding("inference", "lr-consistent", at[0], at[1],
                        f"no single learning rate explains the parameter updates: {evidence}"))
    return lr

"""Which operation derives each recorded tensor, and from what: the plan of `memstate check` for one step.

A canonical trace records every operation's inputs, so each recorded tensor is checked by its own operation
from recorded inputs (the direct plan). A port records less: no loss, no dz or da, sometimes only x, y and
the updated parameters. Then a recorded tensor is checked through the *composition* of the operations
between it and the nearest recorded tensors: the missing intermediates are derived with the float64
reference (memstate.check.recompute's rules), e.g. L2.dW from probs, y and L1.a with L2.dz derived, or
L1.W from x, y and the parameters in force with the whole forward and backward pass derived.

A plan depends only on which names are recorded, whether the parameters in force are known, and the
settings, so it is computed once per kind of step and cached by the walk. `Derivation` evaluates the
derived intermediates of one step lazily and once each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Mapping

import numpy as np

from memstate.check import recompute as rc

SETTING_WHY = {"activation": "the activation is unknown (not relu, shifted-relu or sigmoid)",
               "reduction": "the loss reduction is unknown", "lr": "the learning rate is unknown"}
#: what to do about each reason a tensor cannot be reached
NEEDED = {"params": "pass the params file the run started from with --params",
          "activation": "declare the activation (--scenario, or `activation` in the trace header)",
          "reduction": "declare the loss reduction (--scenario, or `loss_reduction` in the trace header)",
          "lr": "declare the learning rate (--scenario, or `learning_rate` in the trace header)",
          "layers": "pass --params or --scenario, or declare `layers` in the trace header",
          "canonical": "record it under its canonical name, or map it (docs/ports.md)"}


@dataclass(frozen=True)
class Plan:
    """How one recorded tensor is checked: `rule` applied to its inputs, the missing ones derived by `chain`
    (name, rule) in evaluation order; `leaves` are the recorded tensors the composition starts from."""

    name: str
    rule: rc.Rule
    chain: tuple[tuple[str, rc.Rule], ...] = ()
    leaves: tuple[str, ...] = ()
    params: tuple[str, ...] = ()

    @property
    def direct(self) -> bool:
        return not self.chain

    @property
    def formula(self) -> str:
        if not self.chain:
            return self.rule.formula
        derived = ", ".join(n for n, _ in self.chain)
        return f"{self.rule.formula}, with {derived} derived from {', '.join(self.leaves + self.params)}"

    def terms(self, t: Mapping[str, np.ndarray]) -> int:
        """Rounded operations feeding one element, along the whole composition."""
        return self.rule.terms(t) + sum(r.terms(t) for _, r in self.chain)


@dataclass(frozen=True)
class Unreachable:
    """Why a recorded tensor cannot be checked, and what would make it checkable."""

    why: str
    needs: str = ""  # a key of NEEDED, or ""


class _Search:
    """Depth-first search for the shortest composition reaching a tensor from recorded ones."""

    def __init__(self, recorded: frozenset[str], rules: Mapping[str, list[rc.Rule]], params_known: bool,
                 settings: rc.Settings) -> None:
        self.recorded, self.rules, self.params_known, self.settings = recorded, rules, params_known, settings
        self.memo: dict[str, Plan | Unreachable] = {}

    def reach(self, name: str, visiting: frozenset[str]) -> Plan | Unreachable:
        """How to derive a name that is not recorded (or None-chain when it is)."""
        if name in self.memo:
            return self.memo[name]
        candidates = self.rules.get(name)
        if not candidates:
            return Unreachable(f"{name} is not recorded" + ("" if name in ("x", "y") else
                                                             " and no operation gives it"))
        if name in visiting:
            return Unreachable(f"{name} would be derived from itself")
        best = self.best(name, candidates, visiting | {name})
        self.memo[name] = best
        return best

    def best(self, name: str, candidates: list[rc.Rule], visiting: frozenset[str]) -> Plan | Unreachable:
        """The candidate rule with the shortest composition, or the first candidate's reason."""
        found = [self.rule_plan(name, r, visiting) for r in candidates]
        plans = [p for p in found if isinstance(p, Plan)]
        if plans:
            return min(plans, key=lambda p: len(p.chain))
        return found[0]

    def rule_plan(self, name: str, rule: rc.Rule, visiting: frozenset[str]) -> Plan | Unreachable:
        if rule.params and not self.params_known:
            return Unreachable("the parameters in force are unknown", "params")
        unknown = rule.missing_settings(self.settings)
        if unknown:
            return Unreachable("; ".join(SETTING_WHY[u] for u in unknown), unknown[0])
        chain: dict[str, rc.Rule] = {}
        leaves: dict[str, None] = {}
        params: dict[str, None] = dict.fromkeys(rule.params)
        for i in rule.inputs:
            if i in self.recorded:
                leaves.setdefault(i)
                continue
            sub = self.reach(i, visiting)
            if isinstance(sub, Unreachable):
                return Unreachable(sub.why if sub.why.startswith(f"{i} ") else f"{i} is not recorded and {sub.why}",
                                   sub.needs)
            for n, r in sub.chain + ((i, sub.rule),):
                chain.setdefault(n, r)
            leaves.update(dict.fromkeys(sub.leaves))
            params.update(dict.fromkeys(sub.params))
        return Plan(name, rule, tuple(chain.items()), tuple(leaves), tuple(params))


def reach(name: str, recorded: frozenset[str], rules: Mapping[str, list[rc.Rule]], params_known: bool,
          settings: rc.Settings) -> Plan | Unreachable:
    """How to derive one tensor that is not recorded from the recorded ones (the shortest composition)."""
    return _Search(recorded, rules, params_known, settings).reach(name, frozenset())


def plan_step(recorded: frozenset[str], rules: Mapping[str, list[rc.Rule]], params_known: bool,
              settings: rc.Settings) -> dict[str, Plan | Unreachable]:
    """For every recorded name with a rule: its plan, direct when its inputs are recorded, else the shortest
    composition from recorded tensors; or why it cannot be reached."""
    search = _Search(recorded, rules, params_known, settings)
    out: dict[str, Plan | Unreachable] = {}
    for name in recorded:
        candidates = rules.get(name)
        if not candidates:
            continue
        direct = next((r for r in candidates if all(i in recorded for i in r.inputs)), None)
        first = search.rule_plan(name, direct, frozenset({name})) if direct is not None else None
        if isinstance(first, Plan):
            out[name] = first
            continue
        best = search.best(name, candidates, frozenset({name}))
        out[name] = best if isinstance(best, Plan) or first is None else first
    return out


class Derivation(Mapping[str, np.ndarray]):
    """One step's tensors: the recorded ones, and the derived intermediates computed on demand, once each.

    `in` answers for the recorded and the already derived tensors only, so a rule that looks at a recorded
    tensor when there is one (the ReLU kink) never triggers a derivation of itself.
    """

    def __init__(self, t: Mapping[str, np.ndarray], p: Mapping[str, np.ndarray]) -> None:
        self.t, self.p = t, p
        self.derived: dict[str, np.ndarray] = {}

    def evaluate(self, plan: Plan) -> Mapping[str, np.ndarray]:
        """Derive what `plan` needs (in order); returns this mapping for the plan's rule."""
        for n, rule in plan.chain:
            if n not in self.derived and n not in self.t:
                self.derived[n] = np.asarray(rule.fn(self, self.p)[0], dtype=np.float64)
        return self

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self.t:
            return self.t[name]
        return self.derived[name]

    def __contains__(self, name: object) -> bool:
        return name in self.t or name in self.derived

    def __iter__(self) -> Iterator[str]:
        yield from self.t
        yield from (n for n in self.derived if n not in self.t)

    def __len__(self) -> int:
        return len(self.t) + sum(1 for n in self.derived if n not in self.t)

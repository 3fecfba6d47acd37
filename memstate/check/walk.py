"""The walk of `memstate check` over a trace's steps: the parameters in force at each step, the settings
learnt so far, the rules in use; each step checked into the walk's State (memstate.check.step).

Used step by step by `check_trace` (memstate.check.checker), and over a range of steps by a worker
process of `check --jobs` (memstate.check.parallel).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from memstate.check import recompute as rc
from memstate.check.infer import Spec, search_activation
from memstate.check.plan import Plan, Unreachable, plan_step
from memstate.check.state import State
from memstate.check.step import check_step
from memstate.comparator.metrics import dtype_name
from memstate.errors import MemstateError
from memstate.names import param_names


@dataclass
class Walk:
    """The walk over the steps: the parameters in force, the settings learnt so far, the rules in use."""

    st: State
    spec: Spec
    start: dict[str, np.ndarray] | None
    p_source: str
    n_layers: int | None
    dtype: str | None = None
    count: int = 0
    first_step: int | None = None
    last_step: int | None = None
    prev_index: int | None = None
    prev_params: dict[str, np.ndarray] | None = None
    settings: rc.Settings | None = None
    rules: dict[str, list[rc.Rule]] | None = None
    plan_cache: dict[tuple, dict[str, Plan | Unreachable]] = field(default_factory=dict)

    def step(self, k: int, t: Mapping[str, np.ndarray]) -> None:
        """Check step k: its parameters in force, what it shows of the settings, then every operation."""
        st = self.st
        self.count += 1
        self.first_step = k if self.first_step is None else self.first_step
        self.last_step = k
        if self.dtype is None and t:
            self.dtype = dtype_name(next(iter(t.values())).dtype)
        if self.n_layers is None:
            self.n_layers = rc.n_layers_of(list(t) + list(self.start or ()))
        n_layers = self.n_layers
        if n_layers is None:
            st.note("no L{i}.z, L{i}.W or L{i}.dz names and no params file: the number of layers is unknown; "
                    "nothing checked", k)
            for name in t:
                st.unchecked.setdefault(name)
                if name not in ("x", "y"):
                    st.recorded += 1
                    st.skip(k, name, "the number of layers is unknown", "layers")
            self.prev_index, self.prev_params = k, None
            return
        in_force, in_force_from = self._in_force(k, t, n_layers)
        self.spec.observe(k, t, n_layers, self.dtype, in_force)
        derivation = self.spec.fit_step(k, t, n_layers, in_force, self.dtype, st.tolerances) if in_force is not None else None
        if not self.spec.act_seen:
            search_activation(self.spec, k, t, n_layers, in_force, st.tolerances)
        new = self.spec.settings(n_layers)
        if new != self.settings or self.rules is None:
            self.settings, self.rules = new, rc.rules(new)
        st.roots.step(k, t, in_force, in_force_from)
        check_step(st, k, t, in_force, in_force_from, self.settings, self._plans(t, in_force is not None),
                   keep=self.count == 1, derivation=derivation)
        names = param_names(n_layers)
        self.prev_params = {n: t[n] for n in names} if all(n in t for n in names) else None
        self.prev_index = k

    def skip(self, k: int, t: Mapping[str, np.ndarray]) -> None:
        """Step k, checked elsewhere (a worker of `check --jobs`, whose State is merged into this one): only
        the bookkeeping the next steps need, as `step` leaves it (parameters in force, the steps the root
        causes look back on)."""
        assert self.n_layers is not None
        self.count += 1
        self.last_step = k
        self.st.roots.step(k, t, None, "")
        names = param_names(self.n_layers)
        self.prev_params = {n: t[n] for n in names} if all(n in t for n in names) else None
        self.prev_index = k

    def _plans(self, t: Mapping[str, np.ndarray], params_known: bool) -> dict[str, Plan | Unreachable]:
        """The step's plans, computed once per (recorded names, parameters known, settings)."""
        key = (tuple(t), params_known, self.settings)
        plans = self.plan_cache.get(key)
        if plans is None:
            assert self.rules is not None and self.settings is not None
            plans = self.plan_cache[key] = plan_step(frozenset(t), self.rules, params_known, self.settings)
        return plans

    def _in_force(self, k: int, t: Mapping[str, np.ndarray], n_layers: int
                  ) -> tuple[dict[str, np.ndarray] | None, str]:
        """The parameters step k started from, and where they come from (None when unknown, with a note)."""
        if self.prev_index is None:
            if k == 0 and self.start is not None:
                return _start_params(self.start, t, n_layers), self.p_source
            why = "pass the params file the run started from with --params" if k == 0 else \
                f"the trace starts at step {k}, not 0"
            self.st.note(f"parameters in force unknown at the first step ({why})", k)
        elif self.prev_index == k - 1 and self.prev_params is not None:
            return self.prev_params, f"step {self.prev_index}"
        else:
            why = f"steps are not contiguous: step {k} follows step {self.prev_index}" \
                if self.prev_index != k - 1 else f"step {self.prev_index} did not record every updated parameter"
            self.st.note(f"parameters in force unknown ({why})", k)
        return None, ""


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


__all__ = ["Walk"]

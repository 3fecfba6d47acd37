"""One side of a `memstate bisect` (docs/bisect.md): what to train, and the checks that make two sides comparable.

`RunSpec` describes a side to train (scenario, implementation, variant, initial parameters);
`spec_from_run` recovers one from a checkpoint run's header so that the run can be replayed;
`check_pair` refuses two sides that do not train on the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from memstate.runner.checkpoint import CheckpointRun
from memstate.errors import MemstateError, ScenarioError
from memstate.runner.scenario import Scenario, load_scenario
from memstate.runner.variants import Variant


@dataclass(frozen=True)
class RunSpec:
    """One side of a bisection: a scenario, an implementation, a variant and the initial parameters."""

    scenario: Scenario
    impl: str = "numpy"
    variant: Variant | None = None  # None: the scenario's own [variant]
    params: Mapping[str, np.ndarray] | None = field(default=None, repr=False)  # None: the scenario's init
    label: str = ""
    impl_timeout: float | None = None  # seconds per run of a `cmd:` port's command (None: the default)

    @property
    def the_variant(self) -> Variant:
        return self.scenario.variant if self.variant is None else self.variant

    def describe(self) -> str:
        changes = self.the_variant.changes()
        var = ", ".join(f"{k}={v}" for k, v in changes.items()) if changes else "correct"
        return f"{self.impl} on {self.scenario.name} ({self.scenario.dtype}, variant {var})"


def replay_problem(spec: RunSpec) -> str | None:
    """Why a side cannot be re-run here (its implementation does not load, a port's program is not found),
    or None. Bisect asks before its search, so that it can still report what the search finds."""
    from memstate.runner.command import CommandTarget
    from memstate.runner.registry import get_impl

    try:
        impl = get_impl(spec.impl, timeout=spec.impl_timeout)
    except (MemstateError, ImportError) as exc:
        return str(exc) or type(exc).__name__
    if isinstance(impl.target, CommandTarget):
        return impl.target.missing_program()
    return None


def spec_from_run(run: CheckpointRun, impl_timeout: float | None = None) -> RunSpec:
    """The run description a checkpoint run's header gives, with its scenario loaded and checked."""
    meta = run.meta
    file = meta.get("scenario_file")
    source = file if isinstance(file, str) and Path(file).is_file() else meta.get("scenario")
    if not isinstance(source, str) or not source:
        raise MemstateError(f"{run.path}: its header names no scenario (meta \"scenario\"), so it cannot be replayed")
    if not isinstance(meta.get("impl"), str):
        raise MemstateError(f"{run.path}: its header names no implementation (meta \"impl\"), so it cannot be "
                            "replayed")
    try:
        scenario = load_scenario(source)
    except ScenarioError as exc:
        raise MemstateError(f"{run.path}: cannot load its scenario {source!r} to replay it: {exc}") from None
    variant = Variant.from_mapping(meta.get("variant") or {}, f"{run.path} header variant")
    expected = scenario.meta()
    expected["loss_reduction"] = variant.loss_reduction or expected["loss_reduction"]  # as run.trace_meta says it
    changed = [k for k, v in expected.items() if k in meta and meta[k] != v]
    if changed:
        k = changed[0]
        raise MemstateError(f"{run.path}: the run had {k} = {meta[k]!r} but scenario {scenario.name} now says "
                            f"{expected[k]!r}; the scenario changed since the run, so it cannot be replayed")
    return RunSpec(scenario, str(meta["impl"]), variant, run.params(0), label=str(run.path), impl_timeout=impl_timeout)


def check_pair(a: RunSpec, b: RunSpec) -> None:
    """Both sides must see the same batches and have the same layers, or bisecting them means nothing."""
    sa, sb = a.scenario, b.scenario
    for what, x, y in (("data", sa.data, sb.data), ("model.layers", sa.model.layers, sb.model.layers),
                       ("training.batch_size", sa.training.batch_size, sb.training.batch_size),
                       ("training.batch_size_cap", sa.training.batch_size_cap, sb.training.batch_size_cap)):
        if x != y:
            raise MemstateError(f"the two runs differ in {what} ({sa.name}: {x}; {sb.name}: {y}): they do not "
                                "train on the same batches, so there is no step where they should agree")

"""Run several implementations on one scenario and compare every pair: the `memstate diff --impls` matrix.

An implementation that cannot run here (not written yet, an extra not installed, a dtype it lacks) is
reported as unavailable; one that crashes mid-run leaves an incomplete trace, which is still compared.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from memstate.comparator.compare import Comparison, compare
from memstate.errors import MemstateError, ScenarioError
from memstate.runner.registry import get_impl
from memstate.runner.harness import Progress, run
from memstate.runner.scenario import Scenario
from memstate.comparator.tolerance import Tolerances
from memstate.runner.variants import Variant


@dataclass(frozen=True)
class ImplRun:
    """One implementation's run: ok, unavailable (never started) or crashed (its trace ends incomplete)."""

    impl: str
    status: str
    reason: str = ""
    trace: str | None = None


@dataclass(frozen=True)
class PairResult:
    """The comparison of two implementations' traces; None when either has no trace."""

    a: str
    b: str
    comparison: Comparison | None

    @property
    def short(self) -> str:
        """agree, diverge@STEP, or n/a: fits a matrix cell."""
        c = self.comparison
        if c is None:
            return "n/a"
        if c:
            return "agree"
        f = c.first_divergence
        return f"diverge@{f.step}" if f is not None else "diverge"

    @property
    def cell(self) -> str:
        """agree, diverge@STEP:TENSOR:CODE (the most likely diagnosis), or n/a."""
        c = self.comparison
        if c is None or c or c.first_divergence is None:
            return self.short
        f = c.first_divergence
        code = f.diagnoses[0].code if f.diagnoses else f.kind if f.kind != "values" else None
        return f"diverge@{f.step}:{f.name or 'step'}" + (f":{code}" if code else "")


@dataclass(frozen=True)
class Matrix:
    """Every pair of implementations compared; truthy when every comparable pair agrees."""

    scenario: str
    steps: int | None
    impls: tuple[str, ...]
    runs: tuple[ImplRun, ...]
    pairs: tuple[PairResult, ...]
    kept: str | None = None  # where the traces were kept, if asked

    @property
    def compared(self) -> int:
        return sum(p.comparison is not None for p in self.pairs)

    def __bool__(self) -> bool:
        return self.compared > 0 and all(p.comparison for p in self.pairs if p.comparison is not None)


def variants_for(scenario: Scenario, impls: Sequence[str], overrides: Sequence[str]) -> dict[str, Variant]:
    """Per-implementation variants from `KEY=VALUE` (every implementation) and `IMPL:KEY=VALUE` (one) strings."""
    common: list[str] = []
    own: dict[str, list[str]] = {impl: [] for impl in impls}
    for text in overrides:
        target, sep, rest = text.partition(":")
        if not sep or "=" in target:
            common.append(text)
        elif target in own:
            own[target].append(rest)
        else:
            raise ScenarioError(f"--variant {text!r}: {target!r} is not one of the implementations "
                                f"({', '.join(impls)}); write IMPL:KEY=VALUE, or KEY=VALUE for all of them")
    return {impl: scenario.variant.with_overrides([*common, *own[impl]]) if common or own[impl] else scenario.variant
            for impl in impls}


def trace_name(impl: str, index: int) -> str:
    """A file name for an implementation's trace: its name when that is a plain word, else `impl<index>`
    (a `cmd:` port's name holds spaces, slashes and braces)."""
    return f"{impl}.memstate" if re.fullmatch(r"[A-Za-z0-9_.-]+", impl) else f"impl{index}.memstate"


def _run_one(scenario: Scenario, impl: str, out: Path, *, steps: int | None, variant: Variant,
             params: Mapping[str, np.ndarray] | None,
             progress: Callable[[str, Progress], None] | None, impl_timeout: float | None = None) -> ImplRun:
    try:
        loaded = get_impl(impl, timeout=impl_timeout)
    except (MemstateError, ImportError) as exc:
        return ImplRun(impl, "unavailable", str(exc) or type(exc).__name__)
    if scenario.dtype not in loaded.dtypes:
        return ImplRun(impl, "unavailable", f"supports {', '.join(loaded.dtypes)}, not {scenario.dtype}")
    report = (lambda p: progress(impl, p)) if progress is not None else None
    try:
        run(scenario, loaded, params=params, steps=steps, out=out, variant=variant, evaluate=False,
            progress=report)
    except MemstateError:
        raise  # the user's input (params, scenario) is wrong for every implementation: say so once
    except Exception as exc:  # the implementation crashed: its trace ends with the incomplete step
        return ImplRun(impl, "crashed", f"{type(exc).__name__}: {exc}", str(out) if out.exists() else None)
    return ImplRun(impl, "ok", trace=str(out))


def compare_impls(scenario: Scenario, impls: Sequence[str], *, steps: int | None = None,
                  variants: Mapping[str, Variant] | None = None, params: Mapping[str, np.ndarray] | None = None,
                  keep: str | Path | None = None, tolerances: Tolerances | None = None,
                  progress: Callable[[str, Progress], None] | None = None,
                  impl_timeout: float | None = None) -> Matrix:
    """Run each implementation on `scenario` into `keep` (or a temporary directory) and compare every pair.
    `impl_timeout`: seconds one run of a `cmd:` port's command may take."""
    impls = list(dict.fromkeys(impls))
    if len(impls) < 2:
        raise MemstateError(f"--impls {','.join(impls)}: name at least two implementations, e.g. numpy,python")
    variants = variants or {}
    with tempfile.TemporaryDirectory(prefix="memstate-diff-") as tmp:
        folder = Path(keep) if keep is not None else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        runs = [_run_one(scenario, impl, folder / trace_name(impl, i), steps=steps,
                         variant=variants.get(impl, scenario.variant), params=params, progress=progress,
                         impl_timeout=impl_timeout)
                for i, impl in enumerate(impls, start=1)]
        pairs = []
        for ra, rb in combinations(runs, 2):
            both = None if ra.trace is None or rb.trace is None else \
                compare(ra.trace, rb.trace, tolerances=tolerances)
            pairs.append(PairResult(ra.impl, rb.impl, both))
    return Matrix(scenario.name, steps, tuple(impls), tuple(runs), tuple(pairs),
                  kept=str(keep) if keep is not None else None)

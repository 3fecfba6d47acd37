"""Differential tests over pairs of implementations: `@memstate.cross_impl(...)` and the `memstate_run` runner.

    import memstate
    from memstate.testing.asserts import assert_traces_close

    @memstate.cross_impl("numpy", "python", "jax")          # every pair: numpy-python, numpy-jax, python-jax
    def test_agree(impl_a, impl_b, memstate_run):
        assert_traces_close(memstate_run(impl_a, "mnist14-relu", 3), memstate_run(impl_b, "mnist14-relu", 3))

    @memstate.cross_impl("mynet", "jax", reference="numpy")  # numpy-mynet, numpy-jax: yours against ours
    def test_mine(impl_a, impl_b, memstate_run): ...

`impl_a` is the reference side (A) and `impl_b` the side under test (B). Implementations come from
memstate.runner.registry: ours, any registered under the `memstate.impls` entry point group, and ports in any
language as `cmd:COMMAND {params} {batches} {trace}` (docs/ports.md). A built-in one
that cannot load here (jax not installed) makes its tests skip, with the reason; an unknown name or a
registered implementation that fails to load makes them fail, since that is a mistake to fix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from itertools import combinations
from pathlib import Path
from typing import Any, Callable

import pytest

from memstate.errors import MemstateError

MARKER = "memstate_cross_impl"


def pairs_of(impls: tuple[str, ...], reference: str | None = None) -> list[tuple[str, str]]:
    """(A, B) pairs: every pair in the order given, or `reference` against each of the others."""
    names = list(dict.fromkeys(impls))
    for name in names + ([reference] if reference is not None else []):
        if not isinstance(name, str) or not name:
            raise TypeError(f"cross_impl: implementation names are strings, got {name!r}")
    if reference is not None:
        pairs = [(reference, name) for name in names if name != reference]
        if not pairs:
            raise ValueError(f"cross_impl(reference={reference!r}): name at least one other implementation")
        return pairs
    if len(names) < 2:
        raise ValueError(f"cross_impl{tuple(impls)!r}: name at least two implementations, e.g. "
                         "cross_impl('numpy', 'python'), or one and reference='numpy'")
    return list(combinations(names, 2))


def cross_impl(*impls: str, reference: str | None = None) -> Callable[[Any], Any]:
    """Parametrise a test over pairs of implementations; the test receives their names as `impl_a`, `impl_b`.

    Without `reference`, every pair of the implementations named, in the order given (ids `numpy-python`);
    with it, `reference` against each of the others. Implementations that cannot load here are skipped
    with the reason (see the module docstring).
    """
    params = [pytest.param(a, b, id=f"{a}-{b}") for a, b in pairs_of(impls, reference)]

    def decorate(obj: Any) -> Any:
        obj = pytest.mark.parametrize(("impl_a", "impl_b"), params, indirect=True)(obj)
        obj = pytest.mark.usefixtures("impl_a", "impl_b")(obj)
        return getattr(pytest.mark, MARKER)(*impls, reference=reference)(obj)

    return decorate


def require_impl(name: str) -> str:
    """`name` when it can run here; skip the test when a built-in implementation cannot load (a missing
    optional dependency), fail it when the name is unknown or a registered implementation is broken."""
    __tracebackhide__ = True
    from memstate.runner.registry import BUILTIN, get_impl

    try:
        get_impl(name)
        return name
    except (MemstateError, ImportError) as exc:
        problem = str(exc) or type(exc).__name__
    if name in BUILTIN:
        pytest.skip(f"implementation {name!r} is not available here: {problem}")
    pytest.fail(f"memstate: {problem}", pytrace=False)  # unknown, or a registered implementation that is broken


class ImplRunner:
    """`memstate_run(impl, scenario, steps=None, *, variant=None, encoding="binary") -> Path`: run an
    implementation on a scenario and return its trace. Runs are cached for the session (the same arguments
    return the same trace, so a pair test runs each implementation once); treat the traces as read-only."""

    def __init__(self, folder: Callable[[], Path]):
        self._folder = folder
        self._made: Path | None = None
        self._cache: dict[tuple, Path] = {}

    def __repr__(self) -> str:
        return f"<memstate_run: {len(self._cache)} cached runs>"

    def folder(self) -> Path:
        if self._made is None:
            self._made = self._folder()
        return self._made

    def __call__(self, impl: str, scenario: Any, steps: int | None = None, *, variant: Any = None,
                 encoding: str = "binary", impl_timeout: float | None = None) -> Path:
        __tracebackhide__ = True
        from memstate.runner.registry import get_impl
        from memstate.runner.harness import run
        from memstate.runner.scenario import Scenario, load_scenario
        from memstate.runner.variants import Variant

        require_impl(impl)
        sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
        if variant is None:
            chosen = sc.variant
        elif isinstance(variant, Variant):
            chosen = variant
        elif isinstance(variant, Mapping):
            chosen = Variant.from_mapping({**sc.variant.as_meta(), **variant}, "memstate_run(variant=...)")
        else:
            raise TypeError(f"variant={variant!r}: give a memstate.runner.variants.Variant or a mapping of its fields")
        key = (impl, sc.name, str(sc.path), steps, chosen, encoding)
        if key in self._cache and self._cache[key].exists():
            return self._cache[key]
        loaded = get_impl(impl, timeout=impl_timeout)
        if sc.dtype not in loaded.dtypes:
            pytest.skip(f"implementation {impl!r} supports {', '.join(loaded.dtypes)}, not {sc.dtype} "
                        f"(scenario {sc.name})")
        suffix = ".memstate" if encoding == "binary" else ".memstate.jsonl"
        label = impl if re.fullmatch(r"[A-Za-z0-9_.-]+", impl) else "cmd"  # a cmd: port's name is a command line
        out = self.folder() / f"{label}-{sc.name}-{steps if steps is not None else 'all'}-{len(self._cache)}{suffix}"
        run(sc, loaded, steps=steps, out=out, variant=chosen, encoding=encoding, evaluate=False)
        self._cache[key] = out
        return out


__all__ = ["cross_impl", "pairs_of", "require_impl", "ImplRunner"]

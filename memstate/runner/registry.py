"""The implementation registry: ours by name, plus any registered under the `memstate.impls` entry point group."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from memstate.errors import MemstateError
from memstate.runner.command import CommandTarget, is_command

BUILTIN = {
    "numpy": "memstate.impls.numpy_mlp",
    "python": "memstate.impls.python_mlp",
    "jax": "memstate.impls.jax_mlp",
    "scalar": "memstate.impls.scalar_mlp",
}
ENTRY_POINT_GROUP = "memstate.impls"


@dataclass(frozen=True)
class Implementation:
    """A loaded implementation: `make(spec, params)` builds a network object (docs/implementations.md)."""

    name: str
    target: Any = field(repr=False)
    dtypes: tuple[str, ...] = ("float64",)
    meta: dict[str, Any] = field(default_factory=dict)

    def make(self, spec: Any, params: dict[str, Any]) -> Any:
        return self.target.make(spec, params)


def _plugins() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available() -> list[str]:
    """Names that `get_impl` accepts: the built-in ones first, then registered plugins."""
    return list(BUILTIN) + sorted(n for n in _plugins() if n not in BUILTIN)


def get_impl(name: str, *, timeout: float | None = None) -> Implementation:
    """Load an implementation by name, with a message that says how to fix a missing one.

    `cmd:COMMAND` is a port driven through its command line (memstate.runner.command); `timeout` is how
    many seconds one run of its command may take (default memstate.runner.command.DEFAULT_TIMEOUT).
    """
    if is_command(name):
        return Implementation(name=name, target=CommandTarget.parse(name, timeout), dtypes=("float64", "float32"),
                              meta={})
    plugins = _plugins()
    if name in BUILTIN:
        try:
            target = importlib.import_module(BUILTIN[name])
        except ImportError as exc:
            if name == "jax" and (exc.name or "").split(".")[0] in ("jax", "jaxlib"):
                raise MemstateError(
                    "the jax implementation needs JAX, which is not installed: "
                    "pip install 'memstate-nn[jax]' (or pip install jax)"
                ) from exc
            raise
    elif name in plugins:
        try:
            target = plugins[name].load()
        except Exception as exc:  # a user's plugin may fail in any way: say which one
            raise MemstateError(
                f"implementation {name!r} (entry point {plugins[name].value}) failed to load: {exc}"
            ) from exc
    else:
        raise MemstateError(
            f"no implementation named {name!r}; available: {', '.join(available())}. "
            f"Register your own under the {ENTRY_POINT_GROUP!r} entry point group (see README), or drive a "
            "port in any language with 'cmd:COMMAND {params} {batches} {trace}' (docs/ports.md)."
        )
    if not callable(getattr(target, "make", None)):
        raise MemstateError(f"implementation {name!r} has no make(spec, params) function")
    return Implementation(
        name=name,
        target=target,
        dtypes=tuple(getattr(target, "DTYPES", ("float64",))),
        meta=dict(getattr(target, "META", {})),
    )

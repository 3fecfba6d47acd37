"""memstate: record the memstate of every training step, compare implementations, find the first divergence.

The layers, each a subpackage (docs/architecture.md): `formats` (files), `runner` (scenarios, data,
implementations, the harness), `comparator` (metrics, tolerances, the first divergence), `diagnose` (why),
`check` (one trace on its own), `bisect` (long runs), `report` (text, JSON, HTML), `testing` (the pytest
layer) and `cli` on top. The bundled implementations and scenarios install as `memstate.impls` and
`memstate.scenarios`.

The names below are imported lazily so that `import memstate` stays cheap (no jax, no report code); type
checkers see them through the TYPE_CHECKING imports. No subpackage shares a name with a function exported
here, so `memstate.compare` and `memstate.run` stay functions whatever else was imported.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

if TYPE_CHECKING:
    from memstate.comparator.compare import compare
    from memstate.errors import FormatError, MemstateError
    from memstate.formats.params import read_params, write_params
    from memstate.formats.recorder import Recorder
    from memstate.formats.trace import Step, open_trace, read_trace
    from memstate.names import canonical_names
    from memstate.runner.harness import run
    from memstate.runner.scenario import load_scenario
    from memstate.runner.variants import Variant
    from memstate.testing.crossimpl import cross_impl

_EXPORTS = {
    "Recorder": "memstate.formats.recorder",
    "open_trace": "memstate.formats.trace",
    "read_trace": "memstate.formats.trace",
    "Step": "memstate.formats.trace",
    "read_params": "memstate.formats.params",
    "write_params": "memstate.formats.params",
    "canonical_names": "memstate.names",
    "load_scenario": "memstate.runner.scenario",
    "Variant": "memstate.runner.variants",
    "run": "memstate.runner.harness",
    "compare": "memstate.comparator.compare",
    "cross_impl": "memstate.testing.crossimpl",
    "MemstateError": "memstate.errors",
    "FormatError": "memstate.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'memstate' has no attribute {name!r}")

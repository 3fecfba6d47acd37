"""memstate: record the memstate of every training step, compare implementations, find the first divergence.

The names below are imported lazily so that `import memstate` stays cheap (no jax, no report code).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Recorder": "memstate.recorder",
    "open_trace": "memstate.trace",
    "read_trace": "memstate.trace",
    "Step": "memstate.trace",
    "read_params": "memstate.params",
    "write_params": "memstate.params",
    "canonical_names": "memstate.names",
    "load_scenario": "memstate.scenario",
    "Variant": "memstate.variants",
    "run": "memstate.run",
    "compare": "memstate.compare",
    "cross_impl": "memstate.crossimpl",
    "MemstateError": "memstate.errors",
    "FormatError": "memstate.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'memstate' has no attribute {name!r}")

"""The pytest layer: assertions (`asserts`), the golden-trace lifecycle (`regression`), implementation
pairs (`crossimpl`) and the plugin (`plugin`, registered through the `pytest11` entry point).

`from memstate.testing import assert_traces_close` is the public spelling. The names are imported lazily
so that loading the plugin in a test session that does not use memstate costs nothing.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from memstate.testing.asserts import (SessionSettings, assert_tensors_close, assert_traces_close,
                                          make_tolerances, write_steps)
    from memstate.testing.crossimpl import cross_impl

_EXPORTS = {
    "assert_traces_close": "memstate.testing.asserts",
    "assert_tensors_close": "memstate.testing.asserts",
    "make_tolerances": "memstate.testing.asserts",
    "write_steps": "memstate.testing.asserts",
    "SessionSettings": "memstate.testing.asserts",
    "cross_impl": "memstate.testing.crossimpl",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'memstate.testing' has no attribute {name!r}")

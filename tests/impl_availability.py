"""Which implementations a test may skip, and why: only JAX, and only when the jax package is not installed.

An implementation that is installed but fails to load is a bug to report, never a skip: `get_impl` is called
without catching anything, so its error fails the test.
"""

from __future__ import annotations

import importlib.util

import pytest

from memstate.runner.registry import available, get_impl


def jax_installed() -> bool:
    """Whether the third-party jax package is importable (the `jax` extra); says nothing of memstate's port."""
    return importlib.util.find_spec("jax") is not None


def require(name: str):
    """The implementation `name`; skips only for jax without the jax package, raises for anything else."""
    if name == "jax" and not jax_installed():
        pytest.skip("the jax package is not installed (pip install 'memstate-nn[jax]')")
    return get_impl(name)


def usable() -> list[str]:
    """Every built-in or registered implementation that should load here (jax only with jax installed)."""
    return [n for n in available() if n != "jax" or jax_installed()]

"""One BLAS thread for memstate's own numerical work (issue 14).

memstate's matrices are small (a batch of 64 against a 784-by-800 layer at most) and its vectors are
dotted once: a multithreaded BLAS spends more on waking and syncing its threads than on the arithmetic,
and on a shared machine its threads fight every other process for the cores. Measured on the 2-core CI
machine (README, "Performance"), letting OpenBLAS use its threads cost `check` and `diff` several times
their CPU time. `compare` and `check_trace` therefore run inside `blas_threads()`, which caps the BLAS
thread pools (threadpoolctl) for their duration and restores them after, so code that calls memstate
keeps its own setting. MEMSTATE_BLAS_THREADS=N picks another cap; 0 leaves BLAS alone.

The thread pools are found once, by one threadpoolctl.ThreadpoolController kept for the process:
threadpool_limits builds a new controller each call, which scans every loaded library (0.24 ms a call
here, against 0.007 ms to set and restore the limit through a kept controller; a diff of a short trace
called it twice).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

DEFAULT_THREADS = 1
_CONTROLLER: list[Any] = []  # the process's ThreadpoolController, made on first use


def blas_thread_cap() -> int:
    """The cap from MEMSTATE_BLAS_THREADS (default 1; 0 means no cap)."""
    raw = os.environ.get("MEMSTATE_BLAS_THREADS", "").strip()
    try:
        value = int(raw) if raw else DEFAULT_THREADS
    except ValueError:
        value = DEFAULT_THREADS
    return max(value, 0)


@contextmanager
def blas_threads(limit: int | None = None) -> Iterator[None]:
    """Run the body with at most `limit` BLAS threads (default: `blas_thread_cap()`; 0: unchanged)."""
    limit = blas_thread_cap() if limit is None else limit
    if limit <= 0:
        yield
        return
    with _controller().limit(limits=limit, user_api="blas"):
        yield


def _controller() -> Any:
    """The ThreadpoolController of this process (its libraries are numpy's, loaded before memstate runs)."""
    if not _CONTROLLER:
        from threadpoolctl import ThreadpoolController  # type: ignore[import-untyped]

        _CONTROLLER.append(ThreadpoolController())
    return _CONTROLLER[0]

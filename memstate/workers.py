"""Worker processes for memstate's parallel work (issue 14): how many, how they start, when they pay off.

Used by `diff --jobs` (memstate.comparator.parallel), `check --jobs` (memstate.check.parallel) and
`convert --jobs` (memstate.formats.convert).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def default_jobs() -> int:
    """The cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


PRELOAD = ("memstate.comparator.compare", "memstate.formats.convert")


def process_context(preload: tuple[str, ...] = PRELOAD) -> Any:
    """forkserver where there is one (never a fork of a process that runs threads), with memstate's modules
    the workers run (`preload`) loaded once in the server so that each worker starts without importing
    them again; spawn elsewhere."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(preload))
    return ctx


def files_hold(paths: Iterable[Path], min_bytes: int) -> bool:
    """Whether these files hold at least `min_bytes` together (their sizes only; nothing is read).

    A file that cannot be stat'ed counts as enough: the caller's own read then reports it.
    """
    total = 0
    for path in paths:
        try:
            total += os.stat(path).st_size
        except OSError:
            return True
        if total >= min_bytes:
            return True
    return False

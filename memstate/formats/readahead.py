"""Reading one step ahead (issue 14): the next step is read in a background thread while this one is used.

For JSONL traces: parsing a step is the slow part, and numpy's work on the current step releases the GIL
for the parser. A binary step file is mapped in well under a millisecond a megabyte, less than handing
work to a thread costs on a busy machine (measured: 0.19 s of GIL hand-overs in a 0.5 s diff), so
`read_ahead` reads binary traces in line. One step ahead costs the memory of one more step.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class ReadAhead:
    """An iterator that fetches the next item of `it` in a background thread while the caller uses this one.

    `pool`: a one-thread executor shared with other ReadAheads (the two sides of a diff), so that their
    parses run one after the other in one thread: parsing holds the GIL, and two parser threads taking it
    from each other every switch interval cost a diff of identical JSONL traces a fifth more CPU and wall
    time (issue 14, measured). Without one, the ReadAhead has its own thread.
    """

    def __init__(self, it: Iterator, pool: ThreadPoolExecutor | None = None):
        self.it = it
        self.own = pool is None
        self.pool = reading_pool() if pool is None else pool
        self.pending: Future | None = self.pool.submit(self._pull)

    def _pull(self) -> tuple[bool, Any]:
        try:
            return True, next(self.it)
        except StopIteration:
            return False, None

    def __iter__(self) -> ReadAhead:
        return self

    def __next__(self) -> Any:
        if self.pending is None:
            raise StopIteration
        ok, item = self.pending.result()
        self.pending = self.pool.submit(self._pull) if ok else None
        if not ok:
            raise StopIteration
        return item

    def close(self) -> None:
        """Wait for the read in flight, then close the underlying iterator."""
        if self.pending is not None:
            try:
                self.pending.result()
            except Exception:  # noqa: BLE001 - closing: the error belongs to a step nobody asked for
                pass
            self.pending = None
        if self.own:
            self.pool.shutdown(wait=True)
        close = getattr(self.it, "close", None)
        if close is not None:
            close()


class InLine:
    """The same interface as ReadAhead, reading in the caller's thread."""

    def __init__(self, it: Iterator):
        self.it = it

    def __iter__(self) -> InLine:
        return self

    def __next__(self) -> Any:
        return next(self.it)

    def close(self) -> None:
        close = getattr(self.it, "close", None)
        if close is not None:
            close()


def read_ahead(it: Iterator, encoding: str, pool: ThreadPoolExecutor | None = None) -> ReadAhead | InLine:
    """`it` (the steps of a trace in `encoding`) read one step ahead for JSONL, in line for binary;
    `pool`: the one-thread executor to read in, shared between the traces of one walk (`ReadAhead`)."""
    return ReadAhead(it, pool) if encoding == "jsonl" else InLine(it)


def reading_pool() -> ThreadPoolExecutor:
    """A one-thread executor for the ReadAheads of one walk; shut it down after closing them."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="memstate-read-ahead")

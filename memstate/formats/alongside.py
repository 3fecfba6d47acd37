"""Two step files' tensor bytes read side by side in chunks, without touching their mappings (issue 14).

The comparator settles a bit-identical step by comparing the two files' tensor bytes (comparator.identical).
Comparing them through the mappings the arrays view costs a page fault per few pages and an unmapping
of every page touched; reading them with `readinto` into two reused buffers costs one copy, which on the
2-core CI machine took 29-31 ms for two 245 MB traces against 33-40 ms through the mappings (the same
files, benchmarks/bench_compare.py's mapped floor). The arrays stay mapped and untouched, so a step that
turns out identical never faults its pages in, and a step that differs is read through its mapping from
the first differing chunk on.

Chunks grow from FIRST to MOST bytes: steps that differ usually do so early, and should not pay for a
large first read. (The comparator compares the first chunk through the mappings: those pages are read
next anyway when the step differs there.) A file whose device and inode differ from those it had when mapped (renamed over since)
gives no chunks: the caller compares through the mappings, which hold the bytes the arrays show.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import numpy as np

from memstate.formats.stepfile import Payload, Source

FIRST = 1 << 16  # bytes in the first chunk
MOST = 4 << 20  # bytes in a chunk at most (two buffers of this size, per thread)
_BUFFERS = threading.local()


def _buffers() -> tuple[np.ndarray, np.ndarray]:
    held = getattr(_BUFFERS, "pair", None)
    if held is None or held[0].size < MOST:
        held = _BUFFERS.pair = (np.empty(MOST, dtype=np.uint8), np.empty(MOST, dtype=np.uint8))
    return held


def _reopen(source: Source) -> int | None:
    """A descriptor of the file `source` describes, if the path still names that file; else None."""
    try:
        fd = os.open(source.path, os.O_RDONLY)
    except OSError:
        return None
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (source.device, source.inode):
        os.close(fd)
        return None
    return fd


def _read_exactly(fd: int, view: memoryview, offset: int) -> bool:
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n <= 0:
            return False  # the file shrank since it was mapped
        got += n
    return True


def chunk_pairs(p: Payload, q: Payload, begin: int = 0) -> Pairs | None:
    """The tensor bytes of p's and q's files as pairs of equal-length uint8 chunks, in order, from the chunk
    at offset `begin` (one `chunk_spans` gives) on, read into two reused buffers (a pair is valid until the
    next is asked for); None when either has no Source or its file is no longer the one mapped, or where
    the system has no os.preadv (Windows): the caller then compares through the mappings. Stops early
    (short of the payload's size) if a file shrank."""
    if p.source is None or q.source is None or p.data.size != q.data.size or not hasattr(os, "preadv"):
        return None
    fa = _reopen(p.source)
    if fa is None:
        return None
    fb = _reopen(q.source)
    if fb is None:
        os.close(fa)
        return None
    return Pairs(fa, fb, p.source.start, q.source.start, p.data.size, begin)


def chunk_spans(size: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of the chunks `size` bytes are read in: FIRST bytes, then four times more each
    time up to MOST, the last one what is left."""
    done, chunk = 0, FIRST
    while done < size:
        k = min(chunk, size - done)
        yield done, k
        done += k
        chunk = min(chunk * 4, MOST)


class Pairs:
    """The pairs of chunks `chunk_pairs` promises, an iterator; `close` (contextlib.closing) gives the two
    descriptors back, also when the pairs were never iterated (a generator's own `finally` would only run
    once started), and so does dropping the object."""

    def __init__(self, fa: int, fb: int, start_a: int, start_b: int, size: int, begin: int):
        self.fds: tuple[int, ...] = (fa, fb)
        self.reads = self._read(fa, fb, start_a, start_b, size, begin)

    @staticmethod
    def _read(fa: int, fb: int, start_a: int, start_b: int, size: int,
              begin: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        ba, bb = _buffers()
        for done, k in chunk_spans(size):
            if done < begin:
                continue
            va, vb = memoryview(ba.data)[:k], memoryview(bb.data)[:k]
            if not (_read_exactly(fa, va, start_a + done) and _read_exactly(fb, vb, start_b + done)):
                return
            yield ba[:k], bb[:k]

    def __iter__(self) -> Pairs:
        return self

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        return next(self.reads)

    def close(self) -> None:
        fds, self.fds = self.fds, ()
        for fd in fds:
            os.close(fd)

    def __del__(self) -> None:
        self.close()

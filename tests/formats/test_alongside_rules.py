"""memstate.formats.alongside: two mapped step files' tensor bytes read again, chunk by chunk, beside the mappings.

A pair of chunks must hold exactly the files' bytes at that offset, as uint8, however the reads come back
(a read may give fewer bytes than asked for); a file cut short since it was mapped ends the chunks before
the cut; a payload without a Source (read into memory) gives no chunks. Each thread reads into its own two
buffers, made once and reused: memory stays at two MOST-byte buffers per thread however many steps are
compared, and two threads never write into each other's chunks.
"""

from __future__ import annotations

import json
import os
import struct
import threading
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from memstate.formats import alongside
from memstate.formats.stepfile import Payload, read_step_payload


def _pair(tmp_path: Path, n: int = 100) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """Two step files of one float64 tensor of n elements that differ everywhere, and their tensor bytes."""
    paths, blobs = [], []
    for name, seed in (("p", 1), ("q", 2)):
        raw = np.random.default_rng(seed).standard_normal(n).tobytes()
        text = json.dumps({"w": {"dtype": "F64", "shape": [n], "data_offsets": [0, 8 * n]}}).encode().ljust(61)
        path = tmp_path / name
        path.write_bytes(struct.pack("<Q", len(text)) + text + raw)  # the data starts at byte 69: off a word
        paths.append(path)
        blobs.append(np.frombuffer(raw, np.uint8))
    return paths[0], paths[1], blobs[0], blobs[1]


def _read(pp: Payload, qp: Payload, begin: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every pair of chunks, copied (a pair is only valid until the next is asked for)."""
    pairs = alongside.chunk_pairs(pp, qp, begin)
    assert pairs is not None
    with closing(pairs):
        return [(x.copy(), y.copy()) for x, y in pairs]


def _assert_chunks_are_the_bytes(chunks, a, b, begin=0):
    spans = [(s, k) for s, k in alongside.chunk_spans(a.size) if s >= begin]
    assert [x.size for x, _ in chunks] == [k for _, k in spans]
    for (x, y), (s, k) in zip(chunks, spans):
        assert x.dtype == y.dtype == np.uint8
        assert x.tobytes() == a[s:s + k].tobytes() and y.tobytes() == b[s:s + k].tobytes()


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(alongside, "FIRST", 16)
    monkeypatch.setattr(alongside, "MOST", 64)


def test_short_reads_are_read_on_until_the_chunk_is_full(tmp_path, small_chunks, monkeypatch):
    p, q, a, b = _pair(tmp_path)
    pp, qp = read_step_payload(p, True)[2], read_step_payload(q, True)[2]
    real, calls = os.preadv, []

    def trickle(fd, buffers, offset):  # 1, 7 or 3 bytes a read, as a slow or interrupted read may give
        calls.append(offset)
        assert len(calls) < 10_000, "no progress"
        (view,) = buffers
        return real(fd, [view[:(1, 7, 3)[len(calls) % 3]]], offset)

    monkeypatch.setattr(os, "preadv", trickle)
    _assert_chunks_are_the_bytes(_read(pp, qp), a, b)
    _assert_chunks_are_the_bytes(_read(pp, qp, 80), a, b, 80)  # from the chunk at offset 80 on
    assert len(calls) > 2 * 800 / 7


def test_a_file_cut_short_since_it_was_mapped_ends_the_chunks_before_the_cut(tmp_path, small_chunks):
    p, q, a, b = _pair(tmp_path)
    pp, qp = read_step_payload(p, True)[2], read_step_payload(q, True)[2]
    os.truncate(q, qp.source.start + 300)  # the chunks are 16, 64, 64, 64, 64 bytes...: 272 fit, the next does not
    chunks = _read(pp, qp)
    assert [x.size for x, _ in chunks] == [16, 64, 64, 64, 64]
    _assert_chunks_are_the_bytes(chunks, a[:272], b[:272])


def test_a_payload_read_into_memory_gives_no_chunks(tmp_path):
    p, q, _, _ = _pair(tmp_path)
    mapped, held = read_step_payload(p, True)[2], read_step_payload(q, False)[2]
    assert held.source is None
    assert alongside.chunk_pairs(mapped, held) is None and alongside.chunk_pairs(held, mapped) is None
    assert alongside.chunk_pairs(held, held) is None
    (tmp_path / "other").mkdir()
    shorter = read_step_payload(_pair(tmp_path / "other", 99)[0], True)[2]  # another size: nothing to pair
    assert alongside.chunk_pairs(mapped, shorter) is None


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors through /proc")
def test_pairs_give_their_descriptors_back_iterated_or_not(tmp_path):
    p, q, _, _ = _pair(tmp_path)
    pp, qp = read_step_payload(p, True)[2], read_step_payload(q, True)[2]
    before = _open_fds()
    pairs = alongside.chunk_pairs(pp, qp)
    assert _open_fds() == before + 2
    pairs.close()  # never iterated
    pairs.close()  # (twice is harmless)
    assert _open_fds() == before
    pairs = alongside.chunk_pairs(pp, qp)
    next(pairs)
    del pairs  # dropped half-way, unclosed
    assert _open_fds() == before


def test_without_preadv_there_are_no_chunks_and_the_mappings_answer(tmp_path, small_chunks, monkeypatch):
    from memstate.comparator.identical import identical_prefix

    p, _, a, _ = _pair(tmp_path)
    q = tmp_path / "copy"
    q.write_bytes(p.read_bytes())
    pp, qp = read_step_payload(p, True)[2], read_step_payload(q, True)[2]
    assert alongside.chunk_pairs(pp, qp) is not None
    monkeypatch.delattr(os, "preadv")  # as on Windows
    assert alongside.chunk_pairs(pp, qp) is None
    assert identical_prefix(pp, qp) == a.size == 800


def test_each_thread_reads_into_its_own_two_buffers_made_once(tmp_path, monkeypatch):
    monkeypatch.setattr(alongside, "FIRST", 16)
    monkeypatch.setattr(alongside, "MOST", 256)
    p, q, a, b = _pair(tmp_path)
    pp, qp = read_step_payload(p, True)[2], read_step_payload(q, True)[2]
    seen: dict[str, list] = {}

    def read_twice(who: str) -> None:  # in a new thread: its buffers are made here, then reused
        held = []
        for _ in range(2):
            pairs = alongside.chunk_pairs(pp, qp)
            assert pairs is not None
            with closing(pairs):
                x, y = next(pairs)
                assert x.tobytes() == a[:16].tobytes() and y.tobytes() == b[:16].tobytes()
                held.append((x, y))
        if who == "two":  # a larger MOST: larger buffers, made anew, and every chunk read whole
            monkeypatch.setattr(alongside, "MOST", 1024)
            pairs = alongside.chunk_pairs(pp, qp)
            assert pairs is not None
            with closing(pairs):
                last = [(x.base.size, x.copy(), y.copy()) for x, y in pairs][-1]
            assert last[0] == 1024 and last[1].size == 800 - 16 - 64 - 256
            assert last[1].tobytes() == a[336:].tobytes() and last[2].tobytes() == b[336:].tobytes()
        seen[who] = held

    for who in ("one", "two"):
        t = threading.Thread(target=read_twice, args=(who,))
        t.start()
        t.join()
    assert set(seen) == {"one", "two"}  # (an assertion failed in a thread otherwise)
    for (x1, y1), (x2, y2) in [seen["one"], seen["two"]]:
        assert x1.dtype == y1.dtype == np.uint8
        assert np.shares_memory(x1.base, x2.base) and np.shares_memory(y1.base, y2.base)  # reused
        assert not np.shares_memory(x1.base, y1.base)  # two buffers
        assert x1.base.size == y1.base.size == 256  # of MOST bytes
    assert not np.shares_memory(seen["one"][0][0].base, seen["two"][0][0].base)  # one pair per thread

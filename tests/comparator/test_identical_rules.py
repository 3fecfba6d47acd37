"""memstate.comparator.identical: equal bytes mean equal tensors only under equal layouts, and chunks are
compared right wherever they start.

Two step files whose layouts differ (a tensor renamed, its dtype or shape changed) share no identical
prefix even where their bytes are the same: a tensor's bytes say nothing without its name, dtype and
shape. Chunks are compared as 8-byte words and a tail of bytes, also where a chunk starts off a word
boundary (a header whose length is not a multiple of 8): every start, every length, a difference in
any byte.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from memstate.comparator.identical import identical_prefix, known_identical, same_payload
from memstate.formats import alongside
from memstate.formats.stepfile import Payload, read_step_payload


def _file(path, table: dict, data: bytes):
    text = json.dumps(table).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def _entry(dtype, shape, start, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}


@pytest.mark.parametrize("other", [
    {"a": _entry("F64", [2], 0, 16), "c": _entry("F64", [3], 16, 40)},  # b renamed
    {"a": _entry("F64", [2], 0, 16), "b": _entry("F32", [6], 16, 40)},  # b's dtype
    {"a": _entry("F64", [2], 0, 16), "b": _entry("F64", [1, 3], 16, 40)},  # b's shape
    {"a": _entry("F64", [3], 0, 24), "b": _entry("F64", [2], 24, 40)},  # where a ends
])
@pytest.mark.parametrize("mapped", [False, True])
def test_equal_bytes_under_another_layout_share_no_identical_prefix(tmp_path, other, mapped, monkeypatch):
    monkeypatch.setattr(alongside, "FIRST", 16)
    data = np.arange(5.0).tobytes()  # 40 bytes in both files
    p = _file(tmp_path / "p", {"a": _entry("F64", [2], 0, 16), "b": _entry("F64", [3], 16, 40)}, data)
    q = _file(tmp_path / "q", other, data)
    pp, qp = read_step_payload(p, mapped)[2], read_step_payload(q, mapped)[2]
    assert pp.data.size == qp.data.size == 40 and pp.data.tobytes() == qp.data.tobytes()
    assert identical_prefix(pp, qp) == 0 and identical_prefix(qp, pp) == 0
    assert known_identical(pp, qp) == set() and not same_payload(pp, qp)
    assert identical_prefix(pp, pp) == 40 and known_identical(pp, pp) == {"a", "b"}


def _payload(buf: np.ndarray, start: int, n: int) -> Payload:
    return Payload(((0, n, "U8", (n,), "t"),), buf[start:start + n])


@pytest.mark.parametrize("n", [7, 8, 13, 40])
def test_chunks_off_a_word_boundary_compare_right(n, monkeypatch):
    monkeypatch.setattr(alongside, "FIRST", 8)  # several chunks, a first one of one word
    monkeypatch.setattr(alongside, "MOST", 16)
    base = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8)
    for sa in range(8):
        for sb in (0, 3, 5):
            a, b = np.zeros(n + 16, np.uint8), np.zeros(n + 16, np.uint8)
            a[sa:sa + n], b[sb:sb + n] = base, base
            p, q = _payload(a, sa, n), _payload(b, sb, n)
            assert identical_prefix(p, q) == n and same_payload(p, q)
            for at in sorted({0, n // 2, n - 8 if n >= 8 else 0, n - 1}):  # a word, the tail, the last byte
                b[sb + at] ^= 0x10
                want = next(s for s, k in alongside.chunk_spans(n) if s <= at < s + k)
                assert identical_prefix(p, q) == want and not same_payload(p, q)
                b[sb + at] ^= 0x10

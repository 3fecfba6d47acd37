"""memstate.comparator.identical: how much of two step files is bit-identical, read beside the mappings.

The prefix it reports must never reach past the first differing byte, must reach the start of the chunk
holding it, and must be the same whether the files are mapped (and read again with preadv:
memstate.formats.alongside) or read into memory. Small chunk sizes make short files span many chunks.
"""

from __future__ import annotations

import os
from contextlib import closing

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memstate.comparator import compare as compare_module
from memstate.comparator import identical, together
from memstate.comparator.compare import compare
from memstate.comparator.identical import identical_prefix, known_identical, same_payload
from memstate.formats import alongside
from memstate.formats.recorder import Recorder
from memstate.formats.stepfile import Payload, read_step_payload
from test_step_fastpath import _write_safetensors


def _expected(size: int, first_diff: int | None) -> int:
    """The start of the chunk (alongside.chunk_spans) that holds the first differing byte; size if none."""
    if first_diff is None:
        return size
    return next(s for s, k in alongside.chunk_spans(size) if s <= first_diff < s + k)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 90), flips=st.lists(st.integers(0, 10**6), max_size=3), pad=st.sampled_from([None, 64, 203]),
       first=st.sampled_from([8, 16, 24]), most=st.sampled_from([16, 64, 1 << 20]))
def test_the_prefix_stops_at_the_chunk_of_the_first_difference(tmp_path_factory, n, flips, pad, first, most):
    tmp = tmp_path_factory.mktemp("p")
    rng = np.random.default_rng(n)
    tensors = {"w": rng.standard_normal(n), "v": rng.standard_normal(3).astype(np.float32)}
    p, q = tmp / "p.safetensors", tmp / "q.safetensors"
    _write_safetensors(p, tensors, pad)
    _write_safetensors(q, tensors, pad)
    size = 8 * n + 12
    raw = bytearray(q.read_bytes())
    at = sorted({f % size for f in flips})
    for i in at:
        raw[len(raw) - size + i] ^= 0x01
    q.write_bytes(bytes(raw))
    with pytest.MonkeyPatch.context() as m:
        m.setattr(alongside, "FIRST", first)
        m.setattr(alongside, "MOST", max(most, first))
        answers = [identical_prefix(read_step_payload(p, mapped)[2], read_step_payload(q, mapped)[2])
                   for mapped in (False, True)]
        want = _expected(size, at[0] if at else None)
    assert answers == [want] * 2
    assert same_payload(read_step_payload(p, True)[2], read_step_payload(q, True)[2]) == (not at)


@settings(max_examples=80, deadline=None)
@given(sizes=st.lists(st.integers(0, 3), min_size=1, max_size=6), flip=st.integers(0, 10**6),
       first=st.sampled_from([8, 16, 24]), mapped=st.booleans())
def test_known_identical_names_exactly_the_tensors_that_end_before_the_chunk_that_differs(
        tmp_path_factory, sizes, flip, first, mapped):
    tmp = tmp_path_factory.mktemp("k")
    tensors = {f"t{i}": np.arange(float(n)) + i for i, n in enumerate(sizes)}  # 0 to 24 bytes each
    p, q = tmp / "p.safetensors", tmp / "q.safetensors"
    _write_safetensors(p, tensors, 64)
    _write_safetensors(q, tensors, 64)
    size = 8 * sum(sizes)
    at = flip % size if size else None
    if at is not None:
        raw = bytearray(q.read_bytes())
        raw[len(raw) - size + at] ^= 0x80
        q.write_bytes(bytes(raw))
    with pytest.MonkeyPatch.context() as m:
        m.setattr(alongside, "FIRST", first)
        m.setattr(alongside, "MOST", 2 * first)
        pp, qp = read_step_payload(p, mapped)[2], read_step_payload(q, mapped)[2]
        known = known_identical(pp, qp)
        cut = _expected(size, at)
    ends = {name: end for _, end, _, _, name in pp.layout}
    starts = {name: start for start, _, _, _, name in pp.layout}
    assert known == ({n for n in tensors if ends[n] <= cut} if cut else set())  # (empty tensors: judged anyway)
    for name in known:  # never a tensor whose bytes differ
        assert at is None or not starts[name] <= at < ends[name]


def test_a_file_renamed_over_since_it_was_mapped_is_compared_through_its_mapping(tmp_path, monkeypatch):
    x = np.linspace(0.0, 1.0, 100)
    p, q, other = tmp_path / "p", tmp_path / "q", tmp_path / "other"
    for path in (p, q):
        _write_safetensors(path, {"w": x}, pad_to=64)
    _write_safetensors(other, {"w": x + 1.0}, pad_to=64)
    monkeypatch.setattr(alongside, "FIRST", 16)
    pp, qp = read_step_payload(p, True)[2], read_step_payload(q, True)[2]
    with closing(alongside.chunk_pairs(pp, qp)) as pairs:  # the files as mapped: read again with preadv
        assert [x.size for x, _ in pairs] == [16, 64, 256, 464]
    os.replace(other, q)  # q's path now names another file; the mapping still holds the old bytes
    assert alongside.chunk_pairs(pp, qp) is None
    assert identical_prefix(pp, qp) == 800  # what the arrays show: the old q, identical to p
    q.unlink()
    assert alongside.chunk_pairs(pp, qp) is None and identical_prefix(pp, qp) == 800


def test_a_file_cut_short_since_it_was_mapped_ends_the_prefix(tmp_path, monkeypatch):
    x = np.linspace(0.0, 1.0, 100)
    p, q = tmp_path / "p", tmp_path / "q"
    for path in (p, q):
        _write_safetensors(path, {"w": x}, pad_to=64)
    monkeypatch.setattr(alongside, "FIRST", 16)
    monkeypatch.setattr(alongside, "MOST", 64)
    pp = read_step_payload(p, True)[2]
    held = read_step_payload(q, False)[2]  # q's bytes in memory: nothing touches a mapping past the cut
    qp = Payload(held.layout, held.data, read_step_payload(q, True)[2].source)
    assert identical_prefix(pp, qp) == 800
    q.write_bytes(q.read_bytes()[:qp.source.start + 400])  # the same file, shorter: preadv comes back short
    assert 0 < identical_prefix(pp, qp) <= 400


def test_known_identical_names_the_tensors_before_the_first_difference(tmp_path, monkeypatch):
    monkeypatch.setattr(alongside, "FIRST", 64)
    monkeypatch.setattr(alongside, "MOST", 64)
    rng = np.random.default_rng(3)
    tensors = {name: rng.standard_normal(8) for name in ("a", "b", "c", "d")}  # 64 bytes each, in this order
    p, q = tmp_path / "p", tmp_path / "q"
    _write_safetensors(p, tensors, pad_to=64)
    changed = dict(tensors, c=tensors["c"] + 1e-9)
    _write_safetensors(q, changed, pad_to=64)
    for mapped in (False, True):
        pp, qp = read_step_payload(p, mapped)[2], read_step_payload(q, mapped)[2]
        assert identical_prefix(pp, qp) == 128
        assert known_identical(pp, qp) == {"a", "b"}
        assert known_identical(pp, None) == set() and known_identical(None, qp) == set()


def test_only_tensors_past_the_identical_prefix_are_judged_one_by_one(tmp_path, monkeypatch):
    names = ("x", "W", "z", "probs")
    rng = np.random.default_rng(5)
    base = {n: rng.standard_normal((64, 64)) for n in names}  # 32 KiB each
    a, b = tmp_path / "a.memstate", tmp_path / "b.memstate"
    for path, late in ((a, 0.0), (b, 1e-13)):
        with Recorder(path, {"steps": 2}) as rec:
            for k in range(2):
                with rec.step(k):
                    for n in names:
                        rec.record(n, base[n] + (late if n == "probs" and k == 1 else 0.0))
    monkeypatch.setattr(alongside, "FIRST", 1 << 15)
    monkeypatch.setattr(together, "SMALL", 0)  # every tensor past the prefix judged alone, so the spy sees it
    seen = []
    real = compare_module.compare_tensors

    def spy(name, step, *args, **kw):
        seen.append((step, name))
        return real(name, step, *args, **kw)

    monkeypatch.setattr(compare_module, "compare_tensors", spy)
    c = compare(a, b)
    assert c.verdict == "agree"
    order = [t[4] for t in read_step_payload(next(a.glob("step-*1.safetensors")), True)[2].layout]
    assert seen == [(1, n) for n in names if order.index(n) >= order.index("probs")]  # from its chunk on
    by_step = {s.step: {t.name: t.metrics.max_abs_error for t in s.tensors} for s in c.steps}
    assert by_step[1]["probs"] > 0 and by_step[1]["x"] == 0 and all(v == 0 for v in by_step[0].values())


def test_the_module_is_what_compare_uses():
    assert compare_module.known_identical is identical.known_identical

"""The comparator's step-level fast paths (issue 14) give what the per-tensor path gives.

Two binary step files with the same layout and the same bytes are settled in one pass over their bytes
(memstate.comparator.identical); detail="divergent" (what `memstate diff --format text` asks for)
skips the full metrics of kept steps that pass. Each is checked against the slow path on the same traces:
a flipped bit anywhere, -0 against 0, nan payloads, float32 with an odd byte count, a header whose length
leaves the data off an 8-byte boundary, and layouts that differ only in names or order.
"""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memstate.comparator import compare as compare_module
from memstate.comparator import together
from memstate.comparator.compare import compare
from memstate.comparator.identical import identical_prefix, same_payload
from memstate.formats import alongside
from memstate.formats.recorder import Recorder
from memstate.formats.stepfile import read_step_payload
from memstate.report import text as report_text

NAMES = ("x", "L1.z", "L1.a", "probs", "loss", "L1.W")


def _record(path, steps, dtype=np.float64, change=None, seed=0):
    """A random binary (or JSONL) trace; change(k, name, array) may alter what step k records."""
    rng = np.random.default_rng(seed)
    with Recorder(path, {"steps": len(steps)}) as rec:
        for k in steps:
            with rec.step(k):
                for i, name in enumerate(NAMES):
                    v = rng.standard_normal(() if name == "loss" else (3, 5 + i)).astype(dtype)
                    rec.record(name, change(k, name, v) if change else v)


def _slow(a, b, **kw):
    """compare() with the step fast path switched off: every tensor judged on its own."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(compare_module, "known_identical", lambda p, q: set())
        return compare(a, b, **kw)


def _same_result(fast, slow) -> None:
    assert fast.verdict == slow.verdict
    assert fast.overview == slow.overview and fast.series == slow.series
    assert [s.step for s in fast.steps] == [s.step for s in slow.steps]
    for s, t in zip(fast.steps, slow.steps):
        assert [(x.name, x.within_tolerance, x.metrics) for x in s.tensors] == \
               [(y.name, y.within_tolerance, y.metrics) for y in t.tensors]
    fd, sd = fast.first_divergence, slow.first_divergence
    assert (fd and (fd.step, fd.name, fd.kind)) == (sd and (sd.step, sd.name, sd.kind))


EDITS = st.sampled_from(["none", "flip-low-bit", "minus-zero", "nan-payload", "nan-both"])


@settings(max_examples=40, deadline=None)
@given(edit=EDITS, step=st.integers(0, 4), name=st.sampled_from(NAMES), index=st.integers(0, 200),
       dtype=st.sampled_from([np.float64, np.float32]), first=st.sampled_from([None, 16, 40]))
def test_one_pass_step_test_equals_the_per_tensor_path(tmp_path_factory, edit, step, name, index, dtype, first):
    # first: the first chunk's size in bytes (memstate.formats.alongside), small enough that the identical
    # prefix of a step ends inside it, short of the edit, or at the tensor before it
    tmp = tmp_path_factory.mktemp("t")
    a, b = tmp / "a.memstate", tmp / "b.memstate"

    def change(k, n, v):
        if k != step or n != name or edit == "none":
            return v
        v = np.array(v)  # (a 0-d copy too)
        flat = v.reshape(-1)
        i = index % flat.size
        ints = flat.view(np.uint64 if dtype == np.float64 else np.uint32)
        if edit == "flip-low-bit":
            ints[i] ^= 1
        elif edit == "minus-zero":
            flat[i] = 0.0
        elif edit in ("nan-payload", "nan-both"):
            flat[i] = np.nan
        return v

    def change_a(k, n, v):  # A differs from B only where B was edited to carry -0 or another nan
        v = change(k, n, v)
        if k == step and n == name and edit in ("minus-zero", "nan-payload"):
            flat = v.reshape(-1)
            i = index % flat.size
            flat[i] = -0.0 if edit == "minus-zero" else np.nan
            if edit == "nan-payload":
                flat.view(np.uint64 if dtype == np.float64 else np.uint32)[i] |= 1
        return v

    _record(a, range(5), dtype, change_a)
    _record(b, range(5), dtype, change)
    with pytest.MonkeyPatch.context() as m:
        if first is not None:
            m.setattr(alongside, "FIRST", first)
            m.setattr(alongside, "MOST", 2 * first)
        fast = compare(a, b, detail="full")
    slow = _slow(a, b, detail="full")
    _same_result(fast, slow)
    if edit in ("none", "nan-both"):
        assert fast.verdict == "agree" and all(x.metrics.max_abs_error == 0.0 for s in fast.steps for x in s.tensors)


def _write_safetensors(path, tensors, pad_to=None):
    """A safetensors file written by hand: tensors {name: float array}; the header padded with spaces to
    `pad_to` bytes (None: no padding, so the data may start off an 8-byte boundary)."""
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        raw = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": "F64" if arr.dtype == np.float64 else "F32", "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    if pad_to is not None:
        text = text.ljust(pad_to)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


@pytest.mark.parametrize("pad_to", [None, 203, 256])
@pytest.mark.parametrize("mapped", [False, True])
def test_same_payload_on_unaligned_data_and_odd_byte_counts(tmp_path, pad_to, mapped):
    rng = np.random.default_rng(1)
    tensors = {"w": rng.standard_normal(9), "v": rng.standard_normal(3).astype(np.float32)}  # 84 bytes
    p, q = tmp_path / "p.safetensors", tmp_path / "q.safetensors"
    _write_safetensors(p, tensors, pad_to)
    _write_safetensors(q, tensors, pad_to)
    pp, qp = read_step_payload(p, mapped)[2], read_step_payload(q, mapped)[2]
    assert pp.data.size == 84 and same_payload(pp, qp)
    for byte in (0, 71, 72, 83):  # in the first word, the last whole word, the tail
        raw = bytearray(q.read_bytes())
        raw[len(raw) - 84 + byte] ^= 0x10
        q.write_bytes(bytes(raw))
        assert not same_payload(pp, read_step_payload(q, mapped)[2]), byte
        q.write_bytes(bytes(raw[:len(raw) - 84 + byte]) + bytes([raw[len(raw) - 84 + byte] ^ 0x10])
                      + bytes(raw[len(raw) - 84 + byte + 1:]))
        assert same_payload(pp, read_step_payload(q, mapped)[2])


def test_same_bytes_under_another_layout_are_not_the_same_payload(tmp_path):
    x, y = np.arange(4.0), np.arange(4.0) + 10
    p, q, r = tmp_path / "p", tmp_path / "q", tmp_path / "r"
    _write_safetensors(p, {"a": x, "b": y})
    _write_safetensors(q, {"b": x, "a": y})  # the same bytes, the names swapped
    _write_safetensors(r, {"a": np.concatenate([x, y]).reshape(2, 4)})  # the same bytes, one tensor
    pp = read_step_payload(p)[2]
    assert pp.data.size == 64
    assert not same_payload(pp, read_step_payload(q)[2])
    assert not same_payload(pp, read_step_payload(r)[2])


def _diverging_pair(tmp_path, encoding):
    suffix = ".memstate" if encoding == "binary" else ".jsonl"
    a, b = tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"
    _record(a, range(12))
    _record(b, range(12), change=lambda k, n, v: v * (1 + 1e-12) + (1e-3 if (k, n) == (8, "L1.a") else 0.0))
    return a, b


@pytest.mark.parametrize("encoding", ["binary", "jsonl"])
def test_divergent_detail_skips_only_what_the_text_report_does_not_show(tmp_path, encoding):
    a, b = _diverging_pair(tmp_path, encoding)
    shown, divergent = compare(a, b), compare(a, b, detail="divergent")
    assert report_text.render(shown) == report_text.render(divergent)
    assert divergent.first_divergence.step == 8 and divergent.first_divergence.name == "L1.a"
    details = {x.metrics.detail for s in divergent.steps for x in s.tensors if x.within_tolerance}
    assert details == {"summary"}  # kept steps that pass: ULPs, cosine and elementwise rel not computed
    assert {x.metrics.detail for s in shown.steps for x in s.tensors} == {"full"}
    for s, t in zip(shown.steps, divergent.steps):
        for x, y in zip(s.tensors, t.tensors):
            assert (x.within_tolerance, x.max_abs_error, x.max_rel_error) == \
                   (y.within_tolerance, y.max_abs_error, y.max_rel_error)
            if not x.within_tolerance:
                assert y.metrics == x.metrics  # out of tolerance: in full either way
    with pytest.raises(ValueError, match="'divergent'"):
        compare(a, b, detail="some")


def test_cli_text_diff_still_prints_the_divergence_in_full(tmp_path):
    a, b = _diverging_pair(tmp_path, "binary")
    out = subprocess.run([sys.executable, "-m", "memstate", "diff", str(a), str(b)], capture_output=True, text=True)
    assert out.returncode == 1, out.stderr
    assert "first divergence: step 8, L1.a" in out.stdout
    flat = " ".join(out.stdout.split())  # (the report wraps its lines)
    assert re.search(r"max abs 1\.0e-03, max rel \S+ \(of scale \S+\), [0-9.e+]+ ulps \(float64\), "
                     r"cosine 1 - [0-9.]+e-0\d", flat), flat


def test_identical_binary_steps_take_the_one_pass_path(tmp_path, monkeypatch):
    a, b = tmp_path / "a.memstate", tmp_path / "b.memstate"
    _record(a, range(6))
    _record(b, range(6))

    def per_tensor(*args, **kw):
        raise AssertionError("a bit-identical step was judged tensor by tensor")

    monkeypatch.setattr(compare_module, "compare_tensors", per_tensor)
    c = compare(a, b)
    assert c.verdict == "agree" and c.steps_compared == 6
    assert all(x.metrics.max_ulp == 0.0 and x.metrics.cosine == 1.0 for s in c.steps for x in s.tensors)
    jsonl = tmp_path / "b.jsonl"
    _record(jsonl, range(6))
    c = compare(a, jsonl)  # JSONL has no step bytes to compare, but its small tensors are judged together
    assert c.verdict == "agree" and {x.metrics.detail for s in c.steps for x in s.tensors} == {"full"}
    monkeypatch.setattr(together, "SMALL", 0)
    with pytest.raises(AssertionError, match="tensor by tensor"):  # and without that, one by one
        compare(a, jsonl)


def test_same_payload_finds_a_difference_in_the_last_element_of_a_large_step(tmp_path):
    n = 3 * (1 << 16) + 5  # several blocks of words and a short last one
    a = np.linspace(-1.0, 1.0, n)
    b = a.copy()
    p, q = tmp_path / "p.safetensors", tmp_path / "q.safetensors"
    _write_safetensors(p, {"w": a, "v": np.ones(3, dtype=np.float32)}, pad_to=256)  # data on a word boundary
    _write_safetensors(q, {"w": b, "v": np.ones(3, dtype=np.float32)}, pad_to=256)
    pp = read_step_payload(p, True)[2]
    assert pp.data.ctypes.data % 8 == 0
    assert same_payload(pp, read_step_payload(q, True)[2])
    b[-1] = np.nextafter(b[-1], 2.0)
    _write_safetensors(q, {"w": b, "v": np.ones(3, dtype=np.float32)}, pad_to=256)
    assert not same_payload(pp, read_step_payload(q, True)[2])

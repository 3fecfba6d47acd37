"""The fast readers and writers of issue 14: orjson JSONL, zero-copy step files, huge lines in bounded memory.

Each is checked against the plain path on the same data (the safetensors library, the stdlib json
module), bit for bit: -0.0, subnormals, nan and inf, float32 written as its exact double.
"""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays
from safetensors.numpy import load_file, save_file

from bit_helpers import assert_same_bits, bits
from memstate.errors import FormatError
from memstate.formats import bigline
from memstate.formats.recorder import Recorder
from memstate.formats import stepfile
from memstate.formats.stepfile import BadStepFile, read_safetensors
from memstate.formats.tensorjson import decode_fields, dumps_record, encode_fields
from memstate.formats.trace import read_trace

SPECIAL = [0.0, -0.0, 5e-324, -5e-324, 1e308, -1e-308, 0.1, 1 / 3, np.nan, np.inf, -np.inf]


def _values(dtype):
    width = 64 if dtype == np.float64 else 32
    with np.errstate(over="ignore", under="ignore"):
        special = [float(np.asarray(v, dtype)) for v in SPECIAL]
    return st.one_of(st.sampled_from(special),
                     st.floats(width=width, allow_nan=True, allow_infinity=True))


ARRAYS = st.sampled_from([np.float64, np.float32]).flatmap(
    lambda dt: arrays(dt, array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4), elements=_values(dt)))


@settings(max_examples=80, deadline=None)
@given(ARRAYS)
def test_orjson_record_holds_the_same_json_values_as_the_stdlib_encoder(arr):
    line = dumps_record({"step": 3, "name": "t"}, arr)
    assert line.endswith(b"}\n") and line.count(b"\n") == 1  # one line, ending in its newline
    want = {"step": 3, "name": "t", **encode_fields(arr)}
    got = json.loads(line)
    assert json.dumps(got) == json.dumps(want)  # same values, same order, nan/inf as the spec's strings
    back = decode_fields(got, "test", "t")
    assert_same_bits(back, arr, exact_nan=False)


def test_float32_is_written_as_its_exact_double_and_minus_zero_keeps_its_sign():
    line = dumps_record({"name": "t"}, np.array([0.1, -0.0], dtype=np.float32))
    assert b"0.10000000149011612" in line and b"-0.0" in line
    line = dumps_record({"name": "t"}, np.array([np.nan, -np.inf, 1.0]))
    assert b'"nan","-inf",1.0' in line


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b.c", "L1.z"]), ARRAYS), min_size=0, max_size=4,
                unique_by=lambda t: t[0]))
def test_step_file_reader_agrees_with_the_safetensors_library(tmp_path_factory, tensors):
    path = tmp_path_factory.mktemp("st") / "s.safetensors"
    named = {n: np.ascontiguousarray(a) for n, a in tensors}
    save_file(named, str(path), metadata={"step": "0"})
    want = load_file(str(path))
    for mapped in (False, True):
        meta, got = read_safetensors(path, mapped)
        assert meta == {"step": "0"} and set(got) == set(want)
        for name, (dt, arr) in got.items():
            assert dt == ("F64" if want[name].dtype == np.float64 else "F32")
            np.testing.assert_array_equal(bits(arr), bits(want[name]))
            assert arr.flags.writeable == (not mapped)


def test_step_file_tensors_are_views_of_one_buffer(tmp_path):
    path = tmp_path / "s.safetensors"
    save_file({"a": np.arange(4.0), "b": np.ones((2, 3), np.float32)}, str(path))
    _, got = read_safetensors(path)
    bases = {id(arr.base) for _, arr in got.values()}
    assert len(bases) == 1  # no copy per tensor


@pytest.mark.parametrize("damage, message", [
    (lambda raw: raw[:-3], "take 32 bytes but the file holds 29"),
    (lambda raw: (10**9).to_bytes(8, "little") + raw[8:], "header length 1000000000 does not fit"),
    (lambda raw: raw[:8] + b"!" + raw[9:], "header is not JSON"),
    (lambda raw: raw + b"\0" * 8, "take 32 bytes but the file holds 40"),
    (lambda raw: raw[:5], "shorter than the 8-byte header length"),
])
def test_damaged_step_files_are_refused(tmp_path, damage, message):
    path = tmp_path / "s.safetensors"
    save_file({"a": np.arange(4.0)}, str(path))
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(BadStepFile, match=message):
        read_safetensors(path)


def test_overlapping_offsets_are_refused(tmp_path):
    header = json.dumps({"a": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]},
                         "b": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}}).encode()
    path = tmp_path / "s.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)
    with pytest.raises(BadStepFile, match="overlaps or leaves a gap"):
        read_safetensors(path)


def _raw_file(path, table: dict, data: bytes) -> None:
    header = json.dumps(table).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + data)


def test_a_remembered_tensor_table_is_still_checked_against_each_file(tmp_path, monkeypatch):
    # the second and later files with one table skip the entry checks (stepfile._checked_table), not the rest
    monkeypatch.setattr(stepfile, "_CHECKED", {})
    table = {"a": {"dtype": "F64", "shape": [2], "data_offsets": [0, 16]}}
    _raw_file(tmp_path / "good.safetensors", table, np.array([1.5, -2.0]).tobytes())
    assert read_safetensors(tmp_path / "good.safetensors")[1]["a"][1].tolist() == [1.5, -2.0]
    assert len(stepfile._CHECKED) == 1
    _raw_file(tmp_path / "short.safetensors", table, b"\0" * 12)
    with pytest.raises(BadStepFile, match="take 16 bytes but the file holds 12"):
        read_safetensors(tmp_path / "short.safetensors")
    # equal to the remembered table under ==, but not the same JSON: checked afresh, and refused
    for shape, message in (([2.0], "shape must be a list of non-negative integers"),
                           ([True, 2], "shape must be a list of non-negative integers")):
        _raw_file(tmp_path / "typed.safetensors", {"a": dict(table["a"], shape=shape)}, b"\0" * 16)
        with pytest.raises(BadStepFile, match=message):
            read_safetensors(tmp_path / "typed.safetensors")
    offsets = {"a": dict(table["a"], data_offsets=[0.0, 16])}
    _raw_file(tmp_path / "offsets.safetensors", offsets, b"\0" * 16)
    with pytest.raises(BadStepFile, match="data_offsets must be"):
        read_safetensors(tmp_path / "offsets.safetensors")
    assert len(stepfile._CHECKED) == 1  # a refused table is not remembered


def test_the_table_memo_starts_over_when_full(tmp_path, monkeypatch):
    monkeypatch.setattr(stepfile, "_CHECKED", {})
    monkeypatch.setattr(stepfile, "CHECKED_LIMIT", 3)
    for n in range(1, 8):
        _raw_file(tmp_path / "s.safetensors", {"a": {"dtype": "F64", "shape": [n], "data_offsets": [0, 8 * n]}},
                  np.arange(float(n)).tobytes())
        assert read_safetensors(tmp_path / "s.safetensors")[1]["a"][1].tolist() == list(range(n))
        assert 1 <= len(stepfile._CHECKED) <= 3


def test_parse_error_keeps_the_precise_line_and_column(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"format": "memstate.trace", "version": 1}\n{"step": 0, "name": "x", "shape": [1], '
                    '"dtype": "float64", "data": [1.0,, 2.0]}\n')
    with pytest.raises(FormatError, match=r"line 2.*column 73"):
        read_trace(path)


# ---- huge lines


def _line(arr: np.ndarray) -> bytes:
    return dumps_record({"step": 0, "name": "w"}, arr)


@settings(max_examples=60, deadline=None)
@given(ARRAYS, st.integers(8, 64))
def test_streamed_data_equals_the_plain_parse(arr, block):
    raw = _line(arr)
    old = bigline.BLOCK_BYTES
    bigline.BLOCK_BYTES = block  # many blocks even for a short line
    try:
        obj = bigline.parse_big_record(raw)
    finally:
        bigline.BLOCK_BYTES = old
    assert obj is not None
    plain = json.loads(raw)
    assert {k: v for k, v in obj.items() if k != "data"} == {k: v for k, v in plain.items() if k != "data"}
    assert_same_bits(decode_fields(obj, "t", "w"), decode_fields(plain, "t", "w"), exact_nan=True)


@pytest.mark.parametrize("data, message", [
    ('[1.0, true]', "holds bool"), ('[1.0, "nan", "NaN"]', "the string 'NaN'"), ('[1.0, {}]', "holds dict"),
    ('[1.0, 1e400]', "out of float64 range"), ('[1.0,, 2.0]', "not a flat JSON list"),
])
def test_streamed_data_is_as_strict_as_the_plain_reader(data, message):
    raw = b'{"step": 0, "name": "w", "shape": [2], "dtype": "float64", "data": ' + data.encode() + b"}"
    with pytest.raises(bigline.BadData, match=message):
        bigline.parse_big_record(raw)


def test_a_nested_data_list_is_left_to_the_plain_parser():
    raw = b'{"step": 0, "name": "w", "shape": [2], "dtype": "float64", "data": [1.0, [2.0]]}'
    assert bigline.parse_big_record(raw) is None


def test_a_name_that_spells_data_does_not_confuse_the_streaming_path():
    raw = _line(np.arange(3.0)).replace(b'"name":"w"', b'"name":"\\"data\\":[9,9]"')
    obj = bigline.parse_big_record(raw)
    assert obj["name"] == '"data":[9,9]' and obj["data"].tolist() == [0.0, 1.0, 2.0]


def test_a_large_line_costs_at_most_twice_its_size(tmp_path, monkeypatch):
    monkeypatch.setattr(bigline, "STREAM_BYTES", 1 << 20)
    monkeypatch.setattr("memstate.formats.trace.STREAM_BYTES", 1 << 20)
    arr = np.random.default_rng(0).standard_normal(400_000)  # a line of about 8 MB
    path = tmp_path / "big.jsonl"
    with Recorder(path) as rec:
        with rec.step(0):
            rec.record("w", arr)
    size = max(len(x) for x in path.read_bytes().splitlines())
    tracemalloc.start()
    try:
        steps = read_trace(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(bits(steps[0].tensors["w"]), bits(arr))
    assert peak < 2 * size, (peak, size)


def test_lines_above_the_configured_limit_are_refused(tmp_path, monkeypatch):
    path = tmp_path / "t.jsonl"
    with Recorder(path) as rec:
        with rec.step(0):
            rec.record("w", np.arange(1000.0))
    monkeypatch.setenv("MEMSTATE_MAX_LINE_BYTES", "1000")
    with pytest.raises(FormatError,
                       match=r"line 2: line of 5954 bytes or more, longer than 1000 \(MEMSTATE_MAX_LINE_BYTES\)"):
        read_trace(path)

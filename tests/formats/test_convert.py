"""Converting traces between encodings: streaming, bit for bit, crash endings carried over."""

import json
import math
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from bit_helpers import bits
from memstate.formats.convert import convert_trace
from memstate.errors import MemstateError
from memstate.formats.recorder import Recorder
from memstate.formats.trace import open_trace, read_trace

CONFORMANCE = Path(__file__).resolve().parents[1] / "conformance"
SHAPES = array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=4)
VALUES = [0.0, -0.0, 5e-324, -5e-324, 1.7976931348623157e308, math.nan, math.inf, -math.inf, 1 / 3]
# the raw bits of NaNs with a sign and a payload, which only the binary encoding and b64 keep
ODD_NANS = np.array([0xFFF8000000000000, 0x7FF0000000000001, 0x7FF4000000000000], dtype=np.uint64).view(np.float64)
ODD_NANS32 = np.array([0xFFC00000, 0x7F800001, 0x7FA00000], dtype=np.uint32).view(np.float32)

ARRAYS = st.one_of(
    arrays("<f8", SHAPES, elements=st.sampled_from(VALUES) | st.floats()),
    arrays("<f4", SHAPES, elements=st.sampled_from([0.0, -0.0, 1e-45, math.nan, -math.inf]) | st.floats(width=32)),
)
TRACES = st.lists(st.dictionaries(st.sampled_from(["x", "L1.z", "loss", "L1.W"]), ARRAYS, max_size=4), max_size=3)


def record(path: Path, steps: list[dict], incomplete: dict | None = None) -> None:
    with Recorder(path, meta={"impl": "t", "scenario": "convert"}) as rec:
        for k, tensors in enumerate(steps):
            with rec.step(k):
                for name, arr in tensors.items():
                    rec.record(name, arr)
        if incomplete is not None:
            with pytest.raises(RuntimeError), rec.step(len(steps)):
                for name, arr in incomplete.items():
                    rec.record(name, arr)
                raise RuntimeError("crash")


def assert_same_traces(a: Path, b: Path) -> None:
    with open_trace(a) as ra, open_trace(b) as rb:
        assert ra.meta == rb.meta
        sa, sb = list(ra.steps(include_incomplete=True)), list(rb.steps(include_incomplete=True))
    assert [(s.index, s.complete, s.names()) for s in sa] == [(s.index, s.complete, s.names()) for s in sb]
    for x, y in zip(sa, sb):
        for name in x.tensors:
            assert x.tensors[name].dtype == y.tensors[name].dtype
            np.testing.assert_array_equal(bits(x.tensors[name]), bits(y.tensors[name]))


@settings(max_examples=60, deadline=None)
@given(steps=TRACES, incomplete=st.none() | st.dictionaries(st.sampled_from(["x", "y"]), ARRAYS, max_size=2))
def test_jsonl_to_binary_and_back_is_byte_identical(steps, incomplete):
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        record(d / "a.memstate.jsonl", steps, incomplete)
        assert convert_trace(d / "a.memstate.jsonl", d / "b.memstate") == len(steps)
        assert convert_trace(d / "b.memstate", d / "c.memstate.jsonl") == len(steps)
        assert_same_traces(d / "a.memstate.jsonl", d / "b.memstate")
        assert (d / "c.memstate.jsonl").read_bytes() == (d / "a.memstate.jsonl").read_bytes()


@settings(max_examples=60, deadline=None)
@given(steps=TRACES)
def test_binary_to_b64_jsonl_and_back_keeps_every_bit(steps):
    steps = steps + [{"nans": ODD_NANS, "nans32": ODD_NANS32}]
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        record(d / "a.memstate", steps)
        convert_trace(d / "a.memstate", d / "b.memstate.jsonl", b64=True)
        convert_trace(d / "b.memstate.jsonl", d / "c.memstate")
        assert_same_traces(d / "a.memstate", d / "b.memstate.jsonl")
        assert_same_traces(d / "a.memstate", d / "c.memstate")


def test_jsonl_data_keeps_everything_but_nan_payloads(tmp_path):
    values = np.concatenate([ODD_NANS, [-0.0, 5e-324, np.inf, -np.inf, 0.1]])
    record(tmp_path / "a.memstate", [{"v": values}])
    convert_trace(tmp_path / "a.memstate", tmp_path / "b.jsonl")
    got = read_trace(tmp_path / "b.jsonl")[0].tensors["v"]
    want = values.copy()
    want[np.isnan(want)] = np.nan
    np.testing.assert_array_equal(bits(got), bits(want))


def test_conformance_truncated_trace_converts_with_its_incomplete_step(tmp_path):
    src = CONFORMANCE / "truncated.memstate.jsonl"
    assert convert_trace(src, tmp_path / "t.memstate") == 1
    assert (tmp_path / "t.memstate" / "step-00000001.safetensors.tmp").is_file()
    assert_same_traces(src, tmp_path / "t.memstate")
    assert convert_trace(tmp_path / "t.memstate", tmp_path / "t.jsonl") == 1
    written = (tmp_path / "t.jsonl").read_bytes().splitlines()
    original = src.read_bytes().splitlines()
    # all but the cut line, record for record (orjson spells them without spaces since issue 14)
    assert [json.loads(x) for x in written] == [json.loads(x) for x in original[:len(written)]]
    assert len(written) == len(original) - 1


def test_conformance_small_trace_round_trips(tmp_path):
    src = CONFORMANCE / "small.memstate.jsonl"
    assert convert_trace(src, tmp_path / "s.memstate") == 2
    assert convert_trace(tmp_path / "s.memstate", tmp_path / "s.jsonl") == 2
    lines = (tmp_path / "s.jsonl").read_bytes().splitlines()
    assert [json.loads(x) for x in lines] == [json.loads(x) for x in src.read_bytes().splitlines()]
    assert convert_trace(tmp_path / "s.jsonl", tmp_path / "s2.memstate") == 2  # and the output is canonical:
    assert convert_trace(tmp_path / "s2.memstate", tmp_path / "s2.jsonl") == 2
    assert (tmp_path / "s2.jsonl").read_bytes() == (tmp_path / "s.jsonl").read_bytes()


def test_same_source_and_destination_is_refused(tmp_path):
    record(tmp_path / "a.jsonl", [{"x": np.ones(1)}])
    with pytest.raises(MemstateError, match=re.escape(str(tmp_path / "a.jsonl")) + ": source and destination"):
        convert_trace(tmp_path / "a.jsonl", tmp_path / "a.jsonl")

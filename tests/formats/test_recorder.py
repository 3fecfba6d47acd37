"""The Recorder and the trace writers: what implementations can pass, and what a crash leaves behind."""

import json
import re

import numpy as np
import pytest

from memstate.errors import MemstateError
from memstate.formats.recorder import BinaryWriter, JsonlWriter, Recorder, as_float_array, encoding_for, open_writer
from memstate.formats.trace import open_trace, read_trace


@pytest.fixture(params=["jsonl", "binary"])
def trace_path(request, tmp_path):
    return tmp_path / ("run.memstate" if request.param == "binary" else "run.memstate.jsonl")


def test_records_lists_floats_and_arrays(trace_path):
    with Recorder(trace_path, meta={"impl": "pure-python", "dtype": "float64"}) as rec:
        with rec.step(0):
            rec.record("x", [[1.0, 2.0], [3.0, 4.0]])
            rec.record("loss", 0.5)
            rec.record("ints", [1, 2, 3])
            rec.record("f32", np.array([0.1], dtype=np.float32))
            rec.record("forced", [0.1, 0.2], dtype="float32")
            rec.record("scalar64", np.float64(2.0))
            rec.record("bools", np.array([True, False]))
    with open_trace(trace_path) as reader:
        assert reader.meta == {"impl": "pure-python", "dtype": "float64"}
        (step,) = list(reader)
    t = step.tensors
    assert step.names() == ["x", "loss", "ints", "f32", "forced", "scalar64", "bools"]
    assert t["x"].dtype == np.float64 and t["x"].tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert t["loss"].shape == () and t["loss"].dtype == np.float64 and float(t["loss"]) == 0.5
    assert t["ints"].dtype == np.float64
    assert t["f32"].dtype == np.float32 and t["f32"][0] == np.float32(0.1)
    assert t["forced"].dtype == np.float32 and t["forced"].tolist() == np.array([0.1, 0.2], np.float32).tolist()
    assert t["scalar64"].shape == () and t["bools"].tolist() == [1.0, 0.0]


def test_step_left_by_an_exception_is_incomplete(trace_path):
    rec = Recorder(trace_path, meta={"impl": "t"})
    with rec.step(0):
        rec.record("a", [1.0])
    with pytest.raises(ZeroDivisionError):
        with rec.step(1):
            rec.record("a", [2.0])
            rec.record("b", 1 / 0)
    with pytest.raises(MemstateError, match="step 1 was left incomplete"):
        with rec.step(2):
            pass
    rec.close()
    with open_trace(trace_path) as reader:
        assert [s.index for s in reader] == [0]
        assert reader.incomplete.index == 1 and reader.incomplete.names() == ["a"]
        assert not reader.incomplete.complete


def test_arrays_are_copied_at_record_time(trace_path):
    buf = np.zeros(3)
    with Recorder(trace_path) as rec, rec.step(0):
        rec.record("before", buf)
        buf += 1
        rec.record("after", buf)
        buf += 1
    t = read_trace(trace_path)[0].tensors
    assert t["before"].tolist() == [0.0, 0.0, 0.0] and t["after"].tolist() == [1.0, 1.0, 1.0]


def test_each_step_is_on_disk_when_it_ends(trace_path):
    with Recorder(trace_path) as rec:
        assert read_trace(trace_path) == []  # the header is there from the start
        with rec.step(3):
            rec.record("a", [1.0])
        assert [s.index for s in read_trace(trace_path)] == [3]
        if rec.encoding == "binary":
            assert not list(trace_path.glob("*.tmp"))


@pytest.mark.parametrize("value, match", [
    (np.array(["a"]), "dtype <U1 is not numeric"),
    (np.array([object()]), "dtype object is not numeric"),
    ([[1.0], [2.0, 3.0]], "rectangular nested lists"),
    (np.array([1 + 2j]), "dtype complex128 is not numeric"),
    ([1.0, None], "dtype object is not numeric"),
])
def test_unusable_values_are_refused(tmp_path, value, match):
    with Recorder(tmp_path / "r.jsonl") as rec, rec.step(0):
        with pytest.raises(MemstateError, match=r"r\.jsonl, step 0, tensor 'v': .*" + match):
            rec.record("v", value)


def test_bad_forced_dtype(tmp_path):
    with Recorder(tmp_path / "r.jsonl") as rec, rec.step(0):
        with pytest.raises(MemstateError, match="dtype='int32' is not allowed"):
            rec.record("v", [1.0], dtype="int32")


def test_duplicate_name_in_a_step(trace_path):
    with Recorder(trace_path) as rec:
        with rec.step(0):
            rec.record("a", [1.0])
            with pytest.raises(MemstateError, match=r"step 0, tensor 'a': recorded twice in one step"):
                rec.record("a", [2.0])
        with rec.step(1):
            rec.record("a", [3.0])  # the same name in another step is fine
    assert [s.tensors["a"].tolist() for s in read_trace(trace_path)] == [[1.0], [3.0]]


def test_record_outside_a_step(tmp_path):
    with Recorder(tmp_path / "r.jsonl") as rec:
        with pytest.raises(MemstateError, match=r"record\('a'\) outside a step"):
            rec.record("a", [1.0])


@pytest.mark.parametrize("first, second", [(1, 1), (2, 1)])
def test_steps_must_increase(tmp_path, first, second):
    with Recorder(tmp_path / "r.jsonl") as rec:
        with rec.step(first):
            pass
        with pytest.raises(MemstateError, match=f"step {second} after step {first}"):
            with rec.step(second):
                pass


@pytest.mark.parametrize("bad", [-1, 1.5, True, "0"])
def test_bad_step_numbers(tmp_path, bad):
    with Recorder(tmp_path / "r.jsonl") as rec:
        with pytest.raises(MemstateError, match="non-negative integer"):
            with rec.step(bad):
                pass


def test_nested_steps_are_refused(tmp_path):
    with Recorder(tmp_path / "r.jsonl") as rec, rec.step(0):
        with pytest.raises(MemstateError, match="step 0 is still open"):
            with rec.step(1):
                pass


@pytest.mark.parametrize("name", ["", "__metadata__", 3])
def test_bad_names(tmp_path, name):
    with Recorder(tmp_path / "r.jsonl") as rec, rec.step(0):
        with pytest.raises(MemstateError, match="bad tensor name"):
            rec.record(name, [1.0])


def test_meta_must_be_json(tmp_path):
    with pytest.raises(MemstateError, match="meta must be plain JSON"):
        Recorder(tmp_path / "r.jsonl", meta={"lr": float("nan")})
    with pytest.raises(MemstateError, match="meta must be plain JSON"):
        Recorder(tmp_path / "r.jsonl", meta={"f": object()})


def test_encoding_from_path_or_explicit(tmp_path):
    assert encoding_for(tmp_path / "a.memstate") == "binary"
    assert encoding_for(tmp_path) == "binary"
    assert encoding_for(tmp_path / "a.memstate.jsonl") == "jsonl"
    assert encoding_for(tmp_path / "anything.txt") == "jsonl"
    assert isinstance(open_writer(tmp_path / "b.memstate"), BinaryWriter)
    assert isinstance(open_writer(tmp_path / "j.jsonl"), JsonlWriter)
    rec = Recorder(tmp_path / "forced.jsonl", encoding="binary")
    rec.close()
    assert (tmp_path / "forced.jsonl" / "header.json").is_file()
    with pytest.raises(MemstateError, match="unknown trace encoding 'zip'"):
        Recorder(tmp_path / "z", encoding="zip")


def test_jsonl_b64_and_layout(tmp_path):
    path = tmp_path / "r.memstate.jsonl"
    with Recorder(path, meta={"impl": "t"}, b64=True) as rec, rec.step(0):
        rec.record("a", [0.5])
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert re.fullmatch(r"[0-9a-f]{32}", lines[0].pop("run_id"))
    assert lines == [{"format": "memstate.trace", "version": 1, "meta": {"impl": "t"}},
                     {"step": 0, "name": "a", "shape": [1], "dtype": "float64", "b64": "AAAAAAAA4D8="},
                     {"step": 0, "end": True}]


def test_binary_writer_replaces_an_old_trace(tmp_path):
    path = tmp_path / "r.memstate"
    for n_steps in (3, 1):
        with Recorder(path) as rec:
            for k in range(n_steps):
                with rec.step(k):
                    rec.record("a", [float(k)])
    (path / "keep.txt").write_text("not ours")
    assert sorted(p.name for p in path.iterdir()) == ["header.json", "keep.txt", "step-00000000.safetensors"]


def test_writer_close_with_a_step_open_leaves_it_incomplete(trace_path):
    w = open_writer(trace_path)
    w.begin_step(0)
    w.write_tensor("a", np.ones(2))
    w.close()
    w.close()
    with open_trace(trace_path) as reader:
        assert list(reader) == [] and reader.incomplete.names() == ["a"]


def test_as_float_array_casts():
    assert as_float_array(np.float16(1.5)).dtype == np.float32
    assert as_float_array(np.arange(2, dtype=np.uint8)).dtype == np.float64
    assert as_float_array(np.array([1.0], dtype=np.longdouble), dtype="float64").dtype == np.float64


@pytest.mark.skipif(np.dtype(np.longdouble).itemsize <= 8, reason="long double is double here")
def test_long_double_needs_an_explicit_dtype():
    with pytest.raises(ValueError, match="would lose precision"):
        as_float_array(np.array([1.0], dtype=np.longdouble))

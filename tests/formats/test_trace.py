"""Reading traces in both encodings: round trips, conformance files, crash endings and strict errors."""

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
from safetensors.numpy import save_file

from bit_helpers import assert_same_bits, bits
from memstate.errors import FormatError
from memstate.names import canonical_names
from memstate.formats.params import read_params
from memstate.formats.recorder import open_writer
from memstate.formats.trace import Step, TraceReader, open_trace, read_trace

CONFORMANCE = Path(__file__).resolve().parents[1] / "conformance"
SHAPES = array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
SPECIALS = [0.0, -0.0, math.nan, math.inf, -math.inf]
SPECIAL64 = SPECIALS + [5e-324, 1.7976931348623157e308, 0.1]
SPECIAL32 = SPECIALS + [float(np.float32(v)) for v in (1e-45, 3.4028235e38, 0.1)]


def _arrays(dt: str, width: int) -> st.SearchStrategy:
    specials = SPECIAL64 if width == 64 else SPECIAL32
    by_value = arrays(dt, SHAPES, elements=st.one_of(st.sampled_from(specials), st.floats(width=width)))
    by_bits = arrays(f"<u{width // 8}", SHAPES).map(lambda a: a.view(dt))
    return st.one_of(by_value, by_bits)


FLOAT_ARRAYS = st.one_of(_arrays("<f8", 64), _arrays("<f4", 32))
STEP = st.dictionaries(st.text(min_size=1, max_size=5).filter(lambda s: s != "__metadata__"), FLOAT_ARRAYS,
                       max_size=4)


@settings(max_examples=100, deadline=None)
@given(steps=st.lists(STEP, max_size=3), gaps=st.lists(st.integers(1, 3), min_size=3, max_size=3),
       how=st.sampled_from(["jsonl", "jsonl-b64", "binary"]))
def test_round_trip_is_bit_exact(steps, gaps, how):
    indexes = list(np.cumsum(gaps)[: len(steps)] - 1)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / ("t.memstate" if how == "binary" else "t.memstate.jsonl")
        with open_writer(path, {"impl": "test"}, b64=how == "jsonl-b64") as w:
            for k, tensors in zip(indexes, steps):
                w.begin_step(int(k))
                for name, arr in tensors.items():
                    w.write_tensor(name, arr)
                w.end_step()
        with open_trace(path) as reader:
            assert reader.meta == {"impl": "test"}
            assert reader.encoding == ("binary" if how == "binary" else "jsonl")
            got = list(reader)
            assert reader.incomplete is None
    assert [s.index for s in got] == indexes
    for step, want in zip(got, steps):
        assert step.complete and step.names() == list(want)
        for name, arr in want.items():
            assert_same_bits(step.tensors[name], arr, exact_nan=how != "jsonl")


# ---- the conformance files ----------------------------------------------------------------------------------------

def test_conformance_small_trace():
    with open_trace(CONFORMANCE / "small.memstate.jsonl") as reader:
        assert reader.meta["impl"] == "independent-writer"
        steps = list(reader)
        assert reader.incomplete is None
    assert [s.index for s in steps] == [0, 1]
    B, sizes = 8, (196, 32, 10)
    shapes = {"x": (B, 196), "y": (B, 10), "L1.z": (B, 32), "L1.a": (B, 32), "L2.z": (B, 10), "probs": (B, 10),
              "loss": (), "L2.dz": (B, 10), "L2.dW": (32, 10), "L2.db": (10,), "L1.da": (B, 32), "L1.dz": (B, 32),
              "L1.dW": (196, 32), "L1.db": (32,), "L1.W": (196, 32), "L1.b": (32,), "L2.W": (32, 10),
              "L2.b": (10,)}
    for step in steps:
        assert step.complete and step.names() == canonical_names(len(sizes) - 1)
        assert {k: v.shape for k, v in step.tensors.items()} == shapes
        assert all(v.dtype == np.float64 for v in step.tensors.values())
    # the documented layout: z = x @ W + b with W [fan_in, fan_out], from the params the run started with
    params = read_params(CONFORMANCE / "small.params.json").tensors
    s0 = steps[0].tensors
    np.testing.assert_allclose(s0["L1.z"], s0["x"] @ params["L1.W"] + params["L1.b"], rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(steps[1].tensors["L1.z"], steps[1].tensors["x"] @ s0["L1.W"] + s0["L1.b"],
                               rtol=1e-13, atol=1e-15)


def test_conformance_truncated_trace_reports_the_incomplete_step():
    with open_trace(CONFORMANCE / "truncated.memstate.jsonl") as reader:
        assert reader.incomplete is None
        complete = list(reader)
        incomplete = reader.incomplete
        everything = list(reader.steps(include_incomplete=True))
    assert [s.index for s in complete] == [0]
    assert complete[0].names() == canonical_names(2)
    assert incomplete is not None and incomplete.index == 1 and not incomplete.complete
    assert incomplete.names() == canonical_names(2)[:15]  # the cut line (L1.b) is dropped
    assert [(s.index, s.complete) for s in everything] == [(0, True), (1, False)]
    full = read_trace(CONFORMANCE / "small.memstate.jsonl")
    for name, arr in incomplete.tensors.items():
        np.testing.assert_array_equal(bits(arr), bits(full[1].tensors[name]))


# ---- JSONL: crash endings and errors ----------------------------------------------------------------------------

HEADER = '{"format": "memstate.trace", "version": 1, "meta": {"impl": "t"}}'


def rec(step: int, name: str, data: str = "[1.5, -0.0]", shape: str = "[2]") -> str:
    return f'{{"step": {step}, "name": "{name}", "shape": {shape}, "dtype": "float64", "data": {data}}}'


def end(step: int) -> str:
    return f'{{"step": {step}, "end": true}}'


def jsonl(tmp_path: Path, *lines: str, final_newline: bool = True) -> Path:
    path = tmp_path / "t.memstate.jsonl"
    path.write_text("\n".join(lines) + ("\n" if final_newline else ""))
    return path


def test_steps_need_not_be_contiguous_and_may_be_empty(tmp_path):
    path = jsonl(tmp_path, HEADER, rec(0, "a"), end(0), end(5), rec(10, "a"), rec(10, "b"), end(10))
    steps = read_trace(path)
    assert [(s.index, s.names()) for s in steps] == [(0, ["a"]), (5, []), (10, ["a", "b"])]
    assert steps[0].tensors["a"].tolist() == [1.5, -0.0] and math.copysign(1, steps[0].tensors["a"][1]) == -1


def test_unknown_keys_and_crlf_are_tolerated(tmp_path):
    path = tmp_path / "t.memstate.jsonl"
    path.write_bytes((HEADER + "\r\n" + rec(0, "a")[:-1] + ', "later": 1}\r\n' + end(0) + "\r\n").encode())
    assert read_trace(path)[0].names() == ["a"]


def test_last_line_may_lack_its_newline_if_it_is_whole(tmp_path):
    path = jsonl(tmp_path, HEADER, rec(0, "a"), end(0), final_newline=False)
    with open_trace(path) as reader:
        assert [s.index for s in reader] == [0] and reader.incomplete is None


def test_missing_terminator_at_end_is_incomplete(tmp_path):
    path = jsonl(tmp_path, HEADER, rec(0, "a"), end(0), rec(1, "a"), rec(1, "b"))
    with open_trace(path) as reader:
        assert [s.index for s in reader] == [0]
        assert reader.incomplete.index == 1
        assert reader.incomplete.names() == ["a", "b"] and reader.incomplete.complete is False


def test_cut_last_line_is_a_crash_not_an_error(tmp_path):
    path = jsonl(tmp_path, HEADER, rec(0, "a"), end(0), rec(1, "a"), rec(1, "b")[:30], final_newline=False)
    with open_trace(path) as reader:
        assert [s.index for s in reader] == [0]
        assert reader.incomplete.index == 1 and reader.incomplete.names() == ["a"]


def test_cut_first_record_of_a_step_names_that_step(tmp_path):
    path = jsonl(tmp_path, HEADER, rec(0, "a"), end(0), rec(7, "a")[:25], final_newline=False)
    with open_trace(path) as reader:
        assert [s.index for s in reader] == [0]
        assert reader.incomplete == Step(7, {}, complete=False)


def test_cut_terminator_leaves_the_step_incomplete(tmp_path):
    path = jsonl(tmp_path, HEADER, rec(0, "a"), end(0)[:-3], final_newline=False)
    with open_trace(path) as reader:
        assert list(reader) == []
        assert reader.incomplete.index == 0 and reader.incomplete.names() == ["a"]


def test_header_only_trace_has_no_steps(tmp_path):
    with open_trace(jsonl(tmp_path, HEADER)) as reader:
        assert list(reader.steps(include_incomplete=True)) == [] and reader.incomplete is None


def test_reader_streams_step_by_step(tmp_path):
    # step 0 is yielded before the bad line of step 1 is even read
    path = jsonl(tmp_path, HEADER, rec(0, "a"), end(0), rec(1, "a", data="[1]"), end(1))
    with open_trace(path) as reader:
        it = iter(reader)
        assert next(it).index == 0
        with pytest.raises(FormatError, match="line 4"):
            next(it)


def test_iterating_twice_and_closing(tmp_path):
    path = jsonl(tmp_path, HEADER, rec(0, "a"), end(0), rec(1, "a"), end(1))
    reader = open_trace(path)
    assert isinstance(reader, TraceReader)
    assert [s.index for s in reader] == [s.index for s in reader] == [0, 1]
    it = reader.steps()
    next(it)
    reader.close()
    assert list(it) == []
    with pytest.raises(ValueError, match="closed"):
        reader.steps()


JSONL_MALFORMED = [
    ("after-terminator", [rec(0, "a"), end(0), rec(0, "b")], 4, "b", r"record for step 0 after its terminator"),
    ("backwards", [rec(2, "a"), end(2), rec(1, "a")], 4, "a", r"step 1 after step 2: step numbers must strictly"),
    ("backwards-inside", [rec(2, "a"), rec(1, "b")], 3, "b", r"step 1 inside step 2"),
    ("no-terminator", [rec(0, "a"), rec(1, "a"), end(1)], 3, "a", r"step 1 starts before step 0 has its terminator"),
    ("duplicate", [rec(0, "a"), rec(0, "a"), end(0)], 3, "a", r"duplicate name in step 0"),
    ("bad-json-middle", [rec(0, "a"), '{"step": 0, "na', end(0)], 3, None, r"not valid JSON"),
    ("bad-json-last-with-newline", [rec(0, "a"), '{"step": 0, "na'], 3, None, r"not valid JSON"),
    ("blank", [rec(0, "a"), "", end(0)], 3, None, r"empty line"),
    ("not-object", [rec(0, "a"), "[0]"], 3, None, r"a record must be a JSON object"),
    ("no-step", ['{"name": "a", "shape": [], "dtype": "float64", "data": [1]}'], 2, "a", r'"step" must be a non'),
    ("neg-step", [rec(-1, "a")], 2, "a", r'"step" must be a non-negative integer, got -1'),
    ("float-step", [rec(0, "a"), end(0).replace("0", "1.0")], 3, None, r'"step" must be .*got 1.0'),
    ("end-false", [rec(0, "a"), '{"step": 0, "end": false}'], 3, None, r"a terminator is exactly"),
    ("no-name", [rec(0, "a"), '{"step": 0, "shape": []}'], 3, None, r'record has no "name"'),
    ("bad-length", [rec(0, "a", data="[1]")], 2, "a", r'"data" has 1 values but shape \[2\] needs 2'),
    ("bad-value", [rec(0, "a", data='[1, "x"]')], 2, "a", r'the string "x"'),
    ("bare-nan", [rec(0, "a", data="[1, NaN]")], 2, None, r"bare NaN is not JSON"),
    ("bad-dtype", [rec(0, "a").replace("float64", "int32")], 2, "a", r'unknown dtype "int32"'),
]


@pytest.mark.parametrize("lines, line, tensor, match", [m[1:] for m in JSONL_MALFORMED],
                         ids=[m[0] for m in JSONL_MALFORMED])
def test_jsonl_malformed_names_file_line_and_tensor(tmp_path, lines, line, tensor, match):
    path = jsonl(tmp_path, HEADER, *lines)
    where = re.escape(f"{path}, line {line}") + (re.escape(f", tensor {tensor!r}") if tensor else "")
    with pytest.raises(FormatError, match=where + ": .*" + match):
        read_trace(path)


HEADER_MALFORMED = [
    ("empty", "", r"line 1: empty file"),
    ("not-json", "hello\n", r"line 1: bad header: not valid JSON"),
    ("cut", HEADER[:20], r"line 1: bad header: .*the file ends inside it"),
    ("wrong-format", '{"format": "memstate.params", "version": 1}\n', r'line 1: "format" is "memstate.params"'),
    ("version", '{"format": "memstate.trace", "version": 9}\n', r"line 1: format version 9 is not supported"),
    ("meta", '{"format": "memstate.trace", "version": 1, "meta": 3}\n', r'line 1: header "meta" must be'),
    ("encoding", '{"format": "memstate.trace", "version": 1, "encoding": "binary"}\n',
     r'line 1: header says "encoding": "binary", expected "jsonl"'),
]


@pytest.mark.parametrize("text, match", [m[1:] for m in HEADER_MALFORMED], ids=[m[0] for m in HEADER_MALFORMED])
def test_bad_header_fails_on_open(tmp_path, text, match):
    path = tmp_path / "h.memstate.jsonl"
    path.write_text(text)
    with pytest.raises(FormatError, match=re.escape(str(path)) + ", " + match):
        open_trace(path)


def test_missing_path(tmp_path):
    with pytest.raises(FormatError, match=re.escape(str(tmp_path / "none.jsonl")) + ": no such file or directory"):
        open_trace(tmp_path / "none.jsonl")


# ---- binary: crash endings and errors ----------------------------------------------------------------------------

def binary(tmp_path: Path, n_steps: int = 2) -> Path:
    path = tmp_path / "t.memstate"
    with open_writer(path, {"impl": "t"}) as w:
        for k in range(n_steps):
            w.begin_step(k)
            w.write_tensor("z", np.arange(3.0) + k)
            w.write_tensor("a", np.ones((2, 2), dtype=np.float32))
            w.end_step()
    return path


def test_binary_layout(tmp_path):
    path = binary(tmp_path)
    assert sorted(p.name for p in path.iterdir()) == ["header.json", "step-00000000.safetensors",
                                                      "step-00000001.safetensors"]
    header = json.loads((path / "header.json").read_text())
    assert re.fullmatch(r"[0-9a-f]{32}", header.pop("run_id"))
    assert header == {"format": "memstate.trace", "version": 1, "meta": {"impl": "t"}, "encoding": "binary"}
    steps = read_trace(path)
    assert [s.names() for s in steps] == [["z", "a"], ["z", "a"]]  # dataflow order, not safetensors' sorted order


def test_binary_tmp_file_is_the_incomplete_step(tmp_path):
    path = binary(tmp_path)
    run_id = json.loads((path / "header.json").read_text())["run_id"]
    save_file({"z": np.zeros(2)}, str(path / "step-00000002.safetensors.tmp"),
              metadata={"step": "2", "order": '["z"]', "run_id": run_id})
    (path / "notes.txt").write_text("ignored")
    with open_trace(path) as reader:
        assert [s.index for s in reader] == [0, 1]
        assert reader.incomplete.index == 2 and reader.incomplete.names() == ["z"]


def test_binary_unreadable_tmp_file_is_an_incomplete_step_without_tensors(tmp_path):
    path = binary(tmp_path)
    (path / "step-00000002.safetensors.tmp").write_bytes(b"\x10\x00")
    with open_trace(path) as reader:
        assert len(list(reader)) == 2 and reader.incomplete == Step(2, {}, complete=False)


def _meta_file(path: Path, name: str, tensors: dict, metadata: dict) -> None:
    """A step file written by the same run as the trace's header (unless `metadata` says otherwise)."""
    run_id = json.loads((path / "header.json").read_text())["run_id"]
    save_file(tensors, str(path / name), metadata={"run_id": run_id, **metadata})


BINARY_MALFORMED = [
    ("garbage", lambda p: (p / "step-00000001.safetensors").write_bytes(b"garbage!"),
     "step-00000001.safetensors", r"not a readable safetensors file"),
    ("step-mismatch", lambda p: _meta_file(p, "step-00000001.safetensors", {"z": np.zeros(1)},
                                           {"step": "3", "order": '["z"]'}),
     "step-00000001.safetensors", r'__metadata__ "step" is .3., expected "1"'),
    ("no-order", lambda p: _meta_file(p, "step-00000001.safetensors", {"z": np.zeros(1)}, {"step": "1"}),
     "step-00000001.safetensors", r'__metadata__ has no "order"'),
    ("order-mismatch", lambda p: _meta_file(p, "step-00000001.safetensors", {"z": np.zeros(1)},
                                            {"step": "1", "order": '["z", "q"]'}),
     "step-00000001.safetensors", r"listed but absent \['q'\]"),
    ("order-duplicate", lambda p: _meta_file(p, "step-00000001.safetensors", {"z": np.zeros(1)},
                                             {"step": "1", "order": '["z", "z"]'}),
     "step-00000001.safetensors, tensor 'z'", r"lists a name twice"),
    ("order-not-json", lambda p: _meta_file(p, "step-00000001.safetensors", {"z": np.zeros(1)},
                                            {"step": "1", "order": "z"}),
     "step-00000001.safetensors", r'"order" is not JSON'),
    ("dtype", lambda p: _meta_file(p, "step-00000001.safetensors", {"z": np.zeros(1, dtype=np.float16)},
                                   {"step": "1", "order": '["z"]'}),
     "step-00000001.safetensors, tensor 'z'", r"dtype F16 is not allowed"),
    ("other-run", lambda p: _meta_file(p, "step-00000001.safetensors", {"z": np.zeros(1)},
                                       {"step": "1", "order": '["z"]', "run_id": "b" * 32}),
     "step-00000001.safetensors", r"written by run b{32} but header.json's run [0-9a-f]{32}: two runs wrote"),
    ("no-run-id", lambda p: save_file({"z": np.zeros(1)}, str(p / "step-00000001.safetensors"),
                                      metadata={"step": "1", "order": '["z"]'}),
     "step-00000001.safetensors", r"written by a run without a run id but header.json's run"),
    ("name", lambda p: (p / "step-00000001.safetensors").rename(p / "step-1.safetensors"),
     "step-1.safetensors", r"file name must be step-00000001.safetensors"),
    ("stray-tmp", lambda p: (p / "step-00000000.safetensors.tmp").write_bytes(b""),
     "step-00000000.safetensors.tmp", r"stray temporary file"),
]


@pytest.mark.parametrize("damage, file, match", [m[1:] for m in BINARY_MALFORMED],
                         ids=[m[0] for m in BINARY_MALFORMED])
def test_binary_malformed_names_the_file(tmp_path, damage, file, match):
    path = binary(tmp_path)
    if file.startswith("step-00000001.safetensors") and "name" not in file:
        (path / "step-00000001.safetensors").unlink()
    damage(path)
    for _ in range(2):  # the second time through the remembered answers (trace._parsed_order, stepfile's table)
        with pytest.raises(FormatError, match=re.escape(f"{path / file}: ") + ".*" + match):
            read_trace(path)


def test_the_order_memo_starts_over_when_full_and_keeps_each_files_check(tmp_path, monkeypatch):
    from memstate.formats import trace as trace_module

    monkeypatch.setattr(trace_module, "_ORDERS", {})
    monkeypatch.setattr(trace_module, "ORDERS_LIMIT", 1)
    path = binary(tmp_path)
    assert [list(s.tensors) for s in read_trace(path)] == [list(s.tensors) for s in read_trace(path)]
    assert len(trace_module._ORDERS) == 1
    (path / "step-00000001.safetensors").unlink()  # the same order text over other tensors: still refused
    known = next(iter(trace_module._ORDERS))
    _meta_file(path, "step-00000001.safetensors", {"q": np.zeros(1)}, {"step": "1", "order": known})
    with pytest.raises(FormatError, match="does not match the tensors"):
        read_trace(path)


def test_binary_bad_header(tmp_path):
    path = binary(tmp_path)
    (path / "header.json").write_text('{"format": "memstate.trace", "version": 1}')
    with pytest.raises(FormatError, match=re.escape(str(path / "header.json")) + r": header says .*binary"):
        open_trace(path)
    (path / "header.json").unlink()
    with pytest.raises(FormatError, match=re.escape(str(path / "header.json")) + ": missing"):
        open_trace(path)

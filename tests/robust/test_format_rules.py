"""The format rules issue 13 added, at the reader level: -0, duplicate keys, lone surrogates, limits, ended early."""

from __future__ import annotations

import numpy as np
import pytest

from memstate.errors import FormatError, MemstateError
from memstate.formats.params import read_params
from memstate.formats.recorder import Recorder
from memstate.formats.trace import EndedEarly, ended_early, read_trace

HEADER = '{"format": "memstate.trace", "version": 1, "meta": {}}\n'


def test_integer_minus_zero_keeps_its_sign_in_traces_and_params(tmp_path):
    trace = tmp_path / "t.memstate.jsonl"
    trace.write_text(HEADER + '{"step": 0, "name": "z", "shape": [3], "dtype": "float32", "data": [-0, 0, -0.0]}\n'
                     '{"step": 0, "end": true}\n')
    z = read_trace(trace)[0].tensors["z"]
    assert z.dtype == np.float32 and np.signbit(z).tolist() == [True, False, True]
    params = tmp_path / "p.params.json"
    params.write_text('{"format": "memstate.params", "version": 1, "tensors": [{"name": "b", "shape": [2], '
                      '"dtype": "float64", "data": [-0, 1]}]}')
    assert np.signbit(read_params(params).tensors["b"]).tolist() == [True, False]


@pytest.mark.parametrize("line, words", [
    ('{"step": 0, "step": 1, "name": "z", "shape": [], "dtype": "float64", "data": [1]}', 'duplicate key "step"'),
    ('{"step": 0, "name": "z", "shape": [], "dtype": "float64", "data": [1], "data": [2]}', 'duplicate key "data"'),
    ('{"step": 0, "name": "z\\udfff", "shape": [], "dtype": "float64", "data": [1]}', "lone surrogate"),
    ('{"step": 0, "name": "z", "shape": [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, '
     '1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, '
     '1, 1, 1], "dtype": "float64", "data": [1]}', "65 dimensions"),
    ('{"step": 0, "name": "z", "shape": [0, 1099511627777], "dtype": "float64", "b64": ""}', "too large"),
])
def test_trace_line_rules(tmp_path, line, words):
    trace = tmp_path / "t.memstate.jsonl"
    trace.write_text(HEADER + line + '\n{"step": 0, "end": true}\n')
    with pytest.raises(FormatError, match="line 2") as exc:
        read_trace(trace)
    assert words in str(exc.value)


def test_largest_allowed_empty_shape_reads(tmp_path):
    trace = tmp_path / "t.memstate.jsonl"
    trace.write_text(HEADER + '{"step": 0, "name": "z", "shape": [0, 1099511627776], "dtype": "float64", "data": []}'
                     '\n{"step": 0, "end": true}\n')
    assert read_trace(trace)[0].tensors["z"].shape == (0, 2**40)


def test_recorder_refuses_names_that_are_not_text(tmp_path):
    with Recorder(tmp_path / "t.memstate.jsonl") as rec, rec.step(0):
        with pytest.raises(MemstateError, match="no lone surrogates"):
            rec.record("a\ud800", 1.0)
    with pytest.raises(MemstateError, match="lone surrogate"):
        Recorder(tmp_path / "u.memstate.jsonl", meta={"who": "\udc00"})


@pytest.mark.parametrize("meta, complete, first, last, unfinished, want", [
    ({"steps": 10}, 10, 0, 9, None, None),
    ({"steps": 10}, 3, 0, 2, None, EndedEarly(3, 10, None)),
    ({"steps": 10}, 3, 0, 2, 3, EndedEarly(3, 10, 3)),
    ({"steps": 10}, 0, None, None, None, EndedEarly(0, 10, None)),
    ({"steps": 100}, 10, 0, 90, None, None),  # every 10th step: short by design
    ({"steps": 5}, 5, 10, 14, None, None),  # a replay of steps 10..14
    ({}, 3, 0, 2, None, None),  # no declaration, no crash
    ({}, 3, 0, 2, 3, EndedEarly(3, None, 3)),
    ({"steps": "10"}, 3, 0, 2, None, None),  # not a declaration
    ({"steps": True}, 0, None, None, None, None),
])
def test_ended_early(meta, complete, first, last, unfinished, want):
    assert ended_early(meta, complete, first, last, unfinished) == want


def test_ended_early_text():
    assert str(EndedEarly(3, 10, None)) == "ended early: 3 of 10 steps"
    assert str(EndedEarly(3, 10, 3)) == "ended early: 3 of 10 steps (step 3 unfinished)"
    assert str(EndedEarly(3, None, 3)) == "ended early: 3 complete steps, then step 3 unfinished"
    assert str(EndedEarly(1, None, 1)) == "ended early: 1 complete step, then step 1 unfinished"

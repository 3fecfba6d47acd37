"""A step line read by orjson gives the tensor the strict parser gives (issue 14).

`fast_parse_trusted` does not look for integer tokens of 19 digits or more inside a step line's "data"
list (orjson reads them as floats, which is what they become in the array; scanning 2 MB of data for them
cost 18 times the parse). These tests build lines with such tokens in the data, in other fields and in
strings that look like a data list, and check that the fast path and the strict one decode to the same
bits or fail alike.

`loads_record` (what the JSONL reader calls) goes further: a data list whose text holds numbers only comes
back as a float64 array, decided by byte searches and a look at the types where the array holds a zero
(an integer token -0, which orjson reads as 0, sends the line to the exact parse). The same property holds
for it, over tokens that are not numbers too (strings, true, null, nested lists and objects).
"""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memstate.errors import FormatError
from memstate.formats.tensorjson import decode_fields, fast_parse_trusted, loads_fast, loads_record, loads_strict

TOKENS = st.sampled_from([b"0.5", b"-0.25", b"1e-7", b"-0", b"0", b"7", b"12345678901234567890",
                          b"-98765432109876543210123", b"1" + b"0" * 30, b'"nan"', b'"-inf"', b"0.00012345678901234567"])
NAMES = st.sampled_from(['"L1.W"', '"data"', '"a{b"', '"x]y"', '"\\"data\\":[1"', '"long 12345678901234567890"'])
STEPS = st.sampled_from([b"3", b"123456789012345678901", b"-0"])


def _decode(doc):
    try:
        return decode_fields(doc, "t.jsonl", "t", 2)
    except FormatError as e:
        return str(e)


def _assert_decode_alike(strict, fast):
    """Both parses decode to the same bits and dtype, or to the same error message."""
    want, got = _decode(strict), _decode(fast)
    if isinstance(want, str):
        assert got == want
    else:
        assert got.dtype == want.dtype and np.array_equal(got.view(np.uint8), want.view(np.uint8))


@settings(max_examples=150, deadline=None)
@given(st.lists(TOKENS, min_size=1, max_size=6), NAMES, STEPS, st.sampled_from(["float64", "float32"]),
       st.booleans())
def test_fast_and_strict_step_lines_decode_alike(tokens, name, step, dtype, spaces):
    sep = b", " if spaces else b","
    raw = (b'{"step":' + step + b',"name":' + name.encode() + b',"shape":[' + str(len(tokens)).encode()
           + b'],"dtype":"' + dtype.encode() + b'","data":' + (b"[ " if spaces else b"[") + sep.join(tokens) + b"]}")
    strict = loads_strict(raw)
    fast = loads_fast(raw)
    assert fast.keys() == strict.keys() and fast["step"] == strict["step"] and fast["name"] == strict["name"]
    assert type(fast["step"]) is type(strict["step"])  # a long step number is never read as a float
    if step == b"-0":
        assert math.copysign(1, fast["step"]) == -1  # -0 keeps its sign
    _assert_decode_alike(strict, fast)


def test_long_integers_outside_the_data_are_not_trusted_from_orjson():
    raw = b'{"step":123456789012345678901,"name":"x","shape":[1],"dtype":"float64","data":[0.5]}'
    assert isinstance(orjson.loads(raw)["step"], float)
    assert not fast_parse_trusted(raw, orjson.loads(raw))
    assert loads_fast(raw)["step"] == 123456789012345678901
    inside = b'{"step":3,"name":"x","shape":[1],"dtype":"float64","data":[12345678901234567890]}'
    assert fast_parse_trusted(inside, orjson.loads(inside))
    assert decode_fields(loads_fast(inside), "t")[0] == 12345678901234567890.0
    decoy = b'{"step":3,"name":"\\"data\\":[","shape":[123456789012345678901],"dtype":"float64","data":[1]}'
    assert not fast_parse_trusted(decoy, orjson.loads(decoy))  # the name only looks like the data list


ANY_TOKEN = TOKENS | st.sampled_from([b"-0.0", b"0.0", b"0e0", b"-0e0", b"-0 ", b"-0\n", b"1E-5", b"true", b"null",
                                      b'"1.5"', b'"]"', b"[1]", b'{"a": -0}', b'"inf"', b"3.5e38", b"1e39"])


def _line(tokens: list[bytes], name: str, dtype: str, spaces: bool, shape: int | None = None) -> bytes:
    sep = b" , " if spaces else b","
    count = len(tokens) if shape is None else shape
    return (b'{"step":3,"name":' + name.encode() + b',"shape":[' + str(count).encode() + b'],"dtype":"'
            + dtype.encode() + b'","data":' + (b"[ " if spaces else b"[") + sep.join(tokens) + b"]}")


@settings(max_examples=300, deadline=None)
@given(st.lists(ANY_TOKEN, max_size=8), NAMES, st.sampled_from(["float64", "float32"]), st.booleans(),
       st.sampled_from([None, 0, 2]))
def test_record_lines_decode_as_the_strict_parse_does(tokens, name, dtype, spaces, shape):
    """loads_record's array (or list) decodes to the strict parse's bits, or fails with the same message."""
    raw = _line(tokens, name, dtype, spaces, shape)
    try:
        strict = loads_strict(raw)
    except ValueError as e:  # BadJSON: the record reader raises it too (through loads_strict)
        with pytest.raises(type(e)):
            loads_record(raw)
        return
    fast = loads_record(raw)
    assert list(fast) == list(strict) and fast["name"] == strict["name"]
    _assert_decode_alike(strict, fast)


def test_record_data_of_plain_numbers_is_an_array_and_keeps_negative_zero():
    floats = loads_record(_line([b"0.5", b"-0.0", b"0.0", b"1e-7"], '"w"', "float64", False))
    assert isinstance(floats["data"], np.ndarray) and floats["data"].dtype == np.float64
    assert np.signbit(floats["data"]).tolist() == [False, True, False, False]
    ints = loads_record(_line([b"2", b"-0", b"0"], '"w"', "float64", True))
    assert isinstance(ints["data"], list)  # an integer -0: the exact parse, which keeps its sign
    assert [math.copysign(1, v) for v in ints["data"]] == [1, -1, 1]
    no_zero = loads_record(_line([b"2", b"-3", b"1e-7"], '"w"', "float64", False))
    assert isinstance(no_zero["data"], np.ndarray) and no_zero["data"].tolist() == [2.0, -3.0, 1e-7]
    plus_zero = loads_record(_line([b"2", b"0", b"1.5"], '"w"', "float64", False))
    assert isinstance(plus_zero["data"], np.ndarray) and not np.signbit(plus_zero["data"]).any()
    nonfinite = loads_record(_line([b'"nan"', b"1.0"], '"w"', "float64", False))
    assert isinstance(nonfinite["data"], list)  # strings: the general path spells them out


def test_long_data_lists_count_points_across_blocks():
    """The point count runs over 256 kB blocks: a line of several blocks decides as a short one does."""
    floats = [b"0.25", b"0.0", b"-0.0"] * 40_000  # 540 kB of text, every token with a point
    doc = loads_record(_line(floats, '"w"', "float64", False))
    assert isinstance(doc["data"], np.ndarray) and int(np.signbit(doc["data"]).sum()) == 40_000
    for at in (0, 60_000, len(floats) - 1):  # an integer -0 in the first, a middle and the last block
        tokens = floats[:at] + [b"-0"] + floats[at + 1:]
        raw = _line(tokens, '"w"', "float64", False)
        _assert_decode_alike(loads_strict(raw), loads_record(raw))
        assert math.copysign(1, decode_fields(loads_record(raw), "t")[at]) == -1
    whole = [b"2", b"0", b"0.5"] * 40_000  # integers, zeros among them, but no -0: still an array
    assert isinstance(loads_record(_line(whole, '"w"', "float64", True))["data"], np.ndarray)

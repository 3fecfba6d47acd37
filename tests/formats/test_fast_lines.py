"""A step line read by orjson gives the tensor the strict parser gives (issue 14).

`fast_parse_trusted` does not look for integer tokens of 19 digits or more inside a step line's "data"
list (orjson reads them as floats, which is what they become in the array; scanning 2 MB of data for them
cost 18 times the parse). These tests build lines with such tokens in the data, in other fields and in
strings that look like a data list, and check that the fast path and the strict one decode to the same
bits or fail alike.
"""

from __future__ import annotations

import math

import numpy as np
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from memstate.errors import FormatError
from memstate.formats.tensorjson import decode_fields, fast_parse_trusted, loads_fast, loads_strict

TOKENS = st.sampled_from([b"0.5", b"-0.25", b"1e-7", b"-0", b"0", b"7", b"12345678901234567890",
                          b"-98765432109876543210123", b"1" + b"0" * 30, b'"nan"', b'"-inf"', b"0.00012345678901234567"])
NAMES = st.sampled_from(['"L1.W"', '"data"', '"a{b"', '"x]y"', '"\\"data\\":[1"', '"long 12345678901234567890"'])
STEPS = st.sampled_from([b"3", b"123456789012345678901", b"-0"])


def _decode(doc):
    try:
        return decode_fields(doc, "t.jsonl", "t", 2)
    except FormatError as e:
        return str(e)


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
    want, got = _decode(strict), _decode(fast)
    if isinstance(want, str):
        assert got == want
    else:
        assert got.dtype == want.dtype and np.array_equal(got.view(np.uint8), want.view(np.uint8))


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

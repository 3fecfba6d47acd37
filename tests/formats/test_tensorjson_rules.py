"""The decisions of memstate/formats/tensorjson.py, pinned one by one (its mutation-table tests: quick).

Three groups:

- the fast path of issue 14 (`loads_record`, `loads_fast`, `fast_parse_trusted` and their helpers): lines
  built so that each wrong trust decision gives a different value than `loads_strict` (a duplicate key
  accepted, a -0 read as +0, an integer read as a float), and the documented path contracts: a step line's
  "data" list of plain numbers comes back as a float64 array whatever the order of its fields, and a line
  that `fast_parse_trusted` documents as trusted is parsed once, by orjson (the speed issue 14 is about);
- `loads_strict`'s BadJSON messages and line numbers, which readers show users;
- the FormatError messages of `decode_tensor` (file, line, tensor and wording), `check_shape`'s limits,
  `_short`'s cut, and the encoders.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import orjson
import pytest

from memstate.errors import FormatError
from memstate.formats import tensorjson as tj
from memstate.formats.tensorjson import (
    BadJSON,
    check_shape,
    decode_tensor,
    dtype_name,
    encode_fields,
    encode_tensor,
    fast_parse_trusted,
    loads_fast,
    loads_record,
    loads_strict,
    short_json,
)

# ---------------------------------------------------------------- the fast path: values


def _bits(values) -> list[int]:
    return np.asarray(values, dtype=np.float64).view(np.uint64).tolist()


def _assert_same_doc(got, want):
    """`got` is `want` exactly (types, and the sign of zeros, by repr), except that a "data" array holds the
    float64 bits of `want`'s list."""
    if isinstance(got, dict) and isinstance(got.get("data"), np.ndarray):
        assert got["data"].dtype == np.float64 and _bits(got["data"]) == _bits(want["data"])
        got, want = {**got, "data": None}, {**want, "data": None}
    assert repr(got) == repr(want)


# Lines on which a wrong trust decision reads another value than the strict parse (each names the mutant
# kind it stops): the fast readers must give the strict parse's value exactly.
AGREE = [
    b'{"data":[-0,0.5]}',  # the dots-vs-commas shortcut counted over the wrong range
    b'{"data":[-0],"x":1.5}',  # dots counted beyond the data list
    b'{"data":[-0,0.5]\t\t}',  # (the byte value of the list's start counted for dots: 9, a tab)
    b'{"data":[0.5, -0], "step": 2}',
    b'{"d\\u0061ta":[1,2]}',  # the key is written with an escape: no "data": [ in the text
    b'{"data":[98765432109876543210123],"x":{}}',  # not one flat object: its long integer stays an int
    b'{"data":[1,2],"x":[98765432109876543210123]}',
    b'[1, 2.5, "x", {"data": [-0]}]',
]


@pytest.mark.parametrize("raw", AGREE)
def test_fast_readers_give_the_strict_value(raw):
    want = loads_strict(raw)
    _assert_same_doc(loads_fast(raw), want)
    _assert_same_doc(loads_record(raw), want)


def test_an_integer_minus_zero_in_the_data_keeps_its_sign_and_value():
    assert repr(loads_strict(b"[-0, 0, -0.0]")) == "[-0.0, 0, -0.0]"
    rec = loads_record(b'{"data":[-0,0.5]}')["data"]
    assert rec[0] == 0 and math.copysign(1, rec[0]) == -1
    # The points are counted in the data list only: here the line's first 13 bytes hold three points (the
    # name's), as many as the list has values, but the list itself only two, so its -0 is still found.
    rec = loads_record(b'{"name":"a...","data":[-0, 0.5, 7.25]}')["data"]
    assert math.copysign(1, rec[0]) == -1
    assert tj._count_byte(b'{"name":"a...","data":[-0, 0.5, 7.25]}', 23, 36, b".") == 2


# Duplicate keys that a wrong key count would let through (orjson keeps the last one silently).
DUPLICATES = [
    b'{"data":[{"a":1,"a":2}]}',  # objects inside the data list: more than one object
    b'[{"a":1,"a":2},5]',  # one object, not at the top
    b'{"t":[{"a":1,"a":2,"s":[1]}]}',  # nested, with a list that holds no container
    b'{"data":[1],"data":[2]}',  # two data lists: the span ends at the first one's "]"
    b'{"a":{"b":1,"b":2}}',
]


@pytest.mark.parametrize("raw", DUPLICATES)
def test_fast_readers_refuse_duplicate_keys_as_the_strict_parse_does(raw):
    with pytest.raises(BadJSON) as strict:
        loads_strict(raw)
    assert strict.value.msg.startswith("duplicate key ")
    for read in (loads_fast, loads_record):
        with pytest.raises(BadJSON) as fast:
            read(raw)
        assert fast.value.msg == strict.value.msg


def test_lone_surrogates_fail_alike_from_text_and_bytes():
    """A str holding a lone surrogate is encoded with surrogatepass, so the UTF-8 check names its byte."""
    text = '["\ud800"]'
    for read, arg in ((loads_strict, text), (loads_fast, text), (loads_record, text.encode("utf-8", "surrogatepass"))):
        with pytest.raises(BadJSON) as e:
            read(arg)
        assert (e.value.msg, e.value.line) == ("not valid UTF-8: byte 0xed at offset 2", 1)
    # orjson refuses a lone surrogate escape itself (why a disabled surrogate test in _trusted changes
    # nothing); the strict parse names it
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(b'["\\ud800"]')
    for read in (loads_fast, loads_record):
        with pytest.raises(BadJSON, match="lone surrogate"):
            read(b'["\\ud800"]')


# ---------------------------------------------------------------- the fast path: which path


STEP_ORDERS = [
    b'{"data":[1.5,-2],"shape":[2],"dtype":"float64","name":"w","step":0}',  # data first: "]" and '"' after it
    b'{"step":1,"name":"w","shape":[3],"dtype":"float64","data":[1e-0,2.5,98765432109876543210123]}',
    b'{ "step" : 1 , "data" : [ 0.5 , 0 ] , "name" : "w" }',
    b'{"step":1,"data":[12345678901234567890, 3],"name":"w"}',
]


@pytest.mark.parametrize("raw", STEP_ORDERS)
def test_plain_number_data_comes_back_as_a_float64_array(raw):
    """loads_record's documented contract: a step line whose data list holds numbers only (no integer -0),
    in any field order and spacing, with exponents (1e-0 is not -0) or long integers, is an array."""
    doc = loads_record(raw)
    assert isinstance(doc["data"], np.ndarray) and doc["data"].dtype == np.float64
    _assert_same_doc(doc, loads_strict(raw))


@pytest.mark.parametrize("raw", [b'{"data":["nan",1]}', b'{"data":[true]}', b'{"data":[null]}',
                                 b'{"data":[[1]]}', b'{"data":[-0]}'])
def test_other_data_takes_the_general_path(raw):
    doc = loads_record(raw)
    assert isinstance(doc["data"], list)
    _assert_same_doc(doc, loads_strict(raw))


# Lines that fast_parse_trusted documents as trusted: no -0, no surrogate escape, no long integer outside a
# step line's data, and as many key ends as keys (nested objects, lists of objects, escapes, no object).
TRUSTED = [
    b'{"memstate":1,"name":"run","meta":{"lr":0.1,"opt":{"kind":"sgd"}}}',
    b'{"tensors":[{"name":"a","shape":[2],"dtype":"float64","data":[1,2]},'
    b'{"name":"b","shape":[],"dtype":"float32","data":[0.5]}]}',
    b'{"step":3,"name":"L1.W","shape":[2],"dtype":"float64","data":["nan",0.5]}',
    b'[1, 2.5, "x"]',
    b'{"name":"a\\nb\\"c","step":1}',
    b'[{"a":1},{"b":[{"c":2}]}]',
]


@pytest.mark.parametrize("raw", TRUSTED)
def test_ordinary_lines_are_trusted_and_parsed_once(raw, monkeypatch):
    """What the fast readers are for (issue 14): an ordinary line is read by orjson alone, never again by
    the exact parse (which would double a trace's reading time while giving the same value)."""
    assert fast_parse_trusted(raw, orjson.loads(raw))
    want = loads_strict(raw)
    calls = []

    def spy(text):
        calls.append(text)
        return loads_strict(text)

    monkeypatch.setattr(tj, "loads_strict", spy)
    _assert_same_doc(loads_fast(raw), want)
    _assert_same_doc(loads_record(raw), want)
    assert calls == []


# ---------------------------------------------------------------- loads_strict's messages


def _bad(text) -> tuple[str, int | None]:
    with pytest.raises(BadJSON) as e:
        loads_strict(text)
    assert str(e.value) == e.value.msg
    return e.value.msg, e.value.line


def test_bad_utf8_names_the_byte_its_offset_and_its_line():
    assert _bad(b'\n\n"\xff"\n\n\n') == ("not valid UTF-8: byte 0xff at offset 3", 3)


def test_bare_constants_name_the_string_to_write_and_their_line():
    assert _bad(b'\n{"a":\n[1,\nNaN]}\n\n\n\n') == ('bare NaN is not JSON; write the string "nan"', 4)
    assert _bad(b"[1, Infinity]") == ('bare Infinity is not JSON; write the string "inf"', 1)
    assert _bad(b'{"a":\n-Infinity}') == ('bare -Infinity is not JSON; write the string "-inf"', 2)
    assert _bad(b"NaN") == ('bare NaN is not JSON; write the string "nan"', None)  # nothing before it
    assert tj._constant_line("[1,\n NaN]") == 2  # text given as str


def test_duplicate_keys_name_the_repeated_key():
    assert _bad(b'{"a":1,"b":2,\n"b":3}') == ('duplicate key "b" in one object; each key may appear once', None)


def test_deep_nesting_and_huge_integers_are_bad_json():
    assert _bad(b"[" * 3000 + b"]" * 3000) == (
        "nested too deeply (arrays or objects inside each other beyond the parser's limit); "
        "tensor data is a flat list", None)
    msg, line = _bad(b"1" * 5000)
    assert msg.startswith("not valid JSON: Exceeds the limit (4300 digits)") and line is None


def test_lone_surrogate_escapes_quote_the_first_40_characters():
    msg, line = _bad(b'{"k": ["' + b"x" * 45 + b'\\ud800"]}')
    assert msg == ("the string '" + "x" * 40 + "' holds a lone surrogate (an unpaired \\ud800-\\udfff escape), "
                   "which is not text; write the character itself") and line is None
    assert _bad(b'{"\\udc00": 1}')[0].startswith("the string '\\udc00' holds a lone surrogate")
    assert loads_strict(b'["\\ud83d\\ude00"]') == ["\U0001f600"]  # a pair is one character


# ---------------------------------------------------------------- tensor decoding: messages


def _error(obj) -> str:
    with pytest.raises(FormatError) as e:
        decode_tensor(obj, "p.json", 7)
    return str(e.value)


W = "p.json, line 7, tensor 'w': "
F64 = {"name": "w", "dtype": "float64"}


@pytest.mark.parametrize("obj, message", [
    ([1], "p.json, line 7: a tensor must be a JSON object, got [1]"),
    ({"name": ""}, 'p.json, line 7: tensor has no "name" (a non-empty string), got ""'),
    ({"name": "w"}, W + 'missing "shape"; add the list of dimensions ([] for a scalar)'),
    ({"name": "w", "shape": "2"}, W + '"shape" must be a list of non-negative integers, got "2"'),
    ({"name": "w", "shape": [1] * 65}, W + '"shape" has 65 dimensions; at most 64 are allowed'),
    ({"name": "w", "shape": [2**40 + 1]}, W + '"shape" [1099511627777] is too large: its non-zero dimensions '
                                              "multiply to more than 1099511627776 (2**40) elements"),
    ({"name": "w", "shape": [1]}, W + 'missing "dtype"; use "float64" or "float32"'),
    ({**F64, "shape": [1]}, W + 'has neither of "data" and "b64"; give exactly one'),
    ({**F64, "shape": [1], "data": [1], "b64": ""}, W + 'has both "data" and "b64"; give exactly one'),
    ({**F64, "shape": [1], "data": "x"}, W + '"data" must be a flat list of numbers, got "x"'),
    ({**F64, "shape": [2], "data": ["nan", None]},
     W + '"data" holds null; only numbers and "nan", "inf", "-inf" are allowed'),
    ({**F64, "shape": [2], "data": ["nan", "NaN"]},
     W + '"data" holds the string "NaN"; the only strings allowed are "nan", "inf" and "-inf"'),
    ({**F64, "shape": [1], "data": [10**400]}, W + '"data" holds an integer too large for float64'),
    ({**F64, "shape": [1], "data": [math.inf]},
     W + '"data" holds a number out of float64 range; write "inf"/"-inf" as strings'),
    ({"name": "w", "dtype": "float32", "shape": [1], "data": [1e39]},
     W + '"data" holds a number out of float32 range; write "inf"/"-inf" as strings'),
    ({**F64, "shape": [1], "b64": 123}, W + '"b64" must be a base64 string, got 123'),
    ({**F64, "shape": [1], "b64": "AAAA AAAAAAA="}, W + '"b64" is not valid base64 (standard alphabet, with padding)'),
    ({**F64, "shape": [1], "b64": "AAAA"}, W + '"b64" decodes to 3 bytes but shape [1] of float64 needs 8'),
    ({**F64, "shape": [2**40], "data": []}, W + '"data" has 0 values but shape [1099511627776] needs 1099511627776'),
])
def test_tensor_errors_name_file_line_tensor_and_fix(obj, message):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow in the float32 cast is the error above, not a warning
        assert _error(obj) == message


def test_shape_limits_are_inclusive():
    assert check_shape([1] * 64, "p", None) == (1,) * 64
    assert check_shape([2**40, 0], "p", None) == (2**40, 0)
    with pytest.raises(FormatError, match="at most 64"):
        check_shape((1,) * 65, "p", None)


def test_decode_tensor_returns_the_name_and_a_writable_array():
    name, arr = decode_tensor({**F64, "shape": [2], "data": [1, -0.5]}, "p.json", 7)
    assert name == "w" and arr.tolist() == [1.0, -0.5]
    encoded = encode_fields(np.array([1.5, -2.0]), b64=True)
    name, arr = decode_tensor({"name": "b", **encoded}, "p.json", 7)
    assert name == "b" and arr.tolist() == [1.5, -2.0] and arr.dtype == np.float64
    arr[0] = 3.0  # a copy of the decoded bytes, not a read-only view of them
    assert arr.flags.writeable


# ---------------------------------------------------------------- _short, encoders


def test_short_cuts_at_the_limit_and_spells_nonfinite_floats():
    assert tj._short("x" * 58) == '"' + "x" * 58 + '"'  # 60 characters: kept
    assert tj._short("x" * 59) == '"' + "x" * 56 + "..."  # 61: cut to 57 and "..."
    assert short_json("x" * 59) == '"' + "x" * 56 + "..."
    assert short_json("x" * 30, 20) == '"' + "x" * 16 + "..."
    assert (tj._short(math.nan), tj._short(-math.inf), tj._short(None)) == ("nan", "-inf", "null")


def test_encoders_write_little_endian_bytes_and_data_by_default():
    for dt in (">f8", ">f4"):
        big = np.array([1.5, -2.0], dtype=dt)
        assert encode_fields(big, b64=True) == encode_fields(big.astype(dt.replace(">", "<")), b64=True)
    assert encode_tensor("w", np.array([1.0, -math.inf])) == {"name": "w", "shape": [2], "dtype": "float64",
                                                              "data": [1.0, "-inf"]}
    for bad in (np.zeros(1, np.int32), np.zeros(1, np.float16)):
        with pytest.raises(ValueError, match=f"dtype {bad.dtype} is not float32 or float64"):
            dtype_name(bad)


def test_dumps_record_writes_the_bytes_of_the_list_encoder():
    """dumps_record hands finite tensors to orjson's numpy serializer: the same bytes as encode_fields' list
    (so only speed tells the two ways apart), for float32 and float64, ±0, subnormal, huge and integral values."""
    rng = np.random.default_rng(5)
    values = np.concatenate([rng.standard_normal(500), rng.standard_normal(100) * 1e300, [5e-324, -0.0, 0.0],
                             rng.standard_normal(100) * 1e-310, np.arange(-50.0, 50.0), [2.0**53, 1e22, 1e16]])
    head = {"step": 1, "name": "w"}
    single = np.append(values[:500], [1e-45, 3e38]).astype(np.float32)
    for arr in (values, single, values.reshape(-1, 1)[:4], np.array([1.0, math.nan])):
        want = orjson.dumps({**head, **encode_fields(arr)}, option=orjson.OPT_APPEND_NEWLINE)
        assert tj.dumps_record(head, arr) == want

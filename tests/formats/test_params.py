"""Params files and tensors in JSON: exact round trips, the conformance files, strict rejection of bad input."""

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

from bit_helpers import assert_same_bits, bits
from memstate.errors import FormatError, MemstateError
from memstate.formats.params import Params, read_params, write_params

CONFORMANCE = Path(__file__).resolve().parents[1] / "conformance"

SPECIAL64 = [0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, math.nan, math.inf,
             -math.inf, 0.1, -2.5]
SPECIAL32 = [float(np.float32(v)) for v in (0.0, -0.0, 1e-45, 1.1754944e-38, 3.4028235e38, 0.1)] + \
    [math.nan, math.inf, -math.inf]
SHAPES = array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)


def _typed_arrays(dt: str, width: int, specials: list) -> st.SearchStrategy:
    elements = st.one_of(st.sampled_from(specials), st.floats(width=width))
    by_value = arrays(dt, SHAPES, elements=elements)
    by_bits = arrays(f"<u{width // 8}", SHAPES).map(lambda a: a.view(dt))  # every NaN payload too
    return st.one_of(by_value, by_bits)


FLOAT_ARRAYS = st.one_of(_typed_arrays("<f8", 64, SPECIAL64), _typed_arrays("<f4", 32, SPECIAL32))


@settings(max_examples=150, deadline=None)
@given(tensors=st.dictionaries(st.text(min_size=1, max_size=6), FLOAT_ARRAYS, max_size=4), b64=st.booleans(),
       meta=st.dictionaries(st.text(max_size=4), st.integers() | st.text(max_size=4), max_size=3))
def test_round_trip_is_bit_exact(tensors, b64, meta):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "p.params.json"
        write_params(path, tensors, meta, b64=b64)
        got = read_params(path)
    assert list(got.tensors) == list(tensors)
    assert got.meta == meta
    for name, want in tensors.items():
        assert_same_bits(got.tensors[name], want, exact_nan=b64)


def test_written_text_is_shortest_round_trip_decimal(tmp_path):
    path = tmp_path / "t.params.json"
    write_params(path, {"a": np.array([0.1, -0.0, 5e-324, np.nan, -np.inf]),
                        "b": np.array([0.1], dtype=np.float32), "s": np.float64(2.5)})
    text = path.read_text()
    assert '"data": [0.1, -0.0, 5e-324, "nan", "-inf"]' in text
    assert '"data": [0.10000000149011612]' in text
    assert '"name": "s", "shape": [], "dtype": "float64", "data": [2.5]' in text
    assert "NaN" not in text and "Infinity" not in text
    doc = json.loads(text)
    assert doc["format"] == "memstate.params" and doc["version"] == 1 and doc["meta"] == {}


def test_ints_become_float64_and_float32_stays(tmp_path):
    path = tmp_path / "t.params.json"
    write_params(path, {"i": np.arange(3), "f": np.ones(2, dtype=np.float32)}, {"seed": 1})
    got = read_params(path)
    assert isinstance(got, Params) and got.path == path and got.meta == {"seed": 1}
    assert got.tensors["i"].dtype == np.float64 and got.tensors["f"].dtype == np.float32


def test_conformance_tricky_reads_to_the_expected_bits():
    got = read_params(CONFORMANCE / "tricky.params.json")
    expected = json.loads((CONFORMANCE / "tricky.expected.json").read_text())["tensors"]
    assert set(got.tensors) == set(expected)
    assert got.tensors["scalar"].shape == ()
    for name, want in expected.items():
        arr = got.tensors[name]
        if arr.dtype == np.float64:
            want_bits = np.array([float.fromhex(v) if v != "nan" else math.nan for v in want]).view(np.uint64)
        else:
            assert arr.dtype == np.float32
            want_bits = np.frombuffer(bytes.fromhex("".join(want)), dtype="<u4")
        np.testing.assert_array_equal(bits(arr).reshape(-1), want_bits, err_msg=name)


def test_conformance_small_params():
    got = read_params(CONFORMANCE / "small.params.json")
    assert {k: v.shape for k, v in got.tensors.items()} == {
        "L1.W": (196, 32), "L1.b": (32,), "L2.W": (32, 10), "L2.b": (10,)}


def test_integers_in_data_are_floats(tmp_path):
    path = tmp_path / "i.params.json"
    path.write_text('{"format": "memstate.params", "version": 1, "meta": {}, "tensors": ['
                    '{"name": "w", "shape": [2, 2], "dtype": "float32", "data": [0, 1, -3, 12345678]}]}')
    w = read_params(path).tensors["w"]
    assert w.dtype == np.float32 and w.tolist() == [[0.0, 1.0], [-3.0, 12345678.0]]


def test_meta_is_optional_and_unknown_keys_are_ignored(tmp_path):
    path = tmp_path / "m.params.json"
    path.write_text('{"format": "memstate.params", "version": 1, "later": 1, "tensors": ['
                    '{"name": "w", "shape": [], "dtype": "float64", "data": [1], "note": "x"}]}')
    got = read_params(path)
    assert got.meta == {} and got.tensors["w"].shape == ()


def _doc(*tensors: str, head: str = '"format": "memstate.params", "version": 1, "meta": {}') -> str:
    return "{" + head + ', "tensors": [' + ", ".join(tensors) + "]}"


def _t(rest: str, name: str = "w") -> str:
    return '{"name": "%s", %s}' % (name, rest)


OK = '"shape": [2], "dtype": "float64"'
MALFORMED = [
    ("bad-json", '{"format": "memstate.params", "version": 1,\n "tensors": [}', r"line 2: not valid JSON"),
    ("not-object", "[1, 2]", r"expected a JSON object"),
    ("no-tensors", '{"format": "memstate.params", "version": 1}', r'missing "tensors"'),
    ("wrong-format", _doc(head='"format": "memstate.trace", "version": 1'), r'"format" is "memstate.trace"'),
    ("no-format", _doc(head='"version": 1'), r'"format" is null'),
    ("version-2", _doc(head='"format": "memstate.params", "version": 2'), r"version 2 is not supported"),
    ("version-str", _doc(head='"format": "memstate.params", "version": "1"'), r'"version" must be an integer'),
    ("meta-list", _doc(head='"format": "memstate.params", "version": 1, "meta": []'), r'"meta" must be'),
    ("duplicate", _doc(_t(OK + ', "data": [1, 2]'), _t(OK + ', "data": [1, 2]')), r"tensor 'w': duplicate"),
    ("too-few", _doc(_t(OK + ', "data": [1]')), r"tensor 'w': \"data\" has 1 values but shape \[2\] needs 2"),
    ("too-many", _doc(_t('"shape": [], "dtype": "float64", "data": [1, 2]')), r"tensor 'w': .*needs 1"),
    ("bool", _doc(_t(OK + ', "data": [1, true]')), r"tensor 'w': \"data\" holds true"),
    ("null", _doc(_t(OK + ', "data": [1, null]')), r"tensor 'w': \"data\" holds null"),
    ("nested", _doc(_t(OK + ', "data": [[1], [2]]')), r"tensor 'w': \"data\" holds \[1\]"),
    ("string", _doc(_t(OK + ', "data": [1, "NaN"]')), r"tensor 'w': .*string \"NaN\""),
    ("number-string", _doc(_t(OK + ', "data": [1, "2.0"]')), r"tensor 'w': .*string \"2.0\""),
    ("bare-nan", _doc(_t(OK + ', "data": [1, NaN]')), r"line 1: bare NaN is not JSON"),
    ("bare-inf", _doc(_t(OK + ', "data": [1, -Infinity]')), r"bare -Infinity is not JSON"),
    ("overflow64", _doc(_t(OK + ', "data": [1, 1e400]')), r"tensor 'w': .*out of float64 range"),
    ("overflow32", _doc(_t('"shape": [1], "dtype": "float32", "data": [1e39]')), r"tensor 'w': .*float32 range"),
    ("data-not-list", _doc(_t(OK + ', "data": 1')), r"tensor 'w': \"data\" must be a flat list"),
    ("both", _doc(_t(OK + ', "data": [1, 2], "b64": ""')), r"tensor 'w': has both"),
    ("neither", _doc(_t(OK)), r"tensor 'w': has neither"),
    ("b64-length", _doc(_t(OK + ', "b64": "AAAAAAAAAAA="')), r"tensor 'w': \"b64\" decodes to 8 bytes .* needs 16"),
    ("b64-chars", _doc(_t(OK + ', "b64": "AAAA*AAA"')), r"tensor 'w': \"b64\" is not valid base64"),
    ("b64-type", _doc(_t(OK + ', "b64": 5')), r"tensor 'w': \"b64\" must be a base64 string"),
    ("dtype", _doc(_t('"shape": [1], "dtype": "float16", "data": [1]')), r"tensor 'w': unknown dtype \"float16\""),
    ("no-dtype", _doc(_t('"shape": [1], "data": [1]')), r"tensor 'w': missing \"dtype\""),
    ("no-shape", _doc(_t('"dtype": "float64", "data": [1]')), r"tensor 'w': missing \"shape\""),
    ("neg-shape", _doc(_t('"shape": [-1], "dtype": "float64", "data": []')), r"tensor 'w': \"shape\" must be"),
    ("float-shape", _doc(_t('"shape": [1.0], "dtype": "float64", "data": [1]')), r"tensor 'w': \"shape\" must"),
    ("bool-shape", _doc(_t('"shape": [true], "dtype": "float64", "data": [1]')), r"tensor 'w': \"shape\" must"),
    ("no-name", _doc('{"shape": [], "dtype": "float64", "data": [1]}'), r'tensor has no "name"'),
    ("empty-name", _doc(_t('"shape": [], "dtype": "float64", "data": [1]', name="")), r'tensor has no "name"'),
    ("tensor-not-object", _doc("[1]"), r"a tensor must be a JSON object"),
]


@pytest.mark.parametrize("text, match", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_raises_format_error_naming_file_and_tensor(tmp_path, text, match):
    path = tmp_path / "bad.params.json"
    path.write_text(text)
    with pytest.raises(FormatError, match=re.escape(str(path)) + r"(, line \d+)?(, tensor '\w*')?: " + ".*"):
        read_params(path)
    with pytest.raises(FormatError, match=match):
        read_params(path)


def test_missing_file(tmp_path):
    with pytest.raises(FormatError, match=re.escape(str(tmp_path / "nope.json")) + ": no such file"):
        read_params(tmp_path / "nope.json")


def test_write_errors_are_memstate_errors(tmp_path):
    with pytest.raises(MemstateError, match="cannot write the params file"):
        write_params(tmp_path / "no" / "such" / "dir.params.json", {"w": np.zeros(1)})
    with pytest.raises(MemstateError, match=r"tensor 'w': dtype object cannot be written"):
        write_params(tmp_path / "p.params.json", {"w": np.array([object()])})
    with pytest.raises(MemstateError, match="meta must be plain JSON"):
        write_params(tmp_path / "p.params.json", {}, {"lr": float("inf")})

"""Quick rule tests of memstate.formats.map: every layout decision (transpose by role and by entry, [n, 1]
biases, a bias folded into W, samples as columns, scales) and every validation message, on small hand-built
arrays with exact values. These are the tests `scripts/mutation.py formats/map.py` runs (pyproject)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from memstate.formats.map import (Dims, Entry, LayoutMap, MapError, _layer, _toml_value, apply_map, parse_index,
                                  parse_map, parse_map_text, read_map, transposes)


def err(fn, *args, **kwargs) -> str:
    with pytest.raises(MapError) as e:
        fn(*args, **kwargs)
    return str(e.value)


# ---------------------------------------------------------------- the map as data, TOML and JSON

def test_entry_describe_and_defaults():
    assert Entry("L1.b", "W1", (0, slice(None)), "0, :").describe() == "L1.b <- W1[0, :]"
    assert Entry("x", "X").describe() == "x <- X"
    e = Entry("x", "X")
    assert (e.index, e.index_text, e.transpose, e.scale) == (None, None, None, None)
    m = LayoutMap()
    assert (m.batch, m.weights, m.entries, m.ignore, m.source) == ("rows", "in,out", (), (), "layout map")


def test_to_dict_writes_only_what_the_entry_sets():
    m = parse_map({"ignore": ["h"], "layout": {"batch": "columns", "weights": "out,in"},
                   "tensors": {"x": {"from": "X", "index": "1:, :", "transpose": False, "scale": 2},
                               "L1.b": {"from": "b1", "transpose": True, "scale": "1/B"}, "L1.W": {}}})
    assert m.to_dict() == {
        "layout": {"batch": "columns", "weights": "out,in"},
        "tensors": {"x": {"from": "X", "index": "1:, :", "transpose": False, "scale": 2.0},
                    "L1.b": {"from": "b1", "transpose": True, "scale": "1/B"}, "L1.W": {"from": "L1.W"}},
        "ignore": ["h"]}
    assert "ignore" not in parse_map({}).to_dict()
    assert parse_map({}).to_dict() == {"layout": {"batch": "rows", "weights": "in,out"}, "tensors": {}}


def test_to_toml_text_with_comments_reads_back():
    m = parse_map({"ignore": ["h", "g"], "tensors": {"x": {"from": "X", "transpose": True, "scale": 0.5},
                                                     "L1.b": {"from": "W1", "index": "0, :"}}}, "m")
    text = m.to_toml({"x": "samples as columns\nsecond line", "L9.z": "not an entry"})
    assert text == ('ignore = ["h", "g"]\n\n[layout]\nbatch = "rows"\nweights = "in,out"\n\n'
                    '# samples as columns\n# second line\n[tensors."x"]\nfrom = "X"\ntranspose = true\nscale = 0.5\n\n'
                    '[tensors."L1.b"]\nfrom = "W1"\nindex = "0, :"\n')
    assert parse_map_text(text, "m") == m
    assert LayoutMap().to_toml() == '[layout]\nbatch = "rows"\nweights = "in,out"\n'
    assert parse_map({"tensors": {"x": {"transpose": False}}}).to_toml().endswith(
        '[tensors."x"]\nfrom = "x"\ntranspose = false\n')


def test_toml_values():
    assert _toml_value(True) == "true" and _toml_value(False) == "false"
    assert _toml_value(2) == "2" and _toml_value(0.25) == "0.25" and _toml_value(-3.5) == "-3.5"
    assert _toml_value(math.nan) == "nan" and _toml_value(math.inf) == "inf" and _toml_value(-math.inf) == "-inf"
    assert _toml_value("1/B") == '"1/B"' and _toml_value('a"b') == '"a\\"b"'


# ---------------------------------------------------------------- reading and validating

def test_read_map_file_errors(tmp_path):
    good = tmp_path / "g.map.toml"
    good.write_text('[tensors."x"]\nfrom = "X"\n')
    m = read_map(good)
    assert m.source == str(good) and m.entries == (Entry("x", "X"),)
    assert err(read_map, tmp_path / "none.toml") == f"{tmp_path / 'none.toml'}: no such map file; check the path"
    bad = tmp_path / "b.toml"
    bad.write_bytes(b"\xff\xfe[")
    assert err(read_map, bad).startswith(f"{bad}: cannot read the map file: ")
    assert err(read_map, tmp_path).startswith(f"{tmp_path}: cannot read the map file: ")
    assert err(parse_map_text, "[layout\n", "t.toml").startswith("t.toml: not valid TOML: ")
    assert parse_map_text("").source == "layout map"


@pytest.mark.parametrize("doc, message", [
    ([1], "S: a layout map is a table (JSON object) with [layout], [tensors] and ignore"),
    ({"layout": {}, "renames": 1}, "S: unknown key 'renames'; a map has [layout], [tensors.\"NAME\"] tables and "
                                   "ignore = [...] (put ignore before the first table in TOML)"),
    ({"layout": 1}, "S: [layout] must be a table with batch and weights"),
    ({"layout": {"batch": "rows", "order": 1}}, "S: layout.order: unknown key; [layout] has batch and weights"),
    ({"layout": {"batch": "cols"}}, "S: layout.batch = 'cols': write \"rows\" (canonical [B, n]) or \"columns\" "
                                    "([n, B])"),
    ({"layout": {"weights": "in-out"}}, "S: layout.weights = 'in-out': write \"in,out\" (canonical [fan_in, "
                                        "fan_out]) or \"out,in\""),
    ({"layout": {"weights": 1}}, "S: layout.weights = 1: write \"in,out\" (canonical [fan_in, fan_out]) or "
                                 "\"out,in\""),
    ({"ignore": "h"}, "S: ignore must be a list of port tensor names, e.g. ignore = [\"h1\"]"),
    ({"ignore": ["h", ""]}, "S: ignore must be a list of port tensor names, e.g. ignore = [\"h1\"]"),
    ({"ignore": ["h", 1]}, "S: ignore must be a list of port tensor names, e.g. ignore = [\"h1\"]"),
    ({"tensors": []}, "S: tensors must be a table of [tensors.\"CANONICAL_NAME\"] entries"),
    ({"tensors": {"L0.z": {}}}, "S: tensors.L0.z: 'L0.z' is not a canonical name (x, y, L<i>.z, L<i>.a, probs, "
                                "loss, L<i>.dz, L<i>.dW, L<i>.db, L<i>.da, L<i>.W, L<i>.b; docs/format.md section 4)"),
    ({"tensors": {"x": 1}}, "S: tensors.x: must be a table with from, index, transpose, scale"),
    ({"tensors": {"x": {"to": "a"}}}, "S: tensors.x: unknown key 'to'; an entry has from, index, transpose, scale"),
    ({"tensors": {"x": {"from": ""}}}, "S: tensors.x: from must be the port's record name (a non-empty string)"),
    ({"tensors": {"x": {"from": 3}}}, "S: tensors.x: from must be the port's record name (a non-empty string)"),
    ({"tensors": {"x": {"index": 0}}}, "S: tensors.x: index must be a string such as \"1:, :\""),
    ({"tensors": {"x": {"transpose": 1}}}, "S: tensors.x: transpose must be true or false"),
    ({"tensors": {"x": {"scale": 0}}}, "S: tensors.x: scale = 0: write a non-zero number, \"B\" or \"1/B\" "
                                       "(B = the batch size)"),
    ({"ignore": ["a"], "tensors": {"y": {"from": "b"}, "x": {"from": "a"}}},
     "S: tensors.x: port tensor 'a' is both mapped and in ignore; remove it from ignore"),
])
def test_bad_documents_exact_messages(doc, message):
    assert err(parse_map, doc, "S") == message


@pytest.mark.parametrize("value", [0, 0.0, True, False, math.nan, math.inf, -math.inf, "b", "1/b", "2B", [2]])
def test_bad_scales(value):
    assert err(parse_map, {"tensors": {"x": {"scale": value}}}, "S") == \
        f"S: tensors.x: scale = {value!r}: write a non-zero number, \"B\" or \"1/B\" (B = the batch size)"


def test_good_documents():
    m = parse_map({"layout": {"weights": " out , in "},
                   "tensors": {"L10.dW": {"scale": 2}, "x": {"scale": -0.5}, "L2.db": {"scale": "B"},
                               "loss": {"scale": "1/B", "from": "cost"}}}, "S")
    assert m.batch == "rows" and m.weights == "out,in" and m.source == "S" and m.ignore == ()
    assert m.entries == (Entry("L10.dW", "L10.dW", scale=2.0), Entry("x", "x", scale=-0.5),
                         Entry("L2.db", "L2.db", scale="B"), Entry("loss", "cost", scale="1/B"))
    assert isinstance(m.entries[0].scale, float)
    assert parse_map({"layout": {"batch": "columns"}}).batch == "columns"
    assert parse_map({"layout": {"weights": "in,out"}}).weights == "in,out"
    e = parse_map({"tensors": {"probs": {"index": "0,", "transpose": False}}}).entries[0]
    assert (e.index, e.index_text, e.transpose) == ((0,), "0,", False)
    assert parse_map({"ignore": ["a", "b"]}).ignore == ("a", "b")
    for name in ("x", "y", "probs", "loss", "L1.z", "L1.a", "L1.dz", "L1.da", "L1.W", "L1.b", "L1.dW", "L1.db",
                 "L19.z"):
        assert parse_map({"tensors": {name: {}}}).entries[0].name == name
    for name in ("L1", "X", "L1.Z", "L01.z", "xL1.z", "L1.zz", "l1.z", "L1.dx"):
        assert "is not a canonical name" in err(parse_map, {"tensors": {name: {}}})


def test_parse_index_items():
    assert parse_index("0") == (0,)
    assert parse_index("-12, 3") == (-12, 3)
    assert parse_index("0,") == (0,)
    assert parse_index(" : ") == (slice(None, None, None),)
    assert parse_index("1:") == (slice(1, None, None),)
    assert parse_index(":-1") == (slice(None, -1, None),)
    assert parse_index("1:5:2") == (slice(1, 5, 2),)
    assert parse_index("::-1") == (slice(None, None, -1),)
    assert parse_index("2::") == (slice(2, None, None),)
    for bad in ("", ",", "0,,", "1:2:3:4", "a", "1:a", "1.0", "+1", "0::0", ":, 0:0:0", "--1"):
        with pytest.raises(MapError):
            parse_index(bad)
    assert err(parse_index, "1:2:3:4", "W") == ("W: index '1:2:3:4': '1:2:3:4' is neither an integer nor a slice "
                                                "like 1:, :-1 or ::2 (only integers, slices and ':' are allowed)")
    assert err(parse_index, "::0") == "index: index '::0': a slice step cannot be 0"
    assert err(parse_index, "x").startswith("index: index 'x': 'x' is neither")


# ---------------------------------------------------------------- roles, shapes and transposes

def test_dims_expected_shapes():
    d = Dims(4, {0: 3, 1: 5, 2: 2}, 2)
    assert d.expected("loss") == ()
    assert d.expected("x") == (4, 3)
    assert d.expected("y") == (4, 2) and d.expected("probs") == (4, 2)
    assert d.expected("L1.W") == (3, 5) and d.expected("L2.dW") == (5, 2)
    assert d.expected("L1.b") == (5,) and d.expected("L2.db") == (2,)
    assert d.expected("L1.z") == (4, 5) and d.expected("L2.da") == (4, 2) and d.expected("L1.dz") == (4, 5)
    u = Dims(None, {1: 5}, None)
    assert u.expected("y") == (None, None) and u.expected("x") == (None, None)
    assert u.expected("L2.W") == (5, None)
    assert _layer("L12.dW") == 12 and _layer("x") == 0 and _layer("probs") == 0 and _layer("L1") == 0


@pytest.mark.parametrize("batch, weights, name, transpose, expected", [
    ("rows", "in,out", "x", None, False), ("columns", "in,out", "x", None, True),
    ("columns", "in,out", "y", None, True), ("columns", "in,out", "probs", None, True),
    ("columns", "in,out", "L3.z", None, True), ("columns", "in,out", "L3.a", None, True),
    ("columns", "in,out", "L3.dz", None, True), ("columns", "in,out", "L3.da", None, True),
    ("columns", "in,out", "L3.W", None, False), ("columns", "out,in", "L3.W", None, True),
    ("rows", "out,in", "L3.dW", None, True), ("rows", "out,in", "L3.z", None, False),
    ("columns", "out,in", "L3.b", None, False), ("columns", "out,in", "L3.db", None, False),
    ("columns", "out,in", "loss", None, False),
    ("columns", "out,in", "x", False, False), ("rows", "in,out", "L1.W", True, True),
    ("rows", "in,out", "L1.b", True, True), ("columns", "out,in", "L1.W", False, False),
])
def test_transposes_by_role_and_by_entry(batch, weights, name, transpose, expected):
    assert transposes(LayoutMap(batch, weights), Entry(name, "t", transpose=transpose)) is expected


# ---------------------------------------------------------------- applying a map

def test_samples_as_columns_out_in_weights_n1_biases_and_scales():
    m = parse_map({"layout": {"batch": "columns", "weights": "out,in"},
                   "tensors": {"x": {"from": "X"}, "y": {"from": "Y"}, "L1.W": {"from": "W1"},
                               "L1.b": {"from": "b1"}, "L1.db": {"from": "db1", "scale": "1/B"},
                               "L1.dz": {"from": "dZ1", "scale": "B"}, "L1.dW": {"from": "dW1", "scale": -2}}})
    X, W1 = np.arange(6.0).reshape(3, 2), np.arange(12.0).reshape(4, 3)
    port = {"X": X, "Y": np.array([[1.0, 0.0], [0.0, 1.0]]), "W1": W1, "b1": np.array([[1.0], [2.0], [3.0], [4.0]]),
            "db1": np.array([[2.0], [4.0], [6.0], [8.0]]), "dZ1": np.arange(8.0).reshape(4, 2),
            "dW1": np.ones((4, 3))}
    out = apply_map(m, port)
    assert list(out) == ["x", "y", "L1.dz", "L1.dW", "L1.db", "L1.W", "L1.b"]
    np.testing.assert_array_equal(out["x"], X.T)
    np.testing.assert_array_equal(out["L1.W"], W1.T)
    assert out["L1.b"].shape == (4,) and list(out["L1.b"]) == [1.0, 2.0, 3.0, 4.0]
    np.testing.assert_array_equal(out["L1.db"], [1.0, 2.0, 3.0, 4.0])  # / B, B = 2 samples (X's columns)
    np.testing.assert_array_equal(out["L1.dz"], np.arange(8.0).reshape(4, 2).T * 2)
    np.testing.assert_array_equal(out["L1.dW"], -2 * np.ones((3, 4)))
    for v in out.values():
        assert v.flags.c_contiguous


def test_a_folded_bias_row_and_a_ones_column():
    m = parse_map({"ignore": ["h"], "tensors": {"x": {"from": "xa", "index": ":, 1:"},
                                                "L1.W": {"from": "Wa", "index": "1:, :"},
                                                "L1.b": {"from": "Wa", "index": "0, :"},
                                                "L1.db": {"from": "dWa", "index": "-3"}}})
    xa = np.hstack([np.ones((2, 1)), np.arange(4.0).reshape(2, 2)])
    Wa = np.arange(9.0).reshape(3, 3)
    out = apply_map(m, {"xa": xa, "Wa": Wa, "dWa": Wa + 1, "h": np.zeros(1)})
    assert list(out) == ["x", "L1.db", "L1.W", "L1.b"]
    np.testing.assert_array_equal(out["x"], [[0.0, 1.0], [2.0, 3.0]])
    np.testing.assert_array_equal(out["L1.W"], [[3.0, 4.0, 5.0], [6.0, 7.0, 8.0]])
    np.testing.assert_array_equal(out["L1.b"], [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(out["L1.db"], [1.0, 2.0, 3.0])


def test_unmapped_canonical_names_pass_through_and_ignored_ones_are_dropped():
    m = parse_map({"ignore": ["L1.a"], "tensors": {"L1.z": {"from": "h"}}})
    out = apply_map(m, {"x": np.ones((2, 3)), "h": np.ones((2, 4)), "L1.a": np.ones((2, 4)), "loss": np.float64(2)})
    assert list(out) == ["x", "L1.z", "loss"] and out["loss"].shape == ()  # ordered as if L2 followed
    assert err(apply_map, m, {"x": np.ones((2, 3)), "L1.z": np.ones((2, 4)), "q": np.ones(1)}, 7) == (
        "layout map: step 7: port tensors 'L1.z', 'q' neither mapped nor ignored; tensors.L1.z takes L1.z from 'h' "
        "instead: map each with [tensors.\"CANONICAL\"] from = \"L1.z\", or list it in ignore = [...]")
    assert err(apply_map, m, {"q": np.ones(1)}) == (
        "layout map: step 0: port tensor 'q' neither mapped nor ignored: map each with [tensors.\"CANONICAL\"] "
        "from = \"q\", or list it in ignore = [...]")
    assert list(apply_map(m, {"x": np.ones((2, 3)), "q": np.ones(1)}, strict=False)) == ["x"]


def test_one_port_tensor_feeds_several_entries_and_absent_sources_are_skipped():
    m = parse_map({"tensors": {"L1.b": {"from": "Wa", "index": "0"}, "L1.W": {"from": "Wa", "index": "1:"},
                               "y": {"from": "Y"}}})
    out = apply_map(m, {"Wa": np.arange(6.0).reshape(3, 2)})
    assert list(out) == ["L1.W", "L1.b"]
    np.testing.assert_array_equal(out["L1.b"], [0.0, 1.0])


def test_index_range_checks():
    m = parse_map({"tensors": {"L1.b": {"from": "b", "index": "-2"}}})
    np.testing.assert_array_equal(apply_map(m, {"b": np.array([[1.0, 2.0], [3.0, 4.0]])})["L1.b"], [1.0, 2.0])
    m = parse_map({"tensors": {"L1.b": {"from": "b", "index": "1"}}})
    np.testing.assert_array_equal(apply_map(m, {"b": np.array([[1.0, 2.0], [3.0, 4.0]])})["L1.b"], [3.0, 4.0])
    for idx in ("-3", "2"):
        m = parse_map({"tensors": {"L1.b": {"from": "b", "index": idx}}}, "M")
        assert err(apply_map, m, {"b": np.ones((2, 2))}, 5) == (
            f"M: L1.b <- b[{idx}]: step 5: index [{idx}] is out of range: axis 0 of 'b' has 2 entries (shape [2, 2])")
    m = parse_map({"tensors": {"L1.b": {"from": "b", "index": ":, 2"}}}, "M")
    assert "axis 1 of 'b' has 2 entries" in err(apply_map, m, {"b": np.ones((3, 2))})
    m = parse_map({"tensors": {"L1.b": {"from": "b", "index": "0, 0"}}}, "M")
    assert err(apply_map, m, {"b": np.ones(3)}) == ("M: L1.b <- b[0, 0]: step 0: index [0, 0] has 2 items but 'b' "
                                                    "has 1 axes (shape [3])")
    m = parse_map({"tensors": {"L1.b": {"from": "b", "index": "0, 0"}}}, "M")
    assert apply_map(m, {"b": np.full((2, 2), 7.0)})["L1.b"].tolist() == [7.0]
    m = parse_map({"tensors": {"L1.b": {"from": "b", "index": "1:"}}}, "M")
    assert err(apply_map, m, {"b": np.ones(1)}) == ("M: L1.b <- b[1:]: step 0: index [1:] selects nothing of 'b' "
                                                    "(shape [1])")


def test_transposing_more_than_two_axes_is_refused_and_vectors_pass():
    m = parse_map({"tensors": {"L1.W": {"from": "w", "transpose": True}}}, "M")
    assert err(apply_map, m, {"w": np.ones((2, 2, 2))}, 1) == (
        "M: L1.W <- w: step 1: cannot transpose a 3-d tensor (shape [2, 2, 2]); index it down to 2 axes first")
    m = parse_map({"tensors": {"L1.b": {"from": "b", "transpose": True}}})
    np.testing.assert_array_equal(apply_map(m, {"b": np.array([1.0, 2.0])})["L1.b"], [1.0, 2.0])
    m = parse_map({"layout": {"batch": "columns"}})
    np.testing.assert_array_equal(apply_map(m, {"x": np.array([[1.0, 2.0, 3.0]])})["x"], [[1.0], [2.0], [3.0]])


def test_widths_come_from_declared_layers_weights_x_y_vectors_and_batch_tensors():
    # declared layers decide the output width: y fits [B, 2] only
    m = parse_map({})
    out = apply_map(m, {"x": np.ones((3, 4)), "y": np.ones((3, 1, 2))}, layers=[4, 5, 2])
    assert out["y"].shape == (3, 2)
    assert "cannot be the canonical [3, 2]" in err(apply_map, m, {"x": np.ones((3, 4)), "y": np.ones((3, 5))},
                                                   layers=[4, 5, 2])
    # a bias of shape [n, 1] gives the width of its layer, which then fixes L1.W's second axis
    assert apply_map(m, {"L1.b": np.ones((5, 1)), "L1.W": np.ones((4, 5))})["L1.b"].shape == (5,)
    assert "cannot be the canonical [?, 5]" in err(apply_map, m, {"L1.b": np.ones((5, 1)), "L1.W": np.ones((4, 4, 1))})
    # a hidden batch tensor gives its layer's width and the batch size
    msg = err(apply_map, m, {"L1.a": np.ones((2, 5)), "L1.b": np.ones(4)})
    assert msg == ("layout map: L1.b <- L1.b: step 0: shape [4] (after index and transpose) cannot be the canonical "
                   "[5] (batch 2, widths [None, 5])")
    # x gives width 0 and the batch size before any other batch tensor
    msg = err(apply_map, m, {"L1.z": np.ones((3, 5)), "x": np.ones((2, 4)), "L1.b": np.ones(6)})
    assert msg.startswith("layout map: L1.z <- L1.z: step 0: shape [3, 5]") and msg.endswith(
        "cannot be the canonical [2, 5] (batch 2, widths [4, 5])")
    # W decides widths before x does
    msg = err(apply_map, m, {"x": np.ones((2, 4)), "L1.W": np.ones((3, 5))})
    assert msg.startswith("layout map: x <- x: step 0: shape [2, 4]") and "widths [3, 5]" in msg
    # declared layers decide before W
    msg = err(apply_map, m, {"L1.W": np.ones((3, 5))}, layers=[3, 6])
    assert "cannot be the canonical [3, 6] (batch None, widths [3, 6])" in msg
    # y with undeclared layers fits any width; a [n, 2] bias says nothing
    assert apply_map(m, {"x": np.ones((2, 3)), "y": np.ones((2, 9))})["y"].shape == (2, 9)
    assert "cannot be the canonical [?]" in err(apply_map, m, {"L1.b": np.ones((3, 2))})
    # probs gives the output width when the layers are declared through n_layers only by the layers
    assert err(apply_map, m, {"probs": np.ones((2, 3)), "L2.b": np.ones(4)}, layers=[1, 1, 3]).endswith(
        "cannot be the canonical [3] (batch 2, widths [1, 1, 3])")


def test_the_batch_size_is_read_off_x_first_then_the_first_batch_tensor():
    m = parse_map({"tensors": {"L1.db": {"from": "g", "scale": "1/B"}}})
    g = np.array([4.0, 8.0])
    out = apply_map(m, {"L1.z": np.ones((4, 2)), "x": np.ones((2, 3)), "g": g}, strict=False)
    assert out["L1.db"].tolist() == [2.0, 4.0] and "L1.z" not in out  # [4, 2] is not [B, n] with B = 2
    assert apply_map(m, {"L1.z": np.ones((4, 2)), "g": g})["L1.db"].tolist() == [1.0, 2.0]
    assert apply_map(m, {"L1.W": np.ones((3, 2)), "L1.z": np.ones((4, 2)), "g": g})["L1.db"].tolist() == [1.0, 2.0]
    # a 1-d x does not give the batch
    assert err(apply_map, m, {"x": np.ones(3), "g": g}, strict=True).startswith("layout map: x <- x")
    out = apply_map(m, {"x": np.ones(3), "L1.a": np.ones((2, 2)), "g": g}, strict=False)
    assert out["L1.db"].tolist() == [2.0, 4.0] and "x" not in out
    msg = err(apply_map, m, {"g": g, "L1.W": np.ones((3, 2))})
    assert msg == ("layout map: L1.db <- g: step 0: scale = '1/B' needs the batch size, but no batch tensor (x, y, "
                   "L<i>.z, L<i>.a, probs, dz, da) is mapped in this step")
    m = parse_map({"tensors": {"loss": {"from": "c", "scale": "B"}}})
    assert float(apply_map(m, {"c": np.array([[1.5]]), "y": np.ones((3, 2))})["loss"]) == 4.5


def test_shapes_that_differ_only_in_unit_axes_are_reshaped():
    m = parse_map({})
    out = apply_map(m, {"x": np.arange(6.0).reshape(2, 1, 3), "L1.W": np.ones((3, 1, 1, 4)), "y": np.ones((2, 4)),
                        "L1.b": np.ones((1, 4)), "loss": np.array([[2.0]])}, layers=[3, 4])
    assert [out[n].shape for n in ("x", "L1.W", "L1.b", "loss")] == [(2, 3), (3, 4), (4,), ()]
    # without the batch size and the width, a 3-d x cannot be placed
    assert "cannot be the canonical [?, ?]" in err(apply_map, m, {"x": np.ones((2, 1, 3))})
    np.testing.assert_array_equal(out["x"], [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])
    # [1, 1] -> [1]: a one-unit layer's bias
    assert apply_map(m, {"L1.b": np.ones((1, 1)), "L1.W": np.ones((2, 1))})["L1.b"].shape == (1,)
    assert apply_map(m, {"L1.b": np.ones((1, 1))})["L1.b"].shape == (1,)
    assert apply_map(m, {"x": np.ones((1, 1)), "L1.W": np.ones((1, 1))})["x"].shape == (1, 1)
    assert err(apply_map, m, {"loss": np.ones(2)}) == ("layout map: loss <- loss: step 0: shape [2] (after index and "
                                                       "transpose) cannot be the canonical [] (batch None, widths [])")
    assert "cannot be the canonical [2]" in err(apply_map, m, {"L1.b": np.ones(3), "L1.W": np.ones((1, 2))})
    # a [2, 1] weight of a 1 -> 2 layer holds its two values in the same order as [1, 2]
    assert apply_map(m, {"L1.W": np.array([[1.0], [2.0]])}, layers=[1, 2])["L1.W"].tolist() == [[1.0, 2.0]]


def test_a_shape_that_fits_transposed_says_which_way_to_set_transpose():
    m = parse_map({"layout": {"weights": "out,in"}}, "M")
    msg = err(apply_map, m, {"L1.W": np.ones((4, 3)), "x": np.ones((2, 4))}, layers=[4, 3])
    assert msg.endswith("cannot be the canonical [4, 3] (batch 2, widths [4, 3]); it fits transposed: set "
                        "transpose = false")
    msg = err(apply_map, parse_map({}), {"L1.W": np.ones((3, 4))}, layers=[4, 3])
    assert msg.endswith("; it fits transposed: set transpose = true")
    msg = err(apply_map, parse_map({}), {"L1.W": np.ones((3, 5))}, layers=[4, 3])
    assert msg.endswith("(batch None, widths [4, 3])")
    msg = err(apply_map, parse_map({}), {"L1.W": np.ones((3, 4, 1))}, layers=[4, 3])
    assert msg.endswith("(batch None, widths [4, 3])")


def test_names_outside_the_network_and_the_order_without_declared_layers():
    m = parse_map({"tensors": {"L3.W": {"from": "w"}}}, "M")
    assert err(apply_map, m, {"w": np.ones((2, 2))}, 4, layers=[2, 2]) == (
        "M: tensors.L3.W: not a canonical name of a 1-layer network (its names: x y L1.z probs loss L1.dz L1.dW "
        "L1.db L1.W L1.b)")
    assert list(apply_map(m, {"w": np.ones((2, 2))}, layers=[2, 2], strict=False)) == []
    # without declared layers: L2 taken as hidden, so L2.a comes before L2.W and after L1.*
    out = apply_map(parse_map({}), {"L2.W": np.ones((2, 2)), "L2.a": np.ones((1, 2)), "L1.a": np.ones((1, 2)),
                                    "x": np.ones((1, 2)), "probs": np.ones((1, 2)), "y": np.ones((1, 2))})
    assert list(out) == ["x", "y", "L1.a", "L2.a", "probs", "L2.W"]
    assert list(apply_map(parse_map({}), {"loss": np.ones(()), "x": np.ones((1, 2))})) == ["x", "loss"]


def test_every_shadowed_canonical_name_is_explained():
    m = parse_map({"tensors": {"x": {"from": "X"}, "L1.W": {"from": "W"}}}, "M")
    assert err(apply_map, m, {"X": np.ones((1, 2)), "W": np.ones((2, 2)), "x": np.ones((1, 2)),
                              "L1.W": np.ones((2, 2))}) == (
        "M: step 0: port tensors 'x', 'L1.W' neither mapped nor ignored; tensors.x takes x from 'X' instead; "
        "tensors.L1.W takes L1.W from 'W' instead: map each with [tensors.\"CANONICAL\"] from = \"x\", or list it "
        "in ignore = [...]")


def test_the_transpose_hint_needs_both_axes_to_fit_reversed():
    # [5, 4] reversed is [4, 5]: the first axis fits the canonical [4, 3], the second does not
    msg = err(apply_map, parse_map({}), {"L1.W": np.ones((5, 4))}, layers=[4, 3])
    assert msg.endswith("cannot be the canonical [4, 3] (batch None, widths [4, 3])")
    msg = err(apply_map, parse_map({}), {"L1.W": np.ones((4, 4))}, layers=[4, 3])
    assert msg.endswith("cannot be the canonical [4, 3] (batch None, widths [4, 3])")

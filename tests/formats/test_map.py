"""Layout maps (memstate.formats.map): parsing, validation messages, applying, round trips, the mapped reader."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memstate.cli.main import main
from memstate.formats.map import LayoutMap, MapError, apply_map, parse_index, parse_map, parse_map_text
from memstate.formats.trace import open_trace, read_trace
from memstate.names import canonical_names
from trace_helpers import write_steps

FOLDED = """
ignore = ["h1"]
[layout]
batch = "rows"
[tensors."x"]
from = "x1"
index = ":, 1:"
[tensors."L1.W"]
from = "W1"
index = "1:, :"
[tensors."L1.b"]
from = "W1"
index = "0, :"
"""


def test_parse_index_takes_integers_and_slices_only():
    assert parse_index("1:, :") == (slice(1, None), slice(None))
    assert parse_index("0, -1") == (0, -1)
    assert parse_index(" ::2 , 1:-1:3") == (slice(None, None, 2), slice(1, -1, 3))
    for bad in ("__import__('os')", "1:, x", "[0]", "1.5", "0::0", "..."):
        with pytest.raises(MapError, match="index"):
            parse_index(bad)


@pytest.mark.parametrize("text, words", [
    ('[tensors."L1.q"]\nfrom = "a"', "tensors.L1.q: 'L1.q' is not a canonical name"),
    ('[tensors."x"]\nfrom = "a"\nindex = "os.system(1)"', "tensors.x: index 'os.system(1)'"),
    ('[tensors."x"]\nfrom = "a"\nscale = "2B"', "tensors.x: scale = '2B': write a non-zero number"),
    ('[tensors."x"]\nfrom = "a"\nscale = 0', "scale = 0"),
    ('[tensors."x"]\nfrom = "a"\ntranspose = "yes"', "tensors.x: transpose must be true or false"),
    ('[tensors."x"]\nsource = "a"', "tensors.x: unknown key 'source'"),
    ('[layout]\nbatch = "cols"', "layout.batch = 'cols'"),
    ('[layout]\nweights = "in-out"', "layout.weights = 'in-out'"),
    ('[layout]\norder = 1', "layout.order: unknown key"),
    ('renames = 1', "unknown key 'renames'"),
    ('ignore = "h1"', "ignore must be a list"),
    ('ignore = ["a"]\n[tensors."x"]\nfrom = "a"', "port tensor 'a' is both mapped and in ignore"),
    ('[layout\n', "not valid TOML"),
])
def test_bad_maps_are_clear_errors_naming_the_entry(text, words):
    with pytest.raises(MapError) as e:
        parse_map_text(text, "my.map.toml")
    assert str(e.value).startswith("my.map.toml: ") and words in str(e.value)


def test_a_folded_bias_and_a_ones_column_come_apart():
    m = parse_map_text(FOLDED, "folded")
    x1 = np.hstack([np.ones((4, 1)), np.arange(24.0).reshape(4, 6)])
    W1 = np.arange(35.0).reshape(7, 5)
    out = apply_map(m, {"x1": x1, "y": np.eye(3)[[0, 1, 2, 0]], "W1": W1, "h1": np.ones((4, 6))})
    assert list(out) == ["x", "y", "L1.W", "L1.b"]
    np.testing.assert_array_equal(out["x"], x1[:, 1:])
    np.testing.assert_array_equal(out["L1.W"], W1[1:])
    np.testing.assert_array_equal(out["L1.b"], W1[0])


def test_columns_out_in_n1_columns_and_scales():
    m = parse_map({"layout": {"batch": "columns", "weights": "out, in"},
                   "tensors": {"x": {"from": "X"}, "L1.dz": {"from": "dZ1", "scale": "1/B"},
                               "L1.db": {"from": "db1", "scale": 0.5}, "L1.W": {"from": "W1"},
                               "loss": {"from": "cost", "scale": "B"}}})
    X, dZ1, W1 = np.arange(12.0).reshape(3, 4), np.arange(8.0).reshape(2, 4), np.arange(6.0).reshape(2, 3)
    out = apply_map(m, {"X": X, "dZ1": dZ1, "db1": np.array([[2.0], [4.0]]), "W1": W1, "cost": np.array([1.5])})
    assert list(out) == ["x", "loss", "L1.dz", "L1.db", "L1.W"]
    np.testing.assert_array_equal(out["x"], X.T)
    np.testing.assert_array_equal(out["L1.dz"], dZ1.T / 4)
    np.testing.assert_array_equal(out["L1.db"], [1.0, 2.0])
    np.testing.assert_array_equal(out["L1.W"], W1.T)
    assert out["loss"].shape == () and out["loss"] == 6.0


@pytest.mark.parametrize("tensors, words", [
    ({"x1": np.ones((4, 7)), "W1": np.ones((7, 5)), "h": np.ones(2)}, "port tensor 'h' neither mapped nor ignored"),
    ({"x1": np.ones((4, 7)), "W1": np.ones(5)}, "L1.W <- W1[1:, :]: step 3: index [1:, :] has 2 items but 'W1' has 1"),
    ({"x1": np.ones((4, 7)), "W1": np.ones((1, 5))}, "L1.W <- W1[1:, :]: step 3: index [1:, :] selects nothing "
                                                      "of 'W1' (shape [1, 5])"),
    ({"x1": np.ones((4, 7)), "W1": np.ones((0, 5))}, "index [1:, :] selects nothing of 'W1' (shape [0, 5])"),
    ({"x1": np.ones((4, 7)), "W1": np.ones((7, 2, 2))}, "L1.W <- W1[1:, :]: step 3: shape [6, 2, 2] (after index "
                                                         "and transpose) cannot be the canonical [6, ?]"),
    ({"x1": np.ones((4, 8)), "W1": np.ones((7, 5))}, "x <- x1[:, 1:]: step 3: shape [4, 7] (after index and "
                                                      "transpose) cannot be the canonical [4, 6]"),
    ({"x1": np.ones((4, 7)), "W1": np.ones((7, 5)), "x": np.ones((4, 6))}, "'x' neither mapped nor ignored; "
                                                                           "tensors.x takes x from 'x1' instead"),
])
def test_a_map_that_does_not_fit_the_step_names_entry_and_step(tensors, words):
    m = parse_map_text(FOLDED.replace('ignore = ["h1"]', ""), "folded.toml")
    with pytest.raises(MapError) as e:
        apply_map(m, tensors, 3)
    assert words in str(e.value)


def test_shape_errors_say_when_a_transpose_would_fit_and_names_outside_the_network():
    m = parse_map({"tensors": {"L1.W": {"from": "w"}}})
    with pytest.raises(MapError, match=r"shape \[4, 3\] .* cannot be the canonical \[3, 4\] .*; it fits transposed: "
                                       "set transpose = true"):
        apply_map(m, {"x": np.ones((2, 3)), "w": np.ones((4, 3)), "L1.b": np.ones(4)}, layers=[3, 4])
    with pytest.raises(MapError, match="tensors.L2.a: not a canonical name of a 2-layer network"):
        apply_map(parse_map({"tensors": {"L2.a": {"from": "h"}}}), {"h": np.ones((2, 3))}, layers=[3, 3, 3])
    # without declared layers, L2.a may be a hidden layer of a deeper network
    assert list(apply_map(parse_map({"tensors": {"L2.a": {"from": "h"}}}), {"h": np.ones((2, 3)), "x": np.ones((2, 1))})) \
        == ["x", "L2.a"]
    with pytest.raises(MapError, match="scale = 'B' needs the batch size"):
        apply_map(parse_map({"tensors": {"loss": {"from": "l", "scale": "B"}}}), {"l": np.ones(())})
    with pytest.raises(MapError, match="cannot be the canonical"):
        apply_map(parse_map({}), {"x": np.ones((2, 3)), "L1.W": np.ones((4, 5))}, layers=[3, 5])


# ---------------------------------------------------------------- random layouts round trip

@st.composite
def layouts(draw):
    """A canonical step of a random network, a random map, and the port tensors that map reads it from."""
    n_layers = draw(st.integers(1, 3))
    widths = draw(st.lists(st.integers(1, 4), min_size=n_layers + 1, max_size=n_layers + 1))
    batch = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    names = draw(st.lists(st.sampled_from(canonical_names(n_layers)), min_size=1, unique=True))
    names = [n for n in canonical_names(n_layers) if n in names or n == "x"]  # x tells the batch size
    layout = {"batch": draw(st.sampled_from(["rows", "columns"])), "weights": draw(st.sampled_from(["in,out", "out,in"]))}
    canon, port, entries = {}, {}, {}
    for name in names:
        shape = _shape(name, widths, batch, n_layers)
        value = rng.normal(size=shape)
        canon[name] = value
        src = f"t{len(port)}"
        entry: dict = {"from": src}
        v = value
        kind = "w" if name.split(".")[-1] in ("W", "dW") else "batch" if len(shape) == 2 else "other"
        default_t = (kind == "batch" and layout["batch"] == "columns") or (kind == "w" and layout["weights"] == "out,in")
        t = draw(st.booleans()) if len(shape) == 2 else False
        if t != default_t and len(shape) == 2:
            entry["transpose"] = t
        if t:
            v = v.T
        if len(shape) == 1 and draw(st.booleans()):
            v = v[:, None]  # an [n, 1] column
        if len(shape) == 2 and draw(st.booleans()):  # a padding row in front, cut by index
            v = np.vstack([rng.normal(size=(1, v.shape[1])), v])
            entry["index"] = "1:, :"
        scale = draw(st.sampled_from([None, "B", "1/B", 2.0, 0.25]))
        if scale is not None:
            entry["scale"] = scale
            v = v / batch if scale == "B" else v * batch if scale == "1/B" else v / scale
        port[src] = v
        entries[name] = entry
    return parse_map({"layout": layout, "tensors": entries}), port, canon, widths


def _shape(name, widths, batch, n_layers):
    if name == "loss":
        return ()
    if name == "x":
        return (batch, widths[0])
    if name in ("y", "probs"):
        return (batch, widths[n_layers])
    i, kind = int(name[1:name.index(".")]), name.split(".")[1]
    return {"W": (widths[i - 1], widths[i]), "dW": (widths[i - 1], widths[i]), "b": (widths[i],),
            "db": (widths[i],)}.get(kind, (batch, widths[i]))


@settings(max_examples=60, deadline=None)
@given(layouts())
def test_random_layouts_map_back_to_the_canonical_tensors(case):
    m, port, canon, widths = case
    out = apply_map(m, port, layers=widths)
    assert list(out) == list(canon)  # canonical dataflow order
    for name, value in canon.items():
        assert out[name].shape == value.shape, name
        np.testing.assert_allclose(out[name], value, rtol=1e-14, atol=0, err_msg=name)
    # the same map as TOML and as header JSON reads back equal
    assert parse_map_text(m.to_toml(), m.source) == m
    assert parse_map(json.loads(json.dumps(m.to_dict())), m.source) == m


# ---------------------------------------------------------------- the mapped reader

write = write_steps


PORT_MAP = {"layout": {"batch": "columns"}, "tensors": {"x": {"from": "X"}, "L1.b": {"from": "b1"}}}


def port_steps():
    return {k: {"X": np.arange(6.0).reshape(3, 2) + k, "b1": np.ones((4, 1)) * k, "L1.W": np.ones((3, 4))}
            for k in range(3)}


def test_a_map_in_the_header_applies_without_a_flag_and_an_explicit_one_wins(tmp_path):
    for enc in ("t.memstate.jsonl", "t.memstate"):
        path = write(tmp_path / enc, port_steps(), meta={"impl": "port", "map": PORT_MAP},
                     crash=(3, {"X": np.zeros((3, 2))}))
        with open_trace(path) as reader:
            assert "map" not in reader.meta and reader.layout is not None
            steps = list(reader.steps(include_incomplete=True))
        assert [list(s.tensors) for s in steps] == [["x", "L1.W", "L1.b"]] * 3 + [["x"]]
        assert steps[3].complete is False
        np.testing.assert_array_equal(steps[1].tensors["x"], np.arange(6.0).reshape(3, 2).T + 1)
        identity = parse_map({"ignore": ["X", "b1"]}, "explicit")
        assert [list(s.tensors) for s in read_trace(path, layout=identity)] == [["L1.W"]] * 3


def test_a_bad_header_map_names_the_trace(tmp_path):
    path = write(tmp_path / "t.memstate.jsonl", port_steps(), meta={"map": {"tensors": {"X": {}}}})
    with pytest.raises(MapError, match=r"t.memstate.jsonl: header meta.map: tensors.X: 'X' is not a canonical"):
        open_trace(path)


def test_without_a_map_steps_are_the_recorded_ones(tmp_path):
    steps = {0: {"x": np.ones((2, 3)), "L1.W": np.ones((3, 2))}}
    path = write(tmp_path / "c.memstate.jsonl", steps)
    with open_trace(path) as reader:
        assert reader.layout is None
        got = list(reader)
    assert list(got[0].tensors) == ["x", "L1.W"]


def test_the_cli_turns_map_mistakes_into_exit_2(tmp_path, capsys):
    path = write(tmp_path / "t.memstate.jsonl", port_steps())
    bad = tmp_path / "bad.map.toml"
    bad.write_text('ignore = ["b1"]\n[tensors."x"]\nfrom = "X"\nindex = "5, :"\n')
    for argv in (["check", str(path), "--map", str(bad)], ["show", str(path), "--map", str(bad)],
                 ["diff", str(path), str(path), "--map-b", str(bad)],
                 ["map", str(path), "--map", str(bad), "-o", str(tmp_path / "o.jsonl")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "bad.map.toml: x <- X[5, :]: step 0: index [5, :] is out of range: axis 0 of 'X' has 3 entries" \
            in err, argv
    assert main(["show", str(path), "--map", str(tmp_path / "none.toml")]) == 2
    assert "none.toml: no such map file" in capsys.readouterr().err
    assert main(["map", str(path), "-o", str(tmp_path / "o.jsonl")]) == 2
    assert "map needs --map FILE" in capsys.readouterr().err
    assert main(["map", "--suggest", str(path), "-o", str(tmp_path / "o.toml")]) == 2
    assert "needs --params FILE" in capsys.readouterr().err
    good = tmp_path / "good.map.toml"
    good.write_text(LayoutMap("columns", "in,out", (), (), "x").to_toml()
                    + '\n[tensors."x"]\nfrom = "X"\n[tensors."L1.b"]\nfrom = "b1"\n')
    out = tmp_path / "mapped.memstate"
    assert main(["convert", str(path), str(out), "--map", str(good)]) == 0
    assert [list(s.tensors) for s in read_trace(out)] == [["x", "L1.W", "L1.b"]] * 3

"""`memstate map --suggest` (memstate.check.suggest): random port layouts with meaningless names are recovered
from the numbers alone, and what cannot be matched is said."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memstate.check.suggest import fits, suggest_map
from memstate.errors import MemstateError
from memstate.formats.map import apply_map, parse_map_text
from memstate.impls import numpy_mlp as ref
from memstate.names import canonical_names


def canonical_step(rng, widths, batch, act, red, lr=0.1):
    """Every canonical tensor of one training step (float64), and the start parameters."""
    n = len(widths) - 1
    P = {}
    for i in range(1, n + 1):
        P[f"L{i}.W"] = rng.normal(size=(widths[i - 1], widths[i])) / np.sqrt(widths[i - 1])
        P[f"L{i}.b"] = rng.normal(scale=0.1, size=widths[i])
    t = {"x": rng.uniform(size=(batch, widths[0])), "y": np.eye(widths[-1])[rng.integers(0, widths[-1], batch)]}
    a = t["x"]
    for i in range(1, n + 1):
        t[f"L{i}.z"] = z = a @ P[f"L{i}.W"] + P[f"L{i}.b"]
        if i < n:
            t[f"L{i}.a"] = a = ref.activate(act, z)
    t["probs"] = ref.softmax(t[f"L{n}.z"])
    R = batch if red == "mean" else 1
    t["loss"] = np.asarray(-np.sum(t["y"] * np.log(t["probs"])) / R)
    dz = (t["probs"] - t["y"]) / R
    for i in range(n, 0, -1):
        if i < n:
            t[f"L{i}.da"] = da = dz @ P[f"L{i + 1}.W"].T
            z = t[f"L{i}.z"]
            dz = da * ref.activation_grad(act, z, ref.activate(act, z))
        t[f"L{i}.dz"] = dz
        t[f"L{i}.dW"] = (t["x"] if i == 1 else t[f"L{i - 1}.a"]).T @ dz
        t[f"L{i}.db"] = dz.sum(axis=0)
    for i in range(1, n + 1):
        for k in ("W", "b"):
            t[f"L{i}.{k}"] = P[f"L{i}.{k}"] - lr * t[f"L{i}.d{k}"]
    return {k: t[k] for k in canonical_names(n)}, P


def to_port(t, style, names):
    """The canonical tensors as a port of `style` would record them, under the names `names` gives."""
    batch = t["x"].shape[0]
    out = {}
    folded = style["bias"] == "folded"
    for k, v in t.items():
        kind = k.split(".")[-1]
        if folded and kind in ("b", "db"):
            continue
        if kind in ("W", "dW"):
            if folded:
                v = np.vstack([t[k.replace("W", "b")][None, :], v])
            v = v.T if style["weights"] == "out,in" else v
        elif kind in ("b", "db"):
            v = v[:, None] if style["bias"] == "column" else v
        elif k != "loss":
            if k == "x" and folded:
                v = np.hstack([np.ones((batch, 1)), v])
            if kind in ("dz", "da") and style["unscaled"]:
                v = v * batch
            v = v.T if style["batch"] == "columns" else v
        elif style["loss1"]:
            v = v.reshape(1)
        out[names[k]] = v
    return out


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_random_port_layouts_with_meaningless_names_map_back(data):
    n_layers = data.draw(st.integers(1, 3))
    widths = data.draw(st.lists(st.integers(2, 5), min_size=n_layers + 1, max_size=n_layers + 1))
    batch = data.draw(st.integers(2, 5))
    act, red = data.draw(st.sampled_from(["relu", "sigmoid"])), data.draw(st.sampled_from(["mean", "sum"]))
    style = {"batch": data.draw(st.sampled_from(["rows", "columns"])),
             "weights": data.draw(st.sampled_from(["in,out", "out,in"])),
             "bias": data.draw(st.sampled_from(["vector", "column", "folded"])),
             "unscaled": data.draw(st.booleans()), "loss1": data.draw(st.booleans())}
    t, P = canonical_step(np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))), widths, batch, act, red)
    keep = data.draw(st.lists(st.sampled_from(sorted(t)), unique=True))
    if style["bias"] == "folded":  # a folded bias is recorded with its weight, and the other way round
        pair = {".W": ".b", ".b": ".W", ".dW": ".db", ".db": ".dW"}
        keep += [k.split(".")[0] + pair["." + k.split(".")[1]] for k in keep if "." + k.split(".")[-1] in pair]
    keep = [k for k in t if k in set(keep) | {"x", "y", "L1.z"}]
    canon = {k: t[k] for k in keep}
    order = data.draw(st.permutations(range(len(canon))))
    names = {k: f"t{order[i]}" for i, k in enumerate(canon)}
    port = to_port(canon, style, names)
    s = suggest_map(port, P, activation=act if data.draw(st.booleans()) else None,
                    reduction=red, learning_rate=0.1)
    m = parse_map_text(s.layout_map().to_toml(), "suggested")  # through TOML, as the CLI writes it
    got = apply_map(m, port, layers=widths)
    expected = {k: v for k, v in canon.items() if k in got}
    matched_for_sure = {"x", "y", "L1.z"} | {k for k in canon if k.split(".")[-1] in ("W", "b")}
    assert matched_for_sure & set(canon) <= set(got), s.report()
    for k, v in expected.items():
        np.testing.assert_allclose(got[k], v, rtol=1e-9, atol=1e-12, err_msg=f"{k}\n{s.report()}")


def test_what_no_relation_or_name_confirms_is_listed_not_guessed():
    rng = np.random.default_rng(0)
    t, P = canonical_step(rng, [4, 3, 2], 5, "relu", "mean")
    port = {"inp": t["x"], "lbl": t["y"], "mystery": rng.normal(size=(5, 3)), "w1": t["L1.W"]}
    s = suggest_map(port, P)
    assert [m.name for m in s.matches] == ["x", "y", "L1.W"] and s.unmatched == ("mystery",)
    assert "= params file - 0.1 * L1.dW (learning rate fitted)" in s.matches[2].evidence
    assert "not matched (written to ignore" in s.report()
    assert "ignore = [\"mystery\"]" in s.to_toml() and "L1.z" in s.absent


def test_a_broken_probs_is_still_matched_and_downstream_stays_consistent():
    rng = np.random.default_rng(1)
    t, P = canonical_step(rng, [4, 3, 2], 5, "relu", "mean")
    wrong = np.exp(t["L2.z"] - t["L2.z"].max(axis=1, keepdims=True))
    wrong /= wrong.sum()  # the softmax-global-sum bug
    t["probs"], t["L2.dz"] = wrong, (wrong - t["y"]) / 5
    t["L2.dW"] = t["L1.a"].T @ t["L2.dz"]
    port = {"X": t["x"].T, "Y": t["y"].T, "A2": wrong.T, "dZ2": (wrong - t["y"]).T, "dW2": t["L2.dW"].T}
    s = suggest_map(port, P)
    by = {m.name: m for m in s.matches}
    assert by["probs"].view.source == "A2" and "normalised per row" in by["probs"].evidence
    assert "a wrong output function?" in by["probs"].evidence
    assert (by["L2.dz"].view.source, by["L2.dz"].scale) == ("dZ2", "1/B") and by["L2.dW"].numeric


def test_suggest_needs_a_params_file_and_something_of_x_s_width():
    with pytest.raises(MemstateError, match="no L1.W and L1.b"):
        suggest_map({"a": np.ones((2, 2))}, {"W": np.ones((2, 2))})
    with pytest.raises(MemstateError, match="no port tensor has 4 columns or rows"):
        suggest_map({"a": np.ones((2, 2))}, {"L1.W": np.ones((4, 2)), "L1.b": np.ones(2)})


def test_a_float32_port_is_matched_at_float32_rounding():
    rng = np.random.default_rng(5)
    t, P = canonical_step(rng, [30, 20, 10], 16, "relu", "mean")
    # what a float32 port computes: the same step, each tensor rounded to float32
    port = {"X": t["x"].T.astype(np.float32), "Y": t["y"].T.astype(np.float32)}
    port |= {n: t[c].T.astype(np.float32) for n, c in (("Z1", "L1.z"), ("A1", "L1.a"), ("Z2", "L2.z"),
                                                        ("A2", "probs"), ("dZ2", "L2.dz"), ("dW2", "L2.dW"))}
    s = suggest_map(port, P)
    assert {m.name for m in s.matches if m.numeric} == {"x", "y", "L1.z", "L1.a", "L2.z", "probs", "L2.dz", "L2.dW"}
    assert (s.batch, s.weights) == ("columns", "out,in") and not s.unmatched


def test_fits_is_the_map_reshape_rule():
    assert fits((3, 1), (3,)) and fits((1,), ()) and fits((1, 4), (4,)) and not fits((2, 3), (3, 2))

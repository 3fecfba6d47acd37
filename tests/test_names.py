"""The canonical record names and their dataflow order (docs/format.md, section 4)."""

import pytest

from memstate.names import backward_names, canonical_names, forward_names, param_names


def test_two_layer_names_exactly():
    assert canonical_names(2) == (
        "x y L1.z L1.a L2.z probs loss L2.dz L2.dW L2.db L1.da L1.dz L1.dW L1.db L1.W L1.b L2.W L2.b".split()
    )


def test_one_layer_has_no_activation_or_da():
    assert canonical_names(1) == "x y L1.z probs loss L1.dz L1.dW L1.db L1.W L1.b".split()


def test_three_layers():
    assert forward_names(3) == "x y L1.z L1.a L2.z L2.a L3.z probs loss".split()
    assert backward_names(3) == (
        "L3.dz L3.dW L3.db L2.da L2.dz L2.dW L2.db L1.da L1.dz L1.dW L1.db".split()
    )
    assert canonical_names(3)[-6:] == param_names(3)


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_names_are_unique_and_counted(n):
    names = canonical_names(n)
    assert len(set(names)) == len(names)
    # x, y, probs, loss; z per layer, a per hidden layer; dz, dW, db per layer, da per hidden layer; W, b per layer
    assert len(names) == 4 + n + (n - 1) + 3 * n + (n - 1) + 2 * n


def test_param_names():
    assert param_names(2) == ["L1.W", "L1.b", "L2.W", "L2.b"]


@pytest.mark.parametrize("bad", [0, -1, 1.0, True, "2"])
def test_bad_layer_count(bad):
    with pytest.raises(ValueError, match="n_layers"):
        canonical_names(bad)

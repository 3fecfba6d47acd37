"""Canonical record names of an MLP training step, in dataflow order (docs/format.md, "Canonical names")."""

from __future__ import annotations


def _check(n_layers: int) -> None:
    if type(n_layers) is not int or n_layers < 1:
        raise ValueError(f"n_layers must be a positive integer, got {n_layers!r}")


def param_names(n_layers: int) -> list[str]:
    """Parameter names in file order: L1.W, L1.b, L2.W, L2.b, ..."""
    _check(n_layers)
    return [f"L{i}.{p}" for i in range(1, n_layers + 1) for p in ("W", "b")]


def forward_names(n_layers: int) -> list[str]:
    """x, y, then L{i}.z (and L{i}.a for hidden layers), then probs and loss."""
    _check(n_layers)
    names = ["x", "y"]
    for i in range(1, n_layers + 1):
        names.append(f"L{i}.z")
        if i < n_layers:
            names.append(f"L{i}.a")
    return names + ["probs", "loss"]


def backward_names(n_layers: int) -> list[str]:
    """From the output layer down: L{n}.dz, L{n}.dW, L{n}.db, L{n-1}.da, L{n-1}.dz, ... L1.db."""
    _check(n_layers)
    names: list[str] = []
    for i in range(n_layers, 0, -1):
        if i < n_layers:
            names.append(f"L{i}.da")
        names += [f"L{i}.dz", f"L{i}.dW", f"L{i}.db"]
    return names


def canonical_names(n_layers: int) -> list[str]:
    """Every canonical record of one training step: forward, backward, then the updated parameters."""
    return forward_names(n_layers) + backward_names(n_layers) + param_names(n_layers)

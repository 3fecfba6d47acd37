"""Every implementation re-derives the independent conformance trace (tests/conformance/small.*: a float64
196-32-10 network, batch 8, lr 0.1, mean loss, two SGD steps) from its x, y and parameters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from impl_availability import require
from impl_helpers import disagreement, record_steps
from memstate.formats.params import read_params
from memstate.formats.trace import read_trace
from memstate.names import canonical_names
from memstate.runner.scenario import NetSpec

CONFORMANCE = Path(__file__).resolve().parents[1] / "conformance"
TOL = 1e-12  # the writer's float64 maths agrees with a correct implementation to ~1e-15 (its README)


@pytest.mark.parametrize("impl", ["numpy", "python", "jax", "scalar"])
def test_reproduces_the_independent_conformance_trace(impl):
    require(impl)
    params = read_params(CONFORMANCE / "small.params.json").tensors
    steps = read_trace(CONFORMANCE / "small.memstate.jsonl")
    assert [s.index for s in steps] == [0, 1] and steps[0].names() == canonical_names(2)
    batches = [(s.tensors["x"], np.argmax(s.tensors["y"], axis=1)) for s in steps]
    ours = record_steps(impl, NetSpec((196, 32, 10), "relu", "mean", "float64"), params, batches)
    assert len(ours) == 2
    for k, (mine, ref) in enumerate(zip(ours, steps, strict=True)):
        assert list(mine) == ref.names(), f"step {k}: record names or order differ"
        for name, value in ref.tensors.items():
            err = disagreement(mine[name], value)
            assert err <= TOL, f"{impl} step {k} {name}: {err:.3g}"

"""Helpers shared by the tests of the implementations: real batches, recorded steps, disagreement."""

from __future__ import annotations

import numpy as np

from memstate.runner.registry import get_impl
from memstate.runner.harness import prepare_data
from memstate.runner.scenario import load_scenario


def real_batches(steps=3, size=8):
    data = prepare_data(load_scenario("mnist14-relu").data)
    return [(data.train_x[i * size:(i + 1) * size], data.train_y[i * size:(i + 1) * size]) for i in range(steps)]


def record_steps(impl, spec, params, batches, lr=0.1):
    net = get_impl(impl).make(spec, params)
    steps = []
    for x, labels in batches:
        rec: dict[str, np.ndarray] = {}
        net.train_step(x, labels, lr, lambda name, value: rec.__setitem__(name, np.array(value, dtype=np.float64)))
        steps.append(rec)
    return steps


def disagreement(a, b):
    """max |a - b| / max(1, max |b|) over the finite entries; nan and inf must sit in the same places."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape
    assert np.array_equal(np.isnan(a), np.isnan(b)), "nan in different places"
    inf = np.isinf(a) | np.isinf(b)
    assert np.array_equal(a[inf], b[inf]), "inf in different places"
    fin = np.isfinite(b)
    if not fin.any():
        return 0.0
    return float(np.max(np.abs(a[fin] - b[fin])) / max(1.0, np.max(np.abs(b[fin]))))

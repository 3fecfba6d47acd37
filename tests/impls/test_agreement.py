"""Every pair of implementations agrees on every recorded tensor of the small scenario, in float64.

Tolerance from rounding analysis: each recorded tensor is at most a few dot products deep per step; a
196-term float64 dot product has a worst-case error of 196 * 2**-53 ~ 2e-14 of the sum of |terms|, and the
errors of independent summation orders grow like a random walk (~sqrt(n) eps ~ 2e-15 typical). Over a few
steps the measured worst case is ~7e-16 of the tensor's scale; 1e-12 leaves room and is still four orders
below the smallest variant effect (log(p + 1e-8): ~1e-8).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from impl_availability import require, usable
from memstate.runner.initparams import init_params
from memstate.runner.registry import get_impl
from memstate.runner.harness import prepare_data
from memstate.runner.scenario import iter_batches, load_scenario

STEPS = 3
REL_TOL = 1e-12


def record_run(name: str, steps: int = STEPS) -> list[dict[str, np.ndarray]]:
    scenario = load_scenario("mnist14-relu")
    impl = get_impl(name)
    net = impl.make(scenario.net_spec(), init_params(scenario.model.layers, "he", 0))
    data = prepare_data(scenario.data)
    out = []
    for batch in iter_batches(scenario, len(data.train_y), steps):
        rec: dict[str, np.ndarray] = {}
        net.train_step(data.train_x[batch.indices], data.train_y[batch.indices], 0.1,
                       lambda n, v: rec.__setitem__(n, np.asarray(v, dtype=np.float64)))
        out.append(rec)
    return out


@pytest.fixture(scope="module")
def runs():
    return {name: record_run(name) for name in usable()}  # a port that fails to load fails every pair


def test_all_four_implementations_are_available():
    assert {"numpy", "python", "scalar"} <= set(usable())


@pytest.mark.parametrize("pair", list(itertools.combinations(["numpy", "python", "jax", "scalar"], 2)),
                         ids="-".join)
def test_pair_agrees_on_every_tensor(runs, pair):
    a_name, b_name = pair
    for name in pair:
        require(name)  # skips only jax without the jax package
    worst = 0.0
    for k, (a, b) in enumerate(zip(runs[a_name], runs[b_name], strict=True)):
        assert list(a) == list(b), f"step {k}: record names or order differ"
        for name in a:
            scale = max(float(np.max(np.abs(a[name]))), 1e-300)
            rel = float(np.max(np.abs(a[name] - b[name]))) / scale
            assert rel <= REL_TOL, f"step {k} {name}: {a_name} vs {b_name} differ by {rel:.3g} of the tensor's scale"
            worst = max(worst, rel)
    assert worst < REL_TOL

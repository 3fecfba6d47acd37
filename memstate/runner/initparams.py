"""Initial parameters for a scenario's network: he, xavier, uniform(-1,1), uniform(0,1) or zeros.

Drawn once in float64 from a seeded generator, then cast to the scenario's dtype, so that every
implementation starts from the same params file.
"""

from __future__ import annotations

import numpy as np

from memstate.names import param_names
from memstate.runner.scenario import Scenario


def init_params(layers: tuple[int, ...] | list[int], init: str, seed: int, dtype: str = "float64") -> dict[str, np.ndarray]:
    """Parameters `L{i}.W` [fan_in, fan_out] and `L{i}.b` [fan_out] for the given layer sizes."""
    rng = np.random.default_rng(seed)
    params: dict[str, np.ndarray] = {}
    for i, (fan_in, fan_out) in enumerate(zip(layers[:-1], layers[1:]), start=1):
        if init == "he":
            W = rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)
            b = np.zeros(fan_out)
        elif init == "xavier":
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            W = rng.uniform(-limit, limit, (fan_in, fan_out))
            b = np.zeros(fan_out)
        elif init == "uniform(-1,1)":
            W = rng.uniform(-1.0, 1.0, (fan_in, fan_out))
            b = rng.uniform(-1.0, 1.0, fan_out)
        elif init == "uniform(0,1)":
            W = rng.uniform(0.0, 1.0, (fan_in, fan_out))
            b = rng.uniform(0.0, 1.0, fan_out)
        elif init == "zeros":
            W = np.zeros((fan_in, fan_out))
            b = np.zeros(fan_out)
        else:
            raise ValueError(f"unknown init {init!r}")
        params[f"L{i}.W"] = W.astype(dtype)
        params[f"L{i}.b"] = b.astype(dtype)
    assert list(params) == param_names(len(layers) - 1)
    return params


def scenario_params(scenario: Scenario) -> dict[str, np.ndarray]:
    """The initial parameters a scenario asks for."""
    m = scenario.model
    return init_params(m.layers, m.init, m.init_seed, scenario.dtype)

"""One training step of an implementation on a scenario, recording nothing: the unit both benchmarks time
(bench_impls: steps per second; bench_compare: the floor that `check`'s cost per step is compared with)."""

from __future__ import annotations

from typing import Callable

from memstate.runner.harness import prepare_data
from memstate.runner.initparams import scenario_params
from memstate.runner.registry import get_impl
from memstate.runner.scenario import iter_batches


def step_function(impl_name: str, scenario) -> Callable[[], None]:
    """A function that trains `impl_name`'s net on the scenario's next batch (the recorder keeps nothing)."""
    net = get_impl(impl_name).make(scenario.net_spec(), scenario_params(scenario))
    data = prepare_data(scenario.data)
    batches = iter_batches(scenario, len(data.train_y), 100_000)
    lr, keep_nothing = scenario.training.learning_rate, (lambda name, value: None)

    def one() -> None:
        b = next(batches)
        net.train_step(data.train_x[b.indices], data.train_y[b.indices], lr, keep_nothing)

    return one

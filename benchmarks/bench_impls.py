"""Steps per second of every implementation on each scenario, as ratios to the NumPy implementation.

Baseline: `numpy` on the same scenario, measured in the same run. Recording goes to a callback that
keeps nothing, so this measures the maths, not the trace writer; the first step (jit compilation for
jax) is excluded and reported apart. Usage: python benchmarks/bench_impls.py [--seconds S]
"""

from __future__ import annotations

import argparse
import time

from memstate.runner.registry import available, get_impl
from memstate.runner.scenario import load_scenario
from training_step import step_function

SCENARIOS = ("mnist14-relu", "mnist14-relu-f32", "mnist784-100-10")
SLOW = {"scalar": {"mnist784-100-10"}}  # too slow to be useful there: 784x100 Values per sample


def steps_per_second(impl_name: str, scenario_name: str, budget: float) -> tuple[float, float, int]:
    one = step_function(impl_name, load_scenario(scenario_name))
    began = time.perf_counter()
    one()
    first = time.perf_counter() - began
    began, n = time.perf_counter(), 0
    while n < 3 or time.perf_counter() - began < budget:
        one()
        n += 1
    return n / (time.perf_counter() - began), first, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="time budget per measurement")
    args = parser.parse_args()
    names = []
    for name in available():
        try:
            names.append(get_impl(name).name)
        except Exception as exc:  # an extra that is not installed
            print(f"skipping {name}: {exc}")
    print(f"{'scenario':<18} {'impl':<7} {'steps/s':>10} {'x numpy':>9} {'first step':>11} {'steps':>6}")
    for scenario_name in SCENARIOS:
        dtype = load_scenario(scenario_name).dtype
        baseline = None
        for name in names:
            if dtype not in get_impl(name).dtypes or scenario_name in SLOW.get(name, ()):
                print(f"{scenario_name:<18} {name:<7} {'-':>10}")
                continue
            rate, first, n = steps_per_second(name, scenario_name, args.seconds)
            baseline = rate if name == "numpy" else baseline
            ratio = f"{rate / baseline:8.3f}x" if baseline else "-"
            print(f"{scenario_name:<18} {name:<7} {rate:10.1f} {ratio:>9} {first * 1000:9.1f}ms {n:6d}")


if __name__ == "__main__":
    main()

"""Worst disagreement between every pair of implementations over the first 20 steps of a scenario (float64).

Prints, per pair, max over steps and tensors of max|a - b| / max|a| (a = the first of the pair), and the
tensor where it happens. The README quotes this. Usage: python benchmarks/agreement.py [SCENARIO] [--steps N]
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np

from memstate.runner.initparams import scenario_params
from memstate.runner.registry import available, get_impl
from memstate.runner.harness import prepare_data
from memstate.runner.scenario import iter_batches, load_scenario


def record(impl_name: str, scenario_name: str, steps: int) -> list[dict[str, np.ndarray]]:
    scenario = load_scenario(scenario_name)
    net = get_impl(impl_name).make(scenario.net_spec(), scenario_params(scenario))
    data = prepare_data(scenario.data)
    out = []
    for b in iter_batches(scenario, len(data.train_y), steps):
        rec: dict[str, np.ndarray] = {}
        net.train_step(data.train_x[b.indices], data.train_y[b.indices], scenario.training.learning_rate,
                       lambda n, v: rec.__setitem__(n, np.asarray(v, dtype=np.float64)))
        out.append(rec)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", nargs="?", default="mnist14-relu")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    runs = {}
    for name in available():
        try:
            get_impl(name)
        except Exception as exc:
            print(f"skipping {name}: {exc}")
            continue
        runs[name] = record(name, args.scenario, args.steps)
    for a, b in itertools.combinations(runs, 2):
        worst, where = 0.0, ""
        for k, (ra, rb) in enumerate(zip(runs[a], runs[b])):
            for name in ra:
                scale = max(float(np.max(np.abs(ra[name]))), 1e-300)
                rel = float(np.max(np.abs(ra[name] - rb[name]))) / scale
                if rel > worst:
                    worst, where = rel, f"step {k} {name}"
        print(f"{a:>7} vs {b:<7} worst {worst:.2e}  ({where})")


if __name__ == "__main__":
    main()

"""Benchmark: `memstate bisect` against the baseline "full recording + linear diff", measured in one run.

Baseline: record every tensor of every step of both runs (binary traces), then compare them with the
comparator (memstate.comparator.compare), which streams every step. Bisect: checkpoint runs of both sides, the
search, and full recording of the replayed intervals only (plus lockstep with --lockstep).

    .venv/bin/python benchmarks/bench_bisect.py                 # story-global-max, 2,000 steps
    .venv/bin/python benchmarks/bench_bisect.py --steps 3000 --checkpoint-every 25
    .venv/bin/python benchmarks/bench_bisect.py --scenario mnist14-relu --b-scenario mnist14-relu-f32

Prints steps recorded in full, wall time, disk used and the ratios bisect / baseline. Timings are wall
clock on whatever else the machine is doing: run it on a quiet machine and compare ratios, not seconds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from memstate.bisect.search import RunSpec, bisect  # noqa: E402
from memstate.comparator.compare import compare  # noqa: E402
from memstate.runner.harness import run  # noqa: E402
from memstate.runner.scenario import load_scenario  # noqa: E402
from memstate.runner.variants import Variant  # noqa: E402


def disk(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def sides(args: argparse.Namespace) -> tuple[RunSpec, RunSpec]:
    sa = load_scenario(args.scenario)
    sb = load_scenario(args.b_scenario) if args.b_scenario else sa
    va = Variant() if not args.b_scenario and not sa.variant.is_clean else sa.variant  # as `memstate bisect` does
    return RunSpec(sa, args.impl, va, label="a"), RunSpec(sb, args.impl, sb.variant, label="b")


def baseline(a: RunSpec, b: RunSpec, steps: int, work: Path) -> dict:
    t0 = time.perf_counter()
    paths = []
    for spec, name in ((a, "a"), (b, "b")):
        path = work / f"full-{name}.memstate"
        run(spec.scenario, spec.impl, variant=spec.the_variant, steps=steps, out=path, evaluate=False)
        paths.append(path)
    t_record = time.perf_counter() - t0
    t1 = time.perf_counter()
    c = compare(paths[0], paths[1])
    t_diff = time.perf_counter() - t1
    f = c.first_divergence
    return {"record": t_record, "diff": t_diff, "total": t_record + t_diff, "steps": steps,
            "bytes": sum(disk(p) for p in paths), "first": (f.step, f.name) if f else None,
            "codes": [d.code for d in c.diagnoses][:2]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="story-global-max")
    parser.add_argument("--b-scenario", help="side B's scenario (default: the same, with its [variant]; A correct)")
    parser.add_argument("--impl", default="numpy")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--checkpoint-every", type=int, help="default: steps/40")
    args = parser.parse_args()
    if args.steps < 2000:
        print("note: the benchmark is meant for runs of at least 2,000 steps", file=sys.stderr)
    a, b = sides(args)
    work = Path(tempfile.mkdtemp(prefix="bench-bisect-"))
    try:
        print(f"A: {a.describe()}\nB: {b.describe()}\n{args.steps} steps, machine: {os.cpu_count()} cpus\n")
        base = baseline(a, b, args.steps, work / "base")
        results = {}
        for lockstep in (False, True):
            keep = work / f"bisect-{int(lockstep)}"
            t0 = time.perf_counter()
            r = bisect(a, b, steps=args.steps, checkpoint_every=args.checkpoint_every, lockstep=lockstep,
                       workdir=keep)
            wall = time.perf_counter() - t0
            results[lockstep] = (r, wall, disk(keep))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print("baseline \"full recording + linear diff\":")
    print(f"  recorded in full   {base['steps']} steps per side")
    print(f"  wall               {base['total']:.2f}s  (record {base['record']:.2f}s, diff {base['diff']:.2f}s)")
    print(f"  disk               {base['bytes'] / 1e6:.1f} MB")
    print(f"  first divergence   {base['first']}  {', '.join(base['codes'])}")
    for lockstep, (r, wall, size) in results.items():
        name = "bisect --lockstep" if lockstep else "bisect"
        lock = f" (+{r.lockstep_steps} lockstep, in memory)" if lockstep else ""
        head = r.headline
        print(f"\n{name}:  verdict {r.verdict}" + (f" ({r.diagnosis})" if r.diagnosis else "")
              + (f", step {head.step} {head.tensor}" if head else ""))
        print(f"  recorded in full   {r.steps_replayed} steps per side{lock}  "
              f"= {r.steps_replayed / base['steps']:.3f} of the baseline")
        parts = ", ".join(f"{k} {v:.2f}s" for k, v in r.seconds.items() if k != "total")
        print(f"  wall               {wall:.2f}s  = {wall / base['total']:.3f} of the baseline "
              f"({base['total'] / wall:.1f}x faster)  [{parts}]")
        print(f"  disk               {size / 1e6:.1f} MB (checkpoint runs + replays) "
              f"= {size / base['bytes']:.3f} of the baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())

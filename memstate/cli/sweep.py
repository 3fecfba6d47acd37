"""`memstate sweep`: run a scenario over a grid of settings in parallel and write a table and a page of curves."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from memstate.errors import MemstateError

SWEEP_EPILOG = """\
what it does: expands the --set values into a grid (every combination; the first --set varies slowest),
  builds one scenario per grid point from SCENARIO's own file (so a bad key or value is reported as in
  the file), runs each with every implementation of --impls in parallel processes, and writes to DIR:
    sweep.txt    the table: steps trained, the stopping rule that fired and where, final losses and
                 accuracies (the last evaluation: docs/training.md)
    sweep.json   the same with every run's evaluations and loss curve
    sweep.html   one page: the table, loss and accuracy curves of every run, final accuracies
  The files hold no timings: the same sweep gives identical files.
values: TOML values (8, 0.05, [784,100,10], true) or bare words (he, uniform(0,1)); commas inside
  brackets and parentheses do not split.
exit status: 0 every run finished, 2 usage or input error.
examples:
  memstate sweep sweep-batch-size --set training.batch_size=8,32,64 -o out/batch
  memstate sweep sweep-architecture --set model.layers=[784,100,10],[784,800,800,10] -o out/arch
  memstate sweep sweep-init --set model.init=he,xavier,uniform(0,1) --impls numpy,python -o out/init
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run a scenario over a grid of settings: a table and curves of every run",
                       description="Run a scenario over a grid of settings (and implementations) in parallel "
                       "processes, and write a table (text and JSON) and an HTML page of curves and final "
                       "accuracies. See docs/training.md.",
                       epilog=SWEEP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", help="a bundled scenario's name or a .toml file")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a scenario key and the values to try, e.g. training.batch_size=8,32,64 (repeatable; "
                   "default: the scenario's [sweep] set)")
    p.add_argument("--impls", default="numpy", metavar="LIST", help="comma-separated implementations (default numpy)")
    p.add_argument("--jobs", type=int, metavar="N", help="processes to run at once (default: the CPUs)")
    p.add_argument("--steps", type=int, help="train at most this many steps instead of the scenario's count")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="DIR", help="directory for the reports")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    from memstate.report.sweep import render_html, render_json, render_text
    from memstate.runner.sweep import parse_set, plan, run_sweep

    if args.jobs is not None and args.jobs < 1:
        raise MemstateError(f"--jobs {args.jobs}: give at least 1")
    if args.steps is not None and args.steps < 1:
        raise MemstateError(f"--steps {args.steps}: give at least 1")
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    if not impls:
        raise MemstateError("--impls: name at least one implementation, e.g. --impls numpy")
    from memstate.runner.scenario import load_scenario

    sets = args.sets or list(load_scenario(args.scenario).sweep)
    axes = [parse_set(text) for text in sets]
    jobs = plan(args.scenario, axes, impls, args.steps)
    try:
        args.output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MemstateError(f"{args.output}: cannot create the output directory: {exc.strerror}") from None

    def done(r, n: int, total: int) -> None:
        if not args.quiet:
            stop = f", stopped by {r.stop[1]} after step {r.stop[0]}" if r.stop else ""
            print(f"[{n}/{total}] {r.impl} {r.label}: {r.steps} steps{stop} ({r.seconds:.1f}s)",
                  file=sys.stderr, flush=True)

    began = time.perf_counter()
    sweep = run_sweep(jobs, axes, processes=args.jobs, done=done)
    text = render_text(sweep)
    for name, content in (("sweep.txt", text), ("sweep.json", render_json(sweep)),
                          ("sweep.html", render_html(sweep))):
        try:
            (args.output / name).write_text(content, encoding="utf-8")
        except OSError as exc:
            raise MemstateError(f"{args.output / name}: cannot write: {exc.strerror}") from None
    sys.stdout.write(text)
    print(f"{len(sweep.runs)} runs in {time.perf_counter() - began:.1f}s; wrote {args.output}/sweep.txt, "
          "sweep.json, sweep.html")
    return 0

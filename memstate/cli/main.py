"""The `memstate` command: a thin shell; each subcommand parses, calls one library function, renders, exits.

Exit status (EXIT_CODES): 0 success (or traces agree), 1 traces diverge or a check fails, 2 usage or input
error, 3 an internal error (a bug in memstate), 130 interrupted. `main` is the one place that turns
exceptions into statuses, so no exception reaches the user as a traceback unless --debug asks for it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

from memstate import __version__
from memstate.cli.maps import add_map_option, load_map
from memstate.errors import MemstateError

EPILOG = """\
the workflow:
  memstate init-params mnist14-relu -o start.params.json     # dump parameters once
  # your port loads start.params.json and records port.memstate.jsonl (docs/format.md)
  memstate check port.memstate.jsonl --params start.params.json   # one port: first wrong operation
  memstate run mnist14-relu --impl numpy --params start.params.json -o numpy.memstate.jsonl
  memstate diff numpy.memstate.jsonl port.memstate.jsonl     # two runs: where do they part, and why?
  memstate run mnist14-relu --impl 'cmd:node port.js {params} {batches} {trace}' -o port.memstate.jsonl
                                                             # or let memstate drive the port (docs/ports.md)
  memstate map --suggest port.jsonl --params start.params.json -o port.map.toml   # a port in its own layout
  memstate bisect story-global-max --lockstep                # long runs: replay only what matters

formats: docs/format.md   ports: docs/ports.md   scenarios: memstate scenarios   implementations: memstate impls

exit codes (every command):
  0    success: the traces agree, the check is clean
  1    a finding: the traces diverge, a check fails
  2    bad input or usage: a missing or malformed file, a bad option, a trace another run is writing
  3    internal error: a bug in memstate; rerun with --debug (or MEMSTATE_DEBUG=1) for the traceback
  130  interrupted (Ctrl-C)     141  the output pipe was closed (e.g. `| head`)
"""

EXIT_CODES = {"ok": 0, "finding": 1, "input": 2, "internal": 3, "interrupted": 130, "broken_pipe": 141}
REPORT_TO = "the memstate issue tracker"


class ProgressPrinter:
    """Prints step, loss and test accuracy to stderr at most every `interval` seconds (and at the end)."""

    def __init__(self, label: str, interval: float = 1.0, stream=None):
        self.label, self.interval, self.stream = label, interval, stream
        self.last = 0.0
        self.accuracy: float | None = None

    def __call__(self, p) -> None:
        if p.test_accuracy is not None:
            self.accuracy = p.test_accuracy
        now = time.monotonic()
        if p.step == p.total or p.test_accuracy is not None or now - self.last >= self.interval:
            self.last = now
            acc = f"  test acc {self.accuracy:6.2%}" if self.accuracy is not None else ""
            print(f"{self.label}: step {p.step:>6}/{p.total}  loss {p.loss:.6g}{acc}",
                  file=self.stream or sys.stderr, flush=True)


# ---------------------------------------------------------------- subcommands

def cmd_run(args: argparse.Namespace) -> int:
    from memstate.formats.params import read_params
    from memstate.runner.harness import run
    from memstate.runner.scenario import load_scenario

    scenario = load_scenario(args.scenario)
    variant = scenario.variant.with_overrides(args.variant) if args.variant else scenario.variant
    params = read_params(args.params).tensors if args.params else None
    progress = None if args.quiet else ProgressPrinter(f"{args.impl}/{scenario.name}")
    result = run(
        scenario, args.impl, params=params, params_source=str(args.params or "init"), steps=args.steps,
        out=args.output, variant=variant, encoding=args.encoding, evaluate=not args.no_eval, progress=progress,
        checkpoint_every=args.checkpoint_every, impl_timeout=args.impl_timeout,
    )
    rate = result.steps / result.seconds if result.seconds > 0 else float("inf")
    acc = f", test accuracy {result.final_test_accuracy:.2%}" if result.final_test_accuracy is not None else ""
    if result.meta.get("loss_recorded") is False:
        acc += " (the port records no loss)"
    where = f" -> {result.trace}" if result.trace else ""
    print(f"{result.impl} on {result.scenario}: {result.steps} steps in {result.seconds:.2f}s "
          f"({rate:.1f} steps/s), final loss {result.losses[-1]:.6g}{acc}{where}")
    if result.stop is not None:
        print(f"stopped after step {result.stop.step} (epoch {result.stop.epoch}), rule "
              f"{result.stop.describe(scenario.training.stop)}")
    return 0


def cmd_init_params(args: argparse.Namespace) -> int:
    from memstate.runner.initparams import scenario_params
    from memstate.formats.params import write_params
    from memstate.runner.scenario import load_scenario

    scenario = load_scenario(args.scenario)
    params = scenario_params(scenario)
    m = scenario.model
    write_params(args.output, params, meta={"scenario": scenario.name, "init": m.init, "init_seed": m.init_seed,
                                            "layers": list(m.layers)}, b64=args.b64)
    sizes = ", ".join(f"{k} {list(v.shape)}" for k, v in params.items())
    print(f"wrote {args.output}: {sizes} ({scenario.dtype}, {m.init} init, seed {m.init_seed})")
    return 0


def cmd_batches(args: argparse.Namespace) -> int:
    from memstate.runner.batches import scenario_batches, write_batches
    from memstate.runner.scenario import load_scenario

    scenario = load_scenario(args.scenario)
    count = write_batches(args.output, scenario.settings(), scenario_batches(scenario, args.steps, args.first_step))
    last = args.first_step + count - 1
    print(f"wrote {args.output}: steps {args.first_step}..{last} of {scenario.name} (x and one-hot y, "
          f"{scenario.dtype}; settings in the header's meta.settings)")
    return 0
def _jobs(args: argparse.Namespace) -> int:
    """--jobs N (default: the cores this process may use), checked."""
    from memstate.workers import default_jobs

    if args.jobs is None:
        return default_jobs()
    if args.jobs < 1:
        raise MemstateError(f"--jobs {args.jobs}: give a number of processes >= 1")
    return args.jobs


def add_jobs_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("-j", "--jobs", type=int, metavar="N", help=f"{what} (default: the number of cores)")


def cmd_convert(args: argparse.Namespace) -> int:
    from memstate.formats.convert import convert_trace

    steps = convert_trace(args.source, args.dest, b64=args.b64, jobs=_jobs(args), layout=load_map(args.map))
    print(f"converted {steps} steps: {args.source} -> {args.dest}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from memstate.report.summary import render, summarize

    if args.points < 1:
        raise MemstateError(f"--points {args.points}: give how many loss values to print, at least 1")
    print(render(summarize(args.trace, load_map(args.map)), points=args.points))
    return 0


def cmd_scenarios(args: argparse.Namespace) -> int:
    from memstate.runner.scenario import list_scenarios, load_scenario

    for name in list_scenarios():
        s = load_scenario(name)
        print(f"{name:<28} {s.description}")
    return 0


def cmd_impls(args: argparse.Namespace) -> int:
    from memstate.runner.registry import available, get_impl

    for name in available():
        try:
            impl = get_impl(name)
            print(f"{name:<10} dtypes: {', '.join(impl.dtypes)}")
        except MemstateError as exc:
            print(f"{name:<10} unavailable: {exc}")
    print("cmd:COMMAND  a port in any language, run as COMMAND with {params} {batches} {trace} (docs/ports.md)")
    return 0


DIFF_EPILOG = """\
tolerances (every report prints the ones it used):
  an element passes when |a-b| <= atol + rtol*max(|a|,|b|), or is within
  its ULP allowance. Defaults: float64 vs float64 rtol 1e-10, atol 1e-12;
  float32 vs float32 rtol 1e-5, atol 1e-5; float64 vs float32 float64's
  (float32 rounding is a divergence: diagnosis dtype-float32).
  --rtol X, --atol Y                 for every tensor
  --tol PATTERN=RTOL                 e.g. --tol 'L*.dW=1e-6'
  --tol PATTERN=rtol:X,atol:Y,ulps:N any of the three, e.g.
                                     --tol 'probs=rtol:1e-5,atol:1e-12'
  --tol PATTERN=float32              that dtype's defaults, e.g. --tol
                                     '*=float32' accepts float32 rounding
  --ulp PATTERN=N                    pass within N ULPs (in the lower
                                     dtype), e.g. --ulp 'loss=64'
  PATTERN is an fnmatch pattern over tensor names; for each of rtol, atol
  and ulps the last matching rule wins.
oracle:
  with --oracle C (a float64 trace), a tensor of B out of tolerance against
  A counts only if B's error to C exceeds K (--oracle-factor, 10) times A's
  error to C plus one rounding.
exit status: 0 the traces agree, 1 they diverge, 2 usage or input error, 3 a bug (see --debug).
names: a tensor only one side records is a note (one_sided in JSON), not a
  divergence; --only / --ignore PATTERNS (fnmatch, comma-separated, repeatable)
  choose the names compared. --map-a / --map-b FILE read a foreign port's trace
  through its layout map (docs/ports.md; a header meta.map applies by itself).
examples:
  memstate diff numpy.memstate.jsonl python.memstate.jsonl
  memstate diff a.memstate.jsonl b.memstate.jsonl --format json -o r.json
  memstate diff ref.memstate.jsonl port.jsonl --map-b port.map.toml --only 'L*.dW,L*.db'
  memstate diff --impls numpy,python,jax mnist14-relu --steps 20
  memstate diff --impls numpy,jax mnist14-relu --variant jax:log=raw
"""


def _diff_renderer(fmt: str, matrix: bool = False) -> Callable:
    from memstate.report import json as report_json
    from memstate.report import text as report_text

    if fmt == "text":
        return report_text.render_matrix if matrix else report_text.render
    if fmt == "json":
        return report_json.matrix_render if matrix else report_json.render
    if matrix:
        raise MemstateError("--format html reports one pair of traces; use text or json with --impls")
    try:
        from memstate.report import html as report_html
    except ModuleNotFoundError as exc:
        if exc.name != "memstate.report.html":
            raise
        raise MemstateError("html report not available (memstate.report.html is missing); "
                            "use --format text or json") from None
    return report_html.render


def _diff_emit(text: str, output: Path | None, summary: str) -> None:
    if output is None:
        sys.stdout.write(text)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise MemstateError(f"{output}: cannot write the report: {exc.strerror}; check the path") from None
    print(f"{summary}; report written to {output}")


def cmd_diff(args: argparse.Namespace) -> int:
    from memstate.comparator.tolerance import tolerances_from_specs

    tolerances = tolerances_from_specs(args.tol_rules, rtol=args.rtol, atol=args.atol,
                                       oracle_factor=args.oracle_factor)
    if args.impls:
        for option, value in (("--map-a", args.map_a), ("--map-b", args.map_b), ("--only", args.only),
                              ("--ignore", args.ignore)):
            if value:
                raise MemstateError(f"{option} applies to two existing traces, not to --impls")
        return _diff_impls(args, tolerances)
    impl_only = [o for o, v in (("--steps", args.steps), ("--variant", args.variant), ("--params", args.params),
                                ("--keep", args.keep), ("--impl-timeout", args.impl_timeout)) if v]
    if impl_only:
        raise MemstateError(f"{impl_only[0]} runs implementations: use it with --impls LIST SCENARIO")
    if len(args.inputs) != 2:
        raise MemstateError(f"diff takes two traces, A (the reference) and B; got {len(args.inputs)}. "
                            "To run implementations instead: memstate diff --impls numpy,python SCENARIO")
    if args.max_steps is not None and args.max_steps < 1:
        raise MemstateError(f"--max-steps {args.max_steps}: give a positive number of steps")
    from memstate.comparator.compare import compare, name_filter
    from memstate.formats.trace import open_trace

    render = _diff_renderer(args.format)
    a, b = args.inputs
    comparison = compare(open_trace(a, load_map(args.map_a)) if args.map_a else a,
                         open_trace(b, load_map(args.map_b)) if args.map_b else b,
                         tolerances=tolerances, oracle=args.oracle, max_steps=args.max_steps,
                         names=name_filter(args.only, args.ignore), jobs=_jobs(args),
                         detail="divergent" if args.format == "text" else "shown")  # what the report shows
    first = comparison.first_divergence
    summary = comparison.verdict + (f" at step {first.step}, {first.name or 'the whole step'}" if first else "")
    _diff_emit(render(comparison), args.output, summary)
    return 0 if comparison else 1


def _diff_impls(args: argparse.Namespace, tolerances) -> int:
    from memstate.comparator.matrix import compare_impls, variants_for
    from memstate.formats.params import read_params
    from memstate.runner.scenario import load_scenario

    if len(args.inputs) != 1:
        raise MemstateError(f"--impls takes one SCENARIO, got {len(args.inputs)} arguments: "
                            "memstate diff --impls numpy,python mnist14-relu")
    for option, value in (("--oracle", args.oracle), ("--max-steps", args.max_steps)):
        if value is not None:
            raise MemstateError(f"{option} compares existing traces; with --impls use --steps to shorten the runs")
    render = _diff_renderer(args.format, matrix=True)
    scenario = load_scenario(args.inputs[0])
    impls = [name.strip() for name in args.impls.split(",") if name.strip()]
    printers = {impl: ProgressPrinter(f"{impl}/{scenario.name}") for impl in impls}
    matrix = compare_impls(
        scenario, impls, steps=args.steps, variants=variants_for(scenario, impls, args.variant),
        params=read_params(args.params).tensors if args.params else None, keep=args.keep, tolerances=tolerances,
        progress=None if args.quiet else (lambda impl, p: printers[impl](p)), impl_timeout=args.impl_timeout,
    )
    verdict = "agree" if matrix else "diverge" if matrix.compared else "nothing to compare"
    _diff_emit(render(matrix), args.output, f"{matrix.compared} pairs compared: {verdict}")
    return 0 if matrix else 1 if matrix.compared else 2


CHECK_EPILOG = """\
what it checks (docs/check.md): every recorded tensor against its operation redone in float64 from the
  tensors it is computed from, as recorded in the same step: z from x (or the previous a) and the
  parameters in force, a from z, probs from the last z, loss from the logits and y, each gradient from
  the recorded upstream gradient, the updated parameters from the old ones and their gradients. Plus
  invariants: probs rows sum to 1, loss finite, no nan/inf from finite inputs, output dz = (probs - y)/B.
parameters in force: at step 0 the --params file (without it those checks are skipped, with a note);
  at step k the updated parameters the trace records at step k-1.
activation, loss reduction, learning rate: from --scenario, else the trace header, else inferred.
tolerances: as for diff (--rtol, --atol, --tol, --ulp), in the trace's own dtype.
partial traces: a tensor whose inputs are not recorded is checked through the operations between it and
  the nearest recorded tensors (only x, y and the updated parameters: the whole step is derived, the
  learning rate fitted). CLEAN only when every recorded tensor was verified; the report's coverage line
  says how many were, and lists the others with what would let check reach them (e.g. --params).
a foreign port's trace: --map FILE (its layout map, docs/ports.md), or a map in its header (meta.map).
exit status: 0 clean, 1 a wrong operation, a failed invariant, or a recorded tensor left unverified,
  2 usage or input error, 3 a bug (see --debug).
examples:
  memstate run mnist14-relu --params start.params.json --steps 50 -o run.memstate.jsonl
  memstate check run.memstate.jsonl --params start.params.json
  memstate check port.jsonl --map port.map.toml --params start.params.json
  memstate check mine.memstate.jsonl --params start.params.json --format html -o check.html
"""


def cmd_check(args: argparse.Namespace) -> int:
    from memstate.check.checker import check_trace
    from memstate.formats.params import read_params
    from memstate.report.check import RENDERERS, verdict
    from memstate.runner.scenario import load_scenario
    from memstate.comparator.tolerance import tolerances_from_specs

    tolerances = tolerances_from_specs(args.tol_rules, rtol=args.rtol, atol=args.atol)
    scenario = load_scenario(args.scenario) if args.scenario else None
    params = read_params(args.params).tensors if args.params else None
    result = check_trace(args.trace, params=params, tolerances=tolerances, scenario=scenario,
                         params_source=str(args.params) if args.params else None, layout=load_map(args.map),
                         jobs=_jobs(args))
    if result.steps == 0:
        raise MemstateError(f"{args.trace}: no complete step to check")
    if result.operations == 0 and result.n_failures == 0 and not result.findings:
        why = "; ".join(result.notes) or "no tensor with a canonical name"
        raise MemstateError(f"{args.trace}: no operation could be checked ({why})")
    text = RENDERERS[args.format](result)
    if args.output is None:
        sys.stdout.write(text)
    else:
        try:
            args.output.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise MemstateError(f"{args.output}: cannot write the report: {exc.strerror}; check the path") from None
        print(f"{verdict(result)}\nreport written to {args.output}")
    return 0 if result.ok else 1


def cmd_bisect(args: argparse.Namespace) -> int:
    from memstate.cli.bisect import command

    return command(args)


BISECT_EPILOG = """\
what it does:
  1. runs both sides once with checkpoints (parameters every K steps, loss every step), or reads two
     checkpoint runs; 2. finds the first checkpoint interval whose parameters (or loss) diverge beyond
  tolerance, and the first step where one side turns nan/inf; 3. replays only those intervals with
  full recording, each side from its own checkpoint, and compares them; 4. with --lockstep, replays
  them again with both sides starting every step from the same parameters: a local bug shows as a
  large one-step error, rounding drift as one-step errors at rounding level.
sides: with one SCENARIO whose [variant] holds a bug and no --variant-a/-b, A is the correct network
  and B the scenario's variant. --variant-a clean starts A from the correct network.
exit status: 0 the runs agree within tolerance, 1 they diverge (drift included), 2 usage or input error, 3 a bug.
examples:
  memstate bisect story-global-max --lockstep
  memstate bisect mnist14-relu mnist14-relu-f32 --lockstep
  memstate bisect mnist14-relu --impls numpy,numpy --variant-b softmax_max=global --steps 2000
  memstate run story-global-max --checkpoint-every 50 -o b.memstate
  memstate run story-global-max --variant softmax_max=row --checkpoint-every 50 -o a.memstate
  memstate bisect a.memstate b.memstate --lockstep --format json -o bisect.json
  memstate bisect mnist14-relu --impls "numpy,cmd:python3 port.py {params} {batches} {trace}" --lockstep
"""


# ---------------------------------------------------------------- parser

def add_tolerance_options(p: argparse.ArgumentParser) -> None:
    """--tol, --ulp, --rtol, --atol: the same tolerance options for diff, check and bisect."""
    p.add_argument("--tol", dest="tol_rules", action="append", type=lambda text: ("tol", text),
                   metavar="PATTERN=VALUE",
                   help="tolerance for matching tensors (repeatable; syntax in `memstate diff --help`)")
    p.add_argument("--ulp", dest="tol_rules", action="append", type=lambda text: ("ulp", text),
                   metavar="PATTERN=N", help="ULP allowance for matching tensors (repeatable)")
    p.add_argument("--rtol", type=float, metavar="X", help="relative tolerance for every tensor")
    p.add_argument("--atol", type=float, metavar="Y", help="absolute tolerance for every tensor")


def add_impl_timeout(p: Any) -> None:
    """--impl-timeout: how long one run of a `cmd:` port's command may take."""
    from memstate.runner.command import DEFAULT_TIMEOUT

    p.add_argument("--impl-timeout", type=float, metavar="SECONDS",
                   help=f"stop a cmd: port's command after this many seconds per run (default {DEFAULT_TIMEOUT:g})")


def add_run_parser(sub: Any) -> None:
    """`memstate run`: train one implementation on a scenario, recording its trace."""
    p = sub.add_parser("run", help="train an implementation on a scenario and record its trace",
                       description="Train one implementation on a scenario, recording every tensor of every "
                       "step to a trace (JSONL, or binary when OUTPUT ends in .memstate).",
                       epilog="example: memstate run mnist14-relu --impl numpy --steps 300 -o numpy.memstate.jsonl")
    p.add_argument("scenario", help="a bundled scenario's name (see `memstate scenarios`) or a .toml file")
    p.add_argument("--impl", default="numpy", help="implementation (see `memstate impls`; default numpy), or "
                   "'cmd:COMMAND {params} {batches} {trace}' for a port in any language (docs/ports.md)")
    add_impl_timeout(p)
    p.add_argument("--params", type=Path, help="start from this params file (default: the scenario's init)")
    p.add_argument("--steps", type=int, help="train this many steps instead of the scenario's count")
    p.add_argument("-o", "--output", type=Path, help="trace to write (*.memstate.jsonl or *.memstate/); none if omitted")
    p.add_argument("--encoding", choices=("jsonl", "binary"), help="trace encoding (default: from the file name)")
    p.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE",
                   help="switch on a bug, e.g. softmax_max=global (repeatable; see docs/variants.md)")
    p.add_argument("--no-eval", action="store_true", help="skip test-set evaluation (faster for slow implementations)")
    p.add_argument("--checkpoint-every", type=int, metavar="K",
                   help="record a checkpoint run instead: loss and batch accuracy every step, parameters at the "
                   "start, every K steps and at the end (for memstate bisect; see docs/bisect.md)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_run)


def add_init_params_parser(sub: Any) -> None:
    """`memstate init-params`: write a scenario's initial parameters."""
    p = sub.add_parser("init-params", help="write the initial parameters a scenario asks for",
                       description="Write a scenario's initial parameters to a params file that every "
                       "implementation (in any language) can load: see docs/format.md.")
    p.add_argument("scenario", help="a bundled scenario's name or a .toml file")
    p.add_argument("-o", "--output", type=Path, required=True, help="params file to write (*.params.json)")
    p.add_argument("--b64", action="store_true", help="store tensors as base64 bytes instead of decimal lists")
    p.set_defaults(func=cmd_init_params)


def add_batches_parser(sub: Any) -> None:
    """`memstate batches`: write the batches a scenario trains on, for ports."""
    p = sub.add_parser("batches", help="write the batches a scenario trains on, for porting by hand",
                       description="Write a batches file: a JSONL memstate trace whose steps record x [B, n0] and "
                       "one-hot y [B, C] exactly as the harness feeds them, under their real step numbers, and whose "
                       "header's meta.settings says how to train (layers, activation, loss_reduction, learning_rate, "
                       "dtype, batch_size). See docs/format.md and docs/ports.md.",
                       epilog="example: memstate batches mnist14-relu --steps 20 -o mnist14.batches.jsonl")
    p.add_argument("scenario", help="a bundled scenario's name or a .toml file")
    p.add_argument("--steps", type=int, metavar="K", help="write K steps (default: to the scenario's last step)")
    p.add_argument("--first-step", type=int, default=0, metavar="K0", help="start at step K0 (default 0)")
    p.add_argument("-o", "--output", type=Path, required=True, help="batches file to write (*.batches.jsonl)")
    p.set_defaults(func=cmd_batches)


def add_convert_parser(sub: Any) -> None:
    """`memstate convert`: JSONL <-> binary trace conversion."""
    p = sub.add_parser("convert", help="convert a trace between JSONL and binary, losslessly",
                       description="Convert a trace between the JSONL encoding and the binary (safetensors) "
                       "directory encoding, bit for bit. The destination's name picks the encoding.")
    p.add_argument("source", type=Path)
    p.add_argument("dest", type=Path, help="*.memstate.jsonl or *.memstate (a directory)")
    p.add_argument("--b64", action="store_true", help="JSONL output: base64 tensors instead of decimal lists")
    add_jobs_option(p, "processes that encode a binary source's steps into JSONL")
    add_map_option(p, side="the source")
    p.set_defaults(func=cmd_convert)


def add_show_parser(sub: Any) -> None:
    """`memstate show`: summarise a trace."""
    p = sub.add_parser("show", help="summarise a trace: header, tensors, loss curve",
                       description="Print a trace's header, the tensors recorded per step, and its loss curve.")
    p.add_argument("trace", type=Path)
    p.add_argument("--points", type=int, default=10, help="how many loss values to print (default 10)")
    add_map_option(p)
    p.set_defaults(func=cmd_show)


def add_diff_parser(sub: Any) -> None:
    """`memstate diff`: compare two traces, or run implementations and compare them pairwise."""
    p = sub.add_parser("diff", help="compare two traces: where do they first part ways, and why?",
                       description="Compare trace B against trace A (the reference) step by step: the first\n"
                       "divergence (step, tensor, rows, worst elements), its diagnosis, and a table\n"
                       "of errors. Or, with --impls, run implementations and compare every pair.",
                       epilog=DIFF_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="traces A and B (*.memstate.jsonl or *.memstate/); with --impls, one SCENARIO")
    p.add_argument("--oracle", type=Path, metavar="C", help="a float64 trace to judge B's errors against A's")
    p.add_argument("--oracle-factor", type=float, default=10.0, metavar="K",
                   help="with --oracle: blame B only beyond K times A's error to the oracle (default 10)")
    add_tolerance_options(p)
    add_map_option(p, "--map-a", "map_a", "trace A")
    add_map_option(p, "--map-b", "map_b", "trace B")
    p.add_argument("--only", action="append", default=[], metavar="PATTERNS",
                   help="compare only tensors matching these fnmatch patterns (comma-separated, repeatable; "
                   "e.g. 'L*.dW,L*.db')")
    p.add_argument("--ignore", action="append", default=[], metavar="PATTERNS",
                   help="do not compare tensors matching these patterns (comma-separated, repeatable)")
    p.add_argument("--max-steps", type=int, metavar="N", help="compare only the first N steps")
    p.add_argument("--format", choices=("text", "json", "html"), default="text", help="report format (default text)")
    p.add_argument("-o", "--output", type=Path, metavar="FILE", help="write the report here instead of stdout")
    add_jobs_option(p, "processes that compare ranges of steps of two binary traces")
    g = p.add_argument_group("running implementations")
    g.add_argument("--impls", metavar="LIST", help="comma-separated implementations to run and compare pairwise "
                   "(a 'cmd:COMMAND' port may be one of them; its command must not contain a comma)")
    add_impl_timeout(g)
    g.add_argument("--steps", type=int, help="train this many steps (default: the scenario's count)")
    g.add_argument("--variant", action="append", default=[], metavar="[IMPL:]KEY=VALUE",
                   help="switch on a bug in every implementation, or in IMPL only (repeatable)")
    g.add_argument("--params", type=Path, help="start every implementation from this params file")
    g.add_argument("--keep", type=Path, metavar="DIR", help="keep the traces in DIR (default: a temporary directory)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_diff)


def add_check_parser(sub: Any) -> None:
    """`memstate check`: find the first wrong operation in one trace."""
    p = sub.add_parser("check", help="find the first wrong operation in one trace, with no second run",
                       description="Recompute every recorded tensor of a trace from the tensors it depends on, "
                       "as recorded, and compare: the first operation that disagrees is where the bug is. "
                       "Infers what the trace does not say (activation, loss reduction, learning rate) and "
                       "checks invariants that need no reference.",
                       epilog=CHECK_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trace", type=Path, help="a trace (*.memstate.jsonl or *.memstate/)")
    p.add_argument("--params", type=Path, metavar="FILE", help="the params file the run started from (step 0's "
                   "parameters in force)")
    p.add_argument("--scenario", metavar="FILE", help="a scenario (.toml or bundled name) whose activation, loss "
                   "reduction and learning rate replace the trace header's")
    add_map_option(p)
    add_tolerance_options(p)
    p.add_argument("--format", choices=("text", "json", "html"), default="text", help="report format (default text)")
    p.add_argument("-o", "--output", type=Path, metavar="FILE", help="write the report here instead of stdout")
    add_jobs_option(p, "processes that check ranges of steps of a binary trace of 512 MiB or more, with the "
                    "same report (smaller traces and JSONL are checked in one process)")
    p.set_defaults(func=cmd_check)


def add_bisect_parser(sub: Any) -> None:
    """`memstate bisect`: find where two long runs part ways."""
    p = sub.add_parser("bisect", help="find where two long runs part ways, replaying only what matters",
                       description="Find the first step where two runs (implementations, variants or scenarios) "
                       "part ways without recording every step: checkpoint runs, a search over the checkpoints, "
                       "full replay of the divergent interval only, and optionally lockstep replay to tell a "
                       "local bug from rounding drift. See docs/bisect.md.",
                       epilog=BISECT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("targets", nargs="+", metavar="TARGET",
                   help="SCENARIO (both sides), SCENARIO_A SCENARIO_B, or RUN_A RUN_B: two checkpoint runs")
    p.add_argument("--impls", metavar="A,B", help="implementations of sides A and B (one name: both; default numpy);"
                   " 'cmd:COMMAND' drives a port (docs/ports.md)")
    add_impl_timeout(p)
    p.add_argument("--variant-a", action="append", default=[], metavar="KEY=VALUE",
                   help="switch on a bug in side A (repeatable; 'clean' = the correct network)")
    p.add_argument("--variant-b", action="append", default=[], metavar="KEY=VALUE",
                   help="switch on a bug in side B (repeatable; 'clean' = the correct network)")
    p.add_argument("--params", type=Path, help="start both sides from this params file (default: the scenario's init)")
    p.add_argument("--steps", type=int, help="train (or bisect) this many steps instead of the scenario's count")
    p.add_argument("--checkpoint-every", type=int, metavar="K",
                   help="keep the parameters every K steps (default: steps/40, rounded up)")
    p.add_argument("--lockstep", action="store_true",
                   help="also replay the intervals from the same parameters each step: drift or a local bug?")
    p.add_argument("--reference", choices=("a", "b", "auto"), default="auto",
                   help="whose parameters lockstep uses (default auto: the side that turns nan/inf, else A)")
    p.add_argument("--rounding-level", type=float, metavar="X",
                   help="one-step errors above X are local (default 1e-4 with a float32 side, else 1e-9)")
    add_tolerance_options(p)
    p.add_argument("--keep", type=Path, metavar="DIR",
                   help="keep the checkpoint runs and replay traces in DIR (default: a temporary directory)")
    p.add_argument("--format", choices=("text", "json"), default="text", help="report format (default text)")
    p.add_argument("-o", "--output", type=Path, metavar="FILE", help="write the report here instead of stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_bisect)


def add_scenarios_parser(sub: Any) -> None:
    """`memstate scenarios`: list the bundled scenarios."""
    p = sub.add_parser("scenarios", help="list the bundled scenarios and what each shows")
    p.set_defaults(func=cmd_scenarios)


def add_impls_parser(sub: Any) -> None:
    """`memstate impls`: list the implementations that can be run."""
    p = sub.add_parser("impls", help="list the implementations that can be run")
    p.set_defaults(func=cmd_impls)


def build_parser() -> argparse.ArgumentParser:
    """The `memstate` argument parser: global options and one subparser per command (add_<command>_parser)."""
    parser = argparse.ArgumentParser(
        prog="memstate",
        description="Record the memstate (named tensors) of every training step of a network, compare "
        "runs of different implementations, and find where and why they first part ways.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"memstate {__version__} (distribution memstate-nn)")
    parser.add_argument("--debug", action="store_true", help="on an internal error, print the traceback "
                        "(also: MEMSTATE_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    add_run_parser(sub)
    add_init_params_parser(sub)
    add_batches_parser(sub)
    add_convert_parser(sub)
    add_show_parser(sub)
    add_diff_parser(sub)
    add_check_parser(sub)
    add_bisect_parser(sub)

    from memstate.cli.sweep import add_parser as add_sweep

    add_sweep(sub)

    from memstate.cli import maps
    maps.add_parser(sub)

    add_scenarios_parser(sub)
    add_impls_parser(sub)
    for p in sub.choices.values():  # --debug also after the command name
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def _debug_from_env() -> bool:
    return os.environ.get("MEMSTATE_DEBUG", "").strip().lower() not in ("", "0", "no", "false")


def _silence_stdout() -> None:
    """After the reader of our output went away: send the rest to /dev/null, so that Python's final flush of
    stdout does not print a second BrokenPipeError."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit status (EXIT_CODES), whatever it raises."""
    command, debug = "", _debug_from_env()
    try:
        args = build_parser().parse_args(argv)
        command, debug = args.command, debug or args.debug
        func: Callable[[argparse.Namespace], int] = args.func
        return func(args)
    except MemstateError as exc:
        print(f"memstate {command}: error: {exc}", file=sys.stderr)
        return EXIT_CODES["input"]
    except KeyboardInterrupt:
        print(f"memstate {command}: interrupted", file=sys.stderr)
        return EXIT_CODES["interrupted"]
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_CODES["broken_pipe"]
    except OSError as exc:
        if exc.filename is None:
            return _internal(command, exc, debug)
        where = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
        print(f"memstate {command}: error: {where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_CODES["input"]
    except MemoryError as exc:
        print(f"memstate {command}: error: out of memory (is an input far larger than expected?)", file=sys.stderr)
        if debug:
            traceback.print_exception(exc)
        return EXIT_CODES["internal"]
    except Exception as exc:  # noqa: BLE001 - the one top-level guard: a bug is exit 3, never a bare traceback
        return _internal(command, exc, debug)


def _internal(command: str, exc: BaseException, debug: bool) -> int:
    """Exit 3: a one-line message, the traceback only when asked for, and where to report it."""
    where = f"memstate {command}" if command else "memstate"
    first = (str(exc).splitlines() or [""])[0][:200]
    how = "the traceback above" if debug else "the traceback that --debug (or MEMSTATE_DEBUG=1) prints"
    if debug:
        traceback.print_exception(exc)
    print(f"{where}: internal error: {type(exc).__name__}: {first} (a bug in memstate, not in your input: please "
          f"report it to {REPORT_TO} with the command line and {how})", file=sys.stderr)
    return EXIT_CODES["internal"]


if __name__ == "__main__":
    sys.exit(main())

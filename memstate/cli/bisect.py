"""`memstate bisect` on the command line (docs/bisect.md): memstate.cli.main calls `command` (via memstate.bisect.search).

`command` turns the arguments into two run descriptions or two checkpoint runs, runs `bisect` with
`ProgressLines` printing progress to stderr, and writes the report.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from memstate.bisect.result import BisectProgress
from memstate.errors import MemstateError
from memstate.report.bisect import render_json, render_text
from memstate.bisect.runspec import RunSpec
from memstate.runner.scenario import load_scenario
from memstate.runner.variants import Variant


def _variant(base: Variant, items: Sequence[str], flag: str) -> Variant:
    """`base` with KEY=VALUE overrides; the word `clean` (or `correct`) starts from the correct network."""
    v, rest = base, []
    for item in items:
        if item.strip() in ("clean", "correct"):
            v = Variant()
        else:
            rest.append(item)
    return v.with_overrides(rest, flag) if rest else v


class ProgressLines:
    """Prints bisect progress to a stream: every phase change, then at most one line per `interval` seconds."""

    def __init__(self, stream: Any = None, interval: float = 1.0, quiet: bool = False):
        self.stream, self.interval, self.quiet = stream, interval, quiet
        self.phase, self.last = "", 0.0

    def __call__(self, p: BisectProgress) -> None:
        import sys

        if self.quiet and p.phase != "check":  # --quiet still says when a side cannot be replayed
            return
        now = time.monotonic()
        if p.phase == self.phase and now - self.last < self.interval and not (p.total and p.done == p.total):
            return
        self.phase, self.last = p.phase, now
        count = f" {p.done}/{p.total}" if p.total else ""
        print(f"bisect {p.phase}:{count} {p.detail}".rstrip(), file=self.stream or sys.stderr, flush=True)


def command(args: Any) -> int:
    """`memstate bisect`: parse the targets, run `bisect`, write the report; returns the exit status."""
    import sys

    from memstate.bisect.search import bisect  # not at the top: memstate.bisect.search re-exports `command`
    from memstate.runner.checkpoint import is_checkpoint_run
    from memstate.comparator.tolerance import tolerances_from_specs

    targets = list(args.targets)
    if len(targets) not in (1, 2):
        raise MemstateError(f"bisect takes a SCENARIO (and optionally SCENARIO_B) or two checkpoint runs; "
                            f"got {len(targets)} arguments")
    tolerances = tolerances_from_specs(args.tol_rules, rtol=args.rtol, atol=args.atol)
    runs = [is_checkpoint_run(t) for t in targets]
    a: Any
    b: Any
    if len(targets) == 2 and all(runs):
        given = [o for o, v in (("--impls", args.impls), ("--variant-a", args.variant_a),
                                ("--variant-b", args.variant_b), ("--params", args.params)) if v]
        if given:
            raise MemstateError(f"{given[0]} describes runs to make; two checkpoint runs are replayed as their "
                                "headers say (impl, scenario, variant, initial parameters)")
        a, b = targets
    else:
        for t, is_run in zip(targets, runs):
            p = Path(t)
            if is_run or (p.exists() and p.suffix != ".toml"):
                raise MemstateError(f"{t}: give two checkpoint runs (memstate run SCENARIO --checkpoint-every K "
                                    "-o RUN.memstate) or scenarios, not a mix" if is_run else
                                    f"{t} is not a checkpoint run (its header has no \"checkpoint_every\"); record "
                                    "one with memstate run SCENARIO --checkpoint-every K -o RUN.memstate")
        from memstate.formats.params import read_params

        sa = load_scenario(targets[0])
        sb = load_scenario(targets[1]) if len(targets) == 2 else sa
        impls = [n.strip() for n in (args.impls or "numpy").split(",") if n.strip()]
        if len(impls) not in (1, 2):
            raise MemstateError(f"--impls {args.impls!r}: name one implementation (both sides) or two (A,B)")
        impl_a, impl_b = impls[0], impls[-1]
        va = _variant(sa.variant, args.variant_a, "--variant-a")
        vb = _variant(sb.variant, args.variant_b, "--variant-b")
        if len(targets) == 1 and not args.variant_a and not args.variant_b and not sa.variant.is_clean:
            va = Variant()  # the scenario's [variant] holds the bug: A is the correct network, B the scenario
        params = read_params(args.params).tensors if args.params else None
        t = args.impl_timeout
        a, b = RunSpec(sa, impl_a, va, params, "a", t), RunSpec(sb, impl_b, vb, params, "b", t)
    result = bisect(a, b, checkpoint_every=args.checkpoint_every, steps=args.steps, lockstep=args.lockstep,
                    reference=args.reference, tolerances=tolerances, rounding_level=args.rounding_level,
                    workdir=args.keep, progress=ProgressLines(quiet=args.quiet), impl_timeout=args.impl_timeout)
    text = render_json(result) if args.format == "json" else render_text(result)
    if args.output is None:
        sys.stdout.write(text)
    else:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise MemstateError(f"{args.output}: cannot write the report: {exc.strerror}") from None
        print(f"{result.verdict}: {result.summary}; report written to {args.output}")
    return result.exit_code

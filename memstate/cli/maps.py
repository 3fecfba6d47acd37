"""`memstate map`: write a foreign port's trace in canonical form, or suggest the layout map that does it.

A thin shell over memstate.formats.map (applying) and memstate.check.suggest (matching); see docs/ports.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from memstate.errors import MemstateError

MAP_EPILOG = """\
a layout map (docs/ports.md) says where a port keeps each canonical tensor:
  [layout]                  batch = "columns" | "rows", weights = "out,in" | "in,out"
  [tensors."L2.dz"]         from = "dZ2", index = "1:, :", transpose = true, scale = "1/B"
  ignore = ["h1"]           port tensors deliberately not mapped
--map FILE works on check, show and convert too; diff has --map-a and --map-b.
examples:
  memstate map port.jsonl --map port.map.toml -o port.canonical.memstate.jsonl
  memstate map --suggest port.jsonl --params start.params.json --scenario mnist14-relu -o port.map.toml
exit status: 0 done, 2 usage or input error (a map that does not fit names the entry and step).
"""


def add_map_option(p: argparse.ArgumentParser, flag: str = "--map", dest: str = "map", side: str = "") -> None:
    """A --map FILE option: the trace is read through that layout map."""
    p.add_argument(flag, dest=dest, type=Path, metavar="FILE",
                   help=f"layout map (TOML, docs/ports.md) that gives {side or 'the trace'}'s tensors their "
                   "canonical names and layout; a map in the header (meta.map) applies without it")


def load_map(path: Path | None):
    """The layout map of a --map option, or None."""
    if path is None:
        return None
    from memstate.formats.map import read_map

    return read_map(path)


def add_parser(sub) -> None:
    """Register `memstate map` on the subcommand parsers."""
    p = sub.add_parser("map", help="apply a layout map to a port's trace, or suggest one (--suggest)",
                       description="Write a foreign port's trace with canonical names and layout (--map FILE "
                       "-o OUT), or match its step-0 tensors against what the params file implies and write "
                       "the layout map that does it (--suggest --params P -o MAP).",
                       epilog=MAP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trace", type=Path, help="the port's trace (*.jsonl or a binary *.memstate/ directory)")
    add_map_option(p)
    p.add_argument("--suggest", action="store_true", help="write a map for the trace instead of applying one")
    p.add_argument("--params", type=Path, metavar="FILE", help="with --suggest: the params file the run started "
                   "from")
    p.add_argument("--scenario", metavar="S", help="with --suggest: a scenario (bundled name or .toml) giving the "
                   "activation, loss reduction and learning rate (default: found from the trace)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT",
                   help="the canonical trace to write, or with --suggest the map (TOML)")
    p.add_argument("--b64", action="store_true", help="JSONL output: base64 tensors instead of decimal lists")
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    """`memstate map`: apply --map to the trace and write it canonical, or with --suggest write a map."""
    if args.suggest:
        return _suggest(args)
    if args.map is None:
        raise MemstateError("map needs --map FILE (to apply a map) or --suggest --params P (to write one)")
    for option, value in (("--params", args.params), ("--scenario", args.scenario)):
        if value is not None:
            raise MemstateError(f"{option} is for --suggest; applying a map needs only --map FILE -o OUT")
    from memstate.formats.convert import convert_trace

    layout = load_map(args.map)
    steps = convert_trace(args.trace, args.output, b64=args.b64, layout=layout)
    print(f"mapped {steps} steps: {args.trace} through {args.map} -> {args.output}")
    return 0


def _suggest(args: argparse.Namespace) -> int:
    from memstate.check.suggest import suggest_map
    from memstate.formats.params import read_params
    from memstate.formats.trace import open_trace

    if args.params is None:
        raise MemstateError("map --suggest needs --params FILE: the params file the port started from")
    if args.map is not None:
        raise MemstateError("--map applies a map; --suggest writes one: give one of them")
    settings = _settings(args.scenario)
    params = read_params(args.params).tensors
    with open_trace(args.trace) as reader:
        first = next(iter(reader.steps(include_incomplete=False)), None)
        if first is None:
            raise MemstateError(f"{args.trace}: no complete step to match (a map is suggested from step 0's "
                                "tensors)")
        if reader.layout is not None:
            raise MemstateError(f"{args.trace}: the header already carries a layout map (meta.map)")
    suggestion = suggest_map(first.tensors, params, **settings)
    print(suggestion.report())
    try:
        args.output.write_text(suggestion.to_toml(str(args.trace)), encoding="utf-8")
    except OSError as exc:
        raise MemstateError(f"{args.output}: cannot write the map: {exc.strerror}; check the path") from None
    print(f"wrote {args.output}: {len(suggestion.matches)} tensors mapped"
          + (f", {len(suggestion.unmatched)} not matched (in ignore = [...]; check them)"
             if suggestion.unmatched else ""))
    return 0


def _settings(scenario: str | None) -> dict:
    if scenario is None:
        return {}
    from memstate.runner.scenario import load_scenario

    s = load_scenario(scenario)
    return {"activation": s.model.activation, "reduction": s.training.loss_reduction,
            "learning_rate": s.training.learning_rate}

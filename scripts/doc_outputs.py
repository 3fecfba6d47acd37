"""Regenerate (or check) the command outputs quoted in README.md and docs/*.md, so they cannot go stale.

A quoted output is the fenced block right after a marker line `<!-- output: ID -->`; RECIPES[ID] says how
to make it: shell set-up commands, the command whose output is quoted, which of its lines to keep (a gap
becomes `  ...`), and the volatile parts (numbers that legitimately vary by machine, such as the step at
which a float32 run collapses) that `--check` masks before comparing.

    python scripts/doc_outputs.py            # rewrite every quoted output in place
    python scripts/doc_outputs.py --check    # exit 1 and show the difference when a quote is stale
    python scripts/doc_outputs.py --check --fast   # only the recipes that take a few seconds (the test suite)
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^<!-- output: ([\w-]+) -->$")
INIT = "memstate init-params mnist14-relu -o start.params.json"
PORTS = ROOT / "tests" / "ports"  # the foreign-port fixtures (plain Python, no memstate) of docs/ports.md
#: docs/ports.md's example: port_folded.py's trace (bias folded into W) and the canonical reference's
PORT_FOLDED = (f"python {PORTS / 'make_batches.py'} . && cp tiny.params.json start.params.json",
               f"python {PORTS / 'port_folded.py'} start.params.json tiny.batches.jsonl port_folded.jsonl",
               f"python {PORTS / 'reference.py'} start.params.json tiny.batches.jsonl reference.memstate.jsonl")


@dataclass(frozen=True)
class Recipe:
    command: str  # run with bash in a fresh folder after `setup`; its stdout is quoted
    keep: tuple[str, ...] = ()  # regexes: the lines kept, in order (all lines when empty)
    setup: tuple[str, ...] = (INIT,)
    shown: tuple[str, ...] = ()  # the commands quoted as `$ ...` lines before the output
    volatile: tuple[str, ...] = ()  # regexes whose matches --check replaces by "#"
    slow: bool = False  # left out of --fast
    trailer: tuple[str, ...] = field(default=())  # lines quoted after the output (e.g. `$ echo $?`)


RECIPES: dict[str, Recipe] = {
    "readme-check": Recipe(
        setup=(INIT, "memstate run mnist14-relu --params start.params.json --steps 20 --variant softmax_sum=global "
                     "-o port.memstate -q"),
        command="memstate check port.memstate --params start.params.json",
        keep=(r"^FAIL at", r"^first wrong operation", r"^  computed from", r"^diagnosis:", r"^  Side B")),
    "readme-bisect": Recipe(
        setup=(), command="memstate bisect story-global-max --lockstep -q",
        keep=(r"^memstate bisect:", r"^  a local error", r"^recorded in full"),
        volatile=(r"step \d+", r"\d+ of 2000 steps", r"\d+\.\d+% of"), slow=True),
    "check-clean": Recipe(
        setup=(INIT, "memstate run mnist14-relu --params start.params.json --steps 300 -o run.memstate.jsonl -q"),
        command="memstate check run.memstate.jsonl --params start.params.json",
        shown=(INIT, "memstate run mnist14-relu --params start.params.json --steps 300 -o run.memstate.jsonl",
               "memstate check run.memstate.jsonl --params start.params.json"),
        keep=(r"^CLEAN",), trailer=("$ echo $?", "0"), slow=True),
    "check-global-max": Recipe(
        setup=(INIT, "python -c \"import memstate as m; p = m.read_params('start.params.json'); "
                     "m.write_params('big.params.json', {k: v * 40 for k, v in p.tensors.items()})\"",
               "memstate run mnist14-relu --params big.params.json --steps 20 --variant softmax_max=global "
               "-o g.memstate -q"),
        command="memstate check g.memstate --params big.params.json",
        shown=("memstate run mnist14-relu --params big.params.json --steps 20 --variant softmax_max=global -o g.memstate",
               "memstate check g.memstate --params big.params.json        # big.params.json: mnist14-relu's init x 40"),
        keep=(r"^FAIL at", r"^first wrong operation", r"^  computed from", r"^diagnosis:")),
    "bisect-story": Recipe(
        setup=(), command="memstate bisect story-global-max --lockstep -q",
        shown=("memstate bisect story-global-max --lockstep -q",),
        keep=(r"^memstate bisect:", r"^  a local error", r"^replay \d", r"^  lockstep \(", r"^  free-running",
              r"^  lockstep  ", r"^  first non-finite", r"^recorded in full"),
        volatile=(r"step \d+", r"steps \d+\.\.\d+", r"\(\d+ steps", r"\d+ of 2000 steps", r"\d+\.\d+% of",
                  r"<= [\d.e+-]+", r"\d+ more", r"checkpoint \d+", r"replay \d", r"[▁▂▃▄▅▆▇█×·]+"), slow=True),
    "ports-suggest": Recipe(
        setup=PORT_FOLDED, command="memstate map --suggest port_folded.jsonl --params start.params.json -o pf.map.toml",
        keep=(r"^layout", r"^  (x|y|L1\.a|L2\.z|probs|L2\.dW|L2\.db|L1\.W|L1\.b) +<-", r"^not ")),
    "ports-one-sided": Recipe(
        setup=PORT_FOLDED,
        command=f"memstate diff reference.memstate.jsonl port_folded.jsonl "
                f"--map-b {PORTS / 'port_folded.map.toml'} | sed -n 1,6p"),
}


def select(lines: list[str], keep: tuple[str, ...]) -> list[str]:
    """The lines matching any of `keep`, with `  ...` where lines were left out between or after them."""
    if not keep:
        return lines
    out: list[str] = []
    last = -1
    for i, line in enumerate(lines):
        if any(re.search(k, line) for k in keep):
            if (last >= 0 and i > last + 1) or (last < 0 and i > 0):
                out.append("  ...")
            out.append(line)
            last = i
    if 0 <= last < len(lines) - 1:
        out.append("  ...")
    return out


def produce(recipe: Recipe) -> list[str]:
    """Run the recipe in a fresh folder and return the lines to quote."""
    env = dict(os.environ, NO_COLOR="1", COLUMNS="80")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    with tempfile.TemporaryDirectory() as folder:
        for cmd in recipe.setup:
            subprocess.run(["bash", "-c", cmd], cwd=folder, env=env, check=True, capture_output=True, text=True)
        done = subprocess.run(["bash", "-c", recipe.command], cwd=folder, env=env, capture_output=True, text=True)
    if done.returncode not in (0, 1):
        raise SystemExit(f"doc_outputs: {recipe.command!r} exited {done.returncode}:\n{done.stderr[-2000:]}")
    lines = select(done.stdout.rstrip("\n").splitlines(), recipe.keep)
    head = [f"$ {cmd}" for cmd in recipe.shown]
    return head + lines + list(recipe.trailer)


def blocks(text: str) -> list[tuple[str, int, int]]:
    """(recipe id, first line, end line) of each quoted output in a markdown text (content lines only)."""
    lines = text.split("\n")
    found = []
    for i, line in enumerate(lines):
        m = MARKER.match(line)
        if m and i + 1 < len(lines) and lines[i + 1].startswith("```"):
            end = next(j for j in range(i + 2, len(lines)) if lines[j].startswith("```"))
            found.append((m.group(1), i + 2, end))
    return found


def mask(lines: list[str], volatile: tuple[str, ...]) -> list[str]:
    return [re.sub("|".join(volatile), "#", line) if volatile else line for line in lines]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare instead of rewriting; exit 1 if stale")
    parser.add_argument("--fast", action="store_true", help="only the recipes that take a few seconds")
    args = parser.parse_args(argv)
    stale = 0
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        lines = text.split("\n")
        for rid, start, end in reversed(blocks(text)):
            recipe = RECIPES.get(rid)
            if recipe is None:
                print(f"{path.name}: unknown output id {rid!r}; known: {', '.join(RECIPES)}", file=sys.stderr)
                return 2
            if args.fast and recipe.slow:
                continue
            fresh = produce(recipe)
            if args.check:
                old, new = mask(lines[start:end], recipe.volatile), mask(fresh, recipe.volatile)
                if old != new:
                    stale += 1
                    print(f"{path.relative_to(ROOT)}: output {rid!r} is stale:")
                    print("\n".join(difflib.unified_diff(old, new, "quoted", "now", lineterm="")))
            else:
                lines[start:end] = fresh
        if not args.check:
            path.write_text("\n".join(lines))
    if stale:
        print(f"{stale} stale output(s): run `python scripts/doc_outputs.py` and review the diff", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())

"""Mutation testing of memstate's decision code, one module at a time against its own tests (`make mutation`).

Why: line coverage says a line ran, not that a test would notice if it decided differently. mutmut changes one
operator, constant or call at a time in a module (a "mutant") and runs the tests; a mutant that no test fails
on ("survived") is a decision nobody pins. Each module listed in pyproject's [tool.memstate.mutation.modules]
is mutated alone and only its own targeted test files run against it, so the score says how well *those*
tests pin *that* module (the whole suite would hide gaps behind slow end-to-end tests) and a run stays in
minutes on two cores.

How: for each module a fresh work folder .mutation/<slug>/ gets a copy of memstate/ and tests/ and a
pyproject.toml whose [tool.mutmut] is the repository's, plus `only_mutate` (the module) and
`pytest_add_cli_args_test_selection` (its tests); `mutmut run` runs there, and the verdicts are read from
mutmut's meta file. Killed = the tests failed or timed out; everything else (survived, no test ran it,
suspicious) counts against the score. Surviving mutants are written, with their diffs, to
.mutation/survivors.txt; docs/testing.md judges the ones that are equivalent.

Usage: python scripts/mutation.py [SUBSTRING ...]   (only the modules whose path contains a SUBSTRING)
Prints `mutation score: K/N` per module and in total; exits 1 when a module is below `fail_under` percent.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".mutation"
KILLED = {"killed", "timeout", "segfault", "caught by type check"}


def toml_value(value: object) -> str:
    """A TOML literal for the str/bool/number/list values that [tool.mutmut] uses (JSON's syntax is TOML's)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)


def prepare(module: str, tests: list[str], base: dict, slug: str) -> Path:
    """A fresh work folder for one module: sources, tests and the module's mutmut configuration."""
    work = WORK / slug
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis")
    shutil.copytree(ROOT / "memstate", work / "memstate", ignore=ignore)
    shutil.copytree(ROOT / "tests", work / "tests", ignore=ignore)
    config = dict(base, only_mutate=[module], pytest_add_cli_args_test_selection=tests)
    lines = ["[tool.mutmut]"] + [f"{k} = {toml_value(v)}" for k, v in config.items()]
    (work / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return work


def verdicts(work: Path, module: str) -> dict[str, str]:
    """Mutant name -> mutmut's status, from the meta file mutmut writes beside the mutated module."""
    from mutmut.stats import status_by_exit_code  # the tool's own reading of its exit codes

    meta = json.loads((work / "mutants" / (module + ".meta")).read_text())
    return {name: status_by_exit_code[code] for name, code in meta["exit_code_by_key"].items()}


SHOW = """
import sys
from pathlib import Path
from mutmut.mutation.diff_apply import get_diff_for_mutant
for name in sys.argv[2:]:
    print(f"# {name}\\n" + get_diff_for_mutant(name, path=Path(sys.argv[1])).strip())
"""


def survivors_text(work: Path, module: str, names: list[str]) -> str:
    """The name and diff of each surviving mutant (what `mutmut show` prints, in one process for all)."""
    if not names:
        return ""
    shown = subprocess.run([sys.executable, "-c", SHOW, module, *names], cwd=work, capture_output=True, text=True)
    if shown.returncode != 0:
        return "".join(f"# {n}\n" for n in names) + f"(diffs unavailable: {shown.stderr.strip()[-300:]})\n"
    return shown.stdout


def run_module(module: str, tests: list[str], base: dict) -> tuple[int, int, list[str], Path]:
    """Mutate one module against its tests; (killed, total, survivor names, work folder)."""
    slug = module.removeprefix("memstate/").removesuffix(".py").replace("/", "-")
    work = prepare(module, tests, base, slug)
    with open(work / "run.log", "w") as log:
        rc = subprocess.run([sys.executable, "-m", "mutmut", "run"], cwd=work, stdout=log,
                            stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"mutmut failed on {module} (exit {rc}); see {work / 'run.log'}")
    found = verdicts(work, module)
    killed = sum(1 for s in found.values() if s in KILLED)
    return killed, len(found), sorted(n for n, s in found.items() if s not in KILLED), work


def main(argv: list[str]) -> int:
    """Run every selected module, print the scores, write the survivors, and judge against fail_under."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    settings = pyproject["tool"]["memstate"]["mutation"]
    base = pyproject["tool"].get("mutmut", {})
    modules: dict[str, list[str]] = settings["modules"]
    chosen = [m for m in modules if not argv or any(s in m for s in argv)]
    if not chosen:
        print(f"no module matches {argv}; modules: {', '.join(modules)}", file=sys.stderr)
        return 2
    WORK.mkdir(exist_ok=True)
    total_k = total_n = 0
    low: list[str] = []
    report = []
    for module in chosen:
        start = time.monotonic()
        k, n, surv, work = run_module(module, modules[module], base)
        pct = 100.0 * k / n if n else 100.0
        print(f"{module}: mutation score: {k}/{n} ({pct:.1f}%) in {time.monotonic() - start:.0f} s", flush=True)
        report.append(f"## {module}: {k}/{n} killed; {len(surv)} not killed\n" + survivors_text(work, module, surv))
        total_k, total_n = total_k + k, total_n + n
        if pct < settings.get("fail_under", 0):
            low.append(module)
        (work / "survivors.txt").write_text(report[-1])
    (WORK / "survivors.txt").write_text("\n".join(report))
    print(f"total: mutation score: {total_k}/{total_n} ({100.0 * total_k / max(total_n, 1):.1f}%)")
    print(f"surviving mutants and their diffs: {WORK / 'survivors.txt'}")
    if low:
        print(f"below {settings['fail_under']}% killed: {', '.join(low)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

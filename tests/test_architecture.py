"""The layers of docs/architecture.md hold: every import goes downwards (or within a layer), and no two
modules import each other, directly or round a longer circle (function-level imports included)."""

import ast
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Lower imports nothing higher. Same rank = may import each other's modules (without a circle).
RANK = {"errors": 0, "names": 0, "numfmt": 0, "blas": 0, "workers": 0, "formats": 1, "runner": 2, "impls": 2, "scenarios": 2,
        "diagnose": 3, "comparator": 4, "check": 5, "bisect": 6, "report": 7, "testing": 8, "cli": 9,
        "__init__": 10, "__main__": 10}
SOURCES = {"memstate": ROOT / "memstate", "memstate.impls": ROOT / "impls", "memstate.scenarios": ROOT / "scenarios"}


@lru_cache(maxsize=None)
def modules() -> dict[str, Path]:
    found = {}
    for prefix, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([prefix, *parts])] = path
    return found


def layer(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def imports(path: Path, known: set[str]) -> set[str]:
    """The memstate modules `path` imports, anywhere in it (a `from memstate.x import y` of a submodule y
    counts as importing memstate.x.y)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("memstate")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("memstate"):
            subs = {f"{node.module}.{a.name}" for a in node.names} & known
            out |= subs or {node.module}
    return out & known


@lru_cache(maxsize=None)
def graph() -> dict[str, set[str]]:
    mods = modules()
    edges = {m: imports(p, set(mods)) - {m} for m, p in mods.items()}
    # importing a package runs its __init__: memstate.x.y depends on memstate.x; drop those implied edges
    return {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in edges.items()}


def test_every_layer_is_ranked():
    assert {layer(m) for m in modules()} <= set(RANK)


@pytest.mark.parametrize("module", sorted(modules()))
def test_imports_go_downwards(module):
    up = sorted(t for t in graph()[module] if RANK[layer(t)] > RANK[layer(module)])
    assert not up, f"{module} ({layer(module)}) imports from a higher layer: {up}; see docs/architecture.md"


def test_no_import_circles():
    edges = graph()
    seen: dict[str, int] = {}  # 1 = on the path, 2 = done
    path: list[str] = []

    def visit(m: str) -> None:
        seen[m] = 1
        path.append(m)
        for t in sorted(edges[m]):
            if seen.get(t) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(t):] + [t]))
            if t not in seen:
                visit(t)
        path.pop()
        seen[m] = 2

    for m in sorted(edges):
        if m not in seen:
            visit(m)

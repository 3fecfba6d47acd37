"""House rule: no function or method in memstate/ or impls/ is longer than ~80 lines (classes may be).

Counted as the AST sees it (end_lineno - lineno + 1, decorators excluded, docstring included), so a
long function fails here with file:function:lines and is split into named helpers instead.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 80
PACKAGES = ("memstate", "impls")


def long_functions(source: str, filename: str, limit: int = LIMIT) -> list[str]:
    """`file:function:lines` for every (nested or method) function in `source` longer than `limit` lines."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            assert node.end_lineno is not None
            lines = node.end_lineno - node.lineno + 1
            if lines > limit:
                found.append(f"{filename}:{node.name}:{lines}")
    return found


def test_counter_flags_a_long_function_and_passes_a_short_one() -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(LIMIT))  # def line + LIMIT body lines = LIMIT + 1
    assert long_functions(f"def long():\n{body}", "m.py") == [f"m.py:long:{LIMIT + 1}"]
    short = "".join(f"    x{i} = {i}\n" for i in range(LIMIT - 1))
    assert long_functions(f"def short():\n{short}", "m.py") == []
    method = "class C:\n    def m(self):\n" + "".join(f"        x{i} = {i}\n" for i in range(LIMIT + 4))
    assert long_functions(method, "c.py") == [f"c.py:m:{LIMIT + 5}"]


@pytest.mark.parametrize("package", PACKAGES)
def test_no_function_longer_than_the_limit(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no Python files under {package}/"
    found = []
    for path in files:
        found += long_functions(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    assert not found, f"functions over {LIMIT} lines (split them into named helpers): " + ", ".join(found)

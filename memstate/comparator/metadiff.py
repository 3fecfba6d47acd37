"""Structured differences of two metadata tables (trace headers, run settings, scenario tables).

A report says `settings.learning_rate: 0.1 → 0.01`, not "the headers differ". DeepDiff does the walk;
`threshold_to_diff_deeper=0` keeps it reporting each differing key even when two tables share few keys
(deepdiff >= 8 otherwise replaces the whole table by `{...} | {...}` once under a third of its keys match).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MetaChange:
    """One difference between two metadata tables, at a dotted path (`variant.softmax_max`, `layers[1]`)."""

    path: str
    change: str  # changed, added (B only), removed (A only)
    a: Any  # None when added
    b: Any  # None when removed

    def describe(self) -> str:
        """`path: A → B`, `path: only in B: B`, or `path: only in A: A`."""
        if self.change == "added":
            return f"{self.path}: only in B: {self.b!r}"
        if self.change == "removed":
            return f"{self.path}: only in A: {self.a!r}"
        return f"{self.path}: {self.a!r} → {self.b!r}"


def same_tree(x: Any, y: Any) -> bool:
    """x and y equal leaf for leaf, of the same types (1, 1.0 and True differ; so does nan from nan, which
    makes DeepDiff, not this, decide): two tables that pass need no DeepDiff, which costs a millisecond
    even for equal tables (every diff of two copies of one run's trace asked it)."""
    if type(x) is not type(y):
        return False
    if isinstance(x, dict):
        return x.keys() == y.keys() and all(same_tree(v, y[k]) for k, v in x.items())
    if isinstance(x, (list, tuple)):
        return len(x) == len(y) and all(same_tree(v, w) for v, w in zip(x, y))
    return bool(x == y)


def meta_diff(meta_a: Mapping[str, Any], meta_b: Mapping[str, Any]) -> tuple[MetaChange, ...]:
    """Every leaf that differs between the two tables, sorted by path; empty when they are equal."""
    return () if same_tree(dict(meta_a), dict(meta_b)) else deep_changes(meta_a, meta_b)


def deep_changes(meta_a: Mapping[str, Any], meta_b: Mapping[str, Any]) -> tuple[MetaChange, ...]:
    """meta_diff by DeepDiff's walk alone (what meta_diff answers whenever `same_tree` does not settle it)."""
    from deepdiff import DeepDiff
    from deepdiff.helper import notpresent

    diff = DeepDiff(dict(meta_a), dict(meta_b), verbose_level=2, threshold_to_diff_deeper=0)
    changes = []
    for report_type, items in diff.tree.items():
        change = "added" if report_type.endswith("_added") else "removed" if report_type.endswith("_removed") \
            else "changed"
        for item in items:
            path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in item.path(output_format="list"))
            a = None if item.t1 is notpresent else item.t1
            b = None if item.t2 is notpresent else item.t2
            changes.append(MetaChange(path=path.lstrip("."), change=change, a=a, b=b))
    return tuple(sorted(changes, key=lambda c: c.path))

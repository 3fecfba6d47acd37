"""A comparison as JSON, in the schema of docs/report-schema.md (stable: scripts may rely on it).

Non-finite numbers are written as the strings "nan", "inf" and "-inf", so the output is strict JSON.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from memstate.report import training
from memstate.comparator.compare import Bucket, Comparison, FirstDivergence, StepComparison, TensorComparison, TraceInfo
from memstate.comparator.tolerance import DEFAULTS, Tolerances

if TYPE_CHECKING:
    from memstate.comparator.matrix import Matrix

SCHEMA_VERSION = 1


def jsonable(value: Any) -> Any:
    """Plain JSON values: dataclasses and mappings as objects, sequences and arrays as lists, nan/inf as strings."""
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, (np.generic, np.ndarray)):
        return jsonable(value.tolist())
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, int):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    return str(value)


def _trace(info: TraceInfo | None) -> dict | None:
    return jsonable(info) if info is not None else None


def _tensor(t: TensorComparison) -> dict:
    return {
        "name": t.name, "step": t.step, "passed": t.passed, "within_tolerance": t.within_tolerance,
        "shape_a": list(t.shape_a), "shape_b": list(t.shape_b), "dtype_a": t.dtype_a, "dtype_b": t.dtype_b,
        "tolerance": jsonable(t.tolerance), "metrics": jsonable(t.metrics),
        "min_tolerance": jsonable(t.min_tolerance), "oracle": jsonable(t.oracle),
    }


def _step(s: StepComparison) -> dict:
    worst = s.worst
    return {
        "step": s.step, "passed": s.passed, "complete_a": s.complete_a, "complete_b": s.complete_b,
        "only_a": list(s.only_a), "only_b": list(s.only_b),
        "worst_name": worst.name if worst is not None else None, "worst_rel_error": s.worst_rel_error,
        "tensors": [_tensor(t) for t in s.tensors],
    }


def _first(f: FirstDivergence | None) -> dict | None:
    if f is None:
        return None
    tensor = _tensor(f.tensor) if f.tensor is not None else {}
    where = jsonable(f.where) if f.where is not None else {}
    return {
        "kind": f.kind, "step": f.step, "name": f.name, "detail": f.detail,
        **{k: tensor.get(k) for k in ("shape_a", "shape_b", "dtype_a", "dtype_b")},
        "pattern": f.pattern, "rows": list(f.rows), "columns": list(f.columns),
        **{k: where.get(k) for k in ("n_rows", "total_rows", "n_columns", "total_columns", "n_out", "size")},
        "worst": where.get("worst", []),
        **{k: tensor.get(k) for k in ("metrics", "tolerance", "min_tolerance", "oracle")},
        "inputs": list(f.inputs), "inputs_agree": f.inputs_agree,
        "inputs_worst": {"name": f.inputs_worst[0], "max_rel_error": f.inputs_worst[1]} if f.inputs_worst else None,
        "consequences": list(f.consequences),
        "divergent_steps": f.divergent_steps, "last_divergent_step": f.last_divergent_step,
    }


def _tolerances(c: Comparison) -> dict:
    tol: Tolerances = c.tolerances
    return {
        "defaults": {k: {"rtol": d.rtol, "atol": d.atol} for k, d in DEFAULTS.items()},
        "rtol": tol.rtol, "atol": tol.atol,
        "rules": [{"pattern": r.pattern, "rtol": r.rtol, "atol": r.atol, "ulps": r.ulps, "text": r.text}
                  for r in tol.rules],
        "oracle_factor": tol.oracle_factor,
        "used": [{**jsonable(u.tolerance), "names": list(u.names)} for u in c.tolerances_used],
    }


def _buckets(buckets: tuple[Bucket, ...]) -> list:
    return [jsonable(b) for b in buckets]


def to_dict(c: Comparison) -> dict:
    """The report as JSON-ready Python values (docs/report-schema.md)."""
    return jsonable({
        "schema_version": SCHEMA_VERSION,
        "verdict": c.verdict,
        "a": _trace(c.a), "b": _trace(c.b), "oracle": _trace(c.oracle),
        "steps_compared": c.steps_compared,
        "divergent_steps": c.divergent_steps,
        "first_divergence": _first(c.first_divergence),
        "diagnoses": [jsonable(d) for d in c.diagnoses],
        "root_causes": [{"step": r.step, "name": r.name, "code": r.code, "confidence": r.confidence,
                         "count": r.count} for r in c.root_causes],
        "tolerances": _tolerances(c),
        "steps": [_step(s) for s in c.steps],
        "overview": _buckets(c.overview),
        "series": {s.name: _buckets(s.buckets) for s in c.series},
        "meta_diff": [jsonable(m) for m in c.meta_diff],
        "findings": [jsonable(f) for f in c.findings],
        "training": training.to_dict(c),
        "one_sided": [jsonable(o) for o in c.one_sided],
        "names": {"only": list(c.names.only), "ignore": list(c.names.ignore)},
    })


def matrix_to_dict(matrix: Matrix) -> dict:
    """`memstate diff --impls` as JSON-ready values: the runs, and every pair with its full comparison."""
    return jsonable({
        "schema_version": SCHEMA_VERSION,
        "scenario": matrix.scenario, "steps": matrix.steps, "impls": list(matrix.impls), "kept": matrix.kept,
        "runs": [jsonable(r) for r in matrix.runs],
        "pairs": [{"a": p.a, "b": p.b, "cell": p.cell,
                   "comparison": to_dict(p.comparison) if p.comparison is not None else None} for p in matrix.pairs],
    })


def matrix_render(matrix: Matrix, indent: int | None = 2) -> str:
    """The matrix as JSON text."""
    return dumps(matrix_to_dict(matrix), indent)


def dumps(doc: Any, indent: int | None = 2) -> str:
    """Strict JSON text (no NaN tokens) of JSON-ready values."""
    return json.dumps(jsonable(doc), indent=indent, allow_nan=False) + "\n"


def render(c: Comparison, indent: int | None = 2) -> str:
    """The report as JSON text."""
    return dumps(to_dict(c), indent)

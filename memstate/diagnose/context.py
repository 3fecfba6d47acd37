"""Say why two traces diverge: diagnose the first divergent tensor pair (docs/diagnoses.md).

The comparator finds the first tensor that differs between side A (the reference) and side B and
calls `diagnose` with a `DivergenceContext`: the pair, the tensors each side recorded before it in the
same step, and the error history of the steps compared so far. Each diagnoser in the catalogue
(memstate.diagnose.catalogue) is a small pure function `(ctx) -> Diagnosis | None` that recognises one
mistake from the numbers alone; `diagnose` runs them in catalogue order and returns what fits, most
likely first, ending with `unknown` when nothing does. Either side may be the buggy one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Every code `diagnose` can return, in catalogue order; stable (new codes are only ever appended
#: before "unknown"). docs/diagnoses.md describes each one.
CODES: tuple[str, ...] = (
    "softmax-global-max",
    "softmax-global-sum",
    "softmax-column-sum",
    "softmax-no-max",
    "log-of-zero",
    "log-masked",
    "log-epsilon",
    "precision-rounding",
    "dtype-float32",
    "reduction-mean-vs-sum",
    "bias-grad-axis",
    "transposed",
    "scaled",
    "sign-flip",
    "nan-origin",
    "drift",
    "bias-grad-scalar",
    "loss-mean-over-classes",
    "output-sigmoid",
    "log-zero-replaced",
    "params-load-mismatch",
    "grad-not-zeroed",
    "momentum",
    "weight-decay",
    "unknown",
)


@dataclass(frozen=True)
class Diagnosis:
    code: str  # one of CODES
    confidence: float  # 0..1
    explanation: str  # one paragraph with the evidence, for a person
    evidence: dict  # JSON-ready numbers backing it (floats/ints/str/bools/lists/None only)

    def __post_init__(self) -> None:
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"confidence {self.confidence!r} is not in 0..1")


@dataclass(frozen=True)
class DivergenceContext:
    step: int
    name: str
    a: np.ndarray  # side A (reference, left)
    b: np.ndarray  # side B
    inputs_a: dict[str, np.ndarray]  # side A's tensors recorded before `name` in this step, dataflow order
    inputs_b: dict[str, np.ndarray]
    history: tuple[tuple[int, float], ...]  # (step, worst relative error of that step), this one included
    inputs_agree: bool | None  # whether the tensors recorded before `name` agree (None: no inputs)
    meta_a: dict = field(default_factory=dict)  # trace headers (impl, dtype, variant, batch_size, layers, ...)
    meta_b: dict = field(default_factory=dict)
    # optional, for the diagnosers that look across steps (optimizer state, parameters in force):
    step_a: dict | None = None  # the whole step of side A (tensors recorded after `name` too), when known
    step_b: dict | None = None
    before_a: tuple = ()  # side A's previous steps' tensors, most recent first (contiguous steps only, <= 2)
    before_b: tuple = ()
    in_force_a: dict | None = None  # the parameters in force at this step on side A, when known
    in_force_b: dict | None = None
    in_force_from: str = ""  # "params file ..." when they are the run's starting parameters, else "step k-1"


def jsonable(value: Any) -> Any:
    """`value` with numpy scalars/arrays turned into ints, floats and lists; nan/inf as strings."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        if math.isnan(f):
            return "nan"
        if math.isinf(f):
            return "inf" if f > 0 else "-inf"
        return f
    if value is None or isinstance(value, str):
        return value
    return str(value)


__all__ = ["CODES", "Diagnosis", "DivergenceContext", "jsonable"]

"""The diagnoser catalogue: one small pure function per mistake, `(ctx) -> Diagnosis | None`.

Each diagnoser looks at the first divergent pair of a `DivergenceContext` and, when it needs to, at the
tensors each side recorded before it in the same step; it returns a `Diagnosis` only when the numbers
fit its mistake, for either side. The diagnosers live by family (memstate.diagnose.softmax,
memstate.diagnose.loss, .precision, .structure, on the helpers of memstate.diagnose.common);
`CATALOGUE` lists them in catalogue order, which `diagnose` uses to break confidence ties.
docs/diagnoses.md describes every code; the confidence scheme is:

    0.95  the buggy computation, redone from that side's own recorded inputs, reproduces that side
          (and the other side matches the correct computation)
    0.85-0.9  an exact structural relation between the pair (transpose, constant factor, sign flip,
          float32-representable side, decimal rounding) without a recomputation
    0.6-0.8  the relation holds but some evidence is missing (no logits, no probs, no learning rate)
    0.3-0.5  a pattern, not a proof (error magnitudes, error history)
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from memstate.diagnose.common import Entry, diagnoser, entry, f64, fmt, make, rel_err
from memstate.diagnose.loss import (log_epsilon, log_masked, log_of_zero, log_zero_replaced,
                                    loss_mean_over_classes)
from memstate.diagnose.optimizer import grad_not_zeroed, momentum, weight_decay
from memstate.diagnose.params import params_load_mismatch
from memstate.diagnose.relations import simplest_relation
from memstate.diagnose.precision import drift, dtype_float32, precision_rounding
from memstate.diagnose.softmax import (output_sigmoid, softmax_column_sum, softmax_global_max, softmax_global_sum,
                                       softmax_no_max)
from memstate.diagnose.structure import (bias_grad_axis, bias_grad_scalar, nan_origin, reduction_mean_vs_sum, scaled, sign_flip,
                                         transposed)
from memstate.diagnose.context import Diagnosis, DivergenceContext

#: The diagnosers in catalogue order: the order of CODES, which `diagnose` uses to break confidence ties.
#: The fallback ones (`drift`) come last.
CATALOGUE: list[Entry] = [entry(func) for func in (
    softmax_global_max,
    softmax_global_sum,
    softmax_column_sum,
    softmax_no_max,
    log_of_zero,
    log_masked,
    log_epsilon,
    precision_rounding,
    dtype_float32,
    reduction_mean_vs_sum,
    bias_grad_axis,
    transposed,
    scaled,
    sign_flip,
    nan_origin,
    drift,
    bias_grad_scalar,
    loss_mean_over_classes,
    output_sigmoid,
    log_zero_replaced,
    params_load_mismatch,
    grad_not_zeroed,
    momentum,
    weight_decay,
)]


def unknown(ctx: DivergenceContext, failures: list[str] | None = None) -> Diagnosis:
    """What `diagnose` returns when no diagnoser fits: a summary of the pair for a person to read."""
    a, b = f64(ctx.a), f64(ctx.b)
    ev: dict = {"shape_a": list(a.shape), "shape_b": list(b.shape), "inputs_agree": ctx.inputs_agree,
                "nonfinite_a": int((~np.isfinite(a)).sum()), "nonfinite_b": int((~np.isfinite(b)).sum())}
    if a.shape == b.shape:
        fin = np.isfinite(a) & np.isfinite(b)
        ev["max_abs_err"] = float(np.abs(a[fin] - b[fin]).max()) if fin.any() else 0.0
        ev["max_rel_err"] = rel_err(a, b)
        ev["differing"] = int(np.count_nonzero(~np.isclose(a, b, rtol=0, atol=0, equal_nan=True)))
    if failures:
        ev["diagnoser_failures"] = failures
    summary = (f"max abs error {fmt(ev['max_abs_err'])}, relative {fmt(ev['max_rel_err'])}, {ev['differing']} of "
               f"{a.size} elements differ" if "max_abs_err" in ev else f"shapes {list(a.shape)} vs {list(b.shape)}")
    inputs = {True: "its inputs agree, so the cause is in how this tensor is computed",
              False: "its inputs already disagree slightly", None: "no inputs were recorded before it"}[ctx.inputs_agree]
    found = simplest_relation(ctx)
    relation = ""
    if found is not None:
        relation = f" The simplest exact relation between the sides: {found[0]}."
        ev.update(found[1])
    else:
        ev["relation"] = None
    return make("unknown", 0.0,
                f"No known mistake explains {ctx.name} at step {ctx.step}: {summary}; {inputs}.{relation} Compare "
                f"the code that computes {ctx.name} on both sides.", ev)


__all__ = [
    "CATALOGUE", "Entry", "bias_grad_axis", "bias_grad_scalar", "grad_not_zeroed", "log_zero_replaced",
    "loss_mean_over_classes", "momentum", "output_sigmoid", "params_load_mismatch", "weight_decay", "diagnoser", "drift", "dtype_float32", "log_epsilon", "log_masked",
    "log_of_zero", "nan_origin", "precision_rounding", "reduction_mean_vs_sum", "scaled", "sign_flip",
    "softmax_column_sum", "softmax_global_max", "softmax_global_sum", "softmax_no_max", "transposed", "unknown",
]


def diagnose(ctx: DivergenceContext) -> list[Diagnosis]:
    """What explains the divergence of `ctx.name`, most likely first; never empty.

    Every primary diagnoser in the catalogue is asked; fallback ones (`drift`) only when no primary
    one fits. Results are sorted by confidence, ties in catalogue order. When nothing fits the list is
    `[Diagnosis("unknown", ...)]`, whose evidence summarises the pair.
    """
    failures: list[str] = []

    def ask(entries: list[Any]) -> list[Diagnosis]:
        found = []
        for entry in entries:
            try:
                with np.errstate(all="ignore"):
                    result = entry.func(ctx)
            except Exception as exc:  # a diagnoser must never break the comparator's report
                failures.append(f"{entry.code}: {type(exc).__name__}: {exc}")
                warnings.warn(f"diagnoser {entry.code} failed on {ctx.name!r}: {exc!r}", RuntimeWarning, stacklevel=2)
                continue
            if result is not None:
                found.append(result)
        return found

    found = ask([e for e in CATALOGUE if not e.fallback])
    if not found:
        found = ask([e for e in CATALOGUE if e.fallback])
    found.sort(key=lambda d: -d.confidence)  # stable: ties keep catalogue order
    if not found:
        with np.errstate(all="ignore"):  # huge finite pairs overflow in a - b; the summary says inf
            found = [unknown(ctx, failures)]
    return found

"""Precision diagnosers: values rounded to N decimals (precision-rounding), float32 rounding in a float64
comparison (dtype-float32), and, when no local cause fits, rounding error amplified over the steps (drift,
the catalogue's fallback)."""

from __future__ import annotations

import numpy as np

from memstate.diagnose.common import (F32_EPS, F64_EPS, PARAM, all_finite, diagnoser, f64, fit_factor, fmt, is_f32,
                                      make, other_label, rel_err, same, scale, sides, who)
from memstate.diagnose.context import Diagnosis, DivergenceContext



def _ulp(x: np.ndarray, raw: np.dtype) -> np.ndarray:
    """The spacing of each |x| in the dtype its side recorded it in: a float32 value rounded to n decimals is
    the float32 nearest the grid point, up to half a float32 ulp (not a float64 one) away from it."""
    dt = np.float32 if raw == np.float32 else np.float64
    return np.spacing(np.abs(x).astype(dt)).astype(np.float64)


def _quantised(x: np.ndarray, n: int, raw: np.dtype) -> bool:
    """Every finite value is on the 10**-n grid (within 2 ulps of the side's dtype)."""
    fin = x[np.isfinite(x)]
    with np.errstate(all="ignore"):
        return bool(np.all(np.abs(fin - np.round(fin, n)) <= 2 * _ulp(fin, raw)))


@diagnoser("precision-rounding")
def precision_rounding(ctx: DivergenceContext) -> Diagnosis | None:
    """One side's values are the other side's rounded to N decimals (e.g. toFixed(8) on parameters)."""
    return _precision_rounding(ctx)


def _precision_rounding(ctx: DivergenceContext) -> Diagnosis | None:
    for side in sides(ctx):
        x, o = side.x, side.o
        if x.shape != o.shape or x.size < 4 or same(x, o) or not (all_finite(x) and all_finite(o)):
            continue
        s = scale(x, o)
        if s == 0 or np.count_nonzero(x) < 2:
            continue
        eps = F32_EPS if side.raw_dtype == np.float32 else F64_EPS
        raw_o = np.asarray(ctx.b if side.label == "A" else ctx.a).dtype
        for n in range(0, 16):
            if 10.0**-n > 0.01 * s:
                continue  # a grid this coarse for values this small is not "rounding to n decimals"
            if 10.0**-n < 1e3 * eps * s:
                break  # the grid is as fine as the float itself: rounding is invisible
            if not _quantised(x, n, side.raw_dtype):
                continue
            if _quantised(o, n, raw_o):
                break  # both sides are on the grid: not this
            diff = float(np.abs(x - o).max())
            exact = bool(np.all(np.abs(x - np.round(o, n)) <= 2 * _ulp(x, side.raw_dtype)))
            if not exact and diff > 50 * 10.0**-n:
                break
            param = bool(PARAM.match(ctx.name))
            conf = (0.95 if param else 0.85) if exact else (0.75 if param else 0.6)
            changed = int(np.count_nonzero(x != o))
            relation = (f"exactly {other_label(side)}'s rounded to {n} decimals" if exact else
                        f"all on the 10^-{n} grid while {other_label(side)}'s are not, within {fmt(diff)} of them")
            return make("precision-rounding", conf,
                        f"{who(side)}'s {ctx.name} values are {relation}: {changed} of {x.size} elements differ, "
                        f"by at most {fmt(diff)} (rounding bound {fmt(0.5 * 10.0**-n)}). Something rounds to {n} "
                        f"decimals (toFixed({n}), a JSON/print round trip, np.round) so that updates smaller than "
                        f"{fmt(0.5 * 10.0**-n)} vanish. Fix: keep full precision (repr / 17 significant digits).",
                        {"side": side.label, "decimals": n, "exact": exact, "max_abs_diff": diff,
                         "bound": 0.5 * 10.0**-n, "changed": changed, "size": int(x.size)})
    return None


def _f32_representable(x: np.ndarray, raw: np.dtype) -> bool:
    if raw == np.float32:
        return True
    fin = x[np.isfinite(x)]
    with np.errstate(all="ignore"):
        return bool(np.array_equal(fin.astype(np.float32).astype(np.float64), fin))


@diagnoser("dtype-float32")
def dtype_float32(ctx: DivergenceContext) -> Diagnosis | None:
    """Differences of float32 rounding: one side float32-exact (every value survives a float32 round trip)
    while the other is not."""
    return _dtype_float32(ctx)


def _dtype_float32(ctx: DivergenceContext) -> Diagnosis | None:
    a, b = f64(ctx.a), f64(ctx.b)
    if a.shape != b.shape or same(a, b):
        return None
    err = rel_err(a, b)
    if not 1e-10 <= err <= 1e-3:
        return None
    if precision_rounding(ctx) is not None:
        return None
    for side in sides(ctx):
        rep_x = _f32_representable(side.x, side.raw_dtype)
        rep_o = _f32_representable(side.o, np.dtype(np.float64))
        header = str(side.meta.get("dtype", "")) == "float32" and str(side.other_meta.get("dtype", "")) == "float64"
        mix = (side.meta.get("variant") or {}).get("dtype_mix") if isinstance(side.meta.get("variant"), dict) else None
        mix_here = bool(mix) and ctx.name.startswith(f"{mix}.")
        if rep_x and not rep_o:
            conf = 0.95 if (header or mix_here) else 0.9
            why = ("its trace header says float32" if header else
                   f"its header's variant computes {mix} in float32" if mix_here else
                   "no header says so")
            return make("dtype-float32", conf,
                        f"{who(side)}'s {ctx.name} is exactly representable in float32 (every value survives a "
                        f"float32 round trip) while {other_label(side)}'s is not, and they differ by at most "
                        f"{fmt(err)} of the tensor's scale: float32 rounding ({why}). Typical causes: a float32 "
                        f"run compared with a float64 one, or one layer computed in float32 (an astype, a float32 "
                        f"constant, a GPU matmul) inside a float64 run. Fix: use one dtype throughout, or compare "
                        f"with a float32 tolerance.",
                        {"side": side.label, "max_rel_err": err, "float32_exact": True, "header_dtype": header,
                         "dtype_mix": mix if mix_here else None})
    # only a side whose values are float32-representable is float32 rounding (issue 11): scattered errors of
    # float32 size on sides that are not (parameters rounded to 8 decimals, say) are something else
    return None


@diagnoser("drift", fallback=True)
def drift(ctx: DivergenceContext) -> Diagnosis | None:
    """No local cause: the worst error per step started at rounding level and its running maximum rose by
    a decade or more over several steps, never jumping by more than 1.5 decades at once."""
    return _drift(ctx)


def _drift(ctx: DivergenceContext) -> Diagnosis | None:
    if any(not np.isfinite(e) for _, e in ctx.history):
        return None
    pts = [(int(s), float(e)) for s, e in ctx.history if e > 0]
    if len(pts) < 3:
        return None
    steps = np.array([s for s, _ in pts], dtype=float)
    logs = np.log10([e for _, e in pts])
    env = np.maximum.accumulate(logs)  # the largest error so far, in decades
    floor = -4.0 if is_f32(ctx) else -9.0
    rises = np.diff(env)
    growth = float(env[-1] - logs[0])
    if logs[0] > floor or growth < 1 or rises.max() > 1.5 or np.count_nonzero(rises > 0.1) < 2 or np.ptp(steps) == 0:
        return None
    slope, icpt = np.polyfit(steps, env, 1)
    ss = float(np.sum((env - env.mean()) ** 2))
    r2 = 1 - float(np.sum((env - (slope * steps + icpt)) ** 2)) / ss  # ss > 0: env rose by a decade or more
    growth_per_step = 10.0 ** (growth / float(steps[-1] - steps[0]))
    conf = 0.5 + (0.1 if r2 >= 0.9 else 0.0) + (0.1 if ctx.inputs_agree is False else 0.0)
    return make("drift", conf,
                f"No local cause fits {ctx.name}: the worst relative error per step started at rounding level "
                f"({fmt(pts[0][1])} at step {pts[0][0]}) and grew to {fmt(10.0 ** env[-1])} by step {pts[-1][0]} "
                f"(about ×{fmt(growth_per_step)} per step, never more than ×{fmt(10.0 ** rises.max())} in one step; "
                f"R² {fmt(r2)} for a geometric trend){'; its inputs already disagree' if ctx.inputs_agree is False else ''}. "
                f"That is rounding (summation order, fused multiply-add, libm) amplified by training, not a bug in "
                f"this tensor. Fix: nothing to fix; compare with a tolerance that grows with the step, or fewer steps.",
                {"first_step": pts[0][0], "first_error": pts[0][1], "last_step": pts[-1][0],
                 "last_error": pts[-1][1], "max_error": 10.0 ** env[-1], "growth_decades": growth,
                 "growth_per_step": growth_per_step, "largest_jump_decades": float(rises.max()), "r2": r2,
                 "points": len(pts), "inputs_agree": ctx.inputs_agree})


__all__ = ["drift", "dtype_float32", "precision_rounding"]

"""Structural diagnosers: an exact relation between the pair. A factor of the batch size in the loss or a
gradient (reduction-mean-vs-sum), db summed over the wrong axis (bias-grad-axis), a transpose (transposed),
a constant factor or learning rate (scaled), a sign error (sign-flip), and the first non-finite value on
one side (nan-origin)."""

from __future__ import annotations

import numpy as np

from memstate.diagnose.common import (GRAD, PARAM, all_finite, batch_size, close, diagnoser, exact_rtol, f64,
                                      first_positions, fit_factor, fmt, is_f32, last_layer, make, other_label,
                                      rel_err, same, scale, sides, who)
from memstate.diagnose.context import Diagnosis, DivergenceContext



def _reduction_factor(c: float, B: int | None, rtol: float) -> str | None:
    """'B' when c ≈ B, '1/B' when c ≈ 1/B."""
    if not B or B < 2:
        return None
    if abs(c - B) <= rtol * B:
        return "B"
    if abs(c - 1 / B) <= rtol / B:
        return "1/B"
    return None


@diagnoser("reduction-mean-vs-sum")
def reduction_mean_vs_sum(ctx: DivergenceContext) -> Diagnosis | None:
    """The loss or a gradient differs by exactly the batch size B: one side sums, the other averages."""
    return _reduction_mean_vs_sum(ctx)


def _reduction_mean_vs_sum(ctx: DivergenceContext) -> Diagnosis | None:
    gm = GRAD.match(ctx.name)
    if ctx.name != "loss" and not gm:
        return None
    a, b = f64(ctx.a), f64(ctx.b)
    if a.shape != b.shape or not (all_finite(a) and all_finite(b)):
        return None
    if a.size == 1:
        if a.ravel()[0] == 0:
            return None
        c, resid = float(b.ravel()[0] / a.ravel()[0]), 0.0
    else:
        fit = fit_factor(a, b)
        if fit is None:
            return None
        c, resid = fit
    rtol = 1e-4 if is_f32(ctx) else 1e-6
    B = batch_size(ctx, ctx.inputs_a) or batch_size(ctx, ctx.inputs_b)
    which = _reduction_factor(c, B, rtol)
    if which is None or resid > rtol:
        return None
    summer, averager = ("B", "A") if which == "B" else ("A", "B")
    n = last_layer(ctx, ctx.inputs_a)
    output_dz = gm is not None and gm.group(2) == "z" and n is not None and int(gm.group(1)) == n
    conf = 0.95 if ctx.name == "loss" or output_dz else 0.85
    doubt = _reduction_doubt(ctx, summer, B, n)
    if doubt is False:
        return None
    if doubt is not None:
        conf = min(conf, 0.6)
    loss_agrees = None
    if "loss" in ctx.inputs_a and "loss" in ctx.inputs_b:
        loss_agrees = close(ctx.inputs_a["loss"], ctx.inputs_b["loss"], rtol)
    where = ("the loss" if ctx.name == "loss" else
             f"{ctx.name}, though the loss agrees (the backward pass scales differently)" if loss_agrees else ctx.name)
    return make("reduction-mean-vs-sum", conf,
                f"Side B's {ctx.name} is {fmt(c)} × side A's, and the batch size is {B}: side {summer} sums over the "
                f"batch where side {averager} averages, so {where} differs by B (and every gradient after it)"
                f"{'' if doubt is None else f' ({doubt})'}. "
                f"Fix: use the scenario's loss_reduction (divide by the batch size once, in the loss or in dz).",
                {"ratio_b_over_a": c, "batch_size": B, "summing_side": summer, "averaging_side": averager,
                 "residual": resid, "loss_agrees": loss_agrees, "doubt": doubt})


def _reduction_doubt(ctx: DivergenceContext, summer: str, B: int | None, n: int | None) -> "str | bool | None":
    """Why the mean/sum reading is doubtful (a string), ruled out (False), or fine (None). Only a factor
    B that is also the number of classes C is in question (a loss averaged over the classes looks the
    same): ruled out when the summing side's output dz is the mean's (p - y)/B, doubtful when dz is not
    in the trace, the more so when that side's header (or check's inferred setting) says mean."""
    y = ctx.inputs_a.get("y") if ctx.inputs_a.get("y") is not None else ctx.inputs_b.get("y")
    C = int(np.shape(y)[1]) if y is not None and np.ndim(y) == 2 else None
    if C is not None and C == B:
        step = ctx.step_a if summer == "A" else ctx.step_b
        dz, p = (step or {}).get(f"L{n}.dz"), (step or {}).get("probs")
        if dz is not None and p is not None and y is not None and np.shape(dz) == np.shape(y) == np.shape(p):
            if close(dz, (f64(p) - f64(y)) / B, 1e-6):
                return False  # the summing side's dz is the mean's: its loss is divided by C, not summed
        else:
            meta = ctx.meta_a if summer == "A" else ctx.meta_b
            said = "; its settings say loss_reduction mean" if (meta or {}).get("loss_reduction") == "mean" else ""
            return f"the factor is also the number of classes C = {C}: a loss averaged over classes looks the same{said}"
    return None


@diagnoser("bias-grad-axis")
def bias_grad_axis(ctx: DivergenceContext) -> Diagnosis | None:
    """db summed over the feature axis of a square dz (batch == layer width) instead of the batch axis."""
    return _bias_grad_axis(ctx)


def _bias_grad_axis(ctx: DivergenceContext) -> Diagnosis | None:
    m = GRAD.match(ctx.name)
    if not m or m.group(2) != "b":
        return None
    dz_name = f"L{m.group(1)}.dz"
    rtol = exact_rtol(ctx)
    for side in sides(ctx):
        dz = side.inputs.get(dz_name)
        dzo = side.other_inputs.get(dz_name)
        if dz is None or dzo is None:
            continue
        dz, dzo = f64(dz), f64(dzo)
        if dz.ndim != 2 or dz.shape[0] != dz.shape[1] or side.x.shape != (dz.shape[1],):
            continue
        if close(side.x, dz.sum(axis=1), rtol) and not close(side.x, dz.sum(axis=0), rtol) \
                and close(side.o, dzo.sum(axis=0), rtol):
            return make("bias-grad-axis", 0.95,
                        f"{who(side)}'s {ctx.name} equals {dz_name}.sum(axis=1), the sum over the feature axis, while "
                        f"{other_label(side)}'s equals {dz_name}.sum(axis=0), the sum over the batch; {dz_name} is "
                        f"{dz.shape[0]}×{dz.shape[1]} (batch size = layer width), so the wrong axis still has the "
                        f"right shape. Fix: db = dz.sum(axis=0).",
                        {"side": side.label, "dz_shape": list(dz.shape),
                         "err_vs_feature_sum": rel_err(side.x, dz.sum(axis=1)),
                         "err_vs_batch_sum": rel_err(side.x, dz.sum(axis=0))})
    return None


@diagnoser("transposed")
def transposed(ctx: DivergenceContext) -> Diagnosis | None:
    """One side is the transpose of the other (square, or with the shape swapped or kept)."""
    return _transposed(ctx)


def _transposed(ctx: DivergenceContext) -> Diagnosis | None:
    a, b = f64(ctx.a), f64(ctx.b)
    if a.ndim != 2 or b.ndim != 2 or a.size < 2 or same(a, b) or scale(a) == 0:
        return None
    rtol = exact_rtol(ctx)
    if a.shape == b.shape and a.shape[0] == a.shape[1]:
        if close(a, a.T, 10 * rtol):
            return None  # symmetric: a transpose would not show
        if close(b, a.T, rtol):
            kind, conf = "transpose", 0.9
        else:
            return None
    elif b.shape == a.T.shape and close(b, a.T, rtol):
        kind, conf = "transpose", 0.9
    elif a.shape == b.shape and (close(b, a.T.reshape(a.shape), rtol) or close(a, b.T.reshape(b.shape), rtol)):
        kind, conf = "transposed-then-reshaped", 0.85
    elif b.shape == a.T.shape and close(b.ravel(), a.ravel(), rtol):
        kind, conf = "reshaped", 0.6
    else:
        return None
    what = {"transpose": "side B's is the transpose of side A's",
            "transposed-then-reshaped": "one side holds the other's transpose, reshaped back to the original shape "
                                        "(column-major data read as row-major)",
            "reshaped": "side B holds side A's values in the same order under the swapped shape"}[kind]
    return make("transposed", conf,
                f"{ctx.name}: {what} (A {list(a.shape)}, B {list(b.shape)}), equal to within {fmt(rtol)} of the "
                f"scale. Usual causes: W stored as [out, in] instead of [in, out], x @ W vs W @ x, or a "
                f"column-major buffer. Fix: transpose at the boundary (or record in the canonical layout).",
                {"kind": kind, "shape_a": list(a.shape), "shape_b": list(b.shape)})


def _lr_step(ctx: DivergenceContext) -> Diagnosis | None:
    """Updated params whose steps differ by a multiple of the (agreeing) gradient: a learning-rate mismatch."""
    m = PARAM.match(ctx.name)
    if not m:
        return None
    g_name = f"L{m.group(1)}.d{m.group(2)}"
    ga, gb = ctx.inputs_a.get(g_name), ctx.inputs_b.get(g_name)
    if ga is None or gb is None:
        return None
    rtol = exact_rtol(ctx)
    a, b, g = f64(ctx.a), f64(ctx.b), f64(ga)
    if g.shape != a.shape or b.shape != a.shape or not close(ga, gb, rtol) or scale(g) == 0:
        return None
    fit = fit_factor(g, a - b)  # a - b = (lr_b - lr_a)·g
    if fit is None or fit[1] > (1e-3 if is_f32(ctx) else 1e-6):
        return None
    k = fit[0]
    la, lb = (ctx.meta_a or {}).get("learning_rate"), (ctx.meta_b or {}).get("learning_rate")
    ev: dict = {"lr_difference_b_minus_a": k, "residual": fit[1], "learning_rate_a": la, "learning_rate_b": lb}
    factor: float | None  # None: the headers do not pin the factor down, only the difference
    if isinstance(la, (int, float)) and isinstance(lb, (int, float)) and la != lb and abs(k - (lb - la)) <= 1e-6 * max(abs(la), abs(lb)):
        factor, conf = lb / la, 0.9
        how = f"the trace headers say so (learning_rate {la} vs {lb})"
    elif isinstance(la, (int, float)) and la > 0 and la == lb:
        # one step cannot tell which side uses the header's rate: A (then B's is la + k) or B (A's is la - k);
        # a rate that comes out as 0 means that side did not update at all
        tiny = 1e-6 * la
        hyps = [("A", la, la + k), ("B", la - k, la)]
        ev["hypotheses"] = [{"uses_header_lr": h, "lr_a": ra, "lr_b": rb,
                             "factor": rb / ra if ra > tiny and rb > tiny else None} for h, ra, rb in hyps]
        # la > 0, so la + k and la - k cannot both be below tiny: at least one reading has a factor
        factor, conf = next(h["factor"] for h in ev["hypotheses"] if h["factor"] is not None), 0.85
        parts = []
        for h, ra, rb in hyps:
            other, rate = ("B", rb) if h == "A" else ("A", ra)
            parts.append(f"if side {h} uses it, side {other} " +
                         (f"steps with {fmt(rate)}" if rate > tiny else "does not apply the update at all"))
        how = f"both headers say learning_rate {la}: " + "; ".join(parts)
    else:
        factor, conf = None, 0.7
        how = "no trace header gives the learning rate, so only the difference is known"
    ev["factor"] = factor
    return make("scaled", conf,
                f"{ctx.name} after the update: side A's minus side B's is exactly {fmt(k)} × {g_name}, the gradient "
                f"both sides agree on (residual {fmt(fit[1])}), so side B's learning rate minus side A's is "
                f"{fmt(k)}{'' if factor is None else f', a factor {fmt(factor)} (B over A)'}; {how}. "
                f"Fix: use the scenario's learning rate (look for a hard-coded or rescaled lr).", ev)


@diagnoser("scaled")
def scaled(ctx: DivergenceContext) -> Diagnosis | None:
    """b ≈ c·a for one constant c (not ±1; not B or 1/B for the loss/gradients), or updated params whose
    steps differ by a constant factor (a learning-rate mismatch)."""
    return _scaled(ctx)


def _scaled(ctx: DivergenceContext) -> Diagnosis | None:
    a, b = f64(ctx.a), f64(ctx.b)
    if a.shape != b.shape or a.size < 1 or same(a, b):
        return None
    if a.size == 1:
        return _scalar_factor(ctx, float(a.ravel()[0]), float(b.ravel()[0]))
    fit = fit_factor(a, b)
    rtol = exact_rtol(ctx)
    if fit is not None and fit[1] <= rtol and abs(fit[0] - 1) >= 1e-4 and abs(fit[0] + 1) >= 1e-4:
        c = fit[0]
        B = batch_size(ctx, ctx.inputs_a) or batch_size(ctx, ctx.inputs_b)
        is_grad = ctx.name == "loss" or bool(GRAD.match(ctx.name))
        if not (is_grad and _reduction_factor(c, B, 1e-4 if is_f32(ctx) else 1e-6)):
            note = (f" The factor equals the batch size {B}, but {ctx.name} is not a gradient, so this is not a "
                    f"mean/sum mix-up." if B and _reduction_factor(c, B, 1e-6) else "")
            return make("scaled", 0.85,
                        f"Side B's {ctx.name} is side A's times {fmt(c)} (residual {fmt(fit[1])} of its norm): one "
                        f"constant factor, e.g. a learning rate, a scale in an init or a missing/extra division.{note}",
                        {"factor": c, "residual": fit[1], "batch_size": B})
    return _lr_step(ctx)


def _scalar_factor(ctx: DivergenceContext, a: float, b: float) -> Diagnosis | None:
    """Two numbers always have a ratio: only a simple one (an integer, its inverse, a power of ten) counts."""
    if not (np.isfinite(a) and np.isfinite(b)) or a == 0 or b == 0:
        return None
    c = b / a
    if c == 0 or not np.isfinite(c):
        return None
    tol = 1e-5 if is_f32(ctx) else 1e-9
    simple = None
    for k in (c, 1 / c):
        if not 2 <= abs(k) < 1e12:
            continue
        r = round(k)
        if abs(k) >= 2 and abs(k - r) <= tol * abs(k):
            simple = f"{'' if k is c else '1/'}{r}"
            break
    if simple is None:
        return None
    B = batch_size(ctx, ctx.inputs_a) or batch_size(ctx, ctx.inputs_b)
    if (ctx.name == "loss" or GRAD.match(ctx.name)) and _reduction_factor(c, B, tol):
        return None  # the batch size: reduction-mean-vs-sum says it
    return make("scaled", 0.6,
                f"Side B's {ctx.name} is side A's times {fmt(c)} = {simple}: one simple constant factor (a single "
                f"number cannot show more; look for a missing or extra division or multiplication by {simple.removeprefix('1/')}).",
                {"factor": c, "simple": simple, "residual": 0.0, "batch_size": B})


@diagnoser("sign-flip")
def sign_flip(ctx: DivergenceContext) -> Diagnosis | None:
    """b ≈ -a, everywhere or on a consistent subset (rows/columns) with equal magnitudes."""
    return _sign_flip(ctx)


def _sign_flip(ctx: DivergenceContext) -> Diagnosis | None:
    a, b = f64(ctx.a), f64(ctx.b)
    if a.shape != b.shape or a.size < 1 or not (all_finite(a) and all_finite(b)):
        return None
    s = scale(a, b)
    if s == 0:
        return None
    tol = exact_rtol(ctx) * s
    if not np.all(np.abs(np.abs(a) - np.abs(b)) <= tol):
        return None
    sig = np.maximum(np.abs(a), np.abs(b)) > 10 * tol
    flipped = sig & (np.sign(a) != np.sign(b))
    if not flipped.any():
        return None
    frac = float(flipped.sum() / sig.sum())
    ev: dict = {"flipped": int(flipped.sum()), "significant": int(sig.sum()), "fraction": frac}
    if flipped.sum() == sig.sum():
        conf, where = 0.9, "every element"
    else:
        conf, where = 0.6, f"{int(flipped.sum())} of {int(sig.sum())} elements"
        if a.ndim == 2:
            for axis, label in ((1, "rows"), (0, "columns")):
                hit = flipped.any(axis=axis)
                whole = np.all(np.where(sig, flipped, True), axis=axis)
                if np.all(whole[hit]):
                    idx = np.flatnonzero(hit)
                    conf, where = 0.8, f"whole {label} {idx.tolist()[:20]}"
                    ev[label] = idx
                    break
    return make("sign-flip", conf,
                f"Side B's {ctx.name} is minus side A's on {where} (magnitudes equal to within {fmt(exact_rtol(ctx))} "
                f"of the scale): a sign error, e.g. y - p for p - y, W += lr·g for W -= lr·g, or a negated term "
                f"in one component.", ev)


@diagnoser("nan-origin")
def nan_origin(ctx: DivergenceContext) -> Diagnosis | None:
    """The first tensor where nan/inf appears on one side only, while that side's inputs are finite."""
    return _nan_origin(ctx)


def _nan_origin(ctx: DivergenceContext) -> Diagnosis | None:
    a, b = f64(ctx.a), f64(ctx.b)
    if a.shape != b.shape:
        return None
    for side in sides(ctx):
        bad = ~np.isfinite(side.x) & np.isfinite(side.o)
        if not bad.any():
            continue
        dirty = [k for k, v in side.inputs.items() if not all_finite(v)]
        if dirty:
            continue  # it came from an earlier tensor on that side
        x = side.x
        n_nan, n_pos, n_neg = int(np.isnan(x).sum()), int(np.isposinf(x).sum()), int(np.isneginf(x).sum())
        return make("nan-origin", 0.75,
                    f"{ctx.name} is the first tensor where non-finite values appear on {who(side)} only: {n_nan} nan, "
                    f"{n_pos} +inf, {n_neg} -inf (first at {first_positions(bad)}), while all {len(side.inputs)} "
                    f"tensors it recorded before it in this step are finite. The operation computing {ctx.name} "
                    f"overflows, divides by zero or takes log/sqrt of an out-of-range value there.",
                    {"side": side.label, "nan": n_nan, "posinf": n_pos, "neginf": n_neg,
                     "positions": first_positions(bad), "inputs_checked": list(side.inputs)})
    return None



__all__ = ["bias_grad_axis", "nan_origin", "reduction_mean_vs_sum", "scaled", "sign_flip", "transposed"]


@diagnoser("bias-grad-scalar")
def bias_grad_scalar(ctx: DivergenceContext) -> Diagnosis | None:
    """db is one number, dz summed over the batch *and* the units, repeated for every bias."""
    return _bias_grad_scalar(ctx)


def _bias_grad_scalar(ctx: DivergenceContext) -> Diagnosis | None:
    m = GRAD.match(ctx.name)
    if PARAM.match(ctx.name) and ctx.name.endswith(".b"):
        return _bias_moved_as_one(ctx)
    if not m or m.group(2) != "b" or same(ctx.a, ctx.b):
        return None
    dz_name = f"L{m.group(1)}.dz"
    rtol = exact_rtol(ctx)
    for side in sides(ctx):
        x = side.x
        if x.ndim != 1 or x.size < 2 or not all_finite(x) or not np.all(x == x[0]):
            continue
        dz = side.inputs.get(dz_name)
        if dz is not None and np.ndim(dz) == 2 and np.shape(dz)[1] == x.size:
            dz = f64(dz)
            total = float(dz.sum())
            atol = rtol * float(np.abs(dz).sum())  # the sum cancels (softmax rows of p - y sum to 0)
            if not close(x, np.full_like(x, total), rtol, atol) or close(x, dz.sum(axis=0), rtol, atol):
                continue
            dzo = side.other_inputs.get(dz_name)
            other_ok = dzo is not None and f64(dzo).shape == dz.shape and close(side.o, f64(dzo).sum(axis=0), rtol)
            conf, how = (0.95 if other_ok else 0.85), f"{dz_name}.sum() = {fmt(total)}, over the batch and the units"
        elif side.o.shape == x.shape and all_finite(side.o) \
                and close(x, np.full_like(x, float(side.o.sum())), rtol, rtol * float(np.abs(side.o).sum())) \
                and not close(side.o, x, rtol):
            total, conf, how = float(side.o.sum()), 0.85, f"the sum of {other_label(side)}'s {ctx.name} ({dz_name} is not recorded)"
        else:
            continue
        return make("bias-grad-scalar", conf,
                    f"Every element of {who(side)}'s {ctx.name} is the same number, {how}: the bias gradient is one "
                    f"scalar (np.sum(dz) with no axis) broadcast to all {x.size} biases, instead of one sum per unit. "
                    f"Fix: db = dz.sum(axis=0).",
                    {"side": side.label, "value": total, "units": int(x.size), "dz_checked": dz is not None})
    return None


def _bias_moved_as_one(ctx: DivergenceContext) -> Diagnosis | None:
    """Without db in the trace: the update moved every bias of the layer by the same amount (W - lr·s for
    one s), while the other side's biases moved by different amounts."""
    from memstate.diagnose.common import in_force_of

    if same(ctx.a, ctx.b) or np.shape(ctx.a) != np.shape(ctx.b):
        return None
    for side in sides(ctx):
        force, other_force = in_force_of(ctx, side.label), in_force_of(ctx, other_label(side))
        if force is None or other_force is None or ctx.name not in force or ctx.name not in other_force:
            continue
        old, old_o = f64(force[ctx.name]), f64(other_force[ctx.name])
        if old.shape != side.x.shape or old_o.shape != side.o.shape or side.x.size < 2:
            continue  # parameters of another shape (not this layer's): subtracting would broadcast or raise
        u, uo = old - side.x, old_o - side.o
        if not (all_finite(u) and all_finite(uo)):
            continue
        spread_o = float(np.ptp(uo))
        if spread_o == 0 or float(np.ptp(u)) > exact_rtol(ctx) * max(spread_o, scale(uo)):
            continue
        frozen = abs(float(u[0])) <= exact_rtol(ctx) * scale(uo)
        return make("bias-grad-scalar", 0.6 if frozen else 0.8,
                    f"The update moved every one of {who(side)}'s {ctx.name} by the same amount "
                    f"({fmt(float(u[0]))}) while {other_label(side)}'s moved by {fmt(float(uo.min()))}.."
                    f"{fmt(float(uo.max()))}: its bias gradient is one number for all units (np.sum(dz) with no "
                    f"axis{'; with a softmax output that sum is 0, so the biases do not move at all, which a frozen bias would do too' if frozen else ''}). "
                    f"db is not in the trace, so this is read from the update. Fix: db = dz.sum(axis=0).",
                    {"side": side.label, "update": float(u[0]), "units": int(u.size), "dz_checked": False,
                     "frozen": frozen})
    return None


__all__ += ["bias_grad_scalar"]

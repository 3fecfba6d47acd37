"""What every diagnoser shares: registration (`@diagnoser`), one side seen as the suspect (`Side`,
`sides`), the closeness tests, the trace's names (logits, labels, batch size) and `make`/`fmt`.

The diagnosers themselves live by family in memstate.diagnose.softmax, diagnose_loss, diagnose_precision
and diagnose_structure; memstate.diagnose.catalogue lists them in catalogue order.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple

import numpy as np

from memstate.diagnose.context import CODES, Diagnosis, DivergenceContext, jsonable

Diagnoser = Callable[[DivergenceContext], "Diagnosis | None"]


@dataclass(frozen=True)
class Entry:
    code: str
    func: Diagnoser
    fallback: bool = False  # asked only when no primary diagnoser fits


_ENTRIES: dict[Diagnoser, Entry] = {}


def diagnoser(code: str, fallback: bool = False) -> Callable[[Diagnoser], Diagnoser]:
    """Make `func` the diagnoser for `code` (memstate.diagnose.catalogue.CATALOGUE lists it, in catalogue order); it
    runs with numpy's floating point warnings off, since overflow and nan are what it looks at."""

    def register(func: Diagnoser) -> Diagnoser:
        @functools.wraps(func)
        def quiet(ctx: DivergenceContext) -> Diagnosis | None:
            return _quietly(func, ctx)

        _ENTRIES[quiet] = Entry(code, quiet, fallback)
        return quiet

    return register


def _quietly(func: Diagnoser, ctx: DivergenceContext) -> Diagnosis | None:
    """func(ctx) with numpy's floating point warnings off (outside the decorated wrapper, which mutmut skips)."""
    with np.errstate(all="ignore"):
        return func(ctx)


def entry(func: Diagnoser) -> Entry:
    """The catalogue entry `@diagnoser` made for `func`."""
    return _ENTRIES[func]


# ------------------------------------------------------------------------------------------- helpers

PARAM = re.compile(r"^L(\d+)\.(W|b)$")
GRAD = re.compile(r"^L(\d+)\.d(z|W|b|a)$")
_LOGITS = re.compile(r"^L(\d+)\.z$")
F32_EPS, F64_EPS = float(np.finfo(np.float32).eps), float(np.finfo(np.float64).eps)


class Side(NamedTuple):
    """One side seen as the suspect: `x` its tensor, `o` the other side's."""

    label: str  # "A" or "B"
    x: np.ndarray
    o: np.ndarray
    inputs: dict
    other_inputs: dict
    meta: dict
    other_meta: dict
    raw_dtype: np.dtype  # the dtype the side's tensor came in


def sides(ctx: DivergenceContext) -> Iterator[Side]:
    a, b = f64(ctx.a), f64(ctx.b)
    yield Side("A", a, b, ctx.inputs_a, ctx.inputs_b, ctx.meta_a or {}, ctx.meta_b or {}, np.asarray(ctx.a).dtype)
    yield Side("B", b, a, ctx.inputs_b, ctx.inputs_a, ctx.meta_b or {}, ctx.meta_a or {}, np.asarray(ctx.b).dtype)


def who(side: Side) -> str:
    impl = side.meta.get("impl")
    return f"side {side.label} ({impl})" if impl else f"side {side.label}"


def other_label(side: Side) -> str:
    return "B" if side.label == "A" else "A"


def f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def is_f32(ctx: DivergenceContext) -> bool:
    """Whether either side is float32 (its arrays or its trace header)."""
    dts = {np.asarray(ctx.a).dtype, np.asarray(ctx.b).dtype}
    metas = {str((ctx.meta_a or {}).get("dtype", "")), str((ctx.meta_b or {}).get("dtype", ""))}
    return np.dtype(np.float32) in dts or "float32" in metas


def exact_rtol(ctx: DivergenceContext) -> float:
    """Relative tolerance (to the tensor's scale) of an exact relation computed two ways."""
    return 1e-4 if is_f32(ctx) else 1e-7


def scale(*arrays: np.ndarray) -> float:
    m = 0.0
    for x in arrays:
        x = f64(x)
        fin = x[np.isfinite(x)]
        if fin.size:
            m = max(m, float(np.abs(fin).max()))
    return m


def same(x: np.ndarray, y: np.ndarray) -> bool:
    """Bitwise equal values, nan equal to nan."""
    x, y = f64(x), f64(y)
    return x.shape == y.shape and bool(np.array_equal(x, y, equal_nan=True))


def same_pattern(x: np.ndarray, y: np.ndarray) -> bool:
    """Same shape, nan in the same places, the same infinities in the same places."""
    if x.shape != y.shape or not np.array_equal(np.isnan(x), np.isnan(y)):
        return False
    ix, iy = np.isinf(x), np.isinf(y)
    return bool(np.array_equal(ix, iy) and np.array_equal(x[ix], y[iy]))


def close(x: np.ndarray, y: np.ndarray, rtol: float, atol: float = 0.0) -> bool:
    """Same shape, same nan/inf pattern, finite values within rtol of the pair's scale (+ atol)."""
    x, y = f64(x), f64(y)
    if not same_pattern(x, y):
        return False
    fin = np.isfinite(x)
    if not fin.any():
        return True
    d = float(np.abs(x[fin] - y[fin]).max())
    return d <= rtol * scale(x, y) + atol


def close_each(x: np.ndarray, y: np.ndarray, rtol: float, atol: float) -> bool:
    """Like `close`, but every finite element within rtol of its own magnitude (+ atol): for probabilities,
    where a value of 1e-20 against 0 matters."""
    x, y = f64(x), f64(y)
    if not same_pattern(x, y):
        return False
    fin = np.isfinite(x)
    return bool(np.all(np.abs(x[fin] - y[fin]) <= rtol * np.maximum(np.abs(x[fin]), np.abs(y[fin])) + atol))


def rel_err(x: np.ndarray, y: np.ndarray) -> float:
    """Largest finite |x - y| over the pair's scale (0 when equal, inf when shapes differ)."""
    x, y = f64(x), f64(y)
    if x.shape != y.shape:
        return math.inf
    fin = np.isfinite(x) & np.isfinite(y)
    if not fin.any():
        return 0.0
    d = float(np.abs(x[fin] - y[fin]).max())
    s = scale(x[fin], y[fin])
    return d / s if s > 0 else 0.0  # s == 0: every finite value is 0, so d is 0 too


def all_finite(x: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(f64(x))))


def last_layer(ctx: DivergenceContext, inputs: dict) -> int | None:
    layers = (ctx.meta_a or {}).get("layers") or (ctx.meta_b or {}).get("layers")
    if layers and f"L{len(layers) - 1}.z" in inputs:
        return len(layers) - 1
    found = [int(m.group(1)) for m in map(_LOGITS.match, inputs) if m]
    return max(found) if found else None


def logits(ctx: DivergenceContext, inputs: dict, like: np.ndarray | None = None) -> np.ndarray | None:
    """The last layer's z from a side's inputs, when it is a finite matrix (shaped like `like`)."""
    n = last_layer(ctx, inputs)
    if n is None:
        return None
    z = f64(inputs[f"L{n}.z"])
    if z.ndim != 2 or not all_finite(z) or (like is not None and z.shape != like.shape):
        return None
    return z


def labels(inputs: dict, like: np.ndarray | None = None) -> np.ndarray | None:
    y = inputs.get("y")
    if y is None:
        return None
    y = f64(y)
    if y.ndim != 2 or (like is not None and y.shape != like.shape):
        return None
    return y


def batch_size(ctx: DivergenceContext, inputs: dict) -> int | None:
    for key in ("y", "x"):
        if key in inputs and np.ndim(inputs[key]) >= 1:
            return int(np.shape(inputs[key])[0])
    for meta in (ctx.meta_a or {}, ctx.meta_b or {}):
        if isinstance(meta.get("batch_size"), int):
            return int(meta["batch_size"])
    return None


def fit_factor(x: np.ndarray, y: np.ndarray) -> tuple[float, float] | None:
    """Least-squares c with y ≈ c·x, and ||y - c·x|| / ||y||; None unless both finite and nonzero."""
    x, y = f64(x).ravel(), f64(y).ravel()
    if x.shape != y.shape or not (all_finite(x) and all_finite(y)):
        return None
    xx = float(x @ x)
    yy = float(np.sqrt(y @ y))
    if xx == 0 or yy == 0:
        return None
    c = float(x @ y) / xx
    return c, float(np.linalg.norm(y - c * x)) / yy


def first_positions(mask: np.ndarray, limit: int = 5) -> list:
    return [list(map(int, idx)) for idx in np.argwhere(mask)[:limit]]


def make(code: str, confidence: float, explanation: str, evidence: dict) -> Diagnosis:
    assert code in CODES, code
    text = explanation[:1].upper() + explanation[1:]
    return Diagnosis(code, round(float(min(max(confidence, 0.0), 1.0)), 3), text, jsonable(evidence))


def fmt(v: float) -> str:
    return f"{v:.6g}"

__all__ = [
    "F32_EPS", "F64_EPS", "GRAD", "PARAM", "Diagnoser", "Entry", "Side", "all_finite", "batch_size", "close",
    "close_each", "diagnoser", "entry", "exact_rtol", "f64", "first_positions", "fit_factor", "fmt", "is_f32",
    "labels", "last_layer", "logits", "make", "other_label", "rel_err", "same", "same_pattern", "scale", "sides",
    "who",
]


# ------------------------------------------------------------------- across steps (optimizer, params in force)

def _is_a(side: "Side | str") -> bool:
    return (side if isinstance(side, str) else side.label) == "A"


def step_of(ctx: DivergenceContext, side: "Side | str") -> dict:
    """The side's whole step when the caller gave it, else what it recorded before the divergent tensor."""
    full = ctx.step_a if _is_a(side) else ctx.step_b
    if full is not None:
        return full
    return ctx.inputs_a if _is_a(side) else ctx.inputs_b


def before_of(ctx: DivergenceContext, side: "Side | str") -> tuple:
    """The side's previous steps (most recent first), when the caller gave them."""
    return tuple(ctx.before_a if _is_a(side) else ctx.before_b)


def in_force_of(ctx: DivergenceContext, side: "Side | str") -> dict | None:
    """The parameters in force at this step on the side: given by the caller, else the previous step's
    updated parameters."""
    given = ctx.in_force_a if _is_a(side) else ctx.in_force_b
    if given is not None:
        return given
    before = before_of(ctx, side)
    return before[0] if before else None


def own_gradient(inputs: dict, name: str) -> np.ndarray | None:
    """dW = a_prev^T @ dz or db = dz summed over the batch, from the side's own recorded tensors."""
    m = GRAD.match(name)
    if not m or m.group(2) not in ("W", "b"):
        return None
    i = int(m.group(1))
    dz = inputs.get(f"L{i}.dz")
    if dz is None or np.ndim(dz) != 2:
        return None
    dz = f64(dz)
    if m.group(2) == "b":
        return dz.sum(axis=0)
    a = inputs.get("x" if i == 1 else f"L{i - 1}.a")
    if a is None or np.ndim(a) != 2 or np.shape(a)[0] != dz.shape[0]:
        return None
    return f64(a).T @ dz


def lstsq_fit(target: np.ndarray, *basis: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Least-squares coefficients c with target ≈ Σ c_i·basis_i, and the residual's norm over target's; None
    when anything is non-finite, a shape differs or the target is zero."""
    t = f64(target).ravel()
    cols = [f64(b).ravel() for b in basis]
    if any(c.shape != t.shape for c in cols) or not all_finite(t) or not all(all_finite(c) for c in cols):
        return None
    norm = float(np.linalg.norm(t))
    if norm == 0 or any(float(np.linalg.norm(c)) == 0 for c in cols):
        return None
    m = np.stack(cols, axis=1)
    coef, *_ = np.linalg.lstsq(m, t, rcond=None)
    return coef, float(np.linalg.norm(t - m @ coef)) / norm


__all__ += ["before_of", "in_force_of", "lstsq_fit", "own_gradient", "step_of"]

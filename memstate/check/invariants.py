"""Reference-free invariants of recorded tensors: one-hot labels, probabilities that are a distribution, a
finite loss, no nan/inf from finite inputs. They need no parameters or settings, so they hold a trace to
account even where no operation can be recomputed."""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from memstate.check import recompute as rc


def invariants(name: str, value: np.ndarray) -> list[tuple[str, str]]:
    """Reference-free invariants of one recorded tensor: (code, what is wrong) for each that fails."""
    out: list[tuple[str, str]] = []
    v = rc.f64(value)
    eps = rc.EPS.get(np.dtype(value.dtype), rc.EPS[np.dtype("float32")])
    if name == "y" and v.ndim == 2 and v.size:
        ok = np.isin(v, (0.0, 1.0)).all(axis=1) & (v.sum(axis=1) == 1)
        if not ok.all():
            out.append(("y-one-hot", f"{int(np.count_nonzero(~ok))} of {v.shape[0]} rows of y are not one-hot "
                                     f"(row {int(np.argmin(ok))} first)"))
    elif name == "probs" and v.ndim == 2 and v.size:
        with np.errstate(all="ignore"):
            neg = v < 0
            if neg.any():
                r, c = (int(i) for i in np.argwhere(neg)[0])
                out.append(("probs-non-negative", f"{int(np.count_nonzero(neg))} probabilities are negative "
                                                  f"(probs[{r}, {c}] = {v[r, c]:.6g})"))
            sums = v.sum(axis=1)
            off = np.abs(sums - 1)
            off = np.where(np.isnan(off), np.inf, off)
            limit = 4 * (v.shape[1] + 1) * eps
            if (off > limit).any():
                r = int(np.argmax(off))
                bad = int(np.count_nonzero(off > limit))
                out.append(("probs-rows-sum-to-1", f"{bad} of {v.shape[0]} rows of probs do not sum to 1 "
                                                   f"(row {r} sums to {sums[r]:.6g})"))
    elif name == "loss" and not np.isfinite(v).all():
        out.append(("loss-finite", f"the loss is {float(v.reshape(-1)[0])}"))
    return out


INVARIANT_NAMES = {"y": 1, "probs": 2, "loss": 1}  # invariants evaluated per recorded tensor of that name


def inputs_finite_for_invariants(name: str, t: Mapping[str, np.ndarray], n_layers: int) -> bool:
    """probs and loss are held to their invariants only when what they come from is finite (nan logits
    give nan probabilities honestly; the first nan is reported where it appears)."""
    if name == "probs":
        deps = [f"L{n_layers}.z"]
    elif name == "loss":
        deps = [f"L{n_layers}.z", "probs"]
    else:
        return True
    return all(bool(np.isfinite(t[d]).all()) for d in deps if d in t)


def nonfinite(a: np.ndarray) -> int:
    """How many elements of `a` are nan or inf (0 at the cost of one sum when its sum is finite: a sum with
    any nan or inf in it is not)."""
    with np.errstate(over="ignore", invalid="ignore"):  # (a sum that overflows counts the long way)
        if a.size == 0 or math.isfinite(float(a.sum(dtype=np.float64))):
            return 0
    return int(a.size - np.count_nonzero(np.isfinite(a)))

"""Short numbers for reports and messages, one spelling everywhere (a leaf module: it imports nothing)."""

from __future__ import annotations

import math


def short(x: float) -> str:
    """A short number: 0, 1.2e-07, inf, nan."""
    if x == 0:
        return "0"
    if math.isnan(x) or math.isinf(x):
        return str(x)
    return f"{x:.1e}"

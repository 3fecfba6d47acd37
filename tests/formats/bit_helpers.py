"""Bit-for-bit comparison of float arrays, shared by the format tests (params, traces, convert)."""

from __future__ import annotations

import numpy as np


def bits(a: np.ndarray) -> np.ndarray:
    """The raw bits of a float64 or float32 array, so -0.0, subnormals and nan payloads compare exactly."""
    return a.view(np.uint64 if a.dtype.itemsize == 8 else np.uint32)


def assert_same_bits(got: np.ndarray, want: np.ndarray, exact_nan: bool) -> None:
    """Bit-for-bit equality; JSON `data` keeps only the canonical NaN, so canonicalise unless exact_nan."""
    assert got.dtype == want.dtype and got.shape == want.shape
    if not exact_nan:
        want = want.copy()
        want[np.isnan(want)] = np.nan
    np.testing.assert_array_equal(bits(got), bits(want))

"""Tolerances: dtype-aware defaults, per-name overrides (fnmatch patterns) and ULP allowances.

An element passes when |a - b| <= atol + rtol * max(|a|, |b|) (numpy's isclose made symmetric), or,
when the tolerance has `ulps`, when a and b are at most that many ULPs apart in the lower dtype. A
non-finite value passes only against the same non-finite value (nan against nan).

Defaults, from rounding analysis. With unit roundoff u, a length-n dot product summed in two orders
differs by at most 2*n*u*sum|x_k w_k| and typically by sqrt(n)*u*sum|x_k w_k|; in these networks n <= 784
(the widest input) and sum|x_k w_k| is O(10), and the difference then flows through a few layers and is
carried from step to step by the parameters, growing roughly linearly with the number of steps.

- float64 vs float64: u = 2**-53 = 1.1e-16. Typical sums differ by ~3e-14, worst case 2e-12, so
  atol = 1e-12; rtol = 1e-10 (about 2**20 u) leaves three orders of magnitude for growth over layers and
  steps. Measured: numpy against numpy with permuted summation stays below 1e-14 absolute over 300 steps
  of mnist14-relu, and needs no rtol at all at this atol.
- float32 vs float32: u = 2**-24 = 6.0e-8. Typical sums differ by ~2e-5 relative to their terms' scale
  at n = 784 (by a few 1e-7 absolute at the O(1) values of mnist14-relu), so atol = 1e-5 and rtol = 1e-5
  (about 170 u). Measured over 20 steps of mnist14-relu: numpy float32 against permuted summation and
  against a JAX float32 port differ by at most 6e-7 absolute (20x margin), and still pass after 300 steps.
- float64 vs float32: the float64 tolerance. The float32 side is off by its own rounding, about u32 =
  6e-8 relative in every element, which is exactly what a float32 port of a float64 reference looks like
  (diagnosis dtype-float32). A float32 copy of a float64 tensor is 0 ULPs away on float32's grid and
  within numpy's default rtol of 1e-7, yet it fails here. To accept float32 rounding say so: --tol
  '*=float32' (the float32 defaults) or --ulp '*=4'.

Oracle mode (compare with a float64 trace C): a tensor of B that is out of tolerance against A is blamed
only when its error to C exceeds `oracle_factor` times A's error to C plus one rounding of C into B's
dtype (eps * max|C|), the rule PyTorch's accuracy checker applies against its fp64 reference;
otherwise it is excused. Errors to the oracle are max abs errors.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase

import numpy as np

from memstate.errors import MemstateError
from memstate.comparator.metrics import ElementErrors

ORACLE_FACTOR = 10.0

TOL_SYNTAX = (
    "write PATTERN=RTOL (e.g. 'L*.dW=1e-6'), PATTERN=rtol:X,atol:Y,ulps:N with any of the three "
    "(e.g. 'probs=rtol:1e-5,atol:1e-12'), or PATTERN=float32 / PATTERN=float64 for that dtype's defaults; "
    "PATTERN is an fnmatch pattern over tensor names"
)
ULP_SYNTAX = "write PATTERN=N with N a whole number of ULPs (e.g. 'loss=64')"


class ToleranceError(MemstateError):
    """A tolerance given on the command line or to `Tolerances` cannot be read."""


@dataclass(frozen=True)
class Tolerance:
    """The resolved tolerance of one tensor; `source` says where each part came from."""

    rtol: float
    atol: float
    ulps: int | None = None
    source: str = ""

    def out_of_tolerance(self, errors: ElementErrors) -> np.ndarray:
        """Bool mask of the elements that fail, given their elementwise errors."""
        with np.errstate(invalid="ignore", over="ignore"):
            fail = ~(errors.abs <= self.atol + self.rtol * errors.magnitude)
        if self.ulps is not None:
            fail &= ~(errors.ulp <= self.ulps)
        return fail | errors.mismatch

    def describe(self) -> str:
        """`rtol 1e-10, atol 1e-12` (and `or 4 ulps`)."""
        text = f"rtol {self.rtol:g}, atol {self.atol:g}"
        return text + (f", or {self.ulps} ulps" if self.ulps is not None else "")


@dataclass(frozen=True)
class MinTolerance:
    """The least tolerance that passes a tensor, one part at a time with the others as they were (inf: none can)."""

    rtol: float  # at the tolerance's atol (and ulps)
    atol: float  # at the tolerance's rtol (and ulps)
    ulps: float  # an ULP allowance added to the tolerance's rtol and atol


def min_passing(errors: ElementErrors, tol: Tolerance) -> MinTolerance:
    """The rtol, the atol and the ulps that would each have made every element pass."""
    fail = tol.out_of_tolerance(errors)
    if not fail.any():
        return MinTolerance(rtol=tol.rtol, atol=tol.atol, ulps=float(tol.ulps or 0))
    if errors.mismatch.any():
        return MinTolerance(rtol=math.inf, atol=math.inf, ulps=math.inf)
    abs_f, mag_f = errors.abs[fail], errors.magnitude[fail]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        rtol = float(np.max(np.where(mag_f > 0, (abs_f - tol.atol) / mag_f, np.inf)))
        atol = float(np.max(abs_f - tol.rtol * mag_f))
    plain = replace(tol, ulps=None)
    ulps = float(np.max(errors.ulp[plain.out_of_tolerance(errors)]))
    return MinTolerance(rtol=_least(errors, tol, "rtol", rtol), atol=_least(errors, tol, "atol", atol), ulps=ulps)


def _least(errors: ElementErrors, tol: Tolerance, field: str, value: float) -> float:
    """`value`, nudged up by a few ulps until it passes despite rounding in atol + rtol * magnitude."""
    for _ in range(16):
        trial = replace(tol, rtol=value) if field == "rtol" else replace(tol, atol=value)
        if not math.isfinite(value) or not trial.out_of_tolerance(errors).any():
            return value
        value = float(np.nextafter(value, math.inf))
    return value * (1 + 1e-12)


DEFAULTS: dict[str, Tolerance] = {
    "float64": Tolerance(rtol=1e-10, atol=1e-12, source="float64 default"),
    "float32": Tolerance(rtol=1e-5, atol=1e-5, source="float32 default"),
}


def default_tolerance(dtype_a: np.dtype | str, dtype_b: np.dtype | str) -> Tolerance:
    """float32 defaults only when both sides are float32; float64's whenever either side is float64."""
    both32 = np.dtype(dtype_a).itemsize <= 4 and np.dtype(dtype_b).itemsize <= 4
    return DEFAULTS["float32" if both32 else "float64"]


@dataclass(frozen=True)
class Rule:
    """One `--tol`/`--ulp` override: the fields it sets (None: left alone) for names matching `pattern`."""

    pattern: str
    rtol: float | None = None
    atol: float | None = None
    ulps: int | None = None
    text: str = ""  # as the user wrote it, e.g. "--tol 'L*.dW=1e-6'"

    def matches(self, name: str) -> bool:
        return fnmatchcase(name, self.pattern)


@dataclass(frozen=True)
class Tolerances:
    """The tolerance policy: dtype defaults, global rtol/atol, then rules in order (per field, the last match wins)."""

    rtol: float | None = None
    atol: float | None = None
    rules: tuple[Rule, ...] = ()
    oracle_factor: float = ORACLE_FACTOR

    def __post_init__(self) -> None:
        for what, value in (("--rtol", self.rtol), ("--atol", self.atol)):
            if value is not None:
                _check_nonneg(value, what, f"{what} {value!r}", "a finite number >= 0, e.g. 1e-9")
        if not (isinstance(self.oracle_factor, (int, float)) and math.isfinite(self.oracle_factor)
                and self.oracle_factor >= 1):
            raise ToleranceError(f"--oracle-factor {self.oracle_factor!r}: give a number >= 1 (default 10)")

    def resolve(self, name: str, dtype_a: np.dtype | str, dtype_b: np.dtype | str) -> Tolerance:
        """The tolerance for tensor `name` compared between these dtypes."""
        tol = default_tolerance(dtype_a, dtype_b)
        sources = [tol.source]
        if self.rtol is not None or self.atol is not None:
            tol = replace(tol, rtol=tol.rtol if self.rtol is None else self.rtol,
                          atol=tol.atol if self.atol is None else self.atol)
            sources.append(" ".join(f"--{k} {v:g}" for k, v in (("rtol", self.rtol), ("atol", self.atol))
                                    if v is not None))
        for rule in self.rules:
            if rule.matches(name):
                tol = replace(tol, rtol=tol.rtol if rule.rtol is None else rule.rtol,
                              atol=tol.atol if rule.atol is None else rule.atol,
                              ulps=tol.ulps if rule.ulps is None else rule.ulps)
                sources.append(rule.text or rule.pattern)
        return replace(tol, source=" + ".join(sources))

    def unused_rules(self, names: set[str]) -> list[Rule]:
        """Rules whose pattern matches none of `names` (likely typos)."""
        return [r for r in self.rules if not any(r.matches(n) for n in names)]

    def describe(self) -> list[str]:
        """One line per part of the policy, for reports."""
        lines = [f"defaults: float64 {DEFAULTS['float64'].describe()}; float32 {DEFAULTS['float32'].describe()} "
                 "(float64's whenever either side is float64)"]
        if self.rtol is not None or self.atol is not None:
            lines.append("global: " + ", ".join(f"{k} {v:g}" for k, v in (("rtol", self.rtol), ("atol", self.atol))
                                                if v is not None))
        lines += [f"rule: {r.text or r.pattern}" for r in self.rules]
        return lines


def _check_nonneg(value: float, what: str, text: str, want: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ToleranceError(f"{text}: {what} must be {want}")
    return float(value)


def _number(raw: str, text: str, syntax: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ToleranceError(f"{text}: {raw!r} is not a number; {syntax}") from None
    if not math.isfinite(value) or value < 0:
        raise ToleranceError(f"{text}: {raw!r} must be a finite number >= 0; {syntax}")
    return value


def _count(raw: str, text: str, syntax: str) -> int:
    if not re.fullmatch(r"\d+", raw.strip()):
        raise ToleranceError(f"{text}: {raw!r} is not a whole number of ULPs; {syntax}")
    return int(raw)


def _split(spec: str, text: str, syntax: str) -> tuple[str, str]:
    pattern, sep, value = spec.rpartition("=")
    if not sep or not pattern.strip() or not value.strip():
        raise ToleranceError(f"{text}: {syntax}")
    return pattern.strip(), value.strip()


def parse_tol(spec: str) -> Rule:
    """Read a `--tol` value: PATTERN=RTOL, PATTERN=rtol:X,atol:Y,ulps:N, or PATTERN=float32|float64."""
    text = f"--tol {spec!r}"
    pattern, value = _split(spec, text, TOL_SYNTAX)
    if value in DEFAULTS:
        d = DEFAULTS[value]
        return Rule(pattern, rtol=d.rtol, atol=d.atol, text=text)
    if ":" not in value:
        return Rule(pattern, rtol=_number(value, text, TOL_SYNTAX), text=text)
    fields: dict[str, float | int] = {}
    for part in value.split(","):
        key, sep, raw = part.partition(":")
        key = key.strip()
        if not sep or key not in ("rtol", "atol", "ulps") or key in fields:
            why = f"{key!r} given twice" if key in fields else f"cannot read {part.strip()!r}"
            raise ToleranceError(f"{text}: {why}; {TOL_SYNTAX}")
        fields[key] = _count(raw, text, TOL_SYNTAX) if key == "ulps" else _number(raw, text, TOL_SYNTAX)
    return Rule(pattern, text=text, **fields)  # type: ignore[arg-type]


def parse_ulp(spec: str) -> Rule:
    """Read a `--ulp` value: PATTERN=N."""
    text = f"--ulp {spec!r}"
    pattern, value = _split(spec, text, ULP_SYNTAX)
    return Rule(pattern, ulps=_count(value, text, ULP_SYNTAX), text=text)


def tolerances_from_specs(specs: list[tuple[str, str]] | None = None, *, rtol: float | None = None,
                          atol: float | None = None, oracle_factor: float = ORACLE_FACTOR) -> Tolerances:
    """A policy from ("tol" | "ulp", text) pairs in command-line order, plus global rtol/atol."""
    rules = tuple(parse_tol(text) if kind == "tol" else parse_ulp(text) for kind, text in specs or ())
    return Tolerances(rtol=rtol, atol=atol, rules=rules, oracle_factor=oracle_factor)


def oracle_allowance(error_a: float, oracle_max: float, dtype_b: np.dtype | str, factor: float) -> float:
    """How far B may be from the oracle before it is blamed: factor * A's error + one rounding into B's dtype."""
    return factor * error_a + float(np.finfo(np.dtype(dtype_b)).eps) * oracle_max


def ceil_3g(x: float) -> str:
    """`x` rounded up to 3 significant digits, so that the printed minimum tolerance passes too."""
    if not math.isfinite(x) or x <= 0:
        return f"{x:g}"
    unit = 10.0 ** (math.floor(math.log10(x)) - 2)
    value = math.ceil(x / unit - 1e-9) * unit  # 1.04e-05 / 1e-07 is 104.00000000000001
    while float(f"{value:.3g}") < x:
        value += unit
    return f"{value:.3g}"

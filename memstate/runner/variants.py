"""Variant switches: the mistakes people make when porting an MLP, reproducible on demand.

A `Variant` is part of a scenario (its `[variant]` table) and of every trace's metadata. The default
variant is the correct network; each field names one faithful bug.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from memstate.errors import ScenarioError

#: `log = "eps"` computes log(p + LOG_EPSILON), the usual "fix" for log(0).
LOG_EPSILON = 1e-8
#: `log = "replace"` takes log(p) of an exact p == 0 as log(LOG_ZERO_REPLACEMENT) (the nan_to_num "fix").
LOG_ZERO_REPLACEMENT = 1e-12

CHOICES: dict[str, tuple[str, ...]] = {
    "softmax_max": ("row", "global", "none"),
    "softmax_sum": ("row", "global", "column"),
    "log": ("safe", "raw", "eps", "masked", "replace"),
    "loss_reduction": ("mean", "sum"),
    "bias_grad_axis": ("batch", "features", "scalar"),
    "output": ("softmax", "sigmoid"),
    "class_reduction": ("sum", "mean"),
    "grads": ("reset", "accumulate"),
}

HELP: dict[str, str] = {
    "softmax_max": "row: subtract each row's max (correct); global: the whole batch's max "
    "(np.exp(x - np.max(x))); none: subtract nothing",
    "softmax_sum": "row: divide by each row's sum (correct); global: by the whole matrix's sum "
    "(np.sum(e)); column: by column sums (builtin sum over a 2-D array)",
    "log": "safe: log-softmax from the logits (correct); raw: log(p), -inf at 0; "
    "eps: log(p + 1e-8); masked: numpy's masked log, which drops log(0) terms; replace: log(p) of an "
    "exact 0 taken as log(1e-12), other terms untouched",
    "round_params": "round the parameters to N decimals after every update (the toFixed(8) fix)",
    "dtype_mix": "compute the forward pass of one layer (e.g. L1) in float32 inside a float64 run",
    "loss_reduction": "override the scenario's loss reduction (mean or sum) in this implementation only",
    "bias_grad_axis": "batch: sum the bias gradient over the batch (correct); features: over the "
    "wrong axis, for layers whose width equals the batch size; scalar: one sum over the batch and the "
    "units (np.sum(dz)), broadcast to every bias",
    "output": "softmax: probs = softmax(z) with cross-entropy (correct); sigmoid: probs = sigmoid(z) "
    "element by element, with binary cross-entropy",
    "class_reduction": "sum: the loss sums over the classes (correct); mean: averages over them too "
    "(the loss and dz divided by C)",
    "round_loaded": "round the parameters to N decimals when they are loaded (a rounded params file)",
    "grads": "reset: fresh gradients each step (correct); accumulate: never zeroed, each step adds the "
    "previous step's",
    "momentum": "SGD with momentum mu: v = mu*v + dW, W -= lr*v (v starts at 0)",
    "weight_decay": "weight decay lambda on the weights (not the biases): W -= lr*(dW + lambda*W)",
}


@dataclass(frozen=True)
class Variant:
    """Which bugs to switch on; the defaults are the correct network."""

    softmax_max: str = "row"
    softmax_sum: str = "row"
    log: str = "safe"
    round_params: int | None = None
    dtype_mix: str | None = None
    loss_reduction: str | None = None
    bias_grad_axis: str = "batch"
    output: str = "softmax"
    class_reduction: str = "sum"
    round_loaded: int | None = None
    grads: str = "reset"
    momentum: float | None = None
    weight_decay: float | None = None

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any], source: str = "variant") -> "Variant":
        """Build a variant from a `[variant]` table, naming the key of any bad entry."""
        known = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        if not isinstance(table, Mapping):
            raise ScenarioError(f"{source}: a variant is a table of KEY = VALUE, got {table!r:.60}")
        for key, value in table.items():
            if key not in known:
                raise ScenarioError(
                    f"{source}: unknown variant key {key!r}; known keys: {', '.join(sorted(known))}"
                )
            values[key] = _check(key, value, source)
        return cls(**values)

    def with_overrides(self, assignments: Iterable[str], source: str = "--variant") -> "Variant":
        """Apply `key=value` strings from the command line on top of this variant."""
        table: dict[str, Any] = {}
        for text in assignments:
            key, sep, raw = text.partition("=")
            if not sep:
                raise ScenarioError(f"{source} {text!r}: write it as key=value, e.g. softmax_max=global")
            table[key.strip()] = _parse_value(raw.strip())
        merged = {**self.as_meta(), **table}
        return Variant.from_mapping(merged, source)

    def as_meta(self) -> dict[str, Any]:
        """All fields, for trace metadata (JSON-ready)."""
        return dataclasses.asdict(self)

    def changes(self) -> dict[str, Any]:
        """Only the fields that differ from the correct network."""
        clean = Variant()
        return {k: v for k, v in self.as_meta().items() if getattr(clean, k) != v}

    @property
    def is_clean(self) -> bool:
        return not self.changes()


def _parse_value(raw: str) -> Any:
    if raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        return float(raw)
    except ValueError:
        return raw


def _check(key: str, value: Any, source: str) -> Any:
    if key in CHOICES:
        if key == "loss_reduction" and (value is None or str(value).lower() in ("none", "null")):
            return None
        if value not in CHOICES[key]:
            raise ScenarioError(
                f"{source}: {key} = {value!r} is not one of {', '.join(CHOICES[key])} ({HELP[key]})"
            )
        return value
    if key in ("round_params", "round_loaded", "dtype_mix", "loss_reduction", "momentum", "weight_decay") \
            and str(value).lower() in ("none", "null"):
        return None
    if key in ("round_params", "round_loaded"):
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 17:
            raise ScenarioError(f"{source}: {key} = {value!r} must be an integer from 0 to 17")
        return value
    if key in ("momentum", "weight_decay"):
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < float(value) < 10:
            raise ScenarioError(f"{source}: {key} = {value!r} must be a number between 0 and 10 ({HELP[key]})")
        return float(value)
    if key == "dtype_mix":
        if value is None:
            return None
        if not isinstance(value, str) or not value.startswith("L") or not value[1:].isdigit():
            raise ScenarioError(f"{source}: dtype_mix = {value!r} must name a layer, e.g. \"L1\"")
        return value
    raise AssertionError(key)

"""Batches files (docs/format.md, "Batches files"): the steps a port trains on, as a memstate trace.

A port in any language needs the exact batches the harness feeds our implementations. A batches file is
an ordinary JSONL trace whose header's `meta.settings` says how to train (layers, activation, loss
reduction, learning rate, dtype, batch size, scenario) and whose steps each record `x` [B, n0] and `y`
[B, C] (one-hot), under the step numbers the harness uses. `memstate batches` writes one for porting by
hand; `cmd:` implementations (memstate.runner.command) get one per command call.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from memstate.errors import FormatError, ScenarioError
from memstate.formats.recorder import Recorder
from memstate.formats.trace import open_trace
from memstate.runner.dataset import prepare_data
from memstate.runner.scenario import Scenario, iter_batches
from memstate.runner.variants import Variant

KIND = "batches"
SETTINGS_KEYS = ("layers", "activation", "loss_reduction", "learning_rate", "dtype", "batch_size")


@dataclass(frozen=True)
class StepBatch:
    """One training step's inputs: its number in the run, the inputs [B, n0] and the labels [B]."""

    step: int
    x: np.ndarray
    labels: np.ndarray


def one_hot(labels: np.ndarray, classes: int, dtype: Any = np.float64) -> np.ndarray:
    """Labels [B] as one-hot rows [B, classes]."""
    out = np.zeros((len(labels), classes), dtype=dtype)
    out[np.arange(len(labels)), np.asarray(labels, dtype=np.int64)] = 1
    return out


def scenario_batches(scenario: Scenario, steps: int | None = None, first_step: int = 0) -> Iterator[StepBatch]:
    """The batches the harness feeds for steps `first_step` .. `first_step + steps - 1` (default: to the
    scenario's last step), with their real step numbers."""
    if first_step < 0:
        raise ScenarioError(f"--first-step {first_step}: give a step number >= 0")
    if steps is not None and steps < 1:
        raise ScenarioError(f"--steps {steps}: need at least one step")
    data = prepare_data(scenario.data)
    n_train = len(data.train_y)
    stop = scenario.total_steps(n_train) if steps is None else first_step + steps
    if stop <= first_step:
        raise ScenarioError(f"scenario {scenario.name} has {stop} steps; --first-step {first_step} is past its end")
    for batch in iter_batches(scenario, n_train, stop):
        if batch.step >= first_step:
            yield StepBatch(batch.step, data.train_x[batch.indices], data.train_y[batch.indices])


def batches_meta(settings: Mapping[str, Any]) -> dict[str, Any]:
    """A batches file's header meta: what it is, and how to train on it."""
    return {"kind": KIND, "scenario": settings.get("scenario"), "settings": dict(settings)}


def write_batches(path: str | os.PathLike, settings: Mapping[str, Any], batches: Iterable[StepBatch]) -> int:
    """Write a batches file (JSONL); x and y in `settings["dtype"]`. Returns the number of steps written."""
    dtype = np.dtype(settings["dtype"])
    classes = int(settings["layers"][-1])
    count = 0
    with Recorder(path, meta=batches_meta(settings), encoding="jsonl") as rec:
        for b in batches:
            with rec.step(b.step):
                rec.record("x", np.asarray(b.x, dtype=dtype))
                rec.record("y", one_hot(b.labels, classes, dtype))
            count += 1
    return count


def scenario_settings(scenario: Scenario, variant: Variant | None = None) -> dict[str, Any]:
    """`meta.settings` for `scenario` (and the variant's loss reduction, which is what the run computes)."""
    return scenario.settings(variant)


def read_batches(path: str | os.PathLike) -> tuple[dict[str, Any], list[StepBatch]]:
    """A batches file read back: its settings and its steps (labels recovered from the one-hot `y`)."""
    with open_trace(path) as trace:
        settings = trace.meta.get("settings")
        if not isinstance(settings, dict) or any(k not in settings for k in SETTINGS_KEYS):
            raise FormatError(path, f"not a batches file: its header's meta.settings must hold "
                                    f"{', '.join(SETTINGS_KEYS)}")
        out = []
        for step in trace:
            for name in ("x", "y"):
                if name not in step.tensors:
                    raise FormatError(path, f"step {step.index} has no {name}", tensor=name)
            y = step.tensors["y"]
            if y.ndim != 2 or not np.all((y == 0) | (y == 1)) or not np.all(y.sum(axis=1) == 1):
                raise FormatError(path, f"step {step.index}: y must be one-hot rows [B, C]", tensor="y")
            out.append(StepBatch(step.index, step.tensors["x"], np.argmax(y, axis=1)))
    return settings, out


__all__ = ["KIND", "SETTINGS_KEYS", "StepBatch", "batches_meta", "one_hot", "read_batches", "scenario_batches",
           "scenario_settings", "write_batches"]

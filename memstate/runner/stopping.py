"""Stopping rules of the training view: pure functions over the sequence of evaluations (docs/training.md).

The harness evaluates every `eval_every` steps and after the last step (memstate.runner.evaluation), then
asks `decide` whether a `[training.stop]` rule fires on the evaluations so far. The rules see only
numbers, never an implementation, so every implementation is stopped by the same arithmetic:

* **early** (patience P): the training loss is strictly below the validation loss at P consecutive
  evaluations, the latest included. It fires at the evaluation where the run of such evaluations reaches P.
* **plateau** (window W, threshold T): with at least W evaluations, the population standard deviation
  (numpy.std, ddof=0) of the last W training losses is strictly below T times their mean.

When both are on and fire at the same evaluation, `early` is named. A non-finite loss never fires a rule
(a comparison with nan is false), so a run that blows up trains on to its last step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from memstate.runner.scenario import StopSpec

RULES = ("early", "plateau")


@dataclass(frozen=True)
class Evaluation:
    """The figures of one evaluation, made after step `step` (so after `step + 1` steps)."""

    step: int
    train_loss: float
    train_accuracy: float
    validation_loss: float | None = None
    validation_accuracy: float | None = None
    test_accuracy: float | None = None


@dataclass(frozen=True)
class Stop:
    """A rule that fired: `value` is the run of evaluations (early) or std / mean of the window (plateau)."""

    rule: str
    step: int  # the last step trained: the run stops after step + 1 steps
    evaluation: int  # how many evaluations had been made, this one included
    value: float
    epoch: int | None = None  # the epoch of the last step, counted from 1 (the harness fills it in)

    def describe(self, spec: StopSpec | None = None) -> str:
        """One phrase: why the run stopped, e.g. 'early: training loss below validation loss at 5 ...'."""
        if self.rule == "early":
            return (f"early: training loss below validation loss at {self.value:g} consecutive evaluations "
                    f"(evaluation {self.evaluation})")
        limit = f" < threshold {spec.plateau.threshold:g}" if spec is not None and spec.plateau is not None else ""
        return (f"plateau: std/mean of the last training losses {self.value:.3g}{limit} "
                f"(evaluation {self.evaluation})")


def early_run(train_losses: Sequence[float], validation_losses: Sequence[float | None]) -> int:
    """How many evaluations, counting back from the latest, have training loss < validation loss."""
    run = 0
    for t, v in zip(reversed(train_losses), reversed(validation_losses)):
        if v is None or not t < v:
            break
        run += 1
    return run


def plateau_ratio(train_losses: Sequence[float], window: int) -> float | None:
    """std / mean of the last `window` training losses (None with fewer evaluations or a zero mean)."""
    if len(train_losses) < window:
        return None
    last = np.asarray(train_losses[-window:], dtype=np.float64)
    with np.errstate(all="ignore"):
        mean, std = float(np.mean(last)), float(np.std(last))
    if not np.isfinite(mean) or mean == 0:
        return None
    return std / mean


def plateau_fires(train_losses: Sequence[float], window: int, threshold: float) -> bool:
    """std(last window) < threshold * mean(last window), both finite; exactly at the threshold does not fire."""
    if len(train_losses) < window:
        return False
    last = np.asarray(train_losses[-window:], dtype=np.float64)
    with np.errstate(all="ignore"):
        std, mean = float(np.std(last)), float(np.mean(last))
    return bool(np.isfinite(std) and np.isfinite(mean) and std < threshold * mean)


def decide(evaluations: Sequence[Evaluation], spec: StopSpec) -> Stop | None:
    """The rule that fires at the latest evaluation, if any (early before plateau)."""
    if not evaluations:
        return None
    train = [e.train_loss for e in evaluations]
    last = evaluations[-1]
    if spec.early is not None:
        run = early_run(train, [e.validation_loss for e in evaluations])
        if run >= spec.early.patience:
            return Stop("early", last.step, len(evaluations), float(run))
    if spec.plateau is not None and plateau_fires(train, spec.plateau.window, spec.plateau.threshold):
        ratio = plateau_ratio(train, spec.plateau.window)
        return Stop("plateau", last.step, len(evaluations), float("nan") if ratio is None else ratio)
    return None


def first_stop(evaluations: Sequence[Evaluation], spec: StopSpec) -> Stop | None:
    """Where a run with these evaluations would stop: `decide` on each prefix, the first that fires."""
    for n in range(1, len(evaluations) + 1):
        stop = decide(evaluations[:n], spec)
        if stop is not None:
            return stop
    return None


__all__ = ["Evaluation", "Stop", "RULES", "decide", "first_stop", "early_run", "plateau_fires", "plateau_ratio"]

"""Evaluation of the training view: loss and accuracy of a parameter set, by memstate's float64 forward pass.

Every implementation is evaluated by this one function on the parameters it returns (`net.params()`),
never by its own forward pass, for three reasons:

* the stopping rules then depend only on the parameters: two implementations whose parameters agree stop
  at the same step, whatever their own (possibly buggy) softmax or loss does;
* the training-set evaluation is a forward pass over thousands of samples, which the pure-Python
  implementations would take seconds for at every evaluation;
* the figures are comparable across dtypes (a float32 run's parameters are evaluated in float64).

The forward pass is the canonical network of docs/format.md section 4 (dense layers, the scenario's
activation, log-softmax from the logits); the loss is the mean cross-entropy whatever the scenario's
reduction, so curves of `mean` and `sum` runs share a scale. It is written here rather than borrowed from
memstate.impls, which sit above the runner.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from memstate.names import param_names


def logits(params: Mapping[str, Any], x: np.ndarray, activation: str) -> np.ndarray:
    """z of the output layer for inputs x [N, n0], in float64."""
    n = len(params) // 2
    a = np.asarray(x, dtype=np.float64)
    with np.errstate(all="ignore"):
        for i, (w, b) in enumerate(zip(param_names(n)[::2], param_names(n)[1::2]), start=1):
            z = a @ np.asarray(params[w], dtype=np.float64) + np.asarray(params[b], dtype=np.float64)
            if i == n:
                return z
            if activation == "relu":
                a = np.maximum(z, 0.0)
            elif activation == "shifted-relu":
                a = np.maximum(z, -1.0)
            else:
                a = 1.0 / (1.0 + np.exp(-z))
    raise ValueError("a network needs at least one layer")


def loss_and_accuracy(params: Mapping[str, Any], x: np.ndarray, labels: np.ndarray,
                      activation: str) -> tuple[float, float]:
    """Mean cross-entropy (from the logits) and the fraction classified right; (nan, nan) for no samples."""
    if len(labels) == 0:
        return float("nan"), float("nan")
    z = logits(params, x, activation)
    with np.errstate(all="ignore"):
        shifted = z - z.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        loss = -float(np.mean(log_probs[np.arange(len(labels)), labels]))
    accuracy = float(np.mean(np.argmax(z, axis=1) == labels))
    return loss, accuracy


__all__ = ["logits", "loss_and_accuracy"]

"""The NumPy MLP: vectorised, hand-derived gradients, one sample per row.

Softmax subtracts each row's max and cross-entropy is computed from the logits (log-softmax), unless a
variant switches on one of the bugs in memstate.runner.variants.

The operations are module-level pure functions (`dense`, `activate`, `activation_grad`, `softmax`,
`log_softmax`, `cross_entropy`, `output_grad`, `weight_grad`, `bias_grad`, `input_grad`, `sgd_update`),
each computing in the dtype of its inputs; `NumpyMLP` strings them together. With their default
arguments they are the correct network, which `memstate check` uses (in float64) as its reference.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from memstate.runner.scenario import NetSpec
from memstate.runner.variants import LOG_EPSILON, LOG_ZERO_REPLACEMENT

NAME = "numpy"
DTYPES = ("float64", "float32")
META = {"computes_in": "the scenario's dtype"}

Record = Callable[[str, Any], None]


def make(spec: NetSpec, params: dict[str, np.ndarray]) -> "NumpyMLP":
    return NumpyMLP(spec, params)


# ---------------------------------------------------------------- the operations (pure functions)

def dense(a: np.ndarray, W: np.ndarray, b: np.ndarray, *, float32: bool = False) -> np.ndarray:
    """z = a @ W + b; `float32=True` computes it in float32 and returns W's dtype (the dtype_mix bug)."""
    if float32:
        f32 = np.float32
        return (a.astype(f32) @ W.astype(f32) + b.astype(f32)).astype(W.dtype)
    return a @ W + b


def activate(activation: str, z: np.ndarray) -> np.ndarray:
    """relu max(z, 0), shifted-relu max(z, -1), or sigmoid 1 / (1 + exp(-z))."""
    if activation == "relu":
        return np.maximum(z, 0)
    if activation == "shifted-relu":
        return np.maximum(z, -1)
    return 1 / (1 + np.exp(-z))


def activation_grad(activation: str, z: np.ndarray, a: np.ndarray) -> np.ndarray:
    """d a / d z from the pre-activation z and the activation a (in z's dtype)."""
    if activation == "relu":
        return (z > 0).astype(z.dtype)
    if activation == "shifted-relu":
        return (z > -1).astype(z.dtype)
    return a * (1 - a)


def softmax(z: np.ndarray, max_mode: str = "row", sum_mode: str = "row") -> np.ndarray:
    """Softmax of each row; the modes reproduce the variants' bugs (docs/variants.md)."""
    if max_mode == "row":
        shifted = z - z.max(axis=1, keepdims=True)
    elif max_mode == "global":
        shifted = z - np.max(z)
    else:
        shifted = z
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        e = np.exp(shifted)
        if sum_mode == "row":
            return e / e.sum(axis=1, keepdims=True)
        if sum_mode == "global":
            return e / np.sum(e)
        return e / e.sum(axis=0, keepdims=True)


def log_softmax(z: np.ndarray) -> np.ndarray:
    """log(softmax(z)) row by row, from the logits (no log of a probability)."""
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        shifted = z - z.max(axis=1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def cross_entropy(z: np.ndarray, probs: np.ndarray, y: np.ndarray, log: str = "safe",
                  reduction: str = "mean", classes: str = "sum", output: str = "softmax") -> np.ndarray:
    """The batch's cross-entropy as a 0-d array of z's dtype: from the logits (`log="safe"`) or from probs.

    `classes="mean"` also averages over the classes (the loss / C bug); `output="sigmoid"` is the binary
    cross-entropy of sigmoid outputs, -sum(y log p + (1 - y) log(1 - p)), terms with a zero coefficient
    skipped."""
    dtype = z.dtype
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        if output == "sigmoid":
            pos = np.where(y != 0, y * np.log(np.where(y != 0, probs, 1)), 0)
            neg = np.where(y != 1, (1 - y) * np.log(np.where(y != 1, 1 - probs, 1)), 0)
            total = -(np.sum(pos) + np.sum(neg))
        elif log == "safe":
            total = -np.sum(y * log_softmax(z))
        elif log == "raw":
            total = -np.sum(y * np.log(probs))
        elif log == "eps":
            total = -np.sum(y * np.log(probs + dtype.type(LOG_EPSILON)))
        elif log == "replace":  # log(0) swapped for log(1e-12), every other term untouched
            total = -np.sum(y * np.log(np.where(probs == 0, dtype.type(LOG_ZERO_REPLACEMENT), probs)))
        else:  # masked: np.ma.log drops the log(0) terms from the sum
            total = -np.ma.filled(np.sum(y * np.ma.log(probs)), 0.0)
    if reduction == "mean":
        total = total / z.shape[0]
    if classes == "mean":
        total = total / z.shape[1]
    return np.asarray(total, dtype=dtype)


def output_grad(probs: np.ndarray, y: np.ndarray, reduction: str = "mean", classes: str = "sum") -> np.ndarray:
    """dLoss/dz of the output layer for softmax cross-entropy (and for sigmoid with binary cross-entropy):
    (probs - y) / B, or probs - y for sum; divided by C as well for `classes="mean"`."""
    dt = probs.dtype
    scale = dt.type(1.0 / probs.shape[0]) if reduction == "mean" else dt.type(1.0)
    if classes == "mean":
        scale = scale / dt.type(probs.shape[1])
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        return (probs - y) * scale


def weight_grad(a: np.ndarray, dz: np.ndarray) -> np.ndarray:
    """dLoss/dW = a^T @ dz (a: the layer's input)."""
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        return a.T @ dz


def bias_grad(dz: np.ndarray, axis: str = "batch") -> np.ndarray:
    """dLoss/db: dz summed over the batch (`axis="features"` is the bias_grad_axis bug, square dz only;
    `axis="scalar"` the np.sum(dz) bug, one number for every bias)."""
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        if axis == "features" and dz.shape[0] == dz.shape[1]:
            return dz.sum(axis=1)
        if axis == "scalar":
            return np.full(dz.shape[1], dz.sum(), dtype=dz.dtype)
        return dz.sum(axis=0)


def input_grad(dz: np.ndarray, W: np.ndarray) -> np.ndarray:
    """dLoss/da of the layer's input: dz @ W^T (W before the update)."""
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        return dz @ W.T


def sgd_update(p: np.ndarray, grad: np.ndarray, lr: float, digits: int | None = None,
               decay: float | None = None) -> np.ndarray:
    """p - lr * grad in p's dtype, rounded to `digits` decimals when given (the round_params bug);
    `decay` = lambda is weight decay, p - lr * (grad + lambda * p) (the weight_decay bug)."""
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        if decay is not None:
            grad = grad + p.dtype.type(decay) * p
        new = p - p.dtype.type(lr) * grad
        return np.round(new, digits) if digits is not None else new


# ---------------------------------------------------------------- the network object

class NumpyMLP:
    """A dense ReLU/sigmoid/shifted-ReLU network trained by plain SGD on softmax cross-entropy."""

    def __init__(self, spec: NetSpec, params: dict[str, np.ndarray]):
        self.spec = spec
        self.dtype = np.dtype(spec.dtype)
        self.set_params(params)
        mix = spec.variant.dtype_mix
        self.mixed_layer = int(mix[1:]) - 1 if mix else None

    # -- state
    def set_params(self, params: dict[str, np.ndarray]) -> None:
        n = self.spec.n_layers
        self.W = [np.array(params[f"L{i}.W"], dtype=self.dtype) for i in range(1, n + 1)]
        self.b = [np.array(params[f"L{i}.b"], dtype=self.dtype) for i in range(1, n + 1)]
        digits = self.spec.variant.round_loaded
        if digits is not None:  # the round_loaded bug: a rounded params file
            self.W = [np.round(W, digits) for W in self.W]
            self.b = [np.round(b, digits) for b in self.b]
        self.prev_grads: list | None = None  # the grads variant: what the next step adds
        self.velocity: list | None = None  # the momentum variant

    def params(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for i, (W, b) in enumerate(zip(self.W, self.b), start=1):
            out[f"L{i}.W"], out[f"L{i}.b"] = W, b
        return out

    # -- pieces (the module's operations with this network's spec and variant)
    def _dense(self, i: int, a: np.ndarray) -> np.ndarray:
        return dense(a, self.W[i], self.b[i], float32=i == self.mixed_layer)

    def _activate(self, z: np.ndarray) -> np.ndarray:
        return activate(self.spec.activation, z)

    def _activation_grad(self, z: np.ndarray, a: np.ndarray) -> np.ndarray:
        return activation_grad(self.spec.activation, z, a)

    def _softmax(self, z: np.ndarray) -> np.ndarray:
        v = self.spec.variant
        if v.output == "sigmoid":
            with np.errstate(over="ignore"):
                return activate("sigmoid", z)
        return softmax(z, v.softmax_max, v.softmax_sum)

    def _loss(self, z: np.ndarray, probs: np.ndarray, y: np.ndarray) -> np.ndarray:
        v = self.spec.variant
        return cross_entropy(z, probs, y, v.log, self.spec.loss_reduction, v.class_reduction, v.output)

    def _bias_grad(self, dz: np.ndarray) -> np.ndarray:
        return bias_grad(dz, self.spec.variant.bias_grad_axis)

    # -- the interface
    def logits(self, x: np.ndarray) -> np.ndarray:
        a = np.asarray(x, dtype=self.dtype)
        last = self.spec.n_layers - 1
        for i in range(self.spec.n_layers):
            z = self._dense(i, a)
            a = z if i == last else self._activate(z)
        return a

    def train_step(self, x: np.ndarray, labels: np.ndarray, lr: float, record: Record) -> float:
        """One SGD step on a batch; records every canonical tensor in dataflow order."""
        n, dt = self.spec.n_layers, self.dtype
        x = np.asarray(x, dtype=dt)
        y = np.eye(self.spec.layers[-1], dtype=dt)[np.asarray(labels)]
        batch = x.shape[0]
        self.spec.check_batch(batch)
        record("x", x)
        record("y", y)
        acts, zs = [x], []
        for i in range(n):
            with np.errstate(over="ignore", invalid="ignore"):
                z = self._dense(i, acts[-1])
            zs.append(z)
            record(f"L{i + 1}.z", z)
            if i < n - 1:
                with np.errstate(over="ignore", invalid="ignore"):
                    a = self._activate(z)
                acts.append(a)
                record(f"L{i + 1}.a", a)
        probs = self._softmax(zs[-1])
        record("probs", probs)
        loss = self._loss(zs[-1], probs, y)
        record("loss", loss)

        grads: list[tuple[np.ndarray, np.ndarray]] = [None] * n  # type: ignore[list-item]
        with np.errstate(over="ignore", invalid="ignore", under="ignore"):
            dz = output_grad(probs, y, self.spec.loss_reduction, self.spec.variant.class_reduction)
            for i in reversed(range(n)):
                record(f"L{i + 1}.dz", dz)
                dW = weight_grad(acts[i], dz)
                db = self._bias_grad(dz)
                if self.prev_grads is not None:  # the grads = "accumulate" bug: never zeroed
                    dW, db = dW + self.prev_grads[i][0], db + self.prev_grads[i][1]
                record(f"L{i + 1}.dW", dW)
                record(f"L{i + 1}.db", db)
                grads[i] = (dW, db)
                if i > 0:
                    da = input_grad(dz, self.W[i])
                    record(f"L{i}.da", da)
                    dz = da * self._activation_grad(zs[i - 1], acts[i])
            v = self.spec.variant
            if v.grads == "accumulate":
                self.prev_grads = grads
            if v.momentum is not None:  # v = mu * v + g; the update uses v
                mu = dt.type(v.momentum)
                old = self.velocity or [(np.zeros_like(W), np.zeros_like(b)) for W, b in zip(self.W, self.b)]
                self.velocity = [(mu * vw + gw, mu * vb + gb) for (vw, vb), (gw, gb) in zip(old, grads)]
                grads = self.velocity
            digits = v.round_params
            for i in range(n):
                W = sgd_update(self.W[i], grads[i][0], lr, digits, v.weight_decay)
                b = sgd_update(self.b[i], grads[i][1], lr, digits)
                self.W[i], self.b[i] = W, b
                record(f"L{i + 1}.W", W)
                record(f"L{i + 1}.b", b)
        return float(loss)

"""A hand-made MLP trainer that writes memstate traces itself, for testing `memstate check` on outside code.

This module stands for code written outside the project: it imports nothing from memstate or impls, and
writes the JSONL trace format and the params format of docs/format.md with `json.dumps` alone. It trains a
2-layer net (inputs -> hidden -> classes) with its own maths, correct or with one deliberate bug, and
records the canonical tensors in dataflow order:

    x y L1.z L1.a L2.z probs loss L2.dz L2.dW L2.db L1.da L1.dz L1.dW L1.db L1.W L1.b L2.W L2.b

Its header says only `impl` (no activation, learning rate or loss reduction), so check has to infer them.

Bugs (`bug=`): None (correct), "softmax-global-sum" (each exp divided by the whole batch's sum, as with
`e / np.sum(e)`), "softmax-global-max" (the whole batch's max subtracted: rows far below it underflow to
0/0 = nan; needs large logits, `weight_scale` ~ 40), "bias-never-updated" (L1.b is left as it was: the
optimiser was never given it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

BUGS = (None, "softmax-global-sum", "softmax-global-max", "bias-never-updated")


def _number(v: float) -> float | str:
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return float(v)


def _tensor(name: str, value, step: int | None = None) -> dict:
    arr = np.asarray(value, dtype=np.float64)
    obj: dict = {} if step is None else {"step": step}
    obj.update(name=name, shape=list(arr.shape), dtype="float64", data=[_number(v) for v in arr.ravel().tolist()])
    return obj


def initial_params(layers=(12, 6, 4), seed: int = 0, weight_scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    params = {}
    for i, (n_in, n_out) in enumerate(zip(layers[:-1], layers[1:]), start=1):
        params[f"L{i}.W"] = rng.normal(0.0, weight_scale / math.sqrt(n_in), (n_in, n_out))
        params[f"L{i}.b"] = rng.normal(0.0, 0.1, n_out)
    return params


def write_params(path: str | Path, params: dict[str, np.ndarray]) -> None:
    """A params file (docs/format.md section 2), one tensor per line."""
    lines = [json.dumps(_tensor(name, value)) for name, value in params.items()]
    head = json.dumps({"format": "memstate.params", "version": 1, "meta": {"writer": "tests/check_writer.py"}})
    Path(path).write_text(head[:-1] + ', "tensors": [\n' + ",\n".join(lines) + "\n]}\n", encoding="utf-8")


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _softmax(z, bug):
    with np.errstate(all="ignore"):
        if bug == "softmax-global-max":
            e = np.exp(z - z.max())
        else:
            e = np.exp(z - z.max(axis=1, keepdims=True))
        if bug == "softmax-global-sum":
            return e / e.sum()
        return e / e.sum(axis=1, keepdims=True)


def train(params: dict[str, np.ndarray], steps: int = 4, batch: int = 5, lr: float = 0.5, bug: str | None = None,
          activation: str = "sigmoid", seed: int = 1) -> list[list[tuple[str, np.ndarray]]]:
    """Plain SGD on random data; returns, per step, the canonical (name, tensor) pairs in dataflow order."""
    assert bug in BUGS, bug
    W1, b1, W2, b2 = (params[k].copy() for k in ("L1.W", "L1.b", "L2.W", "L2.b"))
    n_in, n_out = W1.shape[0], W2.shape[1]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        x = rng.uniform(0.0, 1.0, (batch, n_in))
        y = np.eye(n_out)[rng.integers(0, n_out, batch)]
        z1 = x @ W1 + b1
        a1 = _sigmoid(z1) if activation == "sigmoid" else np.maximum(z1, 0.0)
        z2 = a1 @ W2 + b2
        probs = _softmax(z2, bug)
        with np.errstate(all="ignore"):
            # cross-entropy from the logits: -sum(y * (z - logsumexp(z))) / B
            m = z2.max(axis=1, keepdims=True)
            log_probs = z2 - m - np.log(np.exp(z2 - m).sum(axis=1, keepdims=True))
            loss = np.array(-(y * log_probs).sum() / batch)
            dz2 = (probs - y) / batch
            dW2 = a1.T @ dz2
            db2 = dz2.sum(axis=0)
            da1 = dz2 @ W2.T
            dz1 = da1 * (a1 * (1.0 - a1) if activation == "sigmoid" else (z1 > 0).astype(float))
            dW1 = x.T @ dz1
            db1 = dz1.sum(axis=0)
            W1, b1, W2, b2 = W1 - lr * dW1, b1 - lr * db1 * (bug != "bias-never-updated"), W2 - lr * dW2, \
                b2 - lr * db2
        out.append([("x", x), ("y", y), ("L1.z", z1), ("L1.a", a1), ("L2.z", z2), ("probs", probs), ("loss", loss),
                    ("L2.dz", dz2), ("L2.dW", dW2), ("L2.db", db2), ("L1.da", da1), ("L1.dz", dz1), ("L1.dW", dW1),
                    ("L1.db", db1), ("L1.W", W1), ("L1.b", b1), ("L2.W", W2), ("L2.b", b2)])
    return out


def write_trace(path: str | Path, records: list[list[tuple[str, np.ndarray]]], meta: dict | None = None,
                every: int = 1) -> None:
    """The JSONL trace (docs/format.md section 3.1): header, then each step's records and its terminator.

    `every` > 1 keeps only every `every`-th step (steps numbered by the training loop, so not contiguous).
    """
    lines = [json.dumps({"format": "memstate.trace", "version": 1,
                         "meta": meta if meta is not None else {"impl": "check_writer"}})]
    for k, step in enumerate(records):
        if k % every:
            continue
        lines += [json.dumps(_tensor(name, value, k)) for name, value in step]
        lines.append(json.dumps({"step": k, "end": True}))
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def make(directory: str | Path, name: str = "handmade", bug: str | None = None, steps: int = 4,
         weight_scale: float = 1.0, activation: str = "sigmoid", every: int = 1, lr: float = 0.5,
         layers=(12, 6, 4), batch: int = 5) -> tuple[Path, Path]:
    """Write NAME.params.json and NAME.memstate.jsonl under `directory`; returns (trace, params)."""
    directory = Path(directory)
    params = initial_params(layers, weight_scale=weight_scale)
    params_path = directory / f"{name}.params.json"
    trace_path = directory / f"{name}.memstate.jsonl"
    write_params(params_path, params)
    write_trace(trace_path, train(params, steps=steps, batch=batch, lr=lr, bug=bug, activation=activation),
                every=every)
    return trace_path, params_path


if __name__ == "__main__":
    import sys

    where = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    for bug in BUGS:
        trace, params = make(where, f"handmade-{bug or 'clean'}", bug=bug,
                             weight_scale=40.0 if bug == "softmax-global-max" else 1.0)
        print(trace, params)

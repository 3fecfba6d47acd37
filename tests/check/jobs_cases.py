"""Traces for the tests of `check --jobs` (test_check_jobs.py with worker processes, test_parallel_rules.py
in this process): binary traces of tests/check/check_writer.py's trainer, with bugs at chosen steps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from check_writer import initial_params, train
from trace_helpers import write_steps

from memstate.report.check import to_dict


def report(result) -> dict:
    """The JSON report, less its timing."""
    doc = json.loads(json.dumps(to_dict(result), default=str))
    doc["check"].pop("seconds")
    return doc


def writer_trace(folder: Path, name: str, *, steps: int = 8, bug: str | None = None, corrupt=(), keep=None,
                 every: int = 1, dtype: str = "float64", crash: bool = False, weight_scale: float = 1.0, drop=()):
    """A binary trace of tests/check/check_writer.py's trainer: `corrupt` (step, name) pairs are off by 1%
    at that step only; `keep` the names recorded (a partial trace), `drop` (step, name) pairs not recorded;
    `every` > 1 leaves steps out."""
    params = initial_params(weight_scale=weight_scale)
    out: dict[int, dict[str, np.ndarray]] = {}
    for k, record in enumerate(train(params, steps=steps, bug=bug)):
        if k % every == 0:
            out[k] = {n: np.asarray(v, dtype=dtype) * (1.01 if (k, n) in corrupt else 1.0)
                      for n, v in record if (keep is None or n in keep) and (k, n) not in drop}
    crashed = out.popitem() if crash else None
    path = write_steps(folder / f"{name}.memstate", out, crash=crashed)
    return path, {n: v.astype(dtype) for n, v in params.items()}


PARTIAL = ("x", "y", "L1.a", "probs", "loss", "L1.W", "L1.b", "L2.W", "L2.b")
#: name: (writer_trace arguments, with params, the steps whose ranges the main process must walk again: the
#: first failure, and a cause of a name not yet diagnosed MAX_DIAGNOSED times; every other range is merged)
CASES = {
    "clean": ({}, True, ()),
    "bug at step 5 of 8": ({"corrupt": ((5, "L1.a"),)}, True, (5,)),
    "bugs in two ranges": ({"corrupt": ((2, "probs"), (6, "L2.dW"))}, True, (2, 6)),
    "the same bug in three ranges and more": ({"corrupt": ((1, "probs"), (2, "probs"), (3, "probs"), (5, "probs"),
                                                           (7, "probs"))}, True, (1, 2, 3)),
    "a bug at every step": ({"bug": "softmax-global-sum"}, True, (1, 2)),  # step 0: the main process's
    "nan from a global max": ({"bug": "softmax-global-max", "weight_scale": 100.0}, True, (1, 2, 3)),
    "partial trace": ({"keep": PARTIAL}, True, ()),
    "only x, y, probs and loss (layers from the params file)": ({"keep": ("x", "y", "probs", "loss")}, True, ()),
    "steps recording fewer tensors": ({"drop": ((6, "loss"), (3, "L1.dz"), (4, "L2.W"))}, True, ()),
    "non-contiguous steps": ({"every": 2, "steps": 16}, True, ()),
    "incomplete last step": ({"crash": True, "steps": 9}, True, ()),
    "float32": ({"dtype": "float32"}, True, ()),
    "no params file": ({}, False, ()),
}


def serial_case(folder: Path, case: str):
    """(trace path, params or None, the steps its serial walk must redo, the serial result) of CASES[case]."""
    from memstate.check.checker import check_trace

    kwargs, with_params, redone = CASES[case]
    path, params = writer_trace(folder, "t", **kwargs)
    params = params if with_params else None
    return path, params, redone, check_trace(path, params=params, jobs=1)

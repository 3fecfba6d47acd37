"""Writing small traces in tests: steps given as {step: {name: array}}, optionally ending in a crashed step."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from memstate.formats.recorder import open_writer


def write_steps(path: Path, steps: dict[int, dict[str, np.ndarray]], meta: dict | None = None,
                crash: tuple[int, dict[str, np.ndarray]] | None = None) -> Path:
    """A trace at `path` (encoding from its name) with these complete steps, then `crash`'s step left unfinished."""
    with open_writer(path, meta) as w:
        for k, tensors in steps.items():
            w.begin_step(k)
            for name, value in tensors.items():
                w.write_tensor(name, np.asarray(value))
            w.end_step()
        if crash is not None:
            w.begin_step(crash[0])
            for name, value in crash[1].items():
                w.write_tensor(name, np.asarray(value))
    return path

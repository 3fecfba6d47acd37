"""Checkpoint runs: a cheap trace of a long run (docs/format.md, "Checkpoint runs").

A checkpoint run is an ordinary memstate trace (binary by default) whose step `k` records only

* `loss` (float64 scalar) and `batch_accuracy` (float64 scalar: the fraction of the step's batch that the
  logits before the update classify right), at every step;
* at step 0, the initial parameters under `init.L1.W`, `init.L1.b`, ... (before the loss);
* when `k + 1` is a multiple of K or the last step, the parameters after the step under the canonical
  names `L1.W`, `L1.b`, ... (after the loss and accuracy, as in a full trace).

The header's meta carries `"checkpoint_every": K` next to the usual impl/scenario/variant/steps, which
is what makes the trace replayable: `memstate.bisect` rebuilds each side from it and re-runs any
interval from its checkpointed parameters with full recording.

Checkpoints are named by *steps done*: checkpoint `s` is the parameters after `s` training steps, so
`0` is the initial parameters, then `K`, `2K`, ... and the run's last step count.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from safetensors import SafetensorError, safe_open

from memstate.errors import FormatError, MemstateError
from memstate.names import param_names
from memstate.formats.recorder import Recorder
from memstate.formats.trace import STEP_FILE, open_trace, step_file_name

META_KEY = "checkpoint_every"
INIT_PREFIX = "init."
SCALARS = ("loss", "batch_accuracy")


def checkpoint_positions(total: int, every: int) -> list[int]:
    """Steps done at which a run of `total` steps keeps its parameters: 0, K, 2K, ..., total."""
    return sorted({0, *range(every, total + 1, every), total})


def check_every(every: Any) -> int:
    if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
        raise MemstateError(f"--checkpoint-every {every!r}: give a whole number of steps >= 1")
    return int(every)


class CheckpointWriter:
    """Runs one training step at a time and records it the checkpoint way (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, meta: Mapping[str, Any], every: int, total: int,
                 n_layers: int, encoding: str | None = None, scenario_file: str | os.PathLike | None = None):
        self.every, self.total = check_every(every), total
        self.n_layers = n_layers
        self.logits_name = f"L{n_layers}.z"
        self.recorder_meta = {**meta, META_KEY: self.every}
        if scenario_file is not None:  # so that a scenario outside scenarios/ can be found again for replay
            self.recorder_meta["scenario_file"] = str(Path(scenario_file).resolve())
        self.recorder = Recorder(path, meta=self.recorder_meta, encoding=encoding)

    def train_step(self, net: Any, step: int, x: np.ndarray, labels: np.ndarray, lr: float,
                   after: Callable[[Callable[[str, Any], None], float], bool] | None = None) -> float:
        """One step, recorded the checkpoint way; `after(record, loss)` may record eval.* and stop the run here.

        A run stopped by a rule (docs/training.md) keeps its parameters at its last step, as at the end.
        """
        hits: list[float] = []

        def capture(name: str, value: Any) -> None:  # the logits of the batch, before the update
            if name == self.logits_name:
                with np.errstate(invalid="ignore"):
                    z = np.asarray(value, dtype=np.float64)
                hits.append(float(np.mean(np.argmax(z, axis=1) == labels)) if z.ndim == 2 else math.nan)

        rec = self.recorder
        with rec.step(step):
            if step == 0:
                for name, value in net.params().items():
                    rec.record(INIT_PREFIX + name, value)
            loss = net.train_step(x, labels, lr, capture)
            rec.record("loss", np.float64(loss))
            rec.record("batch_accuracy", np.float64(hits[-1] if hits else math.nan))
            notes: list[tuple[str, Any]] = []  # eval.* come after the parameters they are computed from
            stops = after(lambda name, value: notes.append((name, value)), loss) if after is not None else False
            if (step + 1) % self.every == 0 or step + 1 == self.total or stops:
                for name, value in net.params().items():
                    rec.record(name, value)
            for name, value in notes:
                rec.record(name, value)
        return loss

    def record_step(self, step: int, tensors: Mapping[str, Any], loss: float, labels: np.ndarray,
                    start: Mapping[str, Any], updated: Callable[[], Mapping[str, Any]]) -> None:
        """Record, the checkpoint way, a step trained elsewhere (a `cmd:` port): `tensors` is what it recorded,
        `start` the parameters the run started from (kept at step 0), `updated()` the parameters after the step
        (asked for at checkpoints only)."""
        rec = self.recorder
        logits = tensors.get(self.logits_name)
        if logits is not None and np.ndim(logits) == 2:
            with np.errstate(invalid="ignore"):
                acc = float(np.mean(np.argmax(np.asarray(logits, dtype=np.float64), axis=1) == labels))
        else:
            acc = math.nan
        with rec.step(step):
            if step == 0:
                for name, value in start.items():
                    rec.record(INIT_PREFIX + name, value)
            rec.record("loss", np.float64(loss))
            rec.record("batch_accuracy", np.float64(acc))
            if (step + 1) % self.every == 0 or step + 1 == self.total:
                for name, value in updated().items():
                    rec.record(name, value)

    def close(self) -> None:
        self.recorder.close()


@dataclass
class CheckpointRun:
    """A checkpoint run read back: per-step loss and batch accuracy, parameters at every checkpoint (lazily)."""

    path: Path
    meta: dict[str, Any]
    every: int
    losses: np.ndarray  # float64 [steps]
    accuracies: np.ndarray  # float64 [steps]
    checkpoints: tuple[int, ...]  # steps done at which parameters were kept, 0 first
    _files: dict[int, Path] = field(default_factory=dict, repr=False)  # binary: checkpoint -> step file
    _cache: dict[int, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def steps(self) -> int:
        """Complete steps the run recorded."""
        return len(self.losses)

    @property
    def n_layers(self) -> int:
        return len(self.meta.get("layers", [])) - 1

    def params(self, done: int) -> dict[str, np.ndarray]:
        """The parameters after `done` steps (a checkpoint), in file order L1.W, L1.b, ..."""
        if done not in self.checkpoints:
            raise MemstateError(f"{self.path}: no checkpoint after {done} steps; checkpoints are at "
                                f"{_span(self.checkpoints)}")
        if done not in self._cache:
            prefix = INIT_PREFIX if done == 0 else ""
            names = param_names(self.n_layers)
            with safe_open(str(self._files[done]), framework="np") as f:
                self._cache[done] = {n: f.get_tensor(prefix + n) for n in names}
        return self._cache[done]

    @classmethod
    def load(cls, path: str | os.PathLike) -> CheckpointRun:
        """Read a checkpoint run's header, scalars and checkpoint index (parameters load on demand)."""
        path = Path(path)
        with open_trace(path) as trace:
            meta = dict(trace.meta)
            encoding, run_id = trace.encoding, trace.run_id
        if META_KEY not in meta:
            raise FormatError(path, f'not a checkpoint run: its header has no "{META_KEY}" (record one with '
                                    "memstate run SCENARIO --checkpoint-every K -o RUN.memstate)")
        every = check_every(meta[META_KEY])
        for key in ("impl", "scenario", "steps", "layers"):
            if key not in meta:
                raise FormatError(path, f'checkpoint run header has no "{key}"; it cannot be replayed')
        layers = meta["layers"]
        if not isinstance(layers, list) or len(layers) < 2 or not all(type(n) is int and n >= 1 for n in layers):
            raise FormatError(path, f'checkpoint run header "layers" must be a list of at least two positive '
                                    f"integers, got {layers!r:.60}")
        names = param_names(len(layers) - 1)
        losses: list[float] = []
        accs: list[float] = []
        checkpoints: list[int] = []
        files: dict[int, Path] = {}
        cache: dict[int, dict[str, np.ndarray]] = {}
        if encoding == "binary":
            indexes = sorted(int(m.group(1)) for e in os.listdir(path)
                             if (m := STEP_FILE.match(e)) and not m.group(2))
            for k in indexes:
                file = path / step_file_name(k)
                if k != len(losses):
                    raise FormatError(file, f"checkpoint runs record every step; step {len(losses)} is missing")
                try:
                    with safe_open(str(file), framework="np") as f:
                        if (f.metadata() or {}).get("run_id") != run_id:
                            raise FormatError(file, "written by another run than header.json (its run id "
                                                    "differs): two runs wrote into this directory")
                        keys = set(f.keys())
                        missing = [n for n in SCALARS if n not in keys]
                        if missing:
                            raise FormatError(file, f"a checkpoint step records {', '.join(SCALARS)}; missing",
                                              tensor=missing[0])
                        losses.append(float(f.get_tensor("loss")))
                        accs.append(float(f.get_tensor("batch_accuracy")))
                except SafetensorError as e:
                    raise FormatError(file, f"not a readable safetensors file: {e}") from None
                if k == 0:
                    _need(keys, [INIT_PREFIX + n for n in names], file)
                    checkpoints.append(0)
                    files[0] = file
                if names[0] in keys:
                    _need(keys, names, file)
                    checkpoints.append(k + 1)
                    files[k + 1] = file
        else:
            with open_trace(path) as trace:
                for step in trace:
                    t = step.tensors
                    if step.index != len(losses):
                        raise FormatError(path, f"checkpoint runs record every step; step {len(losses)} is missing")
                    _need(t.keys(), list(SCALARS), path, step.index)
                    losses.append(float(t["loss"]))
                    accs.append(float(t["batch_accuracy"]))
                    if step.index == 0:
                        _need(t.keys(), [INIT_PREFIX + n for n in names], path, 0)
                        checkpoints.append(0)
                        cache[0] = {n: t[INIT_PREFIX + n] for n in names}
                    if names[0] in t:
                        _need(t.keys(), names, path, step.index)
                        checkpoints.append(step.index + 1)
                        cache[step.index + 1] = {n: t[n] for n in names}
        if not checkpoints:
            raise FormatError(path, "checkpoint run has no complete step (the run stopped before step 0 ended)")
        return cls(path, meta, every, np.array(losses, dtype=np.float64), np.array(accs, dtype=np.float64),
                   tuple(checkpoints), files, cache)


def _need(keys: Any, names: list[str], where: Path, step: int | None = None) -> None:
    missing = [n for n in names if n not in keys]
    if missing:
        at = f"step {step}: " if step is not None else ""
        raise FormatError(where, f"{at}checkpoint is incomplete; missing", tensor=missing[0])


def _span(values: tuple[int, ...]) -> str:
    return ", ".join(map(str, values)) if len(values) <= 6 else \
        f"{values[0]}, {values[1]}, ..., {values[-1]} ({len(values)} in all)"


def is_checkpoint_run(path: str | os.PathLike) -> bool:
    """Whether `path` is a trace whose header says it is a checkpoint run."""
    try:
        with open_trace(path) as trace:
            return META_KEY in trace.meta
    except (MemstateError, OSError):
        return False


__all__ = ["CheckpointRun", "CheckpointWriter", "checkpoint_positions", "is_checkpoint_run", "META_KEY",
           "INIT_PREFIX"]

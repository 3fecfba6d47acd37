"""`cmd:` implementations: a port in any language, driven through its command line (docs/ports.md).

`cmd:COMMAND` names an implementation that is a program. COMMAND is split like a shell would (shlex, but
no shell runs it); `{params}`, `{batches}` and `{trace}` in it are replaced by paths. For every call
memstate writes the parameters to start from to `{params}` (a params file) and the steps to train to
`{batches}` (a batches file, memstate.runner.batches), runs the command, and reads the port's JSONL trace
from `{trace}`, which must hold exactly those steps, complete. The updated parameters the last step
records under the canonical names (L1.W, L1.b, ...) are where the next call starts.

`CommandTarget` is what the registry wraps in an `Implementation`; its `make` returns a `CommandNet`, a
network whose `call(batches, settings)` trains several steps in one run of the command. The harness
uses `call` (one run for a whole trace, one per interval for a checkpoint run); bisect's replay calls it
for an interval, and per step in lockstep.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from memstate.errors import FormatError, MemstateError
from memstate.formats.params import write_params
from memstate.formats.trace import Step, open_trace
from memstate.names import param_names
from memstate.runner.batches import StepBatch, write_batches
from memstate.runner.scenario import NetSpec

PREFIX = "cmd:"
PLACEHOLDERS = ("{params}", "{batches}", "{trace}")
DEFAULT_TIMEOUT = 600.0  # seconds per run of the command
TAIL_LINES, TAIL_CHARS = 15, 2000


class CommandError(MemstateError):
    """A `cmd:` port could not be run, failed, timed out, or wrote a trace memstate cannot use."""


def is_command(name: str) -> bool:
    """Whether an implementation name is a `cmd:` port."""
    return isinstance(name, str) and name.startswith(PREFIX)


def parse_command(name: str) -> tuple[str, ...]:
    """The argument list of `cmd:COMMAND` (placeholders still in it), or an error saying what is wrong."""
    text = name[len(PREFIX):] if is_command(name) else name
    try:
        argv = tuple(shlex.split(text))
    except ValueError as exc:
        raise CommandError(f"--impl {name!r}: cannot split the command ({exc}); quote it as a shell would") from None
    if not argv:
        raise CommandError(f"--impl {name!r}: no command after 'cmd:'; e.g. "
                           "'cmd:python3 port.py {params} {batches} {trace}'")
    missing = [p for p in PLACEHOLDERS if not any(p in a for a in argv)]
    if missing:
        raise CommandError(f"--impl {name!r}: the command must say where its files go; it lacks "
                           f"{', '.join(missing)} (e.g. 'cmd:python3 port.py {{params}} {{batches}} {{trace}}')")
    return argv


def check_timeout(timeout: Any) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0 or timeout == float("inf"):
        raise CommandError(f"--impl-timeout {timeout!r}: give a positive number of seconds")
    return float(timeout)


@dataclass(frozen=True)
class CommandTarget:
    """A `cmd:` port as the registry holds it: the command, and how long one run of it may take."""

    name: str
    argv: tuple[str, ...]
    timeout: float = DEFAULT_TIMEOUT

    @classmethod
    def parse(cls, name: str, timeout: float | None = None) -> CommandTarget:
        return cls(name, parse_command(name), DEFAULT_TIMEOUT if timeout is None else check_timeout(timeout))

    def make(self, spec: NetSpec, params: Mapping[str, Any]) -> CommandNet:
        extra = {k: v for k, v in spec.variant.changes().items() if k != "loss_reduction"}
        if extra:
            raise CommandError(f"{self.name}: a port runs as it is written; memstate cannot switch on the variant "
                               f"{', '.join(f'{k}={v}' for k, v in extra.items())} in it (plant the bug in the port, "
                               "or use it on a Python implementation)")
        return CommandNet(self, spec, params)

    def missing_program(self) -> str | None:
        """Why the command cannot start here (its program is not found), or None."""
        prog = self.argv[0]
        if os.sep in prog or (os.altsep and os.altsep in prog):
            return None if os.access(prog, os.X_OK) and Path(prog).is_file() else f"{prog}: no such executable file"
        return None if shutil.which(prog) else f"{prog}: not found on PATH"


@dataclass
class PortRun:
    """One finished run of the command: the port's header meta and its steps, read and checked as they stream.

    Iterating yields the port's steps in order; at the end the `net`'s parameters become the last step's
    updated parameters. Close it (or use `with`) to remove the temporary files.
    """

    net: CommandNet
    folder: Path
    trace: Path
    steps: tuple[int, ...]
    meta: dict[str, Any]
    seconds: float
    stderr: str
    _keep: bool = field(default=False, repr=False)

    def fail(self, what: str) -> CommandError:
        self._keep = True
        tail = f"; its stderr ends:\n{_indent(self.stderr)}" if self.stderr.strip() else "; it wrote nothing on stderr"
        return CommandError(f"{self.net.target.name}: {what} (files kept in {self.folder}){tail}")

    def __iter__(self) -> Iterator[Step]:
        want = list(self.steps)
        last: Step | None = None
        done = 0
        try:
            with open_trace(self.trace) as reader:
                for step in reader:
                    if done >= len(want) or step.index != want[done]:
                        extra = f"step {step.index}" + (f" where step {want[done]} was due" if done < len(want)
                                                         else f" after the last step asked for ({want[-1]})")
                        raise self.fail(f"its trace has {extra}; a port writes back exactly the step numbers of "
                                        "the batches file")
                    last, done = step, done + 1
                    yield step
                if done < len(want):
                    cut = " (the next one is incomplete: no terminator)" if reader.incomplete is not None else ""
                    raise self.fail(f"its trace stops before step {want[done]}: it has {done} of the {len(want)} "
                                    f"steps asked for{cut}")
        except FormatError as exc:
            raise self.fail(f"its trace is not a valid memstate trace: {exc}") from None
        self.net.after_run(last)

    def close(self) -> None:
        if not self._keep:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> PortRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CommandNet:
    """A network that is a program: `call` runs it on some steps from the current parameters."""

    def __init__(self, target: CommandTarget, spec: NetSpec, params: Mapping[str, Any]):
        self.target, self.spec = target, spec
        self._params = {k: np.array(v) for k, v in params.items()}
        self._no_params: str | None = None  # why the parameters after the last run are unknown
        self._next = 0  # the step number train_step uses

    def params(self) -> dict[str, np.ndarray]:
        """The parameters now: the start ones, or the updated ones the last run's last step recorded."""
        if self._no_params:
            raise CommandError(self._no_params)
        return {k: v.copy() for k, v in self._params.items()}

    def set_params(self, params: Mapping[str, Any]) -> None:
        self._params, self._no_params = {k: np.array(v) for k, v in params.items()}, None

    def call(self, batches: Sequence[StepBatch], settings: Mapping[str, Any]) -> PortRun:
        """Run the command once on `batches` from the current parameters; the returned run streams its steps."""
        if self._no_params:
            raise CommandError(self._no_params)
        folder = Path(tempfile.mkdtemp(prefix="memstate-cmd-"))
        files = {"params": folder / "start.params.json", "batches": folder / "batches.jsonl",
                 "trace": folder / "port.memstate.jsonl"}
        write_params(files["params"], self._params, meta={"writer": "memstate", "for": self.target.name})
        write_batches(files["batches"], settings, batches)
        argv = [_fill(a, files) for a in self.target.argv]
        seconds, rc, stderr = _execute(argv, folder, self.target.timeout, self.target.name)
        run = PortRun(self, folder, files["trace"], tuple(b.step for b in batches), {}, seconds, stderr)
        if rc is None:
            raise run.fail(f"timed out after {self.target.timeout:g}s (--impl-timeout) and was stopped")
        if rc != 0:
            raise run.fail(f"the command {shlex.join(argv)} exited with status {rc}")
        if not files["trace"].exists():
            raise run.fail(f"the command exited with status 0 but wrote no trace at {{trace}} ({files['trace']})")
        try:
            with open_trace(files["trace"]) as reader:
                run.meta = dict(reader.meta)
        except FormatError as exc:
            raise run.fail(f"its trace is not a valid memstate trace: {exc}") from None
        return run

    def after_run(self, last: Step | None) -> None:
        """Continue from the updated parameters of the run's last step, or remember why that is impossible."""
        if last is None:
            return
        try:
            self._params = self.updated_params(last)
        except CommandError as exc:
            self._no_params = str(exc)

    def updated_params(self, step: Step) -> dict[str, np.ndarray]:
        """The updated parameters a step of the port's trace records under the canonical names, checked."""
        names = param_names(self.spec.n_layers)
        absent = [n for n in names if n not in step.tensors]
        if absent:
            raise CommandError(f"{self.target.name}: its trace records no {absent[0]} in step {step.index}; memstate "
                               f"needs the updated parameters under the canonical names {', '.join(names)} in the "
                               "last step of every run to continue from them (checkpoint runs, bisect). Record them "
                               "so (a port that keeps its own names needs a layout map, which bisect cannot apply)")
        new = {n: np.array(step.tensors[n]) for n in names}
        for n in names:
            if new[n].shape != self._params[n].shape:
                raise CommandError(f"{self.target.name}: step {step.index} records {n} with shape {list(new[n].shape)}"
                                   f", but the parameters are {list(self._params[n].shape)} (canonical layout: W "
                                   "[fan_in, fan_out], b [fan_out])")
        return new

    # -- the one-step interface of every implementation (docs/implementations.md)
    def train_step(self, x: Any, labels: Any, lr: float, record: Any) -> float:
        """One step in one run of the command (numbered from 0 in calls to this method)."""
        settings = {"scenario": None, "layers": list(self.spec.layers), "activation": self.spec.activation,
                    "loss_reduction": self.spec.loss_reduction, "learning_rate": float(lr),
                    "dtype": self.spec.dtype, "batch_size": int(np.shape(x)[0])}
        loss = float("nan")
        with self.call([StepBatch(self._next, np.asarray(x), np.asarray(labels))], settings) as run:
            for step in run:
                for name, value in step.tensors.items():
                    record(name, value)
                loss = step_loss(step)
        self._next += 1
        return loss

    def logits(self, x: Any) -> Any:
        raise CommandError(f"{self.target.name}: a port has no forward pass memstate can call, so there is no "
                           "test accuracy (run with evaluation off)")


def step_loss(step: Step) -> float:
    """The loss the port recorded in a step, or nan when it records none."""
    loss = step.tensors.get("loss")
    return float(np.asarray(loss, dtype=np.float64).reshape(-1)[0]) if loss is not None and loss.size == 1 else \
        float("nan")


def _fill(arg: str, files: Mapping[str, Path]) -> str:
    for key, path in files.items():
        arg = arg.replace("{" + key + "}", str(path))
    return arg


def _execute(argv: list[str], folder: Path, timeout: float, name: str) -> tuple[float, int | None, str]:
    """Run `argv` (no shell), stdout and stderr to files in `folder`; (seconds, exit status or None on timeout,
    the tail of stderr, else of stdout). A timeout stops the command's whole process group."""
    out, err = folder / "stdout.txt", folder / "stderr.txt"
    began = time.perf_counter()
    with open(out, "wb") as fo, open(err, "wb") as fe:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fo, stderr=fe, start_new_session=True)
        except OSError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            raise CommandError(f"{name}: cannot start {argv[0]!r}: {exc.strerror or exc}; check the command "
                               "(it runs without a shell, from the current directory)") from None
        try:
            rc: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(proc)
            rc = None
        except BaseException:  # interrupted (Ctrl-C): the port runs in its own session, so stop it too
            _stop(proc)
            raise
    seconds = time.perf_counter() - began
    tail = _tail(err) or _tail(out)
    return seconds, rc, tail


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        proc.kill()
    proc.wait()


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - TAIL_CHARS))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-TAIL_LINES:])


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.rstrip().splitlines())


__all__ = ["CommandError", "CommandNet", "CommandTarget", "DEFAULT_TIMEOUT", "PortRun", "PREFIX", "check_timeout",
           "is_command", "parse_command", "step_loss"]

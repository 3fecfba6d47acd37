"""Run an implementation on a scenario and record its memstate trace: the harness every CLI command uses.

The harness owns what is not maths (data, batch schedule, parameter loading, evaluation, progress);
the implementation owns one training step and records its own tensors.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from memstate.errors import FormatError, MemstateError, ScenarioError
from memstate.runner.batches import StepBatch
from memstate.runner.command import CommandNet, step_loss
from memstate.runner.dataset import Dataset, prepare_data
from memstate.runner.initparams import scenario_params
from memstate.names import param_names
from memstate.formats.recorder import Recorder
from memstate.runner.registry import Implementation, get_impl
from memstate.runner.evaluation import loss_and_accuracy
from memstate.runner.scenario import Batch, Scenario, is_evaluation, iter_batches
from memstate.runner.stopping import Evaluation, Stop, decide
from memstate.runner.variants import Variant


@dataclass(frozen=True)
class Progress:
    """What a long run reports as it goes: passed to the `progress` callback."""

    step: int
    total: int
    loss: float
    test_accuracy: float | None = None


@dataclass(frozen=True)
class RunResult:
    impl: str
    scenario: str
    steps: int
    trace: Path | None
    losses: tuple[float, ...]
    evaluations: tuple[tuple[int, float], ...]  # (steps done, test accuracy)
    seconds: float  # training and recording only: evaluation is timed apart
    meta: dict[str, Any] = field(default_factory=dict)
    eval_seconds: float = 0.0
    training: tuple[Evaluation, ...] = ()  # the training view's evaluations (scenarios with one: docs/training.md)
    stop: Stop | None = None  # the rule that stopped the run, if one did

    @property
    def final_test_accuracy(self) -> float | None:
        return self.evaluations[-1][1] if self.evaluations else None


def evaluate_params(params: Mapping[str, Any], dataset: Dataset, activation: str, step: int,
                    train_loss: float) -> Evaluation:
    """The training view's figures after `step`: `train_loss` as given (the mean of the batch losses since the
    last evaluation), the accuracies and the validation loss by memstate's float64 forward pass on `params`."""
    train = (train_loss, loss_and_accuracy(params, dataset.train_x, dataset.train_y, activation)[1])
    val: tuple[float | None, float | None] = (None, None)
    if dataset.validation_x is not None and dataset.validation_y is not None and len(dataset.validation_y):
        val = loss_and_accuracy(params, dataset.validation_x, dataset.validation_y, activation)
    test = loss_and_accuracy(params, dataset.test_x, dataset.test_y, activation)[1] if len(dataset.test_y) else None
    return Evaluation(step, train[0], train[1], val[0], val[1], test)


EVAL_NAMES = ("train_loss", "train_accuracy", "validation_loss", "validation_accuracy", "test_accuracy")


def record_evaluation(record: Callable[[str, Any], None], ev: Evaluation, stop: Stop | None) -> None:
    """eval.* (0-d float64, the figures present) then, when a rule fired, stop.RULE (docs/training.md)."""
    for name in EVAL_NAMES:
        value = getattr(ev, name)
        if value is not None:
            record(f"eval.{name}", np.float64(value))
    if stop is not None:
        record(f"stop.{stop.rule}", np.float64(stop.value))


def check_params(params: Mapping[str, np.ndarray], scenario: Scenario, source: str) -> dict[str, np.ndarray]:
    """The parameters in the scenario's order and dtype, or an error naming the tensor that does not fit."""
    layers = scenario.model.layers
    out: dict[str, np.ndarray] = {}
    names = param_names(len(layers) - 1)
    unknown = [n for n in params if n not in names]
    if unknown:
        raise FormatError(source, f"has tensors scenario {scenario.name} (layers {list(layers)}) does not use: "
                                  f"{', '.join(map(repr, unknown))}; it needs exactly {', '.join(names)}: is it "
                                  "the params file of another network?")
    for name in param_names(len(layers) - 1):
        if name not in params:
            raise FormatError(source, f"missing; scenario {scenario.name} needs {', '.join(param_names(len(layers) - 1))}", tensor=name)
        i = int(name[1 : name.index(".")])
        want = (layers[i - 1], layers[i]) if name.endswith(".W") else (layers[i],)
        arr = np.asarray(params[name])
        if arr.shape != want:
            raise FormatError(
                source,
                f"has shape {list(arr.shape)} but scenario {scenario.name} (layers {list(layers)}) needs {list(want)}",
                tensor=name,
            )
        out[name] = arr.astype(scenario.dtype, copy=True)
    return out


def accuracy(logits: Any, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(np.asarray(logits, dtype=np.float64), axis=1) == labels))


def trace_meta(scenario: Scenario, impl: Implementation, variant: Variant, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    meta = {"impl": impl.name, **scenario.meta(), "variant": variant.changes(), **impl.meta}
    meta["loss_reduction"] = variant.loss_reduction or scenario.training.loss_reduction  # what this run computes
    meta["settings"] = scenario.settings(variant)  # how to train, for check and for ports (docs/format.md)
    meta.update(extra or {})
    return meta


def run(
    scenario: Scenario,
    impl: str | Implementation,
    *,
    params: Mapping[str, np.ndarray] | None = None,
    params_source: str = "params",
    steps: int | None = None,
    out: str | Path | None = None,
    variant: Variant | None = None,
    encoding: str | None = None,
    evaluate: bool = True,
    progress: Callable[[Progress], None] | None = None,
    checkpoint_every: int | None = None,
    impl_timeout: float | None = None,
) -> RunResult:
    """Train `impl` on `scenario`, recording every step to `out` (no trace when `out` is None).

    With `checkpoint_every=K` the trace at `out` is a checkpoint run instead (memstate.runner.checkpoint): loss and
    batch accuracy every step, the parameters at the start, every K steps and at the end.
    A `cmd:` implementation (memstate.runner.command; `impl_timeout`: seconds per run of its command) runs
    the whole trace in one run of its command, or one run per checkpoint interval, and is not evaluated.
    """
    impl = get_impl(impl, timeout=impl_timeout) if isinstance(impl, str) else impl
    variant = scenario.variant if variant is None else variant
    _check_dtype(scenario, impl)
    spec = scenario.net_spec(variant)
    start_params = check_params(scenario_params(scenario) if params is None else params, scenario, params_source)
    dataset = prepare_data(scenario.data)
    n_train = len(dataset.train_y)
    total = scenario.total_steps(n_train) if steps is None else steps
    if total < 1:
        raise ScenarioError(f"--steps {total}: need at least one step")
    net = impl.make(spec, start_params)
    lr = scenario.training.learning_rate
    meta = trace_meta(scenario, impl, variant, {"steps": total})
    if isinstance(net, CommandNet):
        return run_port(scenario, net, variant, start_params, meta, total, out=out, encoding=encoding,
                        progress=progress, checkpoint_every=checkpoint_every)
    checkpoints, recorder, meta = _open_sinks(scenario, meta, spec.n_layers, total, out=out, encoding=encoding,
                                              checkpoint_every=checkpoint_every)
    record = recorder.record if recorder is not None else (lambda name, value: None)
    losses: list[float] = []
    evaluations: list[tuple[int, float]] = []
    view = _TrainingView(scenario, dataset, total, batch_divisor=1 if spec.loss_reduction == "mean" else None)
    eval_seconds = 0.0
    began = time.perf_counter()
    try:
        for batch in iter_batches(scenario, n_train, total):
            x, labels = dataset.train_x[batch.indices], dataset.train_y[batch.indices]
            loss = _train_step(net, batch, x, labels, lr, view, checkpoints, recorder, record)
            losses.append(loss)
            done = batch.step + 1
            acc = None
            if evaluate and len(dataset.test_y) and is_evaluation(scenario, batch, n_train, total):
                acc, seconds = _timed_accuracy(net, dataset)
                evaluations.append((done, acc))
                eval_seconds += seconds
            if progress is not None:
                progress(Progress(done, total, loss, acc))
            if view.stop is not None:
                break
    finally:
        _close_sinks(checkpoints, recorder)
    return RunResult(
        impl=impl.name,
        scenario=scenario.name,
        steps=len(losses),
        trace=Path(out) if out is not None else None,
        losses=tuple(losses),
        evaluations=tuple(evaluations),
        seconds=time.perf_counter() - began - eval_seconds - view.seconds,
        meta=meta,
        eval_seconds=eval_seconds + view.seconds,
        training=tuple(view.evaluations),
        stop=view.stop,
    )


def _check_dtype(scenario: Scenario, impl: Implementation) -> None:
    """Refuse, with a message saying what to do, a scenario whose dtype `impl` cannot train in."""
    if scenario.dtype not in impl.dtypes:
        raise ScenarioError(
            f"implementation {impl.name!r} supports {', '.join(impl.dtypes)}, not {scenario.dtype} "
            f"(scenario {scenario.name}); pick another implementation or scenario"
        )


def _open_sinks(scenario: Scenario, meta: dict[str, Any], n_layers: int, total: int, *, out: str | Path | None,
                encoding: str | None, checkpoint_every: int | None) -> tuple[Any, Recorder | None, dict[str, Any]]:
    """Where `run` records to: a CheckpointWriter (with `checkpoint_every`), else a Recorder (with `out`), else
    nothing; returns (checkpoints, recorder, meta), meta being the checkpoint run's header when there is one."""
    checkpoints = None
    if checkpoint_every is not None:
        from memstate.runner.checkpoint import CheckpointWriter

        if out is None:
            raise ScenarioError("checkpoint_every needs an output path for the checkpoint run (-o RUN.memstate)")
        checkpoints = CheckpointWriter(out, meta, checkpoint_every, total, n_layers, encoding, scenario.path)
        meta = checkpoints.recorder_meta
    recorder = Recorder(out, meta=meta, encoding=encoding) if out is not None and checkpoints is None else None
    return checkpoints, recorder, meta


def _train_step(net: Any, batch: Batch, x: np.ndarray, labels: np.ndarray, lr: float, view: _TrainingView,
                checkpoints: Any, recorder: Recorder | None, record: Callable[[str, Any], None]) -> float:
    """One training step of `run`, recorded into whichever sink `_open_sinks` opened; returns its loss."""
    if checkpoints is not None:
        loss = checkpoints.train_step(net, batch.step, x, labels, lr, after=view.hook(net, batch))
    elif recorder is not None:
        with recorder.step(batch.step):
            loss = net.train_step(x, labels, lr, record)
            view.after(net, batch, loss, record)
    else:
        loss = net.train_step(x, labels, lr, record)
        view.after(net, batch, loss, record)
    return loss


def _timed_accuracy(net: Any, dataset: Dataset) -> tuple[float, float]:
    """Test-set accuracy of `net` and the seconds it took (kept out of the training time `run` reports)."""
    began = time.perf_counter()
    acc = accuracy(net.logits(dataset.test_x), dataset.test_y)
    return acc, time.perf_counter() - began


def _close_sinks(checkpoints: Any, recorder: Recorder | None) -> None:
    """Close whatever `_open_sinks` opened, also when training raised."""
    if recorder is not None:
        recorder.close()
    if checkpoints is not None:
        checkpoints.close()


def run_port(scenario: Scenario, net: CommandNet, variant: Variant, start: Mapping[str, np.ndarray],
             meta: dict[str, Any], total: int, *, out: str | Path | None, encoding: str | None,
             progress: Callable[[Progress], None] | None, checkpoint_every: int | None) -> RunResult:
    """`run` for a `cmd:` port: one run of its command for the whole trace, or one per checkpoint interval
    (each from the parameters the previous one ended with), re-recorded under the harness's header."""
    from memstate.runner.checkpoint import CheckpointWriter, check_every

    data = prepare_data(scenario.data)
    batches = [StepBatch(b.step, data.train_x[b.indices], data.train_y[b.indices])
               for b in iter_batches(scenario, len(data.train_y), total)]
    every = check_every(checkpoint_every) if checkpoint_every is not None else None
    if every is not None and out is None:
        raise ScenarioError("checkpoint_every needs an output path for the checkpoint run (-o RUN.memstate)")
    settings = scenario.settings(variant)
    sink: Any = None
    losses: list[float] = []
    began = time.perf_counter()
    try:
        for first in range(0, total, every or total):
            part = batches[first:first + (every or total)]
            with net.call(part, settings) as port:
                for step, batch in zip(port, part):
                    if sink is None:
                        meta = {**meta, "port": port.meta, "loss_recorded": "loss" in step.tensors}
                        sink = (Recorder(out, meta=meta, encoding=encoding) if every is None else
                                CheckpointWriter(out, meta, every, total, net.spec.n_layers, encoding, scenario.path)
                                ) if out is not None else None
                        meta = sink.recorder_meta if every is not None else meta
                    loss = step_loss(step)
                    if isinstance(sink, CheckpointWriter):
                        sink.record_step(step.index, step.tensors, loss, batch.labels, start,
                                         lambda s=step: net.updated_params(s))  # type: ignore[misc]
                    elif sink is not None:
                        with sink.step(step.index):
                            for name, value in step.tensors.items():
                                sink.record(name, value)
                    losses.append(loss)
                    if progress is not None:
                        progress(Progress(step.index + 1, total, loss))
    finally:
        if sink is not None:
            sink.close()
    return RunResult(impl=net.target.name, scenario=scenario.name, steps=len(losses),
                     trace=Path(out) if out is not None else None, losses=tuple(losses), evaluations=(),
                     seconds=time.perf_counter() - began, meta=meta)


class _TrainingView:
    """The harness's evaluations and stopping rules (docs/training.md), the same for every implementation."""

    def __init__(self, scenario: Scenario, dataset: Dataset, total: int, batch_divisor: int | None):
        self.scenario, self.dataset, self.total = scenario, dataset, total
        self.on = scenario.evaluates
        self.batch_divisor = batch_divisor  # None: a sum-reduced loss, divided by the batch size
        self.evaluations: list[Evaluation] = []
        self.stop: Stop | None = None
        self.seconds = 0.0
        self.losses: list[float] = []  # per-sample batch losses since the last evaluation

    def hook(self, net: Any, batch: Any) -> Callable[[Callable[[str, Any], None], float], bool]:
        """`after` for CheckpointWriter.train_step, which passes the recorder and the loss."""
        def after(record: Callable[[str, Any], None], loss: float) -> bool:
            return self.after(net, batch, loss, record)
        return after

    def after(self, net: Any, batch: Any, loss: float, record: Callable[[str, Any], None]) -> bool:
        """After a step: evaluate when due, record eval.* (and stop.RULE), and say whether the run stops."""
        if not self.on:
            return False
        self.losses.append(float(loss) / (self.batch_divisor or len(batch.indices)))
        if not is_evaluation(self.scenario, batch, len(self.dataset.train_y), self.total):
            return False
        began = time.perf_counter()
        with np.errstate(all="ignore"):
            train_loss = float(np.mean(self.losses))
        self.losses = []
        ev = evaluate_params(final_params(net), self.dataset, self.scenario.model.activation, batch.step,
                             train_loss)
        self.evaluations.append(ev)
        stop = decide(self.evaluations, self.scenario.training.stop)
        self.stop = replace(stop, epoch=batch.epoch + 1) if stop is not None else None
        record_evaluation(record, ev, self.stop)
        self.seconds += time.perf_counter() - began
        return self.stop is not None


def final_params(net: Any) -> dict[str, np.ndarray]:
    """An implementation's current parameters as float arrays (pure-Python ones return lists)."""
    return {k: np.asarray(v) for k, v in net.params().items()}


__all__ = ["Dataset", "Progress", "RunResult", "prepare_data", "check_params", "run", "MemstateError"]

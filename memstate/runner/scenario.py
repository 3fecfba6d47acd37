"""Scenario files: declarative TOML descriptions of a training run (data, model, training, variant).

A scenario names everything an implementation needs to reproduce a run, so that two implementations
given the same scenario and the same params file must produce the same trace.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import numpy as np

from memstate.errors import ScenarioError
from memstate.runner.data import BUNDLED_COUNT
from memstate.scenarios import SCENARIO_DIR
from memstate.runner.variants import Variant

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

ACTIVATIONS = ("relu", "sigmoid", "shifted-relu")
MAX_WIDTH = 1_000_000  # units in one layer
MAX_PARAMETERS = 100_000_000  # weights and biases together (800 MB in float64): checked before any allocation
MAX_LAYERS = 64
MAX_STEPS = 10**9
MAX_EPOCHS = 10**6
INITS = ("he", "xavier", "uniform(-1,1)", "uniform(0,1)", "zeros")
DTYPES = ("float64", "float32")


@dataclass(frozen=True)
class DataSpec:
    """Where the digits come from and how they are prepared."""

    source: str = "bundled"  # "bundled" (the shipped 10,000 digits) or "idx" (MNIST IDX files)
    idx_dir: str | None = None
    crop: int = 0
    size: int = 14
    binarize: bool = True
    normalize: str = "unit"
    train: int = 2000
    test: int = 500
    shuffle_seed: int = 0
    validation: int = 0  # the last `validation` samples of the training split, held out (docs/training.md)


@dataclass(frozen=True)
class ModelSpec:
    layers: tuple[int, ...] = (196, 32, 10)
    activation: str = "relu"
    init: str = "he"
    init_seed: int = 0


@dataclass(frozen=True)
class EarlyRule:
    """Stop when the training loss is below the validation loss at `patience` consecutive evaluations."""

    patience: int = 5


@dataclass(frozen=True)
class PlateauRule:
    """Stop when the std of the last `window` evaluations' training losses is below `threshold` x their mean."""

    window: int = 10
    threshold: float = 0.001


@dataclass(frozen=True)
class StopSpec:
    """The `[training.stop]` rules; a rule is on when its table is present (docs/training.md)."""

    early: EarlyRule | None = None
    plateau: PlateauRule | None = None

    @property
    def active(self) -> bool:
        return self.early is not None or self.plateau is not None

    def meta(self) -> dict[str, Any]:
        """The rules for a trace header: {"early": {"patience": 5}, ...}, only those that are on."""
        out: dict[str, Any] = {}
        if self.early is not None:
            out["early"] = {"patience": self.early.patience}
        if self.plateau is not None:
            out["plateau"] = {"window": self.plateau.window, "threshold": self.plateau.threshold}
        return out


@dataclass(frozen=True)
class TrainingSpec:
    steps: int | None = None
    epochs: int | None = None
    batch_size: int = 8
    batch_size_cap: int | None = None  # when set, the batch size doubles each epoch up to this cap
    learning_rate: float = 0.1
    loss_reduction: str = "mean"
    eval_every: int | str = 100  # steps between evaluations, or "epoch": at the end of every epoch
    stop: StopSpec = field(default_factory=StopSpec)


@dataclass(frozen=True)
class NetSpec:
    """What an implementation needs to build the network: no data, no schedule."""

    layers: tuple[int, ...]
    activation: str
    loss_reduction: str
    dtype: str
    variant: Variant = field(default_factory=Variant)

    @property
    def n_layers(self) -> int:
        return len(self.layers) - 1

    def check_batch(self, batch: int) -> None:
        """Refuse a batch the variant cannot honour: a wrong-axis bias gradient needs a layer as wide as the batch."""
        if self.variant.bias_grad_axis == "features" and batch not in self.layers[1:]:
            raise ScenarioError(
                f"bias_grad_axis = \"features\" needs a layer as wide as the batch ({batch}); "
                f"widths are {list(self.layers[1:])}: change the batch size or the variant"
            )


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    dtype: str
    data: DataSpec
    model: ModelSpec
    training: TrainingSpec
    variant: Variant
    path: Path | None = None
    sweep: tuple[str, ...] = ()  # [sweep] set = ["KEY=V1,V2", ...]: `memstate sweep`'s grid when no --set is given

    def net_spec(self, variant: Variant | None = None) -> NetSpec:
        """The network description, with `variant` (default: the scenario's) applied."""
        v = self.variant if variant is None else variant
        return NetSpec(
            layers=self.model.layers,
            activation=self.model.activation,
            loss_reduction=v.loss_reduction or self.training.loss_reduction,
            dtype=self.dtype,
            variant=v,
        )

    def meta(self) -> dict[str, Any]:
        """Scenario facts for a trace header."""
        return {
            "scenario": self.name,
            "dtype": self.dtype,
            "layers": list(self.model.layers),
            "activation": self.model.activation,
            "init": self.model.init,
            "learning_rate": self.training.learning_rate,
            "loss_reduction": self.training.loss_reduction,
            "batch_size": self.training.batch_size,
            **self.training_meta(),
        }

    def settings(self, variant: Variant | None = None) -> dict[str, Any]:
        """What a port in any language needs to train this network (a batches file's `meta.settings`,
        docs/format.md): the variant's loss reduction, when it overrides the scenario's, is what it computes."""
        v = self.variant if variant is None else variant
        return {
            "scenario": self.name,
            "layers": list(self.model.layers),
            "activation": self.model.activation,
            "loss_reduction": v.loss_reduction or self.training.loss_reduction,
            "learning_rate": self.training.learning_rate,
            "dtype": self.dtype,
            "batch_size": self.training.batch_size,
        }

    @property
    def evaluates(self) -> bool:
        """Whether runs record evaluations (eval.* tensors): a validation split or a stop rule asks for them."""
        return self.data.validation > 0 or self.training.stop.active

    def training_meta(self) -> dict[str, Any]:
        """Header keys of the training view, only when it is on (older traces' headers stay as they were)."""
        if not self.evaluates:
            return {}
        return {"validation": self.data.validation, "eval_every": self.training.eval_every,
                "stop": self.training.stop.meta()}

    def total_steps(self, n_train: int) -> int:
        """Steps the scenario asks for: `steps`, or every batch of `epochs` epochs."""
        if self.training.steps is not None:
            return self.training.steps
        return sum(n_train // self.batch_size_for_epoch(e) for e in range(self.training.epochs or 0))

    def batch_size_for_epoch(self, epoch: int) -> int:
        t = self.training
        if t.batch_size_cap is None:
            return t.batch_size
        return min(t.batch_size * 2**epoch, t.batch_size_cap)


@dataclass(frozen=True)
class Batch:
    step: int
    epoch: int
    indices: np.ndarray


def iter_batches(scenario: Scenario, n_train: int, steps: int | None = None) -> Iterator[Batch]:
    """The deterministic batch schedule: a fresh permutation per epoch, full batches only."""
    total = scenario.total_steps(n_train) if steps is None else steps
    step, epoch = 0, 0
    while step < total:
        size = scenario.batch_size_for_epoch(epoch)
        if size > n_train:
            raise ScenarioError(
                f"{scenario.name}: batch size {size} is larger than the {n_train} training samples"
            )
        order = np.random.default_rng([scenario.data.shuffle_seed, epoch]).permutation(n_train)
        for start in range(0, n_train - size + 1, size):
            if step >= total:
                return
            yield Batch(step, epoch, order[start : start + size])
            step += 1
        epoch += 1


def is_evaluation(scenario: Scenario, batch: Batch, n_train: int, total: int) -> bool:
    """Whether the harness evaluates after `batch`: every eval_every steps (or at each epoch's end), and last."""
    done = batch.step + 1
    every = scenario.training.eval_every
    if done == total:
        return True
    if every != "epoch":
        return done % int(every) == 0
    if scenario.training.batch_size_cap is None:
        return done % (n_train // scenario.training.batch_size) == 0
    return done == sum(n_train // scenario.batch_size_for_epoch(e) for e in range(batch.epoch + 1))


# ---------------------------------------------------------------- reading and validation

_SECTIONS: dict[str, type] = {"data": DataSpec, "model": ModelSpec, "training": TrainingSpec}
_OPTIONAL_KINDS: dict[str, Any] = {"idx_dir": "", "steps": 0, "epochs": 0, "batch_size_cap": 0}
_STOP_RULES: dict[str, type[DataclassInstance]] = {"early": EarlyRule, "plateau": PlateauRule}
_TOP_KEYS = ("description", "dtype", "data", "model", "training", "variant", "sweep")


def resolve_scenario_path(name_or_path: str | Path) -> Path:
    """A path to a .toml file, or a bundled scenario's name (e.g. `mnist14-relu`)."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise ScenarioError(f"{p}: no such scenario file")
        return p
    candidate = SCENARIO_DIR / f"{name_or_path}.toml"
    if candidate.is_file():
        return candidate
    known = ", ".join(list_scenarios()) or "(none found)"
    raise ScenarioError(f"no scenario named {str(name_or_path)!r}; bundled scenarios: {known}")


def list_scenarios() -> list[str]:
    """Names of the scenarios bundled under scenarios/."""
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))


def load_scenario(name_or_path: str | Path) -> Scenario:
    """Read and validate a scenario; every problem is a ScenarioError that names the key."""
    path = resolve_scenario_path(name_or_path)
    return scenario_from_table(read_toml(path), name=path.stem, path=path)


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file's table; anything that is not UTF-8 TOML of sane nesting is a ScenarioError naming the file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read the scenario file: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ScenarioError(f"{path}, line {line}: not UTF-8 text (byte {raw[exc.start]:#04x}); save the scenario "
                            "as UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:
        raise ScenarioError(f"{path}: not valid TOML: arrays or tables nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None


def scenario_from_table(table: Mapping[str, Any], name: str, path: Path | None = None) -> Scenario:
    """Build a validated Scenario from a parsed TOML table."""
    src = str(path) if path else name
    _reject_unknown(table.keys(), _TOP_KEYS, src, "")
    description = table.get("description")
    if not isinstance(description, str) or not description.strip():
        raise ScenarioError(f"{src}: 'description' is required: one line saying what the scenario shows")
    dtype = table.get("dtype", "float64")
    if dtype not in DTYPES:
        raise ScenarioError(f"{src}: dtype = {dtype!r} is not one of {', '.join(DTYPES)}")
    sections: dict[str, Any] = {}
    for key, cls in _SECTIONS.items():
        section = table.get(key, {})
        sections[key] = _training(section, src) if key == "training" else _build(cls, section, src, key)
    variant_table = table.get("variant", {})
    if not isinstance(variant_table, dict):
        raise ScenarioError(f"{src}: [variant] must be a table")
    variant = Variant.from_mapping(variant_table, f"{src} [variant]")
    scenario = Scenario(name, description.strip(), dtype, sections["data"], sections["model"],
                        sections["training"], variant, path, _sweep(table.get("sweep", {}), src))
    _validate(scenario, src)
    return scenario


def _reject_unknown(keys: Any, known: tuple[str, ...] | list[str], src: str, prefix: str) -> None:
    for key in keys:
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            tip = f"; did you mean {prefix + hint[0]!r}?" if hint else f"; known keys: {', '.join(known)}"
            raise ScenarioError(f"{src}: unknown key {prefix + key!r}{tip}")


def _sweep(section: Any, src: str) -> tuple[str, ...]:
    """[sweep] set = ["training.batch_size=8,32,64", ...]: the grid `memstate sweep` runs by default."""
    if not isinstance(section, dict):
        raise ScenarioError(f"{src}: [sweep] must be a table, e.g. set = [\"training.batch_size=8,32,64\"]")
    _reject_unknown(section.keys(), ["set"], src, "sweep.")
    sets = section.get("set", [])
    if not isinstance(sets, list) or not all(isinstance(x, str) and "=" in x for x in sets):
        raise ScenarioError(f"{src}: sweep.set must be a list of \"KEY=V1,V2,...\" strings, got {sets!r}")
    return tuple(sets)


def _training(section: Any, src: str) -> TrainingSpec:
    """[training], with its `stop` sub-table built into a StopSpec and `eval_every = "epoch"` let through."""
    if not isinstance(section, dict):
        raise ScenarioError(f"{src}: [training] must be a table")
    plain = dict(section)
    stop = plain.pop("stop", StopSpec())
    every = plain.pop("eval_every") if plain.get("eval_every") == "epoch" else None
    if isinstance(plain.get("eval_every"), str):
        raise ScenarioError(f"{src}: training.eval_every = {plain['eval_every']!r} must be a number of steps "
                            "or \"epoch\"")
    if not isinstance(stop, StopSpec):
        if not isinstance(stop, dict):
            raise ScenarioError(f"{src}: [training.stop] must be a table holding [training.stop.early] and/or "
                                "[training.stop.plateau]")
        _reject_unknown(stop.keys(), list(_STOP_RULES), src, "training.stop.")
        stop = StopSpec(**{name: _build(_STOP_RULES[name], value, src, f"training.stop.{name}")
                           for name, value in stop.items()})
    spec = _build(TrainingSpec, plain, src, "training")
    return replace(spec, stop=stop, **({"eval_every": every} if every else {}))


def _build(cls: type[DataclassInstance], table: Any, src: str, section: str) -> Any:
    if not isinstance(table, dict):
        raise ScenarioError(f"{src}: [{section}] must be a table")
    fields = cls.__dataclass_fields__
    _reject_unknown(table.keys(), list(fields), src, f"{section}.")
    values = {}
    for key, value in table.items():
        default = fields[key].default
        if default is None:
            default = _OPTIONAL_KINDS[key]
        values[key] = _coerce(value, default, f"{src}: {section}.{key}")
    return cls(**values)


def _coerce(value: Any, default: Any, where: str) -> Any:
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ScenarioError(f"{where} must be a list of integers, got {value!r}")
        return tuple(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ScenarioError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ScenarioError(f"{where} must be a number, got {value!r}")
        return float(value)
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ScenarioError(f"{where} must be an integer, got {value!r}")
        return value
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ScenarioError(f"{where} must be a string, got {value!r}")
        return value
    raise AssertionError(where)


def _validate_stop(stop: StopSpec, validation: int, need: Any) -> None:
    if stop.early is not None:
        need(stop.early.patience >= 1, "training.stop.early.patience", f"= {stop.early.patience} must be at least 1")
        need(validation > 0, "training.stop.early",
             "compares the training loss with the validation loss: set data.validation to the number of "
             "training samples to hold out (e.g. 200)")
    if stop.plateau is not None:
        p = stop.plateau
        need(p.window >= 2, "training.stop.plateau.window", f"= {p.window} must be at least 2")
        need(p.threshold > 0 and np.isfinite(p.threshold), "training.stop.plateau.threshold",
             f"= {p.threshold} must be a positive number")


def _validate(s: Scenario, src: str) -> None:
    d, m, t = s.data, s.model, s.training

    def need(ok: bool, key: str, why: str) -> None:
        if not ok:
            raise ScenarioError(f"{src}: {key} {why}")

    need(d.source in ("bundled", "idx"), "data.source", f"= {d.source!r} must be \"bundled\" or \"idx\"")
    need(d.source != "idx" or bool(d.idx_dir), "data.idx_dir", "is required when data.source = \"idx\"")
    need(0 <= d.crop < 14, "data.crop", f"= {d.crop} must be from 0 to 13 pixels")
    side = 28 - 2 * d.crop
    need(1 <= d.size <= side and side % d.size == 0, "data.size",
         f"= {d.size} must divide the cropped side {side} (28 - 2*crop)")
    need(d.normalize in ("unit", "standard"), "data.normalize", f"= {d.normalize!r} must be \"unit\" or \"standard\"")
    need(d.train >= 1, "data.train", f"= {d.train} must be at least 1")
    need(d.test >= 0, "data.test", f"= {d.test} must not be negative")
    need(d.shuffle_seed >= 0, "data.shuffle_seed", f"= {d.shuffle_seed} must not be negative")
    need(d.source != "bundled" or d.train + d.test <= BUNDLED_COUNT, "data.train",
         f"+ data.test = {d.train} + {d.test} asks for more than the {BUNDLED_COUNT} bundled digits")
    need(2 <= len(m.layers) <= MAX_LAYERS + 1 and all(1 <= n <= MAX_WIDTH for n in m.layers), "model.layers",
         f"= {list(m.layers)} needs an input and an output size and at most {MAX_LAYERS} layers, each from 1 to "
         f"{MAX_WIDTH} wide")
    weights = sum((a + 1) * b for a, b in zip(m.layers[:-1], m.layers[1:]))
    need(weights <= MAX_PARAMETERS, "model.layers", f"= {list(m.layers)} has {weights} parameters; at most "
         f"{MAX_PARAMETERS} are allowed")
    need(m.init_seed >= 0, "model.init_seed", f"= {m.init_seed} must not be negative")
    need(m.layers[0] == d.size * d.size, "model.layers",
         f"starts with {m.layers[0]} but the data has {d.size}x{d.size} = {d.size * d.size} inputs")
    need(m.layers[-1] == 10, "model.layers", f"ends with {m.layers[-1]}; digits need 10 outputs")
    need(m.activation in ACTIVATIONS, "model.activation", f"= {m.activation!r} must be one of {', '.join(ACTIVATIONS)}")
    need(m.init in INITS, "model.init", f"= {m.init!r} must be one of {', '.join(INITS)}")
    need((t.steps is None) != (t.epochs is None), "training", "needs exactly one of steps or epochs")
    need(t.steps is None or 1 <= t.steps <= MAX_STEPS, "training.steps", f"= {t.steps} must be from 1 to {MAX_STEPS}")
    need(t.epochs is None or 1 <= t.epochs <= MAX_EPOCHS, "training.epochs",
         f"= {t.epochs} must be from 1 to {MAX_EPOCHS}")
    need(1 <= t.batch_size <= d.train, "training.batch_size", f"= {t.batch_size} must be from 1 to data.train ({d.train})")
    need(t.batch_size_cap is None or t.batch_size <= t.batch_size_cap <= d.train, "training.batch_size_cap",
         f"= {t.batch_size_cap} must be from batch_size to data.train")
    need(t.learning_rate > 0 and np.isfinite(t.learning_rate), "training.learning_rate",
         f"= {t.learning_rate} must be a positive number")
    need(t.loss_reduction in ("mean", "sum"), "training.loss_reduction", f"= {t.loss_reduction!r} must be \"mean\" or \"sum\"")
    need(t.eval_every == "epoch" or int(t.eval_every) >= 1, "training.eval_every",
         f"= {t.eval_every} must be at least 1 (or \"epoch\")")
    need(0 <= d.validation < d.train, "data.validation",
         f"= {d.validation} must be from 0 to data.train - 1 ({d.train - 1}): it is held out of the training split")
    need(t.batch_size <= d.train - d.validation, "training.batch_size",
         f"= {t.batch_size} is larger than the {d.train - d.validation} training samples left after "
         f"data.validation = {d.validation}")
    _validate_stop(t.stop, d.validation, need)
    _validate_variant(s, src)


def _validate_variant(s: Scenario, src: str) -> None:
    """What the scenario's [variant] needs of its network: checked here so every command refuses it alike."""
    m = s.model
    if s.variant.dtype_mix is not None:
        layer = int(s.variant.dtype_mix[1:])
        if not 1 <= layer <= len(m.layers) - 1:
            raise ScenarioError(f"{src}: variant.dtype_mix = {s.variant.dtype_mix!r} names no layer of this "
                                f"{len(m.layers) - 1}-layer network")
    sizes = {s.batch_size_for_epoch(e) for e in range(64) if s.batch_size_for_epoch(e) <= s.data.train}
    spec = s.net_spec()
    for size in sorted(sizes):
        try:
            spec.check_batch(size)
        except ScenarioError as exc:
            raise ScenarioError(f"{src}: {exc}") from None

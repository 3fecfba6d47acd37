"""Scenario files: declarative TOML descriptions of a training run (data, model, training, variant).

A scenario names everything an implementation needs to reproduce a run, so that two implementations
given the same scenario and the same params file must produce the same trace.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from memstate.errors import ScenarioError
from memstate.runner.data import BUNDLED_COUNT
from memstate.scenarios import SCENARIO_DIR
from memstate.runner.variants import Variant

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


@dataclass(frozen=True)
class ModelSpec:
    layers: tuple[int, ...] = (196, 32, 10)
    activation: str = "relu"
    init: str = "he"
    init_seed: int = 0


@dataclass(frozen=True)
class TrainingSpec:
    steps: int | None = None
    epochs: int | None = None
    batch_size: int = 8
    batch_size_cap: int | None = None  # when set, the batch size doubles each epoch up to this cap
    learning_rate: float = 0.1
    loss_reduction: str = "mean"
    eval_every: int = 100


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
        }

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


# ---------------------------------------------------------------- reading and validation

_SECTIONS: dict[str, type] = {"data": DataSpec, "model": ModelSpec, "training": TrainingSpec}
_OPTIONAL_KINDS: dict[str, Any] = {"idx_dir": "", "steps": 0, "epochs": 0, "batch_size_cap": 0}
_TOP_KEYS = ("description", "dtype", "data", "model", "training", "variant")


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
    sections = {}
    for key, cls in _SECTIONS.items():
        sections[key] = _build(cls, table.get(key, {}), src, key)
    variant_table = table.get("variant", {})
    if not isinstance(variant_table, dict):
        raise ScenarioError(f"{src}: [variant] must be a table")
    variant = Variant.from_mapping(variant_table, f"{src} [variant]")
    scenario = Scenario(name, description.strip(), dtype, sections["data"], sections["model"],
                        sections["training"], variant, path)
    _validate(scenario, src)
    return scenario


def _reject_unknown(keys: Any, known: tuple[str, ...] | list[str], src: str, prefix: str) -> None:
    for key in keys:
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            tip = f"; did you mean {prefix + hint[0]!r}?" if hint else f"; known keys: {', '.join(known)}"
            raise ScenarioError(f"{src}: unknown key {prefix + key!r}{tip}")


def _build(cls: type, table: Any, src: str, section: str) -> Any:
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
    need(t.eval_every >= 1, "training.eval_every", f"= {t.eval_every} must be at least 1")
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

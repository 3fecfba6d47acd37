"""Layout maps: where a foreign port keeps each canonical tensor, and turning its steps into canonical ones.

A port written outside memstate records its own names in its own layout (samples as columns, W as
[fan_out, fan_in], biases as [n, 1] columns or folded into W, dz not yet divided by the batch size). A layout
map (docs/ports.md) says, per canonical name, which port tensor holds it and how to get there:
`from` -> `index` (numpy basic indexing, parsed, never eval'd) -> `transpose` -> reshape to the canonical
shape when only size-1 axes differ -> `scale` (a number, "B" or "1/B"; B = the step's batch size).

Everything here is pure: `parse_map` validates a TOML/JSON document into a frozen `LayoutMap`, `apply_map`
maps one step's tensors. `read_map` is the thin file-reading shell. Canonical traces never pass through
here: a trace is only mapped when a map is given or its header carries one (`meta.map`).
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from memstate.errors import MemstateError
from memstate.names import canonical_names

CANONICAL = re.compile(r"^(x|y|probs|loss|L([1-9][0-9]*)\.(z|a|dz|da|W|b|dW|db))$")
BATCHES = ("rows", "columns")
WEIGHTS = ("in,out", "out,in")
ENTRY_KEYS = ("from", "index", "transpose", "scale")
_INT = re.compile(r"^-?[0-9]+$")

IndexItem = int | slice


class MapError(MemstateError):
    """A layout map that is malformed, or that does not fit the trace it is applied to."""


@dataclass(frozen=True)
class Entry:
    """One canonical tensor: taken from port tensor `source`, indexed, transposed, reshaped and scaled."""

    name: str
    source: str
    index: tuple[IndexItem, ...] | None = None
    index_text: str | None = None
    transpose: bool | None = None  # None: from the map's [layout]
    scale: float | str | None = None  # a number, "B" or "1/B"

    def describe(self) -> str:
        """`L1.b <- W1[0, :]`: for messages."""
        idx = f"[{self.index_text}]" if self.index_text is not None else ""
        return f"{self.name} <- {self.source}{idx}"


@dataclass(frozen=True)
class LayoutMap:
    """A validated layout map; `source` names where it came from (a file, or a trace header) for messages."""

    batch: str = "rows"
    weights: str = "in,out"
    entries: tuple[Entry, ...] = ()
    ignore: tuple[str, ...] = ()
    source: str = "layout map"
    _sources: frozenset[str] = field(default=frozenset(), compare=False, repr=False)
    _targets: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_sources", frozenset(e.source for e in self.entries))
        object.__setattr__(self, "_targets", frozenset(e.name for e in self.entries))

    def to_dict(self) -> dict[str, Any]:
        """The map as the JSON a trace header carries under `meta.map` (and `parse_map` reads back)."""
        tensors: dict[str, Any] = {}
        for e in self.entries:
            t: dict[str, Any] = {"from": e.source}
            if e.index_text is not None:
                t["index"] = e.index_text
            if e.transpose is not None:
                t["transpose"] = e.transpose
            if e.scale is not None:
                t["scale"] = e.scale
            tensors[e.name] = t
        doc: dict[str, Any] = {"layout": {"batch": self.batch, "weights": self.weights}, "tensors": tensors}
        if self.ignore:
            doc["ignore"] = list(self.ignore)
        return doc

    def to_toml(self, comments: Mapping[str, str] | None = None) -> str:
        """The map as TOML text; `comments` adds a `# ...` line above an entry (by canonical name)."""
        comments = comments or {}
        lines = []
        if self.ignore:
            lines += [f"ignore = [{', '.join(json.dumps(n) for n in self.ignore)}]", ""]
        lines += ["[layout]", f'batch = "{self.batch}"', f'weights = "{self.weights}"']
        for name, t in self.to_dict()["tensors"].items():
            lines.append("")
            if name in comments:
                lines += [f"# {line}" for line in comments[name].splitlines()]
            lines.append(f"[tensors.{json.dumps(name)}]")
            for key, value in t.items():
                lines.append(f"{key} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else
                                                         "inf" if value > 0 else "-inf")
    return json.dumps(value)


# ---------------------------------------------------------------- parsing

def read_map(path: str | os.PathLike) -> LayoutMap:
    """Read and validate a TOML layout map file (docs/ports.md)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MapError(f"{p}: no such map file; check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MapError(f"{p}: cannot read the map file: {exc}") from None
    return parse_map_text(text, str(p))


def parse_map_text(text: str, source: str = "layout map") -> LayoutMap:
    """Validate TOML text as a layout map."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MapError(f"{source}: not valid TOML: {exc}") from None
    return parse_map(doc, source)


def parse_map(doc: Any, source: str = "layout map") -> LayoutMap:
    """Validate a layout map document (the TOML file's tables, or a header's `meta.map` JSON object)."""
    if not isinstance(doc, Mapping):
        raise MapError(f"{source}: a layout map is a table (JSON object) with [layout], [tensors] and ignore")
    unknown = [k for k in doc if k not in ("layout", "tensors", "ignore")]
    if unknown:
        raise MapError(f"{source}: unknown key {unknown[0]!r}; a map has [layout], [tensors.\"NAME\"] tables and "
                       "ignore = [...] (put ignore before the first table in TOML)")
    batch, weights = _layout(doc.get("layout", {}), source)
    ignore = _ignore(doc.get("ignore", []), source)
    tensors = doc.get("tensors", {})
    if not isinstance(tensors, Mapping):
        raise MapError(f"{source}: tensors must be a table of [tensors.\"CANONICAL_NAME\"] entries")
    entries = tuple(_entry(name, spec, source) for name, spec in tensors.items())
    for e in entries:
        if e.source in ignore:
            raise MapError(f"{source}: tensors.{e.name}: port tensor {e.source!r} is both mapped and in ignore; "
                           "remove it from ignore")
    return LayoutMap(batch, weights, entries, ignore, source)


def _layout(spec: Any, source: str) -> tuple[str, str]:
    if not isinstance(spec, Mapping):
        raise MapError(f"{source}: [layout] must be a table with batch and weights")
    for key in spec:
        if key not in ("batch", "weights"):
            raise MapError(f"{source}: layout.{key}: unknown key; [layout] has batch and weights")
    batch = spec.get("batch", "rows")
    if batch not in BATCHES:
        raise MapError(f"{source}: layout.batch = {batch!r}: write \"rows\" (canonical [B, n]) or \"columns\" ([n, B])")
    weights = spec.get("weights", "in,out")
    norm = weights.replace(" ", "") if isinstance(weights, str) else weights
    if norm not in WEIGHTS:
        raise MapError(f"{source}: layout.weights = {weights!r}: write \"in,out\" (canonical [fan_in, fan_out]) "
                       "or \"out,in\"")
    return batch, norm


def _ignore(spec: Any, source: str) -> tuple[str, ...]:
    if not isinstance(spec, list) or not all(isinstance(n, str) and n for n in spec):
        raise MapError(f"{source}: ignore must be a list of port tensor names, e.g. ignore = [\"h1\"]")
    return tuple(spec)


def _entry(name: str, spec: Any, source: str) -> Entry:
    where = f"{source}: tensors.{name}"
    if not CANONICAL.match(name):
        raise MapError(f"{where}: {name!r} is not a canonical name (x, y, L<i>.z, L<i>.a, probs, loss, L<i>.dz, "
                       "L<i>.dW, L<i>.db, L<i>.da, L<i>.W, L<i>.b; docs/format.md section 4)")
    if not isinstance(spec, Mapping):
        raise MapError(f"{where}: must be a table with from, index, transpose, scale")
    for key in spec:
        if key not in ENTRY_KEYS:
            raise MapError(f"{where}: unknown key {key!r}; an entry has {', '.join(ENTRY_KEYS)}")
    src = spec.get("from", name)
    if not isinstance(src, str) or not src:
        raise MapError(f"{where}: from must be the port's record name (a non-empty string)")
    index, index_text = None, spec.get("index")
    if index_text is not None:
        if not isinstance(index_text, str):
            raise MapError(f"{where}: index must be a string such as \"1:, :\"")
        index = parse_index(index_text, where)
    transpose = spec.get("transpose")
    if transpose is not None and not isinstance(transpose, bool):
        raise MapError(f"{where}: transpose must be true or false")
    return Entry(name, src, index, index_text, transpose, _scale(spec.get("scale"), where))


def _scale(value: Any, where: str) -> float | str | None:
    if value is None or value in ("B", "1/B"):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value != 0:
        return float(value)
    raise MapError(f"{where}: scale = {value!r}: write a non-zero number, \"B\" or \"1/B\" (B = the batch size)")


def parse_index(text: str, where: str = "index") -> tuple[IndexItem, ...]:
    """A numpy basic index ("1:, :", "0, :", "::2, -1") as a tuple of ints and slices; never eval'd."""
    items: list[IndexItem] = []
    parts = [p.strip() for p in text.split(",")]
    if parts and parts[-1] == "" and len(parts) > 1:
        parts.pop()  # a trailing comma, as in "0,"
    for part in parts:
        if _INT.match(part):
            items.append(int(part))
            continue
        bounds = [b.strip() for b in part.split(":")]
        if len(bounds) not in (2, 3) or not all(b == "" or _INT.match(b) for b in bounds):
            raise MapError(f"{where}: index {text!r}: {part!r} is neither an integer nor a slice like 1:, :-1 or "
                           "::2 (only integers, slices and ':' are allowed)")
        start, stop, *rest = [int(b) if b else None for b in bounds]
        stride = rest[0] if rest else None
        if stride == 0:
            raise MapError(f"{where}: index {text!r}: a slice step cannot be 0")
        items.append(slice(start, stop, stride))
    return tuple(items)


# ---------------------------------------------------------------- applying

_BATCH_ROLE = re.compile(r"^(x|y|probs|L[0-9]+\.(z|a|dz|da))$")
_WEIGHT_ROLE = re.compile(r"^L[0-9]+\.(W|dW)$")
_VECTOR_ROLE = re.compile(r"^L[0-9]+\.(b|db)$")


@dataclass(frozen=True)
class Dims:
    """What one step says about the canonical shapes: the batch size and the layer widths n0, n1, ..."""

    batch: int | None
    widths: Mapping[int, int]
    n_layers: int | None

    def expected(self, name: str) -> tuple[int | None, ...]:
        """The canonical shape of `name`, None where this step does not tell."""
        w, L = self.widths.get, self.n_layers
        if name == "loss":
            return ()
        if name == "x":
            return (self.batch, w(0))
        if name in ("y", "probs"):
            return (self.batch, w(L) if L is not None else None)
        i = _layer(name)
        if _WEIGHT_ROLE.match(name):
            return (w(i - 1), w(i))
        if _VECTOR_ROLE.match(name):
            return (w(i),)
        return (self.batch, w(i))


def _layer(name: str) -> int:
    m = CANONICAL.match(name)
    return int(m.group(2)) if m and m.group(2) else 0


def transposes(layout: LayoutMap, entry: Entry) -> bool:
    """Whether the entry's tensor is transposed: its own `transpose`, else what [layout] says for its kind."""
    if entry.transpose is not None:
        return entry.transpose
    if _BATCH_ROLE.match(entry.name):
        return layout.batch == "columns"
    return bool(_WEIGHT_ROLE.match(entry.name)) and layout.weights == "out,in"


def apply_map(layout: LayoutMap, tensors: Mapping[str, np.ndarray], step: int = 0, *,
              layers: Sequence[int] | None = None, strict: bool = True) -> dict[str, np.ndarray]:
    """One step's port tensors as canonical tensors, in canonical dataflow order.

    `layers`: the network's widths when known (a header's settings, a params file); otherwise they are read
    off the mapped tensors. `strict=False` (an incomplete step) drops what cannot be mapped instead of raising.
    Raises MapError naming the map, the entry and the step.
    """
    placed: dict[str, tuple[Entry, np.ndarray]] = {}
    for e in _entries_for(layout, tensors, step, strict):
        try:
            placed[e.name] = (e, _orient(layout, e, np.asarray(tensors[e.source]), step))
        except MapError:
            if strict:
                raise
    dims = _dims(placed, layers)
    # without declared layers the deepest layer seen need not be the last: order as if one more followed
    deepest = max(_layer(n) for n in [*placed, "L0.z"])
    order = canonical_names(dims.n_layers if dims.n_layers is not None else deepest + 1)
    out: dict[str, np.ndarray] = {}
    for name in sorted(placed, key=lambda n: order.index(n) if n in order else len(order)):
        e, arr = placed[name]
        try:
            if name not in order:
                raise MapError(f"{layout.source}: tensors.{name}: not a canonical name of a {dims.n_layers}-layer "
                               f"network (its names: {' '.join(order)})")
            value = _scaled(layout, e, _fit(layout, e, arr, dims, step), dims, step)
            out[name] = value if value.flags.c_contiguous else value.copy()  # (ascontiguousarray turns 0-d to 1-d)
        except MapError:
            if strict:
                raise
    return out


def _entries_for(layout: LayoutMap, tensors: Mapping[str, np.ndarray], step: int, strict: bool) -> list[Entry]:
    """The entries whose port tensor this step has: the map's, plus canonical names the map leaves alone."""
    used = layout._sources | set(layout.ignore)
    entries = [e for e in layout.entries if e.source in tensors]
    entries += [Entry(n, n) for n in tensors if n not in used and n not in layout._targets and CANONICAL.match(n)]
    stray = [n for n in tensors if n not in used and not (CANONICAL.match(n) and n not in layout._targets)]
    if stray and strict:
        shadowed = [n for n in stray if n in layout._targets]
        why = "".join(f"; tensors.{n} takes {n} from {next(e.source for e in layout.entries if e.name == n)!r} "
                      "instead" for n in shadowed)
        raise MapError(f"{layout.source}: step {step}: port tensor{'s' if len(stray) > 1 else ''} "
                       f"{', '.join(repr(n) for n in stray)} neither mapped nor ignored{why}: map each with "
                       f"[tensors.\"CANONICAL\"] from = \"{stray[0]}\", or list it in ignore = [...]")
    return entries


def _orient(layout: LayoutMap, e: Entry, arr: np.ndarray, step: int) -> np.ndarray:
    """`index`, then `transpose`."""
    where = f"{layout.source}: {e.describe()}: step {step}"
    if e.index is not None:
        if len(e.index) > arr.ndim:
            raise MapError(f"{where}: index [{e.index_text}] has {len(e.index)} items but {e.source!r} has "
                           f"{arr.ndim} axes (shape {list(arr.shape)})")
        for axis, item in enumerate(e.index):
            if isinstance(item, int) and not -arr.shape[axis] <= item < arr.shape[axis]:
                raise MapError(f"{where}: index [{e.index_text}] is out of range: axis {axis} of {e.source!r} "
                               f"has {arr.shape[axis]} entries (shape {list(arr.shape)})")
        shape = list(arr.shape)
        arr = arr[e.index]
        if arr.size == 0:
            raise MapError(f"{where}: index [{e.index_text}] selects nothing of {e.source!r} (shape {shape})")
    if transposes(layout, e):
        if arr.ndim > 2:
            raise MapError(f"{where}: cannot transpose a {arr.ndim}-d tensor (shape {list(arr.shape)}); "
                           "index it down to 2 axes first")
        arr = arr.T
    return arr


def _dims(placed: Mapping[str, tuple[Entry, np.ndarray]], layers: Sequence[int] | None) -> Dims:
    """Batch size and layer widths: from `layers` when given, else read off the oriented tensors."""
    arrays = {n: a for n, (_, a) in placed.items()}
    widths: dict[int, int] = dict(enumerate(layers)) if layers else {}
    n_layers = len(layers) - 1 if layers else None  # unknown unless declared: y and probs then fit any width
    for name, a in arrays.items():
        i = _layer(name)
        if _WEIGHT_ROLE.match(name) and a.ndim == 2:
            widths.setdefault(i - 1, a.shape[0])
            widths.setdefault(i, a.shape[1])
    # y and probs give no width: the output width is declared with the layers, or unknown (y fits any)
    for name, a in arrays.items():
        i = _layer(name)
        if name == "x" and a.ndim == 2:
            widths.setdefault(0, a.shape[1])
        elif _VECTOR_ROLE.match(name) and sum(d != 1 for d in a.shape) <= 1:
            widths.setdefault(i, a.size)
        elif i and _BATCH_ROLE.match(name) and a.ndim == 2:
            widths.setdefault(i, a.shape[1])
    batch = None
    for name in ["x"] + [n for n in arrays if n != "x"]:
        found = arrays.get(name)
        if found is not None and _BATCH_ROLE.match(name) and found.ndim == 2:
            batch = found.shape[0]
            break
    return Dims(batch, widths, n_layers)


def _fit(layout: LayoutMap, e: Entry, arr: np.ndarray, dims: Dims, step: int) -> np.ndarray:
    """Check the shape against the canonical one; reshape when only axes of length 1 differ."""
    exp = dims.expected(e.name)
    if arr.ndim == len(exp) and all(x is None or x == a for x, a in zip(exp, arr.shape)):
        return arr
    core = [d for d in arr.shape if d != 1]
    # (a vector's width is always known here when it has at most one axis longer than 1: _dims reads it off
    # the vector itself, so an [n, 1] bias and a [1] loss are all reshaped here)
    if None not in exp and core == [d for d in exp if d != 1]:
        return arr.reshape(exp)  # type: ignore[arg-type]
    shown = "[" + ", ".join("?" if d is None else str(d) for d in exp) + "]"
    hint = ""
    if arr.ndim == 2 and all(x is None or x == a for x, a in zip(exp, arr.shape[::-1])):
        hint = "; it fits transposed: set transpose = " + ("false" if transposes(layout, e) else "true")
    raise MapError(f"{layout.source}: {e.describe()}: step {step}: shape {list(arr.shape)} (after index and "
                   f"transpose) cannot be the canonical {shown} (batch {dims.batch}, widths "
                   f"{[dims.widths.get(i) for i in range(max(dims.widths, default=-1) + 1)]}){hint}")


def _scaled(layout: LayoutMap, e: Entry, arr: np.ndarray, dims: Dims, step: int) -> np.ndarray:
    if e.scale is None:
        return arr
    if isinstance(e.scale, float):
        return arr * e.scale
    if dims.batch is None:
        raise MapError(f"{layout.source}: {e.describe()}: step {step}: scale = {e.scale!r} needs the batch size, "
                       "but no batch tensor (x, y, L<i>.z, L<i>.a, probs, dz, da) is mapped in this step")
    return arr * dims.batch if e.scale == "B" else arr / dims.batch

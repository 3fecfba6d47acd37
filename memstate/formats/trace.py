"""Reading memstate traces, JSONL or binary (docs/format.md), one step at a time.

A trace can be far larger than memory, so readers stream: only the step being yielded is held.
"""

from __future__ import annotations

import json
import os
import re
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open

from memstate.errors import FormatError
from memstate.formats.map import LayoutMap, apply_map, parse_map
from memstate.formats.params import check_envelope
from memstate.formats.tensorjson import BadJSON, decode_fields, decode_name, loads_strict

FORMAT = "memstate.trace"
HEADER_FILE = "header.json"
STEP_FILE = re.compile(r"^step-(\d+)\.safetensors(\.tmp)?$")
BINARY_DTYPES = {"F64": np.float64, "F32": np.float32}
_STEP_PREFIX = re.compile(rb'^\s*\{\s*"step"\s*:\s*(\d+)\s*,')


@dataclass(frozen=True)
class Step:
    """The tensors recorded in one training step; dict order is dataflow order."""

    index: int
    tensors: dict[str, np.ndarray]
    complete: bool = True

    def names(self) -> list[str]:
        """Record names in dataflow order."""
        return list(self.tensors)


def step_file_name(index: int) -> str:
    """The binary encoding's file name for a complete step."""
    return f"step-{index:08d}.safetensors"


def open_trace(path: str | os.PathLike, layout: LayoutMap | None = None) -> TraceReader:
    """Open a trace for streaming; a directory is the binary encoding, a file is JSONL.

    `layout`: a layout map (memstate.formats.map) turning a foreign port's tensors into canonical ones; without
    it, the map the header carries under `meta.map`, if any.
    """
    return TraceReader(path, layout)


def read_trace(path: str | os.PathLike, include_incomplete: bool = False,
               layout: LayoutMap | None = None) -> list[Step]:
    """All steps of a (small) trace in memory."""
    with open_trace(path, layout) as reader:
        return list(reader.steps(include_incomplete=include_incomplete))


class TraceReader:
    """A trace opened for reading: the header is read on open, steps are streamed on iteration.

    Each iteration reads the trace from its first step again; `incomplete` is set when one reaches the end.
    With a layout map (given, or the header's `meta.map`) every step is yielded in canonical names and layout;
    `meta` then lacks the "map" key and `layout` holds the map.
    """

    path: Path
    encoding: str  # "jsonl" | "binary"
    meta: dict[str, Any]
    incomplete: Step | None
    layout: LayoutMap | None

    def __init__(self, path: str | os.PathLike, layout: LayoutMap | None = None):
        self.path = Path(path)
        if not self.path.exists():
            raise FormatError(self.path, "no such file or directory; check the path")
        self.encoding = "binary" if self.path.is_dir() else "jsonl"
        self.incomplete: Step | None = None
        self._live: weakref.WeakSet = weakref.WeakSet()
        self._closed = False
        if self.encoding == "binary":
            self.meta = _binary_header(self.path)
            self._body_offset = 0
        else:
            self.meta, self._body_offset = _jsonl_header(self.path)
        self.layout = layout
        if layout is None and "map" in self.meta:
            self.layout = parse_map(self.meta["map"], f"{self.path}: header meta.map")
        if self.layout is not None:
            self.meta = {k: v for k, v in self.meta.items() if k != "map"}
            self._layers = _declared_layers(self.meta)

    def __iter__(self) -> Iterator[Step]:
        return self.steps()

    def steps(self, include_incomplete: bool = False) -> Iterator[Step]:
        """Complete steps in order, then the trailing incomplete step if asked and there is one."""
        if self._closed:
            raise ValueError(f"{self.path}: trace reader is closed")
        gen = self._steps(include_incomplete)
        self._live.add(gen)
        return gen

    def _steps(self, include_incomplete: bool) -> Iterator[Step]:
        self.incomplete = None
        source = _binary_steps(self.path) if self.encoding == "binary" else _jsonl_steps(self.path, self._body_offset)
        try:
            for step in source:
                if self.layout is not None:
                    step = Step(step.index, apply_map(self.layout, step.tensors, step.index, layers=self._layers,
                                                      strict=step.complete), step.complete)
                if step.complete:
                    yield step
                    continue
                self.incomplete = step
                if include_incomplete:
                    yield step
        finally:
            source.close()

    def close(self) -> None:
        """Stop every iteration in progress and release its file."""
        self._closed = True
        for gen in list(self._live):
            gen.close()

    def __enter__(self) -> TraceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TraceReader({str(self.path)!r}, encoding={self.encoding!r})"


def _declared_layers(meta: dict[str, Any]) -> list[int] | None:
    """The layer widths a header declares (meta.layers or meta.settings.layers), if it does."""
    settings = meta.get("settings")
    layers = meta.get("layers", settings.get("layers") if isinstance(settings, dict) else None)
    ok = isinstance(layers, list) and len(layers) >= 2 and all(type(n) is int and n > 0 for n in layers)
    return layers if ok else None


def _header_meta(doc: Any, path: object, encoding: str, line: int | None) -> dict[str, Any]:
    check_envelope(doc, path, FORMAT, line)
    if doc.get("encoding", "jsonl") != encoding:
        got = json.dumps(doc.get("encoding"))
        raise FormatError(path, f'header says "encoding": {got}, expected "{encoding}"', line=line)
    meta = doc.get("meta", {})
    if not isinstance(meta, dict):
        raise FormatError(path, 'header "meta" must be a JSON object', line=line)
    return meta


# ---- JSONL -------------------------------------------------------------------------------------------------------

def _jsonl_header(path: Path) -> tuple[dict[str, Any], int]:
    with open(path, "rb") as fh:
        first = fh.readline()
    if not first:
        raise FormatError(path, "empty file; a trace starts with its header line", line=1)
    try:
        doc = loads_strict(first)
    except BadJSON as e:
        cut = "" if first.endswith(b"\n") else " (the file ends inside it: the run crashed before writing it?)"
        raise FormatError(path, f"bad header: {e.msg}{cut}", line=1) from None
    return _header_meta(doc, path, "jsonl", 1), len(first)


def _jsonl_steps(path: Path, offset: int) -> Iterator[Step]:
    """Parse the records after the header; yield each terminated step, then the open one as incomplete."""
    last: int | None = None  # last terminated step
    cur: int | None = None  # step being read
    tensors: dict[str, np.ndarray] = {}
    lineno = 1
    with open(path, "rb") as fh:
        fh.seek(offset)
        for raw in fh:
            lineno += 1
            try:
                obj = loads_strict(raw)
            except BadJSON as e:
                if not raw.endswith(b"\n"):  # cut inside the last line: the writer crashed
                    m = _STEP_PREFIX.match(raw)
                    if cur is None and m and (last is None or int(m.group(1)) > last):
                        cur = int(m.group(1))
                    break
                what = "empty line" if not raw.strip() else e.msg
                raise FormatError(path, f"{what}; every line after the header is one JSON record",
                                  line=lineno) from None
            k = _record_step(obj, path, lineno)
            if cur is None:
                if last is not None and k <= last:
                    what = f"record for step {k} after its terminator" if k == last else \
                        f"step {k} after step {last}: step numbers must strictly increase"
                    raise FormatError(path, what, _name_of(obj), lineno)
                cur = k
            elif k != cur:
                what = f"step {k} starts before step {cur} has its terminator" if k > cur else \
                    f"step {k} inside step {cur}: step numbers must strictly increase"
                raise FormatError(path, what, _name_of(obj), lineno)
            if "end" in obj:
                if obj["end"] is not True or "name" in obj:
                    raise FormatError(path, 'a terminator is exactly {"step": k, "end": true}', line=lineno)
                yield Step(cur, tensors)
                last, cur, tensors = cur, None, {}
                continue
            name = decode_name(obj, path, lineno, what="record")
            if name in tensors:
                raise FormatError(path, f"duplicate name in step {cur}; each name may appear once per step", name,
                                  lineno)
            tensors[name] = decode_fields(obj, path, name, lineno)
    if cur is not None:
        yield Step(cur, tensors, complete=False)


def _record_step(obj: Any, path: Path, lineno: int) -> int:
    if not isinstance(obj, dict):
        raise FormatError(path, "a record must be a JSON object", line=lineno)
    k = obj.get("step")
    if type(k) is not int or k < 0:
        raise FormatError(path, f'"step" must be a non-negative integer, got {k!r}', _name_of(obj), lineno)
    return k


def _name_of(obj: dict) -> str | None:
    name = obj.get("name")
    return name if isinstance(name, str) else None


# ---- binary ------------------------------------------------------------------------------------------------------

def _binary_header(path: Path) -> dict[str, Any]:
    header = path / HEADER_FILE
    try:
        text = header.read_bytes()
    except FileNotFoundError:
        raise FormatError(header, "missing: a binary trace directory holds header.json and step-*.safetensors") \
            from None
    try:
        doc = loads_strict(text)
    except BadJSON as e:
        raise FormatError(header, f"bad header: {e.msg}", line=e.line) from None
    return _header_meta(doc, header, "binary", None)


def _list_steps(path: Path) -> tuple[list[int], int | None]:
    """Indexes of the complete step files in order, and the index of the .tmp left by a crash, if any."""
    done: list[int] = []
    tmps: list[int] = []
    for entry in os.listdir(path):
        m = STEP_FILE.match(entry)
        if not m:
            continue
        k = int(m.group(1))
        if entry != step_file_name(k) + (m.group(2) or ""):
            raise FormatError(path / entry, f"file name must be {step_file_name(k)}{m.group(2) or ''}")
        (tmps if m.group(2) else done).append(k)
    done.sort()
    if len(tmps) > 1 or (tmps and done and tmps[0] <= done[-1]):
        stray = path / (step_file_name(min(tmps)) + ".tmp")
        raise FormatError(stray, "stray temporary file: only the step after the last complete one can be "
                                 "unfinished; remove it")
    return done, (tmps[0] if tmps else None)


def _binary_steps(path: Path) -> Iterator[Step]:
    done, tmp = _list_steps(path)
    for k in done:
        yield Step(k, read_step_file(path / step_file_name(k), k))
    if tmp is not None:
        try:
            tensors = read_step_file(path / (step_file_name(tmp) + ".tmp"), tmp)
        except FormatError:  # cut off mid-write: the step happened but its tensors are lost
            tensors = {}
        yield Step(tmp, tensors, complete=False)


def read_step_file(path: Path, index: int) -> dict[str, np.ndarray]:
    """The tensors of one safetensors step file, in the dataflow order its metadata gives."""
    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
            keys = set(f.keys())
            order = _step_order(meta, keys, path, index)
            out: dict[str, np.ndarray] = {}
            for name in order:
                dt = f.get_slice(name).get_dtype()
                if dt not in BINARY_DTYPES:
                    raise FormatError(path, f"dtype {dt} is not allowed; use F64 or F32", name)
                out[name] = f.get_tensor(name)
            return out
    except SafetensorError as e:
        raise FormatError(path, f"not a readable safetensors file: {e}") from None


def _step_order(meta: dict[str, str], keys: set[str], path: Path, index: int) -> list[str]:
    if meta.get("step") != str(index):
        raise FormatError(path, f'__metadata__ "step" is {meta.get("step")!r}, expected "{index}" from the file name')
    if "order" not in meta:
        raise FormatError(path, '__metadata__ has no "order" (the JSON list of names in dataflow order)')
    try:
        order = loads_strict(meta["order"])
    except BadJSON as e:
        raise FormatError(path, f'__metadata__ "order" is not JSON: {e.msg}') from None
    if not isinstance(order, list) or not all(isinstance(n, str) for n in order):
        raise FormatError(path, '__metadata__ "order" must be a JSON list of tensor names')
    if len(set(order)) != len(order):
        dup = next(n for n in order if order.count(n) > 1)
        raise FormatError(path, '__metadata__ "order" lists a name twice', dup)
    if set(order) != keys:
        extra, missing = sorted(set(order) - keys), sorted(keys - set(order))
        raise FormatError(path, f'__metadata__ "order" does not match the tensors: listed but absent {extra}, '
                                f"present but not listed {missing}")
    return order

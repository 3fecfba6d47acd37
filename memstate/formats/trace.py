"""Reading memstate traces, JSONL or binary (docs/format.md), one step at a time.

A trace can be far larger than memory, so readers stream: only the step being yielded is held.
"""

from __future__ import annotations

import json
import os
import re
import weakref
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from memstate.errors import FormatError
from memstate.formats.map import LayoutMap, apply_map, parse_map
from memstate.formats.params import check_envelope
from memstate.formats.stepfile import BadStepFile, Payload, read_step_payload
from memstate.formats.bigline import STREAM_BYTES, BadData, LineTooLong, max_line_bytes, parse_big_record, read_line
from memstate.formats.tensorjson import (BadJSON, decode_fields, decode_name, loads_fast, loads_record, loads_strict,
                                         short_json)

FORMAT = "memstate.trace"
HEADER_FILE = "header.json"
STEP_FILE = re.compile(r"^step-(\d+)\.safetensors(\.tmp)?$")
BINARY_DTYPES = {"F64": np.float64, "F32": np.float32}
_STEP_PREFIX = re.compile(rb'^\s*\{\s*"step"\s*:\s*(\d+)\s*,')
MAX_STEP = 2**63 - 1  # step numbers are int64 everywhere downstream


@dataclass(frozen=True)
class Step:
    """The tensors recorded in one training step; dict order is dataflow order."""

    index: int
    tensors: dict[str, np.ndarray]
    complete: bool = True
    # a binary step file's bytes as read (memstate.formats.stepfile.Payload), for the comparator's one-pass
    # test of a bit-identical step; None for JSONL, mapped (renamed) or filtered steps
    payload: Payload | None = field(default=None, compare=False, repr=False)

    def names(self) -> list[str]:
        """Record names in dataflow order."""
        return list(self.tensors)


@dataclass(frozen=True)
class EndedEarly:
    """A trace whose run stopped before its end: fewer complete steps than its header declares, or an
    unfinished last step (the run crashed or was killed in the middle of it)."""

    complete_steps: int
    declared_steps: int | None  # the header's meta "steps", when it says
    unfinished_step: int | None

    def __str__(self) -> str:
        if self.declared_steps is not None:
            text = f"ended early: {self.complete_steps} of {self.declared_steps} steps"
            return text + (f" (step {self.unfinished_step} unfinished)" if self.unfinished_step is not None else "")
        n = self.complete_steps
        return f"ended early: {n} complete step{'' if n == 1 else 's'}, then step {self.unfinished_step} unfinished"


def declared_steps(meta: dict[str, Any]) -> int | None:
    """The number of steps a trace's header says its run was to record (meta "steps"), or None."""
    n = meta.get("steps")
    return n if type(n) is int and n >= 0 else None


STOP_PREFIX = "stop."  # a step recording stop.RULE is the last of a run that a stopping rule ended (docs/training.md)


def ended_early(meta: dict[str, Any], complete: int, first: int | None, last: int | None,
                unfinished: int | None, stopped: bool = False) -> EndedEarly | None:
    """Whether a trace read in full ended early, from what was read: `complete` steps numbered `first`..`last`
    and the unfinished step at its end, if any. A trace that records every n-th step (a gap between its
    first and last step) is short of its declared steps by design and ends early only with an unfinished step;
    so is a run whose last step records a stop.RULE tensor (`stopped`): a stopping rule ended it.
    """
    declared = declared_steps(meta)
    if unfinished is not None:
        return EndedEarly(complete, declared, unfinished)
    if declared is None or complete >= declared or stopped:
        return None
    contiguous = complete == 0 or (first is not None and last is not None and last - first + 1 == complete)
    return EndedEarly(complete, declared, None) if contiguous else None


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
    run_id: str | None  # the writer's run id (docs/format.md), None in traces written without one
    incomplete: Step | None
    ended_early: EndedEarly | None  # set when an iteration reaches the end
    layout: LayoutMap | None

    def __init__(self, path: str | os.PathLike, layout: LayoutMap | None = None):
        self.path = Path(path)
        if not self.path.exists():
            dangling = " (a symbolic link to a missing file)" if self.path.is_symlink() else ""
            raise FormatError(self.path, f"no such file or directory{dangling}; check the path")
        self.encoding = "binary" if self.path.is_dir() else "jsonl"
        if self.encoding == "jsonl" and not self.path.is_file():
            raise FormatError(self.path, "is not a regular file or a directory; a trace is a .memstate.jsonl file "
                                         "or a .memstate directory")
        self.incomplete: Step | None = None
        self.ended_early: EndedEarly | None = None
        self._live: weakref.WeakSet = weakref.WeakSet()
        self._closed = False
        if self.encoding == "binary":
            doc, where = _binary_header(self.path), self.path / HEADER_FILE
            self._body_offset = 0
        else:
            doc, self._body_offset = _jsonl_header(self.path)
            where = self.path
        line = None if self.encoding == "binary" else 1
        self.meta = _header_meta(doc, where, self.encoding, line)
        self.run_id = _run_id(doc, where, line)
        self.layout = layout
        if layout is None and "map" in self.meta:
            self.layout = parse_map(self.meta["map"], f"{self.path}: header meta.map")
        if self.layout is not None:
            self.meta = {k: v for k, v in self.meta.items() if k != "map"}
            self._layers = _declared_layers(self.meta)

    def __iter__(self) -> Iterator[Step]:
        return self.steps()

    def steps(self, include_incomplete: bool = False, mapped: bool = False, populate: bool = True) -> Iterator[Step]:
        """Complete steps in order, then the trailing incomplete step if asked and there is one.

        mapped=True (binary traces): the arrays are read-only views of the mapped step files, for callers
        that only read them and hold few steps at once (memstate.formats.stepfile); populate=False maps
        them without reading their pages until they are touched.
        """
        if self._closed:
            raise ValueError(f"{self.path}: trace reader is closed")
        gen = self._steps(include_incomplete, mapped, populate)
        self._live.add(gen)
        return gen

    def _steps(self, include_incomplete: bool, mapped: bool = False, populate: bool = True) -> Iterator[Step]:
        self.incomplete = None
        self.ended_early = None
        source = (_binary_steps(self.path, self.run_id, mapped, populate) if self.encoding == "binary"
                  else _jsonl_steps(self.path, self._body_offset))
        count, first, last, stopped = 0, None, None, False
        try:
            for step in source:
                if self.layout is not None:
                    step = Step(step.index, apply_map(self.layout, step.tensors, step.index, layers=self._layers,
                                                      strict=step.complete), step.complete)
                if step.complete:
                    count, first, last = count + 1, step.index if first is None else first, step.index
                    stopped = any(name.startswith(STOP_PREFIX) for name in step.tensors)
                    yield step
                    continue
                self.incomplete = step
                if include_incomplete:
                    yield step
            unfinished = self.incomplete.index if self.incomplete is not None else None
            self.ended_early = ended_early(self.meta, count, first, last, unfinished, stopped)
        finally:
            source.close()

    def complete_steps(self) -> list[int]:
        """The numbers of the complete steps of a binary trace, in order, from its file names alone."""
        if self.encoding != "binary":
            raise ValueError(f"{self.path}: only a binary trace lists its steps without reading them")
        return _list_steps(self.path)[0]

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


def _run_id(doc: dict[str, Any], path: object, line: int | None) -> str | None:
    run_id = doc.get("run_id")
    if run_id is not None and (not isinstance(run_id, str) or not run_id):
        raise FormatError(path, f'header "run_id" must be a non-empty string, got {json.dumps(run_id)}', line=line)
    return run_id


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

def _jsonl_header(path: Path) -> tuple[Any, int]:
    try:
        with open(path, "rb") as fh:
            first = fh.readline()
    except OSError as e:
        raise FormatError(path, f"cannot read: {e.strerror or e}") from None
    if not first:
        raise FormatError(path, "empty file; a trace starts with its header line", line=1)
    try:
        doc = loads_strict(first)
    except BadJSON as e:
        cut = "" if first.endswith(b"\n") else " (the file ends inside it: the run crashed before writing it?)"
        raise FormatError(path, f"bad header: {e.msg}{cut}", line=1) from None
    return doc, len(first)


def _jsonl_steps(path: Path, offset: int) -> Generator[Step, None, None]:
    """Parse the records after the header; yield each terminated step, then the open one as incomplete."""
    last: int | None = None  # last terminated step
    cur: int | None = None  # step being read
    tensors: dict[str, np.ndarray] = {}
    lineno = 1
    limit = max_line_bytes()
    with open(path, "rb") as fh:
        fh.seek(offset)
        while True:
            try:
                raw = read_line(fh, limit)
            except LineTooLong as e:
                raise FormatError(path, f"line of {e.length} bytes or more, longer than {limit} "
                                  "(MEMSTATE_MAX_LINE_BYTES); record tensors this large in the binary encoding "
                                  "(docs/format.md)", line=lineno + 1) from None
            if not raw:
                break
            lineno += 1
            try:
                obj = _parse_line(raw, path, lineno)
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


def _parse_line(raw: bytes, path: Path, lineno: int) -> Any:
    """One record: orjson, or for a huge line its "data" parsed straight into an ndarray (bounded memory)."""
    if len(raw) >= STREAM_BYTES:
        try:
            obj = parse_big_record(raw)
        except BadData as e:
            raise FormatError(path, str(e), line=lineno) from None
        if obj is not None:
            return obj
    return loads_record(raw)


def _record_step(obj: Any, path: Path, lineno: int) -> int:
    if not isinstance(obj, dict):
        raise FormatError(path, "a record must be a JSON object", line=lineno)
    k = obj.get("step")
    if type(k) is not int or k < 0:
        raise FormatError(path, f'"step" must be a non-negative integer, got {short_json(k)}', _name_of(obj), lineno)
    if k > MAX_STEP:
        raise FormatError(path, f'"step" {k} is above 2**63-1, the largest step number', _name_of(obj), lineno)
    return k


def _name_of(obj: dict) -> str | None:
    name = obj.get("name")
    return name if isinstance(name, str) else None


# ---- binary ------------------------------------------------------------------------------------------------------

def _binary_header(path: Path) -> Any:
    header = path / HEADER_FILE
    try:
        text = header.read_bytes()
    except FileNotFoundError:
        dangling = " (a symbolic link to a missing file)" if header.is_symlink() else ""
        raise FormatError(header, f"missing{dangling}: a binary trace directory holds header.json and "
                                  "step-*.safetensors") from None
    except IsADirectoryError:
        raise FormatError(header, "is a directory; it must be the trace's JSON header file") from None
    except OSError as e:
        raise FormatError(header, f"cannot read: {e.strerror or e}") from None
    try:
        return loads_strict(text)
    except BadJSON as e:
        raise FormatError(header, f"bad header: {e.msg}", line=e.line) from None


def _list_steps(path: Path) -> tuple[list[int], int | None]:
    """Indexes of the complete step files in order, and the index of the .tmp left by a crash, if any."""
    done: list[int] = []
    tmps: list[int] = []
    try:
        entries = os.listdir(path)
    except OSError as e:
        raise FormatError(path, f"cannot list the trace directory: {e.strerror or e}") from None
    for entry in entries:
        m = STEP_FILE.match(entry)
        if not m:
            continue
        k = int(m.group(1))
        if k > MAX_STEP:
            raise FormatError(path / entry, "step number above 2**63-1 in the file name")
        if entry != step_file_name(k) + (m.group(2) or ""):
            raise FormatError(path / entry, f"file name must be {step_file_name(k)}{m.group(2) or ''}")
        (tmps if m.group(2) else done).append(k)
    done.sort()
    if tmps and done and tmps[0] == done[-1]:  # listed while its writer renamed it: the step is complete
        tmps = []
    if len(tmps) > 1 or (tmps and done and tmps[0] <= done[-1]):
        stray = path / (step_file_name(min(tmps)) + ".tmp")
        raise FormatError(stray, "stray temporary file: only the step after the last complete one can be "
                                 "unfinished; remove it")
    return done, (tmps[0] if tmps else None)


def _binary_steps(path: Path, run_id: str | None = None, mapped: bool = False,
                  populate: bool = True) -> Generator[Step, None, None]:
    done, tmp = _list_steps(path)
    for k in done:
        tensors, payload = read_step(path / step_file_name(k), k, run_id, mapped, populate)
        yield Step(k, tensors, payload=payload)
    if tmp is not None:
        try:
            tensors = read_step_file(path / (step_file_name(tmp) + ".tmp"), tmp, run_id)
        except FormatError:  # cut off mid-write: the step happened but its tensors are lost
            tensors = {}
        yield Step(tmp, tensors, complete=False)


def read_step_file(path: Path, index: int, run_id: str | None = None, mapped: bool = False,
                   populate: bool = True) -> dict[str, np.ndarray]:
    """The tensors of one safetensors step file, in the dataflow order its metadata gives; the file must carry
    the header's `run_id` (None: none), so that a directory mixed from two runs is an error, not a trace.

    The arrays are views into one buffer the file was read into (memstate.formats.stepfile); with
    mapped=True into a read-only mapping of the file.
    """
    return read_step(path, index, run_id, mapped, populate)[0]


def read_step(path: Path, index: int, run_id: str | None = None, mapped: bool = False,
              populate: bool = True) -> tuple[dict[str, np.ndarray], Payload]:
    """`read_step_file`, with the file's Payload (its tensor bytes and layout, for memstate.comparator.identical)."""
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "is a symbolic link to a missing file" if path.is_symlink() \
            else "vanished while being read (is a run rewriting this trace?)" if not path.exists() \
            else "is not a regular file"
        raise FormatError(path, f"{what}; a step file is a safetensors file")
    try:
        meta, tensors, payload = read_step_payload(path, mapped, populate)
    except BadStepFile as e:
        raise FormatError(path, f"not a readable safetensors file: {e}") from None
    except OSError as e:
        raise FormatError(path, f"cannot read: {e.strerror or e}") from None
    order = _step_order(meta, set(tensors), path, index)
    _check_run_id(meta, run_id, path)
    out: dict[str, np.ndarray] = {}
    for name in order:
        dt, arr = tensors[name]
        if dt not in BINARY_DTYPES or arr is None:
            raise FormatError(path, f"dtype {dt} is not allowed; use F64 or F32", name)
        out[name] = arr  # (its shape was checked, as check_shape would, before the array was made)
    return out, payload


def _check_run_id(meta: dict[str, str], run_id: str | None, path: Path) -> None:
    got = meta.get("run_id")
    if got == run_id:
        return
    header = f"header.json's run {run_id}" if run_id is not None else "header.json, which has no run id,"
    mine = f"run {got}" if got is not None else "a run without a run id"
    raise FormatError(path, f"written by {mine} but {header}: two runs wrote into this directory, so it is no "
                            "single run's trace; record it again into an empty directory")


_ORDERS: dict[str, list[str] | tuple[str, str | None]] = {}  # "order" text -> its names, or (why refused, name)
ORDERS_LIMIT = 64  # order texts remembered before the memo starts over (a trace has one, or a few)


def _step_order(meta: dict[str, str], keys: set[str], path: Path, index: int) -> list[str]:
    if meta.get("step") != str(index):
        raise FormatError(path, f'__metadata__ "step" is {meta.get("step")!r}, expected "{index}" from the file name')
    if "order" not in meta:
        raise FormatError(path, '__metadata__ has no "order" (the JSON list of names in dataflow order)')
    order = _parsed_order(meta["order"])
    if isinstance(order, tuple):
        raise FormatError(path, *order)
    if set(order) != keys:
        extra, missing = sorted(set(order) - keys), sorted(keys - set(order))
        raise FormatError(path, f'__metadata__ "order" does not match the tensors: listed but absent {extra}, '
                                f"present but not listed {missing}")
    return list(order)


def _parsed_order(text: str) -> list[str] | tuple[str, str | None]:
    """The names an "order" text lists, checked (a JSON list of distinct strings), or (the message that
    refuses it, the name it is about or None). Every step file of a trace has the same text,
    so the answer is remembered by it: parsing and checking it was a sixth of reading a small step file."""
    hit = _ORDERS.get(text)
    if hit is not None:
        return hit
    answer: list[str] | tuple[str, str | None]
    try:
        order = loads_fast(text)
    except BadJSON as e:
        answer = (f'__metadata__ "order" is not JSON: {e.msg}', None)
    else:
        if not isinstance(order, list) or not all(isinstance(n, str) for n in order):
            answer = ('__metadata__ "order" must be a JSON list of tensor names', None)
        elif len(set(order)) != len(order):
            answer = ('__metadata__ "order" lists a name twice', next(n for n in order if order.count(n) > 1))
        else:
            answer = order
    if len(_ORDERS) >= ORDERS_LIMIT:
        _ORDERS.clear()
    _ORDERS[text] = answer
    return answer

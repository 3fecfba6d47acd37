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
from memstate.formats.params import check_envelope
from memstate.formats.tensorjson import BadJSON, check_shape, decode_fields, decode_name, loads_strict, short_json

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
        return f"ended early: {self.complete_steps} steps, then step {self.unfinished_step} unfinished"


def declared_steps(meta: dict[str, Any]) -> int | None:
    """The number of steps a trace's header says its run was to record (meta "steps"), or None."""
    n = meta.get("steps")
    return n if type(n) is int and n >= 0 else None


def ended_early(meta: dict[str, Any], complete: int, first: int | None, last: int | None,
                unfinished: int | None) -> EndedEarly | None:
    """Whether a trace read in full ended early, from what was read: `complete` steps numbered `first`..`last`
    and the unfinished step at its end, if any. A trace that records every n-th step (a gap between its
    first and last step) is short of its declared steps by design and ends early only with an unfinished step.
    """
    declared = declared_steps(meta)
    if unfinished is not None:
        return EndedEarly(complete, declared, unfinished)
    if declared is None or complete >= declared:
        return None
    contiguous = complete == 0 or (first is not None and last is not None and last - first + 1 == complete)
    return EndedEarly(complete, declared, None) if contiguous else None


def step_file_name(index: int) -> str:
    """The binary encoding's file name for a complete step."""
    return f"step-{index:08d}.safetensors"


def open_trace(path: str | os.PathLike) -> TraceReader:
    """Open a trace for streaming; a directory is the binary encoding, a file is JSONL."""
    return TraceReader(path)


def read_trace(path: str | os.PathLike, include_incomplete: bool = False) -> list[Step]:
    """All steps of a (small) trace in memory."""
    with open_trace(path) as reader:
        return list(reader.steps(include_incomplete=include_incomplete))


class TraceReader:
    """A trace opened for reading: the header is read on open, steps are streamed on iteration.

    Each iteration reads the trace from its first step again; `incomplete` is set when one reaches the end.
    """

    path: Path
    encoding: str  # "jsonl" | "binary"
    meta: dict[str, Any]
    run_id: str | None  # the writer's run id (docs/format.md), None in traces written without one
    incomplete: Step | None
    ended_early: EndedEarly | None  # set when an iteration reaches the end

    def __init__(self, path: str | os.PathLike):
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
        self.ended_early = None
        source = _binary_steps(self.path, self.run_id) if self.encoding == "binary" else \
            _jsonl_steps(self.path, self._body_offset)
        count, first, last = 0, None, None
        try:
            for step in source:
                if step.complete:
                    count, first, last = count + 1, step.index if first is None else first, step.index
                    yield step
                    continue
                self.incomplete = step
                if include_incomplete:
                    yield step
            unfinished = self.incomplete.index if self.incomplete is not None else None
            self.ended_early = ended_early(self.meta, count, first, last, unfinished)
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


def _run_id(doc: dict[str, Any], path: object, line: int | None) -> str | None:
    run_id = doc.get("run_id")
    if run_id is not None and (not isinstance(run_id, str) or not run_id):
        raise FormatError(path, f'header "run_id" must be a non-empty string, got {json.dumps(run_id)}', line=line)
    return run_id


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


def _binary_steps(path: Path, run_id: str | None = None) -> Iterator[Step]:
    done, tmp = _list_steps(path)
    for k in done:
        yield Step(k, read_step_file(path / step_file_name(k), k, run_id))
    if tmp is not None:
        try:
            tensors = read_step_file(path / (step_file_name(tmp) + ".tmp"), tmp, run_id)
        except FormatError:  # cut off mid-write: the step happened but its tensors are lost
            tensors = {}
        yield Step(tmp, tensors, complete=False)


def read_step_file(path: Path, index: int, run_id: str | None = None) -> dict[str, np.ndarray]:
    """The tensors of one safetensors step file, in the dataflow order its metadata gives; the file must carry
    the header's `run_id` (None: none), so that a directory mixed from two runs is an error, not a trace."""
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "is a symbolic link to a missing file" if path.is_symlink() \
            else "vanished while being read (is a run rewriting this trace?)" if not path.exists() \
            else "is not a regular file"
        raise FormatError(path, f"{what}; a step file is a safetensors file")
    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
            keys = set(f.keys())
            order = _step_order(meta, keys, path, index)
            _check_run_id(meta, run_id, path)
            out: dict[str, np.ndarray] = {}
            for name in order:
                view = f.get_slice(name)
                dt = view.get_dtype()
                if dt not in BINARY_DTYPES:
                    raise FormatError(path, f"dtype {dt} is not allowed; use F64 or F32", name)
                check_shape(list(view.get_shape()), path, name)
                out[name] = f.get_tensor(name)
            return out
    except SafetensorError as e:
        raise FormatError(path, f"not a readable safetensors file: {e}") from None
    except OSError as e:
        raise FormatError(path, f"cannot read: {e.strerror or e}") from None


def _check_run_id(meta: dict[str, str], run_id: str | None, path: Path) -> None:
    got = meta.get("run_id")
    if got == run_id:
        return
    header = f"header.json's run {run_id}" if run_id is not None else "header.json, which has no run id,"
    mine = f"run {got}" if got is not None else "a run without a run id"
    raise FormatError(path, f"written by {mine} but {header}: two runs wrote into this directory, so it is no "
                            "single run's trace; record it again into an empty directory")


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

"""Writing memstate traces: the two encodings' writers and the Recorder that implementations call.

A crash must cost at most the step in progress, so each step reaches disk whole, at its end.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import orjson
from safetensors.numpy import save_file

from memstate.errors import MemstateError
from memstate.formats.lock import TraceLock, lock_trace
from memstate.formats.tensorjson import DTYPES, BadJSON, dtype_name, dumps_record, loads_strict
from memstate.formats.trace import FORMAT, HEADER_FILE, STEP_FILE, step_file_name

VERSION = 1
ENCODINGS = ("jsonl", "binary")


class _NewRunId:
    def __repr__(self) -> str:
        return "NEW_RUN_ID"


NEW_RUN_ID: Any = _NewRunId()  # the default run id: a fresh one for this writer


def encoding_for(path: str | os.PathLike) -> str:
    """The encoding a path implies: a `.memstate` name or an existing directory is binary, anything else JSONL."""
    path = Path(path)
    return "binary" if path.suffix == ".memstate" or path.is_dir() else "jsonl"


def open_writer(path: str | os.PathLike, meta: dict | None = None, encoding: str | None = None, *,
                b64: bool = False, run_id: str | None = NEW_RUN_ID) -> TraceWriter:
    """A writer for a new trace at `path` (replacing any trace there); encoding None means from the path.

    The writer holds the trace's lock (memstate.formats.lock) until closed: a second writer fails at once.
    `run_id` (default: a new one; None: none, as in a converted trace that had none) goes into the header and
    every binary step file.
    """
    encoding = encoding or encoding_for(path)
    if encoding == "jsonl":
        return JsonlWriter(path, meta, b64=b64, run_id=run_id)
    if encoding == "binary":
        return BinaryWriter(path, meta, run_id=run_id)
    raise MemstateError(f"{path}: unknown trace encoding {encoding!r}; use 'jsonl' or 'binary'")


def new_run_id() -> str:
    """A fresh run id: 32 hex digits, unique per writer."""
    return uuid.uuid4().hex


def _header(path: Path, meta: dict | None, run_id: str | None, **extra: str) -> str:
    ids = {"run_id": run_id} if run_id is not None else {}
    try:
        text = json.dumps({"format": FORMAT, "version": VERSION, **ids, "meta": dict(meta or {}), **extra},
                          allow_nan=False)
    except (TypeError, ValueError) as e:
        raise MemstateError(f"{path}: meta must be plain JSON (str, numbers, lists, dicts; no NaN): {e}") from None
    try:
        loads_strict(text)  # what the reader will refuse (a lone surrogate in a string) is refused now
    except BadJSON as e:
        raise MemstateError(f"{path}: meta cannot be written: {e.msg}") from None
    return text


def terminator(step: int) -> bytes:
    """The JSONL line that closes a step, ending in its newline."""
    return orjson.dumps({"step": step, "end": True}, option=orjson.OPT_APPEND_NEWLINE)


class TraceWriter:
    """Step bookkeeping shared by both encodings: steps strictly increase, names are unique within a step."""

    encoding: str  # "jsonl" or "binary": each subclass sets it

    def __init__(self, path: str | os.PathLike, run_id: str | None = NEW_RUN_ID):
        self.path = Path(path)
        self.run_id: str | None = new_run_id() if run_id is NEW_RUN_ID else run_id
        self._lock: TraceLock | None = None
        self._step: int | None = None
        self._last: int | None = None
        self._names: set[str] = set()
        self._stopped: str | None = None  # why no further step may begin

    @property
    def current_step(self) -> int | None:
        """The open step's number, or None between steps."""
        return self._step

    def begin_step(self, index: int) -> None:
        """Open step `index`, which must be greater than every step before it."""
        if self._stopped:
            raise MemstateError(f"{self.path}: cannot begin step {index}: {self._stopped}")
        if self._step is not None:
            raise MemstateError(f"{self.path}: cannot begin step {index}: step {self._step} is still open")
        if not (type(index) is int or isinstance(index, np.integer)) or index < 0:
            raise MemstateError(f"{self.path}: step number must be a non-negative integer, got {index!r}")
        index = int(index)
        if self._last is not None and index <= self._last:
            raise MemstateError(f"{self.path}: step {index} after step {self._last}; step numbers must increase")
        self._step, self._names = index, set()
        self._begin()

    def write_tensor(self, name: str, array: np.ndarray) -> None:
        """Add a float32/float64 tensor to the open step; the writer keeps its own copy."""
        if self._step is None:
            raise MemstateError(f"{self.path}: tensor {name!r} recorded outside a step; wrap it in a step")
        if not isinstance(name, str) or not name or name == "__metadata__" or not _is_text(name):
            raise MemstateError(f"{self.path}, step {self._step}: bad tensor name {name!r}; use a non-empty string "
                                "of text (no lone surrogates) other than '__metadata__'")
        if name in self._names:
            raise MemstateError(f"{self.path}, step {self._step}, tensor {name!r}: recorded twice in one step; "
                                "give each tensor its own name")
        arr = np.asarray(array)
        try:
            dtype_name(arr)
        except ValueError:
            raise MemstateError(f"{self.path}, step {self._step}, tensor {name!r}: dtype {arr.dtype} cannot be "
                                "written; use float32 or float64") from None
        self._names.add(name)
        self._add(name, arr)

    def end_step(self) -> None:
        """Close the open step and put it on disk in full."""
        self._require_step("end")
        self._finish(complete=True)
        self._last, self._step = self._step, None

    def abort_step(self) -> None:
        """Put the open step on disk as incomplete (no terminator); the trace ends with it."""
        self._require_step("abort")
        self._finish(complete=False)
        self._stopped = f"step {self._step} was left incomplete, so the trace ends there"
        self._step = None

    def close(self) -> None:
        """Finish the trace; a step still open is written as incomplete. Safe to call twice."""
        try:
            if self._step is not None:
                self.abort_step()
            self._stopped = self._stopped or "the trace is closed"
            self._close()
        finally:
            if self._lock is not None:
                self._lock.release()

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _take_lock(self) -> None:
        """Lock the trace before touching it; a writer already on it makes this raise TraceBusyError."""
        self._lock = lock_trace(self.path)

    def _require_step(self, verb: str) -> None:
        if self._step is None:
            raise MemstateError(f"{self.path}: no step is open to {verb}")

    def _begin(self) -> None:
        raise NotImplementedError

    def _add(self, name: str, arr: np.ndarray) -> None:
        raise NotImplementedError

    def _finish(self, complete: bool) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError


class JsonlWriter(TraceWriter):
    """JSONL encoding: header at once, each step's lines buffered and flushed with its terminator."""

    encoding = "jsonl"

    def __init__(self, path: str | os.PathLike, meta: dict | None = None, *, b64: bool = False,
                 run_id: str | None = NEW_RUN_ID):
        super().__init__(path, run_id)
        self.b64 = b64
        header = _header(self.path, meta, self.run_id)
        self._take_lock()
        try:
            self._fh = open(self.path, "wb")
        except OSError as e:
            self._lock.release()  # type: ignore[union-attr]
            raise MemstateError(f"{self.path}: cannot create trace: {e.strerror}") from None
        self._fh.write(header.encode() + b"\n")
        self._fh.flush()
        self._lines: list[bytes] = []

    def _begin(self) -> None:
        self._lines = []

    def _add(self, name: str, arr: np.ndarray) -> None:
        self._lines.append(dumps_record({"step": self._step, "name": name}, arr, b64=self.b64))

    def _finish(self, complete: bool) -> None:
        if complete and self._step is not None:
            self._lines.append(terminator(self._step))
        if self._lines:
            self._fh.writelines(self._lines)  # each line ends in its newline: no join, no copy of the step
            self._fh.flush()
        self._lines = []

    def _close(self) -> None:
        self._fh.close()

    def append_encoded(self, part: BinaryIO, last_step: int) -> None:
        """Append complete steps already encoded as JSONL lines (a parallel conversion's part), up to `last_step`."""
        if self._step is not None or self._stopped or (self._last is not None and last_step <= self._last):
            raise MemstateError(f"{self.path}: encoded steps can only follow the last complete step")
        shutil.copyfileobj(part, self._fh, 1 << 20)
        self._fh.flush()
        self._last = last_step


class BinaryWriter(TraceWriter):
    """Binary encoding: a directory with header.json and one safetensors file per step, each written atomically."""

    encoding = "binary"

    def __init__(self, path: str | os.PathLike, meta: dict | None = None, *, run_id: str | None = NEW_RUN_ID):
        super().__init__(path, run_id)
        header = _header(self.path, meta, self.run_id, encoding="binary")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise MemstateError(f"{self.path}: cannot create binary trace directory: {e}") from None
        self._take_lock()
        try:
            self.path.mkdir(exist_ok=True)
            for entry in os.listdir(self.path):  # replace an older trace, like opening a file for writing
                if STEP_FILE.match(entry) or entry == HEADER_FILE:
                    os.remove(self.path / entry)
            tmp = self.path / (HEADER_FILE + ".tmp")
            tmp.write_text(header + "\n", encoding="utf-8")
            os.replace(tmp, self.path / HEADER_FILE)
        except OSError as e:
            self._lock.release()  # type: ignore[union-attr]
            raise MemstateError(f"{self.path}: cannot create binary trace directory: {e}") from None
        self._arrays: dict[str, np.ndarray] = {}

    def _begin(self) -> None:
        self._arrays = {}

    def _add(self, name: str, arr: np.ndarray) -> None:
        self._arrays[name] = np.array(arr, dtype=DTYPES[dtype_name(arr)], order="C", copy=True)

    def _finish(self, complete: bool) -> None:
        assert self._step is not None  # end_step/abort_step call this only after _require_step found a step open
        final = self.path / step_file_name(self._step)
        tmp = final.with_name(final.name + ".tmp")
        metadata = {"step": str(self._step), "order": json.dumps(list(self._arrays))}
        if self.run_id is not None:
            metadata["run_id"] = self.run_id
        save_file(self._arrays, str(tmp), metadata=metadata)
        if complete:
            os.replace(tmp, final)
        self._arrays = {}

    def _close(self) -> None:
        pass


def _is_text(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def as_float_array(value: Any, dtype: Any = None) -> np.ndarray:
    """`value` (array, nested lists, Python float) as a float32/float64 array; ints and bools become float64."""
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as e:
        raise ValueError(f"cannot make an array of it ({e}); pass a numpy array or rectangular nested lists") \
            from None
    kind, size = arr.dtype.kind, arr.dtype.itemsize
    if kind not in "fiub":
        raise ValueError(f"dtype {arr.dtype} is not numeric; pass floats")
    if dtype is not None:
        try:
            target = np.dtype(dtype)
        except TypeError:
            raise ValueError(f"dtype={dtype!r} is not a dtype; use 'float32' or 'float64'") from None
        if target not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"dtype={dtype!r} is not allowed; use 'float32' or 'float64'")
    elif kind == "f" and size in (4, 8):
        target = np.dtype(np.float64 if size == 8 else np.float32)
    elif kind == "f" and size == 2:
        target = np.dtype(np.float32)  # exact
    elif kind == "f":
        raise ValueError(f"dtype {arr.dtype} would lose precision; pass dtype='float64' to accept that")
    else:
        target = np.dtype(np.float64)
    return arr.astype(target, copy=False)


class Recorder:
    """What an implementation calls to record its memstate: `with rec.step(k): rec.record("L1.z", z)`."""

    def __init__(self, path: str | os.PathLike, meta: dict | None = None, encoding: str | None = None, *,
                 b64: bool = False):
        self._writer = open_writer(path, meta, encoding, b64=b64)
        self.path = self._writer.path
        self.encoding = self._writer.encoding

    @contextmanager
    def step(self, index: int) -> Iterator[Recorder]:
        """A training step; leaving it by an exception leaves the step incomplete on disk, which is the truth."""
        self._writer.begin_step(index)
        try:
            yield self
        except BaseException:
            self._writer.abort_step()
            raise
        self._writer.end_step()

    def record(self, name: str, value: Any, *, dtype: Any = None) -> None:
        """Record one tensor of the current step (copied now, so the caller may reuse its buffer)."""
        step = self._writer.current_step
        if step is None:
            raise MemstateError(f"{self.path}: record({name!r}) outside a step; call it inside `with rec.step(k):`")
        try:
            arr = as_float_array(value, dtype)
        except ValueError as e:
            raise MemstateError(f"{self.path}, step {step}, tensor {name!r}: {e}") from None
        self._writer.write_tensor(name, arr)

    def close(self) -> None:
        """Finish the trace file(s)."""
        self._writer.close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

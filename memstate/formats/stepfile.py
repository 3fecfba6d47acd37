"""Reading a safetensors step file without copying its tensors (issue 14).

The file (docs/format.md, "Binary encoding") is an 8-byte little-endian header length, a JSON header
{name: {"dtype", "shape", "data_offsets": [start, end]}, "__metadata__": {...}} and the tensors' bytes.
`read_safetensors` reads the whole file with one `readinto` into one buffer and returns numpy views into
it (np.frombuffer): one copy from the page cache, none per tensor. With mapped=True the file is mapped
instead (no copy at all; the arrays are read-only and keep the mapping, and a file descriptor, open while
they live): for the comparator's workers, which only read and hold a few steps at a time.

It checks what the safetensors library checks (header length, JSON, offsets that tile the data exactly,
sizes that match the shapes) and raises BadStepFile with what is wrong; the caller names the file.
"""

from __future__ import annotations

import math
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from memstate.formats.tensorjson import MAX_ELEMENTS, MAX_NDIM

HEADER_LIMIT = 100_000_000  # the safetensors library's limit on the JSON header
NUMPY_DTYPES: dict[str, np.dtype] = {"F64": np.dtype("<f8"), "F32": np.dtype("<f4")}


class BadStepFile(ValueError):
    """A step file that is not a readable safetensors file; the message says why."""


def _buffer(path: Path, mapped: bool, populate: bool) -> tuple[Any, os.stat_result]:
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        size = st.st_size
        if size < 8:
            raise BadStepFile(f"{size} bytes: shorter than the 8-byte header length")
        if mapped:
            if populate and hasattr(mmap, "MAP_POPULATE"):  # every page faulted in now, by the kernel
                return mmap.mmap(fh.fileno(), 0, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE, prot=mmap.PROT_READ), st
            return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ), st
        buf = np.empty(size, dtype=np.uint8)
        view, got = memoryview(buf.data), 0
        while got < size:
            n = fh.readinto(view[got:])
            if not n:
                raise BadStepFile(f"the file shrank while it was read ({got} of {size} bytes)")
            got += n
        return buf, st


def _entry(name: str, info: Any) -> tuple[int, int, str, tuple[int, ...]]:
    if not isinstance(info, dict):
        raise BadStepFile(f"header entry {name!r} is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str):
        raise BadStepFile(f"tensor {name!r} has no dtype")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise BadStepFile(f"tensor {name!r}: shape must be a list of non-negative integers")
    if len(shape) > MAX_NDIM:  # checked before numpy is asked to describe the array
        raise BadStepFile(f"tensor {name!r}: shape has {len(shape)} dimensions; at most {MAX_NDIM} are allowed")
    if math.prod(d for d in shape if d) > MAX_ELEMENTS:
        raise BadStepFile(f"tensor {name!r}: shape {shape} is too large (more than {MAX_ELEMENTS} elements)")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise BadStepFile(f"tensor {name!r}: data_offsets must be [start, end] with 0 <= start <= end")
    return offsets[0], offsets[1], dtype, tuple(shape)


_Plan = tuple[tuple[str, str, "np.dtype | None", int, int, tuple[int, ...]], ...]
_Layout = tuple[tuple[int, int, str, tuple[int, ...], str], ...]
_CHECKED: dict[bytes, tuple[_Plan, _Layout, int]] = {}  # tensor tables already checked, by their JSON text
CHECKED_LIMIT = 64  # tables remembered before the memo starts over (a trace has one, or a few)


def _header(buf: Any, size: int) -> tuple[dict[str, str], _Plan, _Layout, int, int]:
    """(metadata, plan, layout by offset, end of the tensor data, start of the data) of a file's header;
    the plan lists (name, dtype, numpy dtype or None, element count, offset, shape) in the header's order."""
    n = int.from_bytes(bytes(buf[:8]), "little")
    if 8 + n > size:
        raise BadStepFile(f"header length {n} does not fit the file of {size} bytes")
    if n > HEADER_LIMIT:
        raise BadStepFile(f"header of {n} bytes is over the {HEADER_LIMIT}-byte limit of safetensors readers (the "
                          "safetensors library refuses it too); record fewer tensors, or shorter metadata, per step")
    try:
        doc = orjson.loads(bytes(buf[8:8 + n]))
    except orjson.JSONDecodeError as e:
        raise BadStepFile(f"header is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise BadStepFile("header is not a JSON object")
    meta = doc.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise BadStepFile("__metadata__ must map names to strings")
    plan, layout, end = _checked_table(doc)
    return meta, plan, layout, end, 8 + n


def _checked_table(doc: dict[str, Any]) -> tuple[_Plan, _Layout, int]:
    """The tensor table checked (entries valid, sizes matching shapes, offsets tiling the data from 0),
    planned and laid out by offset.

    Every step file of a trace has the same table, so the answer is remembered by the table's JSON text
    (orjson's, which tells 2 from 2.0 and true from 1): a step costs one dumps and one lookup, not a check
    of every entry (issue 14: the checks were a third of a diff's own work on two identical traces)."""
    key = orjson.dumps(doc)
    hit = _CHECKED.get(key)
    if hit is not None:
        return hit
    entries = {name: _entry(name, info) for name, info in doc.items()}
    layout = tuple(sorted((s, e, dtype, shape, name) for name, (s, e, dtype, shape) in entries.items()))
    end = 0
    for s, e, _, _, _ in layout:
        if s != end:
            raise BadStepFile("tensor data overlaps or leaves a gap")
        end = e
    plan = []
    for name, (s, e, dtype, shape) in entries.items():
        dt, count = NUMPY_DTYPES.get(dtype), math.prod(shape)
        if dt is not None and e - s != count * dt.itemsize:
            raise BadStepFile(f"tensor {name!r} has {e - s} bytes but shape {list(shape)} of {dtype} needs "
                              f"{count * dt.itemsize}")
        plan.append((name, dtype, dt, count, s, shape))
    if len(_CHECKED) >= CHECKED_LIMIT:
        _CHECKED.clear()
    _CHECKED[key] = (tuple(plan), layout, end)
    return _CHECKED[key]


@dataclass(frozen=True)
class Source:
    """Where a mapped step file's tensor bytes can be read again (memstate.formats.alongside): its path, the
    device and inode it had when mapped (a file renamed over it since is another file), and where the
    tensor data starts."""

    path: Path
    device: int
    inode: int
    start: int


@dataclass(frozen=True)
class Payload:
    """A step file's tensor bytes as one flat array, with the layout that gives them meaning.

    `layout` lists (offset, end, dtype, shape, name) by offset; two payloads with equal layouts and equal
    bytes hold the same tensors bit for bit, name for name (memstate.comparator.identical):
    the comparator settles a bit-identical step with one pass over its bytes instead of one call per
    tensor (issue 14). `source` is set for a mapped file: its bytes can then be compared without touching
    the mapping."""

    layout: tuple[tuple[int, int, str, tuple[int, ...], str], ...]
    data: np.ndarray  # uint8, read-only or not as the tensors are
    source: Source | None = None


def read_safetensors(path: str | os.PathLike, mapped: bool = False, populate: bool = True
                     ) -> tuple[dict[str, str], dict[str, tuple[str, np.ndarray | None]]]:
    """(metadata, {name: (safetensors dtype, array)}) of one file; the array is None for a dtype not F64/F32.

    mapped=True maps the file; populate=False leaves its pages to be faulted in when touched (for a caller
    that looks at few of them, or reads them once: faulting in as it goes costs less than populating)."""
    meta, out, _ = read_step_payload(path, mapped, populate)
    return meta, out


def read_step_payload(path: str | os.PathLike, mapped: bool = False, populate: bool = True
                      ) -> tuple[dict[str, str], dict[str, tuple[str, np.ndarray | None]], Payload]:
    """What `read_safetensors` gives, and the file's Payload (views, no copy)."""
    path = path if isinstance(path, Path) else Path(path)
    buf, st = _buffer(path, mapped, populate)
    size = len(buf)
    meta, plan, layout, end, start = _header(buf, size)
    if start + end != size:
        raise BadStepFile(f"the tensors take {end} bytes but the file holds {size - start} after the header")
    out: dict[str, tuple[str, np.ndarray | None]] = {}
    for name, dtype, dt, count, s, shape in plan:
        if dt is None:
            out[name] = (dtype, None)
        elif count:
            out[name] = (dtype, np.frombuffer(buf, dtype=dt, count=count, offset=start + s).reshape(shape))
        else:
            arr = np.empty(0, dtype=dt)
            arr.flags.writeable = not mapped
            out[name] = (dtype, arr.reshape(shape))
    data = np.frombuffer(buf, dtype=np.uint8, count=end, offset=start) if end else np.empty(0, dtype=np.uint8)
    source = Source(path, st.st_dev, st.st_ino, start) if mapped else None
    return meta, out, Payload(layout, data, source)

"""Converting a trace between the JSONL and binary encodings, one step at a time, without loss.

The copy is written under a temporary name next to the destination and renamed into place only when it is
complete, with the destination locked throughout: a failed conversion leaves no trace behind (and any older
trace at the destination as it was), and a second writer to the same destination fails at once.

With jobs > 1, a binary source converted to JSONL is encoded by worker processes, a range of steps each
(the JSON text is the costly part), into part files next to the destination that are then joined in step
order; otherwise steps are read one ahead in a background thread while the previous one is written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from memstate.errors import FormatError, MemstateError
from memstate.formats.lock import lock_trace
from memstate.formats.map import LayoutMap
from memstate.formats.readahead import read_ahead
from memstate.formats.recorder import JsonlWriter, encoding_for, open_writer, terminator
from memstate.formats.tensorjson import dumps_record
from memstate.formats.trace import TraceReader, _list_steps, open_trace, read_step_file, step_file_name
from memstate.workers import files_hold, process_context

RANGE_STEPS = 8  # steps per unit of work when encoding in parallel
MIN_BYTES = 256 << 20  # a smaller binary source is encoded in-process: starting workers costs more
# (one core writes about 80 MB/s of binary as JSONL; at 49 MB --jobs 2 took 1.7 times as long as --jobs 1)


def convert_trace(src: str | os.PathLike, dst: str | os.PathLike, *, b64: bool = False,
                  encoding: str | None = None, jobs: int = 1, layout: LayoutMap | None = None) -> int:
    """Copy trace `src` to `dst` (encoding from dst's path unless given); returns the number of complete steps.

    Bits are kept exactly, except that JSONL "data" spells every NaN as "nan": pass b64=True to keep NaN payloads.
    A trailing incomplete step is carried over, still without its terminator; so is the run id. jobs > 1
    encodes a binary source of at least MIN_BYTES (256 MiB) into JSONL in that many processes; the file is
    the same. With a layout map (given, or the header's `meta.map`) the destination is the canonical trace:
    mapped tensors, header without the map and with `mapped_from` saying where it came from.
    """
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise MemstateError(f"{src}: source and destination are the same trace")
    encoding = encoding or encoding_for(dst)
    with lock_trace(dst):
        tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            count = _copy(src, tmp, encoding, b64, jobs, layout)
            replace_trace(tmp, dst)
        except BaseException:
            remove_trace(tmp)
            raise
    return count


def _copy(src: Path, dst: Path, encoding: str, b64: bool, jobs: int, layout: LayoutMap | None) -> int:
    with open_trace(src, layout) as reader:
        meta = reader.meta
        if reader.layout is not None:
            meta = {**meta, "mapped_from": {"trace": str(src), "map": reader.layout.source}}
        with open_writer(dst, meta, encoding, b64=b64, run_id=reader.run_id) as writer:
            return _copy_steps(reader, writer, b64, jobs)


def _copy_steps(reader: TraceReader, writer: Any, b64: bool, jobs: int) -> int:
    """Every step, the trailing incomplete one included (left without its terminator); returns complete steps."""
    if (jobs > 1 and reader.layout is None and reader.encoding == "binary" and isinstance(writer, JsonlWriter)
            and files_hold(reader.path.iterdir(), MIN_BYTES)):
        return _parallel_to_jsonl(reader, writer, b64, jobs)
    count = 0
    steps = read_ahead(reader.steps(include_incomplete=True, mapped=reader.encoding == "binary"), reader.encoding)
    try:
        for step in steps:
            writer.begin_step(step.index)
            for name, arr in step.tensors.items():
                writer.write_tensor(name, arr)
            if step.complete:
                writer.end_step()
                count += 1
            else:
                writer.abort_step()
    finally:
        steps.close()
    return count


def replace_trace(new: Path, dst: Path) -> None:
    """Rename trace `new` (file or directory) to `dst`, replacing whatever is there; `dst` never half-exists."""
    old = None
    if dst.exists() or dst.is_symlink():
        old = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:12]}.old")
        os.replace(dst, old)
    try:
        os.replace(new, dst)
    except BaseException:
        if old is not None:
            os.replace(old, dst)
        raise
    if old is not None:
        remove_trace(old)


def remove_trace(path: Path) -> None:
    """Remove a trace file or directory, if there is one."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def encode_range(path: str, steps: tuple[int, ...], b64: bool, out: str, run_id: str | None = None) -> None:
    """The unit of work of a parallel conversion: these complete steps of a binary trace, as JSONL lines, to `out`."""
    with open(out, "wb") as fh:
        for k in steps:
            tensors = read_step_file(Path(path) / step_file_name(k), k, run_id, mapped=True)
            lines = [dumps_record({"step": k, "name": name}, arr, b64=b64) for name, arr in tensors.items()]
            lines.append(terminator(k))
            fh.writelines(lines)


def _parallel_to_jsonl(reader: TraceReader, writer: JsonlWriter, b64: bool, jobs: int) -> int:
    done, tmp = _list_steps(reader.path)
    for k in done:  # every step file is checked here, in order, so errors name the first bad step
        read_step_file(reader.path / step_file_name(k), k, reader.run_id, mapped=True, populate=False)
    ranges = [tuple(done[i:i + RANGE_STEPS]) for i in range(0, len(done), RANGE_STEPS)]
    parts = Path(tempfile.mkdtemp(prefix=".convert-", dir=writer.path.parent))
    ctx = process_context()
    try:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = [pool.submit(encode_range, str(reader.path), r, b64, str(parts / f"{i:08d}"), reader.run_id)
                       for i, r in enumerate(ranges)]
            for i, (fut, r) in enumerate(zip(futures, ranges)):
                fut.result()
                with open(parts / f"{i:08d}", "rb") as part:
                    writer.append_encoded(part, r[-1])
                os.remove(parts / f"{i:08d}")
    finally:
        shutil.rmtree(parts, ignore_errors=True)
    if tmp is not None:
        try:
            tensors = read_step_file(reader.path / (step_file_name(tmp) + ".tmp"), tmp, reader.run_id)
        except FormatError:
            tensors = {}
        writer.begin_step(tmp)
        for name, arr in tensors.items():
            writer.write_tensor(name, arr)
        writer.abort_step()
    return len(done)


__all__ = ["convert_trace", "encode_range", "encoding_for", "remove_trace", "replace_trace"]

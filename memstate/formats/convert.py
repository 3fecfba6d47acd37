"""Converting a trace between the JSONL and binary encodings, one step at a time, without loss.

With jobs > 1, a binary source converted to JSONL is encoded by worker processes, a range of steps each
(the JSON text is the costly part), into part files next to the destination that are then joined in step
order; otherwise a JSONL source is read one step ahead in a background thread while the previous one is written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from memstate.errors import FormatError, MemstateError
from memstate.formats.readahead import read_ahead
from memstate.formats.recorder import JsonlWriter, encoding_for, open_writer, terminator
from memstate.formats.tensorjson import dumps_record
from memstate.workers import files_hold, process_context
from memstate.formats.trace import TraceReader, _list_steps, open_trace, read_step_file, step_file_name

RANGE_STEPS = 8  # steps per unit of work when encoding in parallel
MIN_BYTES = 16 << 20  # a smaller binary source is encoded in-process: starting workers costs more


def convert_trace(src: str | os.PathLike, dst: str | os.PathLike, *, b64: bool = False,
                  encoding: str | None = None, jobs: int = 1) -> int:
    """Copy trace `src` to `dst` (encoding from dst's path unless given); returns the number of complete steps.

    Bits are kept exactly, except that JSONL "data" spells every NaN as "nan": pass b64=True to keep NaN payloads.
    A trailing incomplete step is carried over, still without its terminator. jobs > 1 encodes a binary
    source of at least MIN_BYTES (16 MiB) into JSONL in that many processes; the file is the same.
    """
    if Path(src).resolve() == Path(dst).resolve():
        raise MemstateError(f"{src}: source and destination are the same trace")
    with open_trace(src) as reader, open_writer(dst, reader.meta, encoding, b64=b64) as writer:
        if (jobs > 1 and reader.encoding == "binary" and isinstance(writer, JsonlWriter)
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


def encode_range(path: str, steps: tuple[int, ...], b64: bool, out: str) -> None:
    """The unit of work of a parallel conversion: these complete steps of a binary trace, as JSONL lines, to `out`."""
    with open(out, "wb") as fh:
        for k in steps:
            tensors = read_step_file(Path(path) / step_file_name(k), k, mapped=True)
            lines = [dumps_record({"step": k, "name": name}, arr, b64=b64) for name, arr in tensors.items()]
            lines.append(terminator(k))
            lines.append(b"")
            fh.write(b"\n".join(lines))


def _parallel_to_jsonl(reader: TraceReader, writer: JsonlWriter, b64: bool, jobs: int) -> int:
    done, tmp = _list_steps(reader.path)
    for k in done:  # every step file is checked here, in order, so errors name the first bad step
        read_step_file(reader.path / step_file_name(k), k, mapped=True, populate=False)
    ranges = [tuple(done[i:i + RANGE_STEPS]) for i in range(0, len(done), RANGE_STEPS)]
    parts = Path(tempfile.mkdtemp(prefix=".convert-", dir=writer.path.parent))
    ctx = process_context()
    try:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = [pool.submit(encode_range, str(reader.path), r, b64, str(parts / f"{i:08d}"))
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
            tensors = read_step_file(reader.path / (step_file_name(tmp) + ".tmp"), tmp)
        except FormatError:
            tensors = {}
        writer.begin_step(tmp)
        for name, arr in tensors.items():
            writer.write_tensor(name, arr)
        writer.abort_step()
    return len(done)


__all__ = ["convert_trace", "encode_range", "encoding_for"]

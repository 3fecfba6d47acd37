"""Converting a trace between the JSONL and binary encodings, one step at a time, without loss."""

from __future__ import annotations

import os
from pathlib import Path

from memstate.errors import MemstateError
from memstate.formats.recorder import open_writer
from memstate.formats.trace import open_trace


def convert_trace(src: str | os.PathLike, dst: str | os.PathLike, *, b64: bool = False,
                  encoding: str | None = None) -> int:
    """Copy trace `src` to `dst` (encoding from dst's path unless given); returns the number of complete steps.

    Bits are kept exactly, except that JSONL "data" spells every NaN as "nan": pass b64=True to keep NaN payloads.
    A trailing incomplete step is carried over, still without its terminator.
    """
    if Path(src).resolve() == Path(dst).resolve():
        raise MemstateError(f"{src}: source and destination are the same trace")
    count = 0
    with open_trace(src) as reader, open_writer(dst, reader.meta, encoding, b64=b64) as writer:
        for step in reader.steps(include_incomplete=True):
            writer.begin_step(step.index)
            for name, arr in step.tensors.items():
                writer.write_tensor(name, arr)
            if step.complete:
                writer.end_step()
                count += 1
            else:
                writer.abort_step()
    return count

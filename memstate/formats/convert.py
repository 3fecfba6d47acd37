"""Converting a trace between the JSONL and binary encodings, one step at a time, without loss."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from memstate.errors import MemstateError
from memstate.formats.map import LayoutMap
from memstate.formats.recorder import open_writer
from memstate.formats.trace import TraceReader, open_trace


def convert_trace(src: str | os.PathLike, dst: str | os.PathLike, *, b64: bool = False,
                  encoding: str | None = None, layout: LayoutMap | None = None) -> int:
    """Copy trace `src` to `dst` (encoding from dst's path unless given); returns the number of complete steps.

    Bits are kept exactly, except that JSONL "data" spells every NaN as "nan": pass b64=True to keep NaN payloads.
    A trailing incomplete step is carried over, still without its terminator. With a layout map (given, or the
    header's `meta.map`) the destination is the canonical trace: mapped tensors, header without the map and
    with `mapped_from` saying where it came from.
    """
    if Path(src).resolve() == Path(dst).resolve():
        raise MemstateError(f"{src}: source and destination are the same trace")
    with open_trace(src, layout) as reader:
        meta = reader.meta
        if reader.layout is not None:
            meta = {**meta, "mapped_from": {"trace": str(src), "map": reader.layout.source}}
        with open_writer(dst, meta, encoding, b64=b64) as writer:
            count = _copy_steps(reader, writer)
    return count


def _copy_steps(reader: TraceReader, writer: Any) -> int:
    """Every step, the trailing incomplete one included (left without its terminator); returns complete steps."""
    count = 0
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

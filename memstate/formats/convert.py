"""Converting a trace between the JSONL and binary encodings, one step at a time, without loss.

The copy is written under a temporary name next to the destination and renamed into place only when it is
complete, with the destination locked throughout: a failed conversion leaves no trace behind (and any older
trace at the destination as it was), and a second writer to the same destination fails at once.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from memstate.errors import MemstateError
from memstate.formats.lock import lock_trace
from memstate.formats.recorder import encoding_for, open_writer
from memstate.formats.trace import open_trace


def convert_trace(src: str | os.PathLike, dst: str | os.PathLike, *, b64: bool = False,
                  encoding: str | None = None) -> int:
    """Copy trace `src` to `dst` (encoding from dst's path unless given); returns the number of complete steps.

    Bits are kept exactly, except that JSONL "data" spells every NaN as "nan": pass b64=True to keep NaN payloads.
    A trailing incomplete step is carried over, still without its terminator; so is the run id.
    """
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise MemstateError(f"{src}: source and destination are the same trace")
    encoding = encoding or encoding_for(dst)
    with lock_trace(dst):
        tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            count = _copy(src, tmp, encoding, b64)
            replace_trace(tmp, dst)
        except BaseException:
            remove_trace(tmp)
            raise
    return count


def _copy(src: Path, dst: Path, encoding: str, b64: bool) -> int:
    count = 0
    with open_trace(src) as reader, open_writer(dst, reader.meta, encoding, b64=b64, run_id=reader.run_id) as writer:
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

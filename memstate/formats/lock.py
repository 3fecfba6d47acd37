"""One writer per trace: an exclusive lock, taken before anything is written and held until the trace is done.

The lock is `fcntl.flock` on a small hidden file next to the trace, `.<name>.lock`, holding the writer's pid.
The kernel drops it when the writer exits, even by kill -9, so a crashed writer never blocks the next one;
a writer that finishes removes the file. Where fcntl is missing (Windows), the lock file is created with
O_EXCL instead, and a crash leaves it behind: the error message says to remove it.
"""

from __future__ import annotations

import os
from pathlib import Path

from memstate.errors import MemstateError, TraceBusyError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def lock_path_for(path: str | os.PathLike) -> Path:
    """The lock file of the trace at `path`: `.<name>.lock` in the same directory."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


class TraceLock:
    """The held lock on one trace; `release()` (or leaving the `with` block) gives it up."""

    def __init__(self, trace: Path, lock_file: Path, fd: int):
        self.trace, self.lock_file, self._fd = trace, lock_file, fd

    def release(self) -> None:
        """Remove the lock file and drop the lock (in that order, so a waiting writer locks a fresh file)."""
        if self._fd < 0:
            return
        try:
            os.unlink(self.lock_file)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = -1

    def __enter__(self) -> TraceLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_trace(path: str | os.PathLike) -> TraceLock:
    """Take the writer's lock on the trace at `path` at once, or raise TraceBusyError naming the holder."""
    trace = Path(path)
    lock_file = lock_path_for(trace)
    if not trace.parent.is_dir():
        raise MemstateError(f"{trace}: cannot create the trace: directory {trace.parent} does not exist")
    for _ in range(5):  # the holder may remove its lock file between our open and our flock: retry on a fresh one
        fd = _open_locked(trace, lock_file)
        try:
            same = os.stat(lock_file).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return TraceLock(trace, lock_file, fd)
        os.close(fd)
    raise TraceBusyError(f"{trace}: another writer keeps taking and releasing this trace; try again")


def _open_locked(trace: Path, lock_file: Path) -> int:
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
    if fcntl is None:
        flags |= os.O_EXCL
    try:
        fd = os.open(lock_file, flags, 0o644)
    except FileExistsError:
        raise _busy(trace, lock_file, "; if no writer is running, remove the lock file") from None
    except OSError as e:
        raise MemstateError(f"{trace}: cannot create the lock file {lock_file}: {e.strerror or e}") from None
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _busy(trace, lock_file, "") from None
        except OSError as e:
            os.close(fd)
            raise MemstateError(f"{trace}: cannot lock {lock_file}: {e.strerror or e}") from None
    return fd


def _busy(trace: Path, lock_file: Path, hint: str) -> TraceBusyError:
    try:
        holder = lock_file.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        holder = ""
    who = f"process {holder}" if holder.isdigit() else "another process"
    return TraceBusyError(f"{trace}: {who} is writing this trace (lock {lock_file}); wait for it to finish or "
                          f"write to another path{hint}")

"""The error types memstate raises for user mistakes: each message names the file, the tensor and the fix."""

from __future__ import annotations


class MemstateError(Exception):
    """Base class: the CLI turns any of these into a one-line message and exit status 2."""


class FormatError(MemstateError):
    """A params file or trace does not follow docs/format.md."""

    def __init__(self, path: object, what: str, tensor: str | None = None, line: int | None = None):
        self.path = str(path)
        self.tensor = tensor
        self.line = line
        self.what = what
        where = self.path
        if line is not None:
            where += f", line {line}"
        if tensor is not None:
            where += f", tensor {tensor!r}"
        super().__init__(f"{where}: {what}")


class ScenarioError(MemstateError):
    """A scenario file has an unknown key, a missing key or a value out of range."""


class DataError(MemstateError):
    """A data set (bundled digits or MNIST IDX files) is missing, truncated or malformed."""


class TraceBusyError(MemstateError):
    """Another writer holds the trace (or its destination) this writer was asked to write."""

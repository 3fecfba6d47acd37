"""Huge JSONL records in bounded memory: the "data" array parsed straight into an ndarray (issue 14).

A JSON parser turns a line of n numbers into n Python floats (32 bytes each, against about 20 bytes of
text), so a 1 GB line would need several GB. A line of at least STREAM_BYTES is read differently: the
record without its "data" array is parsed as JSON, and the array's text is parsed by orjson block by
block (a block ends at a comma) into one float64 array, with the checks of the plain reader. Peak memory
is the line itself, the array (8 bytes a value, under half the text) and one block: about 1.5x the line.

Lines longer than `max_line_bytes()` (the environment variable MEMSTATE_MAX_LINE_BYTES, default 4 GiB)
are refused before they are read whole; docs/format.md says so and suggests the binary encoding.
"""

from __future__ import annotations

import os
import re
from typing import Any, BinaryIO

import numpy as np

from memstate.formats.tensorjson import NONFINITE, BadJSON, loads_fast

STREAM_BYTES = 16 << 20  # lines from this length on take the streaming path
MAX_LINE_DEFAULT = 4 << 30
BLOCK_BYTES = 1 << 17  # text parsed per block (orjson needs about 12x a block while it parses it)
SCAN_BYTES = 1 << 20  # read at a time while looking for the end of a huge line
_DATA = re.compile(rb'"data"\s*:\s*\[')


class BadData(ValueError):
    """The "data" text is not a flat JSON list of numbers and "nan"/"inf"/"-inf"; the message says where."""


def max_line_bytes() -> int:
    """The longest JSONL line a reader accepts (MEMSTATE_MAX_LINE_BYTES, default 4 GiB)."""
    raw = os.environ.get("MEMSTATE_MAX_LINE_BYTES", "")
    try:
        value = int(raw) if raw.strip() else MAX_LINE_DEFAULT
    except ValueError:
        value = MAX_LINE_DEFAULT
    return value if value > 0 else MAX_LINE_DEFAULT


class LineTooLong(ValueError):
    """A line longer than the limit; `length` is how long it is (or at least)."""

    def __init__(self, length: int):
        super().__init__(length)
        self.length = length


def read_line(fh: BinaryIO, limit: int) -> bytes:
    """The next line of a binary file (b"" at its end), read into a bytes object of exactly its size.

    A line shorter than STREAM_BYTES is read as usual; a longer one is first measured (scanned for its
    newline without keeping it) and then read at once, so that it is never held twice. Raises LineTooLong,
    before reading it, for a line longer than `limit`.
    """
    head = fh.readline(STREAM_BYTES)
    if len(head) < STREAM_BYTES or head.endswith(b"\n"):
        if len(head) > limit:
            raise LineTooLong(len(head))
        return head
    start = fh.tell() - len(head)
    length = len(head)
    while True:
        chunk = fh.read(SCAN_BYTES)
        cut = chunk.find(b"\n")
        length += len(chunk) if cut < 0 else cut + 1
        if length > limit:
            raise LineTooLong(length)
        if cut >= 0 or len(chunk) < SCAN_BYTES:
            break
    fh.seek(start)
    return fh.read(length)


def _preceded_by_escape(raw: bytes, pos: int) -> bool:
    n = 0
    while pos - n - 1 >= 0 and raw[pos - n - 1] == 0x5C:  # backslash
        n += 1
    return n % 2 == 1


def data_span(raw: bytes) -> tuple[int, int] | None:
    """(start, end) of the text between the brackets of the record's "data" array, or None if not found."""
    for m in _DATA.finditer(raw):
        if _preceded_by_escape(raw, m.start()):
            continue
        start = m.end()
        end = raw.find(b"]", start)
        return (start, end) if end >= 0 else None
    return None


def _block_values(block: list[Any], where: str) -> np.ndarray:
    """A parsed block of "data" as float64, with the checks of memstate.formats.tensorjson's "data" reader."""
    kinds = set(map(type, block))
    if not kinds <= {int, float, str}:
        bad = next(v for v in block if type(v) not in (int, float, str))
        raise BadData(f'"data" holds {type(bad).__name__} {str(bad)[:40]} {where}; only numbers and "nan", "inf", '
                      '"-inf" are allowed')
    strings = str in kinds
    if strings:
        try:
            block = [NONFINITE[v] if type(v) is str else v for v in block]
        except KeyError as e:
            raise BadData(f'"data" holds the string {str(e.args[0])[:40]!r} {where}; the only strings allowed are '
                          '"nan", "inf" and "-inf"') from None
    try:
        values = np.array(block, dtype=np.float64)
    except OverflowError:
        raise BadData(f'"data" holds an integer too large for float64 {where}') from None
    if not strings and not np.isfinite(values).all():
        raise BadData(f'"data" holds a number out of float64 range {where}; write "inf"/"-inf" as strings')
    return values


def parse_numbers(raw: bytes, start: int, end: int) -> np.ndarray:
    """The float64 values of the JSON list whose inner text is raw[start:end], parsed by orjson block by
    block (each block ends at a comma), so that only one block is ever held as Python objects."""
    if end - start <= 64 and not raw[start:end].strip():
        return np.empty(0)
    out = np.empty(raw.count(b",", start, end) + 1)
    filled, pos = 0, start
    while pos <= end:
        cut = raw.find(b",", min(pos + BLOCK_BYTES, end), end)
        cut = end if cut < 0 else cut
        where = f"(between columns {pos + 1} and {cut + 1})"
        try:
            block = loads_fast(b"[" + raw[pos:cut] + b"]")
        except BadJSON as e:
            raise BadData(f'"data" is not a flat JSON list {where}: {e.msg}') from None
        if not isinstance(block, list):
            raise BadData(f'"data" is not a flat JSON list {where}')
        values = _block_values(block, where)
        if filled + values.size > out.size:  # commas inside strings: not a flat list of numbers
            raise BadData(f'"data" is not a flat list of numbers {where}')
        out[filled:filled + values.size] = values
        filled += values.size
        pos = cut + 1
    return out[:filled]


def parse_big_record(raw: bytes) -> dict[str, Any] | None:
    """The record of one huge line with "data" as a float64 ndarray; None when the line has no top-level
    "data" list this can find (the caller then parses it as plain JSON). Raises BadData for bad data text."""
    span = data_span(raw)
    if span is None:
        return None
    start, end = span
    try:
        obj = loads_fast(raw[:start] + raw[end:])
    except BadJSON:
        return None
    if not isinstance(obj, dict) or obj.get("data") != []:
        return None
    obj["data"] = parse_numbers(raw, start, end)
    return obj

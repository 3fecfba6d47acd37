"""Params files (`*.params.json`, docs/format.md): a network's named parameter tensors plus free-form meta."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from memstate.errors import FormatError, MemstateError
from memstate.formats.tensorjson import BadJSON, decode_fields, decode_name, dtype_name, encode_tensor, loads_strict

FORMAT = "memstate.params"
VERSION = 1


@dataclass(frozen=True)
class Params:
    """The contents of a params file: tensors in file order, the meta object and where it came from."""

    tensors: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def read_params(path: str | os.PathLike) -> Params:
    """Read and strictly validate a params file; any deviation from the format is a FormatError."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise FormatError(path, "no such file; check the path") from None
    except IsADirectoryError:
        raise FormatError(path, "is a directory, not a params file") from None
    try:
        doc = loads_strict(text)
    except BadJSON as e:
        raise FormatError(path, e.msg, line=e.line) from None
    return Params(tensors=_tensors(doc, path), meta=_meta(doc, path), path=path)


def check_envelope(doc: Any, path: object, expected: str, line: int | None = None) -> None:
    """Check the "format" and "version" fields shared by params files and trace headers."""
    if not isinstance(doc, dict):
        raise FormatError(path, f'expected a JSON object with "format": "{expected}"', line=line)
    if doc.get("format") != expected:
        got = json.dumps(doc.get("format"))
        raise FormatError(path, f'"format" is {got}, expected "{expected}"; is this the right file?', line=line)
    version = doc.get("version")
    if type(version) is not int:
        raise FormatError(path, f'"version" must be an integer, got {json.dumps(version)}', line=line)
    if version != VERSION:
        raise FormatError(path, f"format version {version} is not supported (this reader reads version {VERSION}); "
                                "upgrade memstate", line=line)


def _meta(doc: dict, path: Path) -> dict[str, Any]:
    meta = doc.get("meta", {})
    if not isinstance(meta, dict):
        raise FormatError(path, '"meta" must be a JSON object')
    return meta


def _tensors(doc: Any, path: Path) -> dict[str, np.ndarray]:
    check_envelope(doc, path, FORMAT)
    items = doc.get("tensors")
    if not isinstance(items, list):
        raise FormatError(path, 'missing "tensors" (a list of tensor objects)')
    out: dict[str, np.ndarray] = {}
    for obj in items:
        name = decode_name(obj, path)
        if name in out:
            raise FormatError(path, "duplicate tensor name; each name may appear once", name)
        out[name] = decode_fields(obj, path, name)
    return out


def write_params(path: str | os.PathLike, tensors: Mapping[str, np.ndarray], meta: dict | None = None, *,
                 b64: bool = False) -> None:
    """Write a params file, one tensor per line; float32 arrays stay float32, anything else becomes float64."""
    path = Path(path)
    lines = []
    for name, value in tensors.items():
        if not isinstance(name, str) or not name:
            raise MemstateError(f"{path}: tensor names must be non-empty strings, got {name!r}")
        arr = np.asarray(value)
        if arr.dtype.kind not in "fiub" or arr.dtype.itemsize > 8:
            raise MemstateError(f"{path}, tensor {name!r}: dtype {arr.dtype} cannot be written; "
                                "convert it to float32 or float64")
        try:
            dtype_name(arr)
        except ValueError:
            arr = arr.astype(np.float64)
        lines.append(json.dumps(encode_tensor(name, arr, b64=b64), allow_nan=False))
    try:
        head = json.dumps({"format": FORMAT, "version": VERSION, "meta": dict(meta or {})}, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise MemstateError(f"{path}: meta must be plain JSON (no NaN, no objects): {e}") from None
    body = head[:-1] + ', "tensors": [\n' + ",\n".join(lines) + "\n]}\n"
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(body, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        raise MemstateError(f"{path}: cannot write the params file: {e.strerror or e}") from None

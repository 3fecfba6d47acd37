"""Tensors as JSON objects (docs/format.md, "Tensors in JSON"): exact encode and strict decode.

Shared by params files and JSONL traces so that both spell a tensor the same way, bit for bit.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from typing import Any

import numpy as np
import orjson

from memstate.errors import FormatError

DTYPES: dict[str, np.dtype] = {"float64": np.dtype("<f8"), "float32": np.dtype("<f4")}
NONFINITE: dict[str, float] = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_NUMBER_TYPES = frozenset({int, float})


class BadJSON(ValueError):
    """Text that is not strict JSON; `line` is 1-based within the parsed text, or None."""

    def __init__(self, msg: str, line: int | None = None):
        super().__init__(msg)
        self.msg = msg
        self.line = line


class _Constant(ValueError):
    pass


def _reject_constant(token: str) -> float:
    raise _Constant(f"bare {token} is not JSON; write the string \"{token.lower().replace('infinity', 'inf')}\"")


_BARE_CONSTANT = re.compile(rb"[\[,:\s](-?Infinity|NaN)\b")


def _constant_line(text: str | bytes) -> int | None:
    raw = text.encode() if isinstance(text, str) else text
    m = _BARE_CONSTANT.search(raw)
    return raw.count(b"\n", 0, m.start(1)) + 1 if m else None


def loads_strict(text: str | bytes) -> Any:
    """json.loads that refuses the NaN/Infinity tokens Python accepts; every failure is a BadJSON."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except _Constant as e:
        raise BadJSON(str(e), _constant_line(text)) from None
    except json.JSONDecodeError as e:
        raise BadJSON(f"not valid JSON: {e.msg} (column {e.colno})", e.lineno) from None
    except ValueError as e:  # bytes that are not UTF-8
        raise BadJSON(f"not valid UTF-8: {e}") from None


def loads_fast(text: str | bytes) -> Any:
    """orjson.loads, which is strict JSON too; on anything it refuses, `loads_strict` for the value or the
    precise message (line and column), so the two parsers never disagree on what is accepted."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return loads_strict(text)


def dtype_name(arr: np.ndarray) -> str:
    """The format's dtype name of a float32/float64 array."""
    if arr.dtype.kind == "f" and arr.dtype.itemsize == 8:
        return "float64"
    if arr.dtype.kind == "f" and arr.dtype.itemsize == 4:
        return "float32"
    raise ValueError(f"dtype {arr.dtype} is not float32 or float64")


def encode_fields(arr: np.ndarray, *, b64: bool = False) -> dict[str, Any]:
    """The "shape", "dtype" and "data"/"b64" fields of a float32/float64 array, ready for json.dumps."""
    name = dtype_name(arr)
    fields: dict[str, Any] = {"shape": list(arr.shape), "dtype": name}
    if b64:
        raw = np.ascontiguousarray(arr, dtype=DTYPES[name]).tobytes()
        fields["b64"] = base64.b64encode(raw).decode("ascii")
        return fields
    # float32 values go out as the repr of their exact float64 value, which reads back to the same float32.
    flat = np.asarray(arr, dtype=np.float64).reshape(-1)
    data: list[Any] = flat.tolist()
    finite = np.isfinite(flat)
    if not finite.all():
        for i in np.flatnonzero(~finite).tolist():
            v = data[i]
            data[i] = "nan" if v != v else ("inf" if v > 0 else "-inf")
    fields["data"] = data
    return fields


def dumps_record(head: dict[str, Any], arr: np.ndarray, *, b64: bool = False) -> bytes:
    """One JSON line (without the newline) for {**head, **encode_fields(arr)}: the same JSON values, by orjson.

    Finite values go through orjson's numpy serializer as float64 (so a float32 value is written as its
    exact double, docs/format.md); a tensor holding nan or inf spells them "nan", "inf", "-inf".
    -0.0 is written -0.0.
    """
    if b64:
        return orjson.dumps({**head, **encode_fields(arr, b64=True)})
    name = dtype_name(arr)
    flat = np.ascontiguousarray(arr, dtype=np.float64).reshape(-1)
    finite = flat.size == 0 or (math.isfinite(float(flat.max())) and math.isfinite(float(flat.min())))
    data: Any = flat if finite else encode_fields(flat)["data"]
    return orjson.dumps({**head, "shape": list(arr.shape), "dtype": name, "data": data},
                        option=orjson.OPT_SERIALIZE_NUMPY)


def encode_tensor(name: str, arr: np.ndarray, *, b64: bool = False) -> dict[str, Any]:
    """A whole tensor object {"name", "shape", "dtype", "data"|"b64"}."""
    return {"name": name, **encode_fields(arr, b64=b64)}


def _shape(obj: dict, path: object, tensor: str | None, line: int | None) -> tuple[int, ...]:
    if "shape" not in obj:
        raise FormatError(path, 'missing "shape"; add the list of dimensions ([] for a scalar)', tensor, line)
    shape = obj["shape"]
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise FormatError(path, f'"shape" must be a list of non-negative integers, got {_short(shape)}', tensor, line)
    return tuple(shape)


def _dtype(obj: dict, path: object, tensor: str | None, line: int | None) -> np.dtype:
    if "dtype" not in obj:
        raise FormatError(path, 'missing "dtype"; use "float64" or "float32"', tensor, line)
    dt = obj["dtype"]
    if not isinstance(dt, str) or dt not in DTYPES:
        raise FormatError(path, f'unknown dtype {_short(dt)}; use "float64" or "float32"', tensor, line)
    return DTYPES[dt]


def _from_data(data: Any, shape: tuple[int, ...], dt: np.dtype, path: object, tensor: str | None,
               line: int | None) -> np.ndarray:
    if isinstance(data, np.ndarray):  # parsed straight into an array (memstate.formats.bigline)
        return _from_parsed(data, shape, dt, path, tensor, line)
    if not isinstance(data, list):
        raise FormatError(path, f'"data" must be a flat list of numbers, got {_short(data)}', tensor, line)
    count = math.prod(shape)
    if len(data) != count:
        raise FormatError(path, f'"data" has {len(data)} values but shape {list(shape)} needs {count}', tensor, line)
    kinds = set(map(type, data))
    has_strings = str in kinds
    if not kinds <= _NUMBER_TYPES | {str}:
        bad = next(v for v in data if type(v) not in _NUMBER_TYPES and type(v) is not str)
        raise FormatError(path, f'"data" holds {_short(bad)}; only numbers and "nan", "inf", "-inf" are allowed',
                          tensor, line)
    if has_strings:
        try:
            data = [NONFINITE[v] if type(v) is str else v for v in data]
        except KeyError as e:
            raise FormatError(path, f'"data" holds the string {_short(e.args[0])}; the only strings allowed are '
                                    '"nan", "inf" and "-inf"', tensor, line) from None
    try:
        flat = np.array(data, dtype=np.float64)
    except OverflowError:
        raise FormatError(path, '"data" holds an integer too large for float64', tensor, line) from None
    if not has_strings and not np.isfinite(flat).all():
        raise FormatError(path, '"data" holds a number out of float64 range; write "inf"/"-inf" as strings',
                          tensor, line)
    if dt.itemsize == 4:
        with np.errstate(over="ignore"):
            narrow = flat.astype(np.float32)
        if (np.isinf(narrow) & np.isfinite(flat)).any():
            raise FormatError(path, '"data" holds a number out of float32 range; write "inf"/"-inf" as strings',
                              tensor, line)
        flat = narrow
    return flat.reshape(shape)


def _from_parsed(flat: np.ndarray, shape: tuple[int, ...], dt: np.dtype, path: object, tensor: str | None,
                 line: int | None) -> np.ndarray:
    """A float64 "data" array that memstate.formats.bigline parsed and checked: its length, and float32's range."""
    count = math.prod(shape)
    if flat.size != count:
        raise FormatError(path, f'"data" has {flat.size} values but shape {list(shape)} needs {count}', tensor, line)
    if dt.itemsize == 4:
        with np.errstate(over="ignore"):
            narrow = flat.astype(np.float32)
        if (np.isinf(narrow) & np.isfinite(flat)).any():
            raise FormatError(path, '"data" holds a number out of float32 range; write "inf"/"-inf" as strings',
                              tensor, line)
        return narrow.reshape(shape)
    return flat.reshape(shape)


def _from_b64(text: Any, shape: tuple[int, ...], dt: np.dtype, path: object, tensor: str | None,
              line: int | None) -> np.ndarray:
    if not isinstance(text, str):
        raise FormatError(path, f'"b64" must be a base64 string, got {_short(text)}', tensor, line)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise FormatError(path, '"b64" is not valid base64 (standard alphabet, with padding)', tensor, line) from None
    need = math.prod(shape) * dt.itemsize
    if len(raw) != need:
        raise FormatError(path, f'"b64" decodes to {len(raw)} bytes but shape {list(shape)} of {dt.name} needs '
                                f"{need}", tensor, line)
    return np.frombuffer(raw, dtype=dt).astype(dt.newbyteorder("="), copy=True).reshape(shape)


def decode_fields(obj: dict, path: object, tensor: str | None = None, line: int | None = None) -> np.ndarray:
    """The array held by a tensor object's "shape", "dtype" and "data"/"b64" fields, validated strictly."""
    shape = _shape(obj, path, tensor, line)
    dt = _dtype(obj, path, tensor, line)
    has_data, has_b64 = "data" in obj, "b64" in obj
    if has_data == has_b64:
        what = "both" if has_data else "neither of"
        raise FormatError(path, f'has {what} "data" and "b64"; give exactly one', tensor, line)
    if has_data:
        return _from_data(obj["data"], shape, dt, path, tensor, line)
    return _from_b64(obj["b64"], shape, dt, path, tensor, line)


def decode_name(obj: Any, path: object, line: int | None = None, what: str = "tensor") -> str:
    """The "name" of a tensor object; it must be a non-empty string."""
    if not isinstance(obj, dict):
        raise FormatError(path, f"a {what} must be a JSON object, got {_short(obj)}", line=line)
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        raise FormatError(path, f'{what} has no "name" (a non-empty string), got {_short(name)}', line=line)
    return name


def decode_tensor(obj: Any, path: object, line: int | None = None) -> tuple[str, np.ndarray]:
    """(name, array) of a tensor object; FormatError naming file, line and tensor if it is malformed."""
    name = decode_name(obj, path, line)
    return name, decode_fields(obj, path, name, line)


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."

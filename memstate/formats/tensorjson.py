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
MAX_NDIM = 64  # numpy's limit
MAX_ELEMENTS = 2**40  # per tensor, counting non-zero dimensions: numpy cannot even describe much larger shapes


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


class _Duplicate(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise _Duplicate(f"duplicate key {_short(dup)} in one object; each key may appear once")
    return obj


def _int_or_negative_zero(token: str) -> int | float:
    return -0.0 if token == "-0" else int(token)


# An integer token -0 (JSON has no -0 integer; a writer printing -0.0 as "-0" means negative zero). Matches
# inside strings too, which only costs the slower exact parse.
_NEGATIVE_ZERO = re.compile(rb"-0(?![0-9.eE])")
# A \uD800-\uDFFF escape: a surrogate, which is only valid as half of a pair.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_KEY_END = re.compile(rb'"\s*:')
# An integer token of 19 digits or more: orjson reads one beyond 64 bits as a float (1e+20), json as an int.
_LONG_INTEGER = re.compile(rb"(?<![0-9.eE])-?[0-9]{19,}(?![0-9.eE])")


def loads_strict(text: str | bytes) -> Any:
    """Parse strict JSON, the one parse every reader goes through; every failure is a BadJSON.

    Stricter than json.loads: no NaN/Infinity tokens, no duplicate keys in an object, no lone surrogate in
    a string, nesting bounded by the parser's recursion limit (a BadJSON, not a RecursionError), and the
    integer token -0 reads as -0.0 (a writer that prints negative zero as "-0" keeps its sign).
    """
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    parse_int = _int_or_negative_zero if _NEGATIVE_ZERO.search(raw) else None
    try:
        decoded = raw.decode("utf-8")  # the format is UTF-8: json.loads would also take UTF-16 and UTF-32
    except UnicodeDecodeError as e:
        raise BadJSON(f"not valid UTF-8: byte {raw[e.start]:#04x} at offset {e.start}",
                      raw.count(b"\n", 0, e.start) + 1) from None
    try:
        doc = json.loads(decoded, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates,
                         parse_int=parse_int)
    except _Constant as e:
        raise BadJSON(str(e), _constant_line(raw)) from None
    except json.JSONDecodeError as e:
        raise BadJSON(f"not valid JSON: {e.msg} (column {e.colno})", e.lineno) from None
    except _Duplicate as e:
        raise BadJSON(str(e)) from None
    except RecursionError:
        raise BadJSON("nested too deeply (arrays or objects inside each other beyond the parser's limit); "
                      "tensor data is a flat list") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise BadJSON(f"not valid JSON: {e}") from None
    if _SURROGATE_ESCAPE.search(raw):
        _reject_lone_surrogates(doc)
    return doc


def fast_parse_trusted(raw: bytes, doc: Any) -> bool:
    """Whether `doc`, parsed from `raw` by a faster parser that keeps the last of duplicate keys and reads
    -0 as 0, is what loads_strict would return (up to integers in a step line's "data" list that orjson
    reads as floats: the same array once decoded); if not, parse `raw` with loads_strict instead.

    It is when `raw` has no -0 token, no \\u surrogate escape, no integer token of 19 digits or more (which
    orjson reads as a float beyond 64 bits; not looked for inside a step line's "data" list, `_data_span`),
    and as many `":` key ends as `doc` has keys (a duplicate key, or a key end inside a string, makes them
    differ: the slow parse decides). When the fast parser fails (bad JSON, NaN, deep nesting, a huge
    integer), call loads_strict too: its BadJSON is the error readers report.
    """
    objects = _objects(raw)
    span = _data_span(raw, doc, objects)
    outside = raw if span is None else raw[:span[0]] + raw[span[1]:]
    return _NEGATIVE_ZERO.search(raw) is None and _trusted(raw, doc, objects, outside)


def _objects(raw: bytes) -> int:
    """How many "{" `raw` holds: 0, 1, or 2 standing for more than one (inside strings too)."""
    first = raw.find(b"{")
    return 0 if first < 0 else 1 if raw.find(b"{", first + 1) < 0 else 2


def _trusted(raw: bytes, doc: Any, objects: int, outside: bytes) -> bool:
    """fast_parse_trusted less its -0 scan, which the caller has done: no surrogate escape, no long integer
    in `outside` (`raw` less its data list, or all of it), and the keys counted as many times as written."""
    if (b"\\" in raw and _SURROGATE_ESCAPE.search(raw)) or _LONG_INTEGER.search(outside):
        return False
    if not objects:  # no object anywhere, so no key (a `":` could only sit inside a string)
        return _KEY_END.search(raw) is None
    if isinstance(doc, dict) and objects == 1:  # one object, no other: its keys are all the keys
        # (a flat data list holds no key: a `":` in it is inside a string, so it is not searched)
        return len(_KEY_END.findall(outside)) == len(doc)
    return len(_KEY_END.findall(raw)) == _count_keys(doc)


_DATA_LIST = re.compile(rb'"data"\s*:\s*\[')


def _data_span(raw: bytes, doc: Any, objects: int) -> tuple[int, int] | None:
    """Where the text of the "data" list starts (after its "[") and ends (at the first "]" after it) when
    `doc` is one flat object with such a list (a step line; `objects`: `_objects(raw)`); else None.

    In valid JSON `"data": [` outside a string is a key and its list (inside a string its quotes would be
    escaped), and one object holds one "data" key unless a duplicate, which the key count catches. If a
    string in the list holds a "]", the span is shorter than the list: what is decided from the span alone
    (`_numbers_only`) then sees the string's opening quote first.
    """
    if not (isinstance(doc, dict) and isinstance(doc.get("data"), list)) or objects != 1:
        return None
    found = _DATA_LIST.search(raw)
    end = raw.find(b"]", found.end()) if found is not None else -1
    return None if found is None or end < 0 else (found.end(), end)


_NOT_A_NUMBER = tuple(bytes([c]) for c in b'"[{tfn')  # how a string, list, object, true, false, null begins


def _numbers_only(raw: bytes, span: tuple[int, int], data: list) -> np.ndarray | None:
    """The "data" list as a float64 array when its text holds numbers only and no integer token -0 (which
    orjson reads as 0); None when the list needs the general path (`_from_data` after the full trust test).

    Faster than a type pass over the list and a -0 scan of its text (issue 14): a few byte searches over
    the text, a look at the types only where the array holds a zero, and the -0 scan only when one of
    those zeros was an integer token. orjson reads every number token as a finite float, or as an int of
    at most 64 bits, which float64 holds exactly or rounds to nearest.
    """
    start, end = span
    if any(raw.find(c, start, end) >= 0 for c in _NOT_A_NUMBER):
        return None
    flat = np.array(data, dtype=np.float64)
    # A zero may be an integer token -0. None is when every token has a point (as many points as values:
    # what orjson and most writers print for a float), else when no zero was read as an int, else when the
    # text holds no -0 token (a writer that prints whole floats as integers, as JavaScript does).
    if not flat.all() and _count_byte(raw, start, end, b".") != len(data) \
            and int in set(map(type, map(data.__getitem__, np.flatnonzero(flat == 0).tolist()))) \
            and _NEGATIVE_ZERO.search(raw, start, end):
        return None
    return flat


_COUNT_BLOCK = 1 << 18


def _count_byte(raw: bytes, start: int, end: int, byte: bytes) -> int:
    """How many times `byte` occurs in raw[start:end]: numpy over blocks of 256 kB, about nine times faster
    than bytes.count on a 13 MB data list (measured), with one small buffer instead of a full-size mask."""
    text = np.frombuffer(raw, np.uint8, end - start, start)
    hits = np.empty(min(_COUNT_BLOCK, text.size), dtype=bool)
    total, value = 0, byte[0]
    for first in range(0, text.size, _COUNT_BLOCK):
        chunk = text[first:first + _COUNT_BLOCK]
        np.equal(chunk, value, out=hits[:chunk.size])
        total += int(np.count_nonzero(hits[:chunk.size]))
    return total


def loads_record(raw: bytes) -> Any:
    """One JSONL record, as `loads_fast` reads it, except that a step line's "data" list of plain numbers
    comes back as a float64 array (what `decode_fields` takes as parsed), with no pass over it in Python.

    The trust test is `fast_parse_trusted`'s, done once: the text outside the data list is searched for -0
    here, the list's own text only when `_numbers_only` does not settle it."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return loads_strict(raw)
    objects = _objects(raw)
    span = _data_span(raw, doc, objects)
    outside = raw if span is None else raw[:span[0]] + raw[span[1]:]
    if _NEGATIVE_ZERO.search(outside) or not _trusted(raw, doc, objects, outside):
        return loads_strict(raw)
    if span is None:
        return doc
    flat = _numbers_only(raw, span, doc["data"])
    if flat is None:
        return loads_strict(raw) if _NEGATIVE_ZERO.search(raw, *span) else doc
    doc["data"] = flat
    return doc


def _count_keys(doc: Any) -> int:
    if isinstance(doc, dict):
        return len(doc) + sum(_count_keys(v) for v in doc.values() if isinstance(v, (dict, list)))
    if isinstance(doc, list) and doc and any(isinstance(v, (dict, list)) for v in doc):
        return sum(_count_keys(v) for v in doc if isinstance(v, (dict, list)))
    return 0


def _reject_lone_surrogates(doc: Any) -> None:
    stack = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(v for v in item if isinstance(v, (str, list, dict)))
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise BadJSON(f"the string {item[:40]!r} holds a lone surrogate (an unpaired \\ud800-\\udfff "
                              "escape), which is not text; write the character itself") from None


def loads_fast(text: str | bytes) -> Any:
    """orjson.loads, which is strict JSON too; on anything it refuses, and on what it reads differently from
    `loads_strict` (a duplicate key, the integer -0, a surrogate escape: `fast_parse_trusted`), `loads_strict`
    for the value or the precise message, so the two parsers never disagree on what is accepted."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return loads_strict(raw)
    return doc if fast_parse_trusted(raw, doc) else loads_strict(raw)


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
    """One JSON line, ending in its newline, for {**head, **encode_fields(arr)}: the same JSON values, by orjson.

    Finite values go through orjson's numpy serializer as float64 (so a float32 value is written as its
    exact double, docs/format.md); a tensor holding nan or inf spells them "nan", "inf", "-inf".
    -0.0 is written -0.0. orjson appends the newline itself, so a writer can hand the lines to `writelines`
    without joining them (a copy of every step's text, issue 14).
    """
    if b64:
        return orjson.dumps({**head, **encode_fields(arr, b64=True)}, option=orjson.OPT_APPEND_NEWLINE)
    name = dtype_name(arr)
    flat = np.ascontiguousarray(arr, dtype=np.float64).reshape(-1)
    finite = flat.size == 0 or (math.isfinite(float(flat.max())) and math.isfinite(float(flat.min())))
    data: Any = flat if finite else encode_fields(flat)["data"]
    return orjson.dumps({**head, "shape": list(arr.shape), "dtype": name, "data": data},
                        option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE)


def encode_tensor(name: str, arr: np.ndarray, *, b64: bool = False) -> dict[str, Any]:
    """A whole tensor object {"name", "shape", "dtype", "data"|"b64"}."""
    return {"name": name, **encode_fields(arr, b64=b64)}


def check_shape(shape: Any, path: object, tensor: str | None, line: int | None = None) -> tuple[int, ...]:
    """`shape` as a tuple if it is a list of at most MAX_NDIM non-negative integers whose non-zero product is at
    most MAX_ELEMENTS, else a FormatError: checked before anything of that size is allocated or reshaped."""
    if not isinstance(shape, (list, tuple)) or not all(type(d) is int and d >= 0 for d in shape):
        raise FormatError(path, f'"shape" must be a list of non-negative integers, got {_short(shape)}', tensor, line)
    if len(shape) > MAX_NDIM:
        raise FormatError(path, f'"shape" has {len(shape)} dimensions; at most {MAX_NDIM} are allowed', tensor, line)
    if math.prod(d for d in shape if d) > MAX_ELEMENTS:
        raise FormatError(path, f'"shape" {_short(list(shape))} is too large: its non-zero dimensions multiply to '
                                f"more than {MAX_ELEMENTS} (2**40) elements", tensor, line)
    return tuple(shape)


def _shape(obj: dict, path: object, tensor: str | None, line: int | None) -> tuple[int, ...]:
    if "shape" not in obj:
        raise FormatError(path, 'missing "shape"; add the list of dimensions ([] for a scalar)', tensor, line)
    return check_shape(obj["shape"], path, tensor, line)


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
        flat: np.ndarray = np.array(data, dtype=np.float64)  # float32 below when the tensor is narrower
    except OverflowError:
        raise FormatError(path, '"data" holds an integer too large for float64', tensor, line) from None
    if not has_strings and not np.isfinite(flat).all():
        raise FormatError(path, '"data" holds a number out of float64 range; write "inf"/"-inf" as strings',
                          tensor, line)
    return _narrowed(flat, dt, path, tensor, line).reshape(shape)


def _from_parsed(flat: np.ndarray, shape: tuple[int, ...], dt: np.dtype, path: object, tensor: str | None,
                 line: int | None) -> np.ndarray:
    """A float64 "data" array that memstate.formats.bigline parsed and checked: its length, and float32's range."""
    count = math.prod(shape)
    if flat.size != count:
        raise FormatError(path, f'"data" has {flat.size} values but shape {list(shape)} needs {count}', tensor, line)
    return _narrowed(flat, dt, path, tensor, line).reshape(shape)


def _narrowed(flat: np.ndarray, dt: np.dtype, path: object, tensor: str | None, line: int | None) -> np.ndarray:
    """The float64 values in the tensor's dtype; a finite value beyond float32's range is an error, not an inf."""
    if dt.itemsize != 4:
        return flat
    with np.errstate(over="ignore"):
        narrow = flat.astype(np.float32)
    if (np.isinf(narrow) & np.isfinite(flat)).any():
        raise FormatError(path, '"data" holds a number out of float32 range; write "inf"/"-inf" as strings',
                          tensor, line)
    return narrow


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


def short_json(value: Any, limit: int = 60) -> str:
    """`value` as JSON for an error message, cut to `limit` characters."""
    return _short(value, limit)


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."

"""memstate.formats.stepfile: what the safetensors step-file reader accepts, refuses and returns.

Every refusal is a BadStepFile whose whole message says what is wrong (the caller adds the file's name),
so each case below checks the message in full: the tensor it names, the numbers it quotes. The limits are
checked at their edges (a shape of exactly MAX_NDIM dimensions or MAX_ELEMENTS elements is read, one more is
refused; a header of exactly HEADER_LIMIT bytes is read), and the reader must survive the short reads a file
may give and say so when a file shrinks while it is read.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from memstate.comparator.identical import identical_prefix
from memstate.formats import alongside, stepfile
from memstate.formats.stepfile import BadStepFile, read_safetensors, read_step_payload
from memstate.formats.tensorjson import MAX_ELEMENTS, MAX_NDIM


def _file(path: Path, header: bytes | dict, data: bytes = b"") -> Path:
    """A step file from its header (a dict is written as JSON) and its tensor bytes."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def _f64(shape, start, end, dtype="F64"):
    return {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}


@pytest.fixture(autouse=True)
def _fresh_memo(monkeypatch):
    monkeypatch.setattr(stepfile, "_CHECKED", {})  # no table remembered from another test


REFUSED = [
    ({"a": 5}, b"", "header entry 'a' is not an object"),
    ({"a": {"shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8, "tensor 'a' has no dtype"),
    ({"a": _f64([-1], 0, 8)}, b"\0" * 8, "tensor 'a': shape must be a list of non-negative integers"),
    ({"a": _f64([1] * (MAX_NDIM + 1), 0, 8)}, b"\0" * 8,
     f"tensor 'a': shape has {MAX_NDIM + 1} dimensions; at most {MAX_NDIM} are allowed"),
    ({"a": _f64([MAX_ELEMENTS + 1, 0], 0, 0)}, b"",
     f"tensor 'a': shape [{MAX_ELEMENTS + 1}, 0] is too large (more than {MAX_ELEMENTS} elements)"),
    ({"a": {"dtype": "F64", "shape": [1], "data_offsets": 8}}, b"\0" * 8,
     "tensor 'a': data_offsets must be [start, end] with 0 <= start <= end"),
    ({"a": _f64([1], 8, 0)}, b"\0" * 8, "tensor 'a': data_offsets must be [start, end] with 0 <= start <= end"),
    ({"a": _f64([1], 8, 16)}, b"\0" * 16, "tensor data overlaps or leaves a gap"),
    ({"a": _f64([1], 0, 8), "b": _f64([2], 8, 20)}, b"\0" * 20, "tensor 'b' has 12 bytes but shape [2] of F64 needs 16"),
    ({"a": _f64([1], 0, 8), "b": _f64([2], 8, 20, "F32")}, b"\0" * 20,
     "tensor 'b' has 12 bytes but shape [2] of F32 needs 8"),
    (b"[1, 2]", b"", "header is not a JSON object"),
    ({"__metadata__": {"step": 1}}, b"", "__metadata__ must map names to strings"),
    ({"__metadata__": ["step"]}, b"", "__metadata__ must map names to strings"),
]


@pytest.mark.parametrize("header, data, message", REFUSED)
@pytest.mark.parametrize("mapped", [False, True])
def test_every_refusal_says_exactly_what_is_wrong(tmp_path, header, data, message, mapped):
    path = _file(tmp_path / "s.safetensors", header, data)
    with pytest.raises(BadStepFile) as e:
        read_safetensors(path, mapped)
    assert str(e.value) == message


def test_the_header_length_must_fit_the_file_and_eight_bytes_are_no_header(tmp_path):
    path = tmp_path / "s.safetensors"
    path.write_bytes(struct.pack("<Q", 50) + b" " * 32)  # 40 bytes: the header would end at byte 58
    with pytest.raises(BadStepFile) as e:
        read_safetensors(path)
    assert str(e.value) == "header length 50 does not fit the file of 40 bytes"
    path.write_bytes(b"\0" * 7)
    with pytest.raises(BadStepFile) as e:
        read_safetensors(path)
    assert str(e.value) == "7 bytes: shorter than the 8-byte header length"
    path.write_bytes(b"\0" * 8)  # a length, and an empty header after it
    with pytest.raises(BadStepFile, match="^header is not JSON: "):
        read_safetensors(path)


def test_a_header_of_exactly_the_limit_is_read(tmp_path, monkeypatch):
    text = json.dumps({"a": _f64([1], 0, 8)}).encode()
    monkeypatch.setattr(stepfile, "HEADER_LIMIT", len(text))  # the real one is 100 MB
    assert read_safetensors(_file(tmp_path / "s.safetensors", text, struct.pack("<d", 2.5)))[1]["a"][1].tolist() == [2.5]
    longer = _file(tmp_path / "t.safetensors", text + b" ", struct.pack("<d", 2.5))
    with pytest.raises(BadStepFile) as e:
        read_safetensors(longer)
    assert str(e.value) == (f"header of {len(text) + 1} bytes is over the {len(text)}-byte limit of safetensors "
                            "readers (the safetensors library refuses it too); record fewer tensors, or shorter "
                            "metadata, per step")  # (it fits the file: the limit, not the file, refuses it)
    cut = tmp_path / "u.safetensors"  # a length over the limit and past the file's end: the file is what is wrong
    cut.write_bytes(struct.pack("<Q", len(text) + 20) + text)
    with pytest.raises(BadStepFile) as e:
        read_safetensors(cut)
    assert str(e.value) == f"header length {len(text) + 20} does not fit the file of {len(text) + 8} bytes"


@pytest.mark.parametrize("mapped", [False, True])
def test_shapes_at_the_limits_are_read(tmp_path, mapped):
    table = {"deep": _f64([1] * MAX_NDIM, 0, 8), "wide": _f64([MAX_ELEMENTS, 0], 8, 8)}
    _, out = read_safetensors(_file(tmp_path / "s.safetensors", table, struct.pack("<d", -1.5)), mapped)
    assert out["deep"][1].shape == (1,) * MAX_NDIM and out["deep"][1].item() == -1.5
    assert out["wide"][0] == "F64" and out["wide"][1].shape == (MAX_ELEMENTS, 0)


@pytest.mark.parametrize("mapped", [False, True])
def test_other_dtypes_are_named_without_an_array_and_empty_tensors_keep_their_dtype(tmp_path, mapped):
    table = {"i": _f64([2], 0, 16, "I64"), "e": _f64([0, 3], 16, 16, "F32"), "f": _f64([2], 16, 24, "F32")}
    data = struct.pack("<qq", 7, -7) + np.array([0.5, -0.25], np.float32).tobytes()
    meta, out = read_safetensors(_file(tmp_path / "s.safetensors", table, data), mapped)
    assert meta == {} and out["i"] == ("I64", None)
    dtype, empty = out["e"]
    assert dtype == "F32" and empty.dtype == np.float32 and empty.shape == (0, 3)
    assert empty.flags.writeable == (not mapped)  # as every other array of the file
    assert out["f"][1].dtype == np.float32 and out["f"][1].tolist() == [0.5, -0.25]


def test_by_default_a_step_file_is_read_into_memory_and_compared_there(tmp_path, monkeypatch):
    # read into memory, a payload holds the bytes as they were read: a file rewritten in place since is not
    # read again to compare it (only a mapped file's Source says where to read its bytes again)
    monkeypatch.setattr(alongside, "FIRST", 16)
    x = np.linspace(0.0, 1.0, 40)
    table = {"w": _f64([40], 0, 320)}
    p, q = _file(tmp_path / "p", table, x.tobytes()), _file(tmp_path / "q", table, x.tobytes())
    (_, out, pp), (_, _, qp) = read_step_payload(p), read_step_payload(q)
    assert out["w"][1].flags.writeable and pp.source is None and qp.source is None
    _file(q, table, (x + 1.0).tobytes())  # the same file (inode), other bytes
    assert identical_prefix(pp, qp) == 320
    mapped = read_step_payload(q, True)[2]
    assert mapped.source is not None and mapped.source.start == q.stat().st_size - 320
    assert identical_prefix(pp, mapped) == 0


class _Trickle:
    """A file opened for reading that gives at most `step` bytes a read, and is cut to `cut` bytes (when
    given) before its first read."""

    def __init__(self, path: Path, step: int, cut: int | None):
        self.fh, self.path, self.step, self.cut = open(path, "rb"), path, step, cut

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()

    def fileno(self) -> int:
        return self.fh.fileno()

    def readinto(self, view) -> int:
        if self.cut is not None:
            os.truncate(self.path, self.cut)
            self.cut = None
        return self.fh.readinto(view[:self.step])


def test_short_reads_are_read_on_and_a_file_that_shrinks_meanwhile_is_refused(tmp_path, monkeypatch):
    x = np.arange(9.0)
    path = _file(tmp_path / "s.safetensors", {"w": _f64([9], 0, 72)}, x.tobytes())
    size = path.stat().st_size
    monkeypatch.setattr(stepfile, "open", lambda p, mode: _Trickle(p, 5, None), raising=False)
    assert read_safetensors(path)[1]["w"][1].tolist() == x.tolist()
    monkeypatch.setattr(stepfile, "open", lambda p, mode: _Trickle(p, 5, size - 30), raising=False)
    with pytest.raises(BadStepFile) as e:
        read_safetensors(path)
    assert str(e.value) == f"the file shrank while it was read ({size - 30} of {size} bytes)"

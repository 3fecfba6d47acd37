"""Property-based fuzzing of every reader (issue 13): any bytes give the right data or a MemstateError (FormatError,
ScenarioError), never another exception; and through the CLI never an exit status other than 0 or 2.

Each property runs twice: a bounded run in the default suite, and a long one behind the `fuzz` marker
(`pytest -m fuzz tests/robust`, or `make fuzz`).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import tempfile
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memstate.cli.main import main
from memstate.errors import MemstateError
from memstate.formats.params import read_params, write_params
from memstate.formats.recorder import Recorder
from memstate.formats.tensorjson import BadJSON, fast_parse_trusted, loads_strict
from memstate.formats.trace import read_trace
from memstate.runner.scenario import load_scenario

SCENARIO = (Path(__file__).resolve().parents[2] / "scenarios" / "mnist14-relu.toml").read_bytes()
TOKENS = [b"[" * 3000, b"{" * 3000, b"-0", b'"\\ud800"', b'"\\udc00x"', b"1e400", b"NaN", b"-Infinity", b"\xff",
          b"\xed\xa0\x80", b"9" * 40, b"9" * 5000, b'"name": "x", ', b'"shape": [1], ', b"{", b"}", b"[", b"]", b",",
          b"\n", b'"step": 0, ', b'"step": 99999999999999999999999999999, ', b"[0, 100000000000000000000]",
          b"[" + b"1, " * 70 + b"1]", b"true", b"null", b'"nan"', b"\x00", b'"b64": "AAAA", ', b"\xef\xbb\xbf",
          b"= [", b"[[model]]\n", b"layers = [196, 99999999999, 10]\n", b"init_seed = -1\n", b"'''", b'"""']


def _fuzz(n_fast: int, n_long: int) -> Callable[[Callable], tuple[Callable, Callable]]:
    """The property as two tests: n_fast examples in the default suite, n_long behind the `fuzz` marker."""
    def make(strategy: Any) -> Callable[[Callable], tuple[Callable, Callable]]:
        def wrap(prop: Callable) -> tuple[Callable, Callable]:
            common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
            fast = settings(max_examples=n_fast, **common)(given(strategy)(prop))
            long = pytest.mark.fuzz(settings(max_examples=n_long, **common)(given(strategy)(prop)))
            return fast, long
        return wrap
    return make  # type: ignore[return-value]


@st.composite
def mutated(draw: Any, base: bytes) -> bytes:
    """`base` cut, with bytes flipped, deleted, or hostile tokens inserted; or random bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=300))
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["cut", "flip", "insert", "insert", "delete"]))
        pos = draw(st.integers(0, len(data)))
        if kind == "cut":
            del data[pos:]
        elif kind == "flip" and data:
            data[min(pos, len(data) - 1)] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[pos:pos] = draw(st.sampled_from(TOKENS) | st.binary(min_size=1, max_size=8))
        else:
            del data[pos:pos + draw(st.integers(1, 24))]
    return bytes(data)


def _cli_status(*argv: str) -> int:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        status = main(list(argv))
    assert status in (0, 1, 2), err.getvalue()
    assert "Traceback" not in err.getvalue()
    return status


def _steps_equal(got: list, want: list) -> bool:
    return len(got) == len(want) and all(
        g.index == w.index and list(g.tensors) == list(w.tensors)
        and all(g.tensors[n].dtype == w.tensors[n].dtype and g.tensors[n].tobytes() == w.tensors[n].tobytes()
                for n in g.tensors) for g, w in zip(got, want))


# ---------------------------------------------------------------- the valid inputs the fuzzers start from

def _base_trace(folder: Path, name: str, b64: bool = False) -> Path:
    path = folder / name
    rng = np.random.default_rng(0)
    with Recorder(path, meta={"steps": 3, "impl": "fuzz"}, b64=b64) as rec:
        for k in range(3):
            with rec.step(k):
                rec.record("x", rng.standard_normal((2, 3)))
                rec.record("loss", np.float32(k - 0.5))
    return path


_BASE = Path(tempfile.mkdtemp(prefix="memstate-fuzz-"))
JSONL = _base_trace(_BASE, "t.memstate.jsonl").read_bytes()
JSONL_B64 = _base_trace(_BASE, "b.memstate.jsonl", b64=True).read_bytes()
BINARY = _base_trace(_BASE, "t.memstate")
JSONL_STEPS = read_trace(_BASE / "t.memstate.jsonl")
write_params(_BASE / "p.params.json", {"L1.W": np.arange(6.0).reshape(2, 3) - 2.5, "L1.b": np.float32([0.5, -0.0])},
             meta={"note": "fuzz"})
PARAMS = (_BASE / "p.params.json").read_bytes()


# ---------------------------------------------------------------- params files

@_fuzz(50, 5000)(mutated(PARAMS))
def _params_bytes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "p.params.json"
        path.write_bytes(data)
        try:
            params = read_params(path)
        except MemstateError:
            return
        if data == PARAMS:
            assert params.tensors["L1.W"].tobytes() == (np.arange(6.0).reshape(2, 3) - 2.5).tobytes()
        for arr in params.tensors.values():
            assert arr.dtype in (np.float64, np.float32)


test_params_bytes, test_params_bytes_long = _params_bytes


# ---------------------------------------------------------------- JSONL traces

@_fuzz(50, 5000)(st.sampled_from([JSONL, JSONL_B64]).flatmap(mutated))
def _jsonl_bytes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.memstate.jsonl"
        path.write_bytes(data)
        try:
            read_trace(path, include_incomplete=True)
        except MemstateError:
            pass
        _cli_status("show", str(path))


test_jsonl_bytes, test_jsonl_bytes_long = _jsonl_bytes


@_fuzz(30, 2000)(st.integers(0, len(JSONL)))
def _jsonl_cut(at: int) -> None:
    """A trace cut anywhere (a crash mid-write) reads as exactly its complete steps before the cut, or, when the
    header itself is cut, as a FormatError."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.memstate.jsonl"
        path.write_bytes(JSONL[:at])
        try:
            steps = read_trace(path)
        except MemstateError:
            assert at <= JSONL.index(b"\n") + 1  # only a cut header is unreadable
            return
        assert _steps_equal(steps, JSONL_STEPS[:len(steps)])
        # a step is complete once its terminator's closing brace is written (the newline may still be missing)
        ends = [m.end() for m in re.finditer(rb'"end":\s*true}', JSONL)]  # (orjson writes no spaces)
        assert len(ends) == 3 and len(steps) == sum(end <= at for end in ends)


test_jsonl_cut, test_jsonl_cut_long = _jsonl_cut


# ---------------------------------------------------------------- binary traces

@_fuzz(40, 3000)(st.sampled_from(["header.json", "step-00000001.safetensors"]).flatmap(
    lambda name: st.tuples(st.just(name), mutated((BINARY / name).read_bytes()))))
def _binary_bytes(case: tuple[str, bytes]) -> None:
    name, data = case
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.memstate"
        path.mkdir()
        for f in BINARY.iterdir():
            (path / f.name).write_bytes(f.read_bytes())
        (path / name).write_bytes(data)
        try:
            steps = read_trace(path, include_incomplete=True)
        except MemstateError:
            steps = None
        if steps is not None and name.startswith("step-"):  # the other steps are never misread
            want = read_trace(BINARY)
            assert _steps_equal([s for s in steps if s.index != 1], [s for s in want if s.index != 1])
        _cli_status("show", str(path))


test_binary_bytes, test_binary_bytes_long = _binary_bytes


# ---------------------------------------------------------------- scenario files

@_fuzz(50, 3000)(mutated(SCENARIO))
def _scenario_bytes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s.toml"
        path.write_bytes(data)
        try:
            scenario = load_scenario(path)
        except MemstateError:
            return
        layers = scenario.model.layers
        assert sum((a + 1) * b for a, b in zip(layers[:-1], layers[1:])) <= 100_000_000
        assert scenario.model.init_seed >= 0 and scenario.data.shuffle_seed >= 0


test_scenario_bytes, test_scenario_bytes_long = _scenario_bytes


# ---------------------------------------------------------------- the JSON parse hook

JSON_TEXT = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=4), lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner,
                                                                                     max_size=4), max_leaves=12)


@_fuzz(80, 5000)(st.tuples(JSON_TEXT, st.lists(st.sampled_from([b"-0", b'"k": 1, ', b'{"a": 1, "a": 2}', b"\\ud800",
                                                                   b'":']), max_size=2), st.integers(0, 200)))
def _fast_parse_hook(case: tuple[Any, list[bytes], int]) -> None:
    """A fast parser's result (json.loads stands in: like orjson it keeps the last duplicate key and reads -0 as
    0) is trusted by fast_parse_trusted only when loads_strict would return the same."""
    doc, inserts, pos = case
    raw = json.dumps(doc).encode()
    for token in inserts:
        at = min(pos, len(raw))
        raw = raw[:at] + token + raw[at:]
    try:
        fast = json.loads(raw)
    except ValueError:
        return
    try:
        strict = loads_strict(raw)
    except BadJSON:
        assert not fast_parse_trusted(raw, fast)
        return
    if fast_parse_trusted(raw, fast):
        assert _same_json(fast, strict)


def _same_json(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return type(a) is type(b) and (a == b or (math.isnan(a) and math.isnan(b))) \
            and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same_json(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


test_fast_parse_hook, test_fast_parse_hook_long = _fast_parse_hook


def test_negative_zero_and_duplicate_keys_by_hand():
    assert math.copysign(1, loads_strict(b"[-0]")[0]) == -1 and loads_strict(b"[-0.0, 0]") == [0.0, 0]
    assert math.copysign(1, loads_strict(b'{"x-0": -0}')["x-0"]) == -1
    with pytest.raises(BadJSON, match='duplicate key "a"'):
        loads_strict(b'{"b": {"a": 1, "a": 2}}')
    assert not fast_parse_trusted(b"[-0]", [0]) and not fast_parse_trusted(b'{"a": 1, "a": 2}', {"a": 2})
    assert fast_parse_trusted(b'{"a": [1, 2], "b": {"c": 0}}', {"a": [1, 2], "b": {"c": 0}})

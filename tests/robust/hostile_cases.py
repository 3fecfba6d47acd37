"""Hostile inputs (issue 13), each a function that builds its files under a folder and returns the command line
to run on them, the exit status memstate must give, and words its message must hold.

Shared by the exit-code table (test_exit_codes.py) and kept apart from it so that a new case is one line.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from safetensors.numpy import save_file

from memstate.formats.params import write_params
from memstate.formats.recorder import Recorder

HEADER = '{"format": "memstate.trace", "version": 1, "meta": {}}'
DEEP = "[" * 100_000 + "]" * 100_000
BUNDLED = Path(__file__).resolve().parents[2] / "scenarios" / "mnist14-relu.toml"


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Path], list[str]]  # folder -> argv
    status: int
    words: tuple[str, ...]  # all must appear in stderr (or stdout for exit 0/1), in any order


def record(name: str, shape: str = "[1]", data: str = "[1.5]", step: str = "0") -> str:
    return f'{{"step": {step}, "name": {json.dumps(name)}, "shape": {shape}, "dtype": "float64", "data": {data}}}'


def end(step: int = 0) -> str:
    return json.dumps({"step": step, "end": True})


def jsonl(folder: Path, *lines: str, header: str = HEADER, name: str = "t.memstate.jsonl") -> Path:
    path = folder / name
    path.write_text("\n".join([header, *lines]) + "\n", encoding="utf-8", errors="surrogatepass")
    return path


def show(*lines: str, header: str = HEADER) -> Callable[[Path], list[str]]:
    return lambda d: ["show", str(jsonl(d, *lines, header=header))]


def binary(folder: Path, steps: int = 2) -> Path:
    path = folder / "t.memstate"
    with Recorder(path, meta={"steps": steps}) as rec:
        for k in range(steps):
            with rec.step(k):
                rec.record("loss", np.float64(1.0 / (k + 1)))
    return path


def binary_damaged(damage: Callable[[Path], object]) -> Callable[[Path], list[str]]:
    def build(d: Path) -> list[str]:
        path = binary(d)
        damage(path)
        return ["show", str(path)]
    return build


def params_text(folder: Path, text: str) -> Path:
    path = folder / "p.params.json"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return path


def params_cmd(text: str) -> Callable[[Path], list[str]]:
    """`memstate check TRACE --params P`: reads P before the trace."""
    return lambda d: ["check", str(jsonl(d, record("loss"), end())), "--params", str(params_text(d, text))]


PARAMS_HEAD = '{"format": "memstate.params", "version": 1, "meta": {}, "tensors": '


def scenario(folder: Path, text: str | bytes, replace: dict[str, str] | None = None) -> Path:
    path = folder / "s.toml"
    if isinstance(text, str):
        for old, new in (replace or {}).items():
            assert old in text, old
            text = text.replace(old, new)
        text = text.encode("utf-8")
    path.write_bytes(text)
    return path


def scenario_cmds(text_or_replace: str | bytes | dict[str, str]) -> list[Callable[[Path], list[str]]]:
    """The same scenario given to init-params, run and check --scenario: all three must agree."""
    def make(d: Path) -> str:
        if isinstance(text_or_replace, dict):
            return str(scenario(d, BUNDLED.read_text(), text_or_replace))
        return str(scenario(d, text_or_replace))
    return [lambda d: ["init-params", make(d), "-o", str(d / "p.params.json")],
            lambda d: ["run", make(d), "--steps", "1", "-q", "--no-eval"],
            lambda d: ["check", str(jsonl(d, record("loss"), end())), "--scenario", make(d)]]


def _dangling(path: Path) -> None:
    path.unlink()
    os.symlink(path.with_name("nowhere"), path)


def _as_dir(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _step_file(path: Path, name: str, metadata: dict[str, str]) -> None:
    run_id = json.loads((path / "header.json").read_text())["run_id"]
    save_file({"loss": np.zeros(())}, str(path / name), metadata={"run_id": run_id, **metadata})


def _raw_step_file(path: Path, step: int, shape: list[int]) -> None:
    """A safetensors step file written by hand: numpy cannot even make the arrays some hostile shapes describe."""
    run_id = json.loads((path / "header.json").read_text())["run_id"]
    n = int(np.prod([d for d in shape if d] or [1])) if 0 not in shape else 0
    header = json.dumps({"__metadata__": {"step": str(step), "order": '["loss"]', "run_id": run_id},
                         "loss": {"dtype": "F64", "shape": shape, "data_offsets": [0, 8 * n]}}).encode()
    header += b" " * (-len(header) % 8)
    (path / f"step-{step:08d}.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(8 * n))


def _zero_tensor_trace(d: Path, name: str, only_empty: bool = False) -> str:
    path = d / name
    with Recorder(path, meta={"steps": 2}) as rec:
        with rec.step(0):
            pass
        with rec.step(1):
            if not only_empty:
                rec.record("loss", np.float64(0.5))
    return str(path)


CASES: list[Case] = [
    # shapes and sizes
    Case("shape-0-huge", show(record("x", "[0, 100000000000000000000]", "[]"), end()), 2,
         ("line 2", "'x'", "too large")),
    Case("shape-0-1e20-float", show(record("x", "[0, 1e20]", "[]"), end()), 2,
         ("line 2", "'x'", "non-negative integers")),
    Case("shape-65-dims", show(record("x", json.dumps([1] * 65), "[1]"), end()), 2,
         ("line 2", "'x'", "65 dimensions", "at most 64")),
    Case("params-shape-huge", params_cmd(PARAMS_HEAD + '[{"name": "W", "shape": [0, 99999999999999999999], '
                                                       '"dtype": "float64", "data": []}]}'), 2,
         ("p.params.json", "'W'", "too large")),
    Case("binary-shape-65-dims", binary_damaged(lambda p: _raw_step_file(p, 1, [1] * 65)), 2,
         ("step-00000001.safetensors", "'loss'", "65 dimensions")),
    Case("binary-shape-0-huge", binary_damaged(lambda p: _raw_step_file(p, 1, [0, 2**62, 2**62])), 2,
         ("step-00000001.safetensors", "'loss'", "too large")),
    # nesting
    Case("deep-trace-data", show(record("x", "[1]", DEEP), end()), 2, ("line 2", "nested too deeply")),
    Case("deep-header-meta", show(end(), header='{"format": "memstate.trace", "version": 1, "meta": ' + DEEP + "}"),
         2, ("line 1", "nested too deeply")),
    Case("deep-params-meta", params_cmd('{"format": "memstate.params", "version": 1, "meta": {"a": ' + DEEP
                                        + '}, "tensors": []}'), 2, ("p.params.json", "nested too deeply")),
    Case("deep-binary-header", binary_damaged(lambda p: (p / "header.json").write_text(
        '{"format": "memstate.trace", "version": 1, "encoding": "binary", "meta": ' + DEEP + "}")), 2,
         ("header.json", "nested too deeply")),
    Case("deep-binary-order", binary_damaged(lambda p: _step_file(
        p, "step-00000001.safetensors", {"step": "1", "order": DEEP})), 2,
         ("step-00000001.safetensors", "nested too deeply")),
    Case("deep-safetensors-header", binary_damaged(lambda p: _bytes(p / "step-00000001.safetensors", _deep_header())),
         2, ("step-00000001.safetensors", "not a readable safetensors file", "depth limit")),
    *[Case(f"deep-scenario-{i}", cmd, 2, ("s.toml", "nested too deeply"))
      for i, cmd in enumerate(scenario_cmds("description = 'x'\nx = " + DEEP + "\n"))],
    # names, steps, keys, text
    Case("lone-surrogate-name", show(record("\ud800"), end()), 2, ("line 2", "lone surrogate")),
    Case("lone-surrogate-escape", show(record("a").replace('"a"', '"a\\udc00"'), end()), 2,
         ("line 2", "lone surrogate")),
    Case("surrogate-pair-is-fine", show(record("a").replace('"a"', '"\\ud83d\\ude00"'), end()), 0,
         ("1 complete steps", "\U0001f600")),
    Case("step-10**30", show(record("x", step=str(10**30)), end(0)), 2,
         ("line 2", "'x'", "above 2**63-1")),
    Case("binary-step-10**30", binary_damaged(lambda p: _step_file(
        p, f"step-{10**30}.safetensors", {"step": str(10**30), "order": '["loss"]'})), 2,
         (f"step-{10**30}.safetensors", "above 2**63-1")),
    Case("duplicate-key-record", show('{"step": 0, "name": "x", "name": "y", "shape": [], "dtype": "float64", '
                                      '"data": [1]}', end()), 2, ("line 2", "duplicate key \"name\"")),
    Case("duplicate-key-params", params_cmd(PARAMS_HEAD + '[{"name": "W", "shape": [1], "shape": [1], '
                                                         '"dtype": "float64", "data": [1]}]}'), 2,
         ("p.params.json", "duplicate key \"shape\"")),
    Case("not-utf8-trace", lambda d: ["show", str(_bytes(d / "t.memstate.jsonl", HEADER.encode() + b"\n"
                                                         + record("x").encode().replace(b"x", b"\xff") + b"\n"))],
         2, ("line 2", "not valid UTF-8")),
    Case("utf16-params", lambda d: ["check", str(jsonl(d, record("loss"), end())), "--params",
                                    str(_bytes(d / "p.params.json", (PARAMS_HEAD + "[]}").encode("utf-16")))],
         2, ("p.params.json", "not valid UTF-8")),
    # files that are not what they should be
    Case("header-is-dir", binary_damaged(lambda p: _as_dir(p / "header.json")), 2, ("header.json", "is a directory")),
    Case("step-file-is-dir", binary_damaged(lambda p: _as_dir(p / "step-00000001.safetensors")), 2,
         ("step-00000001.safetensors", "is a directory")),
    Case("dangling-trace", lambda d: ["show", str(_link(d / "t.memstate.jsonl"))], 2,
         ("t.memstate.jsonl", "symbolic link to a missing file")),
    Case("dangling-header", binary_damaged(lambda p: _dangling(p / "header.json")), 2,
         ("header.json", "symbolic link to a missing file")),
    Case("dangling-step", binary_damaged(lambda p: _dangling(p / "step-00000001.safetensors")), 2,
         ("step-00000001.safetensors", "symbolic link to a missing file")),
    Case("dangling-params", lambda d: ["check", str(jsonl(d, record("loss"), end())), "--params",
                                       str(_link(d / "p.params.json"))], 2, ("p.params.json", "no such file")),
    Case("params-is-dir", lambda d: ["check", str(jsonl(d, record("loss"), end())), "--params", str(d)], 2,
         ("is a directory",)),
    # scenarios: every command validates them the same way
    *[Case(f"scenario-not-utf8-{i}", cmd, 2, ("s.toml", "not UTF-8")) for i, cmd in
      enumerate(scenario_cmds(b"description = '\xff'\n"))],
    *[Case(f"scenario-negative-init-seed-{i}", cmd, 2, ("s.toml", "model.init_seed", "-1")) for i, cmd in
      enumerate(scenario_cmds({"init_seed = 0": "init_seed = -1"}))],
    *[Case(f"scenario-negative-shuffle-seed-{i}", cmd, 2, ("s.toml", "data.shuffle_seed", "-5")) for i, cmd in
      enumerate(scenario_cmds({"shuffle_seed = 0": "shuffle_seed = -5"}))],
    *[Case(f"scenario-huge-layer-{i}", cmd, 2, ("s.toml", "model.layers", "100000000000")) for i, cmd in
      enumerate(scenario_cmds({"layers = [196, 32, 10]": "layers = [196, 100000000000, 10]"}))],
    *[Case(f"scenario-float-layer-{i}", cmd, 2, ("s.toml", "model.layers", "integers")) for i, cmd in
      enumerate(scenario_cmds({"layers = [196, 32, 10]": "layers = [196, 1e11, 10]"}))],
    *[Case(f"scenario-too-many-samples-{i}", cmd, 2, ("s.toml", "data.train", "10000")) for i, cmd in
      enumerate(scenario_cmds({"train = 8000": "train = 9000"}))],
    *[Case(f"scenario-variant-needs-batch-{i}", cmd, 2, ("s.toml", "bias_grad_axis", "batch")) for i, cmd in
      enumerate(scenario_cmds({'eval_every = 100': 'eval_every = 100\n\n[variant]\nbias_grad_axis = "features"'}))],
    *[Case(f"scenario-5000-digit-integer-{i}", cmd, 2, ("s.toml", "not valid TOML", "4300 digits")) for i, cmd in
      enumerate(scenario_cmds({"steps = 600": "steps = " + "9" * 5000}))],
    *[Case(f"scenario-epochs-{i}", cmd, 2, ("s.toml", "training.epochs")) for i, cmd in
      enumerate(scenario_cmds({"steps = 600": "epochs = 9223372036854775807"}))],
    *[Case(f"show-points-{n}", lambda d, n=n: ["show", _zero_tensor_trace(d, "a.memstate"), "--points", n], 2,
           ("--points", "at least 1")) for n in ("0", "-3")],
    # valid traces that used to crash
    Case("zero-tensor-step-diff", lambda d: ["diff", _zero_tensor_trace(d, "a.memstate"),
                                             _zero_tensor_trace(d, "b.memstate.jsonl")], 0, ("AGREE",)),
    *[Case(f"empty-steps-diff-{fmt}", lambda d, fmt=fmt: [
        "diff", _zero_tensor_trace(d, "a.memstate", True), _zero_tensor_trace(d, "b.memstate.jsonl", True),
        "--format", fmt, "-o", str(d / "report")], 0, ("agree",)) for fmt in ("text", "json", "html")],
    Case("empty-steps-vs-loss-diff", lambda d: ["diff", _zero_tensor_trace(d, "a.memstate", True),
                                                _zero_tensor_trace(d, "b.memstate")], 1, ("DIVERGE", "loss")),
    Case("zero-tensor-step-show", lambda d: ["show", _zero_tensor_trace(d, "a.memstate")], 0, ("2 complete steps",)),
]


def _deep_header() -> bytes:
    header = b'{"__metadata__": {"step": "1"}, "x": ' + DEEP.encode() + b"}"
    return len(header).to_bytes(8, "little") + header


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _link(path: Path) -> Path:
    os.symlink(path.with_name("nowhere"), path)
    return path


def params_file(folder: Path, tensors: dict[str, np.ndarray]) -> Path:
    path = folder / "p.params.json"
    write_params(path, tensors)
    return path


def _extra_tensor_params(d: Path) -> Path:
    from memstate.runner.initparams import scenario_params
    from memstate.runner.scenario import load_scenario

    tensors = scenario_params(load_scenario("mnist14-relu"))
    return params_file(d, {**tensors, "L3.W": np.zeros((10, 10))})


CASES += [
    Case("params-extra-tensor-run", lambda d: ["run", "mnist14-relu", "--params", str(_extra_tensor_params(d)),
                                               "--steps", "1", "-q", "--no-eval"], 2,
         ("p.params.json", "'L3.W'", "does not use")),
    Case("params-extra-tensor-check", lambda d: ["check", _checkable_trace(d), "--params",
                                                 str(_extra_tensor_params(d))], 2, ("'L3.W'", "does not use")),
]


def _checkable_trace(d: Path) -> str:
    from memstate.cli.main import main

    path = d / "run.memstate.jsonl"
    assert main(["run", "mnist14-relu", "--steps", "1", "-q", "--no-eval", "-o", str(path)]) == 0
    return str(path)


def _checkpoint_runs(d: Path, **changes: object) -> list[str]:
    """Two checkpoint runs, A with its header's meta changed (None removes a key), as `memstate bisect A B`."""
    from memstate.cli.main import main

    for name in ("a", "b"):
        assert main(["run", "mnist14-relu", "--steps", "4", "--checkpoint-every", "2", "-q", "--no-eval", "-o",
                     str(d / f"{name}.memstate")]) == 0
    header = d / "a.memstate" / "header.json"
    doc = json.loads(header.read_text())
    for key, value in changes.items():
        if value is None:
            doc["meta"].pop(key)
        else:
            doc["meta"][key] = value
    header.write_text(json.dumps(doc))
    return ["bisect", str(d / "a.memstate"), str(d / "b.memstate"), "-q"]


CASES += [
    Case("bisect-header-variant-not-a-table", lambda d: _checkpoint_runs(d, variant="x"), 2,
         ("a.memstate", "variant", "table")),
    Case("bisect-header-layers-not-a-list", lambda d: _checkpoint_runs(d, layers=2.5), 2,
         ("a.memstate", '"layers"', "positive integers")),
    Case("bisect-header-no-impl", lambda d: _checkpoint_runs(d, impl=None), 2, ("a.memstate", '"impl"')),
    Case("bisect-step-from-another-run", lambda d: _mixed_checkpoints(d), 2,
         ("step-00000001.safetensors", "another run")),
]


def _mixed_checkpoints(d: Path) -> list[str]:
    argv = _checkpoint_runs(d)
    os.replace(d / "b.memstate" / "step-00000001.safetensors", d / "a.memstate" / "step-00000001.safetensors")
    return argv[:2] + [argv[1], "-q"]  # A against itself: only A's mix matters

"""Shared helpers for the `cmd:` tests: the stdlib Python and Node ports, a tiny scenario, command lines."""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

PORTS = Path(__file__).resolve().parent / "ports"
PY_PORT = PORTS / "reference.py"  # the canonical stdlib trainer: it already follows the cmd: contract
JS_PORT = PORTS / "port_minimal.js"  # run with --full: the whole canonical trace
NODE = shutil.which("node")
NO_NODE = "node is not installed here: the Node port of the cmd: contract cannot run"

# 7x7 digits, 49 -> 8 -> 10: the pure-Python port trains a step of it in milliseconds
TINY_TOML = """description = "tiny network for the cmd: tests"
[data]
size = {size}
train = 64
test = 16
[model]
layers = {layers}
activation = "{activation}"
[training]
steps = 6
batch_size = 4
learning_rate = {lr}
loss_reduction = "{reduction}"
"""


def py_cmd(*extra: str) -> str:
    """`cmd:` running the Python port with this interpreter (and options after the three paths)."""
    words = [sys.executable, str(PY_PORT), "{params}", "{batches}", "{trace}", *extra]
    return "cmd:" + " ".join(shlex.quote(w) if "{" not in w else w for w in words)


def js_cmd(*extra: str) -> str:
    return "cmd:" + " ".join([shlex.quote(NODE or "node"), shlex.quote(str(JS_PORT)), "{params}", "{batches}",
                              "{trace}", "--full", *extra])


def script_cmd(script: Path) -> str:
    """`cmd:` running a Python script of a test with this interpreter."""
    return f"cmd:{shlex.quote(sys.executable)} {shlex.quote(str(script))} {{params}} {{batches}} {{trace}}"


def tiny_scenario(folder: Path, name: str = "tiny-cmd", activation: str = "relu", lr: float = 0.1,
                  reduction: str = "mean", size: int = 7) -> Path:
    """A scenario file in `folder`: 7x7 digits, 49 -> 8 -> 10 (size=14: mnist14-relu's 196 -> 32 -> 10)."""
    path = folder / f"{name}.toml"
    layers = [49, 8, 10] if size == 7 else [size * size, 32, 10]
    path.write_text(TINY_TOML.format(activation=activation, lr=lr, reduction=reduction, size=size, layers=layers),
                    encoding="utf-8")
    return path

"""The two complete ports printed in docs/ports.md run as printed, through `cmd:`, and agree with numpy."""

from __future__ import annotations

import re
import shlex
import sys
import tempfile
from pathlib import Path

import pytest

from cmd_ports import NO_NODE, NODE
from memstate.cli.main import main

DOC = Path(__file__).resolve().parents[2] / "docs" / "ports.md"
DEEP = """description = "three layers, sigmoid, summed loss"
[data]
size = 7
train = 64
test = 16
[model]
layers = [49, 8, 6, 10]
activation = "sigmoid"
[training]
steps = 4
batch_size = 4
learning_rate = 0.3
loss_reduction = "sum"
"""


def block(first_line: str) -> str:
    """The fenced code block of the doc whose first line is `first_line`."""
    for code in re.findall(r"```[a-z]*\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S):
        if code.startswith(first_line):
            return code
    raise AssertionError(f"docs/ports.md has no code block starting {first_line!r}")


@pytest.fixture(autouse=True)
def _temp_here(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def _agrees(tmp_path: Path, command: str, scenario: str, steps: str) -> None:
    port, ref = tmp_path / f"port-{Path(scenario).stem}.jsonl", tmp_path / f"numpy-{Path(scenario).stem}.jsonl"
    assert main(["run", scenario, "--impl", command, "--steps", steps, "-o", str(port), "-q"]) == 0
    assert main(["run", scenario, "--steps", steps, "-o", str(ref), "-q"]) == 0
    assert main(["diff", str(ref), str(port)]) == 0


@pytest.mark.parametrize("lang", ["python", "node"])
def test_the_documented_ports_agree_with_numpy(tmp_path, capsys, lang):
    if lang == "node" and NODE is None:
        pytest.skip(NO_NODE)
    name, first, program = (("port.py", "# port.py", sys.executable) if lang == "python" else
                            ("port.js", "// port.js", NODE))
    source = tmp_path / name
    source.write_text(block(first), encoding="utf-8")
    command = f"cmd:{shlex.quote(str(program))} {shlex.quote(str(source))} {{params}} {{batches}} {{trace}}"
    _agrees(tmp_path, command, "mnist14-relu", "2")
    deep = tmp_path / "deep.toml"
    deep.write_text(DEEP, encoding="utf-8")
    _agrees(tmp_path, command, str(deep), "4")

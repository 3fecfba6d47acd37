"""Running the foreign ports in tests/ports (plain Python and Node, no memstate inside) on a small batches file."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
#: port -> its hand-written layout map
PORTS = {
    "port_columns.py": "port_columns.map.toml",
    "port_outin.js": "port_outin.map.toml",
    "port_folded.py": "port_folded.map.toml",
    "port_minimal.js": "port_minimal.map.toml",
    "port_perneuron.py": "port_perneuron.map.toml",
}
NODE = shutil.which("node")


def port_param(port: str):
    """A pytest param for `port` that skips, with the reason, when it is a Node port and node is missing."""
    marks = [pytest.mark.skipif(NODE is None, reason="node is not installed: the Node ports cannot run")] \
        if port.endswith(".js") else []
    return pytest.param(port, marks=marks, id=port)


def run_script(script: str, *args: str | Path) -> None:
    """Run a port (or reference.py / make_batches.py) to completion; fail the test with its stderr if it fails."""
    exe = NODE if script.endswith(".js") else sys.executable
    assert exe is not None
    done = subprocess.run([exe, str(HERE / script), *map(str, args)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{script} {' '.join(map(str, args))} failed:\n{done.stderr}"


def make_data(out: Path, *extra: str) -> tuple[Path, Path]:
    """tiny.params.json and tiny.batches.jsonl (layers [6, 5, 3], batch 4, steps 0..4) in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    run_script("make_batches.py", out, *extra)
    return out / "tiny.params.json", out / "tiny.batches.jsonl"


def trace_of(script: str, params: Path, batches: Path, out: Path, bug: str | None = None,
             from_step: int = 0) -> Path:
    """Run `script` (a port or reference.py) and return the trace it wrote (cached by file name)."""
    path = out / f"{script.split('.')[0]}.{bug or 'clean'}.{from_step}.jsonl"
    if not path.exists():
        args: list[str | Path] = [params, batches, path]
        if bug:
            args += ["--bug", bug, "--bug-from-step", str(from_step)]
        run_script(script, *args)
    return path

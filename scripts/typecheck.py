"""Type-check memstate as it installs: `memstate` with `impls/` and `scenarios/` inside it.

The repository keeps impls/ and scenarios/ as top-level folders that install as memstate.impls and
memstate.scenarios (package-dir mapping in pyproject.toml). mypy cannot follow that mapping from the source
tree, so this builds the installed layout as a tree of symbolic links in a temporary folder, runs mypy at
its default settings on the package there, and prints the paths as they are in the repository.

    python scripts/typecheck.py          # exit status: mypy's
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"impls": "impls", "scenarios": "scenarios"}  # memstate/<key> comes from the repository's <value>/


def link_tree(dest: Path) -> Path:
    """dest/memstate: every entry of memstate/ plus the mapped folders, as links; returns it."""
    package = dest / "memstate"
    package.mkdir()
    for entry in (ROOT / "memstate").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for inside, folder in MAPPED.items():
        (package / inside).symlink_to(ROOT / folder)
    return package


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        link_tree(Path(tmp))
        env = dict(os.environ, MYPY_CACHE_DIR=str(ROOT / ".mypy_cache"))
        done = subprocess.run([sys.executable, "-m", "mypy", "-p", "memstate"], cwd=tmp, env=env,
                              capture_output=True, text=True)
    out = done.stdout + done.stderr
    for inside, folder in MAPPED.items():
        out = out.replace(f"memstate/{inside}/", f"{folder}/")
    print(out, end="")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())

"""The command outputs quoted in README.md and docs/ are what the commands print today.

scripts/doc_outputs.py regenerates them; this test runs its fast recipes in --check mode (the slow ones,
bisect over 2,000 steps and a 300-step check, run with `python scripts/doc_outputs.py --check`)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quoted_outputs_are_current():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "doc_outputs.py"), "--check", "--fast"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_marker_names_a_recipe_and_every_recipe_is_quoted():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import doc_outputs
    finally:
        sys.path.pop(0)
    used = [rid for path in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
            for rid, _, _ in doc_outputs.blocks(path.read_text())]
    assert sorted(set(used)) == sorted(doc_outputs.RECIPES)


def test_select_marks_every_gap():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from doc_outputs import select
    finally:
        sys.path.pop(0)
    lines = ["FAIL a", "x", "first b", "c1", "c2", "diagnosis: d", "tail"]
    assert select(lines, (r"^FAIL", r"^first", r"^c1", r"^diagnosis")) == [
        "FAIL a", "  ...", "first b", "c1", "  ...", "diagnosis: d", "  ..."]
    assert select(["x", "FAIL"], (r"^FAIL",)) == ["  ...", "FAIL"]

"""Exit codes (issue 13): 0 agree/clean, 1 a finding, 2 bad input, 3 a bug; every hostile input is a clear exit 2."""

from __future__ import annotations

import pytest

from hostile_cases import CASES, Case
from memstate.cli.main import main


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input_exit_status_and_message(tmp_path, capsys, case: Case):
    argv = case.build(tmp_path)
    status = main(argv)
    out, err = capsys.readouterr()
    text = err if case.status >= 2 else out
    assert status == case.status, f"{argv}: exit {status}\nstdout: {out[-2000:]}\nstderr: {err[-2000:]}"
    for word in case.words:
        assert word in text, f"{word!r} not in {text!r}"
    if case.status >= 2:
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1

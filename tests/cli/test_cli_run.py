"""`memstate run`, `init-params`, `convert`: the workflow from the command line, and exit status 2 on user mistakes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from memstate.cli.main import main
from memstate.formats.params import read_params
from memstate.formats.trace import read_trace


def test_init_params_then_run_from_it(tmp_path, capsys):
    params = tmp_path / "start.params.json"
    assert main(["init-params", "mnist14-relu", "-o", str(params)]) == 0
    loaded = read_params(params).tensors
    assert {k: v.shape for k, v in loaded.items()} == {
        "L1.W": (196, 32), "L1.b": (32,), "L2.W": (32, 10), "L2.b": (10,)}
    doc = json.loads(params.read_text())
    assert doc["format"] == "memstate.params" and doc["meta"]["init"] == "he"

    trace = tmp_path / "n.memstate.jsonl"
    assert main(["run", "mnist14-relu", "--params", str(params), "--steps", "4", "-o", str(trace), "-q"]) == 0
    out = capsys.readouterr().out
    assert "numpy on mnist14-relu: 4 steps" in out and str(trace) in out
    steps = read_trace(trace)
    assert [s.index for s in steps] == [0, 1, 2, 3]
    # step 0 started from the params file: W after = W before - lr * dW
    s0 = steps[0].tensors
    np.testing.assert_array_equal(s0["L1.W"], loaded["L1.W"] - 0.1 * s0["L1.dW"])


def test_run_shows_progress_and_records_variant(tmp_path, capsys):
    trace = tmp_path / "g.memstate"
    assert main(["run", "mnist14-relu", "--steps", "3", "--variant", "softmax_max=global", "-o", str(trace)]) == 0
    err = capsys.readouterr().err
    assert "step      3/3" in err and "test acc" in err
    from memstate.formats.trace import open_trace

    with open_trace(trace) as t:
        assert t.encoding == "binary"
        assert t.meta["variant"] == {"softmax_max": "global"}
        assert t.meta["impl"] == "numpy" and t.meta["scenario"] == "mnist14-relu"


def test_convert_round_trip(tmp_path):
    a = tmp_path / "a.memstate.jsonl"
    assert main(["run", "mnist14-relu", "--steps", "2", "-o", str(a), "-q", "--no-eval"]) == 0
    assert main(["convert", str(a), str(tmp_path / "b.memstate")]) == 0
    assert main(["convert", str(tmp_path / "b.memstate"), str(tmp_path / "c.memstate.jsonl")]) == 0
    for sa, sc in zip(read_trace(a), read_trace(tmp_path / "c.memstate.jsonl"), strict=True):
        assert all(sa.tensors[n].tobytes() == sc.tensors[n].tobytes() for n in sa.names())


@pytest.mark.parametrize(
    "argv, words",
    [
        (["run", "no-such-scenario"], "no scenario named 'no-such-scenario'"),
        (["run", "mnist14-relu", "--impl", "fortran"], "no implementation named 'fortran'; available: numpy"),
        (["run", "mnist14-relu", "--variant", "softmax_max"], "write it as key=value"),
        (["run", "mnist14-relu", "--variant", "softmax_max=batch"], "not one of row, global, none"),
        (["run", "mnist14-relu", "--params", "missing.params.json"], "missing.params.json"),
        (["run", "mnist784-100-10", "--params", "SMALL"], "tensor 'L1.W': has shape [196, 32] but scenario mnist784-100-10"),
        (["run", "mnist14-relu", "--steps", "0"], "need at least one step"),
    ],
)
def test_user_mistakes_exit_2_with_a_message(argv, words, tmp_path, capsys):
    if "SMALL" in argv:
        small = tmp_path / "small.params.json"
        main(["init-params", "mnist14-relu", "-o", str(small)])
        argv = [str(small) if a == "SMALL" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in err
    assert "Traceback" not in err


def test_version_names_the_package_and_distribution(capsys):
    import memstate

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"memstate {memstate.__version__} (distribution memstate-nn)\n"

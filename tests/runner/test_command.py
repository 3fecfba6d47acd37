"""`cmd:` implementations (memstate.runner.command): ports in any language driven through their command line.

The ports are stdlib Python and plain Node (tests/ports: reference.py, port_minimal.js --full), written without memstate; every run
here goes through the command line as a user's would, and its trace is compared with ours.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from cmd_ports import NO_NODE, NODE, js_cmd, py_cmd, script_cmd, tiny_scenario
from memstate.cli.main import main
from memstate.formats.recorder import Recorder
from memstate.formats.trace import open_trace, read_trace
from memstate.runner.checkpoint import CheckpointRun
from memstate.runner.command import CommandError, CommandTarget, PortRun, parse_command
from memstate.runner.scenario import load_scenario


@pytest.fixture(autouse=True)
def _temp_here(tmp_path, monkeypatch):
    """Failed runs keep their files for the user to look at: keep them under the test's folder."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def _run(*args: str) -> int:
    return main(["run", *args, "-q"])


# ---------------------------------------------------------------- a port agrees with numpy


def test_python_port_run_agrees_with_numpy_and_keeps_the_harness_header(tmp_path, capsys):
    port, ref = tmp_path / "port.memstate.jsonl", tmp_path / "numpy.memstate.jsonl"
    assert _run("mnist14-relu", "--impl", py_cmd(), "--steps", "3", "-o", str(port)) == 0
    assert "3 steps" in capsys.readouterr().out
    assert _run("mnist14-relu", "--steps", "3", "-o", str(ref)) == 0
    assert main(["diff", str(ref), str(port)]) == 0
    with open_trace(port) as t:
        meta = t.meta
    assert meta["impl"] == py_cmd() and meta["port"] == {"impl": "reference", "dtype": "float64"}
    assert meta["settings"] == {"scenario": "mnist14-relu", "layers": [196, 32, 10], "activation": "relu",
                                "loss_reduction": "mean", "learning_rate": 0.1, "dtype": "float64", "batch_size": 8}
    assert meta["loss_recorded"] is True and meta["scenario"] == "mnist14-relu"
    steps = read_trace(port)
    assert [s.index for s in steps] == [0, 1, 2] and len(steps[0].tensors) == 18


@pytest.mark.skipif(NODE is None, reason=NO_NODE)
def test_node_port_run_agrees_with_numpy(tmp_path):
    port, ref = tmp_path / "port.memstate", tmp_path / "numpy.memstate"
    assert _run("mnist14-relu", "--impl", js_cmd(), "--steps", "3", "-o", str(port)) == 0
    assert _run("mnist14-relu", "--steps", "3", "-o", str(ref)) == 0
    assert main(["diff", str(ref), str(port)]) == 0


@pytest.mark.skipif(NODE is None, reason=NO_NODE)
def test_node_port_with_a_bug_from_step_k_diverges_at_step_k(tmp_path, capsys):
    sc = tiny_scenario(tmp_path)
    port, ref = tmp_path / "port.memstate.jsonl", tmp_path / "numpy.memstate.jsonl"
    assert _run(str(sc), "--impl", js_cmd("--bug", "softmax-global-sum", "--bug-from-step", "3"),
                "-o", str(port)) == 0
    assert _run(str(sc), "-o", str(ref)) == 0
    capsys.readouterr()
    assert main(["diff", str(ref), str(port), "--format", "json"]) == 1
    first = json.loads(capsys.readouterr().out)["first_divergence"]
    assert (first["step"], first["name"]) == (3, "probs")


def test_diff_impls_runs_a_port_next_to_ours(tmp_path, capsys):
    sc = tiny_scenario(tmp_path, activation="sigmoid", reduction="sum", lr=0.05)
    keep = tmp_path / "keep"
    assert main(["diff", "--impls", f"numpy,python,{py_cmd()}", str(sc), "--keep", str(keep), "-q"]) == 0
    out = capsys.readouterr().out
    assert f"  #3 = {py_cmd()}\n" in out  # the port's long name is #3 in the table
    assert "numpy vs python: agree" in out and "numpy vs #3: agree" in out and "python vs #3: agree" in out
    assert sorted(p.name for p in keep.iterdir()) == ["impl3.memstate", "numpy.memstate", "python.memstate"]
    with open_trace(keep / "impl3.memstate") as t:
        assert t.meta["settings"]["activation"] == "sigmoid" and t.meta["settings"]["loss_reduction"] == "sum"


def test_a_custom_scenario_trace_checks_without_scenario(tmp_path, capsys):
    """Headers record meta.settings, which check prefers to a bundled scenario of the same name that says
    otherwise: a trace from a custom TOML needs no --scenario."""
    sc = tiny_scenario(tmp_path, name="mnist14-relu", activation="sigmoid", reduction="sum", lr=0.05, size=14)
    trace, params = tmp_path / "t.memstate.jsonl", tmp_path / "start.params.json"
    assert main(["init-params", str(sc), "-o", str(params)]) == 0
    assert _run(str(sc), "--impl", py_cmd(), "--params", str(params), "--steps", "3", "-o", str(trace)) == 0
    capsys.readouterr()
    assert main(["check", str(trace), "--params", str(params), "--format", "json"]) == 0
    check = json.loads(capsys.readouterr().out)["check"]
    got = {k: (v["value"], v["source"], v["consistent"]) for k, v in check["settings"].items() if isinstance(v, dict)}
    assert got == {"activation": ("sigmoid", "header", True), "loss_reduction": ("sum", "header", True),
                   "learning_rate": (0.05, "header", True)}
    assert check["ok"] and check["operations"] == 3 * 16
    assert any("activation ('relu') is not the run's ('sigmoid', meta.settings)" in n for n in check["notes"])


# ---------------------------------------------------------------- checkpoint runs of a port


def test_checkpoint_run_of_a_port_matches_numpys(tmp_path):
    sc = tiny_scenario(tmp_path)
    port, ref = tmp_path / "port.memstate", tmp_path / "numpy.memstate"
    assert _run(str(sc), "--impl", py_cmd(), "--checkpoint-every", "4", "-o", str(port)) == 0
    assert _run(str(sc), "--checkpoint-every", "4", "-o", str(ref)) == 0
    a, b = CheckpointRun.load(ref), CheckpointRun.load(port)
    assert a.checkpoints == b.checkpoints == (0, 4, 6)
    np.testing.assert_allclose(b.losses, a.losses, rtol=1e-12)
    assert np.all(np.isfinite(b.accuracies)) and np.array_equal(a.accuracies, b.accuracies)
    for c in a.checkpoints:
        for name, value in a.params(c).items():
            np.testing.assert_allclose(b.params(c)[name], value, rtol=1e-10, atol=1e-13)


RENAME = """import subprocess, sys
p, b, t = sys.argv[1:4]
rc = subprocess.call([sys.executable, {port!r}, p, b, t])
text = open(t).read()
for old, new in {renames!r}:
    text = text.replace(old, new)
open(t, "w").write(text)
sys.exit(rc)
"""


def _renaming_port(tmp_path: Path, renames: list[tuple[str, str]]) -> str:
    from cmd_ports import PY_PORT

    script = tmp_path / "renaming_port.py"
    script.write_text(RENAME.format(port=str(PY_PORT), renames=renames), encoding="utf-8")
    return script_cmd(script)


def test_checkpoint_run_of_a_port_with_its_own_parameter_names_says_so(tmp_path, capsys):
    cmd = _renaming_port(tmp_path, [('"name": "L1.W"', '"name": "W1"')])
    assert _run(str(tiny_scenario(tmp_path)), "--impl", cmd, "--checkpoint-every", "2",
                "-o", str(tmp_path / "c.memstate")) == 2
    err = capsys.readouterr().err
    assert "records no L1.W in step 1" in err and "canonical names L1.W, L1.b, L2.W, L2.b" in err


# ---------------------------------------------------------------- failures are exit 2 with the stderr tail


BAD_PORTS = {
    "short": ("write_steps(steps[:2])", "its trace stops before step 2: it has 2 of the 6 steps asked for"),
    "renumbered": ("write_steps([k + 100 for k in steps])", "its trace has step 100 where step 0 was due"),
    "extra": ("write_steps(steps + [99])", "its trace has step 99 after the last step asked for (5)"),
    "cut": ("write_steps(steps[:3], cut=True)", "it has 3 of the 6 steps asked for (the next one is incomplete"),
    "nothing": ("pass", "exited with status 0 but wrote no trace"),
    "not-a-trace": ("open(trace, 'w').write('hello')", "its trace is not a valid memstate trace"),
    "crash": ("raise RuntimeError('port blew up')", "exited with status 1"),
}

BAD = """import json, sys
params, batches, trace = sys.argv[1:4]
sys.stderr.write("bad port speaking\\n")
steps = [json.loads(line)["step"] for line in open(batches).read().splitlines()[1:] if '"end"' in line]
def write_steps(ks, cut=False):
    with open(trace, "w") as f:
        f.write(json.dumps({{"format": "memstate.trace", "version": 1, "meta": {{"impl": "bad"}}}}) + "\\n")
        for k in ks:
            f.write(json.dumps({{"step": k, "name": "loss", "shape": [], "dtype": "float64", "data": [1.0]}}) + "\\n")
            f.write(json.dumps({{"step": k, "end": True}}) + "\\n")
        if cut:
            f.write(json.dumps({{"step": ks[-1] + 1, "name": "loss", "shape": [], "dtype": "float64", "data": [1.0]}}))
{body}
"""


@pytest.mark.parametrize("case", sorted(BAD_PORTS))
def test_a_bad_port_is_exit_2_quoting_its_stderr(tmp_path, capsys, case):
    body, message = BAD_PORTS[case]
    script = tmp_path / "bad_port.py"
    script.write_text(BAD.format(body=body), encoding="utf-8")
    assert _run(str(tiny_scenario(tmp_path)), "--impl", script_cmd(script), "-o", str(tmp_path / "o.jsonl")) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "its stderr ends:\n    bad port speaking" in err
    assert "files kept in" in err


def test_a_failing_port_quotes_the_tail_of_its_stderr(tmp_path, capsys):
    assert _run("mnist14-relu", "--steps", "2", "--impl", py_cmd("--bug", "no-such-bug")) == 2
    err = capsys.readouterr().err
    assert "exited with status 2" in err and "unsupported bug 'no-such-bug'" in err


def test_a_port_that_runs_too_long_is_stopped(tmp_path, capsys):
    script = tmp_path / "slow.py"
    script.write_text("import sys, time\nprint('thinking hard', file=sys.stderr, flush=True)\ntime.sleep(60)\n")
    assert _run(str(tiny_scenario(tmp_path)), "--impl-timeout", "0.5", "--impl", script_cmd(script)) == 2
    err = capsys.readouterr().err
    assert "timed out after 0.5s (--impl-timeout)" in err and "thinking hard" in err


@pytest.mark.parametrize("command, message", [
    ("cmd:", "no command after 'cmd:'"),
    ("cmd:python3 port.py {params} {batches}", "it lacks {trace}"),
    ("cmd:python3 'port.py {params} {batches} {trace}", "cannot split the command"),
    ("cmd:no-such-program-here {params} {batches} {trace}", "cannot start 'no-such-program-here'"),
])
def test_bad_commands_are_exit_2(tmp_path, capsys, command, message):
    assert _run(str(tiny_scenario(tmp_path)), "--impl", command) == 2
    assert message in capsys.readouterr().err


def test_a_variant_cannot_be_planted_in_a_port(tmp_path, capsys):
    assert _run(str(tiny_scenario(tmp_path)), "--impl", py_cmd(), "--variant", "softmax_max=global") == 2
    assert "cannot switch on the variant softmax_max=global" in capsys.readouterr().err


def test_train_step_runs_one_step_per_run_of_the_command(tmp_path):
    """The one-step interface every implementation has, for code that drives a network step by step."""
    from memstate.runner.dataset import prepare_data
    from memstate.runner.initparams import scenario_params
    from memstate.runner.registry import get_impl

    sc = load_scenario(tiny_scenario(tmp_path))
    data = prepare_data(sc.data)
    x, labels = data.train_x[:4], data.train_y[:4]
    nets = [get_impl(name).make(sc.net_spec(), scenario_params(sc)) for name in ("numpy", py_cmd())]
    for _ in range(2):
        got: list[dict] = [{}, {}]
        losses = [net.train_step(x, labels, 0.1, lambda n, v, g=g: g.__setitem__(n, np.asarray(v)))
                  for net, g in zip(nets, got)]
        assert list(got[1]) == list(got[0]) and losses[1] == pytest.approx(losses[0], rel=1e-12)
        for name, value in got[0].items():
            np.testing.assert_allclose(got[1][name], value, rtol=1e-10, atol=1e-13)
    assert nets[1]._next == 2  # the step numbers it gave the port


def test_bad_timeouts_are_refused():
    with pytest.raises(CommandError, match="positive number of seconds"):
        CommandTarget.parse(py_cmd(), 0)


def test_placeholders_are_substituted_inside_words():
    argv = parse_command("cmd:port --in={params} --batches {batches} -o '{trace}' 'a b'")
    assert argv == ("port", "--in={params}", "--batches", "{batches}", "-o", "{trace}", "a b")


# ---------------------------------------------------------------- the port's trace, validated as it streams


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(want=st.lists(st.integers(0, 30), min_size=1, max_size=6, unique=True).map(sorted),
       got=st.lists(st.integers(0, 30), max_size=7, unique=True).map(sorted), cut=st.booleans())
def test_port_runs_accept_exactly_the_steps_asked_for(tmp_path, want, got, cut):
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    trace = folder / "t.jsonl"
    with Recorder(trace, meta={"impl": "p"}, encoding="jsonl") as rec:
        for k in got:
            with rec.step(k):
                rec.record("loss", np.float64(k))
        if cut:
            rec._writer.begin_step(31)
            rec.record("loss", np.float64(0))
    sc = load_scenario("mnist14-relu")
    net = CommandTarget.parse(py_cmd()).make(sc.net_spec(), {})
    run = PortRun(net, folder, trace, tuple(want), {}, 0.0, "")
    if got == want:
        assert [s.index for s in run] == want
    else:
        with pytest.raises(CommandError, match="its trace"):
            list(run)

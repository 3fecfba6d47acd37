"""`memstate check` on partial traces: any canonical tensor may be absent. Every recorded tensor is checked
through the operations between it and the nearest recorded tensors; CLEAN only with every recorded tensor
verified; the learning rate is the consensus of per-tensor fits, so one wrong update is the odd one out.

The traces come from ports written outside memstate (tests/ports: stdlib Python and plain Node, with
planted bugs), from the hand-made trainer check_writer, and from our numpy implementation's canonical
traces with names dropped."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import check_writer
from variant_cases import VARIANTS, variant_id
from memstate.check.checker import check_trace
from memstate.cli.main import main
from memstate.formats.params import read_params
from memstate.formats.recorder import Recorder
from memstate.formats.trace import open_trace
from memstate.runner.harness import run
from memstate.runner.initparams import init_params
from memstate.runner.scenario import load_scenario

PORTS = Path(__file__).resolve().parents[1] / "ports"
PARAMS = ("L1.W", "L1.b", "L2.W", "L2.b")
HIDDEN = ("loss", "L2.dz", "L1.da", "L1.dz")  # what a port frees inside backprop and never exposes


def first(r):
    f = r.first_finding
    return (f.step, f.name) if f is not None else None


def drop(src: Path, dst: Path, keep) -> Path:
    """Copy a trace keeping only the names `keep(step, name)` accepts (header as it is)."""
    with open_trace(src) as t, Recorder(dst, meta=t.meta) as rec:
        for step in t:
            with rec.step(step.index):
                for name, value in step.tensors.items():
                    if keep(step.index, name):
                        rec.record(name, value)
    return dst


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    """make_batches.py's params and batches files: layers [6, 5, 3], batch 4, steps 0..4, relu, mean, lr 0.1."""
    d = tmp_path_factory.mktemp("batches")
    subprocess.run([sys.executable, str(PORTS / "make_batches.py"), str(d)], check=True, capture_output=True)
    return d / "tiny.params.json", d / "tiny.batches.jsonl"


def port(tmp_path, batches, script, *args, name="port"):
    """Run a port on the batches; returns (trace, params file)."""
    params, data = batches
    out = tmp_path / f"{name}.memstate.jsonl"
    cmd = ["node"] if script.endswith(".js") else [sys.executable]
    if cmd == ["node"] and shutil.which("node") is None:
        pytest.skip("node is not installed: the Node port cannot run")
    subprocess.run(cmd + [str(PORTS / script), str(params), str(data), str(out), *args], check=True,
                   capture_output=True)
    return out, params


def tensors(params_path):
    return read_params(params_path).tensors


# ---------------------------------------------------------------- only x, y and the updated parameters

def test_minimal_port_clean_is_checked_with_full_coverage(tmp_path, batches):
    """port_minimal.js records x, y, L1.W, L1.b, L2.W, L2.b and nothing else; its header says nothing. The
    whole step is derived; the activation is the one under which the updates agree; lr is fitted."""
    trace, params = port(tmp_path, batches, "port_minimal.js")
    r = check_trace(trace, params=tensors(params))
    assert r.ok, (r.first_finding, r.coverage)
    assert (r.coverage.recorded, r.coverage.verified, r.coverage.per_step) == (20, 20, 4)
    assert r.coverage.line() == "verified 4 of 4 recorded tensors in every step"
    assert r.operations == 20 and r.worst.ratio < 0.01
    assert (r.activation.value, r.activation.source) == ("relu", "inferred")
    assert (r.learning_rate.value, r.learning_rate.source, r.learning_rate.consistent) == (0.1, "fitted", True)
    assert "derived from x, y" in r.worst.formula


@pytest.mark.parametrize("bug, start, at", [
    ("bias-grad-scalar", 0, (0, "L2.b")),
    ("bias-grad-scalar", 2, (2, "L2.b")),
    ("weight-decay", 1, (1, "L1.W")),
    ("softmax-global-sum", 3, (3, "L1.W")),
])
def test_minimal_port_bug_fails_at_the_first_wrong_recorded_tensor(tmp_path, batches, bug, start, at):
    trace, params = port(tmp_path, batches, "port_minimal.js", "--bug", bug, "--bug-from-step", str(start))
    r = check_trace(trace, params=tensors(params))
    assert not r.ok and first(r) == at and r.first_failure.name == at[1]
    assert r.coverage.complete  # found wrong, not merely unverified


def test_without_params_the_minimal_port_is_not_verified_and_says_what_is_needed(tmp_path, batches, capsys):
    trace, _ = port(tmp_path, batches, "port_minimal.js")
    r = check_trace(trace)
    assert not r.ok and r.first_finding is None and r.n_failures == 0
    assert (r.coverage.recorded, r.coverage.verified) == (20, 16)
    assert [(u.name, u.first_step, u.steps) for u in r.coverage.unverified] == [(n, 0, 1) for n in PARAMS]
    assert all("--params" in u.needs for u in r.coverage.unverified)
    assert main(["check", str(trace)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("NOT VERIFIED: no wrong operation, but 4 of 20 recorded tensors could not be checked")
    assert "--params" in out.splitlines()[0] and "not verified (recorded, but no operation could reach them)" in out
    report = tmp_path / "r.json"
    assert main(["check", str(trace), "--format", "json", "-o", str(report)]) == 1
    doc = json.loads(report.read_text())["check"]
    assert doc["ok"] is False and doc["verdict"].startswith("NOT VERIFIED")
    assert doc["coverage"]["complete"] is False and (doc["coverage"]["recorded"], doc["coverage"]["verified"]) == (20, 16)
    assert [u["name"] for u in doc["coverage"]["unverified"]] == list(PARAMS)
    assert {f["name"]: f["agrees"] for f in doc["lr_fits"]} == dict.fromkeys(PARAMS, True)


# ---------------------------------------------------------------- what a foreign port exposes

def test_per_neuron_port_has_its_updates_checked_without_gradients(tmp_path, batches):
    """port_perneuron.py records the forward pass and the updates but no gradient: before, its updates were
    'not checked' and the trace CLEAN whatever they were."""
    trace, params = port(tmp_path, batches, "port_perneuron.py")
    r = check_trace(trace, params=tensors(params))
    assert r.ok and r.coverage.line() == "verified 9 of 9 recorded tensors in every step"
    assert r.by_name["L1.W"].checked == 5 and r.learning_rate.value == 0.1
    bad, params = port(tmp_path, batches, "port_perneuron.py", "--bug", "bias-grad-scalar", name="bad")
    r = check_trace(bad, params=tensors(params))
    assert first(r) == (0, "L2.b")


def test_known_false_clean_no_loss_no_dz_wrong_bias_gradient_fails_at_the_bias_gradient(tmp_path, batches):
    """issue 10: a trace with what a port exposes (no loss, no dz/da) and a wrong bias gradient said CLEAN
    ('not checked (L2.dz not recorded): L2.dW, L2.db'). Now L2.db is checked from probs and y."""
    full, params = port(tmp_path, batches, "reference.py", "--bug", "bias-grad-scalar")
    exposed = drop(full, tmp_path / "exposed.memstate.jsonl", lambda k, n: n not in HIDDEN)
    r = check_trace(exposed, params=tensors(params))
    assert not r.ok and first(r) == (0, "L2.db")
    assert r.first_failure.inputs == ("probs", "y") and "L2.dz derived" in r.first_failure.formula
    assert r.reduction.value == "mean"  # read from L2.dW against L1.a^T (probs - y): the wrong db is outvoted
    clean, params = port(tmp_path, batches, "reference.py", name="clean")
    r = check_trace(drop(clean, tmp_path / "clean-exposed.memstate.jsonl", lambda k, n: n not in HIDDEN),
                    params=tensors(params))
    assert r.ok and r.coverage.line() == "verified 12 of 12 recorded tensors in every step"


@pytest.mark.parametrize("bug, start, at", [
    (None, 0, None),
    ("bias-grad-scalar", 0, (0, "L2.b")),
    ("weight-decay", 2, (2, "L1.W")),
    ("momentum", 1, (2, "L1.W")),  # v = g at the first buggy step: the update differs one step later
    ("round8", 3, (3, "L1.W")),
])
def test_reference_trace_with_only_x_y_and_updated_params(tmp_path, batches, bug, start, at):
    args = ["--bug", bug, "--bug-from-step", str(start)] if bug else []
    full, params = port(tmp_path, batches, "reference.py", *args)
    only = drop(full, tmp_path / "only.memstate.jsonl", lambda k, n: n in ("x", "y") + PARAMS)
    r = check_trace(only, params=tensors(params))
    assert first(r) == at and r.coverage.complete
    assert r.ok == (bug is None)


# ---------------------------------------------------------------- robust inference

def test_one_wrong_update_cannot_move_the_learning_rate_and_is_blamed(tmp_path):
    """L1.b never updated: least squares over every update fitted a wrong lr and every update failed (the
    report blamed L1.W). The consensus of the per-tensor fits is 0.5; L1.b is the odd one out."""
    trace, params = check_writer.make(tmp_path, "frozen", bug="bias-never-updated")
    r = check_trace(trace, params=read_params(params).tensors)
    assert first(r) == (0, "L1.b") and r.first_failure.name == "L1.b"
    assert {o.name for o in r.failures} == {"L1.b"}
    assert (r.learning_rate.value, r.learning_rate.source) == (0.5, "fitted") and not r.learning_rate.consistent
    fits = {name: (med, agrees) for name, med, _, _, _, agrees in r.lr_fits}
    assert fits["L1.b"] == (0.0, False)
    assert all(agrees and abs(med - 0.5) < 1e-12 for n, (med, agrees) in fits.items() if n != "L1.b")
    lr_finding = next(f for f in r.findings if f.code == "lr-consistent")
    assert lr_finding.name == "L1.b" and "odd one out: L1.b" in lr_finding.message


def test_unnamed_loss_reduction_checks_dz_and_loss_as_a_proportionality(tmp_path, batches):
    """loss averaged over B*C entries: dz = (probs - y) / (B C) is neither mean nor sum. dz is checked as
    c * (probs - y) with c fitted and reported, and the loss as c * the summed loss with the same c (the
    gradient of c * sum is c * (probs - y)); a loss scaled otherwise than its gradient fails at the loss."""
    trace, params = port(tmp_path, batches, "reference.py", "--bug", "loss-mean-over-classes")
    r = check_trace(trace, params=tensors(params))
    assert r.reduction.value is None and "c = 0.0833333" in r.reduction.evidence  # 1 / (4 * 3)
    assert r.by_name["L2.dz"].checked == 5 and r.by_name["loss"].checked == 5
    assert r.n_failures == 0 and r.coverage.complete  # consistent with itself: every operation passes as c * ...
    # ... but that c is 1/(B*C): the loss is averaged over the classes too, a mistake check names (issue 11)
    assert [(f.kind, f.code, f.name) for f in r.findings] == [("inference", "loss-mean-over-classes", "L2.dz")]
    assert [(c.name, c.code) for c in r.comparison.root_causes] == [("L2.dz", "loss-mean-over-classes")]
    assert not r.ok

    with open_trace(trace) as src, Recorder(tmp_path / "mixed.memstate.jsonl", meta=src.meta) as rec:
        for step in src:
            with rec.step(step.index):
                for name, value in step.tensors.items():
                    rec.record(name, value * 3 if name == "loss" else value)  # the loss averaged over B only
    r = check_trace(tmp_path / "mixed.memstate.jsonl", params=tensors(params))
    assert first(r) == (0, "loss") and r.first_failure.formula.startswith("0.0833333 * the summed cross-entropy")


def test_transposed_weights_without_params_is_a_finding_not_a_traceback(tmp_path, capsys):
    """issue 11: W recorded [fan_out, fan_in] and no --params crashed in numpy at step 1."""
    trace, _ = check_writer.make(tmp_path, "clean")
    t = drop(trace, tmp_path / "tmp.memstate.jsonl", lambda k, n: True)
    with open_trace(trace) as src, Recorder(t, meta=src.meta) as rec:
        for step in src:
            with rec.step(step.index):
                for name, value in step.tensors.items():
                    rec.record(name, value.T if name in ("L1.W", "L2.W") else value)
    r = check_trace(t)
    assert first(r) == (1, "L1.z") and r.first_finding.code == "shape"
    assert "[fan_out, fan_in]" in r.first_finding.message and "L1.W in force [6, 12]" in r.first_finding.message
    assert main(["check", str(t)]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and captured.out.startswith("FAIL at step 1, L1.z")


# ---------------------------------------------------------------- canonical traces with names dropped

@pytest.fixture(scope="module")
def scenario():
    return load_scenario("mnist14-relu")


@pytest.mark.parametrize("variant, scale, tensor, code", VARIANTS, ids=variant_id)
def test_variant_without_the_backward_intermediates_fails_where_it_did(tmp_path, scenario, variant, scale, tensor,
                                                                      code):
    """No loss, dz or da (unless the bug is in that tensor): the same step, tensor and diagnosis."""
    params = {k: v * scale for k, v in init_params((196, 32, 10), "he", 0).items()}
    path = tmp_path / "v.memstate"
    run(scenario, "numpy", steps=2, out=path, variant=variant, params=params, evaluate=False)
    r = check_trace(drop(path, tmp_path / "p.memstate", lambda k, n: n == tensor or n not in HIDDEN),
                    params=params)
    assert first(r) == (0, tensor) and r.diagnoses[0].code == code
    assert r.coverage.complete


@pytest.mark.parametrize("variant, scale, tensor, code", VARIANTS, ids=variant_id)
def test_variant_with_only_x_y_and_updates(tmp_path, scenario, variant, scale, tensor, code):
    """Only x, y and the updated parameters: a bug that changes the gradients fails at step 0's first update;
    one confined to the loss (whose value no gradient uses) changes nothing recorded, and check says CLEAN
    with every recorded tensor verified."""
    params = {k: v * scale for k, v in init_params((196, 32, 10), "he", 0).items()}
    path = tmp_path / "v.memstate"
    run(scenario, "numpy", steps=2, out=path, variant=variant, params=params, evaluate=False)
    r = check_trace(drop(path, tmp_path / "p.memstate", lambda k, n: n in ("x", "y") + PARAMS), params=params)
    assert r.coverage.complete and r.coverage.per_step == 4
    if tensor == "loss" and "loss_reduction" not in variant.changes():
        assert r.ok
    else:
        assert first(r) == (0, "L1.W")


# ---------------------------------------------------------------- any subset of names (property)

CANONICAL = ("L1.z", "L1.a", "L2.z", "probs", "loss", "L2.dz", "L2.dW", "L2.db", "L1.da", "L1.dz", "L1.dW",
             "L1.db") + PARAMS


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kept=st.sets(st.sampled_from(CANONICAL), min_size=1), victim=st.integers(0, 100))
def test_any_subset_of_names_checks_clean_and_finds_a_corrupted_tensor(tmp_path, kept, victim):
    """Whatever subset is recorded (x and y always): a clean trace never fails, step 0 is fully verified
    (the params file is given), and with every parameter recorded so is every step. One recorded tensor
    corrupted at step 1 is the first thing wrong, at step 1."""
    trace, params_path = check_writer.make(tmp_path, "h", steps=3, activation="relu")
    params = read_params(params_path).tensors
    partial = drop(trace, tmp_path / "h-partial.memstate.jsonl", lambda k, n: n in ("x", "y") or n in kept)
    r = check_trace(partial, params=params)
    assert r.n_failures == 0 and r.first_finding is None, r.first_finding
    # step 0 (params file given) is reached unless a setting nothing recorded shows is needed (the activation
    # with no hidden a and no update recorded; the reduction with no dz, dW, db, loss or update recorded)
    assert all(u.first_step > 0 or "declare" in u.needs for u in r.coverage.unverified), r.coverage
    assert r.coverage.complete == r.ok
    if set(PARAMS) <= kept:
        assert r.ok
    name = sorted(kept)[victim % len(kept)]

    def corrupt(k, n, v):
        if (k, n) != (1, name):
            return v
        v = v.copy()
        v.reshape(-1)[0] += 1e-3 * (1 + abs(float(v.reshape(-1)[0])))
        return v

    bad = tmp_path / "h-bad.memstate.jsonl"
    with open_trace(partial) as src, Recorder(bad, meta=src.meta) as rec:
        for step in src:
            with rec.step(step.index):
                for n, v in step.tensors.items():
                    rec.record(n, corrupt(step.index, n, v))
    r = check_trace(bad, params=params)
    if r.coverage.unverified and any(u.name == name and u.first_step <= 1 for u in r.coverage.unverified):
        return  # the victim itself could not be reached at step 1 (its parameters in force are unknown)
    assert first(r) == (1, name), (kept, name, r.first_finding)


@pytest.mark.parametrize("impl, scenario_name, steps", [
    ("numpy", "mnist14-relu-f32", 17),  # 68 update fits: the consensus over many fits (their median)
    ("jax", "mnist14-relu-f32", 3),
    ("python", "mnist14-relu", 2),
])
@pytest.mark.parametrize("keep", ["no-backward", "only-updates"])
def test_other_implementations_partial_traces_check_clean_with_margin(tmp_path, impl, scenario_name, steps, keep):
    """Derived intermediates are float64; the trace's were rounded in its own dtype, summed in its own order
    (or by autodiff): the compositions stay far inside their tolerance."""
    from memstate.errors import MemstateError
    from memstate.runner.registry import get_impl

    if impl == "jax":
        pytest.importorskip("jax")
    try:
        get_impl(impl)
    except (ImportError, MemstateError) as exc:
        pytest.skip(f"implementation {impl} is not available: {exc}")
    s = load_scenario(scenario_name)
    params = {k: v.astype(s.dtype) for k, v in init_params((196, 32, 10), "he", 0).items()}
    path = tmp_path / "t.memstate"
    run(s, impl, steps=steps, out=path, params=params, evaluate=False)
    wanted = (lambda k, n: n not in HIDDEN) if keep == "no-backward" else (lambda k, n: n in ("x", "y") + PARAMS)
    r = check_trace(drop(path, tmp_path / "p.memstate", wanted), params=params)
    assert r.ok and r.coverage.complete, (r.first_finding, r.coverage)
    assert r.worst.ratio < 0.1 and r.learning_rate.value == 0.1


def test_a_canonical_trace_derives_nothing(tmp_path, scenario, monkeypatch):
    """The canonical path stays as fast as it was: every tensor by its own operation, no derivation, no
    settings search."""
    from memstate.check import infer, plan

    params = init_params((196, 32, 10), "he", 0)
    path = tmp_path / "c.memstate"
    run(scenario, "numpy", steps=3, out=path, params=params, evaluate=False)

    def refuse(*args, **kwargs):
        raise AssertionError("a canonical trace should derive nothing")

    monkeypatch.setattr(plan.Derivation, "evaluate", refuse)
    monkeypatch.setattr(infer, "_try_settings", refuse)
    monkeypatch.setattr(infer, "_derived", refuse)
    r = check_trace(path, params=params)
    assert r.ok and r.operations == 3 * 16 and r.coverage.line() == "verified 16 of 16 recorded tensors in every step"

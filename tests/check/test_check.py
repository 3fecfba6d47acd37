"""`memstate check`: one trace, no second run. Clean traces check clean; every variant's bug is caught at the
operation that makes it (right step, right tensor, right diagnosis), also in traces written by outside code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import check_writer
from impl_availability import require
from variant_cases import VARIANTS, variant_id
from memstate.check import recompute as rc
from memstate.check.checker import check_trace
from memstate.cli.main import main
from memstate.formats.convert import convert_trace
from memstate.runner.initparams import init_params
from memstate.formats.params import read_params, write_params
from memstate.formats.recorder import Recorder
from memstate.runner.harness import run
from memstate.runner.scenario import load_scenario
from memstate.comparator.tolerance import Tolerances, tolerances_from_specs
from memstate.formats.trace import open_trace, read_trace
from memstate.runner.variants import Variant

CONFORMANCE = Path(__file__).resolve().parents[1] / "conformance"
LAYERS = (196, 32, 10)


@pytest.fixture(scope="module")
def scenario():
    return load_scenario("mnist14-relu")


def he(scale: float = 1.0, dtype: str = "float64") -> dict[str, np.ndarray]:
    """mnist14-relu's initial parameters, scaled: large logits make the underflow bugs bite."""
    return {k: (v * scale).astype(dtype) for k, v in init_params(LAYERS, "he", 0).items()}


def make_trace(tmp_path, scenario, impl="numpy", variant=Variant(), scale=1.0, steps=4, name=None, **kw):
    params = he(scale, scenario.dtype)
    path = tmp_path / f"{name or impl}.memstate"
    run(scenario, impl, steps=steps, out=path, variant=variant, params=params, evaluate=False, **kw)
    return path, params


def first(result):
    f = result.first_finding
    return (f.step, f.name) if f is not None else None


def codes(result):
    return [d.code for d in result.diagnoses]


# ---------------------------------------------------------------- clean traces check clean

def test_numpy_clean_trace_checks_clean_and_says_what_it_verified(tmp_path, scenario):
    path, params = make_trace(tmp_path, scenario, steps=6)
    r = check_trace(path, params=params)
    assert r.ok and r.first_finding is None and r.n_failures == 0
    assert r.operations == 6 * 16 and r.steps == 6  # every tensor but x and y, every step
    assert not r.notes and not r.unchecked
    assert all(s.checked == 6 and s.skipped == 0 for s in r.by_name.values())
    assert r.worst is not None and r.worst.ratio <= 1
    # the spec: the scenario the header names (mnist14-relu), which the trace agrees with
    assert r.activation.source == "scenario mnist14-relu (named in the header)"
    assert r.activation.value == "relu" and r.activation.inferred == "relu"
    assert r.reduction.value == "mean" and r.reduction.inferred == "mean"
    assert r.learning_rate.value == 0.1 and r.learning_rate.inferred == 0.1 and r.learning_rate.consistent
    assert r.comparison.verdict == "agree"


@pytest.mark.parametrize("impl, dtype, steps", [
    ("numpy", "float32", 5),
    ("python", "float64", 3),
    ("jax", "float64", 4),
    ("jax", "float32", 4),
    ("scalar", "float64", 2),
])
def test_every_implementation_checks_clean(tmp_path, impl, dtype, steps):
    """The reference recomputes other implementations' operations within rounding: sums in other orders,
    gradients by autodiff through log-softmax, float32 arithmetic."""
    require(impl)  # skips only jax without the jax package; an implementation that fails to load fails
    scenario = load_scenario("mnist14-relu" if dtype == "float64" else "mnist14-relu-f32")
    path, params = make_trace(tmp_path, scenario, impl, steps=steps)
    r = check_trace(path, params=params)
    assert r.ok, (r.first_finding, r.first_failure)
    assert r.operations == steps * 16
    # the margin: no operation comes within a tenth of its tolerance
    assert r.worst.ratio < 0.1, r.worst


def test_independent_conformance_trace_checks_clean():
    """tests/conformance: written by an independent writer, with its params file; nothing is declared but
    the impl, so activation, reduction and learning rate are all inferred."""
    params = read_params(CONFORMANCE / "small.params.json").tensors
    r = check_trace(CONFORMANCE / "small.memstate.jsonl", params=params)
    assert r.ok and r.operations == 2 * 16 and not r.notes
    assert (r.activation.value, r.activation.source) == ("relu", "inferred")
    assert (r.reduction.value, r.reduction.source) == ("mean", "inferred")
    assert (r.learning_rate.value, r.learning_rate.source) == (0.1, "fitted")


def test_binary_and_jsonl_encodings_check_the_same(tmp_path, scenario):
    path, params = make_trace(tmp_path, scenario, variant=Variant(softmax_sum="global"), steps=3)
    jsonl = tmp_path / "copy.memstate.jsonl"
    convert_trace(path, jsonl)
    a, b = check_trace(path, params=params), check_trace(jsonl, params=params)
    assert (a.operations, a.n_failures, first(a), codes(a)) == (b.operations, b.n_failures, first(b), codes(b))


def test_crashed_trace_checks_its_complete_steps():
    params = read_params(CONFORMANCE / "small.params.json").tensors
    r = check_trace(CONFORMANCE / "truncated.memstate.jsonl", params=params)
    assert r.ok and r.steps == 1 and r.incomplete_step == 1
    assert any("incomplete" in n for n in r.notes)


# ---------------------------------------------------------------- every variant, by check alone


@pytest.mark.parametrize("variant, scale, tensor, code", VARIANTS, ids=variant_id)
def test_each_variant_is_caught_at_its_operation(tmp_path, scenario, variant, scale, tensor, code):
    path, params = make_trace(tmp_path, scenario, variant=variant, scale=scale, steps=3)
    r = check_trace(path, params=params)
    assert not r.ok
    assert first(r) == (0, tensor)
    assert r.first_failure is not None and (r.first_failure.step, r.first_failure.name) == (0, tensor)
    assert codes(r)[0] == code, [(d.code, d.explanation) for d in r.diagnoses]
    assert r.first_divergence.name == tensor and r.first_divergence.inputs_agree
    assert r.comparison.verdict == "diverge"


def test_bias_grad_axis_is_caught_at_the_bias_gradient(tmp_path):
    """bias_grad_axis needs a layer as wide as the batch: batch 10 makes the output layer qualify."""
    text = (Path(load_scenario("mnist14-relu").path).read_text()
            .replace("batch_size = 8", "batch_size = 10"))
    toml = tmp_path / "batch10.toml"
    toml.write_text(text)
    s = load_scenario(toml)
    path, params = make_trace(tmp_path, s, variant=Variant(bias_grad_axis="features"), steps=2)
    r = check_trace(path, params=params)
    assert first(r) == (0, "L2.db") and codes(r)[0] == "bias-grad-axis"


def test_global_max_is_caught_at_the_first_step_where_it_matters(tmp_path, scenario):
    """At 30x parameters the batch's max first leaves a row 0/0 = nan at step 2; before that the faulty
    softmax agrees with the correct one to rounding, and check says nothing."""
    path, params = make_trace(tmp_path, scenario, variant=Variant(softmax_max="global"), scale=30, steps=5)
    nan_step = next(s.index for s in read_trace(path) if np.isnan(s.tensors["probs"]).any())
    assert nan_step > 0
    r = check_trace(path, params=params)
    assert first(r) == (nan_step, "probs") and codes(r)[0] == "softmax-global-max"
    assert r.by_name["probs"].failed >= 1 and all(s.failed == 0 for n, s in r.by_name.items() if n != "probs")


@pytest.mark.parametrize("variant, scale, tensor, code", [
    (Variant(softmax_sum="global"), 1, "probs", "softmax-global-sum"),
    (Variant(log="raw"), 40, "loss", "log-of-zero"),
    (Variant(round_params=8), 1, "L1.W", "precision-rounding"),
    (Variant(loss_reduction="sum"), 1, "loss", "reduction-mean-vs-sum"),
], ids=["softmax_sum", "log_raw", "round_params", "loss_reduction"])
@pytest.mark.parametrize("impl", ["python", "jax"])
def test_variants_in_other_implementations(tmp_path, scenario, impl, variant, scale, tensor, code):
    """Hand-derived (python) and autodiff (jax) traces of the same bugs are caught at the same operation."""
    require(impl)
    path, params = make_trace(tmp_path, scenario, impl, variant=variant, scale=scale, steps=2)
    r = check_trace(path, params=params)
    assert first(r) == (0, tensor) and codes(r)[0] == code


def test_corrupted_element_is_reported_where_it_is_with_no_drift(tmp_path, scenario):
    """One element of the recorded L1.dW changed at step 2 (the run itself used the right one): L1.dW fails
    there, and so does that step's L1.W, which is not W - lr * dW of the recorded dW. Step 3 starts from the
    recorded (right) parameters, so nothing drifts: every later step checks clean."""
    path, params = make_trace(tmp_path, scenario, steps=5)

    def corrupt(k, name, v):
        if (k, name) == (2, "L1.dW"):
            v = v.copy()
            v[3, 4] += 1e-6
        return v

    r = check_trace(_rewrite(path, tmp_path / "bad.memstate.jsonl", corrupt), params=params)
    assert first(r) == (2, "L1.dW") and r.failing_steps == 1
    assert [(o.step, o.name) for o in r.failures] == [(2, "L1.dW"), (2, "L1.W")]
    assert r.first_divergence.where.worst[0].index == (3, 4)
    assert r.first_divergence.pattern == "single elements"
    assert r.first_divergence.consequences == ("L1.W",)


# ---------------------------------------------------------------- traces written outside the project

def test_handmade_clean_trace_checks_clean(tmp_path):
    trace, params = check_writer.make(tmp_path, "clean")
    r = check_trace(trace, params=read_params(params).tensors)
    assert r.ok and r.operations == 4 * 16 and not r.notes
    assert (r.activation.value, r.activation.source) == ("sigmoid", "inferred")
    assert (r.reduction.value, r.reduction.source) == ("mean", "inferred")
    assert (r.learning_rate.value, r.learning_rate.source, r.learning_rate.consistent) == (0.5, "fitted", True)


def test_handmade_global_sum_softmax_is_caught(tmp_path):
    trace, params = check_writer.make(tmp_path, "gsum", bug="softmax-global-sum")
    r = check_trace(trace, params=read_params(params).tensors)
    assert first(r) == (0, "probs") and codes(r)[0] == "softmax-global-sum"
    assert {f.code for f in r.findings} >= {"probs-rows-sum-to-1"}


def test_handmade_global_max_softmax_is_caught_where_it_matters(tmp_path):
    trace, params = check_writer.make(tmp_path, "gmax", bug="softmax-global-max", weight_scale=40,
                                      activation="relu")
    nan_step = next(s.index for s in read_trace(trace) if np.isnan(s.tensors["probs"]).any())
    r = check_trace(trace, params=read_params(params).tensors)
    assert first(r) == (nan_step, "probs") and codes(r)[0] == "softmax-global-max"


def test_without_params_step_0_skips_what_needs_them(tmp_path):
    trace, _ = check_writer.make(tmp_path, "clean")
    r = check_trace(trace)
    # nothing is wrong, but step 0's checks that need the parameters could not run: not CLEAN
    assert not r.ok and r.first_finding is None and r.n_failures == 0 and r.params_source == "unknown"
    assert r.operations == 4 * 16 - 7  # step 0: L1.z, L2.z, L1.da and the four updates need the parameters
    assert (r.coverage.recorded, r.coverage.verified) == (4 * 16, 4 * 16 - 7)
    assert {u.name for u in r.coverage.unverified} == {"L1.z", "L2.z", "L1.da", "L1.W", "L1.b", "L2.W", "L2.b"}
    assert all(u.first_step == 0 and u.steps == 1 and "--params" in u.needs for u in r.coverage.unverified)
    assert any("--params" in n for n in r.notes)
    assert any("parameters in force are unknown" in n and "L1.z" in n for n in r.notes)
    bug, _ = check_writer.make(tmp_path, "gsum", bug="softmax-global-sum")
    assert first(check_trace(bug)) == (0, "probs")


def test_non_contiguous_steps_skip_with_a_note(tmp_path):
    trace, params = check_writer.make(tmp_path, "every2", steps=6, every=2)
    r = check_trace(trace, params=read_params(params).tensors)
    assert r.first_finding is None and [s.index for s in read_trace(trace)] == [0, 2, 4]
    assert not r.ok and {(u.name, u.steps) for u in r.coverage.unverified} == \
        {(n, 2) for n in ("L1.z", "L2.z", "L1.da", "L1.W", "L1.b", "L2.W", "L2.b")}
    assert any("not contiguous" in n for n in r.notes)
    assert r.by_name["L1.z"].checked == 1 and r.by_name["L1.z"].skipped == 2


# ---------------------------------------------------------------- inference and invariants

def _rewrite(src: Path, dst: Path, edit, meta=None) -> Path:
    """Copy a trace, passing every (step, name, value) through `edit` (None drops the tensor)."""
    with open_trace(src) as t, Recorder(dst, meta=t.meta if meta is None else meta) as rec:
        for step in t:
            with rec.step(step.index):
                for name, value in step.tensors.items():
                    value = edit(step.index, name, value)
                    if value is not None:
                        rec.record(name, value)
    return dst


def test_activation_other_is_inferred_and_its_checks_skipped(tmp_path):
    trace, params = check_writer.make(tmp_path, "relu", activation="relu")
    zs: dict[int, np.ndarray] = {}

    def tanh(k, name, v):  # an activation check cannot recompute: L1.a and L1.dz are skipped, with a note
        if name == "L1.z":
            zs[k] = v
        return np.tanh(zs[k]) if name == "L1.a" else v

    r = check_trace(_rewrite(trace, tmp_path / "tanh.memstate.jsonl", tanh), params=read_params(params).tensors)
    assert (r.activation.value, r.activation.source) == ("other", "inferred")
    assert r.by_name["L1.a"].checked == 0 and r.by_name["L1.a"].skipped == 4
    assert r.by_name["L1.dz"].checked == 0 and r.by_name["L1.dz"].skipped == 4
    assert any("activation is unknown" in n for n in r.notes)


def test_activation_inference_rules():
    z = np.linspace(-3, 3, 12).reshape(3, 4)
    f64 = np.dtype("float64")
    assert rc.infer_activation({"L1.z": z, "L1.a": np.maximum(z, -1)}, 2, f64)[0] == "shifted-relu"
    assert rc.infer_activation({"L1.z": z, "L1.a": np.maximum(z, 0)}, 2, f64)[0] == "relu"
    assert rc.infer_activation({"L1.z": z, "L1.a": 1 / (1 + np.exp(-z))}, 2, f64)[0] == "sigmoid"
    assert rc.infer_activation({"L1.z": z, "L1.a": np.tanh(z)}, 2, f64)[0] == "other"
    assert rc.infer_activation({"L1.z": z}, 2, f64)[0] is None


def test_declared_activation_that_the_trace_contradicts_fails_at_the_activation(tmp_path):
    trace, params = check_writer.make(tmp_path, "sig")  # sigmoid
    lying = _rewrite(trace, tmp_path / "lying.memstate.jsonl", lambda k, n, v: v,
                     meta={"impl": "check_writer", "activation": "relu"})
    r = check_trace(lying, params=read_params(params).tensors)
    assert first(r) == (0, "L1.a")
    assert (r.activation.value, r.activation.source, r.activation.inferred) == ("relu", "header", "sigmoid")
    assert not r.activation.consistent


def test_summed_loss_is_inferred_when_undeclared(tmp_path, scenario):
    path, params = make_trace(tmp_path, scenario, variant=Variant(loss_reduction="sum"), steps=2)
    with open_trace(path) as t:
        meta = {k: v for k, v in t.meta.items() if k not in ("loss_reduction", "variant", "scenario", "settings")}
    quiet = _rewrite(path, tmp_path / "sum.memstate", lambda k, n, v: v, meta=meta)
    r = check_trace(quiet, params=params)
    assert r.ok and (r.reduction.value, r.reduction.source) == ("sum", "inferred")


def test_inconsistent_learning_rate_is_a_finding(tmp_path):
    """A learning rate that changes from step to step (a schedule the header does not declare)."""
    params = check_writer.initial_params()
    records = check_writer.train(params, steps=2, lr=0.5)
    after = {n: v for n, v in records[1] if n in ("L1.W", "L1.b", "L2.W", "L2.b")}
    records += check_writer.train(after, steps=1, lr=0.3, seed=7)  # step 2 continues at another rate
    trace = tmp_path / "sched.memstate.jsonl"
    check_writer.write_trace(trace, records)
    check_writer.write_params(tmp_path / "sched.params.json", params)
    r = check_trace(trace, params=read_params(tmp_path / "sched.params.json").tensors)
    assert not r.ok and not r.learning_rate.consistent
    assert any(f.code == "lr-consistent" for f in r.findings)
    assert first(r) == (2, "L1.W") and r.learning_rate.value == 0.5


def test_invariants_name_what_fails(tmp_path, scenario):
    path, params = make_trace(tmp_path, scenario, steps=2)

    def edit(k, name, v):
        if (k, name) == (1, "y"):
            v = v.copy()
            v[0, :] = 0.5
        return v

    r = check_trace(_rewrite(path, tmp_path / "y.memstate", edit), params=params)
    assert first(r) == (1, "y") and r.first_finding.code == "y-one-hot"
    from memstate.check.checker import invariants

    assert [c for c, _ in invariants("probs", np.array([[0.5, 0.6], [-0.1, 1.1]]))] == \
        ["probs-non-negative", "probs-rows-sum-to-1"]
    assert [c for c, _ in invariants("loss", np.array(np.inf))] == ["loss-finite"]


def test_nan_from_finite_inputs_is_named(tmp_path, scenario):
    path, params = make_trace(tmp_path, scenario, steps=2)

    def edit(k, name, v):
        if (k, name) == (1, "L1.dz"):
            v = v.copy()
            v[2, 3] = np.nan
        return v

    r = check_trace(_rewrite(path, tmp_path / "nan.memstate", edit), params=params)
    assert first(r) == (1, "L1.dz")
    assert "nan-from-finite" in r.first_failure.invariants
    assert codes(r)  # diagnosed (nan-origin or another code), never empty


def test_lr_fit_and_nice_lr():
    assert rc.nice_lr(0.09999999999999998) == 0.1
    assert rc.nice_lr(0.10000000051977585, "float32") == 0.1
    assert rc.nice_lr(0.123456789) == 0.123456789


# ---------------------------------------------------------------- tolerances

def test_tolerances_are_the_comparators_in_the_recorded_dtype(tmp_path, scenario):
    path, params = make_trace(tmp_path, scenario, variant=Variant(dtype_mix="L1"), steps=1)
    assert first(check_trace(path, params=params)) == (0, "L1.z")
    # accepting float32 rounding for L1.z (as diff's --tol 'L1.z=float32') lets it pass
    r = check_trace(path, params=params, tolerances=tolerances_from_specs([("tol", "L1.z=float32")]))
    assert r.ok, r.first_finding
    f32 = load_scenario("mnist14-relu-f32")
    path32, params32 = make_trace(tmp_path, f32, steps=1, name="f32")
    r32 = check_trace(path32, params=params32, tolerances=Tolerances())
    assert r32.ok and all(u.tolerance.rtol >= 1e-5 for u in r32.comparison.tolerances_used)


# ---------------------------------------------------------------- the command

def test_cli_clean_exits_0_and_says_what_it_verified(tmp_path, scenario, capsys):
    path, params = make_trace(tmp_path, scenario, steps=3)
    write_params(tmp_path / "start.params.json", params)
    assert main(["check", str(path), "--params", str(tmp_path / "start.params.json")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("CLEAN: 48 operations recomputed")
    assert "worst error" in out and "verified 48 operations in 3 steps" in out
    assert "learning rate   0.1" in out


def test_cli_variant_exits_1_naming_the_operation_and_code(tmp_path, scenario, capsys):
    path, params = make_trace(tmp_path, scenario, variant=Variant(softmax_max="global"), scale=40, steps=2)
    write_params(tmp_path / "big.params.json", params)
    assert main(["check", str(path), "--params", str(tmp_path / "big.params.json")]) == 1
    out = capsys.readouterr().out
    assert out.startswith("FAIL at step 0, probs: probs is not softmax(L2.z)")
    assert "first wrong operation: step 0, probs = softmax(L2.z)" in out
    assert "diagnosis: softmax-global-max" in out


def test_cli_json_has_the_diff_schema_plus_check(tmp_path, scenario, capsys):
    path, params = make_trace(tmp_path, scenario, variant=Variant(softmax_sum="global"), steps=2)
    write_params(tmp_path / "p.params.json", params)
    out = tmp_path / "report.json"
    assert main(["check", str(path), "--params", str(tmp_path / "p.params.json"), "--format", "json",
                 "-o", str(out)]) == 1
    assert "report written to" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    from memstate.report import json as report_json

    assert set(doc) == set(report_json.to_dict(check_trace(path, params=params).comparison)) | {"check"}
    assert doc["verdict"] == "diverge" and doc["first_divergence"]["name"] == "probs"
    assert doc["first_divergence"]["step"] == 0 and doc["diagnoses"][0]["code"] == "softmax-global-sum"
    assert doc["check"]["ok"] is False and doc["check"]["first_failure"]["formula"].startswith("softmax(L2.z)")
    assert doc["check"]["settings"]["learning_rate"]["value"] == 0.1


def test_cli_html(tmp_path, scenario):
    path, params = make_trace(tmp_path, scenario, variant=Variant(log="eps"), steps=1)
    write_params(tmp_path / "p.params.json", params)
    out = tmp_path / "report.html"
    assert main(["check", str(path), "--params", str(tmp_path / "p.params.json"), "--format", "html",
                 "-o", str(out)]) == 1
    text = out.read_text()
    assert text.startswith("<!doctype html>") and "log-epsilon" in text and "First wrong operation" in text
    # the heatmap of the failing operation (loss: one cell), coloured by the page's own style sheet
    assert text.count("<rect x=") >= 1 and ".q0{fill:" in text


@pytest.mark.parametrize("argv, words", [
    (["check", "no-such.memstate.jsonl"], "no such file"),
    (["check", "{trace}", "--params", "no-such.params.json"], "no such file"),
    (["check", "{trace}", "--params", "{wrong_params}"], "is it the params file of this run?"),
    (["check", "{trace}", "--tol", "nonsense"], "--tol"),
    (["check", "{trace}", "--scenario", "no-such-scenario"], "no scenario named"),
    (["check", "{empty}"], "no complete step"),
])
def test_cli_input_errors_exit_2_with_one_line(tmp_path, scenario, capsys, argv, words):
    path, _ = make_trace(tmp_path, scenario, steps=1)
    write_params(tmp_path / "wrong.params.json", init_params((12, 6, 4), "he", 0))
    empty = tmp_path / "empty.memstate.jsonl"
    empty.write_text('{"format": "memstate.trace", "version": 1, "meta": {}}\n')
    argv = [a.format(trace=path, wrong_params=tmp_path / "wrong.params.json", empty=empty) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("memstate check: error:") and words in err

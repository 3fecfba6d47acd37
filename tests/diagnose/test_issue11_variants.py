"""Issue 11's mistakes replayed with --variant: diff (either side) and check name each one, in every
implementation, at the step and tensor where it first shows, and the root causes list it first."""

from __future__ import annotations

import numpy as np
import pytest

from memstate.check.checker import check_trace
from memstate.comparator.compare import compare
from memstate.runner.harness import run
from memstate.runner.initparams import init_params
from memstate.runner.scenario import load_scenario
from memstate.runner.variants import Variant
from variant_cases import ISSUE11_VARIANTS, variant_id


@pytest.fixture(scope="module")
def scenario():
    return load_scenario("mnist14-relu")


def params(scenario, scale):
    return {k: v * scale for k, v in init_params(scenario.model.layers, "he", 0).items()}


def trace(tmp_path, scenario, impl, variant, scale, steps=3):
    out = tmp_path / f"{impl}-{'-'.join(map(str, variant.changes().values())) or 'clean'}.memstate"
    return run(scenario, impl, params=params(scenario, scale), steps=steps, out=out, variant=variant,
               evaluate=False).trace


@pytest.mark.parametrize("variant, scale, step, tensor, code", ISSUE11_VARIANTS, ids=variant_id)
@pytest.mark.parametrize("order", ["clean-first", "buggy-first"])
def test_diff_names_the_new_mistakes(tmp_path, scenario, variant, scale, step, tensor, code, order):
    clean = trace(tmp_path, scenario, "numpy", Variant(), scale)
    buggy = trace(tmp_path, scenario, "numpy", variant, scale)
    a, b = (clean, buggy) if order == "clean-first" else (buggy, clean)
    c = compare(a, b)
    fd = c.first_divergence
    assert (fd.step, fd.name) == (step, tensor)
    top = fd.diagnoses[0]
    assert top.code == code, [(d.code, d.confidence) for d in fd.diagnoses]
    # diff has no params file: the parameters in force are recovered from the step (an exact relation, 0.9)
    assert top.confidence == (0.9 if code == "params-load-mismatch" else 0.95)
    assert top.evidence["side"] == ("B" if order == "clean-first" else "A")
    root = c.root_causes[0]
    assert (root.step, root.name, root.code) == (step, tensor, code)


@pytest.mark.parametrize("variant, scale, step, tensor, code", ISSUE11_VARIANTS, ids=variant_id)
def test_check_names_the_new_mistakes(tmp_path, scenario, variant, scale, step, tensor, code):
    path = trace(tmp_path, scenario, "numpy", variant, scale)
    r = check_trace(path, params=params(scenario, scale))
    assert not r.ok
    assert (r.first_failure.step, r.first_failure.name) == (step, tensor)
    assert r.diagnoses[0].code == code, [(d.code, d.confidence) for d in r.diagnoses]
    roots = r.comparison.root_causes
    assert (roots[0].step, roots[0].name, roots[0].code) == (step, tensor, code)
    # every root cause check lists is this mistake (the scenario declares the learning rate)
    assert {x.code for x in roots} == {code}, roots


def test_the_fitted_numbers_are_the_variant_s(tmp_path, scenario):
    """momentum reports mu, weight-decay lambda, log-zero-replaced the constant, round_loaded the decimals."""
    expect = [(Variant(momentum=0.9), 1, "momentum", 0.9), (Variant(weight_decay=0.01), 1, "weight_decay", 0.01),
              (Variant(log="replace"), 40, "replacement", 1e-12)]
    for variant, scale, key, value in expect:
        c = compare(trace(tmp_path, scenario, "numpy", Variant(), scale), trace(tmp_path, scenario, "numpy", variant, scale))
        assert c.diagnoses[0].evidence[key] == pytest.approx(value, rel=1e-6)
    r = check_trace(trace(tmp_path, scenario, "numpy", Variant(round_loaded=8), 1), params=params(scenario, 1))
    assert r.diagnoses[0].evidence["transform"] == "rounded to 8 decimals"
    assert r.diagnoses[0].evidence["params_from"].startswith("params file")


@pytest.mark.parametrize("variant, scale, step, tensor, code", ISSUE11_VARIANTS, ids=variant_id)
def test_the_python_port_replays_each_variant(tmp_path, scenario, variant, scale, step, tensor, code):
    """The python implementation writes its own maths for each variant: its trace agrees with numpy's and
    diff against the clean run names the mistake."""
    mine = trace(tmp_path, scenario, "python", variant, scale, steps=2)
    c = compare(trace(tmp_path, scenario, "numpy", Variant(), scale, steps=2), mine)
    assert (c.first_divergence.step, c.first_divergence.name, c.diagnoses[0].code) == (step, tensor, code)
    assert compare(trace(tmp_path, scenario, "numpy", variant, scale, steps=2), mine).verdict == "agree"


#: every issue 11 switch at once but the replaced log (which needs large logits): one compilation for jax
ALL_AT_ONCE = Variant(bias_grad_axis="scalar", class_reduction="mean", output="sigmoid", round_loaded=8,
                      grads="accumulate", momentum=0.9, weight_decay=0.01)


@pytest.mark.parametrize("impl", ["python", "jax", "scalar"])
def test_every_implementation_computes_the_switches_as_numpy_does(tmp_path, scenario, impl):
    """All the switches together (their maths interact, so agreement checks each one), then the replaced
    log, whose gradient the autodiff implementations take as computed (a constant where p == 0)."""
    assert compare(trace(tmp_path, scenario, "numpy", ALL_AT_ONCE, 1), trace(tmp_path, scenario, impl, ALL_AT_ONCE, 1)
                   ).verdict == "agree"
    replace = Variant(log="replace")
    c = compare(trace(tmp_path, scenario, "numpy", replace, 40, steps=1), trace(tmp_path, scenario, impl, replace, 40, steps=1))
    if impl == "python":
        assert c.verdict == "agree"
    else:  # loss agrees; the output dz differs in the rows whose zeros were replaced
        assert c.first_divergence.name == "L2.dz"
        assert "loss" not in [t.name for s in c.steps for t in s.tensors if not t.passed]


def test_loss_over_classes_with_batch_equal_to_classes_is_not_a_reduction_mix_up(tmp_path):
    """Issue 11: with B = C = 10 a loss divided by C was named reduction-mean-vs-sum at 0.95 while the
    report inferred the mean from L2.dz."""
    text = load_scenario("mnist14-relu").path.read_text().replace("batch_size = 8", "batch_size = 10")
    toml = tmp_path / "batch10.toml"
    toml.write_text(text)
    s10 = load_scenario(toml)
    clean = trace(tmp_path, s10, "numpy", Variant(), 1)
    buggy = trace(tmp_path, s10, "numpy", Variant(class_reduction="mean"), 1)
    for a, b in ((clean, buggy), (buggy, clean)):
        ds = compare(a, b).diagnoses
        assert ds[0].code == "loss-mean-over-classes"
        assert "reduction-mean-vs-sum" not in [d.code for d in ds]
    r = check_trace(buggy, params=params(s10, 1))
    assert r.diagnoses[0].code == "loss-mean-over-classes"
    assert all(d.code != "reduction-mean-vs-sum" or d.confidence <= 0.6 for d in r.diagnoses)


def test_variant_values_are_checked():
    from memstate.errors import ScenarioError

    assert Variant().with_overrides(["momentum=0.5", "weight_decay=1e-3"]).momentum == 0.5
    assert Variant().with_overrides(["weight_decay=1e-3"]).weight_decay == pytest.approx(1e-3)
    for bad in (["momentum=0"], ["momentum=abc"], ["weight_decay=-1"], ["round_loaded=99"], ["output=relu"],
                ["grads=sometimes"]):
        with pytest.raises(ScenarioError):
            Variant().with_overrides(bad)
    assert np.isclose(Variant(momentum=0.9).as_meta()["momentum"], 0.9)

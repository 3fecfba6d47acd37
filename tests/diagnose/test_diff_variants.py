"""Issue 4's promise: diffing each variant's trace against the correct run names the right step, tensor and code.

Both runs start from the same parameters (scaled up where the bug needs large logits to bite at step 0) and
see the same batches; the correct run is side A, the variant side B, and then the other way round.
"""

from __future__ import annotations

import pytest

from memstate.comparator.compare import compare
from memstate.runner.initparams import init_params
from memstate.runner.harness import run
from memstate.runner.scenario import load_scenario
from memstate.runner.variants import Variant
from variant_cases import VARIANTS, variant_id



@pytest.fixture(scope="module")
def scenario():
    return load_scenario("mnist14-relu")


def traces(tmp_path, scenario, variant, scale, impl="numpy", steps=2):
    params = {k: v * scale for k, v in init_params(scenario.model.layers, "he", 0).items()}
    clean = run(scenario, impl, params=params, steps=steps, out=tmp_path / "clean.memstate",
                variant=Variant(), evaluate=False)
    buggy = run(scenario, impl, params=params, steps=steps, out=tmp_path / "buggy.memstate",
                variant=variant, evaluate=False)
    return clean.trace, buggy.trace


@pytest.mark.parametrize("variant, scale, tensor, code", VARIANTS, ids=variant_id)
@pytest.mark.parametrize("order", ["clean-first", "buggy-first"])
def test_variant_diff_names_step_tensor_and_code(tmp_path, scenario, variant, scale, tensor, code, order):
    clean, buggy = traces(tmp_path, scenario, variant, scale)
    a, b = (clean, buggy) if order == "clean-first" else (buggy, clean)
    c = compare(a, b)
    assert c.verdict == "diverge" and not c
    fd = c.first_divergence
    assert (fd.step, fd.name) == (0, tensor)
    assert fd.diagnoses[0].code == code, [(d.code, d.confidence) for d in fd.diagnoses]
    assert fd.inputs_agree  # the operation that made the tensor is the one at fault


def test_bias_grad_axis_diff(tmp_path, scenario):
    from memstate.runner.scenario import scenario_from_table
    import tomllib

    table = tomllib.loads(scenario.path.read_text())
    table["training"]["batch_size"] = 10  # the 10-wide output layer now qualifies
    s10 = scenario_from_table(table, "batch10")
    clean, buggy = traces(tmp_path, s10, Variant(bias_grad_axis="features"), 1)
    fd = compare(clean, buggy).first_divergence
    assert (fd.step, fd.name, fd.diagnoses[0].code) == (0, "L2.db", "bias-grad-axis")


@pytest.mark.parametrize("impl", ["numpy", "python"])
def test_clean_pairs_agree(tmp_path, scenario, impl):
    clean, other = traces(tmp_path, scenario, Variant(), 1, impl=impl, steps=3)
    reference = run(scenario, "numpy", steps=3, out=tmp_path / "ref.memstate", evaluate=False).trace
    assert compare(reference, other).verdict == "agree"
    assert compare(clean, other).verdict == "agree"


def test_the_bug_is_not_blamed_on_clean_tensors_before_it(tmp_path, scenario):
    """In the softmax_sum variant everything recorded before probs agrees; probs and later tensors do not."""
    clean, buggy = traces(tmp_path, scenario, Variant(softmax_sum="global"), 1, steps=1)
    c = compare(clean, buggy)
    (step0,) = [s for s in c.steps if s.step == 0]
    passed = {t.name: bool(t) for t in step0.tensors}
    assert [n for n in passed if passed[n]][:5] == ["x", "y", "L1.z", "L1.a", "L2.z"]
    assert not passed["probs"] and not passed["L2.dz"]
    assert c.first_divergence.consequences  # downstream tensors are listed as consequences, not findings

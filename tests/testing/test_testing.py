"""memstate.testing.asserts: assertions whose messages say where, how much, under which tolerance, and probably why."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from memstate.testing.crossimpl import pairs_of
from memstate.errors import MemstateError
from memstate.runner.harness import run
from memstate.runner.scenario import load_scenario
from memstate.testing.asserts import (
    SessionSettings,
    assert_tensors_close,
    assert_traces_close,
    folder_for_test,
    make_tolerances,
    pop_settings,
    push_settings,
)
from memstate.comparator.tolerance import Tolerances
from memstate.runner.variants import Variant


def failure(fn, *args, **kwargs) -> str:
    with pytest.raises(AssertionError) as info:
        fn(*args, **kwargs)
    return str(info.value)


@pytest.fixture(scope="module")
def weights():
    desired = np.random.default_rng(0).normal(size=(8, 10))
    return desired, np.round(desired, 8)


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    """Two runs of mnist14-relu: clean, and with the weights rounded to 8 decimals after every update."""
    folder = tmp_path_factory.mktemp("traces")
    scenario = load_scenario("mnist14-relu")
    clean, rounded = folder / "clean.memstate", folder / "rounded.memstate.jsonl"
    run(scenario, "numpy", steps=3, out=clean, evaluate=False)
    run(scenario, "numpy", steps=3, out=rounded, evaluate=False, variant=Variant(round_params=8))
    return clean, rounded


# ---------------------------------------------------------------- assert_tensors_close

def test_close_tensors_pass_and_return_the_comparison(weights):
    desired, _ = weights
    tc = assert_tensors_close(desired * (1 + 1e-13), desired, name="L1.W")
    assert tc and tc.name == "L1.W" and tc.metrics.n_out == 0


def test_message_says_where_how_much_which_tolerance_and_why(weights):
    desired, actual = weights
    msg = failure(assert_tensors_close, actual, desired, name="L1.W", step=3)
    first = msg.splitlines()[0]
    assert first == "L1.W at step 3 is not close: 77 of 80 elements out of tolerance (96.2%, everywhere)"
    assert "rtol 1e-10, atol 1e-12 (float64 default)" in msg
    assert re.search(r"would pass +with rtol >= \S+ \(at atol 1e-12\), or atol >= \S+ \(at rtol 1e-10\), or ulp=\d+", msg)
    assert "rows         8 of 8: 0, 1, 2, 3, 4, 5, 6, 7" in msg
    assert "columns      10 of 10:" in msg
    # the worst element, with both values at full precision
    i, j = np.unravel_index(np.argmax(np.abs(actual - desired)), desired.shape)
    assert f"[{i}, {j}]" in msg and f"{desired[i, j]:.16e}" in msg and f"{actual[i, j]:.16e}" in msg
    assert "probable cause (A = desired, B = actual): precision-rounding" in msg


def test_the_least_passing_tolerance_it_names_does_pass(weights):
    desired, actual = weights
    msg = failure(assert_tensors_close, actual, desired, name="w")
    rtol = float(re.search(r"rtol >= (\S+) ", msg).group(1))
    atol = float(re.search(r"atol >= (\S+) ", msg).group(1))
    ulp = int(re.search(r"ulp=(\d+)", msg).group(1))
    assert_tensors_close(actual, desired, rtol=rtol)  # printed rounded up, so the printed value passes
    assert_tensors_close(actual, desired, atol=atol)
    assert_tensors_close(actual, desired, ulp=ulp)
    assert "rtol=" in failure(assert_tensors_close, actual, desired, rtol=1e-9)  # the source of the tolerance


def test_rows_columns_and_pattern_are_localised():
    desired = np.ones((6, 5))
    actual = desired.copy()
    actual[[1, 4]] += 1e-3
    msg = failure(assert_tensors_close, actual, desired, name="L1.a")
    assert msg.splitlines()[0].endswith("(33.3%, some rows)")
    assert "rows         2 of 6: 1, 4" in msg


def test_shape_mismatch_names_both_shapes_and_a_transpose(weights):
    desired, _ = weights
    msg = failure(assert_tensors_close, desired.T, desired, name="L2.W")
    assert "L2.W: shapes differ: actual [10, 8], desired [8, 10]" in msg
    assert "probable cause (A = desired, B = actual): transposed" in msg


def test_a_scaled_gradient_is_named():
    desired = np.random.default_rng(1).normal(size=(8, 10))
    msg = failure(assert_tensors_close, 2 * desired, desired, name="L1.dW")
    assert "probable cause (A = desired, B = actual): scaled" in msg


def test_float32_against_float64_uses_the_float64_tolerance_and_says_float32():
    desired = np.random.default_rng(2).normal(size=(8, 10))
    msg = failure(assert_tensors_close, desired.astype(np.float32), desired, name="probs")
    assert "float64 default" in msg and "dtype-float32" in msg
    a32 = desired.astype(np.float32)
    assert_tensors_close(a32 * np.float32(1 + 1e-6), a32)  # both float32: the float32 default (1e-5)


def test_nan_equals_nan_but_not_a_number():
    assert_tensors_close([1.0, np.nan, np.inf], [1.0, np.nan, np.inf])
    msg = failure(assert_tensors_close, [1.0, np.nan], [1.0, 2.0], name="loss")
    assert "1 of 2 elements" in msg and "with no tolerance" in msg and "nan: 1 actual, 0 desired" in msg


def test_scalars_integers_and_lists_are_accepted():
    assert_tensors_close(3, 3.0)
    assert_tensors_close([[1, 2]], np.array([[1.0, 2.0]]))
    assert "1 of 1 elements" in failure(assert_tensors_close, 2.5, 2.0, name="loss")
    with pytest.raises(TypeError, match="real numbers"):
        assert_tensors_close(np.array([1j]), np.array([1.0]))


def test_msg_comes_first(weights):
    desired, actual = weights
    assert failure(assert_tensors_close, actual, desired, msg="after the update").startswith("after the update\n")


def test_numpy_message_for_comparison(weights):
    """What numpy says about the same arrays: counts and the first mismatches, no rows, cause or tolerance to pass."""
    desired, actual = weights
    msg = failure(np.testing.assert_allclose, actual, desired, rtol=1e-10, atol=1e-12)
    assert "Mismatched elements: 77 / 80" in msg and "rows" not in msg


# ---------------------------------------------------------------- assert_traces_close

def test_equal_traces_pass(traces):
    clean, _ = traces
    c = assert_traces_close(clean, clean)
    assert c and c.steps_compared == 3


def test_diverging_traces_fail_with_the_report(traces):
    clean, rounded = traces
    msg = failure(assert_traces_close, clean, rounded)
    lines = msg.splitlines()
    assert lines[0] == "traces are not close at step 0, tensor L1.W (precision-rounding)"
    assert "tolerance rtol 1e-10, atol 1e-12" in lines[1]
    assert "first divergence: step 0, L1.W" in msg and "worst elements:" in msg
    assert "diagnosis: precision-rounding" in msg


@pytest.mark.parametrize("loosen", [
    {"atol": 1e-6},
    {"tol": "*=rtol:1e-3,atol:1e-6"},
    {"tol": ["L*=1e-3", "*=atol:1e-6"]},
    {"tol": {"*": {"rtol": 1e-3, "atol": 1e-6}}},
    {"tolerances": Tolerances(rtol=1e-3, atol=1e-6)},
])
def test_tolerance_keywords_loosen(traces, loosen):
    clean, rounded = traces
    assert assert_traces_close(clean, rounded, **loosen)


def test_tolerances_and_keywords_do_not_mix(traces):
    clean, _ = traces
    with pytest.raises(TypeError, match="not both"):
        assert_traces_close(clean, clean, rtol=1e-3, tolerances=Tolerances())
    with pytest.raises(MemstateError):
        assert_traces_close(clean, clean, tol="no equals sign")
    with pytest.raises(MemstateError, match="ulp"):
        assert_traces_close(clean, clean, ulp=-1)


def test_steps_in_memory_and_different_step_counts():
    steps = [{"x": np.arange(3.0), "loss": np.float64(1.5)}, {"x": np.arange(3.0) + 1, "loss": np.float64(1.0)}]
    assert assert_traces_close(steps, {0: steps[0], 1: steps[1]})
    msg = failure(assert_traces_close, steps, steps[:1])
    assert msg.startswith("traces agree but are not the same run: A has 2 complete steps")
    assert assert_traces_close(steps, steps[:1], same_steps=False)
    changed = [dict(steps[0]), steps[1]]
    changed[0]["loss"] = np.float64(1.25)
    assert "at step 0, tensor loss" in failure(assert_traces_close, steps, changed).splitlines()[0]


def test_inputs_of_the_wrong_kind_are_a_type_error():
    with pytest.raises(TypeError, match="trace path"):
        assert_traces_close(3.5, 4.5)


# ---------------------------------------------------------------- session settings (the pytest options)

def test_session_override_replaces_rtol_and_atol_but_not_per_name_rules(traces):
    clean, rounded = traces
    settings = push_settings(SessionSettings(atol=1e-6))
    try:
        assert assert_traces_close(clean, rounded, atol=1e-15)  # the session wins over atol=
        msg = failure(assert_traces_close, clean, rounded, tol="L1.W=atol:0")  # a per-name rule wins over it
        assert "--memstate-atol 1e-06" in msg
        tol = make_tolerances(atol=1e-15).resolve("L1.W", "float64", "float64")
        assert tol.atol == 1e-6 and "--memstate-atol 1e-06" in tol.source
    finally:
        pop_settings(settings)
    assert make_tolerances().resolve("x", "float64", "float64").atol == 1e-12


def test_keep_failed_copies_both_traces_and_the_reports(traces, tmp_path):
    clean, rounded = traces
    settings = push_settings(SessionSettings(keep_failed=tmp_path, test_id="tests/test_x.py::test_y[a-b]"))
    try:
        msg = failure(assert_traces_close, clean, rounded)
    finally:
        pop_settings(settings)
    folder = tmp_path / folder_for_test("tests/test_x.py::test_y[a-b]")
    assert sorted(p.name for p in folder.iterdir()) == ["a.memstate", "b.memstate.jsonl", "report.json",
                                                         "report.txt"]
    assert json.loads((folder / "report.json").read_text())["verdict"] == "diverge"
    assert f"kept for inspection in {folder}" in msg and "memstate diff" in msg
    assert assert_traces_close(folder / "a.memstate", clean)


def test_bad_session_tolerance_is_refused():
    with pytest.raises(MemstateError, match="--memstate-rtol"):
        push_settings(SessionSettings(rtol=-1.0))


# ---------------------------------------------------------------- cross_impl pairs

def test_pairs_of():
    assert pairs_of(("numpy", "python", "jax")) == [("numpy", "python"), ("numpy", "jax"), ("python", "jax")]
    assert pairs_of(("mynet", "jax"), reference="numpy") == [("numpy", "mynet"), ("numpy", "jax")]
    assert pairs_of(("numpy", "numpy", "python")) == [("numpy", "python")]
    with pytest.raises(ValueError, match="at least two"):
        pairs_of(("numpy",))
    with pytest.raises(ValueError, match="at least one other"):
        pairs_of(("numpy",), reference="numpy")

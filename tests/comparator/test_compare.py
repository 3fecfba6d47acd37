"""memstate.comparator.compare: clean pairs agree, real differences are found at the right step, tensor and element,
structural differences are findings, and the summaries of long traces stay small."""

from __future__ import annotations

import pickle
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from impl_availability import require
from memstate.impls.numpy_mlp import NumpyMLP
from memstate.comparator.compare import AROUND, HEAD_STEPS, MAX_BUCKETS, TAIL_STEPS, compare, compare_tensors, name_filter
from memstate.errors import MemstateError
from memstate.formats.params import read_params
from memstate.formats.recorder import Recorder, open_writer
from memstate.runner.registry import Implementation, get_impl
from memstate.runner.harness import run
from memstate.runner.scenario import NetSpec, load_scenario
from memstate.comparator.tolerance import DEFAULTS, Rule, Tolerances
from memstate.formats.trace import open_trace, read_trace
from trace_helpers import write_steps

CONFORMANCE = Path(__file__).resolve().parents[1] / "conformance"
STEPS = 20
PLANT_STEP, ROW, COL, DELTA = 3, 100, 5, 1e-3


class PermutedSums(NumpyMLP):
    """The NumPy MLP with every forward dot product summed in another order."""

    def _dense(self, i: int, a: np.ndarray) -> np.ndarray:
        p = np.random.default_rng(i).permutation(a.shape[1])
        return a[:, p] @ self.W[i][p, :] + self.b[i]


class PlantedError(NumpyMLP):
    """The NumPy MLP with DELTA added to L1.dW[ROW, COL] in step PLANT_STEP, before the update uses it."""

    done = 0

    def train_step(self, x, labels, lr, record):
        def planted(name, value):
            if name == "L1.dW" and self.done == PLANT_STEP:
                value[ROW, COL] += DELTA
            record(name, value)

        loss = super().train_step(x, labels, lr, planted)
        self.done += 1
        return loss


def fake(name: str, cls: type) -> Implementation:
    return Implementation(name, SimpleNamespace(make=lambda spec, params: cls(spec, params)), ("float64", "float32"))


@pytest.fixture(scope="module")
def traces(tmp_path_factory) -> dict[str, Path]:
    """20-step traces of mnist14-relu (float64) and mnist14-relu-f32, JSONL and binary."""
    d = tmp_path_factory.mktemp("traces")
    out = {}
    f64, f32 = load_scenario("mnist14-relu"), load_scenario("mnist14-relu-f32")
    for key, scenario, impl, suffix in [
        ("numpy64", f64, "numpy", ".memstate.jsonl"), ("perm64", f64, fake("permuted", PermutedSums), ".memstate"),
        ("numpy32", f32, "numpy", ".memstate"), ("perm32", f32, fake("permuted", PermutedSums), ".memstate.jsonl"),
        ("planted64", f64, fake("planted", PlantedError), ".memstate"),
        ("planted32", f32, fake("planted", PlantedError), ".memstate"),
    ]:
        out[key] = d / (key + suffix)
        run(scenario, impl, steps=STEPS, out=out[key], evaluate=False)
    return out


def worst_rel(c) -> float:
    return max(b.max_rel_error for s in c.series for b in s.buckets)


# ---------------------------------------------------------------- clean pairs agree

def test_float64_summation_order_agrees(traces):
    c = compare(traces["numpy64"], traces["perm64"])
    assert c and c.verdict == "agree" and c.first_divergence is None
    assert c.steps_compared == STEPS and c.divergent_steps == 0
    assert 0 < worst_rel(c) < 1e-13  # the sums really differ, by rounding only
    assert not [f for f in c.findings if f.severity != "info"]
    assert [u.tolerance.source for u in c.tolerances_used] == ["float64 default"]


def test_float32_summation_order_agrees(traces):
    c = compare(traces["numpy32"], traces["perm32"])
    assert c.verdict == "agree" and c.steps_compared == STEPS
    assert 1e-8 < worst_rel(c) < 1e-5
    assert [u.tolerance.source for u in c.tolerances_used] == ["float32 default"]


def test_numpy_float32_agrees_with_jax_float32(traces, tmp_path):
    require("jax")  # skips only without the jax package; a broken jax port fails here
    run(load_scenario("mnist14-relu-f32"), "jax", steps=STEPS, out=tmp_path / "jax.memstate", evaluate=False)
    c = compare(traces["numpy32"], tmp_path / "jax.memstate")
    assert c.verdict == "agree" and c.steps_compared == STEPS and worst_rel(c) > 0


# ---------------------------------------------------------------- divergences are found

def test_float32_against_float64_diverges_at_the_first_tensor_that_differs(traces):
    c = compare(traces["numpy64"], traces["numpy32"])
    assert not c and c.verdict == "diverge"
    f = c.first_divergence
    assert (f.kind, f.step, f.name) == ("values", 0, "L1.z")  # x and y are exact in float32
    assert f.inputs == ("x", "y") and f.inputs_agree is True and f.inputs_worst == ("x", 0.0)
    assert f.pattern == "everywhere" and f.where.n_out == 8 * 32
    assert f.tensor.dtype_a == "float64" and f.tensor.dtype_b == "float32"
    m = f.tensor.metrics
    assert 1e-8 < m.max_rel_error < 1e-6 and m.ulp_dtype == "float32" and m.max_ulp < 1000
    assert f.consequences[:3] == ("L1.a", "L2.z", "probs") and f.divergent_steps == STEPS
    assert c.diagnoses and c.diagnoses[0].code == "dtype-float32"
    assert any(f.kind == "dtype-mismatch" for f in c.findings)
    assert any(m.path == "dtype" and (m.a, m.b) == ("float64", "float32") for m in c.meta_diff)


def test_planted_error_is_found_at_its_step_tensor_and_element(traces):
    c = compare(traces["numpy64"], traces["planted64"])
    f = c.first_divergence
    assert (f.kind, f.step, f.name) == ("values", PLANT_STEP, "L1.dW")
    assert (f.rows, f.columns, f.pattern) == ((ROW,), (COL,), "single elements")
    (worst,) = f.worst
    assert worst.index == (ROW, COL) and worst.b - worst.a == pytest.approx(DELTA, rel=1e-9)
    assert worst.abs_error == pytest.approx(DELTA, rel=1e-9)
    assert f.inputs_agree is True and f.inputs[-1] == "L1.dz" and len(f.inputs) == 12
    assert f.consequences == ("L1.W",)  # the update uses the bad gradient; L1.db does not
    assert f.divergent_steps == STEPS - PLANT_STEP and f.last_divergent_step == STEPS - 1
    assert [s.step for s in c.steps] == [0, 1, 2, 3, 4, 5, 17, 18, 19]
    assert c.steps[2] and not c.steps[3]
    assert c.diagnoses  # the diagnoser always answers, "unknown" at worst


@pytest.mark.parametrize("field", ["rtol", "atol", "ulps"])
def test_min_passing_tolerance_passes_and_a_little_less_fails(traces, field):
    c = compare(traces["numpy64"], traces["planted64"])
    need = getattr(c.first_divergence.min_tolerance, field)
    less = need * (1 - 1e-6)

    def first_with(value):
        rule = Rule("L1.dW", **{field: int(value) if field == "ulps" else value})
        f = compare(traces["numpy64"], traces["planted64"], tolerances=Tolerances(rules=(rule,))).first_divergence
        return f.step, f.name

    assert first_with(need) == (PLANT_STEP, "L1.W")  # L1.dW passes, its consequence does not
    assert first_with(less) == (PLANT_STEP, "L1.dW")


def test_max_steps_stops_before_the_divergence(traces):
    c = compare(traces["numpy64"], traces["planted64"], max_steps=PLANT_STEP)
    assert c.verdict == "agree" and c.steps_compared == PLANT_STEP and not c.findings


def test_oracle_excuses_rounding_and_blames_real_errors(traces):
    exact = Tolerances(rtol=0.0, atol=0.0)
    assert not compare(traces["numpy32"], traces["perm32"], tolerances=exact)
    c = compare(traces["numpy32"], traces["perm32"], tolerances=exact, oracle=traces["numpy64"])
    assert c.verdict == "agree" and c.oracle is not None
    assert any(f.kind == "excused" for f in c.findings)
    excused = [t for s in c.steps for t in s.tensors if t.excused]
    assert excused and all(t.oracle.error_b <= t.oracle.allowed for t in excused)

    c = compare(traces["numpy32"], traces["planted32"], oracle=traces["numpy64"])
    f = c.first_divergence
    assert (f.step, f.name) == (PLANT_STEP, "L1.dW") and f.tensor.oracle.blamed
    assert f.tensor.oracle.error_b > 100 * f.tensor.oracle.error_a


# ---------------------------------------------------------------- synthetic traces: structure

write = write_steps


def tensors(k: int, names=("x", "L1.z", "L1.a", "loss")) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(k)
    return {n: rng.normal(size=(2, 3)) if n != "loss" else np.array(rng.normal()) for n in names}


def test_names_one_side_records_are_notes_not_divergences(tmp_path):
    a = write(tmp_path / "a.memstate.jsonl", {k: tensors(k) for k in range(5)})
    b = write(tmp_path / "b.memstate.jsonl", {k: {**{n: v for n, v in tensors(k).items() if n != "L1.z"},
                                                  "extra": np.ones(2)} for k in range(5)})
    c = compare(a, b)
    assert c.verdict == "agree" and c.first_divergence is None
    sided = {o.name: o for o in c.one_sided}
    assert (sided["L1.z"].recorded_by, sided["L1.z"].first_step, sided["L1.z"].last_step, sided["L1.z"].steps) \
        == ("a", 0, 4, 5)
    assert sided["extra"].recorded_by == "b" and sided["extra"].steps == 5
    assert not any(x.severity == "error" for x in c.findings)
    assert c.steps[0].only_a == ("L1.z",) and c.steps[0].only_b == ("extra",) and c.steps[0].passed
    assert [t.name for t in c.steps[0].tensors] == ["x", "L1.a", "loss"]


def test_a_wrong_tensor_after_a_one_sided_name_is_the_first_divergence(tmp_path):
    a = write(tmp_path / "a.memstate.jsonl", {k: tensors(k) for k in range(3)})
    b = write(tmp_path / "b.memstate.jsonl", {k: {n: v + (k == 1) * (n == "loss") for n, v in tensors(k).items()
                                                  if n != "L1.a"} for k in range(3)})
    c = compare(a, b)
    f = c.first_divergence
    assert (c.verdict, f.kind, f.step, f.name) == ("diverge", "values", 1, "loss")
    assert [o.name for o in c.one_sided] == ["L1.a"]


def test_only_and_ignore_choose_the_names_compared(tmp_path):
    a = write(tmp_path / "a.memstate.jsonl", {k: tensors(k) for k in range(3)})
    b = write(tmp_path / "b.memstate.jsonl", {k: {n: v * (1 + (n == "L1.z")) for n, v in tensors(k).items()}
                                              for k in range(3)})
    assert compare(a, b).first_divergence.name == "L1.z"
    c = compare(a, b, names=name_filter(ignore=["L1.z"]))
    assert c.verdict == "agree" and "L1.z" not in {t.name for t in c.steps[0].tensors} and not c.one_sided
    c = compare(a, b, names=name_filter(only=["x,L1.*"], ignore=["L1.z"]))
    assert c.verdict == "agree" and [t.name for t in c.steps[0].tensors] == ["x", "L1.a"]
    c = compare(a, b, names=name_filter(only=["L9.*"]))
    assert c.verdict == "diverge" and {x.kind for x in c.findings} >= {"nothing-compared", "unused-rule"}


def test_a_step_one_side_lacks_still_diverges(tmp_path):
    a = write(tmp_path / "a.memstate.jsonl", {k: tensors(k) for k in range(4)})
    b = write(tmp_path / "b.memstate.jsonl", {k: tensors(k) if k != 1 else {} for k in range(4)})
    c = compare(a, b)
    f = c.first_divergence
    assert (c.verdict, f.kind, f.step, f.name) == ("diverge", "missing", 1, None) and "B records none" in f.detail
    assert c.divergent_steps == 1
    crash = write(tmp_path / "c.memstate.jsonl", {k: tensors(k) for k in range(2)},
                  crash=(2, {"x": tensors(2)["x"]}))
    c = compare(a, crash)
    f = c.first_divergence
    assert (c.verdict, f.kind, f.step, f.name) == ("diverge", "missing", 2, "L1.z")


def test_shape_mismatch_is_a_finding_and_diagnosed(tmp_path):
    steps = {k: {"x": np.ones((2, 3)), "L1.W": np.arange(12.0).reshape(3, 4) + k} for k in range(3)}
    a = write(tmp_path / "a.memstate", steps)
    b = write(tmp_path / "b.memstate", {k: {"x": v["x"], "L1.W": v["L1.W"].T.copy()} for k, v in steps.items()})
    c = compare(a, b)
    f = c.first_divergence
    assert (f.kind, f.step, f.name) == ("shape", 0, "L1.W") and "[3, 4] in A but [4, 3] in B" in f.detail
    assert f.tensor.metrics is None and f.where is None and f.inputs_agree is True
    assert [x.count for x in c.findings if x.kind == "shape-mismatch"] == [3]
    assert c.diagnoses[0].code == "transposed"


def test_incomplete_step_of_a_crashed_run(tmp_path):
    c = compare(CONFORMANCE / "small.memstate.jsonl", CONFORMANCE / "truncated.memstate.jsonl")
    assert c.verdict == "diverge" and c.b.incomplete_step == 1 and c.b.steps == 1
    f = c.first_divergence
    assert (f.kind, f.step, f.name) == ("missing", 1, "L1.b") and "incomplete" in f.detail
    assert c.steps[0] and len(c.steps[1].tensors) == 15  # what it recorded before the crash is compared
    (inc,) = [x for x in c.findings if x.kind == "incomplete"]
    assert inc.side == "b" and inc.severity == "error" and "after recording L1.W" in inc.message
    assert not [x for x in c.findings if x.kind == "missing-name"]  # the crash explains them


def test_crash_in_a_step_the_other_run_never_had(tmp_path):
    a = write(tmp_path / "a.memstate.jsonl", {k: tensors(k) for k in range(3)})
    b = write(tmp_path / "b.memstate.jsonl", {k: tensors(k) for k in range(3)}, crash=(3, tensors(3, ("x",))))
    c = compare(a, b)
    assert c.verdict == "diverge" and c.steps_compared == 3
    f = c.first_divergence
    assert (f.kind, f.step, f.name) == ("missing", 3, None)


def test_gaps_and_extra_steps_are_warnings(tmp_path):
    a = write(tmp_path / "a.memstate.jsonl", {k: tensors(k) for k in range(6)})
    b = write(tmp_path / "b.memstate.jsonl", {k: tensors(k) for k in (0, 1, 3, 4, 5, 6, 7)})
    c = compare(a, b)
    assert c.verdict == "agree" and c.steps_compared == 5
    found = {(x.kind, x.side): x for x in c.findings}
    assert found[("missing-step", "b")].first_step == 2 and found[("missing-step", "b")].severity == "warning"
    assert (found[("extra-steps", "b")].first_step, found[("extra-steps", "b")].last_step) == (6, 7)


def test_run_that_stopped_early_diverges(tmp_path):
    a = write(tmp_path / "a.memstate.jsonl", {k: tensors(k) for k in range(6)}, meta={"steps": 6})
    b = write(tmp_path / "b.memstate.jsonl", {k: tensors(k) for k in range(4)}, meta={"steps": 6})
    c = compare(a, b)
    assert c.verdict == "diverge"
    f = c.first_divergence
    assert (f.kind, f.step, f.name) == ("missing", 4, None) and "stopped early" in f.detail
    assert [x.severity for x in c.findings if x.kind == "truncated"] == ["error"]


def test_order_and_unused_rules_are_reported(tmp_path):
    a = write(tmp_path / "a.memstate.jsonl", {0: tensors(0)})
    b = write(tmp_path / "b.memstate.jsonl", {0: dict(reversed(list(tensors(0).items())))})
    c = compare(a, b, tolerances=Tolerances(rules=(Rule("l1.z", rtol=1.0, text="--tol 'l1.z=1'"),)))
    assert c.verdict == "agree"
    kinds = {x.kind: x for x in c.findings}
    assert kinds["order"].severity == "info"
    unused = kinds["unused-rule"]
    assert unused.severity == "warning" and "--tol 'l1.z=1' matches no tensor" in unused.message


def test_nan_on_one_side_is_out_of_tolerance(tmp_path):
    clean = {k: tensors(k) for k in range(3)}
    bad = {k: {n: v.copy() for n, v in t.items()} for k, t in clean.items()}
    bad[1]["L1.a"][1, 2] = np.nan
    both = {k: {n: v.copy() for n, v in t.items()} for k, t in bad.items()}
    assert compare(write(tmp_path / "b.memstate", bad), write(tmp_path / "c.memstate", both)).verdict == "agree"
    c = compare(write(tmp_path / "a.memstate", clean), tmp_path / "b.memstate")
    f = c.first_divergence
    assert (f.step, f.name, f.rows, f.columns) == (1, "L1.a", (1,), (2,))
    assert f.tensor.metrics.nonfinite_mismatch == 1 and f.tensor.metrics.nan_b == 1
    assert f.min_tolerance.rtol == float("inf")


def test_conformance_trace_written_elsewhere_is_reproduced(tmp_path):
    """A trace memstate did not write: re-running its two steps with the NumPy MLP agrees with it."""
    ref = CONFORMANCE / "small.memstate.jsonl"
    steps = read_trace(ref)
    spec = NetSpec(layers=(196, 32, 10), activation="relu", loss_reduction="mean", dtype="float64")
    net = NumpyMLP(spec, read_params(CONFORMANCE / "small.params.json").tensors)
    ours = tmp_path / "ours.memstate.jsonl"
    with Recorder(ours, meta={"impl": "numpy"}) as rec:
        for s in steps:
            with rec.step(s.index):
                net.train_step(s.tensors["x"], np.argmax(s.tensors["y"], axis=1), 0.1, rec.record)
    c = compare(ref, ours)
    assert c.verdict == "agree" and c.steps_compared == 2
    assert any(m.path == "impl" for m in c.meta_diff)
    with open_trace(ref) as ra, open_trace(ours) as rb:  # open readers work as well as paths
        assert compare(ra, rb)


# ---------------------------------------------------------------- bounded summaries

def test_summaries_stay_bounded_for_a_long_trace(tmp_path):
    n, names = 2000, [f"t{i}" for i in range(18)]
    base = np.arange(6.0).reshape(2, 3) / 4  # exact in float32
    a, b = tmp_path / "a.memstate.jsonl", tmp_path / "b.memstate.jsonl"
    with open_writer(a) as wa, open_writer(b) as wb:
        for k in range(n):
            wa.begin_step(k)
            wb.begin_step(k)
            for name in names:
                wa.write_tensor(name, base)
                if name == "t17":  # float32 in B at every step: one compressed finding
                    wb.write_tensor(name, base.astype(np.float32))
                else:
                    wb.write_tensor(name, base + (1e-14 * (1 + k % 7) if (k, name) != (1000, "t5") else 1e-3))
            wa.end_step()
            wb.end_step()
    c = compare(a, b)
    assert c.steps_compared == n and c.verdict == "diverge" and c.divergent_steps == 1
    assert (c.first_divergence.step, c.first_divergence.name) == (1000, "t5")
    kept = [s.step for s in c.steps]
    assert kept == [0, 1, 2, 998, 999, 1000, 1001, 1002, 1997, 1998, 1999]
    assert len(kept) == HEAD_STEPS + 2 * AROUND + 1 + TAIL_STEPS
    assert 32 < len(c.overview) <= MAX_BUCKETS and sum(x.steps for x in c.overview) == n
    assert len(c.series) == 18 and all(len(s.buckets) <= MAX_BUCKETS for s in c.series)
    assert all(sum(x.steps for x in s.buckets) == n for s in c.series)
    t5 = next(s for s in c.series if s.name == "t5")
    (hit,) = [x for x in t5.buckets if x.failed]
    assert hit.first_step <= 1000 <= hit.last_step and hit.worst_step == 1000
    assert hit.max_abs_error == pytest.approx(1e-3)
    (dtype,) = c.findings
    assert (dtype.kind, dtype.count, dtype.first_step, dtype.last_step) == ("dtype-mismatch", n, 0, n - 1)
    assert len(pickle.dumps(c)) < 150_000


# ---------------------------------------------------------------- properties

arrays = hnp.arrays(st.sampled_from([np.float64, np.float32]),
                    hnp.array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=4),
                    elements=st.floats(allow_nan=True, allow_infinity=True, width=32))


@settings(max_examples=300, deadline=None)
@given(arrays)
def test_a_tensor_always_passes_against_itself(x):
    for tol in DEFAULTS.values():
        t = compare_tensors("t", 0, x, x.copy(), tol, argmax=True)
        assert t and t.metrics.n_out == 0 and t.min_tolerance is None


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.dictionaries(st.sampled_from(["x", "L1.z", "probs", "loss"]), arrays, min_size=1),
                min_size=1, max_size=3))
def test_a_trace_always_agrees_with_itself(steps):
    with tempfile.TemporaryDirectory() as d:
        a = write(Path(d) / "a.memstate.jsonl", dict(enumerate(steps)))
        b = write(Path(d) / "b.memstate", dict(enumerate(steps)))
        c = compare(a, b)
    assert c.verdict == "agree" and c.steps_compared == len(steps) and c.first_divergence is None

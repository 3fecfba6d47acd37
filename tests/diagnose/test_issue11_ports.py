"""Issue 11's mistakes planted in stdlib ports written the way people write them (tests/ports:
reference.py, the canonical trainer of /work/ports_staging with several --bug options allowed; and
port_perneuron.py, lists of Neuron objects with no gradients recorded). diff (the bug on either side) and
check (with the params file) must name each one as the headline or as a root cause, second bugs behind a
first included, and stay silent on clean pairs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from memstate.check.checker import check_trace
from memstate.cli.main import main
from memstate.comparator.compare import compare
from memstate.formats.params import read_params

PORTS = Path(__file__).resolve().parents[1] / "ports"


@pytest.fixture(scope="module")
def ports(tmp_path_factory):
    """make(port, data, *bug args) -> the trace path; data "tiny" (logits ~1) or "big" (weights x40:
    probabilities underflow to exactly 0)."""
    d = tmp_path_factory.mktemp("ports")
    subprocess.run([sys.executable, str(PORTS / "make_batches.py"), str(d)], check=True, capture_output=True)
    subprocess.run([sys.executable, str(PORTS / "make_batches.py"), str(d), "--name", "big", "--weight-scale", "40"],
                   check=True, capture_output=True)
    made: dict = {}

    def make(port: str, data: str, *args: str) -> Path:
        key = (port, data, args)
        if key not in made:
            out = d / f"{port}-{data}-{len(made)}.jsonl"
            subprocess.run([sys.executable, str(PORTS / f"{port}.py"), str(d / f"{data}.params.json"),
                            str(d / f"{data}.batches.jsonl"), str(out), *args], check=True, capture_output=True)
            made[key] = out
        return made[key]

    make.params = lambda data: read_params(d / f"{data}.params.json").tensors  # type: ignore[attr-defined]
    make.params_path = lambda data: d / f"{data}.params.json"  # type: ignore[attr-defined]
    return make


def named(result_like, step: int, name: str, code: str) -> str:
    """'headline', 'root cause' or '' for where the comparison names (step, name, code)."""
    fd = result_like.first_divergence
    if fd is not None and (fd.step, fd.name) == (step, name) and fd.diagnoses and fd.diagnoses[0].code == code:
        return "headline"
    if any((r.step, r.name, r.code) == (step, name, code) for r in result_like.root_causes):
        return "root cause"
    return ""


# (bug arguments, data, (step, tensor, code) the reference port's bug must be named at)
REFERENCE_CASES = [
    (("--bug", "softmax-global-sum"), "tiny", (0, "probs", "softmax-global-sum")),
    (("--bug", "softmax-global-max"), "big", (2, "probs", "softmax-global-max")),
    (("--bug", "bias-grad-scalar"), "tiny", (0, "L2.db", "bias-grad-scalar")),
    (("--bug", "grad-not-zeroed"), "tiny", (1, "L2.dW", "grad-not-zeroed")),
    (("--bug", "momentum"), "tiny", (1, "L1.W", "momentum")),
    (("--bug", "weight-decay"), "tiny", (0, "L1.W", "weight-decay")),
    (("--bug", "round8"), "tiny", (0, "L1.z", "params-load-mismatch")),
    (("--bug", "log-zero-replaced"), "big", (0, "loss", "log-zero-replaced")),
    (("--bug", "loss-mean-over-classes"), "tiny", (0, "loss", "loss-mean-over-classes")),
    (("--bug", "output-sigmoid"), "tiny", (0, "probs", "output-sigmoid")),
    (("--bug", "momentum", "--bug-from-step", "2"), "tiny", (3, "L1.W", "momentum")),
    # (the previous step's gradient is kept whether or not the bug is on: it shows at once, at step 3)
    (("--bug", "grad-not-zeroed", "--bug-from-step", "3"), "tiny", (3, "L2.dW", "grad-not-zeroed")),
]
#: what check names differently: the loss averaged over classes shows at dz (check infers the reduction from
#: it and cannot name one); the others as in diff
CHECK_AT = {"loss-mean-over-classes": (0, "L2.dz", "loss-mean-over-classes")}


@pytest.mark.parametrize("args, data, where", REFERENCE_CASES, ids=["-".join(c[0][1:]) for c in REFERENCE_CASES])
def test_reference_port_bugs_are_named_by_diff_and_check(ports, args, data, where):
    clean, buggy = ports("reference", data), ports("reference", data, *args)
    for a, b in ((clean, buggy), (buggy, clean)):
        c = compare(a, b)
        assert named(c, *where), (c.first_divergence.step, c.first_divergence.name, c.diagnoses[:1], c.root_causes)
        assert named(c, *where) == "headline"  # a single bug: it is the first divergence
        assert {r.code for r in c.root_causes} == {where[2]}, c.root_causes  # and the only root cause
    r = check_trace(buggy, params=ports.params(data))
    expect = CHECK_AT.get(where[2], where)
    assert named(r.comparison, *expect), (r.first_divergence, r.comparison.root_causes)


SECOND_BUGS = [
    # a log of zero at step 0 (the reference takes log(p)), then a batch-wide max turns a row nan at step 2
    ("reference", ("--safe-loss",), ("--bug", "softmax-global-max", "--bug-from-step", "2"), "big",
     [(0, "loss", "log-of-zero"), (2, "probs", "softmax-global-max")]),
    # parameters rounded to 8 decimals at load, and a log that swaps zeros for log(1e-12)
    ("reference", (), ("--bug", "round8", "--bug", "log-zero-replaced"), "big",
     [(0, "L1.z", "params-load-mismatch"), (0, "loss", "log-zero-replaced")]),
    # a bias gradient summed over everything, then momentum switched on at step 2
    ("reference", (), ("--bug", "bias-grad-scalar", "--bug", "momentum", "--bug-from-step", "2"), "tiny",
     [(0, "L2.db", "bias-grad-scalar"), (3, "L1.W", "momentum")]),
]


@pytest.mark.parametrize("port, clean_args, args, data, causes", SECOND_BUGS, ids=["gmax-behind-log0", "lzr-behind-round8", "momentum-behind-bias"])
def test_a_second_bug_behind_the_first_is_a_root_cause(ports, port, clean_args, args, data, causes):
    clean, buggy = ports(port, data, *clean_args), ports(port, data, *args)
    for a, b in ((clean, buggy), (buggy, clean)):
        c = compare(a, b)
        assert named(c, *causes[0]) == "headline"
        for cause in causes[1:]:
            assert named(c, *cause) == "root cause", c.root_causes
        assert (c.root_causes[0].step, c.root_causes[0].name) == causes[0][:2]
    r = check_trace(buggy, params=ports.params(data))
    for cause in causes:
        assert named(r.comparison, *cause), (cause, r.comparison.root_causes)


# port_perneuron records no gradients: the bugs it can show without them
PERNEURON_CASES = [
    (("--bug", "softmax-global-sum"), "tiny", (0, "probs", "softmax-global-sum"), True),
    (("--bug", "softmax-global-max"), "big", (2, "probs", "softmax-global-max"), True),
    (("--bug", "output-sigmoid"), "tiny", (0, "probs", "output-sigmoid"), True),
    (("--bug", "loss-mean-over-classes"), "tiny", (0, "loss", "loss-mean-over-classes"), True),
    (("--bug", "log-zero-replaced"), "big", (0, "loss", "log-zero-replaced"), True),
    (("--bug", "round8"), "tiny", (0, "L1.z", "params-load-mismatch"), False),  # diff cannot recover params
]


@pytest.mark.parametrize("args, data, where, in_diff", PERNEURON_CASES, ids=[c[0][1] for c in PERNEURON_CASES])
def test_perneuron_port_bugs_are_named(ports, args, data, where, in_diff):
    clean, buggy = ports("port_perneuron", data), ports("port_perneuron", data, *args)
    if in_diff:
        for a, b in ((clean, buggy), (buggy, clean)):
            c = compare(a, b)
            assert named(c, *where) == "headline", (c.diagnoses[:1], c.root_causes)
    r = check_trace(buggy, params=ports.params(data))
    assert named(r.comparison, *where), (r.first_divergence, r.comparison.root_causes)


@pytest.mark.parametrize("port, data", [("reference", "tiny"), ("reference", "big"), ("port_perneuron", "tiny"),
                                        ("port_perneuron", "big")])
def test_clean_pairs_have_no_root_cause(ports, port, data):
    a = b = ports(port, data)
    c = compare(a, b)
    assert c.verdict == "agree" and c.root_causes == ()
    if port == "reference" and data == "tiny":
        r = check_trace(a, params=ports.params(data))
        assert r.ok and r.comparison.root_causes == ()


def test_the_text_and_json_reports_list_the_root_causes(ports, tmp_path, capsys):
    import json

    clean = ports("reference", "big", "--safe-loss")
    buggy = ports("reference", "big", "--bug", "softmax-global-max", "--bug-from-step", "2")
    assert main(["diff", str(clean), str(buggy)]) == 1
    text = capsys.readouterr().out
    assert "root causes: 2" in text
    assert "step 2     probs    softmax-global-max (0.95)" in text
    out = tmp_path / "report.json"
    assert main(["diff", str(clean), str(buggy), "--format", "json", "-o", str(out)]) == 1
    doc = json.loads(out.read_text())
    assert [(r["step"], r["name"], r["code"]) for r in doc["root_causes"]] == [
        (0, "loss", "log-of-zero"), (2, "probs", "softmax-global-max")]
    assert set(doc["root_causes"][0]) == {"step", "name", "code", "confidence", "count"}
    out = tmp_path / "check.json"
    assert main(["check", str(buggy), "--params", str(ports.params_path("big")), "--format", "json", "-o", str(out)]) == 1
    doc = json.loads(out.read_text())
    assert [(r["step"], r["name"], r["code"]) for r in doc["root_causes"]] == [
        (0, "loss", "log-of-zero"), (2, "probs", "softmax-global-max")]


def test_the_html_report_lists_the_root_causes(ports, tmp_path):
    clean = ports("reference", "big", "--safe-loss")
    buggy = ports("reference", "big", "--bug", "softmax-global-max", "--bug-from-step", "2")
    out = tmp_path / "r.html"
    assert main(["diff", str(clean), str(buggy), "--format", "html", "-o", str(out)]) == 1
    html = out.read_text()
    assert "<h2 id='root-causes'>Root causes</h2>" in html
    assert html.index("<code>log-of-zero</code>") < html.index("<code>softmax-global-max</code></td>")

"""A Node port that writes binary traces by hand (port_minimal.js --binary): the binary contract from outside.

The port writes header.json and one safetensors file a step with Buffer.writeDoubleLE, its tensors laid
out sorted by name (as safetensors libraries do) and the dataflow order in the metadata. memstate must read
it bit for bit (the same numbers as the port's JSONL), settle two identical runs by the files' bytes alone
(memstate.comparator.identical: no tensor judged one by one), and find a planted bug where the reference
trace finds it, judging one by one only the steps from the bug on.
"""

from __future__ import annotations

import pytest

from memstate.check.checker import check_trace
from memstate.comparator import compare as compare_module
from memstate.comparator.compare import compare
from memstate.formats.params import read_params
from memstate.formats.trace import read_trace

from port_helpers import NODE, make_data, run_script, trace_of

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed: the Node port cannot run")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("binary-port")
    params, batches = make_data(out)
    return out, params, batches


def _binary(data, name: str, *bug: str):
    out, params, batches = data
    path = out / f"{name}.memstate"
    if not path.exists():
        run_script("port_minimal.js", params, batches, path, "--full", "--binary", *bug)
    return path


def _judged_one_by_one(monkeypatch) -> list[tuple[int, str]]:
    seen: list[tuple[int, str]] = []
    real = compare_module.compare_tensors

    def spy(name, step, *args, **kw):
        seen.append((step, name))
        return real(name, step, *args, **kw)

    monkeypatch.setattr(compare_module, "compare_tensors", spy)
    return seen


def test_the_hand_written_binary_trace_holds_the_numbers_of_the_ports_jsonl(data):
    out, params, batches = data
    jsonl = out / "full.jsonl"
    run_script("port_minimal.js", params, batches, jsonl, "--full")
    binary = _binary(data, "clean")
    steps = read_trace(binary)
    assert [s.index for s in steps] == [0, 1, 2, 3, 4]
    assert list(steps[0].tensors)[:4] == ["x", "y", "L1.z", "L1.a"]  # dataflow order, not the file's
    c = compare(binary, jsonl)
    assert c.verdict == "agree" and c.steps_compared == 5
    assert all(t.max_abs_error == 0.0 for s in c.steps for t in s.tensors)  # bit for bit
    report = check_trace(binary, params=read_params(params).tensors)
    assert report.ok and report.verified_all


def test_two_identical_runs_are_settled_by_their_bytes(data, monkeypatch):
    a, b = _binary(data, "clean"), _binary(data, "clean-again")
    seen = _judged_one_by_one(monkeypatch)
    c = compare(a, b)
    assert c.verdict == "agree" and c.steps_compared == 5
    assert seen == []


def test_a_planted_bug_is_found_where_the_reference_finds_it(data, monkeypatch):
    out, params, batches = data
    clean, buggy = _binary(data, "clean"), _binary(data, "global-sum", "--bug", "softmax-global-sum",
                                                   "--bug-from-step", "2")
    ref = compare(trace_of("reference.py", params, batches, out),
                  trace_of("reference.py", params, batches, out, "softmax-global-sum", 2))
    seen = _judged_one_by_one(monkeypatch)
    c = compare(clean, buggy)
    f, g = c.first_divergence, ref.first_divergence
    assert (c.verdict, f.step, f.name) == (ref.verdict, g.step, g.name) == ("diverge", 2, "probs")
    assert seen and min(step for step, _ in seen) == 2  # steps 0 and 1: their bytes, nothing else

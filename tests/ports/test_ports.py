"""Foreign ports, clean and with planted bugs, read through layout maps: the same verdict as the canonical trace.

Each port (plain Python or Node, written the way people write them) records its own names and layout. Read
through its hand-written map, and through the map `memstate map --suggest` writes, `memstate diff` against the
reference trace (tests/ports/reference.py, the full canonical trace) must find the same first divergence, step
and tensor, as the reference trace with the same bug, among the tensors the port records.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from memstate.check.checker import check_trace
from memstate.check.suggest import suggest_map
from memstate.cli.main import main
from memstate.comparator.compare import compare, name_filter
from memstate.formats.map import LayoutMap, read_map
from memstate.formats.params import read_params
from memstate.formats.trace import open_trace, read_trace

from port_helpers import HERE, PORTS, make_data, port_param, trace_of

#: bugs from step 2 (steps 0 and 1 clean): the first divergence is at step 2 or later (momentum: 3)
BUGS = [None, "softmax-global-sum", "bias-grad-scalar", "momentum", "output-sigmoid", "loss-mean-over-classes"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("ports")
    params, batches = make_data(out)
    return out, params, batches


def verdict(comparison) -> tuple:
    f = comparison.first_divergence
    return comparison.verdict, (f.step, f.name) if f is not None else None


def expected(data, bug: str | None, names: set[str], from_step: int = 2) -> tuple:
    """What diff says of the reference trace with the bug, looking only at the names the port records."""
    out, params, batches = data
    clean = trace_of("reference.py", params, batches, out)
    buggy = trace_of("reference.py", params, batches, out, bug, from_step)
    return verdict(compare(clean, buggy, names=name_filter(only=[",".join(sorted(names))])))


def mapped_names(trace, layout: LayoutMap) -> set[str]:
    with open_trace(trace, layout) as reader:
        return set(next(iter(reader)).tensors)


def suggested(trace, params) -> LayoutMap:
    step0 = read_trace(trace)[0]
    return suggest_map(step0.tensors, read_params(params).tensors).layout_map(f"suggested for {trace}")


@pytest.mark.parametrize("bug", BUGS)
@pytest.mark.parametrize("port", [port_param(p) for p in PORTS])
def test_port_under_its_map_diverges_where_the_reference_does(data, port, bug):
    out, params, batches = data
    if bug == "log-zero-replaced" and port in ("port_columns.py", "port_folded.py", "port_minimal.js"):
        pytest.skip("the port computes no loss")
    clean_ref = trace_of("reference.py", params, batches, out)
    trace = trace_of(port, params, batches, out, bug, 2)
    hand = read_map(HERE / PORTS[port])
    names = mapped_names(trace, hand)
    want = expected(data, bug, names)
    assert want[0] == ("agree" if bug is None else "diverge") and (bug is None or want[1][0] >= 2)
    got = compare(clean_ref, open_trace(trace, hand))
    assert verdict(got) == want
    assert not any(x.severity == "error" for x in got.findings if bug is None)
    # the suggested map, from the port's own (clean) step 0, says the same
    assert verdict(compare(clean_ref, open_trace(trace, suggested(trace, params)))) == want


@pytest.mark.parametrize("port", [port_param(p) for p in PORTS])
def test_suggested_map_reads_the_same_canonical_tensors_as_the_hand_written_one(data, port):
    out, params, batches = data
    trace = trace_of(port, params, batches, out)
    hand, sugg = read_map(HERE / PORTS[port]), suggested(trace, params)
    for a, b in zip(read_trace(trace, layout=hand), read_trace(trace, layout=sugg), strict=True):
        assert list(a.tensors) == list(b.tensors)
        for name in a.tensors:
            np.testing.assert_array_equal(a.tensors[name], b.tensors[name], err_msg=f"{port} step {a.index} {name}")


@pytest.mark.parametrize("bug", ["softmax-global-sum", "bias-grad-scalar"])
@pytest.mark.parametrize("port", [port_param(p) for p in PORTS])
def test_suggest_on_a_trace_buggy_from_step_0_still_gives_the_verdict(data, port, bug):
    out, params, batches = data
    trace = trace_of(port, params, batches, out, bug, 0)
    hand = read_map(HERE / PORTS[port])
    want = expected(data, bug, mapped_names(trace, hand), from_step=0)
    assert want[1][0] == 0
    clean_ref = trace_of("reference.py", params, batches, out)
    assert verdict(compare(clean_ref, open_trace(trace, hand))) == want
    assert verdict(compare(clean_ref, open_trace(trace, suggested(trace, params)))) == want


@pytest.fixture(scope="module")
def underflow(tmp_path_factory):
    """Weights x40: logits large enough for probabilities of exactly 0 and an infinite loss; steps 1,2,3,5,8."""
    out = tmp_path_factory.mktemp("underflow")
    params, batches = make_data(out, "--weight-scale", "40", "--steps", "1,2,3,5,8")
    return out, params, batches


@pytest.mark.parametrize("bug", ["softmax-global-sum", "loss-mean-over-classes", "output-sigmoid"])
@pytest.mark.parametrize("port", [port_param(p) for p in PORTS])
def test_suggest_under_softmax_underflow_with_a_bug_from_the_first_step(underflow, port, bug):
    out, params, batches = underflow
    trace = trace_of(port, params, batches, out, bug, 0)
    hand = read_map(HERE / PORTS[port])
    ref = trace_of("reference.py", params, batches, out)
    want = verdict(compare(ref, open_trace(trace, hand)))
    assert want[0] == "diverge" and want[1][0] == 1
    assert verdict(compare(ref, open_trace(trace, suggested(trace, params)))) == want


@pytest.mark.parametrize("bug", [None, "softmax-global-sum", "bias-grad-scalar", "output-sigmoid"])
@pytest.mark.parametrize("port", [port_param("port_columns.py"), port_param("port_outin.js")])
def test_check_under_the_map_finds_what_check_finds_in_the_reference(data, port, bug):
    out, params, batches = data
    start = read_params(params).tensors
    ref = check_trace(trace_of("reference.py", params, batches, out, bug, 2), start)
    got = check_trace(trace_of(port, params, batches, out, bug, 2), start, layout=read_map(HERE / PORTS[port]))
    assert (got.ok, got.first) == (ref.ok, ref.first)
    assert bug is None or got.first[0] == 2


def test_columns_under_sum_needs_the_sum_map(tmp_path):
    params, batches = make_data(tmp_path, "--reduction", "sum", "--activation", "sigmoid")
    ref = trace_of("reference.py", params, batches, tmp_path)
    port = trace_of("port_columns.py", params, batches, tmp_path)
    assert compare(ref, open_trace(port, read_map(HERE / "port_columns.sum.map.toml")))
    wrong = compare(ref, open_trace(port, read_map(HERE / "port_columns.map.toml")))
    assert verdict(wrong) == ("diverge", (0, "L2.dz"))
    sugg = suggest_map(read_trace(port)[0].tensors, read_params(params).tensors)
    assert (sugg.activation, sugg.reduction) == ("sigmoid", "sum")
    assert compare(ref, open_trace(port, sugg.layout_map()))
    # the same through the CLI, with the activation, reduction and learning rate from a scenario
    scenario = tmp_path / "tiny.toml"
    scenario.write_text((HERE.parents[1] / "scenarios" / "mnist14-relu.toml").read_text()
                        .replace('activation = "relu"', 'activation = "sigmoid"')
                        .replace('loss_reduction = "mean"', 'loss_reduction = "sum"'))
    toml = tmp_path / "sum.map.toml"
    assert main(["map", "--suggest", str(port), "--params", str(params), "--scenario", str(scenario),
                 "-o", str(toml)]) == 0
    assert not any(e.scale for e in read_map(toml).entries)  # under "sum" the port's dZ needs no 1/B
    assert main(["diff", str(ref), str(port), "--map-b", str(toml)]) == 0


def test_the_cli_suggests_applies_and_embeds_a_map(data, tmp_path, capsys):
    out, params, batches = data
    port = trace_of("port_folded.py", params, batches, out)
    ref = trace_of("reference.py", params, batches, out)
    toml = tmp_path / "folded.map.toml"
    assert main(["map", "--suggest", str(port), "--params", str(params), "-o", str(toml)]) == 0
    printed = capsys.readouterr().out
    assert "L1.b  <- W1[0, :]" in printed and "not matched (written to ignore" in printed and "h1" in printed
    assert read_map(toml).ignore == ("h1",)
    canon = tmp_path / "folded.canonical.memstate.jsonl"
    assert main(["map", str(port), "--map", str(toml), "-o", str(canon)]) == 0
    with open_trace(canon) as reader:
        assert reader.layout is None and reader.meta["mapped_from"]["map"] == str(toml)
    assert main(["diff", str(ref), str(canon)]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "note: recorded by A only, not compared: L1.z, loss, L2.dz, L1.da, L1.dz (B does not record them)" in printed
    # the same map carried in the port's own header applies without a flag, in every command
    lines = port.read_text().splitlines()
    header = json.loads(lines[0])
    header["meta"]["map"] = read_map(toml).to_dict()
    carried = tmp_path / "carried.jsonl"
    carried.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    assert main(["diff", str(ref), str(carried)]) == 0
    assert main(["show", str(carried)]) == 0
    assert "L1.W[6, 5]" in capsys.readouterr().out
    assert main(["diff", str(ref), str(port), "--map-b", str(HERE / "port_folded.map.toml")]) == 0
    assert main(["diff", str(ref), str(port)]) == 0  # unmapped: only y in common, and a warning says why
    printed = " ".join(capsys.readouterr().out.split())
    assert "warning not-canonical: B records names that are not canonical (x1, h, h1, out, p, dW1, ...)" in printed

"""Names one side records are notes, never the first divergence; --only/--ignore choose what is compared."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from memstate.cli.main import main
from memstate.comparator.compare import compare, name_filter
from memstate.names import canonical_names
from trace_helpers import write_steps

NAMES = canonical_names(2)


def write(path, steps):
    return write_steps(path, steps, {"impl": path.stem})


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_random_subsets_agree_on_what_both_record_and_list_the_rest(data):
    import tempfile
    from pathlib import Path

    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    n_steps = data.draw(st.integers(1, 4))
    full = {k: {n: rng.normal(size=(2, 3)) for n in NAMES} for k in range(n_steps)}
    side_a = data.draw(st.lists(st.sampled_from(NAMES), min_size=1, unique=True))
    side_b = data.draw(st.lists(st.sampled_from(NAMES), min_size=1, unique=True))
    common = [n for n in NAMES if n in side_a and n in side_b]
    bad = data.draw(st.sampled_from(common)) if common and data.draw(st.booleans()) else None
    bad_step = data.draw(st.integers(0, n_steps - 1))
    with tempfile.TemporaryDirectory() as tmp:
        a = write(Path(tmp) / "a.jsonl", {k: {n: v[n] for n in NAMES if n in side_a} for k, v in full.items()})
        b = write(Path(tmp) / "b.jsonl", {k: {n: v[n] * (2.0 if (n, k) == (bad, bad_step) else 1.0)
                                              for n in NAMES if n in side_b} for k, v in full.items()})
        c = compare(a, b)
        ignored = compare(a, b, names=name_filter(ignore=[bad])) if bad else None
    assert {(o.name, o.recorded_by) for o in c.one_sided} == \
        {(n, "a") for n in side_a if n not in side_b} | {(n, "b") for n in side_b if n not in side_a}
    assert all(o.steps == n_steps for o in c.one_sided)
    if not common:
        assert c.verdict == "diverge" and c.first_divergence.kind == "missing"
    elif bad is None:
        assert c.verdict == "agree" and c.first_divergence is None
    else:
        assert (c.verdict, c.first_divergence.step, c.first_divergence.name) == ("diverge", bad_step, bad)
        assert ignored.verdict == ("agree" if len(common) > 1 else "diverge")


def test_cli_only_ignore_and_json_one_sided(tmp_path, capsys):
    rng = np.random.default_rng(3)
    full = {k: {n: rng.normal(size=(2, 3)) for n in NAMES} for k in range(2)}
    a = write(tmp_path / "a.jsonl", full)
    b = write(tmp_path / "b.jsonl", {k: {n: v[n] * (1 + (n == "loss")) for n in NAMES if n != "L1.da"}
                                     for k, v in full.items()})
    assert main(["diff", str(a), str(b)]) == 1
    assert "DIVERGE at step 0: loss differs" in capsys.readouterr().out
    report = tmp_path / "r.json"
    assert main(["diff", str(a), str(b), "--ignore", "loss", "--format", "json", "-o", str(report)]) == 0
    doc = json.loads(report.read_text())
    assert doc["one_sided"] == [{"name": "L1.da", "recorded_by": "a", "first_step": 0, "last_step": 1, "steps": 2}]
    assert doc["names"] == {"only": [], "ignore": ["loss"]} and doc["verdict"] == "agree"
    capsys.readouterr()
    assert main(["diff", str(a), str(b), "--only", "L*.dW,L*.db", "--only", "x"]) == 0
    out = capsys.readouterr().out
    assert "compared only the tensors --only L*.dW,L*.db,x selects" in out
    assert main(["diff", str(a), str(b), "--only", "L9.*"]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "error nothing-compared: no tensor name is recorded by both sides among those --only/--ignore select" in out
    assert "--only/--ignore pattern 'L9.*' matches no tensor name" in out
    assert main(["diff", str(a), str(b), "--only", "L9.*", "--format", "html", "-o", str(tmp_path / "r.html")]) == 1
    assert main(["diff", str(a), str(b), "--format", "html", "-o", str(tmp_path / "r.html")]) == 1
    assert "<p class='note'>recorded by A only, not compared: L1.da (B does not record it)</p>" \
        in (tmp_path / "r.html").read_text()
    assert main(["diff", "--impls", "numpy,python", "mnist14-relu", "--only", "x"]) == 2
    assert "--only applies to two existing traces" in capsys.readouterr().err

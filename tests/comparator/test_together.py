"""memstate.comparator.together: small tensors judged together give what compare_tensors gives each alone.

Every verdict is checked against the one-by-one path on the same pair: bit-identical (nan payloads equal,
-0 against 0 not), within tolerance with the same max |a - b| and scale, or left alone exactly when the
one-by-one path does not settle the pair as identical or within tolerance (non-finite values, an |a - b|
that overflows, an element out of tolerance, by one ulp of the bound included).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memstate.comparator import compare as compare_module
from memstate.comparator import together
from memstate.comparator.compare import compare, compare_tensors
from memstate.comparator.tolerance import Tolerance
from memstate.formats.recorder import Recorder

EDITS = ["same", "nan-both", "nan-payload", "minus-zero", "rel-small", "rel-large", "at-bound", "past-bound",
         "inf-one", "nan-one", "overflow", "tiny-atol"]


def _pair(edit: str, n: int, seed: int, tol: Tolerance) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(n) * 10.0 ** rng.integers(-3, 4)
    b = a.copy()
    i = int(rng.integers(0, n))
    if edit == "nan-both":
        a[i] = b[i] = np.nan
    elif edit == "nan-payload":
        a[i] = np.nan
        b[i] = np.nan
        b.view(np.uint64)[i] |= 1
    elif edit == "minus-zero":
        a[i], b[i] = 0.0, -0.0
    elif edit == "rel-small":
        b = a * (1 + tol.rtol / 10)
    elif edit == "rel-large":
        b[i] = a[i] * (1 + 10 * tol.rtol) + tol.atol
    elif edit in ("at-bound", "past-bound"):  # |a - b| at the bound (the last b within it), or one ulp past
        sign = 1.0 if a[i] >= 0 else -1.0
        b[i] = sign * (abs(a[i]) + tol.atol) / (1 - tol.rtol)  # |b| - |a| = atol + rtol |b|, about
        within = lambda: abs(b[i] - a[i]) <= tol.atol + tol.rtol * max(abs(a[i]), abs(b[i]))  # noqa: E731
        for _ in range(64):  # a few ulps either way
            if within():
                break
            b[i] = np.nextafter(b[i], a[i])
        for _ in range(64):
            if not within():
                break
            b[i] = np.nextafter(b[i], sign * math.inf)
        if edit == "at-bound":
            b[i] = np.nextafter(b[i], a[i])
    elif edit == "inf-one":
        b[i] = np.inf
    elif edit == "nan-one":
        b[i] = np.nan
    elif edit == "overflow":
        a[i], b[i] = 1.7e308, -1.7e308
    elif edit == "tiny-atol":
        a[i], b[i] = 0.0, tol.atol / 2
    return a.reshape(-1, 1) if n % 2 == 0 else a, b.reshape(-1, 1) if n % 2 == 0 else b


def _alone(a, b, tol) -> tuple[str, float, float]:
    t = compare_tensors("t", 0, a, b, tol, detail="summary")
    detail = t.metrics.detail if t.metrics is not None else None
    return (detail if detail in ("identical", "summary") else "alone", t.max_abs_error if detail == "summary" else 0.0,
            t.metrics.scale if detail == "summary" else 0.0)


def _together(v) -> tuple[str, float, float]:
    if v is None:
        return ("alone", 0.0, 0.0)
    return ("identical", 0.0, 0.0) if v[0] else ("summary", v[1], v[2])


@settings(max_examples=200, deadline=None)
@given(items=st.lists(st.tuples(st.sampled_from(EDITS), st.integers(1, 40), st.integers(0, 10**6),
                                st.sampled_from([(1e-10, 1e-12), (1e-5, 1e-5), (0.0, 0.0), (1e-3, 0.0)])),
                      min_size=1, max_size=6),
       group=st.sampled_from([None, 1, 40, 75]))
def test_each_verdict_is_the_one_by_one_answer(items, group):
    # group: the most elements judged at once (together.GROUP), small enough to split the pairs in groups
    tols = [Tolerance(rtol, atol) for _, _, _, (rtol, atol) in items]
    pairs = [_pair(edit, n, seed, tol) for (edit, n, seed, _), tol in zip(items, tols)]
    assert all(together.eligible(a, b) for a, b in pairs)
    with pytest.MonkeyPatch.context() as m, np.errstate(all="raise"):  # (no floating-point flag may escape)
        if group is not None:
            m.setattr(together, "GROUP", group)
        got = together.verdicts(pairs, [t.rtol for t in tols], [t.atol for t in tols])
    assert [_together(v) for v in got] == [_alone(a, b, t) for (a, b), t in zip(pairs, tols)]


def test_the_per_element_tolerances_are_told_apart_by_sizes_rtols_and_atols(monkeypatch):
    monkeypatch.setattr(together, "_PER_ELEMENT", {})
    a = np.array([1.0, 2.0, 3.0])
    b = a + 1e-6  # within 1e-5 absolutely, not within 1e-8 relatively
    pairs = [(a, b), (a[:2], b[:2])]
    runs = [((1e-5, 1e-5), (0.0, 1e-5)), ((1e-5, 1e-5), (0.0, 0.0)), ((0.0, 1e-5), (0.0, 0.0)),
            ((1e-5, 1e-5), (1e-5, 1e-5))]
    for rtols, atols in runs * 2:  # the second time from the memo
        got = [v is not None for v in together.verdicts(pairs, rtols, atols)]
        assert got == [rtols[i] * 3.0 + atols[i] >= 1e-6 for i in range(2)], (rtols, atols)
    monkeypatch.setattr(together, "_PER_ELEMENT", {key: None for key in range(64)})  # full: starts over
    assert together.verdicts(pairs, (0.0, 0.0), (1e-5, 0.0))[0] is not None and len(together._PER_ELEMENT) == 1
    split = together.verdicts([(a[:1], b[:1]), (a[1:], b[1:])], (0.0, 0.0), (0.0, 1e-5))  # other sizes
    assert [v is not None for v in split] == [False, True]


def test_each_thread_judges_in_its_own_scratch_arrays_made_once_and_grown():
    import threading

    seen = {}

    def judge(who: str, n: int) -> None:
        pairs = [(np.full(n, 1.0), np.full(n, 1.0 + 1e-12))] * 2
        first = together.verdicts(pairs, (1e-10, 1e-10), (0.0, 0.0))
        arrays = together._SCRATCH.arrays
        again = together.verdicts(pairs[:1], (1e-10,), (0.0,))
        assert together._SCRATCH.arrays is arrays  # reused for a smaller group
        together.verdicts([(np.full(3 * n, 1.0), np.full(3 * n, 1.0))] * 2, (0.0, 0.0), (0.0, 0.0))
        grown = together._SCRATCH.arrays
        assert grown is not arrays and grown[0].size == 6 * n and arrays[0].size == 2 * n
        assert len(grown) == 7 and [x.dtype for x in grown] == [np.float64] * 5 + [np.bool_] * 2
        seen[who] = (first, again, grown)

    for who, n in (("one", 8), ("two", 20)):
        t = threading.Thread(target=judge, args=(who, n))
        t.start()
        t.join()
    assert set(seen) == {"one", "two"}  # (an assertion failed in a thread otherwise)
    assert seen["one"][0] == [(False, pytest.approx(1e-12, rel=1e-3), 1.0 + 1e-12)] * 2
    assert seen["one"][1] == seen["one"][0][:1] and seen["two"][0] == seen["one"][0]
    assert not np.shares_memory(seen["one"][2][0], seen["two"][2][0])


def test_only_small_float64_pairs_of_one_shape_are_eligible():
    x = np.zeros(4)
    assert together.eligible(x, x.copy()) and together.eligible(np.zeros(together.SMALL), np.zeros(together.SMALL))
    assert not together.eligible(np.zeros(together.SMALL + 1), np.zeros(together.SMALL + 1))
    assert not together.eligible(x, np.zeros((2, 2))) and not together.eligible(x, x.astype(np.float32))
    assert not together.eligible(np.zeros(0), np.zeros(0))  # (reduceat cannot take an empty segment)


def test_a_diff_judges_small_tensors_together_and_the_rest_alone(tmp_path, monkeypatch):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    rng = np.random.default_rng(0)
    big, small = rng.standard_normal(together.SMALL + 1), rng.standard_normal((3, 4))
    for path, scale in ((a, 1.0), (b, 1 + 1e-12)):
        with Recorder(path) as rec:
            with rec.step(0):
                rec.record("x", small)
                rec.record("L1.z", small * scale)
                rec.record("L1.W", big * scale)
                rec.record("loss", np.array(small.sum() * scale))
    alone = []
    real = compare_module.compare_tensors
    monkeypatch.setattr(compare_module, "compare_tensors",
                        lambda name, *args, **kw: (alone.append(name), real(name, *args, **kw))[1])
    c = compare(a, b, detail="divergent")
    assert c.verdict == "agree" and alone == ["L1.W"]
    details = {t.name: t.metrics.detail for t in c.steps[0].tensors}
    assert details == {"x": "identical", "L1.z": "summary", "L1.W": "summary", "loss": "summary"}
    monkeypatch.setattr(together, "SMALL", 0)
    alone.clear()
    assert compare(a, b, detail="divergent").steps[0].tensors == c.steps[0].tensors  # the same judgements
    assert alone == ["x", "L1.z", "L1.W", "loss"]


@pytest.mark.parametrize("n", [1, 2, 7])
def test_one_pair_and_segments_of_one_element(n):
    tol = Tolerance(1e-10, 1e-12)
    pairs = [(np.full(n, 2.0), np.full(n, 2.0 + 1e-11))] * 3
    assert together.verdicts(pairs, [tol.rtol] * 3, [tol.atol] * 3) == [(False, pytest.approx(1e-11, rel=1e-3), 2.0 + 1e-11)] * 3


def test_judging_a_group_allocates_no_array_of_its_size():
    # the temporaries go to scratch arrays kept per thread: made per step, they were of the size at which
    # malloc gives memory back to the system and faults it in again (several times the arithmetic)
    import tracemalloc

    n = together.GROUP // 4
    pairs = [(np.linspace(-1.0, 1.0, n), np.linspace(-1.0, 1.0, n) * (1 + 1e-12))] * 3
    together.verdicts(pairs, (1e-10,) * 3, (0.0,) * 3)  # the scratch arrays made, the tolerances remembered
    tracemalloc.start()
    try:
        got = together.verdicts(pairs, (1e-10,) * 3, (0.0,) * 3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [v[0] for v in got] == [False] * 3
    assert peak < 8 * n // 8, peak  # far less than one float64 array of a pair's size


def test_groups_hold_at_most_group_elements_and_fill_up_to_it(monkeypatch):
    import threading

    monkeypatch.setattr(together, "GROUP", 40)
    sizes = {}

    def judge(name, lengths):
        pairs = [(np.full(k, 2.0), np.full(k, 2.0)) for k in lengths]
        assert together.verdicts(pairs, (0.0,) * len(lengths), (0.0,) * len(lengths)) == \
            [(True, 0.0, pytest.approx(math.nan, nan_ok=True))] * len(lengths)
        held = together._SCRATCH.arrays
        together.verdicts(pairs, (0.0,) * len(lengths), (0.0,) * len(lengths))
        assert together._SCRATCH.arrays is held  # the same sizes again: the same arrays
        sizes[name] = held[0].size

    for name, lengths in (("three-of-30", [30, 30, 30]), ("two-of-20", [20, 20]), ("one-too-many", [20, 20, 1])):
        t = threading.Thread(target=judge, args=(name, lengths))  # a new thread: new scratch arrays
        t.start()
        t.join()
    assert sizes == {"three-of-30": 30, "two-of-20": 40, "one-too-many": 40}

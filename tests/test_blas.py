"""memstate.blas: compare and check run with one BLAS thread and leave the caller's setting as it was."""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_info

import memstate.comparator.compare as cmp
from memstate.blas import blas_thread_cap, blas_threads
from memstate.formats.recorder import Recorder


def _blas_threads() -> list[int]:
    return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]


def test_the_cap_applies_inside_and_is_undone_after(monkeypatch):
    np.dot(np.ones(3), np.ones(3))  # BLAS loaded
    before = _blas_threads()
    for _ in range(2):  # the second time through the kept controller
        with blas_threads():
            assert all(n == 1 for n in _blas_threads())
        assert _blas_threads() == before
    monkeypatch.setenv("MEMSTATE_BLAS_THREADS", "0")
    assert blas_thread_cap() == 0
    with blas_threads():
        assert _blas_threads() == before
    monkeypatch.setenv("MEMSTATE_BLAS_THREADS", "nonsense")
    assert blas_thread_cap() == 1


def test_compare_judges_with_one_blas_thread(tmp_path, monkeypatch):
    for name in ("a.jsonl", "b.jsonl"):
        with Recorder(tmp_path / name) as rec:
            with rec.step(0):
                rec.record("x", np.arange(4.0))
    seen = []
    real = cmp.judge_step

    def spy(*args, **kwargs):
        seen.append(_blas_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(cmp, "judge_step", spy)
    assert cmp.compare(tmp_path / "a.jsonl", tmp_path / "b.jsonl")
    assert seen and all(n == 1 for threads in seen for n in threads)

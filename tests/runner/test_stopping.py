"""Stopping rules on hand-made loss sequences: the exact evaluation where each fires, and its boundaries."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from memstate.runner.scenario import EarlyRule, PlateauRule, StopSpec
from memstate.runner.stopping import Evaluation, decide, early_run, first_stop, plateau_fires, plateau_ratio


def evals(train, val=None):
    val = val if val is not None else [None] * len(train)
    return [Evaluation(step=10 * (i + 1) - 1, train_loss=t, train_accuracy=0.5, validation_loss=v)
            for i, (t, v) in enumerate(zip(train, val))]


EARLY5 = StopSpec(early=EarlyRule(5))


def test_early_fires_at_the_fifth_consecutive_evaluation_below():
    # below at evaluations 3..7 (1-based) after one that is not: fires at the 7th, step 69
    train = [1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    val = [0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]
    stop = first_stop(evals(train, val), EARLY5)
    assert (stop.rule, stop.evaluation, stop.step, stop.value) == ("early", 7, 69, 5.0)


def test_early_patience_minus_one_does_not_fire_and_a_break_restarts_the_count():
    train = [0.5, 0.5, 0.5, 0.5, 1.0, 0.5, 0.5, 0.5, 0.5]  # 4 below, one above, then 4 below
    val = [0.9] * 9
    assert first_stop(evals(train, val), EARLY5) is None
    stop = first_stop(evals(train + [0.5], val + [0.9]), EARLY5)  # the 5th of the second run: evaluation 10
    assert (stop.evaluation, stop.step) == (10, 99)


def test_early_equal_losses_are_not_below():
    assert early_run([0.5] * 6, [0.5] * 6) == 0
    assert first_stop(evals([0.5] * 6, [0.5] * 6), EARLY5) is None


def test_early_patience_one_fires_at_the_first_evaluation_below():
    stop = first_stop(evals([2.0, 1.0], [1.5, 1.5]), StopSpec(early=EarlyRule(1)))
    assert (stop.evaluation, stop.step) == (2, 19)


def test_early_never_fires_on_nan():
    assert first_stop(evals([math.nan] * 8, [1.0] * 8), EARLY5) is None


def test_plateau_fires_at_the_first_window_below_threshold():
    # window 3, threshold 0.01: windows [10, 5, 2], [5, 2, 1.01], [2, 1.01, 1.0], [1.01, 1.0, 1.0] ...
    train = [10.0, 5.0, 2.0, 1.01, 1.0, 1.0, 1.0]
    spec = StopSpec(plateau=PlateauRule(window=3, threshold=0.01))
    stop = first_stop(evals(train), spec)
    last = np.array([1.01, 1.0, 1.0])
    assert np.std(last) < 0.01 * np.mean(last)  # the window that fires (evaluation 6)
    prev = np.array([2.0, 1.01, 1.0])
    assert not np.std(prev) < 0.01 * np.mean(prev)
    assert (stop.rule, stop.evaluation, stop.step) == ("plateau", 6, 59)
    assert stop.value == pytest.approx(np.std(last) / np.mean(last))


def test_plateau_exactly_at_the_threshold_does_not_fire():
    # [1, 3]: mean 2, std 1 exactly; threshold 0.5 -> std == threshold * mean == 1.0: not below
    assert not plateau_fires([1.0, 3.0], 2, 0.5)
    assert plateau_fires([1.0, 3.0], 2, 0.5000001)
    assert plateau_ratio([1.0, 3.0], 2) == 0.5
    assert first_stop(evals([1.0, 3.0]), StopSpec(plateau=PlateauRule(2, 0.5))) is None


def test_plateau_needs_a_full_window():
    assert not plateau_fires([1.0, 1.0], 3, 0.5)
    stop = first_stop(evals([1.0, 1.0, 1.0]), StopSpec(plateau=PlateauRule(3, 0.001)))
    assert (stop.evaluation, stop.value) == (3, 0.0)


def test_plateau_never_fires_on_nan_or_inf():
    assert first_stop(evals([1.0, math.nan, 1.0, 1.0]), StopSpec(plateau=PlateauRule(2, 0.5))).evaluation == 4
    assert not plateau_fires([math.inf, math.inf], 2, 0.5)


def test_early_wins_when_both_fire_at_once():
    spec = StopSpec(early=EarlyRule(2), plateau=PlateauRule(2, 0.5))
    stop = first_stop(evals([1.0, 1.0], [2.0, 2.0]), spec)
    assert (stop.rule, stop.evaluation) == ("early", 2)


def test_no_rule_never_stops():
    assert decide(evals([1.0] * 20, [2.0] * 20), StopSpec()) is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.01, 10), min_size=1, max_size=30), st.lists(st.floats(0.01, 10), min_size=30,
       max_size=30), st.integers(1, 6))
def test_early_fires_exactly_where_a_naive_count_says(train, val, patience):
    val = val[:len(train)]
    naive = None
    run = 0
    for i, (t, v) in enumerate(zip(train, val)):
        run = run + 1 if t < v else 0
        if run >= patience:
            naive = i + 1
            break
    stop = first_stop(evals(train, val), StopSpec(early=EarlyRule(patience)))
    assert (stop.evaluation if stop else None) == naive


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.01, 10), min_size=1, max_size=25), st.integers(2, 6), st.floats(1e-4, 0.5))
def test_plateau_fires_exactly_where_a_naive_window_says(train, window, threshold):
    naive = next((i + 1 for i in range(window - 1, len(train))
                  if np.std(train[i - window + 1:i + 1]) < threshold * np.mean(train[i - window + 1:i + 1])), None)
    stop = first_stop(evals(train), StopSpec(plateau=PlateauRule(window, threshold)))
    assert (stop.evaluation if stop else None) == naive

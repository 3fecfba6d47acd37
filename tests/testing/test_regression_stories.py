"""The seed stories regressed against golden traces with memstate's own pytest plugin (memstate_regression).

Each test runs our NumPy implementation for a few steps of a story scenario and compares the trace with the
golden one committed under tests/test_regression_stories/ (JSONL: a change to the numerics shows up as a
reviewable diff). A failure prints the comparator's report: the first divergent step and tensor, and why.
If a change to the numerics is intended, rewrite the goldens and review their diff:

    pytest tests/test_regression_stories.py --memstate-regen
"""

from __future__ import annotations

import pytest

STORIES = [
    # (scenario, steps): few steps keep the goldens small (about 0.6 MB of JSONL each) and the tests fast
    ("mnist14-relu", 2),  # the small reference run
    ("story-round8", 2),  # parameters rounded to 8 decimals after every update
    ("story-4layer-shifted-relu", 1),  # 4 layers, shifted ReLU max(-1, z)
]


@pytest.mark.parametrize(("scenario", "steps"), STORIES, ids=[s for s, _ in STORIES])
def test_story_trace_matches_golden(scenario, steps, memstate_run, memstate_regression):
    memstate_regression.check(memstate_run("numpy", scenario, steps), basename=scenario, encoding="jsonl")

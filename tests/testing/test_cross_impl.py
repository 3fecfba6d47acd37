"""Every pair of our implementations agrees on the first steps of mnist14-relu, under memstate's default
float64 tolerances, tested through the pytest plugin's @memstate.cross_impl and memstate_run.

The runs are cached for the session, so each implementation trains once (the scalar-autograd one manages
about 5 steps a second, hence 3 steps). JAX pairs are skipped, with the reason, where JAX is not installed.
"""

from __future__ import annotations

import memstate
from memstate.testing.asserts import assert_traces_close

SCENARIO, STEPS = "mnist14-relu", 3


@memstate.cross_impl("numpy", "python", "jax", "scalar")
def test_implementations_agree(impl_a, impl_b, memstate_run):
    comparison = assert_traces_close(memstate_run(impl_a, SCENARIO, STEPS), memstate_run(impl_b, SCENARIO, STEPS))
    assert comparison.steps_compared == STEPS

"""The bounded error series (compare._Buckets): the open last bucket, kept as a list of fields, must give
the same buckets as merging Bucket objects step by step did, at every limit, ties, nan and inf included."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from memstate.comparator.compare import Bucket, _Buckets, _merge


class _Reference:
    """_Buckets as it was: every step a Bucket, merged into the last one while it has room."""

    def __init__(self, limit: int):
        self.limit, self.width, self.items = limit, 1, []  # type: ignore[var-annotated]

    def add(self, step, abs_err, rel_err, name, failed):
        new = Bucket(step, step, 1, abs_err, rel_err, step, name, int(failed))
        if self.items and self.items[-1].steps < self.width:
            self.items[-1] = _merge(self.items[-1], new)
        else:
            self.items.append(new)
        if len(self.items) > self.limit:
            pairs = [self.items[i:i + 2] for i in range(0, len(self.items), 2)]
            self.items = [_merge(*p) if len(p) == 2 else p[0] for p in pairs]
            self.width *= 2


_errors = st.sampled_from([0.0, 1e-16, 1e-3, 1e-3, 2.0, math.inf, math.nan])


def _same(x: list[Bucket], y: list[Bucket]) -> bool:
    """Equal buckets, nan equal to nan (Bucket's == would say a nan differs from itself)."""
    def key(b: Bucket) -> tuple:
        return tuple("nan" if isinstance(v, float) and v != v else v for v in (
            b.first_step, b.last_step, b.steps, b.max_abs_error, b.max_rel_error, b.worst_step, b.worst_name, b.failed))
    return [key(b) for b in x] == [key(b) for b in y]


@settings(max_examples=200, deadline=None)
@given(limit=st.integers(1, 6),
       adds=st.lists(st.tuples(_errors, _errors, st.sampled_from(["x", "L1.z", None]), st.booleans()), max_size=40))
def test_the_open_bucket_gives_what_merging_buckets_gave(limit, adds):
    new, old = _Buckets(limit), _Reference(limit)
    for step, (abs_err, rel_err, name, failed) in enumerate(adds):
        new.add(3 * step, abs_err, rel_err, name, failed)
        old.add(3 * step, abs_err, rel_err, name, failed)
        assert _same(new.items, old.items) and new.width == old.width
        assert len(new.items) <= limit


def test_a_series_of_ten_steps_in_four_buckets():
    b = _Buckets(4)
    for k in range(10):
        b.add(k, float(k), 1.0 if k == 6 else 0.5, f"t{k}", k % 3 == 0)
    assert b.width == 4
    assert [(x.first_step, x.last_step, x.steps, x.max_abs_error, x.max_rel_error, x.worst_step, x.failed)
            for x in b.items] == [(0, 3, 4, 3.0, 0.5, 0, 2), (4, 7, 4, 7.0, 1.0, 6, 1), (8, 9, 2, 9.0, 0.5, 8, 1)]

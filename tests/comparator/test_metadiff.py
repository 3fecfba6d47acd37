"""Structured metadata differences: one line per differing leaf, whatever deepdiff's defaults."""

from hypothesis import given, settings, strategies as st

from memstate.comparator.metadiff import MetaChange, deep_changes, meta_diff, same_tree


def test_changed_added_and_removed_leaves_at_their_paths():
    a = {"impl": "numpy", "settings": {"learning_rate": 0.1, "layers": [196, 32, 10]}, "seed": 0}
    b = {"impl": "numpy", "settings": {"learning_rate": 0.01, "layers": [196, 64, 10]}, "variant": {"log": "eps"}}
    assert meta_diff(a, b) == (
        MetaChange("seed", "removed", 0, None),
        MetaChange("settings.layers[1]", "changed", 32, 64),
        MetaChange("settings.learning_rate", "changed", 0.1, 0.01),
        MetaChange("variant", "added", None, {"log": "eps"}),
    )
    assert [m.describe() for m in meta_diff(a, b)] == [
        "seed: only in A: 0", "settings.layers[1]: 32 → 64", "settings.learning_rate: 0.1 → 0.01",
        "variant: only in B: {'log': 'eps'}"]


def test_tables_sharing_few_keys_are_still_diffed_key_by_key():
    # deepdiff >= 8 reports a dict sharing under a third of its keys as one whole new value unless
    # threshold_to_diff_deeper=0: the report would then print both headers in full.
    a = {"impl": "numpy", "k1": 1, "k2": 2, "k3": 3, "k4": 4}
    b = {"impl": "jax", "j1": 1, "j2": 2, "j3": 3, "j4": 4}
    paths = [m.path for m in meta_diff(a, b)]
    assert paths == ["impl", "j1", "j2", "j3", "j4", "k1", "k2", "k3", "k4"]
    assert meta_diff({"s": a}, {"s": b})[0] == MetaChange("s.impl", "changed", "numpy", "jax")


_leaf = st.one_of(st.integers(-5, 5), st.text(max_size=3), st.floats(allow_nan=False))
_tables = st.dictionaries(st.text("abcdef", min_size=1, max_size=3),
                          st.one_of(_leaf, st.dictionaries(st.text("xyz", min_size=1, max_size=2), _leaf, max_size=3)),
                          max_size=5)


@settings(max_examples=80, deadline=None)
@given(a=_tables, b=_tables)
def test_no_difference_iff_equal_and_every_top_key_accounted(a, b):
    changes = meta_diff(a, b)
    assert (changes == ()) == (a == b)
    touched = {m.path.split(".")[0].split("[")[0] for m in changes}
    assert touched == {k for k in a.keys() | b.keys() if a.get(k, object()) != b.get(k, object())}


_typed_leaf = st.one_of(st.integers(-2, 2), st.sampled_from([0.0, -0.0, 1.0, float("nan"), True, False, None, "1"]))
_typed = st.recursive(_typed_leaf, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                            st.dictionaries(st.sampled_from("ab"), inner, max_size=2)),
                      max_leaves=6)


@settings(max_examples=300, deadline=None)
@given(a=st.dictionaries(st.sampled_from("xy"), _typed, max_size=2),
       b=st.dictionaries(st.sampled_from("xy"), _typed, max_size=2))
def test_the_shortcut_for_equal_tables_never_hides_what_deepdiff_reports(a, b):
    # 1 against 1.0 or True, nan against nan, -0.0 against 0.0: same_tree settles only what DeepDiff finds equal
    assert meta_diff(a, b) == deep_changes(a, b)
    if same_tree(a, b):
        assert deep_changes(a, b) == ()


def test_same_tree_needs_the_same_types_and_values_leaf_for_leaf():
    assert same_tree({"k": [1, {"j": "s"}]}, {"k": [1, {"j": "s"}]})
    assert not same_tree({"k": 1}, {"k": 1.0}) and not same_tree({"k": 1}, {"k": True})
    assert not same_tree({"k": float("nan")}, {"k": float("nan")}) and not same_tree([1], (1,))

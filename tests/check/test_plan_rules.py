"""Quick rule tests of memstate.check.plan: which recorded tensors are checked directly, which through a
composition of operations back to recorded tensors, and why the others cannot be reached.

Most cases run the planner on small hand-built rule graphs (a, b, c, ... with made-up formulas) so that each
decision is separated from the others: the direct rule preferred, the shortest composition chosen, the
reason of the direct rule kept when nothing reaches the tensor, cycles, missing settings and parameters.
The last cases run it on the real rules of a 2-layer network and evaluate the derived intermediates against
numpy written out here. These are the tests `scripts/mutation.py check/plan.py` runs (pyproject)."""

from __future__ import annotations

import numpy as np
import pytest

from memstate.check import recompute as rc
from memstate.check.plan import NEEDED, SETTING_WHY, Derivation, Plan, Unreachable, _Search, plan_step, reach

KNOWN = rc.Settings(2, "relu", "mean", 0.5)


def rule(name, inputs=(), params=(), terms=1, needs=(), fn=None, formula=None):
    """A made-up operation `name = f(inputs)`; `fn` defaults to the sum of the inputs and parameters."""
    def total(t, p):
        v = sum(np.asarray(t[i], dtype=np.float64) for i in inputs) + sum(np.asarray(p[q]) for q in params)
        return v, np.abs(v)
    return rc.Rule(name, formula or f"f({', '.join(inputs + params)})", tuple(inputs), tuple(params),
                   lambda t: terms, fn or total, tuple(needs))


def graph(*rs):
    out: dict[str, list[rc.Rule]] = {}
    for r in rs:
        out.setdefault(r.name, []).append(r)
    return out


def plans(recorded, rules, params_known=True, settings=KNOWN):
    return plan_step(frozenset(recorded), rules, params_known, settings)


# ---------------------------------------------------------------- direct plans and compositions

def test_a_tensor_whose_inputs_are_recorded_is_checked_directly_and_names_without_rules_are_not_planned():
    rc_ = rule("c", ("a", "b"), ("W",), terms=3, formula="a + b + W")
    out = plans({"a", "b", "c"}, graph(rc_))
    assert list(out) == ["c"]
    p = out["c"]
    assert p == Plan("c", rc_, (), ("a", "b"), ("W",))
    assert p.direct is True
    assert p.formula == "a + b + W"
    assert p.terms({}) == 3


def test_a_missing_input_is_derived_and_the_composition_is_described():
    rb, rcc = rule("b", ("a",), ("V",), terms=5, formula="g(a)"), rule("c", ("a", "b"), ("W",), terms=3,
                                                                      formula="h(a, b)")
    p = plans({"a", "c"}, graph(rb, rcc))["c"]
    assert p.chain == (("b", rb),)
    assert p.leaves == ("a",)  # a is both an input of c and b's leaf: named once
    assert p.params == ("W", "V")
    assert p.direct is False
    assert p.formula == "h(a, b), with b derived from a, W, V"
    assert p.terms({}) == 8


def test_terms_add_up_along_the_composition_on_the_steps_tensors():
    def sized(name, inputs, of):
        r = rule(name, inputs)
        return rc.Rule(r.name, r.formula, r.inputs, r.params, lambda t: t[of].shape[-1], r.fn)
    rb, rcc = sized("b", ("a",), "a"), sized("c", ("b",), "w")
    p = plans({"a", "c"}, graph(rb, rcc))["c"]
    assert p.terms({"a": np.ones((2, 3)), "w": np.ones(7)}) == 10


def test_the_chain_is_in_evaluation_order_and_shared_intermediates_appear_once():
    ra, rb, re_, rcc = rule("b", ("a",)), rule("d", ("b",)), rule("e", ("b", "d")), rule("c", ("e", "b", "y"))
    p = plans({"a", "y", "c"}, graph(ra, rb, re_, rcc))["c"]
    assert [n for n, _ in p.chain] == ["b", "d", "e"]
    assert p.leaves == ("a", "y")
    assert p.formula == "f(e, b, y), with b, d, e derived from a, y"
    assert p.terms({}) == 4


def test_the_shortest_composition_is_chosen_and_a_tie_goes_to_the_first_rule():
    long_, short = rule("c", ("e",), formula="long"), rule("c", ("b",), formula="short")
    g = graph(rule("d", ("a",)), rule("e", ("d",)), rule("b", ("a",)), long_, short)
    p = plans({"a", "c"}, g)["c"]
    assert p.rule is short and [n for n, _ in p.chain] == ["b"]
    g = graph(rule("d", ("a",)), rule("e", ("d",)), rule("b", ("a",)), short, long_)
    assert plans({"a", "c"}, g)["c"].rule is short
    first, second = rule("c", ("b",), formula="first"), rule("c", ("d",), formula="second")
    assert plans({"a", "c"}, graph(rule("b", ("a",)), rule("d", ("a",)), first, second))["c"].rule is first
    assert plans({"a", "c"}, graph(rule("b", ("a",)), rule("d", ("a",)), second, first))["c"].rule is second


def test_the_first_rule_whose_inputs_are_recorded_is_direct_even_after_a_derivable_one():
    derivable, direct1, direct2 = rule("c", ("b",)), rule("c", ("a",), formula="one"), rule("c", ("a", "y"))
    p = plans({"a", "y", "c"}, graph(rule("b", ("a",)), derivable, direct1, direct2))["c"]
    assert p.rule is direct1 and p.direct and p.leaves == ("a",)


def test_a_recorded_tensor_is_a_leaf_even_when_a_rule_could_derive_it():
    rb, rcc = rule("b", ("a",)), rule("c", ("b",))
    p = plans({"a", "b", "c"}, graph(rb, rcc))
    assert p["c"] == Plan("c", rcc, (), ("b",), ())
    assert p["b"] == Plan("b", rb, (), ("a",), ())


def test_reach_plans_a_tensor_that_is_not_recorded():
    rb, rcc = rule("b", ("a",)), rule("c", ("b",), ("W",))
    p = reach("c", frozenset({"a"}), graph(rb, rcc), True, KNOWN)
    assert p == Plan("c", rcc, (("b", rb),), ("a",), ("W",))
    assert reach("c", frozenset({"a"}), graph(rb, rcc), False, KNOWN) == \
        Unreachable("the parameters in force are unknown", "params")
    needs_lr = rule("b", ("a",), needs=("lr",))
    assert reach("b", frozenset({"a"}), graph(needs_lr), True, rc.Settings(2)) == \
        Unreachable("the learning rate is unknown", "lr")
    assert reach("b", frozenset({"a"}), graph(needs_lr), True, KNOWN) == Plan("b", needs_lr, (), ("a",), ())


def test_the_search_remembers_each_name_it_reached():
    calls = []
    rb = rule("b", ("a",))
    g = graph(rb, rule("c", ("b",)), rule("d", ("b",)))
    s = _Search(frozenset({"a"}), g, True, KNOWN)
    original = s.best

    def counting(name, candidates, visiting):
        calls.append(name)
        return original(name, candidates, visiting)

    s.best = counting  # type: ignore[method-assign]
    first = s.reach("b", frozenset())
    assert s.memo == {"b": first} and first == Plan("b", rb, (), ("a",), ())
    assert s.reach("b", frozenset({"x"})) is first
    assert calls == ["b"]
    s.reach("c", frozenset())
    s.reach("d", frozenset())
    assert calls == ["b", "c", "d"]


# ---------------------------------------------------------------- unreachable tensors and why

def test_an_input_nobody_gives_is_named_and_x_and_y_need_no_operation():
    out = plans({"c", "d"}, graph(rule("c", ("q",)), rule("d", ("y",))))
    assert out["c"] == Unreachable("q is not recorded and no operation gives it", "")
    assert out["d"] == Unreachable("y is not recorded", "")
    assert plans({"d"}, graph(rule("d", ("x",))))["d"] == Unreachable("x is not recorded", "")
    assert Unreachable("why").needs == ""


def test_a_reason_deeper_in_the_composition_is_prefixed_with_the_input_it_blocks():
    out = plans({"d"}, graph(rule("b", ("q",)), rule("c", ("b",)), rule("d", ("c",))))
    assert out["d"] == Unreachable("c is not recorded and b is not recorded and q is not recorded and no "
                                   "operation gives it", "")


def test_a_cycle_is_not_followed():
    out = plans({"d"}, graph(rule("b", ("c",)), rule("c", ("b",)), rule("d", ("c",))))
    assert out["d"] == Unreachable("c is not recorded and b is not recorded and c would be derived from itself",
                                   "")


def test_parameters_in_force_unknown():
    r = rule("c", ("a",), ("W",))
    assert plans({"a", "c"}, graph(r), params_known=False)["c"] == \
        Unreachable("the parameters in force are unknown", "params")
    # a chain through a rule that needs parameters is blocked the same way, naming the input
    out = plans({"a", "c"}, graph(rule("b", ("a",), ("W",)), rule("c", ("b",))), params_known=False)
    assert out["c"] == Unreachable("b is not recorded and the parameters in force are unknown", "params")
    # a rule without parameters needs none
    assert isinstance(plans({"a", "c"}, graph(rule("c", ("a",))), params_known=False)["c"], Plan)


@pytest.mark.parametrize("needs, settings, why, key", [
    (("activation",), rc.Settings(2), "the activation is unknown (not relu, shifted-relu or sigmoid)", "activation"),
    (("activation",), rc.Settings(2, "other"), "the activation is unknown (not relu, shifted-relu or sigmoid)",
     "activation"),
    (("reduction",), rc.Settings(2, "relu"), "the loss reduction is unknown", "reduction"),
    (("lr",), rc.Settings(2, "relu", "sum"), "the learning rate is unknown", "lr"),
    (("reduction", "lr"), rc.Settings(2), "the loss reduction is unknown; the learning rate is unknown",
     "reduction"),
    (("lr", "activation"), rc.Settings(2), "the learning rate is unknown; the activation is unknown (not relu, "
                                           "shifted-relu or sigmoid)", "lr"),
])
def test_a_rule_that_needs_an_unknown_setting_says_which(needs, settings, why, key):
    out = plans({"a", "c"}, graph(rule("c", ("a",), needs=needs)), settings=settings)
    assert out["c"] == Unreachable(why, key)
    assert SETTING_WHY[key] in why


def test_settings_are_checked_before_the_inputs_and_after_the_parameters():
    r = rule("c", ("q",), ("W",), needs=("lr",))
    assert plans({"c"}, graph(r), params_known=False, settings=rc.Settings(2))["c"].needs == "params"
    assert plans({"c"}, graph(r), params_known=True, settings=rc.Settings(2))["c"].needs == "lr"
    assert plans({"c"}, graph(r), params_known=True, settings=KNOWN)["c"].needs == ""


def test_when_nothing_reaches_a_tensor_the_direct_rules_reason_is_given():
    # the direct rule needs the parameters; the other candidate needs an input nobody gives
    blocked, direct = rule("c", ("q",)), rule("c", ("a",), ("W",))
    out = plans({"a", "c"}, graph(blocked, direct), params_known=False)
    assert out["c"] == Unreachable("the parameters in force are unknown", "params")
    # without a direct rule, the first candidate's reason
    out = plans({"a", "c"}, graph(blocked, rule("c", ("b",), ("W",)), rule("b", ("a",))), params_known=False)
    assert out["c"] == Unreachable("q is not recorded and no operation gives it", "")
    out = plans({"a", "c"}, graph(rule("c", ("b",), ("W",)), blocked, rule("b", ("a",))), params_known=False)
    assert out["c"] == Unreachable("the parameters in force are unknown", "params")


def test_a_blocked_direct_rule_gives_way_to_a_composition_that_works():
    direct, other = rule("c", ("a",), needs=("lr",)), rule("c", ("b",))
    rb = rule("b", ("a",))
    out = plans({"a", "c"}, graph(direct, other, rb), settings=rc.Settings(2))
    assert out["c"] == Plan("c", other, (("b", rb),), ("a",), ())


def test_every_reason_has_advice():
    assert set(SETTING_WHY) <= set(NEEDED)
    assert set(NEEDED) == {"params", "activation", "reduction", "lr", "layers", "canonical"}
    assert NEEDED["params"] == "pass the params file the run started from with --params"
    assert NEEDED["activation"] == "declare the activation (--scenario, or `activation` in the trace header)"
    assert NEEDED["reduction"] == "declare the loss reduction (--scenario, or `loss_reduction` in the trace header)"
    assert NEEDED["lr"] == "declare the learning rate (--scenario, or `learning_rate` in the trace header)"
    assert NEEDED["layers"] == "pass --params or --scenario, or declare `layers` in the trace header"
    assert NEEDED["canonical"] == "record it under its canonical name, or map it (docs/ports.md)"


# ---------------------------------------------------------------- Derivation

def test_derivation_computes_each_intermediate_once_in_float64_and_prefers_recorded_tensors():
    calls = []

    def fn_of(name, value):
        def fn(t, p):
            calls.append(name)
            return np.asarray(value, dtype=np.float32) + t["a"] + p["W"], None
        return fn

    rb, rd = rule("b", ("a",), fn=fn_of("b", 1.0)), rule("d", ("a",), fn=fn_of("d", 2.0))
    t = {"a": np.float32(0.5) * np.ones(2, np.float32), "d": np.array([7.0, 8.0])}
    d = Derivation(t, {"W": np.float32(0.25)})
    assert "b" not in d and len(d) == 2 and list(d) == ["a", "d"]
    plan = Plan("c", rule("c", ("b", "d")), (("b", rb), ("d", rd)), ("a",), ("W",))
    assert d.evaluate(plan) is d
    assert calls == ["b"]  # d is recorded: never derived
    assert d.derived["b"].dtype == np.float64
    np.testing.assert_array_equal(d["b"], [1.75, 1.75])
    np.testing.assert_array_equal(d["d"], [7.0, 8.0])
    assert "b" in d and "d" in d and "e" not in d
    assert list(d) == ["a", "d", "b"] and len(d) == 3
    d.evaluate(plan)
    assert calls == ["b"]
    with pytest.raises(KeyError):
        d["e"]


def test_derivation_counts_a_derived_name_that_is_also_recorded_once():
    d = Derivation({"a": np.zeros(1)}, {})
    d.derived["a"] = np.ones(1)
    d.derived["b"] = np.ones(1)
    assert list(d) == ["a", "b"] and len(d) == 2
    np.testing.assert_array_equal(d["a"], [0.0])


# ---------------------------------------------------------------- the real rules of a 2-layer network

def _net():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3))
    y = np.eye(2)[[0, 1, 1, 0]]
    p = {"L1.W": rng.standard_normal((3, 5)), "L1.b": rng.standard_normal(5),
         "L2.W": rng.standard_normal((5, 2)), "L2.b": rng.standard_normal(2)}
    z1 = x @ p["L1.W"] + p["L1.b"]
    a1 = np.maximum(z1, 0)
    z2 = a1 @ p["L2.W"] + p["L2.b"]
    e = np.exp(z2 - z2.max(axis=1, keepdims=True))
    probs = e / e.sum(axis=1, keepdims=True)
    dz2 = (probs - y) / 4
    dW2 = a1.T @ dz2
    da1 = dz2 @ p["L2.W"].T
    dz1 = da1 * (z1 > 0)
    dW1 = x.T @ dz1
    t = {"x": x, "y": y, "L1.z": z1, "L1.a": a1, "L2.z": z2, "probs": probs, "L2.dz": dz2, "L2.dW": dW2,
         "L1.da": da1, "L1.dz": dz1, "L1.dW": dW1, "L1.W": p["L1.W"] - 0.5 * dW1}
    return t, p


def test_a_port_without_backward_intermediates_checks_its_gradients_through_the_backward_pass():
    t, p = _net()
    kept = {n: t[n] for n in ("x", "y", "L1.z", "L1.a", "probs", "L2.dW", "L1.dW")}
    out = plan_step(frozenset(kept), rc.rules(KNOWN), True, KNOWN)
    assert sorted(out) == ["L1.a", "L1.dW", "L1.z", "L2.dW", "probs"]
    assert [out[n].direct for n in ("L1.z", "L1.a")] == [True, True]
    dW2 = out["L2.dW"]
    assert [n for n, _ in dW2.chain] == ["L2.dz"] and dW2.leaves == ("L1.a", "probs", "y")
    dW1 = out["L1.dW"]
    assert [n for n, _ in dW1.chain] == ["L2.dz", "L1.da", "L1.dz"]
    assert dW1.params == ("L2.W",)
    assert out["probs"].chain[0][0] == "L2.z" and out["probs"].params == ("L2.W", "L2.b")
    d = Derivation(kept, p)
    d.evaluate(dW1)
    for n in ("L2.dz", "L1.da", "L1.dz"):
        np.testing.assert_allclose(d[n], t[n], rtol=1e-12, atol=1e-15)
    value, _ = dW1.rule.fn(d, p)
    np.testing.assert_allclose(value, t["L1.dW"], rtol=1e-12, atol=1e-15)


def test_an_update_from_x_and_y_alone_derives_the_whole_pass_and_needs_every_setting():
    t, p = _net()
    kept = {n: t[n] for n in ("x", "y", "L1.W")}
    out = plan_step(frozenset(kept), rc.rules(KNOWN), True, KNOWN)
    upd = out["L1.W"]
    assert [n for n, _ in upd.chain] == ["L1.z", "L1.a", "L2.z", "probs", "L2.dz", "L1.da", "L1.dz", "L1.dW"]
    assert upd.leaves == ("x", "y") and set(upd.params) == {"L1.W", "L1.b", "L2.W", "L2.b"}
    d = Derivation(kept, p)
    d.evaluate(upd)
    np.testing.assert_allclose(upd.rule.fn(d, p)[0], t["L1.W"], rtol=1e-12, atol=1e-15)
    for missing, key in (("activation", "activation"), ("reduction", "reduction"), ("lr", "lr")):
        s = rc.Settings(2, **{k: v for k, v in (("activation", "relu"), ("reduction", "mean"), ("lr", 0.5))
                              if k != missing})
        assert plan_step(frozenset(kept), rc.rules(s), True, s)["L1.W"].needs == key
    assert plan_step(frozenset(kept), rc.rules(KNOWN), False, KNOWN)["L1.W"] == \
        Unreachable("the parameters in force are unknown", "params")

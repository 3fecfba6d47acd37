"""Every variant of docs/variants.md with where it must first show and the diagnosis it must get.

Shared by the check tests (one trace) and the diff tests (a trace against the correct run). Large
parameters (the scale) give large logits, so the underflow and overflow bugs bite at step 0.
"""

from memstate.runner.variants import Variant

# (variant, params scale, first wrong tensor, first diagnosis code)
VARIANTS = [
    (Variant(softmax_max="global"), 40, "probs", "softmax-global-max"),
    (Variant(softmax_max="none"), 40, "probs", "softmax-no-max"),
    (Variant(softmax_sum="global"), 1, "probs", "softmax-global-sum"),
    (Variant(softmax_sum="column"), 1, "probs", "softmax-column-sum"),
    (Variant(log="raw"), 40, "loss", "log-of-zero"),
    (Variant(log="eps"), 1, "loss", "log-epsilon"),
    (Variant(log="masked"), 40, "loss", "log-masked"),
    (Variant(round_params=8), 1, "L1.W", "precision-rounding"),
    (Variant(dtype_mix="L1"), 1, "L1.z", "dtype-float32"),
    (Variant(dtype_mix="L2"), 1, "L2.z", "dtype-float32"),
    (Variant(loss_reduction="sum"), 1, "loss", "reduction-mean-vs-sum"),
]


def variant_id(value: object) -> str | None:
    """A readable test id for a Variant parameter."""
    if isinstance(value, Variant):
        return "-".join(f"{k}={v}" for k, v in value.changes().items())
    return None


# Issue 11's mistakes: (variant, params scale, first wrong step, first wrong tensor, its diagnosis code).
# grads and momentum change nothing at step 0 (nothing to accumulate yet, v = 0 + g).
ISSUE11_VARIANTS = [
    (Variant(bias_grad_axis="scalar"), 1, 0, "L2.db", "bias-grad-scalar"),
    (Variant(class_reduction="mean"), 1, 0, "loss", "loss-mean-over-classes"),
    (Variant(output="sigmoid"), 1, 0, "probs", "output-sigmoid"),
    (Variant(log="replace"), 40, 0, "loss", "log-zero-replaced"),
    (Variant(round_loaded=8), 1, 0, "L1.z", "params-load-mismatch"),
    (Variant(grads="accumulate"), 1, 1, "L2.dW", "grad-not-zeroed"),
    (Variant(momentum=0.9), 1, 1, "L1.W", "momentum"),
    (Variant(weight_decay=0.01), 1, 0, "L1.W", "weight-decay"),
]

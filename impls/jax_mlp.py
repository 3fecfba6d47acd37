"""The JAX MLP: the reference implementation, gradients by automatic differentiation.

The other implementations derive their backward passes by hand; this one writes down only the forward
pass and the loss and lets `jax.value_and_grad` produce every gradient, so it checks their maths:

* dW, db: the gradient of the loss with respect to the parameters;
* dz, da: the gradient with respect to zero "probes" `eps_z[i]`, `eps_a[i]` added to every
  pre-activation z and every hidden activation a inside the loss function (adding a zero changes no
  value, and d loss / d eps is exactly d loss / d z, resp. d loss / d a).

One training step (forward, gradients, SGD update) is a single `jax.jit`-compiled function per network
spec (and, through jit's own cache, per batch shape): the forward intermediates come out of
`value_and_grad` as its auxiliary output (`has_aux=True`), and every recorded tensor leaves the device
in one flat buffer per step, recorded as computed.

Variants (docs/variants.md) are honoured as a JAX program written with that bug would behave: the
loss is differentiated as computed, so with `log = "safe"` a softmax bug shows only in `probs`, while
with `raw`, `eps` and `masked` the loss is computed from the buggy probabilities and the bug reaches
the gradients through it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from memstate.names import canonical_names
from memstate.runner.scenario import NetSpec
from memstate.runner.variants import LOG_EPSILON, LOG_ZERO_REPLACEMENT

# float64 scenarios need 64-bit JAX. The flag is global, so every float32 path below casts its inputs
# explicitly and uses only weakly typed Python scalars, which never promote a float32 array.
jax.config.update("jax_enable_x64", True)

NAME = "jax"
DTYPES = ("float64", "float32")
# Matmuls ask for full precision: on GPUs the default float32 precision may use TF32 (10-bit
# mantissa), which would make this reference disagree with every float32 implementation.
MATMUL_PRECISION = jax.lax.Precision.HIGHEST
META = {
    "computes_in": "the scenario's dtype (XLA, jit-compiled; gradients by jax.value_and_grad)",
    "jax_version": jax.__version__,
    "jax_backend": jax.default_backend(),
    "matmul_precision": "highest",
}

Record = Callable[[str, Any], None]
Params = tuple[tuple[jax.Array, jax.Array], ...]


def make(spec: NetSpec, params: dict[str, np.ndarray]) -> "JaxMLP":
    return JaxMLP(spec, params)


# ---------------------------------------------------------------- the maths


@jax.custom_jvp
def _shifted_relu(z: jax.Array) -> jax.Array:
    """max(z, -1), with derivative 1 where z > -1 and 0 elsewhere (like jax.nn.relu at 0)."""
    return jnp.maximum(z, -1)


@_shifted_relu.defjvp
def _shifted_relu_jvp(primals: tuple[jax.Array], tangents: tuple[jax.Array]) -> tuple[jax.Array, jax.Array]:
    (z,), (dz,) = primals, tangents
    return _shifted_relu(z), jnp.where(z > -1, dz, jnp.zeros_like(dz))


def _activate(activation: str, z: jax.Array) -> jax.Array:
    if activation == "relu":
        return jax.nn.relu(z)  # gradient 0 at z == 0 (jnp.maximum alone would split it 0.5/0.5)
    if activation == "shifted-relu":
        return _shifted_relu(z)
    return jax.nn.sigmoid(z)


def _dense(spec: NetSpec, i: int, a: jax.Array, W: jax.Array, b: jax.Array) -> jax.Array:
    mix = spec.variant.dtype_mix
    if mix is not None and int(mix[1:]) == i + 1:
        # dtype_mix: this layer's forward pass in float32 inside a float64 run. Autodiff differentiates
        # through the casts, so this layer's backward products are float32 too.
        f32 = jnp.float32
        z32 = jnp.matmul(a.astype(f32), W.astype(f32), precision=MATMUL_PRECISION) + b.astype(f32)
        return z32.astype(a.dtype)
    return jnp.matmul(a, W, precision=MATMUL_PRECISION) + b


def _forward(spec: NetSpec, params: Params, x: jax.Array, eps_z: Any = None, eps_a: Any = None
             ) -> tuple[list[jax.Array], list[jax.Array]]:
    """Pre-activations z (all layers) and activations a (hidden layers), with the zero probes added."""
    zs: list[jax.Array] = []
    acts: list[jax.Array] = []
    a = x
    last = len(params) - 1
    for i, (W, b) in enumerate(params):
        z = _dense(spec, i, a, W, b)
        if eps_z is not None:
            z = z + eps_z[i]
        zs.append(z)
        if i < last:
            a = _activate(spec.activation, z)
            if eps_a is not None:
                a = a + eps_a[i]
            acts.append(a)
    return zs, acts


def _softmax(spec: NetSpec, z: jax.Array) -> jax.Array:
    """Softmax over each row, or one of the variant's faulty versions of it."""
    v = spec.variant
    if v.output == "sigmoid":
        return jax.nn.sigmoid(z)  # a sigmoid output layer: no normalisation over the row
    if v.softmax_max == "row":
        shifted = z - jnp.max(z, axis=1, keepdims=True)
    elif v.softmax_max == "global":
        shifted = z - jnp.max(z)  # the whole batch's max: rows far below it underflow to all zeros
    else:
        shifted = z
    e = jnp.exp(shifted)
    if v.softmax_sum == "row":
        return e / jnp.sum(e, axis=1, keepdims=True)
    if v.softmax_sum == "global":
        return e / jnp.sum(e)
    return e / jnp.sum(e, axis=0, keepdims=True)


def _log_probs(spec: NetSpec, z: jax.Array, probs: jax.Array) -> jax.Array:
    """log p per class: from the logits (safe) or from the (possibly faulty) probabilities."""
    log = spec.variant.log
    if log == "safe":
        return jax.nn.log_softmax(z, axis=1)
    if log == "raw":
        return jnp.log(probs)  # log(0) = -inf, and 0 * -inf = nan in the loss
    if log == "eps":
        return jnp.log(probs + LOG_EPSILON)  # weak Python float: stays float32 in a float32 run
    if log == "replace":  # log(0) swapped for log(1e-12): a constant there (no gradient through it)
        zero = probs == 0
        return jnp.where(zero, jnp.log(jnp.asarray(LOG_ZERO_REPLACEMENT, probs.dtype)),
                         jnp.log(jnp.where(zero, 1, probs)))
    # masked: numpy's np.ma.log masks p <= 0 and every non-finite result (nan, inf), and the masked
    # terms drop out of the sum, i.e. contribute 0. The inner where keeps log() away from the masked
    # entries (double-where trick), otherwise the gradient would be 0 * (1/0) = nan there.
    ok = (probs > 0) & jnp.isfinite(probs)
    return jnp.where(ok, jnp.log(jnp.where(ok, probs, 1)), 0)


def _loss_and_aux(spec: NetSpec, params: Params, eps_z: list[jax.Array], eps_a: list[jax.Array],
                  x: jax.Array, y: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
    zs, acts = _forward(spec, params, x, eps_z, eps_a)
    probs = _softmax(spec, zs[-1])
    if spec.variant.output == "sigmoid":  # binary cross-entropy; terms with a zero coefficient dropped
        pos = jnp.where(y != 0, y * jnp.log(jnp.where(y != 0, probs, 1)), 0)
        neg = jnp.where(y != 1, (1 - y) * jnp.log(jnp.where(y != 1, 1 - probs, 1)), 0)
        per_sample = -jnp.sum(pos + neg, axis=1)
    else:
        per_sample = -jnp.sum(y * _log_probs(spec, zs[-1], probs), axis=1)
    loss = jnp.mean(per_sample) if spec.loss_reduction == "mean" else jnp.sum(per_sample)
    if spec.variant.class_reduction == "mean":  # averaged over the classes too
        loss = loss / y.shape[1]
    return loss, {"z": zs, "a": acts, "probs": probs}


class _Compiled:
    """The jit-compiled training step and forward pass for one spec (jit caches per batch shape).

    The step returns the updated parameters (they stay on the device for the next step) and every
    recorded tensor raveled into one flat buffer in canonical record order: fetching one array per
    step instead of one per tensor more than halves the time a small step takes.
    """

    def __init__(self, spec: NetSpec):
        self.spec = spec
        self.names = canonical_names(spec.n_layers)
        self.step = jax.jit(self._flat_step)
        self.logits = jax.jit(self._logits)
        self._layouts: dict[tuple[int, ...], list[tuple[str, tuple[int, ...], int, int]]] = {}

    def _tensors(self, params: Params, x: jax.Array, labels: jax.Array, lr: jax.Array,
                 round_scale: jax.Array, state: tuple) -> tuple[Params, tuple, dict[str, jax.Array]]:
        spec, dtype = self.spec, jnp.dtype(self.spec.dtype)
        n = spec.n_layers
        x = x.astype(dtype)
        y = jax.nn.one_hot(labels, spec.layers[-1], dtype=dtype)
        batch = x.shape[0]
        eps_z = [jnp.zeros((batch, width), dtype) for width in spec.layers[1:]]
        eps_a = [jnp.zeros((batch, width), dtype) for width in spec.layers[1:-1]]
        (loss, aux), (dparams, dz, da) = _grad_fn(spec)(params, eps_z, eps_a, x, y)
        dW = [g[0] for g in dparams]
        db = [g[1] for g in dparams]
        if spec.variant.bias_grad_axis == "features":
            # Autodiff has no way to produce this bug: the gradient of `z = a @ W + b` w.r.t. b is the
            # batch sum of dz by construction. The variant is emulated instead, faithfully to what the
            # buggy hand-written code does: sum dz over the feature axis, in every layer whose width
            # equals the batch size (only there do the shapes allow it), and use that in the update.
            for i, width in enumerate(spec.layers[1:]):
                if width == batch:
                    db[i] = jnp.sum(dz[i], axis=1)
        v = spec.variant
        if v.bias_grad_axis == "scalar":  # emulated likewise: np.sum(dz), one number for every bias
            db = [jnp.full_like(g, jnp.sum(d)) for g, d in zip(db, dz)]
        acc, vel = state
        if v.grads == "accumulate":  # never zeroed: the previous step's gradients are added
            dW = [g + p for g, (p, _) in zip(dW, acc)]
            db = [g + p for g, (_, p) in zip(db, acc)]
            acc = tuple(zip(dW, db))
        steps = list(zip(dW, db))
        if v.momentum is not None:  # the optimizer's velocity, v = mu * v + g
            vel = tuple((v.momentum * a + gW, v.momentum * c + gb) for (a, c), (gW, gb) in zip(vel, steps))
            steps = list(vel)
        new_params = []
        for (W, b), (gW, gb) in zip(params, steps):
            if v.weight_decay is not None:  # weight decay on the weights
                gW = gW + v.weight_decay * W
            W, b = W - lr * gW, b - lr * gb
            if spec.variant.round_params is not None:
                W, b = _round_to_decimals(W, round_scale), _round_to_decimals(b, round_scale)
            new_params.append((W, b))
        t: dict[str, jax.Array] = {"x": x, "y": y, "probs": aux["probs"], "loss": loss}
        for i in range(n):
            L = f"L{i + 1}"
            t[f"{L}.z"], t[f"{L}.dz"], t[f"{L}.dW"], t[f"{L}.db"] = aux["z"][i], dz[i], dW[i], db[i]
            t[f"{L}.W"], t[f"{L}.b"] = new_params[i]
            if i < n - 1:
                t[f"{L}.a"], t[f"{L}.da"] = aux["a"][i], da[i]
        return tuple(new_params), (acc, vel), t

    def _flat_step(self, *args: Any) -> tuple[Params, tuple, jax.Array]:
        new_params, state, t = self._tensors(*args)
        return new_params, state, jnp.concatenate([jnp.ravel(t[name]) for name in self.names])

    def layout(self, *args: Any) -> list[tuple[str, tuple[int, ...], int, int]]:
        """(name, shape, start, stop) of every record in the flat buffer, for these argument shapes."""
        key = tuple(np.shape(args[1]))
        if key not in self._layouts:
            _, _, shapes = jax.eval_shape(self._tensors, *args)
            layout, start = [], 0
            for name in self.names:
                shape = tuple(shapes[name].shape)
                stop = start + int(np.prod(shape, dtype=np.int64))
                layout.append((name, shape, start, stop))
                start = stop
            self._layouts[key] = layout
        return self._layouts[key]

    def _logits(self, params: Params, x: jax.Array) -> jax.Array:
        zs, _ = _forward(self.spec, params, x.astype(jnp.dtype(self.spec.dtype)))
        return zs[-1]


@lru_cache(maxsize=32)
def _grad_fn(spec: NetSpec) -> Callable[..., Any]:
    """d loss / d (params, eps_z, eps_a), with the forward intermediates as auxiliary output."""
    return jax.value_and_grad(
        lambda params, eps_z, eps_a, x, y: _loss_and_aux(spec, params, eps_z, eps_a, x, y),
        argnums=(0, 1, 2),
        has_aux=True,
    )


def _round_to_decimals(p: jax.Array, scale: jax.Array) -> jax.Array:
    """round_params: rint(p * 10^N) / 10^N, like np.round and JavaScript's toFixed(N).

    Not jnp.round(p, N): XLA rewrites its division by the constant 10^N into a multiplication by the
    inexact 10^-N, which misses the double nearest to the N-decimal number by an ulp in ~13% of the
    entries. Passing 10^N as a runtime argument (`scale`) keeps the correctly rounded division.
    """
    return jnp.round(p * scale) / scale


@lru_cache(maxsize=32)
def _compiled(spec: NetSpec) -> _Compiled:
    return _Compiled(spec)


# ---------------------------------------------------------------- the network object


class JaxMLP:
    """A dense ReLU/sigmoid/shifted-ReLU network trained by plain SGD, differentiated by JAX."""

    def __init__(self, spec: NetSpec, params: dict[str, np.ndarray]):
        self.spec = spec
        self.dtype = np.dtype(spec.dtype)
        self._compiled = _compiled(spec)
        digits = spec.variant.round_params
        self._round_scale = np.asarray(10.0 ** (digits or 0), dtype=self.dtype)
        self.set_params(params)

    # -- state
    def set_params(self, params: dict[str, Any]) -> None:
        n = self.spec.n_layers
        digits = self.spec.variant.round_loaded  # a rounded params file
        load = (lambda v: np.round(v, digits)) if digits is not None else (lambda v: v)
        self._params: Params = tuple(
            (jnp.asarray(load(np.asarray(params[f"L{i}.W"], dtype=self.dtype))),
             jnp.asarray(load(np.asarray(params[f"L{i}.b"], dtype=self.dtype))))
            for i in range(1, n + 1)
        )
        zeros = tuple((jnp.zeros_like(W), jnp.zeros_like(b)) for W, b in self._params)
        self._state = (zeros, zeros)  # (gradients never zeroed, momentum's velocity): zero at the start

    def params(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for i, (W, b) in enumerate(jax.device_get(self._params), start=1):
            out[f"L{i}.W"], out[f"L{i}.b"] = np.array(W), np.array(b)
        return out

    # -- the interface
    def logits(self, x: Any) -> np.ndarray:
        return np.asarray(self._compiled.logits(self._params, np.asarray(x, dtype=self.dtype)))

    def train_step(self, x: Any, labels: Any, lr: float, record: Record) -> float:
        """One SGD step on a batch; records every canonical tensor in dataflow order."""
        x = np.asarray(x, dtype=self.dtype)
        labels = np.asarray(labels, dtype=np.int64)
        batch = x.shape[0]
        self.spec.check_batch(batch)
        args = (self._params, x, labels, np.asarray(lr, dtype=self.dtype), self._round_scale, self._state)
        self._params, self._state, flat = self._compiled.step(*args)
        buf = np.array(flat)  # one transfer; a writable copy, so records never alias device memory
        loss = float("nan")
        for name, shape, start, stop in self._compiled.layout(*args):
            value = buf[start:stop].reshape(shape)
            if name == "loss":
                loss = float(value)
            record(name, value)
        return loss

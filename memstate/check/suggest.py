"""`memstate map --suggest`: find where a foreign port keeps each canonical tensor, from the numbers.

Given step 0 of a port's trace (its own names and layout) and the params file it started from, each
canonical tensor is looked for among the port's tensors in every orientation a port might use (as is,
transposed, [n, 1] columns, a bias folded into W as a first or last row/column, inputs with a ones column), and
with a batch-size factor (B or 1/B) for gradients. What decides is a numeric relation, checked in float64:

* x: the candidate that, through the params file's L1.W and L1.b, reproduces another port tensor (z or a);
* y: one-hot rows;
* the updated parameters (matched last): exactly the params file minus lr times their gradient, else the
  candidate nearest the params file's (one step of training moves them little);
* every other tensor: recomputed from the port's own already-matched tensors (z = a_prev @ W + b, a = act(z),
  probs = softmax(z), dz = (probs - y)/R, dW = a_prev^T dz, ...), so that one wrong operation (a planted bug)
  spoils only its own match, not the ones after it.

A tensor no relation confirms is matched by shape and name when that is unambiguous (and said so), else left
unmatched. The activation and loss reduction, when not given, are those that explain the most tensors with
the fewest batch-size factors. Pure: numpy arrays in, a frozen `Suggestion` out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from memstate.formats.map import Entry, LayoutMap, parse_index
from memstate.impls import numpy_mlp as ref

ACTIVATIONS = ("relu", "sigmoid", "shifted-relu")
REDUCTIONS = ("mean", "sum")
RTOL = {"float64": 1e-6, "float32": 1e-3}  # a match: |port - recomputed| <= RTOL * max|recomputed| (+ a tiny atol)
PARAM_STEP = 0.5  # updated parameters lie within this relative distance of the params file's
# (port index, complement index) for a bias folded into a weight tensor, in the port's own axes
FOLDS = (("1:, :", "0, :"), (":-1, :", "-1, :"), (":, 1:", ":, 0"), (":, :-1", ":, -1"))


@dataclass(frozen=True)
class View:
    """A port tensor after `index` and `transpose`, in float64."""

    source: str
    index: str | None
    transpose: bool
    array: np.ndarray = field(compare=False)

    def text(self) -> str:
        """`W1[1:, :].T`: the port tensor, index and transpose, for the report."""
        return self.source + (f"[{self.index}]" if self.index else "") + (".T" if self.transpose else "")


@dataclass(frozen=True)
class Match:
    """One canonical tensor found: where, with what factor, and the evidence."""

    name: str
    view: View
    scale: str | None  # None, "B" or "1/B"
    evidence: str
    numeric: bool  # confirmed by a numeric relation (else by shape and name only)


@dataclass(frozen=True)
class Suggestion:
    """The matches, the port tensors left over, and the settings that explained them best."""

    matches: tuple[Match, ...]
    unmatched: tuple[str, ...]
    absent: tuple[str, ...]  # canonical names no port tensor was found for
    batch: str
    weights: str
    activation: str
    reduction: str
    learning_rate: float | None

    def layout_map(self, source: str = "suggested map") -> LayoutMap:
        """The map: the layout defaults from x and L1.W, an entry per match, the rest in `ignore`."""
        entries = []
        for m in self.matches:
            default = _default_transpose(m.name, self.batch, self.weights)
            transpose = None if m.view.transpose == default or m.view.array.ndim < 2 else m.view.transpose
            index = parse_index(m.view.index) if m.view.index else None
            entries.append(Entry(m.name, m.view.source, index, m.view.index, transpose, m.scale))
        return LayoutMap(self.batch, self.weights, tuple(entries), self.unmatched, source)

    def to_toml(self, trace: str = "the trace") -> str:
        """The map as a TOML file, with the settings found, what was left out, and each match's evidence."""
        head = (f"# suggested by memstate map --suggest for {trace}: {self.activation}, {self.reduction} loss"
                + (f", learning rate {self.learning_rate:.6g}" if self.learning_rate is not None else "")
                + "\n# every entry says how it was matched; check the ones matched by shape and name only.\n")
        if self.unmatched:
            head += f"# not matched (ignored): {', '.join(self.unmatched)}\n"
        if self.absent:
            head += f"# not recorded by the port: {', '.join(self.absent)}\n"
        return head + "\n" + self.layout_map().to_toml({m.name: m.evidence for m in self.matches})

    def report(self) -> str:
        """Each match with its evidence, then what was not matched and what the port does not record."""
        lines = [f"layout: batch = {self.batch}, weights = {self.weights}; {self.activation}, {self.reduction} loss"
                 + (f", learning rate {self.learning_rate:.6g}" if self.learning_rate is not None else "")]
        width = max((len(m.name) for m in self.matches), default=4)
        for m in self.matches:
            scale = f" (scale {m.scale})" if m.scale else ""
            lines.append(f"  {m.name:<{width}} <- {m.view.text()}{scale}: {m.evidence}")
        if self.unmatched:
            lines.append(f"not matched (written to ignore; map them by hand if they matter): "
                         f"{', '.join(self.unmatched)}")
        if self.absent:
            lines.append(f"not recorded by the port (absent from the canonical trace): {', '.join(self.absent)}")
        return "\n".join(lines)


def _default_transpose(name: str, batch: str, weights: str) -> bool:
    if re.match(r"^L\d+\.(W|dW)$", name):
        return weights == "out,in"
    if re.match(r"^L\d+\.(b|db)$", name) or name == "loss":
        return False
    return batch == "columns"


# ---------------------------------------------------------------- numeric helpers

def fits(shape: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    """Whether a tensor of `shape` becomes `expected` by the map's reshape rule (only length-1 axes differ)."""
    return tuple(shape) == tuple(expected) or [d for d in shape if d != 1] == [d for d in expected if d != 1]


def _close(v: np.ndarray, e: np.ndarray, rtol: float = RTOL["float64"]) -> bool:
    with np.errstate(all="ignore"):
        finite = np.isfinite(e)
        scale = float(np.max(np.abs(e[finite]))) if finite.any() else 0.0
        same_bad = np.array_equal(np.isnan(v), np.isnan(e)) and np.array_equal(np.isinf(v) & ~finite, ~finite)
        if not same_bad:
            return False
        ok = finite & np.isfinite(v)
        return bool(np.all(np.abs(v[ok] - e[ok]) <= rtol * scale + 1e-14) and (v[~finite] == e[~finite]).all())


def _rel(v: np.ndarray, e: np.ndarray) -> float:
    with np.errstate(all="ignore"):
        d = float(np.nanmax(np.abs(v - e))) if v.size else 0.0
        s = float(np.nanmax(np.abs(e))) if e.size else 0.0
    return d / s if s > 0 else d


def _one_hot(a: np.ndarray) -> bool:
    return a.ndim == 2 and a.size > 0 and bool(np.isin(a, (0.0, 1.0)).all()) and bool((a.sum(axis=1) == 1).all())


#: words a port's name may use for each kind of layer tensor (after "d", "grad" and "delta" are taken off)
_KIND_WORDS = {"z": ("z", "logit", "pre", "out"), "a": ("a", "h", "act", "hidden"), "W": ("w", "weight"),
               "b": ("b", "bias")}
_ALIASES = {"x": ("x", "input", "inputs", "x1", "data"), "y": ("y", "target", "targets", "labels", "t"),
            "probs": ("p", "softmax", "probs", "prob", "yhat", "output"), "loss": ("loss", "cost", "l")}


def _name_score(source: str, name: str) -> int:
    """A tie-break only: how much the port's name looks like the canonical one (0..3)."""
    s = re.sub(r"[^a-z0-9]", "", source.lower())
    if s == re.sub(r"[^a-z0-9]", "", name.lower()):
        return 3
    m = re.match(r"^L(\d+)\.(d?)(\w+)$", name)
    if not m:
        words = _ALIASES.get(name, ())
        return 2 if s in words else 1 if any(w in s for w in words[:2]) else 0
    layer, d, kind = m.groups()
    grad = s.startswith("d") or "grad" in s or "delta" in s
    if grad != bool(d):
        return 0
    rest = re.sub(r"grad|delta", "", s[1:] if s.startswith("d") else s)
    hit = any(w in rest for w in _KIND_WORDS[kind]) or (kind == "z" and "delta" in s)
    return 1 + (layer in s) if hit else 0


# ---------------------------------------------------------------- the search

class _State:
    """What one hypothesis has matched: claimed port tensors (whole, or by index) and canonical values."""

    def __init__(self, tensors: Mapping[str, np.ndarray], rtol: float = RTOL["float64"]):
        self.t = tensors
        self.rtol = rtol  # how close a recomputation must come: the port's dtype's rounding
        self.whole: set[str] = set()
        self.parts: dict[str, set[str]] = {}
        self.matches: dict[str, Match] = {}
        self.values: dict[str, np.ndarray] = {}  # canonical values: the port's when matched, else recomputed
        self.batch_t = False  # x is stored transposed (samples as columns)
        self.weight_t = False  # weights are stored [out, in]

    def copy(self) -> _State:
        """An independent copy, for trying one more hypothesis (activation, reduction) from here."""
        other = _State(self.t, self.rtol)
        other.whole, other.parts = set(self.whole), {k: set(v) for k, v in self.parts.items()}
        other.matches, other.values = dict(self.matches), dict(self.values)
        other.batch_t, other.weight_t = self.batch_t, self.weight_t
        return other

    def claim(self, m: Match, value: np.ndarray) -> None:
        """Record a match: its port tensor (or that part of it) is taken, its canonical value known."""
        if m.view.index is None:
            self.whole.add(m.view.source)
        else:
            self.parts.setdefault(m.view.source, set()).add(m.view.index)
        self.matches[m.name] = m
        self.values[m.name] = value

    def whole_views(self) -> list[View]:
        """Every untouched port tensor, as recorded and (2-d) transposed."""
        out = []
        for src, a in self.t.items():
            if src in self.whole or src in self.parts:
                continue
            out.append(View(src, None, False, a))
            if a.ndim == 2:
                out.append(View(src, None, True, a.T))
        return out

    def fold_views(self) -> list[tuple[View, str]]:
        """Weight parts of tensors that may hold a folded bias, each with the index of the bias part."""
        out = []
        for src, a in self.t.items():
            if src in self.whole or a.ndim != 2:
                continue
            for idx, comp in FOLDS:
                if idx in self.parts.get(src, ()) or comp in self.parts.get(src, ()):
                    continue
                part = a[parse_index(idx)]
                if part.size:
                    out += [(View(src, idx, False, part), comp), (View(src, idx, True, part.T), comp)]
        return out

    def ones_views(self) -> list[View]:
        """Batch tensors with a column (or row) of ones added in front or at the end, without it."""
        out = []
        for src, a in self.t.items():
            if src in self.whole or a.ndim != 2:
                continue
            for idx, ones, t in ((":, 1:", ":, 0", False), (":, :-1", ":, -1", False), ("1:, :", "0, :", True),
                                 (":-1, :", "-1, :", True)):
                if idx not in self.parts.get(src, ()) and np.all(a[parse_index(ones)] == 1):
                    part = a[parse_index(idx)]
                    out.append(View(src, idx, t, part.T if t else part))
        return out


def _scaled(a: np.ndarray, scale: str | None, batch: int) -> np.ndarray:
    return a if scale is None else a * batch if scale == "B" else a / batch


def _order(views: list[View], name: str, transposed: bool | None) -> list[View]:
    """Whole tensors first, then the expected orientation, then the name most like the canonical one."""
    return sorted(views, key=lambda v: (v.index is not None, transposed is not None and v.array.ndim == 2
                                        and v.transpose != transposed, -_name_score(v.source, name)))


def _find(st: _State, name: str, expected: np.ndarray, views: list[View], evidence: str, *,
          transposed: bool | None = None, scales: tuple[str | None, ...] = (None,), batch: int = 1,
          fallback: bool = False) -> Match | None:
    """Match `name` to the first view equal to `expected` (up to a scale); else, by shape and name alone."""
    fitting = [v for v in _order(views, name, transposed) if fits(v.array.shape, expected.shape)]
    for v in fitting:
        arr = v.array.reshape(expected.shape)
        for sc in scales:
            val = _scaled(arr, sc, batch)
            if _close(val, expected, st.rtol):
                why = evidence + (f" after {'dividing by' if sc == '1/B' else 'multiplying by'} B = {batch}"
                                  if sc else "")
                m = Match(name, v, sc, why, True)
                st.claim(m, val)
                return m
    if not fallback:
        return None
    pick = _by_name(st, name, [v for v in fitting if transposed is None or v.array.ndim < 2 or v.transpose == transposed])
    if pick is None:
        return None
    v, arr = pick, pick.array.reshape(expected.shape)
    m = Match(name, v, None, f"by shape and name only: differs from {evidence.removeprefix('= ')} "
              f"(max rel error {_rel(arr, expected):.2g}): a bug there, or a layout this could not tell", False)
    st.claim(m, arr)
    return m


def _find_x(st: _State, P: Mapping[str, np.ndarray], acts: tuple[str, ...]) -> Match:
    """x: the candidate through which L1.W and L1.b reproduce the most port tensors (z or a of layer 1)."""
    from memstate.errors import MemstateError

    W, b = P["L1.W"], P["L1.b"]
    n0 = W.shape[0]
    cands = [v for v in st.whole_views() + st.ones_views()
             if v.array.ndim == 2 and v.array.shape[1] == n0 and not _one_hot(v.array)]
    if not cands:
        raise MemstateError(f"no port tensor has {n0} columns or rows (L1.W's fan-in in the params file): cannot "
                            "find x; is this the params file the port started from?")
    best, best_score, best_what = cands[0], -1, ""
    for v in _order(cands, "x", None):
        with np.errstate(all="ignore"):
            z = v.array @ W + b
            outs = {"L1.z": z, **{f"{act}(L1.z)": ref.activate(act, z) for act in acts}}
        hits = [f"{what} = {o.text()}" for what, e in outs.items() for o in st.whole_views()
                if o.source != v.source and o.array.shape == e.shape and _close(o.array, e, st.rtol)]
        if len(hits) > best_score:
            best, best_score, best_what = v, len(hits), ", ".join(hits)
    evidence = (f"through the params file's L1.W and L1.b it gives {best_what}" if best_score > 0 else
                f"the only tensor of width {n0} = L1.W's fan-in (nothing recorded downstream confirms it)")
    m = Match("x", best, None, evidence, best_score > 0)
    st.claim(m, best.array)
    st.batch_t = best.transpose
    return m


def _find_y(st: _State, batch: int, classes: int) -> None:
    views = [v for v in st.whole_views() if v.array.shape == (batch, classes) and _one_hot(v.array)]
    views = _order(views, "y", st.batch_t)
    if views:
        st.claim(Match("y", views[0], None, f"one-hot rows, {classes} classes", True), views[0].array)


def _find_params(st: _State, P: Mapping[str, np.ndarray], n_layers: int, lr: float | None) -> None:
    """The updated parameters: first those that are exactly the params file minus lr times their gradient (lr
    given, or fitted per candidate); then, for the rest, the candidates nearest the params file's, nearest first
    (one step of training moves parameters little). Weights before biases: a folded weight says where its bias is."""
    for kind in ("W", "b"):
        names = [f"L{i}.{kind}" for i in range(1, n_layers + 1)]
        for name in names:
            _exact_param(st, P, name, lr)
        near = []
        for name in names:
            if name in st.matches:
                continue
            views, _ = _views_for(st, name)
            near += [(_rel(v.array.reshape(P[name].shape), P[name]), k, name, v) for k, v in enumerate(views)
                     if fits(v.array.shape, P[name].shape)]
        for d, _, name, v in sorted(near, key=lambda t: (t[0], t[1])):
            if d >= PARAM_STEP or name in st.matches or not _free(st, v):
                continue
            folded = " (the bias folded into the weight's tensor)" if kind == "b" and v.index else ""
            st.claim(Match(name, v, None, f"within {d:.2g} (relative) of the params file's {name}{folded}", True),
                     v.array.reshape(P[name].shape))
    w = next((st.matches[n] for n in (f"L{i}.{k}" for i in range(1, n_layers + 1) for k in ("W", "dW"))
              if n in st.matches), None)
    if w is not None:
        st.weight_t = w.view.transpose


def _free(st: _State, v: View) -> bool:
    """Whether nothing claimed so far overlaps the view (a whole tensor, or the same part of one)."""
    if v.source in st.whole:
        return False
    return v.source not in st.parts if v.index is None else v.index not in st.parts[v.source] \
        if v.source in st.parts else True


def _exact_param(st: _State, P: Mapping[str, np.ndarray], name: str, lr: float | None) -> None:
    grad = st.values.get(name.replace(".", ".d"))
    if grad is None:
        return
    p0 = P[name]
    views, t = _views_for(st, name)
    if lr is not None:
        with np.errstate(all="ignore"):
            expected = p0 - lr * grad
        _find(st, name, expected, views, f"= params file - {lr:.6g} * {name.replace('.', '.d')}", transposed=t)
        return
    gg = float(np.sum(grad * grad))
    for v in _order(views, name, t):
        if not fits(v.array.shape, p0.shape) or not gg > 0:
            continue
        arr = v.array.reshape(p0.shape)
        with np.errstate(all="ignore"):
            fit = float(np.sum((p0 - arr) * grad)) / gg
            if fit > 0 and np.isfinite(fit) and _close(arr, p0 - fit * grad, st.rtol):
                st.claim(Match(name, v, None, f"= params file - {fit:.6g} * {name.replace('.', '.d')} (learning "
                               "rate fitted)", True), arr)
                return


def _forward(st: _State, P: Mapping[str, np.ndarray], n_layers: int, act: str, red: str) -> None:
    batch = st.values["x"].shape[0]
    for i in range(1, n_layers + 1):
        prev = "x" if i == 1 else f"L{i - 1}.a"
        with np.errstate(all="ignore"):
            z = st.values[prev] @ P[f"L{i}.W"] + P[f"L{i}.b"]
        views = st.whole_views() + st.ones_views()
        _find(st, f"L{i}.z", z, views, f"= {prev} @ L{i}.W + L{i}.b (params file)", transposed=st.batch_t)
        st.values.setdefault(f"L{i}.z", z)
        if i < n_layers:
            with np.errstate(all="ignore"):
                a = ref.activate(act, st.values[f"L{i}.z"])
            _find(st, f"L{i}.a", a, st.whole_views() + st.ones_views(), f"= {act}(L{i}.z)", transposed=st.batch_t)
            st.values.setdefault(f"L{i}.a", a)
    zl = st.values[f"L{n_layers}.z"]
    with np.errstate(all="ignore"):
        probs = ref.softmax(zl)
    if _find(st, "probs", probs, st.whole_views(), f"= softmax(L{n_layers}.z)", transposed=st.batch_t,
             fallback=False) is None:
        _find_probs_loosely(st, probs, n_layers)
    st.values.setdefault("probs", probs)
    if "y" in st.values:
        p, y = st.values["probs"], st.values["y"]
        with np.errstate(all="ignore"):
            loss = np.asarray(-np.sum(np.where(y != 0, y * np.log(p), 0.0)) / (batch if red == "mean" else 1))
        _find(st, "loss", loss, st.whole_views(), f"= {red} cross-entropy of probs against y")
        st.values.setdefault("loss", loss)


def _row_constant(shift: np.ndarray, underflow: np.ndarray, atol: float) -> bool:
    """Whether `shift` is constant along each row, leaving out entries whose probability underflowed to 0."""
    ok = np.isfinite(shift)
    if not np.all(ok | underflow) or not np.all(ok.any(axis=1)):
        return False
    ref_col = np.where(ok, shift, np.inf).min(axis=1, keepdims=True)
    return bool(np.all(np.abs(np.where(ok, shift, ref_col) - ref_col) <= atol))


def _find_probs_loosely(st: _State, probs: np.ndarray, n_layers: int) -> None:
    """probs that a wrong output function computed from L{n}.z: exp(z) normalised per row in some other way
    (log probs - z constant along each row), or a sigmoid of z. Matched, so that the gradients after it are
    recomputed from the port's own probs; the evidence says it is not the softmax."""
    z = st.values[f"L{n_layers}.z"]
    views = [v for v in _order(st.whole_views(), "probs", st.batch_t) if v.array.shape == probs.shape
             and not _one_hot(v.array) and np.all((v.array >= 0) & (v.array <= 1) | np.isnan(v.array))]
    for v in views:
        with np.errstate(all="ignore"):
            shift = np.log(v.array) - z
            sigmoid = ref.activate("sigmoid", z)
        if _row_constant(shift, v.array == 0, st.rtol * (1 + float(np.nanmax(np.abs(z))))):
            why = f"exp(L{n_layers}.z) normalised per row (log differs from L{n_layers}.z by a constant per row)"
        elif _close(v.array, sigmoid, st.rtol):
            why = f"sigmoid(L{n_layers}.z)"
        else:
            continue
        st.claim(Match("probs", v, None, f"{why}, but not softmax(L{n_layers}.z) (max rel error "
                       f"{_rel(v.array, probs):.2g}): a wrong output function?", True), v.array)
        return


def _backward(st: _State, P: Mapping[str, np.ndarray], n_layers: int, act: str, red: str) -> None:
    if "y" not in st.values:
        return
    batch = st.values["x"].shape[0]
    scales = (None, "1/B", "B")
    with np.errstate(all="ignore"):
        dz = (st.values["probs"] - st.values["y"]) / (batch if red == "mean" else 1)
    why = f"= (probs - y){' / B' if red == 'mean' else ''}"
    for i in range(n_layers, 0, -1):
        if i < n_layers:
            with np.errstate(all="ignore"):
                da = st.values[f"L{i + 1}.dz"] @ P[f"L{i + 1}.W"].T
            _find(st, f"L{i}.da", da, st.whole_views(), f"= L{i + 1}.dz @ L{i + 1}.W^T", transposed=st.batch_t,
                  scales=scales, batch=batch)
            st.values.setdefault(f"L{i}.da", da)
            z = st.values[f"L{i}.z"]
            with np.errstate(all="ignore"):
                dz = st.values[f"L{i}.da"] * ref.activation_grad(act, z, ref.activate(act, z))
            why = f"= L{i}.da * {act}'(L{i}.z)"
        _find(st, f"L{i}.dz", dz, st.whole_views(), why, transposed=st.batch_t, scales=scales, batch=batch)
        st.values.setdefault(f"L{i}.dz", dz)
        prev = "x" if i == 1 else f"L{i - 1}.a"
        with np.errstate(all="ignore"):
            dW = st.values[prev].T @ st.values[f"L{i}.dz"]
            db = st.values[f"L{i}.dz"].sum(axis=0)
        folds = st.fold_views()
        m = _find(st, f"L{i}.dW", dW, st.whole_views() + [v for v, _ in folds], f"= {prev}^T @ L{i}.dz",
                  transposed=st.weight_t, scales=scales, batch=batch)
        st.values.setdefault(f"L{i}.dW", dW)
        vecs = []
        if m is not None and m.view.index is not None:
            comp = dict(FOLDS)[m.view.index]
            vecs.append(View(m.view.source, comp, False, st.t[m.view.source][parse_index(comp)]))
        vecs += [v for v in st.whole_views() if not v.transpose]
        _find(st, f"L{i}.db", db, vecs, f"= L{i}.dz summed over the batch"
              + (f" (folded into the same tensor as L{i}.dW)" if m and m.view.index else ""),
              scales=scales, batch=batch)
        st.values.setdefault(f"L{i}.db", db)


def _by_name(st: _State, name: str, views: list[View]) -> View | None:
    """The one view whose name looks most like `name` (or that holds the bias folded next to the matched weight),
    skipping copies of tensors already matched (h with a ones column is still h)."""
    claimed = list(st.values[n] for n in st.matches)
    views = [v for v in views if not any(c.size == v.array.size and np.array_equal(c.ravel(), v.array.ravel())
                                         for c in claimed)]
    w = st.matches.get(name[:-1] + "W") if re.match(r"^L\d+\.(b|db)$", name) else None
    fold = (w.view.source, dict(FOLDS)[w.view.index]) if w is not None and w.view.index is not None else None
    sibling = st.matches.get(name.replace(".d", ".") if ".d" in name else name.replace(".", ".d"))
    like = sibling.view.index if sibling is not None and re.match(r"^L\d+\.d?W$", name) else None

    def score(v: View) -> int:
        if (v.source, v.index) == fold:
            return 3  # the bias folded next to its matched weight
        return _name_score(v.source, name) + (v.index is not None and v.index == like)  # folded like its sibling

    scored = sorted(((score(v), k, v) for k, v in enumerate(views)), key=lambda t: (-t[0], t[1]))
    # a tie between two views of the same tensor goes to the first (FOLDS lists the usual fold first)
    if not scored or scored[0][0] == 0 or (len(scored) > 1 and scored[1][0] == scored[0][0]
                                           and scored[1][2].source != scored[0][2].source):
        return None
    return scored[0][2]


def _views_for(st: _State, name: str) -> tuple[list[View], bool | None]:
    """The unclaimed views that may hold `name`, and the orientation the layout found so far expects."""
    if re.match(r"^L\d+\.(W|dW)$", name):
        return st.whole_views() + [v for v, _ in st.fold_views()], st.weight_t
    if re.match(r"^L\d+\.(b|db)$", name) or name == "loss":
        views = [v for v in st.whole_views() if not v.transpose]
        w = st.matches.get(name[:-1] + "W")
        if w is not None and w.view.index is not None:  # the bias folded next to its weight comes first
            comp = dict(FOLDS)[w.view.index]
            views.insert(0, View(w.view.source, comp, False, st.t[w.view.source][parse_index(comp)]))
        return views, None
    return st.whole_views() + st.ones_views(), st.batch_t


def _fill(st: _State, n_layers: int, evidence: Mapping[str, str]) -> None:
    """Second pass: what no relation confirmed, matched by shape and name among the port tensors left over."""
    from memstate.names import canonical_names

    for name in canonical_names(n_layers):
        if name in st.matches or name not in st.values:
            continue
        views, t = _views_for(st, name)
        _find(st, name, st.values[name], views, evidence.get(name, f"the recomputed {name}"), transposed=t,
              fallback=True)


def _updates(st: _State, P: Mapping[str, np.ndarray], n_layers: int, lr: float | None) -> tuple[int, float | None]:
    """How many matched parameters are exactly the params file minus lr times their gradient (lr fitted when
    not given); adds that to their evidence."""
    pairs: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
    for n in (f"L{i}.{k}" for i in range(1, n_layers + 1) for k in ("W", "b")):
        g = st.values.get(n.replace(".", ".d"))
        if n in st.matches and g is not None and g.shape == P[n].shape:
            pairs.append((n, P[n].astype(np.float64), st.values[n], g))
    with np.errstate(all="ignore"):
        if lr is None:
            num = sum(float(np.sum((p0 - new) * g)) for _, p0, new, g in pairs)
            den = sum(float(np.sum(g * g)) for _, _, _, g in pairs)
            lr = num / den if den > 0 and np.isfinite(num / den) else None
        if lr is None:
            return 0, None
        good = 0
        for n, p0, new, g in pairs:
            if _close(new, p0 - lr * g, st.rtol):
                good += 1
                m = st.matches[n]
                if m.evidence.startswith("= params file"):
                    continue
                st.matches[n] = Match(n, m.view, m.scale, m.evidence + f"; = params file - {lr:.6g} * "
                                      f"{n.replace('.', '.d')}", m.numeric)
    return good, lr


def suggest_map(tensors: Mapping[str, np.ndarray], params: Mapping[str, np.ndarray], *,
                activation: str | None = None, reduction: str | None = None,
                learning_rate: float | None = None) -> Suggestion:
    """Match a port's step-0 tensors (its own names and layout) to canonical names, given the start params.

    `activation`, `reduction`, `learning_rate`: the scenario's, when known; otherwise each combination is tried
    and the one that confirms the most tensors numerically, with the fewest batch-size factors, wins.
    """
    from memstate.errors import MemstateError

    if "L1.W" not in params or "L1.b" not in params:
        raise MemstateError("the params file has no L1.W and L1.b: is it a memstate params file?")
    n_layers = sum(1 for n in params if re.fullmatch(r"L\d+\.W", n))
    P = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    t = {k: np.asarray(v, dtype=np.float64) for k, v in tensors.items()}
    acts = (activation,) if activation else ACTIVATIONS
    wide = all(np.asarray(v).dtype == np.float64 for v in tensors.values())
    base = _State(t, RTOL["float64" if wide else "float32"])
    _find_x(base, P, acts)
    _find_y(base, base.values["x"].shape[0], P[f"L{n_layers}.W"].shape[1])
    best: tuple | None = None
    for act in acts:
        for red in ((reduction,) if reduction else REDUCTIONS):
            st = base.copy()
            _forward(st, P, n_layers, act, red)
            _backward(st, P, n_layers, act, red)
            _find_params(st, P, n_layers, learning_rate)  # last: a z or a gradient may lie near a W too
            good, lr = _updates(st, P, n_layers, learning_rate)
            numeric = sum(m.numeric for m in st.matches.values()) + good
            scales = sum(m.scale is not None for m in st.matches.values())
            if best is None or (numeric, -scales) > best[0]:
                best = ((numeric, -scales), st, act, red, lr)
    assert best is not None
    _, st, act, red, lr = best
    _fill(st, n_layers, {})
    return _suggestion(st, n_layers, act, red, lr)


def _suggestion(st: _State, n_layers: int, act: str, red: str, lr: float | None) -> Suggestion:
    from memstate.names import canonical_names

    order = canonical_names(n_layers)
    matches = tuple(st.matches[n] for n in order if n in st.matches)
    weights = [m for n, m in st.matches.items() if re.match(r"^L\d+\.d?W$", n) and m.view.array.ndim == 2]
    weight_t = min(weights, key=lambda m: m.name).view.transpose if weights else st.weight_t
    unmatched = tuple(s for s in st.t if s not in st.whole and s not in st.parts)
    absent = tuple(n for n in order if n not in st.matches)
    return Suggestion(matches, unmatched, absent, "columns" if st.batch_t else "rows",
                      "out,in" if weight_t else "in,out", act, red, lr)

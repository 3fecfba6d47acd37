"""Assertions for any test: traces and tensors close under memstate's tolerances, with messages that say
where (step, tensor, rows, columns, the worst elements with both values), how much, under which tolerance,
the least tolerance that would pass, and the probable cause.

    from memstate.testing.asserts import assert_traces_close, assert_tensors_close

    assert_traces_close("ref.memstate", "mine.memstate", tol="L*.dW=1e-8")
    assert_tensors_close(my_softmax(z), reference_softmax(z), name="probs", rtol=1e-12)

The comparator (memstate.comparator.compare) never prints and never raises on a divergence; this layer turns its
verdict into an AssertionError. It reuses the comparator's metrics, localisation, tolerances and diagnoses.

Tolerance keywords, shared by `assert_traces_close` and the `memstate_regression` fixture:

    rtol=, atol=   every tensor (replacing the dtype defaults of memstate.comparator.tolerance)
    tol=           per-name rules: "PATTERN=RTOL", "PATTERN=rtol:X,atol:Y,ulps:N", "PATTERN=float32"
                   (the `memstate diff --tol` syntax), a list of them, or {"L*.dW": 1e-8, "probs": {"atol": 1e-12}}
    ulp=           N (every tensor) or "PATTERN=N" or a list: also pass elements within N ULPs
    tolerances=    a ready memstate.comparator.tolerance.Tolerances (instead of the four above)

Under pytest, `--memstate-rtol` / `--memstate-atol` override `rtol=` / `atol=` of every check in the session
(per-name `tol=` rules still win), and `--memstate-keep-failed DIR` copies the traces of a failing
`assert_traces_close` into DIR/<test id>/ (memstate.testing.plugin sets this up).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from memstate.comparator.compare import Comparison, TensorComparison, compare, compare_tensors
from memstate.errors import MemstateError
from memstate.comparator.localize import localize
from memstate.comparator.metrics import element_errors
from memstate.comparator.tolerance import Rule, Tolerance, Tolerances, ceil_3g, parse_tol, parse_ulp
from memstate.formats.trace import Step, TraceReader

__all__ = [
    "assert_traces_close",
    "assert_tensors_close",
    "make_tolerances",
    "write_steps",
    "SessionSettings",
]

SHOWN = 12  # rows / columns listed before "..."
TOL_KEYS = ("rtol", "atol", "tol", "ulp", "tolerances")


# ---------------------------------------------------------------- session settings (set by the pytest plugin)

@dataclass
class SessionSettings:
    """What the pytest command line says for the whole session; memstate.testing.plugin pushes one per session."""

    rtol: float | None = None  # --memstate-rtol
    atol: float | None = None  # --memstate-atol
    keep_failed: Path | None = None  # --memstate-keep-failed
    test_id: str | None = None  # the node id of the test running now (for keep_failed)

    def override_rule(self) -> Rule | None:
        if self.rtol is None and self.atol is None:
            return None
        text = " ".join(f"--memstate-{k} {v:g}" for k, v in (("rtol", self.rtol), ("atol", self.atol))
                        if v is not None)
        return Rule("*", rtol=self.rtol, atol=self.atol, text=text)


_SESSIONS: list[SessionSettings] = []


def push_settings(settings: SessionSettings) -> SessionSettings:
    """Make `settings` apply to every assertion until `pop_settings` (nested pytest sessions stack)."""
    for what, value in (("--memstate-rtol", settings.rtol), ("--memstate-atol", settings.atol)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise MemstateError(f"{what} {value!r}: give a finite number >= 0, e.g. 1e-9")
    _SESSIONS.append(settings)
    return settings


def pop_settings(settings: SessionSettings) -> None:
    if settings in _SESSIONS:
        _SESSIONS.remove(settings)


def current_settings() -> SessionSettings | None:
    return _SESSIONS[-1] if _SESSIONS else None


# ---------------------------------------------------------------- tolerances

def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, (str, int, float)) or isinstance(value, Mapping):
        return [value]
    return list(value)


def _nonneg(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise MemstateError(f"{what}: give a finite number >= 0, got {value!r}")
    return float(value)


def _mapping_rules(table: Mapping[str, Any]) -> list[Rule]:
    rules = []
    for pattern, value in table.items():
        text = f"tol={{{pattern!r}: {value!r}}}"
        if isinstance(value, Mapping):
            unknown = set(value) - {"rtol", "atol", "ulps"}
            if unknown:
                raise MemstateError(f"{text}: unknown key {sorted(unknown)[0]!r}; use rtol, atol and ulps")
            fields: dict[str, Any] = {k: _nonneg(v, f"{text}, {k}") for k, v in value.items() if k != "ulps"}
            if "ulps" in value:
                if isinstance(value["ulps"], bool) or not isinstance(value["ulps"], int) or value["ulps"] < 0:
                    raise MemstateError(f"{text}: ulps must be a whole number >= 0")
                fields["ulps"] = value["ulps"]
            rules.append(Rule(str(pattern), text=text, **fields))
        else:
            rules.append(Rule(str(pattern), rtol=_nonneg(value, text), text=text))
    return rules


def make_tolerances(rtol: float | None = None, atol: float | None = None, tol: Any = None, ulp: Any = None,
                    tolerances: Tolerances | None = None) -> Tolerances:
    """The tolerance policy for one check: the keywords above, with the session's overrides applied.

    Order of precedence (the last one that sets a field wins): dtype defaults, `rtol=`/`atol=`,
    `--memstate-rtol`/`--memstate-atol`, then the per-name `tol=`/`ulp=` rules in the order given.
    """
    if tolerances is not None:
        if any(v is not None for v in (rtol, atol, tol, ulp)):
            raise TypeError("pass either tolerances= or rtol=/atol=/tol=/ulp=, not both")
        base_rules, policy = list(tolerances.rules), tolerances
        head: list[Rule] = []
    else:
        head = []
        if rtol is not None or atol is not None:
            text = ", ".join(f"{k}={v:g}" for k, v in (("rtol", rtol), ("atol", atol)) if v is not None)
            head.append(Rule("*", rtol=None if rtol is None else _nonneg(rtol, f"rtol={rtol!r}"),
                             atol=None if atol is None else _nonneg(atol, f"atol={atol!r}"), text=text))
        base_rules = []
        for item in _as_list(tol):
            base_rules += _mapping_rules(item) if isinstance(item, Mapping) else [parse_tol(str(item))]
        for item in _as_list(ulp):
            if isinstance(item, str):
                base_rules.append(parse_ulp(item))
            elif isinstance(item, bool) or not isinstance(item, int) or item < 0:
                raise MemstateError(f"ulp={item!r}: give a whole number of ULPs, or 'PATTERN=N'")
            else:
                base_rules.append(Rule("*", ulps=item, text=f"ulp={item}"))
        policy = Tolerances()
    settings = current_settings()
    override = settings.override_rule() if settings is not None else None
    rules = head + ([override] if override is not None else []) + base_rules
    return Tolerances(rtol=policy.rtol, atol=policy.atol, rules=tuple(rules), oracle_factor=policy.oracle_factor)


def split_tolerance_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The tolerance keywords of `kwargs` (popped); anything else left in `kwargs` is the caller's error."""
    return {k: kwargs.pop(k) for k in TOL_KEYS if k in kwargs}


# ---------------------------------------------------------------- traces in memory

def _is_trace_path(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike))


def write_steps(steps: Any, path: str | os.PathLike, *, meta: Mapping[str, Any] | None = None,
                encoding: str | None = None) -> Path:
    """Write in-memory steps as a trace: `Step`s, `{step: {name: array}}`, or a list of `{name: array}`
    (numbered 0, 1, ...). Names keep their order (the dataflow order)."""
    from memstate.formats.recorder import Recorder

    if isinstance(steps, Mapping):
        items = [(k, v) for k, v in steps.items()]
    else:
        items = []
        for i, s in enumerate(steps):
            items.append((s.index, s.tensors) if isinstance(s, Step) else (i, s))
    with Recorder(path, meta=dict(meta or {}), encoding=encoding) as rec:
        for index, tensors in items:
            if not isinstance(tensors, Mapping):
                raise MemstateError(f"step {index}: expected a mapping of tensor name to array, "
                                    f"got {type(tensors).__name__}")
            with rec.step(int(index)):
                for name, value in tensors.items():
                    rec.record(name, value)
    return Path(path)


def as_trace(x: Any, stack: ExitStack, label: str) -> str | os.PathLike | TraceReader:
    """A path or reader for `x`: a trace path, an open reader, a run result (its .trace), or steps in memory
    (written to a temporary binary trace that lives as long as `stack`)."""
    if isinstance(x, TraceReader) or _is_trace_path(x):
        return x
    trace = getattr(x, "trace", None)  # memstate.runner.harness.RunResult
    if trace is not None and _is_trace_path(trace):
        return trace
    if isinstance(x, (Mapping, Iterable)) and not isinstance(x, (bytes, np.ndarray)):
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="memstate-"))
        return write_steps(x, Path(tmp) / f"{label}.memstate", encoding="binary")
    raise TypeError(f"{label}: expected a trace path, a TraceReader, a RunResult or steps "
                    f"({{step: {{name: array}}}}, a list of {{name: array}}, or Steps), got {type(x).__name__}")


# ---------------------------------------------------------------- keeping failed traces

def folder_for_test(test_id: str) -> str:
    """A folder name for a test id, one per id: `tests/test_x.py::test_y[a-b]` -> `tests_test_x.py__test_y_a-b-`
    plus 8 hex digits of the id's hash, added whenever a character had to be replaced (so that `t[a/b]` and
    `t[a_b]` keep their traces apart)."""
    safe = re.sub(r"[^\w.-]", "_", test_id).strip("_.")[:120] or "test"
    if safe == test_id:
        return safe
    digest = hashlib.sha256(test_id.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{safe}-{digest}"


def _trace_suffix(path: Path) -> str:
    if path.is_dir():
        return ".memstate"
    name = path.name
    return ".memstate.jsonl" if name.endswith(".jsonl") else (path.suffix or ".memstate.jsonl")


def keep_traces(folder: Path, traces: Mapping[str, Any], comparison: Comparison | None) -> list[str]:
    """Copy each trace to `folder/<label><suffix>` and write the JSON and text reports; returns the file names."""
    from memstate.report import json as report_json
    from memstate.report import text as report_text

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    names = []
    for label, src in traces.items():
        src = Path(src.path if isinstance(src, TraceReader) else src)
        dst = folder / f"{label}{_trace_suffix(src)}"
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy2(src, dst)
        names.append(dst.name)
    if comparison is not None:
        (folder / "report.json").write_text(report_json.render(comparison), encoding="utf-8")
        (folder / "report.txt").write_text(report_text.render(comparison), encoding="utf-8")
        names += ["report.json", "report.txt"]
    return names


def kept_message(folder: Path, names: list[str]) -> str:
    traces = [n for n in names if not n.startswith("report.")]
    lines = [f"kept for inspection in {folder}{os.sep}: {', '.join(names)}"]
    if len(traces) == 2:
        lines.append(f"  compare them again: memstate diff {folder / traces[0]} {folder / traces[1]}")
    return "\n".join(lines)


# ---------------------------------------------------------------- summaries

def _e(x: float) -> str:
    if x == 0:
        return "0"
    if math.isnan(x) or math.isinf(x):
        return str(x)
    return f"{x:.2g}" if 1e-3 <= abs(x) < 1e4 else f"{x:.1e}"


def _value(x: float, dtype: str) -> str:
    if math.isnan(x) or math.isinf(x):
        return str(x)
    return f"{x:.16e}" if dtype == "float64" else f"{x:.8e}"


def _listed(items: Sequence[int], hit: int) -> str:
    shown = ", ".join(str(i) for i in items[:SHOWN])
    more = hit - min(len(items), SHOWN)
    return shown + (f", ... ({more} more)" if more > 0 else "")


def one_line(diagnosis: Any) -> str:
    """`code (confidence 0.95): the first sentence of the explanation`."""
    text = " ".join(diagnosis.explanation.split())
    first = re.split(r"(?<=[.!?])\s+(?=[A-Z(])", text, maxsplit=1)[0]
    return f"{diagnosis.code} (confidence {diagnosis.confidence:.2f}): {first}"


def comparison_summary(c: Comparison) -> str:
    """One line: where the traces part, the tolerance there, and the probable cause."""
    f = c.first_divergence
    if f is None:
        errors = [x for x in c.findings if x.severity == "error"]
        return errors[0].message if errors else "the traces differ in structure"
    where = f"step {f.step}, tensor {f.name}" if f.name else f"step {f.step}"
    text = f"{where}: {f.detail}"
    if f.tensor is not None:
        text += f"; tolerance {f.tensor.tolerance.describe()}"
    if f.diagnoses:
        text += f"; probable cause {f.diagnoses[0].code}"
    return text


def short_summary(c: Comparison) -> str:
    """` at step 0, tensor L1.W (precision-rounding)`: the first divergence in a few words, or ''."""
    f = c.first_divergence
    if f is None:
        return ""
    cause = f" ({f.diagnoses[0].code})" if f.diagnoses else ""
    return f" at step {f.step}" + (f", tensor {f.name}" if f.name else "") + cause


def step_count_problem(c: Comparison) -> str | None:
    """Why two agreeing traces are still not the same run: different numbers of steps, or gaps."""
    gaps = [x for x in c.findings if x.kind in ("missing-step", "extra-steps", "truncated")]
    if c.a.steps == c.b.steps and not gaps:
        return None
    text = (f"A has {c.a.steps} complete steps (last {c.a.last_step}) and B has {c.b.steps} "
            f"(last {c.b.last_step}); the {c.steps_compared} steps both have agree")
    return text + "".join(f"\n  {x.severity} {x.kind}: {x.message}" for x in gaps)


# ---------------------------------------------------------------- the assertions

def assert_traces_close(a: Any, b: Any, *, rtol: float | None = None, atol: float | None = None, tol: Any = None,
                        ulp: Any = None, tolerances: Tolerances | None = None, oracle: Any = None,
                        same_steps: bool = True, msg: str | None = None) -> Comparison:
    """Assert that trace `b` agrees with the reference trace `a`, step by step, tensor by tensor.

    `a` and `b` are trace paths (JSONL file or binary directory), open readers, `memstate.run` results, or
    steps in memory (`{step: {name: array}}`, a list of `{name: array}`, or `Step`s). The message is the
    comparator's text report: the first divergence (step, tensor, rows, columns, worst elements, the
    tolerance and the least one that passes), its diagnosis, and the table of errors. With `same_steps`
    (the default) the traces must also have the same steps. Returns the Comparison when they agree.
    """
    __tracebackhide__ = True
    tolerances = make_tolerances(rtol, atol, tol, ulp, tolerances)
    with ExitStack() as stack:
        ta, tb = as_trace(a, stack, "a"), as_trace(b, stack, "b")
        to = as_trace(oracle, stack, "oracle") if oracle is not None else None
        c = compare(ta, tb, tolerances=tolerances, oracle=to)
        problem = None if not c else step_count_problem(c) if same_steps else None
        if c and problem is None:
            return c
        from memstate.report import text as report_text

        head = [f"traces are not close{short_summary(c)}", f"  {comparison_summary(c)}"] if not c else \
            [f"traces agree but are not the same run: {problem}"]
        parts = ([msg] if msg else []) + head + ["", report_text.render(c).rstrip("\n")]
        settings = current_settings()
        if settings is not None and settings.keep_failed is not None and settings.test_id is not None:
            folder = settings.keep_failed / folder_for_test(settings.test_id)
            parts += ["", kept_message(folder, keep_traces(folder, {"a": ta, "b": tb}, c))]
    raise AssertionError("\n".join(parts))


def _as_float(x: Any, what: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype == object or np.iscomplexobj(arr) or not (arr.dtype.kind in "fiub"):
        raise TypeError(f"{what}: expected real numbers, got an array of {arr.dtype}")
    if arr.dtype.kind != "f" or arr.dtype.itemsize not in (4, 8):
        arr = arr.astype(np.float64)
    return arr


def tensor_tolerance(name: str, desired: np.ndarray, actual: np.ndarray, rtol: float | None, atol: float | None,
                     ulp: int | None) -> Tolerance:
    """The tolerance `assert_tensors_close` applies: dtype default, then the arguments, then the session."""
    return make_tolerances(rtol, atol, ulp=ulp).resolve(name, desired.dtype, actual.dtype)


def assert_tensors_close(actual: Any, desired: Any, *, name: str = "tensor", rtol: float | None = None,
                         atol: float | None = None, ulp: int | None = None, step: int | None = None,
                         msg: str | None = None, diagnose: bool = True) -> TensorComparison:
    """Assert |actual - desired| <= atol + rtol * max(|actual|, |desired|) elementwise (or within `ulp` ULPs).

    Defaults are memstate's dtype tolerances (float64: rtol 1e-10, atol 1e-12; float32 on both sides:
    1e-5, 1e-5). nan equals nan; an infinity equals the same infinity. On failure the message names the
    tensor (and `step`), the elements out of tolerance and their pattern, the rows and columns hit, the
    worst elements with both values, the tolerance used and the least rtol, atol or ulp that would pass,
    and the probable cause (memstate.diagnose.context). Returns the TensorComparison when it passes.
    """
    __tracebackhide__ = True
    a, b = _as_float(desired, "desired"), _as_float(actual, "actual")
    tol = tensor_tolerance(name, a, b, rtol, atol, ulp)
    tc = compare_tensors(name, 0 if step is None else step, a, b, tol)
    if tc:
        return tc
    where = f"{name}" + (f" at step {step}" if step is not None else "")
    lines = [msg] if msg else []
    if tc.metrics is None:
        lines.append(f"{where}: shapes differ: actual {list(b.shape)}, desired {list(a.shape)}")
        lines.append(f"  tolerance    {tol.describe()} ({tol.source}); no tolerance passes a shape mismatch")
    else:
        lines += _tensor_lines(where, tc, a, b)
    if diagnose:
        cause = _probable_cause(name, 0 if step is None else step, a, b)
        if cause:
            lines.append(f"  probable cause (A = desired, B = actual): {cause}")
    raise AssertionError("\n".join(lines))


def _tensor_lines(where: str, tc: TensorComparison, a: np.ndarray, b: np.ndarray) -> list[str]:
    m, tol = tc.metrics, tc.tolerance
    assert m is not None  # a failing comparison always carries its metrics
    errors = element_errors(a, b)
    loc = localize(a, b, errors, tol.out_of_tolerance(errors))
    lines = [f"{where} is not close: {loc.n_out} of {loc.size} elements out of tolerance "
             f"({m.frac_out:.1%}, {loc.pattern})",
             f"  tolerance    {tol.describe()} ({tol.source}): "
             f"|actual - desired| <= atol + rtol * max(|actual|, |desired|)"]
    mt = tc.min_tolerance
    if mt is not None:
        if math.isinf(mt.rtol):
            lines.append(f"  would pass   with no tolerance: {m.nonfinite_mismatch} element(s) are nan/inf on one "
                         "side only or differ in kind")
        else:
            lines.append(f"  would pass   with rtol >= {ceil_3g(mt.rtol)} (at atol {tol.atol:g}), or atol >= {ceil_3g(mt.atol)} "
                         f"(at rtol {tol.rtol:g}), or ulp={int(mt.ulps)}")
    if loc.total_rows:
        lines.append(f"  rows         {loc.n_rows} of {loc.total_rows}: {_listed(loc.rows, loc.n_rows)}")
    if loc.total_columns:
        label = "indices" if a.ndim == 1 else "columns"
        lines.append(f"  {label:<12} {loc.n_columns} of {loc.total_columns}: {_listed(loc.columns, loc.n_columns)}")
    lines.append(f"  error        max abs {_e(m.max_abs_error)}, max rel {_e(m.max_rel_error)} of scale {_e(m.scale)}, "
                 f"{m.max_ulp:.4g} ulps ({m.ulp_dtype})")
    if m.nan_a or m.nan_b or m.inf_a or m.inf_b:
        lines.append(f"  non-finite   nan: {m.nan_b} actual, {m.nan_a} desired; inf: {m.inf_b} actual, "
                     f"{m.inf_a} desired")
    if loc.worst:
        idx = [str(list(w.index)) for w in loc.worst]
        va = [_value(w.a, a.dtype.name) for w in loc.worst]
        vb = [_value(w.b, b.dtype.name) for w in loc.worst]
        iw, aw, bw = max(5, *map(len, idx)), max(7, *map(len, va)), max(6, *map(len, vb))
        lines.append("  worst elements:")
        lines.append(f"    {'index':<{iw}}  {'actual':<{bw}}  {'desired':<{aw}}  abs err  rel err")
        for w, i, x, y in zip(loc.worst, idx, vb, va):
            lines.append(f"    {i:<{iw}}  {x:>{bw}}  {y:>{aw}}  {_e(w.abs_error):>7}  {_e(w.rel_error):>7}")
    return lines


def _probable_cause(name: str, step: int, a: np.ndarray, b: np.ndarray) -> str | None:
    """The diagnosers' best guess for the pair alone (no inputs, no history), when one fits."""
    from memstate.diagnose.context import DivergenceContext
    from memstate.diagnose.catalogue import diagnose

    try:
        found = diagnose(DivergenceContext(step=step, name=name, a=a, b=b, inputs_a={}, inputs_b={}, history=(),
                                           inputs_agree=None, meta_a={"impl": "desired"},
                                           meta_b={"impl": "actual"}))
    except Exception:  # a diagnosis is a hint; it must never hide the assertion
        return None
    if not found:
        return None
    top = found[0]
    if top.code == "unknown":
        return "unknown: no known mistake fits these numbers alone"
    return one_line(top)

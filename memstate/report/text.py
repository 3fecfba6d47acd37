"""A comparison as plain text for an 80-column terminal: verdict, first divergence, diagnosis, error table."""

from __future__ import annotations

import math
import textwrap
from typing import TYPE_CHECKING

from memstate.numfmt import short as _e
from memstate.report import training
from memstate.comparator.compare import Comparison, FirstDivergence, TensorComparison, TraceInfo
from memstate.comparator.tolerance import ceil_3g

if TYPE_CHECKING:
    from memstate.comparator.matrix import Matrix

WIDTH = 80
SHOWN_LISTED = 12  # rows/columns printed before "..."
OVERVIEW_PER_LINE = 12
MAX_ULP_HINT = 2**20  # beyond this an --ulp allowance is no help: suggest none


def _g(x: float) -> str:
    return str(x) if math.isnan(x) or math.isinf(x) else f"{x:g}"


def _value(x: float, dtype: str) -> str:
    """A tensor value at its dtype's full precision, so that the digits line up."""
    if math.isnan(x) or math.isinf(x):
        return str(x)
    return f"{x:.16e}" if dtype == "float64" else f"{x:.8e}"


def _wrap(text: str, indent: str = "  ", first: str | None = None) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=indent if first is None else first,
                         subsequent_indent=indent + "  ", break_on_hyphens=False, break_long_words=False) or [indent]


def _listed(items: tuple[int, ...], total_hit: int) -> str:
    shown = ", ".join(str(i) for i in items[:SHOWN_LISTED])
    more = total_hit - min(len(items), SHOWN_LISTED)
    return shown + (f", ... ({more} more)" if more > 0 else "")


def trace_facts(info: TraceInfo) -> list[str]:
    """What a report says of one trace: impl, scenario, dtype, steps, and how it ended if it ended early."""
    meta = info.meta
    facts = [str(meta[k]) for k in ("impl", "scenario", "dtype") if k in meta]
    facts.append(f"{info.steps} step{'s' * (info.steps != 1)}")
    if info.ended_early is not None:
        facts.append(str(info.ended_early))
    elif info.incomplete_step is not None:
        facts.append(f"crashed in step {info.incomplete_step}")
    return facts


def _trace_line(label: str, info: TraceInfo, role: str = "") -> list[str]:
    return _wrap(f"{label}  {info.path}  ({', '.join(trace_facts(info))}){role}")


# ---------------------------------------------------------------- sections

def _verdict(c: Comparison) -> list[str]:
    lines = []
    f = c.first_divergence
    if c:
        warn = sum(x.severity == "warning" for x in c.findings)
        tail = f"; {warn} warning{'s' * (warn != 1)} below" if warn else ""
        excused = " or excused by the oracle" if any(x.kind == "excused" for x in c.findings) else ""
        lines.append(f"AGREE: {c.steps_compared} steps compared, every tensor within tolerance{excused}{tail}")
    elif f is not None:
        lines += _wrap(f"DIVERGE at step {f.step}: {f.detail}", "", "")
    else:
        lines.append("DIVERGE: the traces differ in structure (see findings)")
    lines += _trace_line("A", c.a)
    lines += _trace_line("B", c.b)
    if c.oracle is not None:
        lines += _trace_line("C", c.oracle, ", the oracle")
    if not c and c.divergent_steps:
        n, m = c.divergent_steps, c.steps_compared
        lines.append(f"  all {n} compared steps diverge" if n == m else f"  {n} of the {m} compared steps diverge"
                     if n < m else f"  {n} steps diverge ({m} compared; one side stops early)")
    return lines


def _first(c: Comparison, f: FirstDivergence) -> list[str]:
    lines = ["", f"first divergence: step {f.step}" + (f", {f.name}" if f.name else "")]
    t = f.tensor
    if t is not None:
        lines.append(f"  shape {list(t.shape_a)} {t.dtype_a} in A, {list(t.shape_b)} {t.dtype_b} in B")
        lines.append(f"  tolerance {t.tolerance.describe()} ({t.tolerance.source})")
    w = f.where
    if w is not None and t is not None and t.metrics is not None:
        m = t.metrics
        lines.append(f"  {w.n_out} of {w.size} elements out of tolerance ({100 * m.frac_out:.3g}%): {w.pattern}")
        if w.total_rows:
            lines.append(f"  rows ({w.n_rows} of {w.total_rows}): {_listed(w.rows, w.n_rows)}")
        if w.total_columns:
            lines.append(f"  columns ({w.n_columns} of {w.total_columns}): {_listed(w.columns, w.n_columns)}")
        stats = (f"max abs {_e(m.max_abs_error)}, max rel {_e(m.max_rel_error)} (of scale {_e(m.scale)}), "
                 f"{_g(m.max_ulp)} ulps ({m.ulp_dtype}), cosine 1 - {_e(1 - m.cosine)}")
        lines += _wrap(stats)
        extra = []
        if m.nan_a or m.nan_b or m.inf_a or m.inf_b:
            extra.append(f"nan {m.nan_a} in A, {m.nan_b} in B; inf {m.inf_a} in A, {m.inf_b} in B")
        if m.argmax_mismatch is not None:
            extra.append(f"argmax differs in {m.argmax_mismatch:.1%} of rows")
        if extra:
            lines += _wrap("; ".join(extra))
    if t is not None and t.min_tolerance is not None:
        mt = t.min_tolerance
        if math.isinf(mt.rtol):
            lines.append("  no tolerance passes it: non-finite values on one side only")
        else:
            ulps = f", or --ulp '{f.name}={int(mt.ulps)}'" if mt.ulps <= MAX_ULP_HINT else ""
            lines += _wrap(f"passes with rtol >= {ceil_3g(mt.rtol)} (at atol {_g(t.tolerance.atol)}), or atol >= "
                           f"{ceil_3g(mt.atol)} (at rtol {_g(t.tolerance.rtol)}){ulps}")
    if t is not None and t.oracle is not None:
        o = t.oracle
        lines += _wrap(f"oracle: B is {_e(o.error_b)} from it, A {_e(o.error_a)}; B is blamed beyond {_e(o.allowed)}")
    lines += _inputs(f)
    if f.worst:
        lines += _worst(f, t)
    lines += _consequences(c, f)
    return lines


def _inputs(f: FirstDivergence) -> list[str]:
    if f.inputs_agree is None:
        return _wrap(f"nothing is recorded before {f.name or 'it'} in step {f.step}: the runs differ in their "
                     "inputs, or the step itself differs")
    n = len(f.inputs)
    tensors = f"the {n} tensor{'s' * (n != 1)} recorded before it in step {f.step}"
    if not f.inputs_agree:
        return _wrap(f"inputs do not all agree: some of {tensors} differ beyond tolerance (excused by the oracle) "
                     "or are missing, so the divergence may have started earlier")
    name, rel = f.inputs_worst if f.inputs_worst is not None else (None, 0.0)
    how = "are identical" if rel == 0 else f"are within tolerance (worst {name}, rel {_e(rel)})"
    if f.kind == "missing":
        return _wrap(f"before it: {tensors} {how}")
    return _wrap(f"inputs agree: {tensors} {how}, so the operation that computes {f.name} is where the runs "
                 "part ways")


def _worst(f: FirstDivergence, t: TensorComparison | None) -> list[str]:
    da, db = (t.dtype_a, t.dtype_b) if t is not None else ("float64", "float64")
    idx = [str(list(e.index)) for e in f.worst]
    iw = max(5, *(len(i) for i in idx))
    va = [_value(e.a, da) for e in f.worst]
    vb = [_value(e.b, db) for e in f.worst]
    aw, bw = max(1, *(len(v) for v in va)), max(1, *(len(v) for v in vb))
    lines = ["  worst elements:", f"    {'index':<{iw}}  {'A':<{aw}}  {'B':<{bw}}  abs err  rel err"]
    for e, i, a, b in zip(f.worst, idx, va, vb):
        lines.append(f"    {i:<{iw}}  {a:>{aw}}  {b:>{bw}}  {_e(e.abs_error):>7}  {_e(e.rel_error):>7}")
    return lines


def _consequences(c: Comparison, f: FirstDivergence) -> list[str]:
    parts = []
    if f.consequences:
        parts.append(f"in step {f.step}: {', '.join(f.consequences)}")
    later = f.divergent_steps - 1
    if later > 0:
        parts.append(f"then {later} later step{'s' * (later != 1)} diverge (the last is step {f.last_divergent_step})")
    if not parts:
        return _wrap("consequences: none; every other tensor and step agrees")
    return _wrap("consequences: " + "; ".join(parts))


def _diagnoses(c: Comparison) -> list[str]:
    if c.first_divergence is None or c.first_divergence.kind == "missing":
        return []
    ds = c.diagnoses
    if not ds:
        return ["", "diagnosis: none available (memstate.diagnose.context is not installed)"]
    top, rest = ds[0], ds[1:]
    lines = ["", f"diagnosis: {top.code} (confidence {top.confidence:.2f})"]
    lines += _wrap(top.explanation)
    if rest:
        lines += _wrap("also possible: " + ", ".join(f"{d.code} ({d.confidence:.2f})" for d in rest))
    return lines + _root_causes(c)


def _root_causes(c: Comparison) -> list[str]:
    """Every independent cause, grouped by tensor and code (the first divergence first)."""
    roots = c.root_causes
    if not roots:
        return []
    lines = ["", f"root causes: {len(roots)} (each fails on its own; the rest are consequences)"]
    for r in roots:
        times = f", {r.count} times" if r.count > 1 else ""
        lines.append(f"  step {r.step:<5} {r.name:<8} {r.code} ({r.confidence:.2f}{times})")
    return lines


def _findings(c: Comparison) -> list[str]:
    if not c.findings:
        return []
    lines = ["", "findings:"]
    rank = {"error": 0, "warning": 1, "info": 2}
    for x in sorted(c.findings, key=lambda x: rank.get(x.severity, 3)):
        steps = ""
        if x.first_step is not None:
            steps = f"step {x.first_step}" if x.count == 1 or x.first_step == x.last_step else \
                f"steps {x.first_step}..{x.last_step}, {x.count} times"
        lines += _wrap(f"{x.severity} {x.kind}: {x.message}" + (f" [{steps}]" if steps else ""))
    return lines


def _one_sided(c: Comparison) -> list[str]:
    """Names only one side records: not compared, and not a divergence (ports record different subsets)."""
    lines: list[str] = []
    if c.names:
        chosen = [f"--only {','.join(c.names.only)}"] if c.names.only else []
        chosen += [f"--ignore {','.join(c.names.ignore)}"] if c.names.ignore else []
        lines += ["", f"compared only the tensors {' '.join(chosen)} selects"]
    for side in ("a", "b"):
        names = [o for o in c.one_sided if o.recorded_by == side]
        if not names:
            continue
        other = "B" if side == "a" else "A"
        listed = ", ".join(o.name + ("" if o.steps == c.steps_compared else f" (steps {o.first_step}.."
                                     f"{o.last_step}, {o.steps} times)") for o in names)
        lines += [""] if not lines else []
        lines += _wrap(f"note: recorded by {side.upper()} only, not compared: {listed} ({other} does not record "
                       f"{'them' if len(names) > 1 else 'it'})", "", "")
    return lines


def _meta(c: Comparison) -> list[str]:
    if not c.meta_diff:
        return []
    lines = ["", "metadata differences (A → B):"]
    for m in c.meta_diff:
        lines += _wrap(m.describe())
    return lines


def _tolerances(c: Comparison) -> list[str]:
    lines = ["", "tolerances:"]
    for u in c.tolerances_used:
        names = ", ".join(u.names) if len(u.names) <= 8 else ", ".join(u.names[:8]) + f", ... ({len(u.names)} tensors)"
        lines += _wrap(f"{u.tolerance.describe()} ({u.tolerance.source}): {names}")
    policy = c.tolerances.describe()
    lines += _wrap(policy[0])
    for line in policy[1:]:
        lines += _wrap(line)
    if c.oracle is not None:
        lines += _wrap(f"oracle: B is blamed when its error to C exceeds {c.tolerances.oracle_factor:g} x A's "
                       "error to C plus one rounding")
    return lines


# ---------------------------------------------------------------- the table

def _level(rel: float) -> str:
    if rel == 0:
        return "."
    if math.isinf(rel) or math.isnan(rel):
        return "inf"
    return str(math.floor(math.log10(rel)))


def _cell(t: TensorComparison | None, w: int) -> str:
    if t is None:
        return f"{'-':>{w}} "
    mark = " " if t.within_tolerance else "~" if t.passed else "*"
    value = "shp" if t.metrics is None else _level(t.max_rel_error)
    return f"{value:>{w}}{mark}"


def _table(c: Comparison) -> list[str]:
    names = [s.name for s in c.series]
    if not c.steps or not names:  # (steps that record no tensor at all: nothing to tabulate)
        return []
    nw = min(10, max(len(n) for n in names)) + 1
    w = max(4, *(len(str(s.step)) + 1 for s in c.steps))
    header, gaps, prev = "", [], None
    for s in c.steps:
        gap = prev is not None and s.step != prev + 1
        gaps.append(gap)
        header += (" ..  " if gap else "") + f"{s.step:>{w}} "
        prev = s.step
    lines = ["", "max rel error per tensor and step, as log10 ('.' equal, '*' out of tolerance,",
             "'~' excused by the oracle, '-' absent; 'all' is the worst over every step):",
             f"{'step':<{nw}}{header}   all"]
    worst_all = {s.name: (max((b.max_rel_error for b in s.buckets), default=0.0), sum(b.failed for b in s.buckets))
                 for s in c.series}
    for name in names:
        row = ""
        for s, gap in zip(c.steps, gaps):
            t = next((x for x in s.tensors if x.name == name), None)
            row += (" ..  " if gap else "") + _cell(t, w)
        rel, failed = worst_all[name]
        label = name if len(name) < nw else name[:nw - 2] + "~"
        lines.append(f"{label:<{nw}}{row}{_level(rel):>5}{'*' if failed else ' '}".rstrip())
    lines += _overview(c)
    return lines


def _overview(c: Comparison) -> list[str]:
    if len(c.overview) <= 1 or all(b.steps == 1 for b in c.overview) and len(c.overview) <= len(c.steps):
        return []
    per = max(b.steps for b in c.overview)
    lines = ["", f"worst tensor per range of {per} step{'s' * (per != 1)} (log10 max rel error):"]
    for i in range(0, len(c.overview), OVERVIEW_PER_LINE):
        chunk = c.overview[i:i + OVERVIEW_PER_LINE]
        cells = "".join(f"{_level(b.max_rel_error):>4}{'*' if b.failed else ' '}" for b in chunk)
        lines.append(f"{chunk[0].first_step:>7} {cells}".rstrip())
    return lines


def render(c: Comparison) -> str:
    """The whole text report."""
    lines = _verdict(c)
    if c.first_divergence is not None:
        lines += _first(c, c.first_divergence)
    lines += _diagnoses(c)
    lines += training.text_lines(c)
    lines += _one_sided(c)
    lines += _findings(c)
    lines += _meta(c)
    lines += _tolerances(c)
    lines += _table(c)
    return "\n".join(lines) + "\n"


def render_matrix(matrix: Matrix) -> str:
    """The verdict of every pair of implementations (memstate.comparator.matrix.Matrix) as a small table and a list."""
    impls = list(matrix.impls)
    # a long name (a cmd: port's command line) is shown as #N in the table, with a legend under it
    label = {i: i if len(i) <= 24 else f"#{n}" for n, i in enumerate(impls, 1)}
    cw = max(8, *(len(label[i]) + 2 for i in impls), *(len(p.short) + 2 for p in matrix.pairs))
    lines = [f"memstate diff --impls {','.join(impls)} on {matrix.scenario}"
             + (f", {matrix.steps} steps" if matrix.steps else ""), ""]
    short = {(p.a, p.b): p.short for p in matrix.pairs}
    lines.append((" " * cw + "".join(f"{label[i]:<{cw}}" for i in impls[1:])).rstrip())
    for r, a in enumerate(impls[:-1]):
        cells = "".join(f"{short.get((a, b), ''):<{cw}}" if c > r else " " * cw for c, b in enumerate(impls[1:], 1))
        lines.append(f"{label[a]:<{cw}}{cells}".rstrip())
    lines += [f"  {label[i]} = {i}" for i in impls if label[i] != i]
    lines.append("")
    for p in matrix.pairs:
        lines += _wrap(f"{label[p.a]} vs {label[p.b]}: {p.cell}", "  ")
    for run in matrix.runs:
        if run.status != "ok":
            lines += _wrap(f"{run.impl}: {run.status}: {run.reason}", "  ")
    if matrix.kept:
        lines.append(f"  traces kept in {matrix.kept}")
    return "\n".join(lines) + "\n"

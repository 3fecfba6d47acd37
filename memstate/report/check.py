"""`memstate check` reports: text, JSON (the diff report's schema plus a "check" object) and HTML.

A check result converts to the comparator's `Comparison` (side A = the recomputation, side B = the trace),
so the first wrong operation is rendered by the diff report's own pieces (memstate.report.text,
memstate.report.json): the same metrics, localisation, worst elements, diagnosis and tolerance lines.
What only check has (the inferred settings, the invariants, the operations verified, the notes on what
could not be checked) is rendered here.
"""

from __future__ import annotations

import math

from memstate.report import page as html_page
from memstate.report import json as report_json
from memstate.report import svg as report_svg
from memstate.report import text as report_text
from memstate.check.checker import INVARIANTS, CheckResult, Inferred, OpCheck

_wrap, _e = report_text._wrap, report_text._e


def _ratio(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.2g}"


def _trace_line(r: CheckResult) -> str:
    facts = [str(r.meta[k]) for k in ("impl", "scenario", "dtype") if k in r.meta]
    span = f"{r.steps} steps" + (f", {r.first_step}..{r.last_step}" if r.steps else "")
    facts.append(span)
    if r.ended_early is not None:
        facts.append(str(r.ended_early))
    elif r.incomplete_step is not None:
        facts.append(f"crashed in step {r.incomplete_step}")
    return f"  trace  {r.path}  ({', '.join(facts)})"


def verdict(r: CheckResult) -> str:
    """One line: CLEAN, or FAIL and where."""
    if r.ok:
        early = f"; the trace {r.ended_early}" if r.ended_early is not None else ""
        return (f"CLEAN: {r.operations} operations recomputed from their recorded inputs, every one within "
                f"tolerance; {r.invariant_checks} invariant checks hold{early}")
    f = r.first_finding
    if f is None:  # nothing wrong was found, but not everything recorded could be checked
        cov = r.coverage
        needs = list(dict.fromkeys(u.needs for u in cov.unverified if u.needs))
        return (f"NOT VERIFIED: no wrong operation, but {cov.recorded - cov.verified} of {cov.recorded} recorded "
                f"tensors could not be checked" + (f"; to check them: {'; '.join(needs)}" if needs else ""))
    where = f"step {f.step}, {f.name}" if f.step is not None else "the trace"
    if f.kind == "operation" and r.first_divergence is not None:
        return f"FAIL at {where}: {r.first_divergence.detail}"
    label = f"invariant {f.code}" if f.kind == "invariant" else f"inference {f.code}"
    return f"FAIL at {where}: {label}: {f.message}"


def _worst_line(w: OpCheck | None) -> list[str]:
    if w is None:
        return []
    if w.ratio == 0:
        return ["  worst error: 0 (every recomputed tensor is bit-identical to the recorded one)"]
    return _wrap(f"worst error: {w.name} at step {w.step}, max rel {_e(w.max_rel)} (max abs {_e(w.max_abs)}), "
                 f"{_ratio(w.ratio)} of its tolerance ({w.tolerance.describe()})")


def _summary(r: CheckResult) -> list[str]:
    lines = [verdict(r), _trace_line(r)]
    lines.append("  A = recomputed in float64 by the reference (impls/numpy_mlp.py's operations) from B = the "
                 "trace's recorded inputs" if r.first_finding is not None else "")
    lines = [x for x in lines if x]
    lines += _wrap(r.coverage.line())
    if r.ok or r.first_finding is None:
        per = r.operations // r.steps if r.steps else 0
        lines += _wrap(f"verified {r.operations} operations in {r.steps} steps ({per} per step) and "
                       f"{r.invariant_checks} invariants; {_speed(r)}")
        lines += _worst_line(r.worst)
    else:
        others = len(_other_findings(r))
        lines += _wrap(f"{r.n_failures} failing operation{'s' * (r.n_failures != 1)} in {r.failing_steps} of "
                       f"{r.steps} steps; {others} other finding{'s' * (others != 1)}; "
                       f"{r.operations} operations checked")
    return lines


def _other_findings(r: CheckResult) -> list:
    """Findings not already shown with the first failing operation."""
    at = (r.first_failure.step, r.first_failure.name) if r.first_failure is not None else None
    return [f for f in r.findings if not (f.kind == "invariant" and (f.step, f.name) == at)]


def _speed(r: CheckResult) -> str:
    return f"{r.seconds:.2f}s, {r.steps_per_second:.0f} steps/s" if r.seconds > 0 else ""


def _first(r: CheckResult) -> list[str]:
    f, op = r.first_divergence, r.first_failure
    if f is None or op is None:
        return []
    c = r.comparison
    body = report_text._first(c, f)
    inputs_lines = report_text._inputs(f)
    for i in range(len(body) - len(inputs_lines) + 1):  # the diff's "inputs agree" paragraph: said below instead
        if body[i:i + len(inputs_lines)] == inputs_lines:
            del body[i:i + len(inputs_lines)]
            break
    lines = ["", f"first wrong operation: step {op.step}, {op.name} = {op.formula}"]
    src = f"computed from {', '.join(op.inputs)} as recorded in step {op.step}"
    if op.params:
        src += f", and the parameters in force {', '.join(op.params)} ({_params_from(op.params_from)})"
    lines += _wrap(src)
    lines += body[2:]  # body[0] is blank, body[1] the diff's header line
    for code in op.invariants:
        lines += _wrap(f"invariant violated: {code}: {INVARIANTS.get(code, code)}")
    return lines


def _params_from(source: str) -> str:
    if source.startswith("step "):
        return f"updated at {source}"
    return source


def _findings(r: CheckResult) -> list[str]:
    shown = _other_findings(r)
    if not shown and r.n_failures <= 1:
        return []
    lines = ["", "other findings:"]
    for f in shown:
        where = f" [step {f.step}" + (f"..{f.last_step}, {f.count} times]" if f.count > 1 else "]") \
            if f.step is not None else ""
        lines += _wrap(f"{f.kind} {f.code} at {f.name or 'the trace'}: {f.message}{where}")
    more = r.n_failures - 1
    if more > 0:
        later = [o for o in r.failures[1:6]]
        listing = ", ".join(f"{o.name}@{o.step}" for o in later) + (", ..." if more > len(later) else "")
        lines += _wrap(f"{more} more failing operation{'s' * (more != 1)}: {listing}")
    return lines


def _setting(label: str, s: Inferred, unit: str = "") -> list[str]:
    value = "unknown" if s.value is None else f"{s.value}"
    if s.source == "header" or s.source.startswith("scenario"):
        how = f"from the {s.source}"
        if s.inferred is not None and s.inferred != s.value:
            how += f"; the trace shows {s.inferred}"
        elif s.inferred is not None:
            how += "; the trace agrees"
    elif s.source in ("inferred", "fitted"):
        how = s.source + " from the trace"
    else:
        how = "not stated by the header; the trace does not name it" if s.evidence else \
            "not stated by the header, and not shown by the trace"
    if not s.consistent:
        how += " (INCONSISTENT)"
    lines = _wrap(f"{label:<15} {value}{unit}  {how}")
    if s.evidence:
        lines += _wrap(s.evidence, "      ")
    return lines


def _settings(r: CheckResult) -> list[str]:
    lines = ["", "settings (what the trace's header does not say is inferred from its tensors):"]
    lines += _setting("activation", r.activation)
    lines += _setting("loss reduction", r.reduction)
    lines += _setting("learning rate", r.learning_rate)
    lines += _lr_fits(r)
    lines += _wrap(f"{'step 0 params':<15} {r.params_source}")
    return lines


def _verified(r: CheckResult) -> list[str]:
    if not r.by_name:
        return []
    lines = ["", f"operations verified per tensor ({r.operations} in all):",
             f"  {'tensor':<8} {'checked':>7} {'failed':>6} {'skipped':>7}  {'worst rel':>9}  {'x tol':>7}  at step"]
    for name, s in r.by_name.items():
        lines.append(f"  {name:<8} {s.checked:>7} {s.failed:>6} {s.skipped:>7}  {_e(s.worst_rel):>9}  "
                     f"{_ratio(s.worst_ratio):>7}  {'' if s.worst_step is None else s.worst_step}")
    if r.unchecked:
        lines += _wrap(f"recorded but not checked (no rule for them): {', '.join(r.unchecked)}")
    return lines


def _coverage(r: CheckResult) -> list[str]:
    """Each recorded tensor that could not be verified: where, why, and what would let check reach it."""
    if not r.coverage.unverified:
        return []
    lines = ["", "not verified (recorded, but no operation could reach them):"]
    groups: dict[tuple, list[str]] = {}
    for u in r.coverage.unverified:
        groups.setdefault((u.first_step, u.steps, u.why, u.needs), []).append(u.name)
    for (first, steps, why, needs), names in groups.items():
        where = f"step {first}" if steps == 1 else f"{steps} steps from step {first}"
        lines += _wrap(f"{', '.join(names)} at {where}: {why}" + (f"; to check: {needs}" if needs else ""))
    return lines


def _lr_fits(r: CheckResult) -> list[str]:
    """The per-tensor learning-rate fits behind the consensus, the odd ones out marked."""
    if not r.lr_fits or len(r.lr_fits) < 2:
        return []
    lines = ["  per-tensor fits of W' = W - lr * dW (median over the steps; * = disagrees with the lr checked):"]
    for name, med, lo, hi, n, agrees in r.lr_fits:
        span = f" (from {lo:.9g} to {hi:.9g})" if lo != hi else ""
        lines.append(f"    {'' if agrees else '*'}{name:<6} {med:.9g}{span} over {n} update{'s' * (n != 1)}")
    return lines


def _notes(r: CheckResult) -> list[str]:
    if not r.notes:
        return []
    lines = ["", "notes:"]
    for n in r.notes:
        lines += _wrap(n)
    return lines


def render(r: CheckResult) -> str:
    """The text report."""
    lines = _summary(r)
    lines += _first(r)
    if r.diagnoses or r.first_failure is None or not r.first_failure.message:  # a shape problem says what to do
        lines += report_text._diagnoses(r.comparison)
    lines += _findings(r)
    lines += _coverage(r)
    lines += _settings(r)
    lines += _notes(r)
    lines += _verified(r)
    lines += report_text._tolerances(r.comparison)
    if not r.ok:
        lines += report_text._table(r.comparison)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- JSON

def _op(op: OpCheck | None) -> dict | None:
    if op is None:
        return None
    return {
        "step": op.step, "name": op.name, "formula": op.formula, "inputs": list(op.inputs),
        "params": list(op.params), "params_from": op.params_from, "dtype": op.dtype, "shape": list(op.shape),
        "ok": op.ok, "max_abs_error": op.max_abs, "max_rel_error": op.max_rel, "tolerance_ratio": op.ratio,
        "n_out": op.n_out, "index": list(op.index) if op.index is not None else None,
        "recorded": op.recorded_value, "recomputed": op.recomputed_value,
        "tolerance": report_json.jsonable(op.tolerance), "message": op.message, "invariants": list(op.invariants),
    }


def check_dict(r: CheckResult) -> dict:
    """What only check has, JSON-ready: the "check" object of the report."""
    f = r.first_finding
    return report_json.jsonable({
        "ok": r.ok,
        "verdict": verdict(r),
        "trace": str(r.path), "encoding": r.encoding, "n_layers": r.n_layers, "dtype": r.dtype,
        "steps": r.steps, "first_step": r.first_step, "last_step": r.last_step, "incomplete_step": r.incomplete_step,
        "ended_early": r.ended_early,
        "operations": r.operations, "invariant_checks": r.invariant_checks,
        "failing_operations": r.n_failures, "failing_steps": r.failing_steps,
        "first": {"kind": f.kind, "code": f.code, "step": f.step, "name": f.name, "message": f.message}
        if f is not None else None,
        "first_failure": _op(r.first_failure),
        "worst": _op(r.worst),
        "failures": [_op(o) for o in r.failures],
        "findings": [report_json.jsonable(x) for x in r.findings],
        "settings": {"activation": r.activation, "loss_reduction": r.reduction, "learning_rate": r.learning_rate,
                     "params_at_step_0": r.params_source},
        "by_name": {n: s for n, s in r.by_name.items()},
        "unchecked": list(r.unchecked),
        "coverage": {"recorded": r.coverage.recorded, "verified": r.coverage.verified, "steps": r.coverage.steps,
                     "per_step": r.coverage.per_step, "complete": r.coverage.complete, "line": r.coverage.line(),
                     "unverified": [u for u in r.coverage.unverified]},
        "lr_fits": [{"name": n, "median": m, "lowest": lo, "highest": hi, "updates": c, "agrees": a}
                    for n, m, lo, hi, c, a in r.lr_fits],
        "notes": list(r.notes),
        "invariants": INVARIANTS,
        "seconds": r.seconds,
    })


def to_dict(r: CheckResult) -> dict:
    """The diff report's JSON (docs/report-schema.md) of the check's Comparison, plus a "check" object."""
    doc = report_json.to_dict(r.comparison)
    doc["check"] = check_dict(r)
    return doc


def render_json(r: CheckResult, indent: int | None = 2) -> str:
    return report_json.dumps(to_dict(r), indent)


# ---------------------------------------------------------------- HTML

# the page skeleton, CSS and escaping are the diff report's (memstate.report.page)
_h = html_page.esc


def render_html(r: CheckResult) -> str:
    """A self-contained HTML page: verdict, first wrong operation, diagnosis, settings, per-tensor table, and
    the full text report."""
    cls = "clean" if r.ok else "fail"
    parts = [f"<h1>memstate check: {_h(r.path)}</h1>", f"<p class='{cls}'><b>{_h(verdict(r))}</b></p>",
             f"<p>{_h(r.coverage.line())}</p>"]
    op, f = r.first_failure, r.first_divergence
    if op is not None and f is not None:
        parts.append("<h2>First wrong operation</h2><table>")
        rows = [("step", op.step), ("tensor", op.name), ("operation", f"{op.name} = {op.formula}"),
                ("computed from", ", ".join(op.inputs) + (f"; parameters in force {', '.join(op.params)} "
                                                          f"({_params_from(op.params_from)})" if op.params else "")),
                ("elements out of tolerance", f"{op.n_out} of {math.prod(op.shape) if op.shape else 1}"
                                              + (f" ({f.pattern})" if f.pattern else "")),
                ("max rel error", _e(op.max_rel)), ("tolerance", op.tolerance.describe()),
                ("invariants violated", ", ".join(op.invariants) or "none")]
        parts += [f"<tr><th>{_h(k)}</th><td>{_h(v)}</td></tr>" for k, v in rows]
        parts.append("</table>")
        parts.append(report_svg.heatmap_figure(f))
        if f.worst:
            parts.append("<p>worst elements (A recomputed, B recorded):</p><table><tr><th>index</th><th>A</th>"
                         "<th>B</th><th>abs err</th></tr>")
            parts += [f"<tr><td>{_h(list(e.index))}</td><td class='n'>{_h(repr(e.a))}</td><td class='n'>"
                      f"{_h(repr(e.b))}</td><td class='n'>{_h(_e(e.abs_error))}</td></tr>" for e in f.worst]
            parts.append("</table>")
    if r.diagnoses:
        top = r.diagnoses[0]
        parts.append(f"<h2>Diagnosis: <span class='code'>{_h(top.code)}</span> "
                     f"(confidence {top.confidence:.2f})</h2><p>{_h(top.explanation)}</p>")
        if len(r.diagnoses) > 1:
            parts.append("<p>also possible: " + ", ".join(f"<span class='code'>{_h(d.code)}</span> "
                                                           f"({d.confidence:.2f})" for d in r.diagnoses[1:]) + "</p>")
    if r.findings:
        parts.append("<h2>Findings</h2><ul>")
        parts += [f"<li><span class='code'>{_h(x.code)}</span> at {_h(x.name)}, step {_h(x.step)}"
                  f"{'' if x.count == 1 else f' ({x.count} times)'}: {_h(x.message)}</li>" for x in r.findings]
        parts.append("</ul>")
    parts.append("<h2>Settings</h2><table>")
    for label, s in (("activation", r.activation), ("loss reduction", r.reduction), ("learning rate", r.learning_rate)):
        flag = "" if s.consistent else " <b class='fail'>inconsistent</b>"
        parts.append(f"<tr><th>{label}</th><td>{_h(s.value)}</td><td>{_h(s.source)}{flag}</td>"
                     f"<td>{_h(s.evidence)}</td></tr>")
    parts.append(f"<tr><th>step 0 params</th><td colspan='3'>{_h(r.params_source)}</td></tr></table>")
    parts.append(f"<h2>Operations verified ({r.operations})</h2><table><tr><th>tensor</th><th>checked</th>"
                 "<th>failed</th><th>skipped</th><th>worst rel</th><th>x tolerance</th><th>at step</th></tr>")
    for name, ns in r.by_name.items():
        parts.append(f"<tr class='{'bad' if ns.failed else ''}'><td>{_h(name)}</td><td class='n'>{ns.checked}</td>"
                     f"<td class='n'>{ns.failed}</td><td class='n'>{ns.skipped}</td><td class='n'>"
                     f"{_h(_e(ns.worst_rel))}</td><td class='n'>{_h(_ratio(ns.worst_ratio))}</td><td class='n'>"
                     f"{_h('' if ns.worst_step is None else ns.worst_step)}</td></tr>")
    parts.append("</table>")
    if r.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{_h(n)}</li>" for n in r.notes) + "</ul>")
    parts.append(f"<h2>Text report</h2><pre>{_h(render(r))}</pre>")
    return html_page.page(f"memstate check: {r.path.name}", parts, css=report_svg.HEAT_CSS)


RENDERERS = {"text": render, "json": render_json, "html": render_html}

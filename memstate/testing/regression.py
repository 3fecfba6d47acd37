"""The golden-trace lifecycle behind the `memstate_regression` fixture (memstate.testing.plugin).

    def test_training(memstate_regression, tmp_path):
        trace = train_and_record(tmp_path / "run.memstate")
        memstate_regression.check(trace)                # or check(steps), check(trace, encoding="jsonl")

One golden trace per check, at `<test file dir>/<test file stem>/<test name>.memstate` (binary, the default)
or `<test name>.memstate.jsonl` (JSONL: reviewable diffs in git):

* missing      -> written from this run; the test fails saying so (review and commit it, then rerun);
* unreadable   -> the test fails with what is wrong, which file, and how to regenerate it (no traceback);
* agrees       -> the test passes and the golden is left alone (not even rewritten);
* differs      -> the test fails with the comparator's text report (first divergence, diagnosis);
                  `--memstate-keep-failed DIR` also copies both traces and the reports to DIR/<test id>/;
* --memstate-regen and it differs (or is unreadable) -> the golden is rewritten and the test fails saying so.

Every failure message ends with the command that fixes it.
"""

from __future__ import annotations

import os
import re
import shlex
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from memstate.comparator.compare import Comparison, compare
from memstate.errors import MemstateError
from memstate.testing.asserts import (
    as_trace,
    comparison_summary,
    short_summary,
    folder_for_test,
    keep_traces,
    kept_message,
    make_tolerances,
    split_tolerance_kwargs,
    step_count_problem,
    write_steps,
)
from memstate.formats.trace import TraceReader, open_trace

ENCODINGS = ("binary", "jsonl")
SUFFIX = {"binary": ".memstate", "jsonl": ".memstate.jsonl"}


def _fail(message: str) -> None:
    """Fail the test with `message` and no traceback (pytest.fail), or an AssertionError outside pytest."""
    __tracebackhide__ = True
    try:
        import pytest
    except ImportError:  # pragma: no cover - the fixture only exists under pytest
        raise AssertionError(message) from None
    pytest.fail(message, pytrace=False)


@dataclass(frozen=True)
class TraceScan:
    """What reading a whole trace found: its complete steps, the crashed step at its end, or why it is unreadable."""

    steps: int = 0
    names: int = 0  # tensors in the first step
    incomplete: int | None = None
    error: str | None = None


def scan_trace(path: Path) -> TraceScan:
    """Read every step of the trace at `path`; any failure is reported, never raised."""
    try:
        with open_trace(path) as reader:
            steps, names = 0, 0
            for step in reader.steps():
                names = names or len(step.tensors)
                steps += 1
            incomplete = reader.incomplete.index if reader.incomplete is not None else None
        return TraceScan(steps, names, incomplete)
    except MemstateError as exc:
        return TraceScan(error=str(exc))
    except Exception as exc:  # a corrupt file may break a reader in any way: report it, do not crash
        return TraceScan(error=f"{path}: {type(exc).__name__}: {exc}")


def _n(count: int, what: str) -> str:
    return f"{count} {what}{'s' * (count != 1)}"


def write_golden(src: Path, golden: Path, encoding: str) -> None:
    """Copy trace `src` to `golden` in `encoding` (JSONL as decimal numbers), replacing it whole: written under a
    temporary name and renamed into place, with the golden locked so that two sessions cannot both write it."""
    from memstate.formats.convert import convert_trace

    golden.parent.mkdir(parents=True, exist_ok=True)
    convert_trace(src, golden, encoding=encoding, b64=False)


@dataclass(repr=False)
class MemstateRegression:
    """The `memstate_regression` fixture: `check(trace_path_or_steps, basename=None, **tolerances)`."""

    datadir: Path  # <test file dir>/<test file stem>
    test_name: str  # the default basename, before sanitising (class name prefixed when in a class)
    test_id: str  # the node id, for the commands in messages and for --memstate-keep-failed
    regen: bool = False
    encoding: str = "binary"  # the default for new goldens (ini option memstate_encoding)
    keep_failed: Path | None = None
    rootdir: Path | None = None
    invocation_dir: Path | None = None
    tmp_dir: Callable[[], Path] | None = None  # a fresh folder for traces given in memory
    _used: set = field(default_factory=set)

    def __repr__(self) -> str:
        return f"<memstate_regression: goldens in {self._show(self.datadir)}>"

    @classmethod
    def from_request(cls, request: Any) -> MemstateRegression:
        config, node = request.config, request.node
        path = Path(node.path)
        test_class = getattr(node, "cls", None)
        name = node.name if test_class is None else f"{test_class.__name__}_{node.name}"
        keep = config.getoption("memstate_keep_failed")
        factory = request.getfixturevalue("tmp_path_factory")
        return cls(
            datadir=path.parent / path.stem,
            test_name=name,
            test_id=node.nodeid,
            regen=bool(config.getoption("memstate_regen")),
            encoding=config.getini("memstate_encoding") or "binary",
            keep_failed=Path(keep).resolve() if keep else None,
            rootdir=Path(config.rootpath),
            invocation_dir=Path(config.invocation_params.dir),
            tmp_dir=lambda: factory.mktemp("memstate-obtained"),
        )

    # -- paths and commands
    def golden_path(self, basename: str | None = None, encoding: str | None = None) -> Path:
        """Where the golden trace of this test (and basename) lives; an existing one decides the encoding
        unless `encoding` is given."""
        base = basename if basename is not None else re.sub(r"\W", "_", self.test_name)
        if encoding is not None:
            if encoding not in ENCODINGS:
                raise ValueError(f"encoding={encoding!r}: use 'binary' or 'jsonl'")
            return self.datadir / f"{base}{SUFFIX[encoding]}"
        default = self.encoding if self.encoding in ENCODINGS else "binary"
        existing = [e for e in ENCODINGS if (self.datadir / f"{base}{SUFFIX[e]}").exists()]
        chosen = existing[0] if len(existing) == 1 else default
        return self.datadir / f"{base}{SUFFIX[chosen]}"

    def _show(self, path: Path) -> str:
        if self.rootdir is not None:
            try:
                return str(Path(path).resolve().relative_to(self.rootdir.resolve()))
            except ValueError:
                pass
        return str(path)

    def command(self, *options: str) -> str:
        """The pytest command that reruns this test (from the rootdir when pytest was started elsewhere)."""
        cmd = " ".join(["pytest", shlex.quote(self.test_id), *options])
        if self.rootdir is not None and self.invocation_dir is not None and \
                self.rootdir.resolve() != self.invocation_dir.resolve():
            cmd = f"cd {shlex.quote(str(self.rootdir))} && {cmd}"
        return cmd

    # -- the check
    def check(self, trace: Any, basename: str | None = None, *, encoding: str | None = None,
              meta: dict | None = None, **tolerances: Any) -> Comparison | None:
        """Compare `trace` with this test's golden trace; create it on the first run, rewrite it with --memstate-regen.

        `trace`: a trace path (JSONL file or binary directory), a TraceReader, a `memstate.run` result, or steps
        in memory (`{step: {name: array}}`, a list of `{name: array}`, or `Step`s; `meta` is their header's
        meta). `basename` names the golden when a test checks more than one trace. `encoding` ("binary" or
        "jsonl") is that of a new golden; by default an existing golden keeps its own. Tolerance keywords
        (rtol, atol, tol, ulp, tolerances) as for memstate.testing.asserts.assert_traces_close. Returns the
        Comparison when the trace agrees with its golden.
        """
        __tracebackhide__ = True
        tol_kwargs = split_tolerance_kwargs(tolerances)
        if tolerances:
            raise TypeError(f"check() got an unexpected keyword argument {sorted(tolerances)[0]!r}; "
                            "tolerance keywords are rtol, atol, tol, ulp and tolerances")
        policy = make_tolerances(**tol_kwargs)
        golden = self.golden_path(basename, encoding)
        if golden in self._used:
            raise ValueError(f"this test already checked a trace against {self._show(golden)}; give each "
                             "check() of one test its own basename=")
        self._used.add(golden)
        enc = "binary" if golden.name.endswith(SUFFIX["binary"]) else "jsonl"
        with ExitStack() as stack:
            obtained = self._obtained(trace, golden, meta, stack)
            return self._check(obtained, golden, enc, policy)

    def _obtained(self, trace: Any, golden: Path, meta: dict | None, stack: ExitStack) -> Path:
        """A path for the trace under test; steps given in memory are written to a folder of their own."""
        if isinstance(trace, TraceReader):
            return Path(trace.path)
        if isinstance(trace, (str, os.PathLike)):
            return Path(trace)
        if isinstance(getattr(trace, "trace", None), (str, os.PathLike)):
            return Path(trace.trace)
        if self.tmp_dir is None:
            found = as_trace(trace, stack, "obtained")
            assert not isinstance(found, TraceReader)  # readers were taken above
            return Path(found)
        name = golden.name.removesuffix(SUFFIX["jsonl"]).removesuffix(SUFFIX["binary"])
        return write_steps(trace, self.tmp_dir() / f"{name}.obtained.memstate", meta=meta, encoding="binary")

    def _check(self, obtained: Path, golden: Path, encoding: str, policy: Any) -> Comparison | None:
        __tracebackhide__ = True
        got = scan_trace(obtained)
        if got.error is not None:
            raise AssertionError(f"memstate: the trace under test cannot be read, so it cannot be compared with "
                                 f"its golden trace:\n  {got.error}")
        if not golden.exists():
            self._refuse_crashed(got, obtained, "create the golden trace")
            write_golden(obtained, golden, encoding)
            _fail(f"memstate: no golden trace for this test yet; created it from this run:\n"
                  f"  {self._show(golden)}  ({_n(got.steps, 'step')}, {_n(got.names, 'tensor')} per step, {encoding})\n"
                  f"Review it and commit it; from now on this test compares its trace against it. Rerun:\n"
                  f"  {self.command()}")
        old = scan_trace(golden)
        if old.error is None and old.incomplete is not None:
            old = TraceScan(error=f"{golden}: ends in an incomplete step ({old.incomplete}), as if the run that "
                                  "wrote it crashed; a golden trace must be whole")
        if old.error is not None:
            if self.regen:
                self._refuse_crashed(got, obtained, "regenerate the golden trace")
                write_golden(obtained, golden, encoding)
                _fail(f"memstate: --memstate-regen: the golden trace could not be read, so it was rewritten from "
                      f"this run:\n  {self._show(golden)}\n  (it was: {old.error})\n"
                      f"Review the change and commit it; rerun without --memstate-regen to check:\n"
                      f"  {self.command()}")
            _fail(f"memstate: the golden trace of this test cannot be read:\n  {old.error}\n"
                  f"The file {self._show(golden)} is corrupt or was edited (a merge conflict, a cut-off copy, "
                  f"a Git LFS pointer?). Restore it from version control, or rewrite it from this run with:\n"
                  f"  {self.command('--memstate-regen')}")
        try:
            c = compare(golden, obtained, tolerances=policy)
        except MemstateError as exc:
            raise AssertionError(f"memstate: comparing with the golden trace failed: {exc}") from None
        problem = None if not c else step_count_problem(c)
        if c and problem is None:
            return c
        summary = comparison_summary(c) if not c else f"the traces agree but are not the same run: {problem}"
        if self.regen:
            self._refuse_crashed(got, obtained, "regenerate the golden trace")
            write_golden(obtained, golden, encoding)
            _fail(f"memstate: --memstate-regen: this run differs from the golden trace ({summary}), so the "
                  f"golden was rewritten:\n  {self._show(golden)}\n"
                  f"{review_hint(encoding)}; rerun without --memstate-regen to check:\n"
                  f"  {self.command()}")
        from memstate.report import text as report_text

        lines = [f"memstate regression: this run differs from its golden trace{short_summary(c)}",
                 f"  golden (A):   {self._show(golden)}",
                 f"  this run (B): {self._show(obtained)}",
                 f"  {summary}", "", report_text.render(c).rstrip("\n"), ""]
        if self.keep_failed is not None:
            folder = self.keep_failed / folder_for_test(self.test_id)
            names = keep_traces(folder, {"golden": golden, "obtained": obtained}, c)
            lines += [kept_message(folder, names), ""]
        lines += ["If the change is intended, rewrite the golden trace from this run and review its diff:",
                  f"  {self.command('--memstate-regen')}"]
        raise AssertionError("\n".join(lines))

    def _refuse_crashed(self, got: TraceScan, obtained: Path, what: str) -> None:
        __tracebackhide__ = True
        if got.incomplete is not None:
            _fail(f"memstate: this run's trace {self._show(obtained)} ends in an incomplete step "
                  f"({got.incomplete}): the run crashed, and a crashed run cannot {what}. Fix the crash and rerun:\n"
                  f"  {self.command()}")


__all__ = ["MemstateRegression", "scan_trace", "write_golden"]


def review_hint(encoding: str) -> str:
    """How to review a rewritten golden: git diff reads a JSONL golden, not the safetensors of a binary one."""
    if encoding == "jsonl":
        return "Review the change (git diff shows it tensor by tensor) and commit it"
    return ("Review the change (the summary above says where it moved; git diff of a binary golden only lists "
            "the step files that changed) and commit it")

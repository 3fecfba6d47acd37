"""memstate's pytest plugin, registered through the `pytest11` entry point: installing memstate is enough.

Options (group "memstate") and fixtures only; everything else is imported when a fixture is used, so the
plugin costs nothing in test sessions that do not use it. docs/pytest.md has the walkthrough.

Fixtures:
    memstate_regression  check(trace_path_or_steps, basename=None, **tolerances) against a golden trace
                         (memstate.testing.regression)
    memstate_run         memstate_run(impl, scenario, steps=None) -> trace path (memstate.testing.crossimpl)
    impl_a, impl_b       the implementation pair of a test decorated with @memstate.cross_impl(...)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from memstate.testing.crossimpl import ImplRunner
    from memstate.testing.regression import MemstateRegression

_SETTINGS = pytest.StashKey[Any]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("memstate", "memstate: golden traces and differential tests of neural-network code")
    group.addoption("--memstate-regen", action="store_true", default=False,
                    help="rewrite the golden traces that differ from this run (or cannot be read); "
                         "those tests fail once, saying so; review the diff and commit it")
    group.addoption("--memstate-rtol", type=float, default=None, metavar="X",
                    help="relative tolerance for every memstate check in the session (replaces rtol=; "
                         "per-name tol= rules still apply)")
    group.addoption("--memstate-atol", type=float, default=None, metavar="X",
                    help="absolute tolerance for every memstate check in the session (replaces atol=; "
                         "per-name tol= rules still apply)")
    group.addoption("--memstate-keep-failed", default=None, metavar="DIR",
                    help="when a trace check fails, copy both traces and the JSON and text reports to "
                         "DIR/<test id>/")
    parser.addini("memstate_encoding", default="binary",
                  help="encoding of new golden traces: binary (default) or jsonl (reviewable diffs)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "memstate_cross_impl(*impls, reference=None): the implementation pairs of a test, set by "
                   "@memstate.cross_impl; the test gets their names as impl_a and impl_b")
    rtol, atol = config.getoption("memstate_rtol"), config.getoption("memstate_atol")
    keep = config.getoption("memstate_keep_failed")
    encoding = config.getini("memstate_encoding")
    if encoding not in ("binary", "jsonl"):
        raise pytest.UsageError(f"memstate_encoding = {encoding!r}: use binary or jsonl")
    if rtol is None and atol is None and keep is None:
        return
    from pathlib import Path

    from memstate.errors import MemstateError
    from memstate.testing.asserts import SessionSettings, push_settings

    keep_dir = Path(keep).resolve() if keep is not None else None
    try:
        config.stash[_SETTINGS] = push_settings(SessionSettings(rtol=rtol, atol=atol, keep_failed=keep_dir))
    except MemstateError as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_unconfigure(config: pytest.Config) -> None:
    settings = config.stash.get(_SETTINGS, None)
    if settings is not None:
        from memstate.testing.asserts import pop_settings

        pop_settings(settings)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    """Tell the assertions which test runs, so that --memstate-keep-failed can name its folder."""
    settings = item.config.stash.get(_SETTINGS, None)
    if settings is not None:
        settings.test_id = item.nodeid
    try:
        yield
    finally:
        if settings is not None:
            settings.test_id = None


@pytest.fixture
def memstate_regression(request: pytest.FixtureRequest) -> MemstateRegression:
    """Regression-test a whole memstate trace against a golden one kept next to the test.

        def test_training(memstate_regression, memstate_run):
            memstate_regression.check(memstate_run("numpy", "mnist14-relu", 3), encoding="jsonl")

    The first run writes `<test file dir>/<test file stem>/<test name>.memstate` (or `.memstate.jsonl`) and
    fails saying so; later runs compare with it and fail with the comparator's report (first divergence,
    diagnosis). `--memstate-regen` rewrites goldens that differ. Tolerance keywords as for
    memstate.testing.asserts.assert_traces_close.
    """
    from memstate.testing.regression import MemstateRegression

    return MemstateRegression.from_request(request)


@pytest.fixture(scope="session")
def memstate_run(tmp_path_factory: pytest.TempPathFactory) -> ImplRunner:
    """`memstate_run(impl, scenario, steps=None, *, variant=None, encoding="binary", impl_timeout=None) -> Path`:
    the trace of `impl` (a name, or `cmd:COMMAND {params} {batches} {trace}` for a port in any language) trained
    on `scenario` (a bundled scenario's name or a .toml path) for `steps` steps. Cached for the session; a
    built-in implementation that cannot load here skips the test."""
    from memstate.testing.crossimpl import ImplRunner

    return ImplRunner(lambda: tmp_path_factory.mktemp("memstate-runs"))


@pytest.fixture
def impl_a(request: pytest.FixtureRequest) -> str:
    """The reference implementation (side A) of a @memstate.cross_impl pair."""
    return _impl_param(request, "impl_a")


@pytest.fixture
def impl_b(request: pytest.FixtureRequest) -> str:
    """The implementation under test (side B) of a @memstate.cross_impl pair."""
    return _impl_param(request, "impl_b")


def _impl_param(request: pytest.FixtureRequest, name: str) -> str:
    __tracebackhide__ = True
    if not hasattr(request, "param"):
        pytest.fail(f"{name} comes from @memstate.cross_impl('numpy', 'python', ...) on the test; "
                    f"{request.node.name} has none", pytrace=False)
    from memstate.testing.crossimpl import require_impl

    return require_impl(request.param)

"""The pytest plugin with `cmd:` ports: `memstate_run("cmd:...")` and `@memstate.cross_impl` pairs that hold one,
driven through pytester as a user would."""

pytest_plugins = ["pytester"]

# pytester forgets the modules an inner run imported; C extensions cannot load twice: import them here, once.
import memstate.comparator.compare  # noqa: F401, E402
import memstate.diagnose.catalogue  # noqa: F401, E402
import memstate.impls.numpy_mlp  # noqa: F401, E402
import memstate.report.text  # noqa: F401, E402
import memstate.runner.command  # noqa: F401, E402
import memstate.runner.harness  # noqa: F401, E402
import memstate.testing.asserts  # noqa: F401, E402
import memstate.testing.crossimpl  # noqa: F401, E402

from cmd_ports import py_cmd, tiny_scenario  # noqa: E402

RUN = """
import memstate
from memstate.formats.trace import open_trace, read_trace
from memstate.testing.asserts import assert_traces_close

PORT = {port!r}
BUGGY = {buggy!r}
SCENARIO = {scenario!r}


def test_port_agrees(memstate_run):
    trace = memstate_run(PORT, SCENARIO, 3)
    with open_trace(trace) as t:
        assert t.meta["impl"] == PORT and t.meta["port"]["impl"] == "reference"
    assert [s.index for s in read_trace(trace)] == [0, 1, 2]
    assert_traces_close(memstate_run("numpy", SCENARIO, 3), trace)


def test_buggy_port_differs(memstate_run):
    assert_traces_close(memstate_run("numpy", SCENARIO, 3), memstate_run(BUGGY, SCENARIO, 3))


@memstate.cross_impl(PORT, reference="numpy")
def test_pair(impl_a, impl_b, memstate_run):
    assert_traces_close(memstate_run(impl_a, SCENARIO, 2), memstate_run(impl_b, SCENARIO, 2))


def test_bad_command(memstate_run):
    memstate_run("cmd:python3 port.py {{params}}", SCENARIO, 2)
"""


def test_memstate_run_and_cross_impl_drive_a_port(pytester, tmp_path):
    scenario = str(tiny_scenario(tmp_path))
    buggy = py_cmd("--bug", "softmax-global-sum", "--bug-from-step", "1")
    pytester.makepyfile(test_cmd_port_plugin=RUN.format(port=py_cmd(), buggy=buggy, scenario=scenario))
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=2)
    reports = {r.nodeid.split("::")[-1]: r for r in result.reprec.getfailures() if r.when == "call"}
    assert sorted(reports) == ["test_bad_command", "test_buggy_port_differs"]
    differs = str(reports["test_buggy_port_differs"].longrepr)
    assert "step 1" in differs and "probs" in differs
    assert "it lacks {batches}, {trace}" in str(reports["test_bad_command"].longrepr)
    passed = sorted(r.nodeid.split("::")[-1] for r in result.reprec.getreports("pytest_runtest_logreport")
                    if r.when == "call" and r.passed)
    assert passed == [f"test_pair[numpy-{py_cmd()}]", "test_port_agrees"]

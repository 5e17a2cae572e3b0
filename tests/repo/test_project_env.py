"""The project's own Python (repo/pyenv.py): real virtualenvs made by `python -m venv` in tmp
dirs (under /tmp and so under the sandbox's mask), holding packages decision-retry's environment
lacks; `fix` end to end with the scripted model; bad environments are one line, exit 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from decision_retry.agent.runner import fix
from decision_retry.errors import BadInput
from decision_retry.localise.locate import localise
from decision_retry.repo import pyenv
from decision_retry.repo.sandbox import resolve
from decision_retry.repo.testrun import run_tests
from decision_retry.testing import scripted_lm
from tests.helpers import UNITS_SCRIPT, fix_config, fixture_repo, git, repo_state, run_cli

SITE = Path(pytest.__file__).resolve().parents[1]  # our site-packages
PYTEST_PARTS = ("pytest", "_pytest", "pluggy", "iniconfig", "packaging", "pygments", "py.py")
VENV_ONLY = "stationlib"  # a package only the project's .venv has
STATION_PLUGIN = '''import pytest


@pytest.fixture
def station():
    return "Oslo"
'''


@pytest.fixture(scope="session")
def pytest_only(tmp_path_factory) -> Path:
    """A directory holding only pytest and what it imports (links into our environment)."""
    d = tmp_path_factory.mktemp("pytest-only")
    for name in PYTEST_PARTS:
        (d / name).symlink_to(SITE / name)
    return d


def make_venv(root: Path, pytest_dir: Path, modules: dict[str, str] | None = None,
              plugins: dict[str, str] | None = None) -> Path:
    """A real virtualenv at `root` (`python -m venv`, no pip, nothing downloaded): pytest through
    a .pth file, `modules` (name -> source) in its site-packages, and each of `plugins` (module
    name) registered as a pytest plugin by entry point, with a dist-info as pip writes one."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    site = next(root.glob("lib/python*/site-packages"))
    (site / "pytest_only.pth").write_text(f"{pytest_dir}\n")
    for name, source in (modules or {}).items():
        (site / f"{name}.py").write_text(source)
    for name in plugins or {}:
        info = site / f"{name}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[pytest11]\n{name} = {name}\n")
    return root


def units_with_venv(tmp_path: Path, pytest_dir: Path) -> Path:
    """The units fixture importing a package that only its gitignored .venv has."""
    repo = fixture_repo(tmp_path, "units")
    code = (repo / "units.py").read_text()
    (repo / "units.py").write_text(f"import {VENV_ONLY}  # noqa: F401 - in .venv only\n" + code)
    (repo / ".gitignore").write_text(".venv/\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "a dependency")
    make_venv(repo / ".venv", pytest_dir, {VENV_ONLY: "NAME = 'station'\n"})
    return repo


def clone_of(repo: Path, dest: Path) -> Path:
    """What the private clone holds: the tracked files, no .venv."""
    shutil.copytree(repo, dest, ignore=shutil.ignore_patterns(".venv", ".git"))
    return dest


@pytest.mark.slow
def test_cli_fixes_a_project_whose_code_needs_its_venv(tmp_path, pytest_only):
    """The issue's new user: no flag, the repository's .venv is found, named, used, fixed."""
    repo = units_with_venv(tmp_path, pytest_only)
    script = tmp_path / "units.json"
    script.write_text(json.dumps({"segments": UNITS_SCRIPT}))
    before = repo_state(repo)
    proc = run_cli("fix", repo, "--model", f"scripted:{script}", "--proposal-temperature", "1",
                   "--seed", "3", "--max-attempts", "12", "--json", home=tmp_path / "home")
    assert proc.returncode == 0, proc.stderr
    venv_python = repo / ".venv" / "bin" / "python"
    assert f"python: {venv_python} (the repository's .venv)" in proc.stderr
    result = json.loads(proc.stdout)
    assert result["fixed"] and "celsius * 9 / 5 + 32" in result["diff"]
    assert result["python"].startswith(f"python: {venv_python}")
    assert repo_state(repo) == before  # the fix is on its branch only
    assert "+ 32" in git(repo, "show", f"{result['branch']}:units.py")


def test_fix_with_a_pytest_plugin_only_the_project_has(tmp_path, pytest_only, store,
                                                       monkeypatch):
    """A fixture from a plugin registered by entry point in the project's .venv: the tests
    fail on the bug (not on a missing fixture), and the fix is found."""
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)  # a user's own choice
    repo = fixture_repo(tmp_path, "units")
    (repo / "tests" / "test_station.py").write_text(
        "from units import celsius_to_fahrenheit\n\n\n"
        "def test_station_reading(station):\n"
        "    assert station == 'Oslo' and celsius_to_fahrenheit(10) == 50\n")
    (repo / ".gitignore").write_text(".venv/\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "station test")
    make_venv(repo / ".venv", pytest_only, {"pytest_station": STATION_PLUGIN},
              plugins={"pytest_station": ""})
    found = pyenv.find(repo, environ={})
    assert found.origin == "the repository's .venv" and not found.own
    first = run_tests("python -m pytest -q", clone_of(repo, tmp_path / "clone"), 60,
                      sandbox=resolve("auto"), python=found)
    assert first.failed >= 1 and "fixture 'station' not found" not in first.output_tail
    result = fix(repo, fix_config(seed=3), lm=scripted_lm(UNITS_SCRIPT), store=store, python=found)
    assert result.fixed and "+    return celsius * 9 / 5 + 32" in result.diff
    recorded = store.load(result.run_id).run.config  # the trace names the interpreter
    assert recorded["interpreter"] == found.note and recorded["python"] is None
    # decision-retry's own interpreter does not have the plugin: the fixture is missing there
    ours = run_tests("python -m pytest -q tests/test_station.py", tmp_path / "clone", 60,
                     python=pyenv.own(repo))
    assert ours.errors == 1 and "fixture 'station' not found" in ours.output_tail


def test_coverage_is_lent_to_a_venv_without_it(tmp_path, pytest_only):
    """The localisation's coverage run uses the project's interpreter, which lacks `coverage`
    and gets ours for that run only: the spectrum names the buggy function."""
    repo = units_with_venv(tmp_path, pytest_only)
    found = pyenv.find(repo, environ={})
    assert not found.has_coverage
    clone = clone_of(repo, tmp_path / "clone")
    result = run_tests("python -m pytest -q", clone, 60, sandbox=resolve("auto"), python=found)
    assert result.failed and result.source == "junit"
    loc = localise(clone, result, test_cmd="python -m pytest -q", timeout=120,
                   sandbox=resolve("auto"), python=found)
    assert loc.spectrum is not None and loc.spectrum.note == "", loc.spectrum
    assert loc.suspect is not None and loc.suspect.name == "celsius_to_fahrenheit"
    site = next((repo / ".venv").glob("lib/python*/site-packages"))
    assert not list(site.glob("coverage*"))  # nothing was installed into it


def test_relative_venv_command_and_editable_install_use_the_clone(tmp_path, pytest_only):
    """`.venv/bin/python -m pytest` runs the user's .venv from the clone (which has none), and
    a project installed editable (a .pth naming the user's src/) imports the clone's code."""
    repo = tmp_path / "repo"
    (repo / "src" / "calc").mkdir(parents=True)
    (repo / "tests").mkdir()
    (repo / "src" / "calc" / "__init__.py").write_text("def double(x):\n    return x + x + 1\n")
    (repo / "tests" / "test_calc.py").write_text(
        "from calc import double\n\n\ndef test_double():\n    assert double(2) == 4\n")
    venv = make_venv(repo / ".venv", pytest_only)
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "__editable__.calc-0.1.pth").write_text(f"{repo / 'src'}\n")
    found = pyenv.find(repo, environ={})
    clone = clone_of(repo, tmp_path / "clone")
    assert run_tests("python -m pytest -q", clone, 60, sandbox=resolve("auto"),
                     python=found).failed == 1
    (clone / "src" / "calc" / "__init__.py").write_text("def double(x):\n    return x + x\n")
    fixed = run_tests(".venv/bin/python -m pytest -q", clone, 60, sandbox=resolve("auto"),
                      python=found)
    assert fixed.ok, fixed.output_tail
    assert fixed.command[0] == str(repo / ".venv" / "bin" / "python")


def test_no_project_environment_means_ours_without_plugin_autoload(tmp_path):
    repo = tmp_path / "bare"
    (repo / "tests").mkdir(parents=True)
    (repo / "tests" / "test_env.py").write_text(
        "import os, sys\n\n\ndef test_plugins_stay_out():\n"
        "    assert os.environ['PYTEST_DISABLE_PLUGIN_AUTOLOAD'] == '1'\n"
        "    assert '_hypothesis_pytestplugin' not in sys.modules\n\n\n"
        "def test_fails():\n    assert False\n")
    found = pyenv.find(repo, environ={"VIRTUAL_ENV": sys.prefix})  # ours, activated: not theirs
    assert found.own and found.executable == sys.executable
    assert "pytest plugins not autoloaded" in found.note
    result = run_tests("python -m pytest -q", repo, 60, sandbox=resolve("auto"), python=found)
    assert (result.passed, result.failed) == (1, 1) and result.source == "junit"


def test_choice_order_and_active_virtualenvs(tmp_path, pytest_only):
    repo = tmp_path / "repo"
    repo.mkdir()
    other = make_venv(tmp_path / "elsewhere", pytest_only)
    assert pyenv.find(repo, environ={"VIRTUAL_ENV": str(other)}).origin == "the active VIRTUAL_ENV"
    make_venv(repo / "venv", pytest_only)
    assert pyenv.find(repo, environ={"VIRTUAL_ENV": str(other)}).origin == "the repository's venv"
    inside = make_venv(repo / ".venv-3.11", pytest_only)
    chosen = pyenv.find(repo, environ={"VIRTUAL_ENV": str(inside)})
    assert chosen.origin == "the active VIRTUAL_ENV, .venv-3.11"
    explicit = pyenv.find(repo, str(other), environ={"VIRTUAL_ENV": str(inside)})
    assert explicit.origin == "--python" and explicit.executable == str(other / "bin" / "python")
    for cmd in (f"{other}/bin/python -m pytest -q", ".venv-3.11/bin/python -m pytest"):
        named = pyenv.find(repo, test_cmd=cmd, environ={})  # the test command names one
        assert named.origin == "named by --test-cmd" and named.executable.endswith("bin/python")


def test_uv_project_environment(tmp_path, pytest_only):
    """uv: the environment UV_PROJECT_ENVIRONMENT names; none yet is our Python plus a hint."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "uv.lock").write_text("version = 1\n")
    bare = pyenv.find(repo, environ={})
    assert bare.own and "`uv sync`" in bare.note
    make_venv(tmp_path / "uv-env", pytest_only)
    found = pyenv.find(repo, environ={"UV_PROJECT_ENVIRONMENT": str(tmp_path / "uv-env")})
    assert found.origin == "uv's UV_PROJECT_ENVIRONMENT" and found.is_venv


def test_missing_or_broken_interpreter_is_bad_input(tmp_path, pytest_only):
    repo = tmp_path / "repo"
    repo.mkdir()
    with pytest.raises(BadInput, match="no such interpreter"):
        pyenv.find(repo, str(tmp_path / "nope" / "python"))
    broken = tmp_path / "broken-python"
    broken.write_text("#!/bin/sh\necho 'libpython3.99.so: cannot open shared object' >&2\nexit 1\n")
    broken.chmod(0o755)
    with pytest.raises(BadInput, match="does not run: libpython3.99.so"):
        pyenv.find(repo, str(broken))
    venv = make_venv(repo / ".venv", pytest_only)  # its base interpreter removed: a dead link
    for exe in (venv / "bin").glob("python*"):
        exe.unlink()
    (venv / "bin" / "python").symlink_to(tmp_path / "gone" / "python3.11")
    with pytest.raises(BadInput, match=r"the repository's .venv .* is broken: bin/python points"):
        pyenv.find(repo, environ={})


def test_cli_bad_python_is_one_line_exit_2(tmp_path):
    repo = fixture_repo(tmp_path, "units")
    script = tmp_path / "units.json"
    script.write_text(json.dumps({"segments": UNITS_SCRIPT}))
    proc = run_cli("fix", repo, "--model", f"scripted:{script}", "--python",
                   tmp_path / "missing" / "bin" / "python", home=tmp_path / "home")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--python" in lines[0] and "no such interpreter" in lines[0]
    assert os.path.isdir(repo)

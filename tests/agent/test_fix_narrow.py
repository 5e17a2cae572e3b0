"""`fix --narrow` through the CLI on a real repository with two test files: the search runs the
failing node ids only, and the whole test command runs once on the fix (fixed, or broke others)."""

from __future__ import annotations

import json

import pytest

from decision_retry.trace.store import TraceStore
from tests.helpers import make_repo, repo_state, run_cli, write

DOC = '    """Degrees Celsius to degrees Fahrenheit."""\n'
UNITS = ("def celsius_to_fahrenheit(celsius: float) -> float:\n" + DOC
         + "    return celsius * 9 / 5 - 32\n")
NARROW = "python -m pytest -x -q tests/test_units.py::test_freezing_point"


def two_file_repo(root):
    write(root / "pyproject.toml", "[tool.pytest.ini_options]\npythonpath = ['.']\n")
    write(root / "units.py", UNITS)
    # fails on the bug: what the narrow command runs
    write(root / "tests/test_units.py", "from units import celsius_to_fahrenheit\n\n\n"
          "def test_freezing_point():\n    assert celsius_to_fahrenheit(0) == 32\n")
    # passes on the bug and on the real fix, fails on a fix that only makes 0 give 32
    write(root / "tests/test_other.py", "from units import celsius_to_fahrenheit\n\n\n"
          "def test_hot_is_hot():\n    assert celsius_to_fahrenheit(100) > 100\n")
    make_repo(root)
    return root


def script(tmp_path, name: str, body: str):
    p = tmp_path / f"{name}.json"
    reply = "def celsius_to_fahrenheit(celsius: float) -> float:\n" + DOC + body
    p.write_text(json.dumps({"segments": [reply, "```"]}))
    return f"scripted:{p}"


def test_runs(home, run_id: str) -> list[tuple[str, int, int]]:
    with TraceStore(home / "traces.db") as store:
        tree = store.load(store.resolve(run_id))
    return [(t.command, t.passed, t.failed) for t in tree.test_runs]


test_runs.__test__ = False  # a helper, not a test


@pytest.mark.slow
def test_narrow_searches_the_failing_ids_then_checks_the_whole_command(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # the summary's lines unwrapped
    repo = two_file_repo(tmp_path / "repo")
    home = tmp_path / "home"
    # 1) the real fix: the narrow run passes, so does the whole command
    fixed = script(tmp_path, "fixed", "    return celsius * 9 / 5 + 32\n")
    proc = run_cli("fix", repo, "--model", fixed,
                   "--narrow", "--max-attempts", "2", home=home)
    assert proc.returncode == 0, proc.stderr
    assert f"narrow: the search ran `{NARROW}`" in proc.stderr
    assert ("wide check: `python -m pytest -x -q` on the fix: 2 passed, 0 failed, 0 errors "
            "(fixed)") in proc.stderr
    run_id = proc.stderr.rsplit("run ", 1)[1].split(":", 1)[0]
    assert test_runs(home, run_id) == [(NARROW, 1, 0), ("python -m pytest -x -q", 2, 0)]
    # 2) a "fix" that makes the narrow test pass and breaks the other file's test: not a fix
    before = repo_state(repo)
    proc = run_cli("fix", repo, "--model", script(tmp_path, "constant", "    return 32.0\n"),
                   "--narrow",
                   "--max-attempts", "2", "--json", home=home)
    assert proc.returncode == 1, proc.stderr
    result = json.loads(proc.stdout)
    assert not result["fixed"] and result["stop"] == "broke other tests"
    assert result["narrow_cmd"] == NARROW and result["branch"] is None
    assert result["wide_check"] == {"command": "python -m pytest -x -q", "ok": False,
                                    "passed": 0, "failed": 1, "errors": 0}
    assert test_runs(home, result["run_id"])[-1] == ("python -m pytest -x -q", 0, 1)
    assert repo_state(repo) == before  # no branch for a fix that broke other tests


def test_without_narrow_the_search_runs_the_whole_command(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    repo = two_file_repo(tmp_path / "repo")
    home = tmp_path / "home"
    proc = run_cli("fix", repo, "--model", script(tmp_path, "constant", "    return 32.0\n"),
                   "--no-narrow", "--max-attempts", "1", home=home)
    # the whole command catches the broken test in the search itself
    assert proc.returncode == 1 and "narrow:" not in proc.stderr and "wide check" not in proc.stderr
    run_id = proc.stderr.rsplit("run ", 1)[1].split(":", 1)[0]
    assert test_runs(home, run_id) == [("python -m pytest -x -q", 0, 1)]

"""`fix --narrow` through the CLI on a real repository with two test files: the search runs the
failing node ids only, and the whole test command runs on each candidate that passes them (a fix,
or a failing state the search goes on from)."""

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
    # 2) a "fix" that makes the narrow test pass and breaks the other file's test: not a fix,
    # and not the end of the search either: the next attempt runs (the same reply: cached)
    before = repo_state(repo)
    proc = run_cli("fix", repo, "--model", script(tmp_path, "constant", "    return 32.0\n"),
                   "--narrow", "--no-test-cache",
                   "--max-attempts", "2", "--json", home=home)
    assert proc.returncode == 1, proc.stderr
    result = json.loads(proc.stdout)
    assert not result["fixed"] and result["stop"] == "attempts" and result["attempts"] == 2
    assert result["narrow_cmd"] == NARROW and result["branch"] is None
    assert result["wide_check"] == {"command": "python -m pytest -x -q", "ok": False,
                                    "passed": 0, "failed": 1, "errors": 0}
    wide_fail = ("python -m pytest -x -q", 0, 1)
    assert test_runs(home, result["run_id"]) == [(NARROW, 1, 0), wide_fail] * 2
    assert repo_state(repo) == before  # no branch for a fix that broke other tests


def test_a_narrow_pass_that_breaks_others_does_not_end_the_search(tmp_path, monkeypatch):
    """The first reply passes the failing test and breaks the other file's; the search goes on
    (it stopped there before) and the second reply, drawn afresh (restart, seed 2), is the fix."""
    monkeypatch.setenv("COLUMNS", "400")
    repo = two_file_repo(tmp_path / "repo")
    home = tmp_path / "home"
    p = tmp_path / "two.json"
    p.write_text(json.dumps({"segments": [
        "def celsius_to_fahrenheit(celsius: float) -> float:\n" + DOC + "    return ",
        {"choice": {"32.0": 0.5, "celsius * 9 / 5 + 32": 0.5}}, "\n```"]}))
    proc = run_cli("fix", repo, "--model", f"scripted:{p}", "--narrow", "--strategy", "restart", "--seed", "2",
                   "--max-attempts", "3", "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["fixed"] and result["attempts"] == 2
    assert result["wide_check"]["ok"] and "celsius * 9 / 5 + 32" in result["diff"]
    assert test_runs(home, result["run_id"]) == [
        (NARROW, 1, 0), ("python -m pytest -x -q", 0, 1),
        (NARROW, 1, 0), ("python -m pytest -x -q", 2, 0)]


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

"""Issue 32, items 4, 5 and 8: the fix branch is HEAD plus the fix and nothing else, the failing
tests are the specification (read-only unless --allow-test-edits), and the low items each give
one line and exit 2, or a correct result. Real git repositories, the scripted model."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from decision_retry.agent.runner import FixConfig, fix
from decision_retry.hermes import call_text
from decision_retry.retry import RetryConfig
from decision_retry.testing import scripted_lm
from decision_retry.trace.store import TraceStore
from tests.helpers import git, make_repo, repo_state, run_cli, write

FIXED_ADD = ["def add(a, b):\n    return a + b\n", "```"]
HOLLOW_TEST = [call_text("edit_function", {"path": "test_calc.py", "function": "test_add",
                                            "code": "def test_add():\n    pass\n"})]


def one_line_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, (proc.returncode, proc.stderr)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and needle in errors[0], proc.stderr
    assert proc.stderr.rstrip().endswith(errors[0]), proc.stderr  # the last line, whole


# the calculator whose failing test is the specification
CALC = {"calc.py": "def add(a, b):\n    return a - b\n",
        "test_calc.py": "from calc import add\n\ndef test_add():\n    assert add(1, 2) == 3\n"}


def config(**kw) -> FixConfig:
    return FixConfig(retry=RetryConfig(proposal_temperature=1.0), budget_tokens=200,
                     max_attempts=2, sandbox="none", **kw)


@pytest.mark.slow
def test_uncommitted_lines_elsewhere_in_the_file_stay_off_the_branch(tmp_path, store):
    calc = "def add(a, b):\n    return a - b\n" + "".join(f"\n\ndef f{i}():\n    return {i}\n"
                                                          for i in range(4))
    repo = make_repo(tmp_path / "repo", {**CALC, "calc.py": calc})
    write(repo / "calc.py", calc + 'API_KEY = "sk-live-not-for-git"\n')  # never committed
    before = repo_state(repo)
    result = fix(repo, config(), lm=scripted_lm(FIXED_ADD), store=store)
    assert result.fixed and result.branch and not result.unseparated
    on_branch = git(repo, "show", f"{result.branch}:calc.py")
    assert "API_KEY" not in on_branch and "return a + b" in on_branch
    assert on_branch == calc.replace("a - b", "a + b")
    shown = git(repo, "diff", "--full-index", "--no-color", "HEAD", result.branch)
    assert result.diff == shown  # what the summary prints is the branch against HEAD
    assert "API_KEY" not in result.diff
    assert repo_state(repo) == before


@pytest.mark.slow
def test_a_fix_that_overlaps_uncommitted_lines_gets_no_branch(tmp_path):
    repo = make_repo(tmp_path / "repo", CALC)
    write(repo / "calc.py", 'API_KEY = "sk-live-not-for-git"\ndef add(a, b):\n    return a - b\n')
    script = tmp_path / "fix.json"
    script.write_text(json.dumps({"segments": FIXED_ADD}))
    before = repo_state(repo)
    proc = run_cli("fix", repo, "--model", f"scripted:{script}", "--max-attempts", "2",
                   "--budget-tokens", "60", "--sandbox", "none", "--json", home=tmp_path / "h")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["fixed"] and result["branch"] is None and result["unseparated"] == ["calc.py"]
    assert "+    return a + b" in result["diff"]  # the fix, against the working tree, to apply
    assert git(repo, "branch", "--list", "decision-retry/*") == ""
    assert repo_state(repo) == before
    proc = run_cli("fix", repo, "--model", f"scripted:{script}", "--max-attempts", "2",
                   "--budget-tokens", "60", "--sandbox", "none", home=tmp_path / "h")
    assert proc.returncode == 0 and "no branch: the fix changes lines of calc.py" in proc.stderr
    assert "the fix is on branch" not in proc.stderr


# -- item 5: the failing tests are the specification --------------------------------------------

def test_a_fix_that_hollows_out_the_failing_test_is_refused(tmp_path, store):
    repo = make_repo(tmp_path / "repo", CALC)
    result = fix(repo, config(protocol="tools"), lm=scripted_lm(HOLLOW_TEST), store=store)
    assert not result.fixed and result.branch is None
    calls = store.load(result.run_id).tool_calls
    assert any("test files are read-only" in c.observation and "--allow-test-edits"
               in c.observation for c in calls)
    assert git(repo, "branch", "--list", "decision-retry/*") == ""


def test_allow_test_edits_lets_it_through_and_says_so(tmp_path, store):
    repo = make_repo(tmp_path / "repo", CALC)
    result = fix(repo, config(protocol="tools", allow_test_edits=True),
                 lm=scripted_lm(HOLLOW_TEST), store=store)
    assert result.fixed and result.tests_changed == ["test_calc.py"]
    assert "pass" in git(repo, "show", f"{result.branch}:test_calc.py")


def test_code_that_rewrites_a_test_file_while_the_tests_run_is_not_a_fix(tmp_path, store):
    repo = make_repo(tmp_path / "repo", CALC)
    # an edit whose code, once a `run_tests` call runs it, hollows out the test file: the next
    # snapshot holds the hollow test, and the final run passes
    edit = call_text("edit_function", {"path": "calc.py", "function": "add", "code": (
        "def add(a, b):\n    import pathlib\n"
        "    pathlib.Path('test_calc.py').write_text('def test_add():\\n    pass\\n')\n"
        "    return a - b\n")})
    script = [{"choice": {edit: 0.5, call_text("run_tests", {}): 0.5}}]
    result = fix(repo, config(protocol="tools", seed=3), lm=scripted_lm(script), store=store)
    calls = [c.action for c in store.load(result.run_id).tool_calls]
    assert "run_tests" in calls[calls.index("edit_function"):]  # the order this seed draws
    assert not result.fixed and result.stop == "changed test files"
    assert git(repo, "branch", "--list", "decision-retry/*") == ""


def test_the_patch_protocol_never_rewrites_the_failing_tests_file(tmp_path, store):
    repo = tmp_path / "repo"
    repo.mkdir()
    # a test file by the project's own naming (not test_*.py): its helper is the spec, not a suspect
    write(repo / "pytest.ini", "[pytest]\npython_files = check_*.py\n")
    write(repo / "calc.py", "def add(a, b):\n    return a - b\n")
    write(repo / "check_calc.py", "from calc import add\n\ndef expected():\n    return 3\n\n"
          "def test_add():\n    assert add(1, 2) == expected()\n")
    make_repo(repo)
    weaken = ["def expected():\n    return -1\n", "```"]  # rewrites the spec to fit the bug
    result = fix(repo, config(), lm=scripted_lm(weaken), store=store)
    assert not result.fixed and result.branch is None
    shown = [s["file"] for c in store.load(result.run_id).tool_calls for s in c.arguments["shown"]]
    assert shown and "check_calc.py" not in shown


# -- item 8: the low items -----------------------------------------------------------------

@pytest.mark.slow
def test_a_suspect_file_linked_outside_is_not_a_crash(tmp_path):
    outside = tmp_path / "outside"
    write(outside / "calc.py", "def add(a, b):\n    return a - b\n")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "calc.py").symlink_to(outside / "calc.py")
    write(repo / "test_calc.py", "from calc import add\n\ndef test_add():\n    assert add(1, 2) == 3\n")
    make_repo(repo)
    script = tmp_path / "fix.json"
    script.write_text(json.dumps({"segments": FIXED_ADD}))
    home = tmp_path / "h"
    proc = run_cli("fix", repo, "--model", f"scripted:{script}", "--max-attempts", "2",
                   "--budget-tokens", "60", "--sandbox", "none", home=home)
    one_line_error(proc, "cannot find the function under test")
    assert (outside / "calc.py").read_text() == "def add(a, b):\n    return a - b\n"
    with TraceStore(home / "traces.db") as store:
        (run,) = store.list_runs()
        assert store.outcome(run.id).startswith("bad input")  # finished, not left unfinished


def test_a_gitmodules_update_command_neither_runs_nor_stops_the_run(tmp_path, store):
    repo = make_repo(tmp_path / "repo", CALC)
    mark = tmp_path / "ran"
    write(repo / ".gitmodules", f'[submodule "x"]\n\tpath = x\n\turl = ./x\n'
          f'\tupdate = !touch {mark}\n')
    head = git(repo, "rev-parse", "HEAD").strip()
    git(repo, "update-index", "--add", "--cacheinfo", f"160000,{head},x")
    git(repo, "add", ".gitmodules")
    git(repo, "commit", "-q", "-m", "a submodule")
    result = fix(repo, config(), lm=scripted_lm(FIXED_ADD), store=store)
    assert result.fixed and result.branch and not mark.exists()
    assert git(repo, "ls-tree", result.branch, "x").startswith("160000")  # kept as it was


def test_a_repository_path_with_a_newline(tmp_path, store):
    repo = make_repo(tmp_path / "two\nlines", CALC)
    result = fix(repo, config(), lm=scripted_lm(FIXED_ADD), store=store)
    assert result.fixed and "return a + b" in git(repo, "show", f"{result.branch}:calc.py")


@pytest.mark.slow
def test_seed_out_of_range_and_option_errors_are_one_line(tmp_path):
    repo = make_repo(tmp_path / "repo", CALC)
    before = repo_state(repo)
    home = tmp_path / "h"
    one_line_error(run_cli("fix", repo, "--seed", 2**63, home=home), "--seed")
    one_line_error(run_cli("fix", repo, "--seed", -1, home=home), "--seed")
    one_line_error(run_cli("fix", repo, "--no-such-flag", home=home), "--no-such-flag")
    one_line_error(run_cli("fix", repo, "--strategy", "guess", home=home), "--strategy")
    one_line_error(run_cli("nonsense", home=home), "nonsense")
    one_line_error(run_cli("logs", "show", home=home), "RUN")
    assert repo_state(repo) == before
    helped = run_cli("fix", "--help", home=home)
    assert helped.returncode == 0 and "--allow-test-edits" in helped.stdout
    bare = run_cli(home=home)  # no command: the help, as before
    assert "Usage:" in bare.stdout + bare.stderr and "fix" in bare.stdout + bare.stderr


@pytest.mark.slow
def test_the_largest_seed_runs(tmp_path, store):
    repo = make_repo(tmp_path / "repo", CALC)
    result = fix(repo, config(seed=2**63 - 1), lm=scripted_lm(FIXED_ADD), store=store)
    assert result.fixed and store.load(result.run_id).run.seed == 2**63 - 1


@pytest.mark.slow
def test_an_unborn_repository_is_refused_before_the_model(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    write(repo / "calc.py", "def add(a, b):\n    return a - b\n")
    write(repo / "test_calc.py", "from calc import add\n\ndef test_add():\n    assert add(1, 2) == 3\n")
    script = tmp_path / "fix.json"
    script.write_text(json.dumps({"segments": FIXED_ADD}))
    proc = run_cli("fix", repo, "--model", f"scripted:{script}", "--sandbox", "none",
                   home=tmp_path / "h")
    one_line_error(proc, "has no commit yet")
    assert git(repo, "for-each-ref") == ""  # no branch, no empty root commit


def test_logs_gc_removes_a_killed_runs_report_directory(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    old, fresh = tmp / "decision-retry-report-abc123", tmp / "decision-retry-report-def456"
    old.mkdir()
    fresh.mkdir()
    hour_ago = time.time() - 3700
    os.utime(old, (hour_ago, hour_ago))
    env = {"TMPDIR": str(tmp)}
    dry = run_cli("logs", "gc", "--dry-run", home=tmp_path / "h", env=env)
    assert dry.returncode == 0 and f"would remove test report directory {old}" in dry.stdout
    assert old.exists()
    proc = run_cli("logs", "gc", home=tmp_path / "h", env=env)
    assert proc.returncode == 0, proc.stderr
    assert not old.exists() and fresh.exists()  # a report an hour old; a new one may be in use

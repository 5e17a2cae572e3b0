"""Every input of issue 13's list: one clear line and exit code 2 (or a handled observation),
never a traceback; the user's repository byte-identical."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from decision_retry.agent import definitions
from decision_retry.agent.actions import Task, ToolsProtocol
from decision_retry.hermes import call_text
from decision_retry.repo.testrun import TestResult
from decision_retry.repo.workspace import Workspace
from decision_retry.trace.models import Branch, Run, Turn
from decision_retry.trace.store import TraceStore
from tests.helpers import git, make_repo, repo_state, run_cli, write

ENV = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}


def one_line_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and needle in proc.stderr, proc.stderr
    assert len([ln for ln in proc.stderr.splitlines() if ln.strip()]) <= 3, proc.stderr


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    r = tmp_path / "repo"
    r.mkdir()
    write(r / "calc.py", "def add(a, b):\n    return a - b\n")
    write(r / "test_calc.py", "from calc import add\n\ndef test_add():\n    assert add(1, 2) == 3\n")
    make_repo(r)
    return r


@pytest.mark.parametrize("flag", ["-o alpha", "-o cut.eps", "--test-timeout",
                                  "-o verifier_weight", "--proposal-temperature"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.slow
def test_non_finite_numbers_are_bad_input(tmp_path, repo, flag, value):
    before = repo_state(repo)
    option = ["-o", f"{flag[3:]}={value}"] if flag.startswith("-o ") else [flag, value]
    proc = run_cli("fix", repo, "--model", "scripted:nowhere.json", *option,
                   home=tmp_path / "h")
    one_line_error(proc, "finite")
    assert repo_state(repo) == before


def test_a_scripted_model_that_is_a_directory(tmp_path, repo):
    (tmp_path / "scripts").mkdir()
    proc = run_cli("fix", repo, "--model", f"scripted:{tmp_path / 'scripts'}", home=tmp_path / "h")
    one_line_error(proc, "script")


def test_bwrap_on_request_where_it_cannot_run_is_one_line(tmp_path, repo):
    bin_dir = tmp_path / "bin"  # git, but no bwrap
    bin_dir.mkdir()
    (bin_dir / "git").symlink_to(shutil.which("git"))
    env = {**ENV, "DECISION_RETRY_HOME": str(tmp_path / "h"), "PATH": str(bin_dir)}
    proc = subprocess.run([sys.executable, "-m", "decision_retry.cli", "fix", str(repo), "--model",
                           "scripted:x.json", "--sandbox", "bwrap"], check=False, capture_output=True,
                          text=True, timeout=300, env=env)
    one_line_error(proc, "bubblewrap cannot run here")


def tools(ws: Workspace) -> ToolsProtocol:
    result = TestResult(command=("pytest",), exit_code=1, failed=1, output_tail="E assert 1 == 3")
    task = Task(None, "", result, ("calc.py",), "python -m pytest -q", 30)
    return ToolsProtocol(definitions.load("tools"), task)


@pytest.mark.parametrize("reply", [
    call_text("read_file", {"path": "x" * 300}),
    call_text("read_file", {"path": "a/" * 3000}),
    call_text("read_file", {"path": "\ud800.py"}),
    call_text("read_file", {"path": "calc.py\x00"}),
    call_text("list_files", {"directory": "y" * 300}),
    call_text("edit_function", {"path": "z" * 300, "function": "add",
                                "code": "def add(a, b):\n    return a + b\n"}),
    call_text("edit_function", {"path": "calc.py", "function": "add",
                                "code": "def add(a, b):\n    return '\ud800'\n"}),
])
def test_tools_actions_on_hostile_paths_are_observations(repo, reply):
    before = repo_state(repo)
    with Workspace(repo, "hostile-paths") as ws:
        out = tools(ws).act(ws, reply, 0)
    assert out.observation  # an error for the model to read, not an exception
    assert repo_state(repo) == before


def _store_with_a_run(home: Path) -> tuple[str, str]:
    with TraceStore(home / "traces.db") as store:
        run = store.add(Run(model="m", strategy="entropy-cut", seed=1))
        branch = store.add(Branch(run_id=run.id, index=0, strategy="initial"))
        good = store.add(Turn(branch_id=branch.id, index=0, prompt="p", text="ok"))
        store.add(Turn(branch_id=branch.id, index=1, prompt="p", text="to corrupt"))
        other = store.add(Run(model="m2", strategy="restart", seed=2))
    return run.id, other.id, good.id


def test_one_corrupt_row_hides_that_row_not_the_store(tmp_path):
    home = tmp_path / "home"
    run_id, other_id, good_turn = _store_with_a_run(home)
    db = sqlite3.connect(home / "traces.db")
    db.execute("UPDATE turns SET tokens = '[{not json' WHERE text = 'to corrupt'")
    db.commit()
    db.close()
    with TraceStore(home / "traces.db") as store:
        tree = store.load(run_id)
        assert [t.id for t in tree.turns] == [good_turn]  # the bad turn is hidden
        assert store.skipped and "turns row" in store.skipped[0]
        assert {r.id for r in store.list_runs()} == {run_id, other_id}
        assert store.counts(run_id)["turns"] == 2
    for args in (["logs"], ["logs", "show", run_id[:10]], ["logs", "show", other_id[:10]],
                 ["logs", "show", run_id[:10], "--json"],
                 ["report", run_id[:10], "-o", tmp_path / "r.html"]):
        proc = run_cli(*args, home=home)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, (args, proc.stderr)


@pytest.mark.slow
def test_a_corrupt_run_row_hides_that_run(tmp_path):
    home = tmp_path / "home"
    run_id, other_id, _ = _store_with_a_run(home)
    db = sqlite3.connect(home / "traces.db")
    db.execute("UPDATE runs SET config = 'nope{' WHERE id = ?", (run_id,))
    db.commit()
    db.close()
    proc = run_cli("logs", "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    assert [r["id"] for r in json.loads(proc.stdout)] == [other_id]
    proc = run_cli("logs", "show", run_id[:10], home=home)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr


def test_a_lone_surrogate_in_model_output_is_stored(tmp_path):
    with TraceStore(tmp_path / "home" / "traces.db") as store:
        run = store.add(Run(model="m", strategy="s"))
        branch = store.add(Branch(run_id=run.id, index=0, strategy="initial"))
        store.add(Turn(branch_id=branch.id, index=0, prompt="\udcff", text="x = '\ud800'"))
        (turn,) = store.load(run.id).turns
    assert turn.text == "x = '\ud800'"  # read back exactly: its id still matches
    for args in (["logs", "show", run.id[:10]], ["logs", "show", run.id[:10], "--json"], ["logs"]):
        proc = run_cli(*args, home=tmp_path / "home")
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, (args, proc.stderr)


def test_logs_gc_removes_a_killed_runs_clone_and_keeps_fix_branches(tmp_path, repo):
    home = tmp_path / "home"
    with TraceStore(home / "traces.db") as store:
        run = store.add(Run(model="m", strategy="s", repo=str(repo)))
    ws = Workspace(repo, run.id[:12]).open()  # as if its process were killed now:
    clone = ws.root.parent
    owner = json.loads((clone / "owner.json").read_text())
    (clone / "owner.json").write_text(json.dumps({**owner, "pid": 2 ** 22 + 1}))  # no such pid
    git(repo, "update-ref", f"refs/decision-retry/{run.id[:12]}/0", "HEAD")  # an old version's
    git(repo, "branch", "decision-retry/older-fix")
    dry = run_cli("logs", "gc", "--dry-run", home=home)
    assert dry.returncode == 0 and "would remove clone" in dry.stdout and clone.exists()
    proc = run_cli("logs", "gc", home=home)
    assert proc.returncode == 0, proc.stderr
    assert not clone.exists()
    assert f"marked run {run.id[:12]} interrupted" in proc.stdout
    assert git(repo, "for-each-ref", "refs/decision-retry/") == ""
    assert "decision-retry/older-fix" in git(repo, "branch", "--list", "decision-retry/*")
    assert "kept fix branch" in proc.stdout
    with TraceStore(home / "traces.db") as store:
        assert store.outcome(run.id) == "interrupted"
    proc = run_cli("logs", "gc", "--older-than", "0s", home=home)
    assert proc.returncode == 0 and f"removed run {run.id[:12]}" in proc.stdout
    with TraceStore(home / "traces.db") as store:
        assert store.list_runs() == []
    one_line_error(run_cli("logs", "gc", "--older-than", "soon", home=home), "not a duration")


def _commit(repo: Path) -> None:
    make_repo(repo)


@pytest.fixture
def script(tmp_path: Path) -> Path:
    p = tmp_path / "fix.json"
    p.write_text(json.dumps({"segments": ["def add(a, b):\n    return a + b\n", "```"]}))
    return p


@pytest.mark.slow
def test_a_latin1_source_file(tmp_path, script):
    repo = tmp_path / "latin1"
    repo.mkdir()
    (repo / "calc.py").write_bytes(b"# -*- coding: latin-1 -*-\n# caf\xe9\n"
                                   b"def add(a, b):\n    return a - b\n")
    write(repo / "test_calc.py", "from calc import add\n\ndef test_add():\n    assert add(1, 2) == 3\n")
    _commit(repo)
    before = repo_state(repo)
    proc = run_cli("fix", repo, "--model", f"scripted:{script}", "--max-attempts", "2",
                   "--budget-tokens", "60", home=tmp_path / "h")
    assert proc.returncode in (0, 1, 2) and "Traceback" not in proc.stderr, proc.stderr
    assert repo_state(repo) == before


@pytest.mark.slow
def test_a_failure_traced_to_a_file_outside_the_repository(tmp_path, script):
    outside = tmp_path / "outside"
    write(outside / "helper.py", "def helper(x):\n    raise ValueError('outside')\n")
    repo = tmp_path / "traced"
    repo.mkdir()
    write(repo / "calc.py", "def add(a, b):\n    return a - b\n")
    write(repo / "test_calc.py", f"import sys\nsys.path.insert(0, {str(outside)!r})\n"
          "from helper import helper\nfrom calc import add\n\n"
          "def test_add():\n    helper(add(1, 2))\n")
    _commit(repo)
    before = repo_state(repo)
    proc = run_cli("fix", repo, "--model", f"scripted:{script}", "--max-attempts", "2",
                   "--budget-tokens", "60", "--sandbox", "none", home=tmp_path / "h")
    assert proc.returncode in (0, 1, 2) and "Traceback" not in proc.stderr, proc.stderr
    assert "sandbox: none, as asked (--sandbox none)" in proc.stderr  # what protection remains
    assert repo_state(repo) == before

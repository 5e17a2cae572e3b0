"""`fix --resume`: a run killed at any point and resumed ends with the trace of an uninterrupted
run with the same seed; SIGTERM behaves like Ctrl-C; what SIGKILL leaves is cleaned up."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from decision_retry.agent.resume import resume
from decision_retry.agent.runner import fix
from decision_retry.errors import BadInput
from decision_retry.localise.replay import recorded
from decision_retry.testing import scripted_lm
from decision_retry.trace.store import TraceStore
from tests.agent.resume_driver import TEST_TIMEOUT
from tests.helpers import (
    ROOT,
    UNITS_SCRIPT,
    first_failing_seed,
    fix_config,
    fixture_repo,
    git,
    repo_state,
    run_cli,
)

# the driver runs as a module of the tests package, from the repository root (cwd=ROOT)
DRIVER = [sys.executable, "-m", "tests.agent.resume_driver"]


def summary(tree) -> dict:
    """A run's trace without its ids and times: what two equal runs must share."""
    index = {b.id: b.index for b in tree.branches}
    return {
        "outcome": tree.run.outcome,
        "branches": [(b.index, index.get(b.parent_id), b.cut, b.outcome, b.passed, b.final_diff)
                     for b in tree.branches],
        "turns": [(index[t.branch_id], t.index, t.text, [tok.id for tok in t.tokens],
                   [round(tok.logp, 6) for tok in t.tokens]) for t in tree.turns],
        "decisions": [(d.position, d.kind, d.token, round(d.entropy, 6)) for d in tree.decisions],
        "tools": [(c.action, c.arguments, c.observation) for c in tree.tool_calls],
        "tests": [(index[t.branch_id], t.index, t.passed, t.failed, t.errors, t.exit_code)
                  for t in tree.test_runs],
        "mh": [(s.index, s.cut_turn, s.cut_position, round(s.log_accept, 6), s.accepted,
                s.decode_tokens) for s in tree.mh_steps],
    }


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """One uninterrupted run: its seed, trace summary and result."""
    tmp = tmp_path_factory.mktemp("baseline")
    repo = fixture_repo(tmp, "units")
    lm = scripted_lm(UNITS_SCRIPT)
    seed = first_failing_seed(lm)
    with TraceStore(tmp / "traces.db") as store:
        result = fix(repo, fix_config(seed=seed, test_timeout=TEST_TIMEOUT), lm=lm, store=store)
        tree = store.load(result.run_id)
    assert result.fixed and result.attempts >= 2 and len(tree.test_runs) >= 2
    return seed, summary(tree), result


def _clones_of(run_id: str) -> list[Path]:
    return sorted(Path(tempfile.gettempdir()).glob(f"decision-retry-{run_id[:12]}-*"))


@pytest.mark.parametrize(("nodes", "sig"), [(3, "SIGKILL"), (9, "SIGTERM"), (13, "SIGKILL")])
@pytest.mark.slow
def test_killed_then_resumed_equals_uninterrupted(tmp_path, baseline, nodes, sig):
    seed, expected, expected_result = baseline
    repo = fixture_repo(tmp_path, "units")
    before = repo_state(repo)
    db = tmp_path / "traces.db"
    proc = subprocess.run([*DRIVER, str(repo), str(db), str(seed), str(nodes), sig], cwd=ROOT,
                          check=False, capture_output=True, text=True, timeout=600)
    assert "finished without being killed" not in proc.stdout
    assert "Traceback" not in proc.stderr or sig == "SIGTERM", proc.stderr
    with TraceStore(db) as store:
        (run,) = store.list_runs()
        assert run.outcome == ("interrupted" if sig == "SIGTERM" else None)
        if sig == "SIGKILL":
            assert _clones_of(run.id)  # SIGKILL leaves the clone; resume's sweep removes it
        else:
            assert not _clones_of(run.id)  # SIGTERM cleaned up like Ctrl-C
        assert repo_state(repo) == before  # nothing of the user's was touched

        result = resume(run.id[:8], store=store, lm=scripted_lm(UNITS_SCRIPT))
        tree = store.load(run.id)
    assert not _clones_of(run.id)
    assert not result.diverged and result.resumed >= (1 if nodes > 3 else 0)
    assert summary(tree) == expected
    assert (result.fixed, result.attempts, result.decode_tokens, result.diff) == (
        expected_result.fixed, expected_result.attempts, expected_result.decode_tokens,
        expected_result.diff)
    assert git(repo, "show", f"{result.branch}:units.py").count("+ 32") == 1


def test_resume_refuses_what_cannot_be_resumed(tmp_path, baseline):
    seed, _, _ = baseline
    repo = fixture_repo(tmp_path, "units")
    with TraceStore(tmp_path / "traces.db") as store:
        with pytest.raises(BadInput, match="no run"):
            resume("nonexistent", store=store, lm=scripted_lm(UNITS_SCRIPT))
        cfg = fix_config(seed=seed, test_timeout=TEST_TIMEOUT)
        done = fix(repo, cfg, lm=scripted_lm(UNITS_SCRIPT), store=store)
        with pytest.raises(BadInput, match="already ended"):
            resume(done.run_id, store=store, lm=scripted_lm(UNITS_SCRIPT))


@pytest.mark.slow
def test_cli_resume_and_bad_combinations(tmp_path, script_file, baseline):
    home = tmp_path / "home"
    proc = run_cli("fix", home=home)
    assert proc.returncode == 2 and "--resume" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("fix", tmp_path, "--resume", "latest", home=home)
    assert proc.returncode == 2 and "no PATH" in proc.stderr
    proc = run_cli("fix", "--resume", "latest", home=home)
    assert proc.returncode == 2 and "no runs" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_resume_refuses_a_repository_that_changed(tmp_path, baseline):
    seed, _, _ = baseline
    repo = fixture_repo(tmp_path, "units")
    db = tmp_path / "traces.db"
    subprocess.run([*DRIVER, str(repo), str(db), str(seed), "9", "SIGKILL"], cwd=ROOT,
                   check=False, capture_output=True, text=True, timeout=600)
    (repo / "units.py").write_text((repo / "units.py").read_text() + "\n# edited meanwhile\n")
    with TraceStore(db) as store:
        (run,) = store.list_runs()
        with pytest.raises(BadInput, match="changed since it started"):
            resume(run.id, store=store, lm=scripted_lm(UNITS_SCRIPT))


@pytest.mark.slow
def test_a_dirty_tree_resumes_from_the_same_starting_point(tmp_path, baseline):
    """Uncommitted work (an edited tracked file, an untracked one) is part of the starting point,
    a commit made for the run: made again on resume, it must be the same commit."""
    seed, _, _ = baseline
    repo = fixture_repo(tmp_path, "units")
    (repo / "NOTES.md").write_text("work in progress\n")
    (repo / "pyproject.toml").write_text((repo / "pyproject.toml").read_text() + "\n# local edit\n")
    before = repo_state(repo)
    db = tmp_path / "traces.db"
    subprocess.run([*DRIVER, str(repo), str(db), str(seed), "9", "SIGKILL"], cwd=ROOT,
                   check=False, capture_output=True, text=True, timeout=600)
    with TraceStore(db) as store:
        (run,) = store.list_runs()
        result = resume(run.id, store=store, lm=scripted_lm(UNITS_SCRIPT))
    assert result.fixed and not result.diverged and result.resumed >= 1
    assert repo_state(repo) == before
    assert git(repo, "show", f"{result.branch}:units.py").count("+ 32") == 1  # HEAD + the fix


# One line per pytest session of the repository: under the coverage script (the localisation)
# or plain (the input check, the attempts' test runs).
SESSIONS_CONFTEST = """import os
import sys


def pytest_sessionstart(session):
    kind = "coverage" if os.path.basename(sys.argv[0]) == "covrun.py" else "plain"
    with open(os.environ["SESSION_LOG"], "a") as f:
        f.write(kind + "\\n")
"""


class InterruptAfter:
    """A trace listener that raises KeyboardInterrupt (as Ctrl-C does) once `n` nodes are stored."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __getattr__(self, name):
        def count(node):
            self.n -= 1
            if self.n == 0:
                raise KeyboardInterrupt
        return count


def test_resume_replays_the_recorded_localisation_instead_of_measuring_it(tmp_path, baseline,
                                                                           monkeypatch):
    seed, _, _ = baseline
    repo = fixture_repo(tmp_path, "units")
    (repo / "conftest.py").write_text(SESSIONS_CONFTEST)
    git(repo, "add", "conftest.py")
    git(repo, "commit", "-qm", "log pytest sessions")
    log = tmp_path / "sessions.log"
    monkeypatch.setenv("SESSION_LOG", str(log))
    cfg = fix_config(seed=seed, sandbox="none", pass_env=("SESSION_LOG",),  # the log is outside
                     test_timeout=TEST_TIMEOUT)
    with TraceStore(tmp_path / "traces.db") as store:
        with pytest.raises(KeyboardInterrupt):  # stopped after its first turn was recorded
            fix(repo, cfg, lm=scripted_lm(UNITS_SCRIPT), store=store, listeners=[InterruptAfter(4)])
        (run,) = store.list_runs()
        before = store.load(run.id)
        assert run.outcome == "interrupted" and not before.test_runs
        kept = recorded(before.turns, before.branches)
        assert kept["ranking"][0]["function"] == "celsius_to_fahrenheit"
        assert log.read_text().split() == ["plain", "coverage"]  # input check, localisation

        result = resume(run.id, store=store, lm=scripted_lm(UNITS_SCRIPT))
        after = store.load(run.id)
    sessions = log.read_text().split()
    # resume checked the input and ran the attempts' tests, but measured no coverage again
    assert sessions.count("coverage") == 1 and sessions.count("plain") >= 3
    assert result.fixed and not result.diverged and result.resumed == 1
    assert recorded(after.turns, after.branches) == kept
    first = next(c for c in after.tool_calls if "localisation" in c.arguments)
    assert first.arguments["localisation"] == kept

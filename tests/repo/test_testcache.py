"""The test-result cache: an identical tree is tested once per run, anything else runs.

Real git repositories, real test subprocesses (sandbox none, so a test command can count its own
starts in a file outside the clone), the scripted model through `fix`.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

from decision_retry.agent.runner import fix
from decision_retry.costs import CATEGORIES, metering
from decision_retry.repo.sandbox import resolve
from decision_retry.repo.testcache import TestCache
from decision_retry.repo.workspace import Workspace
from decision_retry.testing import scripted_lm
from tests.helpers import SAME_REPLY, fix_config, fixture_repo, git, make_repo, write


def counting_cmd(counter: Path, pytest_args: str = "-x -q") -> str:
    """A test command that appends a line to `counter` each time it starts, then runs pytest."""
    inner = (f"echo run >> {shlex.quote(str(counter))}; PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 "
             f"{shlex.quote(sys.executable)} -m pytest {pytest_args}")
    return f"sh -c {shlex.quote(inner)}"


def starts(counter: Path) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


@pytest.fixture
def small_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "small"
    write(repo / "calc.py", "def add(a, b):\n    return a - b\n")
    write(repo / "test_calc.py", "from calc import add\n\n\ndef test_add():\n    assert add(1, 2) == 3\n")
    write(repo / ".gitignore", "*.cfg\n")
    make_repo(repo)
    return repo


def test_an_identical_tree_is_tested_once_anything_else_runs(small_repo, tmp_path):
    counter = tmp_path / "starts.txt"
    cmd = counting_cmd(counter)
    with metering() as meter, Workspace(small_repo, "cache1", sandbox=resolve("none")) as ws:
        first = ws.run_tests(cmd, 60)
        assert not first.ok and not first.cached and starts(counter) == 1
        base = ws.snapshot("base")
        ws.restore(base)
        again = ws.run_tests(cmd, 60)  # the same files: the recorded result, nothing started
        assert again.cached and starts(counter) == 1
        assert (again.passed, again.failed, again.exit_code) == (first.passed, first.failed,
                                                                 first.exit_code)
        assert again.duration_s == 0.0
        ws.write_file("calc.py", "def add(a, b):\n    return a + b\n")  # another tree: runs
        fixed = ws.run_tests(cmd, 60)
        assert fixed.ok and not fixed.cached and starts(counter) == 2
        ws.restore(base)
        assert ws.run_tests(cmd, 60).cached and starts(counter) == 2
        write(ws.root / "local.cfg", "ignored, but the tests could read it\n")  # an ignored file
        assert not ws.run_tests(cmd, 60).cached and starts(counter) == 3
        ws.restore(base)
        assert not ws.run_tests(cmd + " ", 60).cached  # another command
        assert not ws.run_tests(cmd, 30).cached  # another timeout
        assert starts(counter) == 5
    assert (meter.test_runs, meter.cached_runs) == (7, 2)


def test_no_test_cache_runs_every_time(small_repo, tmp_path):
    counter = tmp_path / "starts.txt"
    cmd = counting_cmd(counter)
    ws = Workspace(small_repo, "cache2", sandbox=resolve("none"), test_cache=TestCache(False))
    with ws:
        for n in (1, 2, 3):
            assert not ws.run_tests(cmd, 60).cached and starts(counter) == n


@pytest.mark.slow
def test_a_timed_out_run_is_not_reused(small_repo, tmp_path):
    write(small_repo / "test_slow.py", "import time\n\n\ndef test_slow():\n    time.sleep(30)\n")
    git(small_repo, "add", "-A")
    git(small_repo, "commit", "-qm", "slow")
    counter = tmp_path / "starts.txt"
    cmd = counting_cmd(counter, "-q test_slow.py")
    with Workspace(small_repo, "cache3", sandbox=resolve("none")) as ws:
        assert ws.run_tests(cmd, 1.5).timed_out
        assert not ws.run_tests(cmd, 1.5).cached and starts(counter) == 2


@pytest.mark.slow
def test_fix_with_the_same_reply_tests_each_tree_once(tmp_path, store):
    """The scripted reply writes the bug again every time: with the cache the test command
    starts only for what is new; --no-test-cache starts it for every attempt."""
    results, counts = {}, {}
    for cache in (True, False):
        repo = fixture_repo(tmp_path / str(cache), "units")
        counter = tmp_path / f"starts-{cache}.txt"
        cfg = fix_config(strategy="restart", test_cmd=counting_cmd(counter), sandbox="none",
                         test_cache=cache).model_copy(update={"max_attempts": 4})
        results[cache] = fix(repo, cfg, lm=scripted_lm(SAME_REPLY), store=store)
        counts[cache] = starts(counter)
    hit, miss = results[True], results[False]
    assert not hit.fixed and hit.attempts == miss.attempts == 4
    runs = {c: store.load(r.run_id).test_runs for c, r in results.items()}
    assert len(runs[True]) == len(runs[False]) == 4
    assert not any(t.cached for t in runs[False])
    cached = [t for t in runs[True] if t.cached]
    assert len(cached) >= 3  # the first attempt may differ from the start in its bytes
    assert all(t.duration_s == 0.0 for t in cached)
    assert counts[False] - counts[True] == len(cached)  # each cached run started nothing
    # the same results, so the same trace nodes: `cached` is not part of a test run's id
    assert {(t.passed, t.failed, t.exit_code) for t in runs[True]} == {
        (t.passed, t.failed, t.exit_code) for t in runs[False]}
    # the run's cost record counts them (check_input's run included)
    assert hit.costs["test_runs"] == miss.costs["test_runs"] == 5
    assert hit.costs["cached_runs"] == len(cached)
    assert miss.costs["cached_runs"] == 0
    assert store.load(hit.run_id).run.costs == hit.costs


def test_costs_categories_sum_within_the_total(tmp_path, store):
    repo = fixture_repo(tmp_path, "units")
    result = fix(repo, fix_config(strategy="restart", sandbox="none").model_copy(
        update={"max_attempts": 2}), lm=scripted_lm(SAME_REPLY), store=store)
    c = result.costs
    parts = [c[k]["cpu_s"] for k in (*CATEGORIES, "other")]
    assert all(p >= 0 for p in parts)
    assert c["tests"]["cpu_s"] > 0 and c["localisation"]["cpu_s"] > 0  # subprocesses, reaped
    assert c["decode"]["wall_s"] > 0 and c["prefill"]["wall_s"] > 0  # the engine's calls, timed
    assert sum(parts) == pytest.approx(c["cpu_s"], abs=0.01)
    assert sum(c[k]["cpu_s"] for k in CATEGORIES) <= c["cpu_s"] + 1e-6
    assert sum(c[k]["wall_s"] for k in CATEGORIES) <= c["wall_s"] + 1e-6


def test_the_cpu_of_a_sandboxed_test_run_is_counted(small_repo):
    """bubblewrap's own PID 1 would reap the tests without passing their CPU time on: the
    command runs as PID 1 (--as-pid-1), so RUSAGE_CHILDREN sees it."""
    from decision_retry.repo.sandbox import bwrap_problem

    if bwrap_problem() is not None:
        pytest.skip(f"bubblewrap cannot run here: {bwrap_problem()}")
    write(small_repo / "burn.py", "total = 0\nfor i in range(5_000_000):\n    total += i\n")
    git(small_repo, "add", "-A")
    git(small_repo, "commit", "-qm", "burn")
    with metering() as meter, Workspace(small_repo, "cpu1", sandbox=resolve("bwrap")) as ws:
        ws.run_tests("python burn.py", 120)
    assert meter.cpu["tests"] >= 0.2  # about 0.6 s of one core on a quiet machine

"""Bench worker processes (bench/workers.py): a worker that dies fails only the job it held.

With `multiprocessing.Pool` a worker killed mid-cell (the OOM killer) lost its task and the
benchmark waited for it forever. These tests kill a worker for real (SIGKILL) and check that the
other jobs finish, the dead one's job is reported with the signal, and a fresh worker takes over.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from decision_retry.bench.harness import CELLS_FILE
from decision_retry.bench.workers import Died, Raised, imap_unordered
from tests.helpers import no_bwrap_path, ours, wait_for

NO_MARKER = "\0"  # ours(): match by working directory only

SPAWN = mp.get_context("spawn")


def _start(tag: str) -> None:
    os.environ["DR_TEST_WORKER_TAG"] = tag


def _job(n: int) -> tuple[int, str, int]:
    """n < 0 kills its own worker, n == 0 raises; otherwise (n, the worker's tag, its pid)."""
    if n < 0:
        os.kill(os.getpid(), signal.SIGKILL)
    if n == 0:
        raise ZeroDivisionError("job 0 has no answer")
    return n * n, os.environ["DR_TEST_WORKER_TAG"], os.getpid()


def _bad_start(tag: str) -> None:
    raise ValueError(f"no model for {tag}")


def test_a_killed_worker_fails_its_own_job_and_a_fresh_worker_takes_the_rest():
    jobs = [1, 2, -1, 3, 4, 5, -2, 6]
    got = dict(imap_unordered(_job, jobs, init=_start, slots=[("a",), ("b",)], ctx=SPAWN))
    assert sorted(got) == sorted(jobs)
    for n in (-1, -2):
        assert isinstance(got[n], Died) and got[n].exitcode == -signal.SIGKILL
        assert "killed by SIGKILL" in got[n].reason()
    done = [got[n] for n in jobs if n >= 0]
    assert [r[0] for r in done] == [n * n for n in jobs if n >= 0]
    assert {r[1] for r in done} <= {"a", "b"}  # a replacement keeps its slot's start-up args
    assert len({r[2] for r in done}) >= 3  # at least one job ran in a replacement worker


def test_a_job_that_raises_is_reported_with_its_error_and_its_worker_goes_on():
    got = dict(imap_unordered(_job, [1, 0, 2, 3], init=_start, slots=[("a",)], ctx=SPAWN))
    assert got[0] == Raised("ZeroDivisionError: job 0 has no answer")
    assert got[0].reason() == "the job raised ZeroDivisionError: job 0 has no answer"
    assert [got[n][0] for n in (1, 2, 3)] == [1, 4, 9]
    assert len({got[n][2] for n in (1, 2, 3)}) == 1  # the same worker, not a replacement


def test_a_worker_that_cannot_start_raises_its_error_in_the_parent():
    with pytest.raises(ValueError, match="no model for a"):
        list(imap_unordered(_job, [1, 2, 3], init=_bad_start, slots=[("a",)], ctx=SPAWN))


def test_no_worker_outlives_a_caller_that_stops_early():
    results = imap_unordered(_job, list(range(1, 21)), init=_start, slots=[("a",), ("b",)], ctx=SPAWN)
    _, (_, _, pid) = next(results)  # no job 0: unordered, it could come first as a Raised
    results.close()
    with pytest.raises(ProcessLookupError):  # joined: gone, not a zombie we could signal
        os.kill(pid, 0)


SLOW_TEST = """\
import time


def test_slow():
    time.sleep(600)
"""


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc (Linux)")
@pytest.mark.slow
def test_bench_finishes_when_a_worker_is_killed_mid_cell(tmp_path):
    """`bench --workers 2`: b_slow's worker is SIGKILLed while its test runs; the bench still
    ends, stores b_slow as a crash that names the signal, keeps the other cells, and the test
    process does not outlive its worker. bubblewrap is hidden from PATH: its --die-with-parent
    would cover the last point; the `unshare` fallback is the one that needs setpriv."""
    suite = tmp_path / "suite"
    for name, test in (("a_fail", "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"),
                       ("b_slow", SLOW_TEST), ("c_fail", "from calc import add\n\n\ndef test_add():\n    assert add(1, 1) == 2\n")):
        (suite / name / "tests").mkdir(parents=True)
        (suite / name / "calc.py").write_text("def add(a, b):\n    return a - b\n")
        (suite / name / "tests" / "test_calc.py").write_text(test)
        (suite / name / "pyproject.toml").write_text('[tool.pytest.ini_options]\npythonpath = ["."]\n')
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"segments": ["def add(a, b):\n    return a + b\n", "```"]}))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "decision_retry.cli", "bench", str(suite), "--strategies",
           "entropy-cut", "--seeds", "0", "--budget-tokens", "30", "--max-attempts", "1",
           "--model", f"scripted:{script}", "--workers", "2", "--test-timeout", "900",
           "--out", str(out)]
    tmpdir = tmp_path / "tmp"  # every clone of this bench lies under it
    tmpdir.mkdir()
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
           "PATH": no_bwrap_path(tmp_path, ("setpriv",))}  # the unshare fallback: see 3)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        worker = _wait_for_worker_running(proc.pid, "b_slow", 600)
        os.kill(worker, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=600)  # with Pool this waited for ever
        assert proc.returncode == 0, stderr
        cells = {c["repo"]: c for c in map(json.loads, (out / CELLS_FILE).read_text().splitlines())}
        assert set(cells) == {"a_fail", "b_slow", "c_fail"}
        assert cells["b_slow"]["error_kind"] == "crash"
        assert "killed by SIGKILL" in cells["b_slow"]["error"]
        assert cells["a_fail"]["fixed"] and cells["c_fail"]["fixed"]
        assert "b_slow/entropy-cut/0: crash (the worker was killed by SIGKILL" in stderr
        # 3) the dead worker's test died with it (setpriv --pdeathsig under unshare; nothing
        # could clean up after a SIGKILL), a short grace for the kernel to reap its namespace
        if shutil.which("setpriv") is not None:  # without it they do outlive it (docs/cli.md)
            wait_for(lambda: not ours(NO_MARKER, tmpdir), 20,
                     "the killed worker's test process to die with it")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kill_working_under(tmpdir)


def _children(pid: int) -> list[int]:
    try:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        return [int(c) for t in tasks for c in (t / "children").read_text().split()]
    except OSError:
        return []


def _descendants(pid: int) -> list[int]:
    out, todo = [], _children(pid)
    while todo:
        p = todo.pop()
        out.append(p)
        todo += _children(p)
    return out


def _cwd_has(pid: int, text: str) -> bool:
    try:
        return text in os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False


def _wait_for_worker_running(bench: int, repo: str, limit_s: float) -> int:
    """The bench worker (a child of `bench`) with a process under it working in `repo`'s clone."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        for worker in _children(bench):
            if any(_cwd_has(p, repo) for p in _descendants(worker)):
                return worker
        time.sleep(0.5)
    raise AssertionError(f"no worker ran {repo} within {limit_s} s")


def _kill_working_under(tmpdir: Path) -> None:
    """What a failing run left: ours, by working directory."""
    for pid in ours(NO_MARKER, tmpdir):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass

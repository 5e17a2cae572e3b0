"""A run whose server stops answering ends as `engine-lost` and resumes once the server is back.

Real llama.cpp servers on 127.0.0.1 (the xllamacpp wheel, SmolLM2), all on one port: one for an
uninterrupted `fix`, one killed once the same run has stored its first turn, one restarted for
`fix --resume`. `?retries=1` keeps the wait short: one retry, after the 0.5 s backoff.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest

from decision_retry.engines.remote import connect
from decision_retry.engines.remote.http import Http
from decision_retry.engines.remote.serve import LocalServer, free_port
from decision_retry.errors import EngineLost, ModelLoadError
from decision_retry.trace.store import TraceStore
from tests.helpers import fixture_repo

CLI = [sys.executable, "-m", "decision_retry.cli"]
SECRET = "sk-test-0123456789abcdef"
KEY = {"DECISION_RETRY_API_KEY": SECRET}
# seed 5 at T 0.7 rewinds once and then fixes `units` through the server (2 attempts; seed 0, the
# seed before the kept docstrings, now fixes it at once)
RUN = ["--seed", "5", "--proposal-temperature", "0.7", "--budget-tokens", "2000",
       "--max-attempts", "10", "--test-timeout", "600"]


def test_tries_run_out_as_engine_lost():
    """Nothing listens on the port: EngineLost names the server, the tries and the last error."""
    base = f"http://127.0.0.1:{free_port()}"
    http = Http(base, label="llama.cpp server", retries=2, backoff=0.01)
    with pytest.raises(EngineLost) as lost:
        http.get("/props")
    err = lost.value
    assert str(err) == (f"the llama.cpp server at {base} stopped answering after 3 tries: "
                        "connection refused")
    assert (err.tries, err.reason, err.exit_code) == (3, "connection refused", 1)
    again = pickle.loads(pickle.dumps(err))  # bench workers send errors to their parent
    assert (type(again), str(again), again.tries) == (EngineLost, str(err), 3)
    with pytest.raises(EngineLost, match=r"after 1 try: connection refused$"):
        Http(base, retries=0).get("/props")
    # never answered at all: a bad --model (exit 2) before any work, not a lost run
    with pytest.raises(ModelLoadError, match=r"connection refused \(1 try\)$"):
        connect(f"llamacpp+{base}?retries=0")


def server(port: int) -> LocalServer:
    return LocalServer("smollm2-135m", port=port, parallel=1, api_key_env="SERVER_KEY",
                       env={"SERVER_KEY": SECRET})


def cli(args, timeout=900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *map(str, args)], check=False, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **KEY})


def only_run(home: Path):
    """The one run in a trace store, loaded."""
    with TraceStore(home / "traces.db") as store:
        (run_id, *_), = store.run_rows()
        return store.load(run_id)


def summary(tree) -> dict:
    """A run's trace without its ids, times and paths: what two equal runs share."""
    index = {b.id: b.index for b in tree.branches}
    return {
        "outcome": tree.run.outcome,
        "branches": [(b.index, index.get(b.parent_id), b.cut, b.outcome, b.passed, b.final_diff)
                     for b in tree.branches],
        "turns": [(index[t.branch_id], t.index, t.text, [tok.id for tok in t.tokens],
                   [tok.logp for tok in t.tokens]) for t in tree.turns],
        "tests": [(index[t.branch_id], t.index, t.passed, t.failed, t.errors, t.exit_code)
                  for t in tree.test_runs],
        "mh": [(s.index, s.cut_turn, s.cut_position, s.log_accept, s.accepted, s.decode_tokens)
               for s in tree.mh_steps],
    }


def error_line(stderr: str) -> str:
    """The `error:` line (the live progress line may precede it on stderr)."""
    lines = [ln for ln in stderr.replace("\r", "\n").splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def wait_for_turn(db: Path, proc: subprocess.Popen, timeout: float = 600) -> None:
    """Until the run has stored its first turn (its tests run next, then it rewinds)."""
    import sqlite3

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if db.exists():
            with sqlite3.connect(db) as con:
                try:
                    if con.execute("SELECT count(*) FROM turns").fetchone()[0] >= 1:
                        return
                except sqlite3.OperationalError:
                    pass
        time.sleep(0.1)
    raise AssertionError(f"no turn stored: {proc.communicate()}")


@pytest.mark.slow
def test_server_killed_mid_run_then_resumed_ends_as_uninterrupted(tmp_path):
    port = free_port()
    url = f"llamacpp+http://127.0.0.1:{port}?retries=1"
    where = f"the llama.cpp server at http://127.0.0.1:{port}"

    # 1) the uninterrupted run, on a fresh server
    home = tmp_path / "whole"
    with server(port):
        whole = cli(["fix", fixture_repo(tmp_path / "a", "units"), "--model", url, *RUN,
                     "--home", home])
    assert whole.returncode == 0, whole.stderr
    expected = summary(only_run(home))
    assert expected["outcome"] == "fixed" and len(expected["turns"]) >= 2  # it rewinds

    # 2) the same run, its server killed once the first turn is stored
    home = tmp_path / "lost"
    with server(port) as doomed:
        proc = subprocess.Popen(
            [*CLI, "fix", str(fixture_repo(tmp_path / "b", "units")), "--model", url, *RUN,
             "--home", str(home)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **KEY})
        wait_for_turn(home / "traces.db", proc)
        doomed.kill()
        out, err = proc.communicate(timeout=600)
    lost = only_run(home)
    assert proc.returncode == 1, err
    assert error_line(err) == (f"error: {where} stopped answering after 2 tries: connection "
                               f"refused; resume with `decision-retry fix --resume "
                               f"{lost.run.id[:12]}` once it is back")
    # the trace: the outcome, and every node so far, each as the uninterrupted run recorded it
    got = summary(lost)
    assert got["outcome"] == "engine-lost"
    assert 1 <= len(got["turns"]) < len(expected["turns"])
    for kind in ("turns", "tests", "mh"):
        assert got[kind] == expected[kind][:len(got[kind])], kind
    assert [b[:3] for b in got["branches"]] == [  # (index, parent, cut); ends come later
        b[:3] for b in expected["branches"][:len(got["branches"])]]
    for args in (["logs", "show", lost.run.id], ["logs"]):
        r = cli([*args, "--home", home])
        assert r.returncode == 0 and "engine-lost" in r.stdout, r.stdout + r.stderr

    # 3) resumed while the server is still down: one line, exit 2, the run still resumable
    r = cli(["fix", "--resume", lost.run.id[:12], "--home", home])
    assert r.returncode == 2
    assert error_line(r.stderr).endswith("connection refused (2 tries)")
    assert only_run(home).run.outcome == "engine-lost"

    # 4) resumed against a restarted server on the same port: the uninterrupted run's end
    with server(port):
        again = cli(["fix", "--resume", lost.run.id[:12], "--home", home])
    assert again.returncode == 0, again.stderr
    assert "did not reproduce" not in again.stderr  # every recorded turn decoded again exactly
    assert summary(only_run(home)) == expected
    assert SECRET.encode() not in b"".join(p.read_bytes() for p in home.glob("traces.db*"))
    assert SECRET not in out + err + again.stdout + again.stderr

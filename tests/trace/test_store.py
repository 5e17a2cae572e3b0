"""The SQLite store: round trips, lookups, migrations, and a run killed mid-write."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading

import pytest

from decision_retry.errors import BadInput
from decision_retry.trace import Recorder, TraceStore, Turn, UnknownRun, db_path, trace_home
from decision_retry.trace.migrations import MIGRATIONS, migrate
from tests.helpers import ROOT
from tests.trace.sample_run import tokens


def test_round_trip_gives_back_equal_nodes(sample):
    tree = sample.store.load(sample.run_id)
    assert tree.run.id == sample.run_id and tree.run.outcome == "solved"
    assert (
        tree.run.finished_at is not None
        and tree.run.config == {"alpha": 4.0}
        and tree.run.seed == 7
    )
    assert list(tree.branches) == sample.branches  # with outcomes, verdicts and diffs
    assert [b.passed for b in tree.branches] == [False, True, False]
    assert list(tree.turns) == sample.turns  # tokens with logp, logq, entropy, alternatives
    assert tree.turns[1].tokens[-1].text == "  # </script><b>x</b>"
    assert len(tree.decisions) == sample.n_decisions > 0
    assert {d.snapshot for d in tree.decisions} == {"sha0", "sha1", "sha2"}
    assert len(tree.tool_calls) == len(sample.turns)
    assert [r.exit_code for r in tree.test_runs] == [1, 0, 1]
    assert [s.accepted for s in tree.mh_steps] == [True, False]
    assert tree.mh_steps[0].log_verifier == 0.8


def test_a_rewind_stores_only_the_new_turn(sample):
    tree = sample.store.load(sample.run_id)
    b0, b1, _ = tree.branches
    assert len(tree.own_turns(b1.id)) == 1  # nothing copied from the parent
    assert [t.branch_id for t in tree.trajectory(b1.id)] == [b0.id, b1.id]


def test_adding_the_same_node_twice_is_idempotent(sample):
    turn = sample.turns[0]
    sample.store.add(turn)
    assert len(sample.store.load(sample.run_id).turns) == len(sample.turns)


def test_foreign_keys_are_enforced(store):
    with pytest.raises(sqlite3.IntegrityError):
        store.add(Turn(branch_id="no-such-branch", index=0, tokens=tokens([("x", 0.1)])))


def test_list_runs_newest_first_with_limit(store):
    ids = []
    for seed in range(3):
        rec = Recorder(store)
        ids.append(rec.start_run(model="m", strategy="restart", seed=seed).id)
    assert [r.id for r in store.list_runs()] == ids[::-1]
    assert [r.id for r in store.list_runs(limit=2)] == ids[:0:-1]
    assert store.list_runs()[0].outcome is None  # not finished


def test_resolve_latest_prefix_and_unknown(sample):
    store = sample.store
    assert store.resolve("latest") == sample.run_id
    assert store.resolve(sample.run_id[:6]) == sample.run_id
    with pytest.raises(UnknownRun, match="no run matches"):
        store.resolve("zz")
    with pytest.raises(UnknownRun):
        store.resolve("%")  # LIKE wildcards are taken literally
    with pytest.raises(UnknownRun):
        store.load("0" * 20)
    assert issubclass(UnknownRun, BadInput) and UnknownRun.exit_code == 2


def test_ambiguous_prefix(store):
    ids = [Recorder(store).start_run(model="m", strategy="s", seed=i).id for i in range(40)]
    first = ids[0][0]
    if sum(i.startswith(first) for i in ids) > 1:  # 40 runs over 16 first digits: always true
        with pytest.raises(UnknownRun, match="several"):
            store.resolve(first)


def test_counts(sample):
    counts = sample.store.counts(sample.run_id)
    assert counts == {
        "branches": 3,
        "turns": 5,
        "mh_steps": 2,
        "tokens": sum(len(t.tokens) for t in sample.turns),
    }


def test_migrations_are_recorded_once_and_idempotent(tmp_path):
    path = tmp_path / "traces.db"
    TraceStore(path).close()
    TraceStore(path).close()  # reopening applies nothing again
    db = sqlite3.connect(path)
    names = [r[0] for r in db.execute("SELECT name FROM _migrations")]
    assert names == [name for name, _ in MIGRATIONS] and names[0] == "m001_initial"
    db.isolation_level = None
    assert migrate(db) == []
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {
        "runs",
        "branches",
        "turns",
        "decisions",
        "tool_calls",
        "test_runs",
        "mh_steps",
    } <= tables


def test_concurrent_first_open_applies_migrations_once(tmp_path):
    path, errors = tmp_path / "traces.db", []

    def open_it():
        try:
            TraceStore(path).close()
        except Exception as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=open_it) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with TraceStore(path) as store:
        assert store.migrations() == [name for name, _ in MIGRATIONS]


def test_location_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("DECISION_RETRY_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert db_path() == tmp_path / "xdg" / "decision-retry" / "traces.db"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "me"))
    assert trace_home() == tmp_path / "me" / ".local" / "share" / "decision-retry"
    monkeypatch.setenv("DECISION_RETRY_HOME", str(tmp_path / "env"))
    assert trace_home() == tmp_path / "env"
    assert trace_home(tmp_path / "flag") == tmp_path / "flag"


WRITER = textwrap.dedent(
    """
    import sys
    from decision_retry.trace import Cut, Recorder, SpikeRule, TraceStore
    from tests.trace.sample_run import tokens

    rec = Recorder(TraceStore.open(sys.argv[1]))
    rec.start_run(model="m", strategy="entropy-cut", seed=0)
    parent = rec.start_branch()
    pieces = [(f"t{i}", (i * 7 % 5) / 2) for i in range(200)]
    n = 0
    while True:  # write until killed
        cut = Cut(turn=0, position=n % 50)
        branch = rec.start_branch(parent=parent, cut=cut, strategy="entropy-cut")
        turn = rec.record_turn(branch, tokens=tokens(pieces), index=0)
        rec.record_decisions(turn, SpikeRule(threshold=1.5))
        rec.record_tool_call(turn, action="edit", arguments={"n": n}, observation="x" * 2000)
        rec.record_test_run(branch, command="pytest", exit_code=1, failed=1)
        rec.finish_branch(branch, outcome="failed", passed=False, final_diff=str(n))
        rec.record_mh_step(current=parent, proposal=branch, cut_turn=0, cut_position=n % 50,
                           cut_entropy=1.0, proposal_length=200, log_accept=-1.0, accepted=False,
                           decode_tokens=200)
        n += 1
        print(n, flush=True)
    """
)


def test_a_killed_run_leaves_a_consistent_readable_trace(tmp_path):
    home = tmp_path / "home"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(home)],
        cwd=ROOT,  # `python -c` imports the tests package from the current directory
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        for line in proc.stdout:  # let it get well into the run, then kill it mid-write
            if int(line) >= 25:
                break
        else:
            pytest.fail(f"the writer died on its own (exit {proc.wait()})")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    with TraceStore.open(home) as store:
        [run] = store.list_runs()
        assert run.outcome is None  # killed before finishing
        tree = store.load(run.id)  # every node parses and matches its id
        db = sqlite3.connect(store.path)
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    retries = tree.branches[1:]
    assert len(retries) >= 25
    assert all(len(t.tokens) == 200 for t in tree.turns)  # no half-written token arrays
    assert len(tree.tool_calls) >= len(tree.turns) - 1 and len(tree.mh_steps) >= 25
    finished = [b for b in retries if b.outcome is not None]
    assert len(finished) >= 25 and all(b.final_diff is not None for b in finished)
    # the trace can still be appended to after the crash
    rec = Recorder(TraceStore.open(home))
    rec.start_run(model="m", strategy="restart")
    with TraceStore.open(home) as store:
        assert len(store.list_runs()) == 2

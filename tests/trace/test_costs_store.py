"""Migration m003: test runs gain `cached`, run ends gain `costs`; an old store opens and keeps its ids."""

from __future__ import annotations

import sqlite3

from decision_retry.costs import costs_line
from decision_retry.trace.migrations import MIGRATIONS
from decision_retry.trace.recorder import Recorder
from decision_retry.trace.store import TraceStore

COSTS = {"cpu_s": 12.5, "wall_s": 20.0, "decode": {"cpu_s": 4.0, "wall_s": 5.0},
         "prefill": {"cpu_s": 1.0, "wall_s": 1.0}, "tests": {"cpu_s": 6.0, "wall_s": 11.0},
         "localisation": {"cpu_s": 1.0, "wall_s": 2.0}, "other": {"cpu_s": 0.5, "wall_s": 1.0},
         "test_runs": 9, "cached_runs": 7}


def old_store(path) -> None:
    """A store as the releases before m003 wrote it: one run, one branch, one test run, ended."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
    for name, fn in MIGRATIONS:
        if name.startswith("m003"):
            break
        fn(db)
        db.execute("INSERT INTO _migrations VALUES (?, datetime('now'))", (name,))
    db.close()


def test_an_old_store_gains_the_columns_and_keeps_its_rows(tmp_path):
    path = tmp_path / "traces.db"
    old_store(path)
    # the rows an old release wrote: recorded through today's recorder, minus the new columns
    with TraceStore(tmp_path / "scratch.db") as scratch:
        rec = Recorder(scratch)
        rec.start_run(model="m", strategy="restart", config={}, seed=0)
        branch = rec.start_branch(parent=None, cut=None, strategy="restart")
        test = rec.record_test_run(branch, command="pytest", exit_code=1, passed=1, failed=1)
        run = rec.finish_run("not fixed")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("INSERT INTO runs VALUES (?, 'm', 'restart', '{}', 0, NULL, ?)",
               (run.id, run.created_at.isoformat()))
    db.execute("INSERT INTO run_ends VALUES (?, 'not fixed', ?)", (run.id, run.finished_at.isoformat()))
    db.execute('INSERT INTO branches (id, run_id, "index", strategy) VALUES (?, ?, 0, ?)',
               (branch.id, run.id, "restart"))
    db.execute("INSERT INTO test_runs VALUES (?, ?, 0, 'pytest', 1, 1, 0, 1, '', 0.0)",
               (test.id, branch.id))
    db.close()
    with TraceStore(path) as store:
        assert store.migrations()[-2:] == ["m003_cached_tests_and_costs",
                                           "m004_delayed_steps_and_scores"]
        tree = store.load(run.id)
        assert not store.skipped  # every old row still matches its id
        assert tree.run.costs is None and costs_line(tree.run.costs) == ""
        assert [(t.id, t.cached) for t in tree.test_runs] == [(test.id, False)]


def test_cached_and_costs_round_trip(tmp_path):
    with TraceStore(tmp_path / "traces.db") as store:
        rec = Recorder(store)
        rec.start_run(model="m", strategy="restart", config={}, seed=0)
        branch = rec.start_branch(parent=None, cut=None, strategy="restart")
        ran = rec.record_test_run(branch, command="pytest", exit_code=1, failed=1, duration_s=2.0)
        hit = rec.record_test_run(branch, command="pytest", exit_code=1, failed=1, cached=True)
        run = rec.finish_run("not fixed", costs=COSTS)
        tree = store.load(run.id)
    assert [t.cached for t in tree.test_runs] == [False, True]
    assert [t.id for t in tree.test_runs] == [ran.id, hit.id]
    assert tree.run.costs == COSTS and tree.run.id == run.id
    assert costs_line(tree.run.costs) == (
        "cpu 12.5 s (wall 20.0 s): decode 4.0, prefill+scoring 1.0, tests 6.0 (9 runs, 7 cached), "
        "localisation 1.0, other 0.5")


def test_a_meter_records_the_change_of_the_engines_counters():
    """What the engine counted during the run (here 2 of 5 decodes out of order), not since
    load; the one-line summary names a counter only when it is not zero."""
    from decision_retry.costs import Meter

    seen = {"kv_disordered": 3, "kv_evictions": 1}
    meter = Meter(counters=lambda: dict(seen))
    seen["kv_disordered"] = 5
    summary = meter.summary()
    assert summary["engine"] == {"kv_disordered": 2, "kv_evictions": 0}
    assert costs_line(summary).endswith("; decodes with KV cells out of order 2")
    assert "engine" not in Meter().summary()

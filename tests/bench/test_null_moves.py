"""benchmarks/null_moves.py: the share of proposals that rebuilt their start state's diff, read
from a store recorded through the real Recorder (a real subprocess on a real SQLite file)."""

import json
import subprocess
import sys
from pathlib import Path

from decision_retry.trace import Cut, Recorder, TraceStore

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "null_moves.py"


def record(store: TraceStore, strategy: str, diffs: list[tuple[int | None, str | None]]) -> None:
    """One run: branch i has parent diffs[i][0] (None: a fresh start) and final diff diffs[i][1]
    (None: never finished)."""
    rec = Recorder(store)
    rec.start_run(model="scripted", strategy=strategy)
    branches = []
    for parent, diff in diffs:
        p = None if parent is None else branches[parent]
        b = rec.start_branch(parent=p, cut=None if p is None else Cut(turn=0, position=3))
        branches.append(b)
        if diff is not None:
            rec.finish_branch(b, outcome="failed", passed=False, final_diff=diff)
    rec.finish_run("exhausted")


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True,
                          text=True, timeout=120, check=False)


def test_counts_null_and_repeated_proposals(tmp_path):
    db = tmp_path / "traces" / "traces.db"
    store = TraceStore(db)
    # the rewind run: 0 fresh (A); 1 from 0 rebuilds A (null, repeat); 2 from 0 writes B;
    # 3 from 2 writes A (not null: its start was B; a repeat); 4 from 2 never finished
    record(store, "rewind", [(None, "A"), (0, "A"), (0, "B"), (2, "A"), (2, None)])
    # restart: fresh starts are not proposals cut from a state; one retry from the end
    record(store, "restart", [(None, "C"), (None, "C"), (1, "D")])
    store.close()
    r = run(tmp_path, "--json", tmp_path / "out.json")  # a bench output directory
    assert r.returncode == 0, r.stderr
    rows = {row["key"]: row for row in json.loads((tmp_path / "out.json").read_text())}
    assert rows["rewind"] == {"key": "rewind", "proposals": 3, "null": 1, "repeat": 2,
                                   "null_share": 1 / 3, "repeat_share": 2 / 3}
    assert (rows["restart"]["proposals"], rows["restart"]["null"], rows["restart"]["repeat"]) \
        == (1, 0, 0)
    assert "| rewind | 3 | 1 (33%) | 2 (67%) |" in r.stdout
    by_run = run(db, "--by-run")  # the store itself
    assert by_run.returncode == 0 and by_run.stdout.count("\n") == 4  # header, rule, 2 runs


def test_a_missing_store_is_one_line_and_exit_2(tmp_path):
    r = run(tmp_path / "nowhere")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "no trace store" in r.stderr

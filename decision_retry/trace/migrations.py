"""Append-only, named schema migrations, recorded in the `_migrations` table.

Never edit or reorder a migration once released; add `m002_...` below instead. Columns typed
JSON hold JSON text (token arrays, configs, arguments); the store decodes them on load.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

MIGRATIONS: list[tuple[str, Callable[[sqlite3.Connection], None]]] = []


def migration(fn: Callable[[sqlite3.Connection], None]) -> Callable[[sqlite3.Connection], None]:
    """Register a migration under its function name, in definition order."""
    MIGRATIONS.append((fn.__name__, fn))
    return fn


@migration
def m001_initial(db: sqlite3.Connection) -> None:
    """Runs, branches, turns, decision points, tool calls, test runs, MH steps, and end records."""
    statements = [
        """CREATE TABLE runs (
            id TEXT PRIMARY KEY, model TEXT NOT NULL, strategy TEXT NOT NULL,
            config JSON NOT NULL, seed INTEGER, repo TEXT, created_at TEXT NOT NULL)""",
        # ends are separate append-only rows: a node never changes once written
        """CREATE TABLE run_ends (
            run_id TEXT PRIMARY KEY REFERENCES runs(id),
            outcome TEXT NOT NULL, finished_at TEXT NOT NULL)""",
        """CREATE TABLE branches (
            id TEXT PRIMARY KEY, run_id TEXT NOT NULL REFERENCES runs(id),
            "index" INTEGER NOT NULL, parent_id TEXT REFERENCES branches(id),
            cut JSON, strategy TEXT NOT NULL)""",
        """CREATE TABLE branch_ends (
            branch_id TEXT PRIMARY KEY REFERENCES branches(id),
            outcome TEXT, passed INTEGER, final_diff TEXT)""",
        """CREATE TABLE turns (
            id TEXT PRIMARY KEY, branch_id TEXT NOT NULL REFERENCES branches(id),
            "index" INTEGER NOT NULL, prompt TEXT NOT NULL, tokens JSON NOT NULL,
            params JSON NOT NULL, text TEXT NOT NULL)""",
        """CREATE TABLE decisions (
            id TEXT PRIMARY KEY, turn_id TEXT NOT NULL REFERENCES turns(id),
            position INTEGER NOT NULL, entropy REAL NOT NULL, token_id INTEGER NOT NULL,
            token TEXT NOT NULL, alternatives JSON NOT NULL, kind TEXT NOT NULL,
            label TEXT, span TEXT, snapshot TEXT)""",
        """CREATE TABLE tool_calls (
            id TEXT PRIMARY KEY, turn_id TEXT NOT NULL REFERENCES turns(id),
            "index" INTEGER NOT NULL, action TEXT NOT NULL, arguments JSON NOT NULL,
            observation TEXT NOT NULL)""",
        """CREATE TABLE test_runs (
            id TEXT PRIMARY KEY, branch_id TEXT NOT NULL REFERENCES branches(id),
            "index" INTEGER NOT NULL, command TEXT NOT NULL, passed INTEGER NOT NULL,
            failed INTEGER NOT NULL, errors INTEGER NOT NULL, exit_code INTEGER NOT NULL,
            output_tail TEXT NOT NULL, duration_s REAL NOT NULL)""",
        """CREATE TABLE mh_steps (
            id TEXT PRIMARY KEY, run_id TEXT NOT NULL REFERENCES runs(id),
            "index" INTEGER NOT NULL,
            current_branch_id TEXT REFERENCES branches(id),
            proposal_branch_id TEXT REFERENCES branches(id),
            cut_turn INTEGER NOT NULL, cut_position INTEGER NOT NULL, cut_entropy REAL NOT NULL,
            proposal_length INTEGER NOT NULL, log_accept REAL NOT NULL, log_target REAL NOT NULL,
            log_proposal REAL NOT NULL, log_cut_correction REAL NOT NULL,
            log_verifier REAL NOT NULL, accepted INTEGER NOT NULL,
            decode_tokens INTEGER NOT NULL)""",
        "CREATE INDEX branches_run ON branches(run_id)",
        "CREATE INDEX turns_branch ON turns(branch_id)",
        "CREATE INDEX decisions_turn ON decisions(turn_id)",
        "CREATE INDEX tool_calls_turn ON tool_calls(turn_id)",
        "CREATE INDEX test_runs_branch ON test_runs(branch_id)",
        "CREATE INDEX mh_steps_run ON mh_steps(run_id)",
    ]
    for sql in statements:
        db.execute(sql)


@migration
def m002_mh_step_bounds(db: sqlite3.Connection) -> None:
    """MH steps of remote engines: the interval of log A and whether the decision was approximate."""
    for sql in (
        "ALTER TABLE mh_steps ADD COLUMN log_accept_lo REAL",
        "ALTER TABLE mh_steps ADD COLUMN log_accept_hi REAL",
        "ALTER TABLE mh_steps ADD COLUMN approximate INTEGER",
    ):
        db.execute(sql)


@migration
def m003_cached_tests_and_costs(db: sqlite3.Connection) -> None:
    """Test runs answered from the test cache (no command ran); where a run's seconds went."""
    for sql in (
        "ALTER TABLE test_runs ADD COLUMN cached INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE run_ends ADD COLUMN costs JSON",
    ):
        db.execute(sql)


@migration
def m004_delayed_steps_and_scores(db: sqlite3.Connection) -> None:
    """MH steps decided in two stages (delayed acceptance: the stage that decided); a turn's
    tokens as scored after the turn was recorded (no-body scores, a kept tail rescored)."""
    for sql in (
        "ALTER TABLE mh_steps ADD COLUMN stage INTEGER",
        """CREATE TABLE turn_scores (
            id TEXT PRIMARY KEY, turn_id TEXT NOT NULL REFERENCES turns(id),
            scores JSON NOT NULL)""",
    ):
        db.execute(sql)


def migrate(db: sqlite3.Connection) -> list[str]:
    """Apply the migrations not yet recorded, each in its own transaction; return their names.

    `db` must be in autocommit mode (isolation_level=None). BEGIN IMMEDIATE takes the write lock
    before checking, so two processes opening a fresh store at once apply each migration once.
    """
    db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
    applied = []
    for name, fn in MIGRATIONS:
        db.execute("BEGIN IMMEDIATE")
        try:
            done = db.execute("SELECT 1 FROM _migrations WHERE name = ?", (name,)).fetchone()
            if not done:
                fn(db)
                db.execute(
                    "INSERT INTO _migrations (name, applied_at) VALUES (?, datetime('now'))",
                    (name,),
                )
                applied.append(name)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    return applied

"""The trace store: SQLite (WAL, foreign keys), one committed transaction per added node.

Every add commits before it returns, so a process killed mid-run leaves a consistent, readable
trace: the nodes added so far, each complete, with an unfinished run showing no outcome.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Self, TypeVar

from decision_retry.errors import BadInput
from decision_retry.trace.migrations import migrate
from decision_retry.trace.models import (
    Branch,
    DecisionPoint,
    MHStep,
    Node,
    Run,
    RunTree,
    TestRun,
    ToolCall,
    Turn,
    TurnScores,
)

DB_NAME = "traces.db"
HOME_ENV = "DECISION_RETRY_HOME"

TABLES: dict[type[Node], str] = {
    Run: "runs",
    Branch: "branches",
    Turn: "turns",
    DecisionPoint: "decisions",
    ToolCall: "tool_calls",
    TestRun: "test_runs",
    MHStep: "mh_steps",
    TurnScores: "turn_scores",
}
N = TypeVar("N", bound=Node)


class UnknownRun(BadInput):
    """No run matches the id, prefix or `latest` the user gave."""


def trace_home(home: str | os.PathLike[str] | None = None) -> Path:
    """The store directory: `home`, else $DECISION_RETRY_HOME, else the XDG data directory."""
    if home:
        return Path(home).expanduser()
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data) / "decision-retry"


def db_path(home: str | os.PathLike[str] | None = None) -> Path:
    """Path of the SQLite file inside the store directory."""
    return trace_home(home) / DB_NAME


def _encode(value: Any) -> Any:
    """A model field value as an SQLite value: JSON text for containers, ints for bools. Text
    with a lone surrogate (not UTF-8) is stored as its surrogatepass bytes, read back exactly."""
    if isinstance(value, (dict, list, tuple)):
        value = json.dumps(value, ensure_ascii=False)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogatepass")
    return value


class TraceStore:
    """Append-only store of trace nodes. Use `TraceStore.open(home)` or `TraceStore(path)`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # autocommit mode: every statement outside an explicit BEGIN commits at once
        self._db = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        self._set_wal()
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable against a crash
        migrate(self._db)
        self._json_columns = {table: self._json_columns_of(table) for table in TABLES.values()}
        self.skipped: list[str] = []  # rows left out by the readers, with the reason

    def _set_wal(self) -> None:
        """Switch to WAL. SQLite does not run the busy handler for this pragma, so a first open
        racing another process's first open can see 'database is locked': retry briefly."""
        for attempt in range(50):
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or attempt == 49:
                    raise
                time.sleep(0.05 * (1 + attempt % 5))

    @classmethod
    def open(cls, home: str | os.PathLike[str] | None = None) -> TraceStore:
        """Open (creating if needed) the store in `home` or the default location."""
        return cls(db_path(home))

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _json_columns_of(self, table: str) -> set[str]:
        rows = self._db.execute(f"PRAGMA table_info({table})").fetchall()
        return {row["name"] for row in rows if row["type"].upper() == "JSON"}

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction, committed on exit (rolled back on error)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def _snapshot(self) -> Iterator[None]:
        """A read transaction: several SELECTs see one consistent state despite a live writer."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                yield
            finally:
                self._db.execute("COMMIT")

    # -- writing --------------------------------------------------------------------------

    def add(self, node: N) -> N:
        """Insert a node (idempotent: the same content has the same id); return it."""
        table = TABLES[type(node)]
        data = node.model_dump(mode="json", exclude=set(node.mutable_fields))
        columns = ", ".join(f'"{c}"' for c in data)
        marks = ", ".join("?" for _ in data)
        values = [_encode(v) for v in data.values()]
        with self._write() as db:
            db.execute(f"INSERT OR IGNORE INTO {table} ({columns}) VALUES ({marks})", values)
        return node

    def finish_branch(self, branch: Branch) -> Branch:
        """Record a branch's end (outcome, tests passed, final diff); the first end wins."""
        with self._write() as db:
            db.execute(
                "INSERT OR IGNORE INTO branch_ends (branch_id, outcome, passed, final_diff)"
                " VALUES (?, ?, ?, ?)",
                (branch.id, branch.outcome, branch.passed, branch.final_diff),
            )
        return branch

    def finish_run(self, run: Run) -> Run:
        """Record a run's outcome and end time; the first end recorded wins."""
        if run.outcome is None or run.finished_at is None:
            raise ValueError("finish_run needs a run with outcome and finished_at set")
        with self._write() as db:
            db.execute(
                "INSERT OR IGNORE INTO run_ends (run_id, outcome, finished_at, costs)"
                " VALUES (?, ?, ?, ?)",
                (run.id, run.outcome, run.finished_at.isoformat(),
                 None if run.costs is None else json.dumps(run.costs)),
            )
        return run

    # -- reading --------------------------------------------------------------------------

    def _decode(self, table: str, row: sqlite3.Row) -> dict[str, Any]:
        data = {k: v.decode("utf-8", "surrogatepass") if isinstance(v, bytes) else v
                for k, v in dict(row).items()}
        for column in self._json_columns[table]:
            if data.get(column) is not None:
                data[column] = json.loads(data[column])
        return data

    def _load(self, model: type[N], sql: str, args: tuple[Any, ...]) -> tuple[N, ...]:
        """The rows as nodes; a row that does not decode, validate or match its id is left out
        (and named in `skipped`): one bad row hides that row, not the run or the store."""
        table = TABLES[model]
        nodes = []
        for row in self._db.execute(sql, args).fetchall():
            try:
                data = self._decode(table, row)
                node = model.model_validate(data)
                if node.id != data["id"]:
                    raise ValueError("does not match its content")
            except (ValueError, TypeError, KeyError) as err:  # JSON, pydantic, id mismatch
                reason = str(err).splitlines()[0] if str(err) else type(err).__name__
                self.skipped.append(f"{table} row {row['id']!r}: {reason}")
                continue
            nodes.append(node)
        return tuple(nodes)

    def _runs(self, where: str, args: tuple[Any, ...]) -> tuple[Run, ...]:
        sql = (
            "SELECT runs.*, e.outcome, e.finished_at, e.costs FROM runs"
            f" LEFT JOIN run_ends e ON e.run_id = runs.id {where}"
        )
        return self._load(Run, sql, args)

    def list_runs(self, limit: int | None = 20) -> list[Run]:
        """Runs, newest first; `limit` None or 0 for all."""
        order = "ORDER BY runs.rowid DESC"  # insertion order: a run is stored when it starts
        if limit:
            return list(self._runs(f"{order} LIMIT ?", (limit,)))
        return list(self._runs(order, ()))

    def counts(self, run_id: str) -> dict[str, int]:
        """How many branches, turns, generated tokens and MH steps a run has."""
        turns, tokens = self._db.execute(
            "SELECT count(*), coalesce(sum(CASE WHEN json_valid(t.tokens)"
            " THEN json_array_length(t.tokens) ELSE 0 END), 0) FROM turns t"
            " JOIN branches b ON t.branch_id = b.id WHERE b.run_id = ?",
            (run_id,),
        ).fetchone()
        branches = self._db.execute(
            "SELECT count(*) FROM branches WHERE run_id = ?", (run_id,)
        ).fetchone()[0]
        steps = self._db.execute(
            "SELECT count(*) FROM mh_steps WHERE run_id = ?", (run_id,)
        ).fetchone()[0]
        return {"branches": branches, "turns": turns, "tokens": tokens, "mh_steps": steps}

    def resolve(self, ref: str) -> str:
        """The run id for `latest`, a full id, or a unique id prefix; UnknownRun otherwise."""
        if ref == "latest":
            runs = self.list_runs(limit=1)
            if not runs:
                raise UnknownRun(f"no runs recorded yet in {self.path}")
            return runs[0].id
        pattern = ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        ids = [
            r[0]
            for r in self._db.execute(
                "SELECT id FROM runs WHERE id LIKE ? ESCAPE '\\' LIMIT 2", (pattern,)
            )
        ]
        if not ids:
            raise UnknownRun(f"no run matches {ref!r} in {self.path}")
        if len(ids) > 1:
            raise UnknownRun(f"{ref!r} matches several runs; give more of the id")
        return ids[0]

    def load(self, run_id: str) -> RunTree:
        """The full tree of one run (UnknownRun if there is none with this exact id)."""
        with self._snapshot():
            return self._load_tree(run_id)

    def _load_tree(self, run_id: str) -> RunTree:
        runs = self._runs("WHERE runs.id = ?", (run_id,))
        if not runs:
            raise UnknownRun(f"no run {run_id!r} in {self.path}")
        in_run = "JOIN branches b ON b.id = x.branch_id WHERE b.run_id = ? ORDER BY x.rowid"
        in_turns = (
            "JOIN turns t ON t.id = x.turn_id JOIN branches b ON b.id = t.branch_id"
            " WHERE b.run_id = ? ORDER BY x.rowid"
        )
        branches = self._load(
            Branch,
            "SELECT x.*, e.outcome, e.passed, e.final_diff FROM branches x"
            " LEFT JOIN branch_ends e ON e.branch_id = x.id WHERE x.run_id = ? ORDER BY x.rowid",
            (run_id,),
        )
        scores = {s.turn_id: s for s in self._load(
            TurnScores, f"SELECT x.* FROM turn_scores x {in_turns}", (run_id,))}
        turns = tuple(scores[t.id].merged(t) if t.id in scores else t for t in self._load(
            Turn, f"SELECT x.* FROM turns x {in_run}", (run_id,)))
        return RunTree(
            run=runs[0],
            branches=branches,
            turns=turns,
            decisions=self._load(
                DecisionPoint, f"SELECT x.* FROM decisions x {in_turns}", (run_id,)
            ),
            tool_calls=self._load(ToolCall, f"SELECT x.* FROM tool_calls x {in_turns}", (run_id,)),
            test_runs=self._load(TestRun, f"SELECT x.* FROM test_runs x {in_run}", (run_id,)),
            mh_steps=self._load(
                MHStep, "SELECT x.* FROM mh_steps x WHERE x.run_id = ? ORDER BY x.rowid", (run_id,)
            ),
        )

    # -- resume and gc ----------------------------------------------------------------------

    def end_run(self, run_id: str, outcome: str, finished_at: datetime) -> None:
        """Record the end of a run known only by id (gc: `interrupted`); the first end wins."""
        with self._write() as db:
            db.execute(
                "INSERT OR IGNORE INTO run_ends (run_id, outcome, finished_at) VALUES (?, ?, ?)",
                (run_id, outcome, finished_at.isoformat()),
            )

    def reopen_run(self, run_id: str) -> None:
        """Forget a run's end record (`interrupted`) so that a resumed run can record its own."""
        with self._write() as db:
            db.execute("DELETE FROM run_ends WHERE run_id = ?", (run_id,))

    def outcome(self, run_id: str) -> str | None:
        """The recorded outcome of a run (None while unfinished), read without decoding nodes."""
        row = self._db.execute("SELECT outcome FROM run_ends WHERE run_id = ?", (run_id,)).fetchone()
        return row[0] if row else None

    def run_rows(self) -> list[tuple[str, str, str | None, str | None]]:
        """(id, created_at, repo, outcome) of every run, oldest first, without decoding."""
        return [tuple(r) for r in self._db.execute(
            "SELECT runs.id, runs.created_at, runs.repo, e.outcome FROM runs"
            " LEFT JOIN run_ends e ON e.run_id = runs.id ORDER BY runs.rowid")]

    def delete_run(self, run_id: str) -> int:
        """Delete a run and every node of it (children first); the number of rows deleted."""
        branches = "SELECT id FROM branches WHERE run_id = ?"
        turns = f"SELECT id FROM turns WHERE branch_id IN ({branches})"
        statements = [
            f"DELETE FROM decisions WHERE turn_id IN ({turns})",
            f"DELETE FROM turn_scores WHERE turn_id IN ({turns})",
            f"DELETE FROM tool_calls WHERE turn_id IN ({turns})",
            "DELETE FROM mh_steps WHERE run_id = ?",
            f"DELETE FROM test_runs WHERE branch_id IN ({branches})",
            f"DELETE FROM turns WHERE branch_id IN ({branches})",
            f"DELETE FROM branch_ends WHERE branch_id IN ({branches})",
            "UPDATE branches SET parent_id = NULL WHERE run_id = ?",
            "DELETE FROM branches WHERE run_id = ?",
            "DELETE FROM run_ends WHERE run_id = ?",
            "DELETE FROM runs WHERE id = ?",
        ]
        n = 0
        with self._write() as db:
            for sql in statements:
                n += db.execute(sql, (run_id,)).rowcount
        return n

    def migrations(self) -> list[str]:
        """Names of the migrations applied to this database, in order."""
        return [r[0] for r in self._db.execute("SELECT name FROM _migrations ORDER BY rowid")]

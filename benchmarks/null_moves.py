"""How many proposals rebuilt the code they started from (issue 28: null moves).

    .venv/bin/python benchmarks/null_moves.py STORE [STORE ...] [--by-run] [--json FILE]

STORE: a trace store (`traces.db`), a `decision-retry bench` output directory (its
`traces/traces.db`) or a `--home` directory (its `traces.db`); opened read only.

A proposal is a branch cut from another (a rewind or a retry from the end: `parent_id` set) that
finished with a recorded diff. It is **null** when its final diff equals its parent's, the state
it started from, and a **repeat** when its diff equals the diff of any earlier finished branch of
the same run (restarts included). Per strategy (or per run with --by-run): proposals, null, repeat
and their shares.
"""

from __future__ import annotations

import argparse
import collections
import json
import sqlite3
from pathlib import Path

BRANCHES = """
SELECT b.run_id, r.strategy, b."index", b.id, b.parent_id, e.final_diff
FROM branches b JOIN runs r ON r.id = b.run_id
LEFT JOIN branch_ends e ON e.branch_id = b.id
ORDER BY b.run_id, b."index"
"""


def database(path: Path) -> Path:
    """The traces.db a STORE argument names (FileNotFoundError when there is none)."""
    for cand in (path, path / "traces" / "traces.db", path / "traces.db"):
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"no trace store at {path} (traces.db, OUT/traces/traces.db)")


def tally(db: Path, *, by_run: bool = False) -> dict[str, collections.Counter]:
    """Counters of proposals, null and repeat, keyed by strategy (or run id)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute(BRANCHES).fetchall()
    finally:
        con.close()
    out: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    diffs: dict[str, str | None] = {}  # branch id -> final diff
    seen: dict[str, set[str]] = collections.defaultdict(set)  # run id -> diffs finished so far
    for run, strategy, _, branch, parent, diff in rows:
        diffs[branch] = diff
        if diff is None:
            continue
        if parent is not None:
            c = out[run if by_run else strategy]
            c["proposals"] += 1
            c["null"] += diffs.get(parent) == diff
            c["repeat"] += diff in seen[run]
        seen[run].add(diff)
    return out


def table(total: dict[str, collections.Counter]) -> list[dict]:
    rows = []
    for key, c in sorted(total.items()):
        n = c["proposals"]
        rows.append({"key": key, "proposals": n, "null": c["null"], "repeat": c["repeat"],
                     "null_share": c["null"] / n if n else None,
                     "repeat_share": c["repeat"] / n if n else None})
    return rows


def _share(row: dict, key: str) -> str:
    share = row[key + "_share"]
    return "-" if share is None else f"{row[key]} ({share:.0%})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("stores", nargs="+", type=Path)
    ap.add_argument("--by-run", action="store_true", help="one row per run, not per strategy")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    total: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for store in args.stores:
        try:
            db = database(store)
        except FileNotFoundError as err:
            ap.exit(2, f"null_moves: {err}\n")
        for key, c in tally(db, by_run=args.by_run).items():
            total[key].update(c)
    rows = table(total)
    print(f"| {'run' if args.by_run else 'strategy'} | proposals | null (same diff as start) "
          "| repeat (diff tested before in the run) |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['key']} | {r['proposals']} | {_share(r, 'null')} | {_share(r, 'repeat')} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

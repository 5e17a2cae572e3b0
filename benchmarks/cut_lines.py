"""Where did the rewinds cut? The share of cuts on the planted bug's line, per strategy.

    .venv/bin/python benchmarks/cut_lines.py OUT [--json FILE]

OUT: a `decision-retry bench real-repos` output directory (`cells.jsonl`, `traces/traces.db`,
`suites/real-repos/index.json`, which names each case's bug file and line); opened read only.
Every attempt that began with a cut is placed as `logs show` places it (trace/summary.where:
the shown function's line in the file plus the reply's newlines before the token), and counted
as *on the bug line* when that is the bug's file and line. Per strategy: cuts, cuts on the bug
line, and the cells with at least one. The mechanism `-o line_weight` is meant to move.

Also per strategy, what repeats cost: attempts whose tree was tested before in the same run (the
test cache answered: the same code again), and the decode tokens spent on them (a proposal's
`mh_steps.decode_tokens`, a fresh reply's own tokens); and the fresh replies' tokens (roots of
the trace) against the decode tokens they cost (the cell's decode tokens less its proposals'):
since `LM.extend_along` a fresh reply walks earlier ones and decodes only where it leaves them.
What the walk saves follows from the replies alone (the same law either way): a reply walks the
longest prefix it shares with the last fresh reply (`last`), or with any of the last 8 (`trie`,
what `fix` runs since 2135c0a); in a run that walked, tokens less decoded equals the walk it ran.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from decision_retry.agent.graph import WALKED
from decision_retry.trace.store import TraceStore
from decision_retry.trace.summary import token_at, where


def _common(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def cell_cuts(store: TraceStore, run_id: str, bug: str, decode_tokens: int) -> dict:
    """Cuts, cuts on `bug` ("file:line"), attempts, repeated attempts and their decode tokens,
    decode tokens in all, fresh replies' tokens and the decode tokens they cost, of one run."""
    tree = store.load(run_id)
    decoded = {s.proposal_branch_id: s.decode_tokens for s in tree.mh_steps}
    out = dict.fromkeys(("cuts", "on_bug_line", "attempts", "repeats", "repeat_tokens",
                         "tokens", "fresh_tokens"), 0)
    out["fresh_decoded"] = decode_tokens - sum(decoded.values())
    out["walk_last"] = out["walk_trie"] = 0
    fresh: list[list[int]] = []
    for b in sorted(tree.branches, key=lambda b: b.index):
        turns = tree.own_turns(b.id) if b.parent_id is None else []
        if turns:
            ids = [t.id for t in turns[0].tokens]
            shared = [_common(ids, f) for f in fresh[-WALKED:]]
            out["walk_last"] += shared[-1] if shared else 0
            out["walk_trie"] += max(shared, default=0)
            fresh.append(ids)
    for b in tree.branches:
        runs = tree.test_runs_of(b.id)
        written = sum(len(t.tokens) for t in tree.own_turns(b.id))
        tokens = decoded.get(b.id, written)
        out["attempts"] += 1
        out["tokens"] += tokens
        out["fresh_tokens"] += written if b.parent_id is None else 0
        if runs and runs[0].cached:
            out["repeats"] += 1
            out["repeat_tokens"] += tokens
        if b.parent_id is None or b.cut is None or b.cut.position == 0:
            continue
        found = token_at(tree.trajectory(b.parent_id), b.cut.turn, b.cut.position)
        if found is None:
            continue
        out["cuts"] += 1
        out["on_bug_line"] += where(tree, found[0], b.cut.position) == bug
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    index = json.loads((args.out / "suites" / "real-repos" / "index.json").read_text())["cases"]
    cells = [json.loads(x) for x in (args.out / "cells.jsonl").read_text().splitlines() if x]
    store = TraceStore(args.out / "traces" / "traces.db")
    rows, totals = [], collections.defaultdict(collections.Counter)
    for c in cells:
        meta = index.get(c["repo"])
        if meta is None or not c.get("run_id"):
            continue
        got = cell_cuts(store, c["run_id"], f"{meta['bug_file']}:{meta['bug_line']}",
                        c["decode_tokens"])
        rows.append({"case": c["repo"], "strategy": c["strategy"], "seed": c["seed"], **got})
        totals[c["strategy"]].update({**got, "cells": 1, "cells_hit": got["on_bug_line"] > 0})
    print("| strategy | cuts | on the bug line | share | cells with one | attempts | repeated "
          "(same code) | their decode tokens | fresh replies: tokens / decoded | walkable: "
          "last / trie |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for s, t in totals.items():
        print(f"| {s} | {t['cuts']} | {t['on_bug_line']} | "
              f"{t['on_bug_line'] / t['cuts'] if t['cuts'] else 0:.3f} | "
              f"{t['cells_hit']} of {t['cells']} | {t['attempts']} | {t['repeats']} | "
              f"{t['repeat_tokens']} of {t['tokens']} | {t['fresh_tokens']} / "
              f"{t['fresh_decoded']} | {t['walk_last']} / {t['walk_trie']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

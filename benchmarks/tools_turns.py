"""How the model drives an agent protocol, read from a trace store: turns, format errors, loops.

    python -m benchmarks.tools_turns OUT/traces [--json FILE]

For every run of the store (a bench's `<out>/traces`, or a `--home`): its protocol, whether it
was fixed, attempts, model turns, and per turn what the call was. A format error is a turn whose
reply held no valid call (`invalid`), named no known tool, or (patch) rewrote none of the
functions shown; a loop is a turn whose call (tool and arguments; a format error: the same
reply) repeats one of the two before it in the same trajectory (the kept turns of a rewind
included): the same call again, or an A B A B cycle. Prints one table (a row per run and
a total per protocol) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from decision_retry import hermes
from decision_retry.trace.store import TraceStore

TOOLS = {"read_file", "list_files", "edit_function", "replace_text", "run_tests", "submit"}


def run_stats(tree) -> dict:
    """One run's counts (see the module docstring)."""
    calls = {c.turn_id: c for c in tree.tool_calls}
    own: dict[str, list] = {}
    for t in sorted(tree.turns, key=lambda t: t.index):
        own.setdefault(t.branch_id, []).append(t)
    branches = {b.id: b for b in tree.branches}

    def chain(b) -> list:  # the attempt's turns: the kept ones of its parent, then its own
        if b.parent_id is None or b.parent_id not in branches:
            return own.get(b.id, [])
        keep = b.cut.turn if b.cut is not None else 0
        return chain(branches[b.parent_id])[:keep] + own.get(b.id, [])

    protocol = tree.run.config.get("protocol", "patch")
    turns = errors = loops = edits_applied = untagged = 0
    actions: Counter = Counter()
    first: dict = {}
    for i, b in enumerate(sorted(tree.branches, key=lambda b: b.index)):
        seen = chain(b)
        recent: list = []  # the two calls before this one
        for t in seen:
            c = calls.get(t.id)
            if c is None:
                continue
            key = (c.action, t.text if _format_error(c) else  # an error: the same reply again
                   json.dumps(c.arguments, sort_keys=True, default=str))
            if t.branch_id == b.id:  # count each recorded turn once (in its own branch)
                turns += 1
                actions[c.action] += 1
                errors += _format_error(c)
                untagged += c.action in TOOLS and not any(
                    x.name for x in hermes.parse(t.text)[1])  # valid only read loosely
                loops += key in recent
                edits_applied += c.observation.startswith("replaced")
            recent = [*recent[-1:], key]
        if i == 0:
            first = {"turns": len(seen), "actions": [calls[t.id].action for t in seen
                                                      if t.id in calls],
                     "passed": b.passed, "end": _end(seen, calls)}
    return {"run": tree.run.id[:12], "protocol": protocol, "strategy": tree.run.strategy,
            "fixed": tree.run.outcome == "fixed", "outcome": tree.run.outcome,
            "attempts": len(tree.branches), "turns": turns, "format_errors": errors,
            "untagged": untagged, "loops": loops, "edits_applied": edits_applied, "actions": dict(actions),
            "first_attempt": first}


def _format_error(c) -> bool:
    if c.action == "apply_patch":
        return "defines none of the functions shown" in c.observation
    return c.action == "invalid" or c.action not in TOOLS


def _end(turns, calls) -> str:
    """How an attempt's turns ended: submit, the turn limit, or the budget (its last call)."""
    last = calls.get(turns[-1].id) if turns else None
    if last is None:
        return "none"
    if last.action in ("submit", "apply_patch"):
        return last.action
    return f"stopped after {last.action}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store", help="a trace store directory (bench <out>/traces, or --home)")
    ap.add_argument("--json", dest="json_out", default=None, help="write the rows here")
    args = ap.parse_args()
    store = TraceStore.open(Path(args.store))
    rows = []
    for run in reversed(store.list_runs(limit=None)):
        tree = store.load(run.id)
        name = Path(tree.run.repo or "?").name
        rows.append({"case": name, **run_stats(tree)})
    print("| case | protocol | fixed | attempts | turns | format errors | untagged | loops |"
          " edits applied | first attempt |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        f = r["first_attempt"]
        print(f"| {r['case']} | {r['protocol']} | {'yes' if r['fixed'] else 'no'} | "
              f"{r['attempts']} | {r['turns']} | {r['format_errors']} | {r['untagged']} | {r['loops']} | "
              f"{r['edits_applied']} | {' '.join(f.get('actions', []))} ({f.get('end')}) |")
    for proto in sorted({r["protocol"] for r in rows}):
        rs = [r for r in rows if r["protocol"] == proto]
        n_turns = sum(r["turns"] for r in rs)
        print(f"\n{proto}: {len(rs)} runs, fixed {sum(r['fixed'] for r in rs)}, "
              f"{n_turns} turns, format errors {sum(r['format_errors'] for r in rs)} "
              f"({sum(r['format_errors'] for r in rs) / max(1, n_turns):.2f} per turn), "
              f"untagged {sum(r['untagged'] for r in rs)}, loops {sum(r['loops'] for r in rs)}, "
              f"edits applied "
              f"{sum(r['edits_applied'] for r in rs)}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

"""Where local-move rewinds cut, and what became of them: in the reply's opening or in its body.

    .venv/bin/python benchmarks/move_kinds.py OUT1 [OUT2 ...] [--json FILE]

Reads the trace stores of `decision-retry bench` output directories (read only). For every MH
step of a run with local moves, the cut is classed by `samplers.local.kernel_at` with the
opening rule `DEF_HEADER` on the current attempt's tokens: "opening" (imports and the def line,
before the first def/class header closes) or "body". Runs with `span.opening` set (`+defline`)
made a whole-suffix move at the opening cuts; plain local runs made a local one there. Per
variant and class: steps, accepted and mean decode tokens (a proposal that passes ends the run
before its MH step, so it is not counted here).
"""

from __future__ import annotations

import argparse
import collections
import json
import sqlite3
from pathlib import Path

from decision_retry.choices import DEF_HEADER
from decision_retry.samplers.local import SpanRule, kernel_at
from decision_retry.tokens import Token

OPENING = SpanRule(opening=DEF_HEADER)
STEPS = """
SELECT r.config, m.cut_turn, m.cut_position, m.accepted, m.decode_tokens, m.current_branch_id
FROM mh_steps m JOIN runs r ON r.id = m.run_id
"""


def variant(config: dict) -> str | None:
    retry = config.get("retry", {})
    if retry.get("move") != "local":
        return None
    return "local+defline" if retry.get("span", {}).get("opening") else "local"


def tally(db: Path) -> dict:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    turns = {}
    for branch, index, tokens in con.execute('SELECT branch_id, "index", tokens FROM turns'):
        turns[(branch, index)] = tokens
    out: dict = collections.defaultdict(lambda: collections.Counter())
    for config, turn, pos, accepted, decoded, current in con.execute(STEPS):
        name = variant(json.loads(config))
        raw = turns.get((current, turn))
        if name is None or raw is None:
            continue
        tokens = [Token(**{k: t[k] for k in ("id", "text", "logp", "logq", "entropy")})
                  for t in json.loads(raw)]
        where = "opening" if kernel_at(tokens, pos, OPENING) == "suffix" else "body"
        c = out[(name, where)]
        c["steps"] += 1
        c["accepted"] += int(accepted)
        c["decode_tokens"] += decoded
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("outs", nargs="+", type=Path)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    total: dict = collections.defaultdict(collections.Counter)
    for out in args.outs:
        for key, c in tally(out / "traces" / "traces.db").items():
            total[key].update(c)
    print("| variant | cut in | steps | accepted | decode tokens / step |")
    print("|---|---|---|---|---|")
    rows = []
    for (name, where), c in sorted(total.items()):
        per = c["decode_tokens"] / c["steps"] if c["steps"] else 0.0
        print(f"| {name} | {where} | {c['steps']} | {c['accepted']} | {per:.1f} |")
        rows.append({"variant": name, "cut_in": where, **c})
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

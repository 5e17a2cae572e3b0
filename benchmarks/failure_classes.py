"""Why each unfixed cell of a bench run failed, read from its traces (issue 30's failure analysis).

    .venv/bin/python benchmarks/failure_classes.py OUT [--all] [--json FILE]

OUT: a `decision-retry bench` output directory (`cells.jsonl`, `traces/traces.db`, the suite's
`suites/*/index.json`, which names the functions the developer changed: `functions`, else
`bug_function`); opened read only. One row per deciding cell (the case's first attempt did not
fix it; `--all`: every cell), then the count of each class per strategy.

Each attempt (branch) of a cell's run is read as one of:
  dev       its patch changed a function the developer changed; the tests still fail
  copy      its patch rewrote a function the developer changed without changing it (the reply's
            text of it is the text shown) and no other changed function
  elsewhere its patch replaced only other functions
  unparsed  not applied: the reply does not parse (cut by the token cap: `truncated`)
  stoprule  not applied: the reply ended at a `)` or an indented ``` fence (the stop rule before
            8ff1568 cut it there)
  unshown   not applied: the reply defines none of the shown functions (`asked` when one of
            the functions it defined is a function the developer changed)
  env       a test run timed out or hit a collection / import error

and the cell by the first rule that holds:
  environment        an attempt's test run timed out or could not collect or import
  not shown          no function the developer changed was among the suspects shown
  part not shown     some were shown, not all, and no attempt was cut by the stop rule (the
                     fix needs code the prompt did not show: context missing)
  stop rule          most attempts were cut by the stop rule (a product bug, fixed)
  right place, wrong edit   an attempt changed a function the developer changed
  right place, unchanged    attempts rewrote a changed function, each as it was shown
  shown, not chosen  a changed function was shown; the replies that applied went elsewhere
  out of budget      no reply applied; most were cut by the token cap
  does not parse     no reply applied; the rest
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sqlite3
from pathlib import Path

CLASSES = ("environment", "not shown", "stop rule", "part not shown", "right place, wrong edit",
           "right place, unchanged", "shown, not chosen", "out of budget", "does not parse")
_ENV = re.compile(r"ModuleNotFoundError|ImportError|error during collection|errors? during collection")


def _name(qualname: str) -> str:
    return qualname.replace(".<locals>", "")


def developer_functions(out: Path) -> dict[str, set[tuple[str, str]]]:
    """case -> {(file, qualname)} the developer changed, from every suite index under OUT."""
    found: dict[str, set[tuple[str, str]]] = {}
    for index in sorted(out.glob("suites/*/index.json")):
        data = json.loads(index.read_text())
        cases = data.get("cases", data) if isinstance(data, dict) else data[1]
        for name, meta in cases.items():
            funcs = [tuple(f.split(":", 1)) for f in meta.get("functions", [])] or \
                [(meta.get("bug_file", ""), meta.get("bug_function", ""))]
            found[name] = {(f, _name(q)) for f, q in funcs}
    return found


def _stop_rule_cut(text: str) -> bool:
    """A reply that ended at a column-0 `)` / `]` / `}` or inside an indented ``` line."""
    last = text.rstrip("\n").rsplit("\n", 1)[-1]
    return last[:1] in (")", "]", "}") or (last.strip().startswith("```") and last[:1] in " \t")


def _copied(text: str, name: str, prompt: str) -> bool:
    """Whether the reply's function `name` is, line for line, text the prompt showed."""
    lines = text.split("\n")
    start = next((i for i, ln in enumerate(lines) if re.match(rf"(async\s+)?def\s+{name}\b", ln)),
                 None)
    if start is None:
        return False
    body = [lines[start]]
    for ln in lines[start + 1:]:
        if ln and not ln[0].isspace():
            break
        body.append(ln)
    block = "\n".join(body).rstrip()
    return bool(block) and block in prompt


def attempt_kind(text: str, finish: str | None, call: dict | None, tests: list[tuple],
                 wanted: set[tuple[str, str]], prompt: str = "") -> str:
    """One attempt's kind (see the module docstring)."""
    for exit_code, errors, tail in tests:
        if exit_code == -1 or (errors and _ENV.search(tail or "")):
            return "env"
    if call is None:
        return "unparsed"
    obs, args = call["observation"], call["arguments"]
    if obs.startswith("not applied"):
        if "reached the token cap" in obs:  # not applied since ffe7b53: cut at the cap
            return "truncated"
        if "does not parse" in obs:
            if finish == "length":
                return "truncated"
            return "stoprule" if _stop_rule_cut(text) else "unparsed"
        if "defines none of the functions shown" in obs:
            names = {q.rsplit(".", 1)[-1] for _, q in wanted}
            return "asked" if names & set(args.get("ignored", [])) else "unshown"
        return "unparsed"
    replaced = args.get("functions") or [{"file": args.get("file"), "function": args.get("function")}]
    hits = [r for r in replaced if (r["file"], _name(r["function"] or "")) in wanted]
    if not hits:
        return "elsewhere"
    names = [_name(r["function"]).rsplit(".", 1)[-1] for r in hits]
    return "copy" if all(_copied(text, n, prompt) for n in names) else "dev"


def read_cell(con: sqlite3.Connection, run_id: str, wanted: set[tuple[str, str]]) -> dict:
    """The run's attempts, their kinds, and whether a changed function was shown."""
    kinds, shown = [], None
    branches = con.execute('SELECT id FROM branches WHERE run_id = ? ORDER BY "index"', (run_id,))
    for (bid,) in branches.fetchall():
        turn = con.execute('SELECT id, params, text, prompt FROM turns WHERE branch_id = ? '
                           'ORDER BY "index" DESC LIMIT 1', (bid,)).fetchone()
        if turn is None:
            continue
        params = json.loads(turn[1])
        row = con.execute("SELECT arguments, observation FROM tool_calls WHERE turn_id = ? "
                          "AND action = 'apply_patch'", (turn[0],)).fetchone()
        call = {"arguments": json.loads(row[0]), "observation": row[1]} if row else None
        if shown is None and call is not None:
            shown = [(s["file"], _name(s["function"])) for s in call["arguments"].get("shown", [])]
        tests = con.execute('SELECT exit_code, errors, output_tail FROM test_runs '
                            'WHERE branch_id = ? ORDER BY "index"', (bid,)).fetchall()
        kinds.append(attempt_kind(turn[2], params.get("finish_reason"), call, tests, wanted,
                                  turn[3]))
    return {"kinds": kinds, "shown": shown or []}


def classify(kinds: list[str], shown: str) -> str:
    """The cell's class; `shown`: "all", "some" or "none" of the changed functions shown."""
    c = collections.Counter(kinds)
    if c["env"]:
        return "environment"
    if shown == "none":
        return "not shown"
    if c["stoprule"] * 2 > len(kinds):
        return "stop rule"
    if shown == "some" and not c["stoprule"]:
        return "part not shown"
    if c["dev"]:
        return "right place, wrong edit"
    if c["copy"]:
        return "right place, unchanged"
    if c["elsewhere"] or c["unshown"] or c["asked"]:
        return "shown, not chosen"
    if c["truncated"] * 2 >= len(kinds):
        return "out of budget"
    return "does not parse"


def analyse(out: Path, *, every: bool = False) -> list[dict]:
    wanted_by_case = developer_functions(out)
    cells = [json.loads(line) for line in (out / "cells.jsonl").read_text().splitlines() if line]
    first_fixed = {(c["repo"], c["seed"]) for c in cells if c["fixed"] and c["attempts"] == 1}
    con = sqlite3.connect(f"file:{out / 'traces' / 'traces.db'}?mode=ro", uri=True)
    rows = []
    try:
        for c in cells:
            if (c["repo"], c["seed"]) in first_fixed and not every:
                continue  # not deciding: the first attempt, shared by every rule, fixed it
            wanted = wanted_by_case.get(c["repo"], set())
            cell = read_cell(con, c["run_id"], wanted)
            hit = len(wanted & set(cell["shown"]))
            shown = "none" if not hit else "all" if hit == len(wanted) else "some"
            kinds = collections.Counter(cell["kinds"])
            rows.append({"case": c["repo"], "strategy": c["strategy"], "seed": c["seed"],
                         "fixed": c["fixed"], "changed": sorted(f"{f}:{q}" for f, q in wanted),
                         "shown": [f"{f}:{q}" for f, q in cell["shown"]], "changed_shown": shown,
                         "attempts": len(cell["kinds"]), "kinds": dict(kinds),
                         "class": "fixed" if c["fixed"] else classify(cell["kinds"], shown)})
    finally:
        con.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path, help="a bench output directory")
    ap.add_argument("--all", action="store_true", help="every cell, fixed ones included")
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args(argv)
    rows = analyse(args.out, every=args.all)
    print("| case | strategy | seed | changed (shown?) | attempts: kinds | class |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        changed = ", ".join(q.split(":", 1)[1] for q in r["changed"])
        kinds = " ".join(f"{k} {n}" for k, n in sorted(r["kinds"].items()))
        print(f"| {r['case']} | {r['strategy']} | {r['seed']} | {changed} "
              f"(shown: {r['changed_shown']}) | {r['attempts']}: {kinds} "
              f"| {r['class']} |")
    by = collections.defaultdict(collections.Counter)
    for r in rows:
        by[r["strategy"]][r["class"]] += 1
    print()
    print("| class | " + " | ".join(by) + " |")
    print("|---|" + "---|" * len(by))
    for k in (*CLASSES, "fixed"):
        if any(by[s][k] for s in by):
            print(f"| {k} | " + " | ".join(str(by[s][k]) for s in by) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

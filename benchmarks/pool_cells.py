"""Pool the cells of several `decision-retry bench` output directories into one report.

    .venv/bin/python benchmarks/pool_cells.py OUT1 OUT2 ... [--strategies a,b,c] [--json FILE]
        [--cases] [--deciding] [--other DIR:LABEL ...] [--baselines restart,from-end]

Several runs of one suite at the same shared settings (model, budget, alpha, temperature; checked)
but different seeds or case subsets, e.g. a first pass over a suite and a second pass, at more
seeds, over the cases whose first attempt failed. Prints the strategy table, the first-attempt
count and the paired comparisons (exact sign test) against `restart` and `from-end` over every
(repo, seed) pair that each strategy and the baseline both ran, and how many pairs that is.
`--cases` adds one line per deciding pair (its first attempt failed): each strategy's outcome,
attempts and decode tokens, the pairs where the strategies disagree first. `--deciding` adds the
strategy table over the deciding pairs alone (their cost per cell is not diluted by the shared
first attempts that passed).

`--within 15,20,25,30` adds, per baseline, the pairs fixed within each hard CPU budget (a cell
counts if its passing test run ended by B CPU seconds; one run at the largest budget answers
the smaller ones exactly, since a run's limit changes nothing before it is reached).

`--other DIR:LABEL` adds the cells of a run at *other* settings under renamed strategies
(`restart` -> `restart@LABEL`), e.g. restart at a larger token budget on the same (repo, seed)
pairs, for a comparison at equal wall time; name it in `--baselines` to pair against it. A larger
budget leaves the first attempt as it was (same seed, same temperature), so the deciding pairs
stay the same; at another temperature they would not, and such a pooling means little.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from decision_retry.bench.harness import CONFIG_FILE, load_cells
from decision_retry.bench.results import (
    first_attempts,
    first_solved,
    paired,
    strategy_table,
    summarize,
    within_seconds,
)


def pooled(outs: list[Path]) -> tuple[list, dict]:
    """Every stored cell of every directory (a (repo, strategy, seed) key once), and the shared
    settings, which must agree."""
    cells, shared = {}, None
    for out in outs:
        mine = json.loads((out / CONFIG_FILE).read_text())["shared"]
        if shared is not None and mine != shared:
            raise SystemExit(f"{out}: other shared settings than {outs[0]}: {mine} != {shared}")
        shared = mine
        for key, cell in load_cells(out).items():
            cells.setdefault(key, cell)
    return list(cells.values()), shared or {}


def deciding_cases(cells: list, names: list[str]) -> list[str]:
    """One line per (repo, seed) whose first attempt failed and that every strategy ran:
    `repo/seed  a: fixed 7 att 212 tok | b: -  2 att 300 tok`, disagreements first."""
    by: dict[tuple[str, int], dict] = {}
    for c in cells:
        if c.error is None:
            by.setdefault((c.repo, c.seed), {})[c.strategy] = c
    first, lines = first_solved(cells), []
    for (repo, seed), got in sorted(by.items()):
        if set(got) < set(names) or (repo, seed) in first:
            continue
        parts = [f"{n}: {'fixed' if got[n].fixed else '-':5} {got[n].attempts:2} att "
                 f"{got[n].decode_tokens:3} tok" for n in names]
        agree = len({got[n].fixed for n in names}) == 1
        lines.append((agree, f"{repo}/{seed}  " + " | ".join(parts)))
    return [f"deciding pairs: {len(lines)} (disagreeing first)"] + [t for _, t in sorted(lines)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("outs", nargs="+", type=Path)
    ap.add_argument("--strategies", default=None, help="comma-separated (default: all found)")
    ap.add_argument("--json", type=Path, default=None, help="write the summary rows here")
    ap.add_argument("--cases", action="store_true", help="list the deciding pairs one by one")
    ap.add_argument("--deciding", action="store_true",
                    help="also the strategy table over the pairs whose first attempt failed")
    ap.add_argument("--other", action="append", default=[], metavar="DIR:LABEL",
                    help="cells of a run at other settings, strategies renamed NAME@LABEL")
    ap.add_argument("--baselines", default="restart,from-end",
                    help="comma-separated strategies to pair every other one against")
    ap.add_argument("--within", default=None, metavar="S1,S2,...",
                    help="also pair them on the cells fixed within each of these CPU seconds")
    args = ap.parse_args(argv)
    cells, shared = pooled(args.outs)
    names = args.strategies.split(",") if args.strategies else list(
        dict.fromkeys(c.strategy for c in cells))
    cells = [c for c in cells if c.strategy in names]
    for spec in args.other:
        out, _, label = spec.rpartition(":")
        more, theirs = pooled([Path(out)])
        print(f"{out} as @{label}: {theirs}")
        more = [c.model_copy(update={"strategy": f"{c.strategy}@{label}"}) for c in more]
        names += [n for n in dict.fromkeys(c.strategy for c in more) if n not in names]
        cells += more
    rows = summarize(cells, names)
    print(f"settings: {shared}")
    print(f"pooled from: {', '.join(map(str, args.outs))}\n")
    print(strategy_table(rows))
    print(f"\n{first_attempts(cells)}\n")
    if args.deciding:
        first = first_solved(cells)
        print("On the deciding pairs alone:\n")
        print(strategy_table(summarize([c for c in cells if (c.repo, c.seed) not in first], names)))
        print()
    ran = {(c.repo, c.seed, c.strategy) for c in cells}
    for base in args.baselines.split(","):
        if base in names:  # against the strategies that ran some (repo, seed) the baseline ran
            mates = [n for n in names if any((r, sd, base) in ran for r, sd, st in ran if st == n)]
            print("\n".join(paired(cells, mates, base)))
            if args.within:
                budgets = [float(b) for b in args.within.split(",")]
                print("\nFixed within B CPU seconds (hard):\n")
                print("\n".join(within_seconds(cells, mates, base, budgets)) + "\n")
    if args.cases:
        print("\n" + "\n".join(deciding_cases(cells, names)))
    if args.json:
        args.json.write_text(json.dumps({"settings": shared, "outs": list(map(str, args.outs)),
                                         "summary": [r.model_dump() for r in rows]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

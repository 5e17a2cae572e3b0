"""Does the coverage spectrum point at the bug's *line* inside the buggy function?

For each `real-repos` case (a planted single-token bug, its line known): the plain test run and
the coverage spectrum exactly as `fix` runs them (localise/spectrum.py), then Ochiai per line of
the buggy function. Reported per case: the function's lines that any selected test ran, the lines
at the function's best score, the bug line's score and its rank among the function's lines (ties
count half: a function whose lines all tie ranks the bug at (n + 1) / 2), and whether the bug line
is among the best. A cut-weight scale by line can only help where the best lines are few and hold
the bug.

    .venv/bin/python benchmarks/line_spectrum.py --suite-dir DIR [--limit N] [--out FILE.json]

DIR is a bench `--out` directory's `suites` (real-repos is built there on first use).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from decision_retry.bench import real_repos
from decision_retry.localise import spectrum
from decision_retry.localise.code import functions
from decision_retry.repo import pyenv
from decision_retry.repo.testrun import run_tests


def line_scores(root: Path, meta: dict) -> dict[int, float]:
    """Ochiai of every line of the buggy function that a selected test ran."""
    python = pyenv.find(root, test_cmd=meta["test_cmd"])
    result = run_tests(meta["test_cmd"], root, 600, python=python)
    captured: list[dict] = []
    score = spectrum.score
    spectrum.score = lambda r, data: (captured.append(data), score(r, data))[1]
    try:
        spectrum.run_spectrum(root, result, timeout=600, test_cmd=meta["test_cmd"], python=python)
    finally:
        spectrum.score = score
    if not captured:
        return {}
    data = captured[0]
    failed = {i for i, t in enumerate(data["tests"]) if data["outcomes"].get(t) == "failed"}
    passed = {i for i, t in enumerate(data["tests"]) if data["outcomes"].get(t) == "passed"}
    fn = next(f for f in functions(root, meta["bug_file"]) if f.start == meta["bug_start"])
    out = {}
    for line, ids in (data["files"].get(meta["bug_file"]) or {}).items():
        if fn.start < int(line) <= fn.end:
            ef = sum(1 for i in ids if i in failed)
            ep = sum(1 for i in ids if i in passed)
            out[int(line)] = spectrum.ochiai(ef, ep, len(failed))
    return out


def summarise(name: str, meta: dict, scores: dict[int, float]) -> dict:
    bug = scores.get(meta["bug_line"], 0.0)
    values = list(scores.values()) or [0.0]
    best = max(values)
    above = sum(1 for v in values if v > bug)
    ties = sum(1 for v in values if v == bug) - (meta["bug_line"] in scores)
    return {"case": name, "lines_run": len(scores), "best": round(best, 4),
            "at_best": sum(1 for v in values if v == best), "bug_score": round(bug, 4),
            "bug_rank": above + 1 + ties / 2, "bug_at_best": bug == best and bug > 0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite-dir", type=Path, required=True)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    root = args.suite_dir / "real-repos"
    cases = real_repos.real_repos(root, limit=args.limit)
    index = real_repos.load_index(root)
    rows = []
    for case in cases:
        with tempfile.TemporaryDirectory(prefix="decision-retry-lines-") as tmp:
            repo = Path(tmp) / case.name
            shutil.copytree(case.path, repo)
            row = summarise(case.name, index[case.name], line_scores(repo, index[case.name]))
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    hit = [r for r in rows if r["bug_at_best"]]
    print(f"{len(rows)} cases: bug line at the function's best score in {len(hit)}; "
          f"lines run per function median {statistics.median(r['lines_run'] for r in rows)}, "
          f"lines at best median {statistics.median(r['at_best'] for r in rows)}, "
          f"among the hits {statistics.median(r['at_best'] for r in hit) if hit else '-'}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does the coverage spectrum point at the bug's *line* inside the buggy function?

For each `real-repos` case (a planted single-token bug, its line known): the plain test run and
the coverage spectrum exactly as `fix` runs them (localise/spectrum.py `run_spectrum`), then the
buggy function's `FunctionScore`: the lines at its best Ochiai score (`best_lines`, what
`-o line_weight` weights) and how many lines the failing tests ran (`failing_lines`). Reported per
case: both counts and whether the bug line is among the best. A cut-weight scale by line can only
help where the best lines are few and hold the bug.

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
from decision_retry.repo import pyenv
from decision_retry.repo.testrun import run_tests


def bug_function(root: Path, meta: dict) -> dict:
    """The buggy function's spectrum: lines at its best score, lines the failing tests ran."""
    python = pyenv.find(root, test_cmd=meta["test_cmd"])
    result = run_tests(meta["test_cmd"], root, 600, python=python)
    sp = spectrum.run_spectrum(root, result, timeout=600, test_cmd=meta["test_cmd"],
                               python=python)
    fs = next((f for f in sp.scores if f.suspect.file == meta["bug_file"]
               and f.suspect.start == meta["bug_start"]), None)
    if fs is None:  # the failing tests did not run it (as far as coverage saw)
        return {"failing_lines": 0, "at_best": 0, "bug_at_best": False}
    return {"failing_lines": fs.failing_lines, "at_best": fs.lines,
            "bug_at_best": meta["bug_line"] in fs.best_lines}


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
            row = {"case": case.name, **bug_function(repo, index[case.name])}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    hit = sum(r["bug_at_best"] for r in rows)
    apart = [r["case"] for r in rows if 0 < r["at_best"] < r["failing_lines"]]
    print(f"{len(rows)} cases: bug line at the function's best score in {hit}; best lines fewer "
          f"than the lines the failing tests ran in {len(apart)} ({', '.join(apart)}); median "
          f"lines run {statistics.median(r['failing_lines'] for r in rows)}, at the best "
          f"{statistics.median(r['at_best'] for r in rows)}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How often localisation puts the buggy function where the model sees it: top-1/3/5 and shown.

    python -m decision_retry.bench.localise_eval --out DIR [--suite real-bugs] [--limit N]
        [--no-spectrum]

For each case of the real-repos suite, or real-bugs (built under DIR/suites/SUITE when missing):
run the case's own test command on a copy, in the case's own environment where it has one,
localise (localise/locate.py) exactly as `fix` does, and find the rank of the function the
mutation is in (real-bugs: the best rank of the functions the developer changed). "shown" is
whether the patch protocol's prompt holds it (prompts/patch.toml: `suspects` and `suspect_chars`).
Prints a table, writes DIR/localise.json (real-bugs: DIR/real-bugs-localise.json).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from decision_retry.agent import definitions, patch
from decision_retry.bench import real_bugs, real_repos
from decision_retry.bench.cases import Case
from decision_retry.localise.locate import Suspect, localise
from decision_retry.repo import pyenv
from decision_retry.repo.testrun import run_tests


def _plain(qualname: str) -> str:
    """A qualified name as real-bugs' recipes write it: `outer.inner`, not `outer.<locals>.inner`
    (real-repos' index writes the latter)."""
    return qualname.replace(".<locals>.", ".")


def _holds(shown: Suspect, want: tuple[str, str]) -> bool:
    """Whether the prompt shows function `want` (file, name): it is `shown` or nested in it."""
    name = _plain(shown.qualname)
    return shown.file == want[0] and (want[1] == name or want[1].startswith(name + "."))


def evaluate_case(case: Case, meta: dict, *, spectrum: bool = True) -> dict:
    """One case: the bug's rank among the candidates (None when not ranked at all)."""
    defn = definitions.load("patch")
    with tempfile.TemporaryDirectory(prefix="decision-retry-loc-") as tmp:
        root = Path(tmp) / case.name
        shutil.copytree(case.path, root)
        start = time.monotonic()
        python = pyenv.find(root, test_cmd=meta["test_cmd"])  # real-bugs: the case's .venv
        result = run_tests(meta["test_cmd"], root, 600, python=python)
        tested = time.monotonic()
        loc = localise(root, result, test_cmd=meta["test_cmd"], timeout=600, spectrum=spectrum,
                       python=python)
        done = time.monotonic()
    keys = [(c.suspect.file, _plain(c.suspect.qualname)) for c in loc.candidates]
    wants = [(f, _plain(q)) for f, q in (w.split(":", 1) for w in meta.get("functions", []))] \
        or [(meta["bug_file"], _plain(meta["bug_function"]))]
    ranks = [keys.index(w) + 1 for w in wants if w in keys]
    want, rank = (wants[0], None) if not ranks else (keys[min(ranks) - 1], min(ranks))
    shown = patch.shown([c.suspect for c in loc.candidates], defn.limits.get("suspects", 1),
                        defn.limits.get("suspect_chars", 4000))
    seen = [w for w in wants if any(_holds(s, w) for s in shown)]
    return {"case": case.name, "bug": f"{want[0]}::{want[1]}", "rank": rank,
            "ranks": [keys.index(w) + 1 if w in keys else None for w in wants],
            "shown": bool(seen), "n_shown": len(shown), "all_shown": len(seen) == len(wants),
            "top": [f"{f}::{q}" for f, q in keys[:5]], "failing": list(result.failing_tests[:3]),
            "ranking": [c.summary() for c in loc.candidates[:10]],
            "test_s": round(tested - start, 2), "localise_s": round(done - tested, 2),
            "spectrum_note": loc.spectrum.note if loc.spectrum else "off"}


def table(rows: list[dict]) -> str:
    """Markdown: accuracy at 1/3/5, shown, and per-case ranks."""
    n = len(rows)

    def at(k: int) -> str:
        hit = sum(1 for r in rows if r["rank"] is not None and r["rank"] <= k)
        return f"{hit}/{n} ({100 * hit / n:.0f}%)" if n else "0/0"

    shown = sum(1 for r in rows if r["shown"])
    many = [r for r in rows if len(r["ranks"]) > 1]
    whole = sum(1 for r in many if r["all_shown"])
    out = [("| bugs | top-1 | top-3 | top-5 | among the suspects shown | "
            "fixes of several functions: all shown |"), "|---|---|---|---|---|---|",
           (f"| {n} | {at(1)} | {at(3)} | {at(5)} | {shown}/{n} ({100 * shown / max(1, n):.0f}%) "
            f"| {whole}/{len(many)} |"),
           "", "| case | bug | rank | ranks of every changed function | shown | localise s |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        ranks = ", ".join(str(k or "-") for k in r["ranks"])
        out.append(f"| {r['case']} | `{r['bug']}` | {r['rank'] or '-'} | {ranks} | "
                   f"{'yes' if r['shown'] else 'no'} ({r['n_shown']}) | {r['localise_s']} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m decision_retry.bench.localise_eval",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="where the suite and results go")
    ap.add_argument("--suite", choices=("real-repos", "real-bugs"), default="real-repos")
    ap.add_argument("--limit", type=int, default=None, help="the first N cases only")
    ap.add_argument("--no-spectrum", action="store_true", help="traceback and called names only")
    args = ap.parse_args(argv)
    root = args.out / "suites" / args.suite
    suite = real_bugs.real_bugs if args.suite == "real-bugs" else real_repos.real_repos
    cases = suite(root, limit=args.limit, on_build=lambda s: print(s, file=sys.stderr))
    index = real_repos.load_index(root)
    rows = []
    for case in cases:
        row = evaluate_case(case, index[case.name], spectrum=not args.no_spectrum)
        rows.append(row)
        print(f"{case.name}: rank {row['rank']} ({row['localise_s']}s)", file=sys.stderr)
    name = "localise-nospectrum.json" if args.no_spectrum else "localise.json"
    name = name if args.suite == "real-repos" else f"{args.suite}-{name}"
    (args.out / name).write_text(json.dumps(rows, indent=1) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

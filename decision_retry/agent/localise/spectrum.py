"""Spectrum-based fault localisation: which lines the failing tests run that passing tests do not.

1) choose the tests: the failing ones and a sample of passing ones, nearest first (same file, same
   folder, then the rest) within a time budget measured on the plain run;
2) run them under coverage with one context per test (covrun.py), in the test sandbox;
3) score every executed line by Ochiai, ef / sqrt(F * (ef + ep)) (F failing tests, ef/ep failing/
   passing tests that ran the line), and every function by its best line.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from decision_retry.agent.localise.code import Suspect, functions, innermost, is_test_file
from decision_retry.agent.localise.command import VALUED, split_pytest
from decision_retry.agent.testrun import TestResult, run_tests

MAX_FAILING = 10
MAX_PASSING = 300


@dataclass(frozen=True)
class FunctionScore:
    """A function's spectrum: its best line's Ochiai score and that line's ef / ep counts."""

    suspect: Suspect
    ochiai: float
    ef: int
    ep: int
    line: int  # the best-scoring line
    lines: int = 1  # lines at that best score (more: more places for the bug; breaks ties)


@dataclass(frozen=True)
class Spectrum:
    """What one coverage run measured."""

    failing: tuple[str, ...]
    passing: tuple[str, ...]
    scores: tuple[FunctionScore, ...]  # best first
    note: str = ""  # why the spectrum is empty, when it is


def ochiai(ef: int, ep: int, total_failed: int) -> float:
    """Ochiai similarity of a line's coverage with the failing tests."""
    if ef == 0 or total_failed == 0:
        return 0.0
    return ef / math.sqrt(total_failed * (ef + ep))


_DROPPED = {"-x", "--exitfirst", "-k", "-m", "-n", "--maxfail", "--lf", "--last-failed", "--ff",
            "--failed-first", "--sw", "--stepwise", "-q", "-qq", "-v", "-vv", "--quiet",
            "--verbose", "-r", "--junitxml", "--junit-xml", "--deselect"}


def pytest_options(test_cmd: str | None) -> list[str]:
    """The options of a pytest command that shape how tests run (`-o pythonpath=src`, `-p`,
    `-W`...), without its selection (paths, -k, -m, -x) or reporting; [] for other commands."""
    parts = split_pytest(test_cmd or "")
    if parts is None:
        return []
    options, out, i = parts[1], [], 0
    while i < len(options):
        name = options[i].split("=", 1)[0]
        takes = i + 1 < len(options) and not options[i + 1].startswith("-") and name in VALUED \
            and "=" not in options[i]
        if name not in _DROPPED:
            out += options[i : i + 1 + takes]
        i += 1 + takes
    return out


def _test_file(nodeid: str) -> str:
    return nodeid.split("::")[0]


def select_tests(result: TestResult, budget_s: float) -> tuple[list[str], list[str]]:
    """(failing node ids, passing node ids): the passing ones nearest the failing ones first,
    as many as fit in `budget_s` seconds of their plain run time."""
    failing = [f.nodeid for f in result.failures if "::" in f.nodeid][:MAX_FAILING]
    if not failing:
        failing = [t for t in result.failing_tests if "::" in t][:MAX_FAILING]
    files = {_test_file(t) for t in failing}
    dirs = {str(PurePosixPath(f).parent) for f in files}

    def distance(item: tuple[str, float]) -> tuple[int, float]:
        f = _test_file(item[0])
        return (0 if f in files else 1 if str(PurePosixPath(f).parent) in dirs else 2, item[1])

    passing, spent = [], 0.0
    for nodeid, seconds in sorted(result.passed_tests, key=distance):
        if len(passing) >= MAX_PASSING:
            break
        if spent + seconds > budget_s:
            continue  # a slow one: a faster one further on may still fit
        passing.append(nodeid)
        spent += seconds
    return failing, passing


def run_spectrum(root: Path, result: TestResult, *, timeout: float, budget_s: float = 20.0,
                 test_cmd: str | None = None, env: dict | None = None, sandbox=None) -> Spectrum:
    """Measure and score; an empty spectrum (with a note) when it cannot be measured."""
    failing, passing = select_tests(result, budget_s)
    if not failing:
        return Spectrum((), (), (), "no failing test node id to run")
    tests = failing + passing
    files = sorted({_test_file(t) for t in tests if (root / _test_file(t)).is_file()})
    data, why = coverage_run(root, tests, [*pytest_options(test_cmd), *files], timeout=timeout,
                             env=env, sandbox=sandbox)
    if data is None:
        return Spectrum(tuple(failing), tuple(passing), (), f"coverage run {why}")
    return score(root, data)


def coverage_run(root: Path, tests: list[str] | None, args: list[str], *, timeout: float,
                 env: dict | None = None, sandbox=None) -> tuple[dict | None, str]:
    """(covrun's data, "") for `tests` (None: every test pytest collects from `args`), or
    (None, why) when it timed out or crashed. Runs in `sandbox` (testrun.run_tests) when given."""
    with tempfile.TemporaryDirectory(prefix="decision-retry-spectrum-") as tmp:
        sel, out = Path(tmp) / "selection.json", Path(tmp) / "spectrum.json"
        sel.write_text(json.dumps({"root": str(root), "tests": tests, "args": args}))
        cmd = [sys.executable, "-m", "decision_retry.agent.localise.covrun", str(out), str(sel)]
        run = run_tests(cmd, root, timeout, env=env, sandbox=sandbox, writable=(Path(tmp),))
        if run.timed_out or not out.is_file():
            return None, "timed out" if run.timed_out else f"failed: {run.output_tail[-300:]}"
        return json.loads(out.read_text()), ""


def score(root: Path, data: dict) -> Spectrum:
    """Ochiai per line, best line per function; functions of test files are left out."""
    outcomes = data["outcomes"]
    tests = data["tests"]
    failed = {i for i, t in enumerate(tests) if outcomes.get(t) == "failed"}
    passed = {i for i, t in enumerate(tests) if outcomes.get(t) == "passed"}
    if not failed:
        return Spectrum((), tuple(tests[i] for i in sorted(passed)), (),
                        "no test failed under coverage")
    best: dict[str, FunctionScore] = {}
    for rel, lines in data["files"].items():
        if is_test_file(rel):
            continue
        defs = functions(root, rel)
        for line_s, ids in lines.items():
            line = int(line_s)
            fn = innermost(defs, line)
            if fn is None or line == fn.start:  # module level, or the `def` line itself
                continue
            ef = sum(1 for i in ids if i in failed)
            ep = sum(1 for i in ids if i in passed)
            s = ochiai(ef, ep, len(failed))
            cur = best.get(fn.key)
            if s <= 0:
                continue
            if cur is not None and s == cur.ochiai:
                best[fn.key] = FunctionScore(fn, s, cur.ef, cur.ep, cur.line, cur.lines + 1)
            elif cur is None or s > cur.ochiai:
                best[fn.key] = FunctionScore(fn, s, ef, ep, line)
    ranked = sorted(best.values(), key=lambda f: (-f.ochiai, -f.lines, f.suspect.key))
    return Spectrum(tuple(tests[i] for i in sorted(failed)),
                    tuple(tests[i] for i in sorted(passed)), tuple(ranked))

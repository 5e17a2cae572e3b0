"""Spectrum-based fault localisation: which lines the failing tests run that passing tests do not.

1) choose the tests: the failing ones and up to MAX_PASSING passing ones, nearest first (same file,
   same folder, then the rest; by node id within each), a fixed rule so two localisations of one
   repository run the same tests; the plain run's timings only enforce a safety budget, and when
   that leaves tests out the spectrum says so (`Spectrum.cut`);
   the coverage run itself starts no passing test after CAP_FACTOR x that budget of wall time
   (the failing tests always run; pytest's order is kept: the first test pays for a project's
   one-time set-up, and a failing test that ran first would score it), and says so too;
2) run them under coverage with one context per test (covrun.py), in the test sandbox; what
   pytest runs to report a failure (the reprs it renders) is in no test's context;
3) score every executed line by Ochiai, ef / sqrt(F * (ef + ep)) (F failing tests, ef/ep failing/
   passing tests that ran the line), and every function by its best line.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from decision_retry.localise.code import Suspect, functions, innermost, is_test_file
from decision_retry.localise.command import VALUED, split_pytest
from decision_retry.localise.covrun import borrowed_coverage
from decision_retry.repo.testrun import TestResult, run_tests

MAX_FAILING = 10
MAX_PASSING = 300
CAP_FACTOR = 3.0  # the coverage run's wall-time cap, in units of the selection's budget


@dataclass(frozen=True)
class FunctionScore:
    """A function's spectrum: its best line's Ochiai score and that line's ef / ep counts, the
    lines at that score and how many of its lines the failing tests ran."""

    suspect: Suspect
    ochiai: float
    ef: int
    ep: int
    best_lines: tuple[int, ...]  # the lines at the best score, in file order
    failing_lines: int = 1  # lines the failing tests ran (Ochiai > 0)

    @property
    def line(self) -> int:
        """The first best-scoring line."""
        return self.best_lines[0]

    @property
    def lines(self) -> int:
        """Lines at the best score (more: more places for the bug; breaks ties)."""
        return len(self.best_lines)


@dataclass(frozen=True)
class Spectrum:
    """What one coverage run measured."""

    failing: tuple[str, ...]
    passing: tuple[str, ...]
    scores: tuple[FunctionScore, ...]  # best first
    note: str = ""  # why the spectrum is empty, when it is
    cut: str = ""  # what the time budget left out of the selection, when it did


@dataclass(frozen=True)
class Selection:
    """The tests a coverage run measures, and what the time budget left out (if anything)."""

    failing: tuple[str, ...]
    passing: tuple[str, ...]
    cut: str = ""


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


def select_tests(result: TestResult, budget_s: float,
                 max_passing: int = MAX_PASSING) -> Selection:
    """The failing node ids and up to `max_passing` passing ones, nearest the failing ones first
    (same file, same folder, the rest; by node id within each). Only the budget depends on the
    plain run's timings: a passing test that would take the sample past `budget_s` seconds is
    left out (a faster one further on may still fit), and `cut` says how many were."""
    failing = [f.nodeid for f in result.failures if "::" in f.nodeid][:MAX_FAILING]
    if not failing:
        failing = [t for t in result.failing_tests if "::" in t][:MAX_FAILING]
    files = {_test_file(t) for t in failing}
    dirs = {str(PurePosixPath(f).parent) for f in files}

    def distance(nodeid: str) -> tuple[int, str]:
        f = _test_file(nodeid)
        return (0 if f in files else 1 if str(PurePosixPath(f).parent) in dirs else 2, nodeid)

    seconds = dict(result.passed_tests)
    nearest = sorted(seconds, key=distance)[:max_passing]  # 1) the fixed rule
    passing, spent = [], 0.0
    for nodeid in nearest:  # 2) the safety limit
        if spent + seconds[nodeid] > budget_s:
            continue
        passing.append(nodeid)
        spent += seconds[nodeid]
    left = len(nearest) - len(passing)
    cut = (f"time budget {budget_s:g}s: {left} of the {len(nearest)} nearest passing tests left out"
           if left else "")
    return Selection(tuple(failing), tuple(passing), cut)


def run_spectrum(root: Path, result: TestResult, *, timeout: float, budget_s: float = 20.0,
                 test_cmd: str | None = None, env: dict | None = None, sandbox=None,
                 python=None) -> Spectrum:
    """Measure and score; an empty spectrum (with a note) when it cannot be measured."""
    sel = select_tests(result, budget_s)
    if not sel.failing:
        return Spectrum((), (), (), "no failing test node id to run")
    tests = [*sel.failing, *sel.passing]
    files = sorted({_test_file(t) for t in tests if (root / _test_file(t)).is_file()})
    cap = min(CAP_FACTOR * budget_s, timeout / 2)  # stop early rather than be killed at timeout
    data, why = coverage_run(root, tests, [*pytest_options(test_cmd), *files], timeout=timeout,
                             env=env, sandbox=sandbox, python=python, first=sel.failing,
                             deadline_s=cap)
    if data is None:
        return Spectrum(sel.failing, sel.passing, (), f"coverage run {why}", sel.cut)
    # a test that passed in the plain run and fails under coverage (a timing limit the tracer
    # breaks) is no evidence either way: the plain run says which tests fail
    plain = set(sel.failing)
    data = {**data, "outcomes": {t: o for t, o in data["outcomes"].items()
                                 if o != "failed" or t in plain}}
    cut = sel.cut
    if data.get("unrun"):
        capped = (f"wall-time cap {cap:g}s: {data['unrun']} of the {len(sel.passing)} passing "
                  f"tests selected not run")
        cut = f"{cut}; {capped}" if cut else capped
    return replace(score(root, data), cut=cut)


def coverage_run(root: Path, tests: list[str] | None, args: list[str], *, timeout: float,
                 env: dict | None = None, sandbox=None, python=None, first: tuple[str, ...] = (),
                 deadline_s: float | None = None) -> tuple[dict | None, str]:
    """(covrun's data, "") for `tests` (None: every test pytest collects from `args`), or
    (None, why) when it timed out or crashed. Runs in `sandbox` (testrun.run_tests) when given.
    Past `deadline_s` seconds no test starts but the `first` ones (the data's `unrun` counts
    those left out).

    covrun.py runs as a copy in the run's own temporary directory: the sandbox hides /tmp and
    home, so an installed decision_retry living there (an editable install in a clone under /tmp)
    would not import in it; covrun needs nothing of ours, only coverage and pytest. `python`
    (pyenv.py) runs it, borrowing our `coverage` when the project's environment lacks it."""
    with tempfile.TemporaryDirectory(prefix="decision-retry-spectrum-") as tmp:
        sel, out = Path(tmp) / "selection.json", Path(tmp) / "spectrum.json"
        sel.write_text(json.dumps({"root": str(root), "tests": tests, "args": args,
                                   "first": list(first), "deadline_s": deadline_s}))
        script = Path(tmp) / "covrun.py"
        shutil.copyfile(Path(__file__).with_name("covrun.py"), script)
        cmd = [python.executable if python else sys.executable, str(script), str(out), str(sel)]
        if python and not python.has_coverage:
            python = replace(python, extra_path=(borrowed_coverage(Path(tmp) / "borrowed"),))
        run = run_tests(cmd, root, timeout, env=env, sandbox=sandbox, writable=(Path(tmp),),
                        python=python)
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
    # files and lines in order: coverage lists measured files as a set, and which of equally
    # scored lines gives a function its ef / ep must not depend on that order
    for rel in sorted(data["files"]):
        if is_test_file(rel):
            continue
        defs = functions(root, rel)
        for line, ids in sorted((int(k), v) for k, v in data["files"][rel].items()):
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
                best[fn.key] = replace(cur, best_lines=(*cur.best_lines, line),
                                       failing_lines=cur.failing_lines + 1)
            elif cur is None or s > cur.ochiai:
                best[fn.key] = FunctionScore(fn, s, ef, ep, (line,),
                                             1 + (cur.failing_lines if cur else 0))
            else:
                best[fn.key] = replace(cur, failing_lines=cur.failing_lines + 1)
    ranked = sorted(best.values(), key=lambda f: (-f.ochiai, -f.lines, f.suspect.key))
    return Spectrum(tuple(tests[i] for i in sorted(failed)),
                    tuple(tests[i] for i in sorted(passed)), tuple(ranked))

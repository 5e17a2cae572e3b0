"""Find the code under test: rank the functions a failing test may have found a bug in.

Evidence, strongest first: the coverage spectrum (Ochiai over the failing and a sample of passing
tests, localise/spectrum.py), the traceback's innermost non-test frame, the names the failing test
calls. `localise` returns the whole ranking; the protocols show the top few to the model, so the
function to edit is the model's choice (a tool-decision point), and the trace keeps the ranking.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from decision_retry.localise.code import (  # noqa: F401 - the public names of this module
    Suspect,
    functions,
    functions_in,
    innermost,
    is_test_file,
    source_files,
)
from decision_retry.localise.failing_test import TestSource, line_names, test_source
from decision_retry.localise.rank import Candidate, rank
from decision_retry.localise.spectrum import Spectrum, run_spectrum
from decision_retry.repo.testrun import TestResult


@dataclass(frozen=True)
class Localisation:
    """The ranked candidates, the failing test they were found from, how the spectrum went."""

    candidates: tuple[Candidate, ...]
    test: TestSource | None
    spectrum: Spectrum | None

    @property
    def suspect(self) -> Suspect | None:
        return self.candidates[0].suspect if self.candidates else None

    def summary(self, top: int = 10) -> dict:
        """The ranking as the trace keeps it."""
        sp = self.spectrum
        return {"failing_test": f"{self.test.file}:{self.test.line}" if self.test else None,
                "spectrum": {"failing": len(sp.failing), "passing": len(sp.passing),
                             "note": sp.note, **({"cut": sp.cut} if sp.cut else {})}
                if sp else None,
                "ranking": [c.summary() for c in self.candidates[:top]]}


def failing_test(root: Path, result: TestResult) -> TestSource | None:
    """The first failing test whose definition can be found (by node id and pytest's line)."""
    for f in result.failures:
        found = test_source(root, f.nodeid, f.line)
        if found:
            return found
    for nodeid in result.failing_tests:
        found = test_source(root, nodeid)
        if found:
            return found
    return None


def failing_line_names(root: Path, result: TestResult, test: TestSource | None) -> tuple[str, ...]:
    """What the failing statement of the failing test calls (its innermost frame in test code)."""
    for f in result.failures:
        frames = [(file, line) for file, line in f.frames if is_test_file(file)]
        if frames:
            return line_names(root, *frames[-1])
    return ()


def localise(root: Path, result: TestResult, *, test_cmd: str | None = None, timeout: float = 120.0,
             spectrum: bool = True, budget_s: float = 20.0, env: dict | None = None,
             sandbox=None, python=None) -> Localisation:
    """Rank the repository's functions by how likely each holds the bug the failing tests found.

    `spectrum` runs the failing tests and the nearest passing ones under coverage (one
    subprocess, `timeout` seconds at most; a fixed selection, `budget_s` seconds of their plain
    run time at most, spectrum.select_tests); without it only the traceback and the test's
    calls count. The options of a pytest `test_cmd` (`-o pythonpath=src`, `-p no:x`...) apply
    to the coverage run too; the project's own pytest configuration applies as it always does.
    `python`: the project's interpreter (pyenv.py) for the coverage run; None: ours.
    """
    root = Path(root)
    test = failing_test(root, result)
    sp = (run_spectrum(root, result, timeout=timeout, budget_s=budget_s, test_cmd=test_cmd, env=env,
                       sandbox=sandbox, python=python)
          if spectrum else None)
    traceback = "\n".join([*(f.text for f in result.failures), result.output_tail])
    every = [f for rel in source_files(root) if _inside(root, rel) for f in functions(root, rel)]
    ranked = rank(root, spectrum=sp, traceback=traceback, test=test, all_functions=every,
                  line_names=failing_line_names(root, result, test))
    return Localisation(tuple(c for c in ranked if _inside(root, c.suspect.file)), test, sp)


def _inside(root: Path, rel: str) -> bool:
    """Whether file `rel` is in the repository: a link leading outside it is not (a fix could
    not be written there, and its text is not the repository's to show)."""
    try:
        real, top = (root / rel).resolve(), root.resolve()
    except (OSError, RuntimeError):  # a loop of links
        return False
    return top in real.parents


def locate(root: Path, result: TestResult, **options) -> tuple[Suspect | None, str]:
    """The top suspect function and the failing test's source (may be empty)."""
    loc = localise(root, result, **options)
    return loc.suspect, loc.test.source if loc.test else ""

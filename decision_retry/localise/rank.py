"""Rank candidate functions by all the evidence: the coverage spectrum, the traceback, the names the
failing test calls. The ranking (with each candidate's evidence) is kept for the trace."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from decision_retry.localise.code import Suspect, functions, innermost, is_test_file
from decision_retry.localise.failing_test import TestSource
from decision_retry.localise.spectrum import Spectrum

# pytest's `path.py:12: in f` / `path.py:12: Error`, and Python's `File "path.py", line 12`
_FRAME = re.compile(r"^([\w./\\-]+\.py):(\d+)(?::|\s|$)|File \"([^\"]+\.py)\", line (\d+)",
                    re.MULTILINE)
TRACEBACK_BONUS = 0.3  # innermost non-test frame; outer frames get half
CALLED_BONUS = 0.1  # the failing test calls the function by name
LINE_BONUS = 0.1  # the failing line runs it through an operator (`<` is __lt__, `in` __contains__)


@dataclass(frozen=True)
class Candidate:
    """One ranked function and why: its score and the evidence behind it."""

    suspect: Suspect
    score: float
    evidence: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """What the trace keeps of it."""
        s = self.suspect
        return {"file": s.file, "function": s.qualname or s.name, "line": s.start,
                "score": round(self.score, 4), **self.evidence}


def _relative(root: Path, path: str) -> str | None:
    """`path` relative to `root`, or None when it lies outside (site-packages, the stdlib)."""
    p = Path(path.replace("\\", "/"))
    if not p.is_absolute():
        return p.as_posix().removeprefix("./") if ".." not in p.parts else None
    try:
        return p.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return None


def traceback_frames(root: Path, text: str) -> list[Suspect]:
    """Functions of non-test files named by traceback frames in `text`, innermost first."""
    out: list[Suspect] = []
    for m in reversed(list(_FRAME.finditer(text))):
        path, line = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        rel = _relative(root, path)
        if rel is None or is_test_file(rel) or not (root / rel).is_file():
            continue
        fn = innermost(functions(root, rel), int(line))
        if fn is not None and fn not in out:
            out.append(fn)
    return out


def rank(root: Path, *, spectrum: Spectrum | None, traceback: str, test: TestSource | None,
         all_functions: list[Suspect], line_names: tuple[str, ...] = ()) -> list[Candidate]:
    """Candidates, best first. Scores: Ochiai (0..1) + traceback, failing-line and called-name
    bonuses (`line_names`: what the failing statement of the test calls, tests.line_names)."""
    scores: dict[str, float] = {}
    evidence: dict[str, dict] = {}
    by_key: dict[str, Suspect] = {}

    def add(s: Suspect, amount: float, **ev) -> None:
        by_key.setdefault(s.key, s)
        scores[s.key] = scores.get(s.key, 0.0) + amount
        evidence.setdefault(s.key, {}).update(ev)

    lines: dict[str, int] = {}
    for fs in spectrum.scores if spectrum else ():
        add(fs.suspect, fs.ochiai, ochiai=round(fs.ochiai, 4), ef=fs.ef, ep=fs.ep, lines=fs.lines,
            best_lines=list(fs.best_lines), failing_lines=fs.failing_lines)
        lines[fs.suspect.key] = fs.lines
    for depth, s in enumerate(traceback_frames(root, traceback)):
        add(s, TRACEBACK_BONUS if depth == 0 else TRACEBACK_BONUS / 2, traceback=depth)
    covered = set(scores)
    # the failing line: a dunder it runs implicitly is evidence (nothing else names it); a name
    # it calls breaks ties below (the failing line's calls first), like the test's other calls
    for s in all_functions:
        implicit = s.name.startswith("__") and (s.name in line_names or s.qualname in line_names)
        if implicit and (not covered or s.key in covered):
            add(s, LINE_BONUS, failing_line=True)
    called = tuple(dict.fromkeys([*(n for n in line_names if not n.startswith("__") and "." not in n),
                                  *(test.called if test else ())]))
    with_spectrum = bool(spectrum and spectrum.scores)
    calls: dict[str, float] = {}
    by_name: dict[str, list[Suspect]] = {}
    for s in all_functions:
        by_name.setdefault(s.name, []).append(s)
    for order, name in enumerate(called):
        for s in by_name.get(name, []):
            # with a spectrum, only functions that ran count (not a same-named one elsewhere)
            if with_spectrum and s.key not in covered:
                continue
            bonus = CALLED_BONUS * (1 - order / (2 * len(called)))
            # with a spectrum a direct call only breaks ties; without one it is the evidence
            add(s, 0.0 if with_spectrum else bonus, called=order)
            calls[s.key] = max(calls.get(s.key, 0.0), bonus)
    # ties: more lines at the best spectrum score (more places for the bug), called by the test,
    # then the shorter function
    ranked = sorted(scores, key=lambda k: (-round(scores[k], 9), -lines.get(k, 0),
                                           -calls.get(k, 0.0), by_key[k].end - by_key[k].start, k))
    return [Candidate(by_key[k], scores[k], evidence[k]) for k in ranked]

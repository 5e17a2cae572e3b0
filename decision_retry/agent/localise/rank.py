"""Rank candidate functions by all the evidence: the coverage spectrum, the traceback, the names the
failing test calls. The ranking (with each candidate's evidence) is kept for the trace."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from decision_retry.agent.localise.code import Suspect, functions, innermost, is_test_file
from decision_retry.agent.localise.spectrum import Spectrum
from decision_retry.agent.localise.tests import TestSource

_FRAME = re.compile(r"^([\w./\\-]+\.py):(\d+)(?::|\s|$)", re.MULTILINE)
TRACEBACK_BONUS = 0.3  # innermost non-test frame; outer frames get half
CALLED_BONUS = 0.1  # the failing test calls the function by name


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


def traceback_frames(root: Path, text: str) -> list[Suspect]:
    """Functions of non-test files named by traceback frames in `text`, innermost first."""
    out: list[Suspect] = []
    for m in reversed(list(_FRAME.finditer(text))):
        rel = m.group(1).replace("\\", "/")
        rel = rel.removeprefix("./")
        if is_test_file(rel) or not (root / rel).is_file():
            continue
        fn = innermost(functions(root, rel), int(m.group(2)))
        if fn is not None and fn not in out:
            out.append(fn)
    return out


def rank(root: Path, *, spectrum: Spectrum | None, traceback: str, test: TestSource | None,
         all_functions: list[Suspect]) -> list[Candidate]:
    """Candidates, best first. Scores: Ochiai (0..1) + traceback and called-name bonuses."""
    scores: dict[str, float] = {}
    evidence: dict[str, dict] = {}
    by_key: dict[str, Suspect] = {}

    def add(s: Suspect, amount: float, **ev) -> None:
        by_key.setdefault(s.key, s)
        scores[s.key] = scores.get(s.key, 0.0) + amount
        evidence.setdefault(s.key, {}).update(ev)

    for fs in spectrum.scores if spectrum else ():
        add(fs.suspect, fs.ochiai, ochiai=round(fs.ochiai, 4), ef=fs.ef, ep=fs.ep)
    for depth, s in enumerate(traceback_frames(root, traceback)):
        add(s, TRACEBACK_BONUS if depth == 0 else TRACEBACK_BONUS / 2, traceback=depth)
    covered = {k for k in scores}
    called = test.called if test else ()
    by_name: dict[str, list[Suspect]] = {}
    for s in all_functions:
        by_name.setdefault(s.name, []).append(s)
    for order, name in enumerate(called):
        for s in by_name.get(name, []):
            # with a spectrum, only functions that ran count (not a same-named one elsewhere)
            if spectrum and spectrum.scores and s.key not in covered:
                continue
            add(s, CALLED_BONUS * (1 - order / (2 * len(called))), called=order)
    ranked = sorted(scores, key=lambda k: (-scores[k], by_key[k].end - by_key[k].start, k))
    return [Candidate(by_key[k], scores[k], evidence[k]) for k in ranked]

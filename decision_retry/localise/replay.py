"""A recorded localisation, replayed: `fix --resume` rebuilds the ranking its run recorded (with
the run's first turn, `params["localisation"]`) instead of measuring it again. The resumed run
then shows the model the same functions and records the same prompt and tool arguments, whatever
a new coverage run would have measured (other timings, another environment)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from decision_retry.errors import BadInput
from decision_retry.localise.code import Suspect, functions
from decision_retry.localise.failing_test import TestSource
from decision_retry.localise.rank import Candidate

_PLACE = ("file", "function", "line", "score")  # the rest of a ranking entry is its evidence


@dataclass(frozen=True)
class Replayed:
    """What `locate.Localisation` gives the run (suspect, test, candidates, summary), rebuilt
    from its record; `summary()` is that record, unchanged."""

    candidates: tuple[Candidate, ...]
    test: TestSource | None
    record: dict

    @property
    def suspect(self) -> Suspect | None:
        return self.candidates[0].suspect if self.candidates else None

    def summary(self) -> dict:
        return self.record


def _function(root: Path, file: str, name: str, line: int) -> Suspect | None:
    """The function `name` (qualified, or plain at module level) defined at `file:line`."""
    for s in functions(root, file):
        if (s.qualname or s.name) == name and s.start == line:
            return s
    return None


def replayed(root: Path, record: dict, test: TestSource | None) -> Replayed:
    """The ranking `record` (a `Localisation.summary()`) over the functions of `root` as they are
    now: the same tree the run started from (resume checks its starting snapshot)."""
    candidates = []
    for entry in record.get("ranking") or []:
        s = _function(root, entry["file"], entry["function"], entry["line"])
        if s is None:
            raise BadInput(f"cannot resume: the recorded suspect {entry['function']} "
                           f"({entry['file']}:{entry['line']}) is not in the repository")
        evidence = {k: v for k, v in entry.items() if k not in _PLACE}
        candidates.append(Candidate(s, entry["score"], evidence))
    return Replayed(tuple(candidates), test, record)


def recorded(turns, branches) -> dict | None:
    """The localisation a run recorded with its first turn (turn 0 of branch 0), if any."""
    first = {b.id for b in branches if b.index == 0}
    for t in turns:
        if t.branch_id in first and t.index == 0:
            found = t.params.get("localisation")
            return found if isinstance(found, dict) else None
    return None


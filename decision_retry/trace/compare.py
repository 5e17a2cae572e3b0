"""Did the retry change strategy? Measures of how a retry branch differs from its parent."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, computed_field

from decision_retry.trace.models import Cut, RunTree, Turn


class StrategyChange(BaseModel):
    """How a retry branch differs from the branch it was cut from, after the cut."""

    model_config = ConfigDict(frozen=True)

    branch_id: str
    parent_id: str
    cut: Cut
    edit_distance: int  # Levenshtein distance between the two suffixes' token ids
    parent_suffix_len: int
    retry_suffix_len: int
    diff_changed: bool | None  # None when either branch has no final diff recorded
    choices_before: tuple[tuple[str, str], ...]  # (label, chosen text) of the parent's tool choices
    choices_after: tuple[tuple[str, str], ...]  # ... and of the retry's, both after the cut

    @computed_field  # type: ignore[prop-decorator]
    @property
    def tool_changed(self) -> bool:
        """Whether a different action, file or function was chosen after the cut."""
        return self.choices_before != self.choices_after

    @computed_field  # type: ignore[prop-decorator]
    @property
    def relative_distance(self) -> float:
        """Edit distance over the longer suffix: 0 identical, 1 nothing in common."""
        longest = max(self.parent_suffix_len, self.retry_suffix_len)
        return self.edit_distance / longest if longest else 0.0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def changed_strategy(self) -> bool:
        """A different tool/file/function choice or a different final diff."""
        return self.tool_changed or bool(self.diff_changed)


def levenshtein(a: Sequence[int], b: Sequence[int]) -> int:
    """Edit distance (insert, delete, substitute; cost 1 each) between two id sequences."""
    # trim the common prefix and suffix: they cost nothing
    start = 0
    while start < len(a) and start < len(b) and a[start] == b[start]:
        start += 1
    end = 0
    while end < len(a) - start and end < len(b) - start and a[-1 - end] == b[-1 - end]:
        end += 1
    x = np.asarray(a[start : len(a) - end], dtype=np.int64)
    y = np.asarray(b[start : len(b) - end], dtype=np.int64)
    if len(x) == 0 or len(y) == 0:
        return int(max(len(x), len(y)))
    j = np.arange(len(y) + 1)  # (m+1,)
    row = j.copy()  # distances from the empty prefix of x
    for i, xi in enumerate(x, start=1):
        # without insertions: min(delete from the row above, substitute/match from the diagonal)
        best = np.empty_like(row)
        best[0] = i
        best[1:] = np.minimum(row[1:] + 1, row[:-1] + (y != xi))
        # insertions: row[j] = min_k<=j (best[k] + j - k), a running minimum of best - j
        row = np.minimum.accumulate(best - j) + j
    return int(row[-1])


def _after_cut(trajectory: list[Turn], cut: Cut) -> list[tuple[Turn, int]]:
    """(turn, first position kept) for every turn part at or after the cut."""
    parts = []
    for turn in trajectory:
        if turn.index == cut.turn:
            parts.append((turn, cut.position))
        elif turn.index > cut.turn:
            parts.append((turn, 0))
    return parts


def _suffix_ids(parts: list[tuple[Turn, int]]) -> list[int]:
    return [token.id for turn, start in parts for token in turn.tokens[start:]]


def _tool_choices(tree: RunTree, parts: list[tuple[Turn, int]]) -> tuple[tuple[str, str], ...]:
    return tuple(
        (d.label or "", d.choice)
        for turn, start in parts
        for d in tree.decisions_of(turn.id)
        if d.kind == "tool" and d.position >= start
    )


def compare_branch(tree: RunTree, branch_id: str) -> StrategyChange | None:
    """The change measures of a retry branch against its parent; None for a root branch."""
    retry = tree.branch(branch_id)
    if retry.parent_id is None:
        return None
    parent = tree.branch(retry.parent_id)
    cut = retry.cut or Cut(turn=0, position=0)  # no cut: the whole trajectories differ
    before = _after_cut(tree.trajectory(parent.id), cut)
    after = _after_cut(tree.trajectory(retry.id), cut)
    old_ids, new_ids = _suffix_ids(before), _suffix_ids(after)
    diff_changed = None
    if parent.final_diff is not None and retry.final_diff is not None:
        diff_changed = parent.final_diff != retry.final_diff
    return StrategyChange(
        branch_id=retry.id,
        parent_id=parent.id,
        cut=cut,
        edit_distance=levenshtein(old_ids, new_ids),
        parent_suffix_len=len(old_ids),
        retry_suffix_len=len(new_ids),
        diff_changed=diff_changed,
        choices_before=_tool_choices(tree, before),
        choices_after=_tool_choices(tree, after),
    )


def compare_all(tree: RunTree) -> list[StrategyChange]:
    """Change measures for every retry branch of the run, in branch order."""
    changes = (compare_branch(tree, b.id) for b in tree.branches)
    return [c for c in changes if c is not None]

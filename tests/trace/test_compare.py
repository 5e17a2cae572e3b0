"""Did the retry change strategy? Edit distance, diff change, tool-choice change."""

from __future__ import annotations

import random

import pytest

from decision_retry.trace import compare_all, compare_branch, levenshtein


def reference_levenshtein(a, b) -> int:
    """The textbook O(n*m) dynamic programme."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(
                d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1])
            )
    return d[-1][-1]


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ([], [], 0),
        ([1, 2, 3], [], 3),
        ([], [4], 1),
        ([1, 2, 3], [1, 2, 3], 0),
        ([1, 2, 3], [1, 9, 3], 1),
        ([1, 2, 3, 4], [2, 3, 4, 5], 2),
        ([5, 1, 2], [1, 2], 1),
    ],
)
def test_levenshtein_known_cases(a, b, expected):
    assert levenshtein(a, b) == expected


def test_levenshtein_matches_the_textbook_programme():
    rng = random.Random(0)
    for _ in range(300):
        a = [rng.randrange(4) for _ in range(rng.randrange(12))]
        b = [rng.randrange(4) for _ in range(rng.randrange(12))]
        assert levenshtein(a, b) == reference_levenshtein(a, b), (a, b)


def test_root_branch_has_no_comparison(sample):
    tree = sample.store.load(sample.run_id)
    assert compare_branch(tree, tree.branches[0].id) is None


def test_retry_inside_the_edit_changed_operator_and_diff(sample):
    tree = sample.store.load(sample.run_id)
    change = compare_branch(tree, tree.branches[1].id)
    # cut at turn 1 token 6: parent suffix " -", " b", comment; retry suffix " +", " b"
    assert (change.parent_suffix_len, change.retry_suffix_len, change.edit_distance) == (3, 2, 2)
    assert change.diff_changed is True and change.changed_strategy
    assert not change.tool_changed  # the function chosen ("add") sits before the cut
    assert change.choices_before == change.choices_after == ()


def test_retry_that_read_another_file_changed_tool_but_not_diff(sample):
    tree = sample.store.load(sample.run_id)
    change = compare_branch(tree, tree.branches[2].id)
    assert change.tool_changed
    assert ("file", "calc/ops.py") in change.choices_before
    assert ("file", "tests/test_ops.py") in change.choices_after
    assert change.diff_changed is False  # it ended with the same wrong diff
    assert 0 < change.relative_distance < 1


def test_compare_all_covers_every_retry(sample):
    tree = sample.store.load(sample.run_id)
    assert [c.branch_id for c in compare_all(tree)] == [b.id for b in tree.branches[1:]]
    dumped = compare_all(tree)[0].model_dump(mode="json")
    assert {"tool_changed", "relative_distance", "changed_strategy"} <= dumped.keys()

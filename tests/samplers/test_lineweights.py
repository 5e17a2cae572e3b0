"""Suspicious-line cut weights: the spectrum's best lines of a shown function, matched by text.

The spectrum runs for real (pytest and coverage subprocesses on a repository in a tmp dir); the
exactness of the weighted kernel is enumerated in test_exclusion_exact.py."""

from __future__ import annotations

from pathlib import Path

from decision_retry.localise.code import functions_in
from decision_retry.localise.locate import localise
from decision_retry.repo.testrun import run_tests
from decision_retry.samplers import lineweights
from tests.helpers import NO_PLUGINS, TEST_CMD, write_files

GRADES = {
    "grades.py": (
        "def grade(score):\n"
        "    if score < 0:\n"
        "        raise ValueError('negative')\n"
        "    if score >= 90:\n"
        "        return 'A'\n"
        "    label = 'B' if score > 70 else 'C'\n"  # the bug: 70 is a B
        "    return label\n"
    ),
    "test_grades.py": (
        "import pytest\n"
        "from grades import grade\n\n"
        "def test_a():\n    assert grade(95) == 'A'\n\n"
        "def test_a_edge():\n    assert grade(90) == 'A'\n\n"
        "def test_negative():\n    with pytest.raises(ValueError):\n        grade(-1)\n\n"
        "def test_c():\n    assert grade(10) == 'C'\n\n"
        "def test_b_edge():\n    assert grade(70) == 'B'\n"
    ),
}


def test_the_spectrum_names_the_best_lines_and_they_hold_the_bug(tmp_path: Path) -> None:
    root = write_files(tmp_path / "repo", GRADES)
    result = run_tests(TEST_CMD, root, 60, env=NO_PLUGINS)
    loc = localise(root, result, test_cmd=TEST_CMD, env=NO_PLUGINS)
    top = loc.candidates[0]
    assert top.suspect.name == "grade"
    # the failing test runs lines 2, 4, 6, 7; of those, 6 and 7 are run by one passing test
    # only (test_c), 2 and 4 by more: the best lines are 6 and 7
    assert top.evidence["best_lines"] == [6, 7] and top.evidence["failing_lines"] == 4
    lines = lineweights.suspicious([top.suspect], {top.suspect.key: top.evidence})
    assert lines == ("label = 'B' if score > 70 else 'C'", "return label")


def test_the_best_lines_of_each_shown_function_are_suspicious() -> None:
    [f, g] = functions_in("def f(x):\n    y = x + 1\n    return y\n\n"
                          "def g():\n    pass\n", "m.py")
    ranked = {f.key: {"best_lines": [3], "failing_lines": 2}, g.key: {"best_lines": [6]}}
    assert lineweights.suspicious([f, g], ranked) == ("pass", "return y")
    assert lineweights.suspicious([f], ranked) == ("return y",)  # shown functions only
    assert lineweights.suspicious([f], {}) == ()  # a recorded ranking from before: nothing


def test_a_token_counts_for_the_line_of_its_first_character_that_is_not_blank() -> None:
    texts = ["def", " f", "(x", "):\n", "   ", " y", " =", " x", " +", " 1", "\n   ", " return",
             " y", "\n"]
    scale = lineweights.scale(texts, ("y = x + 1",), 4.0)
    on_line = {i for i, s in enumerate(scale) if s == 4.0}
    # `   ` (blank) starts on line 2; `\n   ` (blank) starts where line 2 ends
    assert on_line == {4, 5, 6, 7, 8, 9, 10}
    assert lineweights.scale(texts, (), 4.0) == [1.0] * len(texts)
    assert lineweights.scale([], ("y",), 4.0) == []

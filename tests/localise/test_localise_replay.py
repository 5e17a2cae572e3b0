"""Localisation is a fixed function of the repository and its test result (the sample of passing
tests does not follow timings), and a recorded localisation is rebuilt exactly (resume)."""

from __future__ import annotations

from pathlib import Path

import pytest

from decision_retry.errors import BadInput
from decision_retry.localise.locate import failing_test, localise
from decision_retry.localise.replay import replayed
from decision_retry.localise.spectrum import select_tests
from decision_retry.repo import sandbox as sandboxes
from decision_retry.repo.testrun import TestResult, run_tests
from tests.helpers import NO_PLUGINS, SHOP, TEST_CMD, write_files

NODES = ("tests/a/test_x.py::test_3", "tests/a/test_x.py::test_1", "tests/a/test_y.py::test_2",
         "tests/b/test_far.py::test_1", "tests/a/test_x.py::test_2")


def result_with(seconds: list[float]) -> TestResult:
    return TestResult(command=("x",), exit_code=1, failing_tests=("tests/a/test_x.py::test_bad",),
                      passed_tests=tuple(zip(NODES, seconds)))


def test_the_sample_follows_node_ids_not_timings() -> None:
    # the same tests, timed differently (a busy machine, a cold cache): the same sample
    fast, slow = result_with([0.01, 0.2, 0.05, 0.3, 0.02]), result_with([0.3, 0.01, 0.2, 0.02, 0.5])
    a, b = select_tests(fast, budget_s=20), select_tests(slow, budget_s=20)
    assert a == b and a.cut == ""
    # nearest first: the failing test's file, its folder, the rest; by node id within each
    assert a.passing == ("tests/a/test_x.py::test_1", "tests/a/test_x.py::test_2",
                         "tests/a/test_x.py::test_3", "tests/a/test_y.py::test_2",
                         "tests/b/test_far.py::test_1")
    # the count cap keeps the nearest, whatever their timings
    assert select_tests(slow, budget_s=20, max_passing=2).passing == a.passing[:2]


def test_the_budget_is_a_safety_limit_that_says_what_it_left_out() -> None:
    sel = select_tests(result_with([0.3, 0.01, 0.2, 0.02, 0.5]), budget_s=0.5)
    # in order: test_1 (0.01), test_2 (0.5 > what is left: out), test_3 (0.3), test_y (0.2: out)
    assert sel.passing == ("tests/a/test_x.py::test_1", "tests/a/test_x.py::test_3",
                           "tests/b/test_far.py::test_1")
    assert sel.cut == "time budget 0.5s: 2 of the 5 nearest passing tests left out"


def shop_with_more_tests(root: Path) -> Path:
    """SHOP, plus passing tests in other files and folders (the sample has a choice to make)."""
    files = dict(SHOP)
    for i in range(6):
        files[f"tests/test_more_{i}.py"] = (
            "from shop.cart import Cart\n\n\n"
            + "".join(f"def test_{j}():\n    assert Cart([{j}]).labels() == ['{j}.00']\n\n\n"
                      for j in range(5)))
    files["tests/deep/test_names.py"] = (
        "from shop.b import normalise\n\n\ndef test_clean():\n"
        "    assert normalise([' B ']) == ['b']\n")
    return write_files(root, files, dedent=True)


@pytest.mark.parametrize("kind", ["auto", "none"])
def test_two_localisations_of_one_repository_rank_alike(tmp_path: Path, kind: str) -> None:
    root = shop_with_more_tests(tmp_path)
    box = sandboxes.resolve(kind)
    runs = [run_tests(TEST_CMD, root, 60, env=NO_PLUGINS, sandbox=box) for _ in range(2)]
    assert not runs[0].ok and len(runs[0].passed_tests) > 30
    locs = [localise(root, r, test_cmd=TEST_CMD, env=NO_PLUGINS, sandbox=box) for r in runs]
    # the spectrum ran (the sandbox sees the coverage script) and both ranked the same
    assert locs[0].spectrum.note == "" and locs[0].spectrum.passing
    assert locs[0].summary() == locs[1].summary()
    assert locs[0].suspect.key == "shop/a.py::normalise"


def test_a_recorded_localisation_is_rebuilt_exactly(tmp_path: Path) -> None:
    root = shop_with_more_tests(tmp_path)
    result = run_tests(TEST_CMD, root, 60, env=NO_PLUGINS)
    loc = localise(root, result, test_cmd=TEST_CMD, env=NO_PLUGINS)
    record = loc.summary()
    again = replayed(root, record, failing_test(root, result))
    assert [c.summary() for c in again.candidates] == record["ranking"]
    assert [c.suspect for c in again.candidates] == [c.suspect for c in loc.candidates[:10]]
    assert again.summary() == record and again.test == loc.test
    # a recorded function that is not there (the tree changed): one clear error
    (root / "shop/a.py").write_text("def other():\n    pass\n")
    with pytest.raises(BadInput, match="recorded suspect normalise"):
        replayed(root, record, None)

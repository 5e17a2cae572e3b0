"""Fault localisation on real repositories in tmp dirs: real pytest and coverage subprocesses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from decision_retry.localise.locate import failing_test, functions_in, localise
from decision_retry.localise.spectrum import ochiai, pytest_options, select_tests
from decision_retry.repo.testrun import TestResult, run_tests
from tests.helpers import NO_PLUGINS, SHOP, TEST_CMD, write_files


def ranked(root: Path, **kw) -> tuple[list[str], TestResult]:
    result = run_tests(TEST_CMD, root, 60, env=NO_PLUGINS)
    assert not result.ok, result.output_tail
    loc = localise(root, result, test_cmd=TEST_CMD, env=NO_PLUGINS, **kw)
    return [c.suspect.key for c in loc.candidates], result


def test_ochiai() -> None:
    assert ochiai(1, 0, 1) == 1.0
    assert ochiai(0, 5, 1) == 0.0
    assert ochiai(1, 3, 1) == pytest.approx(0.5)
    assert ochiai(2, 2, 4) == pytest.approx(0.5)
    assert ochiai(2, 1, 2) == pytest.approx(2 / 6**0.5)


def test_spectrum_finds_the_buggy_function_not_the_same_named_one(tmp_path: Path) -> None:
    root = write_files(tmp_path, SHOP, dedent=True)
    keys, result = ranked(root)
    assert result.failing_tests == ("tests/test_cart.py::test_shares",)
    assert keys[0] == "shop/a.py::normalise"
    # the same-named function of b.py and the class constructor rank below it
    assert keys.index("shop/cart.py::Cart.__init__") > 0
    assert "shop/b.py::normalise" not in keys[:1]


def test_without_the_spectrum_the_called_names_decide(tmp_path: Path) -> None:
    root = write_files(tmp_path, SHOP, dedent=True)
    keys, _ = ranked(root, spectrum=False)
    assert keys and keys[0] != "shop/a.py::normalise"  # the weak evidence the spectrum replaces


def test_the_ranking_summary_is_json(tmp_path: Path) -> None:
    root = write_files(tmp_path, SHOP, dedent=True)
    result = run_tests(TEST_CMD, root, 60, env=NO_PLUGINS)
    loc = localise(root, result, test_cmd=TEST_CMD, env=NO_PLUGINS)
    summary = json.loads(json.dumps(loc.summary()))
    assert summary["spectrum"]["failing"] == 1 and summary["spectrum"]["passing"] == 2
    top = summary["ranking"][0]
    assert (top["file"], top["function"], top["ef"], top["ep"]) == ("shop/a.py", "normalise", 1, 0)
    assert loc.test.file == "tests/test_cart.py" and "cart.shares()" in loc.test.source


def test_traceback_frame_counts_when_the_library_raises(tmp_path: Path) -> None:
    root = write_files(tmp_path, {
        "lib.py": """
            def parse(text):
                return int(text.strip("x"))


            def parse_all(texts):
                return [parse(t) for t in texts]
        """,
        "test_lib.py": """
            from lib import parse_all


            def test_parse_all():
                assert parse_all(["1", "2"]) == [1, 2]
                assert parse_all(["3y"]) == [3]
        """,
    }, dedent=True)
    keys, _ = ranked(root, spectrum=False)
    assert keys[0] == "lib.py::parse"  # the innermost library frame


def test_duplicate_test_names_show_the_failing_definition(tmp_path: Path) -> None:
    body = "".join(f"class TestV{k}:\n    def test_basic(self):\n        assert value() != {k}\n\n"
                   for k in range(20))
    root = write_files(tmp_path, {"mod.py": "def value():\n    return 13\n",
                                  "test_mod.py": "from mod import value\n\n\n" + body}, dedent=True)
    result = run_tests(TEST_CMD, root, 60, env=NO_PLUGINS)
    assert result.failing_tests == ("test_mod.py::TestV13::test_basic",)
    test = failing_test(root, result)
    assert "!= 13" in test.source and test.line == 5 + 4 * 13


def test_module_level_redefinition_shows_the_last_one() -> None:
    # Python keeps the last `def`, so pytest runs it; a text search would find the first
    from decision_retry.localise.failing_test import called_names

    src = "def test_a():\n    one()\n\n\ndef test_a():\n    two(); self.assertEqual(1, 1)\n"
    tree = __import__("ast").parse(src)
    assert called_names(tree.body[1]) == ("two",)


def test_passing_sample_is_nearest_first_and_bounded() -> None:
    result = TestResult(
        command=("x",), exit_code=1, failing_tests=("tests/a/test_x.py::test_bad",),
        passed_tests=(("tests/b/test_far.py::test_1", 0.1), ("tests/a/test_y.py::test_2", 0.1),
                      ("tests/a/test_x.py::test_3", 0.5), ("tests/a/test_x.py::test_4", 5.0)))
    sel = select_tests(result, budget_s=1.0)
    assert sel.failing == ("tests/a/test_x.py::test_bad",)
    assert sel.passing == ("tests/a/test_x.py::test_3", "tests/a/test_y.py::test_2",
                           "tests/b/test_far.py::test_1")
    assert sel.cut == "time budget 1s: 1 of the 4 nearest passing tests left out"


def test_pytest_options_keep_how_tests_run_not_what_runs() -> None:
    assert pytest_options("python -m pytest -x -q -o pythonpath=src -p no:cov tests -k slow") == [
        "-o", "pythonpath=src", "-p", "no:cov"]
    assert pytest_options("make test") == []


def test_project_config_filterwarnings_error_is_respected(tmp_path: Path) -> None:
    files = dict(SHOP)
    files["pyproject.toml"] += "filterwarnings = ['error']\n"
    keys, _ = ranked(write_files(tmp_path, files, dedent=True))
    assert keys[0] == "shop/a.py::normalise"


def test_qualnames_tell_methods_apart() -> None:
    src = "class A:\n    def f(self):\n        pass\n\n\nclass B:\n    def f(self):\n        pass\n"
    assert [f.qualname for f in functions_in(src, "m.py")] == ["A.f", "B.f"]


def test_narrow_command_keeps_options_and_names_the_failing_node_ids() -> None:
    from decision_retry.localise.command import narrow_command

    r = TestResult(command=("x",), exit_code=1,
                   failing_tests=("tests/test_a.py::T::test_b[1 2]", "tests/test_c.py"))
    cmd = "python -m pytest -x -q -o pythonpath=src -W error tests -k slow"
    assert narrow_command(cmd, r) == ("python -m pytest -x -q -o pythonpath=src -W error "
                                      "'tests/test_a.py::T::test_b[1 2]'")
    assert narrow_command("make test", r) is None
    assert narrow_command(cmd, TestResult(command=("x",), exit_code=1)) is None

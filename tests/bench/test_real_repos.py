"""The real-repos suite builder on a small real project: real pytest, coverage and mutants."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from decision_retry.bench.real_repos import (
    BUILD_VERSION,
    PER_PROJECT,
    PROJECTS,
    Project,
    build_from,
    plan_mutants,
    real_repos,
)
from decision_retry.bench.suites import SUITES
from decision_retry.errors import BadInput
from decision_retry.localise.spectrum import coverage_run, pytest_options
from decision_retry.repo.testrun import run_tests

LIB = {
    "pyproject.toml": "[tool.pytest.ini_options]\npythonpath = ['src']\ntestpaths = ['tests']\n",
    "src/tinylib/__init__.py": """
        def clamp(x, lo, hi):
            if x < lo:
                return lo
            if x > hi:
                return hi
            return x


        class Counter:
            def __init__(self):
                self.n = 0

            def add(self, k=1):
                self.n += k
                return self.n
    """,
    "tests/test_tinylib.py": """
        import unittest

        from tinylib import Counter, clamp


        class TestClamp(unittest.TestCase):
            def test_clamp(self):
                for x, want in ((-5, 0), (5, 5), (50, 10)):
                    with self.subTest(x=x):
                        self.assertEqual(clamp(x, 0, 10), want)


        def test_counter():
            c = Counter()
            assert c.add() == 1 and c.add(2) == 3
    """,
}
TINY = Project("tinylib", "0", "-", "-o pythonpath=src")


def tiny(root: Path) -> Path:
    for rel, text in LIB.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text).lstrip())
    return root


# builds the suite (seconds): the tests that read it are marked slow
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One build of the tiny project (the expensive part), shared by the tests below."""
    tmp_path = tmp_path_factory.mktemp("real-repos")
    src = tiny(tmp_path / "src-tree")
    before = {p: p.read_text() for p in src.rglob("*.py")}
    return tmp_path, src, before, build_from(TINY, src, tmp_path / "suite", per_project=2)


@pytest.mark.slow
def test_every_case_fails_its_own_suite_and_the_original_passes(built) -> None:
    tmp_path, src, before, cases = built
    assert len(cases) == 2
    assert {p: p.read_text() for p in src.rglob("*.py")} == before  # the source tree is kept
    assert run_tests(TINY.test_cmd, src, 60).ok
    for name, meta in cases.items():
        case = tmp_path / "suite" / name
        result = run_tests(meta["test_cmd"], case, 60)
        assert not result.ok and result.failed + result.errors >= 1, name
        # one token changed, on one line, inside the function named as the bug
        bug = case / meta["bug_file"]
        diff = [(a, b) for a, b in zip(bug.read_text().splitlines(),
                                       (src / meta["bug_file"]).read_text().splitlines()) if a != b]
        assert diff == [(meta["fix"]["old"], meta["fix"]["new"])]
        assert meta["bug_function"] in ("clamp", "Counter.__init__", "Counter.add")
        # reverting the one line makes the project's own suite pass again
        bug.write_text(bug.read_text().replace(meta["fix"]["old"], meta["fix"]["new"], 1))
        assert run_tests(meta["test_cmd"], case, 60).ok, name


@pytest.mark.slow
def test_the_mutant_plan_is_deterministic(built) -> None:
    _, src, _, cases = built
    data, why = coverage_run(src, None, pytest_options(TINY.test_cmd), timeout=120)
    assert data is not None, why
    plan = [(rel, fn.qualname, m) for rel, fn, m, _ in plan_mutants(TINY, src, data)]
    assert plan == [(rel, fn.qualname, m) for rel, fn, m, _ in plan_mutants(TINY, src, data)]
    # the kept cases are the first of the plan that their tests kill, in plan order
    kept = [(meta["bug_file"], meta["bug_function"], meta["bug_line"]) for meta in cases.values()]
    order = [(rel, q, m.line) for rel, q, m in plan]
    assert [order.index(k) for k in kept] == sorted(order.index(k) for k in kept)


def test_a_project_whose_suite_fails_is_refused(tmp_path: Path) -> None:
    src = tiny(tmp_path / "src-tree")
    (src / "tests" / "test_broken.py").write_text("def test_no():\n    assert False\n")
    with pytest.raises(BadInput, match="its suite does not pass here"):
        build_from(TINY, src, tmp_path / "suite")


def test_registered_and_pinned() -> None:
    assert "real-repos" in SUITES
    assert len(PROJECTS) >= 10 and all(len(p.sha256) == 64 for p in PROJECTS)
    assert len({p.name for p in PROJECTS}) == len(PROJECTS)


@pytest.mark.slow
def test_one_pinned_sdist_builds_from_pypi(tmp_path: Path) -> None:
    small = next(p for p in PROJECTS if p.name == "inflection")
    cases = real_repos(tmp_path, per_project=1, projects=(small,))
    error = json.loads((tmp_path / "index.json").read_text())["projects"][small.sdist].get("error")
    if error and "cannot download" in error:  # pragma: no cover - only without PyPI
        pytest.skip(f"PyPI unreachable: {error}")
    assert len(cases) == 1 and cases[0].test_cmd == small.test_cmd
    assert not run_tests(cases[0].test_cmd, cases[0].path, 120).ok
    assert real_repos(tmp_path, per_project=1, projects=(small,)) == cases  # cached


@pytest.mark.slow
def test_a_relative_source_and_suite_path_build_the_same_cases(built, monkeypatch) -> None:
    tmp_path, src, _, cases = built
    monkeypatch.chdir(tmp_path)  # `bench --out bench-out/x` hands the builder relative paths
    again = build_from(TINY, src.relative_to(tmp_path), Path("suite-rel"), per_project=2)
    assert [(m["bug_file"], m["bug_line"], m["fix"]) for m in again.values()] == \
        [(m["bug_file"], m["bug_line"], m["fix"]) for m in cases.values()]


def test_a_suite_inside_another_pytest_project_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.pytest.ini_options]\ntestpaths = ['t']\n")
    with pytest.raises(BadInput, match="inside a pytest project"):
        real_repos(tmp_path / "out" / "suites", projects=())
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")  # no pytest section
    assert real_repos(tmp_path / "out" / "suites", projects=()) == []


def test_cases_come_round_robin_over_projects(tmp_path: Path) -> None:
    """A --limit smaller than the suite spreads over every built project, in project order."""
    built = {"a==1": ["a-1-f", "a-2-g", "a-3-h"], "b==1": ["b-1-f"], "c==1": ["c-1-f", "c-2-g"]}
    for names in built.values():
        for name in names:
            (tmp_path / name).mkdir()
    index = {"version": BUILD_VERSION, "per_project": PER_PROJECT,
             "projects": {sdist: {"cases": names} for sdist, names in built.items()},
             "cases": {name: {"test_cmd": f"pytest {name}"} for names in built.values()
                       for name in names}}
    (tmp_path / "index.json").write_text(json.dumps(index))
    cases = real_repos(tmp_path, projects=())
    assert [c.name for c in cases] == ["a-1-f", "b-1-f", "c-1-f", "a-2-g", "c-2-g", "a-3-h"]
    assert cases[1].test_cmd == "pytest b-1-f"
    assert [c.name for c in real_repos(tmp_path, projects=(), limit=4)] == \
        ["a-1-f", "b-1-f", "c-1-f", "a-2-g"]

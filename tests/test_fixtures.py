"""Every fixture repo fails its tests as shipped and passes once its one-line fix is applied."""

import ast
import json
import sys
from pathlib import Path

import pytest

from decision_retry.repo.testrun import run_tests
from tests.helpers import FIXTURES, NO_PLUGINS, fixture_repo

NAMES = sorted(p.parent.name for p in FIXTURES.glob("*/FIXTURE.json"))
PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
REQUIRED_KINDS = {
    "flipped-comparison",
    "off-by-one",
    "swapped-arguments",
    "wrong-variable",
    "wrong-base-case",
    "wrong-operator",
}


def load(name: str) -> dict:
    return json.loads((FIXTURES / name / "FIXTURE.json").read_text())


def test_the_fixture_set_covers_the_bug_kinds() -> None:
    assert len(NAMES) >= 8
    assert REQUIRED_KINDS <= {load(n)["kind"] for n in NAMES}
    readme = (FIXTURES / "README.md").read_text()
    assert all(f"`{n}`" in readme for n in NAMES), "fixtures/README.md must list every fixture"


@pytest.mark.parametrize("name", NAMES)
def test_metadata_points_at_the_bug(name: str) -> None:
    meta = load(name)
    fix = meta["fix"]
    assert fix["file"] == meta["bug_file"]
    source = (FIXTURES / name / fix["file"]).read_text()
    lines = source.splitlines()
    assert lines.count(fix["old"]) == 1, "the buggy line must be unique in its file"
    assert lines[meta["bug_line"] - 1] == fix["old"]
    assert fix["new"] != fix["old"] and fix["new"] not in lines
    funcs = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef)]
    func = next(f for f in funcs if f.name == meta["bug_function"])
    assert func.lineno <= meta["bug_line"] <= func.end_lineno
    assert 3 <= func.end_lineno - func.lineno + 1 <= 10, "keep the buggy function short"
    assert list((FIXTURES / name / "tests").glob("test_*.py"))


@pytest.mark.parametrize("name", NAMES)
def test_fails_as_shipped_and_passes_when_fixed(name: str, tmp_path: Path) -> None:
    repo = fixture_repo(tmp_path, name, message="fixture")

    before = run_tests(PYTEST, repo, timeout=60, env=NO_PLUGINS)
    assert before.failed >= 1 and not before.ok, before.output_tail
    assert before.failing_tests, "the failing test ids are reported"

    fix = load(name)["fix"]
    target = repo / fix["file"]
    target.write_text(target.read_text().replace(fix["old"], fix["new"]))
    after = run_tests(PYTEST, repo, timeout=60, env=NO_PLUGINS)
    assert after.ok, after.output_tail
    assert after.passed == before.passed + before.failed + before.errors

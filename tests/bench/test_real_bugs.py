"""The real-bugs suite: its recipes, the patch applier, and the verification of a built case
(a tiny local project offline; two real cases built from PyPI, marked slow)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from decision_retry.bench.real_bugs import (
    Recipe,
    apply_patch,
    load_recipes,
    parse_patch,
    patch_lines,
    real_bugs,
    verify,
)
from decision_retry.bench.real_repos import Project, fetch
from decision_retry.bench.suites import SUITES
from decision_retry.errors import BadInput

LIB = "def clamp(x, lo, hi):\n    if x < lo:\n        return lo\n    return x\n"
FIXED = LIB.replace("    return x\n", "    if x > hi:\n        return hi\n    return x\n")
TEST = "from lib import clamp\n\n\ndef test_low():\n    assert clamp(-1, 0, 9) == 0\n"
NEW_TEST = TEST + "\n\ndef test_high():\n    assert clamp(99, 0, 9) == 9\n"


def diff(root: Path, rel: str, old: str | None, new: str | None) -> str:
    """`diff -u` of one file, as the recipes store it (a/ and b/ labels)."""
    a, b = root / "a.txt", root / "b.txt"
    a.write_text(old or "")
    b.write_text(new or "")
    proc = subprocess.run(["diff", "-u", "--label", f"a/{rel}" if old is not None else "/dev/null",
                           "--label", f"b/{rel}" if new is not None else "/dev/null",
                           "/dev/null" if old is None else str(a),
                           "/dev/null" if new is None else str(b)],
                          capture_output=True, text=True, check=False)
    a.unlink()
    b.unlink()
    return proc.stdout


def tiny_recipe(tmp_path: Path, fix: str = FIXED) -> tuple[Path, Recipe]:
    """A tiny project as its release had it, a recipe adding `test_high` and the fix `fix`, and
    its case tree with the test applied and a `.venv` that sees our pytest."""
    case = tmp_path / "case"
    (case / "tests").mkdir(parents=True)
    (case / "lib.py").write_text(LIB)
    (case / "tests" / "test_lib.py").write_text(TEST)
    recipe = Recipe(
        name="tiny-0", project="tiny", version="0", sha256="-", repo="-/-", commit="0" * 40,
        subject="clamp: the upper bound", functions=("lib.py:clamp",), fix_lines=2,
        failing=("tests/test_lib.py::test_high",), deps=(), options="-o pythonpath=.",
        test_patch=diff(tmp_path, "tests/test_lib.py", TEST, NEW_TEST),
        fix_patch=diff(tmp_path, "lib.py", LIB, fix))
    apply_patch(case, recipe.test_patch)
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                    str(case / ".venv")], check=True)
    return case, recipe


def test_a_patch_applies_exactly_and_reverses(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text(LIB)
    (tmp_path / "tail.txt").write_text("a\nb")  # no newline at the end
    patch = (diff(tmp_path, "pkg/m.py", LIB, FIXED) + diff(tmp_path, "new.py", None, "x = 1\n")
             + diff(tmp_path, "tail.txt", "a\nb", "a\nc\n"))
    assert [(old, new) for old, new, _ in parse_patch(patch)] == \
        [("pkg/m.py", "pkg/m.py"), (None, "new.py"), ("tail.txt", "tail.txt")]
    assert patch_lines(patch) == 2 + 1 + 2
    assert apply_patch(tmp_path, patch) == ["pkg/m.py", "new.py", "tail.txt"]
    assert (tmp_path / "pkg" / "m.py").read_text() == FIXED
    assert (tmp_path / "new.py").read_text() == "x = 1\n"
    assert (tmp_path / "tail.txt").read_text() == "a\nc\n"
    with pytest.raises(BadInput, match="does not apply to pkg/m.py"):
        apply_patch(tmp_path, patch)  # already applied: the context no longer matches
    apply_patch(tmp_path, patch, reverse=True)
    assert (tmp_path / "pkg" / "m.py").read_text() == LIB
    assert not (tmp_path / "new.py").exists()
    assert (tmp_path / "tail.txt").read_text() == "a\nb"


def test_the_recipes() -> None:
    """At least 30 cases from at least 5 projects, none of BugsInPy's, each pinned and small."""
    recipes = load_recipes()
    bugsinpy = {"ansible", "black", "cookiecutter", "fastapi", "httpie", "keras", "luigi",
                "matplotlib", "pandas", "pysnooper", "sanic", "scrapy", "spacy", "thefuck",
                "tornado", "tqdm", "youtube-dl"}
    assert "real-bugs" in SUITES
    assert len(recipes) >= 30 and len({r.project for r in recipes}) >= 5
    assert not {r.project.lower() for r in recipes} & bugsinpy
    assert len({r.name for r in recipes}) == len(recipes)
    for r in recipes:
        assert re.fullmatch(r"[0-9a-f]{40}", r.commit) and re.fullmatch(r"[0-9a-f]{64}", r.sha256)
        assert 1 <= len(r.functions) <= 3 and r.failing, r.name
        assert r.fix_lines == patch_lines(r.fix_patch) > 0, r.name
        assert any(d.startswith("pytest==") for d in r.deps), r.name
        fixed = {new for _, new, _ in parse_patch(r.fix_patch)}
        assert fixed == {f.split(":")[0] for f in r.functions}, r.name  # no test file in the fix
        assert all("test" in (new or old) for old, new, _ in parse_patch(r.test_patch)), r.name


@pytest.mark.slow
def test_verify_checks_the_developers_fix(tmp_path: Path) -> None:
    case, recipe = tiny_recipe(tmp_path)
    checks = verify(recipe, case)
    assert checks["failing_without_fix"] == ["tests/test_lib.py::test_high"]
    assert checks["passed_with_fix"] == 2
    assert (case / "lib.py").read_text() == LIB  # the fix is taken out again


@pytest.mark.slow
def test_verify_refuses_a_fix_that_does_not_fix(tmp_path: Path) -> None:
    case, recipe = tiny_recipe(tmp_path / "a", fix=LIB.replace("return x", "return x  # no"))
    with pytest.raises(BadInput, match="fails with the developer's fix"):
        verify(recipe, case)
    assert (case / "lib.py").read_text() == LIB
    case, recipe = tiny_recipe(tmp_path / "b")
    with pytest.raises(BadInput, match="do not all fail without the fix"):
        verify(replace(recipe, failing=("tests/test_lib.py::test_low",)), case)


@pytest.mark.slow
def test_two_cases_build_from_pypi(tmp_path: Path) -> None:
    """Two recipes of different projects: sdist, test patch, `.venv` from PyPI, verified; the
    case holds the test change and not the fix; cached on the second call."""
    recipes = load_recipes()
    two = [recipes[0], next(r for r in recipes if r.project != recipes[0].project)]
    try:
        fetch(Project(two[0].project, two[0].version, two[0].sha256), tmp_path / "cache")
    except BadInput as err:  # pragma: no cover - only without PyPI
        pytest.skip(f"PyPI unreachable: {err}")
    cases = real_bugs(tmp_path, recipes=two)
    index = json.loads((tmp_path / "index.json").read_text())
    assert [c.name for c in cases] == [r.name for r in two], index["failed"]
    for case, r in zip(cases, two):
        entry = index["cases"][r.name]
        assert entry["commit"] == r.commit and entry["functions"] == list(r.functions)
        assert entry["fix_lines"] == r.fix_lines and case.test_cmd == r.test_cmd
        assert ".venv/" in (case.path / ".gitignore").read_text().split()
        assert (case.path / ".venv" / "bin" / "python").exists()
        with pytest.raises(BadInput):  # the fix is not in the case: it still applies
            apply_patch(case.path, r.fix_patch, reverse=True)
        apply_patch(case.path, r.fix_patch)
        apply_patch(case.path, r.fix_patch, reverse=True)
    assert real_bugs(tmp_path, recipes=two) == cases  # cached
    # a changed recipe is built again; one whose fix does not apply is left out, named
    broken = replace(two[0], fix_patch=two[1].fix_patch)
    assert real_bugs(tmp_path, recipes=[broken]) == []
    index = json.loads((tmp_path / "index.json").read_text())
    assert "patch does not apply" in index["failed"][broken.name]["error"]
    assert broken.name not in index["cases"] and not (tmp_path / broken.name).exists()

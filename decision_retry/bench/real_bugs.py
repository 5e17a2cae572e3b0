"""The `real-bugs` suite: bugs that developers made and fixed in real projects, tested by their
own suites.

Each case is a commit from a project's git history that fixed non-test code in at most three
functions and added or changed a test that fails before the fix and passes after it
(data/real_bugs.json: the recipes, mined from the projects' public repositories). Benchmark
machines reach PyPI but not GitHub, so a case is built from PyPI, on first use:
1) `pip download` the sdist of the project's last release before the fix, check its sha256,
   unpack it;
2) apply the developer's test change (the recipe's `test_patch`, a small unified diff against
   that sdist): the case is the release's tree with the new test, no history;
3) make the case's own environment, `.venv/` (gitignored), with the pinned test dependencies from
   PyPI: `fix` finds it as any user's project environment (repo/pyenv.py);
4) verify, by real pytest runs in that environment: the developer's failing tests fail; with the
   developer's fix (`fix_patch`, never left in the case) the project's whole test command passes;
   without it that command fails.
Only verified cases enter `index.json` (which also records, per case, the functions the developer
changed and the fix's size in lines). The recipes pin each case by its fix commit (provenance) and
its sdist (version and sha256); the source trees are never vendored.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from decision_retry.bench.cases import Case
from decision_retry.bench.real_repos import Project, enclosing_pytest_config, fetch
from decision_retry.errors import BadInput

BUILD_VERSION = 1  # bump when the build rules change: every cached case is rebuilt (a case
# whose recipe changed is rebuilt by itself: its entry records the recipe's digest)
RECIPES = Path(__file__).resolve().parent / "data" / "real_bugs.json"
VENV = ".venv"
INSTALL_TIMEOUT_S = 600
TEST_TIMEOUT_S = 600


@dataclass(frozen=True)
class Recipe:
    """One developer's bug: where its source comes from and the two patches that make the case."""

    name: str  # `<project>-<commit[:8]>`
    project: str  # the PyPI name
    version: str  # the last release before the fix, as an sdist on PyPI
    sha256: str
    repo: str  # owner/name on GitHub: provenance only, never fetched by the build
    commit: str  # the fix commit
    subject: str  # its first line
    functions: tuple[str, ...]  # `path:qualname` of each function the developer changed
    fix_lines: int  # lines added + removed by the fix
    failing: tuple[str, ...]  # node ids of the developer's tests that fail without the fix
    deps: tuple[str, ...]  # pinned requirements of the case's environment (pytest included)
    options: str  # extra pytest options of the project (`-o pythonpath=src`)
    test_patch: str  # the developer's test change, against the sdist
    fix_patch: str  # the developer's fix, against the sdist with the test change: verification only

    @property
    def sdist(self) -> str:
        return f"{self.project}=={self.version}"

    @property
    def test_cmd(self) -> str:
        return f"python -m pytest -x -q -p no:cacheprovider -o addopts= {self.options}".strip()

    @property
    def digest(self) -> str:
        """What the built case depends on, hashed: a cached case with another digest is stale."""
        parts = (self.version, self.sha256, *self.deps, self.options, *self.failing,
                 self.test_patch, self.fix_patch)
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def load_recipes(path: Path = RECIPES) -> list[Recipe]:
    """Every recipe of the data file, in its order."""
    data = json.loads(Path(path).read_text())
    projects = data["projects"]
    out = []
    for c in data["cases"]:
        p = projects[c["project"]]
        out.append(Recipe(
            name=c["name"], project=c["project"], version=c["version"], sha256=c["sha256"],
            repo=p["repo"], commit=c["commit"], subject=c["subject"],
            functions=tuple(c["functions"]), fix_lines=c["fix_lines"], failing=tuple(c["failing"]),
            deps=tuple(p["deps"]), options=p.get("options", ""), test_patch=c["test_patch"],
            fix_patch=c["fix_patch"]))
    return out


# -- patches --------------------------------------------------------------------------------------
_HUNK = re.compile(r"@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def parse_patch(patch: str) -> list[tuple[str | None, str | None, list[list[str]]]]:
    """(old path, new path, hunks) per file of a unified diff (`diff -u` with a/ and b/ labels);
    a path is None for /dev/null; a hunk is its lines, each with its ' ', '-', '+' or '\\'."""
    files: list[tuple[str | None, str | None, list[list[str]]]] = []
    lines = patch.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        if lines[i].startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            old, new = (_path(lines[i][4:]), _path(lines[i + 1][4:]))
            files.append((old, new, []))
            i += 2
        elif lines[i].startswith("@@") and files:
            files[-1][2].append([lines[i]])
            i += 1
        elif files and files[-1][2] and lines[i][:1] in (" ", "-", "+", "\\"):
            files[-1][2][-1].append(lines[i])
            i += 1
        else:
            i += 1
    return files


def _path(label: str) -> str | None:
    label = label.split("\t")[0].strip()
    return None if label == "/dev/null" else label.split("/", 1)[1]


def apply_patch(root: Path, patch: str, *, reverse: bool = False) -> list[str]:
    """Apply a unified diff to the tree `root` exactly (no fuzz); the paths it changed.
    BadInput when a hunk's context does not match: the patch was made for another tree."""
    changed = []
    for old, new, hunks in parse_patch(patch):
        if reverse:
            old, new = new, old
        target = root / (new or old)
        if old and not (root / old).is_file():
            raise BadInput(f"patch does not apply: {old} is missing")
        text = (root / old).read_text() if old else ""
        src = text.splitlines(keepends=True)
        out, at = [], 0
        for hunk in hunks:
            m = _HUNK.match(hunk[0])
            first, count = m.group(3, 4) if reverse else m.group(1, 2)
            start = int(first) - (0 if count == "0" else 1)  # count 0: insert after line `first`
            want, put = _sides(hunk[1:], reverse)
            if src[start:start + len(want)] != want:
                raise BadInput(f"patch does not apply to {old} at line {start + 1}")
            out += src[at:start] + put
            at = start + len(want)
        out += src[at:]
        if new is None:
            target.unlink()
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("".join(out))
        changed.append(new or old)
    return changed


def _sides(body: list[str], reverse: bool) -> tuple[list[str], list[str]]:
    """A hunk's old and new lines, with their newlines ('\\ No newline' drops the last one)."""
    old: list[str] = []
    new: list[str] = []
    last: list[list[str]] = []
    for line in body:
        tag, text = line[:1], line[1:]
        if tag == "\\":
            for side in last:
                side[-1] = side[-1].rstrip("\n")
            continue
        last = [s for s, keep in ((old, tag in " -"), (new, tag in " +")) if keep]
        for side in last:
            side.append(text if text.endswith("\n") else text + "\n")
    return (new, old) if reverse else (old, new)


def patch_lines(patch: str) -> int:
    """Lines added + removed by a patch."""
    return sum(len([ln for ln in h[1:] if ln[:1] in "+-"]) for _, _, hs in parse_patch(patch)
               for h in hs)


# -- the environment and the checks ---------------------------------------------------------------
def make_env(case: Path, deps: tuple[str, ...]) -> Path:
    """`case/.venv` with `deps` from PyPI, gitignored; its interpreter."""
    venv = case / VENV
    shutil.rmtree(venv, ignore_errors=True)
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], "create the environment")
    py = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q",
          "--disable-pip-version-check", *deps], f"install {' '.join(deps)}")
    ignore = case / ".gitignore"
    text = ignore.read_text() if ignore.is_file() else ""
    if f"{VENV}/" not in text.split():
        ignore.write_text(text + ("" if not text or text.endswith("\n") else "\n") + f"{VENV}/\n")
    return py


def _run(argv: list[str], what: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S,
                          check=False)
    if proc.returncode:
        raise BadInput(f"cannot {what}: {(proc.stderr or proc.stdout).strip()[-300:]}")


def verify(recipe: Recipe, case: Path) -> dict:
    """The three checks of a built case (module docstring, step 4); BadInput names the first that
    fails. The case is left as it was: the fix is applied, tested and taken out again."""
    from decision_retry.repo.pyenv import find
    from decision_retry.repo.testrun import run_tests

    python = find(case)
    opts = recipe.options.split()
    narrow = run_tests(["python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                        *opts, *recipe.failing], case, TEST_TIMEOUT_S, python=python)
    if narrow.ok or narrow.failed != len(recipe.failing) or narrow.errors:
        raise BadInput(f"{recipe.name}: the developer's tests do not all fail without the fix "
                       f"({narrow.passed} passed, {narrow.failed} failed, {narrow.errors} errors)")
    before = run_tests(recipe.test_cmd, case, TEST_TIMEOUT_S, python=python)
    if before.ok or not before.failing_tests or before.failing_tests[0] not in recipe.failing:
        raise BadInput(f"{recipe.name}: the test command does not fail first on the developer's "
                       f"tests without the fix ({before.failing_tests[:1] or 'it passes'})")
    apply_patch(case, recipe.fix_patch)
    try:
        after = run_tests(recipe.test_cmd, case, TEST_TIMEOUT_S, python=python)
    finally:
        apply_patch(case, recipe.fix_patch, reverse=True)
    if not after.ok:
        raise BadInput(f"{recipe.name}: the test command fails with the developer's fix "
                       f"({after.failing_tests[:2] or after.summary})")
    return {"failing_without_fix": list(before.failing_tests), "passed_with_fix": after.passed}


def build_case(recipe: Recipe, cache: Path, root: Path) -> dict:
    """Build and verify one case under `root/<name>`; its index entry. BadInput when it cannot."""
    src = fetch(Project(recipe.project, recipe.version, recipe.sha256), cache)
    tmp = root / f".{recipe.name}.build"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    try:
        apply_patch(tmp, recipe.test_patch)
        make_env(tmp, recipe.deps)
        checks = verify(recipe, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    case = root / recipe.name
    shutil.rmtree(case, ignore_errors=True)
    tmp.rename(case)  # (the environment runs `python -m`: its console scripts are not used)
    first = recipe.functions[0].split(":", 1)
    return {"project": recipe.sdist, "repo": recipe.repo, "commit": recipe.commit,
            "subject": recipe.subject, "test_cmd": recipe.test_cmd,
            "functions": list(recipe.functions),
            "fix_lines": recipe.fix_lines, "bug_file": first[0], "bug_function": first[1],
            "failing": list(recipe.failing), "verified": checks, "recipe": recipe.digest}


def real_bugs(root: Path, *, limit: int | None = None, recipes: list[Recipe] | None = None,
              on_build: Callable[[str], None] | None = None) -> list[Case]:
    """The verified cases under `root` (built and cached as needed), round-robin over the
    projects, as real-repos: a `limit` smaller than the suite spreads over every project."""
    say = on_build or (lambda _: None)
    root = Path(root).resolve()
    config = enclosing_pytest_config(root)
    if config is not None:
        raise BadInput(f"{root} is inside a pytest project ({config}): pytest would run the real "
                       "projects' tests under its configuration; use an --out outside it")
    recipes = load_recipes() if recipes is None else recipes
    by_project: dict[str, list[Recipe]] = {}
    for r in recipes:
        by_project.setdefault(r.project, []).append(r)
    order = [r for rank in itertools.zip_longest(*by_project.values()) for r in rank if r]
    index_file = root / "index.json"
    index = json.loads(index_file.read_text()) if index_file.is_file() else {}
    if index.get("version") != BUILD_VERSION:
        index = {"version": BUILD_VERSION, "cases": {}, "failed": {}}
    cases = []
    for r in order:
        if limit is not None and len(cases) >= limit:
            break
        built = index["cases"].get(r.name) or index["failed"].get(r.name) or {}
        if built.get("recipe") != r.digest or (r.name in index["cases"]
                                              and not (root / r.name).is_dir()):
            index["cases"].pop(r.name, None)
            index["failed"].pop(r.name, None)
            shutil.rmtree(root / r.name, ignore_errors=True)  # built from an older recipe
            say(f"real-bugs: {r.name}: {r.sdist} + the developer's test, its .venv, then verify")
            try:
                index["cases"][r.name] = build_case(r, root / "cache", root)
            except BadInput as err:  # one case that cannot build here must not end the build
                index["failed"][r.name] = {"error": str(err), "recipe": r.digest}
                say(f"real-bugs: {r.name}: left out: {err}")
            root.mkdir(parents=True, exist_ok=True)
            index_file.write_text(json.dumps(index, indent=1) + "\n")
        if r.name in index["cases"]:
            cases.append(Case(r.name, root / r.name, r.test_cmd))
    return cases


def load_index(root: Path) -> dict[str, dict]:
    """Where each case's bug is: {case name: entry of index.json}."""
    path = Path(root) / "index.json"
    return json.loads(path.read_text())["cases"] if path.is_file() else {}

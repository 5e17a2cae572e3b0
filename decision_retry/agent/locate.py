"""Find the code under test: the function a failing test exercises, from its output and sources."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

from decision_retry.agent.testrun import TestResult

_FRAME = re.compile(r"^([\w./\\-]+\.py):(\d+)(?::|\s|$)", re.M)


@dataclass(frozen=True)
class Suspect:
    """A function in the repository: where it is and its source text."""

    file: str  # relative to the repository root
    name: str
    start: int  # 1-based first line (decorators included)
    end: int  # 1-based last line
    source: str


def is_test_file(rel: str) -> bool:
    name = Path(rel).name
    in_tests_dir = "tests" in Path(rel).parts[:-1]
    return name.startswith("test_") or name.endswith("_test.py") or in_tests_dir or name == "conftest.py"


def functions(root: Path, rel: str) -> list[Suspect]:
    """Every function and method defined in a file."""
    return functions_in((root / rel).read_text(), rel)


def functions_in(text: str, rel: str) -> list[Suspect]:
    """Every function and method defined in `text` (the contents of file `rel`)."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return []
    lines = text.splitlines()
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            out.append(Suspect(rel, node.name, start, node.end_lineno or node.lineno,
                               "\n".join(lines[start - 1 : node.end_lineno])))
    return out


def source_files(root: Path) -> list[str]:
    """Python files of the repository that are not tests (no hidden or virtualenv dirs)."""
    out = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).as_posix()
        parts = p.relative_to(root).parts
        if any(part.startswith(".") or part in ("venv", "node_modules", "build") for part in parts):
            continue
        if not is_test_file(rel):
            out.append(rel)
    return out


def from_traceback(root: Path, output: str) -> Suspect | None:
    """The innermost traceback frame that lies in a non-test source file."""
    hits = [(m.group(1), int(m.group(2))) for m in _FRAME.finditer(output)]
    for path, line in reversed(hits):
        rel = path.replace("\\", "/")
        if not (root / rel).is_file() or is_test_file(rel):
            continue
        inner = [f for f in functions(root, rel) if f.start <= line <= f.end]
        if inner:
            return min(inner, key=lambda f: f.end - f.start)
    return None


def test_source(root: Path, test_id: str) -> tuple[str, list[str]] | None:
    """(source of the failing test function, names it calls in order), from 'path::name'."""
    path, _, name = test_id.partition("::")
    name = name.split("[")[0].split("::")[-1]
    if not (root / path).is_file():
        return None
    text = (root / path).read_text()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            ordered = sorted((c for c in ast.walk(node) if isinstance(c, ast.Call)),
                             key=lambda c: (c.lineno, c.col_offset))
            names = []
            for c in ordered:
                f = c.func
                n = f.id if isinstance(f, ast.Name) else getattr(f, "attr", "")
                if n and n not in names:
                    names.append(n)
            return ast.get_source_segment(text, node) or "", names
    return None


def locate(root: Path, result: TestResult) -> tuple[Suspect | None, str]:
    """The suspect function and the failing test's source (may be empty)."""
    test_src, called = "", []
    if result.failing_tests:
        found = test_source(root, result.failing_tests[0])
        if found:
            test_src, called = found
    suspect = from_traceback(root, result.output_tail)
    if suspect is None and called:
        defs = {f.name: f for rel in source_files(root) for f in functions(root, rel)}
        for name in called:
            if name in defs:
                suspect = defs[name]
                break
    return suspect, test_src

"""The repository's code as functions: where each is, its qualified name, its source text."""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

_SKIP_DIRS = ("venv", "node_modules", "build", "dist", "site-packages", "__pycache__")


@dataclass(frozen=True)
class Suspect:
    """A function in the repository: where it is and its source text."""

    file: str  # relative to the repository root
    name: str
    start: int  # 1-based first line (decorators included)
    end: int  # 1-based last line
    source: str
    qualname: str = ""  # `Parser.parse`, `outer.<locals>.inner`; the name alone at module level

    @property
    def key(self) -> str:
        """`file::qualname`: unique per definition but for redefinitions of one name."""
        return f"{self.file}::{self.qualname or self.name}"


def is_test_file(rel: str) -> bool:
    """Tests: `test_*.py`, `*_test.py`, `conftest.py`, anything under a `tests`/`test` folder."""
    path = Path(rel)
    name = path.name
    in_tests_dir = any(p in ("tests", "test") for p in path.parts[:-1])
    return name.startswith("test_") or name.endswith("_test.py") or in_tests_dir or name == "conftest.py"


def functions(root: Path, rel: str) -> list[Suspect]:
    """Every function and method defined in a file (none when it does not parse)."""
    try:
        return functions_in((root / rel).read_text(errors="replace"), rel)
    except OSError:
        return []


def functions_in(text: str, rel: str) -> list[Suspect]:
    """Every function and method defined in `text` (the contents of file `rel`), in source order."""
    return list(_functions_cached(text, rel))


@functools.lru_cache(maxsize=256)
def _functions_cached(text: str, rel: str) -> tuple[Suspect, ...]:
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return ()
    lines = text.splitlines()
    out: list[Suspect] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                end = child.end_lineno or child.lineno
                qual = f"{prefix}{child.name}"
                out.append(Suspect(rel, child.name, start, end,
                                   "\n".join(lines[start - 1 : end]), qual))
                visit(child, f"{qual}.<locals>.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)  # defs under if/try blocks

    visit(tree, "")
    return tuple(sorted(out, key=lambda s: s.start))


def innermost(defs: list[Suspect], line: int) -> Suspect | None:
    """The smallest function whose lines include `line` (a nested def wins over its parent)."""
    inner = [f for f in defs if f.start <= line <= f.end]
    return min(inner, key=lambda f: f.end - f.start) if inner else None


def source_files(root: Path) -> list[str]:
    """Python files of the repository that are not tests (no hidden or virtualenv dirs)."""
    out = []
    for p in sorted(root.rglob("*.py")):
        parts = p.relative_to(root).parts
        if any(part.startswith(".") or part in _SKIP_DIRS for part in parts[:-1]):
            continue
        rel = p.relative_to(root).as_posix()
        if not is_test_file(rel):
            out.append(rel)
    return out

"""The failing test itself: its source (the right one of many same-named definitions) and the
names it calls, in call order."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

_ASSERT_PREFIXES = ("assert", "fail", "subTest", "skipTest")  # unittest's own methods


@dataclass(frozen=True)
class TestSource:
    """The failing test's definition and the callables it names."""

    __test__ = False  # not a pytest test class

    file: str
    line: int  # 1-based `def` line (decorators excluded)
    source: str
    called: tuple[str, ...]  # names called, in source order, once each


def _split(nodeid: str) -> tuple[str, list[str], str]:
    """`path::Class::name[param]` -> (path, [Class], name)."""
    path, *rest = nodeid.split("::")
    if not rest:
        return path, [], ""
    name = rest[-1].split("[")[0]
    return path, rest[:-1], name


def _definitions(tree: ast.Module, classes: list[str], name: str) -> list[ast.AST]:
    """Every `def name` inside the class chain `classes` (module level when empty), in order."""
    scopes: list[ast.AST] = [tree]
    for cls in classes:
        scopes = [n for s in scopes for n in ast.walk(s)
                  if isinstance(n, ast.ClassDef) and n.name == cls]
    found = [n for s in scopes for n in ast.iter_child_nodes(s)
             if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name]
    if not found:  # inherited test methods, defs under if-blocks: any def of that name
        found = [n for s in scopes for n in ast.walk(s)
                 if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name]
    return found


def called_names(node: ast.AST) -> tuple[str, ...]:
    """Names of the functions, methods and classes a test calls, in source order."""
    calls = sorted((c for c in ast.walk(node) if isinstance(c, ast.Call)),
                   key=lambda c: (c.lineno, c.col_offset))
    names: dict[str, None] = {}
    for c in calls:
        f = c.func
        n = f.id if isinstance(f, ast.Name) else getattr(f, "attr", "")
        if n and not n.startswith(_ASSERT_PREFIXES):
            names[n] = None
    return tuple(names)


def test_source(root: Path, nodeid: str, line: int | None = None) -> TestSource | None:
    """The definition of the test `nodeid` (at `line` when pytest said where), or None."""
    path, classes, name = _split(nodeid)
    file = root / path
    if not name or not file.is_file():
        return None
    text = file.read_text(errors="replace")
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return None
    defs = _definitions(tree, classes, name)
    if not defs:
        return None
    at = [d for d in defs if d.lineno == line] if line else []
    node = at[0] if at else defs[-1]  # a name defined twice in one scope: Python keeps the last
    src = ast.get_source_segment(text, node) or ""
    return TestSource(path, node.lineno, src, called_names(node))

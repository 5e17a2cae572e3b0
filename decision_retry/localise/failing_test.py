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


# What an expression on the failing line runs implicitly: operators and protocol calls.
_DUNDERS = {
    ast.Lt: ("__lt__", "__gt__"), ast.Gt: ("__gt__", "__lt__"), ast.LtE: ("__le__", "__ge__"),
    ast.GtE: ("__ge__", "__le__"), ast.Eq: ("__eq__",), ast.NotEq: ("__ne__", "__eq__"),
    ast.In: ("__contains__",), ast.NotIn: ("__contains__",), ast.Add: ("__add__", "__radd__"),
    ast.Sub: ("__sub__", "__rsub__"), ast.Mult: ("__mul__", "__rmul__"),
    ast.Div: ("__truediv__",), ast.FloorDiv: ("__floordiv__",), ast.Mod: ("__mod__",),
    ast.Pow: ("__pow__",), ast.BitAnd: ("__and__", "__rand__"), ast.BitOr: ("__or__", "__ror__"),
    ast.BitXor: ("__xor__", "__rxor__"), ast.LShift: ("__lshift__",),
    ast.RShift: ("__rshift__",), ast.MatMult: ("__matmul__",), ast.USub: ("__neg__",),
    ast.Invert: ("__invert__",), ast.Not: ("__bool__", "__len__"),
}
_BUILTIN_DUNDERS = {"len": "__len__", "iter": "__iter__", "list": "__iter__", "hash": "__hash__",
                    "repr": "__repr__", "str": "__str__", "bool": "__bool__", "sorted": "__lt__",
                    "reversed": "__reversed__", "next": "__next__", "int": "__int__",
                    "float": "__float__", "format": "__format__", "copy": "__copy__"}
_ASSERT_DUNDERS = {"assertEqual": "__eq__", "assertNotEqual": "__ne__", "assertIn": "__contains__",
                   "assertNotIn": "__contains__", "assertLess": "__lt__",
                   "assertGreater": "__gt__", "assertLessEqual": "__le__",
                   "assertGreaterEqual": "__ge__", "assertTrue": "__bool__",
                   "assertFalse": "__bool__", "assertCountEqual": "__iter__"}


def line_names(root: Path, file: str, line: int) -> tuple[str, ...]:
    """Functions the statement at `file:line` calls, explicitly or through an operator."""
    try:
        text = (root / file).read_text(errors="replace")
        tree = ast.parse(text)
    except (OSError, SyntaxError, ValueError):
        return ()
    stmts = [n for n in ast.walk(tree) if isinstance(n, ast.stmt)
             and n.lineno <= line <= (n.end_lineno or n.lineno)
             and not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    if not stmts:
        return ()
    stmt = min(stmts, key=lambda n: (n.end_lineno or n.lineno) - n.lineno)
    names: dict[str, None] = {}
    for node in ast.walk(stmt):
        if isinstance(node, ast.Call):
            f = node.func
            n = f.id if isinstance(f, ast.Name) else getattr(f, "attr", "")
            names[n] = None
            for extra in (_BUILTIN_DUNDERS.get(n), _ASSERT_DUNDERS.get(n)):
                if extra:
                    names[extra] = None
            if n[:1].isupper():  # a class: its constructor runs
                names[f"{n}.__init__"] = None
        elif isinstance(node, ast.Attribute):
            names[node.attr] = None
        elif isinstance(node, ast.Subscript):
            names[{ast.Load: "__getitem__", ast.Store: "__setitem__"}.get(
                type(node.ctx), "__delitem__")] = None
        elif isinstance(node, (ast.Compare, ast.BinOp, ast.UnaryOp, ast.AugAssign)):
            ops = node.ops if isinstance(node, ast.Compare) else [node.op]
            for op in ops:
                names.update(dict.fromkeys(_DUNDERS.get(type(op), ())))
    names.pop("", None)
    return tuple(names)

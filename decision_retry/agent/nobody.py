"""The no-body context: the patch prompt with every suspect's body replaced by `...`.

Surprise cut weights (samplers/surprise.py) score each reply under a second context that knows
what the function is for (signature, docstring, the failing test and its error) but has not seen
the code, so a token the reply copies from a buggy body stands out there. It is built once per
run from what the patch prompt shows: the same instruction, test and error, the same suspects in
the same order, each as its stub.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import replace

from decision_retry.agent import patch
from decision_retry.agent.definitions import AgentDefinition
from decision_retry.localise.locate import Suspect
from decision_retry.repo.testrun import TestResult

_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef)


def stub(source: str) -> str:
    """A function's decorators, signature and docstring, its body replaced by `...` (dedented).

    Source that does not parse keeps its first line only."""
    text = textwrap.dedent(source)
    lines = text.splitlines()
    try:
        fn = next((n for n in ast.parse(text).body if isinstance(n, _DEFS)), None)
    except SyntaxError:
        fn = None
    if fn is None or not fn.body:
        return "\n".join(lines[:1] + ["    ..."])
    first = fn.body[0]
    indent = " " * first.col_offset
    if patch.docstring_of(fn) is not None:
        return "\n".join(lines[: first.end_lineno] + [indent + "..."])
    line = lines[first.lineno - 1]
    if line[: first.col_offset].strip():  # `def f(x): return x`: the body shares the def's line
        return "\n".join(lines[: first.lineno - 1] + [line[: first.col_offset] + "..."])
    return "\n".join(lines[: first.lineno - 1] + [indent + "..."])


def suspects(shown: list[Suspect]) -> list[Suspect]:
    """The suspects as the no-body context shows them."""
    return [replace(s, source=stub(s.source)) for s in shown]


def messages(defn: AgentDefinition, shown: list[Suspect], test_src: str,
             result: TestResult) -> list[dict]:
    """The patch prompt (patch.messages) over the stubs of the suspects shown."""
    return patch.messages(defn, suspects(shown), test_src, result)

"""The `patch` protocol: show the failing test and the suspect function; apply the rewrite by name."""

from __future__ import annotations

import ast
import re
import textwrap

from decision_retry.agent.definitions import AgentDefinition
from decision_retry.agent.locate import Suspect
from decision_retry.agent.testrun import TestResult


def error_lines(result: TestResult, limit: int) -> str:
    """The assertion lines of the failure (pytest's `E ` lines), else the output's last lines."""
    lines = result.output_tail.splitlines()
    errors = [ln for ln in lines if ln.startswith("E ")]
    return "\n".join((errors or lines[-limit:])[:limit])


def messages(defn: AgentDefinition, suspect: Suspect, test_src: str, result: TestResult) -> list[dict]:
    """The one user message of a patch attempt."""
    user = defn.prompt["user"].format(
        test=test_src or "(see the error)", error=error_lines(result, defn.limits["error_lines"]),
        file=suspect.file, code=suspect.source,
    )
    return [{"role": "user", "content": user}]


def reply_code(text: str, stop_regex: str | None = None) -> str:
    """The code the model wrote: everything before a closing fence (the opening one is prefilled)
    or before the line at which `stop_regex` ended the reply."""
    text = text.split("```")[0]
    if stop_regex and (m := re.search(stop_regex, text)):
        text = text[: m.start()]
    return re.sub(r"<\|[^|>]*\|>|</?s>|<eos>", "", text).rstrip() + "\n"


def _function_node(tree: ast.Module, name: str):
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            return node
    return None


def apply(file_text: str, suspect: Suspect, code: str) -> str:
    """The file with `suspect` replaced by the function of the same name in `code`.

    Raises ValueError with a message fit to show the model when the code does not parse or
    defines no function of that name.
    """
    code = textwrap.dedent(code)
    try:
        tree = ast.parse(code)
    except SyntaxError as err:
        raise ValueError(f"your code does not parse: {err.msg} (line {err.lineno})") from None
    node = _function_node(tree, suspect.name)
    if node is None:
        raise ValueError(f"your reply defines no function named {suspect.name}")
    start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    new = "\n".join(code.splitlines()[start - 1 : node.end_lineno])
    lines = file_text.splitlines()
    indent = re.match(r"\s*", lines[suspect.start - 1]).group(0)
    new = textwrap.indent(new, indent)
    out = "\n".join([*lines[: suspect.start - 1], new, *lines[suspect.end :]])
    out += "\n" if file_text.endswith("\n") else ""
    try:
        ast.parse(out)
    except SyntaxError as err:
        raise ValueError(f"the patched file does not parse: {err.msg} (line {err.lineno})") from None
    return out


def function_name_span(text: str, name: str) -> tuple[int, int] | None:
    """Character span of the function name the reply defines (a tool-decision point)."""
    m = re.search(r"def\s+(\w+)", text)
    return (m.start(1), m.end(1)) if m else None

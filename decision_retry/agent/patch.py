"""The `patch` protocol: show the failing test and the suspect functions; apply the rewrite by name.

With several suspects shown, the function the reply rewrites (the name after its `def`) is the
model's choice of where the bug is: a tool-decision point that a rewind can cut at.
"""

from __future__ import annotations

import ast
import re
import textwrap

from decision_retry.agent.definitions import AgentDefinition
from decision_retry.localise.locate import Suspect
from decision_retry.repo.testrun import TestResult


def error_lines(result: TestResult, limit: int) -> str:
    """The assertion lines of the failure (pytest's `E ` lines), else the output's last lines."""
    lines = result.output_tail.splitlines()
    errors = [ln for ln in lines if ln.startswith("E ")]
    return "\n".join((errors or lines[-limit:])[:limit])


def shown(suspects: list[Suspect], limit: int, chars: int) -> list[Suspect]:
    """The suspects the model sees: the best always, then others while `limit` and `chars` allow."""
    out: list[Suspect] = []
    for s in suspects[: max(1, limit)]:
        if out and sum(len(x.source) for x in out) + len(s.source) > chars:
            break
        out.append(s)
    return out


def code(suspect: Suspect) -> str:
    """A suspect's source as shown: dedented, a method preceded by a comment naming its class."""
    text = textwrap.dedent(suspect.source)
    owner = suspect.qualname.rsplit(".", 1)[0] if "." in suspect.qualname else ""
    return f"# a method of class {owner}\n{text}" if owner and "<locals>" not in owner else text


def messages(defn: AgentDefinition, suspects: Suspect | list[Suspect], test_src: str,
             result: TestResult) -> list[dict]:
    """The one user message of a patch attempt: one suspect, or several (most likely first)."""
    many = [suspects] if isinstance(suspects, Suspect) else list(suspects)
    fields = {"test": test_src or "(see the error)",
              "error": error_lines(result, defn.limits["error_lines"])}
    if len(many) == 1 or "user_many" not in defn.prompt:
        user = defn.prompt["user"].format(**fields, file=many[0].file, code=code(many[0]))
    else:
        blocks = "\n".join(f"From {s.file}:\n```python\n{code(s)}\n```" for s in many)
        user = defn.prompt["user_many"].format(**fields, code=blocks)
    return [{"role": "user", "content": user}]


def chosen(reply_text: str, suspects: list[Suspect]) -> Suspect | None:
    """The suspect the reply rewrites: the first shown one named by the reply's first `def`."""
    m = re.search(r"def\s+(\w+)", reply_text)
    return next((s for s in suspects if m and s.name == m.group(1)), None)


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

"""The `patch` protocol: show the failing test and the suspect functions; apply the rewrite by name.

With several suspects shown, the functions the reply rewrites (the names after its `def`s) are
the model's choice of where the bug is: each a tool-decision point that a rewind can cut at. A
reply may rewrite several of the shown functions (a helper and its caller); each replaces the
suspect of its name, and a function that was not shown is left out (the observation says so).
A rewritten function without a docstring keeps the one it replaces (`kept_docstring`), so a
reply need not spend its tokens copying prose the tests cannot see.
"""

from __future__ import annotations

import ast
import io
import re
import textwrap
import tokenize
from typing import NamedTuple

from decision_retry.agent.definitions import AgentDefinition
from decision_retry.localise.locate import Suspect
from decision_retry.repo.testrun import TestResult

# a failure's title, a section rule, the test's captured output (no values of the failure)
_HEADER = re.compile(r"^(?:_{3,} .* _{3,}|={3,}.*|-{3,} Captured .* -{3,})$")
_ARGUMENT = re.compile(r"^[A-Za-z_]\w* = \S")  # pytest's `x = None`: a frame's argument values
_WHERE = re.compile(r"^\S+:\d+: (in )?\w")  # `calc.py:2: TypeError`, a frame `calc.py:6: in f`
_NOISE = re.compile(r"^E\s*$|^E\s+(?:Use -v|Full diff:)|^\s*[~^]+\s*$")
LINE_CHARS = 200  # a longer line (a big repr) is cut, so the others still fit


def _failure(lines: list[str]) -> list[str]:
    """The first failure's report: the lines between two titles (or rules) that hold `E `
    lines (the output's tail may begin inside it)."""
    chunks, chunk = [], []
    for ln in lines:
        if _HEADER.match(ln):
            chunks, chunk = [*chunks, chunk], []
        else:
            chunk.append(ln)
    return next((c for c in [*chunks, chunk] if any(ln.startswith("E ") for ln in c)), [])


def _rank(lines: list[str]) -> list[int | None]:
    """How much each line of a failure's report says about the values (0 most; None: nothing):
    0 the test's failing line (`>`), the exception and assertion lines (`E` lines starting a
    block) and pytest's `where` introspection; 1 the other `E` lines and the line that raised;
    2 the frames' argument values and the other `>` lines; 3 where it was raised; 4 the frames
    pytest reports in short (`calc.py:6: in total`)."""
    arrows = [i for i, ln in enumerate(lines) if ln.startswith(">")]
    ranks = []
    for i, ln in enumerate(lines):
        if ln.startswith("E ") and not _NOISE.match(ln):
            starts = i == 0 or not re.match(r"E(\s|$)", lines[i - 1])
            ranks.append(0 if starts or re.match(r"E\s+\+\s+where ", ln) else 1)
        elif ln.startswith(">"):
            ranks.append(0 if i == arrows[0] else 1 if i == arrows[-1] else 2)
        elif _ARGUMENT.match(ln):
            ranks.append(2)
        elif m := _WHERE.match(ln):
            ranks.append(4 if m.group(1) else 3)
        else:
            ranks.append(None)
    return ranks


def error_lines(result: TestResult, limit: int) -> str:
    """The failure as the model sees it, at most `limit` lines in their order: of the first
    failure pytest reports, the lines that carry values (the failing assertion, its message,
    the compared values and `where` lines, the arguments of the frames, where it was raised)
    before the rest; else the output's last lines."""
    lines = result.output_tail.splitlines()
    failure = _failure(lines)
    if not failure:
        return "\n".join(lines[-limit:])
    ranks = _rank(failure)
    order = sorted((r, i) for i, r in enumerate(ranks) if r is not None)
    keep = sorted(i for _, i in order[:limit])
    return "\n".join(_clip(failure[i].rstrip()) for i in keep)


def _clip(line: str) -> str:
    return line if len(line) <= LINE_CHARS else line[: LINE_CHARS - 1] + "…"


def shown(suspects: list[Suspect], limit: int, chars: int) -> list[Suspect]:
    """The suspects the model sees, of the first `limit`: the best always, then each whose source
    fits in `chars` with those before it (one that does not fit is left out, not the rest)."""
    out: list[Suspect] = []
    for s in suspects[: max(1, limit)]:
        if not out or sum(len(x.source) for x in out) + len(s.source) <= chars:
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
              "error": error_lines(result, defn.limits["error_lines"]), "docstring": ""}
    if defn.format.get("keep_docstring") and any(original_docstring(s.source) for s in many):
        key = "docstring" if len(many) == 1 else "docstring_many"
        fields["docstring"] = defn.prompt.get(key, defn.prompt.get("docstring", ""))
    if len(many) == 1 or "user_many" not in defn.prompt:
        user = defn.prompt["user"].format(**fields, file=many[0].file, code=code(many[0]))
    else:
        blocks = "\n".join(f"From {s.file}:\n```python\n{code(s)}\n```" for s in many)
        user = defn.prompt["user_many"].format(**fields, code=blocks)
    return [{"role": "user", "content": user}]


class Def(NamedTuple):
    """A function the reply defines at its outermost level."""

    name: str
    start: int  # the name's character span in the reply (a tool-decision point)
    end: int
    line: int  # the reply's line (0-based) where the function begins, decorators included


_FENCE = re.compile(r"^```", re.MULTILINE)  # the closing fence (one in a docstring is indented)
_DEF = re.compile(r"^([ \t]*)(?:async[ \t]+)?def[ \t]+(\w+)", re.MULTILINE)


def defs(reply: str) -> list[Def]:
    """The functions the reply defines at its outermost indentation, in order (read from the
    text before a closing fence, so a reply that does not parse still names its choices)."""
    text = _FENCE.split(reply, 1)[0]
    found = list(_DEF.finditer(text))
    top = min((len(m.group(1)) for m in found), default=0)
    lines = text.splitlines()
    out = []
    for m in (m for m in found if len(m.group(1)) == top):
        line = text.count("\n", 0, m.start())
        while line > 0 and lines[line - 1].strip().startswith("@"):
            line -= 1  # its decorators
        out.append(Def(m.group(2), m.start(2), m.end(2), line))
    return out


def rewrites(reply: str, suspects: list[Suspect]) -> tuple[list[Suspect], list[str]]:
    """The shown suspects the reply rewrites, in its order (a name picks the first suspect of
    that name, once), and the names of the functions it defines that match none of them."""
    chosen, ignored = [], []
    for d in defs(reply):
        s = next((s for s in suspects if s.name == d.name), None)
        if s is None:
            ignored.append(d.name)
        elif s not in chosen:
            chosen.append(s)
    return chosen, ignored


def chosen(reply_text: str, suspects: list[Suspect]) -> Suspect | None:
    """The first shown suspect the reply rewrites."""
    return next(iter(rewrites(reply_text, suspects)[0]), None)


def reply_code(text: str, stop_regex: str | None = None) -> str:
    """The code the model wrote: everything before a closing fence (the opening one is prefilled)
    or before the line at which `stop_regex` ended the reply."""
    text = _FENCE.split(text, 1)[0]
    if stop_regex and (m := re.search(stop_regex, text)):
        text = text[: m.start()]
    return re.sub(r"<\|[^|>]*\|>|</?s>|<eos>", "", text).rstrip() + "\n"


def _function_node(tree: ast.Module, name: str):
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            return node
    return None


def docstring_of(node) -> ast.Expr | None:
    """The function's docstring statement, if its body opens with one."""
    first = node.body[0] if node.body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
            and isinstance(first.value.value, str):
        return first
    return None


def _cols(line: str, start: int, end: int | None = None) -> str:
    """`line` from byte column `start` to `end` (ast's offsets count UTF-8 bytes)."""
    return line.encode()[start:end].decode()


def original_docstring(source: str) -> list[str] | None:
    """The docstring of the function `source` (its lines as in the file, indented or not), as
    text lines: the first from the string's opening quote, the others as they are in the file
    (a docstring's continuation lines are its content), the last up to the closing quote. None
    when the function has no docstring or its source does not parse."""
    lines = source.splitlines()
    text = textwrap.dedent(source)
    try:
        tree, shift = ast.parse(text), 0
    except SyntaxError:  # a method whose docstring has a line left of its `def`: dedent is no-op
        try:
            tree, shift = ast.parse("if 1:\n" + source), 1
        except SyntaxError:
            return None
    fns = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    doc = docstring_of(fns[0]) if fns else None
    if doc is None:
        return None
    first, last = doc.lineno - 1 - shift, doc.end_lineno - 1 - shift
    # dedent took the same margin off every line that is not blank (the docstring's first is not)
    margin = 0 if shift else len(lines[first]) - len(text.splitlines()[first])
    if first == last:
        return [_cols(lines[first], doc.col_offset + margin, doc.end_col_offset + margin)]
    return [_cols(lines[first], doc.col_offset + margin), *lines[first + 1 : last],
            _cols(lines[last], 0, doc.end_col_offset + margin)]


class Kept(NamedTuple):
    """The docstring a rewrite keeps: after which line of the reply it goes, and its lines."""

    after: int  # 0-based line of the reply (the `def ...:` line's end; the signature may be long)
    lines: list[str]


def kept_docstring(code: str, suspect: Suspect) -> Kept | None:
    """Where `suspect`'s docstring goes when the reply's function of its name has none: after
    the line that ends its `def ...:` (read with tokenize: a signature may span lines and end in a
    comment). None when the reply writes a docstring (it replaces the old one), the suspect has
    none, the reply does not parse or defines no such function, or the body shares the `def`'s
    line (`def f(x): return x`: nowhere to put it)."""
    lines = original_docstring(suspect.source)
    if lines is None:
        return None
    code = textwrap.dedent(code)
    try:
        node = _function_node(ast.parse(code), suspect.name)
        tokens = list(tokenize.generate_tokens(io.StringIO(code).readline))
    except (SyntaxError, tokenize.TokenError):
        return None
    if node is None or not node.body or docstring_of(node) is not None:
        return None
    end = next(t.start[0] for t in tokens
               if t.type == tokenize.NEWLINE and t.start[0] >= node.lineno)
    return Kept(end - 1, lines) if node.body[0].lineno > end else None


def apply(file_text: str, suspect: Suspect, code: str, *, keep_docstring: bool = False) -> str:
    """The file with `suspect` replaced by the function of the same name in `code`.

    With `keep_docstring`, a function that comes back without a docstring gets the suspect's,
    as it was (`kept_docstring`): its first line at the body's indentation, the rest verbatim.
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
    lines = file_text.splitlines()
    indent = re.match(r"\s*", lines[suspect.start - 1]).group(0)
    new = [indent + ln if ln.strip() else ln  # textwrap.indent's rule, line by line
           for ln in code.splitlines()[start - 1 : node.end_lineno]]
    if keep_docstring and (kept := kept_docstring(code, suspect)):
        body = re.match(r"[ \t]*", new[node.body[0].lineno - start]).group(0)
        at = kept.after + 1 - (start - 1)  # the line after the signature's end, in `new`
        new[at:at] = [body + kept.lines[0], *kept.lines[1:]]
    out = "\n".join([*lines[: suspect.start - 1], *new, *lines[suspect.end :]])
    out += "\n" if file_text.endswith("\n") else ""
    try:
        ast.parse(out)
    except SyntaxError as err:
        raise ValueError(f"the patched file does not parse: {err.msg} (line {err.lineno})") from None
    return out

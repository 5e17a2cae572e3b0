"""Cut weights that know what a token is: code, docstring/string, comment, or a defined name.

A reply's tokens are classed with Python's `tokenize` on the reply text (tolerant of the
incomplete code a reply can be: what tokenizes before an error keeps its class, the rest is code):

  string   a string literal, docstrings included (prose the tests cannot see);
  comment  a `#` comment;
  name     the name a `def` or `class` defines (the patch protocol's tool decision: which
           function the reply rewrites);
  code     everything else (operators, names, numbers, indentation).

`scale(texts, ...)` turns the classes into multipliers of the cut weight w_t. The classes are a
function of the sequence alone, so c(t | x') is computed on the proposal's own text exactly like
c(t | x), and the MH correction stays exact (cuts.py).
"""

from __future__ import annotations

import io
import tokenize
from collections.abc import Sequence
from typing import Literal

Kind = Literal["code", "string", "comment", "name"]
_STRINGS = {tokenize.STRING} | {getattr(tokenize, n) for n in ("FSTRING_START", "FSTRING_MIDDLE",
                                                              "FSTRING_END") if hasattr(tokenize, n)}


def _spans(text: str) -> list[tuple[int, int, Kind]]:
    """(start, end, kind) character spans of the non-code tokens of `text`."""
    starts = [0]
    for line in text.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))

    def at(row: int, col: int) -> int:
        return starts[row - 1] + col if row - 1 < len(starts) else len(text)

    out: list[tuple[int, int, Kind]] = []
    previous = None
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            kind: Kind | None = None
            if tok.type in _STRINGS:
                kind = "string"
            elif tok.type == tokenize.COMMENT:
                kind = "comment"
            elif tok.type == tokenize.NAME and previous in ("def", "class"):
                kind = "name"
            if kind:
                out.append((at(*tok.start), at(*tok.end), kind))
            if tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
                previous = tok.string
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass  # an unfinished reply: the rest counts as code
    return out


def kinds(texts: Sequence[str]) -> list[Kind]:
    """The class of each token (by its first non-blank character; blank tokens are code)."""
    text = "".join(texts)
    spans = _spans(text)
    out: list[Kind] = []
    pos, i = 0, 0
    for piece in texts:
        lead = len(piece) - len(piece.lstrip())
        c = pos + lead
        while i < len(spans) and spans[i][1] <= c:
            i += 1
        inside = i < len(spans) and spans[i][0] <= c < spans[i][1] and lead < len(piece)
        out.append(spans[i][2] if inside else "code")
        pos += len(piece)
    return out


def scale(texts: Sequence[str], *, prose: float = 0.1, name: float = 4.0) -> list[float]:
    """Multipliers of the cut weight: strings and comments x prose, defined names x name."""
    factor = {"code": 1.0, "string": prose, "comment": prose, "name": name}
    return [factor[k] for k in kinds(texts)]

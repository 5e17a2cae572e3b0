"""Text from models, repositories and test output, made safe to show: every character visible,
none acting on the terminal.

A model's code can hold ESC sequences (`ESC[1A ESC[2K` erases the line above), carriage returns,
backspaces or bidirectional overrides ("Trojan Source") that hide what a reviewer reads. Each
such character is written as an escape in the text itself (`\\x1b`, `\\r`, `\\u202e`), as
`git diff` through a pager shows ESC as `ESC`/`^[`; newlines and tabs stay as they are.
"""

from __future__ import annotations

import re

from rich.text import Text

# C0 controls but \t and \n, DEL, C1 controls; bidi embeddings, overrides, isolates and marks;
# zero-width characters; the line and paragraph separators; lone surrogates (broken byte pairs)
_HIDDEN = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff"
    "\ud800-\udfff]"
)
_NAMED = {"\r": "\\r", "\x0b": "\\v", "\x0c": "\\f", "\x08": "\\b", "\x00": "\\0"}


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str) -> str:
    """`text` with every control, bidi or invisible character written as an escape."""
    return _HIDDEN.sub(lambda m: _escape(m.group()), text)


def has_hidden(text: str) -> bool:
    """Whether `text` holds a character `visible` would escape."""
    return _HIDDEN.search(text) is not None


def visible_text(text: str, style: str = "", escape_style: str = "reverse") -> Text:
    """A rich Text of `text` made visible, escapes styled so a reader notices them; rich markup
    in `text` stays text."""
    out, at = Text(style=style), 0
    for m in _HIDDEN.finditer(text):
        out.append(text[at : m.start()])
        out.append(_escape(m.group()), escape_style)
        at = m.end()
    out.append(text[at:])
    return out

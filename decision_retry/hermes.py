"""Tool calling in text: the Hermes format Qwen2.5 was trained on, rendered and parsed.

The model sees the tools in its system message and answers with one JSON object per call:

    <tool_call>
    {"name": "read_file", "arguments": {"path": "calc.py"}}
    </tool_call>

One parser for the LangChain chat model (langchain/toolcalls.py) and the agent's tools protocol
(agent/actions.py). It also returns where each value sits in the reply, so the tokens that chose
the tool and its arguments can be found (decision points). Standard library only: the agent does
not need LangChain.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from json.decoder import scanstring

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_WS = re.compile(r"\s*")
_DECODER = json.JSONDecoder(strict=False)  # a raw newline inside a string is read as one

TOOLS_HEADER = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
TOOLS_FOOTER = (
    "</tools>\n\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)


def tools_text(schemas: Sequence[dict]) -> str:
    """The system-message block that lists the tools (Qwen2.5's chat template, word for word)."""
    lines = [json.dumps(s, ensure_ascii=False) for s in schemas]
    return "\n".join([TOOLS_HEADER, *lines, TOOLS_FOOTER])


def call_text(name: str, arguments: dict) -> str:
    """One call as the model writes it."""
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{OPEN}\n{body}\n{CLOSE}"


@dataclass(frozen=True)
class Call:
    """One `<tool_call>` block of a reply: valid (`name` set) or not (`error` set).

    `spans` maps "name" and each top-level argument to the character span of its value in the
    reply (a string's span leaves out its quotes)."""

    body: str
    name: str | None = None
    arguments: dict = field(default_factory=dict)
    error: str | None = None
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)
    tagged: bool = True  # False: found by `loose` parsing, without the <tool_call> tags


def parse(text: str, *, loose: bool = False) -> tuple[str, list[Call]]:
    """(content before the first call, the calls in order) of a reply; never raises.

    A block that is not a JSON object with a string "name" and an object "arguments" (or
    "parameters") is a Call with its `error`. An unclosed last block is read to the end.
    `loose`: a reply with no <tool_call> tag may hold its call untagged, the first JSON object
    with "name" and "arguments" keys, bare or in a ```json block: how Qwen2.5-Coder-1.5B writes
    its calls (docs/notebook/2026-12-07-tools-protocol.md)."""
    start = text.find(OPEN)
    if start < 0:
        found = _untagged(text) if loose else None
        return (text, []) if found is None else (text[: found[0]].rstrip(), [found[1]])
    calls = []
    for match in _CALL.finditer(text, start):
        calls.append(_call(match.group(1), match.start(1)))
    return text[:start].rstrip(), calls


def _call(body: str, at: int, tagged: bool = True) -> Call:
    """The call whose JSON is `body`, found at offset `at` of the reply."""
    try:
        data = _DECODER.decode(body)
        if not isinstance(data, dict):
            raise TypeError("a tool call is a JSON object")
        name, args = data["name"], data.get("arguments", data.get("parameters", {}))
        if not isinstance(name, str) or not isinstance(args, dict):
            raise TypeError("name must be a string and arguments an object")
    except (ValueError, KeyError, TypeError) as err:
        error = f"missing {err}" if isinstance(err, KeyError) else str(err)
        return Call(body, error=error, tagged=tagged)
    return Call(body, name, args, spans=_value_spans(body, at), tagged=tagged)


def _untagged(text: str) -> tuple[int, Call] | None:
    """(offset, call) of the first JSON object in `text` with "name" and "arguments" keys."""
    for m in re.finditer(r"\{", text):
        try:
            data, end = _DECODER.raw_decode(text, m.start())
        except ValueError:
            continue
        if isinstance(data, dict) and "name" in data and ("arguments" in data
                                                          or "parameters" in data):
            return m.start(), _call(text[m.start():end], m.start(), tagged=False)
    return None


def _value_spans(body: str, offset: int) -> dict[str, tuple[int, int]]:
    """Spans (shifted by `offset`) of "name" and of each argument's value in a call's JSON."""
    spans: dict[str, tuple[int, int]] = {}
    try:
        for key, i, j in _members(body, _WS.match(body).end()):
            if key == "name":
                spans["name"] = _inner(body, i, j, offset)
            elif key in ("arguments", "parameters") and body[i] == "{":
                for arg, a, b in _members(body, i):
                    spans.setdefault(arg, _inner(body, a, b, offset))
    except (ValueError, IndexError):  # cannot happen for text json accepted; spans are optional
        pass
    return spans


def _inner(body: str, i: int, j: int, offset: int) -> tuple[int, int]:
    if body[i] == '"':  # a string: its characters, not its quotes
        i, j = i + 1, j - 1
    return offset + i, offset + j


def _members(s: str, i: int):
    """(key, value start, value end) of each member of the JSON object at s[i] == "{"."""
    if s[i] != "{":
        raise ValueError("not an object")
    i = _WS.match(s, i + 1).end()
    if s[i] == "}":
        return
    while True:
        if s[i] != '"':
            raise ValueError("a key is a string")
        key, i = scanstring(s, i + 1, False)
        i = _WS.match(s, i).end()
        if s[i] != ":":
            raise ValueError("':' after a key")
        i = _WS.match(s, i + 1).end()
        _, j = _DECODER.raw_decode(s, i)
        yield key, i, j
        i = _WS.match(s, j).end()
        if s[i] == "}":
            return
        i = _WS.match(s, i + 1).end()  # past the ","


def held_back(text: str) -> int:
    """How many trailing characters of streamed text might start a tool call (not sent yet)."""
    if OPEN in text:
        return len(text) - text.find(OPEN)
    for n in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if OPEN.startswith(text[-n:]):
            return n
    return 0

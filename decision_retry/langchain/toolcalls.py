"""Tool calling in text: the Hermes format Qwen2.5 was trained on, rendered and parsed by us.

The model sees the tools in its system message and answers with one JSON object per call:

    <tool_call>
    {"name": "write_file", "arguments": {"path": "calc.py", "text": "..."}}
    </tool_call>

Tool results go back as a user turn wrapped in <tool_response> (what Qwen2.5's chat template
does with role "tool"). We render this into plain {"role", "content"} messages ourselves, so the
format works through any chat template (SmolLM2's, Qwen's, none for the scripted model) and any
engine that encodes a chat; the system text is Qwen2.5's own, word for word.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.utils.function_calling import convert_to_openai_tool

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)

TOOLS_HEADER = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
TOOLS_FOOTER = (
    "</tools>\n\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)


def tool_schemas(tools: Sequence[Any]) -> list[dict]:
    """LangChain tools (BaseTool, functions, dicts) as OpenAI-style function schemas."""
    return [convert_to_openai_tool(t) for t in tools]


def tools_text(schemas: Sequence[dict]) -> str:
    """The system-message block that lists the tools (Qwen2.5's wording)."""
    lines = [json.dumps(s, ensure_ascii=False) for s in schemas]
    return "\n".join([TOOLS_HEADER, *lines, TOOLS_FOOTER])


def _call_text(call: dict) -> str:
    body = json.dumps({"name": call["name"], "arguments": call.get("args", {})}, ensure_ascii=False)
    return f"{OPEN}\n{body}\n{CLOSE}"


def render(messages: Sequence[BaseMessage], schemas: Sequence[dict] = ()) -> list[dict]:
    """LangChain messages (and the bound tools) as plain chat messages for the chat template."""
    roles = {"human": "user", "ai": "assistant", "system": "system"}
    out: list[dict] = []
    for m in messages:
        if isinstance(m, ToolMessage):
            text = f"<tool_response>\n{m.text}\n</tool_response>"
            if out and out[-1]["role"] == "user" and out[-1]["content"].endswith("</tool_response>"):
                out[-1]["content"] += "\n" + text  # several results of one turn: one user turn
            else:
                out.append({"role": "user", "content": text})
            continue
        content = m.text
        if isinstance(m, AIMessage) and m.tool_calls:
            content = "\n".join(filter(None, [content, *map(_call_text, m.tool_calls)]))
        out.append({"role": roles.get(m.type, "user"), "content": content})
    if schemas:
        block = tools_text(schemas)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{block}"}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out


def parse(text: str) -> tuple[str, list[dict], list[dict]]:
    """(content before the first call, tool calls, invalid calls) of a reply.

    A call is {"name", "args", "id", "type": "tool_call"}; a block that is not a JSON object with
    a name becomes an invalid tool call (LangChain reports it back to the model).
    """
    start = text.find(OPEN)
    if start < 0:
        return text, [], []
    content = text[:start].rstrip()
    calls, invalid = [], []
    for match in _CALL.finditer(text, start):
        body, call_id = match.group(1).strip(), f"call_{uuid.uuid4().hex[:12]}"
        try:
            data = json.loads(body)
            name, args = data["name"], data.get("arguments", data.get("parameters", {}))
            if not isinstance(name, str) or not isinstance(args, dict):
                raise TypeError("name must be a string and arguments an object")
        except (ValueError, KeyError, TypeError) as err:
            invalid.append({"name": None, "args": body, "id": call_id, "error": str(err),
                            "type": "invalid_tool_call"})
            continue
        calls.append({"name": name, "args": args, "id": call_id, "type": "tool_call"})
    return content, calls, invalid


def held_back(text: str) -> int:
    """How many trailing characters of streamed text might start a tool call (not sent yet)."""
    if OPEN in text:
        return len(text) - text.find(OPEN)
    for n in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if OPEN.startswith(text[-n:]):
            return n
    return 0

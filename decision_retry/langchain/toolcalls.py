"""Tool calling in text: the Hermes format Qwen2.5 was trained on, rendered and parsed by us.

The model sees the tools in its system message and answers with one JSON object per call:

    <tool_call>
    {"name": "write_file", "arguments": {"path": "calc.py", "text": "..."}}
    </tool_call>

Tool results go back as a user turn wrapped in <tool_response> (what Qwen2.5's chat template
does with role "tool"). We render this into plain {"role", "content"} messages ourselves, so the
format works through any chat template (SmolLM2's, Qwen's, none for the scripted model) and any
engine that encodes a chat; the system text is Qwen2.5's own, word for word.
The format itself (the tools block, the parser) is decision_retry/hermes.py, shared with the
agent's tools protocol.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.utils.function_calling import convert_to_openai_tool

from decision_retry import hermes
from decision_retry.hermes import CLOSE, OPEN, held_back, tools_text

__all__ = ["CLOSE", "OPEN", "held_back", "parse", "render", "tool_schemas", "tools_text"]


def tool_schemas(tools: Sequence[Any]) -> list[dict]:
    """LangChain tools (BaseTool, functions, dicts) as OpenAI-style function schemas."""
    return [convert_to_openai_tool(t) for t in tools]


def _call_text(call: dict) -> str:
    return hermes.call_text(call["name"], call.get("args", {}))


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
    """(content before the first call, tool calls, invalid calls) of a reply (hermes.parse).

    A call is {"name", "args", "id", "type": "tool_call"}; a block that is not a JSON object with
    a name becomes an invalid tool call (LangChain reports it back to the model).
    """
    content, found = hermes.parse(text)
    calls, invalid = [], []
    for c in found:
        call_id = f"call_{uuid.uuid4().hex[:12]}"
        if c.name is None:
            invalid.append({"name": None, "args": c.body, "id": call_id, "error": c.error,
                            "type": "invalid_tool_call"})
        else:
            calls.append({"name": c.name, "args": c.arguments, "id": call_id, "type": "tool_call"})
    return content, calls, invalid

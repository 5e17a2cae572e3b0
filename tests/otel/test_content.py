"""GenAI content is opt-in: without OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT no prompt,
reply, tool argument, tool result, test output or token text leaves the process."""

from __future__ import annotations

import json

import pytest

from decision_retry.otel import SpanListener
from decision_retry.otel.attributes import CAPTURE_ENV
from decision_retry.trace import Recorder
from tests.otel.receiver import in_memory
from tests.trace.sample_run import record_live

CONTENT_KEYS = {
    "gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.tool.call.arguments",
    "gen_ai.tool.call.result", "decision_retry.decision.token", "decision_retry.decision.choice",
    "decision_retry.decision.alternatives",
}


def spans_with(monkeypatch, value):
    if value is None:
        monkeypatch.delenv(CAPTURE_ENV, raising=False)
    else:
        monkeypatch.setenv(CAPTURE_ENV, value)
    provider, exporter = in_memory()
    recorded = record_live(Recorder(None, listeners=[SpanListener(provider)]))
    return recorded, list(exporter.get_finished_spans())


@pytest.mark.parametrize("value", [None, "false", "NO_CONTENT", "EVENT_ONLY"])
def test_no_content_unless_asked(monkeypatch, value):
    recorded, spans = spans_with(monkeypatch, value)
    keys = {k for s in spans for k in s.attributes}
    assert not keys & CONTENT_KEYS
    texts = {str(v) for s in spans for v in s.attributes.values()}
    assert recorded["t01"].text not in texts and "x" * 100 not in "".join(texts)
    # the numbers stay: entropies, positions, probabilities, counts, the cut
    assert {"decision_retry.decision.entropy", "decision_retry.decision.alternative_probs",
            "decision_retry.cut.position", "gen_ai.usage.output_tokens"} <= keys
    assert "gen_ai.system" not in keys and "gen_ai.provider.name" in keys


@pytest.mark.parametrize("value", ["true", "SPAN_ONLY", "span_and_event"])
def test_content_on_spans_when_asked(monkeypatch, value):
    recorded, spans = spans_with(monkeypatch, value)
    keys = {k for s in spans for k in s.attributes}
    assert CONTENT_KEYS - {"gen_ai.input.messages", "decision_retry.decision.choice"} <= keys
    chat = next(s for s in spans if s.name.startswith("chat ")
                and s.attributes["decision_retry.turn.id"] == recorded["t01"].id)
    (out,) = json.loads(chat.attributes["gen_ai.output.messages"])
    assert out["role"] == "assistant" and out["parts"] == [
        {"type": "text", "content": recorded["t01"].text}]

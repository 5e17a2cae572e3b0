"""decision-retry in LangChain (docs/langchain.md); needs the extra: pip install 'decision-retry[langchain]'.

    model = ChatDecisionRetry(engine=load_lm("smollm2-135m"))        # any LangChain app
    agent = create_agent(model, tools, middleware=[
        DecisionRetryMiddleware(test_command="python -m pytest -q", repository=workspace)])

`ChatDecisionRetry` is a chat model over our engines with exact per-token logp, logq, entropy
and top alternatives in `response_metadata`, Hermes-style tool calls and streaming.
`DecisionRetryMiddleware` records every model call, runs the verifier when the agent finishes,
and on failure rewinds conversation and repository to a token and remakes the call from there,
with `decision-retry fix`'s chain and defaults (docs/langchain.md).
"""

from decision_retry.langchain.chat_model import ChatDecisionRetry
from decision_retry.langchain.middleware import DecisionRetryAgentState, DecisionRetryMiddleware
from decision_retry.langchain.scripted_turns import scripted_turns_lm
from decision_retry.langgraph.model import hide_tool_output

__all__ = [
    "ChatDecisionRetry",
    "DecisionRetryAgentState",
    "DecisionRetryMiddleware",
    "hide_tool_output",
    "scripted_turns_lm",
]

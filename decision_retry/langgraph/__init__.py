"""decision-retry inside your own LangGraph graph (docs/langgraph.md).

    class State(MessagesState, DecisionRetryState): ...        # adds the "decision_retry" key
    model = model_node(lm, retry=cfg)                          # records tokens and entropies
    builder.add_node("model", model)
    builder.add_node("rewind", rewind_node(verifier=my_check, model=model))  # after your verifier
    builder.add_conditional_edges("rewind", route_after_rewind, {"passed": ..., END: END})
    graph = builder.compile(checkpointer=InMemorySaver())      # or SqliteSaver on disk
    final = invoke(graph, inputs, {"configurable": {"thread_id": "t1"}})

A failed attempt becomes a fork in the thread's history at the checkpoint before the model call
holding the chosen cut; the model remakes the call from the cut token, keeping the tokens before it.
The chain is the one `fix` runs (samplers/chain.py, through chainstate.py), with `fix`'s defaults
resolved for the model: local moves, no null moves, delayed acceptance, surprise cuts with a
second context (`model_node(..., nobody=...)`); given the model node, the rewind node scores a
reply only where the chain reads it, as `fix` does.
"""

from decision_retry.langgraph.model import ModelNode, RewindError, hide_tool_output, model_node
from decision_retry.langgraph.rewind import (
    RewindNode,
    attempts,
    fork_point,
    invoke,
    rewind_node,
    route_after_rewind,
)
from decision_retry.langgraph.state import KEY, DecisionRetryState, merge, progress, tokens_of

__all__ = [
    "KEY",
    "DecisionRetryState",
    "ModelNode",
    "RewindError",
    "RewindNode",
    "attempts",
    "fork_point",
    "hide_tool_output",
    "invoke",
    "merge",
    "model_node",
    "progress",
    "rewind_node",
    "route_after_rewind",
    "tokens_of",
]

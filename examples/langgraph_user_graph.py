"""A user's own LangGraph graph gains decision-retry in a few lines (docs/langgraph.md).

It runs in seconds on the scripted model that ships with decision-retry: a stand-in that writes
a small function and hesitates at two tokens, exactly like a real model's entropy spikes.
For the embedded SmolLM2-135M use `lm = load_lm()` (from decision_retry.loading) instead.
"""

from collections import Counter
from typing import Annotated

from langchain_core.messages import HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

from decision_retry.langgraph import (
    DecisionRetryState,
    attempts,
    invoke,
    model_node,
    rewind_node,
    route_after_rewind,
)
from decision_retry.testing import scripted_lm


# 1) The user's graph: their own state, their own tool, their own verifier.
class State(DecisionRetryState):  # DecisionRetryState adds one key, "decision_retry"
    messages: Annotated[list, add_messages]
    results: dict
    answer: str


def run_code(state: State) -> dict:
    """The tool: define the function the model wrote and call it on a few ages."""
    namespace: dict = {}
    try:
        exec(state["messages"][-1].content, namespace)
        return {"results": {age: namespace["is_adult"](age) for age in (17, 18, 30)}}
    except Exception as err:  # the model wrote something that does not run
        return {"results": {"error": repr(err)}}


def tests_pass(state: State) -> bool:
    """The verifier: adults are 18 or older."""
    return state["results"] == {17: False, 18: True, 30: True}


def report(state: State) -> dict:
    return {"answer": state["messages"][-1].content}


# 2) A local model. This one is scripted: two uncertain tokens, the rest written with certainty.
lm = scripted_lm([
    "def is_adult(age: int) -> bool:\n    # ",
    {"choice": {"adults are": 0.7, "an adult is": 0.3}},
    " 18 or older\n    return age ",
    {"choice": {">": 0.4, ">=": 0.35, "==": 0.25}},
    " 18\n",
])

# 3) decision-retry: the model node, the rewind node after the verifier, and its router. They
#    run `decision-retry fix`'s default (local moves, no null moves, delayed acceptance); given
#    the model node, the rewind node scores a reply only where the chain reads it, as fix does.
builder = StateGraph(State)
model = model_node(lm, seed=0)
builder.add_node("model", model)
builder.add_node("run_code", run_code)
builder.add_node("rewind", rewind_node(verifier=tests_pass, model=model, max_attempts=8))
builder.add_node("report", report)
builder.add_edge(START, "model")
builder.add_edge("model", "run_code")
builder.add_edge("run_code", "rewind")
builder.add_conditional_edges("rewind", route_after_rewind, {"passed": "report", END: END})
builder.add_edge("report", END)
graph = builder.compile(checkpointer=InMemorySaver())

config = {"configurable": {"thread_id": "is-adult"}}
final = invoke(graph, {"messages": [HumanMessage("Write is_adult(age).")]}, config)

# 4) What happened: every attempt, where it was cut, and the fork in the checkpoint history.
for a in attempts(graph, config):
    cut = a["cut"]  # where this attempt was cut from the chain (None: a fresh attempt)
    where = f"{cut['move']} move from {cut['token']!r} (entropy {cut['entropy']:.2f})" \
        if cut else "fresh"
    print(f"attempt {a['attempt']}: {where} -> {a['status']}")
    print("   " + a["texts"][-1].strip().splitlines()[-1].strip())
history = list(graph.get_state_history(config))
parents = [s.parent_config["configurable"]["checkpoint_id"] for s in history if s.parent_config]
children = Counter(parents)
print(f"{len(history)} checkpoints, {sum(n > 1 for n in children.values())} fork point(s)")
print("status:", final["decision_retry"]["status"])
print(final.get("answer", "no passing answer"))

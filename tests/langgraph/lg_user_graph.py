"""A user-shaped LangGraph graph (not our agent): their state, their tool, their verifier."""

from __future__ import annotations

import operator
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

from langchain_core.messages import HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

from decision_retry.langgraph import (
    DecisionRetryState,
    model_node,
    progress,
    rewind_node,
    route_after_rewind,
)
from decision_retry.samplers.chain import RetryConfig

# Two uncertain tokens: the comment (H = 0.61 nats) and the operator (H = 1.0805 nats, the highest).
SCRIPT = [
    "def is_adult(age: int) -> bool:\n    # ",
    {"choice": {"adults are": 0.7, "an adult is": 0.3}},
    " 18 or older\n    return age ",
    {"choice": {">": 0.4, ">=": 0.35, "==": 0.25}},
    " 18\n",
]
OPERATOR = 3  # token position of the operator choice in the scripted turn
QUESTION = "Write is_adult(age)."


class UserState(DecisionRetryState):
    messages: Annotated[list, add_messages]
    results: dict
    tool_runs: int


class DictState(DecisionRetryState):
    messages: Annotated[list, operator.add]
    results: dict
    passed: bool


def code_of(message: Any) -> str:
    return message["content"] if isinstance(message, dict) else message.content


def run_code(state: dict) -> dict:
    """The user's tool: define the function the model wrote and call it."""
    namespace: dict = {}
    try:
        exec(code_of(state["messages"][-1]), namespace)  # noqa: S102 - the user's tool runs code
        results = {age: namespace["is_adult"](age) for age in (17, 18, 30)}
    except Exception as err:  # noqa: BLE001 - any failure is a failed check
        results = {"error": repr(err)}
    return {"results": results, "tool_runs": state.get("tool_runs", 0) + 1}


def tests_pass(state: dict) -> bool:
    """The user's verifier."""
    return state["results"] == {17: False, 18: True, 30: True}


def check_node(state: dict) -> dict:
    """A verifier that is a node of the user's: it writes pass/fail into the state."""
    return {"passed": tests_pass(state)}


ARGMAX = RetryConfig(argmax=True)  # the argmax heuristic: a deterministic cut, easy to follow


def build(lm, *, saver=None, seed=0, retry=ARGMAX, recorder=None, calls=1,
          verdict_key=None, state=UserState, workspace=None, kv_states=8, max_attempts=12,
          nobody=None, verifier=None, sampling=None, linked=True):
    """The user's graph with decision-retry: model -> run_code [-> model -> run_code] -> rewind.

    nobody: the second context (model_node's), verifier: instead of `tests_pass`, sampling: the
    model node's; linked: the rewind node is given the model node (it scores what the chain
    reads, where it reads it; False: the model node scores every reply when it writes it).
    Returns (compiled graph, model node, rewind node).
    """
    model = model_node(lm, retry=retry, recorder=recorder, seed=seed, workspace=workspace,
                       kv_states=kv_states, nobody=nobody, sampling=sampling)
    tests_pass_ = verifier or tests_pass
    link = {"model": model} if linked else {}
    if verdict_key:
        rewind = rewind_node(verdict_key=verdict_key, retry=retry, recorder=recorder,
                             max_attempts=max_attempts, **link)
    else:
        rewind = rewind_node(verifier=tests_pass_, retry=retry, recorder=recorder,
                             max_attempts=max_attempts, **link)
    g = StateGraph(state)
    g.add_node("model", model)
    g.add_node("run_code", run_code if workspace is None else workspace_tool(workspace))
    g.add_node("rewind", rewind)
    g.add_node("done", lambda s: {})
    g.add_edge(START, "model")
    g.add_edge("model", "run_code")
    last = "run_code"
    if calls == 2:  # a second model call in the same attempt
        g.add_node("model_again", model)
        g.add_node("run_again", run_code)
        g.add_edge("run_code", "model_again")
        g.add_edge("model_again", "run_again")
        last = "run_again"
    if verdict_key:
        g.add_node("check", check_node)
        g.add_edge(last, "check")
        last = "check"
    g.add_edge(last, "rewind")
    g.add_conditional_edges("rewind", route_after_rewind, {"passed": "done", END: END})
    g.add_edge("done", END)
    return g.compile(checkpointer=saver or InMemorySaver()), model, rewind


def workspace_tool(ws):
    """The user's tool when the graph edits files: write the function, log the run, import it."""

    def run_in_workspace(state: dict) -> dict:
        ws.write_file("adult.py", code_of(state["messages"][-1]))
        log = ws.root / "log.txt"
        log.write_text((log.read_text() if log.exists() else "") + "ran\n")
        namespace: dict = {}
        exec(Path(ws.root / "adult.py").read_text(), namespace)  # noqa: S102
        return {"results": {age: namespace["is_adult"](age) for age in (17, 18, 30)}}

    return run_in_workspace


def question(as_dict: bool = False) -> dict:
    if as_dict:
        return {"messages": [{"role": "user", "content": QUESTION}]}
    return {"messages": [HumanMessage(QUESTION)]}


def decided(graph, config) -> list[dict]:
    """Every decided attempt of the thread, in order: its decision_retry value right after the
    rewind node ran (turns, cut, span, the chain after the decision, the steps so far)."""
    found = {}
    for snap in graph.get_state_history(config):
        dr = progress(snap.values)
        if dr.get("status") in ("passed", "rewind", "exhausted") and dr.get("turns"):
            found[dr["attempts"]] = dr
    return [found[n] for n in sorted(found)]


def fork_points(graph, config) -> list[str]:
    """Checkpoint ids with more than one child in the thread's history."""
    history = list(graph.get_state_history(config))
    children = Counter(
        s.parent_config["configurable"]["checkpoint_id"] for s in history if s.parent_config
    )
    return [cid for cid, n in children.items() if n > 1]

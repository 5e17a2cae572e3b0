"""What the LangGraph nodes score, before and after they score as `fix` does (design.md §3).

A user-shaped graph (model -> check -> rewind) whose check never passes, so the chain decides
`--attempts - 1` times, on a toy model whose next-token table depends on the prompt (the second
context really differs) and on the scripted model. "former": every reply scored exactly when it
is written (the rewind node without the model node, `nobody_scoring="exact"`); "now": the rewind
node given the model node (scored where the chain reads it, the no-body pass in bulk). Prints a
table (score calls, positions teacher-forced, stage-1 rejections, runs whose steps are identical
to the former's) and writes JSON.

    python benchmarks/integration_scoring.py --seeds 20 --attempts 8 --json /tmp/scoring.json
"""

from __future__ import annotations

import argparse
import json
import operator
from typing import Annotated

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph

from decision_retry.choices import DEFAULT_RUN
from decision_retry.engines.scripted import ScriptedBackend
from decision_retry.engines.toy import TableBackend
from decision_retry.langgraph import (
    KEY,
    DecisionRetryState,
    invoke,
    model_node,
    rewind_node,
    route_after_rewind,
)
from decision_retry.lm import LM, Sampling
from decision_retry.samplers.chain import RetryConfig

SCRIPT = ["def is_adult(age: int) -> bool:\n    # ", {"choice": {"adults are": 0.7,
          "an adult is": 0.3}}, " 18 or older\n    return age ",
          {"choice": {">": 0.4, ">=": 0.35, "==": 0.25}}, " 18\n"]


class State(DecisionRetryState):
    messages: Annotated[list, operator.add]


class Counting(LM):
    """An engine that counts its `score` calls and the positions they teacher-force."""

    def __init__(self, backend, name: str) -> None:
        super().__init__(backend, name=name)
        self.calls, self.positions = 0, 0

    def score(self, state, ids, sampling_, *, exact=True):
        self.calls, self.positions = self.calls + 1, self.positions + len(ids)
        return super().score(state, ids, sampling_, exact=exact)


def engine(kind: str) -> tuple[Counting, Sampling | None]:
    if kind == "table":  # 4 tokens, prompt-dependent tables, replies of up to 6 tokens
        return (Counting(TableBackend(4, seed=35, sharpness=1.5, spread=1.0), "table"),
                Sampling(temperature=1.0, max_new_tokens=6))
    return Counting(ScriptedBackend(SCRIPT), "scripted"), None


def one(kind: str, move: str, seed: int, attempts: int, now: bool) -> dict:
    lm, sampling = engine(kind)
    retry = RetryConfig(**{**DEFAULT_RUN, "move": move, "span": {"opening": None},
                           **({} if now else {"nobody_scoring": "exact"})})
    model = model_node(lm, retry=retry, seed=seed, sampling=sampling,
                       nobody=lambda s: "c" if kind == "table" else "Write is_adult.")
    rewind = rewind_node(verifier=lambda s: False, max_attempts=attempts,
                         **({"model": model} if now else {}))
    g = StateGraph(State)
    g.add_node("model", model)
    g.add_node("rewind", rewind)
    g.add_edge(START, "model")
    g.add_edge("model", "rewind")
    g.add_conditional_edges("rewind", route_after_rewind, {"passed": END, END: END})
    graph = g.compile(checkpointer=InMemorySaver())
    dr = invoke(graph, {"messages": [{"role": "user", "content": "ab"}]},
                {"configurable": {"thread_id": f"{kind}-{move}-{seed}-{now}"}})[KEY]
    return {"calls": lm.calls, "positions": lm.positions, "prefilled": dr["prefilled"],
            "stage1": sum(s["stage"] == 1 for s in dr["steps"]), "steps": dr["steps"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--attempts", type=int, default=8)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = []
    print("| model | move | path | score calls | positions | stage-1 rejections | same steps |")
    print("|---|---|---|---|---|---|---|")
    for kind in ("table", "scripted"):
        for move in ("suffix", "local"):
            runs = {now: [one(kind, move, s, args.attempts, now) for s in range(args.seeds)]
                    for now in (False, True)}
            same = sum(a["steps"] == b["steps"] for a, b in zip(runs[False], runs[True]))
            for now, label in ((False, "former"), (True, "now")):
                r = runs[now]
                row = {"model": kind, "move": move, "path": label,
                       "score_calls": sum(x["calls"] for x in r),
                       "positions": sum(x["positions"] for x in r),
                       "stage1": sum(x["stage1"] for x in r), "same_steps": same,
                       "runs": args.seeds}
                rows.append(row)
                print(f"| {kind} | {move} | {label} | {row['score_calls']} | {row['positions']} "
                      f"| {row['stage1']} | {same}/{args.seeds} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

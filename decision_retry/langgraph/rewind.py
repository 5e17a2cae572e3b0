"""The rewind node, its router, and the time travel that turns a failed attempt into a fork.

The rewind node runs after the user's verifier. It scores the attempt, makes the MH decision
against the chain's current attempt and on failure picks the next cut (`Chain.decide` and
`Chain.next_cut`, samplers/chain.py, through chainstate.py: the code `fix` runs, with the
settings the model node resolved and recorded in the state) and sets status "rewind". The
graph run then ends; `invoke` (or `fork_point` for a hand-written loop) finds the checkpoint
before the model call holding the cut and invokes the graph there with `Command(update=...)`:
a new branch in the thread's history, so the whole graph state as it was before that call comes
back, and the model node remakes the call by the cut's move (suffix, local or restart).

Given the model node (`rewind_node(model=...)`), the rewind node scores what the chain reads
where it reads it, as `fix` does (chainstate.Completion, samplers/deferred.py): a proposal whose
first stage accepts, and an attempt the next cut is drawn from. The model node then writes
replies without that scoring.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from decision_retry.errors import BadInput
from decision_retry.langgraph import chainstate
from decision_retry.langgraph.model import (
    DEFAULT_RETRY,
    RewindError,
    check_strategy,
    derived_generator,
)
from decision_retry.langgraph.state import KEY, progress, tokens_of
from decision_retry.samplers.chain import RetryConfig
from decision_retry.samplers.mh import StepRecord


class RewindNode:
    """Scores an attempt, decides MH acceptance and picks the next cut (built by `rewind_node`)."""

    def __init__(
        self,
        *,
        verifier: Callable[[dict], bool | float] | None = None,
        verdict_key: str | None = None,
        retry: RetryConfig | None = None,
        recorder: Any = None,
        max_attempts: int = 8,
        budget_tokens: int | None = None,
        seed: int = 0,
        model: Any = None,
    ) -> None:
        if (verifier is None) == (verdict_key is None):
            raise BadInput("rewind_node needs one of verifier=callable or verdict_key='key'")
        if max_attempts < 1:
            raise BadInput(f"max_attempts={max_attempts}: give 1 or more")
        if budget_tokens is not None and budget_tokens < 1:
            raise BadInput(f"budget_tokens={budget_tokens}: give 1 or more, or None for no limit")
        if retry is not None:
            check_strategy(retry)
        self.verifier = verifier
        self.verdict_key = verdict_key
        self.retry = retry
        self.recorder = recorder
        self.max_attempts = max_attempts
        self.budget_tokens = budget_tokens
        self.seed = seed
        self.model = model
        if model is not None:  # the model node leaves the scoring a delayed decision reads to us
            if not hasattr(model, "complete"):
                raise BadInput("rewind_node(model=...) takes the model node (model_node(lm, ...))")
            model.deferring = bool(model.run.delayed)
        self.name = (getattr(verifier, "__name__", "verifier") if verifier
                     else f"state[{verdict_key!r}]")

    def __call__(self, state: dict) -> dict:
        dr = progress(state)
        turns = dr.get("turns") or []
        if not turns:
            raise RewindError("the rewind node ran before any model call: put it after the model")
        if dr.get("status") != "running":
            return {}  # this attempt was decided already
        config = self.config_of(dr)
        rejected = dr.get("rejected")  # a local draw outside the support: nothing to verify
        r = 0.0 if rejected else self.score(state)
        passed = r >= 1.0
        chain, cut, n = dr.get("chain"), dr.get("cut"), dr.get("attempts", 1)
        gen = derived_generator(self.seed, "rewind", n)
        attempt = {"turns": turns, "r": r, "branch": dr.get("branch"), "tried": []}
        complete = chainstate.Completion(None if self.model is None else self.model.complete)

        # 1) the chain's decision: does it move to this attempt? (a first attempt always does;
        #    the attempt is scored where the decision reads it)
        steps = list(dr.get("steps") or [])
        d = chainstate.decide(config, chain, attempt, cut, tokens_of=tokens_of, passed=passed,
                              generator=gen, decode_tokens=dr.get("attempt_tokens", 0),
                              span=dr.get("span"), rejected=bool(rejected), complete=complete)
        step = StepRecord(**rejected["step"]) if rejected else d.step
        if step is not None:
            steps.append({**step.model_dump(), "cut_turn": cut["turn"], "attempt": n,
                          "move": cut.get("move", "suffix"),
                          **({"rejected": rejected["reason"]} if rejected else {})})
        attempt = complete.known(attempt)  # as far as the decision completed it
        new_chain = {**(attempt if d.accepted else chain), "tried": list(d.tried)}

        # 2) what next: done, out of budget, or the next cut of the chain's current attempt
        spent = dr.get("spent", 0)
        next_cut = None
        if passed:
            status = "passed"
        elif n >= self.max_attempts or (self.budget_tokens and spent >= self.budget_tokens):
            status = "exhausted"
        else:  # the next cut reads the chain's current attempt: complete it
            new_chain = complete(new_chain)
            next_cut = chainstate.next_cut(config, new_chain, tokens_of=tokens_of, generator=gen)
            status = "rewind" if next_cut is not None else "exhausted"
        if self.model is not None:  # what the chain did not read is never scored
            self.model.release(t["message_id"] for t in turns)
        self._trace(dr, chain, cut, step, passed, status, rejected)
        out = {"verdict": r, "status": status, "chain": new_chain, "steps": steps,
               "next_cut": next_cut}
        if complete.done:  # the attempt's turns as completed, and the positions it cost
            out["turns"] = complete.known(attempt)["turns"]
            out["prefilled"] = dr.get("prefilled", 0) + complete.positions
        return {KEY: out}

    def config_of(self, dr: dict) -> RetryConfig:
        """What runs: the model node's resolved settings, recorded in the state; the rewind
        node's own `retry`, if given, must be the one the model node was given."""
        config = dr.get("config") or {}
        if "retry" not in config:  # a state written without our model node
            return chainstate.resolve(self.retry or DEFAULT_RETRY, engine=None,
                                      second_context=False)
        asked = config.get("asked")
        if self.retry is not None and asked is not None and \
                RetryConfig.model_validate(asked) != self.retry:
            raise RewindError("model_node and rewind_node were given different RetryConfigs: "
                              "give both the same retry=")
        return RetryConfig.model_validate(config["retry"])

    def score(self, state: dict) -> float:
        """r in [0, 1] from the verifier (True/False count as 1/0); 1 passes."""
        value = self.verifier(state) if self.verifier else state.get(self.verdict_key)
        if value is None:
            raise RewindError(f"no verdict from {self.name}: give True/False or a fraction 0..1")
        r = float(value)
        if not 0.0 <= r <= 1.0:
            raise RewindError(f"verdict {value!r} from {self.name} is outside [0, 1]")
        return r

    def _trace(self, dr, chain, cut, step, passed, status, rejected) -> None:
        rec, branch = self.recorder, dr.get("branch")
        if rec is None:
            return
        current = (chain or {}).get("branch")
        current = current if current in rec.branches else None
        if rejected:  # no proposal ran: the step alone, as `fix` records it
            rec.record_mh_step(current=current, proposal=None, cut_turn=cut["turn"],
                               **chainstate.stored(step))
        elif branch in rec.branches:
            rec.record_test_run(branch, command=self.name, exit_code=0 if passed else 1,
                                passed=int(passed), failed=int(not passed))
            if step is not None:
                rec.record_mh_step(current=current, proposal=branch, cut_turn=cut["turn"],
                                   **chainstate.stored(step))
            outcome = "passed" if passed else (
                "failed" if step is None else ("accepted" if step.accepted else "rejected"))
            rec.finish_branch(branch, outcome=outcome, passed=passed)
        if status != "rewind" and rec.run is not None and rec.run.id == dr.get("run"):
            rec.finish_run("solved" if passed else "exhausted")


def rewind_node(
    *,
    verifier: Callable[[dict], bool | float] | None = None,
    verdict_key: str | None = None,
    retry: RetryConfig | None = None,
    recorder: Any = None,
    max_attempts: int = 8,
    budget_tokens: int | None = None,
    seed: int = 0,
    model: Any = None,
) -> RewindNode:
    """A LangGraph node that decides what a failed attempt leads to; place it after the verifier.

    verifier: a callable state -> bool or fraction in [0, 1] (1 passes), or verdict_key: the
    state key where the user's own verifier node wrote it. retry: None (what the model node
    runs, recorded in the state), or the same RetryConfig as the model node's `retry` (a
    different one is one clear error). max_attempts / budget_tokens: when
    to give up (status "exhausted"). The node sets `state["decision_retry"]["status"]` to
    "passed", "rewind" or "exhausted"; `route_after_rewind` routes on it and `invoke` forks.
    model: the model node (`model_node(...)`): then, as in `fix`, a reply is scored (a local
    move's kept tail, the second context's pass) only where the chain reads it, here; without
    it the model node scores every reply when it writes it.
    """
    return RewindNode(verifier=verifier, verdict_key=verdict_key, retry=retry, recorder=recorder,
                      max_attempts=max_attempts, budget_tokens=budget_tokens, seed=seed,
                      model=model)


def route_after_rewind(state: dict) -> Literal["passed", "__end__"]:
    """Pure router after the rewind node: "passed" when the attempt passed, else the end.

    The run ends on "rewind" too: the next attempt is a fork started by `invoke`.
    """
    return "passed" if progress(state).get("status") == "passed" else "__end__"


# -- time travel ------------------------------------------------------------------------------
def _thread(config: dict) -> dict:
    conf = {k: v for k, v in (config.get("configurable") or {}).items() if k != "checkpoint_id"}
    if "thread_id" not in conf:
        raise BadInput('decision-retry needs a thread: config={"configurable": {"thread_id": ...}}')
    return {**config, "configurable": conf}


def _id(config: dict | None) -> str | None:
    return None if config is None else config["configurable"].get("checkpoint_id")


def fork_point(graph, config: dict) -> tuple[dict, dict] | None:
    """(checkpoint config, state update) for the next attempt, or None when none is due.

    The checkpoint is the one before the model call that wrote the cut turn: the parent of the
    first checkpoint whose turns hold that message. Invoke the graph there with
    `Command(update={"decision_retry": update})` to fork the thread and resample from the cut.
    """
    thread = _thread(config)
    dr = progress(graph.get_state(thread).values)
    if dr.get("status") != "rewind":
        return None
    cut, chain = dr["next_cut"], dr["chain"]
    having = {}
    for snap in graph.get_state_history(thread):
        if cut["message_id"] in {t["message_id"] for t in progress(snap.values).get("turns") or []}:
            having[_id(snap.config)] = snap
    firsts = [s for s in having.values() if _id(s.parent_config) not in having]
    if len(firsts) != 1 or firsts[0].parent_config is None:
        raise RewindError(f"no checkpoint before the model call {cut['message_id']} in this thread")
    before = firsts[0].parent_config
    where = {**thread, "configurable": {**thread["configurable"], **before["configurable"]}}
    update = {
        "resume": cut, "turns": chain["turns"][: cut["turn"]], "chain": chain,
        "steps": dr.get("steps") or [], "attempts": dr.get("attempts", 0),
        "spent": dr.get("spent", 0), "prefilled": dr.get("prefilled", 0), "run": dr.get("run"),
        "config": dr.get("config"), "episode": dr.get("episode"), "branch": None, "cut": None,
        "status": "running", "verdict": None, "next_cut": None, "span": None, "rejected": None,
    }
    return where, update


def invoke(graph, input: Any, config: dict, **kwargs: Any) -> dict:
    """`graph.invoke` with decision-retry: fork at each rewind until passed or exhausted.

    `input=None` continues a thread (e.g. one restored from an on-disk checkpointer). Extra
    keyword arguments go to every `graph.invoke` call. Returns the final state of the last attempt.
    """
    from langgraph.types import Command

    if getattr(graph, "checkpointer", None) is None:
        raise BadInput("decision-retry rewinds through checkpoints: compile(checkpointer=...)")
    thread = _thread(config)
    snap = graph.get_state(thread)
    if input is None and not snap.next and snap.values:
        state = snap.values  # a finished run: only a pending rewind is left to do
    else:
        state = graph.invoke(input, thread, **kwargs)
    while (fork := fork_point(graph, thread)) is not None:
        where, update = fork
        state = graph.invoke(Command(update={KEY: update}), where, **kwargs)
    return state


def attempts(graph, config: dict) -> list[dict]:
    """The decided attempts of the thread's latest episode, in order: attempt number, texts,
    verdict, the cut it started from, the next cut, status, and its checkpoint id."""
    thread = _thread(config)
    episode = progress(graph.get_state(thread).values).get("episode")
    found: dict[tuple, dict] = {}
    for snap in graph.get_state_history(thread):
        dr = progress(snap.values)
        if dr.get("episode") != episode or not dr.get("turns"):
            continue
        if dr.get("status") in ("passed", "rewind", "exhausted"):
            found[tuple(t["message_id"] for t in dr["turns"])] = {
                "attempt": dr.get("attempts", 0), "texts": [t["text"] for t in dr["turns"]],
                "verdict": dr.get("verdict"), "status": dr["status"], "cut": dr.get("cut"),
                "next_cut": dr.get("next_cut"), "checkpoint_id": _id(snap.config),
            }
    return sorted(found.values(), key=lambda a: a["attempt"])

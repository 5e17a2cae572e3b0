"""The middleware scores as `fix` does: ChatDecisionRetry leaves a reply's no-body pass and a
local move's kept tail undone, and `after_agent` completes a call only where the chain reads it,
the no-body pass in bulk (`Engine.score(exact=False)`). Counted on the engine itself, in a real
`create_agent` run over a real git repository (scripted model)."""

from __future__ import annotations

from langchain.agents import create_agent

from decision_retry.langchain import (
    ChatDecisionRetry,
    DecisionRetryMiddleware,
    hide_tool_output,
)
from decision_retry.langchain.scripted_turns import ScriptedTurnsBackend
from decision_retry.lm import LM
from decision_retry.repo.workspace import Workspace
from decision_retry.samplers.chain import RetryConfig
from decision_retry.trace import Recorder, TraceStore
from tests.helpers import make_repo
from tests.langchain.lc_agent import SCRIPT, UNITS, file_tools, question
from tests.langchain.test_lc_moves import LOCAL


class CountingLM(LM):
    """The decode loop over the scripted turns, keeping every `score` call's `exact`."""

    def __init__(self) -> None:
        super().__init__(ScriptedTurnsBackend(SCRIPT), name="scripted")
        self.scores: list[bool] = []

    def score(self, state, ids, sampling_, *, exact=True):
        self.scores.append(exact)
        return super().score(state, ids, sampling_, exact=exact)


class Completing(ChatDecisionRetry):
    """Ours, keeping the ids of the replies the middleware had completed."""

    def complete(self, message_id: str):
        got = super().complete(message_id)
        if got is not None:
            self.engine.completed.append(message_id)
        return got


def never(state: dict) -> float:  # nothing passes: the chain keeps deciding
    return 0.0


def test_a_proposal_the_first_stage_rejects_is_never_scored(tmp_path):
    repo = make_repo(tmp_path / "units", UNITS)
    for seed in range(40):
        seen = []

        def verifier(state, seen=seen):
            seen.append(state["decision_retry"])
            return never(state)

        lm = CountingLM()
        lm.completed = []
        model = Completing(engine=lm)
        store = TraceStore(tmp_path / f"t{seed}.db")
        recorder = Recorder(store)
        with Workspace(repo, f"deferred-{seed}") as ws:
            mw = DecisionRetryMiddleware(verifier=verifier, repository=ws, seed=seed, retry=LOCAL,
                                         nobody=hide_tool_output("read_file"), max_attempts=5,
                                         recorder=recorder)
            out = create_agent(model, file_tools(ws), middleware=[mw]).invoke(question())
        tree = store.load(recorder.run.id)
        store.close()
        dr = out["decision_retry"]
        stages = [s["stage"] for s in dr["steps"]]
        if len(seen) == dr["attempts"] and 1 in stages and 2 in stages:  # no local draw rejected
            break
    else:
        raise AssertionError("no seed in 0..39 makes a first-stage rejection and a second stage")
    run = RetryConfig.model_validate(dr["config"]["retry"])
    assert (run.cut_weights, run.move, run.delayed, run.nobody_scoring) == (
        "surprise", "local", True, "bulk")
    # 1) the calls the chain read: the first attempt's (the first cut is drawn from it) and the
    #    new calls of every proposal whose decision reached stage 2; the others never
    read = [t["message_id"] for t in seen[0]["turns"]]
    skipped = []
    for attempt, stage in zip(seen[1:], stages, strict=True):
        new = [t for t in attempt["turns"] if t["index"] >= attempt["cut"]["turn"]]
        assert all(t["unscored"] for t in new)  # written without their scoring
        (read if stage == 2 else skipped).extend(t["message_id"] for t in new)
    assert sorted(lm.completed) == sorted(read) and skipped
    # 2) one no-body pass per call read, in bulk (the kept tails, rescored when read, and the
    #    kept tokens of a call no longer in memory are decoding's numbers)
    assert lm.scores.count(False) == len(read)
    # 3) the chain holds its calls scored under the second context, and the trace holds the
    #    scores of exactly the calls read, recorded beside each
    for t in dr["chain"]["turns"]:
        assert None not in t["alt_logp"] and "unscored" not in t
    trace_of = {t["message_id"]: t["trace_turn"] for a in seen for t in a["turns"]}
    assert {t.id for t in tree.turns if all(k.alt_logp is not None for k in t.tokens)} == {
        trace_of[m] for m in read}

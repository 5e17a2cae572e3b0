"""The LangGraph nodes score as `fix` does: a reply is scored (its no-body pass, a local move's
kept tail) only where the chain reads it, and the no-body pass runs in bulk
(`Engine.score(exact=False)`). Counted on the engine itself, with the scripted model."""

from __future__ import annotations

import pytest

from decision_retry.choices import DEFAULT_RUN
from decision_retry.engines.scripted import ScriptedBackend
from decision_retry.langgraph import KEY, invoke
from decision_retry.lm import LM
from decision_retry.samplers.chain import RetryConfig
from decision_retry.trace import Recorder, TraceStore
from tests.langgraph.lg_user_graph import SCRIPT, build, decided, question


class CountingLM(LM):
    """The decode loop over the scripted backend, keeping every `score` call: (ids, exact)."""

    def __init__(self) -> None:
        super().__init__(ScriptedBackend(SCRIPT), name="scripted")
        self.scores: list[tuple[int, bool]] = []

    def score(self, state, ids, sampling_, *, exact=True):
        self.scores.append((len(ids), exact))
        return super().score(state, ids, sampling_, exact=exact)


def nobody(state: dict) -> list[dict]:  # the request without the code (the second context)
    return [{"role": "user", "content": "Write is_adult(age) (18 or older)."}]


def never(state: dict) -> bool:  # a verifier nothing passes: the chain keeps deciding
    return False


def scored(turn: dict) -> bool:
    """Was the reply scored under the no-body context? (A rewind keeps the scores of the tokens
    before its cut, which it shares with the reply it was cut from.)"""
    return None not in (turn.get("alt_logp") or [None])


def run(move: str, seed: int, *, linked: bool, recorder=None, **retry):
    lm = CountingLM()
    cfg = RetryConfig(**{**DEFAULT_RUN, "move": move, **retry})
    graph, _, _ = build(lm, seed=seed, retry=cfg, nobody=nobody, linked=linked, max_attempts=6,
                        verifier=never, recorder=recorder)
    config = {"configurable": {"thread_id": f"{move}-{seed}-{linked}"}}
    final = invoke(graph, question(), config)
    return final[KEY], decided(graph, config), lm.scores


def nobody_passes(scores, move: str) -> list[tuple[int, bool]]:
    """The score calls that were no-body passes: every call of a suffix run; in a local run the
    kept tails are rescored exactly (decoding's numbers), so the bulk calls."""
    return scores if move == "suffix" else [s for s in scores if not s[1]]


@pytest.mark.parametrize("move", ["suffix", "auto"])
def test_a_proposal_the_first_stage_rejects_is_never_scored(move, tmp_path):
    seed = next(s for s in range(20)  # a run with a first-stage rejection
                if any(st["stage"] == 1 for st in run(move, s, linked=True)[0]["steps"]))
    with TraceStore(tmp_path / "t.db") as store:
        recorder = Recorder(store)
        dr, done, scores = run(move, seed, linked=True, recorder=recorder)
        tree = store.load(recorder.run.id)
    steps = dr["steps"]
    assert dr["status"] == "exhausted" and len(steps) == 5
    # 1) what the chain read was scored, once: the first attempt (a cut is drawn from it) and
    #    every proposal whose decision reached stage 2; the rest never
    for d, step in zip(done[1:], steps):
        assert scored(d["turns"][0]) == (step["stage"] == 2) != d["turns"][0].get("unscored",
                                                                                   False)
    assert scored(done[0]["chain"]["turns"][0])
    passes = nobody_passes(scores, move)
    assert len(passes) == 1 + sum(s["stage"] == 2 for s in steps) < len(done)
    # 2) in bulk, where `fix` scores in bulk (the cut token is drawn in the patch context)
    assert RetryConfig.model_validate(dr["config"]["retry"]).nobody_scoring == "bulk"
    assert all(not exact for _, exact in passes)
    # 3) the trace holds the scores of exactly those replies, recorded beside each turn
    root = next(b for b in tree.branches if b.parent_id is None)
    want = {root.id} | {s.proposal_branch_id for s in tree.mh_steps if s.stage == 2}
    assert {t.branch_id for t in tree.turns
            if all(k.alt_logp is not None for k in t.tokens)} == want
    # 4) without the model node, the rewind node has nothing to score with: every reply is
    #    scored when it is written (in bulk too), and the decisions are the same
    dr_eager, _, eager = run(move, seed, linked=False)
    assert len(nobody_passes(eager, move)) == len(done) > len(passes)
    assert all(not exact for _, exact in nobody_passes(eager, move))
    assert dr_eager["steps"] == steps


@pytest.mark.parametrize("move", ["suffix", "auto"])
def test_the_decisions_are_those_of_scoring_every_reply_exactly_when_written(move):
    """The nodes' former path (every reply scored exactly by the model node) and today's
    (scored in bulk where the chain reads it) make the same decisions, step for step: on the
    scripted model bulk scores are the exact ones, and a kept tail's scores do not depend on
    the new prefix, so neither stage can tell the two apart (on a real model the kept tail's
    target moves to the second stage, as in `fix`)."""
    for seed in range(3):
        before, done_before, scores_before = run(move, seed, linked=False,
                                                 nobody_scoring="exact")
        now, done_now, scores_now = run(move, seed, linked=True)
        assert now["steps"] == before["steps"]
        assert [d["chain"]["turns"][0]["ids"] for d in done_now] == \
            [d["chain"]["turns"][0]["ids"] for d in done_before]
        assert all(exact for _, exact in scores_before)
        assert len(scores_now) <= len(scores_before)
        assert len(scores_now) < len(scores_before) or all(s["stage"] == 2 for s in now["steps"])


def test_a_first_attempt_that_passes_is_never_scored():
    for seed in range(20):
        lm = CountingLM()
        graph, _, _ = build(lm, seed=seed, retry=RetryConfig(**DEFAULT_RUN), nobody=nobody)
        final = invoke(graph, question(), {"configurable": {"thread_id": f"pass-{seed}"}})
        if final[KEY]["attempts"] == 1:
            break
    assert final[KEY]["status"] == "passed" and lm.scores == []
    assert final[KEY]["turns"][0]["unscored"] and final[KEY]["prefilled"] == 0

"""The middleware with the real small model (SmolLM2-135M on our engine) in a create_agent graph
with file tools over a real git repository and real pytest runs."""

from __future__ import annotations

import pytest
from langchain.agents import create_agent

from decision_retry.langchain import ChatDecisionRetry, DecisionRetryMiddleware
from decision_retry.repo.workspace import Workspace
from decision_retry.trace import Recorder, TraceStore
from tests.helpers import make_repo
from tests.langchain.lc_agent import TEST_COMMAND, UNITS, file_tools, question


@pytest.mark.slow
def test_real_model_rewinds_and_continues_from_the_cut_token(tmp_path):
    from decision_retry.loading import load_lm

    model = ChatDecisionRetry(engine=load_lm("smollm2-135m"), max_tokens=40, temperature=0.7)
    repo = make_repo(tmp_path / "units", UNITS)
    with TraceStore(tmp_path / "traces.db") as store, Workspace(repo, "real") as ws:
        recorder = Recorder(store)
        mw = DecisionRetryMiddleware(test_command=TEST_COMMAND, repository=ws, recorder=recorder,
                                     max_attempts=3, seed=0)
        out = create_agent(model, file_tools(ws), middleware=[mw]).invoke(question())
        tree = store.load(recorder.run.id)
    dr = out["decision_retry"]
    assert dr["status"] in ("passed", "exhausted")
    rewinds = dr["attempts"] - 1
    if dr["status"] == "exhausted":
        assert rewinds == 2  # a 135M model rarely fixes it in 40 tokens: the rewinds are the point
    # real tokens with real entropies: some uncertainty, all finite and non-negative
    entropies = [h for t in dr["turns"] for h in t["entropy"]]
    assert entropies and min(entropies) >= 0 and max(entropies) > 0.5
    # each remade call kept the tokens before its cut and forked the KV cache to do it
    assert model.stats["forks"] == len(dr["steps"]) and model.stats["rescored"] == 0
    if dr["cut"] and dr["cut"]["position"] > 0:
        call = dr["turns"][dr["cut"]["turn"]]
        assert call["kept"] == dr["cut"]["position"]
        assert call["pieces"][call["kept"]:] and call["exact"]
    # the trace: a branch per attempt, each retry cut where the state says
    assert len(tree.branches) == dr["attempts"]
    cuts = [(b.cut.turn, b.cut.position) for b in tree.branches if b.cut is not None]
    assert cuts == [(s["cut_turn"], s["cut_token"]) for s in dr["steps"]][: len(cuts)]
    assert len(tree.test_runs) == dr["attempts"]

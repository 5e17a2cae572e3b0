"""The middleware with a chat model that only returns OpenAI-style top-k log-probabilities and
cannot continue a partial message (what ChatOpenAI(logprobs=True, top_logprobs=k) gives): cut
calls are resampled whole, entropies and log q are top-k bounds, MH steps carry their interval."""

from __future__ import annotations

from typing import ClassVar

from langchain.agents import create_agent
from langchain_core.outputs import ChatResult

from decision_retry.langchain import ChatDecisionRetry, DecisionRetryMiddleware, scripted_turns_lm
from decision_retry.repo.workspace import Workspace
from tests.helpers import make_repo
from tests.langchain.lc_agent import OPERATORS, SCRIPT, UNITS, file_tools, question


class TopKOnly(ChatDecisionRetry):
    """Our engine seen through an OpenAI-style API: top-2 log-probabilities, no continuation."""

    continues_replies: ClassVar[bool] = False
    k: int = 2

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        result = super()._generate(messages, stop, run_manager, **kwargs)
        message = result.generations[0].message
        meta = {k: v for k, v in message.response_metadata.items() if k != "decision_retry"}
        for item in meta["logprobs"]["content"]:
            item["top_logprobs"] = item["top_logprobs"][: self.k]
        message.response_metadata = meta
        return result


def verdict(ws) -> float:
    return 1.0 if "c * 9 / 5 + 32" in ws.read_file("units.py") else 0.0


def test_a_topk_only_model_is_rewound_by_whole_calls(tmp_path):
    repo = make_repo(tmp_path / "units", UNITS)
    model = TopKOnly(engine=scripted_turns_lm(SCRIPT), temperature=1.0)
    with Workspace(repo, "topk") as ws:
        mw = DecisionRetryMiddleware(verifier=lambda s: verdict(ws), repository=ws, seed=2,
                                     max_attempts=10, vocab=64)
        out = create_agent(model, file_tools(ws), middleware=[mw]).invoke(question())
        final = ws.read_file("units.py")
    dr = out["decision_retry"]
    assert dr["status"] == "passed" and dr["attempts"] >= 2, dr["status"]
    assert "+ 32" in final
    assert [m.type for m in out["messages"]] == ["human", "ai", "tool", "ai", "tool", "ai"]
    # every call: bounded numbers, not ours, not continuable
    for call in dr["turns"]:
        assert call["exact"] is False and call["continuable"] is False and call["kept"] == 0
        assert all(lo <= q <= hi for q, (lo, hi) in zip(call["logq"], call["logq_bounds"]))
    write = dr["turns"][1]
    op = next(i for i, p in enumerate(write["pieces"]) if p in OPERATORS)
    assert write["entropy_gap"] > 0  # three choices, two listed: the rest is bounded, not known
    assert write["entropy"][op] > 0
    # every rewind resampled a whole call and its MH step knows how loose log A was
    assert model.stats["forks"] == 0 and model.stats["rescored"] == 0
    assert dr["steps"] and all(s["cut_token"] == 0 for s in dr["steps"])
    uncertain = [s for s in dr["steps"] if s.get("log_accept_lo") is not None]
    assert uncertain and all(s["log_accept_lo"] <= s["log_accept"] <= s["log_accept_hi"]
                             for s in uncertain)

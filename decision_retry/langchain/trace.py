"""The middleware's trace: a `create_agent` run as a trace run (decision_retry.trace).

One trace run per episode, one branch per attempt (a retry records its parent and cut), a turn
per model call with its tokens and decision points, a tool call per tool, a test run per verdict,
an MH step per decision. The Recorder's listeners (OTLP) see the same nodes as they arrive.
"""

from __future__ import annotations

from typing import Any

from decision_retry.langchain.chat_model import ChatDecisionRetry
from decision_retry.langgraph import chainstate
from decision_retry.otel.attributes import engine_provider
from decision_retry.trace.decisions import SpikeRule
from decision_retry.trace.models import Cut


def model_name(model: Any) -> str:
    """What a chat model calls itself (ours, ChatOpenAI's `model_name`, ...)."""
    return str(getattr(model, "name_of_model", None) or getattr(model, "model_name", None)
               or getattr(model, "model", None) or type(model).__name__)


def provider(model: Any) -> str | None:
    """`gen_ai.provider.name`: our engine's, else LangChain's `ls_provider`."""
    if isinstance(model, ChatDecisionRetry):
        return engine_provider(model.engine)
    if not hasattr(model, "_get_ls_params"):
        return None
    return model._get_ls_params().get("ls_provider")


class AgentTrace:
    """Writes the middleware's events into `recorder` (a trace Recorder); ids come back."""

    def __init__(self, recorder: Any, *, strategy: str, spike: SpikeRule | None, seed: int,
                 config: dict, repo: str | None) -> None:
        self.rec, self.strategy, self.spike, self.seed = recorder, strategy, spike, seed
        self.config, self.repo = config, repo

    def call(self, dr: dict, update: dict, *, model: Any, prompt: str, index: int, reply: Any,
             params: dict, snapshot: str | None) -> str:
        """Record a model call (starting the run and its first branch on an episode's first
        call; their ids go into `update`); the turn's id."""
        rec, branch = self.rec, dr.get("branch")
        if rec.run is None or rec.run.id != dr.get("run"):
            extra = {"provider": p} if (p := provider(model)) else {}
            update["run"] = rec.start_run(model=model_name(model), strategy=self.strategy,
                                          config={**self.config, **(update.get("config") or
                                                                    dr.get("config") or {}),
                                                  **extra}, seed=self.seed,
                                          repo=self.repo).id
            branch = None
        if branch not in rec.branches:
            branch = update["branch"] = rec.start_branch(strategy="initial").id
        turn = rec.record_turn(branch, tokens=reply.tokens, prompt=prompt, index=index,
                               params=params)
        rec.record_decisions(turn, self.spike, snapshot=snapshot)
        return turn.id

    def tool(self, turn_id: str | None, call: dict, result: Any) -> None:
        if not turn_id or self.rec.run is None:
            return
        text = getattr(result, "text", None)
        observation = text if isinstance(text, str) else str(getattr(result, "content", ""))
        self.rec.record_tool_call(turn_id, action=call["name"],
                                  arguments=dict(call.get("args") or {}), observation=observation)

    def tests(self, branch: str | None, command: str, result: Any) -> None:
        """A test run (a TestResult from the workspace)."""
        if branch in self.rec.branches:
            self.rec.record_test_run(
                branch, command=command,
                exit_code=-1 if result.exit_code is None else result.exit_code,
                passed=result.passed, failed=result.failed, errors=result.errors,
                output_tail=result.output_tail, duration_s=result.duration_s)

    def branch(self, chain: dict, point: dict) -> str | None:
        """A retry branch, cut from the chain's branch at `point`."""
        rec = self.rec
        if rec.run is None:
            return None
        parent = chain.get("branch") if chain.get("branch") in rec.branches else None
        cut = Cut(turn=point["turn"], position=point["position"], entropy=point["entropy"])
        return rec.start_branch(parent=parent, cut=cut if parent else None,
                                strategy=self.strategy).id

    def verdict(self, dr: dict, chain: dict | None, cut: dict | None, step: Any, *,
                passed: bool, status: str, verifier: str | None, diff: str | None,
                rejected: bool = False) -> None:
        """The attempt's verdict (a callable verifier's as a test run), its MH step, its end;
        `rejected`: a local draw outside the support, which ran nothing."""
        rec, branch = self.rec, dr.get("branch")
        if branch not in rec.branches:
            return
        if verifier is not None and not rejected:
            rec.record_test_run(branch, command=verifier, exit_code=0 if passed else 1,
                                passed=int(passed), failed=int(not passed))
        if step is not None:
            current = (chain or {}).get("branch")
            fields = {k: v for k, v in chainstate.stored(step).items() if v is not None}
            rec.record_mh_step(current=current if current in rec.branches else None,
                               proposal=branch, cut_turn=cut["turn"], **fields)
        outcome = "passed" if passed else (
            "failed" if step is None else ("accepted" if step.accepted else "rejected"))
        rec.finish_branch(branch, outcome=outcome, passed=passed, final_diff=diff)
        if status != "rewind" and rec.run is not None and rec.run.id == dr.get("run"):
            rec.finish_run("solved" if passed else "exhausted")

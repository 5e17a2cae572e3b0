"""`DecisionRetryMiddleware`: decision-retry inside `langchain.agents.create_agent`.

    agent = create_agent(ChatDecisionRetry(engine=lm), tools, middleware=[
        DecisionRetryMiddleware(test_command="python -m pytest -q", repository=ws)])

The hooks (langchain >= 1.0):

1) `wrap_model_call`: snapshot the repository, call the model (after a rewind: continue the cut
   call from the cut token), read the reply's tokens (exact from ChatDecisionRetry, top-k bounds
   from any model returning log-probabilities) and record the call in the agent state and the
   trace; the record travels as `ExtendedModelResponse(..., command=Command(update=...))`.
2) `wrap_tool_call`: record each tool call and its result in the trace.
3) `after_agent` (`can_jump_to=["model"]`): run the verifier (the tests in the repository, or
   a callable on the state); make the MH decision against the chain's current attempt; on
   failure pick a cut with `fix`'s rule, restore the repository snapshot taken before the cut
   call, replace the conversation by the one before that call (`RemoveMessage(REMOVE_ALL)`) and
   jump back to the model.

What runs is `fix`'s run resolved for the chat model at the episode's first call
(langgraph/chainstate.py): with ChatDecisionRetry local moves, no null moves and delayed
acceptance, and surprise cuts when `nobody=` gives the second context; with any other chat
model suffix moves of whole calls and entropy cuts. A local draw outside the support comes back
as an empty reply: the agent ends at once and `after_agent` records the rejection without
running the verifier. As in `fix`, ChatDecisionRetry leaves a reply's no-body pass (in bulk,
unless the cut token is drawn there) and a local move's kept tail undone (`defer`), and
`after_agent` asks it for them only where the chain reads the reply (chainstate.Completion): a
proposal that the first stage rejects, or a first attempt that passes, is never scored.
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Callable
from typing import Annotated, Any, NotRequired

from langchain.agents.middleware import AgentMiddleware, AgentState, hook_config
from langchain.agents.middleware.types import ExtendedModelResponse, ModelResponse, OmitFromInput
from langchain_core.messages import (
    AIMessage,
    RemoveMessage,
    messages_from_dict,
    messages_to_dict,
)
from langgraph.graph.message import REMOVE_ALL_MESSAGES
from langgraph.types import Command

from decision_retry.choices import CUT_STRATEGIES
from decision_retry.errors import BadInput
from decision_retry.langchain import calls
from decision_retry.langchain.chat_model import (
    NOBODY_KEY,
    PREFIX_KEY,
    SCORING_KEY,
    ChatDecisionRetry,
)
from decision_retry.langchain.logprobs import DEFAULT_VOCAB, reply_tokens
from decision_retry.langchain.trace import AgentTrace, model_name
from decision_retry.langgraph import chainstate
from decision_retry.langgraph.model import (
    DEFAULT_RETRY,
    DEFAULT_SPIKE,
    RewindError,
    check_strategy,
    derived_generator,
)
from decision_retry.langgraph.state import KEY, merge, progress
from decision_retry.samplers.chain import RetryConfig, verdict
from decision_retry.samplers.mh import StepRecord
from decision_retry.trace.decisions import SpikeRule


class DecisionRetryAgentState(AgentState):
    """The agent state plus one key, "decision_retry" (see docs/langchain.md for its fields)."""

    decision_retry: NotRequired[Annotated[dict, OmitFromInput, merge]]  # reducer last


def _seed(seed: int, *parts: object) -> int:
    return zlib.crc32("/".join(map(str, (seed, *parts))).encode())


def _last_ai(result: list) -> AIMessage | None:
    return next((m for m in reversed(result) if isinstance(m, AIMessage)), None)


class DecisionRetryMiddleware(AgentMiddleware):
    """Rewind a failed `create_agent` run to a high-entropy token and resample from there.

    verifier: a callable state -> bool or fraction in [0, 1] (1 passes), or test_command: run in
    the repository (its `run_tests`), r = the fraction of tests passing. repository: where the
    tools work, with `snapshot(label) -> id` and `restore(id)` (an agent `Workspace`); None when
    the tools change nothing outside the conversation. retry: what runs, `fix`'s run by
    default, resolved for the chat model (module docstring; a value it cannot run is one clear
    error at its first call). nobody: a callable messages -> messages, the second context that
    surprise cuts score every reply under (e.g. `hide_tool_output("read_file")`). recorder: a
    trace `Recorder` (run, branches, calls, decision points, tool calls, tests, MH steps; its
    listeners export OTLP). max_attempts / budget_tokens:
    when to give up. temperature / vocab: what a chat model other than ours samples at and its
    vocabulary size (for the top-k bounds); ours reports exact numbers.
    """

    state_schema = DecisionRetryAgentState

    def __init__(
        self,
        *,
        verifier: Callable[[dict], bool | float] | None = None,
        test_command: str | None = None,
        repository: Any = None,
        retry: RetryConfig = DEFAULT_RETRY,
        nobody: Callable[[list], list] | None = None,
        recorder: Any = None,
        max_attempts: int = 8,
        budget_tokens: int | None = None,
        spike: SpikeRule | None = DEFAULT_SPIKE,
        seed: int = 0,
        temperature: float | None = None,
        vocab: int = DEFAULT_VOCAB,
        test_timeout: float = 300.0,
    ) -> None:
        super().__init__()
        if (verifier is None) == (test_command is None):
            raise BadInput("DecisionRetryMiddleware needs one of verifier=callable or "
                           "test_command='...'")
        if test_command is not None and not hasattr(repository, "run_tests"):
            raise BadInput("test_command needs repository= a Workspace (where the tests run)")
        if repository is not None and not (hasattr(repository, "snapshot")
                                           and hasattr(repository, "restore")):
            raise BadInput("repository needs snapshot(label) and restore(id): pass a Workspace")
        if max_attempts < 1:
            raise BadInput(f"max_attempts={max_attempts}: give 1 or more")
        if budget_tokens is not None and budget_tokens < 1:
            raise BadInput(f"budget_tokens={budget_tokens}: give 1 or more, or None for no limit")
        check_strategy(retry)
        self.nobody = nobody
        self.verifier, self.test_command, self.repository = verifier, test_command, repository
        self.retry, self.recorder, self.spike, self.seed = retry, recorder, spike, seed
        self.max_attempts, self.budget_tokens = max_attempts, budget_tokens
        self.temperature, self.vocab, self.test_timeout = temperature, vocab, test_timeout
        self.last_test = None  # the latest TestResult, when test_command runs
        self._model: ChatDecisionRetry | None = None  # ours, last seen: it completes replies
        repo = getattr(repository, "repo", None)
        self.trace = None if recorder is None else AgentTrace(
            recorder, strategy=retry.strategy, spike=spike, seed=seed, config=self._config(),
            repo=str(repo) if repo is not None else None)

    # -- 1) every model call -----------------------------------------------------------------
    def before_agent(self, state: dict, runtime: Any) -> dict | None:
        """A new episode unless one is still running (a thread resumed mid-run)."""
        dr = progress(state)
        if dr.get("status") == "running":
            return None
        return {KEY: {"episode": str(uuid.uuid4()), "turns": [], "attempts": 1, "spent": 0,
                      "attempt_tokens": 0, "status": "running", "chain": None, "steps": [],
                      "cut": None, "resume": None, "verdict": None, "run": None, "branch": None,
                      "span": None, "rejected": None, "config": self._config()}}

    def wrap_model_call(self, request, handler):
        dr = progress(request.state)
        turns, resume = list(dr.get("turns") or []), dr.get("resume")
        k, attempt = len(turns), dr.get("attempts", 1)
        ours = isinstance(request.model, ChatDecisionRetry)
        continues = ours and getattr(request.model, "continues_replies", False)
        settings = dict(request.model_settings)
        if ours:
            settings["seed"] = _seed(self.seed, "model", attempt, k)
        update: dict[str, Any] = {"resume": None}
        run = self._run(dr, request.model, update)

        # 1) the repository before this call, and how a cut call is remade (its move, from the
        #    kept tokens; the second context to score the reply under)
        base = None
        if resume is not None:
            base = self._cut_call(dr, resume, k)
            snapshot = base.get("snapshot")  # restored by after_agent
            if continues and not resume["whole_call"]:
                settings[PREFIX_KEY] = {"message_id": base["message_id"],
                                        "position": resume["position"], "ids": base["ids"],
                                        "move": resume.get("move", "suffix"),
                                        "ban": resume.get("ban"), "finish": base.get("finish"),
                                        "span": run.span.model_dump(mode="json"),
                                        "cut_token": run.cut_token}
        else:
            snapshot = self.repository.snapshot(f"before model call {k}") if self.repository else None
        if run.scored and run.strategy in CUT_STRATEGIES:  # as agent/graph.py
            system = [request.system_message] if request.system_message is not None else []
            settings[NOBODY_KEY] = [*system, *self.nobody(list(request.messages))]
        if continues:  # how the reply is scored: left to `after_agent` on a delayed run
            settings[SCORING_KEY] = {"exact": run.nobody_exact, "defer": bool(run.delayed)}
            self._model = request.model

        # 2) the call
        response = handler(request.override(model_settings=settings))
        if isinstance(response, AIMessage):
            response = ModelResponse(result=[response])
        ai = _last_ai(response.result)
        if ai is None:
            raise RewindError("the model call returned no AI message")
        if not ai.id:
            ai.id = f"dr-{uuid.uuid4()}"
        meta = (ai.response_metadata or {}).get("decision_retry") or {}
        if meta.get("rejected"):  # a local draw outside the support: the agent ends here
            step = chainstate.rejected_step(calls.tokens_of(base), resume, m=meta["span"][1],
                                            decode_tokens=meta["decode_tokens"])
            update["rejected"] = {"reason": meta["rejected"], "step": step.model_dump()}
            rec = {**base, "message_id": ai.id, "index": k, "trace_turn": None}
            new_tokens = meta["decode_tokens"]
            update.update(turns=[*turns, rec], spent=dr.get("spent", 0) + new_tokens,
                          attempt_tokens=dr.get("attempt_tokens", 0) + new_tokens)
            return ExtendedModelResponse(model_response=response,
                                         command=Command(update={KEY: update}))
        reply = reply_tokens(ai, temperature=self._temperature(request.model), vocab=self.vocab)
        if PREFIX_KEY in settings:
            self._check_continuation(base, resume, reply)
        if meta.get("span") and resume is not None and resume.get("move") == "local":
            s, m = meta["span"]  # in the call; the attempt's span is flattened (chainstate.py)
            offset = resume["index"] - resume["position"]
            update["span"] = [offset + s, m, len(base["ids"]) - s]

        # 3) record: the trace, then the state (through the response's command)
        new_tokens = meta.get("decode_tokens", len(reply.tokens) - reply.kept)
        trace_turn = None
        if self.trace is not None:
            params = {"model": model_name(request.model), "seed": settings.get("seed"),
                      "temperature": self._temperature(request.model),
                      "input_tokens": (ai.usage_metadata or {}).get("input_tokens"),
                      "finish_reason": ai.response_metadata.get("finish_reason"),
                      "kept_tokens": reply.kept, "exact": reply.exact}
            human = next((m.text for m in reversed(request.messages) if m.type == "human"), "")
            trace_turn = self.trace.call(dr, update, model=request.model, prompt=human, index=k,
                                         reply=reply, params=params, snapshot=snapshot)
        rec = calls.call_record(reply, message_id=ai.id, index=k, continuable=continues,
                                 spike=self.spike, snapshot=snapshot, trace_turn=trace_turn)
        if meta.get("unscored"):  # completed by after_agent where the chain reads it
            rec["unscored"] = True
        update.update(turns=[*turns, rec], spent=dr.get("spent", 0) + new_tokens,
                      attempt_tokens=dr.get("attempt_tokens", 0) + new_tokens)
        return ExtendedModelResponse(model_response=response, command=Command(update={KEY: update}))

    def _run(self, dr: dict, model: Any, update: dict) -> RetryConfig:
        """What runs this episode: `retry` resolved for the chat model at its first call
        (chainstate.resolve; recorded in the state's config), or one clear error."""
        config = dict(dr.get("config") or self._config())
        if "retry" in config:
            return RetryConfig.model_validate(config["retry"])
        # only a chat model that remakes a reply from a token (ours) can run the moves that
        # read the engine; any other is cut by whole calls (calls.accept_call)
        ours = isinstance(model, ChatDecisionRetry) and getattr(model, "continues_replies", False)
        engine = model.engine if ours else None
        run = chainstate.resolve(self.retry, engine=engine, second_context=self.nobody is not None)
        chainstate.refuse(run, engine=engine, second_context=self.nobody is not None,
                          model=model_name(model))
        update["config"] = {**config, "retry": run.model_dump(mode="json")}
        return run

    def _cut_call(self, dr: dict, resume: dict, k: int) -> dict:
        chain_turns = (dr.get("chain") or {}).get("turns") or []
        if resume["turn"] != k or k >= len(chain_turns):
            raise RewindError(f"the rewound conversation has {k} model calls but the cut is in "
                              f"call {resume['turn']}")
        return chain_turns[k]

    def _check_continuation(self, base: dict, resume: dict, reply) -> None:
        t = resume["position"]
        if reply.kept != t or [tok.id for tok in reply.tokens[:t]] != base["ids"][:t]:
            raise RewindError("the chat model did not keep the cut call's tokens before the cut")
        if reply.prompt_hash != base["prompt_hash"]:
            raise RewindError("the rewound conversation prompts the model differently from the "
                              "call being cut (is the prompt built only from the agent state?)")

    def _temperature(self, model: Any) -> float:
        if self.temperature is not None:
            return self.temperature
        value = getattr(model, "temperature", None)
        return float(value) if isinstance(value, (int, float)) else 1.0

    # -- 2) every tool call ------------------------------------------------------------------
    def wrap_tool_call(self, request, handler):
        result = handler(request)
        if self.trace is not None:
            turns = progress(request.state).get("turns") or []
            self.trace.tool(turns[-1].get("trace_turn") if turns else None, request.tool_call,
                            result)
        return result

    # -- 3) after the agent finished ---------------------------------------------------------
    @hook_config(can_jump_to=["model"])
    def after_agent(self, state: dict, runtime: Any) -> dict | None:
        dr = progress(state)
        turns = dr.get("turns") or []
        if dr.get("status") != "running" or not turns:
            return None
        config = self._run(dr, None, {})
        rejected = dr.get("rejected")  # a local draw outside the support: nothing to verify
        r, passed = (0.0, False) if rejected else self.score(state, dr.get("branch"))
        n = dr.get("attempts", 1)
        chain, cut = dr.get("chain"), dr.get("cut")
        gen = derived_generator(self.seed, "rewind", n)
        attempt = {"turns": turns, "r": r, "branch": dr.get("branch"), "tried": [],
                   "messages": messages_to_dict(state["messages"])}
        complete = chainstate.Completion(self._complete_call)

        # 1) the chain's decision: does it move to this attempt? (a first attempt always does;
        #    the attempt is scored where the decision reads it)
        steps = list(dr.get("steps") or [])
        d = calls.decide(chain, attempt, cut, config=config, generator=gen, passed=passed,
                          decode_tokens=dr.get("attempt_tokens", 0), span=dr.get("span"),
                          rejected=bool(rejected), complete=complete)
        step = StepRecord(**rejected["step"]) if rejected else d.step
        if step is not None:
            steps.append({**step.model_dump(), "attempt": n, "cut_turn": cut["turn"],
                          "cut_token": cut["position"], "token": cut["token"],
                          "move": cut.get("move", "suffix"),
                          **({"rejected": rejected["reason"]} if rejected else {})})
        attempt = complete.known(attempt)  # as far as the decision completed it
        new_chain = {**(attempt if d.accepted else chain), "tried": list(d.tried)}

        # 2) done, out of budget, or the next cut of the chain's current attempt
        point = None
        if passed:
            status = "passed"
        elif n >= self.max_attempts or (self.budget_tokens and dr.get("spent", 0) >= self.budget_tokens):
            status = "exhausted"
        else:  # the next cut reads the chain's current attempt: complete it
            new_chain = complete(new_chain)
            point = calls.next_cut(new_chain, config, gen)
            status = "rewind" if point is not None else "exhausted"
        if self._model is not None:  # what the chain did not read is never scored
            self._model.release(t["message_id"] for t in turns)
        if self.trace is not None:
            diff = self.repository.diff() if hasattr(self.repository, "diff") else None
            verifier = self._config()["verifier"] if self.verifier is not None else None
            self.trace.verdict(dr, chain, cut, step, passed=passed, status=status,
                               verifier=verifier, diff=diff, rejected=bool(rejected))
        update = {"verdict": r, "status": status, "chain": new_chain, "steps": steps}
        if complete.done:  # the attempt's calls as completed
            update["turns"] = complete.known(attempt)["turns"]
        if point is None:
            return {KEY: update}

        # 3) rewind: repository and conversation as they were before the cut call
        base = new_chain["turns"][point["turn"]]
        if self.repository is not None and base.get("snapshot"):
            self.repository.restore(base["snapshot"])
        messages = messages_from_dict(new_chain["messages"])
        before = next(i for i, m in enumerate(messages) if m.id == base["message_id"])
        branch = self.trace.branch(new_chain, point) if self.trace is not None else None
        update.update(turns=new_chain["turns"][: point["turn"]], resume=point, cut=point,
                      attempts=n + 1, attempt_tokens=0, status="running", verdict=None,
                      branch=branch, span=None, rejected=None)
        return {"messages": [RemoveMessage(id=REMOVE_ALL_MESSAGES), *messages[:before]],
                KEY: update, "jump_to": "model"}

    def _complete_call(self, record: dict) -> tuple[dict, int]:
        """A call record written `unscored`, completed by the chat model that wrote it (its
        kept tail rescored, its no-body scores; recorded in the trace beside the call), and the
        positions scored."""
        got = None if self._model is None else self._model.complete(record["message_id"])
        if got is None:
            raise RewindError("a reply's scoring was left to the decision, but the chat model no "
                              "longer holds it (was the agent resumed in a new process?)")
        meta, positions = got
        reply = reply_tokens(AIMessage(content="", response_metadata={"decision_retry": meta}))
        if self.trace is not None:
            self.trace.rec.record_scores(record.get("trace_turn"), reply.tokens)
        done = calls.call_record(reply, message_id=record["message_id"], index=record["index"],
                                 continuable=record["continuable"], spike=self.spike,
                                 snapshot=record.get("snapshot"),
                                 trace_turn=record.get("trace_turn"))
        return done, positions

    def score(self, state: dict, branch: str | None = None) -> tuple[float, bool]:
        """(r in [0, 1], passed): the verifier's verdict (1 passes), or the tests' (`verdict`:
        the fraction passing, 1 when all do; passed when the run is ok)."""
        if self.verifier is not None:
            value = self.verifier(state)
            if value is None or not 0.0 <= float(value) <= 1.0:
                raise RewindError(f"verdict {value!r} from the verifier: give True/False or 0..1")
            return float(value), float(value) >= 1.0
        result = self.last_test = self.repository.run_tests(self.test_command, self.test_timeout)
        if self.trace is not None:
            self.trace.tests(branch, self.test_command, result)
        return verdict(result.ok, result.fraction_passed), result.ok

    def _config(self) -> dict:
        """What the state records of this middleware (the retry settings as given; `_run` adds
        them as they run)."""
        return {"asked": self.retry.model_dump(mode="json"), "seed": self.seed,
                "max_attempts": self.max_attempts, "budget_tokens": self.budget_tokens,
                "verifier": self.test_command or getattr(self.verifier, "__name__", "verifier")}

"""`ChatDecisionRetry`: a LangChain chat model over our decode engines, with exact token records.

Every reply carries, in `response_metadata`:

* `logprobs`: OpenAI's shape, `{"content": [{"token", "logprob", "top_logprobs": [...]}]}`, so
  code written for ChatOpenAI(logprobs=True) reads it unchanged;
* `decision_retry`: the exact per-token columns (ids, pieces, logp, logq, entropy, top
  alternatives), how many leading tokens were kept from an earlier reply (`kept`), a hash of the
  prompt ids, the finish reason and the message id. The middleware reads these.

Tool calls use the Hermes `<tool_call>` JSON format (toolcalls.py). A call may continue an earlier
reply from token t (`decision_retry_prefix={"message_id", "position", "ids"}`): the kept tokens
come from a fork of that reply's decode state while it is in memory (no re-prefill), else from one
teacher-forced pass over them. `seed=N` makes a call's draws reproducible.
"""

from __future__ import annotations

import json
import math
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field, PrivateAttr

from decision_retry.errors import BadInput
from decision_retry.langchain import toolcalls
from decision_retry.langgraph.state import prompt_hash
from decision_retry.tokens import DecodeState, Sampling

PREFIX_KEY = "decision_retry_prefix"
FINISH = {"eos": "stop", "stop": "stop", "length": "length"}


def reply_text(state: DecodeState) -> str:
    """The reply's text without the end-of-sequence token's own text (e.g. `<|im_end|>`)."""
    tokens = state.tokens[:-1] if state.finish == "eos" and state.tokens else state.tokens
    return "".join(t.text for t in tokens)


def new_message_id() -> str:
    return f"dr-{uuid.uuid4()}"


class ChatDecisionRetry(BaseChatModel):
    """A chat model over a decision-retry engine (`decision_retry.loading.load_lm`, scripted, ...).

    temperature / top_k / max_tokens: how tokens are drawn (temperature 0 = argmax).
    alternatives: top alternatives recorded per token. seed: the base of each call's draws
    (call n without a `seed` argument draws from (seed, n)). kv_states: replies whose decode
    state stays in memory for continuations (0: always teacher-force the kept tokens).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)
    continues_replies: ClassVar[bool] = True  # takes decision_retry_prefix (the middleware asks)

    engine: Any = Field(exclude=True)
    model_name: str | None = None
    temperature: float = Field(1.0, ge=0.0)
    top_k: int | None = Field(None, ge=1)
    max_tokens: int = Field(256, ge=1)
    alternatives: int = Field(5, ge=0)
    seed: int = 0
    kv_states: int = Field(8, ge=0)

    _states: OrderedDict = PrivateAttr(default_factory=OrderedDict)  # message id -> DecodeState
    _calls: int = PrivateAttr(default=0)
    _stats: dict = PrivateAttr(default_factory=lambda: {"calls": 0, "forks": 0, "rescored": 0})

    @property
    def _llm_type(self) -> str:
        return "decision-retry"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.name_of_model, "temperature": self.temperature,
                "top_k": self.top_k, "max_tokens": self.max_tokens}

    @property
    def stats(self) -> dict:
        """Calls made, and how continuations got their prefix: KV forks or a rescoring pass."""
        return self._stats

    @property
    def name_of_model(self) -> str:
        return self.model_name or getattr(self.engine, "name", "model")

    def bind_tools(self, tools: Sequence[Any], *, tool_choice: Any = None, **kwargs: Any):
        """Bind tools: they are listed in the system message, calls come back as tool_calls."""
        return self.bind(tools=toolcalls.tool_schemas(tools), tool_choice=tool_choice, **kwargs)

    # -- one call ----------------------------------------------------------------------------
    def _sampling(self, stop: list[str] | None, cap: int) -> Sampling:
        return Sampling(temperature=self.temperature, top_k=self.top_k, max_new_tokens=cap,
                        stop=tuple(stop or ()), alternatives=self.alternatives)

    def _start(self, messages, stop, kwargs) -> tuple[list[int], DecodeState, Sampling, torch.Generator]:
        """1) the prompt ids, 2) the prefix state (a continuation or the prompt), 3) the draws."""
        chat = toolcalls.render(messages, kwargs.get("tools") or ())
        prompt_ids = self.engine.encode(chat)
        prefix = kwargs.get(PREFIX_KEY)
        kept = int(prefix["position"]) if prefix else 0
        sampling = self._sampling(stop, max(1, self.max_tokens - kept))  # the same total cap
        if prefix:
            start = self._prefix_state(prefix, prompt_ids, sampling)
        else:
            start = self.engine.prefill(prompt_ids)
        seed = kwargs.get("seed")
        if seed is None:
            seed, self._calls = zlib.crc32(f"{self.seed}/{self._calls}".encode()), self._calls + 1
        return prompt_ids, start, sampling, torch.Generator().manual_seed(int(seed))

    def _prefix_state(self, prefix: dict, prompt_ids: list[int], sampling: Sampling) -> DecodeState:
        """The state holding the first `position` tokens of an earlier reply."""
        t, ids = int(prefix["position"]), [int(i) for i in prefix["ids"]][: int(prefix["position"])]
        if len(ids) != t:
            raise BadInput(f"{PREFIX_KEY}: position {t} but only {len(ids)} ids given")
        live = self._states.get(prefix.get("message_id"))
        if live is not None and tuple(live.prompt_ids) == tuple(prompt_ids) and [
            tok.id for tok in live.tokens[:t]
        ] == ids:
            self._states.move_to_end(prefix["message_id"])
            self.stats["forks"] += 1
            return self.engine.fork(live, t)  # the prefix KV cache, no re-prefill
        self.stats["rescored"] += 1  # not in memory (or another prompt): one teacher-forced pass
        return self.engine.score(self.engine.prefill(prompt_ids), ids, sampling)

    def _remember(self, message_id: str, out: DecodeState) -> None:
        if self.kv_states == 0:
            return
        self._states[message_id] = out
        while len(self._states) > self.kv_states:
            self._states.popitem(last=False)  # least recently used first

    def _metadata(self, out: DecodeState, prompt_ids, kept: int, message_id: str) -> dict:
        toks = out.tokens
        finish = out.finish or "length"
        return {
            "model_name": self.name_of_model,
            "finish_reason": FINISH.get(finish, finish),
            "logprobs": {"content": [
                {"token": t.text, "logprob": t.logp, "top_logprobs": [
                    {"token": a.text, "logprob": math.log(a.prob) if a.prob > 0 else -math.inf}
                    for a in t.top]}
                for t in toks]},
            "decision_retry": {
                "message_id": message_id, "kept": kept, "finish": finish,
                "prompt_hash": prompt_hash(prompt_ids), "prompt_tokens": len(prompt_ids),
                "ids": [t.id for t in toks], "pieces": [t.text for t in toks],
                "logp": [t.logp for t in toks], "logq": [t.logq for t in toks],
                "entropy": [t.entropy for t in toks],
                "top": [[[a.text, a.prob] for a in t.top] for t in toks],
                "temperature": self.temperature, "exact": True,
            },
        }

    def _finish_call(self, out, prompt_ids, kept, message_id: str) -> tuple[dict, dict]:
        self._remember(message_id, out)
        self.stats["calls"] += 1
        usage = {"input_tokens": len(prompt_ids), "output_tokens": len(out.tokens) - kept,
                 "total_tokens": len(prompt_ids) + len(out.tokens) - kept}
        return self._metadata(out, prompt_ids, kept, message_id), usage

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        prompt_ids, start, sampling, gen = self._start(messages, stop, kwargs)
        out = self.engine.extend(start, sampling, gen)
        message_id = new_message_id()
        meta, usage = self._finish_call(out, prompt_ids, len(start.tokens), message_id)
        content, calls, invalid = toolcalls.parse(reply_text(out))
        if calls:
            meta["finish_reason"] = "tool_calls"
        message = AIMessage(content=content, tool_calls=calls, invalid_tool_calls=invalid,
                            id=message_id, response_metadata=meta, usage_metadata=usage)
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        """Token by token; text that may open a tool call is held back until it is known."""
        prompt_ids, state, sampling, gen = self._start(messages, stop, kwargs)
        kept, sent, message_id = len(state.tokens), 0, new_message_id()
        one = sampling.model_copy(update={"max_new_tokens": 1})
        text = ""
        for _ in range(sampling.max_new_tokens):
            state = self.engine.extend(state, one, gen)  # same draws as one extend call
            text = "".join(t.text for t in state.tokens[kept:])
            if state.finish == "eos" or any(s in text for s in sampling.stop):
                break
            ready = len(text) - toolcalls.held_back(text)
            ready = len(text[:ready].rstrip()) if ready < len(text) else ready
            if ready > sent:
                piece, sent = text[sent:ready], ready
                if run_manager:
                    run_manager.on_llm_new_token(piece)
                yield ChatGenerationChunk(message=AIMessageChunk(content=piece, id=message_id))
        if state.finish is None:
            state = DecodeState(state.prompt_ids, state.tokens, "length", state.cache)
        elif state.finish != "eos":
            state = DecodeState(state.prompt_ids, state.tokens, "stop", state.cache)
        meta, usage = self._finish_call(state, prompt_ids, kept, message_id)
        content, calls, _ = toolcalls.parse(reply_text(state))
        if calls:
            meta["finish_reason"] = "tool_calls"
        chunks = [tool_call_chunk(name=c["name"], args=json.dumps(c["args"]), id=c["id"], index=i)
                  for i, c in enumerate(calls)]
        yield ChatGenerationChunk(message=AIMessageChunk(
            content=content[sent:], id=message_id, tool_call_chunks=chunks,
            response_metadata=meta, usage_metadata=usage, chunk_position="last"))

"""`ChatDecisionRetry`: a LangChain chat model over our decode engines, with exact token records.

Every reply carries, in `response_metadata`:

* `logprobs`: OpenAI's shape, `{"content": [{"token", "logprob", "top_logprobs": [...]}]}`, so
  code written for ChatOpenAI(logprobs=True) reads it unchanged;
* `decision_retry`: the exact per-token columns (ids, pieces, logp, logq, entropy, top
  alternatives), how many leading tokens were kept from an earlier reply (`kept`), a hash of the
  prompt ids, the finish reason and the message id. The middleware reads these.

Tool calls use the Hermes `<tool_call>` JSON format (toolcalls.py). A call may remake an earlier
reply from token t (`decision_retry_prefix={"message_id", "position", "ids", "move", "ban",
"span", "finish"}`, set by the middleware after a rewind): the kept tokens come from a fork of
that reply's decode state while it is in memory (no re-prefill), else from one teacher-forced pass
over them; `move` "suffix" draws from t to the end, "local" only to the next span boundary and
keeps the rest of the reply, teacher-forced under the new prefix (samplers/local.py; a draw
outside the support returns an empty reply marked `rejected`); `ban` is an id the token at t may
not be. `decision_retry_nobody=[messages]` scores the reply under that second context too
(`alt_logp`, `alt_logq`: surprise cuts). `seed=N` makes a call's draws reproducible.
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
from decision_retry.langgraph.state import alt_columns, prompt_hash
from decision_retry.samplers import moves, surprise
from decision_retry.samplers.local import SpanRule
from decision_retry.tokens import DecodeState, Sampling

PREFIX_KEY = "decision_retry_prefix"
NOBODY_KEY = "decision_retry_nobody"
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
        t = int(prefix["position"])
        return self.engine.fork(self._base_state(prefix, prompt_ids, sampling), t)

    def _base_state(self, prefix: dict, prompt_ids: list[int], sampling: Sampling) -> DecodeState:
        """The earlier reply (its first `position` tokens at least) as a state that forks at
        `position`: its decode state while in memory, else one teacher-forced pass over the ids."""
        t, ids = int(prefix["position"]), [int(i) for i in prefix["ids"]]
        if len(ids) < t:
            raise BadInput(f"{PREFIX_KEY}: position {t} but only {len(ids)} ids given")
        live = self._states.get(prefix.get("message_id"))
        if live is not None and tuple(live.prompt_ids) == tuple(prompt_ids) and [
            tok.id for tok in live.tokens[: len(ids)]
        ] == ids:
            self._states.move_to_end(prefix["message_id"])
            self.stats["forks"] += 1
            return live  # the prefix KV cache, no re-prefill
        self.stats["rescored"] += 1  # not in memory (or another prompt): one teacher-forced pass
        whole = self.engine.score(self.engine.prefill(prompt_ids), ids, sampling)
        return DecodeState(whole.prompt_ids, whole.tokens, prefix.get("finish"), whole.cache)

    def _local(self, prefix: dict, prompt_ids: list[int], sampling: Sampling,
               gen: torch.Generator):
        """A local move from the earlier reply (samplers/local.py), with the length cap of
        the whole reply; its LocalProposal."""
        x = self._base_state(prefix, prompt_ids, sampling)
        move = moves.Local(SpanRule.model_validate(prefix.get("span") or {}))
        return move.propose(self.engine, x, int(prefix["position"]), sampling, gen,
                            cap=self.max_tokens, exclude=prefix.get("ban"))

    def _nobody(self, state: DecodeState, kwargs: dict, sampling: Sampling) -> DecodeState:
        """The reply with its scores under the second context (`decision_retry_nobody`)."""
        second = kwargs.get(NOBODY_KEY)
        if not second:
            return state
        ids = self.engine.encode(toolcalls.render(second, kwargs.get("tools") or ()))
        ctx = surprise.AltContext(self.engine, self.engine.prefill(ids))
        return surprise.annotate(ctx, state, sampling).y

    def _remember(self, message_id: str, out: DecodeState) -> None:
        if self.kv_states == 0:
            return
        self._states[message_id] = out
        while len(self._states) > self.kv_states:
            self._states.popitem(last=False)  # least recently used first

    def _metadata(self, out: DecodeState, prompt_ids, kept: int, message_id: str,
                  extra: dict | None = None) -> dict:
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
                "entropy": [t.entropy for t in toks], **alt_columns(toks),
                "top": [[[a.text, a.prob] for a in t.top] for t in toks],
                "temperature": self.temperature, "exact": True,
                "decode_tokens": len(toks) - kept, **(extra or {}),
            },
        }

    def _finish_call(self, out, prompt_ids, kept, message_id: str,
                     extra: dict | None = None) -> tuple[dict, dict]:
        self._remember(message_id, out)
        self.stats["calls"] += 1
        new = (extra or {}).get("decode_tokens", len(out.tokens) - kept)
        usage = {"input_tokens": len(prompt_ids), "output_tokens": new,
                 "total_tokens": len(prompt_ids) + new}
        return self._metadata(out, prompt_ids, kept, message_id, extra), usage

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        prefix = kwargs.get(PREFIX_KEY)
        if prefix and prefix.get("move") == "local":
            return self._generate_local(messages, stop, kwargs)
        prompt_ids, start, sampling, gen = self._start(messages, stop, kwargs)
        ban = {} if not prefix or prefix.get("ban") is None else {"exclude": int(prefix["ban"])}
        out = self._nobody(self.engine.extend(start, sampling, gen, **ban), kwargs, sampling)
        message_id = new_message_id()
        meta, usage = self._finish_call(out, prompt_ids, len(start.tokens), message_id)
        return self._result(out, meta, usage, message_id)

    def _generate_local(self, messages, stop, kwargs) -> ChatResult:
        """A local move (`decision_retry_prefix` with move "local"); an empty reply marked
        `rejected` when the draw fell outside the support."""
        chat = toolcalls.render(messages, kwargs.get("tools") or ())
        prompt_ids = self.engine.encode(chat)
        prefix, t = kwargs[PREFIX_KEY], int(kwargs[PREFIX_KEY]["position"])
        sampling = self._sampling(stop, self.max_tokens)
        seed = kwargs.get("seed")
        if seed is None:
            seed, self._calls = zlib.crc32(f"{self.seed}/{self._calls}".encode()), self._calls + 1
        p = self._local(prefix, prompt_ids, sampling, torch.Generator().manual_seed(int(seed)))
        message_id = new_message_id()
        extra = {"decode_tokens": p.decode_tokens, "span": [p.s, p.m],
                 "prefilled": p.prefill_positions}
        if p.y is None:  # out of the support: no reply to run (the middleware rejects it)
            self.stats["calls"] += 1
            meta = {"model_name": self.name_of_model, "finish_reason": "stop",
                    "decision_retry": {"message_id": message_id, "kept": t, "rejected": p.reason,
                                       "prompt_hash": prompt_hash(prompt_ids), **extra}}
            return ChatResult(generations=[ChatGeneration(message=AIMessage(
                content="", id=message_id, response_metadata=meta))])
        out = self._nobody(p.y, kwargs, sampling)
        meta, usage = self._finish_call(out, prompt_ids, t, message_id, extra)
        return self._result(out, meta, usage, message_id)

    def _result(self, out: DecodeState, meta: dict, usage: dict, message_id: str) -> ChatResult:
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
        """Token by token; text that may open a tool call is held back until it is known. A
        local move is drawn whole and comes as one chunk."""
        prefix = kwargs.get(PREFIX_KEY)
        if prefix and prefix.get("move") == "local":
            message = self._generate_local(messages, stop, kwargs).generations[0].message
            yield ChatGenerationChunk(message=AIMessageChunk(
                content=message.content, id=message.id, response_metadata=message.response_metadata,
                usage_metadata=message.usage_metadata, chunk_position="last",
                tool_call_chunks=[tool_call_chunk(name=c["name"], args=json.dumps(c["args"]),
                                                  id=c["id"], index=i)
                                  for i, c in enumerate(message.tool_calls)]))
            return
        prompt_ids, state, sampling, gen = self._start(messages, stop, kwargs)
        ban = None if not prefix or prefix.get("ban") is None else int(prefix["ban"])
        kept, sent, message_id = len(state.tokens), 0, new_message_id()
        one = sampling.model_copy(update={"max_new_tokens": 1})
        text = ""
        for _ in range(sampling.max_new_tokens):
            state = self.engine.extend(state, one, gen,  # same draws as one extend call
                                       **({} if ban is None else {"exclude": ban}))
            ban = None  # the first drawn token only
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
        state = self._nobody(state, kwargs, sampling)
        meta, usage = self._finish_call(state, prompt_ids, kept, message_id)
        content, calls, _ = toolcalls.parse(reply_text(state))
        if calls:
            meta["finish_reason"] = "tool_calls"
        chunks = [tool_call_chunk(name=c["name"], args=json.dumps(c["args"]), id=c["id"], index=i)
                  for i, c in enumerate(calls)]
        yield ChatGenerationChunk(message=AIMessageChunk(
            content=content[sent:], id=message_id, tool_call_chunks=chunks,
            response_metadata=meta, usage_metadata=usage, chunk_position="last"))

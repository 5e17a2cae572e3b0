"""`ChatDecisionRetry`: a LangChain chat model over our decode engines, with exact token records.

Every reply carries, in `response_metadata`:

* `logprobs`: OpenAI's shape, `{"content": [{"token", "logprob", "top_logprobs": [...]}]}`, so
  code written for ChatOpenAI(logprobs=True) reads it unchanged;
* `decision_retry`: the exact per-token columns (ids, pieces, logp, logq, entropy, top
  alternatives), how many leading tokens were kept from an earlier reply (`kept`), a hash of the
  prompt ids, the finish reason and the message id. The middleware reads these.

Tool calls use the Hermes `<tool_call>` JSON format (toolcalls.py). A call may remake an earlier
reply from token t (`decision_retry_prefix={"message_id", "position", "ids", "move", "ban",
"span", "finish", "cut_token"}`, set by the middleware after a rewind): the kept tokens come from
a fork of that reply's decode state while it is in memory (no re-prefill), else from one
teacher-forced pass over them; `move` "suffix" draws from t to the end, "local" only to the next
span boundary and keeps the rest of the reply, teacher-forced under the new prefix
(samplers/local.py; a draw outside the support returns an empty reply marked `rejected`); `ban`
is an id the token at t may not be; `cut_token` "nobody" draws the token at t under the second
context. `decision_retry_nobody=[messages]` scores the reply under that second context too
(`alt_logp`, `alt_logq`: surprise cuts), from the earlier reply's no-body state when a remade
reply shares its first tokens and that state is in memory. `decision_retry_scoring={"exact",
"defer"}` says how (samplers/deferred.py): that pass exact (decoding's numbers, the default) or
in bulk (`Engine.score(exact=False)`); `defer` leaves it, and a local move's kept tail, undone
until `complete(message_id)` is called (the middleware calls it where the MH chain reads the
reply; the metadata then says `unscored`, and the tail carries the earlier reply's scores).
`seed=N` makes a call's draws reproducible.
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
from decision_retry.samplers import deferred, moves, surprise
from decision_retry.samplers.local import SpanRule
from decision_retry.tokens import DecodeState, Sampling

PREFIX_KEY = "decision_retry_prefix"
NOBODY_KEY = "decision_retry_nobody"
SCORING_KEY = "decision_retry_scoring"
FINISH = {"eos": "stop", "stop": "stop", "length": "length"}


def reply_text(state: DecodeState) -> str:
    """The reply's text without the end-of-sequence token's own text (e.g. `<|im_end|>`)."""
    tokens = state.tokens[:-1] if state.finish == "eos" and state.tokens else state.tokens
    return "".join(t.text for t in tokens)


def new_message_id() -> str:
    return f"dr-{uuid.uuid4()}"


def _remade(prefix: dict | None) -> bool:
    """Is the call remade by more than a continuation (a local move, the no-body cut token)?"""
    return bool(prefix) and (prefix.get("move") == "local" or prefix.get("cut_token") == "nobody")


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
    _alts: OrderedDict = PrivateAttr(default_factory=OrderedDict)  # message id -> no-body state
    _pending: dict = PrivateAttr(default_factory=dict)  # message id -> scoring left to `complete`

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

    def _move(self, prefix: dict, prompt_ids: list[int], sampling: Sampling, kwargs: dict,
              gen: torch.Generator) -> tuple[DecodeState | None, dict, Any]:
        """The cut's move from the earlier reply when it needs more than a continuation: a local
        move (samplers/local.py, the length cap of the whole reply) and/or the cut's token drawn
        under the second context (`cut_token` "nobody", surprise.draw_first). (the reply, or None
        for a local draw outside the support; what the metadata says of the move; a local
        proposal whose kept tail is still to be rescored, or None)."""
        x = self._base_state(prefix, prompt_ids, sampling)
        t, ban = int(prefix["position"]), prefix.get("ban")
        first = None
        if prefix.get("cut_token") == "nobody":
            ctx = self._alt_context(kwargs)
            alt_x = self.engine.score(ctx.state, [tok.id for tok in x.tokens[:t]], sampling)
            first = moves.NoBody().first(lambda: ctx, alt_x, self.engine, t, sampling, gen,
                                         exclude=ban)
        if prefix.get("move") != "local":  # a suffix move whose first token came from B
            q = sampling.model_copy(update={"max_new_tokens": max(1, self.max_tokens - t)})
            y, more = surprise.first_then_extend(self.engine, first(self.engine.fork(x, t)), t,
                                                 q, gen)
            return y, {"decode_tokens": 1 + more, "prefilled": 1}, None
        move = moves.Local(SpanRule.model_validate(prefix.get("span") or {}))
        p = move.propose(self.engine, x, t, sampling, gen, cap=self.max_tokens, first=first,
                         exclude=ban, defer=bool((kwargs.get(SCORING_KEY) or {}).get("defer")))
        extra = {"decode_tokens": p.decode_tokens, "span": [p.s, p.m],
                 "prefilled": p.prefill_positions + (first is not None)}
        if p.y is None:
            return None, {**extra, "rejected": p.reason}, None
        return p.y, extra, (p if p.rescore is not None else None)

    def _alt_context(self, kwargs: dict) -> surprise.AltContext:
        """The second context of this call (`decision_retry_nobody`, with the call's tools)."""
        ids = self.engine.encode(toolcalls.render(kwargs[NOBODY_KEY], kwargs.get("tools") or ()))
        return surprise.AltContext(self.engine, self.engine.prefill(ids))

    # -- the scoring the MH chain reads (samplers/deferred.py) --------------------------------
    def _scored(self, y: DecodeState, kwargs: dict, sampling: Sampling, message_id: str,
                kept: int, tail=None) -> tuple[DecodeState, dict]:
        """`y` with the scoring the call asks for: a local move's kept tail (`tail`) and the
        pass under the second context; now, or left to `complete` (`defer`). What the metadata
        says of it: `unscored`, or the positions scored."""
        prefix, nobody = kwargs.get(PREFIX_KEY), bool(kwargs.get(NOBODY_KEY))
        base = None if not (prefix and nobody) else self._alts.get(prefix.get("message_id"))
        d = deferred.Deferred(tail=tail, nobody=nobody, base=base,
                              t=0 if base is None else int(prefix["position"]))
        if not d.pending:
            return y, {}
        if (kwargs.get(SCORING_KEY) or {}).get("defer"):
            self._pending[message_id] = (y, d, kwargs, sampling, kept)
            return y, {"unscored": True}
        c = self._complete(y, d, kwargs, sampling, message_id)
        return c.y, {"prefilled": c.positions}

    def _complete(self, y: DecodeState, d: deferred.Deferred, kwargs: dict, sampling: Sampling,
                  message_id: str) -> deferred.Completed:
        """deferred.complete under the call's second context; its no-body state is kept."""
        ctx = self._alt_context(kwargs) if d.nobody else None
        if d.base is not None and tuple(d.base.prompt_ids) != tuple(ctx.state.prompt_ids):
            d = deferred.Deferred(tail=d.tail, nobody=True)  # another second context: in full
        exact = (kwargs.get(SCORING_KEY) or {}).get("exact", True)
        c = deferred.complete(y, d, context=lambda: ctx, q=sampling, exact=exact)
        if c.alt is not None:
            self._remember(message_id, c.alt, self._alts)
        return c

    def complete(self, message_id: str) -> tuple[dict, int] | None:
        """A reply written with `defer`, completed: its `decision_retry` metadata as it would
        have been (the kept tail rescored, the no-body scores) and the positions scored; None
        when nothing of it waits here (never deferred, completed, released or forgotten)."""
        entry = self._pending.pop(message_id, None)
        if entry is None:
            return None
        y, d, kwargs, sampling, kept = entry
        c = self._complete(y, d, kwargs, sampling, message_id)
        self._remember(message_id, c.y)
        return self._metadata(c.y, c.y.prompt_ids, kept, message_id)["decision_retry"], c.positions

    def release(self, message_ids) -> None:
        """Forget the deferred scoring of replies the chain did not read."""
        for mid in message_ids:
            self._pending.pop(mid, None)

    def _remember(self, message_id: str, out: DecodeState, registry=None) -> None:
        registry = self._states if registry is None else registry
        if self.kv_states == 0:
            return
        registry[message_id] = out
        while len(registry) > self.kv_states:
            registry.popitem(last=False)  # least recently used first

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
        if message_id not in self._pending or self._pending[message_id][1].tail is None:
            self._remember(message_id, out)  # (a tail not yet rescored: no usable state)
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
        if _remade(prefix):
            return self._generate_move(messages, stop, kwargs)
        prompt_ids, start, sampling, gen = self._start(messages, stop, kwargs)
        ban = {} if not prefix or prefix.get("ban") is None else {"exclude": int(prefix["ban"])}
        message_id, kept = new_message_id(), len(start.tokens)
        out, extra = self._scored(self.engine.extend(start, sampling, gen, **ban), kwargs,
                                  sampling, message_id, kept)
        meta, usage = self._finish_call(out, prompt_ids, kept, message_id, extra)
        return self._result(out, meta, usage, message_id)

    def _generate_move(self, messages, stop, kwargs) -> ChatResult:
        """A call remade by `_move`; an empty reply marked `rejected` when a local draw fell
        outside the support."""
        chat = toolcalls.render(messages, kwargs.get("tools") or ())
        prompt_ids = self.engine.encode(chat)
        prefix, t = kwargs[PREFIX_KEY], int(kwargs[PREFIX_KEY]["position"])
        sampling = self._sampling(stop, self.max_tokens)
        seed = kwargs.get("seed")
        if seed is None:
            seed, self._calls = zlib.crc32(f"{self.seed}/{self._calls}".encode()), self._calls + 1
        y, extra, tail = self._move(prefix, prompt_ids, sampling, kwargs,
                                    torch.Generator().manual_seed(int(seed)))
        message_id = new_message_id()
        if y is None:  # out of the support: no reply to run (the middleware rejects it)
            self.stats["calls"] += 1
            meta = {"model_name": self.name_of_model, "finish_reason": "stop",
                    "decision_retry": {"message_id": message_id, "kept": t,
                                       "prompt_hash": prompt_hash(prompt_ids), **extra}}
            return ChatResult(generations=[ChatGeneration(message=AIMessage(
                content="", id=message_id, response_metadata=meta))])
        out, scoring = self._scored(y, kwargs, sampling, message_id, t, tail)
        extra = {**extra, **scoring, "prefilled": extra["prefilled"] + scoring.get("prefilled", 0)}
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
        local move or a no-body cut token is drawn whole and comes as one chunk."""
        prefix = kwargs.get(PREFIX_KEY)
        if _remade(prefix):
            message = self._generate_move(messages, stop, kwargs).generations[0].message
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
        state, extra = self._scored(state, kwargs, sampling, message_id, kept)
        meta, usage = self._finish_call(state, prompt_ids, kept, message_id, extra)
        content, calls, _ = toolcalls.parse(reply_text(state))
        if calls:
            meta["finish_reason"] = "tool_calls"
        chunks = [tool_call_chunk(name=c["name"], args=json.dumps(c["args"]), id=c["id"], index=i)
                  for i, c in enumerate(calls)]
        yield ChatGenerationChunk(message=AIMessageChunk(
            content=content[sent:], id=message_id, tool_call_chunks=chunks,
            response_metadata=meta, usage_metadata=usage, chunk_position="last"))

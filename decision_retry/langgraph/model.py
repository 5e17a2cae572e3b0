"""The model node: a local model through our decode engine, recording every token's entropy.

A call writes one message (an `AIMessage`, or a dict when the state holds dict messages) and one
turn record into `state["decision_retry"]`. After a rewind (a fork of the thread at the checkpoint
before the cut turn), the state carries `resume`: the node then keeps the cut turn's tokens before
the cut verbatim and resamples from the cut token on. The prefix's KV cache is reused with
`LM.fork` while the turn's `DecodeState` is still in this process (a small registry keyed by
message id); after a restore from disk it is rebuilt with one prefill of prompt + prefix.

The cut's move says how the call is remade (chainstate.py): a suffix move draws from the cut to
the end, a local move (samplers/local.py) only to the next span boundary and keeps the rest of
the call, teacher-forced under the new prefix; an excluding cut bans the current token at the
cut. A local draw outside the support makes no proposal: the call and the attempt's later calls
replay the chain's current attempt (no decoding) and the rewind node records the rejection.

With surprise cuts every reply is scored under the second context (`nobody`), in bulk unless the
cut token is drawn there (`RetryConfig.nobody_scoring`), from the no-body state of the call it
was cut from where that is still in memory. When a rewind node scores through this node
(`rewind_node(model=...)`) and the run is delayed, that pass and a local move's kept tail wait
until the chain reads the reply, as in `fix` (samplers/deferred.py): the record is marked
`unscored`, the node keeps the work in memory, and the rewind node calls `complete` only for a
first attempt that does not pass and a proposal whose first stage accepts. Without such a rewind
node the same work is done when the reply is written.
"""

from __future__ import annotations

import uuid
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch

from decision_retry.choices import CUT_STRATEGIES, DEFAULT_RUN, SPIKE_THRESHOLD
from decision_retry.errors import BadInput, DecisionRetryError
from decision_retry.langgraph import chainstate
from decision_retry.langgraph.state import (
    KEY,
    progress,
    prompt_hash,
    tokens_of,
    turn_record,
)
from decision_retry.lm import LM, DecodeState, Sampling
from decision_retry.otel.attributes import engine_provider
from decision_retry.samplers import deferred, surprise
from decision_retry.samplers.chain import RetryConfig
from decision_retry.trace.decisions import SpikeRule
from decision_retry.trace.models import Cut

# `fix`'s run (choices.DEFAULT_RUN): `auto` moves and cut weights, def-line suffix moves; each
# node resolves it for its model (chainstate.resolve): local moves, exclusion and delayed
# acceptance with an in-process engine, surprise cuts where a second context is given
DEFAULT_RETRY = RetryConfig(**DEFAULT_RUN)
DEFAULT_SPIKE = SpikeRule(threshold=SPIKE_THRESHOLD)  # as `fix`: a decision point
UNSUPPORTED = {
    "egps": "each of its K tries would need its own graph run",
    "from-end": "it appends to the end instead of cutting; loop back in your own graph for that",
}


class RewindError(DecisionRetryError):
    """A rewind cannot go on: the restored state does not match the turn it was cut from."""


def check_strategy(retry: RetryConfig) -> None:
    """The strategies the integrations run: rewind (any cut rule, any move, one chain) and
    restart."""
    if retry.strategy in UNSUPPORTED:
        raise BadInput(
            f"strategy {retry.strategy!r} is not supported by the LangGraph nodes "
            f"({UNSUPPORTED[retry.strategy]}); use rewind or restart"
        )
    if retry.new_chain_after is not None:
        raise BadInput("new_chain_after is not supported by the LangGraph nodes or the LangChain "
                       "middleware (fix and bench run it); leave it unset")


def derived_generator(seed: int, *parts: object) -> torch.Generator:
    """A generator seeded from (seed, parts): the same draws after a restore from disk."""
    key = "/".join(map(str, (seed, *parts)))
    return torch.Generator().manual_seed(zlib.crc32(key.encode()))


def chat(messages: Sequence[Any], system: str | None = None) -> list[dict]:
    """LangChain messages or dicts as [{"role", "content"}] for the model's chat template."""
    roles = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}
    out = [{"role": "system", "content": system}] if system else []
    for m in messages:
        if isinstance(m, dict):
            out.append({"role": m.get("role", "user"), "content": str(m.get("content", ""))})
        else:  # a langchain_core BaseMessage
            out.append({"role": roles.get(m.type, "user"), "content": m.text})
    return out


def hide_tool_output(*tools: str, placeholder: str = "(not shown)") -> Callable[[list], list]:
    """A second context for surprise cuts: the messages with the results of the named tools
    (e.g. the one that reads the code) replaced by `placeholder`, so a token the model copies
    from what they showed stands out there. LangChain `ToolMessage`s or dicts with role "tool"
    and a "name"; `model_node(nobody=lambda s: hide(s["messages"]))`, or the middleware's
    `nobody=hide` as it is."""
    def hidden(m: Any) -> bool:
        if isinstance(m, dict):
            return m.get("role") == "tool" and m.get("name") in tools
        return getattr(m, "type", None) == "tool" and getattr(m, "name", None) in tools

    def second(messages: list) -> list:
        return [({**m, "content": placeholder} if isinstance(m, dict)
                 else m.model_copy(update={"content": placeholder})) if hidden(m) else m
                for m in messages]

    return second


class ModelNode:
    """A graph node that calls a local model and records its tokens (built by `model_node`)."""

    def __init__(
        self,
        lm: LM,
        *,
        messages_key: str = "messages",
        system: str | None = None,
        prompt: Callable[[dict], str | list[dict]] | None = None,
        nobody: Callable[[dict], str | list[dict]] | None = None,
        sampling: Sampling | None = None,
        retry: RetryConfig = DEFAULT_RETRY,
        recorder: Any = None,
        workspace: Any = None,
        spike: SpikeRule | None = DEFAULT_SPIKE,
        seed: int = 0,
        message_format: Literal["auto", "langchain", "dict"] = "auto",
        kv_states: int = 8,
    ) -> None:
        check_strategy(retry)
        if kv_states < 0:
            raise BadInput(f"kv_states={kv_states}: give 0 (no KV reuse) or more")
        self.run = chainstate.resolve(retry, engine=lm, second_context=nobody is not None)
        chainstate.refuse(self.run, engine=lm, second_context=nobody is not None,
                          model=getattr(lm, "name", "the model"))
        self.lm = lm
        self.messages_key = messages_key
        self.system = system
        self.prompt = prompt
        self.nobody = nobody
        self.sampling = sampling or Sampling(temperature=retry.q_temperature)
        self.retry = retry
        self.recorder = recorder
        self.workspace = workspace
        self.spike = spike
        self.seed = seed
        self.message_format = message_format
        self.kv_states = kv_states
        self._states: OrderedDict[str, DecodeState] = OrderedDict()  # message id -> decode state
        self._alt: tuple[tuple[int, ...], surprise.AltContext] | None = None  # the last one
        self._alts: OrderedDict[str, DecodeState] = OrderedDict()  # message id -> no-body state
        # message id -> the work a reply's scoring waits for (a rewind node completes it)
        self._pending: dict[str, tuple[DecodeState, deferred.Deferred, dict, Any]] = {}
        self.deferring = False  # set by rewind_node(model=self) on a delayed run
        # how each resample got its prefix, and which moves ran (local draws out of the support
        # included)
        self.stats = {"calls": 0, "forks": 0, "prefills": 0, "suffix": 0, "local": 0,
                      "restart": 0, "out_of_support": 0, "replayed": 0}

    # -- the node --------------------------------------------------------------------------
    def __call__(self, state: dict) -> dict:
        dr = progress(state)
        resume = dr.get("resume")
        turns = dr.get("turns") or []
        if resume is None and (not turns or dr.get("status") not in (None, "running")):
            dr, turns = {}, []  # a new episode: first call of the thread, or a task after the last
        k, new_attempt = len(turns), resume is not None or not turns
        attempt = dr.get("attempts", 0) + (1 if new_attempt else 0)
        messages = list(state.get(self.messages_key) or [])
        prompt = self.prompt(state) if self.prompt else chat(messages, self.system)
        prompt_ids = self.lm.encode(prompt)
        update: dict[str, Any] = {"resume": None}
        if not dr:
            update.update(chain=None, steps=[], spent=0, prefilled=0, run=None, branch=None,
                          episode=str(uuid.uuid4()), config=self._config())
        if new_attempt:
            update.update(attempts=attempt, attempt_tokens=0, cut=resume, verdict=None,
                          status="running", next_cut=None, span=None, rejected=None)
        gen = derived_generator(self.seed, "model", attempt, k)
        message_id = str(uuid.uuid4())

        # 1) the reply: a move from the chain's turn k (after a rewind), a replay of it (after a
        #    local draw outside the support), or a fresh call from the prompt
        scored, replay, tail = 0, None, None
        if resume is not None:
            base = self._cut_turn(dr, resume, k)
            snapshot = self._restore(base)
            out, new_tokens, kept, scored, tail = self._move(state, base, resume, prompt_ids,
                                                             gen, update)
            if out is None:
                replay = base
        elif dr.get("rejected") and k < len((dr.get("chain") or {}).get("turns") or []):
            replay = dr["chain"]["turns"][k]
            snapshot = self.workspace.snapshot(f"before turn {k}") if self.workspace else None
            new_tokens = kept = 0
        else:
            snapshot = self.workspace.snapshot(f"before turn {k}") if self.workspace else None
            out = self.lm.extend(self.lm.prefill(prompt_ids), self.sampling, gen)
            new_tokens, kept = len(out.tokens), 0
        self.stats["calls"] += 1

        # 2) record: the registry (for KV forks), the scores under the second context, the
        #    trace, the state and the message
        if replay is not None:  # the chain's call as it was (the rewind node rejects it)
            self.stats["replayed"] += 1
            rec = {**replay, "message_id": message_id, "index": k, "snapshot": snapshot,
                   "trace_turn": None}
            text, finish = replay["text"], replay["finish"]
        else:
            d = self._deferred(resume, tail)
            if d.pending and not self.deferring:  # scored now (no rewind node scores later)
                out, alt, positions = self._completed(state, out, d)
                scored += positions
                d = deferred.Deferred()
                if alt is not None:
                    self._remember(message_id, alt, self._alts)
            if d.tail is None:  # a deferred tail: no usable state before it is rescored
                self._remember(message_id, out)
            trace_turn = self._trace(dr, update, resume, k, out, messages, snapshot)
            rec = turn_record(out, message_id=message_id, index=k, kept=kept,
                              spike=self.spike, snapshot=snapshot,
                              trace_turn=None if trace_turn is None else trace_turn.id)
            if d.pending:
                self._pending[message_id] = (out, d, state, trace_turn)
                rec["unscored"] = True
            text, finish = out.text, out.finish
        update["turns"] = [*turns, rec]
        update["spent"] = dr.get("spent", 0) + new_tokens
        update["prefilled"] = dr.get("prefilled", 0) + scored
        update["attempt_tokens"] = (0 if new_attempt else dr.get("attempt_tokens", 0)) + new_tokens
        message = self._message(messages, text, finish, message_id, rec, attempt)
        return {self.messages_key: [message], KEY: update}

    # -- rewinds ---------------------------------------------------------------------------
    def _move(self, state: dict, base: dict, resume: dict, prompt_ids: list[int], gen,
              update: dict) -> tuple[DecodeState | None, int, int, int, Any]:
        """The cut's move from the chain's call `base`: (reply or None when a local draw fell
        outside the support, decode tokens, tokens kept before the cut, positions scored, a
        local move's proposal whose tail is still to be rescored or None)."""
        t, move, ban = resume["position"], resume.get("move", "suffix"), resume.get("ban")
        self.stats[move] += 1
        x = self._whole(base, t, prompt_ids)
        first = None  # the no-body cut token: y_t drawn under the second context
        if self.run.first.scored and move != "restart":
            ctx = self._alt_context(state)
            ids = [tok.id for tok in x.tokens[:t]]
            alt_x = ctx.lm.score(ctx.state, ids, self.sampling)  # B over x_<t
            first = self.run.first.first(lambda: ctx, alt_x, self.lm, t, self.sampling, gen,
                                         exclude=ban)
        if move != "local":  # 1) suffix (restart: from position 0): draw from the cut to the end
            start = self.lm.fork(x, t)
            q = self.sampling.model_copy(  # the same total cap
                update={"max_new_tokens": max(1, self.sampling.max_new_tokens - t)})
            if first is not None:
                out, more = surprise.first_then_extend(self.lm, first(start), t, q, gen)
                return out, 1 + more, t, 1, None  # y_t scored in the call's own context
            out = self.lm.extend(start, q, gen, **({} if ban is None else {"exclude": ban}))
            return out, len(out.tokens) - t, t, 0, None
        # 2) local: draw to the span boundary, keep the call's tail rescored (samplers/local.py)
        point = chainstate.cut_point(resume, self.run)
        p = point.kernel.propose(self.lm, x, t, self.sampling, gen, first=first,
                                 cap=self.sampling.max_new_tokens, exclude=point.ban,
                                 defer=self.deferring)
        scored = p.prefill_positions + (first is not None)
        if p.y is None:  # out of the support: no proposal, the chain's calls replay
            self.stats["out_of_support"] += 1
            step = chainstate.rejected_step(tokens_of(base), resume, m=p.m,
                                            decode_tokens=p.decode_tokens)
            update["rejected"] = {"reason": p.reason, "step": step.model_dump()}
            return None, p.decode_tokens, t, scored, None
        offset = resume["index"] - t  # flattened position of the cut call's first token
        update["span"] = [offset + p.s, p.m, len(x.tokens) - p.s]
        return p.y, p.decode_tokens, t, scored, (p if p.rescore is not None else None)

    def _cut_turn(self, dr: dict, resume: dict, k: int) -> dict:
        chain = dr.get("chain") or {}
        turns = chain.get("turns") or []
        if resume["turn"] != k or resume["turn"] >= len(turns):
            raise RewindError(
                f"rewound to a checkpoint after {k} model calls, but the cut is in call "
                f"{resume['turn']}: fork at the checkpoint before that call (see fork_point)"
            )
        base = turns[resume["turn"]]
        kept = [t["message_id"] for t in (dr.get("turns") or [])]
        if base["message_id"] != resume["message_id"] or kept != [
            t["message_id"] for t in turns[:k]
        ]:
            raise RewindError("the restored checkpoint is not in the chain's history before it")
        return base

    def _restore(self, base: dict) -> str | None:
        """Files as they were before the cut turn (when the graph edits a workspace)."""
        if self.workspace is not None and base.get("snapshot"):
            self.workspace.restore(base["snapshot"])
        return base.get("snapshot")

    def _prefix(self, base: dict, t: int, prompt_ids: list[int]) -> DecodeState:
        """The cut turn's state holding tokens[:t]: a KV fork if still in memory, else a prefill."""
        return self.lm.fork(self._whole(base, t, prompt_ids), t)

    def _whole(self, base: dict, t: int, prompt_ids: list[int]) -> DecodeState:
        """The cut turn's whole reply as a state that forks at t: the decode state still in
        memory, else its tokens over one prefill of prompt + tokens[:t]."""
        if prompt_hash(prompt_ids) != base["prompt_hash"]:
            raise RewindError(
                "the restored state prompts the model differently from the turn being cut "
                "(is the prompt built only from the graph state?)"
            )
        live = self._states.get(base["message_id"])
        if live is not None:
            self._states.move_to_end(base["message_id"])  # the chain may cut it again
            self.stats["forks"] += 1
            return live  # 1) reuse the prefix KV cache, no re-prefill
        self.stats["prefills"] += 1  # 2) restored from disk: one prefill of prompt + prefix
        tokens = tokens_of(base)
        ids = [*prompt_ids, *(tok.id for tok in tokens[:t])]
        return DecodeState(tuple(prompt_ids), tokens, base["finish"], self.lm.prefill(ids).cache)

    def _alt_context(self, state: dict) -> surprise.AltContext:
        """The second context of this call (`nobody(state)`: a prompt, or messages as the
        state holds them, rendered with the system prompt as the call's own), prefilled."""
        second = self.nobody(state)
        if not isinstance(second, str) and any(not isinstance(m, dict) for m in second):
            second = chat(second, self.system)
        ids = tuple(self.lm.encode(second))
        if self._alt is None or self._alt[0] != ids:  # one prefill per distinct second context
            self._alt = (ids, surprise.AltContext(self.lm, self.lm.prefill(list(ids))))
        return self._alt[1]

    # -- scoring the chain reads (samplers/deferred.py) -----------------------------------------
    def _deferred(self, resume: dict | None, tail) -> deferred.Deferred:
        """What a new reply's scoring needs: a local move's kept tail (`tail`, deferred), and
        with surprise cuts its no-body pass, from the cut call's no-body state where it is in
        memory (the reply shares its first t tokens)."""
        nobody = self.run.scored and self.run.strategy in CUT_STRATEGIES  # as agent/graph.py
        base = None
        if nobody and resume is not None and resume.get("move") != "restart":
            base = self._alts.get(resume["message_id"])
        return deferred.Deferred(tail=tail, nobody=bool(nobody), base=base,
                                 t=0 if base is None else resume["position"])

    def _completed(self, state: dict, out: DecodeState,
                   d: deferred.Deferred) -> tuple[DecodeState, DecodeState | None, int]:
        """`out` completed (deferred.complete) under this call's second context (`state`: the
        graph state the call saw): (reply, its no-body state, positions scored)."""
        ctx = self._alt_context(state) if d.nobody else None
        if d.base is not None and tuple(d.base.prompt_ids) != tuple(ctx.state.prompt_ids):
            d = deferred.Deferred(tail=d.tail, nobody=True)  # another second context: in full
        c = deferred.complete(out, d, context=lambda: ctx, q=self.sampling,
                              exact=self.run.nobody_exact)
        return c.y, c.alt, c.positions

    def complete(self, record: dict) -> tuple[dict, int]:
        """A turn record this node wrote `unscored`, completed (its kept tail rescored, its
        no-body scores; recorded in the trace beside the turn), and the positions scored; a
        record with nothing pending as it is. The rewind node calls it where the chain reads
        the reply."""
        entry = self._pending.pop(record["message_id"], None)
        if entry is None:
            if record.get("unscored"):
                raise RewindError("the reply's scoring was left to the rewind node, but this "
                                  "model node no longer holds it (a new process between the "
                                  "model call and the rewind node?)")
            return record, 0
        out, d, state, trace_turn = entry
        y, alt, positions = self._completed(state, out, d)
        self._remember(record["message_id"], y)
        if alt is not None:
            self._remember(record["message_id"], alt, self._alts)
        if self.recorder is not None and trace_turn is not None:
            self.recorder.record_scores(trace_turn, y.tokens)
        done = turn_record(y, message_id=record["message_id"], index=record["index"],
                           kept=record["kept"], spike=self.spike, snapshot=record["snapshot"],
                           trace_turn=record["trace_turn"])
        return done, positions

    def release(self, message_ids) -> None:
        """Drop the pending work of replies the chain did not read (a first stage rejected them)."""
        for mid in message_ids:
            self._pending.pop(mid, None)

    def _remember(self, message_id: str, out: DecodeState, registry=None) -> None:
        registry = self._states if registry is None else registry
        if self.kv_states == 0:
            return
        registry[message_id] = out
        while len(registry) > self.kv_states:
            registry.popitem(last=False)  # the least recently used goes first

    # -- output ----------------------------------------------------------------------------
    def _message(self, messages: list, text: str, finish: str | None, message_id: str,
                 rec: dict, attempt: int):
        meta = {"turn": rec["index"], "attempt": attempt, "kept_tokens": rec["kept"],
                "decision_points": [d["position"] for d in rec["decisions"]]}
        dicts = bool(messages) and all(isinstance(m, dict) for m in messages)
        as_dict = self.message_format == "dict" or (self.message_format == "auto" and dicts)
        if as_dict:
            return {"role": "assistant", "content": text, "id": message_id,
                    "decision_retry": meta}
        from langchain_core.messages import AIMessage

        return AIMessage(content=text, id=message_id, response_metadata={
            "model_name": self.lm.name, "finish_reason": finish, "decision_retry": meta})

    def _config(self) -> dict:
        """What the state records of this node: the retry settings as given and as they run."""
        return {"model": self.lm.name, "provider": engine_provider(self.lm),
                "asked": self.retry.model_dump(mode="json"),
                "retry": self.run.model_dump(mode="json"),
                "sampling": self.sampling.model_dump(mode="json"), "seed": self.seed}

    def _trace(self, dr, update, resume, k, out, messages, snapshot):
        """Record the turn (and a new run or branch when this call starts one); the Turn."""
        rec = self.recorder
        if rec is None:
            return None
        run_id = update.get("run", dr.get("run"))
        if rec.run is None or rec.run.id != run_id:  # a new episode, or restored in a new process
            run = rec.start_run(model=self.lm.name, strategy=self.run.strategy,
                                config={**self._config(), "continues": run_id}, seed=self.seed)
            update["run"] = run.id
        branch = dr.get("branch")
        if "attempts" in update or branch not in rec.branches:
            parent = (dr.get("chain") or {}).get("branch") if resume is not None else None
            known = parent in rec.branches  # not after a restore with a fresh recorder
            cut = Cut(turn=resume["turn"], position=resume["position"],
                      entropy=resume["entropy"]) if resume is not None and known else None
            branch = rec.start_branch(parent=parent if known else None, cut=cut,
                                      strategy=self.run.strategy if cut else "initial").id
            update["branch"] = branch
        last = messages[-1] if messages else None
        prompt = "" if last is None else (
            str(last.get("content", "")) if isinstance(last, dict) else last.text)
        turn = rec.record_turn(branch, tokens=out.tokens, prompt=prompt, index=k, params={
            "model": self.lm.name, "temperature": self.sampling.temperature,
            "top_k": self.sampling.top_k, "seed": self.seed})
        rec.record_decisions(turn, self.spike, snapshot=snapshot)
        return turn


def model_node(
    lm: LM,
    *,
    messages_key: str = "messages",
    system: str | None = None,
    prompt: Callable[[dict], str | list[dict]] | None = None,
    nobody: Callable[[dict], str | list[dict]] | None = None,
    sampling: Sampling | None = None,
    retry: RetryConfig = DEFAULT_RETRY,
    recorder: Any = None,
    workspace: Any = None,
    spike: SpikeRule | None = DEFAULT_SPIKE,
    seed: int = 0,
    message_format: Literal["auto", "langchain", "dict"] = "auto",
    kv_states: int = 8,
) -> ModelNode:
    """A LangGraph node calling the local model `lm` through our decode engine.

    Each call appends the model's message to `state[messages_key]` (an `AIMessage`, or a dict
    when the state holds dict messages; the key needs an appending reducer such as
    `add_messages`) and records its tokens, entropies and decision points under
    `state["decision_retry"]` and, with a `recorder`, in the trace.

    system / prompt: a system prompt, or a callable state -> prompt replacing the messages.
    nobody: a callable state -> the second context (a prompt, as `prompt` returns, or messages
    such as `hide_tool_output("read_file")(state["messages"])`), the same request without what
    the model copies from (the code it was shown): every reply is scored under it and `retry`'s
    auto cut weights become surprise cuts (docs/langgraph.md).
    sampling: how tokens are drawn (default: the proposal of `retry`, temperature 1/alpha).
    retry: what runs (default `fix`'s run, resolved for `lm`: local moves, no null moves and
    delayed acceptance with an in-process engine; a value `lm` cannot run is one clear error);
    the same RetryConfig as the rewind node. workspace: an agent Workspace, snapshot
    before each call and restored on a rewind. spike: which tokens count as decision points.
    seed: draws derive from (seed, attempt, call), so a restored thread draws the same.
    kv_states: decode states kept in memory for KV-cache forks (0: always re-prefill).
    """
    return ModelNode(
        lm, messages_key=messages_key, system=system, prompt=prompt, nobody=nobody,
        sampling=sampling,
        retry=retry, recorder=recorder, workspace=workspace, spike=spike, seed=seed,
        message_format=message_format, kv_states=kv_states,
    )

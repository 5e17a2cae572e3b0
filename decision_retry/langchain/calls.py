"""What the middleware keeps per model call, and the MH decision between two attempts.

A call record is a plain dict (JSON-able, so any checkpointer stores the agent state):
message_id, index, kept, exact, continuable, prompt_hash, the token columns (ids, pieces, logp,
logq, entropy, and the bounds where they are estimates), finish, decisions, snapshot (the
repository before the call), trace_turn; `unscored` when ChatDecisionRetry left its scoring to
`after_agent` (chat_model.py `defer`), which replaces it by the completed record where the chain
reads it.

Cuts and acceptance are `fix`'s (`Chain.decide`, `Chain.next_cut`, samplers/chain.py, through
langgraph/chainstate.py, as the LangGraph nodes call them). A chat model that cannot continue a
partial message (anything but ChatDecisionRetry) resamples the cut call from its first token; the
move then picks a whole call, with probability c_call(k | x) = sum of c(t | x) over the call's
tokens, and the reverse move needs the same sum on the proposal: `accept_call`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from decision_retry.langchain.logprobs import Reply
from decision_retry.langgraph import chainstate
from decision_retry.langgraph.state import alt_columns
from decision_retry.samplers import cuts, mh
from decision_retry.samplers.chain import (
    Chain,
    CutPoint,
    Decision,
    RetryConfig,
    cut_entropies,
    flatten,
)
from decision_retry.samplers.mh import StepRecord
from decision_retry.tokens import Token
from decision_retry.trace.decisions import SpikeRule, entropy_spikes


def call_record(reply: Reply, *, message_id: str, index: int, continuable: bool,
                spike: SpikeRule | None, snapshot: str | None, trace_turn: str | None) -> dict:
    """The state's record of one model call."""
    toks = reply.tokens
    spikes = entropy_spikes([t.entropy for t in toks], spike) if spike is not None else []
    return {
        "message_id": message_id, "index": index, "kept": reply.kept, "exact": reply.exact,
        "continuable": continuable, "prompt_hash": reply.prompt_hash,
        "ids": [t.id for t in toks], "pieces": [t.text for t in toks],
        "logp": [t.logp for t in toks], "logq": [t.logq for t in toks],
        "entropy": [t.entropy for t in toks], **alt_columns(toks),
        "logq_bounds": None if reply.exact else [list(t.logq_bounds or ()) for t in toks],
        "entropy_gap": reply.entropy_gap, "finish": reply.finish,
        "decisions": [{"position": i, "entropy": toks[i].entropy, "token": toks[i].text,
                       "alternatives": [[a.text, a.prob] for a in toks[i].top]} for i in spikes],
        "snapshot": snapshot, "trace_turn": trace_turn,
    }


def tokens_of(record: dict) -> tuple[Token, ...]:
    """The Token values of a call record (with log q bounds where they are estimates)."""
    n = len(record["ids"])
    qb = record.get("logq_bounds") or [None] * n
    alt_p, alt_q = record.get("alt_logp") or [None] * n, record.get("alt_logq") or [None] * n
    return tuple(
        Token(id=i, text=s, logp=p, logq=q, entropy=h, logq_bounds=tuple(b) if b else None,
              alt_logp=ap, alt_logq=aq)
        for i, s, p, q, h, b, ap, aq in zip(record["ids"], record["pieces"], record["logp"],
                                            record["logq"], record["entropy"], qb, alt_p, alt_q)
    )


def calls_tokens(records: Sequence[dict]) -> list[tuple[Token, ...]]:
    return [tokens_of(r) for r in records]


def log_c_call(turns: Sequence[Sequence[Token]], config: RetryConfig, k: int) -> float:
    """log c_call(k | x): the cut mass of call k's tokens."""
    lp = cuts.log_probs(cut_entropies(turns, config), config.rule)
    start = sum(len(t) for t in turns[:k])
    return mh.logsumexp(lp[start:start + len(turns[k])]) if turns[k] else -math.inf


def call_start(turn: int, turns: Sequence[Sequence[Token]]) -> CutPoint:
    """The cut at the first token of call `turn` (its flattened index)."""
    first = turns[turn][0]
    return CutPoint(turn, 0, first.entropy, first.text, sum(len(t) for t in turns[:turn]))


def accept_call(
    current: Sequence[Sequence[Token]],
    proposal: Sequence[Sequence[Token]],
    turn: int,
    *,
    config: RetryConfig,
    r_current: float,
    r_proposal: float,
    u: float,
    decode_tokens: int,
) -> StepRecord:
    """The MH decision for replacing `current` by `proposal`, call `turn` resampled whole."""
    x, _ = flatten(current)
    y, _ = flatten(proposal)
    start = call_start(turn, current).index
    corr = None
    if config.corrected:
        corr = log_c_call(proposal, config, turn) - log_c_call(current, config, turn)
    return mh.mh_step_record(
        x, y, start, alpha=config.alpha, rule=None, correction=corr,
        verifier_delta=config.verifier_weight * (r_proposal - r_current), u=u,
        decode_tokens=decode_tokens,
    )


def decide(chain: dict | None, attempt: dict, cut: dict | None, *, config: RetryConfig,
           generator, decode_tokens: int, passed: bool = False,
           span: Sequence[int] | None = None, rejected: bool = False,
           complete: chainstate.Completion | None = None) -> Decision:
    """Does the chain move from its current attempt to `attempt`, cut at `cut`?
    (`chainstate.decide`: `Chain.decide`, `complete` completing the proposal where it reads
    it; a whole-call cut, of a chat model that is not ours, has its own cut correction,
    `accept_call`.)"""
    from decision_retry import sampling

    if chain is None or cut is None or not cut.get("whole_call") or not Chain(config).compares:
        return chainstate.decide(config, chain, attempt, cut, tokens_of=tokens_of, passed=passed,
                                 generator=generator, decode_tokens=decode_tokens, span=span,
                                 rejected=rejected, complete=complete)
    tried = tuple(chain.get("tried", ()))
    step = accept_call(calls_tokens(chain["turns"]), calls_tokens(attempt["turns"]), cut["turn"],
                       config=config, r_current=chain["r"], r_proposal=attempt["r"],
                       u=sampling.uniform(generator), decode_tokens=decode_tokens)
    moved = step.accepted or passed
    point = chainstate.cut_point(cut, config)
    return Decision(step, 0 if moved else None,
                    Chain(config).tried_after(tried, point, moved=moved))


def next_cut(chain: dict, config: RetryConfig, generator) -> dict | None:
    """Where the next attempt starts: `Chain.next_cut` over the chain's calls (restart: the first
    token); a call that cannot be continued is resampled from its first token."""
    if not any(calls_tokens(chain["turns"])):
        return None
    out = chainstate.next_cut(config, chain, tokens_of=tokens_of, generator=generator)
    if out is None:
        return None
    whole = out["move"] == "restart" or not chain["turns"][out["turn"]].get("continuable")
    if whole:  # the whole call is drawn again: no token to keep or ban, no span
        out.update(position=0, move="restart" if out["move"] == "restart" else "suffix",
                   ban=None)
    return {**out, "whole_call": whole}

"""What the middleware keeps per model call, and the MH decision between two attempts.

A call record is a plain dict (JSON-able, so any checkpointer stores the agent state):
message_id, index, kept, exact, continuable, prompt_hash, the token columns (ids, pieces, logp,
logq, entropy, and the bounds where they are estimates), finish, decisions, snapshot (the
repository before the call), trace_turn.

Cuts and acceptance are `fix`'s (decision_retry.retry). A chat model that cannot continue a
partial message (anything but ChatDecisionRetry) resamples the cut call from its first token; the
move then picks a whole call, with probability c_call(k | x) = sum of c(t | x) over the call's
tokens, and the reverse move needs the same sum on the proposal: `accept_call`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from decision_retry import retry as retry_
from decision_retry.langchain.logprobs import Reply
from decision_retry.retry import CutPoint, RetryConfig
from decision_retry.samplers import cuts, mh
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
        "entropy": [t.entropy for t in toks],
        "logq_bounds": None if reply.exact else [list(t.logq_bounds or ()) for t in toks],
        "entropy_gap": reply.entropy_gap, "finish": reply.finish,
        "decisions": [{"position": i, "entropy": toks[i].entropy, "token": toks[i].text,
                       "alternatives": [[a.text, a.prob] for a in toks[i].top]} for i in spikes],
        "snapshot": snapshot, "trace_turn": trace_turn,
    }


def tokens_of(record: dict) -> tuple[Token, ...]:
    """The Token values of a call record (with log q bounds where they are estimates)."""
    qb = record.get("logq_bounds") or [None] * len(record["ids"])
    return tuple(
        Token(id=i, text=s, logp=p, logq=q, entropy=h, logq_bounds=tuple(b) if b else None)
        for i, s, p, q, h, b in zip(record["ids"], record["pieces"], record["logp"],
                                    record["logq"], record["entropy"], qb)
    )


def calls_tokens(records: Sequence[dict]) -> list[tuple[Token, ...]]:
    return [tokens_of(r) for r in records]


def log_c_call(turns: Sequence[Sequence[Token]], config: RetryConfig, k: int) -> float:
    """log c_call(k | x): the cut mass of call k's tokens."""
    lp = cuts.log_probs(retry_.cut_entropies(turns, config), config.rule)
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
    x, _ = retry_.flatten(current)
    y, _ = retry_.flatten(proposal)
    start = call_start(turn, current).index
    corr = None
    if config.corrected:
        corr = log_c_call(proposal, config, turn) - log_c_call(current, config, turn)
    return mh.mh_step_record(
        x, y, start, alpha=config.alpha, rule=None, correction=corr,
        verifier_delta=config.verifier_weight * (r_proposal - r_current), u=u,
        decode_tokens=decode_tokens,
    )


def decide(chain: dict, attempt: dict, cut: dict, *, config: RetryConfig, u: float,
           decode_tokens: int) -> StepRecord:
    """Does the chain move from its current attempt to `attempt`, cut at `cut`?"""
    x, y = calls_tokens(chain["turns"]), calls_tokens(attempt["turns"])
    if cut.get("whole_call"):
        return accept_call(x, y, cut["turn"], config=config, r_current=chain["r"],
                           r_proposal=attempt["r"], u=u, decode_tokens=decode_tokens)
    point = CutPoint(cut["turn"], cut["position"], cut["entropy"], cut["token"], cut["index"])
    return retry_.accept(x, y, point, config=config, r_current=chain["r"],
                         r_proposal=attempt["r"], u=u, decode_tokens=decode_tokens)


def next_cut(chain: dict, config: RetryConfig, generator) -> dict | None:
    """Where the next attempt starts: `retry.choose_cut` over the chain's calls (restart: the
    first token); a call that cannot be continued is resampled from its first token."""
    turns = calls_tokens(chain["turns"])
    if not any(turns):
        return None
    if config.strategy == "restart":
        k = next(i for i, t in enumerate(turns) if t)
        point, whole = call_start(k, turns), True
    else:
        point = retry_.choose_cut(turns, config, generator, frozenset(chain.get("tried", [])))
        if point is None:
            return None
        whole = not chain["turns"][point.turn].get("continuable")
    out = {"turn": point.turn, "position": 0 if whole else point.position, "index": point.index,
           "entropy": point.entropy, "token": point.token, "whole_call": whole,
           "message_id": chain["turns"][point.turn]["message_id"]}
    return out

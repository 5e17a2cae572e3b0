"""What the middleware keeps per model call, and the MH decision between two attempts.

A call record is a plain dict (JSON-able, so any checkpointer stores the agent state):
message_id, index, kept, exact, continuable, prompt_hash, the token columns (ids, pieces, logp,
logq, entropy, and the bounds where they are estimates), finish, decisions, snapshot (the
repository before the call), trace_turn.

Cuts and acceptance are `fix`'s (`Chain`, samplers/chain.py). A chat model that cannot continue a
partial message (anything but ChatDecisionRetry) resamples the cut call from its first token; the
move then picks a whole call, with probability c_call(k | x) = sum of c(t | x) over the call's
tokens, and the reverse move needs the same sum on the proposal: `accept_call`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from decision_retry.langchain.logprobs import Reply
from decision_retry.samplers import cuts, mh
from decision_retry.samplers.chain import (
    Chain,
    CutPoint,
    Decision,
    RetryConfig,
    Trajectory,
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


def trajectory(attempt: dict, passed: bool = False) -> Trajectory:
    return Trajectory(calls_tokens(attempt["turns"]), attempt["r"], passed=passed)


def decide(chain: dict | None, attempt: dict, cut: dict | None, *, config: RetryConfig,
           generator, decode_tokens: int, passed: bool = False) -> Decision:
    """Does the chain move from its current attempt to `attempt`, cut at `cut`? (`Chain.decide`;
    a whole-call cut has its own cut correction, `accept_call`.)"""
    from decision_retry import sampling

    chain_, tried = Chain(config), tuple((chain or {}).get("tried", ()))
    point = None if cut is None else CutPoint(cut["turn"], cut["position"], cut["entropy"],
                                              cut["token"], cut["index"])
    if chain is None or point is None or not cut.get("whole_call") or not chain_.compares:
        return chain_.decide(None if chain is None else trajectory(chain),
                             [trajectory(attempt, passed)], point, tried=tried,
                             generator=generator, decode_tokens=decode_tokens)
    step = accept_call(calls_tokens(chain["turns"]), calls_tokens(attempt["turns"]), cut["turn"],
                       config=config, r_current=chain["r"], r_proposal=attempt["r"],
                       u=sampling.uniform(generator), decode_tokens=decode_tokens)
    moved = step.accepted or passed
    return Decision(step, 0 if moved else None, chain_.tried_after(tried, point, moved=moved))


def next_cut(chain: dict, config: RetryConfig, generator) -> dict | None:
    """Where the next attempt starts: `Chain.next_cut` over the chain's calls (restart: the first
    token); a call that cannot be continued is resampled from its first token."""
    turns = calls_tokens(chain["turns"])
    if not any(turns):
        return None
    point = Chain(config).next_cut(trajectory(chain), generator, tuple(chain.get("tried", ())))
    if point is None:
        return None
    whole = point.kernel.fresh or not chain["turns"][point.turn].get("continuable")
    out = {"turn": point.turn, "position": 0 if whole else point.position, "index": point.index,
           "entropy": point.entropy, "token": point.token, "whole_call": whole,
           "message_id": chain["turns"][point.turn]["message_id"]}
    return out

"""What decision-retry keeps in the user's graph state: one `decision_retry` key with a reducer.

Its value is a plain dict (JSON-able, so any checkpointer stores it):

    turns          this attempt's model calls so far, in order (one turn record dict each)
    attempts       attempts started in this episode; spent: decode tokens over all of them
    attempt_tokens decode tokens of this attempt (the MH step's cost)
    resume         set by a fork: the cut this attempt starts from; the model node consumes it
    cut            the cut this attempt was started from (None for a fresh attempt)
    chain          the chain's current attempt: {"turns", "r", "branch", "tried"}
    span           a local move's (s, m, e) in flattened positions (chainstate.py), else None
    rejected       a local draw outside the support: {"reason", "step"}; the calls replay the
                   chain's, and the rewind node records the step without asking the verifier
    verdict        r of this attempt in [0, 1], once the rewind node has run
    status         "running" | "passed" | "rewind" | "exhausted"
    next_cut       on "rewind": where the next attempt starts (a cut of `chain`)
    steps          every MH step of the thread (StepRecord dicts)
    episode        an id per task on the thread (see below)
    run, branch    trace ids (when a Recorder is given)
    config         the model, the retry settings as given ("asked") and as they run ("retry",
                   resolved for the model: chainstate.resolve), sampling, the seed
    prefilled      positions teacher-forced (kept tails, the second context)

An episode is one task: it ends when the rewind node says "passed" or "exhausted". A model call
after that with no rewind pending (the user sent a new message on the same thread) starts a new
episode: the turns, the chain and the counters start afresh.

A turn record holds the tokens as columns (ids, pieces, logp, logq, entropy, and alt_logp /
alt_logq under the second context with surprise cuts), the decision points
(entropy spikes with their top alternatives), the message id it was written as, a hash of the
prompt it saw, and the workspace snapshot taken before it (when the graph edits files). A record
marked `unscored` was written with its scoring left to the rewind node (its second-context
scores, a local move's kept tail rescored: model.py); the rewind node's update replaces it by
the completed record where the chain read it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Annotated, Any, TypedDict

from decision_retry.lm import DecodeState
from decision_retry.tokens import Token
from decision_retry.trace.decisions import SpikeRule, entropy_spikes

KEY = "decision_retry"


def merge(left: dict | None, right: dict | None) -> dict:
    """The reducer: a field-wise update (the fields a node returns replace the old ones)."""
    return {**(left or {}), **(right or {})}


class DecisionRetryState(TypedDict, total=False):
    """Mix into the user's state: `class State(MessagesState, DecisionRetryState): ...`."""

    decision_retry: Annotated[dict, merge]


def progress(state: dict) -> dict:
    """The decision_retry value of a graph state (empty before the first model call)."""
    return dict(state.get(KEY) or {})


def prompt_hash(ids: Sequence[int]) -> str:
    """A short fingerprint of prompt ids: a rewind checks the restored state prompts the same."""
    return hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()[:16]


def turn_record(
    out: DecodeState,
    *,
    message_id: str,
    index: int,
    kept: int,
    spike: SpikeRule | None,
    snapshot: str | None = None,
    trace_turn: str | None = None,
) -> dict[str, Any]:
    """The state's record of one model call (its tokens as columns, its decision points)."""
    toks = out.tokens
    spikes = entropy_spikes([t.entropy for t in toks], spike) if spike is not None else []
    return {
        "message_id": message_id,
        "index": index,
        "kept": kept,  # tokens[:kept] were kept verbatim from the turn it was cut from
        "prompt_hash": prompt_hash(out.prompt_ids),
        "prompt_tokens": len(out.prompt_ids),
        "ids": [t.id for t in toks],
        "pieces": [t.text for t in toks],
        "logp": [t.logp for t in toks],
        "logq": [t.logq for t in toks],
        "entropy": [t.entropy for t in toks],
        **alt_columns(toks),
        "finish": out.finish,
        "text": out.text,
        "decisions": [
            {
                "position": i,
                "entropy": toks[i].entropy,
                "token": toks[i].text,
                "alternatives": [[a.text, a.prob] for a in toks[i].top],
            }
            for i in spikes
        ],
        "snapshot": snapshot,
        "trace_turn": trace_turn,
    }


def alt_columns(tokens: Sequence[Token]) -> dict[str, list[float]]:
    """The scores under the second context (surprise cuts), where the reply has them."""
    if not tokens or tokens[0].alt_logp is None:
        return {}
    return {"alt_logp": [t.alt_logp for t in tokens], "alt_logq": [t.alt_logq for t in tokens]}


def tokens_of(record: dict) -> tuple[Token, ...]:
    """The Token values of a turn record (without top alternatives; with the scores under the
    second context where it has them)."""
    n = len(record["ids"])
    alt_p, alt_q = record.get("alt_logp") or [None] * n, record.get("alt_logq") or [None] * n
    return tuple(
        Token(id=i, text=s, logp=p, logq=q, entropy=h, alt_logp=ap, alt_logq=aq)
        for i, s, p, q, h, ap, aq in zip(
            record["ids"], record["pieces"], record["logp"], record["logq"], record["entropy"],
            alt_p, alt_q)
    )


def turns_tokens(turns: Sequence[dict]) -> list[tuple[Token, ...]]:
    """Per-turn tokens of an attempt, the shape `Chain` reads."""
    return [tokens_of(t) for t in turns]

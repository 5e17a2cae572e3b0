"""A chat model's reply as our `Token` records: exact from ChatDecisionRetry, bounded from top-k.

ChatDecisionRetry puts exact columns under `response_metadata["decision_retry"]`. Any other chat
model that returns OpenAI-style log-probabilities (`ChatOpenAI(logprobs=True, top_logprobs=20)`,
against OpenAI or a vLLM / llama.cpp server) gives, per token, its log-probability and the top-k
candidates only. The entropy and the proposal's log q (the model sampled at its temperature T,
no truncation: log q = log p / T - log Z_(1/T)) are then intervals from the top-k with the
missing mass bounded, the same bounds the remote engines use (decision_retry.engines.remote.bounds,
design.md §7). Tokens carry the point estimate (the middle) and the intervals (`entropy_bounds`,
`logq_bounds`), so an MH step knows when its decision could have gone the other way
(samplers/intervals.py). The cut rule sees the same numbers for the current and the proposed
trajectory, so its correction stays consistent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from langchain_core.messages import AIMessage

from decision_retry.engines.remote import bounds
from decision_retry.errors import BadInput
from decision_retry.tokens import Alternative, Token

DEFAULT_VOCAB = 151_936  # Qwen2.5's; the entropy's upper bound and log Z depend on it
NO_LOGPROBS = (
    "the chat model returned no token log-probabilities: use ChatDecisionRetry, or a model that "
    "returns them (e.g. ChatOpenAI(logprobs=True, top_logprobs=20))"
)


@dataclass(frozen=True)
class Reply:
    """The tokens of one model reply and what we know about them."""

    tokens: tuple[Token, ...]
    kept: int  # leading tokens kept verbatim from an earlier reply (a continuation)
    exact: bool  # full-distribution numbers (ours) or top-k bounds (any other model)
    prompt_hash: str | None
    entropy_gap: float  # the largest (upper - lower) entropy bound of a token; 0 when exact
    finish: str | None


def _exact(meta: dict) -> Reply:
    n = len(meta["ids"])
    alt_p, alt_q = meta.get("alt_logp") or [None] * n, meta.get("alt_logq") or [None] * n
    tokens = tuple(
        Token(id=i, text=s, logp=p, logq=q, entropy=h, alt_logp=ap, alt_logq=aq,
              top=tuple(Alternative(id=-1, text=t, prob=pr) for t, pr in top))
        for i, s, p, q, h, top, ap, aq in zip(
            meta["ids"], meta["pieces"], meta["logp"], meta["logq"], meta["entropy"],
            meta.get("top") or [[]] * n, alt_p, alt_q)
    )
    return Reply(tokens, int(meta.get("kept", 0)), True, meta.get("prompt_hash"), 0.0,
                 meta.get("finish"))


def _bounded(content: list[dict], temperature: float, vocab: int) -> Reply:
    tokens, gap = [], 0.0
    for j, item in enumerate(content):
        logp = float(item["logprob"])
        top = item.get("top_logprobs") or []
        top_lp = sorted((float(a["logprob"]) for a in top), reverse=True)
        in_top = any(a.get("token") == item["token"] for a in top)
        # the drawn token is known mass too, listed or not (vLLM adds it outside the top-k)
        listed = bounds.listed(top_lp, vocab, () if in_top else (logp,))
        rank = min(range(len(top_lp)), key=lambda i: abs(top_lp[i] - logp)) if in_top else None
        pairs = {a["token"]: float(a["logprob"]) for a in top} | {item["token"]: logp}
        h = bounds.entropy_bounds(listed)
        q = bounds.logq_bounds(logp, listed, temperature, token_rank=rank)
        gap = max(gap, h[1] - h[0])
        alts = tuple(Alternative(id=-1, text=t, prob=math.exp(lp))
                     for t, lp in sorted(pairs.items(), key=lambda kv: -kv[1]))
        tokens.append(Token(id=j, text=item["token"], logp=logp, logq=bounds.middle(q),
                            entropy=bounds.middle(h), top=alts, logq_bounds=q, entropy_bounds=h))
    return Reply(tuple(tokens), 0, False, None, gap, None)


def reply_tokens(message: AIMessage, *, temperature: float = 1.0,
                 vocab: int = DEFAULT_VOCAB) -> Reply:
    """The tokens of a reply; BadInput when the model gave no log-probabilities.

    temperature: what the (non-decision-retry) model sampled at (its proposal q); vocab: the
    model's vocabulary size, for the bounds of what the top-k does not list.
    """
    meta = message.response_metadata or {}
    ours = meta.get("decision_retry")
    if isinstance(ours, dict) and "entropy" in ours:
        return _exact(ours)
    content = (meta.get("logprobs") or {}).get("content") if isinstance(
        meta.get("logprobs"), dict) else None
    if not content:
        raise BadInput(NO_LOGPROBS)
    return _bounded(content, temperature, vocab)

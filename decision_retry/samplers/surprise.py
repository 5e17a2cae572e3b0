"""Surprise cut weights: where a second context, one that has not seen the code, disagrees.

When the model's reply copies the buggy function it was shown, the bug token is calm (low
entropy) in that context. Under a second context B that shows the signature, the docstring and
the failing test but not the body (agent/nobody.py), the same token is surprising. So each reply
token x_t gets, from one teacher-forced pass of the reply under B (`Engine.score`, prefill cost),

    alt_logp_t = log p_B(x_t | B, x_<t)      alt_logq_t = log q_B(x_t | B, x_<t)

(q_B: the proposal temperature; the second is used by the no-body cut token, step 2), and the cut
weight is w_t = max(0, s_t)^beta with s_t = -alt_logp_t (cuts.py kind "level"; softmax(s_t / tau)
with kind "softmax"), mixed with eps-uniform as always.

**Why MH stays exact.** B is fixed for the whole run (built once from what the patch prompt shows),
so s_t is a function of the sequence x alone, exactly like an entropy: c(t | x) is computed on x's
own surprises, c(t | x') on the proposal's own (its own scoring pass), and the correction
log c(t | x') - log c(t | x) of design.md §2 holds unchanged.

**Cost.** A proposal that keeps x_<t shares x's scores there: B's state is forked at t and only
y_t.. is scored, so a move costs L(y) - t prefill positions under B (a local move: the span and the
kept tail), the first attempt L. No decode tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from decision_retry.tokens import DecodeState, Sampling, Token


CAP = 50.0  # nats: a token impossible under B (-inf) weighs as one of probability e^-50


class MissingScores(ValueError):
    """A token the surprise rule needs has no score under the second context."""


@dataclass(frozen=True)
class AltContext:
    """The second context: an engine and its prefilled state (prompt + assistant prefix)."""

    lm: Any  # an Engine with `score` and `fork`
    state: DecodeState


@dataclass(frozen=True)
class Scored:
    """A sequence annotated with its B scores, B's state over it, and the positions scored."""

    y: DecodeState
    alt: DecodeState
    positions: int


def annotate(ctx: AltContext, y: DecodeState, q: Sampling, *, base: DecodeState | None = None,
             t: int = 0) -> Scored:
    """y with alt_logp / alt_logq on every token.

    `base`: B's state over a sequence that shares y's first t tokens (its scores are kept there);
    None scores y from the start. One `score` pass over y[t:]."""
    ids = [k.id for k in y.tokens]
    start = ctx.state if base is None else ctx.lm.fork(base, t)
    if [k.id for k in start.tokens] != ids[: len(start.tokens)]:
        raise ValueError("annotate: the base state does not share the sequence's prefix")
    k0 = len(start.tokens)
    alt = ctx.lm.score(start, ids[k0:], q) if ids[k0:] else start
    tokens = tuple(tok.model_copy(update={"alt_logp": a.logp, "alt_logq": a.logq})
                   for tok, a in zip(y.tokens, alt.tokens))
    return Scored(replace(y, tokens=tokens), alt, len(ids) - k0)


def surprises(tokens: Sequence[Token]) -> list[float]:
    """s_t = -alt_logp_t for every token; MissingScores names the first unscored one."""
    out = []
    for i, tok in enumerate(tokens):
        if tok.alt_logp is None:
            raise MissingScores(f"token {i} ({tok.text!r}) has no score under the no-body "
                                "context: surprise cuts need every reply scored (patch protocol)")
        out.append(min(-tok.alt_logp, CAP))
    return out

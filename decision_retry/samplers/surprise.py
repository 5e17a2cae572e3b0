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

**Cost.** Exact scoring (`nobody_scoring="exact"`, which the no-body cut token needs: its alt_logq
is a proposal probability, so it must be the number decoding under B gives): a proposal that keeps
x_<t shares x's scores there, B's state is forked at t and only y_t.. is scored, so a move costs
L(y) - t positions under B. Cut weights need less: a function of the sequence, so
`nobody_scoring="bulk"` (the default with the patch cut token) scores in inexact passes
(`Engine.score(exact=False)`: on llama.cpp chunks of 32 on a grid from the reply's start, 28 ms a
position against 42 exact on the 1.5B here), a proposal from the grid point at or before its cut
(at most 31 positions more). No decode tokens either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from decision_retry.tokens import DecodeState, Sampling, Token, stop_reason

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
             t: int = 0, exact: bool = True) -> Scored:
    """y with alt_logp / alt_logq on every token.

    `base`: B's state over a sequence that shares y's first t tokens (its scores are kept there);
    None scores y from the start. One `score` pass over y[t:]. `exact=False` (cut weights only,
    `RetryConfig.nobody_scoring`): one inexact pass, a function of y alone, from the last
    multiple of the engine's `inexact_chunk` at or before t (base must come from such a pass)."""
    if not exact:
        t -= t % ctx.lm.inexact_chunk
    ids = [k.id for k in y.tokens]
    start = ctx.state if base is None else ctx.lm.fork(base, t)
    if [k.id for k in start.tokens] != ids[: len(start.tokens)]:
        raise ValueError("annotate: the base state does not share the sequence's prefix")
    k0 = len(start.tokens)
    alt = ctx.lm.score(start, ids[k0:], q, exact=exact) if ids[k0:] else start
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


# -- the cut token drawn from the no-body context (RetryConfig.cut_token = "nobody") ---------
# The bug token is calm in the patch context because the model copies what it was shown, so
# resampling it there redraws the same bug. At the cut t this kernel draws y_t from
# q_B(. | B, x_<t) (the no-body context at the proposal temperature) and the rest y_t+1.. from
# the usual patch-context proposal q. Its proposal density is q_B(y_t) * prod_{i>t} q(y_i), and
# the reverse move (cut at t of y, same kernel) proposes x with q_B(x_t) * prod_{i>t} q(x_i), so
#
#     log A = alpha (S_p(y_t:) - S_p(x_t:))                       target: p of the patch context
#           + [alt_logq(x_t) + S_q(x_t+1:)] - [alt_logq(y_t) + S_q(y_t+1:)]
#           + log c(t | y) - log c(t | x) + lam (r(y) - r(x))
#
# i.e. the usual formula with position t's logq read from B (`swap_logq`). alt_logq(x_t) comes
# from x's own scoring pass (same temperature), alt_logq(y_t) from the draw. The target keeps
# p of the patch context: only where the cut token comes from changes. The stopping rule is the
# usual one as if y_t.. were drawn by one `extend` from t (`first_then_extend`), so both
# directions are moves of the same kernel.
# With exclusion (mh.py) y_t is drawn from q_B with x_t banned, and the term
# log(1 - q_B(x_t)) - log(1 - q_B(y_t)) is mh.exclusion_term read after `swap_logq`.


def draw_first(ctx: AltContext, alt_x: DecodeState, lm, prefix: DecodeState, t: int, q: Sampling,
               generator, *, exclude: int | None = None) -> DecodeState:
    """prefix (= x_<t in the patch context) + y_t ~ q_B(. | B, x_<t), with y_t's patch-context
    scores (one scored position) and its B scores (alt_logp, alt_logq, unrestricted);
    `exclude` (x_t's id): y_t drawn from q_B with it banned."""
    one = q.model_copy(update={"max_new_tokens": 1, "stop": (), "stop_regex": None})
    b = ctx.lm.extend(ctx.lm.fork(alt_x, t), one, generator,  # one decode step under B
                      **({} if exclude is None else {"exclude": exclude}))
    drawn = b.tokens[-1]
    y = lm.score(prefix, [drawn.id], q)
    tok = y.tokens[-1].model_copy(update={"alt_logp": drawn.logp, "alt_logq": drawn.logq})
    return replace(y, tokens=y.tokens[:-1] + (tok,))


def first_then_extend(lm, first: DecodeState, t: int, q: Sampling,
                      generator) -> tuple[DecodeState, int]:
    """Continue `first` (x_<t + y_t) with q, stopping exactly where one `extend` from t would:
    that call's stop window starts at t (lm.LM._finish), so a stop string that needs y_t, or a
    length cap of q.max_new_tokens tokens from t, ends the sequence here too. Returns the
    sequence and the decode tokens spent after y_t (a look-ahead cut off by such a stop counts)."""
    stop = stop_reason(first.tokens, t, q, lm.eos_ids, start=t)
    if stop or q.max_new_tokens <= 1:
        return replace(first, finish=stop or "length"), 0
    rest = lm.extend(first, q.model_copy(update={"max_new_tokens": q.max_new_tokens - 1}),
                     generator)
    spent = len(rest.tokens) - t - 1
    for i in range(t + 1, len(rest.tokens)):  # a stop the window from t + 1 could not see
        if (stop := stop_reason(rest.tokens, i, q, lm.eos_ids, start=t)):
            if i == len(rest.tokens) - 1:
                return (rest if rest.finish == stop else replace(rest, finish=stop)), spent
            return replace(lm.fork(rest, i + 1), finish=stop), spent
    return rest, spent


def swap_logq(tokens: Sequence[Token], t: int) -> list[Token]:
    """tokens with position t's logq replaced by its no-body logq (the no-body cut token's
    proposal term); MissingScores when it was not scored."""
    tok = tokens[t]
    if tok.alt_logq is None:
        raise MissingScores(f"token {t} ({tok.text!r}) has no no-body logq: the no-body cut "
                            "token needs every reply scored under the no-body context")
    return [*tokens[:t], tok.model_copy(update={"logq": tok.alt_logq}), *tokens[t + 1:]]

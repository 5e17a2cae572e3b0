"""Local moves: resample from the cut to the next span boundary, keep (and rescore) the rest.

A suffix move (mh.py) regenerates x_t.. to the end, so its decode cost is L - t whatever the
number of real decisions. A local move regenerates only the span [t, s) and keeps the tail
x_s.. as token ids, scored under the new prefix in one teacher-forced pass (`Engine.score`, prefill
cost), so the logp, logq and entropy of every kept token are exact for the new sequence.

**The span rule.** A boundary is a predicate b(x_<j) of a *prefix* only:

    b(x_<j) = H_j >= `decision`                     (j is a decision point: H_j depends on x_<j)
           or x_{j-1} contains one of `ends`       (the previous token closed a statement)

and the span cut at t ends at s(x, t) = the first j > t with b(x_<j), or j - t = `max_span`, or
j = L(x). The proposal draws z from q after x_<t, one token at a time, and stops exactly where
that rule would end a span on the new sequence: before a token drawn at j > t whose entropy makes
j a decision point (that draw is discarded; it still counts as a decode token), after a token
that closes a statement, after `max_span` tokens, or where the sequence ends (EOS, a stop string,
the length cap). Then y = x_<t + z + x_s.. .

**Why the reverse move exists.** The rule reads prefixes, and y_<j = x_<t + z_<(j-t) for every
j <= t + m (m = len(z)), so on y it evaluates exactly as it did while z was drawn: s(y, t) = t + m.
From y, the same kernel cut at t therefore resamples exactly z and keeps y_(t+m).. = x_s.., and
proposing x_t:s there returns x. Both directions are moves of one kernel:

    Q(x -> y) = c(t | x) q(z | x_<t)          Q(y -> x) = c(t | y) q(x_t:s | x_<t)

(the tail is kept, not drawn: it has no proposal term; the stopping rule is deterministic given
the tokens). With pi(x) ~ p(x)^alpha exp(lam r(x)) and the common prefix cancelling,

    log A = alpha (S_p(y_t:) - S_p(x_t:))            every token from t, the rescored tail included
          + S_q(x_t:s) - S_q(z)                      the two spans only
          + log c(t | y) - log c(t | x)              c on each sequence's own (rescored) entropies
          + lam (r(y) - r(x))

**Support.** y must be a sequence the model could finish: if z ends the sequence (EOS, a stop
string) while x has a tail, or z stops at a boundary where x's span ran to its end, or y
outgrows the length cap, or a capped x gets shorter, or the junction forms a stop string before
the end, then pi(y) = 0 and the move is rejected (A = 0; the draw still costs its tokens).
Rejection of out-of-support proposals keeps detailed balance.

A local kernel alone need not be irreducible on every model (it never changes how many spans a
sequence has past its last boundary); mixed with suffix moves at a fixed share (`power.py`,
`--move mixed`) the chain is a valid mixture of pi-reversible kernels and reaches every sequence
a suffix chain reaches.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
from pydantic import BaseModel, ConfigDict, Field

from decision_retry.samplers import mh
from decision_retry.samplers.mh import StepRecord
from decision_retry.tokens import STOP_WINDOW, DecodeState, Sampling, Token, stop_reason


class SpanRule(BaseModel):
    """Where a local move's resampled span ends (module docstring)."""

    model_config = ConfigDict(frozen=True)

    decision: float | None = Field(None, ge=0, description="H_j >= this makes j a span end")
    ends: tuple[str, ...] = Field(("\n",), description="a token containing one of these ends it")
    max_span: int = Field(24, ge=1, description="tokens resampled at most")
    opening: str | None = Field(
        None, description="regex: a cut before x_<t matches it makes a suffix move "
        "(choices.DEF_HEADER: the reply's imports and def line)")


def boundary(tokens: Sequence[Token], j: int, rule: SpanRule) -> bool:
    """b(x_<j): does a span end before position j? Reads tokens[j].entropy and tokens[j-1]."""
    if rule.decision is not None and j < len(tokens) and tokens[j].entropy >= rule.decision:
        return True
    return j > 0 and any(e in tokens[j - 1].text for e in rule.ends)


def kernel_at(tokens: Sequence[Token], t: int, rule: SpanRule) -> str:
    """The move a local kernel makes when cut at t: "suffix" while x_<t has not yet matched
    `rule.opening` (with DEF_HEADER: a cut in the imports or the def line picks the function, so
    its move must be free to rewrite the body too), else "local".

    It reads x_<t only, which the current sequence and every proposal cut at t share, so the
    reverse move makes the same choice: the kernel is a deterministic function of (t, x_<t) and
    the mixture stays pi-reversible (the suffix branch is an ordinary suffix move, with its cut
    correction)."""
    if rule.opening and not re.search(rule.opening, "".join(tok.text for tok in tokens[:t])):
        return "suffix"
    return "local"


def span_end(tokens: Sequence[Token], t: int, rule: SpanRule) -> int:
    """s(x, t): the first j > t that is a boundary, t + max_span, or len(tokens)."""
    n = len(tokens)
    for j in range(t + 1, n):
        if j - t >= rule.max_span or boundary(tokens, j, rule):
            return j
    return n


def stop_kind(tokens: Sequence[Token], i: int, q: Sampling, eos_ids: frozenset[int],
              start: int = 0) -> str | None:
    """Would a generation started at `start` stop right after tokens[i]? The one stop rule,
    tokens.stop_reason, which lm.LM and the remote engine use too."""
    return stop_reason(tokens, i, q, eos_ids, start)


def ends_here(tokens: Sequence[Token], i: int, q: Sampling, eos_ids: frozenset[int]) -> bool:
    """Would generation stop right after tokens[i] (EOS or a stop string/regex, as lm.LM)?"""
    return stop_reason(tokens, i, q, eos_ids) is not None


@dataclass(frozen=True)
class LocalProposal:
    """One local draw: y (None when out of the support), the spans and what it cost."""

    y: DecodeState | None
    t: int
    s: int  # x's span is [t, s)
    m: int  # z = y[t : t + m]
    ended: str  # "boundary", "max_span", "finish" (EOS / stop / cap) or "budget"
    decode_tokens: int  # every forward that drew a token, the discarded look-ahead included
    prefill_positions: int  # the kept tail, teacher-forced (0 while `rescore` is pending)
    reason: str = ""  # why y is out of the support
    # deferred (`propose(defer=True)`): y's kept tail still holds x's tokens and scores, and y
    # has no cache past the span; this gives y rescored (a usable state). None: y is final.
    rescore: Callable[[], DecodeState] | None = field(default=None, compare=False, repr=False)

    def rescored(self) -> DecodeState | None:
        """y with its kept tail scored under the new prefix."""
        return self.y if self.rescore is None else self.rescore()


def propose(
    lm,
    x: DecodeState,
    t: int,
    rule: SpanRule,
    q: Sampling,
    generator: torch.Generator,
    *,
    cap: int,
    budget: int | None = None,
    first=None,
    exclude: int | None = None,
    defer: bool = False,
) -> LocalProposal:
    """Draw z after x_<t by the span rule, keep x's tail rescored; check y is in the support.

    `cap`: the length cap of a finished sequence; `budget`: decode tokens this draw may spend
    (running out is a rejection); `first(state)`, when given, draws the span's first token instead of q (the
    no-body cut token, surprise.draw_first: the rule reads it like any drawn token).
    `exclude`: an id the span's first token may not be (x_t for an excluding move: mh.py
    `exclusion_term`, `log_weight(exclusion=True)`); with `first`, pass it to `first` instead.
    `defer`: do not score the tail yet: y keeps x's tail tokens (same ids and text, x's scores,
    so every term of log A but the tail's target reads the same) until `rescored()` is called,
    which a delayed decision does only when its first stage accepts (chain.Chain.decide). Such
    a y can be tested, compared and recorded, but not forked or extended."""
    if first is not None and exclude is not None:
        raise ValueError("propose: give `exclude` to `first` (surprise.draw_first), not both")
    tokens = x.tokens
    s = span_end(tokens, t, rule)
    tail = [tok.id for tok in tokens[s:]]
    eos = lm.eos_ids
    plain = q.model_copy(update={"stop": (), "stop_regex": None})  # stops: `stop` reads them
    one = plain.model_copy(update={"max_new_tokens": 1})

    def stop(seq: Sequence[Token]) -> str:
        """The span rule on y after its last token, seq[-1], was drawn (the module docstring):
        "before" (a decision point: that draw is discarded), an `ended` word, or "" (go on)."""
        j = len(seq) - 1
        if j > t and rule.decision is not None and seq[j].entropy >= rule.decision:
            return "before"
        if ends_here(seq, j, q, eos) or len(seq) >= cap:
            return "finish"
        if j + 1 - t >= rule.max_span:
            return "max_span"
        return "boundary" if any(e in seq[j].text for e in rule.ends) else ""

    # 1) draw z, stopping where the span rule ends it on y: token by token, or in one streamed
    # request that the rule stops (an engine with `extend_until`: the remote engine, where a
    # request per token would cost a round trip and a prompt each); a first token drawn
    # differently (`first`, `exclude`) is drawn alone first
    stream = getattr(lm, "extend_until", None)
    cur, spent, ended = lm.fork(x, t), 0, ""
    while not ended:
        if budget is not None and spent >= budget:
            ended = "budget"
            break
        if stream is not None and (spent > 0 or (first is None and exclude is None)):
            room = min(rule.max_span - (len(cur) - t), cap - len(cur))
            if budget is not None:
                room = min(room, budget - spent)
            cur, drawn, why = stream(cur, plain.model_copy(update={"max_new_tokens": room}),
                                     generator, stop)
            spent += drawn
            # no word: the budget binds (checked above), or the server ended the sequence
            ended = "boundary" if why == "before" else why or (
                "" if budget is not None and spent >= budget else "finish")
            continue
        if spent == 0 and first is not None:
            nxt = first(cur)
        else:
            nxt = lm.extend(cur, one, generator, **({"exclude": exclude} if spent == 0 else {}))
        spent += 1
        why = stop(nxt.tokens)
        if why != "before":
            cur = nxt
        ended = "boundary" if why == "before" else why
    m = len(cur) - t
    out = dict(t=t, s=s, m=m, ended=ended, decode_tokens=spent, prefill_positions=len(tail))
    # 2) is y a sequence the model could finish?
    if ended == "budget":
        return LocalProposal(None, reason="the budget ran out inside the span", **out)
    if tail and ended == "finish":
        return LocalProposal(None, reason="the span ended the sequence before the kept tail", **out)
    if not tail and ended != "finish":
        return LocalProposal(None, reason="the span stopped where the sequence had ended", **out)
    if len(tokens) - (s - t) + m > cap:
        return LocalProposal(None, reason="longer than the length cap", **out)
    # 3) the kept tail, teacher-forced under the new prefix (one pass; deferred: on demand)
    if tail:
        why = _junction(cur.tokens + tuple(tokens[s:]), t, t + m, q, eos, cap)
        if why:
            return LocalProposal(None, reason=why, **out)

        def scored() -> DecodeState:
            return replace(lm.score(cur, tail, q), finish=x.finish)

        if defer:
            held = replace(cur, tokens=cur.tokens + tuple(tokens[s:]), finish=x.finish)
            return LocalProposal(held, rescore=scored, **{**out, "prefill_positions": 0})
        return LocalProposal(scored(), **out)
    y = replace(cur, finish="length" if not ends_here(cur.tokens, len(cur) - 1, q, eos) else
                ("eos" if cur.tokens[-1].id in eos else "stop"))
    return LocalProposal(y, **out)


def _junction(tokens: Sequence[Token], t: int, k: int, q: Sampling, eos, cap: int) -> str:
    """Why y = x_<t + z + tail (tail from k) is not a finished sequence, or "" when it is.

    Away from the junction every stop window is x's own, which the model already passed."""
    last = len(tokens) - 1
    for i in range(t, min(last, k + STOP_WINDOW)):
        if ends_here(tokens, i, q, eos):
            return "a stop string formed before the end"
    if not ends_here(tokens, last, q, eos) and len(tokens) != cap:
        return "shorter than the length cap but unfinished"
    return ""


def log_weight(
    x: Sequence[Token], y: Sequence[Token], t: int, s: int, m: int, alpha: float,
    *, exclusion: bool = False,
) -> tuple[float, float]:
    """(target part, proposal part) of log A: the kept tail enters the target only (counting
    it in the proposal terms, as a suffix move would, biases the chain:
    tests/samplers/test_samplers_exact.py shows it); `exclusion`: z's first token was drawn
    with x_t banned (adds mh.exclusion_term)."""
    target = alpha * (sum(k.logp for k in y[t:]) - sum(k.logp for k in x[t:]))
    proposal = sum(k.logq for k in x[t:s]) - sum(k.logq for k in y[t: t + m])
    if exclusion:
        term = mh.exclusion_term(x, y, t)
        proposal = -math.inf if -math.inf in (proposal, term) else proposal + term
    return target, proposal


def step_record(
    x: Sequence[Token],
    p: LocalProposal,
    *,
    alpha: float,
    correction: float,
    verifier_delta: float,
    u: float,
    exclusion: bool = False,
) -> StepRecord:
    """The MH decision for a local proposal; out of the support means log A = -inf.
    `exclusion`: its first token was drawn with x_t banned (`propose(exclude=...)`)."""
    t = p.t
    if p.y is None:
        return StepRecord(
            cut_position=t, cut_entropy=x[t].entropy, proposal_length=p.m,
            log_accept=-math.inf, log_target=0.0, log_proposal=0.0, log_cut_correction=0.0,
            log_verifier=0.0, accepted=False, decode_tokens=p.decode_tokens)
    target, proposal = log_weight(x, p.y.tokens, t, p.s, p.m, alpha, exclusion=exclusion)
    log_a = target + proposal + correction + verifier_delta
    return StepRecord(
        cut_position=t, cut_entropy=x[t].entropy, proposal_length=p.m, log_accept=log_a,
        log_target=target, log_proposal=proposal, log_cut_correction=correction,
        log_verifier=verifier_delta, accepted=u == 0 or math.log(u) < log_a,
        decode_tokens=p.decode_tokens)

"""One Metropolis-Hastings move on a token sequence, and one multiple-try move.

Target pi(x) ~ p(x)^alpha * exp(lam * r(x)). A move keeps x_<t, regenerates the suffix from
the proposal q, and accepts with

    log A = alpha * (S_p(x'_t:) - S_p(x_t:))        target (each suffix summed to its own end)
          + (S_q(x_t:) - S_q(x'_t:))                 proposal
          + log c(t | x') - log c(t | x)             cut correction (reverse move, x' entropies)
          + lam * (r(x') - r(x))                     verifier tilt

Without the cut correction an entropy-cut chain samples p^alpha * Z(x) instead of p^alpha.
Note the uniform cut needs it too when lengths vary: c(t | x) = 1 / L(x).

**No null moves (exclusion).** Redrawing the cut token from q often returns x_t itself (q(x_t)
near 1 at a calm token), and the identical proposal is decoded, tested and accepted for
nothing. An excluding move draws y_t from q(.) / (1 - q(x_t)) over y_t != x_t (the rest as
before); its reverse draws x_t with probability q(x_t) / (1 - q(y_t)), both under the one
q(. | x_<t), so log A gains

    log(1 - q(x_t)) - log(1 - q(y_t))                `exclusion_term`

Tokens keep their unrestricted logq (lm.LM, sampling.without), so the term reads them. Where
1 - q(x_t) < NULL_MASS no other token exists at t (`null_at`): the move at t is the identity,
recorded as rejected without decoding (`null_record`). That is exact with c unchanged: the
kernel is sum_t c(t | x) K_t(x, .), each K_t is pi-reversible on its own, and no y reaches such
an x at t either, since its term log(1 - q(x_t)) = -inf (the same threshold reads the same
stored logq both ways). tests/samplers/test_exclusion_exact.py checks it by enumeration.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from pydantic import BaseModel, ConfigDict

from decision_retry import sampling
from decision_retry.samplers import cuts, intervals
from decision_retry.samplers.cuts import CutRule
from decision_retry.samplers.intervals import Interval
from decision_retry.tokens import Token


class StepRecord(BaseModel):
    """What one MH step did; field names match `trace.models.MHStep`."""

    model_config = ConfigDict(frozen=True)

    cut_position: int
    cut_entropy: float
    proposal_length: int
    log_accept: float
    log_target: float
    log_proposal: float
    log_cut_correction: float
    log_verifier: float
    accepted: bool
    decode_tokens: int
    tries: int = 1
    # where some log q are estimates (remote engines, samplers/intervals.py): log A's interval,
    # and whether log u fell inside it (the decision could have gone the other way)
    log_accept_lo: float | None = None
    log_accept_hi: float | None = None
    approximate: bool | None = None
    # a delayed decision (chain.Chain.decide): 1 = rejected before the cut correction, which was
    # not computed (log_accept is the rest of log A), 2 = both stages drawn; None: one stage
    stage: int | None = None



# -- exclusion: the cut token always changes (module docstring) -----------------------------
NULL_MASS = 1e-6  # 1 - q(x_t) below this: no other token at t (float32 logq resolves ~6e-8)


def log_other(logq: float) -> float:
    """log(1 - q) for a token of log-probability `logq` under the proposal: the mass of every
    other token; -inf where it is below NULL_MASS (then the token is alone: a null move)."""
    if logq >= math.log1p(-NULL_MASS):
        return -math.inf
    return math.log(-math.expm1(logq)) if logq > -0.693 else math.log1p(-math.exp(logq))


def null_at(tokens: Sequence[Token], t: int) -> bool:
    """Is an excluding move at t impossible (q has no token but x_t there)? Decodes nothing."""
    return log_other(tokens[t].logq) == -math.inf


def exclusion_term(x: Sequence[Token], y: Sequence[Token], t: int) -> float:
    """log(1 - q(x_t)) - log(1 - q(y_t)) for an excluding move from x to y at t; -inf where the
    reverse move cannot exist (y_t alone under q: from y, t is a null move).

    Both logq are the unrestricted proposal's at t, under the prefix x_<t = y_<t (read them
    after surprise.swap_logq for the no-body cut token: then they are q_B's)."""
    lx, ly = log_other(x[t].logq), log_other(y[t].logq)
    if lx == -math.inf or ly == -math.inf:
        return -math.inf
    return lx - ly


def exclusion_bounds(x: Sequence[Token], y: Sequence[Token], t: int) -> Interval | None:
    """(lo, hi) of `exclusion_term` where x_t's or y_t's logq is an estimate (a remote engine's
    top-k: `logq_bounds`); None when both are exact. log(1 - q) falls as log q grows, so the
    term falls with q(x_t) and grows with q(y_t) up to the null threshold, where it is -inf."""
    bx, by = x[t].logq_bounds, y[t].logq_bounds
    if bx is None and by is None:
        return None
    (x_lo, x_hi), (y_lo, y_hi) = bx or (x[t].logq,) * 2, by or (y[t].logq,) * 2
    least_other = math.log(NULL_MASS)  # log(1 - q(y_t)) just short of the null threshold
    lo_x, hi_x = log_other(x_hi), log_other(x_lo)
    lo_y, hi_y = log_other(y_hi), log_other(y_lo)
    lo = -math.inf if -math.inf in (lo_x, lo_y) else lo_x - hi_y
    hi = -math.inf if hi_x == -math.inf else hi_x - (lo_y if lo_y > -math.inf else least_other)
    return lo, max(lo, hi)


def with_exclusion(bounds: Interval | None, proposal: float, x: Sequence[Token],
                   y: Sequence[Token], t: int) -> Interval | None:
    """The interval of a proposal part that includes `exclusion_term`: `bounds` (its log q
    sums' interval, None when exact) plus the term's interval; `proposal` is the point value."""
    term = exclusion_bounds(x, y, t)
    if term is None or proposal == -math.inf:
        return bounds
    if bounds is None:  # the sums are exact: the point value less the term's point value
        rest = proposal - exclusion_term(x, y, t)
        bounds = (rest, rest)
    return bounds[0] + term[0], bounds[1] + term[1]


def null_record(x: Sequence[Token], t: int) -> StepRecord:
    """The step of a null move at t: rejected, nothing decoded, nothing tested."""
    return StepRecord(
        cut_position=t, cut_entropy=x[t].entropy, proposal_length=0, log_accept=-math.inf,
        log_target=0.0, log_proposal=0.0, log_cut_correction=0.0, log_verifier=0.0,
        accepted=False, decode_tokens=0)


def suffix_sums(tokens: Sequence[Token], t: int) -> tuple[float, float]:
    """(sum logp, sum logq) over tokens[t:], to the sequence's own end."""
    tail = tokens[t:]
    return sum(x.logp for x in tail), sum(x.logq for x in tail)


def log_cut_correction(
    x: Sequence[Token], y: Sequence[Token], t: int, rule: CutRule | None
) -> float:
    """log c(t | y) - log c(t | x); 0 when the correction is switched off (rule None)."""
    if rule is None:
        return 0.0
    return cuts.log_prob([k.entropy for k in y], t, rule) - cuts.log_prob(
        [k.entropy for k in x], t, rule
    )


def log_weight(x: Sequence[Token], y: Sequence[Token], t: int, alpha: float,
               *, exclusion: bool = False) -> tuple[float, float]:
    """(target part, proposal part) of log A for replacing x_t: by y_t:; with `exclusion` (y_t
    drawn with x_t banned) the proposal part includes `exclusion_term`."""
    px, qx = suffix_sums(x, t)
    py, qy = suffix_sums(y, t)
    proposal = qx - qy
    if exclusion:
        proposal = _plus(proposal, exclusion_term(x, y, t))
    return alpha * (py - px), proposal


def _plus(a: float, b: float) -> float:
    """a + b where a -inf on either side wins (-inf + inf is a move that cannot happen)."""
    return -math.inf if -math.inf in (a, b) else a + b


def mh_step_record(
    x: Sequence[Token],
    y: Sequence[Token],
    t: int,
    *,
    alpha: float,
    rule: CutRule | None,
    verifier_delta: float,
    u: float,
    decode_tokens: int,
    correction: float | None = None,
    exclusion: bool = False,
) -> StepRecord:
    """Score the proposal y against x at cut t and decide with the uniform draw u.

    `correction` overrides the cut correction computed from `rule` (for callers whose cut
    distribution sees more than the token entropies, e.g. multi-turn trajectories);
    `exclusion`: y_t was drawn with x_t banned (log_proposal then includes `exclusion_term`)."""
    target, proposal = log_weight(x, y, t, alpha, exclusion=exclusion)
    corr = log_cut_correction(x, y, t, rule) if correction is None else correction
    log_a = target + proposal + corr + verifier_delta
    return StepRecord(
        cut_position=t,
        cut_entropy=x[t].entropy,
        proposal_length=len(y) - t,
        log_accept=log_a,
        log_target=target,
        log_proposal=proposal,
        log_cut_correction=corr,
        log_verifier=verifier_delta,
        accepted=math.log(u) < log_a if u > 0 else True,
        decode_tokens=decode_tokens,
        **intervals.step_fields(log_a, proposal, _bounds(x, y, t, proposal, exclusion), u),
    )


def _bounds(x: Sequence[Token], y: Sequence[Token], t: int, proposal: float,
            exclusion: bool) -> Interval | None:
    b = intervals.proposal_bounds(x, y, t)
    return with_exclusion(b, proposal, x, y, t) if exclusion else b


def pick_kernel(move: str, restart_share: float, local_share: float,
                generator: torch.Generator) -> str:
    """The kernel of the next move in a mixture with fixed probabilities (a valid MH mixture: each
    kernel keeps the target): "restart" with probability `restart_share`, else `move`, where
    "mixed" is "local" with probability `local_share` and "suffix" otherwise. Draws nothing when
    there is no choice, so seeded chains without a mixture keep their cuts."""
    if restart_share == 0 and move != "mixed":
        return move
    u = sampling.uniform(generator)
    if u < restart_share:
        return "restart"
    if move != "mixed":
        return move
    return "local" if u - restart_share < (1 - restart_share) * local_share else "suffix"


def logsumexp(values: Sequence[float]) -> float:
    m = max(values)
    if m == -math.inf:
        return m
    return m + math.log(sum(math.exp(v - m) for v in values))


def mtm_choose(
    x: Sequence[Token],
    tries: Sequence[Sequence[Token]],
    t: int,
    *,
    alpha: float,
    rule: CutRule | None,
    verifier_deltas: Sequence[float],
    generator: torch.Generator,
    decode_tokens: int,
    correction: Callable[[int], float] | None = None,
) -> tuple[int, StepRecord]:
    """Independent-proposal multiple-try Metropolis: pick J ~ softmax(lambda), then accept.

    lambda_k = log [pi(y_k) / q(y_k)] - log [pi(x) / q(x)] over the suffixes (relative to x), and
    log A = log c(t | y_J) - log c(t | x) + LSE(lambda_1..K) - LSE({lambda_k, k != J} U {0}).
    `correction(j)`, when given, replaces the cut correction computed from `rule`.
    """
    lam, lam_bounds = [], []
    for y, dv in zip(tries, verifier_deltas):
        target, proposal = log_weight(x, y, t, alpha)
        lam.append(target + proposal + dv)
        b = intervals.proposal_bounds(x, y, t)
        lam_bounds.append(None if b is None else (target + dv + b[0], target + dv + b[1]))
    probs = torch.tensor(lam, dtype=torch.float64).softmax(0)
    j = int(torch.multinomial(probs, 1, generator=generator))
    y = tries[j]
    corr = log_cut_correction(x, y, t, rule) if correction is None else correction(j)
    log_a = corr + logsumexp(lam) - logsumexp([v for k, v in enumerate(lam) if k != j] + [0.0])
    u = float(torch.rand((), generator=generator))
    target, proposal = log_weight(x, y, t, alpha)
    return j, StepRecord(
        cut_position=t,
        cut_entropy=x[t].entropy,
        proposal_length=len(y) - t,
        log_accept=log_a,
        log_target=target,
        log_proposal=proposal,
        log_cut_correction=corr,
        log_verifier=verifier_deltas[j],
        accepted=u == 0 or math.log(u) < log_a,
        decode_tokens=decode_tokens,
        tries=len(tries),
        **intervals.mtm_fields(lam, lam_bounds, j, corr, u),
    )


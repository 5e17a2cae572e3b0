"""Entropy and log Z from the top-k log-probabilities a server returns, with the rest bounded.

A server lists the k most likely tokens at a position (log-probs at temperature 1) out of a
vocabulary of V. The missing mass R = 1 - sum(listed p) is spread over the other n = V - k
tokens, each at most p_min, the smallest listed probability. Over that set (0 <= p_v <= p_min,
sum p_v = R) the extremes of the sums we need are at its corners (design.md §7):

* entropy:   H_top - R log p_min  <=  H  <=  H_top + R log(n / R)     (chunks of p_min / uniform)
* Z_a = sum_v p_v^a, a = 1/T (T the proposal temperature):
      the rest lies between n (R/n)^a (uniform) and R p_min^(a-1) (chunks), lower or upper
      depending on whether a > 1 (convex) or a < 1 (concave); a = 1 gives Z = 1.

A token drawn at temperature T without truncation has log q = log p / T - log Z_(1/T), so its
log q interval follows from the log Z interval. With a top-k cut no larger than the listed k,
log q is exact. Every interval contains the exact value; the point estimate is its middle.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Interval = tuple[float, float]
SLACK = 1e-6  # missing mass assumed at least, against fp32 rounding of the listed p


@dataclass(frozen=True)
class Listed:
    """Known log-probabilities at one position (temperature 1), best first, out of `vocab`.

    The first `ranked` are the server's top-k (every other token is at most as likely as the
    last of them); a sampled token outside the top-k may follow (vLLM adds it). None: all."""

    logprobs: tuple[float, ...]
    vocab: int
    ranked: int | None = None

    @property
    def rest(self) -> int:
        """Tokens not listed."""
        return max(0, self.vocab - len(self.logprobs))

    @property
    def missing(self) -> tuple[float, float]:
        """(lo, hi) of R, the probability mass not listed. Servers round each p to fp32, so the
        listed sum is off by up to SLACK either way; (0, 0) when all V are listed."""
        if self.rest == 0:
            return 0.0, 0.0
        r = 1.0 - sum(math.exp(lp) for lp in self.logprobs)
        return max(0.0, r - SLACK), max(0.0, r) + SLACK

    @property
    def log_p_min(self) -> float:
        """log of the largest probability a token not listed can have."""
        k = len(self.logprobs) if self.ranked is None else min(self.ranked, len(self.logprobs))
        low = self.logprobs[k - 1] if k else 0.0
        r, n = self.missing[1], self.rest
        # rounding can make R / n exceed the smallest listed p; keep the set non-empty
        return max(low, math.log(r / n)) if r > 0 and n > 0 else low


def _logaddexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    m = max(a, b)
    return m + math.log(math.exp(a - m) + math.exp(b - m))


def entropy_bounds(top: Listed) -> Interval:
    """(lo, hi) of the entropy (nats) of the full distribution."""
    h_top = -sum(math.exp(lp) * lp for lp in top.logprobs)
    r_lo, r_hi = top.missing
    if r_hi <= 0.0:
        return h_top, h_top
    lo = h_top - r_lo * top.log_p_min  # both ends grow with R: the low R for lo, the high for hi
    hi = h_top + r_hi * math.log(top.rest / r_hi)
    return lo, max(lo, hi)


def log_z_bounds(top: Listed, a: float) -> Interval:
    """(lo, hi) of log sum_v p_v^a over the whole vocabulary."""
    if a == 1.0:
        return 0.0, 0.0
    log_top = -math.inf
    for lp in top.logprobs:
        log_top = _logaddexp(log_top, a * lp)
    (r_lo, r_hi), n = top.missing, top.rest
    if r_hi <= 0.0 or n == 0:
        return log_top, log_top

    def uniform(r: float) -> float:  # log n (R/n)^a
        return a * math.log(r) + (1.0 - a) * math.log(n) if r > 0 else -math.inf

    def chunks(r: float) -> float:  # log R p_min^(a-1)
        return math.log(r) + (a - 1.0) * top.log_p_min if r > 0 else -math.inf

    # both grow with R; which one is the lower end depends on convexity (a > 1) or not
    lo_rest, hi_rest = (uniform(r_lo), chunks(r_hi)) if a > 1.0 else (chunks(r_lo), uniform(r_hi))
    lo, hi = _logaddexp(log_top, lo_rest), _logaddexp(log_top, hi_rest)
    return lo, max(lo, hi)


def logq_bounds(
    logp: float,
    top: Listed,
    temperature: float,
    top_k: int | None = None,
    token_rank: int | None = None,
) -> Interval:
    """(lo, hi) of log q(token) under the proposal: temperature T, optional top-k cut.

    `logp` is the token's log-probability at temperature 1; `token_rank` its index in the
    listed top (None when it is not listed)."""
    if temperature == 0:  # argmax: the token is the first listed, or it could not be drawn
        return (0.0, 0.0) if token_rank == 0 else (-math.inf, -math.inf)
    a = 1.0 / temperature
    ranked = len(top.logprobs) if top.ranked is None else top.ranked
    if top_k is not None and top_k <= ranked:
        if token_rank is None or token_rank >= top_k:
            return -math.inf, -math.inf
        log_z = -math.inf
        for lp in top.logprobs[:top_k]:
            log_z = _logaddexp(log_z, a * lp)
        return a * logp - log_z, a * logp - log_z
    if top_k is not None:
        raise ValueError(f"top_k {top_k} needs at least {top_k} listed log-probs, got {ranked}")
    lo, hi = log_z_bounds(top, a)
    return a * logp - hi, a * logp - lo


def middle(interval: Interval) -> float:
    """The point estimate of an interval (its middle; an end when the other is infinite)."""
    lo, hi = interval
    if lo == hi or math.isinf(lo) or math.isinf(hi):
        return hi if math.isinf(lo) else lo
    return 0.5 * (lo + hi)


def listed(top: Sequence[float], vocab: int, extra: Sequence[float] = ()) -> Listed:
    """A `Listed` of the server's top-k `top` and known `extra` tokens outside it, best first."""
    known = sorted([*top, *extra], reverse=True)
    return Listed(tuple(known), vocab, ranked=len(top))

"""The interval of log A when some log q are estimates (a remote engine that sees only the top-k).

Such tokens carry `logq_bounds` (decision_retry.engines.remote.bounds); logp is always exact,
and the cut correction uses the recorded entropies of x and x' the same way in both directions,
so it is exact for the chain that runs. Only the proposal part of log A is uncertain:

    S_q(x_t:) - S_q(x'_t:)  in  [sum lo(x) - sum hi(x'),  sum hi(x) - sum lo(x')]

The move decides with the point estimate; when log u lies inside the interval, another value
in it could have decided the other way, and the step is marked approximate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from decision_retry.tokens import Token

Interval = tuple[float, float]


def _sums(tokens: Sequence[Token], t: int) -> tuple[float, float, bool]:
    lo = hi = 0.0
    estimated = False
    for tok in tokens[t:]:
        if tok.logq_bounds is None:
            lo, hi = lo + tok.logq, hi + tok.logq
        else:
            estimated = True
            lo, hi = lo + tok.logq_bounds[0], hi + tok.logq_bounds[1]
    return lo, hi, estimated


def proposal_bounds(x: Sequence[Token], y: Sequence[Token], t: int) -> Interval | None:
    """(lo, hi) of S_q(x_t:) - S_q(y_t:); None when every log q involved is exact."""
    xl, xh, ex = _sums(x, t)
    yl, yh, ey = _sums(y, t)
    if not (ex or ey):
        return None
    return xl - yh, xh - yl


def straddles(interval: Interval, u: float) -> bool:
    """True when log u could fall on either side of log A within the interval."""
    if u <= 0:
        return False  # log u = -inf: accepted whatever log A is
    lo, hi = interval
    return lo <= math.log(u) < hi


def step_fields(log_a: float, proposal: float, bounds: Interval | None, u: float) -> dict:
    """StepRecord fields for a move whose proposal part is `proposal` (empty when exact)."""
    if bounds is None:
        return {}
    rest = log_a - proposal
    interval = (rest + bounds[0], rest + bounds[1])
    return {"log_accept_lo": interval[0], "log_accept_hi": interval[1],
            "approximate": straddles(interval, u)}


def _lse(values: Sequence[float]) -> float:
    m = max(values)
    if m == -math.inf:
        return m
    return m + math.log(sum(math.exp(v - m) for v in values))


def mtm_fields(
    lam: Sequence[float], lam_bounds: Sequence[Interval | None], j: int, corr: float, u: float
) -> dict:
    """StepRecord fields of a multiple-try move: log A = corr + LSE(lam) - LSE(lam_-J U {0}).

    log A grows with lam_J and shrinks with every other lam_k (its weight in the second LSE
    is larger than in the first), so the ends of the interval take opposite ends of each."""
    if all(b is None for b in lam_bounds):
        return {}
    lo_l = [b[0] if b else v for v, b in zip(lam, lam_bounds)]
    hi_l = [b[1] if b else v for v, b in zip(lam, lam_bounds)]

    def log_a(mine: Sequence[float], others: Sequence[float]) -> float:
        vals = [mine[j] if k == j else others[k] for k in range(len(lam))]
        return corr + _lse(vals) - _lse([v for k, v in enumerate(vals) if k != j] + [0.0])

    interval = (log_a(lo_l, hi_l), log_a(hi_l, lo_l))
    return {"log_accept_lo": interval[0], "log_accept_hi": interval[1],
            "approximate": straddles(interval, u)}

"""A reply whose scoring waits until the chain reads it (delayed acceptance, design.md §2).

Under delayed acceptance (`RetryConfig.delayed`) a proposal's first stage reads only what
decoding and the tests gave. What the second stage, and a cut drawn from the reply, read besides
is computed on demand, here:

1) a deferred local move's kept tail, rescored under the new prefix (local.py,
   `propose(defer=True)`: until then the reply holds x's tail, ids and scores);
2) the reply's pass under the no-body context (surprise.py `annotate`): exact (decoding's
   numbers, which the no-body cut token needs) or in bulk (`exact=False`, a function of the
   sequence alone, enough for cut weights), from the no-body state of a reply that shares its
   first t tokens where there is one.

`fix` (agent/graph.py), the LangGraph model node and ChatDecisionRetry (the integrations) keep a
`Deferred` beside each reply they write and call `complete` when the chain reads the reply, so
a proposal that the first stage rejects, or that passes and ends the run, is never scored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from decision_retry.samplers import surprise
from decision_retry.samplers.local import LocalProposal
from decision_retry.tokens import DecodeState, Sampling


@dataclass(frozen=True)
class Deferred:
    """What a reply still needs before the chain reads all of it."""

    tail: LocalProposal | None = None  # a deferred local move (its `rescore` pending)
    nobody: bool = False  # its pass under the no-body context
    base: DecodeState | None = None  # no-body state of a reply sharing the first t tokens
    t: int = 0

    @property
    def pending(self) -> bool:
        return self.nobody or (self.tail is not None and self.tail.rescore is not None)


@dataclass(frozen=True)
class Completed:
    """The reply completed, its no-body state (None when it had no no-body pass to make), and
    the positions teacher-forced (prefill cost, no decode tokens)."""

    y: DecodeState
    alt: DecodeState | None
    positions: int


def complete(y: DecodeState, deferred: Deferred, *, context: Callable[[], surprise.AltContext],
             q: Sampling, exact: bool) -> Completed:
    """`y` with its kept tail rescored (1) and its no-body scores (2); `context()` gives the
    no-body context (built on first use by the caller), `q` the proposal the scores' logq are
    under, `exact` the no-body scoring (`RetryConfig.nobody_exact`)."""
    n, alt = 0, None
    if deferred.tail is not None and deferred.tail.rescore is not None:  # 1) the kept tail
        p = deferred.tail
        y, n = p.rescored(), len(p.y) - p.t - p.m
    if deferred.nobody:  # 2) the reply under the no-body context
        s = surprise.annotate(context(), y, q, base=deferred.base, t=deferred.t, exact=exact)
        y, alt, n = s.y, s.alt, n + s.positions
    return Completed(y, alt, n)

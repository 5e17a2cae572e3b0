"""Per-token records: what the decode engine writes for every generated token."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Alternative(BaseModel):
    """One of the top-k candidates at a position, under the base distribution p."""

    model_config = ConfigDict(frozen=True)

    id: int
    text: str
    prob: float


class Token(BaseModel):
    """One generated token.

    logp: log p(token | prefix) under the base model at temperature 1 (raw logits, fp32).
    logq: log q(token | prefix) under the proposal it was actually drawn from.
    entropy: entropy (nats) of the base next-token distribution p(. | prefix).
    top: the most likely candidates under p at this position, best first.
    """

    model_config = ConfigDict(frozen=True)

    id: int
    text: str
    logp: float
    logq: float
    entropy: float
    top: tuple[Alternative, ...] = ()

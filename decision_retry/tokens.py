"""Values the engines and the decode loop exchange: tokens, sampling settings, decode states."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer


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
    logq_bounds, entropy_bounds: where logq / entropy are estimates (a remote engine that sees
    only the top-k), intervals that contain the exact values; None when they are exact.
    alt_logp, alt_logq: log p and log q of this token under a second context (the no-body
    prompt of samplers/surprise.py), same prefix of generated tokens; None when not scored.
    """

    model_config = ConfigDict(frozen=True)

    id: int
    text: str
    logp: float
    logq: float
    entropy: float
    top: tuple[Alternative, ...] = ()
    logq_bounds: tuple[float, float] | None = None
    entropy_bounds: tuple[float, float] | None = None
    alt_logp: float | None = None
    alt_logq: float | None = None

    @model_serializer(mode="wrap")
    def _omit_exact(self, handler):
        # exact tokens serialise as before the bounds existed: trace ids stay what they were
        data = handler(self)
        if isinstance(data, dict):
            for key in ("logq_bounds", "entropy_bounds", "alt_logp", "alt_logq"):
                if key in data and data[key] is None:
                    del data[key]
        return data


Finish = Literal["eos", "stop", "length"]


class Sampling(BaseModel):
    """How to draw tokens: temperature (0 = argmax), top-k, stop strings, and the length cap."""

    model_config = ConfigDict(frozen=True)

    temperature: float = Field(1.0, ge=0.0)
    top_k: int | None = Field(None, ge=1)
    max_new_tokens: int = Field(256, ge=1)
    stop: tuple[str, ...] = ()
    stop_regex: str | None = Field(None, description="stop when the recent text matches")
    alternatives: int = Field(5, ge=0, description="top alternatives recorded per token")


STOP_WINDOW = 16  # tokens whose joined text is searched for a stop string or the stop regex


def stop_reason(tokens: Sequence[Token], i: int, sampling: Sampling, eos_ids: frozenset[int],
                start: int = 0) -> Literal["eos", "stop"] | None:
    """The one stop rule: would a generation that began at tokens[start] stop right after
    tokens[i]? "eos" for an end-of-sequence id, "stop" when a stop string or the stop regex
    occurs in the text of the last STOP_WINDOW tokens (none before `start`), else None.

    The decode loop (lm.LM), the remote engine and the local moves (samplers/local.py) all call
    it, so a local move's support is exactly what the decode loop would have produced."""
    if tokens[i].id in eos_ids:
        return "eos"
    if not (sampling.stop or sampling.stop_regex):
        return None
    tail = "".join(t.text for t in tokens[max(start, i - STOP_WINDOW + 1): i + 1])
    if any(s in tail for s in sampling.stop):
        return "stop"
    if sampling.stop_regex and re.search(sampling.stop_regex, tail):
        return "stop"
    return None


@dataclass(frozen=True)
class DecodeState:
    """Prompt + generated tokens + the engine's cache over all positions but the last.

    `cache` belongs to the engine that made the state (a KV cache, a set of llama.cpp sequence
    ids, or the ids a remote server should see again); callers never look inside it.
    """

    prompt_ids: tuple[int, ...]
    tokens: tuple[Token, ...] = ()
    finish: Finish | None = None
    cache: Any = field(default=None, repr=False, compare=False)

    @property
    def ids(self) -> list[int]:
        return [*self.prompt_ids, *(t.id for t in self.tokens)]

    @property
    def text(self) -> str:
        return "".join(t.text for t in self.tokens)

    def __len__(self) -> int:
        return len(self.tokens)

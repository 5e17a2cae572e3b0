"""Decision-point detection: entropy spikes and tool choices, as pure functions over tokens."""

from __future__ import annotations

import math
from collections.abc import Sequence
from difflib import SequenceMatcher
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator

from decision_retry.tokens import Token
from decision_retry.trace.models import DecisionPoint, Turn


class SpikeRule(BaseModel):
    """When a token counts as an entropy spike; every criterion that is set must hold.

    threshold: entropy H_t (nats) at least this.
    jump: H_t - H_{t-1} at least this (H_{-1} = 0, so the first token jumps by its own entropy).
    top_fraction: H_t among the ceil(top_fraction * L) highest entropies of the turn.
    """

    model_config = ConfigDict(frozen=True)

    threshold: float | None = Field(default=1.5, ge=0)
    jump: float | None = Field(default=None, ge=0)
    top_fraction: float | None = Field(default=None, gt=0, le=1)

    @model_validator(mode="after")
    def _some_criterion(self) -> SpikeRule:
        if self.threshold is None and self.jump is None and self.top_fraction is None:
            raise ValueError("SpikeRule needs at least one of threshold, jump, top_fraction")
        return self


class ToolSpan(NamedTuple):
    """A character span of the turn text that chooses something, e.g. (10, 22, "file")."""

    start: int
    end: int
    label: str


class ToolChoice(NamedTuple):
    """A tool span mapped onto the tokens: the first token overlapping it."""

    position: int
    label: str
    text: str


def entropy_spikes(entropies: Sequence[float], rule: SpikeRule) -> list[int]:
    """Positions whose entropy satisfies every criterion of `rule`, in order."""
    keep = [True] * len(entropies)
    if rule.threshold is not None:
        keep = [k and h >= rule.threshold for k, h in zip(keep, entropies)]
    if rule.jump is not None:
        previous = [0.0, *entropies[:-1]]
        keep = [k and h - p >= rule.jump for k, h, p in zip(keep, entropies, previous)]
    if rule.top_fraction is not None and entropies:
        n_top = math.ceil(rule.top_fraction * len(entropies))
        # stable sort: among equal entropies the earlier position wins
        top = set(sorted(range(len(entropies)), key=lambda i: -entropies[i])[:n_top])
        keep = [k and i in top for i, k in enumerate(keep)]
    return [i for i, k in enumerate(keep) if k]


def token_offsets(tokens: Sequence[Token]) -> list[int]:
    """Start character offset of each token in the concatenation of the token texts."""
    offsets, at = [], 0
    for token in tokens:
        offsets.append(at)
        at += len(token.text)
    return offsets


def _text_to_joined(text: str, joined: str) -> list[int]:
    """For each character index of `text` (and its end), the matching index in `joined`.

    Token texts decoded one by one may differ from the turn text decoded at once (split multi-byte
    characters, normalised spaces); unmatched characters map to the next matched position.
    """
    if text == joined:
        return list(range(len(text) + 1))
    mapping = [-1] * (len(text) + 1)
    matcher = SequenceMatcher(None, text, joined, autojunk=False)
    for a, b, size in matcher.get_matching_blocks():
        for k in range(size):
            mapping[a + k] = b + k
    mapping[len(text)] = len(joined)
    for i in range(len(text) - 1, -1, -1):  # fill gaps from the right
        if mapping[i] < 0:
            mapping[i] = mapping[i + 1]
    return mapping


def tool_choices(text: str, tokens: Sequence[Token], spans: Sequence[ToolSpan]) -> list[ToolChoice]:
    """Map character spans of `text` to the first token overlapping each span.

    Spans that are empty, out of range, or fall where no token is are skipped.
    """
    joined = "".join(t.text for t in tokens)
    to_joined = _text_to_joined(text, joined)
    offsets = token_offsets(tokens)
    ends = [o + len(t.text) for o, t in zip(offsets, tokens)]
    choices = []
    for start, end, label in spans:
        if not 0 <= start < end <= len(text):
            continue
        j_start, j_end = to_joined[start], to_joined[end]
        # first token whose [offset, end) overlaps [j_start, j_end)
        hit = next(
            (
                i
                for i, (o, e) in enumerate(zip(offsets, ends))
                if o < max(j_end, j_start + 1) and e > j_start
            ),
            None,
        )
        if hit is not None:
            choices.append(ToolChoice(hit, label, text[start:end]))
    return choices


def decision_at(
    turn: Turn,
    position: int,
    *,
    kind: str = "entropy",
    label: str | None = None,
    span: str | None = None,
    snapshot: str | None = None,
) -> DecisionPoint:
    """The decision point at token `position` of `turn`, with its entropy and alternatives."""
    if not 0 <= position < len(turn.tokens):
        raise ValueError(f"position {position} outside the turn's {len(turn.tokens)} tokens")
    token = turn.tokens[position]
    return DecisionPoint(
        turn_id=turn.id,
        position=position,
        entropy=token.entropy,
        token_id=token.id,
        token=token.text,
        alternatives=token.top,
        kind=kind,
        label=label,
        span=span,
        snapshot=snapshot,
    )


def detect_decisions(
    turn: Turn,
    rule: SpikeRule | None = None,
    spans: Sequence[ToolSpan] = (),
    *,
    snapshot: str | None = None,
) -> list[DecisionPoint]:
    """All decision points of a turn: entropy spikes (if `rule`) and tool choices, by position."""
    points = []
    if rule is not None:
        for position in entropy_spikes([t.entropy for t in turn.tokens], rule):
            points.append(decision_at(turn, position, snapshot=snapshot))
    for choice in tool_choices(turn.text, turn.tokens, spans):
        points.append(
            decision_at(
                turn,
                choice.position,
                kind="tool",
                label=choice.label,
                span=choice.text,
                snapshot=snapshot,
            )
        )
    return sorted(points, key=lambda d: (d.position, d.kind))

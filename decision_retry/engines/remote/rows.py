"""A request's stream as rows of tokens: a dialect's events (wire.py) read into `Row`s, each
`Step` made a `Token` whose log q and entropy come from the listed top k with the missing mass
bounded (bounds.py), each row ended by the one stop rule (tokens.stop_reason) or the server.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from decision_retry.engines.remote import bounds, pieces
from decision_retry.engines.remote.wire import End, Step, Usage
from decision_retry.tokens import Alternative, Finish, Sampling, Token, stop_reason

Until = Callable[[Sequence[Token]], str]  # extend_until's rule: "", "before" or a stop word


@dataclass
class Row:
    """One completion being read: its pieces (prefix included) and its new tokens."""

    pieces: list  # bytes or str per token, prefix included
    tokens: list[Token] = field(default_factory=list)
    finish: Finish | None = None
    drawn: int = 0  # tokens the server drew for `extend_until`, a dropped one included
    stop: str = ""  # extend_until's rule stopped the row here


@dataclass(frozen=True)
class Reader:
    """Reads one served model's events: its vocabulary size (for the bounds), end-of-generation
    ids, and `piece` (an alternative's text where the server lists ids only: vLLM)."""

    vocab: int
    eos_ids: frozenset[int]
    piece: Callable[[int], str]

    def read(self, events: Iterator, rows: list[Row], sampling: Sampling, *,
             before: Sequence[Token] = (), until: Until | None = None) -> list[Usage]:
        """Read `events` into `rows` until every row ended (or `until` stopped the one row,
        which reads `before` + its tokens); returns the server's usage reports. Leaving early
        closes the stream: the server stops generating."""
        usage: list[Usage] = []
        for ev in events:
            if isinstance(ev, Usage):
                usage.append(ev)
                continue
            row = rows[ev.row]
            if row.finish is not None:
                continue  # this row stopped here; the server may still send its tail
            if isinstance(ev, End):
                row.finish = ev.reason if ev.reason == "eos" else "length"
            elif isinstance(ev, Step):
                self.append(row, ev, sampling)
                if until is not None:
                    row.drawn += 1
                    row.stop = until((*before, *row.tokens))
                    if row.stop == "before":  # the drawn token is not kept
                        row.tokens.pop()
                        row.pieces.pop()
                        row.finish = None
                    if row.stop:
                        break
            if all(r.finish is not None for r in rows) and any(r.finish == "stop" for r in rows):
                break
        for row in rows:
            if not row.stop:
                row.finish = row.finish or "length"
        return usage

    def append(self, row: Row, step: Step, sampling: Sampling) -> None:
        """`step` as the row's next token; the row's finish where the stop rule ends it."""
        text = pieces.text(row.pieces, step.piece)
        row.pieces.append(step.piece)
        row.tokens.append(self.token(step, text, sampling))
        row.finish = self.finish(row.tokens, sampling)

    def token(self, step: Step, text: str, sampling: Sampling) -> Token:
        """A Token with the server's log p and, from its listing, log q and the entropy: the
        middles of intervals kept on the token (points when the whole vocabulary is listed)."""
        top = sorted(step.top, key=lambda c: -c.logprob)
        listed_ids = {c.id for c in top}
        extra = () if step.id in listed_ids else (step.logprob,)  # known, outside the top-k
        listed = bounds.listed([c.logprob for c in top], self.vocab, extra)
        rank = next((i for i, c in enumerate(top) if c.id == step.id), None)
        h = bounds.entropy_bounds(listed)
        q = bounds.logq_bounds(step.logprob, listed, sampling.temperature, sampling.top_k, rank)
        alts = tuple(
            Alternative(id=c.id, text=pieces.loose(c.piece) or self.piece(c.id),
                        prob=math.exp(c.logprob))
            for c in top[: sampling.alternatives]
        )
        return Token(
            id=step.id, text=text, logp=step.logprob, logq=bounds.middle(q),
            entropy=bounds.middle(h), top=alts,
            logq_bounds=None if q[0] == q[1] else q,
            entropy_bounds=None if h[0] == h[1] else h,
        )

    def finish(self, new: Sequence[Token], sampling: Sampling) -> Finish | None:
        """How a row of `new` tokens (the stop window starts where the request began, as in
        lm.LM) ends, or None while it goes on."""
        stop = stop_reason(new, len(new) - 1, sampling, self.eos_ids)
        if stop is not None:
            return stop
        if len(new) >= sampling.max_new_tokens:
            return "length"
        return None

"""The decode loop: turns any `Backend` into an `Engine` (decision_retry.protocols).

A `DecodeState` is an immutable value: prompt ids, generated `Token`s, and a private cache that
covers every position except the last one (that last id is fed on the next step). So

* continuing a state costs one forward per new token (no re-prefill);
* `fork(state, t)` keeps tokens[:t] by slicing a copy of the cache to P + t - 1 positions,
  the original state stays usable (an MH rejection needs it);
* `extend_many` replicates one prefix cache K times and decodes K tries in one batched forward
  per step, each row with its own generator;
* `score` teacher-forces given ids in one pass (prefill cost) and records them like sampled ones
  (`exact=False`: in whatever batches are cheapest, for numbers that need only be a function of
  the sequence, such as cut weights; decoding's own numbers otherwise);
* `extend(..., exclude=id)` bans one id at the first drawn position (an MH move that must change
  the cut token, samplers/mh.py `exclusion_term`); every token keeps its unrestricted logq;
* `extend_along` draws like `extend` but walks earlier continuations of the same state while the
  draw follows them, and decodes only where it leaves them.

Sampling happens here, on the full-vocabulary logits the backend returns, so logp, logq and the
entropy are exact whichever backend runs (decision_retry.engines: transformers, llama.cpp, toys).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from decision_retry import sampling
from decision_retry.protocols import Backend, Prompt
from decision_retry.tokens import Alternative, DecodeState, Finish, Sampling, Token, stop_reason

__all__ = ["LM", "DecodeState", "Finish", "Sampling"]

_PIECE_CONTEXT = 16  # ids of left context handed to `Backend.piece` (it needs <= 4)


class LM:
    """Decode loop over a `Backend`: prefill once, extend, fork, and K batched tries."""

    teacher_forcing = True  # `score`: every backend scores T ids in one pass
    excludes = True  # `extend(..., exclude=id)`: the first draw can ban an id

    def __init__(self, backend: Backend, *, name: str = "model") -> None:
        self.backend = backend
        self.name = name

    @property
    def eos_ids(self) -> frozenset[int]:
        return self.backend.eos_ids

    def counters(self) -> dict[str, int]:
        """The backend's own event counts (llama.cpp: `kv_disordered`, `kv_evictions`), if any."""
        counters = getattr(self.backend, "counters", None)
        return counters() if counters else {}

    @property
    def inexact_chunk(self) -> int:
        """An inexact `score` continues only from a multiple of this many scored positions."""
        return getattr(self.backend, "inexact_chunk", 1)  # 1: backends that score in one pass

    def encode_text(self, text: str) -> list[int]:
        return self.backend.encode_text(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.backend.decode(ids)

    # -- prompts ---------------------------------------------------------------------------
    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt: a chat (list of messages), plain text, or ids as they are."""
        if isinstance(prompt, str) or (prompt and isinstance(prompt[0], dict)):
            return self.backend.encode_prompt(prompt)
        return list(prompt)

    def prefill(self, prompt: Prompt) -> DecodeState:
        """Run the prompt once; the returned state can be extended and forked freely."""
        ids = self.encode(prompt)
        if not ids:
            raise ValueError("empty prompt: give at least one token")
        return DecodeState(tuple(ids), cache=self.backend.prefill(ids[:-1]))

    # -- forks -----------------------------------------------------------------------------
    def fork(self, state: DecodeState, t: int) -> DecodeState:
        """The state holding state.tokens[:t]; copies the cache prefix, `state` stays usable."""
        if not 0 <= t <= len(state.tokens):
            raise ValueError(f"fork position {t} outside 0..{len(state.tokens)}")
        n = len(state.prompt_ids) + t - 1
        return DecodeState(state.prompt_ids, state.tokens[:t], None, self.backend.slice(state.cache, n))

    # -- decoding --------------------------------------------------------------------------
    def extend(
        self, state: DecodeState, sampling_: Sampling, generator: torch.Generator,
        *, exclude: int | None = None,
    ) -> DecodeState:
        """Continue `state` by up to `max_new_tokens` tokens (stops at EOS / stop string);
        `exclude`: an id the first new token may not be (drawn from q renormalised without it)."""
        return self.extend_many(state, sampling_, [generator], exclude=exclude)[0]

    def extend_many(
        self, state: DecodeState, sampling_: Sampling, generators: Sequence[torch.Generator],
        *, exclude: int | None = None,
    ) -> list[DecodeState]:
        """K continuations of one prefix, one batched forward per step, one generator per row;
        `exclude` bans one id at the first drawn position of every row."""
        return self._extend(state, sampling_, generators, exclude=exclude)[0]

    def extend_along(
        self, state: DecodeState, along: Sequence[DecodeState], sampling_: Sampling,
        generator: torch.Generator,
    ) -> tuple[DecodeState, int]:
        """`extend`, walking `along` (earlier continuations of `state`, drawn with the same
        proposal) without decoding while the draw follows one of them; (the state, positions
        decoded).

        At each position, S is the set of tokens the continuations that agree with the draw so
        far have there, each with the q recorded when it was drawn: the draw is s in S with
        probability q(s); otherwise it leaves them there, y ~ q(.) / (1 - q(S)) over y not in S,
        and decoding goes on from their KV cache at that position (a fork). So every token has
        probability q(y): extend's law, token by token, for the cost of the positions after the
        draw leaves them (a reply the model writes again is free). The tokens kept are the
        continuations' own records: they depend on the prefix only."""
        states, decoded = self._extend(state, sampling_, [generator], along=along)
        return states[0], decoded

    def _extend(
        self, state: DecodeState, sampling_: Sampling, generators: Sequence[torch.Generator],
        *, exclude: int | None = None, along: Sequence[DecodeState] = (),
    ) -> tuple[list[DecodeState], int]:
        if state.finish in ("eos", "stop"):
            return [state for _ in generators], 0  # "length" only paused: it may grow again
        k, start = len(generators), len(state.tokens)
        walk = [a for a in along if k == 1 and exclude is None and a.prompt_ids == state.prompt_ids
                and len(a.tokens) > start and a.tokens[:start] == state.tokens]
        rows = [_Row(list(state.ids), []) for _ in range(k)]
        live = list(range(k))  # rows still decoding, in cache batch order
        cache = None if walk else self._cache(state, k)
        pending = torch.tensor([state.ids[-1]] * k)  # (B,)
        ban = None if exclude is None else [exclude] * k
        decoded, leaving = 0, False
        for _ in range(sampling_.max_new_tokens):
            row = rows[0]
            if walk:  # on the walked continuations: keep one of their tokens with its q
                j = len(row.tokens)
                nexts = {a.tokens[start + j].id: a.tokens[start + j] for a in reversed(walk)
                         if len(a.tokens) > start + j}
                if nexts:
                    u, mass, tok = float(torch.rand((), generator=generators[0],
                                                    dtype=torch.float64)), 0.0, None
                    for t in nexts.values():
                        mass += math.exp(t.logq)
                        if u < mass:
                            tok = t
                            break
                    if tok is not None:
                        row.ids.append(tok.id)
                        row.tokens.append(tok)
                        walk = [a for a in walk if len(a.tokens) > start + j
                                and a.tokens[start + j].id == tok.id]
                        row.finish = self._finish(row, sampling_)
                        if row.finish is not None:
                            row.cache = self._cache(_head(walk[0], start + j + 1), 1)
                            break
                        continue
                    ban, leaving = [tuple(nexts)], True  # leave: any token but theirs
                cache = self._cache(_head(walk[0], start + j), 1)  # their cache up to here
                pending, walk = torch.tensor([row.ids[-1]]), []
            logits = self.backend.forward(cache, pending)  # (B, V)
            decoded += 1
            base = sampling.base_logprobs(logits)  # (B, V), shared by the draw and the alternatives
            try:
                ids, logp, logq, h = sampling.select(
                    logits, [generators[i] for i in live], sampling_.temperature,
                    sampling_.top_k, logp=base, exclude=ban,
                )
            except ValueError:  # leaving where q has no other token: it stays (q(x) = 1)
                if not leaving:
                    raise
                ids, logp, logq, h = sampling.select(
                    logits, [generators[i] for i in live], sampling_.temperature,
                    sampling_.top_k, logp=base,
                )
            ban, leaving = None, False  # the first drawn position only
            alt_ids, alt_p = sampling.top_alternatives(logits, sampling_.alternatives, logp=base)
            keep = []
            for b, r in enumerate(live):
                row = rows[r]
                tok = self._token(row.ids, int(ids[b]), logp[b], logq[b], h[b], alt_ids[b], alt_p[b])
                row.ids.append(tok.id)
                row.tokens.append(tok)
                row.finish = self._finish(row, sampling_)
                if row.finish is None:
                    keep.append(b)
                elif len(live) > 1:
                    row.cache = self.backend.select(cache, [b])  # its own copy, all but the last id
                else:
                    row.cache = cache
            if not keep:
                break
            if len(keep) < len(live):
                cache = self.backend.select(cache, keep)
                live = [live[b] for b in keep]
            pending = ids[keep]  # (B,)
        return [
            DecodeState(state.prompt_ids, state.tokens + tuple(row.tokens), row.finish, row.cache)
            for row in rows
        ], decoded

    def _cache(self, state: DecodeState, k: int):
        """An own copy of `state`'s cache (every position but the last), K times."""
        n = len(state.prompt_ids) + len(state.tokens) - 1
        cache = self.backend.slice(state.cache, n)
        return self.backend.repeat(cache, k) if k > 1 else cache

    def score(self, state: DecodeState, ids: Sequence[int], sampling_: Sampling, *,
              exact: bool = True) -> DecodeState:
        """`state` extended by `ids`, teacher-forced in one pass; tokens recorded as if drawn
        with `sampling_` (logq is the log-probability of each given id under that proposal).

        `exact=False`: the backend may batch as it likes, so the numbers are a function of
        (state, ids) but not decoding's; the state it returns cannot be extended, and only its
        forks at multiples of `inexact_chunk` scored positions can be scored inexactly again."""
        if not ids:
            return state
        n = len(state.prompt_ids) + len(state.tokens) - 1
        cache = self.backend.slice(state.cache, n)  # own copy; `state` is never mutated
        fed = [state.ids[-1], *ids[:-1]]
        logits = self.backend.score(cache, fed, exact=exact)  # (T, V): row i predicts ids[i]
        want = torch.tensor(list(ids)).unsqueeze(-1)  # (T, 1)
        logp = sampling.base_logprobs(logits)  # (T, V)
        h = sampling.entropy(logp)  # (T,)
        if sampling_.temperature == 0:
            logq = torch.where(logp.argmax(-1, keepdim=True) == want, 0.0, -torch.inf).squeeze(-1)
        else:
            logq = sampling.proposal_logprobs(logits, sampling_.temperature, sampling_.top_k)
            logq = logq.gather(-1, want).squeeze(-1)  # (T,)
        logp_ids = logp.gather(-1, want).squeeze(-1)  # (T,)
        alt_ids, alt_p = sampling.top_alternatives(logits, sampling_.alternatives, logp=logp)
        prefix, tokens = state.ids[-_PIECE_CONTEXT:], []
        for i, tid in enumerate(ids):
            tokens.append(self._token(prefix, int(tid), logp_ids[i], logq[i], h[i], alt_ids[i], alt_p[i]))
            prefix = [*prefix[1 - _PIECE_CONTEXT:], int(tid)]
        # the cache now covers every fed id, i.e. all positions but the last: a usable state
        finish = "eos" if tokens[-1].id in self.backend.eos_ids else None
        return DecodeState(state.prompt_ids, state.tokens + tuple(tokens), finish, cache)

    # -- helpers ---------------------------------------------------------------------------
    def _token(self, prefix, tid, logp, logq, h, alt_ids, alt_p) -> Token:
        # A piece needs only a few ids of left context (a UTF-8 character spans <= 4 tokens), so
        # pass a short tail, not the whole history; the values are already of the right types,
        # so build the frozen models without pydantic validation (it cost more than sampling).
        tail = list(prefix[-_PIECE_CONTEXT:])
        top = tuple(
            Alternative.model_construct(id=i, text=self.backend.piece([*tail, i]), prob=p)
            for i, p in zip(alt_ids.tolist(), alt_p.tolist())
        )
        return Token.model_construct(
            id=tid,
            text=self.backend.piece([*tail, tid]),
            logp=float(logp),
            logq=float(logq),
            entropy=float(h),
            top=top,
        )

    def _finish(self, row: _Row, sampling_: Sampling) -> Finish | None:
        # the stop window covers this call's tokens only: it starts where the extend began
        stop = stop_reason(row.tokens, len(row.tokens) - 1, sampling_, self.backend.eos_ids)
        if stop is not None:
            return stop
        if len(row.tokens) >= sampling_.max_new_tokens:
            return "length"
        return None


def _head(state: DecodeState, n: int) -> DecodeState:
    """`state`'s first n tokens over its cache (which covers them: a slice of it is theirs)."""
    return DecodeState(state.prompt_ids, state.tokens[:n], None, state.cache)


@dataclass
class _Row:
    ids: list[int]
    tokens: list[Token]
    finish: Finish | None = None
    cache: Any = None

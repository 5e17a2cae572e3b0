"""Toy backends with known truth, small enough to enumerate (decision_retry.protocols.Backend).

* `TableBackend`: a toy autoregressive model over a tiny vocabulary whose next-token
  distribution is a fixed function of the whole context; `power_distribution` enumerates p^alpha.
* `DecisionTreeBackend`: T tokens, k of them real decisions, the rest near-certain filler,
  with a verifier: the toy of design.md §2 for tokens-to-solve as T and k vary.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator, Sequence

import torch


class IdRowsCache:
    """The cache of toy backends: the ids themselves, a (B, n) tensor, grown in place."""

    def prefill(self, ids: Sequence[int]) -> torch.Tensor:
        return torch.tensor([list(ids)], dtype=torch.long).reshape(1, len(ids))

    def append(self, cache: torch.Tensor, ids: torch.Tensor) -> list[list[int]]:
        """Append one id per row in place (like a KV cache); the rows as lists."""
        cache.set_(torch.cat([cache, ids.reshape(-1, 1)], dim=1))
        return cache.tolist()

    def slice(self, cache: torch.Tensor, n: int) -> torch.Tensor:
        return cache[:, :n].clone()

    def repeat(self, cache: torch.Tensor, k: int) -> torch.Tensor:
        return cache.repeat_interleave(k, dim=0)

    def select(self, cache: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
        return cache[list(rows)].clone()

    def score(self, cache: torch.Tensor, ids: Sequence[int], *, exact: bool = True) -> torch.Tensor:
        """Teacher forcing one id at a time (a toy has no faster path, so always exact)."""
        return torch.cat([self.forward(cache, torch.tensor([i])) for i in ids])


class TableBackend(IdRowsCache):
    """Toy model: logits(context) drawn once per context from a seed hashed from the context.

    Token 0 is EOS; tokens are named "a", "b", "c", ... Every cache is a (B, n) id tensor.
    `sharpness` scales the logits (larger = lower entropy); `spread` varies that scale from
    context to context (log-normally), so some contexts are hesitant and others near-certain.
    """

    def __init__(
        self, vocab: int = 4, *, seed: int = 0, sharpness: float = 2.0, spread: float = 0.0
    ) -> None:
        if vocab < 2:
            raise ValueError(f"vocab={vocab}: need at least EOS and one token")
        self.vocab = vocab
        self.seed = seed
        self.sharpness = sharpness
        self.spread = spread
        self.eos_ids = frozenset({0})
        self.names = ["<eos>"] + [chr(ord("a") + i) for i in range(vocab - 1)]
        self._memo: dict[tuple[int, ...], torch.Tensor] = {}

    def logits(self, context: Sequence[int]) -> torch.Tensor:
        """Fixed logits (V,) for a context."""
        key = tuple(context)
        if key not in self._memo:
            h = zlib.crc32(bytes(str((self.seed, key)), "ascii"))
            g = torch.Generator().manual_seed(h)
            scale = self.sharpness * math.exp(self.spread * float(torch.randn((), generator=g)))
            self._memo[key] = torch.randn(self.vocab, generator=g) * scale
        return self._memo[key]

    def encode_prompt(self, prompt) -> list[int]:
        text = prompt if isinstance(prompt, str) else "".join(m["content"] for m in prompt)
        return [1 + (ord(ch) % (self.vocab - 1)) for ch in text] or [1]

    def encode_text(self, text: str) -> list[int]:
        return self.encode_prompt(text)

    def piece(self, ids: Sequence[int]) -> str:
        return self.names[ids[-1]]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.names[i] for i in ids)

    def forward(self, cache: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        rows = self.append(cache, ids)
        return torch.stack([self.logits(r) for r in rows])  # (B, V)

    # -- exact enumeration -----------------------------------------------------------------
    def sequences(self, prompt: Sequence[int], max_len: int) -> Iterator[tuple[tuple[int, ...], float]]:
        """Every finished continuation (ends in EOS, or reaches max_len) with its log p."""

        def walk(prefix: tuple[int, ...], lp: float):
            logp = torch.log_softmax(self.logits([*prompt, *prefix]).double(), -1)
            for tok in range(self.vocab):
                x, l = (*prefix, tok), lp + float(logp[tok])
                if tok in self.eos_ids or len(x) == max_len:
                    yield x, l
                else:
                    yield from walk(x, l)

        yield from walk((), 0.0)

    def power_distribution(
        self, prompt: Sequence[int], max_len: int, alpha: float
    ) -> dict[tuple[int, ...], float]:
        """p^alpha normalised over all finished continuations."""
        seqs = dict(self.sequences(prompt, max_len))
        m = max(alpha * lp for lp in seqs.values())
        w = {x: math.exp(alpha * lp - m) for x, lp in seqs.items()}
        z = sum(w.values())
        return {x: v / z for x, v in w.items()}


class _Positions:
    """The whole 'KV cache' of a position-only model: ids covered, rows, prompt length."""

    __slots__ = ("n", "prompt", "rows")

    def __init__(self, n: int, rows: int, prompt: int) -> None:
        self.n, self.rows, self.prompt = n, rows, prompt


class DecisionTreeBackend:
    """Toy model with known truth: `length` tokens, `decisions` of them real choices.

    The next-token distribution depends on the generated position only. At a decision point
    `choices` letters are plausible (probabilities `probs`, best first; entropy ~ log choices);
    everywhere else the filler "." is near-certain (logit margin `margin`; entropy ~ 0). The
    right letter at each decision has rank `right_rank` (1 = the second most likely), and which
    letter that is varies per decision (seeded). After `length` tokens comes EOS.

    Token 0 is EOS ("$"), 1 is filler ("."), 2.. are the letters "A", "B", ...; every token is
    one character, so `text[pos]` is the choice made at position `pos`. A cache is a `_Positions`
    value (how many ids it covers, rows, prompt length): the model has no other state.
    """

    def __init__(
        self,
        length: int,
        decisions: int,
        *,
        positions: Sequence[int] | None = None,
        choices: int = 4,
        probs: Sequence[float] = (0.32, 0.28, 0.22, 0.18),
        right_rank: int = 1,
        margin: float = 15.0,
        seed: int = 0,
    ) -> None:
        if not 1 <= decisions <= length:
            raise ValueError(f"decisions={decisions}: need 1 <= decisions <= length={length}")
        if len(probs) != choices or not 0 <= right_rank < choices:
            raise ValueError(f"probs={probs}, right_rank={right_rank}: need {choices} probabilities")
        if positions is None:  # spread evenly: decision i in the middle of the i-th k-th of T
            positions = [int((i + 0.5) * length / decisions) for i in range(decisions)]
        if len(set(positions)) != decisions or not all(0 <= p < length for p in positions):
            raise ValueError(f"positions={list(positions)}: need {decisions} distinct in 0..{length - 1}")
        self.length, self.positions = length, tuple(sorted(positions))
        self.eos_ids = frozenset({0})
        self.names = ["$", "."] + [chr(ord("A") + i) for i in range(choices)]
        g = torch.Generator().manual_seed(seed)
        vocab = 2 + choices
        filler = torch.full((vocab,), -math.inf)
        filler[1], filler[2:] = margin, 0.0  # (V,)
        end = torch.full((vocab,), -math.inf)
        end[0] = 0.0
        self.table = [filler.clone() for _ in range(length)] + [end]  # (T + 1) x (V,)
        right = []
        for pos in self.positions:
            letters = (2 + torch.randperm(choices, generator=g)).tolist()  # best first
            row = torch.full((vocab,), -math.inf)
            row[letters] = torch.tensor(probs, dtype=torch.float32).log()
            self.table[pos] = row
            right.append(self.names[letters[right_rank]])
        self.right = tuple(right)
        self.table = torch.stack(self.table)  # (T + 1, V)

    def verify(self, text: str) -> float:
        """The fraction of decisions made right: r(x) in [0, 1]."""
        hits = sum(p < len(text) and text[p] == want for p, want in zip(self.positions, self.right))
        return hits / len(self.positions)

    def encode_prompt(self, prompt) -> list[int]:
        return [1]

    def encode_text(self, text: str) -> list[int]:
        return self.encode_prompt(text)

    def piece(self, ids: Sequence[int]) -> str:
        return self.names[ids[-1]]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.names[i] for i in ids)

    def prefill(self, ids: Sequence[int]) -> _Positions:
        return _Positions(len(ids), 1, len(ids) + 1)

    def forward(self, cache: _Positions, ids: torch.Tensor) -> torch.Tensor:
        cache.n += 1  # in place, like a KV cache
        pos = min(max(cache.n - cache.prompt, 0), self.length)
        return self.table[pos].expand(cache.rows, -1).clone()  # (B, V)

    def slice(self, cache: _Positions, n: int) -> _Positions:
        return _Positions(n, cache.rows, cache.prompt)

    def repeat(self, cache: _Positions, k: int) -> _Positions:
        return _Positions(cache.n, cache.rows * k, cache.prompt)

    def select(self, cache: _Positions, rows: Sequence[int]) -> _Positions:
        return _Positions(cache.n, len(rows), cache.prompt)

    def score(self, cache: _Positions, ids: Sequence[int], *, exact: bool = True) -> torch.Tensor:
        return torch.cat([self.forward(cache, torch.tensor([i])) for i in ids])  # (T, V)

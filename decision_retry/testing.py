"""Stand-ins that ship with the package, for tests and for users without weights.

* `TableBackend`: a toy autoregressive model over a tiny vocabulary whose next-token
  distribution is a fixed function of the whole context. Small enough to enumerate p(x) exactly.
* `tiny_llama`: a randomly initialised Llama built from a config (no download), wrapped in the
  real transformers backend.
* `ScriptedBackend` (decision_retry.scripted): a scripted model that writes given text with
  designated decision points, for driving the real agent without weights.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator, Sequence

import torch

from decision_retry.lm import LM


class TableBackend:
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

    def piece(self, ids: Sequence[int]) -> str:
        return self.names[ids[-1]]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.names[i] for i in ids)

    def prefill(self, ids: Sequence[int]) -> torch.Tensor:
        return torch.tensor([list(ids)], dtype=torch.long).reshape(1, len(ids))

    def forward(self, cache: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        rows = torch.cat([cache, ids.reshape(-1, 1)], dim=1)
        cache.set_(rows)  # in place, like a KV cache
        return torch.stack([self.logits(r.tolist()) for r in rows])  # (B, V)

    def slice(self, cache: torch.Tensor, n: int) -> torch.Tensor:
        return cache[:, :n].clone()

    def repeat(self, cache: torch.Tensor, k: int) -> torch.Tensor:
        return cache.repeat_interleave(k, dim=0)

    def select(self, cache: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
        return cache[list(rows)].clone()

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


def table_lm(vocab: int = 4, *, seed: int = 0, sharpness: float = 2.0, spread: float = 0.0) -> LM:
    """A decode engine over a `TableBackend`."""
    return LM(TableBackend(vocab, seed=seed, sharpness=sharpness, spread=spread), name="table")


def tiny_llama(*, vocab: int = 64, seed: int = 0, layers: int = 2, hidden: int = 32) -> LM:
    """A randomly initialised Llama from a config, in the real transformers backend."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from decision_retry.backends import HFBackend

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=0,
        bos_token_id=1,
        pad_token_id=None,
    )
    model = LlamaForCausalLM(config).eval()
    return LM(HFBackend(model, tokenizer=None), name="tiny-llama")

"""The transformers/torch backend: a causal LM with `DynamicCache` forks (decision_retry.protocols)."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

_PIECE_WINDOW = 4  # ids of left context used to decode one token's text exactly


class HFBackend:
    """A transformers causal LM behind the `Backend` protocol, with `DynamicCache` forks."""

    def __init__(self, model, tokenizer=None) -> None:
        from transformers import DynamicCache

        self.model = model.eval()
        self.tokenizer = tokenizer
        self._cache_cls = DynamicCache
        eos = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
        if eos is None:
            eos = model.config.eos_token_id
        self.eos_ids = frozenset([eos] if isinstance(eos, int) else (eos or []))
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if gen_eos is not None:
            self.eos_ids |= frozenset([gen_eos] if isinstance(gen_eos, int) else gen_eos)

    # -- text ------------------------------------------------------------------------------
    def encode_prompt(self, prompt: str | Sequence[dict]) -> list[int]:
        tok = self.tokenizer
        if tok is None:  # a config-built model without a tokenizer: bytes modulo the vocabulary
            text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
            return [2 + b % (self.model.config.vocab_size - 2) for b in text.encode()]
        if getattr(tok, "chat_template", None):
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            out = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            return list(out["input_ids"] if hasattr(out, "keys") else out)
        if not isinstance(prompt, str):
            prompt = "\n\n".join(m["content"] for m in prompt)
        return tok.encode(prompt)

    def encode_text(self, text: str) -> list[int]:
        if self.tokenizer is None:
            return [2 + b % (self.model.config.vocab_size - 2) for b in text.encode()]
        return self.tokenizer.encode(text, add_special_tokens=False)

    def piece(self, ids: Sequence[int]) -> str:
        if self.tokenizer is None:
            return f"<{ids[-1]}>"
        ctx = list(ids[-_PIECE_WINDOW:])
        full, head = self.decode(ctx), self.decode(ctx[:-1])
        return full[len(head):] if full.startswith(head) else self.decode(ctx[-1:])

    def decode(self, ids: Sequence[int]) -> str:
        if self.tokenizer is None:
            return "".join(f"<{i}>" for i in ids)
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    # -- cache -----------------------------------------------------------------------------
    def _empty(self):
        return self._cache_cls(config=self.model.config)

    @torch.inference_mode()
    def prefill(self, ids: Sequence[int]):
        cache = self._empty()
        if ids:
            x = torch.tensor([list(ids)], dtype=torch.long)  # (1, P)
            self.model(input_ids=x, cache=cache, use_cache=True, logits_to_keep=1)
        return cache

    @torch.inference_mode()
    def score(self, cache, ids: Sequence[int], *, exact: bool = True) -> torch.Tensor:
        x = torch.tensor([list(ids)], dtype=torch.long)  # (1, T)
        out = self.model(input_ids=x, cache=cache, use_cache=True)
        return out.logits[0].float()  # (T, V)

    @torch.inference_mode()
    def forward(self, cache, ids: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=ids.reshape(-1, 1), cache=cache, use_cache=True)
        return out.logits[:, -1, :].float()  # (B, V)

    def _plain(self, cache) -> bool:
        from transformers.cache_utils import DynamicLayer

        return all(type(layer) is DynamicLayer for layer in cache.layers)

    def _rebuild(self, cache, fn):
        """A new cache whose layer tensors are fn(keys), fn(values) of `cache`'s layers."""
        new = self._empty()
        for src, dst in zip(cache.layers, new.layers):
            if src.is_initialized and src.keys.numel():
                dst.update(fn(src.keys), fn(src.values))  # (B, heads, n, head_dim)
        return new

    def slice(self, cache, n: int):
        if self._plain(cache):
            return self._rebuild(cache, lambda t: t[:, :, :n])
        forked = copy.deepcopy(cache)  # sliding-window or other layers: copy, then crop
        excess = cache.get_seq_length() - n
        if excess:
            forked.crop(-excess)
        return forked

    def repeat(self, cache, k: int):
        return self._rebuild(cache, lambda t: t.repeat_interleave(k, dim=0))

    def select(self, cache, rows: Sequence[int]):
        idx = torch.tensor(list(rows), dtype=torch.long)
        return self._rebuild(cache, lambda t: t.index_select(0, idx))

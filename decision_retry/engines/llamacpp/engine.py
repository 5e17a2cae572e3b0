"""llama.cpp in this process behind the `Backend` protocol (decision_retry.protocols).

One model, one context with a unified KV cache (`kv_unified`: sequences share cells, so a fork
is `llama_memory_seq_cp`, no recompute). A cache is a `LlamaCache`: one `Row` (a sequence id and
the token ids it covers) per batch row; `memory.Memory` owns ids, cells, eviction and the batch.
`forward` feeds one id per row in ONE `llama_decode` and returns the full-vocabulary fp32 logits,
so sampling, logp, logq and entropy happen in torch in `decision_retry.lm`, as for every engine.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path

import torch

from decision_retry.engines.llamacpp import lib as L
from decision_retry.engines.llamacpp.memory import SMALL, Memory, Row, load_model
from decision_retry.engines.llamacpp.text import Vocab
from decision_retry.errors import ModelLoadError

DEFAULT_N_CTX = 16384  # KV cells shared by all live sequences (capped at the model's training length)
DEFAULT_N_SEQ = 64  # sequence ids; idle caches beyond this are evicted and re-prefilled on use
N_BATCH = 512  # tokens per llama_decode when a prompt is first prefilled


class LlamaCache:
    """A Backend cache: rows of equal length, each its own llama.cpp sequence."""

    __slots__ = ("rows",)

    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows[0].ids) if self.rows else 0


class LlamaCppBackend:
    """A GGUF model on llama.cpp (the pinned `xllamacpp` wheel's libllama), in process."""

    def __init__(
        self,
        path: str | Path,
        *,
        threads: int,
        n_ctx: int | None = None,
        n_seq_max: int = DEFAULT_N_SEQ,
    ) -> None:
        if threads < 1:
            raise ValueError(f"threads={threads}: need at least 1")
        if not 1 <= n_seq_max <= L.LLAMA_MAX_SEQ:
            raise ValueError(f"n_seq_max={n_seq_max}: need 1..{L.LLAMA_MAX_SEQ}")
        path = Path(path)
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {path}")
        torch.set_num_threads(threads)  # the sampling ops in decision_retry.lm run in torch
        self.lib = lib = L.load()
        model = load_model(str(path))
        self.vocab = Vocab(lib, model)
        self.n_vocab = self.vocab.n_vocab
        self.eos_ids = self.vocab.eog_ids()
        train = self.vocab.meta_int("context_length")
        n_ctx = n_ctx or min(DEFAULT_N_CTX, train or DEFAULT_N_CTX)

        # the context: a unified KV cache over n_ctx cells shared by n_seq_max sequences
        p = lib.llama_context_default_params()
        p.n_ctx, p.n_batch, p.n_ubatch, p.n_seq_max = n_ctx, N_BATCH, N_BATCH, n_seq_max
        p.n_outputs_max = max(SMALL, n_seq_max)  # logits rows per decode: B rows, or a score chunk
        p.n_outputs_max_per_seq = SMALL
        p.n_threads = p.n_threads_batch = threads
        p.kv_unified, p.no_perf = True, True
        ctx = lib.llama_init_from_model(model, p)
        if not ctx:
            lib.llama_model_free(model)
            raise ModelLoadError(f"llama.cpp could not create a context (n_ctx={n_ctx}) for {path}")
        self.memory = Memory(model, ctx, n_seq=lib.llama_n_seq_max(ctx), n_batch=N_BATCH)
        self.n_ctx, self.threads = lib.llama_n_ctx(ctx), threads

    # -- text (decision_retry.engines.llamacpp.text) -----------------------------------------
    def encode_prompt(self, prompt: str | Sequence[dict]) -> list[int]:
        return self.vocab.encode_prompt(prompt)

    def encode_text(self, text: str) -> list[int]:
        return self.vocab.tokenize(text, special=False)

    def piece(self, ids: Sequence[int]) -> str:
        return self.vocab.piece(ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self.vocab.detokenize(ids)

    # -- cache -----------------------------------------------------------------------------
    def prefill(self, ids: Sequence[int]) -> LlamaCache:
        return LlamaCache([self.memory.prefill(ids)])

    def forward(self, cache: LlamaCache, ids: torch.Tensor) -> torch.Tensor:
        rows, toks = cache.rows, ids.tolist()
        if len(toks) != len(rows):
            raise ValueError(f"{len(toks)} ids for a cache of {len(rows)} rows")
        self.memory.ready(rows)
        pos = [len(r.ids) for r in rows]
        self.memory.feed(rows, toks, pos, outputs=True)  # ONE decode: a sequence id per row
        for r, t in zip(rows, toks):
            r.ids.append(t)
        return self._logits(len(rows))  # (B, V)

    def score(self, cache: LlamaCache, ids: Sequence[int]) -> torch.Tensor:
        (row,) = cache.rows
        self.memory.ready([row])
        ids, out = list(ids), []
        for start in range(0, len(ids), SMALL):  # small chunks: the kernels decoding uses
            chunk = ids[start:start + SMALL]
            n = len(row.ids)
            self.memory.feed([row] * len(chunk), chunk, range(n, n + len(chunk)), outputs=True)
            row.ids.extend(chunk)
            out.append(self._logits(len(chunk)))
        return torch.cat(out) if out else torch.empty(0, self.n_vocab)  # (T, V)

    def slice(self, cache: LlamaCache, n: int) -> LlamaCache:
        return LlamaCache([self.memory.fork(r, n) for r in cache.rows])

    def repeat(self, cache: LlamaCache, k: int) -> LlamaCache:
        # row-major like torch.repeat_interleave: r0 r0 r0 r1 r1 r1 ...
        return LlamaCache([self.memory.fork(r, len(r.ids)) for r in cache.rows for _ in range(k)])

    def select(self, cache: LlamaCache, rows: Sequence[int]) -> LlamaCache:
        # the source is not fed again after select (protocol), so the rows move, not copy
        return LlamaCache([cache.rows[i] for i in rows])

    # -- helpers ---------------------------------------------------------------------------
    def _logits(self, n: int) -> torch.Tensor:
        """The logits of the last decode's n outputs, copied out of llama.cpp: fp32 (n, V)."""
        out = torch.empty(n, self.n_vocab, dtype=torch.float32)
        dst, row_bytes = out.data_ptr(), self.n_vocab * 4
        for i in range(n):
            src = self.lib.llama_get_logits_ith(self.memory.ctx, i)
            if not src:
                raise RuntimeError(f"llama.cpp returned no logits for output {i}")
            ctypes.memmove(dst + i * row_bytes, src, row_bytes)
        return out

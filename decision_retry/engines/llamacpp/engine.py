"""llama.cpp in this process behind the `Backend` protocol (decision_retry.protocols).

One model, one context with a unified KV cache (`kv_unified`: sequences share cells, so a fork
is `llama_memory_seq_cp`, no recompute). A cache is a `LlamaCache`: one `Row` (a sequence id and
the token ids it covers) per batch row; `memory.Memory` owns ids, cells, eviction and the batch.
`forward` feeds one id per row in ONE `llama_decode` and returns the full-vocabulary fp32 logits,
so sampling, logp, logq and entropy happen in torch in `decision_retry.lm`, as for every engine.

Exactness: `score` returns bitwise the logits one-token decoding computes for the same ids, so
the MH ratio compares log-probs of one function. llama.cpp's CPU kernels change arithmetic with
the batch size, and where depends on the model (32 tokens are exact on SmolLM2-135M Q4_1, 4 are
not on Qwen2.5-Coder-1.5B Q4_K_M), so at load the engine measures the largest exact chunk
(`exact.py`: a probe of a few seconds, cached on disk per model file, library, thread count and
CPU) and scores and re-prefills in chunks of that size, the remainder one token per decode.
`exact_chunk=` or `$DECISION_RETRY_EXACT_CHUNK` forces a size (no probe); `self.exact` says
which size is used and where it came from. The numbers also depend on the order of a row's KV
cells, which the memory keeps in position order while it has room (memory.py, cells.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from decision_retry import catalogue
from decision_retry.engines.llamacpp import exact
from decision_retry.engines.llamacpp import lib as L
from decision_retry.engines.llamacpp.memory import (
    BULK,
    N_BATCH,
    Memory,
    Row,
    bulk_spans,
    load_model,
    new_context,
    spans,
)
from decision_retry.engines.llamacpp.text import Vocab
from decision_retry.errors import ModelLoadError

DEFAULT_N_CTX = 16384  # KV cells shared by all live sequences (capped at the model's training length)
DEFAULT_N_SEQ = 64  # sequence ids; idle caches beyond this are evicted and re-prefilled on use


class LlamaCache:
    """A Backend cache: rows of equal length, each its own llama.cpp sequence."""

    __slots__ = ("rows",)

    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows[0].ids) if self.rows else 0


class LlamaCppBackend:
    """A GGUF model on llama.cpp (the pinned `xllamacpp` wheel's libllama), in process.

    `exact_chunk`: tokens per decode for `score` and re-prefills, forced (default: measured, see
    above); `exact_cache`: the folder of measured sizes (default `<models cache>/exact-chunk`)."""

    inexact_chunk = BULK  # score(exact=False) feeds chunks of this size (memory.BULK)

    def __init__(
        self,
        path: str | Path,
        *,
        threads: int,
        n_ctx: int | None = None,
        n_seq_max: int = DEFAULT_N_SEQ,
        exact_chunk: int | None = None,
        exact_cache: str | Path | None = None,
    ) -> None:
        if threads < 1:
            raise ValueError(f"threads={threads}: need at least 1")
        if not 1 <= n_seq_max < L.LLAMA_MAX_SEQ:  # one more for the memory's grave
            raise ValueError(f"n_seq_max={n_seq_max}: need 1..{L.LLAMA_MAX_SEQ - 1}")
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

        # the chunk a scoring pass may decode at once (exact.py), then the context, whose
        # outputs per decode are B rows of one token or one row of a chunk
        cache_dir = Path(exact_cache) if exact_cache is not None else catalogue.cache_dir() / "exact-chunk"
        try:
            self.exact = exact.chunk_for(model, path, self.vocab.tokenize(exact.TEXT, special=False),
                                         n_vocab=self.n_vocab, threads=threads, force=exact_chunk,
                                         cache_dir=cache_dir)
        except BaseException:
            lib.llama_model_free(model)
            raise
        ctx = new_context(model, n_ctx=n_ctx, n_seq_max=n_seq_max, chunk=self.exact.size, threads=threads)
        if not ctx:
            lib.llama_model_free(model)
            raise ModelLoadError(f"llama.cpp could not create a context (n_ctx={n_ctx}) for {path}")
        self.memory = Memory(model, ctx, n_seq=lib.llama_n_seq_max(ctx) - 1, n_batch=N_BATCH,
                             chunk=self.exact.size)
        self.n_ctx, self.threads = lib.llama_n_ctx(ctx), threads

    def counters(self) -> dict[str, int]:
        """Since load: decodes whose new KV cells came before a row's earlier ones (their logits
        are not those `score` reproduces; memory.py) and rows evicted for room."""
        return {"kv_disordered": self.memory.disordered, "kv_evictions": self.memory.evictions}

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
        for r in rows:
            _decodable(r, True)
        self.memory.ready(rows)
        pos = [len(r.ids) for r in rows]
        self.memory.feed(rows, toks, pos, outputs=True)  # ONE decode: a sequence id per row
        for r, t in zip(rows, toks):
            r.ids.append(t)
        return self.memory.logits(len(rows), self.n_vocab)  # (B, V)

    def score(self, cache: LlamaCache, ids: Sequence[int], *, exact: bool = True) -> torch.Tensor:
        (row,) = cache.rows
        _decodable(row, exact)
        self.memory.ready([row])
        ids, out = list(ids), []
        # exact: decoding's numbers (exact chunks, the rest one token per decode). Inexact:
        # chunks of BULK on a grid from where the row's first inexact pass began, the last one
        # shorter: numbers that depend on (the row's ids, ids) alone, a third cheaper a position
        # on the 1.5B, but not decoding's (memory.Row.grid)
        if exact:
            parts = spans(len(ids), self.memory.chunk)
        else:
            if row.grid is None:
                row.grid = len(row.ids)
            elif (len(row.ids) - row.grid) % BULK:
                raise ValueError(f"an inexact pass continues from a multiple of {BULK} scored "
                                 f"positions, not {len(row.ids) - row.grid}")
            parts = bulk_spans(len(ids))
        for start, stop in parts:
            chunk, n = ids[start:stop], len(row.ids)
            self.memory.feed([row] * len(chunk), chunk, range(n, n + len(chunk)), outputs=True)
            row.ids.extend(chunk)
            out.append(self.memory.logits(len(chunk), self.n_vocab))
        return torch.cat(out) if out else torch.empty(0, self.n_vocab)  # (T, V)

    def slice(self, cache: LlamaCache, n: int) -> LlamaCache:
        return LlamaCache([self.memory.fork(r, n) for r in cache.rows])

    def repeat(self, cache: LlamaCache, k: int) -> LlamaCache:
        # row-major like torch.repeat_interleave: r0 r0 r0 r1 r1 r1 ...
        return LlamaCache([self.memory.fork(r, len(r.ids)) for r in cache.rows for _ in range(k)])

    def select(self, cache: LlamaCache, rows: Sequence[int]) -> LlamaCache:
        # the source is not fed again after select (protocol), so the rows move, not copy
        return LlamaCache([cache.rows[i] for i in rows])


def _decodable(row: Row, exact: bool) -> None:
    """A row an inexact pass fed cannot be decoded from or scored exactly: its cells are not
    decoding's, so neither would the numbers be."""
    if exact and row.grid is not None:
        raise ValueError("this state was scored inexactly (score(exact=False)): it cannot be "
                         "decoded from or scored exactly; fork it before its inexact positions")

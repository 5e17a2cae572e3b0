"""The KV memory of one llama.cpp context: rows (sequences), batched decodes, forks, eviction.

A `Row` is one sequence of a cache: the token ids its KV covers and the sequence id holding
them, or no id when it was evicted. Sequence ids (`SeqIds`) and KV cells (n_ctx, shared between
rows by `kv_unified`) are finite, so when either runs out the least recently used rows that the
current call does not touch are evicted: their ids go back, their cells are removed, and their
token ids stay, so the next use re-prefills them (from the longest prefix another live row still
holds, so a fork of a prompt costs only its own tail). A run never sees "out of sequence ids" or
"no KV slot"; only a single request larger than the whole context fails, with one clear line.

Cell order. A row's logits are decoding's only while its cells lie in position order (cells.py:
flash attention visits them in buffer order; llama.cpp puts a token in the lowest free cell). So
`Cells` mirrors where llama.cpp puts every token; a row released while a cell only it holds lies
below a live row's cells hands its cells to the grave, one sequence no row decodes (no hole for
the live row's next token to fall into), emptied when nothing live lies above them or the memory
needs the room; a re-prefill shares only what lies before the cells its next tokens take.
`disordered` counts the decodes that still broke a row's order (after an eviction, or the grave
emptied for room: holes below live rows).
"""

from __future__ import annotations

import ctypes
import weakref
from collections.abc import Callable, Sequence

import torch

from decision_retry.engines.llamacpp import lib as L
from decision_retry.engines.llamacpp.cells import Cells
from decision_retry.engines.llamacpp.seqs import SeqIds
from decision_retry.errors import DecisionRetryError, ModelLoadError

N_BATCH = 512  # tokens per llama_decode when a prompt is first prefilled
BULK = 32  # tokens per llama_decode of an inexact scoring pass (`score(exact=False)`), whose
# numbers must depend on (the row's ids, the ids scored) alone: at 64 rows SmolLM2's logits also
# depend on what else the KV cache holds (up to 1.6 nats after other rows were prefilled), at 8-32
# (48 on the 1.5B) they do not. On the 1.5B at 1 thread a scored position costs 28 ms at 32, 42 in
# exact chunks of 3, 25 at 64, 20 in a prefill with no logits (notebook/2026-12-07-bulk-scoring.md).
# A re-prefill whose tokens landed in holes below its donor's cells came out different in its
# later chunks (SmolLM2: 0.4 nats exact, 0.69 in chunks of BULK): cell order, see "Cell order"
# above and notebook/2026-12-07-reprefill.md.

# Exactness. llama.cpp's CPU kernels take different arithmetic paths for different numbers of
# tokens in a decode (the 1.5B's threshold of 4 fits the repacked quantised matmuls, which run
# blocks of 4 activation rows through a gemm and single rows through a gemv), so a token's logits
# in a batch of n are not always bitwise those of a one-token decode. Measured on b11549, AMD
# EPYC, 1 thread: SmolLM2-135M Q4_1 gives equal logits for chunks of 8 and 32, not 64 (up to 1.3
# nats); Qwen2.5-Coder-1.5B Q4_K_M for chunks of 2 and 3, not 4 (0.03-0.046 nats mean |d logp| of
# the scored ids, max 0.29). So everything but a prompt's first prefill, i.e. a scoring pass and
# the re-prefill of an evicted row, goes in chunks of `Memory.chunk`, the largest size the engine
# measured to equal one-token decoding bitwise on this model, library, thread count and CPU
# (`exact.py`), and what is left over (fewer than `chunk` tokens) one token per decode: decoding's
# own arithmetic.
# Not covered: B rows of one token in one decode (`forward`, extend_many's K tries) are B
# activation rows too, so on the 1.5B B >= 4 rows differ from B one-row decodes (up to 0.6 nats).


class Row:
    """One sequence: `ids` covered by its KV, `seq` its llama.cpp id (None once evicted),
    `bulk`: how many leading ids were prefilled in n_batch chunks (the rest in exact ones), and
    `grid`: None, or the position from which an inexact scoring pass fed the ids in chunks of
    BULK (its cells are not decoding's: never decoded from, re-prefilled in the same chunks)."""

    __slots__ = ("__weakref__", "_memory", "bulk", "grid", "ids", "seq", "used")

    def __init__(self, memory: Memory, ids: list[int], bulk: int = 0,
                 grid: int | None = None) -> None:
        self.ids, self.seq, self.bulk, self.used, self._memory = ids, None, bulk, 0, memory
        self.grid = grid

    def __del__(self) -> None:  # the one place a row gives its sequence back
        if self.seq is not None:
            self._memory.release(self)


def spans(n: int, chunk: int) -> list[tuple[int, int]]:
    """[start, stop) of n tokens fed in exact chunks: full chunks of `chunk`, then one token
    per decode for the rest (a shorter chunk was not measured, a single token is the reference)."""
    full = n - n % chunk
    return [(s, s + chunk) for s in range(0, full, chunk)] + [(s, s + 1) for s in range(full, n)]


def bulk_spans(n: int) -> list[tuple[int, int]]:
    """[start, stop) of n tokens in chunks of BULK from the first, the last one shorter."""
    return [(s, min(n, s + BULK)) for s in range(0, n, BULK)]


def load_model(path: str) -> int:
    """A `llama_model *` for a GGUF file (freed by the `Memory` that takes it)."""
    lib = L.load()
    params = lib.llama_model_default_params()
    params.n_gpu_layers = 0  # CPU only: the pinned wheel is a CPU build
    L.last_error()  # forget errors logged before this load
    ptr = lib.llama_model_load_from_file(path.encode(), params)
    if not ptr:
        why = L.last_error() or "not a GGUF model llama.cpp supports"
        raise ModelLoadError(f"cannot load model {path} with llama.cpp: {why}")
    return ptr


def new_context(model: int, *, n_ctx: int, n_seq_max: int, chunk: int, threads: int) -> int | None:
    """A `llama_context *` over model (None when llama.cpp refuses): a unified KV cache of n_ctx
    cells shared by n_seq_max sequences and the grave (`Memory.grave`), logits for B rows of one
    token or one row of `chunk`."""
    lib = L.load()
    p = lib.llama_context_default_params()
    p.n_ctx, p.n_batch, p.n_ubatch, p.n_seq_max = n_ctx, N_BATCH, N_BATCH, n_seq_max + 1
    # logits rows per decode: B rows, or a score chunk (exact, or BULK for an inexact pass); at
    # least n_seq_max (llama.cpp reserves that many at creation)
    p.n_outputs_max = max(chunk, n_seq_max + 1, BULK)
    p.n_outputs_max_per_seq = max(chunk, BULK)
    p.n_threads = p.n_threads_batch = threads
    p.kv_unified, p.no_perf = True, True
    return lib.llama_init_from_model(model, p) or None


class ContextFull(DecisionRetryError):
    """One request needs more KV cells or sequence ids than the context has, even with every
    other row evicted."""


class Memory:
    """Sequence ids, KV cells and the decode batch of one context; `chunk`: the most tokens of
    one row a scoring pass or a re-prefill decodes at once (see "Exactness" above)."""

    def __init__(self, model: int | None, ctx: int, n_seq: int, n_batch: int, chunk: int) -> None:
        """n_seq: the rows' sequence ids; the context has one more, the grave (`new_context`)."""
        if not 1 <= chunk <= n_batch:
            raise ValueError(f"chunk={chunk}: need 1..{n_batch}")
        self.lib = L.load()
        # the llama_context * this memory frees, and the llama_model * after it (None: a probe's
        # context over a model its engine frees)
        self.model = model
        self.ctx, self.mem = ctx, self.lib.llama_get_memory(ctx)
        self.seqs = SeqIds(n_seq)
        self.n_batch, self.chunk = n_batch, chunk
        self.live: dict[int, weakref.ref[Row]] = {}  # seq id -> the row holding it
        self.clock = 0
        self.evictions = 0
        # where llama.cpp puts each token (cells.py): a row's numbers are decoding's only while
        # its cells lie in position order; `disordered` counts the decodes that broke it
        self.cells = Cells(self.lib.llama_n_ctx(ctx))
        self.disordered = 0
        # the grave: a sequence no row decodes, holding released rows' cells (see `release`);
        # `buried`: rows whose cells it holds, `grave_lo`: the lowest cell only it holds (an upper
        # bound: it only falls as other holders go), `reclaimed`: times it was emptied for room
        self.grave, self.buried, self.grave_lo, self.reclaimed = n_seq, 0, 0, 0
        # one batch, allocated once: n_batch slots, one sequence id per token
        self._token = (L.llama_token * n_batch)()
        self._pos = (L.llama_pos * n_batch)()
        self._nseq = (ctypes.c_int32 * n_batch)(*([1] * n_batch))
        self._seq = (L.llama_seq_id * n_batch)()
        base = ctypes.addressof(self._seq)
        size = ctypes.sizeof(L.llama_seq_id)
        self._seqp = (ctypes.POINTER(L.llama_seq_id) * n_batch)(
            *(ctypes.cast(base + i * size, ctypes.POINTER(L.llama_seq_id)) for i in range(n_batch))
        )
        self._logits = (ctypes.c_int8 * n_batch)()
        self._batch = L.Batch(0, self._token, None, self._pos, self._nseq, self._seqp, self._logits)

    def close(self) -> None:
        """Free the context, then the model. Every row holds this memory, so this runs after
        the last row is gone, except in a cyclic garbage collection (e.g. at exit), which may
        finalize the memory first: rows released after that find `ctx` None and do nothing."""
        if self.ctx is not None:
            self.lib.llama_free(self.ctx)
            if self.model is not None:
                self.lib.llama_model_free(self.model)
            self.ctx = self.mem = self.model = None

    __del__ = close

    # -- rows ------------------------------------------------------------------------------
    def row(self, ids: Sequence[int], bulk: int = 0) -> Row:
        """A row over `ids` with no sequence yet (`ready` gives it one)."""
        row = Row(self, list(ids), bulk)
        self._touch(row)
        return row

    def prefill(self, ids: Sequence[int]) -> Row:
        """A new row over `ids`, computed now: the longest prefix a live row holds is shared
        (a prompt that starts like another costs only its own tail), the rest decoded in n_batch
        chunks, with no logits."""
        row = self.row(ids, bulk=len(ids))
        self._give_seq(row, pinned=(row,))
        donor, n = self._longest_prefix(row)
        n = self._in_order(donor, n, lambda k: min(len(row.ids) - k, self.n_batch))
        if n:
            self._cp(donor.seq, row.seq, n)
        self.feed([row] * (len(row.ids) - n), row.ids[n:], range(n, len(row.ids)), chunk=self.n_batch,
                  pinned=(row,))
        return row

    def fork(self, src: Row, n: int) -> Row:
        """A new row over src.ids[:n], sharing src's KV cells (no recompute); src stays usable."""
        if not 0 <= n <= len(src.ids):
            raise ValueError(f"slice to {n} positions of a cache over {len(src.ids)}")
        dst = Row(self, src.ids[:n], min(src.bulk, n),
                  src.grid if src.grid is not None and n > src.grid else None)
        self._touch(dst)  # newest: evicting for a sibling fork takes older rows first
        if src.seq is not None and n > 0:
            self._touch(src)
            self._give_seq(dst, pinned=(src,))
            self._cp(src.seq, dst.seq, n)
        return dst  # from an evicted source, the fork is evicted too: re-prefilled when used

    def release(self, row: Row, evict: bool = False) -> None:
        """The row gives back its sequence id (it keeps its token ids) and its cells, unless a
        cell only it holds lies below a live row's last cell and this is no eviction: freed, that
        cell is where llama.cpp puts the next token (the lowest free cell, cells.py), before the
        live row's earlier ones. Then the grave takes the row's cells, until no live row lies
        above them or the memory needs the room (`_evict_one`)."""
        seq, row.seq = row.seq, None
        if self.ctx is None:  # the context is gone already (see `close`)
            return
        self.live.pop(seq, None)
        lo = self._lowest_own(seq)
        if not evict and lo <= self._live_top():
            self.lib.llama_memory_seq_cp(self.mem, seq, self.grave, -1, -1)
            self.cells.cp(seq, self.grave, 0, 1 << 31)
            self.grave_lo = min(self.grave_lo, lo) if self.buried else lo
            self.buried += 1
        self._free(seq)
        self.seqs.give(seq)
        self._reap()

    def _free(self, seq: int) -> None:
        self.lib.llama_memory_seq_rm(self.mem, seq, -1, -1)
        self.cells.rm(seq)

    def _lowest_own(self, seq: int) -> int:
        """The lowest cell seq holds alone (size of the cache: none)."""
        c = self.cells
        return min((i for i in c.of.get(seq, ()) if len(c.seqs[i]) == 1), default=c.size)

    def _live_top(self) -> int:
        """The highest cell of any live row (-1: none)."""
        return max((self.cells.top(seq) for seq in self.live), default=-1)

    def _reap(self) -> None:
        """Empty the grave once no live row lies above a cell only it holds."""
        if self.buried and self.grave_lo > (top := self._live_top()):
            self.grave_lo = self._lowest_own(self.grave)
            if self.grave_lo > top:
                self._empty_grave()

    def _empty_grave(self) -> None:
        self._free(self.grave)
        self.buried = 0

    def ready(self, rows: Sequence[Row]) -> None:
        """Give every row a sequence holding its ids, re-prefilling evicted ones: the longest
        prefix a live row holds is copied, the rest decoded in the chunks it first was (so the
        cells come out bitwise equal, unless its first prefill shared a prefix that is gone): the
        prompt in n_batch chunks, what was decoded or scored in exact chunks (`spans`), so it
        comes out as decoding made it, and an inexact pass's ids in chunks of BULK from `grid`."""
        for row in rows:
            self._touch(row)
        for row in rows:
            if row.seq is None:
                self._give_seq(row, pinned=rows)
                donor, n = self._longest_prefix(row)
                if row.grid is not None:  # copy no cell an inexact pass made; replay them
                    n = min(n, row.grid)
                if n < row.bulk:  # recompute the prompt in the same n_batch chunks as at first
                    n -= n % self.n_batch
                n = self._in_order(donor, n, lambda k, r=row: self._first_chunk(r, k),
                                   lambda k, r=row: k - k % self.n_batch if k < r.bulk else k)
                if n:
                    self._cp(donor.seq, row.seq, n)
                if row.bulk > n:
                    todo = row.ids[n:row.bulk]
                    self.feed([row] * len(todo), todo, range(n, row.bulk), chunk=self.n_batch, pinned=rows)
                rest = max(n, row.bulk)  # decoded or scored at first: exact chunks, as scoring does
                end = len(row.ids) if row.grid is None else row.grid
                parts = [(rest + a, rest + b) for a, b in spans(end - rest, self.chunk)]
                if row.grid is not None:
                    parts += [(end + a, end + b) for a, b in bulk_spans(len(row.ids) - end)]
                for start, stop in parts:
                    todo = row.ids[start:stop]
                    self.feed([row] * len(todo), todo, range(start, stop), pinned=rows)

    # -- decoding --------------------------------------------------------------------------
    def feed(self, rows: Sequence[Row], tokens: Sequence[int], pos: Sequence[int], *,
             chunk: int | None = None, outputs: bool = False, pinned: Sequence[Row] = ()) -> None:
        """Decode tokens[i] at pos[i] into rows[i].seq, `chunk` tokens per llama_decode (all in
        one by default); logits of every token when `outputs` (read them before the next call)."""
        n = len(tokens)
        chunk = min(chunk or n, self.n_batch) or 1
        if outputs and n > chunk:
            raise ValueError(f"{n} outputs in one decode: at most {chunk}")
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            for j, i in enumerate(range(start, stop)):
                self._token[j], self._pos[j], self._seq[j] = tokens[i], pos[i], rows[i].seq
                self._logits[j] = outputs
            self._batch.n_tokens = stop - start
            self._decode(pinned or rows)

    def logits(self, n: int, n_vocab: int) -> torch.Tensor:
        """The logits of the last decode's n outputs, copied out of llama.cpp: fp32 (n, V)."""
        out = torch.empty(n, n_vocab, dtype=torch.float32)
        dst, row_bytes = out.data_ptr(), n_vocab * 4
        for i in range(n):
            src = self.lib.llama_get_logits_ith(self.ctx, i)
            if not src:
                raise RuntimeError(f"llama.cpp returned no logits for output {i}")
            ctypes.memmove(dst + i * row_bytes, src, row_bytes)
        return out

    def _decode(self, pinned: Sequence[Row]) -> None:
        while True:
            n = self._batch.n_tokens
            idxs = self.cells.slot(n)  # where llama.cpp will put the batch's tokens
            rc = self.lib.llama_decode(self.ctx, self._batch)
            if (rc == 0) != (idxs is not None) and rc in (0, 1):
                raise RuntimeError(f"the KV cell mirror (cells.py) disagrees with llama.cpp {L.VERSION}: "
                                   f"decode of {n} tokens returned {rc}")
            if rc == 0:
                pos, seqs = self._pos[:n], self._seq[:n]
                mine: dict[int, list[int]] = {}
                for i, s in zip(idxs, seqs):
                    mine.setdefault(s, []).append(i)
                if not all(self.cells.ordered(s, cells) for s, cells in mine.items()):
                    self.disordered += 1
                self.cells.apply(idxs, pos, seqs)
                return
            if rc != 1 or not self._evict_one(pinned):  # 1: no KV slot; the call was undone
                if rc == 1:
                    raise ContextFull(
                        f"the model's context is full: {self._batch.n_tokens} more tokens do not "
                        f"fit in its n_ctx={self.lib.llama_n_ctx(self.ctx)} cells"
                    )
                raise RuntimeError(f"llama_decode failed with code {rc}: {L.last_error()}")

    # -- ids, cells and eviction -----------------------------------------------------------
    def _touch(self, row: Row) -> None:
        self.clock += 1
        row.used = self.clock

    def _give_seq(self, row: Row, pinned: Sequence[Row]) -> None:
        seq = self.seqs.take()
        while seq is None:
            if not self._evict_one(pinned):
                raise ContextFull(
                    f"one batched decode needs more than the context's n_seq_max={self.seqs.n} "
                    f"sequences: decode fewer rows at once"
                )
            seq = self.seqs.take()
        row.seq = seq
        self.live[seq] = weakref.ref(row)

    def _evict_one(self, pinned: Sequence[Row]) -> bool:
        """Empty the grave, else evict the least recently used row not in `pinned`; False when
        there is neither."""
        if self.buried:
            self._empty_grave()  # its cells may now be holes below live rows' cells
            self.reclaimed += 1
            return True
        keep = {id(r) for r in pinned}
        rows = [r for r in (ref() for ref in list(self.live.values())) if r is not None]
        idle = [r for r in rows if id(r) not in keep and r.seq is not None]
        if not idle:
            return False
        self.release(min(idle, key=lambda r: r.used), evict=True)
        self.evictions += 1
        return True

    def _cp(self, src: int, dst: int, n: int) -> None:
        """dst shares src's cells at positions [0, n) (no recompute)."""
        self.lib.llama_memory_seq_cp(self.mem, src, dst, 0, n)
        self.cells.cp(src, dst, 0, n)

    def _in_order(self, donor: Row | None, n: int, first: Callable[[int], int],
                  align: Callable[[int], int] = lambda k: k) -> int:
        """How much of donor's first n positions a new row shares, so that the tokens it is fed
        next (`first(k)`: how many in the first decode after sharing k) land in cells after the
        shared ones (cells.py: else its numbers are not decoding's): n, else the part of it in
        cells before the first new one (`align`ed down: the prompt's n_batch chunks), else 0."""
        while n:
            k = first(n)
            idxs = self.cells.slot(k) if k else None
            if idxs is None or self.cells.ordered(donor.seq, idxs, below=n):
                return n
            after = [p for i, p in self.cells.cells(donor.seq) if p < n and i > idxs[0]]
            if not after:  # the new cells themselves wrap around: sharing less does not help
                return n
            n = align(min(after))
        return 0

    def _first_chunk(self, row: Row, n: int) -> int:
        """How many tokens `ready` decodes first when an evicted row shares n positions."""
        if row.bulk > n:
            return min(row.bulk - n, self.n_batch)
        end = len(row.ids) if row.grid is None else row.grid
        if end > n:
            return spans(end - n, self.chunk)[0][1]
        # what the row is fed next (it is readied to be fed): at least one token
        return max(1, min(len(row.ids) - end, BULK))

    def _longest_prefix(self, row: Row) -> tuple[Row | None, int]:
        """The live row sharing the longest prefix of row.ids, and the length of that prefix."""
        best, best_n = None, 0
        for ref in list(self.live.values()):
            other = ref()
            if other is None or other is row or other.seq is None:
                continue
            n, limit = 0, min(len(other.ids), len(row.ids))
            if other.grid is not None:  # an inexact pass's cells are not decoding's
                limit = min(limit, other.grid)
            a, b = other.ids, row.ids
            while n < limit and a[n] == b[n]:
                n += 1
            if n > best_n:
                best, best_n = other, n
        return best, best_n

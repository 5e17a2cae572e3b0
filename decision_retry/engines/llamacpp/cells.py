"""Which KV cell holds what: a mirror of llama.cpp's cell table, to know where a decode will land.

Why it matters. With flash attention (the default, `flash_attn_type` auto, on for this CPU
build) a query visits its sequence's cells in buffer order, an online softmax that skips masked
cells: so a token's logits do not depend on where its context's cells lie or what lies between
them, but they do depend on their order. Measured on b11549, SmolLM2: a row whose later tokens sit
in cells before its prompt's gives other logits (up to 1.8 nats over the vocabulary), one shifted
or with foreign cells between its own gives bitwise the same (notebook/2026-12-07-reprefill.md).
So the engine's numbers are a function of the ids only while every row's cells lie in position
order, and llama.cpp chooses the cells: `find_slot` takes the first free cells from a head, which
goes back to the lowest cell a `seq_rm` frees, and to 0 when the head is past used + 2 n_tokens.
A released row leaves holes; a later token of a row whose cells lie above a hole lands in it.

`Cells` repeats b11549's bookkeeping for one unified stream, no sliding window
(src/llama-kv-cache.cpp: `seq_cp`, `seq_rm`, `find_slot(ubatch, cont=false)`, `apply_ubatch`;
one ubatch per decode, since the engine never decodes more than n_ubatch tokens at once), so
`Memory` can ask, before a decode, whether each row's new cells come after its old ones.
`tests/engines/test_llamacpp_cells.py` checks it against llama.cpp's own dump of its cells.
"""

from __future__ import annotations

from collections.abc import Sequence


class Cells:
    """pos[i] (-1: empty) and the sequence ids of each of `size` cells, the search head, and
    for each sequence the cells it holds."""

    def __init__(self, size: int) -> None:
        self.size, self.head, self.used = size, 0, 0
        self.pos = [-1] * size
        self.seqs: list[set[int]] = [set() for _ in range(size)]
        self.of: dict[int, set[int]] = {}  # seq id -> its cells
        self.hi: dict[int, int] = {}  # seq id -> its highest cell

    def cp(self, src: int, dst: int, p0: int, p1: int) -> None:
        """seq_cp: dst joins src's cells at positions [p0, p1) (no data moves)."""
        if src == dst:
            return
        mine = self.of.setdefault(dst, set())
        for i in self.of.get(src, ()):
            if p0 <= self.pos[i] < p1:
                self.seqs[i].add(dst)
                mine.add(i)
                self.hi[dst] = max(self.hi.get(dst, -1), i)

    def rm(self, seq: int) -> None:
        """seq_rm(seq, -1, -1): seq leaves its cells; the head goes back to the first cell
        that became empty, if that is lower."""
        freed = []
        self.hi.pop(seq, None)
        for i in self.of.pop(seq, ()):
            self.seqs[i].discard(seq)
            if not self.seqs[i]:
                self.pos[i] = -1
                freed.append(i)
        self.used -= len(freed)
        if freed and min(freed) < self.head:
            self.head = min(freed)

    def slot(self, n: int) -> list[int] | None:
        """find_slot(ubatch of n tokens, cont=false): the cells a decode would use, or None
        (no slot: llama_decode returns 1)."""
        if n > self.size:
            return None
        head = 0 if self.head > self.used + 2 * n else self.head
        found, tested = [], 0
        while len(found) < n:
            if head + 1 > self.size:
                tested += self.size - head
                head = 0
                continue
            if self.pos[head] < 0:
                found.append(head)
            head, tested = head + 1, tested + 1
            if len(found) < n and tested >= self.size:
                return None
        return found

    def apply(self, idxs: Sequence[int], pos: Sequence[int], seqs: Sequence[int]) -> None:
        """apply_ubatch: token j is at pos[j] of seqs[j] in cell idxs[j]; the head follows."""
        for i, p, s in zip(idxs, pos, seqs):
            self.pos[i] = p
            self.seqs[i].add(s)
            self.of.setdefault(s, set()).add(i)
            self.hi[s] = max(self.hi.get(s, -1), i)
        self.used += len(idxs)
        self.head = idxs[-1] + 1

    def ordered(self, seq: int, idxs: Sequence[int], below: int | None = None) -> bool:
        """Would new tokens of seq (appended: later positions than its cells) in cells idxs keep
        its cells in position order? `below`: count only seq's cells at positions < below."""
        return all(a < b for a, b in zip([self.top(seq, below), *idxs], idxs))

    def top(self, seq: int, below: int | None = None) -> int:
        """The highest cell seq holds (at a position < below; -1: none)."""
        if below is None:
            return self.hi.get(seq, -1)
        return max((i for i in self.of.get(seq, ()) if self.pos[i] < below), default=-1)

    def cells(self, seq: int) -> list[tuple[int, int]]:
        """(cell, position) of seq's cells, in cell order."""
        return sorted((i, self.pos[i]) for i in self.of.get(seq, ()))

"""Sequence ids of one llama.cpp context: handed out and taken back here, nowhere else.

A context holds at most `n_seq_max` sequences (LLAMA_MAX_SEQ at most). Every id the engine uses
comes from `take` and goes back through `give`, so `in_use` is the whole story of a leak.
"""

from __future__ import annotations


class SeqIds:
    """A free list over 0..n-1; lowest id first, so a quiet context reuses the same few ids."""

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"n_seq_max={n}: need at least one sequence id")
        self.n = n
        self._free = list(range(n - 1, -1, -1))  # a stack: pop() gives the lowest id
        self._used: set[int] = set()

    @property
    def in_use(self) -> int:
        return len(self._used)

    def take(self) -> int | None:
        """A free id, or None when all n are in use (the caller evicts and asks again)."""
        if not self._free:
            return None
        seq = self._free.pop()
        self._used.add(seq)
        return seq

    def give(self, seq: int) -> None:
        """Return an id; giving back an id that is not out is a bug, not a no-op."""
        if seq not in self._used:
            raise ValueError(f"sequence id {seq} is not in use")
        self._used.remove(seq)
        self._free.append(seq)
        self._free.sort(reverse=True)

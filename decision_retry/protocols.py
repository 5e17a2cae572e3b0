"""The interfaces, declared together. Implementations never inherit from them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch


class Backend(Protocol):
    """What the decode engine needs from a model: a forward step over a KV cache it owns.

    A cache covers n positions of one or more rows. `forward` appends one id per row in place
    and returns the next-token logits; `slice`, `repeat` and `select` return fresh copies.
    """

    eos_ids: frozenset[int]

    def encode_prompt(self, prompt: str | Sequence[dict]) -> list[int]:
        """Ids of a prompt, through the chat template where the model has one."""
        ...

    def encode_text(self, text: str) -> list[int]:
        """Ids of plain text, no template and no special tokens (e.g. an assistant prefix)."""
        ...

    def piece(self, ids: Sequence[int]) -> str:
        """Text that the last id adds after ids[:-1]."""
        ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def prefill(self, ids: Sequence[int]) -> Any: ...

    def forward(self, cache: Any, ids: torch.Tensor) -> torch.Tensor:
        """Feed ids (B,) at the next position; returns fp32 logits (B, V)."""
        ...

    def slice(self, cache: Any, n: int) -> Any: ...

    def repeat(self, cache: Any, k: int) -> Any: ...

    def select(self, cache: Any, rows: Sequence[int]) -> Any: ...


class Verifier(Protocol):
    """Scores a finished attempt: the fraction of tests passing, in [0, 1]."""

    def __call__(self, text: str) -> float: ...

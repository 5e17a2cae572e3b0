"""The interfaces, declared together. Implementations never inherit from them.

The layout reads as a line: these protocols, then one module per engine under
`decision_retry.engines` (each imports only this module and `decision_retry.tokens`), then the
decode loop `decision_retry.lm.LM`, which turns any `Backend` into an `Engine`. Samplers, the agent
and the LangGraph nodes talk to an `Engine` and never know which one runs.

* A **Backend** is a model that can take one step: feed one id per row into a cache it owns and
  return the next-token logits. torch/transformers, llama.cpp in process, and the toy and
  scripted models are Backends; `LM` adds sampling, forks, batching and per-token records.
* An **Engine** is the whole contract (design.md §7). `LM` over a Backend is one; an engine
  that cannot hand out logits (a remote server returning top-k log-probs) implements `Engine`
  directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch

from decision_retry.tokens import DecodeState, Sampling

Prompt = str | Sequence[dict] | Sequence[int]


class Backend(Protocol):
    """A forward step over a cache the backend owns.

    A cache covers n positions of one or more rows (all rows the same n). `forward` and `score`
    append in place; `slice` and `repeat` return fresh copies and leave the source usable;
    `select` returns the chosen rows as a new cache, after which the source is not fed again
    (a backend may share those rows' storage). Dropping a cache releases what it holds.
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

    def prefill(self, ids: Sequence[int]) -> Any:
        """A one-row cache over `ids` (possibly empty)."""
        ...

    def forward(self, cache: Any, ids: torch.Tensor) -> torch.Tensor:
        """Feed ids (B,) at the next position; returns fp32 logits (B, V)."""
        ...

    def score(self, cache: Any, ids: Sequence[int], *, exact: bool = True) -> torch.Tensor:
        """Feed T ids to a one-row cache in one pass (teacher forcing); fp32 logits (T, V).
        `exact`: bitwise the logits one-token decoding gives; False: any batching whose numbers
        depend on (cache, ids) alone, and the cache is not used afterwards."""
        ...

    def slice(self, cache: Any, n: int) -> Any: ...

    def repeat(self, cache: Any, k: int) -> Any: ...

    def select(self, cache: Any, rows: Sequence[int]) -> Any: ...


class Engine(Protocol):
    """The decode contract every engine meets (design.md §7).

    Every generated token carries logp (base model, temperature 1), logq (the distribution it was
    actually drawn from), the entropy of p, and the top alternatives. States are immutable values:
    `fork` keeps a prefix without recomputing it and the original stays usable.
    """

    name: str
    eos_ids: frozenset[int]
    teacher_forcing: bool  # can `score` run? False for a server that only samples
    inexact_chunk: int  # an inexact `score` continues only from a multiple of this many positions

    def encode(self, prompt: Prompt) -> list[int]: ...

    def encode_text(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def prefill(self, prompt: Prompt) -> DecodeState: ...

    def fork(self, state: DecodeState, t: int) -> DecodeState: ...

    def extend(
        self, state: DecodeState, sampling: Sampling, generator: torch.Generator
    ) -> DecodeState: ...

    def extend_many(
        self, state: DecodeState, sampling: Sampling, generators: Sequence[torch.Generator]
    ) -> list[DecodeState]:
        """K continuations of one prefix, decoded together, one generator per row."""
        ...

    def score(self, state: DecodeState, ids: Sequence[int], sampling: Sampling, *,
              exact: bool = True) -> DecodeState:
        """`state` extended by the given ids (teacher forcing, prefill cost): each token's logp,
        entropy and alternatives exact, logq as if drawn with `sampling`. `exact=False`: the
        numbers need only be a function of (state, ids), not decoding's (an engine may batch
        more cheaply), and the state returned may have no cache to extend."""
        ...


class Verifier(Protocol):
    """Scores a finished attempt: the fraction of tests passing, in [0, 1]."""

    def __call__(self, text: str) -> float: ...

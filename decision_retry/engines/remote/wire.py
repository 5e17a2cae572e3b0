"""What a server dialect hands the remote engine: facts about the model, and decode events.

Each dialect (llamacpp_server.py, vllm.py) turns its server's JSON into these values, so the
engine (engine.py) builds tokens, bounds and finishes the same way for both.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Literal, Protocol


@dataclass(frozen=True)
class ModelInfo:
    """The served model: its name, vocabulary size, end-of-generation ids, log-prob limit."""

    name: str
    vocab: int
    eos_ids: frozenset[int]
    max_logprobs: int | None = None  # the most alternatives one position may list (None: any)
    max_rows: int | None = None  # the most completions one request may ask for (None: any)


@dataclass(frozen=True)
class Candidate:
    """One listed alternative: id, log-probability at temperature 1, and its bytes or text."""

    id: int
    logprob: float
    piece: bytes | str


@dataclass(frozen=True)
class Step:
    """One generated token of row `row`, with the top candidates at its position."""

    row: int
    id: int
    logprob: float
    top: tuple[Candidate, ...]
    piece: bytes | str  # llama.cpp gives bytes (UTF-8 may split across tokens), vLLM text


@dataclass(frozen=True)
class End:
    """Row `row` ended on the server's side."""

    row: int
    reason: Literal["eos", "length", "stop"]


@dataclass(frozen=True)
class Usage:
    """What the server says about row `row`'s prompt: tokens it saw, tokens from its cache."""

    row: int
    prompt_tokens: int
    cached_tokens: int


@dataclass(frozen=True)
class Request:
    """One decode request: K rows from one prefix of ids, sampled with a seed."""

    ids: tuple[int, ...]
    n: int
    max_new_tokens: int
    temperature: float
    top_k: int | None
    seed: int
    logprobs: int  # alternatives listed per position (the vocabulary size in exact mode)
    ban: int | None = None  # an id no row may draw (a dialect with `bans`: vLLM's logit_bias)


class Dialect(Protocol):
    """A server's HTTP API for the remote engine."""

    kind: str

    def info(self) -> ModelInfo: ...

    def tokenize_chat(self, messages: Sequence[dict]) -> list[int]: ...

    def tokenize(self, text: str) -> list[int]: ...

    def detokenize(self, ids: Sequence[int]) -> str: ...

    def generate(self, request: Request) -> AbstractContextManager[Iterator[Step | Usage | End]]: ...


class Scorer(Protocol):
    """What a dialect adds when its server returns log-probs of prompt tokens (vLLM): the
    engine's `score` and `teacher_forcing` read it."""

    def score(self, ids: Sequence[int], start: int,
              logprobs: int) -> tuple[list[Step], Usage | None]: ...

    def texts(self, ids: Sequence[int]) -> list[str]: ...

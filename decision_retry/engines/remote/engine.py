"""The remote engine: the `Engine` contract (decision_retry.protocols) over a server's HTTP API.

A state's cache is only the text pieces of its tokens: the server holds the real cache, keyed
by the prompt it sees. So

* `prefill` tokenizes and sends nothing; `fork(state, t)` keeps tokens[:t] and sends nothing;
* `extend_many` is one request whose prompt is the kept prefix as token ids (the server's
  prefix cache makes it cheap) with K completions (`n_cmpl` / `n`) seeded from the first
  generator; stop strings are checked here and the stream is closed once every row is done;
* each token's logp is the server's (temperature 1); logq and the entropy come from the top-k
  with the missing mass bounded (bounds.py): the estimates are the middles of intervals kept
  on the token (`logq_bounds`, `entropy_bounds`), exact when the whole vocabulary is listed
  (`exact=True`);
* `score` (teacher forcing) is one request whose prompt is the state's ids and the given ids,
  asking the server for the prompt's log-probs (vLLM's `prompt_logprobs`); its tokens carry
  the same estimates and bounds as decoded ones. A dialect without `score` (the llama.cpp
  server) leaves `teacher_forcing` False;
* `extend_until` is one streamed request that a caller's rule stops token by token (a local
  move's span, samplers/local.py): the stream is closed at the stop, the server's look-ahead is
  not read;
* `extend(..., exclude=id)` (a dialect with `bans`: vLLM, the llama.cpp server) draws the
  first token with the id banned in a one-token request, then the rest in a second one
  (banned.py); every token keeps its unrestricted log-probs, as lm.LM's (samplers/mh.py adds
  the exclusion term).

Jobs: this module sends requests and keeps the statistics; rows.py reads a request's events
into tokens; banned.py makes excluding draws; pieces.py joins byte pieces into text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from decision_retry.engines.remote import banned, pieces
from decision_retry.engines.remote.http import Http
from decision_retry.engines.remote.rows import Reader, Row, Until
from decision_retry.engines.remote.wire import Dialect, ModelInfo, Request
from decision_retry.errors import BadInput
from decision_retry.tokens import DecodeState, Sampling

DEFAULT_TOP = 20  # listed candidates per position: vLLM's default --max-logprobs


@dataclass
class RemoteStats:
    """What the engine sent and what the server reported, over its lifetime."""

    requests: int = 0
    prompt_tokens_sent: int = 0  # token ids sent as prompts (prefix + kept tokens)
    reported_prompt_tokens: int = 0  # prompt tokens the server reported on (per row)
    cached_tokens: int = 0  # of those, served from its prefix cache
    generated_tokens: int = 0  # tokens kept (a row's tokens after its stop are dropped)
    scored_tokens: int = 0  # tokens teacher-forced by `score`

    @property
    def cache_hit_rate(self) -> float | None:
        if not self.reported_prompt_tokens:
            return None
        return self.cached_tokens / self.reported_prompt_tokens


class RemoteEngine:
    """A model served by llama.cpp or vLLM, behind the `Engine` protocol."""

    # `extend(..., exclude=id)`: a dialect that can ban an id (vLLM's logit_bias) sets it per
    # instance; the llama.cpp server's chains keep the plain kernel
    excludes = False
    inexact_chunk = 1  # a server scores a request in one pass: any prefix can be continued

    def __init__(self, dialect: Dialect, http: Http, info: ModelInfo, *, exact: bool = False,
                 top: int = DEFAULT_TOP) -> None:
        self.dialect, self.http, self.info = dialect, http, info
        self.name = f"{dialect.kind}:{info.name}"
        self.eos_ids = info.eos_ids
        self.exact, self.top = exact, top
        self.stats = RemoteStats()
        self.reader = Reader(info.vocab, info.eos_ids, getattr(dialect, "piece", None) or _no_piece)
        # `score` needs the prompt's log-probs: vLLM returns them, the llama.cpp server does not
        self.teacher_forcing = callable(getattr(dialect, "score", None))
        self.excludes = bool(getattr(dialect, "bans", False))

    def __repr__(self) -> str:
        return f"RemoteEngine({self.name!r}, {self.http!r}, exact={self.exact})"

    # -- text ------------------------------------------------------------------------------
    def encode(self, prompt) -> list[int]:
        """Token ids of a prompt: a chat (list of messages), plain text, or ids as they are."""
        if isinstance(prompt, str):
            return self.http.call(lambda: self.dialect.tokenize_chat(
                [{"role": "user", "content": prompt}]))
        if prompt and isinstance(prompt[0], dict):
            return self.http.call(lambda: self.dialect.tokenize_chat(list(prompt)))
        return list(prompt)

    def encode_text(self, text: str) -> list[int]:
        return self.http.call(lambda: self.dialect.tokenize(text)) if text else []

    def decode(self, ids: Sequence[int]) -> str:
        return self.http.call(lambda: self.dialect.detokenize(list(ids))) if ids else ""

    # -- states ----------------------------------------------------------------------------
    def prefill(self, prompt) -> DecodeState:
        ids = self.encode(prompt)
        if not ids:
            raise ValueError("empty prompt: give at least one token")
        return DecodeState(tuple(ids), cache=())

    def fork(self, state: DecodeState, t: int) -> DecodeState:
        if not 0 <= t <= len(state.tokens):
            raise ValueError(f"fork position {t} outside 0..{len(state.tokens)}")
        return DecodeState(state.prompt_ids, state.tokens[:t], None, pieces.of(state)[:t])

    def score(self, state: DecodeState, ids: Sequence[int], sampling: Sampling, *,
              exact: bool = True) -> DecodeState:
        """`state` extended by `ids`, teacher-forced in one request; tokens recorded as if drawn
        with `sampling` (logq and entropy with bounds from the top-k, as decoded tokens). A
        server that only samples cannot do it (exit 2, one line). `exact`: one request either
        way (the server batches as it does)."""
        if not self.teacher_forcing:
            raise BadInput(
                f"the {self.dialect.kind} engine cannot score a given text (teacher forcing), "
                "which local moves need: use -o move=suffix with a remote --model"
            )
        if not ids:
            return state
        ids = [int(i) for i in ids]
        whole = (*state.ids, *ids)
        steps, usage = self.dialect.score(whole, len(state.ids), self.listed(sampling))
        texts = self.http.call(lambda: self.dialect.texts(ids))
        self.stats.requests += 1 if usage is not None else len(ids)
        self.stats.prompt_tokens_sent += len(whole)
        self.stats.scored_tokens += len(ids)
        if usage is not None:
            self.stats.reported_prompt_tokens += usage.prompt_tokens
            self.stats.cached_tokens += usage.cached_tokens
        tokens = tuple(self.reader.token(st, text, sampling) for st, text in zip(steps, texts))
        finish = "eos" if tokens[-1].id in self.eos_ids else None  # as lm.LM.score
        return DecodeState(state.prompt_ids, state.tokens + tokens, finish,
                           (*pieces.of(state), *texts))

    # -- decoding --------------------------------------------------------------------------
    def extend(self, state: DecodeState, sampling: Sampling, generator: torch.Generator,
               *, exclude: int | None = None) -> DecodeState:
        return self.extend_many(state, sampling, [generator], exclude=exclude)[0]

    def extend_many(
        self, state: DecodeState, sampling: Sampling, generators: Sequence[torch.Generator],
        *, exclude: int | None = None,
    ) -> list[DecodeState]:
        """K continuations of one prefix: one request, `n` rows, seeded from the generators;
        `exclude`: an id the first new token may not be (two requests a row: module docstring)."""
        if exclude is not None and not self.excludes:
            raise ValueError(f"the {self.dialect.kind} engine cannot ban a token (excludes is "
                             "False): use the plain kernel with this engine")
        if state.finish in ("eos", "stop"):
            return [state for _ in generators]  # "length" only paused: it may grow again
        if exclude is not None:
            return [banned.extend(self, state, sampling, g, exclude) for g in generators]
        seeds = [int(torch.randint(0, 2**31 - 1, (1,), generator=g)) for g in generators]
        k, per = len(generators), self.info.max_rows or len(generators)
        rows: list[Row] = []
        for first in range(0, k, per):  # a server takes at most `per` completions per request
            req = Request(
                ids=tuple(state.ids), n=min(per, k - first), seed=seeds[first],
                max_new_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
                top_k=sampling.top_k, logprobs=self.listed(sampling),
            )
            rows += self.http.call(lambda req=req: self.exchange(req, state, sampling))
            self.stats.requests += 1
            self.stats.prompt_tokens_sent += len(req.ids)
        self.stats.generated_tokens += sum(len(r.tokens) for r in rows)
        return [
            DecodeState(state.prompt_ids, state.tokens + tuple(r.tokens), r.finish, tuple(r.pieces))
            for r in rows
        ]

    def extend_until(self, state: DecodeState, sampling: Sampling, generator: torch.Generator,
                     until: Until) -> tuple[DecodeState, int, str]:
        """Continue `state` by one streamed request (up to `max_new_tokens`) that `until` stops:
        it reads the whole sequence after each drawn token and says "" (go on), "before" (drop
        that token and stop) or another word (keep it and stop). Returns the state, the tokens
        drawn (a dropped one included) and `until`'s word ("" when the row ended first)."""
        if state.finish in ("eos", "stop"):
            return state, 0, ""
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        req = Request(ids=tuple(state.ids), n=1, seed=seed, max_new_tokens=sampling.max_new_tokens,
                      temperature=sampling.temperature, top_k=sampling.top_k,
                      logprobs=self.listed(sampling))
        row = self.http.call(lambda: self.exchange(req, state, sampling, until=until))[0]
        self.stats.requests += 1
        self.stats.prompt_tokens_sent += len(req.ids)
        self.stats.generated_tokens += len(row.tokens)
        return (DecodeState(state.prompt_ids, state.tokens + tuple(row.tokens), row.finish,
                            tuple(row.pieces)), row.drawn, row.stop)

    def listed(self, sampling: Sampling) -> int:
        """Candidates to ask for per position: the whole vocabulary in exact mode."""
        if self.exact:
            return self.info.vocab
        want = max(self.top, sampling.alternatives, sampling.top_k or 0)
        cap = self.info.max_logprobs
        if cap is not None and (sampling.top_k or 0) > cap:
            raise ValueError(f"top_k {sampling.top_k} needs {sampling.top_k} log-probs per "
                             f"token; the server allows {cap} (--max-logprobs)")
        return min(want, cap) if cap is not None else want

    def exchange(self, req: Request, state: DecodeState, sampling: Sampling, *,
                 head: Row | None = None, until: Until | None = None) -> list[Row]:
        """One request read into rows (restarted from scratch by `http.call` on a transient
        failure). `head`: the one row's tokens drawn before this request (they count towards
        the stop window and the length); `until`: extend_until's rule (one row)."""
        if head is not None:
            rows = [Row(list(head.pieces), list(head.tokens))]
        else:
            rows = [Row(list(pieces.of(state))) for _ in range(req.n)]
        with self.dialect.generate(req) as events:  # leaving the block closes the stream
            usage = self.reader.read(events, rows, sampling, before=state.tokens, until=until)
        self.stats.reported_prompt_tokens += sum(u.prompt_tokens for u in usage)
        self.stats.cached_tokens += sum(u.cached_tokens for u in usage)
        return rows


def _no_piece(tid: int) -> str:
    return ""  # a dialect whose listings carry their pieces (the llama.cpp server)

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
* `extend(..., exclude=id)` (a dialect with `bans`: vLLM) draws the first token with the id
  banned in a one-token request, then the rest in a second one; every token keeps its
  unrestricted log-probs, as lm.LM's (samplers/mh.py adds the exclusion term).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from decision_retry.engines.remote import bounds
from decision_retry.engines.remote.http import Http, RemoteError
from decision_retry.engines.remote.wire import Dialect, End, ModelInfo, Request, Step, Usage
from decision_retry.errors import BadInput
from decision_retry.tokens import Alternative, DecodeState, Finish, Sampling, Token, stop_reason

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


@dataclass
class _Row:
    pieces: list  # bytes or str per generated token, prefix included
    tokens: list[Token] = field(default_factory=list)
    finish: Finish | None = None
    drawn: int = 0  # tokens the server drew for `extend_until`, a dropped one included
    stop: str = ""  # extend_until's rule stopped the row here


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
        return DecodeState(state.prompt_ids, state.tokens[:t], None, _pieces(state)[:t])

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
        steps, usage = self.dialect.score(whole, len(state.ids), self._listed(sampling))
        texts = self.http.call(lambda: self.dialect.texts(ids))
        self.stats.requests += 1 if usage is not None else len(ids)
        self.stats.prompt_tokens_sent += len(whole)
        self.stats.scored_tokens += len(ids)
        if usage is not None:
            self.stats.reported_prompt_tokens += usage.prompt_tokens
            self.stats.cached_tokens += usage.cached_tokens
        tokens = tuple(self._token(st, text, sampling) for st, text in zip(steps, texts))
        finish = "eos" if tokens[-1].id in self.eos_ids else None  # as lm.LM.score
        return DecodeState(state.prompt_ids, state.tokens + tokens, finish,
                           (*_pieces(state), *texts))

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
            return [self._extend_banned(state, sampling, g, exclude) for g in generators]
        seeds = [int(torch.randint(0, 2**31 - 1, (1,), generator=g)) for g in generators]
        k, per = len(generators), self.info.max_rows or len(generators)
        rows: list[_Row] = []
        for first in range(0, k, per):  # a server takes at most `per` completions per request
            req = Request(
                ids=tuple(state.ids), n=min(per, k - first), seed=seeds[first],
                max_new_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
                top_k=sampling.top_k, logprobs=self._listed(sampling),
            )
            rows += self.http.call(lambda req=req: self._decode(req, state, sampling))
            self.stats.requests += 1
            self.stats.prompt_tokens_sent += len(req.ids)
        self.stats.generated_tokens += sum(len(r.tokens) for r in rows)
        return [
            DecodeState(state.prompt_ids, state.tokens + tuple(r.tokens), r.finish, tuple(r.pieces))
            for r in rows
        ]

    def extend_until(self, state: DecodeState, sampling: Sampling, generator: torch.Generator,
                     until: Callable[[Sequence[Token]], str]) -> tuple[DecodeState, int, str]:
        """Continue `state` by one streamed request (up to `max_new_tokens`) that `until` stops:
        it reads the whole sequence after each drawn token and says "" (go on), "before" (drop
        that token and stop) or another word (keep it and stop). Returns the state, the tokens
        drawn (a dropped one included) and `until`'s word ("" when the row ended first)."""
        if state.finish in ("eos", "stop"):
            return state, 0, ""
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        req = Request(ids=tuple(state.ids), n=1, seed=seed, max_new_tokens=sampling.max_new_tokens,
                      temperature=sampling.temperature, top_k=sampling.top_k,
                      logprobs=self._listed(sampling))
        row = self.http.call(lambda: self._decode(req, state, sampling, until=until))[0]
        self.stats.requests += 1
        self.stats.prompt_tokens_sent += len(req.ids)
        self.stats.generated_tokens += len(row.tokens)
        return (DecodeState(state.prompt_ids, state.tokens + tuple(row.tokens), row.finish,
                            tuple(row.pieces)), row.drawn, row.stop)

    def _extend_banned(self, state: DecodeState, sampling: Sampling, generator: torch.Generator,
                       ban: int) -> DecodeState:
        """One row whose first token may not be `ban`: that token in a one-token request
        (`_banned_step`), the rest from it in a second, the stop window and the length counted
        from the first token as one `extend` would."""
        seeds = [int(torch.randint(0, 2**31 - 1, (1,), generator=generator)) for _ in range(2)]
        step = self.http.call(lambda: self._banned_step(state, sampling, ban, seeds[0]))
        head = _Row(list(_pieces(state)))
        self._append(head, step, sampling)
        self.stats.requests += 1
        self.stats.prompt_tokens_sent += len(state.ids)
        if head.finish is None:
            ids = (*state.ids, step.id)
            req = Request(ids=ids, n=1, seed=seeds[1], max_new_tokens=sampling.max_new_tokens - 1,
                          temperature=sampling.temperature, top_k=sampling.top_k,
                          logprobs=self._listed(sampling))
            head = self.http.call(lambda: self._decode(req, state, sampling, head=head))[0]
            self.stats.requests += 1
            self.stats.prompt_tokens_sent += len(ids)
        self.stats.generated_tokens += len(head.tokens)
        return DecodeState(state.prompt_ids, state.tokens + tuple(head.tokens), head.finish,
                           tuple(head.pieces))

    def _banned_step(self, state: DecodeState, sampling: Sampling, ban: int, seed: int) -> Step:
        """The first token with `ban` excluded, drawn from q(.) / (1 - q(ban)):
        * no top-k: the server draws it with the id banned (`Request.ban`, vllm.py);
        * a top-k proposal: a ban would let the (k+1)-th token in, so the server only lists the
          top k (`_listed` asks for at least k) and the draw is made here, over those k but
          `ban`, with q proportional to p^(1/T): exact;
        * temperature 0: the argmax, which must not be `ban` (q has no other token).
        Its log-prob and listing stay the unrestricted ones; `seed` seeds the draw either way
        (a retried exchange draws the same token)."""
        client = sampling.top_k is not None and sampling.temperature > 0
        req = Request(ids=tuple(state.ids), n=1, seed=seed, max_new_tokens=1,
                      temperature=sampling.temperature, top_k=sampling.top_k,
                      logprobs=self._listed(sampling),
                      ban=None if client or sampling.temperature == 0 else ban)
        step = None
        with self.dialect.generate(req) as events:
            for ev in events:
                if isinstance(ev, Step):
                    step = ev
                    break
        if step is None:
            raise RemoteError(f"{self.dialect.kind} server returned no token for a one-token draw")
        if client:
            ranked = sorted(step.top, key=lambda c: -c.logprob)[: sampling.top_k]
            allowed = [c for c in ranked if c.id != ban]
            if not allowed:
                raise ValueError(f"no token left once id {ban} is excluded (top-k {sampling.top_k})")
            weights = torch.tensor([c.logprob / sampling.temperature for c in allowed],
                                   dtype=torch.float64)
            rng = torch.Generator().manual_seed(seed)
            pick = allowed[int(torch.multinomial(torch.softmax(weights, -1), 1, generator=rng))]
            return Step(step.row, pick.id, pick.logprob, step.top,
                        pick.piece if pick.piece else self._piece(pick.id))
        if step.id == ban:
            if sampling.temperature == 0:
                raise ValueError("cannot exclude the argmax at temperature 0: q has no other token")
            raise RemoteError(f"{self.dialect.kind} server drew the banned id {ban}: is its "
                              "logit_bias ignored?")
        return step

    def _listed(self, sampling: Sampling) -> int:
        """Candidates to ask for per position: the whole vocabulary in exact mode."""
        if self.exact:
            return self.info.vocab
        want = max(self.top, sampling.alternatives, sampling.top_k or 0)
        cap = self.info.max_logprobs
        if cap is not None and (sampling.top_k or 0) > cap:
            raise ValueError(f"top_k {sampling.top_k} needs {sampling.top_k} log-probs per "
                             f"token; the server allows {cap} (--max-logprobs)")
        return min(want, cap) if cap is not None else want

    def _decode(self, req: Request, state: DecodeState, sampling: Sampling, *,
                head: _Row | None = None, until=None) -> list[_Row]:
        """One exchange (restarted from scratch by `http.call` on a transient failure).
        `head`: the one row's tokens drawn before this request (they count towards the stop
        window and the length); `until`: extend_until's rule (one row)."""
        base = list(_pieces(state))
        if head is not None:
            rows = [_Row(list(head.pieces), list(head.tokens))]
        else:
            rows = [_Row(list(base)) for _ in range(req.n)]
        usage: list[Usage] = []
        with self.dialect.generate(req) as events:
            for ev in events:
                if isinstance(ev, Usage):
                    usage.append(ev)
                    continue
                row = rows[ev.row]
                if row.finish is not None:
                    continue  # this row stopped here; the server may still send its tail
                if isinstance(ev, End):
                    row.finish = ev.reason if ev.reason == "eos" else "length"
                elif isinstance(ev, Step):
                    self._append(row, ev, sampling)
                    if until is not None:
                        row.drawn += 1
                        row.stop = until((*state.tokens, *row.tokens))
                        if row.stop == "before":  # the drawn token is not kept
                            row.tokens.pop()
                            row.pieces.pop()
                            row.finish = None
                        if row.stop:
                            break  # closes the stream: the server stops generating
                if all(r.finish is not None for r in rows) and any(r.finish == "stop" for r in rows):
                    break  # leaving the block closes the stream: the server stops generating
        for row in rows:
            if not row.stop:
                row.finish = row.finish or "length"
        self.stats.reported_prompt_tokens += sum(u.prompt_tokens for u in usage)
        self.stats.cached_tokens += sum(u.cached_tokens for u in usage)
        return rows

    def _append(self, row: _Row, step: Step, sampling: Sampling) -> None:
        text = _text(row.pieces, step.piece)
        row.pieces.append(step.piece)
        row.tokens.append(self._token(step, text, sampling))
        row.finish = self._finish(row, sampling)

    def _token(self, step: Step, text: str, sampling: Sampling) -> Token:
        top = sorted(step.top, key=lambda c: -c.logprob)
        listed_ids = {c.id for c in top}
        extra = () if step.id in listed_ids else (step.logprob,)  # known, outside the top-k
        listed = bounds.listed([c.logprob for c in top], self.info.vocab, extra)
        rank = next((i for i, c in enumerate(top) if c.id == step.id), None)
        h = bounds.entropy_bounds(listed)
        q = bounds.logq_bounds(step.logprob, listed, sampling.temperature, sampling.top_k, rank)
        alts = tuple(
            Alternative(id=c.id, text=_loose(c.piece) or self._piece(c.id), prob=math.exp(c.logprob))
            for c in top[: sampling.alternatives]
        )
        return Token(
            id=step.id, text=text, logp=step.logprob, logq=bounds.middle(q),
            entropy=bounds.middle(h), top=alts,
            logq_bounds=None if q[0] == q[1] else q,
            entropy_bounds=None if h[0] == h[1] else h,
        )

    def _piece(self, tid: int) -> str:
        """An alternative's text where the server lists ids only (vLLM)."""
        piece = getattr(self.dialect, "piece", None)
        return piece(tid) if piece is not None else ""

    def _finish(self, row: _Row, sampling: Sampling) -> Finish | None:
        new = row.tokens  # the stop window starts where this request began, as in lm.LM
        stop = stop_reason(new, len(new) - 1, sampling, self.eos_ids)
        if stop is not None:
            return stop
        if len(new) >= sampling.max_new_tokens:
            return "length"
        return None


# -- text of byte pieces (UTF-8 characters may span tokens) ---------------------------------
def _pieces(state: DecodeState) -> tuple:
    """The per-token pieces a state of this engine keeps (empty for a foreign state)."""
    cache = state.cache
    if isinstance(cache, tuple) and len(cache) == len(state.tokens):
        return cache
    return tuple(t.text for t in state.tokens)


def _complete(b: bytes) -> int:
    """Length of the longest prefix of `b` that does not end inside a UTF-8 character."""
    for back in range(1, min(4, len(b)) + 1):
        c = b[-back]
        if c & 0xC0 == 0x80:
            continue  # a continuation byte: look further back for the lead
        need = 2 if c & 0xE0 == 0xC0 else 3 if c & 0xF0 == 0xE0 else 4 if c & 0xF8 == 0xF0 else 1
        return len(b) - back if need > back else len(b)
    return len(b)


def _text(prev: Sequence, piece: bytes | str) -> str:
    """The text `piece` completes after `prev`: bytes left over from an unfinished character
    before it come first; its own unfinished tail waits for the next token."""
    if isinstance(piece, str):
        return piece
    carry = b""
    for p in reversed(prev[-3:]):  # at most 3 bytes of a character can be pending
        if not isinstance(p, bytes):
            break
        carry = p + carry
    carry = carry[_complete(carry):]
    data = carry + piece
    return data[: _complete(data)].decode("utf-8", errors="replace")


def _loose(piece: bytes | str) -> str:
    return piece.decode("utf-8", errors="replace") if isinstance(piece, bytes) else piece

"""Excluding draws over HTTP: a row whose first token may not be a given id (an excluding cut
move, samplers/mh.py), on a dialect with `bans` (vLLM's `logit_bias` -100, the llama.cpp
server's [[id, false]]: vllm.py, llamacpp_server.py).

The first token is one one-token request, the rest of the row a second request from it; the
stop window and the length count from the first token as one `extend` would. Every token keeps
its unrestricted log-probs (the servers list raw ones), which the exclusion term reads.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from decision_retry.engines.remote import pieces
from decision_retry.engines.remote.http import Http, RemoteError
from decision_retry.engines.remote.rows import Reader, Row
from decision_retry.engines.remote.wire import Dialect, Request, Step
from decision_retry.tokens import DecodeState, Sampling


class RemoteEngine(Protocol):
    """What an excluding draw uses of the remote engine (engine.py, which calls this module)."""

    dialect: Dialect
    http: Http
    reader: Reader
    stats: Any  # engine.RemoteStats: requests, prompt_tokens_sent, generated_tokens

    def listed(self, sampling: Sampling) -> int: ...

    def exchange(self, req: Request, state: DecodeState, sampling: Sampling, *,
                 head: Row | None = None) -> list[Row]: ...


def extend(engine: RemoteEngine, state: DecodeState, sampling: Sampling,
           generator: torch.Generator, ban: int) -> DecodeState:
    """`state` continued by one row whose first token is not `ban`."""
    seeds = [int(torch.randint(0, 2**31 - 1, (1,), generator=generator)) for _ in range(2)]
    # 1) the first token, in a one-token request
    step = engine.http.call(lambda: first(engine, state, sampling, ban, seeds[0]))
    head = Row(list(pieces.of(state)))
    engine.reader.append(head, step, sampling)
    engine.stats.requests += 1
    engine.stats.prompt_tokens_sent += len(state.ids)
    # 2) the rest from it, unless the first token ended the row
    if head.finish is None:
        ids = (*state.ids, step.id)
        req = Request(ids=ids, n=1, seed=seeds[1], max_new_tokens=sampling.max_new_tokens - 1,
                      temperature=sampling.temperature, top_k=sampling.top_k,
                      logprobs=engine.listed(sampling))
        head = engine.http.call(lambda: engine.exchange(req, state, sampling, head=head))[0]
        engine.stats.requests += 1
        engine.stats.prompt_tokens_sent += len(ids)
    engine.stats.generated_tokens += len(head.tokens)
    return DecodeState(state.prompt_ids, state.tokens + tuple(head.tokens), head.finish,
                       tuple(head.pieces))


def first(engine: RemoteEngine, state: DecodeState, sampling: Sampling, ban: int,
          seed: int) -> Step:
    """The first token with `ban` excluded, drawn from q(.) / (1 - q(ban)):
    * no top-k: the server draws it with the id banned (`Request.ban`);
    * a top-k proposal: a ban would let the (k+1)-th token in, so the server only lists the
      top k (`listed` asks for at least k) and the draw is made here, over those k but `ban`,
      with q proportional to p^(1/T): exact;
    * temperature 0: the argmax, which must not be `ban` (q has no other token).
    Its log-prob and listing stay the unrestricted ones; `seed` seeds the draw either way (a
    retried exchange draws the same token)."""
    here = sampling.top_k is not None and sampling.temperature > 0
    req = Request(ids=tuple(state.ids), n=1, seed=seed, max_new_tokens=1,
                  temperature=sampling.temperature, top_k=sampling.top_k,
                  logprobs=engine.listed(sampling),
                  ban=None if here or sampling.temperature == 0 else ban)
    step = None
    with engine.dialect.generate(req) as events:
        for ev in events:
            if isinstance(ev, Step):
                step = ev
                break
    kind = engine.dialect.kind
    if step is None:
        raise RemoteError(f"{kind} server returned no token for a one-token draw")
    if here:
        return _top_k_draw(engine, step, sampling, ban, seed)
    if step.id == ban:
        if sampling.temperature == 0:
            raise ValueError("cannot exclude the argmax at temperature 0: q has no other token")
        raise RemoteError(f"{kind} server drew the banned id {ban}: is its logit_bias ignored?")
    return step


def _top_k_draw(engine: RemoteEngine, step: Step, sampling: Sampling, ban: int,
                seed: int) -> Step:
    """A token from the listed top k but `ban`, q proportional to p^(1/T), seeded by `seed`."""
    ranked = sorted(step.top, key=lambda c: -c.logprob)[: sampling.top_k]
    allowed = [c for c in ranked if c.id != ban]
    if not allowed:
        raise ValueError(f"no token left once id {ban} is excluded (top-k {sampling.top_k})")
    weights = torch.tensor([c.logprob / sampling.temperature for c in allowed],
                           dtype=torch.float64)  # (k',)
    rng = torch.Generator().manual_seed(seed)
    pick = allowed[int(torch.multinomial(torch.softmax(weights, -1), 1, generator=rng))]
    return Step(step.row, pick.id, pick.logprob, step.top,
                pick.piece if pick.piece else engine.reader.piece(pick.id))

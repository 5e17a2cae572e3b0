"""Token selection as pure functions of (logits, generators, temperature, top_k).

Everything here works on a batch of rows; shapes sit at the end of lines.
Randomness is always an argument: one `torch.Generator` per row, so a row's draws do not
depend on which other rows share the batch (K batched tries equal K single ones).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch


def base_logprobs(logits: torch.Tensor) -> torch.Tensor:
    """log p at temperature 1 from raw logits, in fp32."""
    return torch.log_softmax(logits.float(), dim=-1)  # (B, V)


def entropy(logp: torch.Tensor, p: torch.Tensor | None = None) -> torch.Tensor:
    """Entropy in nats of each row's distribution (zero-probability entries contribute 0);
    `p` = logp.exp() when the caller has it already."""
    p = logp.exp() if p is None else p
    h = -(p * logp.clamp_min(-1e30)).sum(dim=-1)  # (B,); clamp: 0 * -inf would be nan
    return h.clamp_min(0.0) + 0.0  # no -0.0 (it would not survive a round trip through SQLite)


def proposal_logprobs(logits: torch.Tensor, temperature: float, top_k: int | None) -> torch.Tensor:
    """log q: the distribution actually sampled, after temperature and top-k. Never edits `logits`."""
    scores = logits.float() / temperature  # (B, V), a new tensor
    if top_k is not None and top_k < scores.shape[-1]:
        kth = topk(scores, top_k)[0][..., -1:]  # (B, 1)
        scores = scores.masked_fill(scores < kth, float("-inf"))
    return torch.log_softmax(scores, dim=-1)  # (B, V)


def draw(logq: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Inverse-CDF sampling, one uniform per row from that row's own generator."""
    if len(generators) != logq.shape[0]:
        raise ValueError(f"need one generator per row: {len(generators)} for {logq.shape[0]} rows")
    return _draw_probs(logq.exp(), generators)


def _draw_probs(q: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """`draw` from probabilities q = logq.exp() (B, V) the caller already has."""
    u = torch.stack([torch.rand((), generator=g) for g in generators])  # (B,)
    cdf = q.cumsum(dim=-1)  # (B, V)
    u = u.to(cdf.dtype) * cdf[:, -1]
    ids = torch.searchsorted(cdf, u.unsqueeze(-1), right=True).squeeze(-1)  # (B,)
    over = ids >= q.shape[-1]  # u rounded up to the total: take the last id q can draw
    if bool(over.any()):
        last = q.shape[-1] - 1 - (q > 0).flip(-1).to(torch.int8).argmax(dim=-1)  # (B,)
        ids = torch.where(over, last, ids)
    return ids


def select(
    logits: torch.Tensor,
    generators: Sequence[torch.Generator],
    temperature: float,
    top_k: int | None,
    *,
    logp: torch.Tensor | None = None,
    exclude: Sequence[int | Collection[int] | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pick the next token of each row (`logp` = base_logprobs(logits) if the caller has it).

    Returns (ids, logp of ids, logq of ids, entropy of p), each (B,).
    Temperature 0 is argmax, and then q puts all its mass on the argmax (logq = 0).
    `exclude`: per row, an id (or ids) the draw may not return (None: no ban), drawn then from
    q(.) / (1 - q(id)); the returned logq is still the unrestricted q's (samplers/mh.py adds the
    exclusion term to the ratio). Banning the only id q can draw is a ValueError.
    """
    logp = base_logprobs(logits) if logp is None else logp  # (B, V)
    p = logp.exp()  # (B, V), shared by the entropy and, at temperature 1, the draw
    h = entropy(logp, p)  # (B,)
    if temperature == 0:
        ids = logp.argmax(dim=-1)  # (B,)
        if exclude is not None and any(i in _banned(e) for e, i in zip(exclude, ids.tolist())):
            raise ValueError("cannot exclude the argmax at temperature 0: q has no other token")
        logq_ids = torch.zeros_like(h)
    else:
        if temperature == 1 and (top_k is None or top_k >= logits.shape[-1]):
            logq, q = logp, p  # q is p: x / 1.0 == x, so no second softmax
        else:
            logq = proposal_logprobs(logits, temperature, top_k)  # (B, V)
            q = logq.exp()
        if exclude is not None and any(e is not None for e in exclude):
            q = without(logq, exclude).exp()  # (B, V), q renormalised without the banned ids
        ids = _draw_probs(q, generators)
        logq_ids = logq.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    logp_ids = logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    return ids, logp_ids, logq_ids, h


def _banned(e: int | Collection[int] | None) -> tuple[int, ...]:
    return () if e is None else (e,) if isinstance(e, int) else tuple(e)


def without(logq: torch.Tensor, exclude: Sequence[int | Collection[int] | None]) -> torch.Tensor:
    """log of q(.) / (1 - q(e)) off e, -inf at e, for each row's banned id e or ids (None: the
    row as it is). A new tensor; renormalised in log space, so nothing underflows when q(e) is
    near 1."""
    out = logq.clone()  # (B, V)
    for b, e in enumerate(exclude):
        if _banned(e):
            out[b, list(_banned(e))] = float("-inf")
    out = torch.log_softmax(out, dim=-1)  # (B, V)
    empty = torch.isnan(out).any(dim=-1) | torch.isneginf(out).all(dim=-1)  # (B,)
    if bool(empty.any()):
        b = int(empty.nonzero()[0])
        raise ValueError(f"row {b}: no token left once id {exclude[b]} is excluded "
                         "(q puts all its mass on it: a null move, samplers/mh.py null_at)")
    return out


def top_alternatives(
    logits: torch.Tensor, k: int, *, logp: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most likely ids under p and their probabilities, each (B, k)."""
    logp = base_logprobs(logits) if logp is None else logp  # (B, V)
    values, ids = topk(logp, min(k, logp.shape[-1]))
    return ids, values.exp()


_BLOCK = 1024  # `topk` splits a row into blocks of this many entries


def topk(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) of torch.topk(x, k) over the last dim of a (B, V) tensor, largest first.

    For a large vocabulary (V = 151,936) torch.topk costs several softmaxes; but the k largest
    entries lie in the k blocks with the largest maxima, so one pass of block maxima and a
    top-k over k blocks give the same values (an index may differ only between exact ties).
    """
    b, v = x.shape
    n = v // _BLOCK
    if k == 0 or 8 * k > n:
        top = torch.topk(x, k, dim=-1)
        return top.values, top.indices
    body = x[:, : n * _BLOCK].reshape(b, n, _BLOCK)  # (B, n, S)
    blocks = torch.topk(body.amax(dim=-1), k, dim=-1).indices  # (B, k)
    idx = (blocks.unsqueeze(-1) * _BLOCK + torch.arange(_BLOCK)).reshape(b, k * _BLOCK)
    idx = torch.cat([idx, torch.arange(n * _BLOCK, v).expand(b, -1)], dim=-1)  # + the ragged tail
    top = torch.topk(x.gather(-1, idx), k, dim=-1)
    return top.values, idx.gather(-1, top.indices)


def child_generators(generator: torch.Generator, k: int) -> list[torch.Generator]:
    """K independent generators seeded from `generator` (for K batched tries)."""
    seeds = torch.randint(0, 2**62, (k,), generator=generator).tolist()
    return [torch.Generator().manual_seed(s) for s in seeds]


def uniform(generator: torch.Generator) -> float:
    """One U(0, 1) draw from `generator`."""
    return float(torch.rand((), generator=generator))

"""`LM.extend_along`: a fresh draw that walks an earlier one while it draws the same tokens.

Its law must be `extend`'s: checked against the exact law of the toy (every sequence
enumerated, q of each from a teacher-forced pass), and the states it returns must be real ones
(they continue, fork and score like decoded states) on torch and llama.cpp."""

from __future__ import annotations

import collections
import itertools
import math

import pytest
import torch

from decision_retry.lm import Sampling
from decision_retry.testing import table_lm
from tests.helpers import gen

MAX_LEN, DRAWS = 3, 4000
Q = Sampling(temperature=0.7, max_new_tokens=MAX_LEN)


@pytest.fixture(scope="module")
def toy():
    return table_lm(vocab=4, seed=7, sharpness=2.0, spread=1.0)


def exact_law(lm, start) -> dict[tuple[int, ...], float]:
    """q of every finished sequence: ending at EOS (id 0), or MAX_LEN long."""
    law = {}
    for n in range(1, MAX_LEN + 1):
        for ids in itertools.product(range(4), repeat=n):
            if 0 in ids[:-1] or (n < MAX_LEN and ids[-1] != 0):
                continue
            law[ids] = math.exp(sum(t.logq for t in lm.score(start, list(ids), Q).tokens))
    assert sum(law.values()) == pytest.approx(1.0, abs=1e-5)
    return law


def tv(a: dict, b: dict) -> float:
    return 0.5 * sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b))


def lcp(a: tuple, b: tuple) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


@pytest.mark.parametrize("earlier", [1, 3])
def test_walking_earlier_draws_keeps_the_proposal_law(toy, earlier):
    """4000 draws along one or three earlier draws: TV to the exact law within sampling noise
    (E[TV] about 0.5 sum sqrt(2 q / (pi N))), and decoding only where the draw leaves them all
    (the longest prefix it shares with one of them is walked); a walk that always kept the
    first path, or never, would be far off (a path alone has q < 0.5)."""
    start = toy.prefill("ab")
    law = exact_law(toy, start)
    along = [toy.extend(start, Q, gen(11 + i)) for i in range(earlier)]
    paths = [tuple(t.id for t in a.tokens) for a in along]
    assert all(law[p] < 0.5 for p in paths)
    counts, decoded, walked = collections.Counter(), 0, 0
    for s in range(DRAWS):
        out, n = toy.extend_along(start, along, Q, torch.Generator().manual_seed(s))
        ids = tuple(t.id for t in out.tokens)
        counts[ids] += 1
        decoded += n
        shared = max(lcp(ids, p) for p in paths)
        walked += shared
        assert n == len(ids) - shared  # decoding starts where the draw leaves them
    emp = {k: v / DRAWS for k, v in counts.items()}
    noise = 0.5 * sum(math.sqrt(2 * p / (math.pi * DRAWS)) for p in law.values())
    assert tv(emp, law) < 2.5 * noise
    assert walked > DRAWS / 4  # (measured: 0.43 a draw along one)


def test_a_walked_token_is_the_record_decoding_would_make(toy):
    start = toy.prefill("ab")
    along = toy.extend(start, Q, gen(11))
    out, _ = toy.extend_along(start, [along], Q, gen(3))
    scored = toy.score(start, [t.id for t in out.tokens], Q)
    for a, b in zip(out.tokens, scored.tokens):
        assert (a.id, a.text) == (b.id, b.text)
        assert a.logq == pytest.approx(b.logq, abs=1e-6) and a.logp == pytest.approx(b.logp, abs=1e-6)


def test_a_draw_from_another_prompt_does_not_walk(toy):
    start, other = toy.prefill("ab"), toy.prefill("ba")
    along = toy.extend(start, Q, gen(11))
    out, n = toy.extend_along(other, [along], Q, gen(3))
    assert n == len(out.tokens)  # nothing shared: all decoded


@pytest.fixture(scope="module", params=["torch", "llamacpp"])
def engine(request, tiny):
    if request.param == "torch":
        return tiny
    from decision_retry import catalogue
    from decision_retry.loading import load_llamacpp

    return load_llamacpp(catalogue.resolve("smollm2-135m"), name="smollm2-135m", threads=1)


def test_a_walked_state_is_a_real_state(engine):
    """Greedy (q = 1 on the argmax): the walk follows the whole path and decodes nothing, and
    what it returns continues and forks like the decoded state."""
    lm = engine
    greedy = Sampling(temperature=0, max_new_tokens=6)
    start = lm.prefill("def add(a, b):")
    along = lm.extend(start, greedy, gen(0))
    out, n = lm.extend_along(start, [along], greedy, gen(1))
    assert n == 0 and [t.id for t in out.tokens] == [t.id for t in along.tokens]
    more = Sampling(temperature=0, max_new_tokens=4)
    assert [t.id for t in lm.extend(out, more, gen(0)).tokens] == \
        [t.id for t in lm.extend(along, more, gen(0)).tokens]
    half = lm.fork(out, 3)
    assert [t.id for t in lm.extend(half, more, gen(0)).tokens] == \
        [t.id for t in lm.extend(lm.fork(along, 3), more, gen(0)).tokens]
    # a longer cap than the path's: the walk ends where the path does, then decodes on
    assert along.finish == "length"  # (neither model ends this prompt within 6 tokens)
    longer, m = lm.extend_along(start, [along], Sampling(temperature=0, max_new_tokens=9),
                                gen(1))
    assert m == 3 and [t.id for t in longer.tokens][:6] == [t.id for t in along.tokens]
    assert [t.id for t in longer.tokens] == \
        [t.id for t in lm.extend(start, Sampling(temperature=0, max_new_tokens=9), gen(0)).tokens]

"""The engine contract (decision_retry.protocols.Engine), on every engine that hands out logits.

* torch: a tiny Llama built from a config (transformers, `DynamicCache` forks);
* llama.cpp: SmolLM2-135M Q4_1 in process (sequence-id forks in a unified KV cache).

Tolerances: on torch, batched and single rows agree to ~1e-6 (fp32, same kernels). On llama.cpp
the measured differences are 0.0: the engine feeds every decode in chunks of at most 32 tokens,
because this build switches to another CPU kernel at 64 tokens and more (logits then differ by up
to 1.2 nats), and 1-62-token decodes are bitwise equal (engines/llamacpp/memory.py). Both engines
get the same 1e-4 nats.
"""

from __future__ import annotations

import pytest
import torch

from decision_retry.lm import Sampling
from decision_retry.sampling import child_generators
from tests.helpers import gen

PROMPT = "def add(a, b):"
TOL = {"torch": 1e-4, "llamacpp": 1e-4}
BATCH_TOL = TOL


@pytest.fixture(scope="module", params=["torch", "llamacpp"])
def engine(request, tiny):
    if request.param == "torch":
        return request.param, tiny
    from decision_retry import catalogue
    from decision_retry.loading import load_llamacpp

    path = catalogue.resolve("smollm2-135m")
    return request.param, load_llamacpp(path, name="smollm2-135m", threads=1)


def ids_of(state):
    return [t.id for t in state.tokens]


@pytest.mark.parametrize("temperature,top_k", [(1.0, None), (0.7, 5), (0.0, None)])
def test_recorded_values_equal_a_scoring_pass(engine, temperature, top_k):
    kind, lm = engine
    s = Sampling(temperature=temperature, top_k=top_k, max_new_tokens=12)
    start = lm.prefill(PROMPT)
    out = lm.extend(start, s, gen(3))
    scored = lm.score(start, ids_of(out), s)
    assert ids_of(scored) == ids_of(out)
    for a, b in zip(out.tokens, scored.tokens):
        assert a.text == b.text
        assert a.logp == pytest.approx(b.logp, abs=TOL[kind])
        assert a.logq == pytest.approx(b.logq, abs=TOL[kind])
        assert a.entropy == pytest.approx(b.entropy, abs=TOL[kind])
        assert [x.id for x in a.top[:2]] == [x.id for x in b.top[:2]] or a.entropy > 1.0
    # a scored state is a real state: it continues like the sampled one
    g = Sampling(temperature=0, max_new_tokens=4)
    assert ids_of(lm.extend(scored, g, gen(0))) == ids_of(lm.extend(out, g, gen(0)))


def test_fork_and_continue_equals_decoding_from_scratch(engine):
    kind, lm = engine
    s = Sampling(max_new_tokens=16)
    full = lm.extend(lm.prefill(PROMPT), s, gen(7))
    for t in (0, 1, 5, 15):
        forked = lm.fork(full, t)
        assert ids_of(forked) == ids_of(full)[:t]
        g = gen(7)
        for _ in range(t):  # the same generator stream from position t
            torch.rand((), generator=g)
        cont = lm.extend(forked, s.model_copy(update={"max_new_tokens": 16 - t}), g)
        assert ids_of(cont) == ids_of(full)
        for a, b in zip(cont.tokens, full.tokens):
            assert a.logp == pytest.approx(b.logp, abs=TOL[kind])
    assert len(lm.fork(full, 8).tokens) == 8  # the original stays usable after forks


def test_k_batched_equals_k_single(engine):
    kind, lm = engine
    s = Sampling(max_new_tokens=10)
    state = lm.prefill(PROMPT)
    gens = child_generators(gen(11), 4)
    snapshots = [g.get_state() for g in gens]
    batched = lm.extend_many(state, s, gens)
    for g, snap, b in zip(gens, snapshots, batched):
        g.set_state(snap)
        single = lm.extend(state, s, g)
        assert ids_of(single) == ids_of(b)
        for x, y in zip(single.tokens, b.tokens):
            assert x.logp == pytest.approx(y.logp, abs=BATCH_TOL[kind])
            assert x.entropy == pytest.approx(y.entropy, abs=BATCH_TOL[kind])
    f = lm.fork(batched[2], 3)  # a batched row keeps its own cache
    assert len(lm.extend(f, s, gen(0)).tokens) > 3


def test_same_seed_same_tokens_and_greedy_is_deterministic(engine):
    _, lm = engine
    state = lm.prefill(PROMPT)
    s = Sampling(max_new_tokens=12)
    a, b, c = (lm.extend(state, s, gen(i)) for i in (1, 1, 2))
    assert ids_of(a) == ids_of(b) and ids_of(a) != ids_of(c)
    g = Sampling(max_new_tokens=12, temperature=0)
    assert lm.extend(state, g, gen(1)).ids == lm.extend(state, g, gen(99)).ids


def test_stop_strings_end_the_row(engine):
    _, lm = engine
    full = lm.extend(lm.prefill(PROMPT), Sampling(max_new_tokens=12, temperature=0), gen(0))
    stop = full.tokens[5].text.strip() or full.tokens[5].text
    out = lm.extend(lm.prefill(PROMPT), Sampling(max_new_tokens=12, temperature=0, stop=(stop,)), gen(0))
    assert out.finish == "stop" and stop in out.text and full.text.startswith(out.text)
    assert len(out.tokens) <= 6

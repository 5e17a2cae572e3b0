"""Excluding draws through a real llama.cpp server on 127.0.0.1 (the xllamacpp wheel, SmolLM2):
no null moves there (engines/remote/llamacpp_server.py `bans`, banned.py `first`).

The server bans an id with `logit_bias` [[id, false]] (-INFINITY, applied before its top-k and
temperature), and lists raw log-probs, so a banned draw follows q(.) / (1 - q(ban)) and keeps
the unrestricted log-probs the exclusion term (samplers/mh.py) reads. The reference is the same
GGUF in this process (llama.cpp, else transformers on the dequantised weights), whose log q are
exact: the server's proposal terms are top-20 estimates with bounds, and the tolerance below is
what was measured between the two (docs/notebook/2026-12-07-llamacpp-server-ban.md).
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from decision_retry import catalogue, loading, sampling
from decision_retry.choices import describe
from decision_retry.engines.remote import connect
from decision_retry.engines.remote.serve import LocalServer
from decision_retry.engines.remote.wire import Request
from decision_retry.retry import RetryConfig
from decision_retry.samplers import mh
from decision_retry.tokens import Sampling
from tests.helpers import gen

PROMPT = "Write a Python function that reverses a string."
# Tolerances between the server's proposal terms and the in-process engine's (nats), measured
# on one 24-token reply at temperature 0.7 with the in-process llama.cpp engine (same kernels):
# * a token's log p and log q: |d| <= 8.3e-5 and 1.3e-4 (kernel differences of the logits; the
#   server's log q is the middle of its top-20 interval, which must hold the other within this);
#   TOL a token, 2x margin;
# * log(1 - q), the exclusion term's parts: the logit differences move it by up to 4.8e-4
#   (q = 0.90: d log q = 5.2e-5 times q / (1 - q)): 4 TOL for the term. And 1 - q itself is
#   known only to about 1e-7 on either side (the server reports fp32 probabilities, whose
#   spacing below 1 is 6e-8; the in-process log-softmax is fp32 too), so a near-certain
#   token's part differs by up to FP32 / (1 - q): 0.0115 nats measured at 1 - q = 4.9e-6
#   (FP32 / (1 - q) = 0.041 there).
TOL_LLAMACPP, TOL_TRANSFORMERS = 3e-4, 0.5  # transformers: dequantised weights, 0.5 a token
FP32 = 2e-7


def floor(tokens, t: int) -> float:
    """fp32's share of |d log(1 - q(tokens[t]))| between two engines (see FP32)."""
    return FP32 / -math.expm1(tokens[t].logq)


@pytest.fixture(scope="module")
def server():
    with LocalServer("smollm2-135m", parallel=2, alias="smollm2") as srv:
        yield srv


@pytest.fixture(scope="module")
def engine(server):
    return connect(server.url)


@pytest.fixture(scope="module")
def local():
    """The same GGUF in this process: (engine, tolerance on a proposal term)."""
    path = catalogue.resolve("smollm2-135m")
    try:
        return loading.load_llamacpp(path, name="local", threads=1), TOL_LLAMACPP
    except Exception:  # noqa: BLE001 - no in-process llama.cpp here: transformers
        return loading.load_transformers(path, str(path), name="local", threads=1), TOL_TRANSFORMERS


def full_logq(lm, ids: list[int], q: Sampling) -> torch.Tensor:
    """log q over the whole vocabulary after `ids`, in process (V,)."""
    backend = lm.backend
    logits = backend.score(backend.prefill(ids[:-1]), [ids[-1]])  # (1, V)
    return sampling.proposal_logprobs(logits, q.temperature, q.top_k)[0]


def test_the_llamacpp_server_bans_so_fix_runs_without_null_moves(engine):
    assert engine.excludes is True and engine.teacher_forcing is False
    body = engine.dialect.body(Request(ids=(1, 2), n=1, max_new_tokens=1, temperature=0.7,
                                       top_k=None, seed=0, logprobs=20, ban=7))
    assert body["logit_bias"] == [[7, False]]  # false: -INFINITY on the server
    plain = engine.dialect.body(Request(ids=(1, 2), n=1, max_new_tokens=1, temperature=0.7,
                                        top_k=None, seed=0, logprobs=20))
    assert "logit_bias" not in plain
    # fix's defaults resolve as the runner resolves them for this engine
    retry = RetryConfig().resolved(patch=True, teacher_forcing=engine.teacher_forcing,
                                   excludes=engine.excludes)
    assert retry.exclude is True and retry.move == "suffix" and retry.cut_weights == "entropy"
    assert "no null moves" in describe(retry.model_dump(mode="json"))


def test_a_banned_draw_never_returns_the_id_and_keeps_the_raw_logprobs(engine):
    state = engine.prefill(PROMPT)
    one = Sampling(temperature=0.7, max_new_tokens=1)
    free = [engine.extend(state, one, gen(i)).tokens[0] for i in range(12)]
    ban = free[0].top[0].id  # the most likely next token
    hits = sum(t.id == ban for t in free)
    assert hits >= 3  # unbanned, the server draws it often
    drawn = [engine.extend(state, one, gen(i), exclude=ban).tokens[0] for i in range(12)]
    assert all(t.id != ban for t in drawn)
    # the listing is the raw one, the same as an unbanned draw's: logp, entropy, log q bounds
    listed = {a.id: math.log(a.prob) for a in free[0].top}
    for t in drawn:
        assert t.entropy == pytest.approx(free[0].entropy, abs=1e-6)
        assert t.entropy_bounds == pytest.approx(free[0].entropy_bounds, abs=1e-6)
        if t.id in listed:
            assert t.logp == pytest.approx(listed[t.id], abs=1e-5)
    # a longer row: the banned first token, then the rest in a second request from it
    longer = engine.extend(state, Sampling(temperature=0.7, max_new_tokens=6), gen(9), exclude=ban)
    assert longer.tokens[0].id != ban and (len(longer) == 6 or longer.finish == "eos")
    print(f"llama.cpp server ban: unbanned draws hit the banned id {hits}/12 "
          f"(p {free[0].top[0].prob:.3f}), banned draws 0/12")


@pytest.mark.parametrize("top_k", [None, 4], ids=["logit-bias", "top-k-drawn-here"])
def test_banned_draws_follow_q_renormalised_without_the_banned_id(engine, local, top_k):
    """300 seeds: the first token drawn with the most likely id banned, against q(.) / (1 -
    q(ban)) computed in process (sampling.without): a chi-square test. With a top-k proposal
    the server's ban would let the (k+1)-th token in, so the engine draws from the listed top k."""
    lm, _ = local
    state = engine.prefill(PROMPT)
    q = Sampling(temperature=1.0, top_k=top_k, max_new_tokens=1)
    logq = full_logq(lm, list(state.ids), q)
    ban = int(logq.argmax())
    want = sampling.without(logq[None], [ban]).exp()[0]  # (V,)
    n = 300
    seen = Counter(engine.extend(state, q, gen(i), exclude=ban).tokens[0].id for i in range(n))
    assert ban not in seen
    if top_k:
        assert set(seen) <= set(torch.topk(logq, top_k).indices.tolist())
    big = [i for i in range(len(want)) if n * float(want[i]) >= 5]
    cells = [(seen[i], n * float(want[i])) for i in big]
    rest_seen = n - sum(seen[i] for i in big)
    rest_want = n * (1.0 - float(want[big].sum()))
    if rest_want > 1e-9:
        cells.append((rest_seen, rest_want))
    else:
        assert rest_seen == 0
    chi2, df = sum((o - e) ** 2 / e for o, e in cells), len(cells) - 1
    print(f"llama.cpp server banned draw ({'top-k ' + str(top_k) if top_k else 'logit_bias'}): "
          f"chi2 {chi2:.1f}, df {df}, n {n}")
    assert df >= 1 and chi2 < df + 4 * math.sqrt(2 * df)  # mean df, sd sqrt(2 df): 4 sd


def test_excluding_suffix_moves_score_as_the_in_process_engine(engine, local):
    """Every movable cut of one reply: an excluding suffix move through the server, its tokens
    rescored in process (exact log q). The server's proposal term of log A (log q sums and the
    exclusion term) is within the measured tolerance of the in-process one (module comment),
    and its interval holds the in-process value within the same tolerance."""
    lm, tol = local
    q = Sampling(temperature=0.7, max_new_tokens=24)
    x = engine.extend(engine.prefill(PROMPT), q, gen(5))
    exact_x = lm.score(lm.prefill(list(x.prompt_ids)), [t.id for t in x.tokens], q)
    sums, terms, checked = [], [], 0
    for t in range(len(x)):
        if mh.null_at(x.tokens, t):
            continue
        rest = q.model_copy(update={"max_new_tokens": min(6, len(x) - t)})
        y = engine.extend(engine.fork(x, t), rest, gen(100 + t), exclude=x.tokens[t].id)
        assert y.tokens[t].id != x.tokens[t].id
        exact_y = lm.score(lm.fork(exact_x, t), [tok.id for tok in y.tokens[t:]], q)
        got = mh.mh_step_record(x.tokens, y.tokens, t, alpha=4.0, rule=None, verifier_delta=0.0,
                                u=0.5, decode_tokens=len(y) - t, correction=0.0, exclusion=True)
        ref = mh.mh_step_record(exact_x.tokens, exact_y.tokens, t, alpha=4.0, rule=None,
                                verifier_delta=0.0, u=0.5, decode_tokens=len(y) - t,
                                correction=0.0, exclusion=True)
        assert ref.log_accept_lo is None  # in process: exact
        n = len(x) - t + len(y) - t  # tokens in both suffixes
        ends = floor(exact_x.tokens, t) + floor(exact_y.tokens, t)
        # the exclusion term: its point value and its interval (mh.exclusion_bounds)
        term = mh.exclusion_term(x.tokens, y.tokens, t)
        truth = mh.exclusion_term(exact_x.tokens, exact_y.tokens, t)
        lo, hi = mh.exclusion_bounds(x.tokens, y.tokens, t)
        assert lo - 4 * tol - ends <= truth <= hi + 4 * tol + ends
        terms.append((abs(term - truth), 4 * tol + ends))
        # the whole proposal term (log q sums and the exclusion term), then log A's interval
        p_lo, p_hi = got.log_accept_lo - got.log_target, got.log_accept_hi - got.log_target
        assert p_lo - n * tol - ends <= ref.log_proposal <= p_hi + n * tol + ends
        sums.append(abs(got.log_proposal - ref.log_proposal))
        slack = (4.0 + 1.0) * n * tol + ends  # alpha log p sums and the log q sums
        assert got.log_accept_lo - slack <= ref.log_accept <= got.log_accept_hi + slack
        checked += 1
    worst = max(terms, key=lambda dt: dt[0] / dt[1])
    print(f"llama.cpp server excluding moves: {checked} cuts; max |proposal term - in process| "
          f"{max(sums):.2e} nats; max |exclusion term - in process| {max(d for d, _ in terms):.2e} "
          f"(closest to its allowance: {worst[0]:.2e} of {worst[1]:.2e})")
    assert checked >= 8

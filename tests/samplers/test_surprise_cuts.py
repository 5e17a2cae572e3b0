"""Surprise cuts (samplers/surprise.py) are exact: proven against enumeration of p^alpha.

The agent's kernel, without the repository: `Chain.next_cut` on the current reply's surprises
under a second context, a proposal from the cut (suffix or local move), the proposal scored
under that context from the cut on (`surprise.annotate`, as agent/graph.py does), and
`Chain.decide` (samplers/chain.py: the code `fix` runs). The model is test_samplers_exact.py's 121-sequence toy; the second context is a
different table (another seed), so the surprises are not the model's own log-probabilities.
"""

from __future__ import annotations

import collections
import math
from dataclasses import replace

import pytest
import torch

from decision_retry import sampling
from decision_retry.lm import Sampling
from decision_retry.samplers import cuts, local, surprise
from decision_retry.samplers.chain import Chain, RetryConfig, Trajectory, accept, choose_cut
from decision_retry.samplers.cuts import CutRule
from decision_retry.samplers.local import SpanRule
from decision_retry.testing import table_lm

ALPHA, MAX_LEN, PROMPT = 4.0, 4, "ab"
BOUND = 0.05  # TV of a correct kernel here; seeded, so the result is deterministic
SPANS = SpanRule(decision=0.8, ends=(), max_span=2)


@pytest.fixture(scope="module")
def toy():
    lm = table_lm(vocab=4, seed=35, sharpness=1.5, spread=1.0)
    alt_lm = table_lm(vocab=4, seed=7, sharpness=1.5, spread=1.0)
    ctx = surprise.AltContext(alt_lm, alt_lm.prefill("ca"))
    return lm, ctx


@pytest.fixture(scope="module")
def target(toy):
    lm, _ = toy
    return lm.backend.power_distribution(lm.encode(PROMPT), MAX_LEN, ALPHA)


def tv(a: dict, b: dict) -> float:
    return 0.5 * sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b))


def q(n: int) -> Sampling:
    return Sampling(temperature=1.0, max_new_tokens=max(1, n), alternatives=0)


def move(lm, ctx, x, alt_x, cfg: RetryConfig, g, wrong: str | None = None):
    """One move of the agent's kernel: (new x, its no-body state). `wrong="no-correction"` decides
    the same draws without the reverse-cut term."""
    chain = Chain(cfg)
    cut = chain.next_cut(Trajectory([x.tokens], 0.0), g)
    t = cut.index
    span = None
    first = None
    if cfg.cut_token == "nobody":  # y_t from the second context (graph.py's _first_token)
        first = lambda prefix: surprise.draw_first(ctx, alt_x, lm, prefix, t, q(MAX_LEN), g)
    if cfg.move == "local":
        p = local.propose(lm, x, t, cfg.span, q(MAX_LEN), g, cap=MAX_LEN, first=first)
        if p.y is None:  # out of the support: rejected (graph.py records it so)
            return x, alt_x
        y, span = p.y, (p.s, p.m)
    elif first is not None:
        y, _ = surprise.first_then_extend(lm, first(lm.fork(x, t)), t, q(MAX_LEN - t), g)
    else:
        y = lm.extend(lm.fork(x, t), q(MAX_LEN - t), g)
    s = surprise.annotate(ctx, y, q(1), base=alt_x, t=t)
    if wrong is None:
        d = chain.decide(Trajectory([x.tokens], 0.0), [Trajectory([s.y.tokens], 0.0, span=span)],
                         cut, generator=g, decode_tokens=0)
        return (s.y, s.alt) if d.accepted else (x, alt_x)
    u = sampling.uniform(g)
    rec = accept([x.tokens], [s.y.tokens], cut, config=cfg, r_current=0.0, r_proposal=0.0, u=u,
                 decode_tokens=0, span=span)
    log_a = rec.log_accept - (rec.log_cut_correction if wrong == "no-correction" else 0.0)
    ok = u == 0 or math.log(u) < log_a
    return (s.y, s.alt) if ok else (x, alt_x)


def chains(toy, cfg: RetryConfig, law: dict, n: int, moves: int, *, wrong: str | None = None,
           seed0: int = 0) -> dict:
    """Empirical law after `moves` moves of chains started from exact draws of `law`.

    Stationarity, not mixing: from a fresh start this kernel mixes slowly on the toy (TV 0.28
    after 20 moves, 0.07 after 150: the second context is an unrelated table, so the cuts rarely
    land at position 0, where most of p^alpha's mass is decided)."""
    lm, ctx = toy
    start = lm.prefill(PROMPT)
    counts = collections.Counter()
    xs = sorted(law)
    probs = torch.tensor([law[x] for x in xs], dtype=torch.float64)
    for c in range(n):
        g = torch.Generator().manual_seed(seed0 + c)
        x0 = xs[int(torch.multinomial(probs, 1, generator=g))]
        x = replace(lm.score(start, list(x0), q(MAX_LEN)), finish="eos" if x0[-1] == 0 else "length")
        s = surprise.annotate(ctx, x, q(1))
        x, alt_x = s.y, s.alt
        for _ in range(moves):
            x, alt_x = move(lm, ctx, x, alt_x, cfg, g, wrong)
        counts[tuple(t.id for t in x.tokens)] += 1
    return {k: v / n for k, v in counts.items()}


def config(**kw) -> RetryConfig:
    return RetryConfig(alpha=ALPHA, proposal_temperature=1.0, verifier_weight=0.0,
                       cut_weights="surprise", **kw)


def test_surprises_are_the_second_contexts_scores(toy):
    """annotate: alt_logp is log p under the second context (a fresh teacher-forced pass), it
    differs from the model's own logp, and a fork at t re-scores only y[t:]."""
    lm, ctx = toy
    x = lm.extend(lm.prefill(PROMPT), q(MAX_LEN), torch.Generator().manual_seed(3))
    s = surprise.annotate(ctx, x, q(1))
    fresh = ctx.lm.score(ctx.state, [t.id for t in x.tokens], q(1)).tokens
    assert [t.alt_logp for t in s.y.tokens] == pytest.approx([t.logp for t in fresh], abs=1e-9)
    assert [t.alt_logp for t in s.y.tokens] != pytest.approx([t.logp for t in x.tokens], abs=1e-3)
    assert s.positions == len(x)
    y = lm.extend(lm.fork(x, 1), q(MAX_LEN - 1), torch.Generator().manual_seed(9))
    sy = surprise.annotate(ctx, y, q(1), base=s.alt, t=1)
    assert sy.positions == len(y) - 1
    again = ctx.lm.score(ctx.state, [t.id for t in y.tokens], q(1)).tokens
    assert [t.alt_logp for t in sy.y.tokens] == pytest.approx([t.logp for t in again], abs=1e-9)
    with pytest.raises(surprise.MissingScores, match="no score under the no-body context"):
        choose_cut([x.tokens], config(), torch.Generator())


def test_the_cut_reads_the_surprises_not_the_entropies(toy):
    """With eps = 0 the cut distribution is s_t^beta / Z: on a reply whose most surprising token
    (under the second context) is not its highest-entropy one, the cuts land there."""
    lm, ctx = toy
    for seed in range(50):
        x = surprise.annotate(ctx, lm.extend(lm.prefill(PROMPT), q(MAX_LEN),
                                             torch.Generator().manual_seed(seed)), q(1)).y
        s = surprise.surprises(x.tokens)
        h = [t.entropy for t in x.tokens]
        if len(x) >= 3 and max(range(len(s)), key=s.__getitem__) != max(range(len(h)), key=h.__getitem__):
            break
    cfg = config(cut=CutRule(eps=0.0))
    assert cfg.rule.kind == "level"
    g = torch.Generator().manual_seed(0)
    hits = collections.Counter(choose_cut([x.tokens], cfg, g).index for _ in range(4000))
    want = cuts.weights(s, CutRule(kind="level", beta=4))
    for t in range(len(x)):
        assert hits[t] / 4000 == pytest.approx(want[t] / sum(want), abs=0.03)


@pytest.mark.parametrize("mv,kind,moves", [("suffix", "entropy-jump", 5), ("suffix", "softmax", 5),
                                           ("local", "entropy-jump", 10)])
@pytest.mark.slow
def test_surprise_cuts_keep_p_alpha(toy, target, mv, kind, moves):
    """A kernel is exact for pi iff it leaves pi invariant: chains started from exact draws of
    p^alpha stay on it after several moves (suffix or local moves; s^beta or softmax(s / tau)
    weights). Measured TV 0.018 (suffix, 10 moves), 0.017 (local); noise alone is ~0.015."""
    cfg = config(cut=CutRule(kind=kind, tau=1.0, eps=0.1), move=mv, span=SPANS)
    assert tv(chains(toy, cfg, target, 1000, moves, seed0=10_000), target) < BOUND


@pytest.mark.slow
def test_surprise_cuts_without_the_correction_leave_p_alpha(toy, target):
    """Dropping log c(t | x') - log c(t | x) is not a correct kernel: started on p^alpha, the
    chains drift off it (the same draws, only the decision differs)."""
    cfg = config(cut=CutRule(eps=0.0))
    exact = chains(toy, cfg, target, 600, 5, seed0=10_000)
    wrong = chains(toy, cfg, target, 600, 5, seed0=10_000, wrong="no-correction")
    assert tv(exact, target) < BOUND
    assert tv(wrong, target) > 3 * BOUND  # measured 0.42 after 10 moves (1000 chains)


# -- the cut token drawn from the no-body context (RetryConfig.cut_token = "nobody") -----------
@pytest.mark.parametrize("mv,weights", [("suffix", "surprise"), ("suffix", "entropy"),
                                        ("local", "surprise")])
@pytest.mark.slow
def test_the_no_body_cut_token_keeps_p_alpha(toy, target, mv, weights):
    """y_t ~ q_B(. | B, x_<t), the rest from q: with position t's proposal terms read from B for
    both directions, chains started on p^alpha stay on it."""
    cfg = config(cut=CutRule(eps=0.1), move=mv, span=SPANS, cut_token="nobody")
    cfg = cfg.model_copy(update={"cut_weights": weights})
    assert tv(chains(toy, cfg, target, 1000, 5 if mv == "suffix" else 10, seed0=20_000),
              target) < BOUND


def test_the_no_body_first_token_stops_like_one_extend(toy):
    """first_then_extend ends where one `extend` from t would: at the first stop string, even
    one that needs y_t (the continuation's own window starts after it), with the length cap
    counted from t."""
    lm, ctx = toy
    x = surprise.annotate(ctx, lm.extend(lm.prefill(PROMPT), q(MAX_LEN),
                                         torch.Generator().manual_seed(1)), q(1))
    stops = Sampling(temperature=1.0, max_new_tokens=3, alternatives=0, stop=("ab", "cc"))
    seen = collections.Counter()
    for seed in range(300):
        g = torch.Generator().manual_seed(seed)
        first = surprise.draw_first(ctx, x.alt, lm, lm.fork(x.y, 0), 0, stops, g)
        y, more = surprise.first_then_extend(lm, first, 0, stops, g)
        text, head = y.text, "".join(k.text for k in y.tokens[:-1])
        assert len(y) <= 3 and more >= len(y) - 1
        assert y.tokens[0].alt_logq is not None and y.tokens[0].alt_logp is not None
        assert not any(st in head for st in stops.stop)  # it never ran past a stop
        assert (y.finish == "stop") == any(st in text for st in stops.stop)
        assert y.finish == "stop" or y.tokens[-1].id == 0 or len(y) == 3
        seen[y.finish] += 1
        seen["needs y_t"] += y.finish == "stop" and len(y) == 2
    assert seen["stop"] > 0 and seen["needs y_t"] > 0 and seen["length"] + seen["eos"] > 0

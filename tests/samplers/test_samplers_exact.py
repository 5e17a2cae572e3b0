"""The samplers are proven against exact enumeration of p^alpha on a toy model (design.md §2).

The toy: vocabulary {EOS, a, b, c}, at most 4 generated tokens (so lengths vary), next-token
distributions fixed per context with varied sharpness so some contexts are hesitant and others
near-certain. p^alpha over its 121 finished sequences is computed exactly; many independent
seeded chains of each sampler must land on it within a stated total-variation bound.

The proposal runs at temperature 1 here: exactness holds for any proposal, and the broad one
mixes within a few steps on this toy (at 1/alpha, the p^alpha mode is rarely proposed and short
chains have not converged yet — a mixing question, not a correctness one).
"""

from __future__ import annotations

import collections
import math
from dataclasses import replace

import pytest
import torch

from decision_retry import sampling
from decision_retry.lm import Sampling
from decision_retry.samplers import CutRule, PowerSampler, SamplerConfig, cuts, local, mh, sample
from decision_retry.samplers.chain import Chain, RetryConfig, Trajectory
from decision_retry.samplers.local import SpanRule
from decision_retry.testing import table_lm
from decision_retry.tokens import Token

ALPHA, MAX_LEN, PROMPT, CHAINS = 4.0, 4, "ab", 1500
BOUND = 0.05  # TV of a correct sampler; seeded, so the result is deterministic
# Sampling noise alone: E[TV] ~ 0.5 * sum_x sqrt(2 p(x) / (pi N)) ~ 0.015 for this target.


@pytest.fixture(scope="module")
def toy():
    lm = table_lm(vocab=4, seed=35, sharpness=1.5, spread=1.0)
    return lm, lm.encode(PROMPT)


def tv(a: dict, b: dict) -> float:
    return 0.5 * sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b))


def entropies(backend, prompt, x) -> list[float]:
    out = []
    for i in range(len(x)):
        lp = torch.log_softmax(backend.logits([*prompt, *x[:i]]).double(), -1)
        out.append(float(-(lp.exp() * lp).sum()))
    return out


def tilted(toy, factor) -> dict:
    """p^alpha(x) * factor(x, entropies), normalised."""
    lm, prompt = toy
    target = lm.backend.power_distribution(prompt, MAX_LEN, ALPHA)
    w = {x: p * factor(x, entropies(lm.backend, prompt, x)) for x, p in target.items()}
    z = sum(w.values())
    return {x: v / z for x, v in w.items()}


class Uncorrected(RetryConfig):
    """`fix`'s chain with the reverse-cut term left out: only here, to show the bias it removes."""

    @property
    def corrected(self) -> bool:
        return False


def uncorrected(lm, config: SamplerConfig) -> PowerSampler:
    sampler = PowerSampler(lm, config)
    sampler.kernel = Chain(Uncorrected(**config.retry.model_dump()))
    return sampler


def empirical(toy, config: SamplerConfig, chains: int = CHAINS, *, correct: bool = True) -> dict:
    lm, _ = toy
    run = (lambda s: sample(lm, PROMPT, config, seed=s)) if correct else (
        lambda s: uncorrected(lm, config).run(PROMPT, torch.Generator().manual_seed(s)))
    counts = collections.Counter(tuple(t.id for t in run(s).state.tokens) for s in range(chains))
    return {x: n / chains for x, n in counts.items()}


def config(sampler: str, **kw) -> SamplerConfig:
    base = dict(alpha=ALPHA, proposal_temperature=1.0, max_tokens=MAX_LEN, block=MAX_LEN,
                steps=20, alternatives=0)
    return SamplerConfig(sampler=sampler, **{**base, **kw})


@pytest.fixture(scope="module")
def target(toy):
    lm, prompt = toy
    return lm.backend.power_distribution(prompt, MAX_LEN, ALPHA)


def test_toy_target_is_not_trivial(toy, target):
    assert len(target) == 121
    assert max(target.values()) < 0.6
    assert sum(p > 0.02 for p in target.values()) >= 5
    # low temperature alone is far from p^alpha: what MH has to correct
    low = empirical(toy, config("low-temp", proposal_temperature=1 / ALPHA), chains=600)
    assert tv(low, target) > 0.3


@pytest.mark.slow
def test_ec_mh_matches_p_alpha(toy, target):
    emp = empirical(toy, config("rewind", cut=CutRule(kind="entropy-jump", beta=4, eps=0.1)))
    assert tv(emp, target) < BOUND


@pytest.mark.slow
def test_ec_mh_softmax_cut_matches_p_alpha(toy, target):
    emp = empirical(toy, config("rewind", cut=CutRule(kind="softmax", tau=0.5, eps=0.1)))
    assert tv(emp, target) < BOUND


@pytest.mark.slow
def test_ec_mh_without_cut_correction_samples_p_alpha_times_z(toy, target):
    """With eps = 0, c(t|x) = w_t / Z(x): the uncorrected chain's stationary law is p^alpha * Z."""
    rule = CutRule(kind="entropy-jump", beta=4, eps=0.0)
    biased = tilted(toy, lambda x, h: sum(cuts.weights(h, rule)))
    assert tv(biased, target) > 0.1  # the toy separates the two laws
    emp = empirical(toy, config("rewind", cut=rule), correct=False)
    assert tv(emp, biased) < BOUND
    assert tv(emp, target) > 2 * BOUND


@pytest.mark.slow
def test_uniform_mh_matches_p_alpha(toy, target):
    emp = empirical(toy, config("uniform-mh", steps=50))
    assert tv(emp, target) < BOUND


@pytest.mark.slow
def test_uniform_mh_needs_the_length_correction_when_lengths_vary(toy, target):
    """c(t|x) = 1/L(x): dropping log L(x) - log L(x') samples p^alpha * L(x) instead."""
    by_length = tilted(toy, lambda x, h: len(x))
    emp = empirical(toy, config("uniform-mh", steps=50), chains=800, correct=False)
    assert tv(emp, by_length) < 2 * BOUND
    assert tv(emp, target) > 0.2


@pytest.mark.slow
def test_egps_multiple_try_matches_p_alpha(toy, target):
    emp = empirical(toy, config("egps", tries=4, steps=8), chains=1000)
    assert tv(emp, target) < BOUND


@pytest.mark.slow
def test_verifier_tilt_matches_tilted_target(toy):
    """pi ~ p^alpha * exp(lam * r(x)) with r = 1 when the text contains 'c'."""
    lam = 1.5
    r = lambda text: 1.0 if "c" in text else 0.0
    lm, _ = toy
    names = lm.backend.names
    want = tilted(toy, lambda x, h: float(torch.tensor(lam * r("".join(names[i] for i in x))).exp()))
    cfg = config("rewind", verifier_weight=lam, stop_on_pass=False)
    counts = collections.Counter(
        tuple(t.id for t in sample(lm, PROMPT, cfg, seed=s, verifier=r).state.tokens)
        for s in range(CHAINS)
    )
    emp = {x: n / CHAINS for x, n in counts.items()}
    assert tv(emp, want) < BOUND


def test_a_passing_proposal_ends_the_run(toy):
    """stop_on_pass: the first proposal that passes is returned, even if MH would reject it."""
    lm, _ = toy
    names = lm.backend.names
    r = lambda text: 1.0 if text.startswith("b") else 0.0
    for sampler in ("rewind", "egps"):
        cfg = config(sampler, tries=4, steps=30, verifier_weight=0.0)
        ended = [sample(lm, PROMPT, cfg, seed=s, verifier=r) for s in range(40)]
        for res in ended:
            text = "".join(names[t.id] for t in res.state.tokens)
            assert res.passed == text.startswith("b")
        passed = [res for res in ended if res.passed]
        assert len(passed) >= 10  # without lambda, MH alone would almost never keep "b..."
        assert all(len(res.steps) < 30 for res in passed)  # it stopped at the pass
        kept = [sample(lm, PROMPT, cfg.model_copy(update={"stop_on_pass": False}), seed=s,
                       verifier=r) for s in range(40)]
        assert sum("".join(names[t.id] for t in k.state.tokens).startswith("b") for k in kept) <= 2


# -- local moves (samplers/local.py) ---------------------------------------------------------
# A kernel is exact for pi iff it leaves pi invariant. So: draw x_0 ~ pi exactly (enumeration),
# run a few moves, and the chains must still be distributed as pi. This needs no mixing (a local
# kernel changes one span per move, so from a fresh start it converges slowly on this toy, where
# most of pi's mass is the one-token answer); a wrong kernel moves the chains off pi at once.
DECISION_SPANS = SpanRule(decision=0.8, ends=(), max_span=2)  # 0.8 nats: ~30% of positions
STATEMENT_SPANS = SpanRule(decision=None, ends=("c",), max_span=3)  # "c" closes a statement
MOVES, STATIONARY_CHAINS = 10, 1000


def stationary(toy, law: dict, config: SamplerConfig, verifier=None, chains=STATIONARY_CHAINS,
               moves=MOVES, sampler=PowerSampler):
    """Empirical law after `moves` moves of chains started from exact draws of `law`."""
    lm, _ = toy
    xs = sorted(law)
    probs = torch.tensor([law[x] for x in xs], dtype=torch.float64)
    start = lm.prefill(PROMPT)
    q = Sampling(temperature=config.q_temperature, max_new_tokens=MAX_LEN, alternatives=0)
    counts = collections.Counter()
    for s in range(chains):
        g = torch.Generator().manual_seed(10_000 + s)
        x0 = xs[int(torch.multinomial(probs, 1, generator=g))]
        state = replace(lm.score(start, list(x0), q), finish="eos" if x0[-1] == 0 else "length")
        out, _, _ = sampler(lm, config, verifier=verifier).chain(state, moves, g)
        counts[tuple(t.id for t in out.tokens)] += 1
    return {x: n / chains for x, n in counts.items()}


@pytest.mark.parametrize("span", [DECISION_SPANS, STATEMENT_SPANS], ids=["decision", "statement"])
@pytest.mark.slow
def test_local_move_keeps_p_alpha(toy, target, span):
    emp = stationary(toy, target, config("rewind", move="local", span=span))
    assert tv(emp, target) < BOUND


@pytest.mark.slow
def test_local_move_keeps_the_verifier_tilted_target(toy):
    lam = 1.5
    lm, _ = toy
    names = lm.backend.names
    r = lambda text: 1.0 if "c" in text else 0.0
    want = tilted(toy, lambda x, h: float(torch.tensor(lam * r("".join(names[i] for i in x))).exp()))
    cfg = config("rewind", move="local", span=DECISION_SPANS, verifier_weight=lam,
                 stop_on_pass=False)
    assert tv(stationary(toy, want, cfg, verifier=r), want) < BOUND


@pytest.mark.slow
def test_mixed_local_suffix_and_restart_moves_keep_p_alpha(toy, target):
    cfg = config("rewind", move="mixed", local_share=0.5, restart_share=0.2, span=DECISION_SPANS)
    assert tv(stationary(toy, target, cfg), target) < BOUND


@pytest.mark.slow
def test_opening_suffix_moves_keep_p_alpha(toy, target):
    """A cut before the first "c" (the toy's first line) regenerates the whole suffix, later cuts
    are local: the kernel is chosen from (t, x_<t), shared by both directions, so pi stays.
    (Choosing it from x_<=t instead, which the proposal redraws, measured TV 0.28.)"""
    first = SpanRule(decision=None, ends=("c",), max_span=1, opening="c")
    lm, _ = toy
    names = lm.backend.names
    tok = lambda text: Token(id=0, text=text, logp=0.0, logq=0.0, entropy=0.0)
    kinds = collections.Counter(local.kernel_at([tok(names[i]) for i in x], t, first)
                                for x in target for t in range(len(x)))
    assert kinds["suffix"] > 0 and kinds["local"] > 0  # both kernels have work on this toy
    cfg = config("rewind", move="local", span=first, restart_share=0.1)
    assert tv(stationary(toy, target, cfg), target) < BOUND


class WrongLocal(PowerSampler):
    """Local moves with a wrong accounting (only here, to show the bias): "stale-tail" keeps the
    kept tail's old scores, "tail-as-proposal" counts the kept tail as proposed."""

    accounting = "exact"

    def _move(self, x, r, cap, tried, g):
        t = self.kernel.next_cut(Trajectory([x.tokens], r), g).index  # always local: no opening
        p = local.propose(self.lm, x, t, self.cfg.span, self._q(cap), g, cap=cap, defer=True)
        if p.y is not None:  # rescored; "stale-tail": with the tail's scores from x
            y = p.rescored()
            p = replace(p, y=replace(y, tokens=p.y.tokens) if self.accounting == "stale-tail"
                        else y, rescore=None)
        corr = 0.0 if p.y is None else mh.log_cut_correction(x.tokens, p.y.tokens, t, self.cfg.cut)
        u = sampling.uniform(g)
        rec = local.step_record(x.tokens, p, alpha=self.cfg.alpha, correction=corr,
                                verifier_delta=0.0, u=u)
        if p.y is not None and self.accounting == "tail-as-proposal":  # the suffix formula
            xs, ys = x.tokens[t:], p.y.tokens[t:]
            log_a = (self.cfg.alpha * (sum(k.logp for k in ys) - sum(k.logp for k in xs))
                     + sum(k.logq for k in xs) - sum(k.logq for k in ys) + corr)
            rec = rec.model_copy(update={"accepted": u == 0 or math.log(u) < log_a})
        return (p.y if p.y is not None and rec.accepted else x), r, rec, tried


@pytest.mark.parametrize("accounting,moves,gap", [
    ("stale-tail", MOVES, 2 * BOUND),  # measured 0.14
    ("tail-as-proposal", 30, 0.06),  # measured 0.068; the exact kernel stays at 0.03 (600 chains)
])
@pytest.mark.slow
def test_local_move_without_its_accounting_leaves_p_alpha(toy, target, accounting, moves, gap):
    """Keeping the tail's old scores, or counting the kept tail as proposed (the suffix-move
    formula), is not a correct kernel: started on p^alpha, the chains drift off it."""
    cfg = config("rewind", move="local", span=DECISION_SPANS)
    wrong = type("Wrong", (WrongLocal,), {"accounting": accounting})
    assert tv(stationary(toy, target, cfg, chains=600, moves=moves, sampler=wrong), target) > gap


def test_local_move_spans_and_costs(toy):
    """The span rule on a real draw: z stops where the rule ends a span on y, the kept tail is
    rescored exactly (as a fresh teacher-forced pass), out-of-support draws are rejected."""
    lm, _ = toy
    q = Sampling(temperature=1.0, max_new_tokens=MAX_LEN, alternatives=0)
    start = lm.prefill(PROMPT)
    x = replace(lm.score(start, [3, 3, 2, 1], q), finish="length")
    seen = collections.Counter()
    for s in range(200):
        p = local.propose(lm, x, 0, DECISION_SPANS, q, torch.Generator().manual_seed(s), cap=MAX_LEN)
        assert p.s == local.span_end(x.tokens, 0, DECISION_SPANS)
        assert p.prefill_positions == len(x) - p.s
        assert p.decode_tokens in (p.m, p.m + 1)  # + the discarded look-ahead at a decision
        seen[p.ended if p.y is not None else "rejected"] += 1
        if p.y is None:
            continue
        y = p.y.tokens
        assert local.span_end(y, 0, DECISION_SPANS) == p.m  # the reverse move's span is z
        assert [t.id for t in y[p.m:]] == [t.id for t in x.tokens[p.s:]]
        fresh = lm.score(start, [t.id for t in y], q).tokens
        flat = lambda ts: [v for t in ts for v in (t.logp, t.logq, t.entropy)]
        assert flat(y) == pytest.approx(flat(fresh), abs=1e-6)
    assert seen["rejected"] > 0 and seen["boundary"] + seen["max_span"] > 0

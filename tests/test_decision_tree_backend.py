"""The decision-tree toy behind benchmarks/decision_tree.py: entropies, truth and verifier."""

from __future__ import annotations

import math

import pytest
import torch

from decision_retry.lm import Sampling
from decision_retry.samplers import SamplerConfig, sample
from decision_retry.testing import DecisionTreeBackend, decision_tree_lm


def test_entropy_spikes_only_at_decisions():
    lm = decision_tree_lm(24, 3)
    state = lm.extend(lm.prefill("x"), Sampling(max_new_tokens=24), torch.Generator().manual_seed(0))
    assert len(state) == 24 and lm.backend.positions == (4, 12, 20)
    for i, tok in enumerate(state.tokens):
        if i in lm.backend.positions:
            assert tok.entropy == pytest.approx(1.36, abs=0.01) and tok.text in "ABCD"
        else:
            assert tok.entropy < 1e-4 and tok.text == "."


def test_right_choice_is_second_most_likely_and_verifier_counts_it():
    backend = DecisionTreeBackend(16, 2, positions=[1, 9], seed=3)
    for pos, want in zip(backend.positions, backend.right):
        probs = torch.softmax(backend.table[pos], -1)
        ranked = probs.argsort(descending=True).tolist()
        assert backend.names[ranked[1]] == want
        assert float(probs[ranked[1]]) == pytest.approx(0.28, abs=1e-6)
    text = ["."] * 16
    assert backend.verify("".join(text)) == 0.0
    text[1] = backend.right[0]
    assert backend.verify("".join(text)) == 0.5
    text[9] = backend.right[1]
    assert backend.verify("".join(text)) == 1.0
    assert backend.verify("".join(text[:5])) == 0.5  # too short: later decisions are wrong


def test_forks_and_batched_tries_keep_positions():
    lm = decision_tree_lm(12, 2)
    x = lm.extend(lm.prefill("x"), Sampling(max_new_tokens=12), torch.Generator().manual_seed(1))
    prefix = lm.fork(x, 5)
    ys = lm.extend_many(prefix, Sampling(max_new_tokens=7),
                        [torch.Generator().manual_seed(s) for s in range(4)])
    for y in ys:
        assert y.text[:5] == x.text[:5] and len(y) == 12
        assert [t.entropy > 1 for t in y.tokens] == [t.entropy > 1 for t in x.tokens]


def test_verifier_tilted_ec_mh_finds_the_right_decisions():
    lm = decision_tree_lm(32, 3)
    cfg = SamplerConfig(sampler="rewind", max_tokens=32, block=32, steps=500, alternatives=0,
                        verifier_weight=10.0)
    result = sample(lm, "x", cfg, seed=0, verifier=lm.backend.verify)
    assert result.passed and lm.backend.verify(result.text) == 1.0
    # at a proposal temperature of 1/alpha, target and proposal terms cancel on this toy
    assert all(math.isclose(s.log_target + s.log_proposal, 0.0, abs_tol=1e-3) for s in result.steps)

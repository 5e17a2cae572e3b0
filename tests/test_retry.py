"""The shared rewind logic: where cuts land, and the acceptance ratio's parts."""

import math

import torch

from decision_retry.retry import RetryConfig, accept, choose_cut, cut_entropies
from decision_retry.samplers.cuts import CutRule
from decision_retry.tokens import Token


def toks(entropies, logp=-0.5, logq=-0.4):
    return tuple(Token(id=i, text=f"t{i}", logp=logp, logq=logq, entropy=h)
                 for i, h in enumerate(entropies))


def test_entropy_cut_prefers_the_spike_and_spans_turns():
    turns = [toks([0.0, 0.1, 0.0]), toks([0.0, 2.5, 0.1, 0.0])]
    cfg = RetryConfig(strategy="entropy-cut", cut=CutRule(eps=0.0))
    hits = {choose_cut(turns, cfg, torch.Generator().manual_seed(s)).index for s in range(200)}
    assert hits == {4, 1} or hits == {4}  # the jump at turn 1 token 1 dominates; eps = 0
    cut = choose_cut(turns, cfg, torch.Generator().manual_seed(0))
    assert (cut.turn, cut.position) in {(1, 1), (0, 1)}


def test_stop_token_is_not_a_cut_site_and_restart_does_not_cut():
    turns = [toks([0.0, 0.3, 3.0])]
    assert cut_entropies(turns, RetryConfig(), stops=[True]) == [0.0, 0.3, 0.0]
    cfg = RetryConfig(strategy="argmax-cut")
    assert choose_cut(turns, cfg, torch.Generator(), stops=[True]).index == 1
    assert choose_cut(turns, cfg, torch.Generator(), stops=[False]).index == 2
    assert choose_cut(turns, cfg, torch.Generator(), frozenset({2}), stops=[False]).index == 1
    for s in ("from-end", "restart"):
        assert choose_cut(turns, RetryConfig(strategy=s), torch.Generator()) is None


def test_accept_parts_and_the_verifier_tilt():
    x = [toks([1.0, 2.0, 0.5], logp=-1.0, logq=-0.8)]
    y = [toks([1.0, 0.2], logp=-0.5, logq=-0.3)]
    cfg = RetryConfig(alpha=4.0, verifier_weight=2.0, cut=CutRule(eps=0.1))
    cut = choose_cut(x, cfg.model_copy(update={"strategy": "argmax-cut"}), torch.Generator())
    assert cut.index == 1
    rec = accept(x, y, cut, config=cfg, r_current=0.0, r_proposal=0.5, u=0.5, decode_tokens=1)
    # target: alpha * (sum logp y[1:] - sum logp x[1:]) = 4 * (-0.5 - -2.0)
    assert math.isclose(rec.log_target, 4 * 1.5)
    assert math.isclose(rec.log_proposal, -1.6 - -0.3)
    assert math.isclose(rec.log_verifier, 1.0)
    assert rec.log_cut_correction != 0.0  # c(1|y) differs from c(1|x): other entropies, lengths
    total = rec.log_target + rec.log_proposal + rec.log_cut_correction + rec.log_verifier
    assert math.isclose(rec.log_accept, total)
    assert rec.accepted == (math.log(0.5) < total)
    heuristic = accept(x, y, cut, config=RetryConfig(strategy="argmax-cut"), r_current=0,
                       r_proposal=0, u=0.5, decode_tokens=1)
    assert heuristic.log_cut_correction == 0.0

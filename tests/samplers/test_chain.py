"""The chain every integration runs (samplers/chain.py): what it decides and what it tries next."""

import pytest
import torch

from decision_retry.samplers.chain import Chain, RetryConfig, Trajectory, verdict
from decision_retry.samplers.cuts import CutRule
from decision_retry.tokens import Token


def toks(entropies, logp=-0.5, logq=-0.4):
    return tuple(Token(id=i, text=f"t{i}", logp=logp, logq=logq, entropy=h)
                 for i, h in enumerate(entropies))


X = Trajectory([toks([0.0, 0.3, 3.0, 1.0])], r=0.0)
BETTER = Trajectory([toks([0.0, 0.3, 3.0, 1.0], logp=-0.1)], r=0.5)
WORSE = Trajectory([toks([0.0, 0.3, 3.0, 1.0], logp=-9.0)], r=0.0)


def test_a_first_attempt_and_a_chainless_strategy_always_move():
    g = torch.Generator().manual_seed(0)
    d = Chain(RetryConfig()).decide(None, [X], None, generator=g, decode_tokens=0)
    assert d.moved_to == 0 and d.step is None and d.tried == ()
    for s in ("from-end", "restart"):
        cut = Chain(RetryConfig(strategy=s)).next_cut(X, g)
        d = Chain(RetryConfig(strategy=s)).decide(X, [WORSE], cut, generator=g, decode_tokens=4)
        assert d.moved_to == 0 and d.step is None


def test_restart_is_a_cut_at_the_first_token_and_from_end_has_none():
    g = torch.Generator().manual_seed(0)
    two = Trajectory([(), toks([0.4, 2.0])], r=0.0)
    cut = Chain(RetryConfig(strategy="restart")).next_cut(two, g)
    assert (cut.turn, cut.position, cut.index, cut.move) == (1, 0, 0, "restart")
    assert Chain(RetryConfig(strategy="from-end")).next_cut(two, g) is None


def test_a_rejected_cut_is_remembered_and_a_new_state_starts_afresh():
    chain = Chain(RetryConfig(cut=CutRule(eps=0.0)))
    g = torch.Generator().manual_seed(1)
    cut = chain.next_cut(X, g)
    rejected = chain.decide(X, [WORSE], cut, tried=(7,), generator=g, decode_tokens=2)
    assert rejected.moved_to is None and rejected.step.log_accept < -20
    assert rejected.tried == (7, cut.index)
    accepted = chain.decide(X, [BETTER], cut, tried=(7,), generator=g, decode_tokens=2)
    assert accepted.moved_to == 0 and accepted.tried == ()


def test_a_new_chain_starts_after_n_proposals_in_a_row_left_the_state():
    """new_chain_after = 2: two proposals from X that did not move the chain, then the next
    attempt is a fresh one (position 0) that the chain takes without an MH decision, however
    unlikely, and starts with no tried cuts; one rejection short of it, the usual cut."""
    chain = Chain(RetryConfig(cut=CutRule(eps=0.0), new_chain_after=2))
    g = torch.Generator().manual_seed(1)
    tried: tuple[int, ...] = ()
    for _ in range(2):
        cut = chain.next_cut(X, g, tried)
        assert cut.move == "suffix" and cut.index > 0
        d = chain.decide(X, [WORSE], cut, tried=tried, generator=g, decode_tokens=2)
        assert d.moved_to is None
        tried = d.tried
    cut = chain.next_cut(X, g, tried)
    assert (cut.index, cut.move, cut.kernel.fresh) == (0, "new-chain", True)
    d = chain.decide(X, [WORSE], cut, tried=tried, generator=g, decode_tokens=4)
    assert d.moved_to == 0 and d.step is None and d.tried == ()
    assert chain.next_cut(WORSE, g, d.tried).move == "suffix"  # the new chain cuts as usual


@pytest.mark.parametrize("bad", ["restart", "from-end"])
def test_new_chains_need_a_strategy_that_cuts(bad):
    with pytest.raises(ValueError, match="new_chain_after"):
        RetryConfig(new_chain_after=3, strategy=bad)


def test_argmax_starts_a_new_chain_after_n_cuts_tried_in_its_chain():
    chain = Chain(RetryConfig(argmax=True, new_chain_after=2))
    g = torch.Generator().manual_seed(0)
    tried: tuple[int, ...] = ()
    for _ in range(2):
        cut = chain.next_cut(X, g, tried)
        tried = chain.decide(X, [BETTER], cut, tried=tried, generator=g, decode_tokens=1).tried
    assert tried == (2, 3)  # moved each time, yet the list is the chain's
    assert chain.next_cut(X, g, tried).move == "new-chain"


def test_argmax_cut_keeps_its_tried_cuts_for_the_whole_run():
    """Else an accepted but failing proposal would send it back to the same token."""
    chain = Chain(RetryConfig(argmax=True))
    g = torch.Generator().manual_seed(0)
    tried: tuple[int, ...] = ()
    seen = []
    for _ in range(3):
        cut = chain.next_cut(X, g, tried)
        seen.append(cut.index)
        tried = chain.decide(X, [BETTER], cut, tried=tried, generator=g, decode_tokens=1).tried
    assert seen == [2, 3, 1]  # highest entropy first, never the same token twice


def test_a_passing_proposal_is_moved_to_whatever_the_draw():
    chain = Chain(RetryConfig())
    g = torch.Generator().manual_seed(0)
    cut = chain.next_cut(X, g)
    passing = Trajectory(WORSE.turns, r=1.0, passed=True)
    d = chain.decide(X, [passing], cut, generator=g, decode_tokens=2)
    assert d.step is not None and not d.step.accepted and d.moved_to == 0


def test_r_is_the_fraction_passing_and_one_only_when_the_run_passed():
    assert verdict(True, 1.0) == 1.0
    assert verdict(False, 0.5) == 0.5
    assert verdict(False, 1.0) == 1.0  # no failure counted, yet not a pass: `passed` decides


def test_the_names_say_what_runs():
    """`fix`'s default run is a rewind that cuts by surprise with local and def-line suffix moves
    (once resolved) and new chains, and `bench`'s "default" strategy is that run."""
    from decision_retry.choices import FIX_RUN, parse_variant
    from decision_retry.samplers.chain import describe

    kw = parse_variant("default")
    default = RetryConfig(**kw)
    assert kw == FIX_RUN and default.strategy == "rewind"
    resolved = default.resolved(patch=True, teacher_forcing=True)
    assert describe(resolved) == ("rewind (surprise cuts, local moves, def-line suffix moves, "
                                  "a new chain after 4 unmoved proposals)")
    assert describe(default.resolved(patch=False, teacher_forcing=True)) == \
        "rewind (entropy cuts, suffix moves, a new chain after 4 unmoved proposals)"
    assert describe(RetryConfig(cut_weights="uniform", restart_share=0.2)) == \
        "rewind (uniform cuts, suffix moves, restart 0.2)"
    assert describe(RetryConfig(argmax=True, cut_weights="surprise")) == \
        "rewind (argmax surprise cuts, suffix moves)"
    assert describe(RetryConfig(strategy="egps")) == \
        "egps (4 tries a cut, entropy cuts, suffix moves)"
    assert describe(RetryConfig(strategy="from-end")).startswith("from-end")
    assert parse_variant("default+restart0.3")["restart_share"] == 0.3


@pytest.mark.parametrize(("former", "today"), [
    ({"strategy": "entropy-cut"}, {}),
    ({"strategy": "argmax-cut", "cut_weights": "surprise"}, {"argmax": True,
                                                             "cut_weights": "surprise"}),
    ({"strategy": "uniform-cut"}, {"cut_weights": "uniform"}),
    ({"strategy": "uniform-cut", "cut_weights": "auto"}, {"cut_weights": "uniform"}),
    # a stored uniform-cut run that scored its replies (surprise) or scaled by code classes
    ({"strategy": "uniform-cut", "cut_weights": "surprise", "cut": {"eps": 0.2}},
     {"cut_weights": "surprise", "cut": {"kind": "uniform", "eps": 0.2}}),
    ({"strategy": "uniform-cut", "cut_weights": "code"},
     {"cut_weights": "code", "cut": {"kind": "uniform"}}),
])
def test_former_names_are_the_same_runs(former, today):
    """A config naming a former strategy (a stored run, a caller) is today's run that ran the
    same chain: the same cut rule, the same scoring, the same correction."""
    old, new = RetryConfig.model_validate(former), RetryConfig(**today)
    assert old == new and old.strategy == "rewind"
    assert (old.rule, old.scored, old.corrected) == (new.rule, new.scored, new.corrected)
    if former["strategy"] == "uniform-cut":
        assert old.rule.kind == "uniform"


def test_moves_are_objects_parsed_once():
    from decision_retry.samplers import moves
    from decision_retry.samplers.local import SpanRule

    mixture = RetryConfig(move="mixed", restart_share=0.25, local_share=0.5).kernel
    g = torch.Generator().manual_seed(0)
    drawn = {type(mixture.pick(g)).__name__ for _ in range(200)}
    assert drawn == {"Suffix", "Local", "Restart"}
    assert RetryConfig(move="suffix").kernel.pick(g) is moves.SUFFIX  # nothing drawn, no choice
    opening = moves.Local(SpanRule(opening="c"))
    assert opening.at(toks([0.1, 0.2]), 1) is moves.SUFFIX  # before the opening closes
    assert RetryConfig(cut_token="nobody").first.scored

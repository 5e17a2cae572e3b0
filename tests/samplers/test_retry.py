"""The shared rewind logic: where cuts land, and the acceptance ratio's parts."""

import math

import torch

from decision_retry.choices import DEF_HEADER
from decision_retry.retry import RetryConfig, accept, choose_cut, cut_entropies, cut_scale
from decision_retry.samplers.cuts import CutRule
from decision_retry.samplers.local import SpanRule
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


def test_a_cut_in_the_replys_opening_is_a_suffix_move():
    """With span.opening = DEF_HEADER (bench +defline, fix --def-line suffix), a local move cut
    in the imports or the def line (which pick the function) regenerates the whole rest; after
    the header closes, cuts are local. Multi-line signatures count as the header."""
    texts = ["from", " typing", " import", " List", "\n", "\n", "def", " f", "(x,", "\n",
             "  y", ")", ":", "\n", "    return", " x", "\n"]
    turn = tuple(Token(id=i, text=t, logp=-0.5, logq=-0.4, entropy=1.0)
                 for i, t in enumerate(texts))
    cfg = RetryConfig(move="local", span=SpanRule(opening=DEF_HEADER), cut=CutRule(kind="uniform"))
    kinds = {}
    for s in range(300):
        cut = choose_cut([turn], cfg, torch.Generator().manual_seed(s))
        kinds[cut.index] = cut.move
    assert kinds == {i: "suffix" if i <= 13 else "local" for i in range(len(texts))}
    plain = RetryConfig(move="local", cut=CutRule(kind="uniform"))
    assert choose_cut([turn], plain, torch.Generator().manual_seed(0)).move == "local"


def test_accept_parts_and_the_verifier_tilt():
    x = [toks([1.0, 2.0, 0.5], logp=-1.0, logq=-0.8)]
    y = [toks([1.0, 0.2], logp=-0.5, logq=-0.3)]
    cfg = RetryConfig(alpha=4.0, verifier_weight=2.0, cut=CutRule(eps=0.1))
    cut = choose_cut(x, cfg.model_copy(update={"argmax": True}), torch.Generator())
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
    heuristic = accept(x, y, cut, config=RetryConfig(argmax=True), r_current=0,
                       r_proposal=0, u=0.5, decode_tokens=1)
    assert heuristic.log_cut_correction == 0.0


# -- moves: local, mixed, restart (the agent's rewind, end to end) ---------------------------

import pytest

from decision_retry.agent.runner import FixConfig, fix
from decision_retry.errors import BadInput
from decision_retry.testing import scripted_lm
from decision_retry.trace.store import TraceStore
from tests.helpers import fixture_repo

# the units fixture's function with its bug choice on the return line and a tail of lines after it
TAIL = ["    # scale first,\n", "    # then shift.\n", "    # (comment lines: kept by a local move)\n"]
UNITS_LOCAL = [
    'def celsius_to_fahrenheit(celsius: float) -> float:\n    """Degrees Celsius to degrees '
    'Fahrenheit."""\n    return celsius * 9 / 5 ',
    {"choice": {"-": 0.7, "+": 0.3}},
    " 32\n", *TAIL, "```",
]


def run_fix(tmp_path, seed, events=None, **retry):
    cfg = FixConfig(retry=RetryConfig(proposal_temperature=1.0, **retry), seed=seed,
                    budget_tokens=40, max_attempts=6)
    with TraceStore(tmp_path / f"traces-{seed}.db") as store:
        on_event = (lambda kind, data: events.append((kind, data))) if events is not None else None
        return fix(fixture_repo(tmp_path / f"s{seed}", "units"), cfg, lm=scripted_lm(UNITS_LOCAL),
                   store=store, on_event=on_event)


def test_local_move_resamples_the_line_and_keeps_the_tail(tmp_path):
    """Seed 1 writes the bug first. A local rewind at the bug token redraws it and the rest of
    its line only (2 decode tokens, where a suffix move decodes all 6 after the cut); the kept
    comment lines and the closing fence (4 tokens) are teacher-forced, not decoded."""
    events = []
    res = run_fix(tmp_path, 1, events, move="local", cut=CutRule(eps=0.0), exclude=False,
                  delayed=False)  # the seeded scenario of one-stage decisions
    assert res.fixed and res.attempts >= 2
    assert "+    return celsius * 9 / 5 + 32" in res.diff
    assert res.steps and all(s.cut_position == 1 for s in res.steps)  # the one choice token
    assert all(s.decode_tokens == 2 and s.proposal_length == 2 for s in res.steps)
    retries = res.attempts - 1  # the passing one ends the run before its MH step
    assert res.decode_tokens == len(UNITS_LOCAL) + 2 * retries
    prefilled = [d["prefilled"] for k, d in events if k == "model" and "prefilled" in d]
    assert prefilled == [(len(TAIL) + 1) * (i + 1) for i in range(retries)]


def test_an_excluding_rewind_always_changes_the_token_it_cuts(tmp_path):
    """`fix`'s default where the engine can ban a token: the rewind at the bug token ('-', the
    one uncertain token) draws the other choice, so the first rewind fixes it: 2 attempts, 2
    decode tokens after the first reply, and no MH step (a passing proposal ends the run)."""
    res = run_fix(tmp_path, 1, move="local", cut=CutRule(eps=0.0))
    assert res.fixed and res.attempts == 2 and not res.steps
    assert "+    return celsius * 9 / 5 + 32" in res.diff
    assert res.decode_tokens == len(UNITS_LOCAL) + 2


def test_a_new_chain_is_a_fresh_root_attempt_after_n_rejected_proposals(tmp_path):
    """Every reply fails ('*' or '/', never '+'), and from the likely '*' the excluded draw '/'
    is rejected (log A = 4 log(0.02 / 0.98) < -15): with new_chain_after = 2, each chain is its
    first reply and two rejected proposals, and the next attempt is a fresh reply with no
    parent, taken without an MH step."""
    wrong = [UNITS_LOCAL[0], {"choice": {"*": 0.98, "/": 0.02}}, *UNITS_LOCAL[2:]]
    cfg = FixConfig(retry=RetryConfig(proposal_temperature=1.0, move="local", exclude=True,
                                      cut=CutRule(eps=0.0), new_chain_after=2),
                    seed=3, budget_tokens=200, max_attempts=7)
    events = []
    with TraceStore(tmp_path / "traces.db") as store:
        res = fix(fixture_repo(tmp_path / "repo", "units"), cfg, lm=scripted_lm(wrong),
                  store=store, on_event=lambda kind, data: events.append(kind))
        tree = store.load(res.run_id)
    assert events.count("new-chain") == 2
    assert not res.fixed and res.attempts == 7
    roots = [b.index for b in tree.branches if b.parent_id is None]
    assert roots == [0, 3, 6]
    assert len(res.steps) == 4 and not any(s.accepted for s in res.steps)
    assert all(s.cut_position == 1 for s in res.steps)  # the one uncertain token


def test_restart_moves_start_over_inside_the_chain(tmp_path):
    """restart_share = 1: every move is a fresh attempt from the prompt (cut at 0), accepted by
    MH with no cut correction."""
    res = run_fix(tmp_path, 1, restart_share=1.0)
    assert res.steps
    for s in res.steps:
        assert s.cut_position == 0 and s.log_cut_correction == 0.0
        assert s.decode_tokens == sum(1 for _ in UNITS_LOCAL)  # the whole reply, every time


def test_local_moves_need_the_patch_protocol_and_a_single_try_strategy():
    with pytest.raises(ValueError, match="single-try"):
        RetryConfig(strategy="egps", move="local")
    from decision_retry.agent import definitions
    from decision_retry.agent.actions import ToolsProtocol
    from decision_retry.agent.graph import FixAgent

    cfg = FixConfig(protocol="tools", retry=RetryConfig(move="local"))
    tools = ToolsProtocol(definitions.load("tools"), task=None)
    with pytest.raises(BadInput, match="--protocol patch"):
        FixAgent(lm=scripted_lm(UNITS_LOCAL), ws=None, recorder=None, protocol=tools, config=cfg,
                 base_sha="", generator=torch.Generator())


def test_auto_moves_are_local_only_where_local_moves_apply(tmp_path):
    """`fix --move auto`: local on the patch protocol with an in-process engine and a single-try
    cut strategy; suffix for tools, a server that cannot score a kept tail, egps, from-end. The
    run records the concrete move, and an explicit local move on such an engine is refused
    before anything runs."""
    auto = RetryConfig(move="auto")
    assert auto.resolved(patch=True, teacher_forcing=True).move == "local"
    assert auto.resolved(patch=False, teacher_forcing=True).move == "suffix"
    assert auto.resolved(patch=True, teacher_forcing=False).move == "suffix"
    for s in ("egps", "from-end", "restart"):
        assert RetryConfig(strategy=s, move="auto").resolved(patch=True,
                                                             teacher_forcing=True).move == "suffix"
    assert RetryConfig(move="mixed").resolved(patch=False, teacher_forcing=False).move == "mixed"
    res = run_fix(tmp_path, 1, move="auto", cut=CutRule(eps=0.0), exclude=False)
    with TraceStore(tmp_path / "traces-1.db") as store:
        assert store.load(res.run_id).run.config["retry"]["move"] == "local"
    assert res.steps and all(s.decode_tokens == 2 for s in res.steps)  # local: the line only


def test_auto_cut_weights_are_surprise_only_where_replies_can_be_scored():
    """`fix --cut-weights auto`: surprise on the patch protocol with an engine that scores and a
    cut strategy (egps included: it reads the same weights); entropy for tools, a server that
    cannot score, from-end and restart; explicit weights are kept; left unresolved, `auto`
    reads as plain entropy (no surprise scoring, no code classes)."""
    auto = RetryConfig(cut_weights="auto")
    assert auto.resolved(patch=True, teacher_forcing=True).cut_weights == "surprise"
    assert auto.resolved(patch=False, teacher_forcing=True).cut_weights == "entropy"
    assert auto.resolved(patch=True, teacher_forcing=False).cut_weights == "entropy"
    assert RetryConfig(strategy="egps", cut_weights="auto").resolved(
        patch=True, teacher_forcing=True).cut_weights == "surprise"
    for s in ("from-end", "restart"):
        assert RetryConfig(strategy=s, cut_weights="auto").resolved(
            patch=True, teacher_forcing=True).cut_weights == "entropy"
    code = RetryConfig(cut_weights="code", exclude=False, delayed=True, nobody_scoring="exact",
                       walk_fresh=True)
    assert code.resolved(patch=True, teacher_forcing=True) is code
    # a new run walks earlier fresh replies; a stored run without the field resumes as it ran
    assert RetryConfig().resolved(patch=True, teacher_forcing=True).walk_fresh is True
    assert not RetryConfig().walk_fresh
    both = RetryConfig(move="auto", cut_weights="auto").resolved(patch=True, teacher_forcing=True)
    assert (both.move, both.cut_weights) == ("local", "surprise")
    assert not auto.surprise and not auto.scored
    # the no-body scores: bulk (cut weights only) unless the cut token is drawn from them;
    # unresolved, exact (a stored run resumes as it ran)
    assert auto.resolved(patch=True, teacher_forcing=True).nobody_scoring == "bulk"
    nb = RetryConfig(cut_token="nobody").resolved(patch=True, teacher_forcing=True)
    assert nb.nobody_scoring == "exact" and auto.nobody_exact and not both.nobody_exact
    with pytest.raises(ValueError, match="nobody_scoring=exact"):
        RetryConfig(cut_token="nobody", nobody_scoring="bulk")
    assert cut_scale([toks([1.0, 2.0, 0.5])], auto) is None

    from decision_retry.agent.graph import FixAgent

    lm = scripted_lm(UNITS_LOCAL)
    lm.teacher_forcing = False  # as a remote server that only samples
    with pytest.raises(BadInput, match="teacher forcing"):  # a one-turn (patch) protocol
        FixAgent(lm=lm, ws=None, recorder=None, protocol=object(), base_sha="",
                 config=FixConfig(retry=RetryConfig(move="local")), generator=torch.Generator())


@pytest.mark.parametrize("budget", [13, 14])
def test_egps_never_spends_more_than_the_budget(tmp_path, budget):
    """With fewer tokens left than tries, egps draws fewer tries (each gets one token at least)
    instead of K one-token tries past the budget (seed 1 spent 15 of 13 and of 14 before)."""
    cfg = FixConfig(retry=RetryConfig(strategy="egps", proposal_temperature=1.0), seed=1,
                    budget_tokens=budget, max_attempts=30)
    with TraceStore(tmp_path / "t.db") as store:
        res = fix(fixture_repo(tmp_path, "units"), cfg, lm=scripted_lm(UNITS_LOCAL), store=store)
    assert res.attempts >= 2 and res.decode_tokens <= budget

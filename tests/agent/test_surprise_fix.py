"""`fix --cut-weights surprise` end to end: replies scored under the no-body context where the
chain reads them (the first attempt, every state a cut is drawn from, every proposal whose
delayed decision reaches its second stage), cuts and their MH corrections computed from those
scores, the trace keeping them, resume replaying them."""

from __future__ import annotations

import json

import pytest
import torch

from decision_retry.agent import nobody
from decision_retry.agent.resume import resume
from decision_retry.agent.runner import FixConfig, fix
from decision_retry.errors import BadInput
from decision_retry.retry import RetryConfig
from decision_retry.samplers import cuts, surprise
from decision_retry.testing import scripted_lm, tiny_llama
from decision_retry.trace.store import TraceStore, db_path
from tests.helpers import fixture_repo, run_cli

# two choices: a docstring word and the bug; every other token is certain (surprise 0)
SCRIPT = [
    'def celsius_to_fahrenheit(celsius: float) -> float:\n    """',
    {"choice": {"Degrees": 0.5, "Temperature in degrees": 0.5}},
    ' Celsius to degrees Fahrenheit."""\n    return celsius * 9 / 5 ',
    {"choice": {"-": 0.6, "+": 0.4}},
    " 32\n",
    "```",
]


def surprise_config(seed: int, budget: int = 200, attempts: int = 12, **retry) -> FixConfig:
    # exclude=False: these runs check the surprise scores behind MH steps; with the excluding
    # default the scripted bug is fixed by the first rewind, with no MH step to check
    rc = RetryConfig(proposal_temperature=1.0, cut_weights="surprise", **{"exclude": False, **retry})
    return FixConfig(retry=rc, seed=seed, budget_tokens=budget, max_attempts=attempts,
                     test_timeout=600)  # a loaded machine: the tests' own time is not the point


def failing_seed() -> int:
    """A seed whose run rewinds at least twice before it fixes the bug."""
    for seed in range(40):
        lm = scripted_lm(SCRIPT)
        x = lm.extend(lm.prefill([1]), _q(), torch.Generator().manual_seed(seed))
        if "- 32" in x.text:
            return seed
    raise AssertionError("no failing seed")


def _q():
    from decision_retry.lm import Sampling

    return Sampling(temperature=1.0, max_new_tokens=20)


def scored(turn) -> bool:
    """Was the turn scored under the no-body context? (An unscored rewind keeps the scores of
    the tokens before its cut, which it shares with the attempt it was cut from.)"""
    return bool(turn.tokens) and all(k.alt_logp is not None and k.alt_logq is not None
                                     for k in turn.tokens)


def check_trace(tree, rule) -> int:
    """The replies the chain read are scored: the first, every current attempt, every proposal
    whose decision reached stage 2 (its cut correction computed from the recorded surprises of
    both branches), and no other (a stage-1 rejection and the passing reply are never scored);
    returns the no-body positions the run must have scored (the scripted engine's inexact
    passes continue from any position, so bulk and exact scoring both score from the cut)."""
    turns = {t.branch_id: t for t in tree.turns}
    root = next(b for b in tree.branches if b.parent_id is None)
    want_scored = {root.id} | {s.current_branch_id for s in tree.mh_steps} | {
        s.proposal_branch_id for s in tree.mh_steps if s.stage != 1}
    assert {t.branch_id for t in tree.turns if scored(t)} == want_scored
    assert tree.mh_steps
    for s in tree.mh_steps:
        if s.stage == 1:  # rejected before the cut correction: none computed
            assert s.log_cut_correction == 0.0 and not s.accepted
            continue
        x, y = turns[s.current_branch_id].tokens, turns[s.proposal_branch_id].tokens
        sx, sy = surprise.surprises(x), surprise.surprises(y)
        sx[-1], sy[-1] = 0.0, 0.0  # both replies ended at the stop string: the closing token
        want = cuts.log_prob(sy, s.cut_position, rule) - cuts.log_prob(sx, s.cut_position, rule)
        assert s.log_cut_correction == pytest.approx(want, abs=1e-9)
    # the first reply in full, each proposal from its cut on
    cut_at = {b.id: b.cut.position for b in tree.branches if b.cut is not None}
    return sum(len(t.tokens) - cut_at.get(t.branch_id, 0) for t in tree.turns if scored(t))


@pytest.mark.parametrize("scoring", ["bulk", "exact"])
def test_surprise_cuts_in_fix_with_the_scripted_model(tmp_path, scoring):
    """The scripted model ignores its prompt, so under the no-body context each token's score is
    its own logp: the certain tokens have surprise 0, and with eps = 0 every cut lands on one of
    the two choices; the trace holds the scores; the scoring passes count as prefill; exact and
    bulk (fix's default) scoring alike."""
    seed = failing_seed()
    cfg = surprise_config(seed, cut=cuts.CutRule(eps=0.0),
                          **({} if scoring == "bulk" else {"nobody_scoring": "exact"}))
    with TraceStore(tmp_path / "traces.db") as store:
        res = fix(fixture_repo(tmp_path, "units"), cfg, lm=scripted_lm(SCRIPT), store=store)
        tree = store.load(res.run_id)
    assert res.fixed and res.attempts >= 2
    for t in filter(scored, tree.turns):
        assert [k.alt_logp for k in t.tokens] == pytest.approx([k.logp for k in t.tokens])
    assert {s.cut_position for s in tree.mh_steps} <= {1, 3}  # the docstring word, the bug
    assert tree.run.config["retry"]["nobody_scoring"] == scoring  # bulk: fix's default
    assert res.prefill_positions == check_trace(tree, cfg.retry.rule)


@pytest.mark.slow
def test_surprise_scores_come_from_the_no_body_context(tmp_path):
    """A tiny real transformer: the reply's scores under the no-body prompt (the patch prompt
    with the function's body replaced by `...`) differ from its own, equal a fresh scoring pass
    of that prompt, and drive the cut corrections."""
    lm = tiny_llama(vocab=64, seed=3)
    repo = fixture_repo(tmp_path, "units")
    cfg = surprise_config(0, budget=400, attempts=3, cut=cuts.CutRule(eps=0.1))
    with TraceStore(tmp_path / "traces.db") as store:
        res = fix(repo, cfg, lm=lm, store=store)
        tree = store.load(res.run_id)
    assert not res.fixed and res.attempts == 3
    first = next(t for t in tree.turns if t.index == 0 and
                 next(b for b in tree.branches if b.id == t.branch_id).parent_id is None)
    no_body = first.prompt  # every function shown, its body replaced by `...`
    for src in (repo / "units.py").read_text().strip().split("\n\n\n")[1:]:
        no_body = no_body.replace(src, nobody.stub(src))
    assert "def celsius_to_fahrenheit" in no_body and "    ...\n" in no_body
    assert "* 9 / 5" not in no_body and "* 9 / 5" in first.prompt
    prefix = lm.encode_text("```python\n")
    ids = [k.id for k in first.tokens]
    fresh = lm.score(lm.prefill(lm.encode([{"role": "user", "content": no_body}]) + prefix), ids,
                     _q().model_copy(update={"temperature": 1.0})).tokens
    assert [k.alt_logp for k in first.tokens] == pytest.approx([k.logp for k in fresh], abs=1e-4)
    assert [k.alt_logp for k in first.tokens] != pytest.approx([k.logp for k in first.tokens],
                                                               abs=1e-3)
    rule = cfg.retry.rule
    turns = {t.branch_id: t for t in tree.turns}
    for s in (s for s in tree.mh_steps if s.stage != 1):  # no stop string: nothing zeroed
        x, y = turns[s.current_branch_id].tokens, turns[s.proposal_branch_id].tokens
        want = (cuts.log_prob(surprise.surprises(y), s.cut_position, rule)
                - cuts.log_prob(surprise.surprises(x), s.cut_position, rule))
        assert s.log_cut_correction == pytest.approx(want, abs=1e-9)
        by_entropy = (cuts.log_prob([k.entropy for k in y], s.cut_position, RetryConfig().rule)
                      - cuts.log_prob([k.entropy for k in x], s.cut_position, RetryConfig().rule))
        assert s.log_cut_correction != pytest.approx(by_entropy, abs=1e-6)
    assert any(s.stage == 2 for s in tree.mh_steps)


@pytest.mark.slow
def test_an_interrupted_surprise_run_resumes_to_the_same_end(tmp_path):
    seed = failing_seed()
    cfg = surprise_config(seed)
    with TraceStore(tmp_path / "a.db") as store:
        whole = fix(fixture_repo(tmp_path / "a", "units"), cfg, lm=scripted_lm(SCRIPT), store=store)
        whole_tree = store.load(whole.run_id)
    assert whole.fixed and len(whole.steps) >= 1

    def stop_after_first_step(kind, data):
        if kind == "mh":
            raise KeyboardInterrupt("test")

    with TraceStore(tmp_path / "b.db") as store:
        with pytest.raises(KeyboardInterrupt):
            fix(fixture_repo(tmp_path / "b", "units"), cfg, lm=scripted_lm(SCRIPT), store=store,
                on_event=stop_after_first_step)
        again = resume("latest", store=store, lm=scripted_lm(SCRIPT))
        tree = store.load(again.run_id)
    assert again.resumed >= 2 and not again.diverged
    assert again.fixed and again.diff == whole.diff
    assert [s.log_accept for s in again.steps] == [s.log_accept for s in whole.steps]
    assert again.prefill_positions == whole.prefill_positions
    assert [scored(t) for t in tree.turns] == [scored(t) for t in whole_tree.turns]
    assert any(scored(t) for t in tree.turns)


@pytest.mark.slow
def test_surprise_weights_need_the_patch_protocol_and_a_scoring_engine(tmp_path):
    from decision_retry.agent import definitions
    from decision_retry.agent.actions import ToolsProtocol
    from decision_retry.agent.graph import FixAgent

    cfg = FixConfig(protocol="tools", retry=RetryConfig(cut_weights="surprise"))
    tools = ToolsProtocol(definitions.load("tools"), task=None)
    with pytest.raises(BadInput, match="needs --protocol patch"):
        FixAgent(lm=scripted_lm(SCRIPT), ws=None, recorder=None, protocol=tools, config=cfg,
                 base_sha="", generator=torch.Generator())
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"segments": SCRIPT}))
    out = run_cli("fix", str(fixture_repo(tmp_path, "units")), "--model", f"scripted:{script}",
                  "--protocol", "tools",
                  "--cut-weights", "surprise", home=tmp_path / "home")
    assert out.returncode == 2 and "needs --protocol patch" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_fix_defaults_to_surprise_cuts_where_replies_can_be_scored(tmp_path):
    """`fix` without --cut-weights: the run records surprise weights on the patch protocol (and
    scores every reply under the no-body context), entropy weights with --protocol tools (which
    has no no-body context: no error, unlike an explicit --cut-weights surprise)."""
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"segments": SCRIPT}))
    seed = failing_seed()
    for protocol, want in (("patch", "surprise"), ("tools", "entropy")):
        home = tmp_path / f"home-{protocol}"
        out = run_cli("fix", str(fixture_repo(tmp_path / protocol, "units")), "--model",
                      f"scripted:{script}", "--protocol", protocol, "--seed", seed,
                      "--max-attempts", 2, "--json", home=home)
        assert out.returncode in (0, 1), out.stderr
        with TraceStore(db_path(home)) as store:
            tree = store.load(json.loads(out.stdout)["run_id"])
        assert tree.run.config["retry"]["cut_weights"] == want
        first = next(t for t in tree.turns if tree.branch(t.branch_id).parent_id is None)
        assert scored(first) == (want == "surprise")  # the first reply: a cut is drawn from it
        assert want == "surprise" or not any(map(scored, tree.turns))

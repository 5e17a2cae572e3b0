"""`fix`'s run inside a user's LangGraph graph: local moves, no null moves, delayed acceptance and
surprise cuts, through the nodes (scripted model, real checkpointer), and every decision the one
`Chain.decide` makes (its log A recomputed here from the recorded tokens, term by term)."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest

from decision_retry.choices import DEFAULT_RUN
from decision_retry.langgraph import KEY, chainstate, invoke, tokens_of
from decision_retry.langgraph.model import DEFAULT_RETRY, derived_generator
from decision_retry.lm import Sampling
from decision_retry.samplers import cuts
from decision_retry.samplers.chain import Chain, RetryConfig, cut_entropies, movable
from decision_retry.testing import scripted_lm, table_lm
from tests.langgraph.lg_user_graph import OPERATOR, SCRIPT, build, decided, question


def thread(name: str) -> dict:
    return {"configurable": {"thread_id": name}}


def run(lm, name: str, *, seeds=range(40), want=lambda done: True, **kw):
    """The first seed whose run rewinds and satisfies `want` (its decided attempts)."""
    for seed in seeds:
        graph, model, _ = build(lm, seed=seed, **{"retry": DEFAULT_RETRY, **kw})
        config = thread(f"{name}-{seed}")
        final = invoke(graph, question(), config)
        done = decided(graph, config)
        if final[KEY]["attempts"] >= 2 and want(done):
            return final, done, model, seed
    raise AssertionError(f"no seed in {seeds} gives the run wanted")


def test_default_run_makes_local_moves_that_keep_the_tail_and_change_the_cut_token():
    lm = scripted_lm(SCRIPT)
    final, done, model, _ = run(
        lm, "local", want=lambda done: any(d["cut"]["move"] == "local" for d in done[1:]))
    dr = final[KEY]
    assert dr["status"] == "passed" and final["messages"][-1].content.endswith("return age >= 18\n")
    # what ran: fix's run resolved for an in-process engine with no second context
    run_ = RetryConfig.model_validate(dr["config"]["retry"])
    assert (run_.move, run_.cut_weights, run_.excluding, run_.delayed) == (
        "local", "entropy", True, True)
    assert model.stats["local"] >= 1 and model.stats["local"] + model.stats["suffix"] == len(done) - 1
    for before, after in pairwise(done):
        cut, x = after["cut"], before["chain"]["turns"][0]
        y = after["turns"][0]
        t = cut["position"]
        # the tokens before the cut are kept; the cut token changed (no null move)
        assert y["ids"][:t] == x["ids"][:t] and y["kept"] == t
        assert y["ids"][t] != x["ids"][t] and cut["ban"] == x["ids"][t]
        if cut["move"] == "local":
            # one span to the end of the line, the rest of the reply kept
            s, m, e = after["span"]  # one call: flattened positions are the call's
            assert y["ids"][t + m:] == x["ids"][s:] and s + e == len(x["ids"])
            assert "\n" in y["pieces"][t + m - 1] or t + m == len(y["ids"])
            if t == 1:  # the comment: the operator after it is kept as it was
                assert y["pieces"][OPERATOR] == x["pieces"][OPERATOR]
        else:  # a suffix move: only before the def line closes (def-line suffix moves)
            assert t == 0 or "\n" not in "".join(x["pieces"][:t])
    steps = dr["steps"]
    assert [s["move"] for s in steps] == [d["cut"]["move"] for d in done[1:]]
    assert all(s.get("stage") in (1, 2) for s in steps)  # delayed acceptance: the stage reached


def check_decisions(final: dict, done: list[dict], seed: int) -> int:
    """Recompute each recorded step from the recorded tokens (independently of the chain's code
    but for the cut probabilities): target, proposal (span, later calls, exclusion; position t's
    log q read under the second context with the no-body cut token), cut correction, verifier;
    and re-run `Chain.decide` on the same values with the node's generator: the same decision.
    Returns how many local moves were followed by a later call."""
    cfg = RetryConfig.model_validate(final[KEY]["config"]["retry"])
    later = 0
    for n, (before, after) in enumerate(pairwise(done), start=2):
        chain, cut, step = before["chain"], after["cut"], after["steps"][-1]
        xs, ys = [tokens_of(t) for t in chain["turns"]], [tokens_of(t) for t in after["turns"]]
        x, y = [k for t in xs for k in t], [k for t in ys for k in t]
        i = cut["index"]
        if cfg.cut_token == "nobody":  # y_t was drawn under the second context
            x[i] = x[i].model_copy(update={"logq": x[i].alt_logq})
            y[i] = y[i].model_copy(update={"logq": y[i].alt_logq})
        target = cfg.alpha * (sum(k.logp for k in y[i:]) - sum(k.logp for k in x[i:]))
        if cut["move"] == "local":
            s, m, e = after["span"]
            prop = (sum(k.logq for k in x[i:s]) + sum(k.logq for k in x[s + e:])
                    - sum(k.logq for k in y[i:i + m]) - sum(k.logq for k in y[i + m + e:]))
            later += len(xs) > cut["turn"] + 1
        else:
            prop = sum(k.logq for k in x[i:]) - sum(k.logq for k in y[i:])
        prop += math.log1p(-math.exp(x[i].logq)) - math.log1p(-math.exp(y[i].logq))
        verifier = cfg.verifier_weight * (after["verdict"] - chain["r"])
        assert step["log_target"] == pytest.approx(target, abs=1e-9)
        assert step["log_proposal"] == pytest.approx(prop, abs=1e-9)
        assert step["log_verifier"] == pytest.approx(verifier)
        if step["stage"] == 2:  # the proposal was scored (as `fix`: only where stage 2 is reached)
            corr = (cuts.log_prob(cut_entropies(ys, cfg), i, cfg.rule, None, movable(ys, cfg))
                    - cuts.log_prob(cut_entropies(xs, cfg), i, cfg.rule, None, movable(xs, cfg)))
            assert step["log_cut_correction"] == pytest.approx(corr, abs=1e-9)
            assert step["log_accept"] == pytest.approx(target + prop + corr + verifier, abs=1e-9)
        else:  # rejected by the first stage: the correction was not computed
            assert step["log_accept"] == pytest.approx(target + prop + verifier, abs=1e-9)
        # the node's decision is Chain.decide's on the same values and the same draws
        d = Chain(cfg).decide(
            chainstate.trajectory(chain, tokens_of),
            [chainstate.trajectory({**after, "r": after["verdict"]}, tokens_of,
                                   after["status"] == "passed")],
            chainstate.cut_point(cut, cfg), tried=tuple(chain["tried"]),
            generator=derived_generator(seed, "rewind", n), decode_tokens=step["decode_tokens"])
        assert d.step.model_dump() == {k: v for k, v in step.items()
                                       if k in d.step.model_dump()}
        assert d.accepted == (after["chain"]["turns"] == after["turns"])
    return later


def test_every_decision_is_chain_decide_with_log_a_term_by_term():
    lm = scripted_lm(SCRIPT)
    final, done, _, seed = run(
        lm, "terms", calls=2,
        want=lambda done: any(d["cut"]["move"] == "local" and d["cut"]["turn"] == 0
                              for d in done[1:]))
    assert check_decisions(final, done, seed) >= 1  # a local move in call 0, call 1 after it


def test_the_no_body_cut_token_draws_under_the_second_context():
    """cut_token="nobody": the cut's new token comes from the second context (with the current
    one banned there), and log A reads its log q there for both directions. On a toy model whose
    next-token table depends on the prompt, so the second context really differs."""
    lm = table_lm(vocab=4, seed=35, sharpness=1.5, spread=1.0)

    def nobody(state: dict) -> str:
        return "c"

    retry = RetryConfig(**{**DEFAULT_RUN, "cut_token": "nobody", "span": {"opening": None}})
    final, done, model, seed = run(lm, "nbtoken", retry=retry, nobody=nobody,
                                   sampling=Sampling(temperature=1.0, max_new_tokens=4),
                                   want=lambda done: len(done) >= 4)
    run_ = RetryConfig.model_validate(final[KEY]["config"]["retry"])
    assert (run_.cut_token, run_.cut_weights, run_.move) == ("nobody", "surprise", "local")
    assert final[KEY]["status"] == "exhausted"  # the toy writes no is_adult: every check fails
    x = tokens_of(done[0]["chain"]["turns"][0])
    assert any(k.alt_logq != pytest.approx(k.logq) for k in x)  # the two contexts disagree
    check_decisions(final, done, seed)
    for before, after in pairwise(done):
        t, x, y = after["cut"]["position"], before["chain"]["turns"][0], after["turns"][0]
        assert y["ids"][t] != x["ids"][t]
    assert model.stats["local"] >= 1


# A reply whose only movable token cannot be remade by a local move: with the current token
# banned, the other one either ends the line where the reply had ended (no tail to keep) or
# ends the reply where it had a tail. Every local draw falls outside the support (local.py).
STUCK = ["def is_adult(age):\n", {"choice": {"    return age > 18": 0.5,
                                             "    return age >= 18\n": 0.5}}]


def test_a_local_draw_outside_the_support_replays_the_attempt_and_is_rejected():
    lm = scripted_lm(STUCK)
    for seed in range(40):
        graph, model, _ = build(lm, seed=seed, retry=DEFAULT_RETRY, max_attempts=4)
        config = thread(f"stuck-{seed}")
        final = invoke(graph, question(), config)
        if final[KEY]["attempts"] > 1:
            break
    dr, done = final[KEY], decided(graph, config)
    assert dr["status"] == "exhausted" and dr["attempts"] == 4
    assert model.stats["out_of_support"] == 3 and model.stats["replayed"] == 3
    for step in dr["steps"]:
        assert step["move"] == "local" and step["log_accept"] == -math.inf
        assert not step["accepted"] and step["decode_tokens"] == 1
        assert step["rejected"] == "the span stopped where the sequence had ended"
    # the chain never moved; the user's graph ran on the replayed reply, at no decode cost
    first = done[0]["chain"]["turns"][0]["ids"]
    assert all(d["chain"]["turns"][0]["ids"] == first for d in done)
    assert final["messages"][-1].content == "".join(done[0]["chain"]["turns"][0]["pieces"][:-1])
    assert dr["spent"] == len(first) + 3


def test_surprise_cuts_score_every_reply_under_the_second_context():
    lm = scripted_lm(SCRIPT)

    def nobody(state: dict) -> list[dict]:  # the request as the user states it, no code shown
        return [{"role": "user", "content": "Write is_adult(age) (18 or older)."}]

    final, done, _, _ = run(lm, "surprise", nobody=nobody)
    dr = final[KEY]
    run_ = RetryConfig.model_validate(dr["config"]["retry"])
    assert (run_.move, run_.cut_weights, run_.excluding) == ("local", "surprise", True)
    assert dr["status"] == "passed" and dr["prefilled"] > 0
    for d in done:
        for turn in d["turns"]:  # every reply, first and proposed, carries its scores
            assert len(turn["alt_logp"]) == len(turn["ids"]) == len(turn["alt_logq"])
        if d["next_cut"] is not None:
            cut, x = d["next_cut"], d["chain"]["turns"][0]
            assert cut["surprise"] == pytest.approx(-x["alt_logp"][cut["position"]])
    # the scripted model ignores its prompt: the surprise of a token is -log p, so the cut rule
    # read these values (`level` weights on surprises, not entropy jumps)
    x = tokens_of(done[0]["chain"]["turns"][0])
    assert cut_entropies([x], run_) == pytest.approx([min(-k.logp, 50.0) for k in x])


def test_the_second_context_can_be_the_messages_with_a_tools_output_hidden():
    """`nobody` may return messages as the state holds them (LangChain messages or dicts): they
    are rendered as the call's own prompt is, with its system prompt; `hide_tool_output` blanks
    the named tools' results and nothing else."""
    from langchain_core.messages import HumanMessage, ToolMessage

    from decision_retry.langgraph import hide_tool_output, model_node
    from decision_retry.langgraph.model import chat

    lm = table_lm(vocab=4, seed=35)  # its prompt ids follow the text
    hide = hide_tool_output("read_file")
    messages = [HumanMessage("fix f"), ToolMessage("def f(): return 1", tool_call_id="1",
                                                   name="read_file"),
                ToolMessage("ok", tool_call_id="2", name="run")]
    node = model_node(lm, system="be brief", nobody=lambda s: hide(s["messages"]),
                      sampling=Sampling(temperature=1.0, max_new_tokens=3))
    out = node({"messages": messages})
    shown = chat([messages[0], ToolMessage("(not shown)", tool_call_id="1", name="read_file"),
                  messages[2]], "be brief")
    assert node._alt[0] == tuple(lm.encode(shown)) != tuple(lm.encode(chat(messages, "be brief")))
    assert len(out[KEY]["turns"][0]["alt_logp"]) == len(out[KEY]["turns"][0]["ids"])
    assert messages[1].content == "def f(): return 1"  # the state itself is not changed
    dicts = [{"role": "tool", "name": "read_file", "content": "x"}, {"role": "tool", "content": "y"}]
    assert [m["content"] for m in hide(dicts)] == ["(not shown)", "y"]

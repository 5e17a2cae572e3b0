"""`fix`'s run inside `create_agent`: local moves (with the calls after the cut call drawn
afresh), no null moves, delayed acceptance and surprise cuts through DecisionRetryMiddleware and
ChatDecisionRetry, in a real git repository; a lever a chat model cannot run is one clear line."""

from __future__ import annotations

import math

import pytest
from langchain.agents import create_agent

from decision_retry.choices import DEFAULT_RUN
from decision_retry.errors import BadInput
from decision_retry.langchain import (
    ChatDecisionRetry,
    DecisionRetryMiddleware,
    hide_tool_output,
    scripted_turns_lm,
)
from decision_retry.langchain.calls import tokens_of
from decision_retry.repo.workspace import Workspace
from decision_retry.samplers.chain import RetryConfig, cut_entropies
from tests.helpers import make_repo
from tests.langchain.lc_agent import OPERATORS, PATHS, SCRIPT, UNITS, file_tools, question
from tests.langchain.test_lc_topk import TopKOnly

# fix's run with local moves wherever the cut is: the default's def-line rule reads real lines,
# and a tool call's code is a JSON string (its newlines escaped), so it never opens there
LOCAL = RetryConfig(**{**DEFAULT_RUN, "span": {"opening": None}})


def verdict_of(ws) -> float:
    return 1.0 if "c * 9 / 5 + 32" in ws.read_file("units.py") else 0.0


def agent_run(tmp_path, *, retry, seeds=range(40), want=lambda dr: True, **kw):
    """The first seed whose run rewinds and satisfies `want`: (state, model, seed, stray files)."""
    repo = make_repo(tmp_path / "units", UNITS)
    for seed in seeds:
        model = ChatDecisionRetry(engine=scripted_turns_lm(SCRIPT))
        with Workspace(repo, f"moves-{seed}") as ws:
            mw = DecisionRetryMiddleware(verifier=lambda s, ws=ws: verdict_of(ws), repository=ws,
                                         seed=seed, retry=retry, max_attempts=8, **kw)
            out = create_agent(model, file_tools(ws), middleware=[mw]).invoke(question())
            files = sorted(p.name for p in ws.root.iterdir() if p.suffix == ".py")
        dr = out["decision_retry"]
        if dr["attempts"] >= 2 and want(dr):
            return out, model, seed, files
    raise AssertionError(f"no seed in {seeds} gives the run wanted")


def test_local_moves_keep_the_tail_and_the_later_calls_are_drawn_afresh(tmp_path):
    out, model, _, files = agent_run(
        tmp_path, retry=LOCAL,
        want=lambda dr: dr["status"] == "passed" and any(s["move"] == "local" for s in dr["steps"]))
    dr = out["decision_retry"]
    run = RetryConfig.model_validate(dr["config"]["retry"])
    assert (run.move, run.cut_weights, run.excluding, run.delayed) == (
        "local", "entropy", True, True)
    assert files == ["test_units.py", "units.py"]  # a stray write was rewound with its files
    assert [m.type for m in out["messages"]] == ["human", "ai", "tool", "ai", "tool", "ai"]
    assert all(s["cut_turn"] == 1 and s["token"] in set(PATHS) | set(OPERATORS)
               for s in dr["steps"])
    assert all(s["stage"] in (1, 2) for s in dr["steps"])
    # the last attempt came from a cut of the write call: kept before the cut, the cut token
    # changed, a local move's span ended at the line's end and kept the rest of the call
    cut, write = dr["cut"], dr["turns"][1]
    assert write["kept"] == cut["position"] and model.stats["forks"] >= 1
    assert model.stats["rescored"] == 0  # the cut call's decode state was still in memory
    assert dr["chain"]["turns"] == dr["turns"]  # passed: the chain moved to it
    local_steps = [s for s in dr["steps"] if s["move"] == "local"]
    assert all(math.isfinite(s["log_proposal"]) for s in local_steps)


def test_a_local_move_in_the_write_call_is_recorded_with_its_span(tmp_path):
    """Follow one local move: the proposal's write call keeps the cut call's tokens before the
    cut and after the span, and the answer call after it is a new draw."""
    seen = []

    def verifier(state, seen=seen):
        seen.append(state["decision_retry"])
        return 0.0  # never passes: every attempt is decided against the chain

    repo = make_repo(tmp_path / "units", UNITS)
    model = ChatDecisionRetry(engine=scripted_turns_lm(SCRIPT))
    for seed in range(40):
        seen.clear()
        with Workspace(repo, f"span-{seed}") as ws:
            mw = DecisionRetryMiddleware(verifier=verifier, repository=ws, seed=seed,
                                         retry=LOCAL, max_attempts=4)
            create_agent(model, file_tools(ws), middleware=[mw]).invoke(question())
        if any(d["cut"] and d["cut"]["move"] == "local" for d in seen):
            break
    local = 0
    for d in seen:
        if d["cut"] is None or d["cut"]["move"] != "local":
            continue
        cut, span = d["cut"], d["span"]
        x, y = d["chain"]["turns"], d["turns"]  # the chain's attempt it was cut from, and it
        t, (s, m, e) = cut["index"], span
        flat_x = [i for turn in x for i in turn["ids"]]
        flat_y = [i for turn in y for i in turn["ids"]]
        offset = cut["index"] - cut["position"]
        assert flat_y[:t] == flat_x[:t] and flat_y[t] != flat_x[t] == cut["ban"]
        # the kept tail: the rest of the cut call, verbatim; the call ends where it did
        assert flat_y[t + m: t + m + e] == flat_x[s: s + e]
        assert s + e == offset + len(x[cut["turn"]]["ids"])
        assert len(y) == 3 and y[2]["kept"] == 0  # the answer call: drawn afresh
        local += 1
    assert local


# A one-call agent whose only movable token no local move can remake (tests/langgraph/test_moves.py
# has the same reply): with the current token banned the other one ends the line where the reply
# had ended, or ends the reply where it had a tail
STUCK = [["def is_adult(age):\n", {"choice": {"    return age > 18": 0.5,
                                              "    return age >= 18\n": 0.5}}]]


def test_a_local_draw_outside_the_support_ends_the_attempt_unverified(tmp_path):
    calls = []

    def verifier(state):
        calls.append(state["messages"][-1].content)
        return 1.0 if ">=" in state["messages"][-1].content else 0.0

    for seed in range(40):
        calls.clear()
        model = ChatDecisionRetry(engine=scripted_turns_lm(STUCK))
        mw = DecisionRetryMiddleware(verifier=verifier, seed=seed, max_attempts=4)
        out = create_agent(model, [], middleware=[mw]).invoke(question())
        if out["decision_retry"]["attempts"] > 1:
            break
    dr = out["decision_retry"]
    assert dr["status"] == "exhausted" and dr["attempts"] == 4
    assert len(calls) == 1  # the verifier ran on the first attempt only
    assert [s["rejected"] for s in dr["steps"]] == \
        ["the span stopped where the sequence had ended"] * 3
    assert all(s["move"] == "local" and s["log_accept"] == -math.inf and s["decode_tokens"] == 1
               for s in dr["steps"])
    assert out["messages"][-1].content == ""  # the rejected draw's empty reply ended the agent
    assert dr["chain"]["turns"][0]["ids"] == dr["turns"][0]["ids"]  # the chain never moved


def test_surprise_cuts_with_the_read_tool_output_hidden(tmp_path):
    out, _, _, _ = agent_run(tmp_path, retry=LOCAL, nobody=hide_tool_output("read_file"))
    dr = out["decision_retry"]
    run = RetryConfig.model_validate(dr["config"]["retry"])
    assert (run.move, run.cut_weights) == ("local", "surprise")
    for call in dr["turns"]:
        assert len(call["alt_logp"]) == len(call["ids"]) == len(call["alt_logq"])
    chain = [tokens_of(c) for c in dr["chain"]["turns"]]
    # the scripted model ignores its prompt: under the second context -log p is the surprise
    assert cut_entropies(chain, run) == pytest.approx(
        [min(-k.logp, 50.0) for turn in chain for k in turn])
    for s in dr["steps"]:
        assert s["cut_turn"] == 1 and s["token"] in set(PATHS) | set(OPERATORS)


def test_hide_tool_output_hides_only_the_named_tools():
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    msgs = [HumanMessage("fix it"), AIMessage("reading"),
            ToolMessage("def f(): return 1", tool_call_id="1", name="read_file"),
            ToolMessage("wrote f.py", tool_call_id="2", name="write_file")]
    out = hide_tool_output("read_file")(msgs)
    assert [m.content for m in out] == ["fix it", "reading", "(not shown)", "wrote f.py"]
    assert msgs[2].content == "def f(): return 1"  # the conversation itself is not changed


@pytest.mark.parametrize("retry, message", [
    (RetryConfig(move="local"), "move='local' needs a model that can teacher-force"),
    (RetryConfig(exclude=True), "exclude=True needs a model that can ban a token"),
    (RetryConfig(cut_weights="surprise"), "cut_weights='surprise' needs a model that can score"),
])
def test_a_model_that_cannot_continue_refuses_the_levers_in_one_line(tmp_path, retry, message):
    repo = make_repo(tmp_path / "units", UNITS)
    model = TopKOnly(engine=scripted_turns_lm(SCRIPT), temperature=1.0)
    with Workspace(repo, "refuse") as ws:
        mw = DecisionRetryMiddleware(verifier=lambda s: 0.0, repository=ws, retry=retry)
        with pytest.raises(BadInput, match=message) as err:
            create_agent(model, file_tools(ws), middleware=[mw]).invoke(question())
    assert "\n" not in str(err.value)


def test_a_model_that_cannot_continue_runs_the_default_as_whole_calls(tmp_path):
    repo = make_repo(tmp_path / "units", UNITS)
    model = TopKOnly(engine=scripted_turns_lm(SCRIPT), temperature=1.0)
    with Workspace(repo, "topk-default") as ws:
        mw = DecisionRetryMiddleware(verifier=lambda s: verdict_of(ws), repository=ws, seed=2,
                                     max_attempts=10, vocab=64)
        out = create_agent(model, file_tools(ws), middleware=[mw]).invoke(question())
    dr = out["decision_retry"]
    run = RetryConfig.model_validate(dr["config"]["retry"])
    assert (run.move, run.cut_weights, run.excluding) == ("suffix", "entropy", False)
    assert dr["steps"] and all(s["cut_token"] == 0 and s["move"] == "suffix" for s in dr["steps"])


def test_every_decision_is_chain_decide_on_the_recorded_values(tmp_path):
    """The middleware's decisions are `Chain.decide`'s: each recorded step, re-decided from the
    chain and the attempt as the verifier saw them, with the middleware's generator."""
    from decision_retry.langgraph import chainstate
    from decision_retry.langgraph.model import derived_generator
    from decision_retry.samplers.chain import Chain

    seen = []

    def verifier(state):
        seen.append((state["decision_retry"], verdict_of(ws)))
        return seen[-1][1]

    repo = make_repo(tmp_path / "units", UNITS)
    for seed in range(40):
        seen.clear()
        with Workspace(repo, f"decide-{seed}") as ws:
            mw = DecisionRetryMiddleware(verifier=verifier, repository=ws, seed=seed,
                                         retry=LOCAL, max_attempts=6)
            model = ChatDecisionRetry(engine=scripted_turns_lm(SCRIPT))
            out = create_agent(model, file_tools(ws), middleware=[mw]).invoke(question())
        dr = out["decision_retry"]
        if len(dr["steps"]) >= 3 and {s["accepted"] for s in dr["steps"]} == {True, False}:
            break
    else:
        pytest.fail("no seed in 0..39 makes 3 decisions, accepted and rejected")
    config = RetryConfig.model_validate(dr["config"]["retry"])
    assert len(seen) == dr["attempts"] and len(dr["steps"]) == dr["attempts"] - 1
    for n, ((state, r), step) in enumerate(zip(seen[1:], dr["steps"], strict=True), start=2):
        chain = state["chain"]
        d = Chain(config).decide(
            chainstate.trajectory(chain, tokens_of),
            [chainstate.trajectory({**state, "r": r}, tokens_of, r == 1.0)],
            chainstate.cut_point(state["cut"], config), tried=tuple(chain["tried"]),
            generator=derived_generator(seed, "rewind", n), decode_tokens=step["decode_tokens"])
        mine = d.step.model_dump()
        assert mine == {k: step[k] for k in mine}
        ids = [t["message_id"] for t in state["turns"]]  # the chain holds them completed
        assert d.accepted == (n < len(seen) and [t["message_id"] for t in
                                                 seen[n][0]["chain"]["turns"]] == ids
                              or n == len(seen) and dr["status"] == "passed")


def test_the_no_body_cut_token_draws_the_cut_token_under_the_second_context(tmp_path):
    """cut_token="nobody": the write call's new token at the cut is drawn under the second
    context (here one where the scripted model prefers other files and operators), and log A
    reads its log q there, for the current token and the proposal's alike."""
    from langchain_core.messages import AIMessage

    from decision_retry.langchain.calls import calls_tokens

    write_b = [SCRIPT[1][0], {"choice": {"units.py": 0.2, "units_fixed.py": 0.4, "units2.py": 0.4}},
               SCRIPT[1][2], {"choice": {"+": 0.6, "-": 0.2, "*": 0.2}}, SCRIPT[1][4]]

    def nobody(messages: list) -> list:  # the write call's second context: script 3 (write_b)
        if sum(m.type == "ai" for m in messages) != 1:
            return messages
        return [*messages, AIMessage(""), AIMessage("")]

    retry = RetryConfig(**{**DEFAULT_RUN, "cut_token": "nobody"})
    repo = make_repo(tmp_path / "units", UNITS)
    seen = []

    def verifier(state):
        seen.append(state["decision_retry"])
        return verdict_of(ws)

    for seed in range(40):
        seen.clear()
        with Workspace(repo, f"nbtoken-{seed}") as ws:
            model = ChatDecisionRetry(engine=scripted_turns_lm([*SCRIPT, write_b]))
            mw = DecisionRetryMiddleware(verifier=verifier, repository=ws, seed=seed,
                                         retry=retry, nobody=nobody, max_attempts=6)
            out = create_agent(model, file_tools(ws), middleware=[mw]).invoke(question())
        if len(out["decision_retry"]["steps"]) >= 2:
            break
    dr = out["decision_retry"]
    run = RetryConfig.model_validate(dr["config"]["retry"])
    assert (run.cut_token, run.cut_weights) == ("nobody", "surprise")
    write = tokens_of(dr["turns"][1])
    assert any(k.alt_logq != pytest.approx(k.logq) for k in write)  # the contexts disagree
    # every decision, its proposal terms by hand: position t's log q is the second context's
    for state, step in zip(seen[1:], dr["steps"], strict=True):
        cut = state["cut"]
        x = [k for t in calls_tokens(state["chain"]["turns"]) for k in t]
        y = [k for t in calls_tokens(state["turns"]) for k in t]
        i = cut["index"]
        assert cut["move"] == "suffix" and y[i].id != x[i].id == cut["ban"]
        prop = (x[i].alt_logq + sum(k.logq for k in x[i + 1:])
                - y[i].alt_logq - sum(k.logq for k in y[i + 1:])
                + math.log1p(-math.exp(x[i].alt_logq)) - math.log1p(-math.exp(y[i].alt_logq)))
        assert step["log_proposal"] == pytest.approx(prop, abs=1e-9)


def test_streaming_makes_the_same_local_moves(tmp_path):
    """With stream_mode="messages" a local move comes as one chunk; the run is the invoked one."""
    repo = make_repo(tmp_path / "units", UNITS)
    runs = {}
    for mode in ("invoke", "stream"):
        model = ChatDecisionRetry(engine=scripted_turns_lm(SCRIPT))
        with Workspace(repo, f"stream-local-{mode}") as ws:
            mw = DecisionRetryMiddleware(verifier=lambda s, ws=ws: verdict_of(ws), repository=ws,
                                         seed=2, retry=LOCAL, max_attempts=6)
            agent = create_agent(model, file_tools(ws), middleware=[mw])
            if mode == "invoke":
                runs[mode] = agent.invoke(question())
            else:
                for kind, item in agent.stream(question(), stream_mode=["messages", "values"]):
                    if kind == "values":
                        runs[mode] = item
    a, b = runs["invoke"]["decision_retry"], runs["stream"]["decision_retry"]
    assert any(s["move"] == "local" for s in a["steps"])
    assert b["attempts"] == a["attempts"] and b["status"] == a["status"]
    assert [t["ids"] for t in b["turns"]] == [t["ids"] for t in a["turns"]]
    assert [s["log_accept"] for s in b["steps"]] == [s["log_accept"] for s in a["steps"]]

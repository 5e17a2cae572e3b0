"""DecisionRetryMiddleware in a real create_agent graph: real git repository, real pytest runs,
the trace store on SQLite and the spans over OTLP/HTTP to a receiver on 127.0.0.1."""

from __future__ import annotations

import pytest
from langchain.agents import create_agent

from decision_retry.errors import BadInput
from decision_retry.langchain import ChatDecisionRetry, DecisionRetryMiddleware, scripted_turns_lm
from decision_retry.otel import listener_from_config
from decision_retry.repo.workspace import Workspace
from decision_retry.retry import RetryConfig
from decision_retry.trace import Recorder, TraceStore
from tests.helpers import make_repo
from tests.langchain.lc_agent import (
    OPERATORS,
    PATHS,
    SCRIPT,
    TEST_COMMAND,
    UNITS,
    build,
    file_tools,
    question,
)
from tests.otel.receiver import HttpReceiver


def verdict_of(ws) -> float:
    """What the tests will say, without running them: units.py with `+` passes, nothing else."""
    text = ws.read_file("units.py")
    return 1.0 if "c * 9 / 5 + 32" in text else 0.0


def stray(ws) -> list[str]:
    return sorted(p for p in PATHS if p != "units.py" and (ws.root / p).exists())


def a_seed_that_rewinds_a_stray_write(repo, tmp_path) -> int:
    """A seed whose first attempt writes a wrong file, solved within 4 attempts.

    Searched with a verifier that gives the same verdicts as the tests (so the same draws and
    MH decisions) but runs no subprocess."""
    for seed in range(40):
        with Workspace(repo, f"search-{seed}") as ws:
            first = {}

            def verifier(state, ws=ws, first=first):
                first.setdefault("stray", stray(ws))
                return verdict_of(ws)

            model = ChatDecisionRetry(engine=scripted_turns_lm(SCRIPT))
            mw = DecisionRetryMiddleware(verifier=verifier, repository=ws, seed=seed,
                                         max_attempts=4)
            out = create_agent(model, file_tools(ws), middleware=[mw]).invoke(question())
            if first["stray"] and out["decision_retry"]["status"] == "passed":
                return seed
    pytest.fail("no seed in 0..39 rewinds a stray write")


@pytest.mark.slow
def test_create_agent_rewinds_a_real_repository(tmp_path):
    repo = make_repo(tmp_path / "units", UNITS)
    seed = a_seed_that_rewinds_a_stray_write(repo, tmp_path)
    with HttpReceiver() as receiver, TraceStore(tmp_path / "traces.db") as store:
        listener = listener_from_config(receiver.endpoint)
        recorder = Recorder(store, listeners=[listener])
        with Workspace(repo, "lc-run") as ws:
            agent, _ = build(ws, seed=seed, recorder=recorder, max_attempts=4)
            out = agent.invoke(question())
            final_tests = ws.run_tests(TEST_COMMAND, 300)
            files = sorted(p.name for p in ws.root.iterdir() if p.suffix == ".py")
        assert listener.shutdown(10.0)
        tree = store.load(recorder.run.id)
    dr = out["decision_retry"]

    # the run passed, in the repository itself, and the stray file of the failed try is gone
    assert dr["status"] == "passed" and dr["attempts"] >= 2
    assert final_tests.ok and final_tests.passed == 2
    assert files == ["test_units.py", "units.py"]
    # the conversation was truncated at the cut call: one read, one write, one answer
    assert [m.type for m in out["messages"]] == ["human", "ai", "tool", "ai", "tool", "ai"]
    write = out["messages"][3]
    assert write.tool_calls[0]["name"] == "write_file"
    assert write.tool_calls[0]["args"]["path"] == "units.py"
    assert "+ 32" in write.tool_calls[0]["args"]["text"]
    # every rewind cut the write call at one of its two decision tokens and kept what preceded
    cuts = [s for s in dr["steps"]]
    assert cuts and all(s["cut_turn"] == 1 for s in cuts)
    assert len(dr["steps"]) == dr["attempts"] - 1

    # the trace store: one branch per attempt, retries cut at a decision token of call 1
    assert tree.run.outcome == "solved" and tree.run.repo == str(repo.resolve())
    assert len(tree.branches) == dr["attempts"]
    retries = [b for b in tree.branches if b.cut is not None]
    assert len(retries) == dr["attempts"] - 1
    tokens = {t.text for t in tree.turns[1].tokens}
    assert all(b.cut.turn == 1 and b.parent_id for b in retries)
    for b in retries:
        own = [t for t in tree.turns if t.branch_id == b.id]
        assert [t.index for t in own] == [1, 2]  # call 0 is inherited from the parent
        assert own[0].tokens[b.cut.position].text in set(PATHS) | set(OPERATORS)
    assert set(PATHS) & tokens
    assert [r.ok for r in tree.test_runs][-1] is True
    assert sum(not r.ok for r in tree.test_runs) == dr["attempts"] - 1
    actions = [c.action for c in tree.tool_calls]
    assert actions.count("read_file") == 1 and actions.count("write_file") == dr["attempts"]
    assert len(tree.mh_steps) == dr["attempts"] - 1

    # over OTLP: the agent, its branches, chat and tool spans, the decision the retry was cut at
    spans = receiver.collected.spans
    names = [s.name for s in spans]
    assert names.count("invoke_agent decision-retry") == 1
    assert names.count("branch rewind") == dr["attempts"] - 1
    assert names.count("chat scripted") == len(tree.turns)
    assert names.count("execute_tool write_file") == dr["attempts"]
    assert names.count("execute_tool run_tests") == dr["attempts"]
    decisions = {s.span_id: s for s in spans if s.name.startswith("decision ")}
    for branch in (s for s in spans if s.name == "branch rewind"):
        (link,) = branch.links
        assert link[2] == {"decision_retry.link": "cut_from_decision"}
        target = decisions[link[1]]
        assert target.attributes["decision_retry.decision.position"] == branch.attributes[
            "decision_retry.cut.position"]
        assert branch.attributes["decision_retry.cut.turn"] == 1


def test_a_rewind_continues_the_cut_call_from_the_kept_tokens(tmp_path):
    """After a rewind our chat model forks the cut call's decode state: no new prefill."""
    repo = make_repo(tmp_path / "units", UNITS)
    model = ChatDecisionRetry(engine=scripted_turns_lm(SCRIPT))
    with Workspace(repo, "kv") as ws:
        mw = DecisionRetryMiddleware(verifier=lambda s: verdict_of(ws), repository=ws, seed=3,
                                     max_attempts=6)
        out = create_agent(model, file_tools(ws), middleware=[mw]).invoke(question())
    dr = out["decision_retry"]
    rewinds = dr["attempts"] - 1
    assert rewinds >= 1
    assert model.stats["forks"] == rewinds and model.stats["rescored"] == 0
    last = dr["turns"][1]
    assert last["kept"] == dr["cut"]["position"] > 0  # tokens before the cut were kept verbatim


def test_restart_resamples_from_the_first_call(tmp_path):
    repo = make_repo(tmp_path / "units", UNITS)
    model = ChatDecisionRetry(engine=scripted_turns_lm(SCRIPT))
    with Workspace(repo, "restart") as ws:
        mw = DecisionRetryMiddleware(verifier=lambda s: verdict_of(ws), repository=ws, seed=0,
                                     retry=RetryConfig(strategy="restart"), max_attempts=12)
        out = create_agent(model, file_tools(ws), middleware=[mw]).invoke(question())
    dr = out["decision_retry"]
    assert dr["status"] == "passed"
    assert dr["steps"] == []  # restart: independent attempts, no MH step
    if dr["attempts"] > 1:
        assert dr["cut"]["turn"] == 0 and dr["cut"]["whole_call"]


def test_exhausted_after_max_attempts(tmp_path):
    repo = make_repo(tmp_path / "units", UNITS)
    model = ChatDecisionRetry(engine=scripted_turns_lm(SCRIPT))
    with Workspace(repo, "never") as ws:
        mw = DecisionRetryMiddleware(verifier=lambda s: False, repository=ws, max_attempts=3)
        out = create_agent(model, file_tools(ws), middleware=[mw]).invoke(question())
    dr = out["decision_retry"]
    assert dr["status"] == "exhausted" and dr["attempts"] == 3 and len(dr["steps"]) == 2
    assert [m.type for m in out["messages"]] == ["human", "ai", "tool", "ai", "tool", "ai"]


@pytest.mark.parametrize("kwargs, message", [
    ({}, "needs one of verifier=callable or test_command"),
    ({"verifier": bool, "test_command": "pytest"}, "needs one of"),
    ({"test_command": "pytest"}, "test_command needs repository"),
    ({"verifier": bool, "repository": object()}, "snapshot(label) and restore(id)"),
    ({"verifier": bool, "max_attempts": 0}, "max_attempts=0"),
    ({"verifier": bool, "retry": RetryConfig(strategy="egps")}, "not supported"),
])
def test_bad_arguments_are_one_clear_error(kwargs, message):
    with pytest.raises(BadInput, match=message.replace("(", r"\(").replace(")", r"\)")):
        DecisionRetryMiddleware(**kwargs)


def test_streaming_agent_rewinds_the_same_way(tmp_path):
    """stream_mode="messages" makes the agent stream our chat model token by token; the rewind
    still finds the cut call by its message id and the run matches the invoked one."""
    repo = make_repo(tmp_path / "units", UNITS)
    runs = {}
    for mode in ("invoke", "stream"):
        model = ChatDecisionRetry(engine=scripted_turns_lm(SCRIPT))
        with Workspace(repo, f"stream-{mode}") as ws:
            mw = DecisionRetryMiddleware(verifier=lambda s, ws=ws: verdict_of(ws), repository=ws,
                                         seed=4, max_attempts=6)
            agent = create_agent(model, file_tools(ws), middleware=[mw])
            if mode == "invoke":
                runs[mode], chunks = agent.invoke(question()), []
            else:
                chunks, final = [], None
                for kind, item in agent.stream(question(), stream_mode=["messages", "values"]):
                    if kind == "messages":
                        chunks.append(item[0])
                    else:
                        final = item
                runs[mode] = final
        if mode == "stream":
            # token by token: the text first, the held-back tool call in the last chunk
            assert any(c.content.startswith("Let me look") and not c.tool_call_chunks
                       for c in chunks)
            assert any(c.tool_call_chunks and c.content == "" for c in chunks)
    a, b = runs["invoke"]["decision_retry"], runs["stream"]["decision_retry"]
    assert b["attempts"] == a["attempts"] >= 2 and b["status"] == a["status"] == "passed"
    assert [t["pieces"] for t in b["turns"]] == [t["pieces"] for t in a["turns"]]
    assert [m.type for m in runs["stream"]["messages"]] == ["human", "ai", "tool", "ai", "tool",
                                                             "ai"]

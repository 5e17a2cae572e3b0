"""decision-retry dropped into a user's own LangGraph graph: scripted model, real checkpointers."""

from __future__ import annotations

import math
import re
import sqlite3
import subprocess
import sys

import pytest
from langgraph.checkpoint.sqlite import SqliteSaver

from decision_retry.errors import BadInput
from decision_retry.langgraph import KEY, attempts, fork_point, invoke, progress, rewind_node
from decision_retry.retry import RetryConfig
from decision_retry.testing import scripted_lm
from decision_retry.trace import Recorder, TraceStore
from tests.helpers import ROOT, make_repo
from tests.langgraph.lg_user_graph import OPERATOR, SCRIPT, build, fork_points, question


def thread(name: str) -> dict:
    return {"configurable": {"thread_id": name}}


def first_failing_seed(lm, **kw) -> int:
    """A seed whose first attempt fails the user's verifier, so the run has to rewind."""
    for seed in range(50):
        graph, _, _ = build(lm, seed=seed, **kw)
        state = graph.invoke(question(kw.get("verdict_key") == "passed"), thread("probe"))
        if progress(state)["status"] == "rewind":
            return seed
    raise AssertionError("no seed fails first")


def turn_tokens(turn: dict) -> list[int]:
    return turn["ids"]


def check_rewind(graph, config, final) -> tuple[dict, dict]:
    """The behaviour every rewind must show; returns (first attempt, its successor)."""
    dr = final[KEY]
    assert dr["status"] == "passed" and dr["attempts"] >= 2
    done = attempts(graph, config)
    first, second = done[0], done[1]
    assert first["status"] == "rewind" and first["verdict"] == 0.0
    # the cut is the highest-entropy token of the failed attempt: the operator
    cut = first["next_cut"]
    turn = progress(_state_at(graph, config, first["checkpoint_id"]))["turns"][0]
    assert cut["position"] == max(range(len(turn["entropy"])), key=turn["entropy"].__getitem__)
    assert cut["position"] == OPERATOR and cut["token"] in (">", "==")
    assert cut["entropy"] == pytest.approx(-sum(p * math.log(p) for p in (0.4, 0.35, 0.25)))
    # the next attempt kept every token before the cut verbatim and resampled from it
    again = progress(_state_at(graph, config, second["checkpoint_id"]))["turns"][0]
    assert second["cut"] == cut and again["kept"] == cut["position"]
    for col in ("ids", "pieces", "logp", "logq", "entropy"):
        assert again[col][: cut["position"]] == turn[col][: cut["position"]]
    assert final["messages"][-1].content.rstrip().endswith("return age >= 18")
    # the rewind is a fork in the thread's history, at the checkpoint before the model call
    forks = fork_points(graph, config)
    assert forks
    before = graph.get_state({"configurable": {**config["configurable"],
                                               "checkpoint_id": forks[0]}})
    assert before.next == ("model",) and [m.type for m in before.values["messages"]] == ["human"]
    assert "results" not in before.values  # the user's own state at the cut came back too
    return first, second


def _state_at(graph, config, checkpoint_id: str) -> dict:
    conf = {**config["configurable"], "checkpoint_id": checkpoint_id}
    return graph.get_state({"configurable": conf}).values


def test_rewinds_to_the_highest_entropy_token_and_passes():
    lm = scripted_lm(SCRIPT)
    seed = first_failing_seed(lm)
    graph, model, _ = build(lm, seed=seed)
    config = thread("in-memory")
    final = invoke(graph, question(), config)
    check_rewind(graph, config, final)
    # the prefix came from the in-memory decode state: a KV fork, no re-prefill
    assert model.stats["forks"] == final[KEY]["attempts"] - 1 and model.stats["prefills"] == 0
    # only the final attempt's messages are in the state: the failed reply was rewound away
    assert [m.type for m in final["messages"]] == ["human", "ai"]
    assert final["tool_runs"] == 1


def test_sqlite_on_disk_restores_the_thread_and_prefills(tmp_path):
    lm = scripted_lm(SCRIPT)
    seed = first_failing_seed(lm)
    db, config = tmp_path / "checkpoints.sqlite", thread("on-disk")
    # 1) the first attempt fails; the process "ends" with a rewind pending
    with sqlite3.connect(db, check_same_thread=False) as conn:
        graph, _, _ = build(lm, saver=SqliteSaver(conn), seed=seed)
        assert progress(graph.invoke(question(), config))["status"] == "rewind"
    # 2) a new process: fresh nodes (no decode states in memory), the same database
    with sqlite3.connect(db, check_same_thread=False) as conn:
        graph, model, _ = build(lm, saver=SqliteSaver(conn), seed=seed)
        final = invoke(graph, None, config)
        check_rewind(graph, config, final)
        assert model.stats["prefills"] >= 1  # the first resample rebuilt its prefix by prefill
    # 3) and the history is really on disk
    with sqlite3.connect(db, check_same_thread=False) as conn:
        graph, _, _ = build(lm, saver=SqliteSaver(conn), seed=seed)
        assert fork_points(graph, config)
        assert progress(graph.get_state(config).values)["status"] == "passed"


def test_sqlite_whole_run(tmp_path):
    lm = scripted_lm(SCRIPT)
    seed = first_failing_seed(lm)
    with sqlite3.connect(tmp_path / "c.sqlite", check_same_thread=False) as conn:
        graph, _, _ = build(lm, saver=SqliteSaver(conn), seed=seed, retry=RetryConfig())
        config = thread("sqlite-rewind")
        final = invoke(graph, question(), config)
        assert final[KEY]["status"] == "passed" and fork_points(graph, config)


def test_trace_records_branches_decisions_and_mh_steps(tmp_path):
    lm = scripted_lm(SCRIPT)
    seed = first_failing_seed(lm)
    with TraceStore(tmp_path / "traces.db") as store:
        recorder = Recorder(store)
        graph, _, _ = build(lm, seed=seed, recorder=recorder)
        final = invoke(graph, question(), thread("traced"))
        tree = store.load(final[KEY]["run"])
    n = final[KEY]["attempts"]
    assert tree.run.outcome == "solved" and len(tree.branches) == n
    root, child = tree.branches[0], tree.branches[1]
    assert child.parent_id == root.id and child.cut.position == OPERATOR
    decisions = tree.decisions_of(tree.own_turns(root.id)[0].id)
    # the spike rule `fix` uses (choices.SPIKE_THRESHOLD): H >= 0.5 nats, the operator among them
    assert [d.position for d in decisions] == [1, OPERATOR]
    assert len(tree.mh_steps) == n - 1 and tree.mh_steps[0].cut_position == OPERATOR
    assert [r.passed for r in tree.test_runs] == [0] * (n - 1) + [1]
    last = tree.branches[-1]
    assert last.outcome == "passed" and last.passed is True
    assert tree.own_turns(last.id)[0].text.rstrip().endswith("return age >= 18")


def test_verdict_written_by_the_users_own_node_and_dict_messages():
    lm = scripted_lm(SCRIPT)
    kw = {"verdict_key": "passed", "state": __import__("lg_user_graph").DictState}
    seed = first_failing_seed(lm, **kw)
    graph, _, _ = build(lm, seed=seed, **kw)
    config = thread("dicts")
    final = invoke(graph, question(as_dict=True), config)
    assert final[KEY]["status"] == "passed" and final["passed"] is True
    reply = final["messages"][-1]
    assert isinstance(reply, dict) and reply["role"] == "assistant"
    assert reply["content"].rstrip().endswith(">= 18") and len(final["messages"]) == 2


def test_cut_in_an_earlier_call_drops_the_later_ones():
    lm = scripted_lm(SCRIPT)
    seed = first_failing_seed(lm, calls=2)
    graph, _, _ = build(lm, seed=seed, calls=2)
    config = thread("two-calls")
    final = invoke(graph, question(), config)
    done = attempts(graph, config)
    # equal entropies in both calls: argmax takes the first, so the rewind goes before call 0
    assert done[0]["next_cut"]["turn"] == 0 and done[0]["next_cut"]["position"] == OPERATOR
    assert final[KEY]["status"] in ("passed", "exhausted")
    assert [m.type for m in final["messages"]] == ["human", "ai", "ai"]
    assert len(final[KEY]["turns"]) == 2 and final["tool_runs"] == 2


def test_workspace_files_are_restored_on_rewind(tmp_path):
    from decision_retry.repo.workspace import Workspace

    repo = make_repo(tmp_path / "repo", {"README": "user repo\n"})
    lm = scripted_lm(SCRIPT)
    seed = first_failing_seed(lm)
    with Workspace(repo, "lg-test") as ws:
        graph, _, _ = build(lm, seed=seed, workspace=ws)
        final = invoke(graph, question(), thread("files"))
        assert final[KEY]["status"] == "passed"
        # each rewind restored the files from before the cut turn: one tool run in the log
        assert (ws.root / "log.txt").read_text() == "ran\n"
        assert "return age >= 18" in ws.read_file("adult.py")
    assert not (repo / "adult.py").exists()  # the user's checkout is untouched


def test_restart_forks_before_the_first_call():
    lm = scripted_lm(SCRIPT)
    seed = first_failing_seed(lm)
    graph, _, _ = build(lm, seed=seed, retry=RetryConfig(strategy="restart"))
    config = thread("restart")
    final = invoke(graph, question(), config)
    assert final[KEY]["status"] == "passed"
    assert attempts(graph, config)[0]["next_cut"]["position"] == 0 and not final[KEY]["steps"]


def test_fork_point_is_none_without_a_pending_rewind():
    lm = scripted_lm(["def is_adult(age: int) -> bool:\n    return age >= 18\n"])
    graph, _, _ = build(lm)
    config = thread("certain")
    final = invoke(graph, question(), config)
    assert final[KEY]["status"] == "passed" and final[KEY]["attempts"] == 1
    assert fork_point(graph, config) is None and not fork_points(graph, config)


def test_gives_up_after_max_attempts_and_a_new_task_starts_a_new_episode():
    lm = scripted_lm(["def is_adult(age):\n    return age ", {"choice": {">": 0.6, "==": 0.4}},
                      " 18\n"])
    graph, _, _ = build(lm, max_attempts=3, retry=RetryConfig())
    config = thread("hopeless")
    final = invoke(graph, question(), config)
    assert final[KEY]["status"] == "exhausted" and final[KEY]["attempts"] == 3
    assert [a["status"] for a in attempts(graph, config)] == ["rewind", "rewind", "exhausted"]
    assert fork_point(graph, config) is None
    # the user asks again on the same thread: a fresh episode, not a fourth attempt
    again = invoke(graph, question(), config)
    assert again[KEY]["episode"] != final[KEY]["episode"] and len(again[KEY]["turns"]) == 1
    assert again[KEY]["status"] == "exhausted" and again[KEY]["attempts"] == 3
    assert [a["attempt"] for a in attempts(graph, config)] == [1, 2, 3]  # this episode's
    assert [m.type for m in again["messages"]] == ["human", "ai", "human", "ai"]


@pytest.mark.parametrize("strategy", ["egps", "from-end"])
def test_unsupported_strategies_fail_in_one_line(strategy):
    with pytest.raises(BadInput, match=f"strategy '{strategy}' is not supported") as err:
        rewind_node(verifier=lambda s: True, retry=RetryConfig(strategy=strategy))
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_fallback_prefill_matches_the_kv_fork_on_a_real_transformers_model():
    """Both ways to the prefix (KV fork, re-prefill) give the same next-token distribution."""
    from decision_retry.langgraph import model_node
    from decision_retry.testing import tiny_llama

    lm = tiny_llama(vocab=64, seed=0)
    node = model_node(lm, retry=RetryConfig(), seed=0)
    state = {"messages": question()["messages"]}
    out = node(state)
    rec = out[KEY]["turns"][0]
    t = min(5, len(rec["ids"]) - 1)
    prompt = lm.encode([{"role": "user", "content": "Write is_adult(age)."}])
    live = node._prefix(rec, t, prompt)
    node._states.clear()
    cold = node._prefix(rec, t, prompt)
    assert [node.stats[k] for k in ("calls", "forks", "prefills")] == [1, 1, 1]
    assert [x.id for x in live.tokens] == [x.id for x in cold.tokens] == rec["ids"][:t]
    a = lm.backend.forward(lm.backend.slice(live.cache, len(live.ids) - 1), _last(live))
    b = lm.backend.forward(lm.backend.slice(cold.cache, len(cold.ids) - 1), _last(cold))
    assert (a - b).abs().max() < 1e-4


def _last(state):
    import torch

    return torch.tensor([state.ids[-1]])


@pytest.mark.slow
def test_docs_example_runs_as_written(tmp_path):
    text = (ROOT / "docs" / "langgraph.md").read_text()
    block = re.search(r"```python\n(.*?)```", text, re.DOTALL).group(1)
    example = (ROOT / "examples" / "langgraph_user_graph.py").read_text()
    assert block == example  # the docs and examples/ show the same program
    script = tmp_path / "example.py"
    script.write_text(block)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          check=False, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "status: passed" in proc.stdout and "1 fork point(s)" in proc.stdout
    assert "return age >= 18" in proc.stdout


@pytest.mark.slow
def test_import_langgraph_is_the_real_library():
    import langgraph.graph

    import decision_retry.langgraph as ours

    assert ours.__name__ == "decision_retry.langgraph"
    assert "site-packages" in langgraph.graph.__file__
    code = "import decision_retry.langgraph, langgraph.graph as g; print(g.__file__)"
    for cwd in (ROOT, ROOT / "tests", ROOT / "tests" / "langgraph"):
        proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True,
                              check=False, text=True, timeout=120)
        assert proc.returncode == 0 and "site-packages" in proc.stdout, proc.stderr[-1000:]

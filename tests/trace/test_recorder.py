"""The Recorder: stores every node and forwards it to listeners."""

from __future__ import annotations

import logging

import pytest

from decision_retry.trace import Cut, Recorder, Run
from tests.trace.sample_run import record_sample, tokens


class Collect:
    """A TraceListener that keeps (method, node) pairs."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def __getattr__(self, method: str):
        return lambda node: self.events.append((method, node))


class Broken(Collect):
    """A listener that fails on every call."""

    def __getattr__(self, method: str):
        def fail(node):
            raise RuntimeError("collector down")

        return fail


def test_listeners_receive_every_node_in_order(store):
    collect = Collect()
    rec = Recorder(store, [collect])
    rec.start_run(model="m", strategy="s")
    branch = rec.start_branch()
    turn = rec.record_turn(branch, tokens=tokens([("a", 0.1), ("b", 3.0)]))
    rec.record_decision(turn, 1)
    rec.record_tool_call(turn, action="submit")
    rec.record_test_run(branch, command="pytest", exit_code=0, passed=1)
    rec.record_mh_step(
        cut_turn=0,
        cut_position=1,
        cut_entropy=3.0,
        proposal_length=1,
        log_accept=0.0,
        accepted=True,
        decode_tokens=1,
    )
    rec.finish_branch(branch, outcome="passed", passed=True, final_diff="d")
    run = rec.finish_run("solved")
    assert [m for m, _ in collect.events] == [
        "start_run",
        "start_branch",
        "record_turn",
        "record_decision",
        "record_tool_call",
        "record_test_run",
        "record_mh_step",
        "finish_branch",
        "finish_run",
    ]
    finished_branch = collect.events[-2][1]
    assert finished_branch.passed is True and finished_branch.id == branch.id
    assert isinstance(collect.events[-1][1], Run) and collect.events[-1][1].outcome == "solved"
    assert store.load(run.id).run.outcome == "solved"


def test_a_failing_listener_does_not_stop_the_run(store, caplog):
    collect = Collect()
    rec = Recorder(store, [Broken(), collect])
    with caplog.at_level(logging.ERROR):
        run = rec.start_run(model="m", strategy="s")
    assert "collector down" in caplog.text
    assert collect.events[0][0] == "start_run"  # later listeners still called
    assert store.resolve("latest") == run.id


def test_turn_index_defaults_follow_the_cut(store):
    rec = Recorder(store)
    rec.start_run(model="m", strategy="s")
    root = rec.start_branch()
    assert [rec.record_turn(root, tokens=[]).index for _ in range(3)] == [0, 1, 2]
    retry = rec.start_branch(parent=root, cut=Cut(turn=1, position=0))
    assert [rec.record_turn(retry, tokens=[]).index for _ in range(2)] == [1, 2]
    assert retry.strategy == "retry" and root.strategy == "initial"
    assert [rec.start_branch().index for _ in range(2)] == [2, 3]


def test_text_defaults_to_the_token_pieces():
    rec = Recorder(None)  # listeners only, nothing stored
    rec.start_run(model="m", strategy="s")
    turn = rec.record_turn(rec.start_branch(), tokens=tokens([("def", 0.1), (" f", 1.0)]))
    assert turn.text == "def f"


def test_recording_before_start_run_is_an_error():
    with pytest.raises(RuntimeError, match="start_run"):
        Recorder(None).start_branch()


def test_record_sample_is_reproducible_in_content(tmp_path):
    from decision_retry.trace import TraceStore

    with TraceStore.open(tmp_path / "a") as a, TraceStore.open(tmp_path / "b") as b:
        one, two = record_sample(a), record_sample(b)
    # runs differ by creation time, so every descendant id differs too: ids include the parent
    assert one.run_id != two.run_id
    assert {t.id for t in one.turns}.isdisjoint(t.id for t in two.turns)
    assert [t.text for t in one.turns] == [t.text for t in two.turns]

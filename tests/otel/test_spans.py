"""The span listener on a real Recorder and store, read back through InMemorySpanExporter:
names, attributes, parenting, time containment, the retry links, status; and replay == live."""

from __future__ import annotations

import time
from collections import Counter

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from decision_retry.otel import SpanListener, replay
from decision_retry.otel.attributes import TEXT_LIMIT
from decision_retry.trace import Recorder, TraceStore
from tests.otel.receiver import in_memory
from tests.trace.sample_run import EDIT_BAD, READ, record_live, tokens


@pytest.fixture
def live(tmp_path):
    """The live run recorded into a real store with the listener attached."""
    provider, exporter = in_memory()
    listener = SpanListener(provider)
    with TraceStore.open(tmp_path) as store:
        recorded = record_live(Recorder(store, listeners=[listener]))
        recorded["tree"] = store.load(recorded["run"].id)
    recorded["spans"] = list(exporter.get_finished_spans())
    recorded["listener"] = listener
    return recorded


def the(spans: list[ReadableSpan], kind: str, key: str, value) -> ReadableSpan:
    """The one span of this kind (first word of its name) whose attribute `key` is `value`."""
    (span,) = [s for s in spans if s.name.split()[0] == kind and s.attributes.get(key) == value]
    return span


def test_every_node_becomes_one_span_with_its_conventional_name(live):
    names = Counter(s.name for s in live["spans"])
    tree = live["tree"]
    assert names == {
        "invoke_agent decision-retry": 1,
        "branch initial": 1,
        "branch entropy-cut": 1,
        "branch retry": 2,
        "chat scripted": len(tree.turns),
        "decision action": 4,
        "decision file": 2,
        "decision function": 2,
        "decision entropy": sum(d.kind == "entropy" for d in tree.decisions),
        "execute_tool read": 2,
        "execute_tool edit": 2,
        "execute_tool run_tests": 2,
        "mh_step": 1,
    }
    assert sum(names.values()) == live["listener"].spans_ended
    assert sum(n for k, n in names.items() if k.startswith("decision ")) == len(tree.decisions)


def test_spans_form_one_tree_and_children_lie_within_their_parents(live):
    spans = live["spans"]
    by_id = {s.context.span_id: s for s in spans}
    (root,) = [s for s in spans if s.parent is None]
    assert {s.context.trace_id for s in spans} == {root.context.trace_id}
    expected_parent = {"branch": "invoke_agent", "mh_step": "invoke_agent", "chat": "branch"}
    expected_parent |= {"execute_tool": "branch", "decision": "chat"}
    for span in spans:
        if span is root:
            continue
        parent = by_id[span.parent.span_id]
        assert parent.name.split()[0] == expected_parent[span.name.split()[0]]
        assert parent.start_time <= span.start_time <= span.end_time <= parent.end_time


def test_root_span_is_invoke_agent_with_the_run_as_conversation(live):
    root = next(s for s in live["spans"] if s.parent is None)
    run = live["run"]
    assert root.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert root.attributes["gen_ai.agent.name"] == "decision-retry"
    assert root.attributes["gen_ai.conversation.id"] == run.id
    assert root.attributes["gen_ai.provider.name"] == "local"
    assert root.attributes["decision_retry.config.alpha"] == 4.0
    assert "decision_retry.config.nested" not in root.attributes
    assert root.attributes["decision_retry.run.outcome"] == "solved"
    assert root.status.status_code is StatusCode.OK
    assert root.start_time == int(run.created_at.timestamp() * 1e6) * 1000


def test_chat_span_carries_request_usage_and_an_entropy_summary_not_tokens(live):
    t01 = live["t01"]
    chat = the(live["spans"], "chat", "decision_retry.turn.id", t01.id)
    a = chat.attributes
    assert chat.name == "chat scripted" and a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == "scripted" and a["gen_ai.provider.name"] == "local"
    assert a["gen_ai.request.temperature"] == 0.25 and a["gen_ai.request.top_k"] == 20
    assert a["gen_ai.request.max_tokens"] == 64
    assert a["gen_ai.usage.input_tokens"] == 120
    assert a["gen_ai.usage.output_tokens"] == len(EDIT_BAD)
    entropies = [h for _, h in EDIT_BAD]
    assert a["decision_retry.entropy.mean"] == pytest.approx(sum(entropies) / len(entropies))
    assert a["decision_retry.entropy.max"] == max(entropies)
    assert a["decision_retry.entropy.max_position"] == entropies.index(max(entropies))
    lists = {k for s in live["spans"] for k, v in s.attributes.items() if isinstance(v, tuple)}
    assert lists == {
        "decision_retry.decision.alternatives",
        "decision_retry.decision.alternative_probs",
    }
    assert t01.text not in {str(v) for v in a.values()}


def test_decision_spans_carry_entropy_position_token_alternatives_and_snapshot(live):
    for d in live["tree"].decisions:
        span = the(live["spans"], "decision", "decision_retry.decision.id", d.id)
        a = span.attributes
        assert span.name == f"decision {d.label or 'entropy'}"
        assert a["decision_retry.decision.entropy"] == d.entropy
        assert a["decision_retry.decision.position"] == d.position
        assert a["decision_retry.decision.token"] == d.token
        assert list(a["decision_retry.decision.alternatives"]) == [x.text for x in d.alternatives]
        assert list(a["decision_retry.decision.alternative_probs"]) == [
            x.prob for x in d.alternatives
        ]
        assert a["decision_retry.decision.snapshot"] == d.snapshot
        assert span.end_time - span.start_time >= 0


def link_target(live, branch) -> tuple[ReadableSpan, dict]:
    span = the(live["spans"], "branch", "decision_retry.branch.id", branch.id)
    by_id = {s.context.span_id: s for s in live["spans"]}
    (link,) = span.links
    assert link.context.trace_id == span.context.trace_id
    return by_id[link.context.span_id], dict(link.attributes)


def test_a_retry_branch_says_where_it_was_cut_and_links_to_that_decision(live):
    b0, b1, b2, b3 = live["b"]
    retry = the(live["spans"], "branch", "decision_retry.branch.id", b1.id).attributes
    assert retry["decision_retry.branch.parent_id"] == b0.id
    assert (retry["decision_retry.cut.turn"], retry["decision_retry.cut.position"]) == (1, 6)
    assert retry["decision_retry.cut.entropy"] == 3.1

    target, attrs = link_target(live, b1)
    assert attrs == {"decision_retry.link": "cut_from_decision"}
    assert target.name == "decision entropy"
    assert target.attributes["decision_retry.turn.id"] == live["t01"].id
    assert target.attributes["decision_retry.decision.position"] == 6

    target, _ = link_target(live, b2)  # turn 0 of b1 is b0's: the link reaches into b0
    assert target.attributes["decision_retry.turn.id"] == live["t00"].id
    assert target.attributes["decision_retry.decision.kind"] == "entropy"

    target, attrs = link_target(live, b3)  # no decision point at token 1: the turn itself
    assert attrs == {"decision_retry.link": "cut_from_turn"}
    assert target.attributes["decision_retry.turn.id"] == live["t00"].id
    assert not the(live["spans"], "branch", "decision_retry.branch.id", b0.id).links


def test_branch_spans_carry_the_verifier_verdict_as_status(live):
    b0, b1, b2, b3 = live["b"]
    span = {b.id: the(live["spans"], "branch", "decision_retry.branch.id", b.id) for b in live["b"]}
    failed = span[b0.id]
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes["decision_retry.verifier.passed"] is False
    assert failed.attributes["error.type"] == "verifier_failed"
    assert failed.attributes["decision_retry.branch.diff_lines"] == 2
    assert failed.attributes["decision_retry.tests.failed"] == 1
    assert span[b1.id].status.status_code is StatusCode.OK
    assert span[b1.id].attributes["decision_retry.tests.passed"] == 4
    assert span[b2.id].status.status_code is StatusCode.ERROR
    assert span[b3.id].status.status_code is StatusCode.UNSET
    assert span[b3.id].attributes["decision_retry.branch.outcome"] == "unfinished"


def test_tool_and_test_spans_are_execute_tool_with_clipped_results(live):
    tools = [s for s in live["spans"] if s.name.startswith("execute_tool ")]
    assert {s.attributes["gen_ai.operation.name"] for s in tools} == {"execute_tool"}
    read = next(s for s in tools if s.name == "execute_tool read")
    assert read.attributes["gen_ai.tool.name"] == "read"
    assert read.attributes["gen_ai.tool.call.arguments"] == '{"path": "calc/ops.py"}'
    assert len(read.attributes["gen_ai.tool.call.result"]) == TEXT_LIMIT
    tests = sorted(
        (s for s in tools if s.name == "execute_tool run_tests"), key=lambda s: s.start_time
    )
    assert [s.attributes["decision_retry.test.failed"] for s in tests] == [1, 0]
    assert [s.status.status_code for s in tests] == [StatusCode.ERROR, StatusCode.UNSET]
    assert tests[0].attributes["error.type"] == "tests_failed"


def test_mh_step_span_has_the_parts_of_log_a_and_links_both_branches(live):
    (span,) = [s for s in live["spans"] if s.name == "mh_step"]
    a = span.attributes
    assert a["decision_retry.mh.accepted"] is True
    assert a["decision_retry.mh.log_accept"] == 1.2
    assert a["decision_retry.mh.log_cut_correction"] == -0.1
    assert a["decision_retry.mh.cut_position"] == 6
    by_id = {s.context.span_id: s for s in live["spans"]}
    linked = {
        link.attributes["decision_retry.link"]: by_id[link.context.span_id].attributes[
            "decision_retry.branch.id"
        ]
        for link in span.links
    }
    b0, b1, *_ = live["b"]
    assert linked == {"current": b0.id, "proposal": b1.id}


def shape(spans: list[ReadableSpan]) -> Counter:
    """Spans without ids and times: name, parent name, attributes, status, link target names."""
    by_id = {s.context.span_id: s for s in spans}

    def name(span_id):
        return by_id[span_id].name if span_id in by_id else None

    return Counter(
        (
            s.name,
            name(s.parent.span_id) if s.parent else None,
            tuple(sorted(s.attributes.items())),
            s.status.status_code,
            tuple(name(link.context.span_id) for link in s.links),
        )
        for s in spans
    )


def test_replaying_the_stored_run_gives_the_same_spans_as_recording_it(live):
    provider, exporter = in_memory()
    listener = SpanListener(provider)
    replay(live["tree"], listener)
    assert shape(list(exporter.get_finished_spans())) == shape(live["spans"])
    assert listener.clock is time.time_ns  # the real clock is back


def test_shutdown_ends_an_unfinished_run_and_its_open_branch(tmp_path):
    provider, exporter = in_memory()
    listener = SpanListener(provider)
    rec = Recorder(None, listeners=[listener])
    rec.start_run(model="scripted", strategy="restart")
    branch = rec.start_branch()
    rec.record_turn(branch, tokens=tokens(READ))
    assert [s.name for s in exporter.get_finished_spans()] == ["chat scripted"]
    assert listener.shutdown() is True
    ended = {s.name: s for s in exporter.get_finished_spans()}
    assert set(ended) == {"chat scripted", "branch initial", "invoke_agent decision-retry"}
    root = ended["invoke_agent decision-retry"]
    assert root.attributes["decision_retry.run.outcome"] == "unfinished"
    assert root.status.status_code is StatusCode.UNSET

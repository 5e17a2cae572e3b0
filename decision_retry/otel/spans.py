"""The span listener: trace nodes become OpenTelemetry spans, in a tree, as they arrive.

Nodes come one by one through the Recorder; each becomes a span once its extent is known. The
root `invoke_agent decision-retry` and one span per branch stay open until their end records
arrive; `chat <model>`, `execute_tool <name>` and `mh_step` spans end when their node arrives;
`decision <label>` spans sit inside their turn's span, at the decision's share of its tokens. Only
runs carry timestamps, so a child span starts where the previous event of its branch ended and
ends when its node arrives (a test run starts `duration_s` before that). What each span says is in
`attributes.py`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, Status, StatusCode

from decision_retry import __version__
from decision_retry.otel import attributes as A
from decision_retry.trace.models import (
    Branch,
    Cut,
    DecisionPoint,
    MHStep,
    Run,
    RunTree,
    TestRun,
    ToolCall,
    Turn,
)


def _ns(when: datetime) -> int:
    """A timezone-aware datetime as integer nanoseconds since the epoch."""
    return int(when.timestamp() * 1_000_000) * 1_000


@dataclass
class _BranchState:
    span: Span
    parent_id: str | None
    cut: Cut | None
    last_ns: int  # end of the branch's latest event: where its next child span starts
    turns: dict[int, str] = field(default_factory=dict)  # turn index -> turn id
    last_test: TestRun | None = None
    open: bool = True


@dataclass(frozen=True)
class _TurnState:
    context: SpanContext
    branch_id: str
    start_ns: int
    end_ns: int
    length: int  # tokens


class SpanListener:
    """A `TraceListener` that turns trace nodes into spans on a tracer provider as they arrive.

    `tracer_provider`: where spans go (default: the global one). `on_shutdown(timeout_s)` flushes
    within a bound and says whether every span was delivered (`listener_from_config` sets it).
    `clock` (nanoseconds) is public so that a replay can lay stored nodes out in time.
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        *,
        on_shutdown: Callable[[float | None], bool] | None = None,
    ) -> None:
        self.provider = tracer_provider or trace.get_tracer_provider()
        self.tracer = self.provider.get_tracer("decision_retry", __version__)
        self.clock: Callable[[], int] = time.time_ns
        self.spans_ended = 0
        self._on_shutdown = on_shutdown
        self._lock = threading.RLock()
        self._start(None, None)

    def _start(self, run: Run | None, root: Span | None) -> None:
        self._run, self._root = run, root
        self._branches: dict[str, _BranchState] = {}
        self._turns: dict[str, _TurnState] = {}
        self._decisions: dict[tuple[str, int], SpanContext] = {}  # (turn id, position)
        self._decision_ids: dict[tuple[str, int], str] = {}  # the same key -> decision node id
        self._latest = 0  # latest end of any span: the root never ends before it

    # -- placing spans ---------------------------------------------------------------------

    def _span(self, name: str, parent: SpanContext | None, start: int, attrs: dict, links=()):
        context = trace.set_span_in_context(NonRecordingSpan(parent)) if parent else None
        if self._run is not None:
            attrs = {"gen_ai.conversation.id": self._run.id, **attrs}
        return self.tracer.start_span(
            name, context, attributes=A.clean(attrs), links=list(links), start_time=start
        )

    def _end(self, span: Span, end: int) -> None:
        span.end(end_time=end)
        self._latest = max(self._latest, end)
        self.spans_ended += 1

    def _root_context(self) -> SpanContext | None:
        return self._root.get_span_context() if self._root is not None else None

    def _on_branch(self, branch_id: str | None) -> tuple[_BranchState | None, SpanContext | None]:
        """The branch's state and the parent for its children (the root if it is unknown)."""
        state = self._branches.get(branch_id) if branch_id else None
        return state, state.span.get_span_context() if state else self._root_context()

    def _cut_target(
        self, branch_id: str | None, cut: Cut
    ) -> tuple[SpanContext, str, str] | None:
        """The decision span (else the turn span) at `cut` in the trajectory of `branch_id`:
        its context, its kind and the id of its trace node."""
        state = self._branches.get(branch_id) if branch_id else None
        while state is not None:
            turn_id = state.turns.get(cut.turn)
            if turn_id is not None:
                if (turn_id, cut.position) in self._decisions:
                    key = (turn_id, cut.position)
                    return self._decisions[key], "decision", self._decision_ids[key]
                turn = self._turns.get(turn_id)
                return (turn.context, "turn", turn_id) if turn is not None else None
            if state.cut is None or cut.turn >= state.cut.turn or state.parent_id is None:
                return None  # the turn is neither the branch's own nor inherited
            state = self._branches.get(state.parent_id)
        return None

    def _branch_child(self, branch_id: str | None, name: str, attrs: dict, not_before: int = 0):
        """A span under the branch from its last event (or later) to now; returns it ended."""
        state, parent = self._on_branch(branch_id)
        end = self.clock()
        start = min(max(state.last_ns if state else end, not_before), end)
        span = self._span(name, parent, start, attrs)
        if state is not None:
            state.last_ns = end
        return span, start, end

    # -- TraceListener ---------------------------------------------------------------------

    def start_run(self, run: Run) -> None:
        with self._lock:
            self._close_open()
            self._start(run, None)
            name = f"invoke_agent {A.AGENT_NAME}"
            self._root = self._span(name, None, _ns(run.created_at), A.run_attributes(run))

    def start_branch(self, branch: Branch) -> None:
        with self._lock:
            links, attrs = [], A.branch_attributes(branch)
            if branch.cut is not None:
                target = self._cut_target(branch.parent_id, branch.cut)
                if target is not None:
                    links.append(Link(target[0], {"decision_retry.link": f"cut_from_{target[1]}"}))
                    # the link again as an attribute (some backends, Phoenix, drop span links):
                    # the decision's (or turn's) node id, which its span carries too
                    attrs[f"decision_retry.cut.{target[1]}_id"] = target[2]
            start = self.clock()
            span = self._span(
                f"branch {branch.strategy}", self._root_context(), start, attrs, links
            )
            self._branches[branch.id] = _BranchState(span, branch.parent_id, branch.cut, start)

    def record_turn(self, turn: Turn) -> None:
        with self._lock:
            name = f"chat {A.chat_model(turn, self._run)}"
            attrs = A.turn_attributes(turn, self._run)
            span, start, end = self._branch_child(turn.branch_id, name, attrs)
            self._end(span, end)
            context, n = span.get_span_context(), len(turn.tokens)
            self._turns[turn.id] = _TurnState(context, turn.branch_id, start, end, n)
            if turn.branch_id in self._branches:
                self._branches[turn.branch_id].turns[turn.index] = turn.id

    def record_decision(self, decision: DecisionPoint) -> None:
        with self._lock:
            turn = self._turns.get(decision.turn_id)
            if turn is None:  # its turn was never seen: a point in time under the root
                parent, start = self._root_context(), self.clock()
                end = start
            else:  # token p of L: the p-th L-th of the turn's span
                parent, length = turn.context, max(turn.length, 1)
                duration = turn.end_ns - turn.start_ns
                start = turn.start_ns + duration * decision.position // length
                end = turn.start_ns + duration * (decision.position + 1) // length
            attrs = A.decision_attributes(decision)
            span = self._span(A.decision_name(decision), parent, start, attrs)
            self._end(span, end)
            key = (decision.turn_id, decision.position)
            self._decisions.setdefault(key, span.get_span_context())  # entropy sorts before tool
            self._decision_ids.setdefault(key, decision.id)

    def record_tool_call(self, call: ToolCall) -> None:
        with self._lock:
            turn = self._turns.get(call.turn_id)
            branch_id = turn.branch_id if turn is not None else None
            attrs = A.tool_attributes(call.action, branch_id or "") | A.tool_call_attributes(call)
            span, _, end = self._branch_child(branch_id, f"execute_tool {call.action}", attrs)
            self._end(span, end)

    def record_test_run(self, test_run: TestRun) -> None:
        with self._lock:
            branch_id = test_run.branch_id
            attrs = A.tool_attributes(A.TEST_TOOL, branch_id) | A.testrun_attributes(test_run)
            began = self.clock() - int(test_run.duration_s * 1e9)
            span, _, end = self._branch_child(
                branch_id, f"execute_tool {A.TEST_TOOL}", attrs, began
            )
            if not test_run.ok:
                span.set_status(Status(StatusCode.ERROR, f"{test_run.failed} failed"))
            self._end(span, end)
            if branch_id in self._branches:
                self._branches[branch_id].last_test = test_run

    def record_mh_step(self, step: MHStep) -> None:
        with self._lock:
            roles = (("current", step.current_branch_id), ("proposal", step.proposal_branch_id))
            links = [
                Link(self._branches[b].span.get_span_context(), {"decision_retry.link": role})
                for role, b in roles
                if b in self._branches
            ]
            now = self.clock()
            attrs = A.mh_step_attributes(step)
            self._end(self._span("mh_step", self._root_context(), now, attrs, links), now)

    def finish_branch(self, branch: Branch) -> None:
        with self._lock:
            state = self._branches.get(branch.id)
            if state is not None and state.open:
                self._end_branch(state, branch)

    def _end_branch(self, state: _BranchState, branch: Branch | None) -> None:
        state.open = False
        state.span.set_attributes(A.clean(A.branch_end_attributes(branch, state.last_test)))
        if branch is not None and branch.passed is not None:
            ok = Status(StatusCode.OK)
            failed = Status(StatusCode.ERROR, branch.outcome or "verifier failed")
            state.span.set_status(ok if branch.passed else failed)
        self._end(state.span, max(self.clock(), state.last_ns))

    def finish_run(self, run: Run) -> None:
        with self._lock:
            self._close_open(run)

    def close(self) -> None:
        """End every open span now; an unfinished run's root gets outcome `unfinished`."""
        with self._lock:
            self._close_open()

    def _close_open(self, run: Run | None = None) -> None:
        """End open branch spans, then the root; `run` carries the outcome if it finished."""
        for state in self._branches.values():
            if state.open:
                self._end_branch(state, None)
        if self._root is None:
            return
        root, self._root = self._root, None
        outcome = run.outcome if run is not None else None
        root.set_attribute("decision_retry.run.outcome", outcome or "unfinished")
        if outcome == "solved":
            root.set_status(Status(StatusCode.OK))
        elif outcome == "error":
            root.set_status(Status(StatusCode.ERROR, "the run ended with an error"))
        end = _ns(run.finished_at) if run is not None and run.finished_at else self.clock()
        self._end(root, max(end, self._latest))

    def shutdown(self, timeout_s: float | None = None) -> bool:
        """End open spans, then flush within `timeout_s`; True when every span was delivered."""
        self.close()
        if self._on_shutdown is not None:
            return self._on_shutdown(timeout_s)
        flush = getattr(self.provider, "force_flush", None)
        return bool(flush(int((timeout_s or 5.0) * 1000))) if flush is not None else True


def _events(tree: RunTree) -> Iterator[tuple[str, Any]]:
    """A stored run's nodes as listener calls, in the order they were recorded."""
    yield "start_run", tree.run
    steps = list(tree.mh_steps)
    for branch in tree.branches:
        yield "start_branch", branch
        for turn in tree.own_turns(branch.id):
            yield "record_turn", turn
            yield from (("record_decision", d) for d in tree.decisions_of(turn.id))
            yield from (("record_tool_call", c) for c in tree.tool_calls_of(turn.id))
        yield from (("record_test_run", r) for r in tree.test_runs_of(branch.id))
        if branch.outcome is not None:
            yield "finish_branch", branch
        yield from (("record_mh_step", s) for s in steps if s.proposal_branch_id == branch.id)
    known = {b.id for b in tree.branches}
    yield from (("record_mh_step", s) for s in steps if s.proposal_branch_id not in known)
    if tree.run.outcome is not None:
        yield "finish_run", tree.run


def replay(tree: RunTree, listener: SpanListener) -> int:
    """Feed a stored run to `listener`, its events spread evenly over the run's duration."""
    events = list(_events(tree))
    start = _ns(tree.run.created_at)
    finished = tree.run.finished_at
    end = _ns(finished) if finished is not None else start + len(events) * 1_000_000
    now = [start]
    listener.clock = lambda: now[0]
    try:
        for i, (method, node) in enumerate(events):
            now[0] = start + (end - start) * (i + 1) // (len(events) + 1)
            getattr(listener, method)(node)
        listener.close()  # an unfinished run ends at its last event, not at export time
    finally:
        listener.clock = time.time_ns
    return len(events)

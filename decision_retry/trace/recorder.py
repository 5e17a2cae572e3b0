"""The Recorder: what the agent and samplers call as a run proceeds.

Each call builds an immutable node, writes it to the store (committed at once) and forwards it to
every listener, e.g. the OpenTelemetry exporter. Listener failures are logged, never raised:
observability must not end a run.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol

from decision_retry.choices import current_name
from decision_retry.tokens import Token
from decision_retry.trace.decisions import SpikeRule, ToolSpan, decision_at, detect_decisions
from decision_retry.trace.models import (
    Branch,
    Cut,
    DecisionPoint,
    MHStep,
    Run,
    TestRun,
    ToolCall,
    Turn,
    TurnScores,
    utcnow,
)
from decision_retry.trace.store import TraceStore

log = logging.getLogger(__name__)


class TraceListener(Protocol):
    """Receives every node as it is recorded (after it is stored)."""

    def start_run(self, run: Run) -> None: ...
    def start_branch(self, branch: Branch) -> None: ...
    def record_turn(self, turn: Turn) -> None: ...
    def record_scores(self, scores: TurnScores) -> None: ...
    def record_decision(self, decision: DecisionPoint) -> None: ...
    def record_tool_call(self, call: ToolCall) -> None: ...
    def record_test_run(self, test_run: TestRun) -> None: ...
    def record_mh_step(self, step: MHStep) -> None: ...
    def finish_branch(self, branch: Branch) -> None: ...
    def finish_run(self, run: Run) -> None: ...


def _id(node: Branch | Turn | str | None) -> str | None:
    return node if node is None or isinstance(node, str) else node.id


class Recorder:
    """Records one run at a time into `store` (None: listeners only) and notifies `listeners`."""

    def __init__(
        self, store: TraceStore | None = None, listeners: Sequence[TraceListener] = ()
    ) -> None:
        self.store = store
        self.listeners = list(listeners)
        self.run: Run | None = None
        self.branches: dict[str, Branch] = {}
        self._counts: Counter[str] = Counter()  # next ordinal per parent id and kind

    def _emit(self, method: str, node: Any) -> None:
        """Store the node (unless it is an end record) and forward it to every listener."""
        if self.store is not None:
            if method == "finish_branch":
                self.store.finish_branch(node)
            elif method == "finish_run":
                self.store.finish_run(node)
            else:
                self.store.add(node)
        for listener in self.listeners:
            if not hasattr(listener, method):  # a listener made before the method existed
                continue
            try:
                getattr(listener, method)(node)
            except Exception:
                log.exception("trace listener %r failed in %s", listener, method)

    def _next(self, key: str) -> int:
        n = self._counts[key]
        self._counts[key] += 1
        return n

    def _run_id(self) -> str:
        if self.run is None:
            raise RuntimeError("call start_run before recording into a run")
        return self.run.id

    def start_run(
        self,
        *,
        model: str,
        strategy: str,
        config: dict[str, Any] | None = None,
        seed: int | None = None,
        repo: str | None = None,
    ) -> Run:
        """Begin a run; every later call records into it."""
        self.run = Run(model=model, strategy=strategy, config=config or {}, seed=seed, repo=repo)
        self.branches.clear()
        self._counts.clear()
        self._emit("start_run", self.run)
        return self.run

    def start_branch(
        self, *, parent: Branch | str | None = None, cut: Cut | None = None, strategy: str = ""
    ) -> Branch:
        """Begin an attempt: a fresh one, or a retry cut from `parent` at `cut`. A run recorded
        under a strategy's former name (choices.FORMER) labels its branches with that name when
        resumed: the label is part of a branch's id, so the replayed branches are the recorded
        ones (`logs` shows the current name)."""
        run_id = self._run_id()
        if self.run is not None and current_name(self.run.strategy) == strategy:
            strategy = self.run.strategy
        branch = Branch(
            run_id=run_id,
            index=self._next(f"branch:{run_id}"),
            parent_id=_id(parent),
            cut=cut,
            strategy=strategy or ("initial" if parent is None else "retry"),
        )
        self.branches[branch.id] = branch
        self._emit("start_branch", branch)
        return branch

    def record_turn(
        self,
        branch: Branch | str,
        *,
        tokens: Sequence[Token],
        text: str | None = None,
        prompt: str = "",
        params: dict[str, Any] | None = None,
        index: int | None = None,
    ) -> Turn:
        """Record one model call; `index` defaults to the next turn number of the branch."""
        branch_id = _id(branch)
        assert branch_id is not None
        if index is None:
            owner = self.branches.get(branch_id)
            start = owner.cut.turn if owner is not None and owner.cut is not None else 0
            index = start + self._counts[f"turn:{branch_id}"]
        self._counts[f"turn:{branch_id}"] += 1
        turn = Turn(
            branch_id=branch_id,
            index=index,
            prompt=prompt,
            tokens=tuple(tokens),
            params=params or {},
            text="".join(t.text for t in tokens) if text is None else text,
        )
        self._emit("record_turn", turn)
        return turn

    def record_decision(
        self,
        turn: Turn,
        position: int,
        *,
        kind: str = "entropy",
        label: str | None = None,
        span: str | None = None,
        snapshot: str | None = None,
    ) -> DecisionPoint:
        """Record the decision point at token `position` of `turn`."""
        point = decision_at(turn, position, kind=kind, label=label, span=span, snapshot=snapshot)
        self._emit("record_decision", point)
        return point

    def record_decisions(
        self,
        turn: Turn,
        rule: SpikeRule | None = None,
        spans: Sequence[ToolSpan] = (),
        *,
        snapshot: str | None = None,
    ) -> list[DecisionPoint]:
        """Detect a turn's decisions (spikes per `rule`, tool spans) and record them."""
        points = detect_decisions(turn, rule, spans, snapshot=snapshot)
        for point in points:
            self._emit("record_decision", point)
        return points

    def record_scores(self, turn: Turn | str | None, tokens: Sequence[Token]) -> TurnScores | None:
        """Record a recorded turn's tokens (the turn or its id) as scored after it (None when the
        turn was not recorded): the same ids, with the values computed since."""
        if turn is None:
            return None
        scores = TurnScores(turn_id=_id(turn), scores=tuple(tokens))
        self._emit("record_scores", scores)
        return scores

    def record_tool_call(
        self,
        turn: Turn | str,
        *,
        action: str,
        arguments: dict[str, Any] | None = None,
        observation: str = "",
    ) -> ToolCall:
        """Record one action parsed from `turn` and its observation."""
        turn_id = _id(turn)
        assert turn_id is not None
        call = ToolCall(
            turn_id=turn_id,
            index=self._next(f"tool:{turn_id}"),
            action=action,
            arguments=arguments or {},
            observation=observation,
        )
        self._emit("record_tool_call", call)
        return call

    def record_test_run(
        self,
        branch: Branch | str,
        *,
        command: str,
        exit_code: int,
        passed: int = 0,
        failed: int = 0,
        errors: int = 0,
        output_tail: str = "",
        duration_s: float = 0.0,
        cached: bool = False,
    ) -> TestRun:
        """Record one run of the tests on `branch`'s repository state (`cached`: the result
        of an identical earlier run; nothing ran)."""
        branch_id = _id(branch)
        assert branch_id is not None
        test_run = TestRun(
            branch_id=branch_id,
            index=self._next(f"test:{branch_id}"),
            command=command,
            passed=passed,
            failed=failed,
            errors=errors,
            exit_code=exit_code,
            output_tail=output_tail,
            duration_s=duration_s,
            cached=cached,
        )
        self._emit("record_test_run", test_run)
        return test_run

    def record_mh_step(
        self,
        *,
        current: Branch | str | None = None,
        proposal: Branch | str | None = None,
        **fields: Any,
    ) -> MHStep:
        """Record one MH step; `fields` are MHStep's (cut_turn, cut_position, log_accept, ...)."""
        run_id = self._run_id()
        step = MHStep(
            run_id=run_id,
            index=self._next(f"mh:{run_id}"),
            current_branch_id=_id(current),
            proposal_branch_id=_id(proposal),
            **fields,
        )
        self._emit("record_mh_step", step)
        return step

    def finish_branch(
        self,
        branch: Branch | str,
        *,
        outcome: str,
        passed: bool | None = None,
        final_diff: str | None = None,
    ) -> Branch:
        """Record how an attempt ended: outcome, whether its tests passed, its final repo diff."""
        branch_id = _id(branch)
        known = self.branches.get(branch_id) if branch_id else None
        if known is None:
            if not isinstance(branch, Branch):
                raise KeyError(f"unknown branch {branch_id!r}: pass the Branch itself")
            known = branch
        done = known.model_copy(
            update={"outcome": outcome, "passed": passed, "final_diff": final_diff}
        )
        self.branches[done.id] = done
        self._emit("finish_branch", done)
        return done

    def finish_run(self, outcome: str, costs: dict[str, Any] | None = None) -> Run:
        """Record how the run ended ("solved", "exhausted", "error", ...) and, with `costs`,
        where its seconds went (costs.py)."""
        self._run_id()
        assert self.run is not None
        self.run = self.run.model_copy(update={"outcome": outcome, "finished_at": utcnow(),
                                               "costs": costs})
        self._emit("finish_run", self.run)
        return self.run

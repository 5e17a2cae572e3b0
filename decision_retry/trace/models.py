"""Trace tree nodes: immutable values whose ids derive from their parent id and content.

A run holds branches (attempts); a branch holds turns (model calls) and test runs; a turn holds
decision points and tool calls; MH steps hang off the run. A retry branch names the branch it was
cut from and where (turn index, token position): it inherits that branch's turns before the cut
turn without copying them, and its own first turn is the cut turn regenerated in full (the kept
prefix tokens followed by the resampled suffix).

Fields that only become known when a node ends (a run's outcome, a branch's outcome, test verdict
and final diff) are excluded from the id, so finishing a node never changes its identity.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    computed_field,
    field_validator,
    model_serializer,
    model_validator,
)

from decision_retry.tokens import Alternative, Token

ID_LENGTH = 20  # hex digits of sha256 kept: 80 bits, collision-free for any realistic store


def content_id(kind: str, content: dict[str, Any]) -> str:
    """Hash a node kind and its JSON-able content (which includes the parent id) to a hex id."""
    blob = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # surrogatepass: a lone surrogate in model output (a broken byte pair) still hashes
    return hashlib.sha256(f"{kind}\0{blob}".encode("utf-8", "surrogatepass")).hexdigest()[:ID_LENGTH]


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class Node(BaseModel):
    """Base for trace nodes: frozen, with a content-derived `id`."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    node_kind: ClassVar[str] = "node"
    # fields filled when the node finishes; they do not take part in the id
    mutable_fields: ClassVar[frozenset[str]] = frozenset()
    # stored with the node but not part of its id (how a value was obtained, not what it is)
    unhashed_fields: ClassVar[frozenset[str]] = frozenset()

    @computed_field  # type: ignore[prop-decorator]
    @cached_property
    def id(self) -> str:
        """Hash of the kind, the parent id and the identity fields."""
        fields = set(type(self).model_fields) - self.mutable_fields - self.unhashed_fields
        return content_id(self.node_kind, self.model_dump(mode="json", include=fields))

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> Any:
        """A copy with `update` applied; its id is recomputed from the new content."""
        copy = super().model_copy(update=update, deep=deep)
        copy.__dict__.pop("id", None)  # drop the cached id copied from self
        return copy


class Run(Node):
    """One invocation: what was asked for and how, and how it ended."""

    node_kind: ClassVar[str] = "run"
    mutable_fields: ClassVar[frozenset[str]] = frozenset({"outcome", "finished_at", "costs"})

    model: str
    strategy: str
    config: dict[str, Any] = Field(default_factory=dict)
    seed: int | None = None
    repo: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    outcome: str | None = None
    finished_at: datetime | None = None
    costs: dict[str, Any] | None = None  # where its seconds went (costs.py), recorded at the end

    @field_validator("costs", mode="before")
    @classmethod
    def _costs_json(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value


class Cut(BaseModel):
    """Where a retry branch was cut from its parent: turn index, token position, entropy there."""

    model_config = ConfigDict(frozen=True)

    turn: int = Field(ge=0)
    position: int = Field(ge=0)
    entropy: float = 0.0


class Branch(Node):
    """One attempt. `parent_id` + `cut` say where a retry split off; None for a fresh start."""

    node_kind: ClassVar[str] = "branch"
    mutable_fields: ClassVar[frozenset[str]] = frozenset({"outcome", "passed", "final_diff"})

    run_id: str
    index: int = Field(ge=0)  # ordinal within the run
    parent_id: str | None = None
    cut: Cut | None = None
    strategy: str = ""  # the move that created it: "initial", "entropy-cut", "restart", ...
    outcome: str | None = None
    passed: bool | None = None
    final_diff: str | None = None

    @model_validator(mode="after")
    def _cut_needs_parent(self) -> Branch:
        if self.cut is not None and self.parent_id is None:
            raise ValueError("a branch with a cut must name the parent branch it was cut from")
        return self


class Turn(Node):
    """One model call: the prompt it saw (summarised), its tokens, sampling params and text."""

    node_kind: ClassVar[str] = "turn"

    branch_id: str
    index: int = Field(ge=0)  # turn number in the conversation (a retry starts at its cut turn)
    prompt: str = ""
    tokens: tuple[Token, ...] = ()
    params: dict[str, Any] = Field(default_factory=dict)
    text: str = ""


class TurnScores(Node):
    """A turn's tokens as scored after the turn was recorded (a delayed decision scores a reply
    only when it reads it: its no-body scores, samplers/surprise.py, and a local move's kept
    tail under the new prefix, samplers/local.py). The store puts them in the turn on load."""

    node_kind: ClassVar[str] = "turn_scores"

    turn_id: str
    scores: tuple[Token, ...]

    def merged(self, turn: Turn) -> Turn:
        """`turn` with these tokens; its id stays the one it was recorded with."""
        out = turn.model_copy(update={"tokens": self.scores})
        out.__dict__["id"] = turn.id  # scores are not part of what the turn is
        return out


class DecisionPoint(Node):
    """A token where the trajectory could have gone another way: entropy spike or tool choice."""

    node_kind: ClassVar[str] = "decision"

    turn_id: str
    position: int = Field(ge=0)
    entropy: float
    token_id: int
    token: str  # the chosen token's text
    alternatives: tuple[Alternative, ...] = ()
    kind: Literal["entropy", "tool"] = "entropy"
    label: str | None = None  # for tool decisions: "action", "file", "function", ...
    span: str | None = None  # for tool decisions: the full chosen text (e.g. the file path)
    snapshot: str | None = None  # repository snapshot (git sha) taken before the turn's actions

    @property
    def choice(self) -> str:
        """What was chosen: the span text for tool decisions, else the token text."""
        return self.span if self.span is not None else self.token


class ToolCall(Node):
    """One action parsed from a turn and what it returned."""

    node_kind: ClassVar[str] = "tool_call"

    turn_id: str
    index: int = Field(ge=0)
    action: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    observation: str = ""


class TestRun(Node):
    """One run of the test command on a branch's repository state."""

    __test__ = False  # not a pytest test class
    node_kind: ClassVar[str] = "test_run"
    unhashed_fields: ClassVar[frozenset[str]] = frozenset({"cached"})  # same result, same id

    branch_id: str
    index: int = Field(ge=0)
    command: str
    passed: int = 0
    failed: int = 0
    errors: int = 0
    exit_code: int
    output_tail: str = ""
    duration_s: float = 0.0
    cached: bool = False  # the result of an identical earlier run of the same run: nothing ran

    @property
    def ok(self) -> bool:
        """True when the command exited 0 with no failures or errors."""
        return self.exit_code == 0 and self.failed == 0 and self.errors == 0


class MHStep(Node):
    """One Metropolis-Hastings step: the cut, the proposal and the parts of log A."""

    node_kind: ClassVar[str] = "mh_step"

    run_id: str
    index: int = Field(ge=0)
    current_branch_id: str | None = None
    proposal_branch_id: str | None = None
    cut_turn: int = Field(ge=0)
    cut_position: int = Field(ge=0)
    cut_entropy: float
    proposal_length: int = Field(ge=0)
    log_accept: float
    log_target: float = 0.0  # alpha * (sum logp(x') - sum logp(x)) over the suffixes
    log_proposal: float = 0.0  # sum logq(x) - sum logq(x')
    log_cut_correction: float = 0.0  # log c(t | x') - log c(t | x)
    log_verifier: float = 0.0  # lambda * (r(x') - r(x))
    accepted: bool
    decode_tokens: int = Field(ge=0)
    # remote engines (top-k only): the interval of log A, and whether log u fell inside it
    log_accept_lo: float | None = None
    log_accept_hi: float | None = None
    approximate: bool | None = None
    # a delayed decision: 1 = rejected before the cut correction (not computed: log_accept is
    # the rest of log A), 2 = both stages drawn (samplers/chain.py Chain.decide)
    stage: int | None = None

    @model_serializer(mode="wrap")
    def _omit_exact(self, handler):
        # steps of exact engines, and of one-stage decisions, serialise as before these fields
        # existed: ids are unchanged
        data = handler(self)
        if isinstance(data, dict):
            for key in ("log_accept_lo", "log_accept_hi", "approximate", "stage"):
                if key in data and data[key] is None:
                    del data[key]
        return data


class RunTree(BaseModel):
    """Everything recorded for one run, in insertion order, with navigation helpers."""

    model_config = ConfigDict(frozen=True)

    run: Run
    branches: tuple[Branch, ...] = ()
    turns: tuple[Turn, ...] = ()
    decisions: tuple[DecisionPoint, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    test_runs: tuple[TestRun, ...] = ()
    mh_steps: tuple[MHStep, ...] = ()

    def branch(self, branch_id: str) -> Branch:
        """The branch with this id (KeyError if absent)."""
        for b in self.branches:
            if b.id == branch_id:
                return b
        raise KeyError(branch_id)

    def children(self, branch_id: str | None) -> list[Branch]:
        """Branches whose parent is `branch_id` (None: the roots)."""
        return [b for b in self.branches if b.parent_id == branch_id]

    def own_turns(self, branch_id: str) -> list[Turn]:
        """Turns recorded on this branch itself, by turn index."""
        return sorted((t for t in self.turns if t.branch_id == branch_id), key=lambda t: t.index)

    def trajectory(self, branch_id: str) -> list[Turn]:
        """The branch's full conversation: inherited turns before its cut, then its own turns."""
        branch = self.branch(branch_id)
        inherited: list[Turn] = []
        if branch.parent_id is not None and branch.cut is not None:
            inherited = [t for t in self.trajectory(branch.parent_id) if t.index < branch.cut.turn]
        return inherited + self.own_turns(branch_id)

    def decisions_of(self, turn_id: str) -> list[DecisionPoint]:
        """Decision points of one turn, by position."""
        return sorted((d for d in self.decisions if d.turn_id == turn_id), key=lambda d: d.position)

    def tool_calls_of(self, turn_id: str) -> list[ToolCall]:
        """Tool calls parsed from one turn, in order."""
        return sorted((c for c in self.tool_calls if c.turn_id == turn_id), key=lambda c: c.index)

    def test_runs_of(self, branch_id: str) -> list[TestRun]:
        """Test runs of one branch, in order."""
        return sorted(
            (r for r in self.test_runs if r.branch_id == branch_id), key=lambda r: r.index
        )

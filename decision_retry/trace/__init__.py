"""The trace tree: immutable nodes, decision points, a SQLite store, a recorder and a report."""

from decision_retry.trace.compare import StrategyChange, compare_all, compare_branch, levenshtein
from decision_retry.trace.decisions import (
    SpikeRule,
    ToolChoice,
    ToolSpan,
    decision_at,
    detect_decisions,
    entropy_spikes,
    tool_choices,
)
from decision_retry.trace.html import render_report
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
from decision_retry.trace.recorder import Recorder, TraceListener
from decision_retry.trace.store import TraceStore, UnknownRun, db_path, trace_home

__all__ = [
    "Branch",
    "Cut",
    "DecisionPoint",
    "MHStep",
    "Recorder",
    "Run",
    "RunTree",
    "SpikeRule",
    "StrategyChange",
    "TestRun",
    "ToolCall",
    "ToolChoice",
    "ToolSpan",
    "TraceListener",
    "TraceStore",
    "Turn",
    "UnknownRun",
    "compare_all",
    "compare_branch",
    "db_path",
    "decision_at",
    "detect_decisions",
    "entropy_spikes",
    "levenshtein",
    "render_report",
    "tool_choices",
    "trace_home",
]

"""Decision-point detection: entropy-spike rules and tool spans mapped onto tokens."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from decision_retry.trace import (
    SpikeRule,
    ToolSpan,
    Turn,
    decision_at,
    detect_decisions,
    entropy_spikes,
)
from decision_retry.trace.decisions import tool_choices
from tests.trace.sample_run import tokens

H = [0.2, 2.5, 2.6, 0.1, 1.0, 3.0]


def test_absolute_threshold():
    assert entropy_spikes(H, SpikeRule(threshold=2.0)) == [1, 2, 5]


def test_jump_over_previous_token():
    # jumps: 0.2 (from H_-1 = 0), 2.3, 0.1, -2.5, 0.9, 2.0
    assert entropy_spikes(H, SpikeRule(threshold=None, jump=1.0)) == [1, 5]
    assert entropy_spikes([1.5], SpikeRule(threshold=None, jump=1.0)) == [0]


def test_top_fraction_of_turn():
    assert entropy_spikes(H, SpikeRule(threshold=None, top_fraction=0.5)) == [1, 2, 5]
    # ceil(0.2 * 6) = 2 positions; ties go to the earlier one
    assert entropy_spikes([1.0, 2.0, 2.0, 2.0], SpikeRule(threshold=None, top_fraction=0.5)) == [
        1,
        2,
    ]


def test_criteria_combine_with_and():
    rule = SpikeRule(threshold=2.0, jump=1.0)
    assert entropy_spikes(H, rule) == [1, 5]  # 2 is above threshold but no jump


def test_empty_sequence():
    assert entropy_spikes([], SpikeRule(top_fraction=0.3)) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"threshold": None},
        {"threshold": None, "top_fraction": 1.5},
        {"threshold": -1.0},
    ],
)
def test_bad_rules_are_rejected(kwargs):
    with pytest.raises(ValidationError):
        SpikeRule(**kwargs)


TOKS = tokens([("edit", 0.2), (" src", 1.0), ("/", 0.1), ("ops", 2.0), (".py", 0.1), ("\n", 0.1)])
TEXT = "edit src/ops.py\n"


def test_span_maps_to_first_overlapping_token():
    spans = [ToolSpan(0, 4, "action"), ToolSpan(5, 15, "file"), ToolSpan(9, 12, "function")]
    got = tool_choices(TEXT, TOKS, spans)
    assert [(c.position, c.label, c.text) for c in got] == [
        (0, "action", "edit"),
        (1, "file", "src/ops.py"),  # " src" starts at 4 and overlaps [5, 15)
        (3, "function", "ops"),
    ]


def test_span_inside_a_token():
    assert tool_choices(TEXT, TOKS, [ToolSpan(6, 7, "x")])[0].position == 1


def test_bad_spans_are_skipped():
    assert (
        tool_choices(
            TEXT, TOKS, [ToolSpan(3, 3, "empty"), ToolSpan(10, 99, "out"), ToolSpan(-1, 2, "neg")]
        )
        == []
    )


def test_text_that_differs_from_token_pieces_is_aligned():
    # the turn text has a prefix the tokens lack, and a character decoded differently
    toks = tokens([("read", 0.1), (" caf", 1.0), ("\ufffd", 2.0), ("\ufffd", 0.1), (".py", 0.2)])
    text = "> read café.py"
    got = tool_choices(
        text, toks, [ToolSpan(2, 6, "action"), ToolSpan(7, 14, "file"), ToolSpan(11, 14, "ext")]
    )
    assert [(c.position, c.text) for c in got] == [(0, "read"), (1, "café.py"), (4, ".py")]


def test_detect_decisions_builds_points_with_token_details():
    turn = Turn(branch_id="b", index=0, tokens=TOKS, text=TEXT)
    points = detect_decisions(
        turn, SpikeRule(threshold=1.5), [ToolSpan(5, 15, "file")], snapshot="abc123"
    )
    assert [(d.position, d.kind, d.label) for d in points] == [
        (1, "tool", "file"),
        (3, "entropy", None),
    ]
    spike = points[1]
    assert spike.turn_id == turn.id and spike.entropy == 2.0 and spike.token == "ops"
    assert spike.token_id == TOKS[3].id and spike.alternatives == TOKS[3].top
    assert all(d.snapshot == "abc123" for d in points)
    assert points[0].choice == "src/ops.py" and spike.choice == "ops"
    assert len({d.id for d in points}) == 2


def test_no_rule_means_tool_points_only():
    turn = Turn(branch_id="b", index=0, tokens=TOKS, text=TEXT)
    assert [d.kind for d in detect_decisions(turn, None, [ToolSpan(0, 4, "action")])] == ["tool"]


def test_decision_outside_turn_is_an_error():
    turn = Turn(branch_id="b", index=0, tokens=TOKS, text=TEXT)
    with pytest.raises(ValueError, match="position 6"):
        decision_at(turn, 6)

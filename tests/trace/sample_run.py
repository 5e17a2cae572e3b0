"""A realistic run recorded through the real Recorder into a real SQLite store (test helpers)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

from decision_retry.tokens import Alternative, Token
from decision_retry.trace import Branch, Cut, Recorder, SpikeRule, ToolSpan, TraceStore, Turn


def tokens(pieces: list[tuple[str, float]]) -> list[Token]:
    """Tokens from (text, entropy) pairs; ids hash the text, two alternatives each."""
    out = []
    for text, h in pieces:
        tid = zlib.crc32(text.encode()) % 50_000
        out.append(
            Token(
                id=tid,
                text=text,
                logp=-0.5 * h,
                logq=-0.3 * h,
                entropy=h,
                top=(
                    Alternative(id=tid, text=text, prob=0.6),
                    Alternative(id=7, text=" other", prob=0.2),
                ),
            )
        )
    return out


READ = [
    ("read", 0.4),
    (" ", 0.1),
    ("calc", 2.4),
    ("/", 0.1),
    ("ops", 0.3),
    (".py", 0.1),
    ("\n", 0.05),
]
EDIT_BAD = [
    ("edit", 0.2),
    (" ", 0.1),
    ("add", 1.9),
    ("\n", 0.1),
    ("return", 0.2),
    (" a", 0.3),
    (" -", 3.1),
    (" b", 0.2),
    ("  # </script><b>x</b>", 0.4),
]
EDIT_GOOD = [
    ("edit", 0.2),
    (" ", 0.1),
    ("add", 1.9),
    ("\n", 0.1),
    ("return", 0.2),
    (" a", 0.3),
    (" +", 2.9),
    (" b", 0.2),
]
READ_OTHER = [
    ("read", 0.4),
    (" ", 0.1),
    ("tests", 2.2),
    ("/", 0.1),
    ("test_ops", 0.5),
    (".py", 0.1),
]
RULE = SpikeRule(threshold=1.5)


def spans_for(text: str, kinds: dict[str, str]) -> list[ToolSpan]:
    """Label the words of an action line: first word the action, then the named target."""
    action, _, rest = text.partition(" ")
    target = rest.split("\n")[0]
    spans = [ToolSpan(0, len(action), "action")]
    if target:
        spans.append(ToolSpan(len(action) + 1, len(action) + 1 + len(target), kinds[action]))
    return spans


@dataclass
class SampleRun:
    """What was recorded, to compare with what the store gives back."""

    store: TraceStore
    run_id: str
    branches: list[Branch] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    n_decisions: int = 0


def record_turn(
    rec: Recorder, sample: SampleRun, branch: Branch, pieces, index: int, snapshot: str
) -> Turn:
    """Record a turn with its decisions and one tool call."""
    turn = rec.record_turn(
        branch,
        tokens=tokens(pieces),
        prompt=f"turn {index} prompt",
        params={"temperature": 0.25},
        index=index,
    )
    kinds = {"read": "file", "edit": "function"}
    sample.n_decisions += len(
        rec.record_decisions(turn, RULE, spans_for(turn.text, kinds), snapshot=snapshot)
    )
    action, _, rest = turn.text.partition(" ")
    rec.record_tool_call(
        turn, action=action, arguments={"target": rest.split("\n")[0]}, observation="ok\n"
    )
    sample.turns.append(turn)
    return turn


def record_sample(store: TraceStore) -> SampleRun:
    """Three branches: a failing first attempt, a passing retry cut inside turn 1, a failed retry
    cut inside turn 0; two MH steps; the run solved."""
    rec = Recorder(store)
    run = rec.start_run(
        model="scripted", strategy="entropy-cut", config={"alpha": 4.0}, seed=7, repo="/tmp/repo"
    )
    sample = SampleRun(store=store, run_id=run.id)
    b0 = rec.start_branch()
    record_turn(rec, sample, b0, READ, 0, "sha0")
    record_turn(rec, sample, b0, EDIT_BAD, 1, "sha1")
    rec.record_test_run(
        b0,
        command="pytest -q",
        exit_code=1,
        passed=3,
        failed=1,
        output_tail="1 failed",
        duration_s=0.8,
    )
    b0 = rec.finish_branch(
        b0, outcome="failed", passed=False, final_diff="-return a + b\n+return a - b\n"
    )

    b1 = rec.start_branch(
        parent=b0, cut=Cut(turn=1, position=6, entropy=3.1), strategy="entropy-cut"
    )
    record_turn(rec, sample, b1, EDIT_GOOD, 1, "sha1")
    rec.record_test_run(
        b1, command="pytest -q", exit_code=0, passed=4, output_tail="4 passed", duration_s=0.7
    )
    b1 = rec.finish_branch(b1, outcome="passed", passed=True, final_diff="")
    rec.record_mh_step(
        current=b0,
        proposal=b1,
        cut_turn=1,
        cut_position=6,
        cut_entropy=3.1,
        proposal_length=2,
        log_accept=1.2,
        log_target=0.4,
        log_proposal=0.1,
        log_cut_correction=-0.1,
        log_verifier=0.8,
        accepted=True,
        decode_tokens=2,
    )

    b2 = rec.start_branch(
        parent=b0, cut=Cut(turn=0, position=2, entropy=2.4), strategy="entropy-cut"
    )
    record_turn(rec, sample, b2, READ_OTHER, 0, "sha0")
    record_turn(rec, sample, b2, EDIT_BAD, 1, "sha2")
    rec.record_test_run(b2, command="pytest -q", exit_code=1, passed=3, failed=1, duration_s=0.8)
    b2 = rec.finish_branch(
        b2, outcome="failed", passed=False, final_diff="-return a + b\n+return a - b\n"
    )
    rec.record_mh_step(
        current=b1,
        proposal=b2,
        cut_turn=0,
        cut_position=2,
        cut_entropy=2.4,
        proposal_length=13,
        log_accept=-2.0,
        log_target=-1.5,
        accepted=False,
        decode_tokens=13,
    )
    rec.finish_run("solved")
    sample.branches = [b0, b1, b2]
    return sample


# The OpenTelemetry tests' run: tool calls with long observations, a branch left unfinished.
LIVE_PARAMS = {"temperature": 0.25, "top_k": 20, "max_new_tokens": 64, "input_tokens": 120}


def record_live_turn(rec: Recorder, branch, pieces, index: int, snapshot: str) -> Turn:
    """A turn with its decision points and one tool call with a long observation."""
    turn = rec.record_turn(branch, tokens=tokens(pieces), params=LIVE_PARAMS, index=index)
    labels = {"read": "file", "edit": "function"}
    rec.record_decisions(turn, RULE, spans_for(turn.text, labels), snapshot=snapshot)
    action, _, rest = turn.text.partition(" ")
    target = rest.split("\n")[0]
    rec.record_tool_call(turn, action=action, arguments={"path": target}, observation="x" * 2000)
    return turn


def record_live(rec: Recorder) -> dict:
    """Four branches: b0 fails; b1 (cut from b0 in turn 1) passes; b2 is cut from b1 in turn 0,
    which b1 inherited from b0; b3 is cut where no decision point is and never finishes."""
    run = rec.start_run(
        model="scripted",
        strategy="entropy-cut",
        config={"alpha": 4.0, "provider": "local", "nested": {"x": 1}},
        seed=3,
    )
    b0 = rec.start_branch()
    t00 = record_live_turn(rec, b0, READ, 0, "sha0")
    t01 = record_live_turn(rec, b0, EDIT_BAD, 1, "sha1")
    rec.record_test_run(b0, command="pytest -q", exit_code=1, passed=3, failed=1, duration_s=0.5)
    b0 = rec.finish_branch(b0, outcome="failed", passed=False, final_diff="--- a\n+++ b\n-x\n+y\n")
    b1 = rec.start_branch(
        parent=b0, cut=Cut(turn=1, position=6, entropy=3.1), strategy="entropy-cut"
    )
    record_live_turn(rec, b1, EDIT_GOOD, 1, "sha1")
    rec.record_test_run(b1, command="pytest -q", exit_code=0, passed=4, output_tail="4 passed")
    b1 = rec.finish_branch(b1, outcome="passed", passed=True, final_diff="")
    step = rec.record_mh_step(
        current=b0,
        proposal=b1,
        cut_turn=1,
        cut_position=6,
        cut_entropy=3.1,
        proposal_length=2,
        log_accept=1.2,
        log_target=0.4,
        log_proposal=0.1,
        log_cut_correction=-0.1,
        log_verifier=0.8,
        accepted=True,
        decode_tokens=2,
    )
    b2 = rec.start_branch(parent=b1, cut=Cut(turn=0, position=2, entropy=2.4))
    record_live_turn(rec, b2, READ_OTHER, 0, "sha0")
    b2 = rec.finish_branch(b2, outcome="failed", passed=False)
    b3 = rec.start_branch(parent=b0, cut=Cut(turn=0, position=1, entropy=0.1))
    run = rec.finish_run("solved")
    return {"run": run, "b": [b0, b1, b2, b3], "t00": t00, "t01": t01, "step": step}

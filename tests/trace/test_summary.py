"""The one-line-per-attempt view (trace/summary.py) on runs recorded through the real Recorder."""

from __future__ import annotations

from decision_retry.trace import Cut, Recorder
from decision_retry.trace.summary import attempt_line, attempts, diff_summary
from tests.trace.sample_run import tokens

BUG = "--- a/m.py\n+++ b/m.py\n@@ -1 +1 @@\n-    if y % 100 == 0:\n+    if y % 400 == 0:\n"


def test_a_short_change_is_shown_whole_and_a_long_one_where_it_differs():
    assert diff_summary(BUG) == "- if y % 100 == 0: / + if y % 400 == 0:"
    long = BUG.replace("if y", "if some_long_prefix_name_of_a_variable_and_more + y")
    assert diff_summary(long) == "- …_more + y % 100 == 0: / + …_more + y % 400 == 0:"
    many = "".join(f"+line number {i} of a long addition\n" for i in range(6))
    text = diff_summary(many)
    assert len(text) <= 64 and text.endswith("… (6 lines)")
    assert diff_summary("") == "code unchanged"
    assert diff_summary("+x = '\x1b[2K'\n") == "+ x = '\\x1b[2K'"  # escaped, never raw


def test_multiple_tries_identical_attempts_and_the_signal(store):
    rec = Recorder(store)
    rec.start_run(model="m", strategy="egps", config={"retry": {"cut_weights": "entropy"}})
    b0 = rec.start_branch()
    rec.record_turn(b0, tokens=tokens([("a", 0.1), (" -", 2.0), (" b", 0.1)]), index=0)
    rec.record_test_run(b0, command="t", exit_code=1, passed=1, failed=1, duration_s=0.5)
    b0 = rec.finish_branch(b0, outcome="failed", passed=False, final_diff="")
    cut = Cut(turn=0, position=1, entropy=2.0)
    tries = []
    for text in (" *", " -", " -"):  # K = 3 tries of one multiple-try move
        b = rec.start_branch(parent=b0, cut=cut, strategy="egps")
        rec.record_turn(b, tokens=tokens([("a", 0.1), (text, 1.0), (" b", 0.1)]), index=0)
        rec.record_test_run(b, command="t", exit_code=1, passed=1, failed=1, duration_s=0.5)
        tries.append(rec.finish_branch(b, outcome="failed", passed=False,
                                       final_diff="" if text == " -" else "-a - b\n+a * b\n"))
    rec.record_mh_step(current=b0, proposal=tries[0], cut_turn=0, cut_position=1,
                       cut_entropy=2.0, proposal_length=2, log_accept=-1.0, accepted=False,
                       decode_tokens=6)
    lines = [attempt_line(a) for a in attempts(store.load(rec.run.id))]
    assert lines == [
        "#0 fresh | code unchanged | 1 passed, 1 failed (0.5s)",
        ("#1 from #0: cut turn 0 token 1 ' -'→' *' (entropy 2.00) | - a - b / + a * b"
        " | rejected, log A -1.00 | 1 passed, 1 failed (0.5s)"),
        ("#2-#3 (2x) from #0: cut turn 0 token 1 ' -'→' -' (entropy 2.00) | same code as #0"
        " | not chosen (multiple-try) | 1 passed, 1 failed (0.5s)"),
    ]

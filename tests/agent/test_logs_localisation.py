"""`logs show` summarises the localisation an apply_patch call records (top 3 and the spectrum)
instead of printing its whole ranking; `--json` keeps it whole. Real store, real CLI process."""

from __future__ import annotations

import json
import re

from decision_retry.tokens import Token
from decision_retry.trace import Recorder, TraceStore
from tests.helpers import run_cli

RANKING = [{"file": f"pkg/m{i}.py", "function": f"f{i}", "line": 10 * i + 1, "score": s,
            "ochiai": s, "ef": 1, "ep": i} for i, s in enumerate([0.934, 0.41, 0.2, 0.15, 0.05])]
LOCALISATION = {"failing_test": "tests/test_m.py:4",
                "spectrum": {"failing": 1, "passing": 7, "note": ""}, "ranking": RANKING}


def unwrapped(text: str) -> str:
    """The tree as text with rich's line wraps (newline, tree guides, indent) undone."""
    return re.sub(r" ?\n[ │]*(?=[^ │├└])", " ", text)


def test_logs_show_summarises_the_ranking(tmp_path):
    home = tmp_path / "home"
    with TraceStore.open(home) as store:
        rec = Recorder(store)
        run = rec.start_run(model="scripted", strategy="entropy-cut", seed=0)
        branch = rec.start_branch()
        turn = rec.record_turn(branch, tokens=[Token(id=1, text="def f0(): ...", logp=-0.1,
                                                     logq=-0.1, entropy=0.2)])
        args = {"file": "pkg/m0.py", "function": "f0", "shown": RANKING[:2],
                "localisation": LOCALISATION}
        rec.record_tool_call(turn, action="apply_patch", arguments=args,
                             observation="replaced f0 in pkg/m0.py")
        rec.record_tool_call(turn, action="read", arguments={"path": "pkg/m1.py"},
                             observation="...")
        rec.finish_run("fixed")
    summary = run_cli("logs", "show", run.id[:8], home=home)  # the default: one line for it
    assert summary.returncode == 0, summary.stderr
    assert ("localisation: pkg/m0.py::f0 0.93 (shown), pkg/m1.py::f1 0.41 (shown), pkg/m2.py::f2 "
            "0.20, +2 more; spectrum 1 failing, 7 passing") in summary.stdout.splitlines()
    shown = run_cli("logs", "show", run.id[:8], "--full", home=home)
    assert shown.returncode == 0, shown.stderr
    (line,) = [x for x in unwrapped(shown.stdout).splitlines() if "tool apply_patch" in x]
    assert ('tool apply_patch {"file": "pkg/m0.py", "function": "f0"} · shown pkg/m0.py::f0, '
            "pkg/m1.py::f1 · localisation: top-3 pkg/m0.py::f0 (0.93), pkg/m1.py::f1 (0.41), "
            "pkg/m2.py::f2 (0.20), ... (spectrum 1 failing, 7 passing)") in line
    assert "m3.py" not in line and "ochiai" not in line  # the rest of the ranking stays out
    # other tools' arguments print as they are
    assert 'tool read {"path": "pkg/m1.py"}' in shown.stdout
    # --json keeps the whole record
    data = json.loads(run_cli("logs", "show", run.id[:8], "--json", home=home).stdout)
    (call,) = [c for c in data["tool_calls"] if c["action"] == "apply_patch"]
    assert call["arguments"]["localisation"] == LOCALISATION

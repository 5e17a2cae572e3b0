"""benchmarks/failure_classes.py: why an unfixed cell failed, read from a real run's trace (the
real `fix` loop, the scripted model, real git and pytest) and the suite's record of what the
developer changed."""

import json
import subprocess
import sys
from pathlib import Path

from decision_retry.agent.runner import FixConfig, fix
from decision_retry.retry import RetryConfig
from decision_retry.testing import scripted_lm
from decision_retry.trace.store import TraceStore
from tests.helpers import make_repo

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "failure_classes.py"
FILES = {
    "calc.py": "def double(x):\n    return x + 2\n",
    "test_calc.py": "from calc import double\n\n\ndef test_double():\n    assert double(3) == 6\n",
}


def bench_out(tmp_path: Path, reply: list[str], budget: int = 100) -> Path:
    """A bench-shaped output directory: one run of `fix`, and three cases that read it, each
    with another record of what the developer changed."""
    out = tmp_path / "out"
    cfg = FixConfig(test_cmd="python -m pytest -q -p no:cacheprovider", seed=0,
                    budget_tokens=budget, max_attempts=1, retry=RetryConfig(strategy="restart"))
    with TraceStore(out / "traces" / "traces.db") as store:
        res = fix(make_repo(tmp_path / "repo", FILES), cfg, lm=scripted_lm(reply), store=store)
    assert not res.fixed
    cases = {"here": ["calc.py:double"], "elsewhere": ["other.py:triple"],
             "half": ["calc.py:double", "other.py:triple"]}
    (out / "suites" / "s").mkdir(parents=True)
    (out / "suites" / "s" / "index.json").write_text(json.dumps(
        {"version": 1, "cases": {k: {"functions": v} for k, v in cases.items()}, "failed": {}}))
    cells = [{"repo": k, "strategy": "restart", "seed": 0, "fixed": False, "attempts": 1,
              "run_id": res.run_id} for k in cases]
    (out / "cells.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cells))
    return out


def classes(out: Path) -> dict[str, dict]:
    r = subprocess.run([sys.executable, str(SCRIPT), str(out), "--json", str(out / "c.json")],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert "| class | restart |" in r.stdout
    return {row["case"]: row for row in json.loads((out / "c.json").read_text())}


def test_a_reply_that_copies_the_shown_function_is_right_place_unchanged(tmp_path):
    rows = classes(bench_out(tmp_path, ["def double(x):\n    return x + 2\n", "```"]))
    assert rows["here"]["kinds"] == {"copy": 1} and rows["here"]["changed_shown"] == "all"
    assert rows["here"]["class"] == "right place, unchanged"
    assert rows["elsewhere"]["class"] == "not shown"  # the developer changed what was not shown
    assert rows["half"]["class"] == "part not shown" and rows["half"]["changed_shown"] == "some"


def test_a_wrong_edit_a_cut_reply_and_a_reply_that_does_not_parse(tmp_path):
    wrong = classes(bench_out(tmp_path / "a", ["def double(x):\n    return x * 3\n", "```"]))
    assert wrong["here"]["kinds"] == {"dev": 1}
    assert wrong["here"]["class"] == "right place, wrong edit"
    broken = classes(bench_out(tmp_path / "b", ["def double(x):\n    return (x\n", "```"]))
    assert broken["here"]["kinds"] == {"unparsed": 1}
    assert broken["here"]["class"] == "does not parse"
    # what the stop rule before 8ff1568 left of a signature written one parameter a line
    cut = classes(bench_out(tmp_path / "c", ["def double(\n    x,\n)", "<|endoftext|>"]))
    assert cut["here"]["kinds"] == {"stoprule": 1} and cut["here"]["class"] == "stop rule"



def test_a_reply_cut_at_the_token_cap_is_out_of_budget(tmp_path):
    """Not applied since ffe7b53 ("reached the token cap"): truncated, not "does not parse"."""
    reply = ["def double(x):\n", "    y = x\n", "    return y * 2\n", "```"]
    rows = classes(bench_out(tmp_path, reply, budget=2))  # cut after `y = x`: it would parse
    assert rows["here"]["kinds"] == {"truncated": 1} and rows["here"]["class"] == "out of budget"

"""A reply may rewrite several of the shown functions: a bug that needs its helper and its caller
changed is fixed by one reply. Real git repositories, real pytest, the scripted model."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from decision_retry.agent.runner import FixConfig, fix
from decision_retry.lm import Sampling
from decision_retry.retry import RetryConfig
from decision_retry.testing import scripted_lm
from decision_retry.trace import readable, summary
from decision_retry.trace.store import TraceStore
from tests.helpers import make_repo, run_cli

# Two bugs, one in the helper (`parse` keeps the spaces) and one in its caller (`load` parses the
# blank lines too): fixing either alone still fails test_load.
FILES = {
    "conf.py": """
        def parse(line):
            key, value = line.split("=")
            return key, value


        def load(text):
            return dict(parse(line) for line in text.splitlines())
    """,
    "test_conf.py": """
        from conf import load, parse


        def test_parse():
            assert parse("a=1") == ("a", "1")


        def test_load():
            assert load("a = 1\\n\\nb=2\\n") == {"a": "1", "b": "2"}
    """,
}
FILES = {rel: textwrap.dedent(text).lstrip() for rel, text in FILES.items()}
PARSE = ('def parse(line):\n    key, value = line.split("=")\n'
         '    return key.strip(), value.strip()\n')
LOAD = "def load(text):\n    return dict(parse(line) for line in text.splitlines() if line.strip())\n"
TEST_CMD = "python -m pytest -q -p no:cacheprovider"


def run(tmp_path: Path, script: list, strategy: str = "restart", seed: int = 0, attempts: int = 1):
    lm = scripted_lm(script)
    cfg = FixConfig(test_cmd=TEST_CMD, seed=seed, budget_tokens=400, max_attempts=attempts,
                    retry=RetryConfig(strategy=strategy, proposal_temperature=1.0))
    with TraceStore(tmp_path / "home" / "traces.db") as store:
        res = fix(make_repo(tmp_path / "repo", FILES), cfg, lm=lm, store=store)
        return res, store.load(res.run_id)


def patch_calls(tree):
    return [c for c in tree.tool_calls if c.action == "apply_patch"]


def test_one_reply_fixes_the_helper_and_its_caller(tmp_path: Path) -> None:
    res, tree = run(tmp_path, [PARSE + "\n\n", LOAD, "```"])  # each def a token of its own
    assert res.fixed and res.attempts == 1
    assert "+    return key.strip(), value.strip()" in res.diff
    assert "+    return dict(parse(line) for line in text.splitlines() if line.strip())" in res.diff
    # the trace names every function the reply rewrote, each a decision point of its own
    (call,) = patch_calls(tree)
    assert call.observation == "replaced parse in conf.py, load in conf.py"
    assert call.arguments["function"] == "parse"  # the first, where one name is read
    assert call.arguments["functions"] == [
        {"file": "conf.py", "function": "parse", "line": 1, "reply_line": 0},
        {"file": "conf.py", "function": "load", "line": 6, "reply_line": 5}]
    points = [d for d in tree.decisions if d.kind == "tool" and d.label == "function"]
    assert [d.span for d in points] == ["parse", "load"]
    assert points[0].position < points[1].position
    assert len({d.snapshot for d in points}) == 1  # both rewind to the tree before the reply
    assert readable.call_text(call) == "conf.py::parse, conf.py::load (shown: " \
        + ", ".join(f"{e['file']}::{e['function']}" for e in call.arguments["shown"]) + ")"


def test_a_reply_with_one_function_acts_as_before(tmp_path: Path) -> None:
    res, tree = run(tmp_path, [PARSE, "```"])
    assert not res.fixed  # the caller's bug is left
    (call,) = patch_calls(tree)
    assert call.observation == "replaced parse in conf.py"
    assert call.arguments["file"] == "conf.py" and call.arguments["function"] == "parse"
    assert "functions" not in call.arguments and "ignored" not in call.arguments
    (branch,) = tree.branches
    assert "+    return key.strip(), value.strip()" in branch.final_diff
    assert "text.splitlines()" not in branch.final_diff


def test_a_function_that_was_not_shown_is_left_out_and_named(tmp_path: Path) -> None:
    extra = "def strip_all(xs):\n    return [x.strip() for x in xs]\n\n\n"
    res, tree = run(tmp_path, [extra, PARSE + "\n\n", LOAD, "```"])
    assert res.fixed  # the shown functions are replaced; the new one is not added
    (call,) = patch_calls(tree)
    assert call.observation == ("replaced parse in conf.py, load in conf.py; "
                                "left out strip_all: not among the functions shown")
    assert call.arguments["ignored"] == ["strip_all"]
    assert "strip_all" not in res.diff
    # the choice of writing it is still a decision point (a rewind may cut at it)
    points = [d.span for d in tree.decisions if d.kind == "tool" and d.label == "function"]
    assert points == ["strip_all", "parse", "load"]


def test_a_reply_that_does_not_parse_is_not_applied_at_all(tmp_path: Path) -> None:
    res, tree = run(tmp_path, [PARSE + "\n\ndef load(text:\n    return {}\n", "```"])
    (call,) = patch_calls(tree)
    assert call.observation.startswith("not applied: your code does not parse")
    assert [e["function"] for e in call.arguments["functions"]] == ["parse", "load"]
    assert not res.fixed and tree.branches[0].final_diff == ""  # nothing written, not even parse


def seed_writing(lm, text: str) -> int:
    """A seed whose first draw writes `text`."""
    state = lm.prefill([1])
    for seed in range(50):
        out = lm.extend(state, Sampling(temperature=1.0, max_new_tokens=8),
                        torch.Generator().manual_seed(seed))
        if text in out.text:
            return seed
    raise AssertionError(f"no seed writes {text!r}")


def test_a_rewind_into_the_second_function_regenerates_it_and_says_where(tmp_path: Path) -> None:
    # the caller's condition is the one uncertain token, and the first attempt gets it wrong
    script = [PARSE + "\n\ndef load(text):\n    return dict(parse(line) for line in text.splitlines()",
              {"choice": {")": 0.5, " if line.strip())": 0.5}}, "\n", "```"]
    seed = seed_writing(scripted_lm(script), "splitlines())\n")
    res, tree = run(tmp_path, script, strategy="entropy-cut", seed=seed, attempts=12)
    assert res.fixed and res.attempts >= 2
    cut = res.rewinds[0]
    assert cut.token == ")" and (cut.file, cut.line) == ("conf.py", 7)  # load's return line
    (first,) = [t for t in tree.turns if t.branch_id == tree.branches[0].id]
    assert summary.where(tree, first, tree.branches[1].cut.position) == "conf.py:7"
    # the proposal kept the helper as the first attempt wrote it, and both are applied again
    calls = patch_calls(tree)
    assert all(c.observation == "replaced parse in conf.py, load in conf.py" for c in calls)
    assert "+    return key.strip(), value.strip()" in res.diff


@pytest.mark.slow
def test_logs_show_lists_every_function_a_reply_rewrote(tmp_path: Path) -> None:
    script = tmp_path / "two.json"
    script.write_text(json.dumps({"segments": [PARSE + "\n\n" + LOAD, "```"]}))
    repo = make_repo(tmp_path / "repo", FILES)
    home = tmp_path / "home"
    out = run_cli("fix", str(repo), "--model", f"scripted:{script}", "--test-cmd", TEST_CMD,
                  "--strategy", "restart", "--json", home=home)
    assert out.returncode == 0, out.stderr
    run_id = json.loads(out.stdout)["run_id"]
    shown = run_cli("logs", "show", run_id, "--full", home=home)
    assert shown.returncode == 0, shown.stderr
    assert "rewrote conf.py::parse, conf.py::load" in shown.stdout
    assert "replaced parse in conf.py, load in conf.py" in shown.stdout


def test_functions_in_two_files_are_each_replaced_in_their_own(tmp_path: Path) -> None:
    files = {"util.py": FILES["conf.py"].split("\n\n\n")[0] + "\n",
             "conf.py": "from util import parse\n\n\n" + FILES["conf.py"].split("\n\n\n")[1],
             "test_conf.py": FILES["test_conf.py"].replace("from conf import load, parse",
                                                           "from conf import load\nfrom util import parse")}
    lm = scripted_lm([LOAD + "\n\n", PARSE, "```"])  # the caller first, then the helper
    cfg = FixConfig(test_cmd=TEST_CMD, seed=0, budget_tokens=400, max_attempts=1,
                    retry=RetryConfig(strategy="restart", proposal_temperature=1.0))
    with TraceStore(tmp_path / "home" / "traces.db") as store:
        res = fix(make_repo(tmp_path / "repo", files), cfg, lm=lm, store=store)
        (call,) = patch_calls(store.load(res.run_id))
    assert res.fixed, call.observation
    assert call.observation == "replaced load in conf.py, parse in util.py"
    assert [(e["file"], e["line"], e["reply_line"]) for e in call.arguments["functions"]] == [
        ("conf.py", 4, 0), ("util.py", 1, 4)]
    assert "+++ b/conf.py" in res.diff and "+++ b/util.py" in res.diff

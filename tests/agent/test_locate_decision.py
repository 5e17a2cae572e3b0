"""The suspect is a decision: several candidates shown, the reply's `def NAME` chooses one, a
rewind can cut at that name and choose another. Real git repo, real pytest, scripted model."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from decision_retry.agent import definitions, patch
from decision_retry.agent.actions import PatchProtocol, Task
from decision_retry.agent.runner import FixConfig, fix
from decision_retry.lm import Sampling
from decision_retry.localise.locate import localise
from decision_retry.repo.testrun import run_tests
from decision_retry.retry import RetryConfig
from decision_retry.testing import scripted_lm
from decision_retry.trace.store import TraceStore
from tests.helpers import make_repo

# `double` has the bug; `quad` calls it; `twice` is run by a passing test too. All three are
# suspects; the reply's body (`return x * 2`) fixes `double` and changes nothing in `twice`.
FILES = {
    "calc.py": """
        def double(x):
            return x * 3


        def twice(x):
            return x * 2


        def quad(x):
            return twice(double(x)) // 1
    """,
    "test_calc.py": """
        from calc import quad, twice


        def test_twice():
            assert twice(2) == 4


        def test_quad():
            assert quad(3) == 12
    """,
}
FILES = {rel: textwrap.dedent(text).lstrip() for rel, text in FILES.items()}
SCRIPT = ["def ", {"choice": {"twice": 0.5, "double": 0.5}}, "(x):\n    return x * 2\n", "```"]
TEST_CMD = "python -m pytest -q -p no:cacheprovider"


def seed_choosing(lm, name: str) -> int:
    """A seed whose first draw writes `def NAME`."""
    state = lm.prefill([1])
    for seed in range(50):
        out = lm.extend(state, Sampling(temperature=1.0, max_new_tokens=4),
                        torch.Generator().manual_seed(seed))
        if f"def {name}" in out.text:
            return seed
    raise AssertionError(f"no seed draws {name}")


@pytest.mark.slow
def test_all_suspects_are_shown_and_the_reply_picks_one(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "repo", FILES)
    result = run_tests(TEST_CMD, root, 60)
    loc = localise(root, result, test_cmd=TEST_CMD)
    names = [c.suspect.name for c in loc.candidates]
    assert set(names[:3]) == {"double", "quad", "twice"}  # all ran in the failing test
    task = Task(loc.suspect, loc.test.source, result, ("calc.py",), TEST_CMD, 60,
                loc.candidates, loc.summary())
    proto = PatchProtocol(definitions.load("patch"), task)
    prompt = proto.first_messages()[0]["content"]
    assert all(f"def {n}(x)" in prompt for n in ("double", "twice", "quad"))
    assert prompt.index(f"def {names[0]}") < prompt.index(f"def {names[1]}")  # most likely first
    assert patch.chosen("def twice(x):\n    return 1\n", proto.shown).name == "twice"
    assert patch.chosen("def nowhere(x):\n    pass\n", proto.shown) is None


def test_a_rewind_at_the_function_name_moves_the_edit(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "repo", FILES)
    lm = scripted_lm(SCRIPT)
    seed = seed_choosing(lm, "twice")  # the first attempt edits the wrong function
    cfg = FixConfig(test_cmd=TEST_CMD, retry=RetryConfig(strategy="entropy-cut",
                                                         proposal_temperature=1.0),
                    seed=seed, budget_tokens=200, max_attempts=12)
    with TraceStore(tmp_path / "home" / "traces.db") as store:
        res = fix(root, cfg, lm=lm, store=store)
        tree = store.load(res.run_id)
    assert res.fixed and res.attempts >= 2
    assert "-    return x * 3\n+    return x * 2" in res.diff
    # the first cut is the function name: file and line of the function it chose
    assert res.rewinds[0].token in ("twice", "double")
    assert res.rewinds[0].file == "calc.py" and res.rewinds[0].line in (1, 5)
    # in the trace: the function choice is a tool-decision point, the ranking in the tool call
    points = [d for d in tree.decisions if d.kind == "tool" and d.label == "function"]
    assert {d.span for d in points} == {"twice", "double"}
    calls = [c for c in tree.tool_calls if c.action == "apply_patch"]
    assert {c.arguments["function"] for c in calls} == {"twice", "double"}
    first = calls[0].arguments
    assert {s["function"] for s in first["shown"]} == {"double", "twice", "quad"}
    assert first["localisation"]["ranking"][0]["function"] == first["shown"][0]["function"]


@pytest.mark.parametrize("reply", ["def elsewhere(x):\n    return 0\n"])
@pytest.mark.slow
def test_a_reply_naming_no_suspect_is_not_applied(tmp_path: Path, reply: str) -> None:
    root = make_repo(tmp_path / "repo", FILES)
    result = run_tests(TEST_CMD, root, 60)
    loc = localise(root, result, test_cmd=TEST_CMD)
    task = Task(loc.suspect, "", result, ("calc.py",), TEST_CMD, 60, loc.candidates)
    proto = PatchProtocol(definitions.load("patch"), task)

    class WS:  # only what act() touches: a real file in the real repo
        def __init__(self, root):
            self.root = root

        def read_file(self, rel):
            return (self.root / rel).read_text()

        def write_file(self, rel, text):
            raise AssertionError("must not write")

    out = proto.act(WS(root), reply, 0)
    assert out.done and out.observation.startswith("not applied: your reply defines none")


# -- the narrowest command, and the wide one on each candidate that passes it --------------------

SIGN = {
    "calc.py": "def double(x):\n    return x * 3\n",
    "test_calc.py": ("from calc import double\n\n\ndef test_two():\n    assert double(2) == 4\n\n\n"
                     "def test_sign():\n    assert double(-1) < 0\n"),
}


def narrow_fix(tmp_path: Path, body: str):
    lm = scripted_lm([f"def double(x):\n    return {body}\n", "```"])
    cfg = FixConfig(test_cmd="python -m pytest -x -q -p no:cacheprovider", narrow=True,
                    budget_tokens=100, max_attempts=2, seed=0,
                    retry=RetryConfig(strategy="restart", proposal_temperature=1.0))
    with TraceStore(tmp_path / "home" / "traces.db") as store:
        return fix(make_repo(tmp_path / "repo", SIGN), cfg, lm=lm, store=store)


def test_narrow_search_then_the_whole_command_once(tmp_path: Path) -> None:
    res = narrow_fix(tmp_path, "x * 2")
    assert res.narrow_cmd == "python -m pytest -x -q -p no:cacheprovider test_calc.py::test_two"
    assert res.fixed and res.wide_check["ok"] and res.wide_check["passed"] == 2


def test_a_fix_that_breaks_another_test_is_not_a_fix(tmp_path: Path) -> None:
    res = narrow_fix(tmp_path, "abs(x) * 2")  # passes test_two, breaks test_sign
    assert not res.fixed and res.stop == "attempts" and res.attempts == 2  # the search went on
    assert res.wide_check == {"command": "python -m pytest -x -q -p no:cacheprovider",
                              "ok": False, "passed": 1, "failed": 1, "errors": 0}
    assert res.branch is None

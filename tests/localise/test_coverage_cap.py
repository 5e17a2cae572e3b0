"""Big repositories: the coverage pass starts no passing test past its wall-time cap (the failing
tests always run), and the run says so (the fix's one line, the trace, `logs show`); that it runs
once a run, and a resume reads it from the trace, is tests/agent/test_resume.py's. A real
repository of 80 tests that are fast in the plain run and slow under coverage (as pure-Python code
under a tracer is), real pytest, real coverage, the scripted model."""

from __future__ import annotations

from pathlib import Path

from decision_retry.agent.runner import FixConfig, fix
from decision_retry.localise.spectrum import run_spectrum
from decision_retry.repo.testrun import run_tests
from decision_retry.retry import RetryConfig
from decision_retry.testing import scripted_lm
from decision_retry.trace import summary
from decision_retry.trace.store import TraceStore
from tests.helpers import NO_PLUGINS, make_repo

N = 80
TRACED = "import sys\n\n\ndef traced():\n    return \"coverage\" in sys.modules\n"
FILES = {
    "calc.py": ("def double(x):\n    return x + 2\n\n\n"
                "def square(x):\n    return x * x\n"),
    # the failing test's file sorts last: it runs after the cap all the same
    "tests/test_z_double.py": "from calc import double\n\n\ndef test_double():\n"
                              "    assert double(3) == 6\n\n\ndef test_double_two():\n"
                              "    assert double(2) == 4\n",
    "tests/helpers.py": TRACED,
    "tests/test_a_square.py": "import time\n\nfrom calc import double, square\n"
                              "from tests.helpers import traced\n\n" + "".join(
        f"\n\ndef test_square_{i}():\n    if traced():\n        time.sleep(0.1)\n"
        f"    assert square({i}) == {i * i} and double(2) == 4\n" for i in range(N)),
    "tests/__init__.py": "",
}
CMD = "python -m pytest -q -p no:cacheprovider"


def test_the_cap_keeps_the_failing_test_and_says_how_many_passing_ones_it_left(tmp_path: Path):
    root = make_repo(tmp_path / "repo", FILES)
    result = run_tests(CMD, root, 60, env=NO_PLUGINS)
    assert result.failing_tests == ("tests/test_z_double.py::test_double",)
    assert len(result.passed_tests) == N + 1
    sp = run_spectrum(root, result, timeout=120, budget_s=1.0, test_cmd=CMD, env=NO_PLUGINS)
    assert sp.failing == ("tests/test_z_double.py::test_double",)  # ran, first, despite the cap
    assert 1 < len(sp.passing) < N  # some ran, the cap left the rest out
    assert "tests/test_z_double.py::test_double_two" not in sp.passing  # pytest's order: last
    assert sp.cut == f"wall-time cap 3s: {N + 1 - len(sp.passing)} of the {N + 1} passing tests " \
                     f"selected not run"
    assert sp.scores[0].suspect.key == "calc.py::double"


def test_the_run_announces_the_cap_in_one_line_and_in_its_trace(tmp_path: Path):
    root = make_repo(tmp_path / "repo", FILES)
    fixed = "def double(x):\n    return x * 2\n"
    cfg = FixConfig(test_cmd=CMD, seed=0, budget_tokens=100, max_attempts=2,
                    localise_budget_s=1.0, retry=RetryConfig(strategy="restart"))
    events = []
    with TraceStore(tmp_path / "home" / "traces.db") as store:
        res = fix(root, cfg, lm=scripted_lm([fixed, "```"]), store=store,
                  on_event=lambda kind, data: events.append((kind, data)))
        tree = store.load(res.run_id)
    assert res.fixed
    (note,) = [d["note"] for k, d in events if k == "localisation"]
    assert note.startswith("localisation: coverage spectrum cut (wall-time cap 3s: ")
    assert "passing tests selected not run" in note
    # the trace keeps it, and `logs show` prints it with the localisation
    recorded = tree.turns[0].params["localisation"]["spectrum"]
    assert recorded["cut"].startswith("wall-time cap 3s: ")
    assert f"({recorded['cut']})" in summary.localisation_line(tree)

"""The test runner on real pytest subprocesses; its summary parser on real pytest output shapes."""

import os
import shlex
import sys
import textwrap
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from decision_retry.errors import BadInput
from decision_retry.repo.junit import nodeid, parse_junit
from decision_retry.repo.testrun import (
    TestResult,
    parse_counts,
    parse_failing,
    parse_result,
    run_tests,
)

PYTEST = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]
FAST = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}  # our venv's langsmith plugin costs ~2 s per start


def project(root: Path, **tests: str) -> Path:
    """A tiny project with one test file per keyword argument."""
    (root / "tests").mkdir(parents=True)
    for name, body in tests.items():
        (root / "tests" / f"test_{name}.py").write_text(textwrap.dedent(body))
    return root


MIXED = """
    import pytest

    def test_one():
        assert 1 + 1 == 2

    def test_two():
        assert "a".upper() == "A"

    def test_broken():
        assert sum([1, 2]) == 4, "sum is wrong"

    @pytest.mark.skip(reason="not today")
    def test_skipped():
        pass
"""


def test_all_passing(tmp_path: Path) -> None:
    proj = project(tmp_path, ok="def test_a():\n    pass\n\ndef test_b():\n    pass\n")
    result = run_tests([*PYTEST, "-q"], proj, timeout=60, env=FAST)
    assert result.ok and result.exit_code == 0
    assert (result.passed, result.failed, result.errors) == (2, 0, 0)
    assert result.fraction_passed == 1.0
    assert "2 passed" in result.output_tail


def test_failure_counts_and_ids(tmp_path: Path) -> None:
    proj = project(tmp_path, mixed=MIXED)
    command = shlex.join([*PYTEST, "-q"])  # a string is split with shlex
    result = run_tests(command, proj, timeout=60, env=FAST)
    assert not result.ok and result.exit_code == 1
    assert (result.passed, result.failed, result.errors, result.skipped) == (2, 1, 0, 1)
    assert result.failing_tests == ("tests/test_mixed.py::test_broken",)
    assert result.fraction_passed == pytest.approx(2 / 3)
    assert "sum is wrong" in result.output_tail


def test_stop_at_first_failure(tmp_path: Path) -> None:
    proj = project(tmp_path, mixed=MIXED)
    result = run_tests([*PYTEST, "-x", "-q"], proj, timeout=60, env=FAST)
    assert (result.passed, result.failed) == (2, 1)
    assert result.failing_tests == ("tests/test_mixed.py::test_broken",)


def test_collection_error_counts_as_error(tmp_path: Path) -> None:
    proj = project(tmp_path, bad="import not_a_module_anywhere\n\ndef test_x():\n    pass\n")
    result = run_tests([*PYTEST, "-q"], proj, timeout=60, env=FAST)
    assert result.errors == 1 and not result.ok and not result.no_tests
    assert result.failing_tests == ("tests/test_bad.py",)
    assert result.fraction_passed == 0.0


def test_no_tests_collected(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    result = run_tests([*PYTEST, "-q"], tmp_path, timeout=60, env=FAST)
    assert result.no_tests and result.exit_code == 5 and not result.ok
    assert result.fraction_passed == 0.0


@pytest.mark.slow
def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    token = f"grandchild-{os.getpid()}-{time.monotonic_ns()}"  # found by command line: a PID
    proj = project(                                            # namespace renumbers the child
        tmp_path,
        slow=f"""
        import subprocess, sys, time

        def test_hangs():
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", {token!r}])
            time.sleep(300)
    """,
    )
    start = time.monotonic()
    result = run_tests([*PYTEST, "-q"], proj, timeout=3, env=FAST)
    assert result.timed_out and result.exit_code is None and not result.ok
    assert time.monotonic() - start < 60  # bounded by the limit, not by the 300 s sleep
    deadline = time.monotonic() + 30  # SIGKILL is delivered asynchronously
    while with_token(token) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not with_token(token), "the grandchild survived the timeout"


def with_token(token: str) -> list[int]:
    """Live (not zombie) processes whose command line contains `token`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if token.encode() in cmd and alive(Path(f"/proc/{pid}/status")):
            found.append(int(pid))
    return found


def alive(status: Path) -> bool:
    """Whether the process of a /proc/<pid>/status file exists and is not a zombie."""
    try:
        return "State:\tZ" not in status.read_text()
    except FileNotFoundError:
        return False


def test_command_not_found(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="test command not found: no-such-test-runner") as err:
        run_tests("no-such-test-runner -q", tmp_path, timeout=10)
    assert err.value.exit_code == 2
    with pytest.raises(BadInput, match="test command not found"):
        run_tests([sys.executable, "-m", "no_such_module_for_tests"], tmp_path, timeout=10)
    with pytest.raises(BadInput, match="test command not found"):
        run_tests("./missing.sh", tmp_path, timeout=10)
    with pytest.raises(BadInput, match="cannot parse"):
        run_tests("pytest -k 'unbalanced", tmp_path, timeout=10)
    with pytest.raises(BadInput, match="timeout must be positive"):
        run_tests("pytest", tmp_path, timeout=0)


def test_missing_python_on_path_means_this_python(tmp_path: Path) -> None:
    proj = project(tmp_path / "p", ok="def test_a():\n    pass\n")
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    result = run_tests("python -m pytest -q", proj, timeout=60, env={**FAST, "PATH": str(empty)})
    assert result.ok and result.command[0] == sys.executable


def test_no_bytecode_written(tmp_path: Path) -> None:
    proj = project(tmp_path, ok="def test_a():\n    pass\n")
    run_tests([*PYTEST, "-q"], proj, timeout=60, env=FAST)
    assert not list(proj.rglob("__pycache__"))


def test_network_is_cut_when_isolated(tmp_path: Path) -> None:
    proj = project(
        tmp_path,
        net="""
        import socket

        def test_loopback_works():
            server = socket.socket()
            server.bind(("127.0.0.1", 0))
            server.listen()
            socket.create_connection(server.getsockname(), timeout=5).close()

        def test_outside_is_unreachable():
            try:
                socket.create_connection(("192.0.2.1", 80), timeout=2).close()
            except OSError:
                return
            raise AssertionError("connected to the outside")
    """,
    )
    result = run_tests([*PYTEST, "-q"], proj, timeout=60, env=FAST)
    if not result.network_isolated:
        pytest.skip("unshare --net is not available on this machine")
    assert result.ok, result.output_tail
    opted_out = run_tests([*PYTEST, "-q"], proj, timeout=60, env=FAST, isolate_network=False)
    assert not opted_out.network_isolated


def test_result_is_frozen() -> None:
    result = TestResult(command=("x",), exit_code=0, passed=1)
    with pytest.raises(ValidationError):
        result.passed = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("=== 1 failed, 2 passed, 3 warnings in 0.12s ===", (2, 1, 0, 0)),
        ("1 failed, 2 passed in 0.10s", (2, 1, 0, 0)),
        (
            "!!!!! stopping after 1 failures !!!!!\n1 failed, 4 passed, 2 skipped in 1.02s",
            (4, 1, 0, 2),
        ),
        (
            "!!! Interrupted: 1 error during collection !!!\n==== 1 error in 0.05s ====",
            (0, 0, 1, 0),
        ),
        ("==== 3 passed, 2 errors in 65.00s (0:01:05) ====", (3, 0, 2, 0)),
        ("1 xfailed, 1 xpassed, 1 passed, 4 deselected in 0.2s", (2, 0, 0, 1)),
        ("no tests ran in 0.01s", (0, 0, 0, 0)),
        ("....F\nRan 5 tests in 0.003s\n\nFAILED (failures=1, errors=1, skipped=1)", (2, 1, 1, 1)),
        ("Ran 3 tests in 0.001s\n\nOK", (3, 0, 0, 0)),
        ("F.sE.x   [ 75%]\n.X   [100%]\n=== FAILURES ===", (4, 1, 1, 2)),  # -qq: no summary
        ("tests/test_a.py F.    [100%]", (1, 1, 0, 0)),
        ("make: *** [test] Error 1", (0, 0, 0, 0)),
    ],
)
def test_parse_counts(text: str, expected: tuple[int, int, int, int]) -> None:
    c = parse_counts(text)
    assert (c["passed"], c["failed"], c["errors"], c["skipped"]) == expected


def test_parse_failing_from_summary_and_verbose_lines() -> None:
    text = (
        "tests/test_a.py::test_x PASSED\n"
        "tests/test_a.py::test_y FAILED\n"
        "FAILED tests/test_a.py::test_y - assert 1 == 2\n"
        "ERROR tests/test_b.py::test_z - RuntimeError\n"
    )
    assert parse_failing(text) == ("tests/test_a.py::test_y", "tests/test_b.py::test_z")


# -- JUnit report, subtests, duplicate names, xfail/xpass, setup/teardown errors ------------------

SUBTESTS = """
    import unittest

    class TestSub(unittest.TestCase):
        def test_many(self):
            for i in range(5):
                with self.subTest(i=i):
                    self.assertLess(i, 3)

        def test_fine(self):
            for i in range(4):
                with self.subTest(i=i):
                    self.assertGreaterEqual(i, 0)

    def test_plain():
        assert True
"""


def test_unittest_subtests_are_counted(tmp_path: Path) -> None:
    proj = project(tmp_path, sub=SUBTESTS)
    result = run_tests([*PYTEST, "-q"], proj, timeout=60, env=FAST)
    assert result.source == "junit"
    assert (result.passed, result.failed, result.errors) == (2, 1, 0)
    assert result.subtests_failed == 2 and result.subtests_passed >= 4
    assert result.failing_tests == ("tests/test_sub.py::TestSub::test_many",)
    (failure,) = result.failures
    assert failure.line == 5 and failure.subfailures == 2  # the `def test_many` line
    assert "3 not less than 3" in failure.message
    assert ("tests/test_sub.py", 8) in failure.frames
    assert result.fraction_passed == pytest.approx(2 / 3)


def test_duplicate_test_names_are_told_apart_by_class_and_line(tmp_path: Path) -> None:
    classes = "".join(
        f"class TestCase{k}:\n    def test_basic(self):\n        assert {k} != 3\n\n" for k in range(6))
    proj = project(tmp_path, dup=classes)
    result = run_tests([*PYTEST, "-q"], proj, timeout=60, env=FAST)
    assert (result.passed, result.failed) == (5, 1)
    (failure,) = result.failures
    assert failure.nodeid == "tests/test_dup.py::TestCase3::test_basic"
    assert failure.line == 14  # 1-based line of the fourth `def test_basic`
    text = (proj / "tests" / "test_dup.py").read_text().splitlines()
    assert text[failure.line - 1].strip() == "def test_basic(self):"


def test_xfail_xpass_and_fixture_errors(tmp_path: Path) -> None:
    proj = project(tmp_path, marks="""
        import pytest

        @pytest.fixture
        def broken_setup():
            raise RuntimeError("setup broke")

        @pytest.fixture
        def broken_teardown():
            yield 1
            raise RuntimeError("teardown broke")

        def test_setup(broken_setup):
            pass

        def test_teardown(broken_teardown):
            pass

        @pytest.mark.xfail
        def test_expected_failure():
            assert False

        @pytest.mark.xfail
        def test_unexpected_pass():
            pass

        @pytest.mark.xfail(strict=True)
        def test_strict_pass():
            pass
    """)
    result = run_tests([*PYTEST, "-q"], proj, timeout=60, env=FAST)
    assert result.source == "junit"
    assert (result.passed, result.failed, result.errors) == (1, 1, 2)
    assert (result.xfailed, result.xpassed) == (1, 1)
    kinds = {f.nodeid.split("::")[-1]: f.kind for f in result.failures}
    assert kinds == {"test_setup": "error", "test_teardown": "error", "test_strict_pass": "failed"}
    assert "teardown broke" in next(f.message for f in result.failures if "teardown" in f.nodeid)


def test_collection_error_from_junit(tmp_path: Path) -> None:
    proj = project(tmp_path, bad="import not_a_module_anywhere\n", good="def test_a():\n    pass\n")
    result = run_tests([*PYTEST, "-q"], proj, timeout=60, env=FAST)
    assert result.source == "junit" and result.errors == 1 and not result.ok
    (failure,) = result.failures
    assert failure.kind == "collection" and failure.nodeid == "tests/test_bad.py"
    assert failure.line is None


def test_hash_seed_is_fixed_unless_given(tmp_path: Path) -> None:
    proj = project(tmp_path, seed="import os\n\ndef test_seed():\n"
                   "    assert os.environ['PYTHONHASHSEED'] == os.environ['EXPECTED']\n")
    assert run_tests([*PYTEST, "-q"], proj, timeout=60, env={**FAST, "EXPECTED": "0"}).ok
    given = {**FAST, "EXPECTED": "7", "PYTHONHASHSEED": "7"}
    assert run_tests([*PYTEST, "-q"], proj, timeout=60, env=given).ok


def test_users_pytest_addopts_are_kept(tmp_path: Path) -> None:
    proj = project(tmp_path, mixed=MIXED)
    result = run_tests([*PYTEST, "-q"], proj, timeout=60, env={**FAST, "PYTEST_ADDOPTS": "-x"})
    assert result.source == "junit" and "stopping after 1 failures" in result.output_tail


def test_a_command_that_is_not_pytest_falls_back_to_the_text(tmp_path: Path) -> None:
    script = tmp_path / "t.py"
    script.write_text("import unittest\n\nclass T(unittest.TestCase):\n"
                      "    def test_a(self):\n        self.assertEqual(1, 2)\n\n"
                      "unittest.main()\n")
    result = run_tests([sys.executable, str(script)], tmp_path, timeout=60, env=FAST)
    assert result.source == "text" and (result.passed, result.failed) == (0, 1)


@pytest.mark.parametrize(
    "text, counts, extras",
    [
        ("== 1 failed, 604 passed, 11252 subtests passed in 30.1s ==", (604, 1, 0, 0), (11252, 0)),
        ("2 failed, 3 passed, 4 subtests failed, 9 subtests passed in 1.0s", (3, 2, 0, 0), (9, 4)),
        ("1 passed, 1 subtest passed in 0.1s", (1, 0, 0, 0), (1, 0)),
    ],
)
def test_parse_summary_with_subtests(text, counts, extras) -> None:
    c = parse_counts(text)
    assert (c["passed"], c["failed"], c["errors"], c["skipped"]) == counts
    fields = parse_result(text)
    assert (fields["subtests_passed"], fields["subtests_failed"]) == extras


def test_parse_failing_subfailed_lines() -> None:
    text = ("SUBFAILED(i=1, msg='a b') tests/test_a.py::TestX::test_y - AssertionError\n"
            "SUBFAILED(i=2) tests/test_a.py::TestX::test_y - AssertionError\n"
            "FAILED tests/test_a.py::TestX::test_y - contains 2 failed subtests\n")
    assert parse_failing(text) == ("tests/test_a.py::TestX::test_y",)


def test_parse_junit_rejects_other_documents() -> None:
    assert parse_junit("not xml") is None
    assert parse_junit("<html/>") is None
    assert nodeid("tests/test_a.py", "tests.test_a.TestX.Inner", "test_b[1.5]") == \
        "tests/test_a.py::TestX::Inner::test_b[1.5]"


# -- a verdict that cannot be faked (issue 32, item 2) ------------------------------------------

FAILING = """
    def test_ok():
        assert True

    def test_target():
        from units import f
        assert f() == 2
"""


def fixable(root: Path, body: str) -> Path:
    """A project whose `test_target` fails; `body` is the code of `units.f`."""
    proj = project(root, units=FAILING)
    (proj / "units.py").write_text(body)
    return proj


def test_an_exit_in_the_code_under_test_is_not_a_pass(tmp_path: Path) -> None:
    """`import os; os._exit(0)` as the fix: pytest prints nothing and writes no report."""
    first = run_tests([*PYTEST, "-q"], fixable(tmp_path / "a", "def f():\n    return 1\n"), 60,
                      env=FAST)
    assert first.evidence == "pytest" and first.required_tests == ("tests/test_units.py::test_target",)
    faked = run_tests([*PYTEST, "-q"], fixable(tmp_path / "b", "import os\nos._exit(0)\n"), 60,
                      env=FAST)
    assert faked.exit_code == 0 and faked.evidence == "cut short"
    assert not faked.ok and "cut short" in faked.doubt
    assert not faked.judged(first.required_tests).ok
    fixed = run_tests([*PYTEST, "-q"], fixable(tmp_path / "c", "def f():\n    return 2\n"), 60,
                      env=FAST)
    assert fixed.ok and fixed.judged(first.required_tests).ok


FORGER = """
import json, os, re
# what the code under test can reach: the JUnit path in PYTEST_ADDOPTS and every open fd
m = re.search(r"--junitxml=(\\S+)", os.environ.get("PYTEST_ADDOPTS", ""))
open(m.group(1), "w").write(
    '<testsuites><testsuite><testcase classname="tests.test_units" name="test_target" '
    'file="tests/test_units.py" line="3"/></testsuite></testsuites>')
line = json.dumps({"event": "finish", "nonce": "0" * 32, "exitstatus": 0, "collected": 2,
                   "outcomes": {"tests/test_units.py::test_target": "passed"}}) + "\\n"
for fd in range(3, 64):
    try:
        os.write(fd, line.encode())
    except OSError:
        pass
print("2 passed in 0.01s")
os._exit(0)
"""


def test_a_forged_report_is_not_a_pass(tmp_path: Path) -> None:
    faked = run_tests([*PYTEST, "-q"], fixable(tmp_path, FORGER), 60, env=FAST)
    assert faked.exit_code == 0 and not faked.ok, faked
    assert not faked.judged(("tests/test_units.py::test_target",)).ok


def test_a_run_without_our_report_cannot_pass_the_tests_that_failed(tmp_path: Path) -> None:
    """A `pytest.py` beside the tests shadows pytest: no plugin, exit 0, a printed summary."""
    proj = fixable(tmp_path, "def f():\n    return 2\n")
    (proj / "pytest.py").write_text("print('3 passed in 0.01s')\n")
    shadowed = run_tests([sys.executable, "-m", "pytest", "-q"], proj, 60, env=FAST)
    assert shadowed.evidence == "none" and shadowed.ok  # a plain command: the exit code rules
    judged = shadowed.judged(("tests/test_units.py::test_target",))
    assert not judged.ok and "no pytest report" in judged.doubt


def test_a_fix_must_pass_the_tests_that_failed(tmp_path: Path) -> None:
    """Deleting the failing test leaves test_ok passing: not a fix of test_target."""
    proj = fixable(tmp_path, "def f():\n    return 1\n")
    (proj / "tests" / "test_units.py").write_text("def test_ok():\n    assert True\n")
    result = run_tests([*PYTEST, "-q"], proj, 60, env=FAST)
    assert result.ok
    judged = result.judged(("tests/test_units.py::test_target",))
    assert not judged.ok and "did not pass: tests/test_units.py::test_target" in judged.doubt


def test_a_run_with_no_test_is_never_ok(tmp_path: Path) -> None:
    proj = project(tmp_path, skip="import pytest\n\n@pytest.mark.skip\ndef test_a():\n    pass\n")
    result = run_tests([*PYTEST, "-q"], proj, 60, env=FAST)
    assert result.exit_code == 0 and not result.ok and result.doubt == "no test ran"


def test_a_plain_command_is_judged_by_its_exit_code_and_says_so(tmp_path: Path) -> None:
    result = run_tests([sys.executable, "-c", "pass"], tmp_path, 60)
    assert result.ok and result.source == "exit code" and result.evidence == "none"
    assert result.verdict_basis.startswith("verdict: exit code only")


# -- the JUnit file is hostile input (issue 32, item 6) ----------------------------------------


def test_a_fifo_junit_report_is_refused_at_once(tmp_path: Path) -> None:
    from decision_retry.repo.junit import read_report

    fifo = tmp_path / "junit.xml"
    os.mkfifo(fifo)
    start = time.monotonic()
    assert read_report(fifo) is None
    assert time.monotonic() - start < 5  # it blocked for good before


def test_a_huge_or_linked_junit_report_is_not_read(tmp_path: Path) -> None:
    from decision_retry.repo.junit import read_report

    sparse = tmp_path / "sparse.xml"
    with open(sparse, "wb") as f:
        f.truncate(2**30)  # 1 GiB of holes: no disk, but reading it took 2 GB of memory
    assert read_report(sparse) is None
    real = tmp_path / "real.xml"
    real.write_text('<testsuites><testsuite><testcase classname="t" name="a"/></testsuite>'
                    "</testsuites>")
    assert read_report(real).passed == 1
    link = tmp_path / "link.xml"
    link.symlink_to(real)
    assert read_report(link) is None


def test_a_fifo_left_by_the_tests_does_not_block_the_run(tmp_path: Path) -> None:
    code = textwrap.dedent("""
        import os, re
        def test_plant():
            path = re.search(r"--junitxml=(\\S+)", os.environ["PYTEST_ADDOPTS"]).group(1)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.mkfifo(path)
            os._exit(0)
    """)
    proj = project(tmp_path, fifo=code)
    start = time.monotonic()
    result = run_tests([*PYTEST, "-q"], proj, 30, env=FAST)
    assert time.monotonic() - start < 30 and not result.timed_out and not result.ok

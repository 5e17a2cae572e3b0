"""What pytest runs to report a failure is no evidence: the reprs it renders (a failing assert's
operands, the arguments in its traceback) run in failing tests only, so a project's `__repr__`
scored as the bug (issue 30: the top suspects of 6 of the 9 real-bugs misses). Real pytest,
real coverage."""

from __future__ import annotations

from pathlib import Path

from decision_retry.localise.locate import localise
from decision_retry.repo.testrun import run_tests
from tests.helpers import NO_PLUGINS, TEST_CMD, write_files

FILES = {
    "names.py": """
        class Name:
            def __init__(self, text):
                self.text = text

            def __repr__(self):
                return f"Name({self._shown()})"

            def _shown(self):
                return repr(self.text)


        def last_name(dotted):
            parts = dotted.split(".")
            if len(parts) > 1:
                return Name(parts[0])  # the bug: parts[-1]
            return Name(dotted)
    """,
    "tests/test_names.py": """
        from names import last_name


        def check(name, want):
            assert name.text == want


        def test_plain():
            check(last_name("a"), "a")


        def test_same_parts():
            check(last_name("x.x"), "x")


        def test_dotted():
            assert last_name("a.b").text == "b"


        def test_dotted_in_a_helper():
            check(last_name("c.d"), "d")
    """,
}


def test_the_reprs_of_a_failure_report_are_not_suspects(tmp_path: Path) -> None:
    root = write_files(tmp_path, FILES, dedent=True)
    result = run_tests(TEST_CMD + " -o pythonpath=.", root, 60, env=NO_PLUGINS)
    assert len(result.failing_tests) == 2, result.output_tail
    assert "name = Name('c')" in result.output_tail  # the plain run renders the failure in full
    loc = localise(root, result, test_cmd=TEST_CMD + " -o pythonpath=.", env=NO_PLUGINS)
    assert loc.spectrum.failing and not loc.spectrum.note
    keys = [c.suspect.key for c in loc.candidates]
    assert keys[0] == "names.py::last_name"
    assert "names.py::Name.__repr__" not in keys and "names.py::Name._shown" not in keys


def test_a_test_that_fails_only_under_coverage_is_no_evidence(tmp_path: Path) -> None:
    # a timing limit the tracer breaks, as sqlparse's DoS tests under load: the plain run passes
    files = dict(FILES)
    files["timing.py"] = """
        def budget():
            return 1
    """
    files["tests/test_timing.py"] = """
        import sys

        from timing import budget


        def test_fast_enough():
            assert budget() == 1 and "coverage" not in sys.modules
    """
    root = write_files(tmp_path, files, dedent=True)
    result = run_tests(TEST_CMD + " -o pythonpath=.", root, 60, env=NO_PLUGINS)
    assert "tests/test_timing.py::test_fast_enough" not in result.failing_tests
    loc = localise(root, result, test_cmd=TEST_CMD + " -o pythonpath=.", env=NO_PLUGINS)
    assert "tests/test_timing.py::test_fast_enough" not in loc.spectrum.failing
    keys = [c.suspect.key for c in loc.candidates]
    assert keys[0] == "names.py::last_name" and "timing.py::budget" not in keys

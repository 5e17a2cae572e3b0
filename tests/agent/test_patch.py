"""The patch protocol: replies become code, each function applied by name; the failure shown."""

import re
import sys

import pytest

from decision_retry.agent import definitions, patch
from decision_retry.localise.locate import functions_in
from decision_retry.repo.testrun import TestResult, run_tests
from tests.helpers import NO_PLUGINS

SOURCE = '''"""Module."""


class Shop:
    def total(self, items):
        return sum(items) - 1

    def count(self, items):
        return len(items)


def helper(x):
    return x
'''


def test_method_is_replaced_in_place_with_its_indentation():
    target = next(f for f in functions_in(SOURCE, "shop.py") if f.name == "total")
    out = patch.apply(SOURCE, target, "def total(self, items):\n    return sum(items)\n")
    assert "        return sum(items)\n\n    def count" in out
    assert out.count("def ") == 3 and out.endswith("return x\n")


def test_bad_replies_are_errors_for_the_model():
    target = next(f for f in functions_in(SOURCE, "shop.py") if f.name == "helper")
    with pytest.raises(ValueError, match="does not parse"):
        patch.apply(SOURCE, target, "def helper(x:\n")
    with pytest.raises(ValueError, match="no function named helper"):
        patch.apply(SOURCE, target, "def other(x):\n    return 1\n")


def test_reply_code_stops_at_the_fence_or_the_dedent():
    regex = definitions.load("patch").stop_regex
    reply = "def f(x):\n    return x + 1\nassert f(1) == 2"
    assert patch.reply_code(reply, regex) == "def f(x):\n    return x + 1\n"
    assert patch.reply_code("def f(x):\n    return 2\n```\nmore", regex) == "def f(x):\n    return 2\n"
    two = "def f(x):\n    return g(x)\n\ndef g(x):\n    return x\n```"
    assert "def g" in patch.reply_code(two, regex)


def test_agent_definitions_load_from_data():
    for name in ("patch", "tools"):
        d = definitions.load(name)
        assert d.name == name and d.limits["max_new_tokens"] > 0 and d.prompt


def _stops_after(tokens: list[str], regex: str) -> str:
    """The reply as the decode loop ends it: the first prefix whose last 16 tokens match."""
    for i in range(1, len(tokens) + 1):
        if re.search(regex, "".join(tokens[max(0, i - 16):i])):
            return "".join(tokens[:i])
    return "".join(tokens)


def test_the_stop_rule_waits_for_a_whole_word_at_column_0():
    # a reply that imports before its function, streamed token by token: the decode loop sees
    # "\n\ndef" before the space that follows, and must not stop there (nor at the import)
    regex = definitions.load("patch").stop_regex
    tokens = ["import", " re", "\n", "from", " os", " import", " path", "\n\n", "de", "f", " f",
              "(x", "):\n", "   ", " return", " re", ".escape", "(x", ")\n\n", "x", " =", " 1"]
    assert _stops_after(tokens, regex) == "".join(tokens[:-1])  # at "x =": after the function
    two = ["def", " f", "():\n", "    return", " g", "()\n\n", "async", " def", " g", "():\n",
           "    return", " 1", "\n", "class", " C", ":\n", "    pass", "\n", "#", " done"]
    assert _stops_after(two, regex) == "".join(two[:-1])  # a comment at column 0 ends it


def test_the_stop_rule_lets_a_reply_rewrite_several_functions():
    # a helper, a decorated caller, then prose at column 0: the reply ends at the prose only
    regex = definitions.load("patch").stop_regex
    tokens = ["def", " g", "(x", "):\n", "    return", " x", "\n\n\n", "@", "cache", "\n",
              "def", " f", "(x", "):\n", "    return", " g", "(x", ")\n\n", "This", " fixes", " it"]
    assert _stops_after(tokens, regex) == "".join(tokens[:-1])


# -- several functions in one reply ----------------------------------------------------------------

SHOWN = [f for f in functions_in(SOURCE, "shop.py") if f.name in ("total", "helper")]


def test_defs_are_the_outermost_functions_with_their_name_spans():
    reply = ("import re\n\ndef helper(x):\n    def inner():\n        pass\n    return x\n\n\n"
             "@cache\nasync def total(self, items):\n    return 0\n```\ndef after_the_fence(): pass")
    found = patch.defs(reply)
    assert [d.name for d in found] == ["helper", "total"]  # not the nested one, nor past ```
    assert [reply[d.start:d.end] for d in found] == ["helper", "total"]
    assert [d.line for d in found] == [2, 8]  # `total` begins at its decorator
    indented = "    def total(self, items):\n        return 0\n"
    assert [d.name for d in patch.defs(indented)] == ["total"]


def test_rewrites_names_the_shown_functions_in_reply_order_and_what_it_left_out():
    reply = ("def extra(x):\n    return x\n\n\ndef helper(x):\n    return x + 1\n\n\n"
             "def total(self, items):\n    return sum(items)\n\n\ndef helper(x):\n    return 0\n")
    targets, ignored = patch.rewrites(reply, SHOWN)
    assert [s.name for s in targets] == ["helper", "total"]  # each once
    assert ignored == ["extra"]
    assert patch.chosen(reply, SHOWN).name == "helper"  # the first shown one it rewrites
    assert patch.rewrites("def nothing_shown(x):\n    pass\n", SHOWN) == ([], ["nothing_shown"])
    # a reply that does not parse still names its choices (applying it reports the syntax error)
    assert [s.name for s in patch.rewrites("def total(self, items:\n", SHOWN)[0]] == ["total"]


# -- the failure as the model sees it: real pytest output ------------------------------------------

CALC = '''def scale(x):
    return x * 3


def total(xs):
    return sum(scale(x) for x in xs) + 1
'''
TESTS = '''from calc import scale, total


def test_total():
    xs = [1, 2, 3]
    assert total(xs) == 12, "total doubles and sums"


def test_none():
    print("result = 0 expected")
    assert total([None]) == 0


def test_lists():
    assert [total([1]), 2, 3] == [2, 2, 3, 4, 5, 6]
'''


@pytest.fixture(scope="module")
def pytest_failures(tmp_path_factory) -> dict[str, TestResult]:
    """Each test of TESTS run alone by real pytest (`-x -q`, the default command's options)."""
    root = tmp_path_factory.mktemp("calc")
    (root / "calc.py").write_text(CALC)
    (root / "test_calc.py").write_text(TESTS)
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
    return {name: run_tests([*cmd, f"test_calc.py::{name}"], root, 60, env=NO_PLUGINS)
            for name in ("test_total", "test_none", "test_lists")}


def test_the_error_keeps_the_assertion_its_message_and_the_values(pytest_failures):
    shown = patch.error_lines(pytest_failures["test_total"], 6).splitlines()
    assert [ln.split()[0] for ln in shown] == [">", "E", "E", "E", "test_calc.py:6:"]
    assert 'assert total(xs) == 12, "total doubles and sums"' in shown[0]
    assert shown[1].endswith("AssertionError: total doubles and sums")
    assert shown[2].endswith("assert 19 == 12")
    assert shown[3].endswith("where 19 = total([1, 2, 3])")


def test_the_error_of_a_deeper_frame_keeps_the_arguments_and_where_it_raised(pytest_failures):
    shown = patch.error_lines(pytest_failures["test_none"], 6)
    for line in ("assert total([None]) == 0", "x = None", "return x * 3",
                 "TypeError: unsupported operand type(s) for *: 'NoneType' and 'int'"):
        assert line in shown, shown
    assert "calc.py:2: TypeError" in shown  # where it raised, before the frames between
    assert "Captured stdout" in pytest_failures["test_none"].output_tail
    assert "result = " not in shown  # the test's own output is no value of the failure
    assert "^^^" not in shown and "_ _ _" not in shown  # markers and separators are no values
    # at a tighter limit the frames' arguments and locations go first, the exception stays
    tight = patch.error_lines(pytest_failures["test_none"], 3).splitlines()
    assert "assert total([None]) == 0" in tight[0] and "TypeError" in tight[-1]


def test_a_long_comparison_keeps_the_assertion_before_the_diff_details(pytest_failures):
    full = pytest_failures["test_lists"].output_tail
    assert sum(ln.startswith("E ") for ln in full.splitlines()) > 3  # more than the limit holds
    shown = patch.error_lines(pytest_failures["test_lists"], 3).splitlines()
    assert "assert [total([1]), 2, 3] == [2, 2, 3, 4, 5, 6]" in shown[0]
    assert shown[1].endswith("assert [4, 2, 3] == [2, 2, 3, 4, 5, 6]")
    assert "At index 0 diff: 4 != 2" in shown[2]


def test_output_with_no_pytest_failure_keeps_its_last_lines():
    result = TestResult(command=("python",), exit_code=1,
                        output_tail="Traceback (most recent call last):\n  x\nValueError: bad\nend")
    assert patch.error_lines(result, 2) == "ValueError: bad\nend"
    long = TestResult(command=("pytest",), exit_code=1,
                      output_tail="___ test_x ___\n>   assert f()\nE   assert " + "x" * 500)
    assert patch.error_lines(long, 6).splitlines()[1].endswith("x…")
    assert len(patch.error_lines(long, 6).splitlines()[1]) == patch.LINE_CHARS


def test_a_suspect_too_long_to_show_leaves_room_for_the_next():
    short = "def f{k}(x):\n    return x\n"
    long = "def g(x):\n" + "    x += 1\n" * 100 + "    return x\n"
    found = functions_in(short.format(k=1) + "\n\n" + long + "\n\n" + short.format(k=2), "m.py")
    first, big, last = sorted(found, key=lambda s: s.start)
    assert [s.name for s in patch.shown([first, big, last], 3, 200)] == ["f1", "f2"]
    assert [s.name for s in patch.shown([big, first, last], 3, 200)] == ["g"]  # the best always
    assert [s.name for s in patch.shown([first, last, big], 2, 10_000)] == ["f1", "f2"]

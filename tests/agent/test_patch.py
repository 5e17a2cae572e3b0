"""The patch protocol: replies become code, applied to the named function only."""

import pytest

from decision_retry.agent import definitions, patch
from decision_retry.agent.locate import functions_in

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

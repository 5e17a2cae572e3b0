"""The patch protocol: replies become code, applied to the named function only."""

import re

import pytest

from decision_retry.agent import definitions, patch
from decision_retry.localise.locate import functions_in

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

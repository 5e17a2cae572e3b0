"""A patch reply may leave the docstring out: the rewritten function keeps the one it replaces, so
the diff shows only what the model changed (issue 30: copied docstrings were 17% of the reply
tokens on real code). Real git repositories, real pytest, the scripted model."""

from __future__ import annotations

import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from decision_retry.agent import definitions, patch
from decision_retry.agent.actions import PatchProtocol, Task
from decision_retry.agent.runner import FixConfig, fix
from decision_retry.localise.code import functions_in
from decision_retry.repo.testrun import TestResult
from decision_retry.retry import RetryConfig
from decision_retry.testing import scripted_lm
from decision_retry.trace import summary
from decision_retry.trace.store import TraceStore
from tests.helpers import make_repo

SOURCE = '''"""Module."""


class Meter:
    def reading(self, raw):
        """The reading in volts.

        Raw counts are tenths.
        """
        return raw / 100

    async def fetch(self, x):
        """Fetch x."""
        return x - 1


def outer(xs):
    def inner(x):
        \'\'\'One item, doubled.
   (a line left of the code: the string's content)\'\'\'
        return x * 3
    return [inner(x) for x in xs]


def plain(x):
    return x
'''


def fn(name: str, text: str = SOURCE):
    return next(f for f in functions_in(text, "m.py") if f.name == name)


def replaced(name: str, reply: str, text: str = SOURCE) -> str:
    """The changed lines of `text` after the reply, kept docstrings on (as the patch protocol)."""
    out = patch.apply(text, fn(name, text), reply, keep_docstring=True)
    old, new = text.splitlines(), out.splitlines()
    return "\n".join(ln for ln in new if ln not in old) + " | " \
        + "\n".join(ln for ln in old if ln not in new)


def test_a_method_without_docstring_keeps_it_verbatim():
    out = patch.apply(SOURCE, fn("reading"), "def reading(self, raw):\n    return raw / 10\n",
                      keep_docstring=True)
    assert out == SOURCE.replace("raw / 100", "raw / 10")


def test_a_reply_that_writes_a_docstring_replaces_it():
    reply = 'def reading(self, raw):\n    """Volts."""\n    return raw / 10\n'
    out = patch.apply(SOURCE, fn("reading"), reply, keep_docstring=True)
    assert '        """Volts."""\n        return raw / 10\n' in out
    assert "The reading in volts" not in out and "Raw counts" not in out
    assert patch.kept_docstring(reply, fn("reading")) is None


def test_async_one_line_and_nested_functions_keep_theirs():
    # async method with a one-line docstring
    assert replaced("fetch", "async def fetch(self, x):\n    return x\n") \
        == "        return x | " + "        return x - 1"
    # a nested function whose docstring has a line left of its `def` (content of the string)
    out = patch.apply(SOURCE, fn("inner"), "def inner(x):\n    return x * 2\n", keep_docstring=True)
    assert out == SOURCE.replace("x * 3", "x * 2")


def test_the_docstring_goes_after_a_long_signature_before_a_comment_and_a_decorator_stays():
    text = ('class A:\n    @staticmethod\n    def f(\n        x,\n    ) -> int:\n'
            '        """Doc."""\n        return x + 1\n')
    reply = "@staticmethod\ndef f(\n    x,\n) -> int:  # typed\n    # the fix\n    return x - 1\n"
    out = patch.apply(text, fn("f", text), reply, keep_docstring=True)
    assert out == ('class A:\n    @staticmethod\n    def f(\n        x,\n    ) -> int:  # typed\n'
                   '        """Doc."""\n        # the fix\n        return x - 1\n')
    assert patch.kept_docstring(reply, fn("f", text)) == patch.Kept(3, ['"""Doc."""'])


def test_a_body_at_another_indentation_gets_the_docstring_at_its_own():
    out = patch.apply(SOURCE, fn("fetch"), "async def fetch(self, x):\n  return x\n",
                      keep_docstring=True)
    assert '    async def fetch(self, x):\n      """Fetch x."""\n      return x\n' in out


def test_where_nothing_is_kept():
    # a function without a docstring; a body on the `def` line; the tools protocol (option off)
    assert replaced("plain", "def plain(x):\n    return x + 1\n") == "    return x + 1 | " \
        + "    return x"
    assert patch.kept_docstring("def plain(x):\n    return 1\n", fn("plain")) is None
    one_line = patch.apply(SOURCE, fn("fetch"), "async def fetch(self, x): return x\n",
                           keep_docstring=True)
    assert "    async def fetch(self, x): return x\n" in one_line and "Fetch x" not in one_line
    off = patch.apply(SOURCE, fn("reading"), "def reading(self, raw):\n    return raw / 10\n")
    assert "The reading in volts" not in off


def test_the_prompt_says_so_only_where_a_shown_function_has_a_docstring():
    defn = definitions.load("patch")
    result = TestResult(command=("pytest",), exit_code=1, output_tail="E   assert 1 == 2")
    note = defn.prompt["docstring"]
    assert note and note in patch.messages(defn, fn("reading"), "", result)[0]["content"]
    assert note not in patch.messages(defn, fn("plain"), "", result)[0]["content"]
    many = patch.messages(defn, [fn("plain"), fn("fetch")], "", result)[0]["content"]
    assert defn.prompt["docstring_many"] in many
    assert defn.prompt["docstring_many"] not in \
        patch.messages(defn, [fn("plain"), fn("plain")], "", result)[0]["content"]


def test_where_places_a_body_token_below_the_kept_docstring():
    task = Task(suspect=fn("reading"), test_src="", files=("m.py",), test_cmd="pytest",
                test_timeout=10, result=TestResult(command=("pytest",), exit_code=1))
    protocol = PatchProtocol(definitions.load("patch"), task)
    reply = "def reading(self, raw):\n    return raw / 10\n```"
    tokens = [SimpleNamespace(text=t) for t in ("def", " reading", "(self, raw):\n",
                                                 "    return", " raw", " /", " 10", "\n```")]
    assert protocol.where(reply, 1, tokens) == ("m.py", 5)  # the def line: where it was
    assert protocol.where(reply, 6, tokens) == ("m.py", 10)  # `return raw / 10`, below 4 lines
    with_doc = 'def reading(self, raw):\n    """V."""\n    return raw / 10\n```'
    doc_tokens = [SimpleNamespace(text=t) for t in ("def", " reading", "(self, raw):\n",
                                                     '    """V."""\n', "    return", " 10")]
    assert protocol.where(with_doc, 5, doc_tokens) == ("m.py", 7)  # the reply's own lines


FILES = {
    "meter.py": SOURCE,
    "test_meter.py": """
        from meter import Meter


        def test_reading():
            assert Meter().reading(10) == 1.0
    """,
}
FILES = {rel: textwrap.dedent(text).lstrip() if rel.startswith("test") else text
         for rel, text in FILES.items()}


def one_attempt(tmp_path: Path, reply: list[str]):
    """`fix` with one attempt of the scripted reply on a real repo: (its result, its trace)."""
    cfg = FixConfig(test_cmd="python -m pytest -q -p no:cacheprovider", seed=0,
                    budget_tokens=200, max_attempts=1, retry=RetryConfig(strategy="restart"))
    with TraceStore(tmp_path / "home" / "traces.db") as store:
        res = fix(make_repo(tmp_path / "repo", FILES), cfg, lm=scripted_lm(reply), store=store)
        return res, store.load(res.run_id)


@pytest.mark.parametrize("docstring", ["", '    """Volts."""\n'])
def test_fix_keeps_or_replaces_the_docstring(tmp_path: Path, docstring: str) -> None:
    reply = ["def", " reading", "(self, raw):\n", docstring, "    return", " raw", " /", " 10",
             "\n```"]
    res, tree = one_attempt(tmp_path, [t for t in reply if t])
    assert res.fixed and res.attempts == 1
    (turn,) = tree.turns
    assert "You may leave out" in turn.prompt
    (call,) = [c for c in tree.tool_calls if c.action == "apply_patch"]
    changed = summary.changed_lines(res.diff)
    position = [t.text for t in turn.tokens].index(" 10")
    if not docstring:  # the diff is the model's one edit; the trace says what was kept
        assert changed == ["-        return raw / 100", "+        return raw / 10"]
        assert call.observation == "replaced Meter.reading in meter.py (docstring kept)"
        assert call.arguments["kept_docstrings"] == [
            {"function": "Meter.reading", "reply_line": 0, "lines": 4}]
    else:  # the model's docstring replaces the old one, as it wrote it
        assert '+        """Volts."""' in changed and "-        Raw counts are tenths." in changed
        assert call.observation == "replaced Meter.reading in meter.py"
        assert "kept_docstrings" not in call.arguments
    # a cut in the body is placed at its line in the file (10 when kept: below the 4 lines)
    assert summary.where(tree, turn, position) == ("meter.py:10" if not docstring
                                                   else "meter.py:7")


TWO = {
    "conf.py": '''def parse(line):
    """Key and value of one `key=value` line."""
    key, value = line.split("=")
    return key, value


def load(text):
    """The settings in `text`.

    One a line.
    """
    return dict(parse(line) for line in text.splitlines())
''',
    "test_conf.py": 'from conf import load\n\n\ndef test_load():\n'
                    '    assert load("a = 1\\n\\nb=2\\n") == {"a": "1", "b": "2"}\n',
}


def test_one_reply_rewriting_two_functions_keeps_both_docstrings(tmp_path: Path) -> None:
    reply = ["def", " parse", "(line):\n", '    key, value = line.split("=")\n',
             "    return", " key.strip(), value.strip()", "\n\n\n", "def", " load", "(text):\n",
             "    return", " dict(parse(line) for line in text.splitlines()",
             " if line.strip())", "\n```"]
    cfg = FixConfig(test_cmd="python -m pytest -q -p no:cacheprovider", seed=0,
                    budget_tokens=200, max_attempts=1, retry=RetryConfig(strategy="restart"))
    with TraceStore(tmp_path / "home" / "traces.db") as store:
        res = fix(make_repo(tmp_path / "repo", TWO), cfg, lm=scripted_lm(reply), store=store)
        tree = store.load(res.run_id)
    assert res.fixed
    assert summary.changed_lines(res.diff) == [
        "-    return key, value", "+    return key.strip(), value.strip()",
        "-    return dict(parse(line) for line in text.splitlines())",
        "+    return dict(parse(line) for line in text.splitlines() if line.strip())"]
    (call,) = [c for c in tree.tool_calls if c.action == "apply_patch"]
    assert call.arguments["kept_docstrings"] == [
        {"function": "parse", "reply_line": 0, "lines": 1},
        {"function": "load", "reply_line": 5, "lines": 4}]
    (turn,) = tree.turns
    texts = [t.text for t in turn.tokens]
    # each body line is placed at its line in the file: 4 and 12, below 1 and 4 kept lines
    assert summary.where(tree, turn, texts.index(" key.strip(), value.strip()")) == "conf.py:4"
    assert summary.where(tree, turn, texts.index(" if line.strip())")) == "conf.py:12"

"""Replies shaped as real projects write functions: a signature one parameter a line (its `)` at
column 0) and a Markdown docstring with an indented ``` fence. Neither may end the reply (issue 30:
on real-bugs both cut every reply of two projects short). Real git, real pytest, the scripted model."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

from decision_retry.agent import definitions, patch
from decision_retry.agent.runner import FixConfig, fix
from decision_retry.engines.scripted import PROMPT, ScriptedBackend
from decision_retry.lm import LM
from decision_retry.retry import RetryConfig
from decision_retry.testing import scripted_lm
from decision_retry.trace.store import TraceStore
from tests.helpers import make_repo

FILES = {
    "scale.py": '''
        def scale(
            x: int,
            k: int = 2,
        ) -> int:
            """Scale x by k.

            Examples:
                ```pycon
                >>> scale(2)
                4
                ```
            """
            return x + k
    ''',
    "test_scale.py": """
        from scale import scale


        def test_scale():
            assert scale(3) == 6
    """,
}
FILES = {rel: textwrap.dedent(text).lstrip() for rel, text in FILES.items()}

# The corrected function as the model streams it, one segment a token: ")" arrives alone at column
# 0, and the docstring's fence lines are tokens of their own, as a real tokenizer splits them.
REPLY = ["def", " scale", "(\n", "    x", ": int", ",\n", "    k", ": int", " = ", "2", ",\n",
         ")", " ->", " int", ":\n", '    """', "Scale x by k.", "\n\n", "    Examples:\n",
         "        ", "```", "pycon\n", "        >>> scale(2)\n", "        4\n", "        ", "```",
         "\n", '    """\n', "    return", " x", " *", " k", "\n", "```"]


def one_attempt(tmp_path: Path, files: dict, reply: list[str], budget: int):
    """`fix` with one attempt of the scripted reply on a real repo: (its result, its trace)."""
    cfg = FixConfig(test_cmd="python -m pytest -q -p no:cacheprovider", seed=0,
                    budget_tokens=budget, max_attempts=1, retry=RetryConfig(strategy="restart"))
    with TraceStore(tmp_path / "home" / "traces.db") as store:
        res = fix(make_repo(tmp_path / "repo", files), cfg, lm=scripted_lm(reply), store=store)
        return res, store.load(res.run_id)


def test_a_multiline_signature_and_a_docstring_fence_reach_the_patch(tmp_path: Path) -> None:
    res, tree = one_attempt(tmp_path, FILES, REPLY, 200)
    (turn,) = tree.turns
    assert turn.text.startswith("def scale(\n") and "        ```pycon" in turn.text
    assert res.fixed and res.attempts == 1
    assert "+    return x * k" in res.diff
    assert "```pycon" not in res.diff  # the docstring is kept as it was


def test_the_stop_rule_and_the_reply_code_skip_indented_fences_and_closing_brackets():
    defn = definitions.load("patch")
    reply = "".join(REPLY)
    code = patch.reply_code(reply, defn.stop_regex)
    assert code.endswith("    return x * k\n") and "        ```\n" in code
    assert [d.name for d in patch.defs(reply)] == ["scale"]
    # what still ends a reply: the closing fence at column 0, and prose at column 0
    assert not any(s in reply[:-3] for s in defn.stop) and reply.endswith(defn.stop[0])
    assert patch.reply_code("def f(\n    x,\n):\n    return x\nThat fixes it.", defn.stop_regex) \
        == "def f(\n    x,\n):\n    return x\n"


def test_a_reply_cut_at_the_token_cap_is_not_applied(tmp_path: Path) -> None:
    """Cut after the first branch's `return 0`, the text still parses: applied, it would
    delete the function's last line. It is not applied, and the repository keeps its code."""
    files = {"scale.py": "def scale(x, k=2):\n    if x > 100:\n        return 0\n    return x + k\n",
             "test_scale.py": FILES["test_scale.py"]}
    reply = ["def", " scale", "(x", ", k", "=2", "):\n", "    if", " x", " >", " 100", ":\n",
             "        return", " 0", "\n", "    return", " x", " *", " k", "\n", "```"]
    res, tree = one_attempt(tmp_path, files, reply, 14)  # the cap: 14 tokens, after `return 0`
    (turn,) = tree.turns
    assert turn.text.endswith("return 0\n") and not res.fixed
    (call,) = tree.tool_calls_of(turn.id)
    assert call.observation.startswith("not applied: the reply reached the token cap")
    assert not res.diff


class WordTokens(ScriptedBackend):
    """The scripted model, with text counted as one token a word (as a real tokenizer would
    count it, roughly): what the reply cap is computed in."""

    def encode_text(self, text: str) -> list[int]:
        return [PROMPT] * len(text.split())


def test_a_long_function_gets_a_reply_cap_that_fits_it(tmp_path: Path) -> None:
    """A function of about 400 tokens (its docstring copied, as the model does) is past the
    definition's 320-token cap: the cap rises to 1.5x the function shown, so the whole rewrite
    arrives and is applied (it was cut at 320, and not applied, before)."""
    doc = " ".join(f"word{i}" for i in range(390))
    files = {"scale.py": f'def scale(x, k=2):\n    """{doc}"""\n    return x + k\n',
             "test_scale.py": FILES["test_scale.py"]}
    reply = ["def", " scale", "(x", ", k", "=2", "):\n", '    """',
             *(f"word{i}" if i == 0 else f" word{i}" for i in range(390)),
             '"""\n', "    return", " x", " *", " k", "\n", "```"]
    assert len(reply) > definitions.load("patch").limits["max_new_tokens"]
    cfg = FixConfig(test_cmd="python -m pytest -q -p no:cacheprovider", seed=0,
                    budget_tokens=1000, max_attempts=1, retry=RetryConfig(strategy="restart"))
    lm = LM(WordTokens(reply), name="scripted")
    with TraceStore(tmp_path / "home" / "traces.db") as store:
        res = fix(make_repo(tmp_path / "repo", files), cfg, lm=lm, store=store)
        (turn,) = store.load(res.run_id).turns
    assert turn.params["max_new_tokens"] == math.ceil(1.5 * len(files["scale.py"].split()))
    assert res.fixed and "+    return x * k" in res.diff

"""A real `create_agent` graph whose tools edit a real git repository, driven by the scripted model.

The repository: `units.py` with a sign error and its pytest test. The agent reads the file, then
writes it back whole; the write call hesitates twice (which file to write, which operator), as a
real model's entropy spikes would. Only `units.py` with `+` passes the tests; any other path
leaves a stray file that only a restored snapshot removes.
"""

from __future__ import annotations

from langchain.agents import create_agent
from langchain_core.tools import tool

from decision_retry.langchain import ChatDecisionRetry, DecisionRetryMiddleware, scripted_turns_lm
from decision_retry.repo.workspace import Workspace

BUGGY = 'def celsius_to_fahrenheit(c):\n    return c * 9 / 5 - 32\n'
TEST = (
    "from units import celsius_to_fahrenheit\n\n\n"
    "def test_boiling():\n    assert celsius_to_fahrenheit(100) == 212\n\n\n"
    "def test_freezing():\n    assert celsius_to_fahrenheit(0) == 32\n"
)
PATHS = {"units.py": 0.45, "units_fixed.py": 0.3, "units2.py": 0.25}  # entropy 1.07 nats
OPERATORS = {"+": 0.4, "-": 0.35, "*": 0.25}  # entropy 1.08 nats
SCRIPT = [
    [('Let me look at the code first.\n<tool_call>\n'
      '{"name": "read_file", "arguments": {"path": "units.py"}}\n</tool_call>')],
    [('The sign is wrong; I will write the file back.\n<tool_call>\n'
      '{"name": "write_file", "arguments": {"path": "'), {"choice": PATHS},
     '", "text": "def celsius_to_fahrenheit(c):\\n    return c * 9 / 5 ', {"choice": OPERATORS},
     ' 32\\n"}}\n</tool_call>'],
    ["I fixed the conversion."],
]
TEST_COMMAND = "python -m pytest -q"
# the repository (tests.helpers.make_repo(root / "units", UNITS)): the bug and its failing test
UNITS = {"units.py": BUGGY, "test_units.py": TEST}


def file_tools(ws: Workspace) -> list:
    """read_file / write_file inside the workspace (paths are checked by the workspace)."""

    @tool
    def read_file(path: str) -> str:
        """Read a file of the repository."""
        return ws.read_file(path)

    @tool
    def write_file(path: str, text: str) -> str:
        """Write a whole file of the repository."""
        ws.write_file(path, text)
        return f"wrote {path} ({len(text)} characters)"

    return [read_file, write_file]


def build(ws: Workspace, *, seed: int, recorder=None, model=None, **kw):
    """The agent: our chat model (scripted unless given), the file tools, the middleware."""
    model = model or ChatDecisionRetry(engine=scripted_turns_lm(SCRIPT))
    middleware = DecisionRetryMiddleware(test_command=TEST_COMMAND, repository=ws,
                                         recorder=recorder, seed=seed, **kw)
    return create_agent(model, file_tools(ws), middleware=[middleware]), middleware


def question() -> dict:
    return {"messages": [{"role": "user", "content": "Make the tests pass."}]}

"""A LangChain `create_agent` agent whose tools edit a git repository, with decision-retry as
middleware (docs/langchain.md).

It runs in seconds on the scripted model that ships with decision-retry: a stand-in that reads
the file, then writes it back and hesitates at the operator, like a real model's entropy spike.
For a real model: `ChatDecisionRetry(engine=load_lm("smollm2-135m"))` (decision_retry.loading).
"""

import subprocess
import tempfile
from pathlib import Path

from langchain.agents import create_agent
from langchain_core.tools import tool

from decision_retry.langchain import ChatDecisionRetry, DecisionRetryMiddleware, scripted_turns_lm
from decision_retry.repo.workspace import Workspace
from decision_retry.trace import Recorder, TraceStore

# 1) A repository with a failing test (yours would already exist).
repo = Path(tempfile.mkdtemp()) / "units"
repo.mkdir()
(repo / "units.py").write_text("def celsius_to_fahrenheit(c):\n    return c * 9 / 5 - 32\n")
(repo / "test_units.py").write_text(
    "from units import celsius_to_fahrenheit\n\n\n"
    "def test_boiling():\n    assert celsius_to_fahrenheit(100) == 212\n"
)
for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "a failing test"]):
    subprocess.run(["git", "-c", "user.name=me", "-c", "user.email=me@localhost", *args],
                   cwd=repo, check=True)

# 2) The agent works in a private clone of it: the workspace snapshots and restores files.
ws = Workspace(repo, "langchain-example").open()


@tool
def read_file(path: str) -> str:
    """Read a file of the repository."""
    return ws.read_file(path)


@tool
def write_file(path: str, text: str) -> str:
    """Write a whole file of the repository."""
    ws.write_file(path, text)
    return f"wrote {path}"


# 3) A model: scripted here. Call 1 reads the file, call 2 writes it (unsure of the operator),
#    call 3 answers.
lm = scripted_turns_lm([
    ['<tool_call>\n{"name": "read_file", "arguments": {"path": "units.py"}}\n</tool_call>'],
    [('The sign is wrong.\n<tool_call>\n{"name": "write_file", "arguments": {"path": "units.py", '
      '"text": "def celsius_to_fahrenheit(c):\\n    return c * 9 / 5 '),
     {"choice": {"-": 0.5, "+": 0.3, "*": 0.2}}, ' 32\\n"}}\n</tool_call>'],
    ["Fixed."],
])
model = ChatDecisionRetry(engine=lm)

# 4) decision-retry: the tests decide; a failure rewinds conversation and files to a token.
store = TraceStore(Path(tempfile.mkdtemp()) / "traces.db")
retry = DecisionRetryMiddleware(test_command="python -m pytest -q", repository=ws,
                                recorder=Recorder(store), seed=1)
agent = create_agent(model, [read_file, write_file], middleware=[retry])
final = agent.invoke({"messages": [{"role": "user", "content": "Make the tests pass."}]})

# 5) What happened: every attempt and where it was cut, then the fix as a branch of the repo.
dr = final["decision_retry"]
for step in dr["steps"]:
    print(f"attempt {step['attempt']}: a {step['move']} move in call {step['cut_turn']} from "
          f"{step['token']!r} -> {'accepted' if step['accepted'] else 'rejected'}")
print("status:", dr["status"], "after", dr["attempts"], "attempts")
print([m.type for m in final["messages"]])
print(ws.read_file("units.py").strip().splitlines()[-1].strip())
run = store.load(retry.recorder.run.id)
print(f"trace: {len(run.branches)} branches, {len(run.turns)} model calls, "
      f"{len(run.test_runs)} test runs")
ws.finish(success=dr["status"] == "passed")
print("branch:", subprocess.run(["git", "branch", "--list", "decision-retry/*"], cwd=repo,
                                capture_output=True, text=True, check=True).stdout.strip())

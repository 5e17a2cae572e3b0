"""Property tests: thousands of generated inputs against the action parser, the patch applier,
the path guard and the store reader. Never a traceback; the user's repository byte-identical."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from decision_retry.agent import definitions, patch
from decision_retry.agent.actions import Task, ToolsProtocol
from decision_retry.hermes import call_text
from decision_retry.localise.locate import functions_in
from decision_retry.repo.testrun import TestResult
from decision_retry.repo.workspace import PathError, Workspace
from decision_retry.trace.models import Branch, Run, Turn
from decision_retry.trace.store import TraceStore
from tests.helpers import git, repo_state, write

# thousands of generated inputs: minutes on a 2-core machine (`make check` leaves them out)
pytestmark = pytest.mark.slow

SOURCE = "def add(a, b):\n    return a - b\n\n\nclass C:\n    def m(self):\n        return 1\n"
FAST = settings(max_examples=400, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
# paths and replies a model might write: separators, dots, `.git`, NUL, surrogates, long names
PATHISH = st.lists(st.sampled_from(["..", ".", ".git", "calc.py", "pkg", "/", "\\", "\0", "~",
                                    "x" * 300, "\ud800", "é", " ", "link", "out", "a/b"]),
                   max_size=8).map("".join) | st.text(max_size=300)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prop")
    outside = tmp / "outside"
    write(outside / "secret.txt", "outside\n")
    repo = tmp / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    write(repo / "calc.py", SOURCE)
    (repo / "out").symlink_to(outside, target_is_directory=True)
    (repo / "link").symlink_to("calc.py")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "initial")
    before = repo_state(repo)
    with Workspace(repo, "properties") as ws:
        yield ws
    assert repo_state(repo) == before
    assert (outside / "secret.txt").read_text() == "outside\n" and len(list(outside.iterdir())) == 1


@FAST
@given(rel=PATHISH)
def test_path_guard_returns_a_path_inside_or_refuses(workspace, rel):
    try:
        target = workspace.resolve(rel)
    except PathError:
        return
    root = workspace.root
    assert target == root or root in target.parents
    assert ".git" not in target.relative_to(root).parts


@FAST
@given(name=st.sampled_from(["read_file", "list_files", "edit_function", "submit", "READ",
                             "delete", ""]),
       arg=PATHISH, body=st.text(max_size=200), cut=st.integers(0, 400))
def test_tool_call_parser_never_raises(workspace, name, arg, body, cut):
    result = TestResult(command=("pytest",), exit_code=1, failed=1)
    proto = ToolsProtocol(definitions.load("tools"),
                          Task(None, "", result, ("calc.py",), "python -m pytest -q", 30))
    whole = call_text(name, {"path": arg, "directory": arg, "function": body[:20], "code": body})
    reply = whole[:cut]  # whole, or broken off anywhere
    out = proto.act(workspace, reply, 0)
    assert isinstance(out.observation, str)
    workspace.restore(workspace.base_sha)  # each example starts from the same tree


@FAST
@given(code=st.text(max_size=300) | st.sampled_from([
    "def add(a, b):\n    return a + b\n", "def add(a, b):\n  return (\n", "class add: pass\n",
    "def add(a, b):\n    return '\ud800'\n", "\tdef add(a,b):\n\t\treturn 0\n", "def add(:\n"]))
def test_patch_applier_raises_only_value_error(code):
    target = next(f for f in functions_in(SOURCE, "calc.py") if f.name == "add")
    try:
        out = patch.apply(SOURCE, target, code)
    except ValueError:
        return
    assert "def add" in out and "class C" in out


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(column=st.sampled_from(["tokens", "params", "text", "prompt", "index", "id", "branch_id"]),
       junk=st.one_of(st.text(max_size=50), st.binary(max_size=50),
                           st.integers(-2**63, 2**63 - 1), st.none()))
def test_store_reader_hides_a_corrupt_row(tmp_path_factory, column, junk):
    db = tmp_path_factory.mktemp("store") / "traces.db"
    with TraceStore(db) as store:
        run = store.add(Run(model="m", strategy="s"))
        branch = store.add(Branch(run_id=run.id, index=0, strategy="initial"))
        good = store.add(Turn(branch_id=branch.id, index=0, prompt="p", text="good"))
        store.add(Turn(branch_id=branch.id, index=1, prompt="p", text="victim"))
    raw = sqlite3.connect(db)
    try:
        raw.execute(f'UPDATE turns SET "{column}" = ? WHERE text = ?', (junk, "victim"))
        raw.commit()
    except sqlite3.IntegrityError:  # NOT NULL, a duplicate id: the database refuses the junk
        pass
    finally:
        raw.close()
    with TraceStore(db) as store:
        tree = store.load(run.id)
        listed = store.list_runs()
        store.counts(run.id)
    assert good.id in {t.id for t in tree.turns} and [r.id for r in listed] == [run.id]

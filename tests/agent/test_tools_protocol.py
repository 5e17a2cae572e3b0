"""`--protocol tools` in the model's native `<tool_call>` format: the shared parser (hermes.py)
and a scripted session on a real git repository (read, a malformed call, edit, test, submit)."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from decision_retry import hermes
from decision_retry.agent import definitions
from decision_retry.agent.actions import Task, ToolsProtocol
from decision_retry.langchain import scripted_turns_lm
from decision_retry.repo.testrun import TestResult
from decision_retry.repo.workspace import Workspace
from tests.helpers import fix_config, fixture_repo, repo_state

FIXED = ("def celsius_to_fahrenheit(celsius: float) -> float:\n"
         "    return celsius * 9 / 5 + 32\n")


def call(name: str, **arguments) -> list:
    """A scripted turn writing one native call; the name and the path and function values are
    tokens of their own, as the decisions they are."""
    segments = ["<tool_call>", '\n{"name": "', name, '", "arguments": {']
    for i, (key, value) in enumerate(arguments.items()):
        segments += [(", " if i else "") + f'"{key}": "', json.dumps(value)[1:-1], '"']
    return [*segments, "}}\n", "</tool_call>"]


def test_parse_finds_each_value_where_it_is_written():
    reply = ('<tool_call>\n{"name": "edit_function", "arguments": {"path": "a/b.py", '
             '"function": "C.f", "code": "def f():\\n    return 1\\n"}}\n</tool_call>')
    content, (c,) = hermes.parse(reply)
    assert content == "" and c.error is None and c.name == "edit_function"
    assert c.arguments["code"] == "def f():\n    return 1\n"
    assert {k: reply[a:b] for k, (a, b) in c.spans.items()} == {
        "name": "edit_function", "path": "a/b.py", "function": "C.f",
        "code": "def f():\\n    return 1\\n"}


def test_parse_reads_raw_newlines_an_unclosed_call_and_reports_bad_ones():
    (c,) = hermes.parse('<tool_call>{"name": "x", "arguments": {"code": "a\nb"}}')[1]
    assert c.arguments == {"code": "a\nb"}  # a literal newline inside a string; no </tool_call>
    bad = hermes.parse('thinking <tool_call>{"name": "x", "arguments": {"path": "a"</tool_call>'
                       '<tool_call>{"arguments": {}}</tool_call><tool_call>[1]</tool_call>')
    assert bad[0] == "thinking"
    assert [c.name for c in bad[1]] == [None, None, None]
    assert all(c.error for c in bad[1]) and "name" in bad[1][1].error


def test_loose_parsing_reads_the_untagged_json_block_the_1_5b_writes():
    # a reply of the 1.5B's, verbatim: the call as a ```json block, without <tool_call>
    reply = '```json\n{\n  "name": "read_file",\n  "arguments": {\n    "path": "audio.py"\n  }\n}\n```'
    assert hermes.parse(reply) == (reply, [])  # strict, as the LangChain chat model reads
    content, (c,) = hermes.parse(reply, loose=True)
    assert content == "```json" and not c.tagged and c.arguments == {"path": "audio.py"}
    assert {k: reply[a:b] for k, (a, b) in c.spans.items()} == {"name": "read_file",
                                                                 "path": "audio.py"}
    assert hermes.parse('{"name": "Bob", "age": 3}', loose=True)[1] == []  # data, not a call


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=120), st.sampled_from(["", "<tool_call>", '<tool_call>{"name": "a", ']))
def test_parse_never_raises(text, head):
    _, calls = hermes.parse(head + text)
    for c in calls:
        assert (c.name is None) == (c.error is not None)
        assert all(0 <= a <= b <= len(head + text) for a, b in c.spans.values())


def protocol() -> ToolsProtocol:
    result = TestResult(command=("pytest",), exit_code=1, failed=1, output_tail="E assert 1 == 3")
    task = Task(None, "", result, ("units.py",), "python -m pytest -q", 30)
    return ToolsProtocol(definitions.load("tools"), task)


def test_the_system_message_lists_the_tools_as_qwen_does():
    system = protocol().first_messages()[0]["content"]
    assert hermes.TOOLS_HEADER in system and system.endswith(hermes.TOOLS_FOOTER)
    listed = [json.loads(line) for line in system.splitlines() if line.startswith('{"type"')]
    assert [t["function"]["name"] for t in listed] == [
        "read_file", "list_files", "edit_function", "replace_text", "run_tests", "submit"]


def test_malformed_calls_and_unknown_tools_are_observations(tmp_path):
    repo = fixture_repo(tmp_path, "units")
    before = repo_state(repo)
    replies = ['I would read units.py {"path": "units.py"}', '<tool_call>{"name": "read_file", "arguments": </tool_call>',
               '<tool_call>{"name": "delete", "arguments": {"path": "units.py"}}</tool_call>',
               '<tool_call>{"name": "read_file", "arguments": {"path": 3}}</tool_call>',
               '<tool_call>{"name": "read_file", "arguments": {"path": "../x"}}</tool_call>',
               ('<tool_call>{"name": "edit_function", "arguments": {"path": "units.py", '
                '"function": "kmh_to_ms", "code": "def other(): pass"}}</tool_call>'),
               hermes.call_text("replace_text", {"path": "units.py", "old": "32", "new": "0"}),
               hermes.call_text("replace_text", {"path": "units.py", "old": "x = 1", "new": ""}),
               # the 1.5B's edit: code as a Python triple-quoted string, which JSON has not
               ('```json\n{"name": "edit_function", "arguments": {"path": "units.py", '
               '"function": "kmh_to_ms", "code": """\ndef kmh_to_ms(kmh):\n    return 0\n"""}}\n```')]
    with Workspace(repo, "malformed") as ws:
        outs = [protocol().act(ws, r, 0) for r in replies]
        assert ws.read_file("units.py") == (repo / "units.py").read_text()
    assert [o.action for o in outs] == ["invalid", "invalid", "delete", "read_file", "read_file",
                                        "edit_function", "replace_text", "replace_text", "invalid"]
    assert not any(o.done for o in outs)
    assert "no <tool_call> found" in outs[0].observation
    assert "not valid JSON" in outs[1].observation and "<tool_call>" in outs[1].observation
    assert "no tool named 'delete'" in outs[2].observation
    assert "needs the string argument(s) path" in outs[3].observation
    assert outs[4].observation.startswith("error:")
    assert "does not define kmh_to_ms" in outs[5].observation
    assert "occurs 2 times in units.py; give more" in outs[6].observation
    assert "occurs 0 times" in outs[7].observation
    assert "not valid JSON (in a string, write a newline as \\n" in outs[8].observation
    assert [s.label for s in outs[2].spans] == ["action", "file"]
    assert repo_state(repo) == before


def test_a_scripted_native_session_reads_edits_tests_and_submits(tmp_path, store):
    from decision_retry.agent.runner import fix

    repo = fixture_repo(tmp_path, "units")
    before = repo_state(repo)
    turns = [
        call("read_file", path="units.py", function="celsius_to_fahrenheit"),
        ["<tool_call>", '\n{"name": "list_files", "arguments": {"directory": ', "\n", "</tool_call>"],
        call("edit_function", path="units.py", function="celsius_to_fahrenheit", code=FIXED),
        call("run_tests"),
        call("submit"),
    ]
    result = fix(repo, fix_config(protocol="tools"), lm=scripted_turns_lm(turns), store=store)
    assert result.fixed and result.attempts == 1
    assert "+    return celsius * 9 / 5 + 32" in result.diff
    tree = store.load(result.run_id)
    turn_index = {t.id: t.index for t in tree.turns}
    calls = sorted(tree.tool_calls, key=lambda c: turn_index[c.turn_id])
    assert [c.action for c in calls] == ["read_file", "invalid", "edit_function", "run_tests",
                                         "submit"]
    read, bad, edit, tests, _ = (c.observation for c in calls)
    assert "def celsius_to_fahrenheit" in read and "kmh_to_ms" not in read  # the function only
    assert "not valid JSON" in bad  # the malformed call cost a turn, not the run
    assert edit == "replaced celsius_to_fahrenheit in units.py"
    assert "passed" in tests and "failed" not in tests
    # the tool decisions: the tokens that chose the tool, the file and the function
    chosen = sorted((turn_index[d.turn_id], d.label, d.token)
                    for d in tree.decisions if d.kind == "tool")
    assert chosen == sorted([
        (0, "action", "read_file"), (0, "file", "units.py"),
        (0, "function", "celsius_to_fahrenheit"),
        (2, "action", "edit_function"), (2, "file", "units.py"),
        (2, "function", "celsius_to_fahrenheit"),
        (3, "action", "run_tests"), (4, "action", "submit")])
    # each with the snapshot of the repository before its turn's call ran (one per turn; the
    # turns after the edit see another tree than those before it; two snapshots of one tree may
    # share a commit, as the commit's time allows)
    snaps = {turn_index[d.turn_id]: d.snapshot for d in tree.decisions if d.kind == "tool"}
    assert all(snaps.values()) and sorted(snaps) == [0, 2, 3, 4]
    assert not {snaps[0], snaps[2]} & {snaps[3], snaps[4]}
    assert repo_state(repo) == before


def test_auto_takes_patch_where_a_function_is_suspect_and_tools_where_none_is(tmp_path, store):
    from decision_retry.agent.runner import fix
    from decision_retry.testing import scripted_lm
    from tests.helpers import UNITS_SCRIPT, make_repo

    events = []
    units = fixture_repo(tmp_path, "units")
    result = fix(units, fix_config(protocol="auto", seed=1), lm=scripted_lm(UNITS_SCRIPT),
                 store=store, on_event=lambda kind, data: events.append((kind, data)))
    assert {c.action for c in store.load(result.run_id).tool_calls} == {"apply_patch"}
    # a bug in a module-level constant: no function to show, so the patch protocol cannot run
    consts = make_repo(tmp_path / "consts", {
        "limits.py": "LIMIT = 4\n",
        "test_limits.py": "from limits import LIMIT\n\ndef test_limit():\n    assert LIMIT == 5\n"})
    turns = [call("read_file", path="limits.py"),
             call("replace_text", path="limits.py", old="LIMIT = 4", new="LIMIT = 5"),
             call("submit")]
    result = fix(consts, fix_config(protocol="auto"), lm=scripted_turns_lm(turns), store=store,
                 on_event=lambda kind, data: events.append((kind, data)))
    tree = store.load(result.run_id)
    assert result.fixed and "+LIMIT = 5" in result.diff
    assert [c.action for c in tree.tool_calls] == ["read_file", "replace_text", "submit"]
    assert "LIMIT = 4" in tree.tool_calls[0].observation
    assert tree.run.config["protocol"] == "auto"  # a resume decides again, the same way
    notes = [d["note"] for kind, d in events if kind == "protocol"]
    assert notes == ["protocol: patch (a suspect function was found)",
                     "protocol: tools (no suspect function was found)"]

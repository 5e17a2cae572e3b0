"""Agent protocols: what the model is shown and how its reply acts on the repository.

`patch`: one turn; the reply is the corrected function (or functions), each applied by name.
Several suspects may be shown (locate.py ranks them): which ones the reply rewrites are its tool
decisions ("function", one per `def`).
`tools`: several turns, one tool call per turn in the model's native `<tool_call>` JSON
(hermes.py): read_file, list_files, edit_function, replace_text, run_tests, submit; which tool,
file and function each call names are its tool decisions.
Unparseable output becomes an observation (tools) or a failed attempt (patch), never a crash.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from decision_retry import hermes
from decision_retry.agent import patch
from decision_retry.agent.definitions import AgentDefinition
from decision_retry.errors import BadInput, WorkspaceError
from decision_retry.localise.locate import Candidate, Suspect, functions_in, is_test_file
from decision_retry.repo.testrun import TestResult
from decision_retry.repo.workspace import Workspace
from decision_retry.trace.decisions import ToolSpan


@dataclass(frozen=True)
class Outcome:
    """What one reply did: the observation, whether the attempt is over, what it chose."""

    action: str
    arguments: dict
    observation: str
    done: bool
    spans: tuple[ToolSpan, ...] = ()


@dataclass(frozen=True)
class Task:
    """What every attempt starts from."""

    suspect: Suspect | None
    test_src: str
    result: TestResult
    files: tuple[str, ...]
    test_cmd: str
    test_timeout: float
    candidates: tuple[Candidate, ...] = ()  # the ranking, best first (suspect is the first)
    localisation: dict | None = None  # locate.Localisation.summary(): kept in the trace
    allow_test_edits: bool = False  # else test files are read-only: the tests are the spec

    @property
    def suspects(self) -> list[Suspect]:
        if self.candidates:
            found = [c.suspect for c in self.candidates]
        else:
            found = [self.suspect] if self.suspect else []
        return [s for s in found if not self.read_only(s.file)]

    def is_test(self, path: str) -> bool:
        """A test file (`test_*.py`, `*_test.py`, `conftest.py`, under `tests/`) or the file of a
        test that failed at the start."""
        failing = {nodeid.split("::", 1)[0] for nodeid in self.result.failing_tests}
        return is_test_file(path) or path in failing

    def read_only(self, path: str) -> bool:
        """Whether a fix may not change `path`: a test file, unless `allow_test_edits`."""
        return not self.allow_test_edits and self.is_test(path)


READ_ONLY = "test files are read-only: fix the code, not the tests (--allow-test-edits)"


class PatchProtocol:
    """One turn: rewrite one or more of the suspect functions shown."""

    def __init__(self, defn: AgentDefinition, task: Task) -> None:
        if task.suspect is None and not task.candidates:
            raise ValueError("the patch protocol needs a suspect function")
        if not task.suspects:  # every suspect is in a test file
            raise BadInput(f"the only suspect functions are in test files; {READ_ONLY}")
        self.defn, self.task = defn, task
        self.shown = patch.shown(task.suspects, defn.limits.get("suspects", 1),
                                 defn.limits.get("suspect_chars", 4000))
        # a rewrite without a docstring keeps the one it replaces (patch.kept_docstring)
        self.keep_docstring = bool(defn.format.get("keep_docstring", False))

    def first_messages(self) -> list[dict]:
        return patch.messages(self.defn, self.shown, self.task.test_src, self.task.result)

    def reply_cap(self, encode) -> int:
        """The tokens a reply may take: `max_new_tokens`, raised to `fit_shown` times the longest
        function shown (in `encode`'s tokens), so that a long function can be rewritten whole: a
        reply cut at the cap is not applied. One number for the run (the MH target's lengths)."""
        longest = max(len(encode(patch.code(s))) for s in self.shown)
        return max(self.defn.limits["max_new_tokens"],
                   math.ceil(self.defn.limits.get("fit_shown", 0) * longest))

    def retry_messages(self, history: list[dict], result: TestResult) -> list[dict]:
        err = patch.error_lines(result, self.defn.limits["error_lines"])
        return [*history, {"role": "user", "content": self.defn.prompt["retry"].format(error=err)}]

    def where(self, reply: str, position: int, tokens) -> tuple[str | None, int | None]:
        """File and line of the token at `position` of a reply (in the function it rewrites
        there: the last one beginning at or before the token's line)."""
        line = "".join(t.text for t in tokens[:position]).count("\n")
        named = {s.name: s for s in reversed(self.shown)}  # a name picks its first suspect
        found = [d for d in patch.defs(reply) if d.name in named]
        d = next((d for d in reversed(found) if d.line <= line), found[0] if found else None)
        if d is None:
            return self.shown[0].file, self.shown[0].start + line
        s = named[d.name]
        kept = self.keep_docstring and patch.kept_docstring(
            patch.reply_code(reply, self.defn.stop_regex), s)
        shift = len(kept.lines) if kept and line > kept.after else 0  # the body is below it
        return s.file, s.start + line - d.line + shift

    def act(self, ws: Workspace, reply: str, turn_index: int, *, cut_short: bool = False) -> Outcome:
        """Apply the reply's functions, every one or none. A reply `cut_short` (it reached the
        token cap before its end) is not applied: text cut mid-function may still parse, and
        applying it would delete the rest of the function."""
        code = patch.reply_code(reply, self.defn.stop_regex)
        targets, ignored = patch.rewrites(code, self.shown)
        found = patch.defs(reply)
        spans = tuple(ToolSpan(d.start, d.end, "function") for d in found)  # one per choice
        shown = [c.summary() for c in self.task.candidates if c.suspect in self.shown]
        first = targets[0] if targets else None
        args = {"file": first.file if first else None,
                "function": (first.qualname or first.name) if first else None,
                "shown": shown or [{"file": x.file, "function": x.qualname or x.name}
                                   for x in self.shown]}
        if len(targets) > 1:  # every function the reply rewrites, where it is in the reply
            at = {d.name: d.line for d in reversed(found)}
            args["functions"] = [{"file": s.file, "function": s.qualname or s.name,
                                  "line": s.start, "reply_line": at[s.name]} for s in targets]
        if ignored:
            args["ignored"] = ignored
        if turn_index == 0 and self.task.localisation:
            args["localisation"] = self.task.localisation
        left_out = (f"; left out {', '.join(ignored)}: not among the functions shown"
                    if ignored else "")
        if cut_short:
            return Outcome("apply_patch", args, "not applied: the reply reached the token cap "
                           "before it ended; nothing was changed", True, spans)
        if not targets:
            names = ", ".join(x.name for x in self.shown)
            return Outcome("apply_patch", args,
                           f"not applied: your reply defines none of the functions shown ({names})",
                           True, spans)
        kept: dict[Suspect, patch.Kept] = {}
        try:  # every function or none: each file rewritten in memory first
            texts: dict[str, str] = {}
            for s in targets:  # re-located in the text as it is now: earlier rewrites shift lines
                text = texts[s.file] if s.file in texts else ws.read_file(s.file)
                here = _relocated(functions_in(text, s.file), s)
                texts[s.file] = patch.apply(text, here, code, keep_docstring=self.keep_docstring)
                if self.keep_docstring and (k := patch.kept_docstring(code, here)):
                    kept[s] = k
            for rel, text in texts.items():
                ws.write_file(rel, text)
        except (ValueError, WorkspaceError) as err:  # WorkspaceError: a link leading outside
            return Outcome("apply_patch", args, f"not applied: {err}{left_out}", True, spans)
        if kept:  # the lines the file has and the reply has not (summary.where reads them)
            args["kept_docstrings"] = [{"function": s.qualname or s.name, "reply_line": k.after,
                                        "lines": len(k.lines)} for s, k in kept.items()]
        done = ", ".join(f"{s.qualname or s.name} in {s.file}"
                         + (" (docstring kept)" if s in kept else "") for s in targets)
        return Outcome("apply_patch", args, f"replaced {done}{left_out}", True, spans)


def _relocated(current: list[Suspect], s: Suspect) -> Suspect:
    """`s` in the file as it is now: same qualified name, the nearest to where it was."""
    same = [f for f in current if (f.qualname or f.name) == (s.qualname or s.name)]
    same = same or [f for f in current if f.name == s.name]
    return min(same, key=lambda f: abs(f.start - s.start)) if same else s


class ToolsProtocol:
    """Several turns, one `<tool_call>` per turn (hermes.py): read_file, list_files,
    edit_function, replace_text, run_tests, submit (prompts/tools.toml lists them)."""

    def __init__(self, defn: AgentDefinition, task: Task) -> None:
        self.defn, self.task = defn, task
        self.tools = {t["name"]: t for t in defn.format["tools"]}

    def reply_cap(self, encode) -> int:
        """The tokens a turn may take (`max_new_tokens`)."""
        return self.defn.limits["max_new_tokens"]

    def first_messages(self) -> list[dict]:
        err = patch.error_lines(self.task.result, self.defn.limits["error_lines"])
        files = ", ".join(self.task.files[:40])
        user = self.defn.prompt["user"].format(error=err, files=files)
        ranked = self.task.candidates[: self.defn.limits.get("suspects", 5)]
        if ranked:  # which file to read first stays the model's choice
            user += "\nMost suspicious functions: " + ", ".join(
                f"{c.suspect.file}:{c.suspect.start} {c.suspect.qualname or c.suspect.name}"
                for c in ranked)
        schemas = [{"type": "function", "function": t} for t in self.defn.format["tools"]]
        system = f"{self.defn.prompt['system']}\n\n{hermes.tools_text(schemas)}"
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def retry_messages(self, history: list[dict], result: TestResult) -> list[dict]:
        err = patch.error_lines(result, self.defn.limits["error_lines"])
        return [*history, {"role": "user", "content": f"The tests still fail:\n{err}"}]

    def observation_message(self, observation: str) -> dict:
        cut = observation[: self.defn.limits["observation_chars"]]
        return {"role": "user", "content": self.defn.prompt["observation"].format(observation=cut)}

    def where(self, reply: str, position: int, tokens) -> tuple[str | None, int | None]:
        """The file the turn's call names, if any (a tools turn has no line)."""
        _, calls = hermes.parse(reply, loose=True)
        path = calls[0].arguments.get("path") if calls else None
        return (path if isinstance(path, str) else None), None

    def act(self, ws: Workspace, reply: str, turn_index: int, *, cut_short: bool = False) -> Outcome:
        """Run the reply's one tool call (`cut_short` needs no check here: a call cut at the
        token cap has no closing brace, so it is not valid JSON and is reported as such)."""
        last = turn_index + 1 >= self.defn.limits["max_turns"]
        _, calls = hermes.parse(reply, loose=True)  # the 1.5B writes ```json blocks, untagged
        if not calls:
            what = (f"no {hermes.OPEN} found" if '"name"' not in reply else "the call is not "
                    "valid JSON (in a string, write a newline as \\n and a double quote as \\\", "
                    "no triple quotes)")
            return Outcome("invalid", {"error": "no tool call"}, self._format_error(what), last)
        call = calls[0]  # one call per turn: the stop string ends the reply after it
        if call.name is None:
            return Outcome("invalid", {"error": call.error}, self._format_error(
                f"the tool call is not valid JSON ({call.error})"), last)
        spans = tuple(ToolSpan(*call.spans[key], label) for key, label in SPAN_LABELS
                      if key in call.spans and call.spans[key][0] < call.spans[key][1])
        if call.name not in self.tools:
            return Outcome(call.name, call.arguments, self._format_error(
                f"no tool named {call.name!r}"), last, spans)
        try:
            obs, done = self._run(ws, call.name, call.arguments)
        except WorkspaceError as err:  # a path outside the repository, a missing file
            obs, done = f"error: {err}", False
        return Outcome(call.name, call.arguments, obs, done or last, spans)

    def _format_error(self, what: str) -> str:
        names = ", ".join(self.tools)
        return (f"error: {what}. Call one tool ({names}) as {hermes.OPEN}\n"
                f'{{"name": <tool>, "arguments": {{...}}}}\n{hermes.CLOSE}')

    def _run(self, ws: Workspace, name: str, args: dict) -> tuple[str, bool]:
        missing = [k for k in self.tools[name]["parameters"].get("required", ())
                   if not isinstance(args.get(k), str)]
        if missing:
            return f"error: {name} needs the string argument(s) {', '.join(missing)}", False
        if name == "submit":
            return "submitted", True
        if name == "run_tests":
            r = ws.run_tests(self.task.test_cmd, self.task.test_timeout)
            return r.output_tail[-1500:], False
        if name == "list_files":
            under = args.get("directory") if isinstance(args.get("directory"), str) else ""
            return "\n".join(ws.list_files(under.strip())), False
        path, function = args["path"], args.get("function")
        if name == "read_file":
            text = ws.read_file(path)
            if not isinstance(function, str) or not function.strip():
                return text, False
            found = _named(functions_in(text, path), function)
            if found is None:
                return f"error: {path} defines no function {function!r}", False
            return found.source, False
        if name == "replace_text":
            return self._replace(ws, path, args["old"], args["new"]), False
        return self._edit(ws, path, function, args["code"]), False

    def _writable(self, ws: Workspace, path: str) -> str | None:
        """Why `path` may not be changed (a test file), or None."""
        target = ws.resolve(path).relative_to(ws.root).as_posix()  # a link to a test is one too
        if self.task.read_only(path) or self.task.read_only(target):
            return f"not applied: {path}: {READ_ONLY}"
        return None

    def _replace(self, ws: Workspace, path: str, old: str, new: str) -> str:
        """Replace the one occurrence of `old` in `path` by `new`."""
        if refused := self._writable(ws, path):
            return refused
        text = ws.read_file(path)
        n = text.count(old) if old else 0
        if n != 1:
            return (f"not applied: the text to replace occurs {n} times in {path}"
                    + ("; give more of its lines" if n else ""))
        ws.write_file(path, text.replace(old, new, 1))
        return f"replaced {len(old.splitlines()) or 1} line(s) in {path}"

    def _edit(self, ws: Workspace, path: str, function: str, code: str) -> str:
        """Replace `function` of `path`, and any other function of that file `code` defines."""
        if refused := self._writable(ws, path):
            return refused
        code = patch.reply_code(code)
        text = ws.read_file(path)
        here = functions_in(text, path)
        if _named(here, function) is None:
            return f"not applied: {path} defines no function {function!r}"
        short = function.rsplit(".", 1)[-1].strip()
        if not _defines(code, short):
            return f"not applied: the code does not define {short}"
        names = list(dict.fromkeys(f.name for f in here if _defines(code, f.name)))
        for name in names:  # re-locate after each replacement: lines shift
            target_fn = next(f for f in functions_in(text, path) if f.name == name)
            try:
                text = patch.apply(text, target_fn, code)
            except ValueError as err:
                return f"not applied: {err}"
        ws.write_file(path, text)
        return f"replaced {', '.join(names)} in {path}"


# the values that are a turn's tool decisions: which tool, which file, which function
SPAN_LABELS = (("name", "action"), ("path", "file"), ("function", "function"))


def _defines(code: str, name: str) -> bool:
    return re.search(rf"def\s+{re.escape(name)}\s*\(", code) is not None


def _named(functions: list[Suspect], name: str) -> Suspect | None:
    """The function `name` (a bare or a qualified name) among `functions`."""
    name = name.strip()
    exact = [f for f in functions if (f.qualname or f.name) == name]
    return (exact or [f for f in functions if f.name == name.rsplit(".", 1)[-1]] or [None])[0]

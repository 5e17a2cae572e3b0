"""Run the user's test command in a subprocess with a time limit and, where possible, no network.

Counts and failing tests come from pytest's JUnit XML report when pytest wrote one (asked for via
PYTEST_ADDOPTS, see junit.py), else from pytest's (or unittest's) summary; the verifier reward r(x)
of design.md §2 is `TestResult.fraction_passed`. PYTHONHASHSEED is fixed (0 unless the caller sets
it) so that hash-order-dependent failures reproduce from run to run.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from decision_retry.errors import BadInput
from decision_retry.repo import verdict
from decision_retry.repo.junit import FailedTest, JUnitReport, junit_addopts, read_report
from decision_retry.repo.pyenv import ProjectPython
from decision_retry.repo.sandbox import Sandbox, unshare_works

TAIL_CHARS = 4000
_PARSE_BYTES = 64_000  # the summary and short test summary sit at the end of the output

class TestResult(BaseModel):
    """One run of the test command: exit status, pytest counts and the tail of the output."""

    model_config = ConfigDict(frozen=True)
    __test__ = False  # not a pytest test class

    command: tuple[str, ...]
    exit_code: int | None  # None when killed for the time limit
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0  # xfailed included
    xfailed: int = 0
    xpassed: int = 0  # included in passed (a strict xpass is a failure)
    subtests_passed: int = 0
    subtests_failed: int = 0
    no_tests: bool = False  # nothing was collected (pytest exit code 5 / "no tests ran")
    timed_out: bool = False
    duration_s: float = 0.0
    output_tail: str = ""
    failing_tests: tuple[str, ...] = ()  # node ids, in run order
    failures: tuple[FailedTest, ...] = ()  # the same tests with file, line, message (JUnit only)
    passed_tests: tuple[tuple[str, float], ...] = ()  # (node id, seconds) per passing test (JUnit)
    source: str = "text"  # the details (failures, lines): "junit", "text" (the summary) or
    # "exit code" (no counts at all: the verdict is the exit status)
    evidence: str = "none"  # our pytest plugin's report: "pytest" (then the counts are its),
    # "cut short", "none" or "recorded" (a stored result, --resume)
    doubt: str = ""  # why an exit status of 0 is not a pass (cut short, no test ran, ...)
    outcomes: tuple[tuple[str, str], ...] = ()  # (node id, outcome) as our plugin reported them
    network_isolated: bool = False  # ran under `unshare --net`
    cached: bool = False  # the recorded result of an identical earlier run (testcache.py)

    @property
    def ok(self) -> bool:
        """Every collected test passed, with evidence (see `doubt` and repo/verdict.py)."""
        return (
            self.exit_code == 0
            and not self.timed_out
            and not self.no_tests
            and not (self.failed or self.errors)
            and not self.doubt
        )

    @property
    def required_tests(self) -> tuple[str, ...]:
        """What a fix of this (failing) run must show passing: its failing tests as pytest
        reported them through our plugin; () when there is no such report."""
        return self.failing_tests if self.evidence == "pytest" else ()

    def judged(self, required: tuple[str, ...]) -> TestResult:
        """This result, not `ok` unless each `required` test (`required_tests` of the first
        run) was reported passed; a recorded result (`evidence` "recorded": --resume) as it is."""
        if not required or self.doubt or self.evidence == "recorded":
            return self
        if self.evidence != "pytest":
            why = "no pytest report from decision-retry's plugin, which the first run sent"
        elif missing := verdict.missing(dict(self.outcomes), required):
            why = (f"{len(missing)} of the {len(required)} tests that failed at the start did "
                   f"not pass: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        else:
            return self
        return self.model_copy(update={"doubt": why})

    @property
    def verdict_basis(self) -> str:
        """One line: what a later run of this command must show to count as passing."""
        if self.evidence == "pytest":
            return ("verdict: pytest's own report of each test (decision-retry's plugin, over a "
                    f"pipe); a fix must pass {_tests(len(self.required_tests))} failing now")
        if self.source == "exit code":
            return ("verdict: exit code only (the test command printed no test counts and sent "
                    "no pytest report)")
        return ("verdict: exit code and the printed test summary (no pytest report from "
                "decision-retry's plugin: not pytest, or the plugin did not load)")

    @property
    def fraction_passed(self) -> float:
        """passed / (passed + failed + errors); 0 when no test ran."""
        total = self.passed + self.failed + self.errors
        return self.passed / total if total else 0.0


def run_tests(
    cmd: str | list[str],
    cwd: str | Path,
    timeout: float,
    *,
    env: Mapping[str, str] | None = None,
    isolate_network: bool = True,
    sandbox: Sandbox | None = None,
    writable: tuple[Path, ...] = (),
    python: ProjectPython | None = None,
) -> TestResult:
    """Run `cmd` (a shell-like string, split with shlex, or an argv list) in `cwd`.

    The whole process group is killed after `timeout` seconds. `env` adds to (or overrides) the
    environment. With a `sandbox` (sandbox.py) the command runs in it and sees only the
    allow-listed part of our environment plus `env`. Without one it inherits our environment and,
    with `isolate_network`, runs under `unshare` where that works (no network but loopback, own
    PID namespace), else as it is; `network_isolated` records which.
    `writable`: more directories the command may write to in the sandbox (the coverage data of
    localise/). `python`: the project's interpreter (pyenv.py), what a leading `python`
    means, with its environment activated and visible read-only in the sandbox; without it, the
    one we run in. Raises BadInput when the command (or the `-m` module of `python -m`) cannot
    be found. `TestResult.judged` then checks the tests that failed at the start.
    """
    if timeout <= 0:
        raise BadInput(f"test timeout must be positive, got {timeout}")
    inherited = {"PYTHONHASHSEED": "0", **os.environ}
    ours = {**(python.environment(inherited, cwd) if python else {}), **(env or {}),
            "PYTHONDONTWRITEBYTECODE": "1", "PY_COLORS": "0"}
    full_env = sandbox.environment(inherited, ours) if sandbox else {**inherited, **ours}
    try:
        words = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
    except ValueError as err:  # unbalanced quotes
        raise BadInput(f"cannot parse test command {cmd!r}: {err}") from None
    argv = _resolve_argv(words, Path(cwd), full_env.get("PATH"), python)
    if sandbox is None:
        sandbox = Sandbox("none", "", unshare=isolate_network and unshare_works())

    # the JUnit report (details only: the tests can write it) goes to a private directory the
    # sandbox keeps writable; our plugin's report (the verdict) goes through a pipe (verdict.py)
    report_dir = Path(tempfile.mkdtemp(prefix="decision-retry-report-"))
    full_env["PYTEST_ADDOPTS"] = " ".join(filter(None, [
        full_env.get("PYTEST_ADDOPTS", ""), junit_addopts(report_dir / "junit.xml"),
        verdict.addopts()]))
    full_env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(verdict.PLUGIN_DIR), full_env.get("PYTHONPATH", "")]))
    readable = [*_read_paths(argv[0], python), verdict.PLUGIN_DIR]
    isolated = sandbox.network_isolated

    # 1) run, output to a file (a pipe could hang on a grandchild that outlives the kill)
    with (tempfile.TemporaryFile() as out, _removed(report_dir), verdict.channel() as channel,
          sandbox.seccomp_file() as seccomp_fd, sandbox.pids_cgroup() as cgroup):
        full_env.update(channel.env)
        full = sandbox.wrap(argv, cwd=Path(cwd), writable=[report_dir, *writable],
                            env=full_env, readable=readable, seccomp_fd=seccomp_fd,
                            cgroup=cgroup)
        start = time.monotonic()
        proc = subprocess.Popen(
            full,
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            pass_fds=(*channel.fds, *(() if seccomp_fd is None else (seccomp_fd,))),
        )
        channel.started()
        timed_out = False
        try:
            exit_code: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out, exit_code = True, None
            _kill_group(proc)
        except BaseException:  # Ctrl-C: the tests run in their own session and would not see it
            _kill_group(proc)
            raise
        # a process the tests left behind (no PID namespace) may hold the pipe: wait a little
        evidence = channel.evidence(wait=min(2.0, max(0.1, timeout - (time.monotonic() - start))))
        duration = time.monotonic() - start
        out.seek(0, os.SEEK_END)
        out.seek(max(0, out.tell() - _PARSE_BYTES))
        text = _strip_ansi(out.read().decode(errors="replace"))
        junit = read_report(report_dir / "junit.xml")

    # 2) a `python -m pytest` without pytest installed is a missing command, not a failing test
    missing = len(argv) > 2 and argv[1] == "-m" and f"No module named {argv[2]}" in text
    if exit_code == 1 and missing:
        raise BadInput(f"test command not found: {shlex.join(argv)} (no module {argv[2]})")

    # 3) parse: the JUnit report if pytest wrote one, else the summary; our plugin's report,
    # when it came, decides the counts and the failing tests
    fields = with_evidence(parse_result(text, junit), evidence)
    no_tests = exit_code == 5 or (
        not any(fields[k] for k in ("passed", "failed", "errors", "skipped"))
        and re.search(r"\bno tests ran\b|\bRan 0 tests\b", text) is not None
    )
    fields["doubt"] = doubt(fields, evidence, exit_code)
    return TestResult(
        command=tuple(argv),
        exit_code=exit_code,
        no_tests=no_tests,
        timed_out=timed_out,
        duration_s=round(duration, 3),
        output_tail=text[-TAIL_CHARS:],
        network_isolated=isolated,
        **fields,
    )


# -- evidence -----------------------------------------------------------------------------------


def with_evidence(fields: dict, evidence: verdict.Evidence) -> dict:
    """`fields` with the counts and failing tests of our plugin's report, when there is one;
    else source "exit code" when nothing at all reported a count."""
    fields = {**fields, "evidence": evidence.kind}
    if evidence.kind == "pytest":
        xfailed = len(evidence.ids("xfailed"))
        fields.update(passed=len(evidence.ids("passed")), failed=len(evidence.ids("failed")),
                      errors=len(evidence.ids("error")),
                      skipped=len(evidence.ids("skipped")) + xfailed, xfailed=xfailed,
                      failing_tests=evidence.ids("failed", "error"), outcomes=tuple(evidence.outcomes.items()))
    elif not any(fields[k] for k in ("passed", "failed", "errors", "skipped")):
        fields["source"] = "exit code"
    return fields


def doubt(fields: dict, evidence: verdict.Evidence, exit_code: int | None) -> str:
    """Why this run, whatever its exit status, is not a pass; "" when nothing speaks against."""
    if evidence.kind == "cut short":
        return "pytest started but never reported the end of its session (the process was cut short)"
    if evidence.kind == "pytest":
        if evidence.exitstatus != 0 and exit_code == 0:
            return f"pytest's own exit status was {evidence.exitstatus}, the command's 0"
        if not (fields["passed"] or fields["failed"] or fields["errors"]):
            return "no test ran"
        if sum("::" in k for k in evidence.outcomes) > evidence.collected:
            return f"pytest reported more tests than the {evidence.collected} it collected"
        return ""
    if fields["source"] != "exit code" and not fields["passed"]:
        return "no test passed"
    return ""


# -- parsing ------------------------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# `1 failed, 2 passed, 3 warnings in 0.12s` (optionally framed by `=====`, with `(0:01:05)`)
_PYTEST_SUMMARY = re.compile(
    r"^[=\s]*((?:\d+ (?:subtests? )?[a-z]+(?:, )?)+|no tests ran)(?: in [\d.]+ ?s\b.*)$")
_PYTEST_COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed)\b")
_SUBTEST_COUNT = re.compile(r"(\d+) subtests? (passed|failed)\b")
_UNITTEST_RAN = re.compile(r"^Ran (\d+) tests? in ")
_UNITTEST_TAIL = re.compile(r"^(OK|FAILED)\b(?: \((.*)\))?")
_PYTEST_PROGRESS = re.compile(r"^(?:\S+\.py )?([.FEsxX]+)\s*\[\s*\d+%\]$")


@contextlib.contextmanager
def _removed(path: Path):
    """Remove the directory `path` on leaving the block."""
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def parse_result(text: str, junit: JUnitReport | None = None) -> dict:
    """The TestResult fields read from the output `text` and pytest's JUnit report (if any).

    JUnit gives per-test counts and the failing tests with their lines; the summary line adds
    what JUnit lacks (passed subtests, xpassed). Without JUnit everything comes from the text.
    """
    extra = _summary_extras(text.splitlines())
    if junit is None or not (junit.passed + junit.failed + junit.errors + junit.skipped
                             + junit.xfailed):
        return {**parse_counts(text), **extra, "failing_tests": parse_failing(text),
                "source": "text"}
    failing = tuple(f.nodeid for f in junit.failures)
    extra["subtests_failed"] = max(extra["subtests_failed"], sum(f.subfailures for f in junit.failures))
    return {"passed": junit.passed, "failed": junit.failed, "errors": junit.errors,
            "skipped": junit.skipped + junit.xfailed, **extra, "xfailed": junit.xfailed,
            "failing_tests": failing, "failures": junit.failures, "passed_tests": junit.passing,
            "source": "junit"}


def _summary_extras(lines: list[str]) -> dict[str, int]:
    """xfailed, xpassed and subtest counts from the last pytest summary line."""
    out = {"xfailed": 0, "xpassed": 0, "subtests_passed": 0, "subtests_failed": 0}
    for line in reversed(lines):
        m = _PYTEST_SUMMARY.match(line.strip())
        if m:
            for n, word in _SUBTEST_COUNT.findall(m.group(1)):
                out[f"subtests_{word}"] += int(n)
            rest = _SUBTEST_COUNT.sub("", m.group(1))
            for n, word in _PYTEST_COUNT.findall(rest):
                if word in ("xfailed", "xpassed"):
                    out[word] += int(n)
            break
    return out


def parse_counts(text: str) -> dict[str, int]:
    """passed/failed/errors/skipped from pytest's summary, unittest's footer, or progress marks."""
    lines = text.splitlines()
    for parse in (_pytest_summary, _unittest_footer, _pytest_progress):
        counts = parse(lines)
        if counts is not None:
            return counts
    return _counts()


def _counts(passed: int = 0, failed: int = 0, errors: int = 0, skipped: int = 0) -> dict[str, int]:
    return {"passed": passed, "failed": failed, "errors": errors, "skipped": skipped}


def _pytest_summary(lines: list[str]) -> dict[str, int] | None:
    """The last `1 failed, 2 passed in 0.1s` line (xfailed counts as skipped, xpassed as passed)."""
    for line in reversed(lines):
        m = _PYTEST_SUMMARY.match(line.strip())
        if m:
            counts = _counts()
            for n, word in _PYTEST_COUNT.findall(_SUBTEST_COUNT.sub("", m.group(1))):
                key = {"error": "errors", "xfailed": "skipped", "xpassed": "passed"}.get(word, word)
                counts[key] += int(n)
            return counts
    return None


def _unittest_footer(lines: list[str]) -> dict[str, int] | None:
    """unittest's `Ran 5 tests in 0.01s` then `OK` or `FAILED (failures=1, errors=1)`."""
    for i in range(len(lines) - 1, -1, -1):
        ran = _UNITTEST_RAN.match(lines[i])
        if not ran:
            continue
        tail = next((t for t in map(_UNITTEST_TAIL.match, lines[i + 1 :]) if t), None)
        pairs = re.findall(r"(\w+)=(\d+)", (tail.group(2) or "") if tail else "")
        d = {k: int(v) for k, v in pairs}
        counts = _counts(
            failed=d.get("failures", 0) + d.get("unexpected_successes", 0),
            errors=d.get("errors", 0),
            skipped=d.get("skipped", 0) + d.get("expected_failures", 0),
        )
        counts["passed"] = max(0, int(ran.group(1)) - sum(counts.values()))
        return counts
    return None


def _pytest_progress(lines: list[str]) -> dict[str, int] | None:
    """Count progress marks (`..F.E  [100%]`): all that `-qq` leaves when there is no summary."""
    chars = "".join(m.group(1) for m in map(_PYTEST_PROGRESS.match, lines) if m)
    if not chars:
        return None
    return _counts(
        passed=chars.count(".") + chars.count("X"),
        failed=chars.count("F"),
        errors=chars.count("E"),
        skipped=chars.count("s") + chars.count("x"),
    )


def parse_failing(text: str) -> tuple[str, ...]:
    """Failing test ids from pytest's short summary (`FAILED id - msg`, `SUBFAILED(i=1) id - msg`)
    or `-v` (`id FAILED`)."""
    found: dict[str, None] = {}
    for line in text.splitlines():
        m = re.match(r"^(?:FAILED|ERROR|SUBFAILED(?:\(.*?\)|\[.*?\])?) (\S+::\S+|\S+\.py\b)", line)
        m = m or re.match(r"^(?:FAILED|ERROR) (\S+)", line) or re.match(
            r"^(\S+::\S+) (?:FAILED|ERROR)\b", line
        )
        if m:
            found[m.group(1)] = None
    return tuple(found)


# -- process handling ---------------------------------------------------------------------------


def _resolve_argv(argv: list[str], cwd: Path, search_path: str | None,
                  python: ProjectPython | None = None) -> list[str]:
    """Check that the program exists; BadInput otherwise. A leading `python` is the project's
    (`python`), else the one we run in, never whatever PATH finds first; a relative path the
    clone lacks (`.venv/bin/python`: ignored, not copied) is the one in the user's repository."""
    if not argv:
        raise BadInput("empty test command")
    if not cwd.is_dir():
        raise BadInput(f"no such directory: {cwd}")
    prog = argv[0]
    if prog in ("python", "python3"):
        return [python.executable if python else sys.executable, *argv[1:]]
    if "/" in prog:
        if _executable(cwd / prog):
            return argv
        theirs = Path(python.repo) / prog if python and python.repo else None
        if theirs and _executable(theirs) and _venv_root(theirs):  # ignored: not in the clone
            return [str(theirs), *argv[1:]]
        raise BadInput(f"test command not found: {prog}")
    if shutil.which(prog, path=search_path):
        return argv
    raise BadInput(f"test command not found: {prog}")


def _read_paths(prog: str, python: ProjectPython | None) -> list[Path]:
    """What the sandbox must show read-only: the project's interpreter, and the virtualenv a
    program given by path lives in (`/repo/.venv/bin/pytest`: the whole .venv)."""
    found = set(python.read_paths()) if python else set()
    if os.path.isabs(prog) and (root := _venv_root(Path(prog))):
        found.add(str(root))
    return sorted(Path(p) for p in found)


def _venv_root(prog: Path) -> Path | None:
    """The virtualenv `prog` lies in (`<venv>/bin/python`), or None."""
    return next((p for p in prog.parents[:3] if (p / "pyvenv.cfg").is_file()), None)


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group started for `proc`, then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _tests(n: int) -> str:
    return "the 1 test" if n == 1 else f"the {n} tests"

"""`fix`: set up the workspace and the trace, check the input, run the graph, report."""

from __future__ import annotations

import re
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from decision_retry import costs
from decision_retry.agent import definitions
from decision_retry.agent.actions import PatchProtocol, Task, ToolsProtocol
from decision_retry.agent.graph import Attempt, FixAgent, build_graph
from decision_retry.choices import BUDGET_TOKENS, SPIKE_THRESHOLD
from decision_retry.errors import BadInput, EngineLost
from decision_retry.localise.command import narrow_command
from decision_retry.localise.locate import failing_test, localise, source_files
from decision_retry.localise.replay import replayed
from decision_retry.otel.attributes import engine_provider
from decision_retry.repo import leftovers, pyenv
from decision_retry.repo import sandbox as sandboxes
from decision_retry.repo.carry import Carried
from decision_retry.repo.testcache import TestCache
from decision_retry.repo.testrun import TestResult
from decision_retry.repo.userrepo import UserRepo
from decision_retry.repo.workspace import Workspace, repo_root
from decision_retry.samplers import lineweights
from decision_retry.samplers.chain import RetryConfig, describe
from decision_retry.samplers.mh import StepRecord
from decision_retry.trace.decisions import SpikeRule
from decision_retry.trace.recorder import Recorder
from decision_retry.trace.store import TraceStore

ENGINE_LOST = "engine-lost"  # the outcome of a run whose engine stopped answering (EngineLost)


class FixConfig(BaseModel):
    """Everything a `fix` run depends on; stored with the run."""

    model_config = ConfigDict(frozen=True)

    test_cmd: str = "python -m pytest -x -q"
    test_timeout: float = Field(60.0, gt=0)
    model: str | None = None
    protocol: Literal["patch", "tools", "auto"] = "patch"  # auto: choose_protocol, per run
    retry: RetryConfig = RetryConfig()
    budget_tokens: int = Field(BUDGET_TOKENS, ge=1)
    max_attempts: int = Field(10, ge=1)
    seed: int = 0
    spike: SpikeRule = SpikeRule(threshold=SPIKE_THRESHOLD)  # recorded as decision points
    sandbox: Literal["auto", "bwrap", "none"] = "auto"  # where tests and model code run
    pass_env: tuple[str, ...] = ()  # variables let through the sandbox's allow-list
    # search with the failing tests' node ids only (a pytest test_cmd); a candidate that passes
    # them runs test_cmd too, and is a fix only if that passes (else the search goes on; the
    # graph's verify step, FixResult.wide_check)
    narrow: bool = False
    python: str | None = None  # --python: the project's interpreter; None: found (pyenv.py)
    test_cache: bool = True  # an identical tree is tested once per run (exact for deterministic tests)
    time_limit_s: float | None = Field(None, gt=0)  # CPU seconds of the process tree (costs.py)
    allow_test_edits: bool = False  # a fix may change test files (else they are read-only)
    # the coverage pass: passing tests worth this many seconds of the plain run (the failing
    # tests always), its wall time capped at 3x that (localise/spectrum.py); a cut is announced
    localise_budget_s: float = Field(20.0, gt=0)


class Rewind(BaseModel):
    """Where one retry cut: file, line, the token, its entropy and (surprise cut weights) its
    surprise under the no-body context."""

    file: str | None
    line: int | None
    token: str
    entropy: float
    surprise: float | None = None
    accepted: bool | None = None


class FixResult(BaseModel):
    """What `fix` reports."""

    run_id: str
    fixed: bool
    attempts: int
    decode_tokens: int
    stop: str | None
    prefill_positions: int = 0  # teacher-forced: kept tails of local moves, no-body scoring
    diff: str = ""
    branch: str | None = None
    left_out: list[str] = []  # fixed files untracked in the user's repository: not on the branch
    unseparated: list[str] = []  # fixed files that overlap the user's uncommitted edits: no branch
    tests_changed: list[str] = []  # test files the fix changes (only with allow_test_edits)
    sandbox: str = ""  # the one line saying how the tests ran
    python: str = ""  # the one line saying which Python ran them (pyenv.ProjectPython.note)
    resumed: int = 0  # --resume: recorded turns replayed exactly
    diverged: bool = False  # --resume: a recorded turn was not reproduced (other model/engine)
    rewinds: list[Rewind] = []
    steps: list[StepRecord] = []
    narrow_cmd: str | None = None  # the command the search ran (FixConfig.narrow)
    # test_cmd on the fix, or on the latest narrow pass that failed it: command, ok, passed,
    # failed, errors
    wide_check: dict | None = None
    costs: dict | None = None  # where the run's seconds went (costs.py: Meter.summary)


@contextmanager
def signals_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt, as Ctrl-C does: the test group is killed, the
    clone removed, the run marked interrupted. Further signals are ignored while that cleanup
    runs (SIGKILL still ends it; the next run or `logs gc` removes what is left)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = (signal.SIGTERM, signal.SIGHUP)

    def interrupt(signum, frame):
        for s in caught:
            signal.signal(s, signal.SIG_IGN)
        raise KeyboardInterrupt(signal.Signals(signum).name)

    old = {s: signal.signal(s, interrupt) for s in caught}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def check_input(ws: Workspace, cfg: FixConfig):
    """The failing test run, or BadInput if there is nothing to fix."""
    root = ws.repo
    result = ws.run_tests(cfg.test_cmd, cfg.test_timeout)
    if result.timed_out:
        raise BadInput(f"the tests did not finish within --test-timeout {cfg.test_timeout:g}s")
    if result.no_tests:
        raise BadInput(f"no tests collected by `{cfg.test_cmd}` in {root}")
    if result.ok:
        raise BadInput(f"the tests already pass (`{cfg.test_cmd}` in {root}): nothing to fix")
    return result


def spectrum_note(loc) -> str | None:
    """One line when the coverage spectrum was cut short or could not be measured."""
    sp = loc.spectrum
    if sp is None or not (sp.cut or sp.note):
        return None
    return f"localisation: {sp.note or 'coverage spectrum cut'}" + (f" ({sp.cut})" if sp.cut else "")


def no_suspect_reason(result: TestResult, carried: Carried) -> str:
    """Why the patch protocol has no function to rewrite: a collection error (an import that
    fails, a syntax error) said plainly, with its first error line; else that none was found."""
    found = collection_error(result)
    if found is None:
        return "cannot find the function under test; try --protocol tools"
    where, line = found
    msg = f"the tests fail at collection, before any test runs ({where}): {line}"
    if "ImportError" in line or "ModuleNotFoundError" in line:
        msg += (f" (ignored files carried into the private clone: "
                f"{', '.join(carried.paths) or 'none'}; see docs/safety.md)")
    return msg


def choose_protocol(suspect, result: TestResult) -> tuple[str, str]:
    """`--protocol auto`: (protocol, why). The patch protocol wherever it has a function to show
    the model (docs/results.md, "The agent loop (--protocol tools)": why); the tools loop where
    localisation found none and the tests did collect (patch could not run at all). A collection error stays the patch protocol's one-line error: an import the
    project's environment lacks is not something an edit fixes."""
    if suspect is not None:
        return "patch", "a suspect function was found"
    if collection_error(result) is not None:
        return "patch", "the tests fail at collection"
    return "tools", "no suspect function was found"


def for_tools(rc: RetryConfig) -> RetryConfig:
    """`rc` for the tools protocol, once `auto` chose it after `rc` was resolved for patch: suffix
    moves and entropy cuts, as `--protocol tools` resolves them (local moves and the no-body
    context need the patch protocol's single turn)."""
    update: dict = {}
    if rc.kernel.base.local:
        update["move"] = "suffix"
    if rc.surprise:
        update["cut_weights"] = "entropy"
    if rc.cut_token == "nobody":
        update["cut_token"] = "patch"
    return rc.model_copy(update=update) if update else rc


def collection_error(result: TestResult) -> tuple[str, str] | None:
    """(where, first error line) of the first collection error pytest reported, or None."""
    for f in result.failures:  # JUnit: a testcase whose error is "collection failure"
        if f.kind == "collection":
            return f.file or f.nodeid, _error_line(f.text) or f.message
    text = result.output_tail  # no report (a conftest that does not import, not pytest's JUnit)
    m = (re.search(r"^_* ?ERROR collecting (\S+)", text, re.MULTILINE)
         or re.search(r"^ImportError while loading conftest '([^']+)'", text, re.MULTILINE))
    if m is None:
        return None
    return m.group(1), _error_line(text[m.end():]) or "(no error line in the output)"


def _error_line(text: str) -> str:
    """pytest's first `E   ...` line (the exception), else the first non-empty line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    first_e = next((ln[1:].strip() for ln in lines if ln.startswith("E ")), None)
    return (first_e or (lines[0] if lines else ""))[:300]


def fix(repo: str | Path, cfg: FixConfig, *, lm=None, store: TraceStore | None = None,
        listeners=(), on_event=None, apply: bool = False,
        sandbox: sandboxes.Sandbox | None = None,
        python: pyenv.ProjectPython | None = None) -> FixResult:
    """Fix the failing tests of `repo` in a private clone, tests in `sandbox` (default: the one
    `cfg.sandbox` names) with the project's `python` (default: pyenv.find); the user's checkout
    is untouched unless `apply` (then only a clean working tree receives the fix)."""
    root = repo_root(repo)
    if UserRepo(root).head() is None:  # a fix branch needs a HEAD to sit on
        raise BadInput(f"{root} has no commit yet: commit your code, then run fix")
    if apply and (reason := UserRepo(root).dirty_reason()):
        raise BadInput(f"--apply needs a clean working tree: {root} is not ({reason})")
    sandbox = sandbox or sandboxes.resolve(cfg.sandbox, pass_env=cfg.pass_env)
    python = python or pyenv.find(root, cfg.python, test_cmd=cfg.test_cmd)  # before the weights
    if lm is None:
        from decision_retry.loading import load_lm

        lm = load_lm(cfg.model)
    leftovers.sweep(store)  # what runs killed with SIGKILL left: their clones; mark them
    cfg = cfg.model_copy(update={"retry": cfg.retry.resolved(  # recorded as it will run
        patch=cfg.protocol != "tools", teacher_forcing=getattr(lm, "teacher_forcing", False),
        excludes=getattr(lm, "excludes", False))})
    recorder = Recorder(store, listeners)
    runs = describe(cfg.retry)  # what runs, in words: "rewind: surprise cuts, local moves, ..."
    recorder.start_run(model=lm.name, strategy=cfg.retry.strategy,
                       config={**cfg.model_dump(mode="json"), "provider": engine_provider(lm),
                               "interpreter": python.note, "runs": runs},
                       seed=cfg.seed, repo=str(root))
    if on_event:
        on_event("run", {"what": runs})
    return drive(root, cfg, lm=lm, recorder=recorder, sandbox=sandbox, on_event=on_event,
                 apply=apply, python=python)


def drive(root: Path, cfg: FixConfig, *, lm, recorder: Recorder, sandbox: sandboxes.Sandbox,
          on_event=None, apply: bool = False, replay: dict | None = None,
          expect_base: str | None = None, localisation: dict | None = None,
          python: pyenv.ProjectPython | None = None) -> FixResult:
    """Run the agent for `recorder.run` in a fresh clone of `root`: from the start, or (resume)
    replaying the test results `replay` recorded per branch and the `localisation` its first
    turn recorded. The same seed and config give the same trace: node ids derive from content,
    so a replayed node is the recorded one. Tests run with `python` (default: pyenv.find for
    `root` and `cfg.python`), named in one `python` event."""
    meter = costs.Meter(counters=getattr(lm, "counters", None))  # and the engine's counters
    with costs.metering(meter):  # CPU and wall seconds per category, for the trace
        return _drive(root, cfg, lm=costs.TimedEngine(lm), recorder=recorder, sandbox=sandbox,
                      meter=meter, on_event=on_event, apply=apply, replay=replay,
                      expect_base=expect_base, localisation=localisation, python=python)


def _drive(root: Path, cfg: FixConfig, *, lm, recorder: Recorder, sandbox: sandboxes.Sandbox,
           meter: costs.Meter, on_event=None, apply: bool = False, replay: dict | None = None,
           expect_base: str | None = None, localisation: dict | None = None,
           python: pyenv.ProjectPython | None = None) -> FixResult:
    run = recorder.run
    assert run is not None
    ws = Workspace(root, run.id[:12], sandbox=sandbox, test_cache=TestCache(cfg.test_cache))
    ws.replay = replay or {}
    try:
        ws.python = python or pyenv.find(root, cfg.python, test_cmd=cfg.test_cmd)
        if on_event:
            on_event("python", {"note": ws.python.note})
        ws.open()
        if expect_base and ws.base_sha != expect_base:  # resume: recorded results need the tree
            raise BadInput(f"cannot resume run {run.id[:12]}: {root} changed since it started "
                           f"(its starting point was {expect_base[:12]}, now {ws.base_sha[:12]})")
        if on_event and (note := ws.carried.note()):  # gitignored modules the tests may import
            on_event("carried", {"files": ws.carried.paths, "note": note})
        # 1) the input: failing tests, and the code under test
        result = check_input(ws, cfg)
        if on_event:  # SANDBOX: what a fix must show (our pytest report, or the exit code only)
            on_event("verdict", {"note": result.verdict_basis})
        if localisation is None:  # 2) measured: the coverage spectrum, the traceback, the calls
            with meter.timed("localisation"):
                loc = localise(ws.root, result, test_cmd=cfg.test_cmd,
                               timeout=3 * cfg.test_timeout, sandbox=ws.sandbox,
                               python=ws.python, budget_s=cfg.localise_budget_s)
            if on_event and (note := spectrum_note(loc)):  # a big repository: say what was cut
                on_event("localisation", {"note": note})
        else:  # resume: the ranking the run recorded, not a new (maybe different) measurement
            loc = replayed(ws.root, localisation, failing_test(ws.root, result))
        suspect, test_src = loc.suspect, loc.test.source if loc.test else ""
        narrow_cmd = narrow_command(cfg.test_cmd, result) if cfg.narrow else None
        wide_cmd = cfg.test_cmd if narrow_cmd else None  # run on each candidate that passes narrow
        if narrow_cmd:
            cfg = cfg.model_copy(update={"test_cmd": narrow_cmd})
        summary = {**loc.summary(), **({"carried": ws.carried.paths} if ws.carried.files else {})}
        task = Task(suspect, test_src, result, tuple(source_files(ws.root)), cfg.test_cmd,
                    cfg.test_timeout, loc.candidates, summary,
                    allow_test_edits=cfg.allow_test_edits)
        if cfg.protocol == "auto":  # recorded as auto: a resume decides again, the same way
            chosen, why = choose_protocol(suspect, result)
            cfg = cfg.model_copy(update={"protocol": chosen} | (
                {"retry": for_tools(cfg.retry)} if chosen == "tools" else {}))
            if on_event:
                on_event("protocol", {"note": f"protocol: {chosen} ({why})"})
        defn = definitions.load(cfg.protocol)
        if cfg.protocol == "tools":
            protocol = ToolsProtocol(defn, task)
        elif suspect is None:
            raise BadInput(no_suspect_reason(result, ws.carried))
        else:
            protocol = PatchProtocol(defn, task)
            if cfg.retry.line_weight != 1:  # the spectrum's best lines of the functions shown
                lines = lineweights.suspicious(protocol.shown, {c.suspect.key: c.evidence
                                                                for c in task.candidates})
                cfg = cfg.model_copy(update={"retry": cfg.retry.model_copy(
                    update={"suspicious_lines": lines})})
        # 3) the graph
        agent = FixAgent(lm=lm, ws=ws, recorder=recorder, protocol=protocol, config=cfg,
                         base_sha=ws.base_sha, generator=torch.Generator().manual_seed(cfg.seed),
                         on_event=on_event, wide_cmd=wide_cmd)
        final = build_graph(agent).invoke({"spent": 0, "attempts": 0, "steps": []},
                                          {"recursion_limit": 10_000})
        solved: Attempt | None = final.get("solved")  # with narrow: the whole command passed
        wide = final.get("wide")
        tests_changed = ws.changed(task.is_test, solved.final_sha) if solved else []
        stop = None
        if tests_changed and not cfg.allow_test_edits:  # code the tests ran wrote them
            solved, stop = None, "changed test files"
        diff = ""
        if solved:  # 4) the one write to the user's repository: the fix branch
            ws.finish(True, sha=solved.final_sha)
            diff = ws.fix_diff  # against HEAD: what the branch holds (workspace._add_branch)
            if apply and ws.fix_sha:
                ws.apply_to_user_tree()
        recorder.finish_run("fixed" if solved else "not fixed", costs=meter.summary())
        return FixResult(
            run_id=run.id, fixed=solved is not None, attempts=final.get("attempts", 0),
            decode_tokens=final.get("spent", 0), prefill_positions=final.get("prefilled", 0),
            stop="fixed" if solved else (stop or final.get("stop")),
            diff=diff, branch=ws.branch if ws.fix_sha else None, left_out=ws.left_out,
            unseparated=ws.unseparated, tests_changed=tests_changed if solved else [],
            narrow_cmd=narrow_cmd, wide_check=wide,
            sandbox=sandbox.note, python=ws.python.note, steps=final.get("steps", []),
            rewinds=[Rewind(**r) for r in final.get("rewinds", ())], costs=recorder.run.costs,
        )
    except BadInput as err:
        recorder.finish_run(f"bad input: {err}", costs=meter.summary())
        raise
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM/SIGHUP turned into it by the CLI
        recorder.finish_run("interrupted", costs=meter.summary())
        raise
    except EngineLost:  # the server died or hung past its retries: resumable once it is back
        recorder.finish_run(ENGINE_LOST, costs=meter.summary())
        raise
    finally:
        ws.finish(False)  # removes the clone (a no-op once finished)

"""`decision-retry fix PATH`: fix a repository's failing tests by rewinding to uncertain tokens."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.live import Live
from rich.text import Text

from decision_retry.choices import (
    BUDGET_TOKENS,
    CUT_STRATEGIES,
    CUT_WEIGHTS,
    DEFAULT_RUN,
    FIX_RUN,
    FLAG_KEYS,
    FORMER,
    STRATEGIES,
)
from decision_retry.cli.logs import diff_lines, home_option
from decision_retry.cli.options import (
    finite,
    model_option,
    options_help,
    retry_config,
    seed_type,
    threads_option,
)
from decision_retry.costs import costs_line
from decision_retry.repo.sandbox import SANDBOXES
from decision_retry.trace.printable import visible_text


class Progress:
    """One live status line: attempt, strategy step, tokens of budget, last test result."""

    def __init__(self, console: Console, cfg) -> None:
        self.console, self.cfg = console, cfg
        self.attempt, self.spent, self.last, self.note = 0, 0, "-", "starting"
        self.what = cfg.retry.strategy  # until the run says what it resolved to
        self.live = Live(self.render(), console=console, transient=True, refresh_per_second=8)

    def render(self) -> Text:
        c = self.cfg
        return Text.assemble(
            ("fix ", "bold"), f"attempt {self.attempt}/{c.max_attempts}  ",
            (self.what, "cyan"), f"  tokens {self.spent}/{c.budget_tokens}  ",
            "tests: ", (self.last, "green" if self.last == "pass" else "red"), f"  {self.note}",
        )

    def __call__(self, kind: str, data: dict) -> None:
        if kind == "run":  # what runs, once `auto` is resolved (chain.describe)
            self.what = data["what"]
        elif kind == "model":
            self.attempt, self.spent, self.note = data["attempt"], data["spent"], "tests running"
        elif kind == "test":
            self.last = "pass" if data["ok"] else f"{data['passed']} passed, {data['failed']} failed"
        elif kind == "mh":
            self.note = f"MH step: {'accepted' if data['accepted'] else 'rejected'}"
        elif kind == "rewind":
            cut = data["cut"]
            self.note = visible_text(f"rewind to {data['file']}:{data['line']} token "
                                     f"{cut.token!r} ({_scores(cut.entropy, cut.surprise)})").plain
            self.console.print(Text(f"  rewind  {self.note[10:]}", style="dim"))  # escaped
        elif kind in ("new-chain", "wide"):  # a new chain; a narrow pass that failed test_cmd
            self.console.print(Text(data["note"], style="dim"))
        elif kind in ("carried", "python", "verdict", "protocol", "localisation"):  # gitignored modules carried; the project's Python
            self.console.print(Text(data["note"]), soft_wrap=True)  # whole: paths, no markup
        self.live.update(self.render())


class Duration(click.ParamType):
    """A duration option: `90s`, `5m`, `1h` or plain seconds, as seconds."""

    name = "duration"

    def convert(self, value, param, ctx):
        from decision_retry.costs import parse_seconds

        if isinstance(value, float):
            return value
        try:
            return parse_seconds(value)
        except ValueError as err:
            self.fail(str(err), param, ctx)


def span_listener(otlp: str | None):
    """The OpenTelemetry listener when an endpoint is configured (flag or OTEL_* variables)."""
    from decision_retry.otel import listener_from_config

    return listener_from_config(otlp)


# the flags that became -o keys: given anyway, one line names the replacement
REMOVED = {"--alpha": "alpha", "--verifier-weight": "verifier_weight", "--eps": "cut.eps",
           "--tries": "tries", "--move": "move", "--def-line": "def_line",
           "--restart-share": "restart_share", "--cut-token": "cut_token"}


class _FixCommand(click.Command):
    """`fix`, refusing a removed flag with the `-o` key that replaced it."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        for arg in args:
            if arg == "--":
                break
            flag = arg.partition("=")[0]
            if flag in REMOVED:
                raise click.UsageError(f"{flag} is now -o {REMOVED[flag]}=VALUE", ctx)
        return super().parse_args(ctx, args)


class StrategyType(click.Choice):
    """--strategy: today's names, and the former ones (entropy-cut, uniform-cut, argmax-cut),
    read as choices.upgrade reads them."""

    def __init__(self) -> None:
        super().__init__(STRATEGIES)

    def convert(self, value, param, ctx):
        return value if value in FORMER else super().convert(value, param, ctx)


@click.command(cls=_FixCommand, epilog="Rarely changed knobs: -o KEY=VALUE, repeatable, e.g. "
               "-o alpha=4 -o verifier_weight=4 -o cut.eps=0.1 -o tries=4 -o move=local "
               "-o def_line=local -o restart_share=0.2 -o cut_token=nobody; `fix -o help` lists "
               "every key with its default.")
@click.argument("path", type=click.Path(file_okay=False), required=False)
@model_option
@click.option("--strategy", type=StrategyType(), default=DEFAULT_RUN["strategy"],
              show_default=True,
              help="What a run does after a failure: rewind (resample from an uncertain token, "
              "MH-accepted), egps (K tries a cut), from-end (append the failure, ask again) "
              "or restart.")
@click.option("--cut-weights", type=click.Choice(CUT_WEIGHTS), default=DEFAULT_RUN["cut_weights"],
              show_default=True, help="Where a rewind cuts: surprise (under a context without "
              "the function body), entropy, uniform, code (entropy by code class), "
              "surprise+code; auto: surprise where the engine can score (--protocol patch), "
              "else entropy.")
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Set a rarely changed knob of the run (repeatable); `-o help` lists them.")
@click.option("--budget-tokens", type=click.IntRange(min=1), default=BUDGET_TOKENS, show_default=True,
              help="Decode tokens for the whole run, accepted or not.")
@click.option("--max-attempts", type=click.IntRange(min=1), default=10, show_default=True,
              help="Model attempts (first try + retries).")
@click.option("--seed", type=seed_type, default=0, show_default=True,
              help="Seed of every random draw (0 to 2^63-1).")
@click.option("--proposal-temperature", type=finite(min=0, min_open=True), default=None,
              help="Temperature of resampled tokens (default 1/alpha).")
@click.option("--test-cmd", default="python -m pytest -x -q", show_default=True,
              help="Command that runs the tests in the repository root; a leading `python` is "
              "the project's Python (--python).")
@click.option("--python", "python_path", default=None, metavar="PATH",
              help="The project's interpreter or virtualenv for the tests (default: the one "
              "--test-cmd names, else the repository's active or .venv/venv environment, "
              "uv/Poetry/Hatch, else our own: docs/cli.md).")
@click.option("--test-timeout", type=finite(min=0, min_open=True), default=60.0,
              show_default=True, help="Seconds before a test run is killed.")
@click.option("--narrow/--no-narrow", default=False, show_default=True,
              help="Search with the failing tests' node ids only (pytest); a candidate that "
              "passes them runs the whole --test-cmd and is a fix only if that passes too.")
@click.option("--test-cache/--no-test-cache", default=True, show_default=True,
              help="Test an identical tree once per run (exact for deterministic tests; off "
              "for a flaky suite).")
@click.option("--time-limit", type=Duration(), default=None, metavar="DURATION",
              help="Stop with the best result so far after this much compute (90s, 5m, 1h): "
              "CPU seconds of the process tree, checked between attempts.")
@click.option("--protocol", type=click.Choice(["patch", "tools", "auto"]), default="patch",
              show_default=True,
              help="patch: one turn rewriting the failing function (small models); tools: "
              "read_file/edit_function/replace_text/run_tests/submit calls in the model's <tool_call> JSON "
              "over several turns (larger models); auto: patch where a suspect function is "
              "found, else tools (the choice is printed).")
@click.option("--allow-test-edits", is_flag=True,
              help="Let the fix change test files (read-only by default: the failing tests are "
              "the specification).")
@click.option("--apply", "apply_fix", is_flag=True,
              help="On success, apply the fix to your working tree (only if it is clean).")
@click.option("--otlp", default=None, metavar="ENDPOINT",
              help="Export the run as OpenTelemetry traces (else OTEL_EXPORTER_OTLP_* decide).")
@click.option("--sandbox", type=click.Choice(SANDBOXES), default="auto", show_default=True,
              help="Where the tests and the model's code run: bwrap (only the clone writable, "
              "no network, no secrets), none, or auto (bwrap when it can run here).")
@click.option("--pass-env", multiple=True, metavar="NAME",
              help="Let this environment variable through to the tests (repeatable).")
@click.option("--resume", "resume_ref", default=None, metavar="RUN",
              help="Continue an interrupted or engine-lost run (id, prefix or `latest`) with "
              "its own config and seed; takes no PATH.")
@threads_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@home_option
def fix(path, model, strategy, cut_weights, options, budget_tokens, max_attempts, seed,
        proposal_temperature, test_cmd, python_path, test_timeout, narrow, test_cache,
        time_limit, protocol, allow_test_edits, apply_fix, otlp, sandbox, pass_env, resume_ref,
        threads, as_json, home) -> None:
    """Fix the failing tests of the git repository at PATH.

    Works in a private clone: your checkout, index, stash, refs and untracked files are never
    touched; the fix lands as branch decision-retry/<run> (your HEAD plus the fix), and in
    your working tree only with --apply. Tests run sandboxed (--sandbox). When an attempt still
    fails, the run rewinds the model's answer and the repository to an uncertain token and
    resamples from there (Metropolis-Hastings). Ctrl-C, SIGTERM and SIGHUP stop it cleanly;
    --resume RUN continues it.

    \b
    Exit codes: 0 fixed, 1 ran but not fixed or engine lost (resumable), 2 bad input,
    130 interrupted.
    Example:
      decision-retry fix fixtures/units --budget-tokens 800 --seed 1
    """
    from pydantic import ValidationError

    from decision_retry.agent.resume import resume
    from decision_retry.agent.runner import FixConfig, signals_as_interrupt
    from decision_retry.agent.runner import fix as run_fix
    from decision_retry.cli.logs import open_store
    from decision_retry.errors import BadInput, EngineLost
    from decision_retry.loading import load_lm
    from decision_retry.repo import pyenv
    from decision_retry.repo import sandbox as sandboxes
    from decision_retry.repo.workspace import repo_root

    if "help" in options:
        click.echo(options_help())
        return
    if (path is None) == (resume_ref is None):
        raise BadInput("give a repository PATH, or --resume RUN (and no PATH)")
    if resume_ref is not None and options:
        raise BadInput("--resume runs with the run's own config: give no -o")
    run = FIX_RUN if strategy in CUT_STRATEGIES else DEFAULT_RUN  # new chains cut attempts
    retry = retry_config({**run, "strategy": strategy, "cut_weights": cut_weights,
                          "proposal_temperature": proposal_temperature}, options,
                         flags=FLAG_KEYS)
    try:
        cfg = FixConfig(
            test_cmd=test_cmd, test_timeout=test_timeout, model=model, protocol=protocol,
            budget_tokens=budget_tokens, max_attempts=max_attempts, seed=seed, sandbox=sandbox,
            pass_env=pass_env, narrow=narrow, python=python_path, test_cache=test_cache,
            time_limit_s=time_limit, allow_test_edits=allow_test_edits, retry=retry)
    except ValidationError as err:  # a combination the option types alone do not catch
        first = err.errors()[0]
        raise BadInput(f"bad option {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    console = Console(stderr=True, highlight=False)
    root = repo_root(path) if path is not None else None  # before loading weights
    box = sandboxes.resolve(sandbox, pass_env=pass_env) if resume_ref is None else None
    if box is not None and box.kind != "bwrap":
        console.print(box.note)  # the one line saying what protection remains
    # the project's Python, before the weights load: a bad one is one line, exit 2
    py = pyenv.find(root, python_path, test_cmd=test_cmd) if root is not None else None
    lm = load_lm(model, threads=threads) if (model or resume_ref is None) else None
    progress = Progress(console, cfg)
    listener = span_listener(otlp)
    started = _RunId(resume_ref)
    listeners = [started, *([listener] if listener else [])]
    try:
        with open_store(home) as store, signals_as_interrupt(), progress.live:
            if resume_ref is not None:
                started.id = store.resolve(resume_ref)
                if lm is None:  # the run's own model, with this --threads
                    stored = FixConfig.model_validate(store.load(started.id).run.config)
                    lm = load_lm(stored.model, threads=threads)
                result = resume(resume_ref, store=store, lm=lm, listeners=listeners,
                                on_event=progress, apply=apply_fix)
            else:
                result = run_fix(root, cfg, lm=lm, store=store, listeners=listeners,
                                 on_event=progress, apply=apply_fix, sandbox=box, python=py)
    except KeyboardInterrupt as stop:
        why = f" by {stop.args[0]}" if stop.args else ""
        run = started.id[:12] if started.id else "the run"
        console.print(f"interrupted{why}: {run} is marked interrupted; continue it with "
                      f"`decision-retry fix --resume {run}`")
        raise SystemExit(130) from None
    except EngineLost as lost:  # the run ended as engine-lost, its trace kept: one line, exit 1
        run = started.id[:12] if started.id else "RUN"
        click.echo(f"error: {lost}; resume with `decision-retry fix --resume {run}` once it is "
                   "back", err=True)
        raise SystemExit(lost.exit_code) from None
    finally:
        if listener is not None:
            listener.shutdown()  # bounded; a collector that is down costs one warning line
    if as_json:
        click.echo(json.dumps(result.model_dump(mode="json"), indent=1))
    else:
        summary(console, result)
        if narrow and resume_ref is None and result.narrow_cmd is None:
            console.print(f"narrow: `{test_cmd}` has no narrower form (not pytest, or no "
                          "failing node id): the search ran it whole")
    if result.fixed and apply_fix:
        console.print("applied the fix to your working tree" + (f" in {root}" if root else ""))
    raise SystemExit(0 if result.fixed else 1)


class _RunId:
    """A trace listener that remembers the id of the run (for the interrupted message)."""

    def __init__(self, ref: str | None) -> None:
        self.id = ""

    def start_run(self, run) -> None:
        self.id = run.id

    def __getattr__(self, name: str):
        return lambda *a, **k: None


def _scores(entropy: float, surprise: float | None) -> str:
    """`H=0.19`, and `surprise=2.31` when the reply was scored under the no-body context."""
    return f"H={entropy:.2f}" + ("" if surprise is None else f", surprise={surprise:.2f}")


def _say(console: Console, line: str | Text) -> None:
    """One line of the summary, control characters escaped (rich markup stays text): a
    terminal wraps it at its width, a pipe or file gets it whole; nothing is cropped."""
    text = visible_text(line) if isinstance(line, str) else line
    if console.is_terminal:
        console.print(text, overflow="fold")
    else:
        console.print(text, soft_wrap=True)


def summary(console: Console, result) -> None:
    """The final report: outcome, attempts, tokens, each rewind, the diff, the run id."""
    head = ("fixed", "bold green") if result.fixed else ("not fixed", "bold red")
    console.print(Text.assemble(head, f" after {result.attempts} attempt(s), "
                                f"{result.decode_tokens} decode tokens ({result.stop})"))
    for i, r in enumerate(result.rewinds, 1):
        verdict = {True: "accepted", False: "rejected", None: "last"}[r.accepted]
        _say(console, f"  rewind {i}: {r.file}:{r.line} token {r.token!r} "
                      f"({_scores(r.entropy, r.surprise)}, {verdict})")
    if result.narrow_cmd:
        _say(console, f"narrow: the search ran `{result.narrow_cmd}`")
    if w := result.wide_check:
        verdict = "fixed" if w["ok"] else "broke other tests"
        _say(console, f"wide check: `{w['command']}` on the fix: {w['passed']} passed, "
                      f"{w['failed']} failed, {w['errors']} errors ({verdict})")
    if result.fixed:
        for line in diff_lines(result.diff):  # every byte: wrapped, never cropped, escaped
            _say(console, line)
        if result.branch:
            _say(console, f"the fix is on branch {result.branch} (your HEAD plus the fix)")
        if result.tests_changed:
            _say(console, f"the fix changes test files (--allow-test-edits): "
                          f"{', '.join(result.tests_changed)}")
        if result.unseparated:
            _say(console, f"no branch: the fix changes lines of "
                          f"{', '.join(result.unseparated)} that you edited and did not commit; "
                          "the diff above is against your working tree (`git apply` it there)")
        if result.left_out:
            _say(console, f"not on the branch (untracked in your repository): "
                          f"{', '.join(result.left_out)}; they are in the diff above")
    if result.diverged:
        console.print("warning: the resumed run did not reproduce every recorded turn "
                      "(another model or engine?); it continued from where they differ")
    if line := costs_line(result.costs):
        console.print(line)
    console.print(f"run {result.run_id}: `decision-retry logs show {result.run_id}`, "
                  f"`decision-retry report {result.run_id} -o report.html`")

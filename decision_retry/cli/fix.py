"""`decision-retry fix PATH`: fix a repository's failing tests by rewinding to uncertain tokens."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.live import Live
from rich.text import Text

from decision_retry.agent.sandbox import SANDBOXES
from decision_retry.choices import BUDGET_TOKENS, STRATEGIES
from decision_retry.cli.logs import diff_lines, home_option
from decision_retry.cli.options import finite, model_option, seed_type, threads_option
from decision_retry.costs import costs_line
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
        elif kind in ("carried", "python", "verdict"):  # gitignored modules carried; the project's Python
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


@click.command()
@click.argument("path", type=click.Path(file_okay=False), required=False)
@model_option
@click.option("--strategy", type=click.Choice(STRATEGIES), default="entropy-cut", show_default=True,
              help="What a run does: rewind to a token and resample from it (entropy-cut, "
              "the default, and uniform-cut: the cut rule is --cut-weights, so by default it "
              "cuts by surprise with local and def-line suffix moves; egps: K tries a cut; "
              "argmax-cut: a heuristic), append the failure and ask again (from-end), or start "
              "over (restart). The progress line says what runs.")
@click.option("--budget-tokens", type=click.IntRange(min=1), default=BUDGET_TOKENS, show_default=True,
              help="Decode tokens for the whole run, accepted or not.")
@click.option("--max-attempts", type=click.IntRange(min=1), default=10, show_default=True,
              help="Model attempts (first try + retries).")
@click.option("--seed", type=seed_type, default=0, show_default=True,
              help="Seed of every random draw (0 to 2^63-1).")
@click.option("--alpha", type=finite(min=0, min_open=True), default=4.0, show_default=True,
              help="Target p^alpha: higher prefers likelier code.")
@click.option("--proposal-temperature", type=finite(min=0, min_open=True), default=None,
              help="Temperature of resampled tokens (default 1/alpha).")
@click.option("--verifier-weight", type=finite(min=0), default=4.0, show_default=True,
              help="lambda: tilt the target by exp(lambda * fraction of tests passing).")
@click.option("--eps", type=finite(0, 1), default=0.1, show_default=True,
              help="Uniform share of the entropy-cut distribution.")
@click.option("--tries", type=click.IntRange(min=1), default=4, show_default=True,
              help="egps: tries drawn in one batch per rewind.")
@click.option("--move", type=click.Choice(["auto", "suffix", "local", "mixed"]), default="auto",
              show_default=True, help="What a rewind regenerates: suffix (the rest of the reply), "
              "local (to the end of the cut line; the rest kept and rescored), mixed (each "
              "rewind local or suffix, half and half), or auto (local with --protocol patch on "
              "an in-process engine and a single-try cut strategy, else suffix).")
@click.option("--def-line", type=click.Choice(["suffix", "local"]), default="suffix",
              show_default=True, help="local/mixed moves: what a rewind cut in the reply's "
              "opening (imports and the def line, which pick the function) regenerates: suffix "
              "(the whole rest, so a wrong function's body goes too) or local (that line only).")
@click.option("--restart-share", type=finite(0, 1), default=0.0, show_default=True,
              help="Probability that a rewind starts over from the prompt instead (MH-accepted).")
@click.option("--cut-weights", type=click.Choice(["auto", "entropy", "code", "surprise",
                                                  "surprise+code"]),
              default="auto", show_default=True, help="Where a rewind cuts. surprise: where the "
              "reply surprises a context that shows the signature, docstring and failing test but "
              "not the body (one scoring pass per reply; the rule that fixed the most on HumanEval "
              "K = 2 and 3, at about twice the wall time: docs/benchmarks.md); entropy: where "
              "entropy jumps; code: entropy, with docstrings/comments weighted down and the "
              "defined function name up; surprise+code: both; auto: surprise with --protocol "
              "patch on an in-process engine, else entropy.")
@click.option("--cut-token", type=click.Choice(["patch", "nobody"]), default="patch",
              show_default=True, help="Where a rewind draws its first new token: patch (the "
              "usual proposal) or nobody (the context without the function bodies, so a copied "
              "bug token can change; MH-corrected; patch protocol).")
@click.option("--test-cmd", default="python -m pytest -x -q", show_default=True,
              help="Command that runs the tests in the repository root; a leading `python` is "
              "the project's Python (--python).")
@click.option("--python", "python_path", default=None, metavar="PATH",
              help="The project's interpreter (or virtualenv directory) for the tests and "
              "coverage. Default: the interpreter --test-cmd starts with by path, an active "
              "VIRTUAL_ENV inside the repository, its .venv or venv, another active "
              "VIRTUAL_ENV, a uv/Poetry/Hatch environment, else decision-retry's own with "
              "pytest plugin autoload off (docs/cli.md).")
@click.option("--test-timeout", type=finite(min=0, min_open=True), default=60.0,
              show_default=True, help="Seconds before a test run is killed.")
@click.option("--narrow/--no-narrow", default=False, show_default=True,
              help="Search with the narrowest command that reproduces the failure (a pytest "
              "--test-cmd on the failing node ids), then run the whole --test-cmd once on a fix: "
              "it counts only if nothing else broke. For big test suites.")
@click.option("--test-cache/--no-test-cache", default=True, show_default=True,
              help="Test an identical tree once per run and reuse its result (the trace marks "
              "it cached). Exact for deterministic tests; use --no-test-cache for a flaky suite.")
@click.option("--time-limit", type=Duration(), default=None, metavar="DURATION",
              help="Stop with the best result so far once the run has used this much compute "
              "(90s, 5m, 1h or seconds): CPU seconds of the whole process tree (decode threads, "
              "test subprocesses), not wall time; checked between attempts. Stop reason: time limit.")
@click.option("--protocol", type=click.Choice(["patch", "tools"]), default="patch", show_default=True,
              help="patch: one turn rewriting the failing function (small models); tools: "
              "read/edit/test/submit actions over several turns (larger models).")
@click.option("--allow-test-edits", is_flag=True,
              help="Let the fix change test files (test_*.py, *_test.py, conftest.py, tests/, "
              "and the files of the failing tests); by default they are read-only: the failing "
              "tests are the specification. The summary names the test files the fix changes.")
@click.option("--apply", "apply_fix", is_flag=True,
              help="On success, apply the fix to your working tree (only if it is clean).")
@click.option("--otlp", default=None, metavar="ENDPOINT",
              help="Export the run as OpenTelemetry traces (else OTEL_EXPORTER_OTLP_* decide).")
@click.option("--sandbox", type=click.Choice(SANDBOXES), default="auto", show_default=True,
              help="Where the tests and the model's code run: bwrap (bubblewrap: only the clone "
              "writable, no network, no leftover processes, no secrets), none, or auto (bwrap "
              "when it can run here).")
@click.option("--pass-env", multiple=True, metavar="NAME",
              help="Let this environment variable through to the tests (repeatable); others "
              "outside a short allow-list (PATH, HOME, LANG, ...) are withheld.")
@click.option("--resume", "resume_ref", default=None, metavar="RUN",
              help="Continue an interrupted run (id, prefix or `latest`) from the trace store, "
              "with its own config and seed; takes no PATH.")
@threads_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@home_option
def fix(path, model, strategy, budget_tokens, max_attempts, seed, alpha, proposal_temperature,
        verifier_weight, eps, tries, move, def_line, restart_share, cut_weights, cut_token, test_cmd, test_timeout, narrow, test_cache, time_limit, protocol, allow_test_edits, apply_fix, otlp, sandbox,
        python_path, pass_env, resume_ref, threads, as_json, home) -> None:
    """Fix the failing tests of the git repository at PATH.

    Works in a private clone: your checkout, index, stash, refs and untracked files are never
    touched; the fix lands as branch decision-retry/<run> (your HEAD plus the fix), and in
    your working tree only with --apply. Tests run sandboxed (--sandbox). When an attempt still
    fails, the run rewinds the model's answer and the repository to a high-entropy token and
    resamples from there (Entropy-Cut MH). Ctrl-C, SIGTERM and SIGHUP stop it cleanly;
    --resume RUN continues it.

    \b
    Exit codes: 0 fixed, 1 ran but not fixed, 2 bad input, 130 interrupted.
    Example:
      decision-retry fix fixtures/units --budget-tokens 800 --seed 1
    """
    from pydantic import ValidationError

    from decision_retry.agent import pyenv
    from decision_retry.agent import sandbox as sandboxes
    from decision_retry.agent.resume import resume
    from decision_retry.agent.runner import FixConfig, signals_as_interrupt
    from decision_retry.agent.runner import fix as run_fix
    from decision_retry.agent.workspace import repo_root
    from decision_retry.choices import DEF_HEADER
    from decision_retry.cli.logs import open_store
    from decision_retry.errors import BadInput
    from decision_retry.loading import load_lm
    from decision_retry.retry import RetryConfig
    from decision_retry.samplers.cuts import CutRule
    from decision_retry.samplers.local import SpanRule

    if (path is None) == (resume_ref is None):
        raise BadInput("give a repository PATH, or --resume RUN (and no PATH)")
    try:
        cfg = FixConfig(
            test_cmd=test_cmd, test_timeout=test_timeout, model=model, protocol=protocol,
            budget_tokens=budget_tokens, max_attempts=max_attempts, seed=seed, sandbox=sandbox,
            pass_env=pass_env, narrow=narrow, python=python_path, test_cache=test_cache,
            time_limit_s=time_limit, allow_test_edits=allow_test_edits,
            retry=RetryConfig(strategy=strategy, alpha=alpha,
                              proposal_temperature=proposal_temperature,
                              verifier_weight=verifier_weight, cut=CutRule(eps=eps), tries=tries,
                              move=move,
                              span=SpanRule(opening=DEF_HEADER if def_line == "suffix" else None),
                              restart_share=restart_share, cut_weights=cut_weights,
                              cut_token=cut_token),
        )
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

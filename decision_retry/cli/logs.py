"""`decision-retry logs`: list recorded runs, show one run's tree, print the store's path."""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import wraps
from typing import Any

import click
from rich.console import Console
from rich.text import Text
from rich.tree import Tree

from decision_retry.choices import current_name
from decision_retry.errors import BadInput, DecisionRetryError
from decision_retry.trace.compare import StrategyChange, compare_all
from decision_retry.trace.models import Branch, RunTree, Turn
from decision_retry.trace.printable import visible, visible_text
from decision_retry.trace.store import HOME_ENV, TraceStore, db_path
from decision_retry.trace.summary import (
    attempt_line,
    attempts,
    diff_summary,
    fixing_attempt,
    header_lines,
    what_ran,
)

home_option = click.option(
    "--home",
    type=click.Path(file_okay=False),
    default=None,
    help=f"Trace store directory (default: ${HOME_ENV}, else $XDG_DATA_HOME/decision-retry, "
    "else ~/.local/share/decision-retry).",
)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a DecisionRetryError into one line on stderr and its exit code."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DecisionRetryError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(err.exit_code)

    return wrapper


@contextmanager
def open_store(home: str | None) -> Iterator[TraceStore]:
    """The trace store, or BadInput naming the path if it cannot be opened."""
    path = db_path(home)
    try:
        store = TraceStore(path)
    except (sqlite3.Error, OSError) as err:
        raise BadInput(f"cannot open the trace store {path}: {err}") from err
    with store:
        yield store


class _DefaultToList(click.Group):
    """A group whose default subcommand is `list`: `logs -n 5` means `logs list -n 5`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ctx.help_option_names):
            args = ["list", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_DefaultToList)
def logs() -> None:
    """Browse recorded runs. Without a subcommand: `logs list`."""


@logs.command("list")
@click.option(
    "-n",
    "count",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="How many runs to show, newest first (0: all).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print a JSON list of runs, each with an `id`."
)
@home_option
@user_errors
def list_runs(count: int, as_json: bool, home: str | None) -> None:
    """List recent runs, newest first."""
    with open_store(home) as store:
        runs = [(run, store.counts(run.id)) for run in store.list_runs(limit=count or None)]
    if as_json:
        click.echo(json.dumps([run.model_dump(mode="json") | n for run, n in runs], indent=2))
        return
    for run, n in runs:
        created = run.created_at.strftime("%Y-%m-%d %H:%M:%S")
        click.echo(visible(
            f"{run.id}  {created}  {run.outcome or 'unfinished':<10}  "
            f"{current_name(run.strategy):<12}  "
            f"{run.model}  ({n['branches']} branches, {n['turns']} turns, {n['tokens']} tokens, "
            f"{n['mh_steps']} MH steps)"
        ))


@logs.command("show")
@click.argument("run_ref", metavar="RUN")
@click.option("--full", is_flag=True,
              help="Print the whole tree: every branch's turns, decision points, tool calls and "
              "tests, nested under the branch it was cut from.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole run tree as JSON.")
@home_option
@user_errors
def show(run_ref: str, full: bool, as_json: bool, home: str | None) -> None:
    """Show one run: its outcome and cost, the localisation, one line per attempt (where it
    cut and by which signal, what it changed, the MH decision, the tests) and the fix's diff.

    RUN is a run id, a unique prefix of one, or `latest`. Text from the model or the repository
    is printed with control characters escaped (`\\x1b`), long lines wrapped, never cut.
    """
    with open_store(home) as store:
        tree = store.load(store.resolve(run_ref))
    if as_json:
        data = tree.model_dump(mode="json") | {
            "changes": [c.model_dump(mode="json") for c in compare_all(tree)]
        }
        click.echo(json.dumps(data, indent=2))
        return
    tty = sys.stdout.isatty()
    if full:  # a terminal wraps at its width; a pipe gets every line whole
        console = Console(highlight=False, width=None if tty else 1_000_000)
        console.print(render_tree(tree, compare_all(tree)))
        return
    console = Console(highlight=False)
    for line in render_summary(tree, width=console.width if tty else None):
        # a terminal wraps at its width; a pipe gets each line whole
        if tty:
            console.print(line, overflow="fold")
        else:
            console.print(line, soft_wrap=True)


def render_summary(tree: RunTree, width: int | None = None) -> list[Text]:
    """The default view as lines: header, one line per attempt, the fix's whole diff. `width`
    (a terminal's) sizes each attempt's diff summary to fit its line where it can."""
    lines = [Text(line, "bold" if i == 0 else "") for i, line in enumerate(header_lines(tree))]
    for a in attempts(tree):
        text = attempt_line(a)
        if width is not None and len(text) > width and a.same_as is None and a.diff:
            room = len(a.changed) - (len(text) - width)
            text = attempt_line(replace(a, changed=diff_summary(a.diff, max(24, room))))
        style = {True: "green", False: "red"}.get(a.passed, "")  # type: ignore[arg-type]
        lines.append(Text(text, style))
    fix = fixing_attempt(tree)
    if fix is not None and fix.final_diff:
        lines.append(Text(f"the fix (#{fix.index}), every line of its diff:", "bold"))
        lines += diff_lines(fix.final_diff)
    lines.append(Text(f"`logs show {tree.run.id[:12]} --full`: the whole tree; `--json`: "
                      "everything; `decision-retry report`: the HTML report", "dim"))
    return lines


def diff_lines(diff: str) -> list[Text]:
    """A diff line by line, removed red and added green, control characters escaped."""
    style = {"+": "green", "-": "red", "@": "cyan"}
    return [visible_text(ln, "" if ln.startswith(("+++", "---")) else style.get(ln[:1], ""))
            for ln in diff.splitlines()]


def _t(text: str, style: str = "") -> Text:
    """A tree line with control characters escaped (and shown reversed)."""
    return visible_text(text, style)


def _snippet(text: str, limit: int = 60) -> str:
    flat = text.replace("\n", "\\n")
    return json.dumps(flat if len(flat) <= limit else flat[: limit - 1] + "…", ensure_ascii=False)


def _turn_node(parent: Tree, tree: RunTree, turn: Turn) -> None:
    node = parent.add(
        _t(f"turn {turn.index} · {len(turn.tokens)} tokens · {_snippet(turn.text)}")
    )
    for d in tree.decisions_of(turn.id):
        alts = ", ".join(f"{a.text!r} {a.prob:.0%}" for a in d.alternatives[:4])
        what = d.kind if d.label is None else f"{d.kind}:{d.label}"
        line = f"decision {what} @{d.position} {d.choice!r} H={d.entropy:.2f}"
        line += f" · alternatives {alts}" if alts else ""
        line += f" · snapshot {d.snapshot[:12]}" if d.snapshot else ""
        node.add(_t(line, style="magenta" if d.kind == "entropy" else "cyan"))
    for call in tree.tool_calls_of(turn.id):
        args, seen = _arguments(call.arguments), _snippet(call.observation)
        node.add(_t(f"tool {call.action} {args} → {seen}"))


def _where(entry: object) -> str:
    """`file::function` of a ranking entry (`?` for what a hand-edited row left out)."""
    e = entry if isinstance(entry, dict) else {}
    return f"{e.get('file', '?')}::{e.get('function', '?')}"


def _arguments(args: dict, top: int = 3) -> str:
    """A tool call's arguments on one line; a localisation ranking (apply_patch, first turn),
    the candidates shown and the functions a reply rewrote are summarised, not dumped: `--json`
    has them whole."""
    loc, shown, several = args.get("localisation"), args.get("shown"), args.get("functions")
    if not isinstance(loc, dict) and not isinstance(shown, list) and not isinstance(several, list):
        return json.dumps(args)
    named = ("localisation", "shown", "functions",
             *(("file", "function") if isinstance(several, list) else ()))
    rest = {k: v for k, v in args.items() if k not in named}
    out = json.dumps(rest)
    if isinstance(several, list):
        out += " · rewrote " + ", ".join(_where(e) for e in several)
    if isinstance(shown, list):
        out += " · shown " + ", ".join(_where(e) for e in shown)
    if isinstance(loc, dict):
        ranking = loc.get("ranking") if isinstance(loc.get("ranking"), list) else []
        best = []
        for e in ranking[:top]:
            score = e.get("score") if isinstance(e, dict) else None
            mark = f" ({score:.2f})" if isinstance(score, (int, float)) else ""
            best.append(_where(e) + mark)
        more = ", ..." if len(ranking) > top else ""
        out += f" · localisation: top-{len(best)} {', '.join(best)}{more}" if best else \
            " · localisation: no candidate"
        sp = loc.get("spectrum")
        if isinstance(sp, dict):
            out += f" (spectrum {sp.get('failing')} failing, {sp.get('passing')} passing"
            out += f"; {_snippet(str(sp['note']), 40)})" if sp.get("note") else ")"
    return out


def _change_line(change: StrategyChange) -> Text:
    sizes = f"{change.parent_suffix_len} → {change.retry_suffix_len} tokens"
    parts = [f"edit distance {change.edit_distance} ({sizes}, {change.relative_distance:.0%})"]
    if change.tool_changed:
        before = ", ".join(f"{label} {text!r}" for label, text in change.choices_before) or "none"
        after = ", ".join(f"{label} {text!r}" for label, text in change.choices_after) or "none"
        parts.append(f"tool choice changed: {before} → {after}")
    else:
        parts.append("same tool choices")
    parts.append(
        {None: "diff unknown", True: "diff changed", False: "same diff"}[change.diff_changed]
    )
    return _t("change: " + "; ".join(parts), style="yellow")


def _branch_node(
    parent: Tree, tree: RunTree, branch: Branch, changes: dict[str, StrategyChange]
) -> None:
    style = {True: "green", False: "red"}.get(branch.passed, "")  # type: ignore[arg-type]
    label = _t(
        f"branch #{branch.index} {branch.id} {current_name(branch.strategy)} · {branch.outcome or 'unfinished'}",
        style,
    )
    if branch.cut is not None and branch.parent_id is not None:
        origin = tree.branch(branch.parent_id)
        label.append_text(_t(
            f" · rewind from #{origin.index} turn {branch.cut.turn} token {branch.cut.position}"
            f" (H={branch.cut.entropy:.2f}) → #{branch.index}"
        ))
    node = parent.add(label)
    if branch.id in changes:
        node.add(_change_line(changes[branch.id]))
    for turn in tree.own_turns(branch.id):
        _turn_node(node, tree, turn)
    parent_diff = tree.branch(branch.parent_id).final_diff if branch.parent_id else ""
    if branch.final_diff and branch.final_diff != parent_diff:
        shown = node.add(_t("diff", "bold"))
        for line in diff_lines(branch.final_diff):
            shown.add(line)
    for r in tree.test_runs_of(branch.id):
        node.add(
            _t(
                f"tests {r.command!r}: {r.passed} passed, {r.failed} failed, {r.errors} errors, "
                f"exit {r.exit_code}, {r.duration_s:.1f}s",
                "green" if r.ok else "red",
            )
        )
    for child in tree.children(branch.id):
        _branch_node(node, tree, child, changes)


def render_tree(tree: RunTree, changes: list[StrategyChange]) -> Tree:
    """The run as a rich Tree: branches nested under the branch they were cut from."""
    run = tree.run
    root = Tree(
        _t(
            f"run {run.id} · {run.model} · {what_ran(run)} · seed {run.seed} · "
            f"{run.outcome or 'unfinished'} · {run.created_at:%Y-%m-%d %H:%M:%S}",
            "bold",
        )
    )
    by_branch = {c.branch_id: c for c in changes}
    for branch in tree.children(None):
        _branch_node(root, tree, branch, by_branch)
    if tree.mh_steps:
        steps = root.add(_t("MH steps"))
        for s in tree.mh_steps:
            parts = (
                f"target {s.log_target:.2f}, proposal {s.log_proposal:.2f}, "
                f"cut {s.log_cut_correction:.2f}, verifier {s.log_verifier:.2f}"
            )
            verdict = "accepted" if s.accepted else "rejected"
            line = (
                f"#{s.index} cut turn {s.cut_turn} token {s.cut_position} H={s.cut_entropy:.2f}"
                f" · proposal {s.proposal_length} tokens · log A={s.log_accept:.2f} ({parts})"
                f" · {verdict} · {s.decode_tokens} decode tokens"
            )
            if s.approximate is not None:  # a remote engine's top-k: log A is an interval
                kind = "approximate" if s.approximate else "certain"
                line += f" · {kind}: log A in [{s.log_accept_lo:.2f}, {s.log_accept_hi:.2f}]"
            steps.add(_t(line, "green" if s.accepted else "red"))
    return root


@logs.command("path")
@home_option
def path(home: str | None) -> None:
    """Print the path of the trace database."""
    click.echo(str(db_path(home)))


@logs.command("export")
@click.argument("run_ref", metavar="RUN")
@click.option(
    "--otlp",
    "endpoint",
    metavar="URL",
    default=None,
    help="OTLP collector, e.g. http://localhost:4318 (default: $OTEL_EXPORTER_OTLP_ENDPOINT).",
)
@click.option(
    "--protocol",
    type=click.Choice(["grpc", "http/protobuf"]),
    default=None,
    help="OTLP protocol (default: $OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf).",
)
@home_option
@user_errors
def export(run_ref: str, endpoint: str | None, protocol: str | None, home: str | None) -> None:
    """Replay a stored run as OpenTelemetry spans to an OTLP collector.

    RUN is a run id, a unique prefix of one, or `latest`. The standard OTEL_EXPORTER_OTLP_*
    variables (headers, timeout, certificates) and OTEL_SERVICE_NAME apply.
    """
    from decision_retry.otel import export_run  # OpenTelemetry loads only when asked for

    with open_store(home) as store:
        tree = store.load(store.resolve(run_ref))
    spans, delivered = export_run(tree, endpoint, protocol=protocol)
    if not delivered:
        sys.exit(1)  # the exporter has printed its one warning line
    click.echo(f"exported run {tree.run.id}: {spans} spans")


@logs.command("gc")
@click.option("--older-than", "older_than", default=None, metavar="AGE",
              help="Also delete runs created more than AGE ago (30d, 12h, 90m) from the store.")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@home_option
@user_errors
def gc(older_than: str | None, dry_run: bool, home: str | None) -> None:
    """Remove what old or killed runs left behind.

    Private clones of runs whose process is gone (after SIGKILL or a crash) are deleted and those
    runs marked `interrupted` (resumable with `fix --resume`), and their test report directories
    once an hour old while no run is alive; with --older-than, older runs are
    deleted from the store; in the repositories the store names, the per-attempt refs and
    worktree registrations older versions left are removed. Fix branches are yours: listed,
    never deleted.
    """
    from decision_retry.repo import leftovers

    age = leftovers.parse_duration(older_than) if older_than is not None else None
    with open_store(home) as store:
        found = leftovers.gc(store, older_than=age, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for d in found.clones:
        click.echo(visible(f"{verb} clone {d}"))
    for d in found.scratch:
        click.echo(visible(f"{verb} test report directory {d}"))
    for run_id in found.interrupted:
        click.echo(f"{'would mark' if dry_run else 'marked'} run {run_id[:12]} interrupted")
    for run_id in found.deleted_runs:
        click.echo(f"{verb} run {run_id[:12]} from the store")
    for item in found.refs + found.worktrees:
        click.echo(visible(f"{verb} {item}"))
    for item in found.branches:
        click.echo(visible(f"kept fix branch {item} (delete it with `git branch -D` when done)"))
    total = len(found.clones) + len(found.scratch) + len(found.deleted_runs) + len(found.refs) + len(found.worktrees)
    click.echo(f"{verb} {total} item(s)")

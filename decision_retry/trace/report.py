"""A self-contained HTML report of one run: entropy heat map, branch tree, entropy plot.

Everything is inline (CSS, JS, SVG, data); a Content-Security-Policy forbids any network load.
Stable hooks for tools and tests: `.token` (`.decision`, `.kept`, `.cut-point`), `#branch-tree`
with `.branch-node`, `#entropy-plot` with `path.entropy-line` and `circle.decision-dot`,
`#strategy-changes` with `.change-row`, `#mh-steps` with `.mh-step`.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from decision_retry.trace.compare import StrategyChange, compare_all
from decision_retry.trace.models import Branch, RunTree, Turn
from decision_retry.trace.report_assets import CSS, JS

CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"


def heat(entropy: float, scale: float) -> str:
    """Background colour for a token: pale yellow at 0 nats to red at `scale` and above."""
    t = min(max(entropy / scale, 0.0), 1.0) if scale > 0 else 0.0
    return f"hsl({50 - 50 * t:.0f},100%,{95 - 40 * t:.0f}%)"


def _attr(value: Any) -> str:
    return escape(str(value), quote=True)


def _script_json(value: Any) -> str:
    """JSON safe to embed in a <script> element (no `</script>` or `<!--` can appear)."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _branch_caption(branch: Branch) -> str:
    if branch.cut is not None:
        cut = branch.cut
        return f"cut at turn {cut.turn}, token {cut.position} (H={cut.entropy:.2f})"
    return "fresh start" if branch.parent_id is None else "from parent, no cut"


def _details(summary: str, text: str) -> str:
    return f"<details><summary>{summary}</summary><pre>{escape(text)}</pre></details>"


def _verdict(branch: Branch) -> str:
    return {True: "true", False: "false"}.get(branch.passed, "unknown")  # type: ignore[arg-type]


def _change_caption(change: StrategyChange | None) -> str:
    if change is None:
        return ""
    longest = max(change.parent_suffix_len, change.retry_suffix_len)
    parts = [f"edit distance {change.edit_distance}/{longest}"]
    parts.append("tool choice changed" if change.tool_changed else "same tool choices")
    if change.diff_changed is not None:
        parts.append("diff changed" if change.diff_changed else "same diff")
    return "; ".join(parts)


def _tree_html(tree: RunTree, parent: str | None, changes: dict[str, StrategyChange]) -> str:
    items = []
    for b in tree.children(parent):
        tests = tree.test_runs_of(b.id)
        label = f"#{b.index} {b.strategy} · {b.outcome or 'running'}"
        if tests:
            label += f", tests {tests[-1].passed} passed / {tests[-1].failed} failed"
        items.append(
            f'<li class="branch-node" id="branch-{b.id}" data-branch="{b.id}"'
            f' data-passed="{_verdict(b)}"><span class="branch-label">{escape(label)}</span>'
            f'<span class="cut-info">{escape(_branch_caption(b))}</span>'
            f'<span class="change-info">{escape(_change_caption(changes.get(b.id)))}</span>'
            f"{_tree_html(tree, b.id, changes)}</li>"
        )
    return f"<ul>{''.join(items)}</ul>" if items else ""


def _turn_html(tree: RunTree, branch: Branch, turn: Turn, scale: float) -> str:
    decisions: dict[int, list[str]] = {}
    for d in tree.decisions_of(turn.id):
        decisions.setdefault(d.position, []).append(
            d.kind if d.label is None else f"{d.kind}:{d.label} {d.choice!r}"
        )
    kept = branch.cut.position if branch.cut is not None and turn.index == branch.cut.turn else 0
    spans = []
    for i, token in enumerate(turn.tokens):
        classes = ["token"]
        if i < kept:
            classes.append("kept")
        elif i == kept and kept > 0:
            classes.append("cut-point")
        attrs = ""
        if i in decisions:
            kinds = {k.split(":")[0] for k in decisions[i]}
            classes += ["decision", *(f"decision-{k}" for k in sorted(kinds))]
            attrs = f' data-decision="{_attr("; ".join(decisions[i]))}"'
        alts = _attr(json.dumps([[a.text, a.prob] for a in token.top]))
        spans.append(
            f'<span class="{" ".join(classes)}" data-pos="{i}" data-h="{token.entropy:.4f}"'
            f' data-logp="{token.logp:.4f}" data-logq="{token.logq:.4f}" data-alts="{alts}"{attrs}'
            f' style="background:{heat(token.entropy, scale)}">{escape(token.text)}</span>'
        )
    calls = "".join(
        f'<div class="tool-call"><b>{escape(c.action)}</b> <code>{escape(json.dumps(c.arguments))}'
        f"</code>{_details('observation', c.observation)}</div>"
        for c in tree.tool_calls_of(turn.id)
    )
    prompt = _details("prompt", turn.prompt) if turn.prompt else ""
    return (
        f'<div class="turn" id="turn-{turn.id}" data-turn-index="{turn.index}">'
        f'<div class="turn-head">turn {turn.index} · {len(turn.tokens)} tokens · '
        f"{escape(json.dumps(turn.params))}</div>{prompt}"
        f'<pre class="tokens">{"".join(spans)}</pre>{calls}</div>'
    )


def _branch_html(tree: RunTree, branch: Branch, scale: float) -> str:
    turns = "".join(_turn_html(tree, branch, t, scale) for t in tree.own_turns(branch.id))
    tests = "".join(
        f'<div class="test-run {"pass" if r.ok else "fail"}">'
        f"tests: <code>{escape(r.command)}</code> {r.passed} passed, {r.failed} failed,"
        f" {r.errors} errors, exit {r.exit_code}"
        f"{_details('output', r.output_tail)}</div>"
        for r in tree.test_runs_of(branch.id)
    )
    title = f"Branch #{branch.index} <code>{branch.id}</code> · {escape(_branch_caption(branch))}"
    return (
        f'<section class="branch-turns" data-branch="{branch.id}"><h3>{title}</h3>'
        f"{turns or '<p>no turns recorded</p>'}{tests}</section>"
    )


def _plot_data(tree: RunTree, scale: float) -> dict[str, Any]:
    """Per branch: entropies over its whole trajectory, decision positions, cut position."""
    branches = []
    for b in tree.branches:
        entropies: list[float] = []
        points: list[int] = []
        cut = None
        for turn in tree.trajectory(b.id):
            if b.cut is not None and turn.index == b.cut.turn:
                cut = len(entropies) + b.cut.position
            points += [len(entropies) + d.position for d in tree.decisions_of(turn.id)]
            entropies += [t.entropy for t in turn.tokens]
        if b.cut is not None and cut is None:
            cut = len(entropies)  # the cut turn was never recorded (e.g. a killed run)
        points = sorted({p for p in points if p < len(entropies)})
        branches.append(
            {
                "id": b.id,
                "index": b.index,
                "label": b.strategy,
                "entropies": entropies,
                "decisions": points,
                "cut": cut,
            }
        )
    return {"branches": branches, "entropy_max": scale}


def _table(table_id: str, head: list[str], rows: list[tuple[str, list[Any]]]) -> str:
    """An HTML table; each row is (its attributes, its cells)."""
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    trs = "".join(
        f"<tr {attrs}>{''.join(f'<td>{escape(str(c))}</td>' for c in cells)}</tr>"
        for attrs, cells in rows
    )
    return f'<table id="{table_id}"><tr>{th}</tr>{trs}</table>'


def _changes_html(changes: list[StrategyChange], tree: RunTree) -> str:
    if not changes:
        return "<p>no retries</p>"
    verdict = {None: "unknown", True: "yes", False: "no"}
    rows = [
        (
            f'class="change-row" data-branch="{c.branch_id}"',
            [
                f"#{tree.branch(c.branch_id).index}",
                f"#{tree.branch(c.parent_id).index}",
                f"turn {c.cut.turn}, token {c.cut.position}",
                f"{c.edit_distance} ({c.relative_distance:.0%})",
                verdict[c.tool_changed],
                verdict[c.diff_changed],
            ],
        )
        for c in changes
    ]
    head = ["retry", "cut from", "at", "edit distance", "tool changed", "diff changed"]
    return _table("strategy-changes", head, rows)


def _mh_html(tree: RunTree) -> str:
    if not tree.mh_steps:
        return "<p>no MH steps</p>"
    rows = []
    for s in tree.mh_steps:
        verdict = "accepted" if s.accepted else "rejected"
        logs = [s.log_target, s.log_proposal, s.log_cut_correction, s.log_verifier, s.log_accept]
        cells = [s.index, f"turn {s.cut_turn}, token {s.cut_position}", f"{s.cut_entropy:.2f}"]
        cells += [s.proposal_length, *(f"{x:.2f}" for x in logs), s.decode_tokens, verdict]
        rows.append((f'class="mh-step {verdict}"', cells))
    head = ["step", "cut", "H", "proposal len", "target", "proposal", "cut corr.", "verifier"]
    return _table("mh-steps", [*head, "log A", "decode tokens", ""], rows)


def render_report(tree: RunTree) -> str:
    """The whole report as one HTML document."""
    run = tree.run
    entropies = [t.entropy for turn in tree.turns for t in turn.tokens]
    scale = max([2.0, *entropies])  # colour and plot scale in nats
    changes = compare_all(tree)
    meta = {
        "model": run.model,
        "strategy": run.strategy,
        "seed": run.seed,
        "repo": run.repo,
        "outcome": run.outcome or "unfinished",
        "created": run.created_at.isoformat(timespec="seconds"),
    }
    meta_html = "".join(f"<dt>{k}</dt><dd>{escape(str(v))}</dd>" for k, v in meta.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>decision-retry run {run.id}</title><style>{CSS}</style></head>
<body>
<h1>decision-retry run <code>{run.id}</code></h1>
<dl class="meta">{meta_html}</dl>
{_details("config", json.dumps(run.config, indent=2, sort_keys=True))}
<h2>Branches</h2>
<p>Click a branch to show only its turns. Green: tests passed; red: failed.</p>
<nav id="branch-tree">{_tree_html(tree, None, {c.branch_id: c for c in changes})}</nav>
<h2>Entropy over position</h2>
<div class="legend" id="plot-legend"></div>
<svg id="entropy-plot" viewBox="0 0 1000 260" preserveAspectRatio="none" role="img"
 aria-label="entropy over token position per branch"></svg>
<h2>Did the retry change strategy?</h2>
{_changes_html(changes, tree)}
<h2>Metropolis-Hastings steps</h2>
{_mh_html(tree)}
<h2>Turns</h2>
<p class="legend">entropy <span class="heat-scale"></span> 0 to {scale:.1f} nats;
outlined tokens are decision points; faded tokens are the prefix a retry kept.</p>
{"".join(_branch_html(tree, b, scale) for b in tree.branches)}
<div id="token-detail" hidden></div>
<script type="application/json" id="trace-data">{_script_json(_plot_data(tree, scale))}</script>
<script>{JS}</script>
</body></html>
"""

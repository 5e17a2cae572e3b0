"""A self-contained HTML report of one run: the attempts, the fix, the cut signal as a heat map.

Everything is inline (CSS, JS, SVG, data); a Content-Security-Policy forbids any network load.
Text from the model or the repository is HTML-escaped and its control characters written as
escapes (trace/printable.py). Stable hooks for tools and tests: `#run-cost`, `#settings`,
`#localisation`, `#branch-tree` with `.branch-node` (one per attempt line; `.collapsed` ones
carry every branch id in `data-branches`), `#the-fix` with `.fix-diff`, `#signal-toggle` and
`#signal-legend`, `.token` (`.decision`, `.kept`, `.cut-point`, `.fix-change`), `#entropy-plot`
with `path.entropy-line` (the selected signal) and `circle.decision-dot`, `#strategy-changes`
with `.change-row`, `#mh-steps` with `.mh-step`, `.branch-turns` (`.repeat` for same code).
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from decision_retry.choices import current_name
from decision_retry.trace import summary as s
from decision_retry.trace.compare import StrategyChange, compare_all
from decision_retry.trace.html_assets import CSS, JS
from decision_retry.trace.models import Branch, RunTree, Turn
from decision_retry.trace.printable import visible
from decision_retry.trace.readable import call_text, params_text, settings

CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"
SURPRISE_CAP = 8.0  # nats: a very unlikely token must not wash out the rest of the heat map


def heat(value: float | None, scale: float) -> str:
    """Background colour for a token: pale yellow at 0 nats to red at `scale` and above."""
    if value is None:
        return "#eee"
    t = min(max(value / scale, 0.0), 1.0) if scale > 0 else 0.0
    return f"hsl({50 - 50 * t:.0f},100%,{95 - 40 * t:.0f}%)"


def _text(value: Any) -> str:
    """Model or repository text for HTML: control characters escaped, markup escaped."""
    return escape(visible(str(value)), quote=True)


def _script_json(value: Any) -> str:
    """JSON safe to embed in a <script> element (no `</script>` or `<!--` can appear)."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _details(summary: str, text: str, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f"<details{attr}><summary>{summary}</summary><pre>{_text(text)}</pre></details>"


def _verdict(passed: bool | None) -> str:
    return {True: "true", False: "false"}.get(passed, "unknown")  # type: ignore[arg-type]


# -- sections -------------------------------------------------------------------------------

def _attempts_html(tree: RunTree, attempts: list[s.Attempt], fix: Branch | None) -> str:
    items = []
    for a in attempts:
        ids = " ".join(b.id for b in a.branches)
        classes = ["branch-node"] + (["collapsed"] if len(a.branches) > 1 else [])
        classes += ["fix"] if fix is not None and fix in a.branches else []
        mark = '<span class="fix-mark">the fix</span>' if "fix" in classes else ""
        items.append(
            f'<li class="{" ".join(classes)}" id="branch-{a.branches[0].id}"'
            f' data-branch="{a.branches[0].id}" data-branches="{ids}"'
            f' data-passed="{_verdict(a.passed)}"><span class="branch-label">'
            f"{escape(a.label + a.origin)}</span>{mark}"
            + "".join(f'<span class="{cls}">{escape(text)}</span>' for cls, text in (
                ("cut-info", a.began), ("change-info", a.changed), ("mh-info", a.decision),
                ("test-info", a.tests)) if text)
            + "</li>"
        )
    return f"<ul>{''.join(items)}</ul>"


def _diff_html(diff: str) -> str:
    rows = []
    for line in diff.splitlines():
        cls = {"+": "add", "-": "del", "@": "hunk"}.get(line[:1], "")
        cls = "" if line.startswith(("+++", "---")) else cls
        rows.append(f'<span class="{cls}">{_text(line)}</span>' if cls else _text(line))
    return '<pre class="fix-diff">' + "\n".join(rows) + "</pre>"


def _fix_html(tree: RunTree, fix: Branch | None, signal: str) -> str:
    if fix is None:
        return '<section id="the-fix"><p>No attempt passed the tests.</p></section>'
    how = s.began(tree, fix, signal)
    return (
        f'<section id="the-fix"><p>Attempt <b>#{fix.index}</b> passed the tests: '
        f"{escape(how)}. The tokens it changed are outlined in green in its turns below; "
        f"its whole diff (what the fix branch holds):</p>{_diff_html(fix.final_diff or '')}"
        "</section>"
    )


def _changed_span(tree: RunTree, branch: Branch | None) -> dict[str, range]:
    """Per own turn of `branch` (the fix): the token positions that differ from its parent's
    turn of the same index (common prefix and suffix of token texts left out)."""
    if branch is None or branch.parent_id is None:
        return {}
    parent = {t.index: t for t in tree.trajectory(branch.parent_id)}
    out = {}
    for turn in tree.own_turns(branch.id):
        old = [t.text for t in parent[turn.index].tokens] if turn.index in parent else []
        new = [t.text for t in turn.tokens]
        i, j = s.common_ends(old, new)
        out[turn.id] = range(i, len(new) - j)
    return out


def _turn_html(tree: RunTree, branch: Branch, turn: Turn, scales: dict[str, float],
               changed: range | None) -> str:
    decisions: dict[int, list[str]] = {}
    for d in tree.decisions_of(turn.id):
        decisions.setdefault(d.position, []).append(
            d.kind if d.label is None else f"{d.kind}:{d.label} {visible(repr(d.choice))}"
        )
    kept = branch.cut.position if branch.cut is not None and turn.index == branch.cut.turn else 0
    spans = []
    for i, token in enumerate(turn.tokens):
        classes = ["token"]
        if i < kept:
            classes.append("kept")
        elif i == kept and kept > 0:
            classes.append("cut-point")
        if changed is not None and i in changed:
            classes.append("fix-change")
        attrs = ""
        if i in decisions:
            kinds = {k.split(":")[0] for k in decisions[i]}
            classes += ["decision", *(f"decision-{k}" for k in sorted(kinds))]
            attrs = f' data-decision="{escape("; ".join(decisions[i]), quote=True)}"'
        sur = s.surprise(token)
        attrs += f' data-s="{sur:.4f}"' if sur is not None else ""
        alts = escape(json.dumps([[a.text, a.prob] for a in token.top]), quote=True)
        spans.append(
            f'<span class="{" ".join(classes)}" data-pos="{i}" data-h="{token.entropy:.4f}"'
            f' data-logp="{token.logp:.4f}" data-logq="{token.logq:.4f}" data-alts="{alts}"{attrs}'
            f' style="--h:{heat(token.entropy, scales["entropy"])};'
            f'--s:{heat(sur, scales["surprise"])}">{_text(token.text)}</span>'
        )
    calls = "".join(
        f'<div class="tool-call"><b>{_text(c.action)}</b> {_text(call_text(c))}'
        f"{_details('observation', c.observation)}</div>"
        for c in tree.tool_calls_of(turn.id)
    )
    prompt = _details("prompt", turn.prompt) if turn.prompt else ""
    return (
        f'<div class="turn" id="turn-{turn.id}" data-turn-index="{turn.index}">'
        f'<div class="turn-head">turn {turn.index} · {len(turn.tokens)} tokens · '
        f"{_text(params_text(turn.params))}</div>{prompt}"
        f'<pre class="tokens">{"".join(spans)}</pre>{calls}</div>'
    )


def _branch_html(tree: RunTree, a: s.Attempt, branch: Branch, scales: dict[str, float],
                 changed: dict[str, range]) -> str:
    turns = "".join(_turn_html(tree, branch, t, scales, changed.get(t.id))
                    for t in tree.own_turns(branch.id))
    tests = "".join(
        f'<div class="test-run {"pass" if r.ok else "fail"}">'
        f"tests: <code>{_text(r.command)}</code> {escape(s.test_line(r))}, exit {r.exit_code}"
        f"{_details('output', r.output_tail)}</div>"
        for r in tree.test_runs_of(branch.id)
    )
    title = f"Attempt #{branch.index} · {escape(s.began(tree, branch, s.signal_name(tree)))}"
    body = f"{turns or '<p>no turns recorded</p>'}{tests}"
    if a.same_as is not None:  # the same code as an earlier attempt: folded away
        return (f'<section class="branch-turns repeat" data-branch="{branch.id}"><details>'
                f"<summary>{title} · same code as #{a.same_as}</summary>{body}</details>"
                "</section>")
    return (f'<section class="branch-turns" data-branch="{branch.id}"><h3>{title}</h3>'
            f"{body}</section>")


def _plot_data(tree: RunTree, scales: dict[str, float], signal: str) -> dict[str, Any]:
    """Per branch: both signals over its whole trajectory, decision positions, cut position."""
    branches = []
    for b in tree.branches:
        entropies: list[float] = []
        surprises: list[float | None] = []
        points: list[int] = []
        cut = None
        for turn in tree.trajectory(b.id):
            if b.cut is not None and turn.index == b.cut.turn:
                cut = len(entropies) + b.cut.position
            points += [len(entropies) + d.position for d in tree.decisions_of(turn.id)]
            entropies += [t.entropy for t in turn.tokens]
            surprises += [s.surprise(t) for t in turn.tokens]
        if b.cut is not None and cut is None:
            cut = len(entropies)  # the cut turn was never recorded (e.g. a killed run)
        points = sorted({p for p in points if p < len(entropies)})
        branches.append({"id": b.id, "index": b.index, "label": current_name(b.strategy), "cut": cut,
                         "entropy": entropies, "surprise": surprises, "decisions": points})
    return {"branches": branches, "max": scales, "signal": signal}


def _table(table_id: str, head: list[str], rows: list[tuple[str, list[Any]]]) -> str:
    """An HTML table; each row is (its attributes, its cells)."""
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    trs = "".join(
        f"<tr {attrs}>{''.join(f'<td>{_text(c)}</td>' for c in cells)}</tr>"
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


def _cut_token(tree: RunTree, branch_id: str | None, turn: int, position: int):
    if branch_id is None:
        return None
    for t in tree.trajectory(branch_id):
        if t.index == turn and position < len(t.tokens):
            return t, t.tokens[position]
    return None


def _mh_html(tree: RunTree, signal: str) -> str:
    if not tree.mh_steps:
        return "<p>no MH steps</p>"
    rows = []
    for st in tree.mh_steps:
        verdict = "accepted" if st.accepted else "rejected"
        found = _cut_token(tree, st.current_branch_id, st.cut_turn, st.cut_position)
        where = f"turn {st.cut_turn}, token {st.cut_position}"
        token, value = "", None
        if found is not None:
            where = s.where(tree, found[0], st.cut_position)
            token, value = visible(repr(found[1].text)), s.signal_value(found[1], signal)
        proposal = (f"#{tree.branch(st.proposal_branch_id).index}"
                    if st.proposal_branch_id else "none")
        logs = [st.log_target, st.log_proposal, st.log_cut_correction, st.log_verifier]
        log_a = "-inf" if st.log_accept <= -1e300 else f"{st.log_accept:.2f}"
        if st.stage == 1:  # a delayed decision: no cut correction computed
            logs[2], log_a = None, f"{log_a} (stage 1)"
        cells = [st.index, proposal, where, token, "" if value is None else f"{value:.2f}",
                 f"{st.cut_entropy:.2f}", *("-" if x is None else f"{x:.2f}" for x in logs), log_a,
                 st.decode_tokens, verdict]
        rows.append((f'class="mh-step {verdict}"', cells))
    head = ["step", "proposal", "cut at", "token", signal, "H", "target", "proposal",
            "cut corr.", "verifier", "log A", "decode tokens", ""]
    return _table("mh-steps", head, rows)


def _localisation_html(tree: RunTree) -> str:
    line = s.localisation_line(tree)
    loc = s.localisation(tree) or {}
    ranking = loc.get("ranking") if isinstance(loc.get("ranking"), list) else []
    rows = [("", [f"{e.get('file')}::{e.get('function')}", e.get("line", ""),
                  f"{e['score']:.2f}" if isinstance(e.get("score"), (int, float)) else ""])
            for e in ranking if isinstance(e, dict)]
    table = _table("ranking", ["suspect", "line", "score"], rows) if rows else ""
    text = escape(line) if line else "not recorded"
    return f'<div id="localisation"><p>{text}</p>{table}</div>'


def _signal_controls(signal: str, has_surprise: bool, scales: dict[str, float]) -> str:
    what = {"surprise": "surprise, -log p of the token under the no-body context (the signature, "
                        "docstring and failing test, not the body)",
            "entropy": "entropy of the next-token distribution"}
    legend = (f'<p id="signal-legend">Heat map and plot: '
              f'<b class="signal-name">{signal}</b>, the signal this run\'s cuts used '
              f'({what[signal]}) <span class="heat-scale"></span> 0 to '
              f'<span class="scale-top">{scales[signal]:.1f}</span> nats; '
              "outlined tokens are decision points; faded tokens are the prefix a retry kept; "
              "green-outlined tokens are the change that fixed the bug.</p>")
    if not has_surprise:
        return legend
    radios = "".join(
        f'<label><input type="radio" name="signal" value="{v}"'
        f'{" checked" if v == signal else ""}> {v}</label>' for v in ("surprise", "entropy"))
    return f'<div id="signal-toggle" class="legend">show: {radios}</div>{legend}'


def render_report(tree: RunTree) -> str:
    """The whole report as one HTML document."""
    run = tree.run
    signal = s.signal_name(tree)
    tokens = [t for turn in tree.turns for t in turn.tokens]
    surprises = [x for x in map(s.surprise, tokens) if x is not None]
    signal = signal if surprises or signal == "entropy" else "entropy"  # not recorded: entropy
    scales = {"entropy": max([2.0, *(t.entropy for t in tokens)]),
              "surprise": max(2.0, min(SURPRISE_CAP, max(surprises, default=0.0)))}
    changes = compare_all(tree)
    attempts = s.attempts(tree)
    fix = s.fixing_attempt(tree)
    by_branch = {b.id: a for a in attempts for b in a.branches}
    changed = _changed_span(tree, fix)
    outcome = visible(run.outcome or "unfinished") + (f" by #{fix.index}" if fix else "")
    meta = {"model": run.model, "strategy": s.what_ran(run), "cuts by": signal, "seed": run.seed,
            "repo": run.repo, "outcome": outcome,
            "created": run.created_at.isoformat(timespec="seconds"),
            "cost": s.cost_line(tree), "compute": s.compute_line(tree) or None}
    meta_html = "".join(f'<dt>{k}</dt><dd{" id=run-cost" if k == "cost" else ""}>{_text(v)}</dd>'
                        for k, v in meta.items() if v is not None)
    settings_html = " · ".join(f"{k} <b>{_text(v)}</b>" for k, v in settings(tree))
    plot = _plot_data(tree, scales, signal)
    sections = "".join(_branch_html(tree, by_branch[b.id], b, scales, changed)
                       for b in tree.branches)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>decision-retry run {run.id}</title><style>{CSS}</style></head>
<body data-signal="{signal}">
<h1>decision-retry run <code>{run.id}</code></h1>
<dl class="meta">{meta_html}</dl>
<p id="settings">{settings_html}</p>
{_details("full config (JSON)", json.dumps(run.config, indent=2, sort_keys=True))}
<h2>Localisation</h2>
{_localisation_html(tree)}
<h2>Attempts</h2>
<p>One line per attempt: how it began (where it cut, by which signal), what it changed, the
MH decision, the tests; identical attempts in a row are one line. Click one to show only its
turns.</p>
<nav id="branch-tree">{_attempts_html(tree, attempts, fix)}</nav>
<h2>The fix</h2>
{_fix_html(tree, fix, signal)}
<h2>Cut signal over position</h2>
{_signal_controls(signal, bool(surprises), scales)}
<div class="legend" id="plot-legend"></div>
<svg id="entropy-plot" viewBox="0 0 1000 260" preserveAspectRatio="none" role="img"
 aria-label="cut signal over token position per branch"></svg>
<h2>Metropolis-Hastings steps</h2>
{_mh_html(tree, signal)}
<h2>Did the retry change strategy?</h2>
{_changes_html(changes, tree)}
<h2>Turns</h2>
{sections}
<div id="token-detail" hidden></div>
<script type="application/json" id="trace-data">{_script_json(plot)}</script>
<script>{JS}</script>
</body></html>
"""

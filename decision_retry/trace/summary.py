"""A run read as a person reads it: outcome and cost, the localisation, then one line per attempt
(where it cut and by which signal, what it changed, the MH decision, the tests), identical
attempts collapsed. `logs show` prints it; the HTML report builds its attempt list from it.

Everything here reads the trace as stored, old stores included: a field a run did not record
is left out of the line, never guessed. Text from the model or the repository goes through
`printable.visible`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from decision_retry.choices import current_name, describe
from decision_retry.tokens import Token
from decision_retry.trace.models import Branch, MHStep, Run, RunTree, TestRun, Turn
from decision_retry.trace.printable import visible


def what_ran(run: Run) -> str:
    """What the run did, in words: the line it recorded (`runs`, chain.describe), else one made
    from its recorded retry config, else its strategy's name; former names read as today's."""
    cfg = run.config if isinstance(run.config, dict) else {}
    if isinstance(cfg.get("runs"), str):
        return cfg["runs"]
    retry = cfg.get("retry")
    if isinstance(retry, dict) and isinstance(retry.get("strategy"), str):
        try:
            return describe(retry)
        except (TypeError, ValueError, AttributeError):  # an odd stored value: the name alone
            pass
    return current_name(run.strategy)


def signal_name(tree: RunTree) -> str:
    """The signal the run's cuts weighted by: `surprise` (its recorded cut_weights say so) or
    `entropy` (every other run, old stores included)."""
    retry = tree.run.config.get("retry") if isinstance(tree.run.config, dict) else None
    weights = retry.get("cut_weights") if isinstance(retry, dict) else None
    return "surprise" if isinstance(weights, str) and weights.startswith("surprise") else "entropy"


def surprise(token: Token) -> float | None:
    """-log p of the token under the no-body context, where the run scored it."""
    return None if token.alt_logp is None else -token.alt_logp


def signal_value(token: Token, signal: str) -> float | None:
    """The token's value of `signal` (None: not recorded)."""
    return surprise(token) if signal == "surprise" else token.entropy


def token_at(turns: list[Turn], turn_index: int, position: int) -> tuple[Turn, Token] | None:
    """The turn with index `turn_index` among `turns` and its token at `position`, if recorded."""
    for turn in turns:
        if turn.index == turn_index and 0 <= position < len(turn.tokens):
            return turn, turn.tokens[position]
    return None


def _patch_call(tree: RunTree, turn: Turn) -> dict[str, Any]:
    """The arguments of the turn's first tool call ({} if none)."""
    calls = tree.tool_calls_of(turn.id)
    return calls[0].arguments if calls else {}


def where(tree: RunTree, turn: Turn, position: int) -> str:
    """`file:line` of a token of a patch reply (the function's start line in the file plus the
    newlines before the token, as `fix` prints it), the file a tools turn names, else
    `turn T token P`."""
    args = _patch_call(tree, turn)
    before = "".join(t.text for t in turn.tokens[:position])
    line = before.count(chr(10))
    functions = [e for e in args.get("functions") or [] if isinstance(e, dict)
                 and isinstance(e.get("line"), int) and isinstance(e.get("reply_line"), int)]
    # a docstring the reply left out and the file kept: the lines below it move down
    kept = [e for e in args.get("kept_docstrings") or [] if isinstance(e, dict)
            and isinstance(e.get("reply_line"), int) and isinstance(e.get("lines"), int)]
    if functions:  # a reply that rewrote several: the last function beginning at or before it
        e = next((e for e in reversed(functions) if e["reply_line"] <= line), functions[0])
        shift = sum(k["lines"] for k in kept if k.get("function") == e.get("function")
                    and e["reply_line"] <= k["reply_line"] < line)
        return f"{visible(str(e.get('file')))}:{e['line'] + line - e['reply_line'] + shift}"
    file = args.get("file") or args.get("path")
    if not isinstance(file, str) or not file:
        return f"turn {turn.index} token {position}"
    start = None
    for entry in args.get("shown") or []:
        if isinstance(entry, dict) and entry.get("file") == file \
                and entry.get("function") == args.get("function"):
            start = entry.get("line")
    if not isinstance(start, int):
        return visible(file)
    shift = sum(k["lines"] for k in kept if k["reply_line"] < line)
    return f"{visible(file)}:{start + line + shift}"


def changed_lines(diff: str) -> list[str]:
    """The removed and added lines of a unified diff, headers left out."""
    return [ln for ln in diff.splitlines()
            if ln[:1] in "+-" and not ln.startswith(("+++ ", "--- "))]


def common_ends(old, new) -> tuple[int, int]:
    """(i, j): the two sequences share their first i and last j items (i + j <= either length)."""
    i = 0
    while i < min(len(old), len(new)) and old[i] == new[i]:
        i += 1
    j = 0
    while j < min(len(old), len(new)) - i and old[-1 - j] == new[-1 - j]:
        j += 1
    return i, j


def _focus(old: str, new: str, context: int = 12) -> tuple[str, str]:
    """Two versions of a line cut down to where they differ, `context` characters either side."""
    i, j = common_ends(old, new)
    start = max(0, i - context)

    def cut(text: str) -> str:
        end = min(len(text), len(text) - j + context)
        return ("…" if start else "") + text[start:end] + ("…" if end < len(text) else "")

    return cut(old), cut(new)


def diff_summary(diff: str, width: int = 64) -> str:
    """The change on one line, `-  if y % 100 == 0: / +  if y % 400 == 0:`; where that is wider
    than `width`, a changed pair of lines is cut to where they differ, and what still does not
    fit ends in `…` with the count of changed lines: the whole diff is the fix's, printed in
    full, or `--full`/`--json`."""
    lines = changed_lines(diff)
    if not lines:
        return "code unchanged"
    flat = [(ln[0], " ".join(ln[1:].split())) for ln in lines]
    text = visible(" / ".join(f"{sign} {body}" for sign, body in flat))
    if len(text) <= width:
        return text
    if len(flat) == 2 and flat[0][0] == "-" and flat[1][0] == "+":
        old, new = _focus(flat[0][1], flat[1][1])
        text = visible(f"- {old} / + {new}")
        if len(text) <= width:
            return text
    note = f" ({len(lines)} lines)"
    return text[: max(8, width - len(note) - 1)] + "…" + note


def _count(n: int) -> str:
    return f"{n:,}"


def test_line(run: TestRun | None) -> str:
    """`4 passed, 1 failed` (and errors, `cached`, seconds) of a test run; `no tests` if none."""
    if run is None:
        return "no tests"
    text = f"{run.passed} passed, {run.failed} failed"
    text += f", {run.errors} errors" if run.errors else ""
    if run.exit_code < 0:
        text += ", did not finish"
    if getattr(run, "cached", False):
        return text + " (cached)"
    return text + f" ({run.duration_s:.1f}s)"


@dataclass(frozen=True)
class Attempt:
    """One line of the summary: consecutive attempts that read the same are one Attempt."""

    branches: tuple[Branch, ...]
    began: str  # fresh, or where it cut ("from #k" kept apart: identical cuts collapse)
    parent: int | None  # index of the attempt it was cut from
    changed: str  # the diff summary, or "same code as #k"
    decision: str  # the MH decision, "" where no MH step judged it
    tests: str
    passed: bool | None
    same_as: int | None  # an earlier attempt with the same code
    diff: str | None  # its whole diff (None: not recorded)

    @property
    def origin(self) -> str:
        """` from #k` (the attempt it was cut from); a collapsed chain, each attempt cut from
        the one before: ` from #k, chained`; "" for a fresh start."""
        if self.parent is None:
            return ""
        chained = len(self.branches) > 1 and self.branches[1].parent_id == self.branches[0].id
        return f" from #{self.parent}" + (", chained" if chained else "")

    @property
    def label(self) -> str:
        """`#3`, or `#4-#9 (6x)` for a collapsed group."""
        first, last = self.branches[0].index, self.branches[-1].index
        n = len(self.branches)
        return f"#{first}" if n == 1 else f"#{first}-#{last} ({n}x)"

    def key(self) -> tuple:
        return (self.began, self.changed, self.decision, self.tests.split(" (")[0], self.passed)


def began(tree: RunTree, branch: Branch, signal: str) -> str:
    """How the attempt began: `fresh`, `from the end`, or `cut FILE:LINE 'x'->'y' (signal v)`."""
    if branch.parent_id is None:
        return "fresh" if branch.strategy != "restart" else "fresh (restart)"
    if branch.cut is None:
        return "from the parent"
    cut = branch.cut
    parent_turns = tree.trajectory(branch.parent_id)
    if cut.position == 0 and all(t.index < cut.turn for t in parent_turns):
        return "from the end (failing output appended)"
    found = token_at(parent_turns, cut.turn, cut.position)
    if found is None:  # the parent's cut turn was not recorded (a killed run)
        return f"cut turn {cut.turn} token {cut.position} (H={cut.entropy:.2f})"
    turn, old = found
    text = f"cut {where(tree, turn, cut.position)} {visible(repr(old.text))}"
    new = token_at(tree.own_turns(branch.id), cut.turn, cut.position)
    if new is not None:
        text += f"→{visible(repr(new[1].text))}"
    value = signal_value(old, signal)
    name = signal if value is not None else "H"
    value = value if value is not None else old.entropy
    return text + f" ({name} {value:.2f})"


def _decision(step: MHStep | None) -> str:
    if step is None:
        return ""
    verdict = "accepted" if step.accepted else "rejected"
    if step.log_accept <= -1e300:  # a local draw outside the support: -inf stored as -max
        return f"{verdict} (outside the support)"
    text = f"{verdict}, log A {step.log_accept:.2f}"
    if step.stage == 1:  # a delayed decision that stopped before the cut correction
        text = f"{verdict} at stage 1, log A {step.log_accept:.2f} before the cut correction"
    if step.approximate:  # a remote engine's top-k: log A is an interval
        lo, hi = step.log_accept_lo, step.log_accept_hi
        text += (" (approximate)" if lo is None or hi is None
                 else f" (approximate: log A in [{lo:.2f}, {hi:.2f}])")
    return text


def _not_chosen(b: Branch, at_cut: dict[tuple, MHStep]) -> str:
    """`not chosen (multiple-try)` for a try another try of the same move won over (a passing
    try ends the run before any step: never "not chosen")."""
    if b.cut is None or b.passed:
        return ""
    step = at_cut.get((b.parent_id, b.cut.turn, b.cut.position))
    return "" if step is None or step.proposal_branch_id is None else "not chosen (multiple-try)"


def attempts(tree: RunTree, diff_width: int = 64) -> list[Attempt]:
    """One Attempt per branch in order, consecutive identical ones merged."""
    signal = signal_name(tree)
    steps = {s.proposal_branch_id: s for s in tree.mh_steps if s.proposal_branch_id}
    # a multiple-try move records one step for its K tries: the others were not chosen
    at_cut = {(s.current_branch_id, s.cut_turn, s.cut_position): s for s in tree.mh_steps}
    first_with: dict[str, int] = {}  # diff -> index of the first attempt that wrote it
    out: list[Attempt] = []
    for b in tree.branches:
        tests = tree.test_runs_of(b.id)
        same_as = first_with.get(b.final_diff) if b.final_diff is not None else None
        if b.final_diff is not None and same_as is None:
            first_with[b.final_diff] = b.index
        if same_as is not None:
            changed = f"same code as #{same_as}"
        elif b.final_diff is None:
            changed = "diff not recorded"
        else:
            changed = diff_summary(b.final_diff, diff_width)
            calls = [c for t in tree.own_turns(b.id) for c in tree.tool_calls_of(t.id)]
            if not changed_lines(b.final_diff) and calls and \
                    calls[-1].observation.startswith("not applied"):
                changed = visible(" ".join(calls[-1].observation.split()))[:diff_width]
        parent = tree.branch(b.parent_id).index if b.parent_id else None
        one = Attempt((b,), began(tree, b, signal), parent, changed,
                      _decision(steps.get(b.id)) or _not_chosen(b, at_cut),
                      test_line(tests[-1] if tests else None),
                      b.passed, same_as, b.final_diff)
        if out and out[-1].key() == one.key():
            prev = out[-1]
            out[-1] = Attempt((*prev.branches, b), prev.began, prev.parent, prev.changed,
                              prev.decision, prev.tests, prev.passed, prev.same_as, prev.diff)
        else:
            out.append(one)
    return out


def attempt_line(a: Attempt) -> str:
    """The attempt on one line."""
    origin = f"{a.origin}:" if a.origin else ""
    parts = [f"{a.label}{origin} {a.began}", a.changed]
    parts += [a.decision] if a.decision else []
    parts.append(a.tests)
    return " | ".join(parts)


def decode_tokens(tree: RunTree) -> int:
    """Decode tokens the run spent as recorded: each MH step's count, and for attempts no step
    counted (the first, restarts, from-end) the tokens of their turns from the cut on."""
    counted = {s.proposal_branch_id for s in tree.mh_steps if s.proposal_branch_id}
    total = sum(s.decode_tokens for s in tree.mh_steps)
    for b in tree.branches:
        if b.id in counted:
            continue
        for t in tree.own_turns(b.id):
            kept = b.cut.position if b.cut is not None and t.index == b.cut.turn else 0
            total += max(0, len(t.tokens) - kept)
    return total


def cost_line(tree: RunTree) -> str:
    """Tokens and test seconds as the trace records them: decode and prompt tokens, test runs
    and their seconds (cached runs counted apart: no command ran)."""
    prompt = sum(t.params.get("input_tokens") or 0 for t in tree.turns
                 if isinstance(t.params.get("input_tokens"), int))
    runs = tree.test_runs
    cached = [r for r in runs if getattr(r, "cached", False)]
    seconds = sum(r.duration_s for r in runs if not getattr(r, "cached", False))
    text = f"{_count(decode_tokens(tree))} decode tokens"
    text += f", {_count(prompt)} prompt tokens" if prompt else ""
    text += f"; {len(runs)} test runs, {seconds:.1f}s"
    return text + (f" ({len(cached)} cached)" if cached else "")


def compute_line(tree: RunTree) -> str:
    """Where the run's seconds went, where it recorded that (newer stores; "" otherwise)."""
    costs = getattr(tree.run, "costs", None)
    if not isinstance(costs, dict) or not costs:
        return ""
    try:
        from decision_retry.costs import costs_line
        return costs_line(costs)
    except (ImportError, AttributeError, TypeError, ValueError):  # a record this version
        parts = [f"{k} {v:.1f}s" for k, v in costs.items() if isinstance(v, (int, float))]
        return ", ".join(parts)  # cannot read: its plain numbers


def localisation(tree: RunTree) -> dict[str, Any] | None:
    """The ranking the run's first turn was built from (None: not recorded)."""
    for turn in tree.turns:
        loc = turn.params.get("localisation")
        if isinstance(loc, dict):
            return loc
        for call in tree.tool_calls_of(turn.id):
            loc = call.arguments.get("localisation")
            if isinstance(loc, dict):
                return loc
    return None


def _name(entry: Any) -> str:
    e = entry if isinstance(entry, dict) else {}
    return visible(f"{e.get('file', '?')}::{e.get('function', '?')}")


def shown(tree: RunTree) -> list[str]:
    """`file::function` of the suspects the first reply was shown."""
    for call in tree.tool_calls:
        entries = call.arguments.get("shown")
        if isinstance(entries, list):
            return [_name(e) for e in entries]
    return []


def localisation_line(tree: RunTree, top: int = 3) -> str | None:
    """`localisation: a.py::f 0.91 (shown), b.py::g 0.20, ...; spectrum 1 failing, 4 passing`."""
    loc, seen = localisation(tree), shown(tree)
    if loc is None and not seen:
        return None
    ranking = loc.get("ranking") if loc and isinstance(loc.get("ranking"), list) else []
    items = []
    for e in ranking[:top]:
        score = e.get("score") if isinstance(e, dict) else None
        item = _name(e) + (f" {score:.2f}" if isinstance(score, (int, float)) else "")
        items.append(item + (" (shown)" if _name(e) in seen else ""))
    items += [f"{s} (shown)" for s in seen if s not in {_name(e) for e in ranking[:top]}]
    more = len(ranking) - min(top, len(ranking))
    text = "localisation: " + (", ".join(items) or "no candidate")
    text += f", +{more} more" if more > 0 else ""
    sp = loc.get("spectrum") if loc else None
    if isinstance(sp, dict):
        text += f"; spectrum {sp.get('failing')} failing, {sp.get('passing')} passing"
        text += "".join(f" ({sp[k]})" for k in ("note", "cut") if sp.get(k))
    return text


def fixing_attempt(tree: RunTree) -> Branch | None:
    """The first attempt whose tests passed (the fix), if any."""
    return next((b for b in tree.branches if b.passed), None)


def header_lines(tree: RunTree) -> list[str]:
    """The run, its outcome and cost, its localisation."""
    run = tree.run
    signal = signal_name(tree)
    head = (f"run {run.id} · {visible(run.model)} · {visible(what_ran(run))} · "
            f"cuts by {signal} · seed {run.seed} · {run.created_at:%Y-%m-%d %H:%M:%S}")
    n = len(tree.branches)
    fix = fixing_attempt(tree)
    outcome = visible(run.outcome or "unfinished")
    outcome += f" by #{fix.index}" if fix is not None else ""
    lines = [head, f"{outcome} after {n} attempt{'s' * (n != 1)} · {cost_line(tree)}"]
    lines += [f"compute: {compute}"] if (compute := compute_line(tree)) else []
    loc = localisation_line(tree)
    return lines + ([loc] if loc else [])

"""Issue 32 item 3: what `fix` prints after "fixed", and what `logs show` prints, hide no byte of
the fix: long lines wrap or stay whole (never cropped), control characters are escaped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from decision_retry.cli.fix import summary
from decision_retry.trace.printable import visible
from tests.helpers import fixture_repo, git

HIDDEN_CALL = 'os.system("true")'
ERASE = "\x1b[1A\x1b[2K"  # cursor up one line, erase it: hides the line above on a terminal
PAD = "x" * 240
# a fix that passes the tests, with a 300-column line ending in a call (never run: `or`
# short-circuits) and a string holding the erase sequence as raw ESC bytes
HOSTILE = [
    ("def celsius_to_fahrenheit(celsius: float) -> float:\n"
    '    """Degrees Celsius to degrees Fahrenheit."""\n'
    f'    import os; _ = "{PAD}" or {HIDDEN_CALL}\n'
    f'    _hide = "{ERASE}"\n'
    "    return celsius * 9 / 5 + 32\n"),
    "```",
]


def cli(*args, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DECISION_RETRY_HOME": str(home), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
           "COLUMNS": "80"}
    env.pop("FORCE_COLOR", None)
    return subprocess.run([sys.executable, "-m", "decision_retry.cli", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300, check=False)


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    """`fix` on the units fixture with a scripted reply that hides code: (result, home, repo)."""
    tmp = tmp_path_factory.mktemp("hostile")
    repo = fixture_repo(tmp, "units")
    script = tmp / "hostile.json"
    script.write_text(json.dumps({"segments": HOSTILE}))
    out = cli("fix", repo, "--model", f"scripted:{script}", home=tmp / "home")
    return out, tmp / "home", repo


def test_fix_summary_shows_the_whole_line_and_no_raw_escape(hostile_run):
    out, _, repo = hostile_run
    assert out.returncode == 0, out.stderr[-3000:]
    assert "fixed after 1 attempt" in out.stderr
    assert HIDDEN_CALL in out.stderr  # the 300-column line is printed whole, not cropped at 80
    assert f'_ = "{PAD}" or {HIDDEN_CALL}' in out.stderr
    assert "\x1b" not in out.stderr and "\x1b" not in out.stdout
    assert '+    _hide = "\\x1b[1A\\x1b[2K"' in out.stderr  # shown as an escape, as git shows ESC
    # what is shown is what the branch holds
    branch = next(ln.split()[5] for ln in out.stderr.splitlines() if "the fix is on branch" in ln)
    held = git(repo, "show", f"{branch}:units.py")
    assert HIDDEN_CALL in held and ERASE in held


def test_logs_show_escapes_and_keeps_whole_lines(hostile_run):
    _, home, _ = hostile_run
    for args in (["latest"], ["latest", "--full"]):
        out = cli("logs", "show", *args, home=home)
        assert out.returncode == 0, out.stderr
        assert "\x1b" not in out.stdout
        assert f'_ = "{PAD}" or {HIDDEN_CALL}' in out.stdout  # one line, whole
        assert '_hide = "\\x1b[1A\\x1b[2K"' in out.stdout


def test_a_terminal_wraps_the_line_and_keeps_every_character(hostile_run):
    """On an 80-column terminal the summary wraps: joined again, every character is there."""
    from decision_retry.agent.runner import FixResult

    out, _home, _ = hostile_run
    diff = out.stderr[out.stderr.index("diff --git"):out.stderr.index("the fix is on branch")]
    result = FixResult(run_id="r" * 20, fixed=True, attempts=1, decode_tokens=2, stop="fixed",
                       diff=diff.replace('\\x1b', "\x1b"))
    console = Console(force_terminal=True, width=80, record=True, color_system=None)
    summary(console, result)
    text = console.export_text()
    lines = text.splitlines()
    assert max(len(ln) for ln in lines) <= 80
    assert HIDDEN_CALL in "".join(lines)  # wrapped (folded), not cropped
    assert "\x1b" not in text and "\\x1b[1A\\x1b[2K" in text


@pytest.mark.parametrize("text, shown", [
    ("a\x1b[2Kb", "a\\x1b[2Kb"),
    ("tab\tand\nnewline stay", "tab\tand\nnewline stay"),
    ("carriage\rreturn", "carriage\\rreturn"),
    ("bidi \u202eevil\u202c", "bidi \\u202eevil\\u202c"),
    ("c1 \x9b and del \x7f", "c1 \\x9b and del \\x7f"),
])
def test_visible_escapes_what_acts_on_a_terminal(text, shown):
    assert visible(text) == shown


def test_the_report_escapes_control_characters_and_keeps_long_lines(hostile_run, tmp_path):
    _, home, _ = hostile_run
    page = tmp_path / "r.html"
    out = cli("report", "latest", "-o", page, home=home)
    assert out.returncode == 0, out.stderr
    html = page.read_text(encoding="utf-8")
    assert "\x1b" not in html
    assert "\\x1b[1A\\x1b[2K" in html  # in the fix's diff and in the tokens
    assert f"{PAD}&quot; or os.system(&quot;true&quot;)" in html  # the whole line, escaped
    assert "white-space: pre-wrap" in html  # long lines wrap in the browser, never scroll away

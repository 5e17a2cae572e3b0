"""Runs recorded by `fix` with the scripted model, read as a person would: `logs show` on a
13-attempt run, and the HTML report rendered by headless chromium (what is visible: the signal
legend, the collapsed attempts, the fix, no raw JSON in turn headers). And an old store."""

from __future__ import annotations

import inspect
import json
import re
import sqlite3
from pathlib import Path

import pytest

from decision_retry.trace import TraceStore
from decision_retry.trace.migrations import MIGRATIONS
from tests.helpers import CHROMIUM, dump_dom, fixture_repo, run_cli

HEAD = 'def celsius_to_fahrenheit(celsius: float) -> float:\n    """'
BODY = ' Celsius to degrees Fahrenheit."""\n    return celsius * 9 / 5 '
DOC = {"choice": {"Degrees": 0.9, "Temperature in degrees": 0.1}}
# the bug is `-`; `*` is another wrong operator: this script can never fix it
NEVER = [HEAD, DOC, BODY, {"choice": {"-": 0.6, "*": 0.4}}, " 32\n", "```"]
FIXABLE = [HEAD, DOC, BODY, {"choice": {"-": 0.6, "+": 0.4}}, " 32\n", "```"]


def runs(home: Path) -> list[dict]:
    out = run_cli("logs", "--json", "-n", "0", home=home)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


# up to ten `fix` runs through the CLI: the tests that read them are marked slow
@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """(home, the 13-attempt run's id, a fixed run's id with at least one rewind)."""
    tmp = tmp_path_factory.mktemp("scripted")
    repo, home = fixture_repo(tmp, "units"), tmp / "home"
    for name, script in (("never", NEVER), ("fixable", FIXABLE)):
        (tmp / f"{name}.json").write_text(json.dumps({"segments": script}))
    out = run_cli("fix", repo, "--model", f"scripted:{tmp / 'never.json'}", "--max-attempts", "13",
                  home=home)
    assert out.returncode == 1, out.stderr[-2000:]
    never = runs(home)[0]["id"]
    for seed in range(8):  # a seed whose first attempt fails and a rewind then fixes it
        out = run_cli("fix", repo, "--model", f"scripted:{tmp / 'fixable.json'}", "--max-attempts",
                      "13", "--seed", str(seed), home=home)
        run = runs(home)[0]
        if out.returncode == 0 and run["branches"] >= 2:
            return home, never, run["id"]
    raise AssertionError("no seed in 0-7 gave a fix after a rewind")


@pytest.mark.slow
def test_logs_show_fits_a_screen_and_says_where_each_attempt_cut(recorded):
    home, never, _ = recorded
    out = run_cli("logs", "show", never, home=home)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) <= 40
    assert "cuts by surprise" in lines[0]
    assert lines[1].startswith("not fixed after 13 attempts · ")
    assert "localisation: units.py::celsius_to_fahrenheit" in out.stdout
    attempts = [ln for ln in lines if ln.startswith("#")]
    covered = []
    for line in attempts:
        first, _, rest = line.partition(" ")
        m = re.fullmatch(r"#(\d+)(?:-#(\d+))?", first.rstrip(":"))
        covered += range(int(m.group(1)), int(m.group(2) or m.group(1)) + 1)
        if m.group(1) == "0":
            assert "fresh" in rest
        else:  # where it cut, the token, the signal and its value; what changed; tests
            assert re.search(r"cut units\.py:\d+ '.+'→'.+' \(surprise \d+\.\d\d\)", rest), line
            assert re.search(r"\| (same code as #\d+|- .* / \+ .*|[-+] .*… \(\d+ lines\)|"
                             r"code unchanged) \|", rest), line
            assert re.search(r"\| (accepted|rejected)", rest), line
        assert re.search(r"\d+ passed, \d+ failed", rest), line
    assert covered == list(range(13))  # every attempt, collapsed or not


@pytest.fixture(scope="module")
def report_dom(recorded, tmp_path_factory):
    home, never, fixed = recorded
    tmp = tmp_path_factory.mktemp("dom")
    doms = {}
    for name, run in (("never", never), ("fixed", fixed)):
        page = tmp / f"{name}.html"
        out = run_cli("report", run, "-o", page, home=home)
        assert out.returncode == 0, out.stderr
        doms[name] = dump_dom(page, tmp / "profile")
    return doms


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed")
@pytest.mark.slow
def test_report_shows_the_signal_the_run_cut_by(report_dom):
    dom = report_dom["never"]
    assert dom.select("body")[0].attrs["data-signal"] == "surprise"
    [legend] = [e for e in dom.elements if e.attrs.get("id") == "signal-legend"]
    assert "the signal this run's cuts used" in legend.text
    assert [e.text for e in dom.select("b", "signal-name")] == ["surprise"]
    radios = [e for e in dom.select("input", inside="signal-toggle")]
    assert [(r.attrs["value"], "checked" in r.attrs) for r in radios] == [
        ("surprise", True), ("entropy", False)]
    header = [e.text for e in dom.select("th", inside="mh-steps")]
    assert "surprise" in header and "token" in header


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed")
@pytest.mark.slow
def test_report_collapses_identical_attempts(report_dom):
    dom = report_dom["never"]
    nodes = dom.select("li", "branch-node", inside="branch-tree")
    ids = [i for n in nodes for i in n.attrs["data-branches"].split()]
    assert len(ids) == len(set(ids)) == 13  # every attempt once, some lines standing for several
    repeats = dom.select("section", "repeat")
    # two wrong operators and two docstrings: at most 4 distinct codes, the rest fold away
    assert len(repeats) >= 13 - 4
    assert all(e.tag == "details" and "open" not in e.attrs
               for r in repeats for e in dom.elements if r in e.ancestors and e.tag == "details")
    same = [e.text for e in dom.select("span", "change-info")]
    assert any(t.startswith("same code as #") for t in same)
    for node in nodes:
        if "collapsed" in node.classes:
            n = len(node.attrs["data-branches"].split())
            assert f"({n}x)" in next(e.text for e in dom.select("span", "branch-label")
                                 if node in e.ancestors)


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed")
@pytest.mark.slow
def test_turn_headers_and_tool_lines_are_words_not_json(report_dom):
    for dom in report_dom.values():
        heads = [e.text for e in dom.select("div", "turn-head")]
        assert heads and all("{" not in h and '"' not in h for h in heads), heads[:3]
        assert all("temperature" in h and "prompt tokens" in h for h in heads)
        calls = [e for e in dom.select("div", "tool-call")]
        assert calls and all("{" not in c.text for c in calls)
        [cost] = [e for e in dom.elements if e.attrs.get("id") == "run-cost"]
        assert "decode tokens" in cost.text


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed")
@pytest.mark.slow
def test_report_marks_the_change_that_fixed_the_bug(report_dom):
    dom = report_dom["fixed"]
    [fix] = dom.select("li", "fix", inside="branch-tree")
    assert fix.attrs["data-passed"] == "true"
    assert "the fix" in [e.text for e in dom.select("span", "fix-mark")]
    cut = next(e.text for e in dom.select("span", "cut-info") if fix in e.ancestors)
    assert re.fullmatch(r"cut units\.py:6 '.+'→'\+' \(surprise \d+\.\d\d\)", cut), cut
    added = [e.text for e in dom.select("span", "add", inside="the-fix")]
    assert "+    return celsius * 9 / 5 + 32" in added
    changed = [e.text for e in dom.select("span", "fix-change")]
    assert changed and "+" in changed


def test_an_old_store_still_shows(tmp_path):
    """A store from before the later migrations (and a run from before cut weights, surprise
    scores, cached tests and costs were recorded): `logs show` and `report` read it."""
    from tests.trace.sample_run import record_sample

    home = tmp_path / "home"
    with TraceStore.open(home) as store:
        sample = record_sample(store)
    db = sqlite3.connect(home / "traces.db")
    for name, fn in MIGRATIONS[1:]:  # undo every migration after m001
        added = re.findall(r"ALTER TABLE (\w+) ADD COLUMN (\w+)", inspect.getsource(fn))
        for table, column in added:
            db.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        for table in re.findall(r"CREATE TABLE (\w+)", inspect.getsource(fn)):
            db.execute(f"DROP TABLE {table}")
        db.execute("DELETE FROM _migrations WHERE name = ?", (name,))
    db.commit()
    db.close()
    out = run_cli("logs", "show", sample.run_id, home=home)
    assert out.returncode == 0, out.stderr
    assert "cuts by entropy" in out.stdout and "#2 from #0: cut turn 0 token 2" in out.stdout
    assert len(out.stdout.splitlines()) == 6
    page = tmp_path / "r.html"
    assert run_cli("report", sample.run_id, "-o", page, home=home).returncode == 0
    assert 'data-signal="entropy"' in page.read_text()


TOGGLE = """<script>
  var radio = document.querySelector('#signal-toggle input[value="entropy"]');
  radio.checked = true;
  radio.dispatchEvent(new Event("change"));
</script></body>"""


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed")
@pytest.mark.slow
def test_the_toggle_switches_the_heat_map_and_plot_to_entropy(recorded, tmp_path):
    home, never, _ = recorded
    page = tmp_path / "r.html"
    assert run_cli("report", never, "-o", page, home=home).returncode == 0
    before = dump_dom(page, tmp_path / "profile")
    assert before.select("html")[0].attrs.get("data-rendered") == "true"  # the script ran
    page.write_text(page.read_text(encoding="utf-8").replace("</body>", TOGGLE), encoding="utf-8")
    after = dump_dom(page, tmp_path / "profile")
    assert after.select("body")[0].attrs["data-signal"] == "entropy"
    assert [e.text for e in after.select("b", "signal-name")] == ["entropy"]
    label = [e.text for e in after.select("text", inside="entropy-plot")]
    assert "entropy (nats)" in label and "surprise (nats)" not in label
    assert "surprise (nats)" in [e.text for e in before.select("text", inside="entropy-plot")]

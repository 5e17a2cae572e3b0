"""`decision-retry logs` and `report` through a real subprocess against a real store."""

from __future__ import annotations

import json

import click
import pytest

from decision_retry.cli.main import main
from decision_retry.trace import Recorder, TraceStore
from tests.helpers import run_cli
from tests.trace.sample_run import record_sample


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A store with an older unfinished run and the sample run."""
    path = tmp_path_factory.mktemp("home")
    with TraceStore.open(path) as store:
        Recorder(store).start_run(model="older", strategy="restart", seed=1)
        sample = record_sample(store)
    return path, sample


def test_logs_lists_runs_newest_first(home):
    path, sample = home
    out = run_cli("logs", home=path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith(sample.run_id)
    assert "solved" in lines[0] and "3 branches" in lines[0] and "unfinished" in lines[1]
    assert run_cli("logs", "list", home=path).stdout == out.stdout  # `logs` = `logs list`


def test_logs_n_and_json(home):
    path, sample = home
    out = run_cli("logs", "-n", "1", "--json", home=path)
    assert out.returncode == 0, out.stderr
    runs = json.loads(out.stdout)
    assert [r["id"] for r in runs] == [sample.run_id]
    assert runs[0]["outcome"] == "solved" and runs[0]["branches"] == 3 and runs[0]["seed"] == 7
    assert len(json.loads(run_cli("logs", "--json", home=path).stdout)) == 2


def test_logs_show_prints_one_line_per_attempt(home):
    path, sample = home
    out = run_cli("logs", "show", sample.run_id[:8], home=path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    # recorded as entropy-cut, read with today's name
    assert lines[0].startswith(f"run {sample.run_id} · scripted · rewind · cuts by entropy")
    assert lines[1].startswith("solved by #1 after 3 attempts · 31 decode tokens; 3 test runs")
    attempts = [ln for ln in lines if ln.startswith("#")]
    assert attempts == [
        "#0 fresh | - return a + b / + return a - b | 3 passed, 1 failed (0.8s)",
        ("#1 from #0: cut turn 1 token 6 ' -'→' +' (entropy 3.10) | code unchanged"
        " | accepted, log A 1.20 | 4 passed, 0 failed (0.7s)"),
        ("#2 from #0: cut turn 0 token 2 'calc'→'tests' (entropy 2.40) | same code as #0"
        " | rejected, log A -2.00 | 3 passed, 1 failed (0.8s)"),
    ]
    assert "--full" in lines[-1] and len(lines) == 6


def test_logs_show_full_prints_the_tree(home):
    path, sample = home
    out = run_cli("logs", "show", sample.run_id[:8], "--full", home=path)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for branch in sample.branches:
        assert branch.id in text
    assert "rewind from #0 turn 1 token 6 (H=3.10) → #1" in text
    assert "rewind from #0 turn 0 token 2 (H=2.40) → #2" in text
    assert "decision tool:file @2 'calc/ops.py'" in text
    assert "decision entropy @6 ' -' H=3.10" in text
    assert "tests 'pytest -q': 4 passed, 0 failed" in text
    assert "change: edit distance 2" in text and "tool choice changed" in text
    assert "MH steps" in text and "accepted" in text and "rejected" in text
    assert "</script><b>x</b>" in text  # token text printed as is, not eaten as markup


def test_logs_show_json(home):
    path, sample = home
    out = run_cli("logs", "show", "latest", "--json", home=path)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["run"]["id"] == sample.run_id
    assert [b["id"] for b in data["branches"]] == [b.id for b in sample.branches]
    assert len(data["turns"]) == 5 and len(data["mh_steps"]) == 2
    assert [c["edit_distance"] for c in data["changes"]] == [2, data["changes"][1]["edit_distance"]]
    assert data["changes"][1]["tool_changed"] is True


@pytest.mark.parametrize("args", [["logs", "show", "nope"], ["report", "nope", "-o", "x.html"]])
def test_unknown_run_is_one_line_and_exit_2(home, args):
    path, _ = home
    out = run_cli(*args, home=path)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and out.stderr.startswith(
        "error: no run matches 'nope'"
    )
    assert "Traceback" not in out.stderr


def test_logs_path_follows_env_and_flag(home, tmp_path):
    path, _ = home
    assert run_cli("logs", "path", home=path).stdout.strip() == str(path / "traces.db")
    flagged = run_cli("logs", "path", "--home", str(tmp_path / "other"), home=path)
    assert flagged.stdout.strip() == str(tmp_path / "other" / "traces.db")


def test_home_flag_on_list(home, tmp_path):
    path, _ = home
    out = run_cli("logs", "--home", str(tmp_path / "empty"), "--json", home=path)
    assert out.returncode == 0 and json.loads(out.stdout) == []


def test_report_writes_a_file(home, tmp_path):
    path, sample = home
    target = tmp_path / "r.html"
    out = run_cli("report", sample.run_id[:10], "-o", str(target), home=path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(target)
    assert target.read_text().startswith("<!doctype html>")


def test_every_option_is_documented():
    def walk(command: click.Command):
        yield command
        for sub in getattr(command, "commands", {}).values():
            yield from walk(sub)

    for command in walk(main.commands["logs"]):
        assert command.help, command.name
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{command.name} {param.opts}"
    assert all(p.help for p in main.commands["report"].params if isinstance(p, click.Option))

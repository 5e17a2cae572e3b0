"""`fix --time-limit`: the run stops between attempts once it has used that many CPU seconds."""

from __future__ import annotations

import json

import pytest

from tests.helpers import SAME_REPLY, fixture_repo, git, run_cli, write

BURN = "def test_burn():\n    total = 0\n    for i in range(3_000_000):\n        total += i\n"


@pytest.mark.slow
def test_time_limit_stops_the_run_and_records_why(tmp_path):
    repo = fixture_repo(tmp_path, "units")
    write(repo / "tests" / "test_burn.py", BURN)  # CPU in every test run (a sleep would use none)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "burn")
    script = tmp_path / "same.json"
    script.write_text(json.dumps({"segments": SAME_REPLY}))
    home = tmp_path / "home"
    proc = run_cli("fix", repo, "--model", f"scripted:{script}", "--strategy", "restart",
                   "--no-test-cache", "--max-attempts", "60", "--time-limit", "3s",
                   "--sandbox", "none", "--json", home=home)
    assert proc.returncode == 1, proc.stderr  # ran, not fixed
    result = json.loads(proc.stdout)
    assert result["stop"] == "time limit" and 1 <= result["attempts"] < 60
    costs = result["costs"]
    assert costs["cpu_s"] >= 3.0 and costs["test_runs"] == result["attempts"] + 1
    assert costs["cached_runs"] == 0  # --no-test-cache
    shown = json.loads(run_cli("logs", "--json", home=home).stdout)
    assert shown[0]["id"] == result["run_id"]


def test_a_bad_time_limit_is_one_line_and_exit_2(tmp_path):
    repo = fixture_repo(tmp_path, "units")
    for bad in ("5x", "-3s", "0", "soon"):
        proc = run_cli("fix", repo, "--model", "scripted:none.json", "--time-limit", bad,
                       home=tmp_path / "home")
        assert proc.returncode == 2, (bad, proc.stderr)
        assert "time-limit" in proc.stderr and "Traceback" not in proc.stderr

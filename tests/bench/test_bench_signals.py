"""`decision-retry bench` stopped by SIGTERM: no test or coverage process of it survives, the
exit code says interrupted, and the cells stored before the signal stay.

The suite: `a_pass` (its tests pass: one quick bad-input cell) and `b_slow` (its test starts a
child that sleeps, its command line carrying a marker unique to the test). The bench runs with
bubblewrap hidden from PATH, so the tests run in the `unshare` fallback: there a test process
outlives a bench killed without cleanup (bubblewrap's --die-with-parent would hide that).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from decision_retry.bench.harness import CELLS_FILE
from tests.helpers import no_bwrap_path, ours, wait_for, write

SLOW_TEST = """\
import subprocess
import sys


def test_slow():
    subprocess.run([sys.executable, "-c", "import time; time.sleep(900)", {marker!r}])
    assert False
"""


def suite(root: Path, marker: str) -> Path:
    """Two repositories: one whose tests pass, one whose test sleeps in a marked child."""
    for name in ("a_pass", "b_slow"):
        write(root / name / "calc.py", "def add(a, b):\n    return a + b\n")
    write(root / "a_pass/tests/test_calc.py",
          "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n")
    write(root / "b_slow/tests/test_calc.py", SLOW_TEST.format(marker=marker))
    for name in ("a_pass", "b_slow"):
        write(root / name / "pyproject.toml", '[tool.pytest.ini_options]\npythonpath = ["."]\n')
    return root


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc (Linux)")
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.slow
def test_sigterm_leaves_no_test_process_and_keeps_the_stored_cells(tmp_path, workers):
    marker = f"dr-bench-sigterm-{uuid.uuid4().hex}"
    cases = suite(tmp_path / "suite", marker)
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"segments": ["def add(a, b):\n    return a + b\n", "```"]}))
    tmpdir = tmp_path / "tmp"  # every clone and bench copy of this run lies under it
    tmpdir.mkdir()
    out = tmp_path / "out"
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
           "PATH": no_bwrap_path(tmp_path)}
    cmd = [sys.executable, "-m", "decision_retry.cli", "bench", str(cases), "--strategies",
           "entropy-cut", "--seeds", "0", "--budget-tokens", "30", "--max-attempts", "2",
           "--model", f"scripted:{script}", "--workers", str(workers), "--test-timeout", "600",
           "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # its own session: see 3)
    try:
        # 1) a_pass's cell stored, b_slow's test running (its marked child alive)
        wait_for(lambda: (out / CELLS_FILE).is_file() and "a_pass" in (out / CELLS_FILE)
                 .read_text() and any(marker in _cmdline(p) for p in ours(marker, tmpdir)),
                 600, "a stored cell and a running test")
        # 2) SIGTERM to the bench process only, as `kill PID` or a supervisor sends it
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 130, stderr
        assert "interrupted by SIGTERM" in stderr and "Traceback" not in stderr, stderr
        # 3) nothing of its session survives (the kill is synchronous; a short grace for the
        # kernel to reap a PID namespace)
        try:
            wait_for(lambda: not ours(marker, tmpdir, proc.pid), 20, "no process left")
        except AssertionError:
            left = {p: _cmdline(p) for p in ours(marker, tmpdir, proc.pid)}
            raise AssertionError(f"processes survived the bench: {left}") from None
        # 4) the stored cell stays; the interrupted one is not recorded as a result
        cells = [json.loads(line) for line in (out / CELLS_FILE).read_text().splitlines()]
        assert [c["repo"] for c in cells] == ["a_pass"]
        assert cells[0]["error_kind"] == "bad-input" and "already pass" in cells[0]["error"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in ours(marker, tmpdir, proc.pid):  # what a failing run left: ours, by id
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""

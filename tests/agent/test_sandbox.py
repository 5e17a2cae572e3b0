"""The sandbox, tested by trying to break each guarantee from inside a real test run.

Every attack is a real pytest file run by `Workspace.run_tests` in a private clone of a real git
repository; the attack's test *passes* when the attack fails, and the host checks the damage
itself (files, processes, the user's repository) afterwards.
"""

from __future__ import annotations

import os
import socket
import textwrap
import threading
import time
from pathlib import Path

import pytest
from test_workspace import repo_state, sh_git, write

from decision_retry.agent import sandbox as sandboxes
from decision_retry.agent.testrun import run_tests
from decision_retry.agent.workspace import Workspace
from decision_retry.errors import BadInput

FAST = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
CMD = "python -m pytest -q -p no:cacheprovider"

needs_bwrap = pytest.mark.skipif(
    sandboxes.bwrap_problem() is not None,
    reason=f"bubblewrap cannot run here: {sandboxes.bwrap_problem()}")


def attack_repo(tmp_path: Path, test_code: str) -> Path:
    """A user's repository whose test file is `test_code` (the attack)."""
    repo = tmp_path / "user"
    repo.mkdir()
    sh_git(repo, "init", "-q")
    write(repo / "units.py", "def f():\n    return 1\n")
    write(repo / "test_attack.py", textwrap.dedent(test_code))
    sh_git(repo, "add", "-A")
    sh_git(repo, "commit", "-q", "-m", "initial")
    return repo


def run_attack(repo: Path, sandbox: sandboxes.Sandbox, **kw):
    with Workspace(repo, "attack", sandbox=sandbox) as ws:
        result = ws.run_tests(CMD, 60, env=FAST, **kw)
        root = ws.root
    return result, root


@pytest.fixture
def bwrap() -> sandboxes.Sandbox:
    return sandboxes.resolve("bwrap")


@needs_bwrap
def test_writes_outside_the_clone_fail(tmp_path: Path, bwrap) -> None:
    home = Path(os.environ.get("HOME", "/root"))
    targets = [tmp_path / "outside.txt", home / "decision-retry-sandbox-probe.txt",
               Path("/var/tmp/decision-retry-sandbox-probe.txt")]
    repo = attack_repo(tmp_path, f"""
        import pytest
        TARGETS = {[str(t) for t in targets]!r}

        @pytest.mark.parametrize("target", TARGETS)
        def test_write_outside(target):
            try:
                with open(target, "w") as f:
                    f.write("escaped")
            except OSError:
                return
            # a private /tmp, /var/tmp or home: the write lands in the sandbox, not on the host

        def test_write_inside():
            with open("inside.txt", "w") as f:
                f.write("fine")
    """)
    for t in targets:  # left by an earlier unsandboxed run of this attack, if any
        t.unlink(missing_ok=True)
    before = repo_state(repo)
    result, _ = run_attack(repo, bwrap)
    assert result.passed == 4 and result.network_isolated, result.output_tail
    for t in targets:
        assert not t.exists(), t
    assert repo_state(repo) == before


@needs_bwrap
def test_the_users_checkout_cannot_be_reached_through_git(tmp_path: Path, bwrap) -> None:
    """Defect 1: `<git common dir>/../units.py` was the user's file, through the shared .git."""
    user_file = tmp_path / "user" / "units.py"
    repo = attack_repo(tmp_path, f"""
        import os, subprocess

        def test_through_git():
            out = subprocess.run(["git", "rev-parse", "--git-common-dir"], capture_output=True,
                                 text=True)
            if out.returncode == 0:  # no repository in the clone's tree: git finds nothing
                target = os.path.join(out.stdout.strip(), "..", "units.py")
                try:
                    open(target, "w").write("pwned through .git")
                except OSError:
                    pass

        def test_by_absolute_path():
            try:
                open({str(user_file)!r}, "w").write("pwned by path")
            except OSError:
                pass
            assert not os.path.exists(".git")
    """)
    before = repo_state(repo)
    result, _ = run_attack(repo, bwrap)
    assert result.passed == 2, result.output_tail
    assert user_file.read_text() == "def f():\n    return 1\n"
    assert repo_state(repo) == before


@needs_bwrap
def test_secret_variables_are_not_inherited(tmp_path: Path, bwrap,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer s3cr3t-otlp")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-aws")
    monkeypatch.setenv("MY_PASSED_VAR", "allowed")
    repo = attack_repo(tmp_path, """
        import os

        def test_env():
            leaked = [k for k, v in os.environ.items() if "s3cr3t" in v]
            print("LEAKED", leaked)
            assert leaked == []
            assert os.environ.get("MY_PASSED_VAR") == "allowed"  # --pass-env lets it through
            assert "PATH" in os.environ
    """)
    result, _ = run_attack(repo, sandboxes.resolve("bwrap", pass_env=["MY_PASSED_VAR"]))
    assert result.passed == 1, result.output_tail
    # the same environment rules hold without bubblewrap
    result, _ = run_attack(repo, sandboxes.resolve("none", pass_env=["MY_PASSED_VAR"]))
    assert result.passed == 1, result.output_tail


@pytest.fixture
def host_server():
    """A TCP server on the host's loopback that counts connections."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    hits: list[int] = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            hits.append(1)
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1], hits
    stop.set()
    t.join()
    srv.close()


@needs_bwrap
def test_the_network_is_unreachable(tmp_path: Path, bwrap, host_server) -> None:
    port, hits = host_server
    repo = attack_repo(tmp_path, f"""
        import socket

        def test_host_loopback_is_not_ours():
            s = socket.socket()
            s.settimeout(5)
            try:
                s.connect(("127.0.0.1", {port}))
            except OSError:
                return
            raise AssertionError("reached the host's server")

        def test_own_loopback_works():
            srv = socket.socket()
            srv.bind(("127.0.0.1", 0))
            srv.listen(1)
            c = socket.create_connection(srv.getsockname(), timeout=5)
            c.close()

        def test_outside_is_unreachable():
            try:
                socket.create_connection(("1.1.1.1", 53), timeout=3)
            except OSError:
                return
            raise AssertionError("reached the internet")
    """)
    result, _ = run_attack(repo, bwrap)
    assert result.passed == 3, result.output_tail
    assert hits == []


def _processes_with(token: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if token.encode() in cmd:
            found.append(int(pid))
    return found


ORPHAN_TEST = """
    import subprocess, sys

    def test_leave_orphans():
        code = "import time; time.sleep(300)  # {token}"
        for _ in range(3):
            subprocess.Popen([sys.executable, "-c", code], start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.Popen(["sh", "-c", "setsid sh -c 'sleep 300; : {token}' &"])
"""


def _gone(token: str) -> bool:
    for _ in range(100):  # the kernel tears the namespace down asynchronously
        if not _processes_with(token):
            return True
        time.sleep(0.1)
    return False


@needs_bwrap
def test_no_orphans_survive_the_run(tmp_path: Path, bwrap) -> None:
    """Defect 6: `setsid` children outlived every run."""
    token = f"orphan-{os.getpid()}-{time.monotonic_ns()}"
    repo = attack_repo(tmp_path, ORPHAN_TEST.format(token=token))
    result, _ = run_attack(repo, bwrap)
    assert result.passed == 1, result.output_tail
    assert _gone(token), _processes_with(token)


def test_no_orphans_without_bubblewrap_where_unshare_works(tmp_path: Path) -> None:
    if not sandboxes.unshare_works():
        pytest.skip("unprivileged user namespaces are not available: orphans can survive")
    token = f"orphan-none-{os.getpid()}-{time.monotonic_ns()}"
    repo = attack_repo(tmp_path, ORPHAN_TEST.format(token=token))
    result, _ = run_attack(repo, sandboxes.resolve("none"))
    assert result.passed == 1 and result.network_isolated, result.output_tail
    assert _gone(token), _processes_with(token)


@needs_bwrap
def test_a_timeout_kills_everything_in_the_sandbox(tmp_path: Path, bwrap) -> None:
    token = f"hang-{os.getpid()}-{time.monotonic_ns()}"
    repo = attack_repo(tmp_path, f"""
        import subprocess, sys, time

        def test_hang():
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)  # {token}"],
                             start_new_session=True)
            time.sleep(300)
    """)
    with Workspace(repo, "hang", sandbox=bwrap) as ws:
        result = ws.run_tests(CMD, 3, env=FAST)
    assert result.timed_out and result.exit_code is None
    assert _gone(token), _processes_with(token)


@needs_bwrap
def test_the_interpreter_and_packages_stay_readable(tmp_path: Path, bwrap) -> None:
    """The home directory is private, but the Python that runs the tests is bound back."""
    repo = attack_repo(tmp_path, """
        import os, sys, pydantic

        def test_python_works():
            assert os.path.exists(sys.executable)
            home = os.environ["HOME"]
            assert os.path.isdir(home) and os.access(home, os.W_OK)
            open(os.path.join(home, "cache-file"), "w").write("ok")  # a private, writable home
    """)
    result, _ = run_attack(repo, bwrap)
    assert result.passed == 1, result.output_tail


def test_bwrap_on_request_fails_with_one_line_when_it_cannot_run(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sandboxes.bwrap_problem.cache_clear()
    monkeypatch.setenv("PATH", "/nonexistent")
    try:
        with pytest.raises(BadInput, match="bubblewrap cannot run here: bwrap is not installed"):
            sandboxes.resolve("bwrap")
        fallback = sandboxes.resolve("auto")
    finally:
        sandboxes.bwrap_problem.cache_clear()
    assert fallback.kind == "none"
    assert "bubblewrap cannot run: bwrap is not installed" in fallback.note
    assert "\n" not in fallback.note and "environment allow-list" in fallback.note


def test_unknown_sandbox_is_bad_input() -> None:
    with pytest.raises(BadInput, match="unknown sandbox"):
        sandboxes.resolve("docker")


def test_plain_run_tests_keeps_the_inherited_environment(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a sandbox (library use on trusted code) the environment is inherited."""
    monkeypatch.setenv("DR_PLAIN_VAR", "seen")
    write(tmp_path / "test_env.py", "import os\n\ndef test_env():\n"
          "    assert os.environ['DR_PLAIN_VAR'] == 'seen'\n")
    result = run_tests(CMD, tmp_path, 60, env=FAST)
    assert result.passed == 1, result.output_tail

"""The sandbox, tested by trying to break each guarantee from inside a real test run.

Every attack is a real pytest file run by `Workspace.run_tests` in a private clone of a real git
repository; the attack's test *passes* when the attack fails, and the host checks the damage
itself (files, processes, the user's repository) afterwards.
"""

from __future__ import annotations

import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from decision_retry.errors import BadInput
from decision_retry.repo import sandbox as sandboxes
from decision_retry.repo.testrun import run_tests
from decision_retry.repo.workspace import Workspace
from tests.helpers import fix_config, fixture_repo, make_repo, repo_state, write

FAST = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
CMD = "python -m pytest -q -p no:cacheprovider"

needs_bwrap = pytest.mark.skipif(
    sandboxes.bwrap_problem() is not None,
    reason=f"bubblewrap cannot run here: {sandboxes.bwrap_problem()}")


def attack_repo(tmp_path: Path, test_code: str) -> Path:
    """A user's repository whose test file is `test_code` (the attack)."""
    return make_repo(tmp_path / "user", {"units.py": "def f():\n    return 1\n",
                                         "test_attack.py": textwrap.dedent(test_code)})


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
@pytest.mark.slow
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


# -- root: no capabilities, no way back out (issue 32, item 1) ---------------------------------

ESCAPE_TEST = """
    import errno, fcntl, os, subprocess, termios

    def test_no_capabilities():
        status = open("/proc/self/status").read()
        cap_eff = status.split("CapEff:")[1].split()[0]
        assert int(cap_eff, 16) == 0, cap_eff
        assert int(status.split("CapBnd:")[1].split()[0], 16) == 0

    def test_not_root_inside():
        assert os.getuid() != 0 and os.geteuid() != 0

    def run(*cmd):
        return subprocess.run(cmd, capture_output=True, text=True).returncode

    def test_no_mount_namespace():
        assert run("unshare", "-m", "true") != 0

    def test_no_nested_user_namespace():
        assert run("unshare", "-Urm", "true") != 0
        assert run("unshare", "-Ur", "sh", "-c", "umount -l /tmp") != 0

    def test_no_mounts():
        assert run("mount", "--bind", "/tmp", "/mnt") != 0
        assert run("mount", "-o", "remount,rw", "/") != 0
        assert run("umount", "-l", "/tmp") != 0

    def test_no_terminal_injection():
        try:
            fcntl.ioctl(1, termios.TIOCSTI, b"x")
        except OSError as err:
            assert err.errno == errno.EPERM, err  # the seccomp filter, not ENOTTY
        else:
            raise AssertionError("TIOCSTI went through")

    def test_no_writes_outside():
        for target in {targets!r}:
            try:
                open(target, "w").write("escaped")
            except OSError:
                continue

    def test_the_escape_of_issue_32():
        # a mount namespace, the home mask lazily unmounted, the host's home remounted writable
        script = ("umount -l {home}; mount --bind {home} {home}; "
                  "mount -o remount,bind,rw {home}; echo pwned > {chain}")
        subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True)

    def test_the_run_directory_and_the_repository_are_hidden():
        parent = os.path.dirname(os.getcwd())
        assert sorted(os.listdir(parent)) == [os.path.basename(os.getcwd())]  # no owner.json
        assert not os.path.exists({repo!r} + "/.git")
"""


@needs_bwrap
def test_root_keeps_no_capability_and_cannot_escape(tmp_path: Path, bwrap) -> None:
    """Issue 32 item 1: as uid 0 the sandbox kept CAP_SYS_ADMIN; `unshare -m`, a lazy unmount of
    the /tmp and HOME masks and a bind mount planted a hook in the user's repository."""
    home = Path(os.environ.get("HOME", "/root"))
    repo_dir = tmp_path / "user"
    hook = repo_dir / ".git" / "hooks" / "post-checkout"
    targets = [str(home / "decision-retry-root-probe.txt"), str(hook),
               str(repo_dir / "units.py")]
    chain = home / "decision-retry-chain-probe.txt"
    repo = attack_repo(tmp_path, ESCAPE_TEST.format(targets=targets, repo=str(repo_dir),
                                                    home=home, chain=chain))
    for probe in (Path(targets[0]), chain):
        probe.unlink(missing_ok=True)
    before = repo_state(repo)
    try:
        result, _ = run_attack(repo, bwrap)
        assert result.passed == 9 and result.ok, result.output_tail
        assert not Path(targets[0]).exists() and not hook.exists() and not chain.exists()
        assert repo_state(repo) == before
    finally:
        chain.unlink(missing_ok=True)


NOBODY = 65534


def _as_nobody(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY),
                           "--clear-groups", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=300, check=False, env={**os.environ, "HOME": str(cwd), "TMPDIR": str(cwd)})


@pytest.fixture
def nobody_dir():
    """A directory uid 65534 owns, or a skip where a process of that uid cannot run our Python."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to start a process as uid 65534")
    d = Path(tempfile.mkdtemp(prefix="dr-nobody-"))
    os.chown(d, NOBODY, NOBODY)
    try:
        probe = _as_nobody([sys.executable, "-c", ("import decision_retry, pytest, subprocess, "
                            "sys; subprocess.run([sys.executable, '-c', ''], check=True)")], d)
        if probe.returncode != 0:
            pytest.skip(f"uid {NOBODY} cannot run {sys.executable} with decision_retry here: "
                        f"{probe.stderr.strip().splitlines()[-1:]}")
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@needs_bwrap
def test_a_user_keeps_no_capability_either(nobody_dir: Path) -> None:
    """The same attack from a sandbox started by an ordinary user (uid 65534)."""
    repo = nobody_dir / "repo"
    repo.mkdir()
    (repo / "test_escape.py").write_text(textwrap.dedent(ESCAPE_TEST.format(
        targets=[str(nobody_dir / "escaped.txt")], repo=str(nobody_dir / "nowhere"),
        home=nobody_dir, chain=nobody_dir / "chain.txt")).replace(
        "assert os.getuid() != 0 and os.geteuid() != 0", "pass"))
    for p in (repo, repo / "test_escape.py"):
        os.chown(p, NOBODY, NOBODY)
    code = ("import sys; from pathlib import Path; from decision_retry.repo import sandbox; "
            "from decision_retry.repo.testrun import run_tests; "
            f"r = run_tests({CMD!r}, Path({str(repo)!r}), 120, env={FAST!r}, "
            "sandbox=sandbox.resolve('bwrap')); print(r.passed, r.failed, r.errors); "
            "print(r.output_tail)")
    proc = _as_nobody([sys.executable, "-c", code], nobody_dir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[0] == "9 0 0", proc.stdout
    assert not (nobody_dir / "escaped.txt").exists() and not (nobody_dir / "chain.txt").exists()


# -- resource limits (issue 32, item 7) ---------------------------------------------------------

LIMITS_TEST = """
    import os, subprocess, sys

    def test_allocate_2_gib():
        try:
            block = bytearray(2 * 2**30)
        except MemoryError:
            return
        raise AssertionError("allocated 2 GiB")

    def test_write_a_1_gib_file():
        fd = os.open("big.bin", os.O_WRONLY | os.O_CREAT)
        try:
            os.pwrite(fd, b"x", 2**30 - 1)
        except OSError as err:
            assert err.errno == 27, err  # EFBIG (Python ignores SIGXFSZ)
            return
        finally:
            os.close(fd)
        raise AssertionError("wrote a 1 GiB file")

    def test_cpu_time_is_limited():
        import resource
        assert resource.getrlimit(resource.RLIMIT_CPU)[0] == 30
"""


@needs_bwrap
def test_memory_and_file_size_are_limited(tmp_path: Path) -> None:
    from decision_retry.repo.limits import Limits

    limits = Limits(memory=2**30, file_size=512 * 2**20, cpu=30, processes=4096)
    repo = attack_repo(tmp_path, LIMITS_TEST)
    for kind in ("bwrap", "none"):
        result, _ = run_attack(repo, sandboxes.resolve(kind, limits=limits))
        assert result.passed == 3, (kind, result.output_tail)
    assert resource.getrlimit(resource.RLIMIT_DATA)[0] != 2**30  # ours is untouched


FORK_BOMB = """
    import os, time

    def test_fork_bomb():
        children, refused = [], 0
        for _ in range(200):
            try:
                pid = os.fork()
            except OSError:
                refused += 1
                continue
            if pid == 0:
                time.sleep(5)
                os._exit(0)
            children.append(pid)
        for pid in children:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        print("forked", len(children), "refused", refused)
        assert refused > 0 and len(children) < 100
"""


@needs_bwrap
def test_a_fork_bomb_is_stopped_for_a_user(nobody_dir: Path) -> None:
    """RLIMIT_NPROC counts the processes of the user: uid 65534 here (the kernel does not apply
    it to root: docs/safety.md)."""
    repo = nobody_dir / "repo"
    repo.mkdir()
    (repo / "test_bomb.py").write_text(textwrap.dedent(FORK_BOMB))
    for p in (repo, repo / "test_bomb.py"):
        os.chown(p, NOBODY, NOBODY)
    code = ("from pathlib import Path; from decision_retry.repo import sandbox; "
            "from decision_retry.repo.limits import Limits; "
            "from decision_retry.repo.testrun import run_tests; "
            f"r = run_tests({CMD + ' -s'!r}, Path({str(repo)!r}), 120, env={FAST!r}, "
            "sandbox=sandbox.resolve('bwrap', limits=Limits(processes=64))); "
            "print(r.passed, r.failed); print(r.output_tail)")
    proc = _as_nobody([sys.executable, "-c", code], nobody_dir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[0] == "1 0", proc.stdout


@needs_bwrap
def test_a_fork_bomb_is_stopped_for_root(tmp_path: Path) -> None:
    """As root RLIMIT_NPROC does not apply: the run's pids cgroup holds the limit instead."""
    from decision_retry.repo.limits import Limits, pids_cgroup_root

    if os.geteuid() != 0:
        pytest.skip("root only (test_a_fork_bomb_is_stopped_for_a_user covers other users)")
    if pids_cgroup_root() is None:
        pytest.skip("no writable pids cgroup here: as root the process limit does not hold")
    repo = attack_repo(tmp_path, FORK_BOMB)
    for kind in ("bwrap", "none"):
        result, _ = run_attack(repo, sandboxes.resolve(kind, limits=Limits(processes=64)))
        assert result.passed == 1, (kind, result.output_tail)
    mine = f"decision-retry-{os.getpid()}-"
    assert not [d for d in os.listdir(pids_cgroup_root()) if d.startswith(mine)]  # removed


def test_limits_parse_and_bad_values_are_one_line() -> None:
    from decision_retry.repo.limits import Limits

    lim = Limits().parse("memory=2G, processes=512,file-size=none,cpu=60")
    assert (lim.memory, lim.processes, lim.file_size, lim.cpu) == (2**31, 512, None, 60)
    for bad in ("memory=lots", "disk=1G", "cpu=-1", "cpu="):
        with pytest.raises(BadInput, match="DECISION_RETRY_LIMITS"):
            Limits().parse(bad)


# -- the verdict end to end (issue 32, item 2) --------------------------------------------------


def test_a_reply_that_exits_early_is_not_a_fix(tmp_path: Path) -> None:
    """`os._exit(0)` in the function body was reported "fixed", exit 0."""
    from decision_retry.agent.runner import fix
    from decision_retry.testing import scripted_lm
    from decision_retry.trace.store import TraceStore

    repo = fixture_repo(tmp_path, "units")
    before = repo_state(repo)
    script = [("def celsius_to_fahrenheit(celsius: float) -> float:\n    import os\n"
               "    os._exit(0)\n"), "```"]
    with TraceStore(tmp_path / "home" / "traces.db") as store:
        cfg = fix_config().model_copy(update={"max_attempts": 2})
        result = fix(repo, cfg, lm=scripted_lm(script), store=store)
    assert not result.fixed and result.branch is None
    assert repo_state(repo) == before

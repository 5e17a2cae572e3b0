"""The sandbox the user's tests and the model's code run in (design.md §5).

`bwrap` (bubblewrap): the working directory and the report directory writable, everything else
read-only; a private /tmp, /var/tmp, /run and home directory (the Python that runs the tests is
bound back read-only); the run's own directory (`owner.json`, the clone's git directory) and the
user's repository hidden; no network but a loopback of its own; its own PID namespace, so every
descendant dies with the run (no orphans, `setsid` or not); a fresh session (no terminal
injection); an environment allow-list. No capabilities (`--cap-drop ALL`, so root stays root
only in name), its own user namespace in which no further one can be made (`--disable-userns`),
uid and gid 65534 (nobody) when we are root, and a seccomp filter (seccomp.py) against new
namespaces, mounts and terminal injection.

Both kinds run under resource limits (limits.py) set by a launcher before the sandbox starts.

`none` (where bubblewrap cannot run): the environment allow-list and a process group, plus, where
unprivileged user namespaces work, `unshare` with no network and its own PID namespace. What
remains is said in one line (`Sandbox.note`).

`auto` picks bwrap when it can run here, else none.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from decision_retry.errors import BadInput
from decision_retry.repo import seccomp
from decision_retry.repo.limits import Limits, pids_cgroup, pids_cgroup_root

SANDBOXES = ("auto", "bwrap", "none")

# Inherited variables the tests may see; everything else of the caller's environment (tokens,
# keys, OTLP headers, cloud credentials) stays out. Variables decision-retry sets itself pass.
ENV_ALLOW = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TERM", "COLUMNS",
    "PYTHONPATH", "PYTHONHASHSEED", "PYTHONUTF8", "PYTHONIOENCODING", "PYTHONWARNINGS",
    "PYTHONDONTWRITEBYTECODE", "VIRTUAL_ENV", "CONDA_PREFIX", "NO_COLOR", "PY_COLORS",
    "PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTEST_DISABLE_PLUGIN_AUTOLOAD",
    "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
    "SOURCE_DATE_EPOCH",
})
ENV_ALLOW_PREFIXES = ("LC_",)
_MASKED = ("/tmp", "/var/tmp", "/run", "/dev/shm")  # private, empty, writable in the sandbox

# Runs inside `unshare --net`: bring the loopback interface up (tests often serve on 127.0.0.1),
# then exec the real command. Failing to raise `lo` is not fatal.
_NETNS_SHIM = """
import fcntl, os, socket, struct, sys
try:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, struct.pack("16sH", b"lo", 0))[:18])[1]
    fcntl.ioctl(s, 0x8914, struct.pack("16sH", b"lo", flags | 1))  # SIOCSIFFLAGS, IFF_UP
except OSError:
    pass
os.execvp(sys.argv[1], sys.argv[1:])
"""


@dataclass(frozen=True)
class Sandbox:
    """How test commands run: `kind` bwrap or none, and the one line that says what that means."""

    kind: str  # "bwrap" | "none"
    note: str
    unshare: bool = False  # none: no network and own PID namespace through `unshare`
    pass_env: tuple[str, ...] = ()  # extra variable names the user lets through
    limits: Limits | None = None  # resource limits inside (None: none)

    @property
    def network_isolated(self) -> bool:
        return self.kind == "bwrap" or self.unshare

    def environment(self, inherited: Mapping[str, str], ours: Mapping[str, str]) -> dict[str, str]:
        """The allow-listed part of `inherited`, then `ours` (what decision-retry sets) on top."""
        allowed = set(ENV_ALLOW) | set(self.pass_env)
        env = {k: v for k, v in inherited.items()
               if k in allowed or k.startswith(ENV_ALLOW_PREFIXES)}
        env.update(ours)
        if self.kind == "bwrap":
            env["TMPDIR"] = "/tmp"  # the private one
        return env

    def wrap(self, argv: list[str], *, cwd: Path, writable: Iterable[Path] = (),
             env: Mapping[str, str] | None = None, readable: Iterable[Path] = (),
             seccomp_fd: int | None = None, cgroup: Path | None = None) -> list[str]:
        """The command line that runs `argv` in this sandbox, `cwd` and `writable` writable,
        `readable` (the project's Python, pyenv.py) visible read-only even under a mask.
        `seccomp_fd`: an open file holding `seccomp.program()` (see `seccomp_file`), which the
        caller passes to the child (bwrap only). `cgroup`: the run's pids cgroup (as root,
        `Sandbox.pids_cgroup`), which the launcher joins."""
        limits = self.limits.prefix(cgroup) if self.limits else []
        if self.kind == "bwrap":
            filt = ["--seccomp", str(seccomp_fd)] if seccomp_fd is not None else []
            return [*limits, *_bwrap_args(argv[0], cwd, [cwd, *writable], env or {}, readable),
                    *filt, "--", *argv]
        if self.unshare:
            return [*limits, *unshare_prefix(), *argv]
        return [*limits, *argv]

    def pids_cgroup(self):
        """The run's pids cgroup as a context (None: not root, no writable cgroups, no limit)."""
        return pids_cgroup(self.limits.processes if self.limits else None)

    @contextlib.contextmanager
    def seccomp_file(self) -> Iterator[int | None]:
        """An open file descriptor holding the seccomp filter for `wrap` (None: no filter here)."""
        code = seccomp.program() if self.kind == "bwrap" else None
        if code is None:
            yield None
            return
        with tempfile.TemporaryFile() as f:
            f.write(code)
            f.flush()
            f.seek(0)
            yield f.fileno()


def resolve(choice: str = "auto", *, pass_env: Iterable[str] = (),
            limits: Limits | None = None) -> Sandbox:
    """The sandbox for `--sandbox auto|bwrap|none`; BadInput when bwrap is asked for and cannot
    run. `limits`: default `Limits.default()` (limits.py, DECISION_RETRY_LIMITS)."""
    if choice not in SANDBOXES:
        raise BadInput(f"unknown sandbox {choice!r}; use one of {', '.join(SANDBOXES)}")
    names = tuple(pass_env)
    limits = limits or Limits.default()
    told = limits.describe() + (" (not for root here: no writable pids cgroup)"
                                if os.geteuid() == 0 and pids_cgroup_root() is None else "")
    if choice != "none":
        reason = bwrap_problem()
        if reason is None:
            filt = "seccomp filter" if seccomp.program() else "no seccomp filter on this CPU"
            return Sandbox("bwrap", "sandbox: bubblewrap (clone writable, rest read-only, "
                           "no network, own PID namespace, no capabilities, "
                           f"{'uid nobody, ' if os.geteuid() == 0 else ''}{filt}, environment "
                           f"allow-list; limits: {told})", False, names, limits)
        if choice == "bwrap":
            raise BadInput(f"--sandbox bwrap: bubblewrap cannot run here: {reason}")
    unshare = unshare_works()
    what = ("no network and own PID namespace via unshare" if unshare
            else "no network isolation, background processes can outlive the tests")
    why = "as asked (--sandbox none)" if choice == "none" else f"bubblewrap cannot run: {reason}"
    note = (f"sandbox: none, {why}; tests run with the environment allow-list, their own "
            f"process group, {what}, limits ({told}), and can write anywhere you can")
    return Sandbox("none", note, unshare, names, limits)


@functools.cache
def bwrap_problem() -> str | None:
    """Why bubblewrap cannot run here, or None when it can (one probe per process)."""
    exe = shutil.which("bwrap")
    if exe is None:
        return "bwrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    probe = [exe, *_privilege(), "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
             "--tmpfs", "/tmp", "true"]
    try:
        proc = subprocess.run(probe, stdin=subprocess.DEVNULL, capture_output=True, timeout=20,
                              check=False)
    except (OSError, subprocess.SubprocessError) as err:
        return f"bwrap failed to start: {err}"
    if proc.returncode == 0:
        return None
    lines = proc.stderr.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else f"bwrap exited with status {proc.returncode}"


@functools.cache
def _privilege() -> tuple[str, ...]:
    """Namespaces, no capabilities, no nested user namespace (bubblewrap >= 0.8; the seccomp
    filter refuses them too), a new session; as root also uid/gid nobody inside (its files
    still belong to root outside: see docs/safety.md)."""
    exe = shutil.which("bwrap") or "bwrap"
    try:
        usage = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=10,
                               check=False).stdout
    except (OSError, subprocess.SubprocessError):
        usage = ""
    nested = ("--disable-userns",) if "--disable-userns" in usage else ()
    root = ("--uid", "65534", "--gid", "65534") if os.geteuid() == 0 else ()
    # COST: the command itself is PID 1 (no reaper of bubblewrap's between): reaped by bwrap,
    # so its CPU time reaches our RUSAGE_CHILDREN (costs.py); when it exits the rest is killed
    pid1 = ("--as-pid-1",) if "--as-pid-1" in usage else ()
    return ("--unshare-all", "--unshare-user", *nested, "--cap-drop", "ALL", "--die-with-parent",
            "--new-session", *pid1, *root)


def unshare_prefix() -> list[str]:
    """`unshare` with a user, network and PID namespace (the child is its PID 1: when it exits,
    every process it left behind is killed), then the loopback shim; under `setpriv
    --pdeathsig KILL` where that works, so that the tests die with us even when we are killed
    with no chance to clean up (SIGKILL, the OOM killer), as bubblewrap's --die-with-parent."""
    unshare = shutil.which("unshare") or "unshare"  # absolute: the child's PATH may differ
    return [*_die_with_parent(), unshare, "--user", "--map-root-user", "--net", "--pid", "--fork",
            "--kill-child", "--", sys.executable, "-c", _NETNS_SHIM]


@functools.cache
def _die_with_parent() -> list[str]:
    """`setpriv --pdeathsig KILL` (util-linux >= 2.33), or nothing where it is missing. The
    signal follows the thread that started the process: ours waits for it (testrun.run_tests)."""
    setpriv = shutil.which("setpriv")
    prefix = [setpriv, "--pdeathsig", "KILL"] if setpriv else []
    return prefix if prefix and _succeeds([*prefix, *_NOOP]) else []


@functools.cache
def unshare_works() -> bool:
    """Whether `unshare_prefix()` works here (needs unprivileged user namespaces)."""
    return shutil.which("unshare") is not None and _succeeds([*unshare_prefix(), *_NOOP])


_NOOP = (sys.executable, "-c", "")  # what the probes run: `true` may not be on PATH


def _succeeds(argv: list[str]) -> bool:
    """Whether `argv` runs and exits 0 within 10 s (a probe of what this machine allows)."""
    try:
        probe = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=10,
                               check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return probe.returncode == 0


# -- bubblewrap ---------------------------------------------------------------------------------


def _bwrap_args(prog: str, cwd: Path, writable: list[Path], env: Mapping[str, str],
                readable: Iterable[Path] = ()) -> list[str]:
    """1) / read-only, 2) private /dev /proc /tmp /run and home, 3) the interpreter back
    read-only, 4) the writable directories, 5) namespaces, session, cwd."""
    args = [shutil.which("bwrap") or "bwrap", "--ro-bind", "/", "/", "--dev", "/dev",
            "--proc", "/proc"]
    masked = [m for m in _MASKED if os.path.isdir(m) and not os.path.islink(m)]
    home = os.environ.get("HOME", "")
    for extra in (home, *_run_paths(cwd)):
        if extra and os.path.isdir(extra) and Path(extra).resolve() != Path("/"):
            masked.append(str(Path(extra).resolve()))
    masked = [m for m in sorted(set(masked), key=len)  # parents first, nested ones dropped
              if not any(m.startswith(o.rstrip("/") + "/") for o in masked if o != m)]
    for m in masked:
        args += ["--tmpfs", m]
    writable_real = {str(Path(w).resolve()) for w in writable}
    shown = {os.path.realpath(p) for p in readable} | {os.path.abspath(p) for p in readable}
    for keep in sorted(_needed_paths(env) | program_paths(prog, env) | shown, key=len):
        under_mask = any(keep == m or keep.startswith(m.rstrip("/") + "/") for m in masked)
        if under_mask and keep not in writable_real:
            args += ["--ro-bind", keep, keep]
    for w in sorted(writable_real, key=len):
        args += ["--bind", w, w]
    return [*args, *_privilege(), "--chdir", str(Path(cwd).resolve())]


def _run_paths(cwd: Path) -> list[str]:
    """A workspace clone's run directory (beside it: `owner.json`, the clone's git directory)
    and the user's repository `owner.json` names: nothing the tests need to see."""
    owner = Path(cwd).resolve().parent / "owner.json"
    try:
        repo = json.loads(owner.read_text()).get("repo") if owner.is_file() else None
    except (OSError, ValueError, AttributeError):
        repo = None
    return [str(owner.parent), *([repo] if isinstance(repo, str) else [])] if owner.is_file() else []


def _needed_paths(env: Mapping[str, str]) -> set[str]:
    """Directories the test command needs to read: this Python (prefixes, sys.path) and the
    virtualenv / PYTHONPATH the environment names."""
    found = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(sys.executable)}
    found.update(p for p in sys.path if p)
    for key in ("VIRTUAL_ENV", "CONDA_PREFIX"):
        if env.get(key):
            found.add(env[key])
    found.update(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)
    out = set()
    for p in found:
        if not os.path.isabs(p) or not os.path.exists(p):
            continue
        out.add(os.path.realpath(p))
        out.add(os.path.abspath(p))  # a venv reached through a symlink needs both paths
    return {p for p in out if os.path.exists(p)}


def program_paths(prog: str, env: Mapping[str, str]) -> set[str]:
    """The directory of a program found on PATH and of its `#!` interpreter (read-only binds)."""
    out: set[str] = set()
    path = shutil.which(prog, path=env.get("PATH"))
    if path is None:
        return out
    out.add(os.path.dirname(os.path.realpath(path)))
    try:
        with open(path, "rb") as f:
            first = f.readline(512)
    except OSError:
        return out
    if first.startswith(b"#!"):
        interp = first[2:].strip().split(b" ")[0].decode(errors="replace")
        if os.path.isabs(interp):
            out.add(os.path.dirname(os.path.dirname(os.path.realpath(interp))))
    return out

"""Resource limits for the sandboxed test command: memory, processes, file size, CPU time.

They are set (soft and hard, so the tests cannot raise them) in a small launcher that then
execs the sandbox, so everything inside inherits them and our own process keeps its own:

    memory      RLIMIT_DATA: heap and private writable mappings per process (what an
                allocation takes; address space reserved but not written, as Go and the JVM
                do, is not counted)           default: half the machine's memory, at most 4 GiB
    processes   as root, tasks (threads count) in a pids cgroup of the run's own, where
                cgroups can be written (`pids_cgroup`; the kernel does not apply RLIMIT_NPROC
                to root)                      default: 4096
                else RLIMIT_NPROC, which counts all the user's tasks (a desktop session has
                thousands)                    default: 16384
    file-size   RLIMIT_FSIZE: the largest file a process can write      default: 1 GiB
    cpu         RLIMIT_CPU: CPU seconds per process                       default: 3600

`DECISION_RETRY_LIMITS="memory=8G,processes=1024,file-size=none,cpu=600"` changes them (`none`:
no limit); `Limits.parse` reads that syntax.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import secrets
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from decision_retry.errors import BadInput

ENV_VAR = "DECISION_RETRY_LIMITS"
GiB = 2**30
_RLIMITS = {"memory": "RLIMIT_DATA", "processes": "RLIMIT_NPROC", "file_size": "RLIMIT_FSIZE",
            "cpu": "RLIMIT_CPU"}
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}

# exec'd before the sandbox: argv = [spec, command...]; spec is `RLIMIT_DATA=123,...`
_SHIM = """
import os, resource, sys
for item in filter(None, sys.argv[1].split(",")):
    name, value = item.split("=", 1)
    if name == "cgroup":  # join the run's pids cgroup first: every descendant stays in it
        with open(value + "/cgroup.procs", "w") as f:
            f.write(str(os.getpid()))
        continue
    which = getattr(resource, name)
    hard = resource.getrlimit(which)[1]
    value = int(value) if hard == resource.RLIM_INFINITY else min(int(value), hard)
    resource.setrlimit(which, (value, value))
os.execvp(sys.argv[2], sys.argv[2:])
"""


def _default_memory() -> int:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        return 4 * GiB
    return min(4 * GiB, total // 2)


class Limits(BaseModel):
    """Per-process limits inside the sandbox (None: no limit)."""

    model_config = ConfigDict(frozen=True)

    memory: int | None = None  # bytes; None here, the default is set by `default()`
    processes: int | None = 4096
    file_size: int | None = GiB
    cpu: int | None = 3600  # seconds

    @classmethod
    def default(cls) -> Limits:
        """The defaults, then what DECISION_RETRY_LIMITS changes."""
        base = cls(memory=_default_memory(), processes=4096 if os.geteuid() == 0 else 16384)
        spec = os.environ.get(ENV_VAR, "").strip()
        return base.parse(spec) if spec else base

    def parse(self, spec: str) -> Limits:
        """These limits changed by `memory=4G,processes=512,file-size=none,cpu=600`."""
        changes: dict[str, int | None] = {}
        for item in filter(None, (s.strip() for s in spec.split(","))):
            key, _, value = item.partition("=")
            key = key.strip().replace("-", "_")
            if key not in _RLIMITS or not value:
                raise BadInput(f"bad limit {item!r} in {ENV_VAR}: use memory=, processes=, "
                               f"file-size= or cpu= with a number or none")
            changes[key] = _number(value.strip(), item)
        return self.model_copy(update=changes)

    def prefix(self, cgroup: Path | None = None) -> list[str]:
        """The launcher that sets these limits (and joins `cgroup`) and execs the rest."""
        items = [f"{_RLIMITS[k]}={v}" for k, v in self.model_dump().items() if v is not None]
        spec = ",".join([*items, *([f"cgroup={cgroup}"] if cgroup else [])])
        return [sys.executable, "-I", "-S", "-c", _SHIM, spec] if spec else []

    def describe(self) -> str:
        """`memory 4 GiB, processes 4096, file size 1 GiB, cpu 3600 s` (for the sandbox line)."""
        def size(n: int | None) -> str:
            return "none" if n is None else (f"{n / GiB:g} GiB" if n >= GiB else f"{n >> 20} MiB")
        cpu = "none" if self.cpu is None else f"{self.cpu} s"
        return (f"memory {size(self.memory)}, processes {self.processes or 'none'}, "
                f"file size {size(self.file_size)}, cpu {cpu}")


def _number(text: str, item: str) -> int | None:
    if text.lower() in ("none", "unlimited", "off"):
        return None
    m = re.fullmatch(r"(\d+)\s*([kmgt]?)(?:i?b)?", text.lower())
    if not m or int(m.group(1)) <= 0:
        raise BadInput(f"bad limit {item!r} in {ENV_VAR}: expected a positive number "
                       f"(with K, M, G or T) or none")
    return int(m.group(1)) * _UNITS[m.group(2)]



@functools.cache
def pids_cgroup_root() -> Path | None:
    """Where we (root) can make a pids cgroup for a run: cgroup v1's pids hierarchy, or the v2
    root with the pids controller; None elsewhere (not root, or cgroups read-only)."""
    if os.geteuid() != 0:
        return None
    for base in (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup")):
        control = base / "cgroup.subtree_control"
        v2 = control.is_file()
        try:
            if not (base / "cgroup.procs").is_file() or (v2 and "pids" not in control.read_text()):
                continue
            probe = base / f"decision-retry-probe-{os.getpid()}"
            probe.mkdir()
            ok = (probe / "pids.max").is_file()
            probe.rmdir()
        except OSError:
            continue
        if ok:
            return base
    return None


@contextlib.contextmanager
def pids_cgroup(limit: int | None) -> Iterator[Path | None]:
    """A fresh pids cgroup holding at most `limit` tasks (threads count) for one run, removed
    after it with anything left inside killed; None where `pids_cgroup_root` has none."""
    root = pids_cgroup_root() if limit else None
    path = root / f"decision-retry-{os.getpid()}-{secrets.token_hex(4)}" if root else None
    try:
        if path is not None:
            path.mkdir()
            (path / "pids.max").write_text(str(limit))
    except OSError:
        path = None
    try:
        yield path
    finally:
        if path is not None:
            _remove_cgroup(path)


def _remove_cgroup(path: Path) -> None:
    for _ in range(50):  # a PID namespace is torn down asynchronously
        try:
            path.rmdir()
            return
        except OSError:
            pass
        try:
            for pid in (path / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):
                    os.kill(int(pid), signal.SIGKILL)
        except OSError:
            return
        time.sleep(0.1)

"""Test results by the exact files they ran on: an identical tree is never tested twice in a run.

The key is everything a test run's verdict depends on that can change within a run: the git tree
of the working tree (tracked and untracked non-ignored files), the names and contents of the
ignored files present (the carried modules, anything a test or an action left since the last
restore), the command, its timeout and the sandbox (kind, network isolation, the variables let
through and their values). The interpreter and installed packages stay the same for the run, so
the cache lives in memory for one run only. A hit is exact for a deterministic test suite; a
flaky one needs `fix --no-test-cache`. A run that timed out is not stored (timing is not content).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from decision_retry.repo.sandbox import Sandbox
from decision_retry.repo.testrun import TestResult


def test_key(tree: str, ignored: list[tuple[str, bytes]], cmd: str, timeout: float,
             sandbox: Sandbox | None) -> str:
    """The cache key (sha256 hex) of one test run."""
    h = hashlib.sha256()
    box = None if sandbox is None else {
        "kind": sandbox.kind, "unshare": sandbox.unshare,
        "pass_env": {n: os.environ.get(n) for n in sorted(sandbox.pass_env)}}
    h.update(json.dumps({"tree": tree, "cmd": cmd, "timeout": timeout, "sandbox": box},
                        sort_keys=True).encode())
    for rel, data in sorted(ignored):
        h.update(b"\0" + rel.encode("utf-8", "surrogateescape") + b"\0")
        h.update(hashlib.sha256(data).digest())
    return h.hexdigest()


def ignored_files(root: Path, names: list[str]) -> list[tuple[str, bytes]]:
    """(path, content) of the ignored files `names` under `root` (links: their target text)."""
    out = []
    for rel in names:
        path = root / rel
        try:
            data = os.readlink(path).encode() if path.is_symlink() else path.read_bytes()
        except OSError:
            data = b"\0unreadable"
        out.append((rel, data))
    return out


class TestCache:
    """Recorded results by key, for one run; `enabled=False` (--no-test-cache) stores nothing."""

    __test__ = False  # not a pytest test class

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._results: dict[str, TestResult] = {}
        self.hits = 0

    def get(self, key: str) -> TestResult | None:
        """The recorded result, marked `cached`, or None."""
        found = self._results.get(key) if self.enabled else None
        if found is None:
            return None
        self.hits += 1
        return found.model_copy(update={"cached": True, "duration_s": 0.0})

    def put(self, key: str, result: TestResult) -> None:
        if self.enabled and not result.timed_out:
            self._results[key] = result

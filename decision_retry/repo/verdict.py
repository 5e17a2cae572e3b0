"""Positive evidence for a verdict: what pytest itself reported, through a channel the code under
test cannot simply write to.

The runner gives the test command two pipes (inherited file descriptors, never a path): one
holding a random nonce, read and closed by our pytest plugin (evidence/decision_retry_evidence.py)
when pytest loads it, before the repository's conftest or tests are imported; one the plugin
writes JSON lines to, each carrying the nonce: `start`, then `finish` with every test's
outcome. The nonce is in no variable, argument or file. `read` turns those lines into an
`Evidence`: "pytest" (a finished session), "cut short" (pytest started and did not finish:
`os._exit(0)` in the code under test) or "none" (pytest never loaded the plugin: not a pytest
command, or the plugin was blocked). A JUnit file, which the code under test can write, is
used for details (failure messages and lines), never for the verdict.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import select
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

PLUGIN = "decision_retry_evidence"
PLUGIN_DIR = Path(__file__).parent / "evidence"
ENV_VAR = "DECISION_RETRY_EVIDENCE"
MAX_BYTES = 16 * 2**20  # what the runner reads of the report pipe; the rest is drained unread


@dataclass(frozen=True)
class Evidence:
    """What the plugin reported: `kind` pytest, cut short or none, and each test's outcome."""

    kind: str  # "pytest" | "cut short" | "none"
    outcomes: dict[str, str] = field(default_factory=dict)  # nodeid -> passed|failed|error|...
    collected: int = 0
    exitstatus: int | None = None

    def ids(self, *outcomes: str) -> tuple[str, ...]:
        return tuple(k for k, v in self.outcomes.items() if v in outcomes)


def missing(outcomes: Mapping[str, str], required: tuple[str, ...]) -> tuple[str, ...]:
    """The `required` tests (node ids, or a file for a collection error) that did not pass in
    `outcomes`: each must be reported passed (a file: some test of it passed, none failed)."""
    out = []
    for test in required:
        if "::" in test:
            ok = outcomes.get(test) == "passed"
        else:
            mine = [v for k, v in outcomes.items() if k == test or k.startswith(test + "::")]
            ok = "passed" in mine and not {"failed", "error"} & set(mine)
        if not ok:
            out.append(test)
    return tuple(out)


class Channel:
    """The two pipes of one test run: `env` and `fds` for the child, `evidence()` after it."""

    def __init__(self) -> None:
        self.nonce = secrets.token_hex(16)
        nonce_r, nonce_w = os.pipe()
        self._report_r, self._report_w = os.pipe()
        os.write(nonce_w, self.nonce.encode())
        os.close(nonce_w)
        self._nonce_r = nonce_r
        self.fds = (nonce_r, self._report_w)
        self.env = {ENV_VAR: f"{nonce_r}:{self._report_w}"}
        self._data = bytearray()
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def started(self) -> None:
        """Close our copies of the child's ends (after the child started)."""
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = ()

    def _drain(self) -> None:
        """Read until EOF or `close()`; the fd is closed here, by the only thread that reads it."""
        try:
            while not self._stop.is_set():
                if not select.select([self._report_r], [], [], 0.1)[0]:
                    continue
                chunk = os.read(self._report_r, 65536)
                if not chunk:
                    break
                if len(self._data) < MAX_BYTES:
                    self._data += chunk[: MAX_BYTES - len(self._data)]
        finally:
            os.close(self._report_r)

    def evidence(self, wait: float) -> Evidence:
        """What arrived, waiting at most `wait` seconds for the pipe to close (a process left
        behind by the tests may hold it open)."""
        self.started()
        self._reader.join(max(0.0, wait))
        return parse(bytes(self._data), self.nonce)

    def close(self) -> None:
        self.started()
        self._stop.set()


@contextlib.contextmanager
def channel() -> Iterator[Channel]:
    ch = Channel()
    try:
        yield ch
    finally:
        ch.close()


def parse(data: bytes, nonce: str) -> Evidence:
    """The Evidence in the plugin's lines; lines without the nonce are ignored."""
    started, finish = False, None
    for line in data.decode(errors="replace").splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if not isinstance(msg, dict) or msg.get("nonce") != nonce:
            continue
        if msg.get("event") == "start":
            started = True
        elif msg.get("event") == "finish" and started and finish is None:
            finish = msg
    if finish is None:
        return Evidence("cut short" if started else "none")
    outcomes = finish.get("outcomes")
    if not isinstance(outcomes, dict):
        return Evidence("cut short")
    outcomes = {str(k): str(v) for k, v in outcomes.items()}
    collected = finish.get("collected") if isinstance(finish.get("collected"), int) else 0
    status = finish.get("exitstatus") if isinstance(finish.get("exitstatus"), int) else None
    return Evidence("pytest", outcomes, collected, status)


def addopts() -> str:
    return f"-p {PLUGIN}"

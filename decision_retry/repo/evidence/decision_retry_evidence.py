"""decision-retry's pytest plugin: each test's outcome, sent to the runner over a pipe.

Loaded with `-p decision_retry_evidence` (testrun.py puts this directory on PYTHONPATH). At
import, before any conftest or test module of the repository is imported, it reads a one-time
nonce from the pipe named in DECISION_RETRY_EVIDENCE (`NONCE_FD:REPORT_FD`), closes that pipe,
removes the variable and keeps the report pipe out of child processes. It then writes one JSON
line `start` at once and one line `finish` at the end of the session, each carrying the nonce.
A process that ends before the session does (`os._exit(0)` in the code under test) leaves no
`finish`: the runner counts that as cut short, never as passing. Code in the same process can
still find the nonce in memory and forge a report, or patch pytest itself (docs/safety.md).
Standard library only: it runs in whatever interpreter the tests use.
"""

import json
import os

_RANK = {"passed": 0, "skipped": 1, "xfailed": 1, "failed": 2, "error": 3}


def _open_channel():
    spec = os.environ.pop("DECISION_RETRY_EVIDENCE", "")
    try:
        nonce_fd, report_fd = (int(x) for x in spec.split(":"))
        nonce = os.read(nonce_fd, 64).decode("ascii").strip()
        os.close(nonce_fd)
        os.set_inheritable(report_fd, False)
    except (ValueError, OSError):
        return None
    return (nonce, report_fd) if len(nonce) >= 32 else None  # a second pytest reads nothing


_channel = _open_channel()


def _send(event, **fields):
    nonce, fd = _channel
    data = (json.dumps({"event": event, "nonce": nonce, **fields}) + "\n").encode()
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:
        pass


class _Recorder:
    """The outcome of each test (its worst phase) and collection errors, for one session."""

    def __init__(self):
        self.outcomes = {}  # nodeid -> passed | failed | error | skipped | xfailed

    def _set(self, nodeid, outcome):
        old = self.outcomes.get(nodeid)
        if old is None or _RANK[outcome] > _RANK[old]:
            self.outcomes[nodeid] = outcome

    def pytest_runtest_logreport(self, report):
        xfail = hasattr(report, "wasxfail")
        if report.failed:
            self._set(report.nodeid, "failed" if report.when == "call" else "error")
        elif report.skipped:
            self._set(report.nodeid, "xfailed" if xfail else "skipped")
        elif report.when == "call":
            self._set(report.nodeid, "passed")

    def pytest_collectreport(self, report):
        if report.failed:
            self._set(report.nodeid or ".", "error")

    def pytest_sessionfinish(self, session, exitstatus):
        _send("finish", exitstatus=int(exitstatus), collected=session.testscollected,
              outcomes=self.outcomes)


def pytest_configure(config):
    # the first session only: an in-process pytest run by a test (pytester) is not ours
    if _channel is not None and not getattr(pytest_configure, "bound", False):
        pytest_configure.bound = True
        config.pluginmanager.register(_Recorder(), "decision_retry_evidence_recorder")


if _channel is not None:
    _send("start", pid=os.getpid())

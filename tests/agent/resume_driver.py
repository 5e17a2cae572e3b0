"""Run one scripted `fix` and kill it after N trace nodes (SIGKILL or SIGTERM): test_resume.

Run from the repository root as `python -m tests.agent.resume_driver REPO DB SEED N SIGNAL`."""

import os
import signal
import sys

from decision_retry.agent.runner import fix, signals_as_interrupt
from decision_retry.testing import scripted_lm
from decision_retry.trace.store import TraceStore
from tests.helpers import UNITS_SCRIPT, fix_config

# seconds per test run: generous, the suite may share two cores with benchmarks (a 60 s limit
# timed out the input check at load 10)
TEST_TIMEOUT = 300.0


class KillAfter:
    """A trace listener that sends this process `sig` once `n` nodes are stored."""

    def __init__(self, n: int, sig: int) -> None:
        self.n, self.sig = n, sig

    def __getattr__(self, name):
        def count(node):
            self.n -= 1
            if self.n == 0:
                os.kill(os.getpid(), self.sig)
        return count


if __name__ == "__main__":
    repo, db, seed, n, sig = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    with TraceStore(db) as store, signals_as_interrupt():
        fix(repo, fix_config(seed=seed, test_timeout=TEST_TIMEOUT), lm=scripted_lm(UNITS_SCRIPT),
            store=store, listeners=[KillAfter(n, getattr(signal, sig))])
    print("finished without being killed")

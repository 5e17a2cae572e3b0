"""Run selected pytest tests under coverage, one coverage context per test node id.

    python -m decision_retry.localise.covrun OUT.json SELECTION.json
    python /a/copy/of/covrun.py OUT.json SELECTION.json   (what spectrum.py runs, in the sandbox)

SELECTION.json: {"root": str, "tests": [node ids] or null (all), "args": [pytest args],
"first": [node ids that run whatever the time: the failing tests], "deadline_s": wall seconds
after which no other test starts (null: none)}. Tests run in pytest's order.
OUT.json: {"outcomes": {nodeid: "passed"|"failed"}, "files": {relpath: {line: [test index]}},
"tests": [nodeid, ...], "unrun": how many selected tests the deadline left out}. Runs in the test sandbox like any test command; imports only the standard
library, coverage and pytest before coverage starts, so the project's modules are measured.
Where the project's interpreter lacks `coverage`, the caller lends it ours (`borrowed_coverage`:
a directory holding only that package, first on PYTHONPATH for this run): nothing is installed.
"""

from __future__ import annotations

import json
import os
import sys
import time


class _Contexts:
    """pytest plugin: deselect what was not asked for; one coverage context per test."""

    def __init__(self, cov, wanted: list[str] | None) -> None:
        self.cov, self.outcomes = cov, {}
        self.wanted = None if wanted is None else set(wanted)

    def pytest_collection_modifyitems(self, config, items):
        if self.wanted is None:
            return
        keep = [i for i in items if i.nodeid in self.wanted]
        drop = [i for i in items if i.nodeid not in self.wanted]
        if drop:
            config.hook.pytest_deselected(items=drop)
        items[:] = keep

    def pytest_runtest_setup(self, item):
        self.cov.switch_context(item.nodeid)

    def pytest_runtest_teardown(self, item, nextitem):
        self.cov.switch_context("")

    def pytest_runtest_logreport(self, report):
        if report.failed and not getattr(report, "wasxfail", None):
            self.outcomes[report.nodeid] = "failed"
        elif report.when == "call" and report.nodeid not in self.outcomes:
            self.outcomes[report.nodeid] = "skipped" if report.skipped else "passed"


def _capped(pytest, first: tuple[str, ...], deadline_s: float | None):
    """pytest plugin: past `deadline_s` seconds no test starts but the `first` ones (the failing
    tests run wherever pytest's order puts them; the rest keep that order, so the first test to
    run, which pays for a project's one-time set-up, is the one it always was)."""

    class Capped:
        unrun = 0
        started = time.monotonic()

        @pytest.hookimpl(tryfirst=True)
        def pytest_runtest_protocol(self, item, nextitem):
            if deadline_s is None or item.nodeid in first:
                return None
            if time.monotonic() - self.started > deadline_s:
                self.unrun += 1  # skipped at its set-up: pytest still tears down what ran before
                item.add_marker(pytest.mark.skip(reason="decision-retry: past the coverage cap"))
            return None

    return Capped()


def _reports_unmeasured(pytest, cov):
    """pytest plugin: what pytest runs to describe a failure (the reprs of the arguments in its
    traceback: a project's `__repr__` and what that calls) is measured in no test's context.
    Only failing tests print those, so each would score as the bug."""

    class Reports:
        @pytest.hookimpl(hookwrapper=True)
        def pytest_runtest_makereport(self, item, call):
            cov.switch_context("")
            yield
            if call.when != "teardown":
                cov.switch_context(item.nodeid)

    return Reports()


def borrowed_coverage(dest: str | os.PathLike) -> str:
    """`dest`, made to hold only our `coverage` package (a link to it): the PYTHONPATH entry
    that lends it to another interpreter. coverage needs no other package; on another Python
    version its C tracer does not load and it measures with its Python tracer."""
    import importlib.util

    spec = importlib.util.find_spec("coverage")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("decision-retry's environment has no coverage package")
    os.makedirs(dest, exist_ok=True)
    os.symlink(next(iter(spec.submodule_search_locations)), os.path.join(dest, "coverage"))
    return os.fspath(dest)


def main(out_path: str, selection_path: str) -> int:
    import coverage
    import pytest

    with open(selection_path) as f:
        sel = json.load(f)
    root = os.path.realpath(sel["root"])
    cov = coverage.Coverage(data_file=None, config_file=False, include=[os.path.join(root, "*")],
                            omit=["*/site-packages/*", "*/.venv/*"])
    cov.start()
    plugin = _Contexts(cov, sel["tests"])
    capped = _capped(pytest, tuple(sel.get("first", ())), sel.get("deadline_s"))
    try:
        # --assert=plain: a failing assert does not render its operands (their reprs are the
        # report's, not the test's); the test passes or fails as it does rewritten
        code = pytest.main(["-p", "no:cacheprovider", "-p", "no:cov", "-q", *sel["args"],
                            "--assert=plain"],
                           plugins=[plugin, capped, _reports_unmeasured(pytest, cov)])
    finally:
        cov.stop()
    data = cov.get_data()
    tests = sorted(plugin.outcomes)
    index = {t: i for i, t in enumerate(tests)}
    files: dict[str, dict[int, list[int]]] = {}
    for path in data.measured_files():
        rel = os.path.relpath(path, root)
        if rel.startswith(".."):
            continue
        lines = {}
        for line, ctxs in data.contexts_by_lineno(path).items():
            ids = sorted({index[c] for c in ctxs if c in index})
            if ids:
                lines[line] = ids
        if lines:
            files[rel.replace(os.sep, "/")] = lines
    with open(out_path, "w") as f:
        json.dump({"outcomes": plugin.outcomes, "tests": tests, "files": files,
                   "exit_code": int(code), "unrun": capped.unrun}, f)
    return 0


if __name__ == "__main__":
    if sys.path and os.path.realpath(sys.path[0]) == os.path.dirname(os.path.realpath(__file__)):
        sys.path[0] = os.getcwd()  # run as a copied script: what `python -m` puts first, the cwd
    sys.exit(main(sys.argv[1], sys.argv[2]))

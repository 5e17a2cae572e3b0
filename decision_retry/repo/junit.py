"""Read pytest's JUnit XML report: per-test outcomes, failing node ids with their lines.

The report is asked for through PYTEST_ADDOPTS (`--junitxml=PATH -o junit_family=xunit1`), so it
works whatever the test command is (`pytest`, `python -m pytest`, `make test`, a script that calls
pytest) and without importing anything of ours into the user's interpreter. xunit1 adds `file` and
`line` (0-based line of the test's `def`) to each testcase, which is what tells apart the 20
`test_basic`s of one file. The summary line stays the source of what JUnit does not carry
(passed subtests, xpassed); see testrun.parse_counts.
"""

from __future__ import annotations

import os
import re
import stat
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

_FRAME = re.compile(r"^([^\s:][^:\n]*\.py):(\d+):", re.MULTILINE)  # `tests/test_a.py:12: AssertionError`
TEXT_CHARS = 3000  # traceback text kept per failure
MAX_REPORT_BYTES = 32 * 2**20  # a larger report is not read (a hostile one could be any size)


class FailedTest(BaseModel):
    """One failing (or erroring) test: its node id, where it is defined, what went wrong."""

    model_config = ConfigDict(frozen=True)

    nodeid: str  # `tests/test_a.py::TestX::test_basic[1-2]`; a file alone for a collection error
    file: str | None = None  # relative to pytest's rootdir
    line: int | None = None  # 1-based line of the test's `def` (None for collection errors)
    kind: Literal["failed", "error", "collection"] = "failed"
    message: str = ""
    text: str = ""  # pytest's traceback for it (the first failure of the test), clipped
    subfailures: int = 0  # failed subtests (`SUBFAILED`) among them

    @property
    def frames(self) -> list[tuple[str, int]]:
        """(file, line) of the traceback frames pytest printed, outermost first."""
        return [(m.group(1), int(m.group(2))) for m in _FRAME.finditer(self.text)]


class JUnitReport(BaseModel):
    """Counts per test (not per subtest) and the failing tests in run order."""

    model_config = ConfigDict(frozen=True)

    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    xfailed: int = 0
    failures: tuple[FailedTest, ...] = ()
    passing: tuple[tuple[str, float], ...] = ()  # (node id, seconds) of each passing test


def junit_addopts(path: Path) -> str:
    """The PYTEST_ADDOPTS words that make pytest write its report to `path`."""
    return f"--junitxml={path} -o junit_family=xunit1"


def nodeid(file: str | None, classname: str, name: str) -> str:
    """pytest's node id from a testcase's attributes: file :: classes :: name.

    `classname` is the dotted module path (relative to rootdir) followed by the class names.
    """
    if not file:
        return ".".join(p for p in (classname, name) if p)
    module = file[:-3].replace("/", ".") if file.endswith(".py") else file
    rest = classname[len(module):].lstrip(".") if classname.startswith(module) else ""
    if not classname.startswith(module):  # an unusual rootdir: keep the capitalised parts
        rest = ".".join(p for p in classname.split(".") if p[:1].isupper())
    return "::".join([file, *filter(None, rest.split(".")), name])


def parse_junit(xml: str) -> JUnitReport | None:
    """The report in `xml`, or None when it is not a JUnit document."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    if root.tag not in ("testsuites", "testsuite"):
        return None
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "xfailed": 0}
    failures: list[FailedTest] = []
    passing: list[tuple[str, float]] = []
    for case in root.iter("testcase"):
        file, line = case.get("file"), case.get("line")
        errors, fails = case.findall("error"), case.findall("failure")
        skipped = case.find("skipped")
        if errors or fails:
            first = (errors or fails)[0]
            collection = bool(errors) and first.get("message") == "collection failure"
            kind = "collection" if collection else ("error" if errors else "failed")
            counts["errors" if errors else "failed"] += 1
            # pytest 9 subtests: one <failure> per failed subtest, then "contains N failed subtest"
            marker = [f for f in fails if (f.get("message") or "").startswith("contains ")]
            subs = len(fails) - len(marker) if marker or len(fails) > 1 else 0
            failures.append(FailedTest(
                nodeid=file if collection and file else nodeid(file, case.get("classname", ""),
                                                               case.get("name", "")),
                file=file, line=int(line) + 1 if line is not None and not collection else None,
                kind=kind, message=(first.get("message") or "")[:500],
                text=(first.text or "")[:TEXT_CHARS], subfailures=subs))
        elif skipped is not None:
            counts["xfailed" if skipped.get("type") == "pytest.xfail" else "skipped"] += 1
        else:
            counts["passed"] += 1
            seconds = float(case.get("time") or 0.0)
            passing.append((nodeid(file, case.get("classname", ""), case.get("name", "")), seconds))
    unique = {f.nodeid: f for f in reversed(failures)}  # one entry per test, the first one kept
    return JUnitReport(**counts, passing=tuple(passing), failures=tuple(unique[k] for k in dict.fromkeys(
        f.nodeid for f in failures)))


def read_report(path: Path, max_bytes: int = MAX_REPORT_BYTES) -> JUnitReport | None:
    """The report pytest wrote at `path` (None when it wrote none: not pytest, or it crashed).

    The file lies where the tests can write, so it is read as hostile: not through a symbolic
    link, never blocking (a FIFO is refused, not waited on), only a regular file of at most
    `max_bytes` (a 1 GB sparse file is refused without being read); None otherwise.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
            return None
        data = f.read(max_bytes + 1)  # the file may grow after fstat: read one byte past the cap
    if len(data) > max_bytes:
        return None
    return parse_junit(data.decode(errors="replace"))

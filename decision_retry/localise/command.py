"""The narrowest test command that reproduces a failure: the user's pytest command, its options
kept (they shape how tests run), its paths replaced by the failing tests' node ids."""

from __future__ import annotations

import shlex
from pathlib import Path

from decision_retry.repo.testrun import TestResult

MAX_NODE_IDS = 20
# pytest options that take a separate value (`-k EXPR`); the rest are flags or `--opt=value`
VALUED = {"-o", "-p", "-c", "-W", "-k", "-m", "-n", "-r", "--rootdir", "--import-mode",
          "--confcutdir", "--override-ini", "--maxfail", "--deselect", "--ignore", "--ignore-glob",
          "--junitxml", "--junit-xml", "--tb", "--durations", "--basetemp"}
SELECTING = {"-k", "-m", "--lf", "--last-failed", "--ff", "--failed-first", "--sw", "--stepwise",
             "--deselect"}  # options that choose tests: node ids choose instead


def split_pytest(test_cmd: str) -> tuple[list[str], list[str], list[str]] | None:
    """(program words up to `pytest`, options with their values, positional args), or None when
    the command is not pytest (`make test`, a script)."""
    try:
        words = shlex.split(test_cmd or "")
    except ValueError:
        return None
    if "pytest" in words[:3] and (words.index("pytest") == 0 or words[words.index("pytest") - 1]
                                  == "-m"):
        cut = words.index("pytest") + 1
    elif words[:1] and Path(words[0]).name in ("pytest", "py.test"):
        cut = 1
    else:
        return None
    options, positional, i = [], [], cut
    while i < len(words):
        w = words[i]
        name = w.split("=", 1)[0]
        takes = name in VALUED and "=" not in w and not (len(name) == 2 and len(w) > 2)
        if w.startswith("-"):
            options += words[i : i + 1 + takes]
            i += 1 + takes
        else:
            positional.append(w)
            i += 1
    return words[:cut], options, positional


def narrow_command(test_cmd: str, result: TestResult) -> str | None:
    """The pytest command on the failing node ids only (None: not pytest, or no node ids)."""
    parts = split_pytest(test_cmd)
    ids = [f.nodeid for f in result.failures if f.kind != "collection" and "::" in f.nodeid]
    ids = ids or [t for t in result.failing_tests if "::" in t]
    if parts is None or not ids:
        return None
    prog, options, _ = parts
    kept, i = [], 0
    while i < len(options):
        name = options[i].split("=", 1)[0]
        takes = name in VALUED and "=" not in options[i] and not (len(name) == 2
                                                                  and len(options[i]) > 2)
        if name not in SELECTING:
            kept += options[i : i + 1 + takes]
        i += 1 + takes
    return shlex.join([*prog, *kept, *ids[:MAX_NODE_IDS]])

"""Helpers shared by the benchmark scripts: timing, interleaved repetitions, tables, JSON.

A benchmark script measures, prints a markdown table, and writes one JSON file that says
what ran where: the command, the git commit, the machine, its load, and the results.
Nothing here knows about models; scripts import what they need.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


# -- timing ----------------------------------------------------------------------------------
def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of one call."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def interleaved(
    variants: Mapping[str, Callable[[], Any]],
    reps: int,
    *,
    budget_s: float | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, list[Any]]:
    """Run every variant `reps` times, rotating the order each round; results per variant.

    On a shared machine the load drifts: interleaving spreads it over all variants, and the
    rotation keeps any one of them from always running first (cold) or last. A variant whose
    runs have taken more than `budget_s` seconds in all is not repeated (it keeps >= 1 run).
    """
    names = list(variants)
    out: dict[str, list[Any]] = {n: [] for n in names}
    spent = dict.fromkeys(names, 0.0)
    for r in range(reps):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            if budget_s is not None and spent[name] > budget_s:
                continue
            seconds, result = timed(variants[name])
            spent[name] += seconds
            out[name].append(result)
            if log:
                log(f"  rep {r + 1}/{reps} {name}: {result}")
    return out


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


# -- where it ran ----------------------------------------------------------------------------
def git_sha() -> str | None:
    """HEAD of the repository, with '-dirty' when the work tree has changes (read-only git)."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return sha + ("-dirty" if dirty else "")


def load() -> list[float] | None:
    """1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU, cores, memory, OS, Python and the versions of the libraries a benchmark cares about."""
    from decision_retry.bench.results import cpu_model  # the one reading of the processor's name

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gb"] = round(pages * size / 1e9, 1)
    except (ValueError, OSError, AttributeError):
        pass
    for mod in ("torch", "transformers", "numpy"):
        m = sys.modules.get(mod)
        if m is not None:
            info[mod] = getattr(m, "__version__", None)
    return info


def command() -> str:
    """The command line that ran this script, as a person would type it from the repo root."""
    exe = Path(sys.executable)
    exe_s = str(exe.relative_to(REPO)) if exe.is_relative_to(REPO) else exe.name
    return shlex.join([exe_s, *sys.argv])


# -- output ----------------------------------------------------------------------------------
def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats get 3 significant decimals unless already strings."""

    def cell(x: Any) -> str:
        if isinstance(x, float):
            return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"
        return "" if x is None else str(x)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(
    path: str | Path, results: Mapping[str, Any], *, started: float | None = None
) -> Path:
    """Write results with the command, git commit, machine, load and time; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "command": command(),
        "git_sha": git_sha(),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "load_at_end": load(),
        **({"wall_s": round(time.perf_counter() - started, 1)} if started is not None else {}),
        **results,
    }
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path

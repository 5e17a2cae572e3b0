"""Where a run's compute went: CPU seconds of the whole process tree per category, wall next to it.

CPU seconds are `getrusage` of this process (every thread: decode threads included) plus its
children (test subprocesses, counted once they are reaped): stable on a shared machine where wall
time is not. Categories: decode (extend, fork), prefill and scoring (prefill, teacher-forced
`score`), tests (count, cached, seconds), localisation; `other` is the rest of the run. A category
entered inside another one counts for the outer one only, so the categories never overlap and sum
to at most the total.

`metering()` makes a `Meter` the current one for a run (a context variable: threads of the same
run see it); `out_of_time(limit)` is the check `fix --time-limit` adds where the token budget is
checked.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ClassVar

CATEGORIES = ("decode", "prefill", "tests", "localisation")
LABELS = {"decode": "decode", "prefill": "prefill+scoring", "tests": "tests",
          "localisation": "localisation", "other": "other"}
COUNTERS = {"kv_disordered": "decodes with KV cells out of order", "kv_evictions": "KV evictions"}


def process_cpu() -> float:
    """User + system CPU seconds of this process and its reaped children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class Meter:
    """Seconds per category for one run, from the moment it is made; with `counters` (the
    engine's own, e.g. llama.cpp's decodes whose KV cells came out of order), their change."""

    def __init__(self, counters: Callable[[], dict[str, int]] | None = None) -> None:
        self.counters = counters
        self.counters0 = counters() if counters else {}
        self.cpu0, self.wall0 = process_cpu(), time.monotonic()
        self.cpu = dict.fromkeys(CATEGORIES, 0.0)
        self.wall = dict.fromkeys(CATEGORIES, 0.0)
        self.test_runs = 0  # test commands asked for, cached ones included
        self.cached_runs = 0
        self._inside: str | None = None

    def cpu_s(self) -> float:
        """CPU seconds of the process tree since the meter started."""
        return process_cpu() - self.cpu0

    @contextmanager
    def timed(self, category: str) -> Iterator[None]:
        """Count the CPU and wall seconds of the block for `category` (unless inside another)."""
        if category not in self.cpu:
            raise ValueError(f"unknown cost category {category!r}; one of {', '.join(CATEGORIES)}")
        if self._inside is not None:
            yield
            return
        self._inside = category
        cpu, wall = process_cpu(), time.monotonic()
        try:
            yield
        finally:
            self.cpu[category] += process_cpu() - cpu
            self.wall[category] += time.monotonic() - wall
            self._inside = None

    def test_run(self, *, cached: bool) -> None:
        self.test_runs += 1
        self.cached_runs += cached

    def summary(self) -> dict[str, Any]:
        """{cpu_s, wall_s, <category>: {cpu_s, wall_s}, other: ..., test_runs, cached_runs} and,
        with counters, engine: {name: change}."""
        cpu, wall = self.cpu_s(), time.monotonic() - self.wall0
        out: dict[str, Any] = {"cpu_s": round(cpu, 6), "wall_s": round(wall, 6)}
        for c in CATEGORIES:  # microseconds: a scripted model's prefill takes less than 1 ms
            out[c] = {"cpu_s": round(self.cpu[c], 6), "wall_s": round(self.wall[c], 6)}
        out["other"] = {"cpu_s": round(max(0.0, cpu - sum(self.cpu.values())), 6),
                        "wall_s": round(max(0.0, wall - sum(self.wall.values())), 6)}
        out["test_runs"], out["cached_runs"] = self.test_runs, self.cached_runs
        if self.counters:
            now = self.counters()
            out["engine"] = {k: v - self.counters0.get(k, 0) for k, v in now.items()}
        return out


_CURRENT: ContextVar[Meter | None] = ContextVar("decision_retry_meter", default=None)


@contextmanager
def metering(meter: Meter | None = None) -> Iterator[Meter]:
    """Make `meter` (a new one by default) the current run's meter for the block."""
    meter = meter or Meter()
    token = _CURRENT.set(meter)
    try:
        yield meter
    finally:
        _CURRENT.reset(token)


def current() -> Meter | None:
    return _CURRENT.get()


@contextmanager
def timed(category: str) -> Iterator[None]:
    """`current().timed(category)`, or nothing when no run is metered."""
    meter = _CURRENT.get()
    if meter is None:
        yield
        return
    with meter.timed(category):
        yield


def out_of_time(limit_s: float | None) -> bool:
    """True once the current run has used `limit_s` CPU seconds (None: no limit)."""
    meter = _CURRENT.get()
    return limit_s is not None and meter is not None and meter.cpu_s() >= limit_s


def costs_line(costs: dict[str, Any] | None) -> str:
    """One line: `cpu 12.3 s (wall 15.0 s): decode 4.1, prefill+scoring 0.8, tests 6.0
    (9 runs, 7 cached), localisation 1.0, other 0.4`; "" without a record."""
    if not costs:
        return ""
    parts = []
    for c in (*CATEGORIES, "other"):
        part = f"{LABELS[c]} {costs.get(c, {}).get('cpu_s', 0.0):.1f}"
        if c == "tests":
            part += f" ({costs.get('test_runs', 0)} runs, {costs.get('cached_runs', 0)} cached)"
        parts.append(part)
    odd = {k: v for k, v in (costs.get("engine") or {}).items() if v}
    tail = "; " + ", ".join(f"{COUNTERS.get(k, k)} {v}" for k, v in odd.items()) if odd else ""
    return (f"cpu {costs.get('cpu_s', 0.0):.1f} s (wall {costs.get('wall_s', 0.0):.1f} s): "
            + ", ".join(parts) + tail)


class TimedEngine:
    """A decode engine whose calls count as decode or prefill+scoring in the current meter;
    everything else passes through to `engine`."""

    _CATEGORY: ClassVar[dict[str, str]] = {"extend": "decode", "extend_many": "decode",
                                           "extend_along": "decode", "fork": "decode",
                                           "prefill": "prefill", "score": "prefill"}

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.engine, name)
        category = self._CATEGORY.get(name)
        if category is None or not callable(value):
            return value

        def call(*args: Any, **kw: Any) -> Any:
            with timed(category):
                return value(*args, **kw)

        return call


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_seconds(text: str) -> float:
    """`90s`, `5m`, `1h`, `1.5h` or plain seconds (`300`) as seconds; ValueError naming the value."""
    raw = str(text).strip().lower()
    unit = _UNITS.get(raw[-1:], None)
    number = raw[:-1] if unit else raw
    try:
        value = float(number) * (unit or 1.0)
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 5m, 1h or seconds)") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"a duration must be positive and finite, got {text!r}")
    return value

"""Fault containment for OTLP export: a collector that is down, slow or refusing never hangs or
fails a run, and costs one warning line.

`GuardedExporter` wraps the standard exporter: it never raises, holds back the exporter's own log
records (retries, tracebacks) and turns the first failure into one line on stderr. `shutdown`
bounds the final flush whatever the exporter does.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, TextIO

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

WARNING = (
    "warning: could not export traces to {target} ({reason}); the local trace store is complete"
)


class _Quiet(logging.Filter):
    """Holds back log records made inside a guarded call, on that call's thread only."""

    def __init__(self) -> None:
        super().__init__()
        self.local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        held = getattr(self.local, "held", None)
        if held is None:
            return True
        held.append(record.getMessage())
        return False


_QUIET = _Quiet()


def install_quiet() -> None:
    """Attach the filter to every OpenTelemetry, gRPC and urllib3 logger that exists now."""
    for name in list(logging.Logger.manager.loggerDict):
        if name.split(".")[0] in ("opentelemetry", "urllib3", "grpc"):
            logger = logging.getLogger(name)
            if _QUIET not in logger.filters:
                logger.addFilter(_QUIET)


@contextmanager
def _held() -> Iterator[list[str]]:
    """Within this block, on this thread, those loggers' records are collected, not printed."""
    _QUIET.local.held = held = []
    try:
        yield held
    finally:
        _QUIET.local.held = None


def reason(messages: Sequence[str], error: BaseException | None, slow: bool, timeout: float) -> str:
    """A short cause from what the exporter logged or raised (their wording, condensed)."""
    text = " ".join(" ".join(messages).split()) or str(error or "")
    if errno := re.search(r"\[Errno -?\d+\] ([\w ,.-]+)", text):  # e.g. connection refused
        return errno.group(1).strip().rstrip(".").lower()
    grpc = re.search(r"StatusCode\.(\w+)", text)
    if grpc and not (slow and grpc.group(1) == "DEADLINE_EXCEEDED"):
        details = re.search(r"[dD]etails: ([^;.]+)", text)
        return grpc.group(1) + (f": {details.group(1).strip()}" if details else "")
    if status := re.search(r"code: (\d{3}), reason: ([\w ]+)", text):
        return f"HTTP {status.group(1)} {status.group(2).strip()}"
    if transient := re.search(r"Transient error (.+?) encountered", text):
        return transient.group(1)
    if slow or "due to timeout" in text:
        return f"no answer within {timeout:g}s"
    return text[:120] or "export failed"


class GuardedExporter(SpanExporter):
    """An OTLP exporter that never raises or floods the log: its first failure is one line."""

    def __init__(self, inner: SpanExporter, target: str, timeout_s: float) -> None:
        self.inner, self.target, self.timeout_s = inner, target, timeout_s
        self.stream: TextIO | None = None  # None: sys.stderr at the time of the warning
        self.exported = self.failed = self.pending = 0
        self._lock = threading.Lock()
        self._warned = self._closed = False

    @property
    def delivered(self) -> bool:
        """True while nothing has failed and no export is still in flight."""
        return self.failed == 0 and self.pending == 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        error, result, began = None, SpanExportResult.FAILURE, time.monotonic()
        self.pending += 1
        with _held() as held:
            try:
                result = self.inner.export(spans)
            except Exception as err:  # noqa: BLE001 - a collector must never fail the run
                error = err
        self.pending -= 1
        if result is SpanExportResult.SUCCESS:
            self.exported += len(spans)
            return result
        self.failed += len(spans)
        slow = time.monotonic() - began >= 0.8 * self.timeout_s
        self.warn(reason(held, error, slow, self.timeout_s))
        return result

    def warn(self, cause: str) -> None:
        """Print the one warning line of this exporter, the first time only."""
        with self._lock:
            if self._warned:
                return
            self._warned = True
        stream = self.stream or sys.stderr
        with suppress(Exception):  # a closed stderr must not fail the run either
            stream.write(WARNING.format(target=self.target, reason=cause) + "\n")
            stream.flush()

    def shutdown(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with _held(), suppress(Exception):
            self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


def within(fn: Callable[[], Any], timeout_s: float) -> bool:
    """Run `fn` in a daemon thread; False if it raised or did not finish within `timeout_s`."""
    done, ok = threading.Event(), []

    def target() -> None:
        try:
            with suppress(Exception):
                fn()
                ok.append(True)
        finally:
            done.set()

    threading.Thread(target=target, name="decision-retry-otel-flush", daemon=True).start()
    return done.wait(timeout_s) and bool(ok)


def shutdown(provider: TracerProvider, guard: GuardedExporter, timeout_s: float) -> bool:
    """Flush and shut down within `timeout_s`; True when every span was delivered."""
    finished = within(provider.shutdown, timeout_s)
    if finished and guard.delivered:
        return True
    if guard.pending or not finished:  # still waiting on the collector: give up on it
        guard.warn(f"no answer within {timeout_s:g}s")  # unless a failure was reported already
        within(guard.shutdown, 1.0)  # aborts the exporter's retries in the background
    return False

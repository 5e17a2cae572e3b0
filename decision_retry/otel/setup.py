"""OTLP export configured the standard way, which never hangs or fails a run.

Nothing configured (no `--otlp`, no OTLP endpoint in the environment, `OTEL_TRACES_EXPORTER` not
naming `otlp`) means no exporter and no cost. Otherwise: a `TracerProvider` with a
`BatchSpanProcessor` over the standard OTLP exporter, http/protobuf or grpc, which reads its own
`OTEL_EXPORTER_OTLP_*` variables (endpoint, headers, certificates, compression, timeout);
`OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` name the service, `OTEL_BSP_*` tune batching.

A collector that is down, slow or refusing costs at most the export timeout, in the background,
and one warning line on stderr (`guard.py`); the final flush is bounded.
"""

from __future__ import annotations

import atexit
import os
import weakref
from urllib.parse import urlparse

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from decision_retry import __version__
from decision_retry.errors import BadInput
from decision_retry.otel import guard as G
from decision_retry.otel.spans import SpanListener, replay
from decision_retry.trace.models import RunTree

PROTOCOLS = ("http/protobuf", "grpc")
DEFAULT_TIMEOUT_S = 4.0  # per export, when no OTEL_EXPORTER_OTLP_*TIMEOUT is set (the SDK's: 10)
SHUTDOWN_GRACE_S = 2.0  # shutdown waits the export timeout plus this, then gives up,
SHUTDOWN_MAX_S = 15.0  # and never longer than this, whatever timeout the environment sets
_TIMEOUT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")


def otlp_protocol(protocol: str | None = None) -> str:
    """`protocol`, else $OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, $OTEL_EXPORTER_OTLP_PROTOCOL, or
    http/protobuf; BadInput for anything else."""
    chosen = (
        protocol
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if chosen not in PROTOCOLS:
        raise BadInput(f"unsupported OTLP protocol {chosen!r}: use one of {', '.join(PROTOCOLS)}")
    return chosen


def otlp_configured(endpoint: str | None = None) -> bool:
    """True when `endpoint` is given or the environment asks for OTLP trace export."""
    if endpoint:
        return True
    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    named = {e.strip() for e in env.get("OTEL_TRACES_EXPORTER", "").lower().split(",")} - {""}
    if named:
        return "otlp" in named
    return bool(
        env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def _timeout_s() -> float:
    """The export timeout the exporter will use: its env var if set (seconds, as the Python
    exporters read it), else DEFAULT_TIMEOUT_S, which we pass explicitly."""
    for name in _TIMEOUT_VARS:
        try:
            return float(os.environ[name])
        except (KeyError, ValueError):
            continue
    return DEFAULT_TIMEOUT_S


def _explicit_timeout() -> float | None:
    return None if any(os.environ.get(n) for n in _TIMEOUT_VARS) else DEFAULT_TIMEOUT_S


def _shutdown_limit(timeout_s: float | None) -> float:
    return (
        timeout_s if timeout_s is not None else min(_timeout_s() + SHUTDOWN_GRACE_S, SHUTDOWN_MAX_S)
    )


def _otlp_exporter(endpoint: str | None, protocol: str) -> SpanExporter:
    """The standard exporter; `endpoint` is a base URL like $OTEL_EXPORTER_OTLP_ENDPOINT."""
    if endpoint and "://" not in endpoint:
        endpoint = f"http://{endpoint}"
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc

        return Grpc(endpoint=endpoint, timeout=_explicit_timeout())
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

    if endpoint and not urlparse(endpoint).path.rstrip("/").endswith("/v1/traces"):
        endpoint = endpoint.rstrip("/") + "/v1/traces"
    return Http(endpoint=endpoint, timeout=_explicit_timeout())


def _build(
    endpoint: str | None, protocol: str | None
) -> tuple[TracerProvider, G.GuardedExporter] | None:
    """A provider exporting over OTLP, and its guard; None when nothing is configured."""
    if not otlp_configured(endpoint):
        return None
    exporter = _otlp_exporter(endpoint, otlp_protocol(protocol))
    G.install_quiet()  # after the exporter's modules created their loggers
    target = str(getattr(exporter, "_endpoint", None) or endpoint or "the OTLP endpoint")
    guard = G.GuardedExporter(exporter, target, _timeout_s())
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "decision-retry"}))
    if "service.version" not in resource.attributes:
        resource = resource.merge(Resource({"service.version": __version__}))
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)  # we bound shutdown
    provider.add_span_processor(BatchSpanProcessor(guard))
    return provider, guard


def tracer_provider_from_env(
    endpoint: str | None = None, protocol: str | None = None
) -> TracerProvider | None:
    """A TracerProvider exporting over OTLP as the environment (or `endpoint`, `protocol`)
    says; None when nothing is configured."""
    built = _build(endpoint, protocol)
    return built[0] if built is not None else None


def listener_from_config(
    otlp: str | None = None,
    tracer_provider: TracerProvider | None = None,
    *,
    protocol: str | None = None,
) -> SpanListener | None:
    """The run's span listener: on `tracer_provider` if given, else exporting to the `otlp`
    endpoint or the environment's; None when nothing is configured. Call `.shutdown()` at the end
    (an OTLP listener also shuts down at process exit if it was not)."""
    if tracer_provider is not None:
        if otlp:
            raise ValueError("pass either otlp or tracer_provider, not both")

        def flush(timeout_s: float | None) -> bool:
            return G.within(tracer_provider.force_flush, _shutdown_limit(timeout_s))

        return SpanListener(tracer_provider, on_shutdown=flush)
    built = _build(otlp, protocol)
    if built is None:
        return None
    provider, guard = built

    def shutdown(timeout_s: float | None) -> bool:
        return G.shutdown(provider, guard, _shutdown_limit(timeout_s))

    listener = SpanListener(provider, on_shutdown=shutdown)
    _shutdown_at_exit(weakref.ref(listener))
    return listener


def _shutdown_at_exit(ref: weakref.ref[SpanListener]) -> None:
    """A process that never called `shutdown()` still flushes at exit, within the same bound."""

    def at_exit() -> None:
        listener = ref()
        if listener is not None:
            listener.shutdown()  # a second call is cheap: ends nothing, flushes nothing

    atexit.register(at_exit)


def export_run(
    tree: RunTree, otlp: str | None = None, *, protocol: str | None = None
) -> tuple[int, bool]:
    """Replay a stored run as spans to the configured collector: (spans, all delivered)."""
    listener = listener_from_config(otlp, protocol=protocol)
    if listener is None:
        raise BadInput("no OTLP endpoint: pass --otlp URL or set OTEL_EXPORTER_OTLP_ENDPOINT")
    replay(tree, listener)
    delivered = listener.shutdown()
    return listener.spans_ended, delivered

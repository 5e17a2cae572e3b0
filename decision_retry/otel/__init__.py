"""OpenTelemetry export of runs: GenAI-convention spans, configured the standard OTLP way.

listener = listener_from_config(otlp)          # None when nothing is configured
recorder = Recorder(store, listeners=[listener] if listener else [])
...
if listener:
    listener.shutdown()                        # bounded; never raises
"""

from decision_retry.otel.setup import (
    PROTOCOLS,
    export_run,
    listener_from_config,
    otlp_configured,
    otlp_protocol,
    tracer_provider_from_env,
)
from decision_retry.otel.spans import SpanListener, replay

__all__ = [
    "PROTOCOLS",
    "SpanListener",
    "export_run",
    "listener_from_config",
    "otlp_configured",
    "otlp_protocol",
    "replay",
    "tracer_provider_from_env",
]

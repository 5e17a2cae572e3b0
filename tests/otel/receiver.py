"""A real OTLP trace receiver on 127.0.0.1 for tests, built on the opentelemetry-proto messages.

`HttpReceiver` accepts POST /v1/traces (protobuf), `GrpcReceiver` implements TraceService/Export;
both listen on ephemeral ports and decode what they get into `Received` spans. `SilentServer`
accepts connections and never answers; `closed_endpoint()` names a port nobody listens on;
`in_memory()` is a provider whose spans stay in the process.
"""

from __future__ import annotations

import gzip
import socket
import threading
import zlib
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


def decode_value(value: AnyValue) -> Any:
    """An OTLP AnyValue as a Python value."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [decode_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return decode_attributes(value.kvlist_value.values)
    return getattr(value, kind) if kind else None


def decode_attributes(pairs: list[KeyValue]) -> dict[str, Any]:
    """OTLP key-value pairs as a dict."""
    return {kv.key: decode_value(kv.value) for kv in pairs}


@dataclass(frozen=True)
class Received:
    """One span as a collector saw it; ids are hex strings, parent "" for a root."""

    name: str
    trace_id: str
    span_id: str
    parent_id: str
    start_ns: int
    end_ns: int
    status: int  # 0 unset, 1 ok, 2 error
    attributes: dict[str, Any]
    links: tuple[tuple[str, str, dict[str, Any]], ...]  # (trace id, span id, attributes)
    resource: dict[str, Any]
    scope: str


class Collected:
    """Requests received so far, their headers and their spans; safe across server threads."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []
        self.spans: list[Received] = []
        self._changed = threading.Condition()

    def add(self, request: trace_service_pb2.ExportTraceServiceRequest, headers: dict) -> None:
        """Decode one ExportTraceServiceRequest."""
        spans = []
        for rs in request.resource_spans:
            resource = decode_attributes(rs.resource.attributes)
            for ss in rs.scope_spans:
                for s in ss.spans:
                    links = tuple(
                        (
                            link.trace_id.hex(),
                            link.span_id.hex(),
                            decode_attributes(link.attributes),
                        )
                        for link in s.links
                    )
                    spans.append(
                        Received(
                            name=s.name,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex(),
                            start_ns=s.start_time_unix_nano,
                            end_ns=s.end_time_unix_nano,
                            status=s.status.code,
                            attributes=decode_attributes(s.attributes),
                            links=links,
                            resource=resource,
                            scope=ss.scope.name,
                        )
                    )
        with self._changed:
            self.headers.append({k.lower(): v for k, v in headers.items()})
            self.spans.extend(spans)
            self._changed.notify_all()


class _Handler(BaseHTTPRequestHandler):
    server: _HttpServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.server.status != 200 or self.path != "/v1/traces":
            self.send_response(self.server.status if self.path == "/v1/traces" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        encoding = self.headers.get("Content-Encoding", "")
        body = gzip.decompress(body) if encoding == "gzip" else body
        body = zlib.decompress(body) if encoding == "deflate" else body
        request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        self.server.collected.add(request, dict(self.headers.items()))
        reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: Any) -> None:  # quiet
        pass


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    collected: Collected
    status: int


class HttpReceiver:
    """OTLP/HTTP on 127.0.0.1; `status` other than 200 refuses every export with it."""

    def __init__(self, status: int = 200) -> None:
        self.collected = Collected()
        self._server = _HttpServer(("127.0.0.1", 0), _Handler)
        self._server.collected, self._server.status = self.collected, status
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Self:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, collected: Collected) -> None:
        self.collected = collected

    def Export(self, request, context):
        self.collected.add(request, dict(context.invocation_metadata()))
        return trace_service_pb2.ExportTraceServiceResponse()


class GrpcReceiver:
    """OTLP/gRPC on 127.0.0.1 (plaintext), implementing TraceService/Export."""

    def __init__(self) -> None:
        self.collected = Collected()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(
            _TraceService(self.collected), self._server
        )
        port = self._server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"http://127.0.0.1:{port}"

    def __enter__(self) -> Self:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(grace=None)


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never reads or answers: a hung collector."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self.endpoint = f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                self._conns.append(self._sock.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    def __enter__(self) -> Self:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for conn in self._conns:
            conn.close()
        self._sock.close()


def closed_endpoint() -> str:
    """An http:// endpoint on a loopback port that was just free: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def in_memory() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter

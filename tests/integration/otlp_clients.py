"""Real OpenTelemetry SDK clients (HTTP and gRPC exporters) for the OTLP tests, a fake OpenAI
provider, and module-scoped server processes."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import httpx
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tests.conftest import Server, create_pg_database, drop_pg_database, start_server

# The body of a real chat completion (shape recorded from the OpenAI API, values made up).
CHAT_COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
    "object": "chat.completion",
    "created": 1741569952,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Paris is the capital of France.",
                "refusal": None,
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 24,
        "completion_tokens": 8,
        "total_tokens": 32,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
    "service_tier": "default",
    "system_fingerprint": "fp_06737a9306",
}


class _ProviderHandler(BaseHTTPRequestHandler):
    requests: list[dict[str, Any]]

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        self.server.requests.append({"path": self.path, "body": body})  # type: ignore[attr-defined]
        payload = json.dumps(CHAT_COMPLETION).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.send_header("x-request-id", "req_test")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def fake_openai() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """An OpenAI-compatible chat completion endpoint on 127.0.0.1; yields (base_url, requests)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ProviderHandler)
    server.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", server.requests  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def grpc_port(server: Server) -> int:
    return int(server.env["OBSERVATORY_GRPC_PORT"])


def wait_grpc(port: int, timeout: float = 20) -> None:
    """The gRPC receiver starts beside the HTTP server; wait until it accepts connections."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=timeout)


@dataclass
class Telemetry:
    """SDK providers wired to one server with the chosen transport."""

    tracer_provider: TracerProvider
    logger_provider: LoggerProvider
    meter_provider: MeterProvider

    def flush(self) -> None:
        assert self.tracer_provider.force_flush(30_000)
        assert self.logger_provider.force_flush(30_000)
        assert self.meter_provider.force_flush(30_000)

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.logger_provider.shutdown()
        self.meter_provider.shutdown()


def exporters(
    server: Server, transport: str, key: str | None = None, **metric_kwargs: Any
) -> tuple[Any, Any, Any]:
    """(span, log, metric) exporters of the OpenTelemetry SDK for ``transport`` http or grpc."""
    secret = key or server.admin_key
    if transport == "http":
        from opentelemetry.exporter.otlp.proto.http import Compression
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        headers = {"Authorization": f"Bearer {secret}"}
        return (
            OTLPSpanExporter(
                endpoint=f"{server.base_url}/v1/traces",
                headers=headers,
                compression=Compression.Gzip,
            ),
            OTLPLogExporter(endpoint=f"{server.base_url}/v1/logs", headers=headers),
            OTLPMetricExporter(
                endpoint=f"{server.base_url}/v1/metrics", headers=headers, **metric_kwargs
            ),
        )
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import (
        OTLPLogExporter as GrpcLogExporter,
    )
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
        OTLPMetricExporter as GrpcMetricExporter,
    )
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
        OTLPSpanExporter as GrpcSpanExporter,
    )

    port = grpc_port(server)
    wait_grpc(port)
    endpoint = f"127.0.0.1:{port}"
    # gRPC metadata keys are lowercase; the x-api-key form is exercised here too.
    return (
        GrpcSpanExporter(
            endpoint=endpoint,
            insecure=True,
            headers={"authorization": f"Bearer {secret}"},
            compression=grpc.Compression.Gzip,
        ),
        GrpcLogExporter(endpoint=endpoint, insecure=True, headers={"x-api-key": secret}),
        GrpcMetricExporter(
            endpoint=endpoint,
            insecure=True,
            headers={"authorization": f"Bearer {secret}"},
            **metric_kwargs,
        ),
    )


def telemetry(
    server: Server,
    transport: str,
    service: str = "otlp-test",
    key: str | None = None,
    **metric_kwargs: Any,
) -> Telemetry:
    span_exporter, log_exporter, metric_exporter = exporters(
        server, transport, key, **metric_kwargs
    )
    resource = Resource.create({"service.name": service})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(log_exporter))
    # Exported only by flush() (the interval is far longer than any test).
    reader = PeriodicExportingMetricReader(metric_exporter, export_interval_millis=3_600_000)
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    return Telemetry(tracer_provider, logger_provider, meter_provider)


@contextmanager
def module_server(
    tmp_path_factory: Any, database: str, env: dict[str, str] | None = None
) -> Iterator[Server]:
    """A server process for a whole test module on ``sqlite`` or a fresh PostgreSQL database."""
    data_dir: Path = tmp_path_factory.mktemp(f"server-{database}")
    url = create_pg_database("obs_otlp") if database == "postgresql" else None
    server = start_server(data_dir, url, env)
    try:
        yield server
    finally:
        server.stop()
        if url is not None:
            drop_pg_database(url)


def get_json(server: Server, path: str, **params: Any) -> Any:
    response = httpx.get(
        f"{server.base_url}{path}",
        params=params,
        headers={"Authorization": f"Bearer {server.admin_key}"},
        timeout=30,
    )
    assert response.status_code == 200, (path, response.status_code, response.text)
    return response.json()

"""The OTLP/gRPC receiver of a real server process: the OpenTelemetry SDK's gRPC exporters for
all three signals, status codes as the OTLP specification maps them (UNAUTHENTICATED,
PERMISSION_DENIED, INVALID_ARGUMENT, UNAVAILABLE and RESOURCE_EXHAUSTED with RetryInfo),
partial success, TLS and the collector role."""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tests.conftest import Server, start_server
from tests.integration.conftest import App
from tests.integration.otlp_clients import (
    get_json,
    grpc_port,
    module_server,
    telemetry,
    wait_grpc,
)
from tests.otlp_builder import BASE_NS, SpanSpec, llm_attributes, protobuf_request, trace_id

TRACES = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
LOGS = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
METRICS = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
RANGE = {"start": str(BASE_NS // 10**9 - 3600), "end": str(BASE_NS // 10**9 + 86400)}


@pytest.fixture(scope="module")
def server(tmp_path_factory: Any) -> Iterator[Server]:
    # A short commit timeout, so a blocked database is answered UNAVAILABLE quickly.
    env = {"OBSERVATORY_REQUEST_TIMEOUT_SECONDS": "2", "OBSERVATORY_MAX_BODY_BYTES": "1048576"}
    with module_server(tmp_path_factory, "sqlite", env) as srv:
        wait_grpc(grpc_port(srv))
        yield srv


def export(
    server: Server,
    method: str,
    body: bytes,
    key: str | None = "admin",
    channel: grpc.Channel | None = None,
) -> bytes:
    """One raw unary call (bytes in, bytes out); raises grpc.RpcError on a failure status."""
    metadata = []
    if key is not None:
        metadata.append(("authorization", f"Bearer {server.admin_key if key == 'admin' else key}"))
    own = channel is None
    channel = channel or grpc.insecure_channel(f"127.0.0.1:{grpc_port(server)}")
    try:
        call = channel.unary_unary(method)
        return bytes(call(body, metadata=metadata, timeout=30))
    finally:
        if own:
            channel.close()


def refusal(server: Server, method: str, body: bytes, key: str | None = "admin") -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        export(server, method, body, key)
    return caught.value


def retry_info(error: Any) -> tuple[int, int]:
    """RetryInfo delay in seconds, from both trailers the receiver sends (they must agree)."""
    trailers = dict(error.trailing_metadata())
    plain = error_details_pb2.RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"])
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    assert status.code == error.code().value[0]
    (detail,) = status.details
    packed = error_details_pb2.RetryInfo()
    assert detail.Unpack(packed)
    return plain.retry_delay.seconds, packed.retry_delay.seconds


def _kv(key: str, value: Any) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


def logs_request(records: list[dict[str, Any]]) -> bytes:
    request = ExportLogsServiceRequest()
    rl = request.resource_logs.add()
    rl.resource.attributes.append(_kv("service.name", "grpc-test"))
    sl = rl.scope_logs.add()
    for spec in records:
        record = sl.log_records.add()
        record.time_unix_nano = spec.get("time", BASE_NS)
        record.severity_number = spec.get("severity", 9)
        record.body.string_value = spec.get("body", "hello")
        record.trace_id = bytes.fromhex(spec.get("trace_id", ""))
        record.span_id = bytes.fromhex(spec.get("span_id", ""))
    return request.SerializeToString()


def metrics_request(points: list[dict[str, Any]], service: str = "grpc-test") -> bytes:
    request = ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    rm.resource.attributes.append(_kv("service.name", service))
    metric = rm.scope_metrics.add().metrics.add()
    metric.name = "gen_ai.client.token.usage"
    metric.unit = "{token}"
    metric.histogram.aggregation_temporality = 1  # delta
    for spec in points:
        point = metric.histogram.data_points.add()
        point.start_time_unix_nano = spec["time"] - 10**9 if spec["time"] else 0
        point.time_unix_nano = spec["time"]
        point.count = 1
        point.sum = spec["tokens"]
        point.attributes.extend(
            [
                _kv("gen_ai.token.type", "input"),
                _kv("gen_ai.request.model", "gpt-4o"),
                _kv("gen_ai.system", "openai"),
            ]
        )
    return request.SerializeToString()


def test_sdk_grpc_exporters_send_traces_logs_and_metrics(server: Server) -> None:
    tel = telemetry(server, "grpc", service="grpc-sdk")
    try:
        tracer = tel.tracer_provider.get_tracer("app")
        logger = tel.logger_provider.get_logger("app")
        histogram = tel.meter_provider.get_meter("app").create_histogram(
            "gen_ai.client.token.usage", unit="{token}"
        )
        with tracer.start_as_current_span("handle request") as root:
            with tracer.start_as_current_span(
                "chat gpt-4o", attributes=llm_attributes(input_tokens=120, output_tokens=30)
            ):
                logger.emit(
                    LogRecord(
                        severity_number=SeverityNumber.WARN,
                        severity_text="WARN",
                        body="cache miss for prompt template 'greeting'",
                        attributes={"template": "greeting"},
                    )
                )
            for kind, tokens in (("input", 120), ("output", 30)):
                histogram.record(
                    tokens,
                    {
                        "gen_ai.token.type": kind,
                        "gen_ai.operation.name": "chat",
                        "gen_ai.provider.name": "openai",
                        "gen_ai.request.model": "gpt-4o",
                    },
                )
        tel.flush()
    finally:
        tel.shutdown()
    tid = format(root.get_span_context().trace_id, "032x")
    detail = get_json(server, f"/api/v1/traces/{tid}")
    assert detail["trace"]["span_count"] == 2
    assert detail["trace"]["input_tokens"] == 120
    llm = detail["spans"][0]["children"][0]
    (log,) = detail["logs"]
    assert log["span_id"] == llm["span_id"] and log["trace_id"] == tid
    assert log["severity_number"] == 13 and log["severity_text"] == "WARN"
    assert log["body"] == "cache miss for prompt template 'greeting'"
    assert log["attributes"] == {"template": "greeting"}
    assert log["service_name"] == "grpc-sdk"
    found = get_json(server, "/api/v1/logs", q="CACHE MISS", severity="warn")
    assert [item["trace_id"] for item in found["data"]] == [tid]
    usage = get_json(
        server, "/api/v1/analytics/genai-metrics", range="1h", bucket="none", service="grpc-sdk"
    )["token_usage"]
    assert [(u["model"], u["input_tokens"], u["output_tokens"]) for u in usage] == [
        ("gpt-4o", 120, 30)
    ]


def test_keys_are_checked_from_metadata(server: Server) -> None:
    body = protobuf_request([SpanSpec(trace=0x501, span=1)])
    missing = refusal(server, TRACES, body, key=None)
    assert missing.code() == grpc.StatusCode.UNAUTHENTICATED
    wrong = refusal(server, LOGS, logs_request([{}]), key="obs_not_a_real_key_0123456789")
    assert wrong.code() == grpc.StatusCode.UNAUTHENTICATED
    created = httpx.post(
        f"{server.base_url}/api/v1/admin/keys",
        json={"role": "read"},
        headers={"Authorization": f"Bearer {server.admin_key}"},
    )
    assert created.status_code == 201, created.text
    read_key = created.json()["key"]
    forbidden = refusal(server, METRICS, metrics_request([]), key=read_key)
    assert forbidden.code() == grpc.StatusCode.PERMISSION_DENIED
    # None of these is retryable, so none carries RetryInfo.
    for error in (missing, wrong, forbidden):
        assert "google.rpc.retryinfo-bin" not in dict(error.trailing_metadata())
    audit = get_json(server, "/api/v1/admin/audit", action="auth.refused", outcome="forbidden")
    assert any(
        entry["object_id"] == f"gRPC {METRICS}" and entry["remote_addr"] == "127.0.0.1"
        for entry in audit["data"]
    ), audit
    # An ingest key may export.
    created = httpx.post(
        f"{server.base_url}/api/v1/admin/keys",
        json={"role": "ingest"},
        headers={"Authorization": f"Bearer {server.admin_key}"},
    )
    ExportTraceServiceResponse.FromString(export(server, TRACES, body, key=created.json()["key"]))
    assert get_json(server, f"/api/v1/traces/{trace_id(0x501)}")["trace"]["span_count"] == 1


@pytest.mark.parametrize("method", [TRACES, LOGS, METRICS])
def test_undecodable_request_is_invalid_argument(server: Server, method: str) -> None:
    error = refusal(server, method, b"\x0a\xff\xff\xff\xff\x0f")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid OTLP protobuf" in (error.details() or "")


def test_size_limit_applies_after_decompression(server: Server) -> None:
    huge = logs_request([{"body": "x" * 2_000_000}])
    with (
        grpc.insecure_channel(
            f"127.0.0.1:{grpc_port(server)}", compression=grpc.Compression.Gzip
        ) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        export(server, LOGS, huge, channel=channel)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Not retryable: no RetryInfo.
    assert "google.rpc.retryinfo-bin" not in dict(caught.value.trailing_metadata() or ())
    assert get_json(server, "/api/v1/logs", q="xxxxxxxx")["data"] == []


def test_partial_success_reports_rejected_records(server: Server) -> None:
    spans = protobuf_request(
        [
            SpanSpec(trace=0x502, span=1, name="good"),
            SpanSpec(trace=0x502, span=2, span_hex="abcd", name="bad id"),
        ]
    )
    traces = ExportTraceServiceResponse.FromString(export(server, TRACES, spans))
    assert traces.partial_success.rejected_spans == 1
    assert "span_id" in traces.partial_success.error_message

    logs = logs_request(
        [
            {"trace_id": trace_id(0x502), "span_id": "0000000000000001", "body": "kept"},
            {"trace_id": "abcdef", "body": "bad trace id"},
        ]
    )
    log_response = ExportLogsServiceResponse.FromString(export(server, LOGS, logs))
    assert log_response.partial_success.rejected_log_records == 1
    assert "trace_id" in log_response.partial_success.error_message

    points = metrics_request([{"time": BASE_NS, "tokens": 10}, {"time": 0, "tokens": 99}])
    metric_response = ExportMetricsServiceResponse.FromString(export(server, METRICS, points))
    assert metric_response.partial_success.rejected_data_points == 1

    detail = get_json(server, f"/api/v1/traces/{trace_id(0x502)}")
    assert [s["name"] for s in detail["spans"]] == ["good"]
    assert [log["body"] for log in detail["logs"]] == ["kept"]
    # A fully accepted request has no partial_success at all.
    again = ExportLogsServiceResponse.FromString(export(server, LOGS, logs_request([{}])))
    assert not again.HasField("partial_success")


def test_blocked_database_is_unavailable_with_retry_info(server: Server) -> None:
    db_path = Path(server.data_dir) / "observatory.db"
    spans = protobuf_request([SpanSpec(trace=0x503, span=1)])
    logs = logs_request([{"trace_id": trace_id(0x503), "body": "while blocked"}])
    blocker = sqlite3.connect(db_path, timeout=5, isolation_level=None)
    try:
        # Another writer holds the database: commits wait past the 2 s request timeout.
        blocker.execute("BEGIN EXCLUSIVE")
        for method, body in ((TRACES, spans), (LOGS, logs)):
            error = refusal(server, method, body)
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
            assert retry_info(error) == (2, 2)  # OBSERVATORY_RETRY_AFTER_SECONDS
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    # The client retries (as the exporters do): accepted, and stored once.
    ExportTraceServiceResponse.FromString(export(server, TRACES, spans))
    ExportLogsServiceResponse.FromString(export(server, LOGS, logs))
    detail = get_json(server, f"/api/v1/traces/{trace_id(0x503)}")
    assert detail["trace"]["span_count"] == 1
    assert [log["body"] for log in detail["logs"]] == ["while blocked"]


def test_collector_role_serves_grpc_and_otlp_http(
    server: Server, tmp_path_factory: pytest.TempPathFactory
) -> None:
    database_url = f"sqlite:///{Path(server.data_dir) / 'observatory.db'}"
    collector = start_server(
        tmp_path_factory.mktemp("collector"), database_url, {"OBSERVATORY_ROLE": "collector"}
    )
    try:
        wait_grpc(grpc_port(collector))
        body = logs_request([{"trace_id": trace_id(0x504), "body": "via collector"}])
        ExportLogsServiceResponse.FromString(export(collector, LOGS, body))
        headers = {
            "Authorization": f"Bearer {collector.admin_key}",
            "Content-Type": "application/x-protobuf",
        }
        points = metrics_request([{"time": BASE_NS + 10**9, "tokens": 7}], service="collected")
        posted = httpx.post(f"{collector.base_url}/v1/metrics", content=points, headers=headers)
        assert posted.status_code == 200, posted.text
        # The collector has no query API.
        assert httpx.get(f"{collector.base_url}/api/v1/logs", headers=headers).status_code == 404
    finally:
        collector.stop()
    found = get_json(server, "/api/v1/logs", trace_id=trace_id(0x504))
    assert [log["body"] for log in found["data"]] == ["via collector"]
    usage = get_json(
        server, "/api/v1/analytics/genai-metrics", bucket="none", service="collected", **RANGE
    )["token_usage"]
    assert [(u["model"], u["input_tokens"]) for u in usage] == [("gpt-4o", 7)]


def _certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_tls_and_rate_limit(tmp_path_factory: pytest.TempPathFactory) -> None:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = _certificate(directory)
    tls_server = start_server(
        directory / "data",
        None,
        {
            "OBSERVATORY_GRPC_TLS_CERT_FILE": str(cert),
            "OBSERVATORY_GRPC_TLS_KEY_FILE": str(key),
            # One request per minute per key: the second export is rate limited.
            "OBSERVATORY_RATE_LIMIT_KEY_REQUESTS_PER_MINUTE": "1",
        },
    )
    try:
        port = grpc_port(tls_server)
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
            grpc.channel_ready_future(channel).result(timeout=20)
        provider = TracerProvider(resource=Resource.create({"service.name": "tls-app"}))
        exporter = OTLPSpanExporter(
            endpoint=f"127.0.0.1:{port}",
            credentials=credentials,
            headers={"authorization": f"Bearer {tls_server.admin_key}"},
        )
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        with provider.get_tracer("app").start_as_current_span("over tls") as span:
            pass
        provider.shutdown()
        tid = format(span.get_span_context().trace_id, "032x")
        # Plaintext is not served on the TLS port.
        with pytest.raises(grpc.RpcError) as plaintext:
            export(tls_server, TRACES, protobuf_request([SpanSpec(trace=0x505, span=1)]))
        assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "google.rpc.retryinfo-bin" not in dict(plaintext.value.trailing_metadata() or ())
        # The key's budget (1 request) was spent by the TLS export.
        with (
            grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel,
            pytest.raises(grpc.RpcError) as limited,
        ):
            export(tls_server, LOGS, logs_request([{}]), channel=channel)
        assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        delay, packed = retry_info(limited.value)
        assert delay >= 1 and packed == delay
    finally:
        logs = tls_server.logs()
        tls_server.stop()
    # The span sent over TLS was stored (read from the database: the API key is rate limited).
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{directory / 'data' / 'observatory.db'}")
    with engine.connect() as conn:
        names = conn.execute(
            sa.text("SELECT name FROM spans WHERE trace_id = :t"), {"t": tid}
        ).scalars()
        assert list(names) == ["over tls"]
    engine.dispose()
    assert "OTLP/gRPC receiver listening" in logs


def test_grpc_can_be_turned_off(app_factory: Callable[..., App], tmp_path: Path) -> None:
    on = app_factory(f"sqlite:///{tmp_path / 'on.db'}")
    port = on.settings.grpc_port
    wait_grpc(port)
    assert on.client.app.state.grpc_port == port
    off = app_factory(f"sqlite:///{tmp_path / 'off.db'}", grpc_enabled=False)
    assert not hasattr(off.client.app.state, "grpc_port")
    with pytest.raises(grpc.FutureTimeoutError):
        wait_grpc(off.settings.grpc_port, timeout=1)

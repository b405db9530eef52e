"""``POST /v1/logs`` and the log API on both databases: storage with trace and span ids,
search and keyset pagination, idempotent retries, GenAI events filling a span's prompt and
completion whichever arrives first, retention; and the SDK's OTLP/HTTP log exporter (with the
Python ``logging`` bridge) against a real server process."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.sdk._logs import LoggingHandler

from observatory.store import logs as log_store
from tests.conftest import Server
from tests.integration.conftest import App
from tests.integration.otlp_clients import get_json, telemetry
from tests.otlp_builder import BASE_NS, SpanSpec, gz, json_request, protobuf_request, trace_id

SECOND = 1_000_000_000
RANGE = {"start": str(BASE_NS // SECOND - 3600), "end": str(BASE_NS // SECOND + 86400)}


def span_hex(n: int) -> str:
    return f"{n:016x}"


def any_json(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return {
            "kvlistValue": {"values": [{"key": k, "value": any_json(v)} for k, v in value.items()]}
        }
    if isinstance(value, list):
        return {"arrayValue": {"values": [any_json(v) for v in value]}}
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    return {"stringValue": str(value)}


def record(
    offset_s: float = 0,
    body: Any = "hello",
    trace: int | None = None,
    span: int | None = None,
    severity: int | str | None = 9,
    event_name: str | None = None,
    attributes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"timeUnixNano": str(BASE_NS + int(offset_s * SECOND))}
    if body is not None:
        out["body"] = any_json(body)
    if trace is not None:
        out["traceId"] = trace_id(trace)
    if span is not None:
        out["spanId"] = span_hex(span)
    if severity is not None:
        out["severityNumber"] = severity
    if event_name:
        out["eventName"] = event_name
    if attributes:
        out["attributes"] = [{"key": k, "value": any_json(v)} for k, v in attributes.items()]
    return out


def logs_json(records: list[dict[str, Any]], service: str = "log-svc") -> bytes:
    return orjson.dumps(
        {
            "resourceLogs": [
                {
                    "resource": {
                        "attributes": [{"key": "service.name", "value": {"stringValue": service}}]
                    },
                    "scopeLogs": [{"scope": {"name": "tests"}, "logRecords": records}],
                }
            ]
        }
    )


def post_logs(
    app: App,
    body: bytes,
    content_type: str = "application/json",
    key: str | None = None,
    **headers: str,
) -> Any:
    return app.client.post(
        "/v1/logs",
        content=body,
        headers=app.headers(key, **{"Content-Type": content_type}, **headers),
    )


def search(app: App, **params: Any) -> dict[str, Any]:
    response = app.get("/api/v1/logs", params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_logs_are_stored_and_searchable(app: App) -> None:
    records = [
        record(0, "service started", severity=9),
        record(1, "slow query on users", trace=1, span=1, severity="SEVERITY_NUMBER_WARN"),
        record(2, {"error": "Timeout talking to Redis"}, trace=1, span=2, severity=17),
        record(3, "debug detail", trace=2, span=3, severity=5, attributes={"k": 1}),
    ]
    response = post_logs(app, logs_json(records))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {}
    # Protobuf with gzip, too.
    request = ExportLogsServiceRequest()
    lr = request.resource_logs.add().scope_logs.add().log_records.add()
    lr.time_unix_nano = BASE_NS + 4 * SECOND
    lr.severity_number = 21
    lr.severity_text = "FATAL"
    lr.body.CopyFrom(AnyValue(string_value="out of memory"))
    lr.attributes.append(KeyValue(key="exception.type", value=AnyValue(string_value="MemoryError")))
    lr.trace_id = bytes.fromhex(trace_id(2))
    response = post_logs(
        app,
        gz(request.SerializeToString()),
        "application/x-protobuf",
        **{"Content-Encoding": "gzip"},
    )
    assert response.status_code == 200, response.text
    parsed = ExportLogsServiceResponse.FromString(response.content)
    assert not parsed.HasField("partial_success")

    everything = search(app, **RANGE)["data"]
    # Newest first.
    assert [r["body"] for r in everything] == [
        "out of memory",
        "debug detail",
        {"error": "Timeout talking to Redis"},
        "slow query on users",
        "service started",
    ]
    fatal = everything[0]
    assert fatal["severity_text"] == "FATAL" and fatal["span_id"] is None
    assert fatal["attributes"] == {"exception.type": "MemoryError"}
    assert everything[1]["attributes"] == {"k": 1} and everything[1]["service_name"] == "log-svc"
    assert everything[3]["severity_number"] == 13  # the enum name in JSON

    assert [r["body"] for r in search(app, trace_id=trace_id(1))["data"]] == [
        {"error": "Timeout talking to Redis"},
        "slow query on users",
    ]
    assert [r["body"] for r in search(app, span_id=span_hex(3))["data"]] == ["debug detail"]
    assert len(search(app, severity="error")["data"]) == 2  # ERROR and FATAL
    assert len(search(app, severity="13")["data"]) == 3
    assert [r["body"] for r in search(app, q="redis")["data"]] == [
        {"error": "Timeout talking to Redis"}
    ]
    assert search(app, q="100%_sure")["data"] == []  # LIKE wildcards are literal
    window = {"start": str(BASE_NS // SECOND + 1), "end": str(BASE_NS // SECOND + 3)}
    assert len(search(app, **window)["data"]) == 2
    assert search(app, service="other")["data"] == []

    # Keyset pagination walks everything exactly once.
    seen: list[Any] = []
    cursor = None
    for _ in range(10):
        page = search(app, limit=2, **({"cursor": cursor} if cursor else {}))
        seen.extend(r["body"] for r in page["data"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [r["body"] for r in everything]

    assert app.get("/api/v1/logs", params={"cursor": "bm90IGEgY3Vyc29y"}).status_code == 422
    assert app.get("/api/v1/logs", params={"severity": "loud"}).status_code == 422
    assert app.get("/api/v1/logs", params={"trace_id": "xyz"}).status_code == 422


def test_retried_export_is_stored_once(app: App) -> None:
    body = logs_json(
        [
            record(0, "same text", trace=3, span=1),
            record(0, "same text", trace=3, span=1, attributes={"attempt": 2}),
            # No timestamp: the observed time is used ("if Timestamp is not present").
            {"observedTimeUnixNano": str(BASE_NS + 5 * SECOND), "body": any_json("observed")},
        ]
    )
    for _ in range(3):
        assert post_logs(app, body).status_code == 200
    found = search(app, **RANGE)["data"]
    assert [r["body"] for r in found] == ["observed", "same text", "same text"]
    assert found[0]["time_unix_nano"] == BASE_NS + 5 * SECOND


def test_bad_requests(app: App) -> None:
    mixed = logs_json(
        [
            record(0, "kept"),
            record(0, "wrong trace id", trace=None) | {"traceId": "abc"},
            record(0, "wrong span id") | {"spanId": "zz" * 8},
        ]
    )
    response = post_logs(app, mixed)
    assert response.status_code == 200
    partial = response.json()["partialSuccess"]
    assert partial["rejectedLogRecords"] == "2"
    assert "trace_id" in partial["errorMessage"] and "span_id" in partial["errorMessage"]
    assert [r["body"] for r in search(app, **RANGE)["data"]] == ["kept"]

    assert post_logs(app, b"{not json").status_code == 400
    assert post_logs(app, b"\xff\xff\xff", "application/x-protobuf").status_code == 400
    assert post_logs(app, b"{}", "text/plain").status_code == 415
    assert post_logs(app, b"{}", **{"Content-Encoding": "br"}).status_code == 415
    no_key = app.client.post(
        "/v1/logs", content=b"{}", headers={"Content-Type": "application/json"}
    )
    assert no_key.status_code == 401
    read_key = app.create_key("read")
    assert post_logs(app, logs_json([record()]), key=read_key).status_code == 403
    ingest_key = app.create_key("ingest")
    assert post_logs(app, logs_json([record()]), key=ingest_key).status_code == 200
    # An ingest key may not read.
    assert app.get("/api/v1/logs", key=ingest_key).status_code == 403


def test_body_limit(app_factory: Callable[..., App], database_url: str) -> None:
    small = app_factory(database_url, max_body_bytes=4096)
    big = logs_json([record(0, "x" * 5000)])
    assert post_logs(small, big).status_code == 413
    assert post_logs(small, gz(big), **{"Content-Encoding": "gzip"}).status_code == 413
    assert search(small)["data"] == []


def _llm_span(trace: int, span: int, **attrs: Any) -> SpanSpec:
    return SpanSpec(
        trace=trace,
        span=span,
        parent=1,
        name="chat gpt-4o",
        attributes={
            "gen_ai.operation.name": "chat",
            "gen_ai.system": "openai",
            "gen_ai.request.model": "gpt-4o",
            **attrs,
        },
    )


def _genai_events(trace: int, span: int) -> list[dict[str, Any]]:
    return [
        record(0.1, {"content": "Be brief."}, trace, span, None, "gen_ai.system.message"),
        record(0.2, {"content": "Hi!"}, trace, span, None, "gen_ai.user.message"),
        record(
            0.3,
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "Hello"},
            },
            trace,
            span,
            None,
            "gen_ai.choice",
        ),
        record(0.4, "unrelated application log", trace, span, 9),
    ]


def test_genai_events_fill_prompt_and_completion_in_any_order(app: App) -> None:
    # Trace 10: events first, spans later. Trace 11: spans first, events later.
    assert post_logs(app, logs_json(_genai_events(10, 2))).status_code == 200
    for trace in (10, 11):
        spans = [SpanSpec(trace=trace, span=1, name="agent"), _llm_span(trace, 2)]
        assert app.ingest(protobuf_request(spans)).status_code == 200
    assert post_logs(app, logs_json(_genai_events(11, 2))).status_code == 200
    for trace in (10, 11):
        detail = app.get(f"/api/v1/traces/{trace_id(trace)}").json()
        agent = detail["spans"][0]
        llm = agent["children"][0]
        assert agent["prompt"] is None  # no events for the agent span
        assert llm["prompt"] == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi!"},
        ]
        assert llm["completion"] == [
            {"role": "assistant", "content": "Hello", "finish_reason": "stop", "index": 0}
        ]
        assert llm["finish_reason"] == "stop"
        assert [log["event_name"] for log in detail["logs"]] == [
            "gen_ai.system.message",
            "gen_ai.user.message",
            "gen_ai.choice",
            None,
        ]
        assert all(log["span_id"] == span_hex(2) for log in detail["logs"])


def test_span_content_wins_and_event_name_attribute(app: App) -> None:
    own = [{"role": "user", "content": "from the span"}]
    spans = [
        SpanSpec(trace=12, span=1, name="agent"),
        _llm_span(12, 2, **{"gen_ai.input.messages": orjson.dumps(own).decode()}),
    ]
    assert app.ingest(json_request(spans), content_type="application/json").status_code == 200
    # Older SDKs put the event name in the `event.name` attribute; the newer single event
    # carries the message lists as attributes.
    details = {
        "event.name": "gen_ai.client.inference.operation.details",
        "gen_ai.input.messages": [{"role": "user", "parts": [{"type": "text", "content": "x"}]}],
        "gen_ai.output.messages": [
            {"role": "assistant", "parts": [{"type": "text", "content": "from the event"}]}
        ],
    }
    body = logs_json([record(0.5, None, 12, 2, None, attributes=details)])
    assert post_logs(app, body).status_code == 200
    llm = app.get(f"/api/v1/traces/{trace_id(12)}").json()["spans"][0]["children"][0]
    assert llm["prompt"] == own  # the span's own content is kept
    assert llm["completion"] == [
        {"role": "assistant", "parts": [{"type": "text", "content": "from the event"}]}
    ]
    found = search(app, event_name="gen_ai.client.inference.operation.details")["data"]
    assert len(found) == 1 and found[0]["event_name"] == details["event.name"]


def test_delete_logs_before(app: App) -> None:
    body = logs_json([record(offset, f"at {offset}") for offset in (0, 10, 20)])
    assert post_logs(app, body).status_code == 200
    project_id = app.get("/api/v1/admin/project").json()["project_id"]
    with app.state.db.write() as conn:
        # Another project's cutoff touches nothing here.
        assert log_store.delete_logs_before(conn, project_id + 1, BASE_NS + 99 * SECOND) == 0
        deleted = log_store.delete_logs_before(conn, project_id, BASE_NS + 15 * SECOND)
    assert deleted == 2
    assert [r["body"] for r in search(app, **RANGE)["data"]] == ["at 20"]


@pytest.mark.filterwarnings("ignore:.*LoggingHandler.*:DeprecationWarning")
def test_sdk_http_log_exporter_and_logging_bridge(server_factory: Callable[..., Server]) -> None:
    server = server_factory()
    tel = telemetry(server, "http", service="bridge-app")
    handler = LoggingHandler(level=logging.INFO, logger_provider=tel.logger_provider)
    app_logger = logging.getLogger("bridge-app")
    app_logger.addHandler(handler)
    app_logger.setLevel(logging.INFO)
    try:
        with tel.tracer_provider.get_tracer("app").start_as_current_span("checkout") as span:
            app_logger.warning("payment provider slow: %d ms", 1200)
        app_logger.error("outside any span")
        tel.flush()
    finally:
        app_logger.removeHandler(handler)
        tel.shutdown()
    tid = format(span.get_span_context().trace_id, "032x")
    detail = get_json(server, f"/api/v1/traces/{tid}")
    (log,) = detail["logs"]
    assert log["body"] == "payment provider slow: 1200 ms"
    assert log["severity_text"] == "WARN" and log["severity_number"] == 13
    assert log["span_id"] == format(span.get_span_context().span_id, "016x")
    assert log["service_name"] == "bridge-app"
    errors = get_json(server, "/api/v1/logs", severity="error", service="bridge-app")["data"]
    assert [(e["body"], e["trace_id"]) for e in errors] == [("outside any span", None)]

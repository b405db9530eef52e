"""Deterministic OTLP payloads for tests (protobuf and JSON), with fixed ids and clocks."""

from __future__ import annotations

import gzip
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from observatory.demo import add_attributes

BASE_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z


def trace_id(n: int) -> str:
    return f"{n:032x}"


def span_id(n: int) -> str:
    return f"{n:016x}"


@dataclass
class SpanSpec:
    trace: int
    span: int
    parent: int | None = None
    name: str = "span"
    start_ns: int = BASE_NS
    duration_ms: float = 10.0
    error: bool = False
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    trace_hex: str | None = None
    span_hex: str | None = None


def llm_attributes(
    model: str = "gpt-4o",
    provider: str = "openai",
    input_tokens: int = 1000,
    output_tokens: int = 500,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": model,
        "gen_ai.usage.input_tokens": input_tokens,
        "gen_ai.usage.output_tokens": output_tokens,
        **extra,
    }


def protobuf_request(specs: list[SpanSpec], resource: dict[str, Any] | None = None) -> bytes:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    add_attributes(rs.resource.attributes, resource or {"service.name": "test-svc"})
    ss = rs.scope_spans.add()
    ss.scope.name = "tests"
    for spec in specs:
        pb = PbSpan(
            trace_id=bytes.fromhex(spec.trace_hex or trace_id(spec.trace)),
            span_id=bytes.fromhex(spec.span_hex or span_id(spec.span)),
            parent_span_id=bytes.fromhex(span_id(spec.parent)) if spec.parent else b"",
            name=spec.name,
            kind=PbSpan.SPAN_KIND_CLIENT,
            start_time_unix_nano=spec.start_ns,
            end_time_unix_nano=spec.start_ns + int(spec.duration_ms * 1e6),
            status=Status(code=Status.STATUS_CODE_ERROR if spec.error else Status.STATUS_CODE_OK),
        )
        add_attributes(pb.attributes, spec.attributes)
        for event in spec.events:
            ev = pb.events.add()
            ev.name = event["name"]
            ev.time_unix_nano = spec.start_ns
            add_attributes(ev.attributes, event.get("attributes", {}))
        ss.spans.append(pb)
    return request.SerializeToString()


def _json_any(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            # The protobuf JSON mapping writes non-finite doubles as strings.
            return {
                "doubleValue": "NaN"
                if value != value
                else ("Infinity" if value > 0 else "-Infinity")
            }
        return {"doubleValue": value}
    if isinstance(value, list):
        return {"arrayValue": {"values": [_json_any(v) for v in value]}}
    return {"stringValue": str(value)}


def json_request(specs: list[SpanSpec], resource: dict[str, Any] | None = None) -> bytes:
    spans = []
    for spec in specs:
        spans.append(
            {
                "traceId": spec.trace_hex or trace_id(spec.trace),
                "spanId": spec.span_hex or span_id(spec.span),
                **({"parentSpanId": span_id(spec.parent)} if spec.parent else {}),
                "name": spec.name,
                "kind": 3,
                "startTimeUnixNano": str(spec.start_ns),
                "endTimeUnixNano": str(spec.start_ns + int(spec.duration_ms * 1e6)),
                "attributes": [
                    {"key": k, "value": _json_any(v)} for k, v in spec.attributes.items()
                ],
                "events": [
                    {
                        "name": e["name"],
                        "timeUnixNano": str(spec.start_ns),
                        "attributes": [
                            {"key": k, "value": _json_any(v)}
                            for k, v in e.get("attributes", {}).items()
                        ],
                    }
                    for e in spec.events
                ],
                "status": {"code": 2 if spec.error else 1},
            }
        )
    doc = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [
                        {"key": k, "value": _json_any(v)}
                        for k, v in (resource or {"service.name": "test-svc"}).items()
                    ]
                },
                "scopeSpans": [{"scope": {"name": "tests"}, "spans": spans}],
            }
        ]
    }
    return orjson.dumps(doc)


def agent_trace(
    n: int,
    llm_calls: int = 2,
    start_ns: int | None = None,
    model: str = "gpt-4o",
    user: str | None = "user-1",
    session: str | None = "session-1",
) -> list[SpanSpec]:
    """An agent root span with ``llm_calls`` chat children."""
    start = start_ns if start_ns is not None else BASE_NS + n * 1_000_000_000
    root_attrs: dict[str, Any] = {}
    if user:
        root_attrs["user.id"] = user
    if session:
        root_attrs["session.id"] = session
    specs = [
        SpanSpec(n, n * 100, None, "agent", start, 50.0 * (llm_calls + 1), attributes=root_attrs)
    ]
    for i in range(llm_calls):
        specs.append(
            SpanSpec(
                n,
                n * 100 + i + 1,
                n * 100,
                f"chat {model}",
                start + (i + 1) * 1_000_000,
                40.0,
                attributes=llm_attributes(model),
            )
        )
    return specs


def gz(data: bytes) -> bytes:
    return gzip.compress(data)


def now_ns() -> int:
    return time.time_ns()

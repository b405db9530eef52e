"""Decode OTLP log export requests (protobuf or JSON) into rows for ``store.logs``. Pure, no I/O.

Follows the OTLP logs data model (https://opentelemetry.io/docs/specs/otel/logs/data-model/):

* "If [Timestamp] is not present, [ObservedTimestamp] ... should be used": the stored
  ``time_unix_nano`` is the record's time, else its observed time, else the time of receipt.
* TraceId/SpanId are optional; when present they must be 16 and 8 bytes. A record with ids of
  the wrong length is rejected on its own and reported through ``partial_success``.
* The event name is the ``event_name`` field (OTLP 1.5+), else the ``event.name`` attribute
  that older SDKs set.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2

from observatory.ingest.otlp import (
    OtlpDecodeError,
    _get,
    _json_attributes,
    _json_hex_id,
    _json_int,
    _json_value,
    _pb_attributes,
    _pb_value,
    parse_protobuf,
)
from observatory.ingest.otlp_signals import (
    MAX_INT64,
    DecodedRecords,
    decode_json,
    json_items,
    pb_items,
    to_json,
)
from observatory.ingest.pipeline import PROTOBUF

_HEX = frozenset("0123456789abcdef")
_SEVERITY_NAMES = {
    f"SEVERITY_NUMBER_{name}{suffix}": base + offset
    for name, base in (
        ("TRACE", 1),
        ("DEBUG", 5),
        ("INFO", 9),
        ("WARN", 13),
        ("ERROR", 17),
        ("FATAL", 21),
    )
    for offset, suffix in enumerate(("", "2", "3", "4"))
}


def _text(value: Any) -> str | None:
    # PostgreSQL text cannot hold NUL.
    if value is None or value == "":
        return None
    text = value if isinstance(value, str) else str(value)
    return text.replace("\x00", "\ufffd")


def _check_id(value: str, size: int, what: str) -> tuple[str | None, str | None]:
    """(normalised id or None, problem or None). An all-zero id means "no id"."""
    if not value:
        return None, None
    if len(value) != size or not _HEX.issuperset(value):
        return None, f"{what} must be empty or {size // 2} bytes ({size} hex characters)"
    if value == "0" * size:
        return None, None
    return value, None


@dataclass(slots=True)
class _Record:
    time_unix_nano: int
    observed_time_unix_nano: int
    trace_id: str
    span_id: str
    severity_number: int
    severity_text: str | None
    event_name: str | None
    body: Any
    attributes: dict[str, Any]
    flags: int


def _row(
    project_id: int,
    record: _Record,
    resource: dict[str, Any],
    resource_json: str,
    scope_name: str | None,
    received_ns: int,
    batch: DecodedRecords,
) -> None:
    trace_id, problem = _check_id(record.trace_id, 32, "trace_id")
    span_id, span_problem = _check_id(record.span_id, 16, "span_id")
    problem = problem or span_problem
    times = (record.time_unix_nano, record.observed_time_unix_nano)
    if problem is None and not all(0 <= t < MAX_INT64 for t in times):
        problem = "timestamps are out of range"
    if problem is not None:
        batch.reject(f"log record of trace {record.trace_id or '-'}: {problem}")
        return
    attributes = record.attributes
    event_name = record.event_name or _text(attributes.get("event.name"))
    when = record.time_unix_nano or record.observed_time_unix_nano or received_ns
    severity = record.severity_number if 0 <= record.severity_number <= 24 else 0
    body_json = None if record.body is None else to_json(record.body)
    attributes_json = to_json(attributes)
    service = resource.get("service.name")
    row = {
        "project_id": project_id,
        "time_unix_nano": when,
        "observed_time_unix_nano": record.observed_time_unix_nano,
        "trace_id": trace_id,
        "span_id": span_id,
        "severity_number": severity,
        "severity_text": _text(record.severity_text),
        "event_name": _text(event_name),
        "body": body_json,
        "attributes": attributes_json,
        "resource_attributes": resource_json,
        "scope_name": _text(scope_name),
        "service_name": _text(service) if isinstance(service, str) else None,
        "flags": record.flags & 0xFFFFFFFF,
    }
    # The same record sent again (an exporter retry) hashes the same and is stored once.
    identity = [
        record.time_unix_nano,
        record.observed_time_unix_nano,
        trace_id,
        span_id,
        severity,
        row["severity_text"],
        row["event_name"],
        body_json,
        attributes_json,
        resource_json,
        row["scope_name"],
        row["flags"],
    ]
    row["record_hash"] = hashlib.sha256(orjson.dumps(identity)).hexdigest()[:32]
    batch.rows.append(row)


def decode_logs(body: bytes, kind: str, project_id: int) -> DecodedRecords:
    """Decode an ``ExportLogsServiceRequest``. Raises ``OtlpDecodeError`` for bad bodies."""
    if kind == PROTOBUF:
        return decode_logs_protobuf(body, project_id)
    return decode_logs_json(body, project_id)


def decode_logs_protobuf(body: bytes, project_id: int) -> DecodedRecords:
    request = logs_service_pb2.ExportLogsServiceRequest()
    parse_protobuf(request, body)
    batch = DecodedRecords()
    received = time.time_ns()
    for resource, resource_json, scope, pb in pb_items(
        request.resource_logs, "scope_logs", "log_records"
    ):
        record = _Record(
            time_unix_nano=pb.time_unix_nano,
            observed_time_unix_nano=pb.observed_time_unix_nano,
            trace_id=pb.trace_id.hex(),
            span_id=pb.span_id.hex(),
            severity_number=pb.severity_number,
            severity_text=pb.severity_text or None,
            event_name=pb.event_name or None,
            body=_pb_value(pb.body) if pb.HasField("body") else None,
            attributes=_pb_attributes(pb.attributes),
            flags=pb.flags,
        )
        _row(project_id, record, resource, resource_json, scope.name or None, received, batch)
    return batch


def decode_logs_json(body: bytes, project_id: int) -> DecodedRecords:
    return decode_json(
        body, "resourceLogs", lambda doc, batch: _decode_json_doc(doc, project_id, batch)
    )


def _severity(value: Any) -> int:
    if isinstance(value, str) and not value.lstrip("-").isdigit():
        return _SEVERITY_NAMES.get(value, 0)
    return _json_int(value, "severityNumber")


def _decode_json_doc(doc: Mapping[str, Any], project_id: int, batch: DecodedRecords) -> None:
    received = time.time_ns()
    for resource, resource_json, scope, js in json_items(
        doc,
        ("resourceLogs", "resource_logs"),
        ("scopeLogs", "scope_logs"),
        ("logRecords", "log_records"),
    ):
        name = scope.get("name")
        scope_name = name if isinstance(name, str) and name else None
        try:
            record = _json_record(js)
        except OtlpDecodeError as exc:
            batch.reject(f"log record: {exc}")
            continue
        _row(project_id, record, resource, resource_json, scope_name, received, batch)


def _json_record(js: Mapping[str, Any]) -> _Record:
    raw_body = js.get("body")
    severity_text = _get(js, "severityText", "severity_text")
    event_name = _get(js, "eventName", "event_name")
    trace_id = _json_hex_id(_get(js, "traceId", "trace_id"))
    span_id = _json_hex_id(_get(js, "spanId", "span_id"))
    return _Record(
        time_unix_nano=_json_int(_get(js, "timeUnixNano", "time_unix_nano"), "timeUnixNano"),
        observed_time_unix_nano=_json_int(
            _get(js, "observedTimeUnixNano", "observed_time_unix_nano"), "observedTimeUnixNano"
        ),
        trace_id=trace_id if trace_id != "?" else "invalid",
        span_id=span_id if span_id != "?" else "invalid",
        severity_number=_severity(_get(js, "severityNumber", "severity_number")),
        severity_text=severity_text if isinstance(severity_text, str) else None,
        event_name=event_name if isinstance(event_name, str) else None,
        body=_json_value(raw_body) if isinstance(raw_body, Mapping) else None,
        attributes=_json_attributes(js.get("attributes")),
        flags=_json_int(js.get("flags"), "flags"),
    )

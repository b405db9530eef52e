"""Decode OTLP trace export requests (protobuf or JSON) into :class:`model.Span`. Pure, no I/O.

Follows the OTLP specification (https://opentelemetry.io/docs/specs/otlp/):

* "The client MUST send the request body as binary-encoded Protobuf (application/x-protobuf)
  or JSON-encoded Protobuf (application/json)."
* JSON: "traceId and spanId ... MUST be represented as case-insensitive hex-encoded strings
  (not base64)", "Values of enum fields MUST be encoded as integer values", 64-bit integers may
  be numbers or decimal strings, and "OTLP/JSON receivers MUST ignore message fields with unknown
  names".
* A span that is individually invalid (for example an id of the wrong length) is rejected on its
  own and reported through ``partial_success``; the rest of the request is accepted.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from observatory.model import Span

_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


class OtlpDecodeError(ValueError):
    """The request body is not a decodable OTLP export request (answered 400)."""


@dataclass(slots=True)
class Rejections:
    """The items of one export request that were rejected: how many, and why (the first five),
    for the response's ``partial_success``. The decoded batch of every signal extends it."""

    rejected: int = 0
    errors: list[str] = field(default_factory=list)

    def reject(self, message: str) -> None:
        self.rejected += 1
        if len(self.errors) < 5:
            self.errors.append(message)

    @property
    def error_message(self) -> str:
        if not self.rejected:
            return ""
        more = self.rejected - len(self.errors)
        return "; ".join(self.errors) + (f" (and {more} more)" if more > 0 else "")


_Batch = TypeVar("_Batch", bound=Rejections)


@dataclass(slots=True)
class DecodedBatch(Rejections):
    """What one export request held: the acceptable spans and why others were rejected."""

    spans: list[Span] = field(default_factory=list)
    # A protobuf bytes value was stored as base64 text, which is not in the body as such.
    has_bytes: bool = False


# --- protobuf -----------------------------------------------------------------------------------


def _pb_value(value: Any, batch: DecodedBatch | None = None) -> Any:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        return _finite(value.double_value)
    if kind == "bool_value":
        return value.bool_value
    if kind == "array_value":
        return [_pb_value(v, batch) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _pb_value(kv.value, batch) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        if batch is not None:
            batch.has_bytes = True
        return base64.b64encode(value.bytes_value).decode("ascii")
    return None


def _pb_attributes(attributes: Iterable[Any], batch: DecodedBatch | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in attributes:
        value = kv.value
        kind = value.WhichOneof("value")
        # Strings and integers, nearly every attribute, without a call.
        if kind == "string_value":
            out[kv.key] = value.string_value
        elif kind == "int_value":
            out[kv.key] = value.int_value
        else:
            out[kv.key] = _pb_value(value, batch)
    return out


def parse_protobuf(request: Any, body: bytes) -> None:
    """Parse ``body`` into the (empty) export request message ``request`` of any signal."""
    try:
        request.ParseFromString(body)
    except (DecodeError, ValueError, RecursionError) as exc:
        raise OtlpDecodeError(
            f"body is not a valid OTLP protobuf {request.DESCRIPTOR.name}: {exc}"
        ) from exc


def decode_protobuf(body: bytes) -> DecodedBatch:
    """Decode an ``ExportTraceServiceRequest`` in binary protobuf."""
    request = trace_service_pb2.ExportTraceServiceRequest()
    parse_protobuf(request, body)
    batch = DecodedBatch()
    for resource_spans in request.resource_spans:
        resource = _pb_attributes(resource_spans.resource.attributes, batch)
        for scope_spans in resource_spans.scope_spans:
            scope_name = scope_spans.scope.name or None
            scope_version = scope_spans.scope.version or None
            for pb in scope_spans.spans:
                trace_id = pb.trace_id.hex()
                span_id = pb.span_id.hex()
                parent = pb.parent_span_id.hex() or None
                problem = _check_ids(trace_id, span_id, parent)
                if problem is None and pb.start_time_unix_nano == 0:
                    problem = "start_time_unix_nano is missing"
                if problem is not None:
                    batch.reject(f"span {span_id or '?'} in trace {trace_id or '?'}: {problem}")
                    continue
                batch.spans.append(
                    Span(
                        trace_id=trace_id,
                        span_id=span_id,
                        parent_span_id=parent,
                        name=pb.name,
                        kind=pb.kind,
                        start_time_unix_nano=pb.start_time_unix_nano,
                        end_time_unix_nano=max(pb.end_time_unix_nano, pb.start_time_unix_nano),
                        status_code=pb.status.code,
                        status_message=pb.status.message or None,
                        attributes=_pb_attributes(pb.attributes, batch),
                        resource_attributes=resource,
                        events=[
                            {
                                "time_unix_nano": ev.time_unix_nano,
                                "name": ev.name,
                                "attributes": _pb_attributes(ev.attributes, batch),
                            }
                            for ev in pb.events
                        ],
                        links=[
                            {
                                "trace_id": link.trace_id.hex(),
                                "span_id": link.span_id.hex(),
                                "attributes": _pb_attributes(link.attributes, batch),
                            }
                            for link in pb.links
                        ],
                        scope_name=scope_name,
                        scope_version=scope_version,
                    )
                )
    return batch


# --- JSON ---------------------------------------------------------------------------------------


def _get(obj: Mapping[str, Any], camel: str, snake: str) -> Any:
    """Protobuf JSON parsers accept both the lowerCamelCase and the original field name."""
    value = obj.get(camel)
    if value is None:
        value = obj.get(snake)
    return value


def _finite(value: float) -> float | str:
    # JSON cannot hold NaN/Infinity; keep them as the strings the protobuf JSON mapping uses.
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _json_int(value: Any, what: str, unsigned: bool = False) -> int:
    """An int64 (or, for timestamps, uint64) written as a number or a decimal string."""
    if value is None:
        return 0
    if isinstance(value, bool):
        raise OtlpDecodeError(f"{what}: expected an integer, got a boolean")
    number: int | None = None
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        try:
            number = int(value)
        except ValueError:
            number = None
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    if number is None:
        raise OtlpDecodeError(f"{what}: expected an integer, got {value!r:.40}")
    low, high = (0, 2**64) if unsigned else (-(2**63), 2**63)
    if not low <= number < high:
        raise OtlpDecodeError(
            f"{what}: {number} is out of the {'u' if unsigned else ''}int64 range"
        )
    return number


def _json_value(value: Any, depth: int = 0) -> Any:
    if not isinstance(value, Mapping):
        return None
    if depth > 32:
        raise OtlpDecodeError("attribute values are nested too deeply")
    if "stringValue" in value or "string_value" in value:
        s = _get(value, "stringValue", "string_value")
        return s if isinstance(s, str) else str(s)
    if "intValue" in value or "int_value" in value:
        return _json_int(_get(value, "intValue", "int_value"), "intValue")
    if "doubleValue" in value or "double_value" in value:
        d = _get(value, "doubleValue", "double_value")
        if d is None:
            return None
        if isinstance(d, str):
            try:
                d = float(d)
            except ValueError as exc:
                raise OtlpDecodeError(f"doubleValue: {d!r:.40} is not a number") from exc
        if not isinstance(d, int | float) or isinstance(d, bool):
            raise OtlpDecodeError("doubleValue: expected a number")
        return _finite(float(d))
    if "boolValue" in value or "bool_value" in value:
        return bool(_get(value, "boolValue", "bool_value"))
    if "arrayValue" in value or "array_value" in value:
        arr = _get(value, "arrayValue", "array_value") or {}
        values = arr.get("values") or [] if isinstance(arr, Mapping) else []
        return [_json_value(v, depth + 1) for v in values]
    if "kvlistValue" in value or "kvlist_value" in value:
        kv = _get(value, "kvlistValue", "kvlist_value") or {}
        values = kv.get("values") or [] if isinstance(kv, Mapping) else []
        return _json_attributes(values, depth + 1)
    if "bytesValue" in value or "bytes_value" in value:
        b = _get(value, "bytesValue", "bytes_value")
        return b if isinstance(b, str) else None
    return None


def _json_attributes(items: Any, depth: int = 0) -> dict[str, Any]:
    if not items:
        return {}
    if not isinstance(items, list):
        raise OtlpDecodeError("attributes must be a list of {key, value} objects")
    out: dict[str, Any] = {}
    for item in items:
        if not isinstance(item, Mapping) or not isinstance(item.get("key"), str):
            raise OtlpDecodeError("attributes must be a list of {key, value} objects")
        out[item["key"]] = _json_value(item.get("value"), depth)
    return out


def _json_hex_id(value: Any) -> str:
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        return "?"
    return value.lower()


def _json_list(obj: Mapping[str, Any], camel: str, snake: str) -> list[Any]:
    value = _get(obj, camel, snake)
    if value is None:
        return []
    if not isinstance(value, list):
        raise OtlpDecodeError(f"{camel} must be a list")
    return value


def decode_json(body: bytes) -> DecodedBatch:
    """Decode an ``ExportTraceServiceRequest`` in the OTLP/JSON encoding."""
    return decode_json_request(body, "resourceSpans", _decode_json_doc, DecodedBatch())


def decode_json_request(
    body: bytes,
    resources_field: str,
    walk: Callable[[Mapping[str, Any], _Batch], None],
    batch: _Batch,
) -> _Batch:
    """Load an OTLP/JSON export request of any signal (an object with ``resources_field``) and
    ``walk`` it into ``batch``; a body of the wrong shape raises ``OtlpDecodeError``."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise OtlpDecodeError(f"body is not valid JSON: {exc}") from exc
    if not isinstance(doc, Mapping):
        raise OtlpDecodeError(f"body must be a JSON object with {resources_field}")
    try:
        walk(doc, batch)
    except RecursionError as exc:
        raise OtlpDecodeError("body is nested too deeply") from exc
    except (TypeError, AttributeError) as exc:
        raise OtlpDecodeError(f"body does not have the OTLP/JSON shape: {exc}") from exc
    return batch


def _decode_json_doc(doc: Mapping[str, Any], batch: DecodedBatch) -> None:
    for resource_spans in _json_list(doc, "resourceSpans", "resource_spans"):
        if not isinstance(resource_spans, Mapping):
            raise OtlpDecodeError("resourceSpans entries must be objects")
        res = resource_spans.get("resource") or {}
        resource = _json_attributes(res.get("attributes") if isinstance(res, Mapping) else None)
        for scope_spans in _json_list(resource_spans, "scopeSpans", "scope_spans"):
            if not isinstance(scope_spans, Mapping):
                raise OtlpDecodeError("scopeSpans entries must be objects")
            scope = scope_spans.get("scope") or {}
            scope_name = scope.get("name") or None if isinstance(scope, Mapping) else None
            scope_version = scope.get("version") or None if isinstance(scope, Mapping) else None
            for js in _json_list(scope_spans, "spans", "spans"):
                if not isinstance(js, Mapping):
                    raise OtlpDecodeError("spans entries must be objects")
                _decode_json_span(js, resource, scope_name, scope_version, batch)


def _decode_json_span(
    js: Mapping[str, Any],
    resource: dict[str, Any],
    scope_name: str | None,
    scope_version: str | None,
    batch: DecodedBatch,
) -> None:
    trace_id = _json_hex_id(_get(js, "traceId", "trace_id"))
    span_id = _json_hex_id(_get(js, "spanId", "span_id"))
    parent = _json_hex_id(_get(js, "parentSpanId", "parent_span_id")) or None
    problem = _check_ids(trace_id, span_id, parent)
    start = end = 0
    if problem is None:
        try:
            start = _json_int(
                _get(js, "startTimeUnixNano", "start_time_unix_nano"), "startTimeUnixNano"
            )
            end = _json_int(
                _get(js, "endTimeUnixNano", "end_time_unix_nano"), "endTimeUnixNano", True
            )
        except OtlpDecodeError as exc:
            problem = str(exc)
        else:
            if start <= 0:
                problem = "startTimeUnixNano is missing"
            elif start >= 2**63 or end >= 2**63 or end < 0:
                problem = "timestamps are out of range"
    if problem is not None:
        batch.reject(f"span {span_id or '?'} in trace {trace_id or '?'}: {problem}")
        return
    status = js.get("status") or {}
    if not isinstance(status, Mapping):
        status = {}
    kind = js.get("kind", 0)
    if isinstance(kind, str):
        kind = _SPAN_KIND_NAMES.get(kind, 0)
    status_code = status.get("code", 0)
    if isinstance(status_code, str):
        status_code = _STATUS_NAMES.get(status_code, 0)
    events = []
    for ev in _json_list(js, "events", "events"):
        if isinstance(ev, Mapping):
            events.append(
                {
                    "time_unix_nano": _json_int(
                        _get(ev, "timeUnixNano", "time_unix_nano"), "timeUnixNano"
                    ),
                    "name": str(ev.get("name") or ""),
                    "attributes": _json_attributes(ev.get("attributes")),
                }
            )
    links = []
    for link in _json_list(js, "links", "links"):
        if isinstance(link, Mapping):
            links.append(
                {
                    "trace_id": _json_hex_id(_get(link, "traceId", "trace_id")),
                    "span_id": _json_hex_id(_get(link, "spanId", "span_id")),
                    "attributes": _json_attributes(link.get("attributes")),
                }
            )
    name = js.get("name")
    message = status.get("message")
    batch.spans.append(
        Span(
            trace_id=trace_id,
            span_id=span_id,
            parent_span_id=parent,
            name=name if isinstance(name, str) else "",
            kind=kind if isinstance(kind, int) and 0 <= kind <= 5 else 0,
            start_time_unix_nano=start,
            end_time_unix_nano=max(end, start),
            status_code=status_code if status_code in (0, 1, 2) else 0,
            status_message=message if isinstance(message, str) and message else None,
            attributes=_json_attributes(js.get("attributes")),
            resource_attributes=resource,
            events=events,
            links=links,
            scope_name=scope_name if isinstance(scope_name, str) else None,
            scope_version=scope_version if isinstance(scope_version, str) else None,
        )
    )


_SPAN_KIND_NAMES = {
    "SPAN_KIND_UNSPECIFIED": 0,
    "SPAN_KIND_INTERNAL": 1,
    "SPAN_KIND_SERVER": 2,
    "SPAN_KIND_CLIENT": 3,
    "SPAN_KIND_PRODUCER": 4,
    "SPAN_KIND_CONSUMER": 5,
}
_STATUS_NAMES = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}
_HEX = frozenset("0123456789abcdef")


def _check_ids(trace_id: str, span_id: str, parent: str | None) -> str | None:
    """Return why the ids are invalid, or None. The spec requires 16-byte trace ids and 8-byte
    span ids, and "an all-zero trace/span id is considered invalid"."""
    if len(trace_id) != 32 or not _HEX.issuperset(trace_id):
        return "trace_id must be 16 bytes (32 hex characters)"
    if trace_id == _ZERO_TRACE:
        return "trace_id must not be all zeros"
    if len(span_id) != 16 or not _HEX.issuperset(span_id):
        return "span_id must be 8 bytes (16 hex characters)"
    if span_id == _ZERO_SPAN:
        return "span_id must not be all zeros"
    if parent is not None and (len(parent) != 16 or not _HEX.issuperset(parent)):
        return "parent_span_id must be empty or 8 bytes (16 hex characters)"
    return None


# --- responses ----------------------------------------------------------------------------------


def encode_response(rejected: int, message: str, protobuf: bool) -> tuple[bytes, str]:
    """Build an ``ExportTraceServiceResponse`` in the request's encoding.

    "If the request is only partially accepted ... the server MUST initialize the
    partial_success field"; otherwise the response is empty.
    """
    if protobuf:
        response = trace_service_pb2.ExportTraceServiceResponse()
        if rejected:
            response.partial_success.rejected_spans = rejected
            response.partial_success.error_message = message
        return response.SerializeToString(), "application/x-protobuf"
    payload: dict[str, Any] = {}
    if rejected:
        payload["partialSuccess"] = {"rejectedSpans": str(rejected), "errorMessage": message}
    return orjson.dumps(payload), "application/json"


def encode_status(message: str, protobuf: bool) -> tuple[bytes, str]:
    """A ``google.rpc.Status`` body for error responses, in the request's encoding."""
    if protobuf:
        from google.rpc import status_pb2

        return status_pb2.Status(message=message).SerializeToString(), "application/x-protobuf"
    return orjson.dumps({"message": message}), "application/json"

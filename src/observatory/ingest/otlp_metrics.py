"""Decode OTLP metric export requests (protobuf or JSON) into rows for ``store.genai_metrics``.
Pure, no I/O.

Only metrics named ``gen_ai.*`` (the GenAI semantic conventions' client and server metrics,
https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-metrics/) are kept; every other metric
in the request is acknowledged and dropped (counted as ``ignored``). Each data point gets a
``series_key``: a hash of the metric, its resource, scope and point attributes, which is what
OTLP calls a timeseries and what cumulative points are differenced over.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2

from observatory import semconv
from observatory.ingest.normalize import normalize_provider
from observatory.ingest.otlp import (
    OtlpDecodeError,
    _get,
    _json_attributes,
    _json_int,
    _json_list,
    _pb_attributes,
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

GENAI_PREFIX = "gen_ai."
_TEMPORALITY_NAMES = {
    "AGGREGATION_TEMPORALITY_UNSPECIFIED": 0,
    "AGGREGATION_TEMPORALITY_DELTA": 1,
    "AGGREGATION_TEMPORALITY_CUMULATIVE": 2,
}
# gen_ai.token.type values: "input"/"output" today; "prompt"/"completion" in older conventions.
_TOKEN_TYPES = {"input": "input", "prompt": "input", "output": "output", "completion": "output"}


@dataclass(slots=True)
class _Point:
    attributes: dict[str, Any]
    start_time_unix_nano: int
    time_unix_nano: int
    count: int | None
    sum: float | None
    min: float | None = None
    max: float | None = None
    bucket_counts: list[int] | None = None
    explicit_bounds: list[float] | None = None


@dataclass(slots=True)
class _Metric:
    name: str
    unit: str
    metric_type: str
    temporality: int
    monotonic: bool
    points: list[_Point]


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _str(value: Any) -> str:
    if value is None:
        return ""
    return str(value).replace("\x00", "\ufffd").strip()[:512]


def _first(attrs: Mapping[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        value = attrs.get(name)
        if value is not None and value != "":
            return value
    return None


def _add_rows(
    project_id: int,
    metric: _Metric,
    resource: dict[str, Any],
    resource_json: str,
    scope: str,
    batch: DecodedRecords,
) -> None:
    if not metric.name.startswith(GENAI_PREFIX):
        batch.ignored += len(metric.points)
        return
    service = resource.get("service.name")
    for point in metric.points:
        problem = None
        if not 0 < point.time_unix_nano < MAX_INT64:
            problem = "time_unix_nano is missing or out of range"
        elif not 0 <= point.start_time_unix_nano < MAX_INT64:
            problem = "start_time_unix_nano is out of range"
        elif point.count is not None and not 0 <= point.count < MAX_INT64:
            problem = "count is out of range"
        if problem is not None:
            batch.reject(f"data point of {metric.name}: {problem}")
            continue
        attrs = point.attributes
        request_model = _str(_first(attrs, semconv.REQUEST_MODEL)) or None
        response_model = _str(_first(attrs, semconv.RESPONSE_MODEL)) or None
        provider = normalize_provider(_str(_first(attrs, semconv.PROVIDER)) or None) or ""
        token_type = _str(attrs.get("gen_ai.token.type")).lower()
        attributes_json = to_json(attrs)
        identity = [metric.name, metric.metric_type, metric.unit, resource_json, scope]
        identity.append(to_json(dict(sorted(attrs.items()))))
        error_type = _str(attrs.get("error.type")) or None
        batch.rows.append(
            {
                "project_id": project_id,
                "metric_name": _str(metric.name)[:256],
                "metric_type": metric.metric_type,
                "unit": _str(metric.unit),
                "temporality": metric.temporality,
                "monotonic": metric.monotonic,
                "series_key": hashlib.sha256(orjson.dumps(identity)).hexdigest()[:32],
                "service_name": _str(service) if isinstance(service, str) else "",
                "provider": provider,
                "model": response_model or request_model or "",
                "request_model": request_model,
                "response_model": response_model,
                "operation": _str(attrs.get("gen_ai.operation.name")),
                "token_type": _TOKEN_TYPES.get(token_type, token_type),
                "error_type": error_type,
                "start_time_unix_nano": point.start_time_unix_nano,
                "time_unix_nano": point.time_unix_nano,
                "count": point.count,
                "sum": _finite(point.sum),
                "min": _finite(point.min),
                "max": _finite(point.max),
                "bucket_counts": (
                    None if point.bucket_counts is None else to_json(point.bucket_counts)
                ),
                "explicit_bounds": (
                    None if point.explicit_bounds is None else to_json(point.explicit_bounds)
                ),
                "attributes": attributes_json,
                "resource_attributes": resource_json,
            }
        )


def decode_metrics(body: bytes, kind: str, project_id: int) -> DecodedRecords:
    """Decode an ``ExportMetricsServiceRequest``. Raises ``OtlpDecodeError`` for bad bodies."""
    if kind == PROTOBUF:
        return decode_metrics_protobuf(body, project_id)
    return decode_metrics_json(body, project_id)


# --- protobuf -----------------------------------------------------------------------------------


def _pb_optional(message: Any, name: str) -> float | None:
    return float(getattr(message, name)) if message.HasField(name) else None


def _pb_metric(pb: Any) -> _Metric:
    kind = pb.WhichOneof("data")
    points: list[_Point] = []
    temporality, monotonic = 0, False
    if kind in ("gauge", "sum"):
        data = getattr(pb, kind)
        if kind == "sum":
            temporality, monotonic = data.aggregation_temporality, data.is_monotonic
        for dp in data.data_points:
            which = dp.WhichOneof("value")
            value = float(dp.as_int) if which == "as_int" else dp.as_double
            points.append(
                _Point(
                    _pb_attributes(dp.attributes),
                    dp.start_time_unix_nano,
                    dp.time_unix_nano,
                    1 if kind == "gauge" else None,
                    value if which is not None else None,
                )
            )
    elif kind in ("histogram", "exponential_histogram"):
        data = getattr(pb, kind)
        temporality = data.aggregation_temporality
        for dp in data.data_points:
            explicit = kind == "histogram"
            points.append(
                _Point(
                    _pb_attributes(dp.attributes),
                    dp.start_time_unix_nano,
                    dp.time_unix_nano,
                    dp.count,
                    _pb_optional(dp, "sum"),
                    _pb_optional(dp, "min"),
                    _pb_optional(dp, "max"),
                    list(dp.bucket_counts) if explicit else None,
                    list(dp.explicit_bounds) if explicit else None,
                )
            )
    elif kind == "summary":
        # Summary points are cumulative by definition (metrics data model).
        temporality = 2
        for dp in pb.summary.data_points:
            points.append(
                _Point(
                    _pb_attributes(dp.attributes),
                    dp.start_time_unix_nano,
                    dp.time_unix_nano,
                    dp.count,
                    dp.sum,
                )
            )
    return _Metric(pb.name, pb.unit, kind or "empty", int(temporality), bool(monotonic), points)


def decode_metrics_protobuf(body: bytes, project_id: int) -> DecodedRecords:
    request = metrics_service_pb2.ExportMetricsServiceRequest()
    parse_protobuf(request, body)
    batch = DecodedRecords()
    for resource, resource_json, scope, pb in pb_items(
        request.resource_metrics, "scope_metrics", "metrics"
    ):
        scope_label = f"{scope.name}@{scope.version}"
        _add_rows(project_id, _pb_metric(pb), resource, resource_json, scope_label, batch)
    return batch


# --- JSON ---------------------------------------------------------------------------------------


def _json_double(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise OtlpDecodeError(f"{what}: expected a number")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise OtlpDecodeError(f"{what}: expected a number, got {value!r:.40}")


def _json_point(dp: Mapping[str, Any], kind: str) -> _Point:
    attributes = _json_attributes(dp.get("attributes"))
    start = _json_int(_get(dp, "startTimeUnixNano", "start_time_unix_nano"), "startTimeUnixNano")
    end = _json_int(_get(dp, "timeUnixNano", "time_unix_nano"), "timeUnixNano")
    if kind in ("gauge", "sum"):
        as_int = _get(dp, "asInt", "as_int")
        if as_int is not None:
            value: float | None = float(_json_int(as_int, "asInt"))
        else:
            value = _json_double(_get(dp, "asDouble", "as_double"), "asDouble")
        return _Point(attributes, start, end, 1 if kind == "gauge" else None, value)
    count = _json_int(dp.get("count"), "count")
    total = _json_double(dp.get("sum"), "sum")
    if kind == "summary":
        return _Point(attributes, start, end, count, total)
    point = _Point(
        attributes,
        start,
        end,
        count,
        total,
        _json_double(dp.get("min"), "min"),
        _json_double(dp.get("max"), "max"),
    )
    if kind == "histogram":
        point.bucket_counts = [
            _json_int(v, "bucketCounts") for v in _json_list(dp, "bucketCounts", "bucket_counts")
        ]
        point.explicit_bounds = [
            _json_double(v, "explicitBounds") or 0.0
            for v in _json_list(dp, "explicitBounds", "explicit_bounds")
        ]
    return point


_JSON_KINDS = (
    ("gauge", "gauge", "gauge"),
    ("sum", "sum", "sum"),
    ("histogram", "histogram", "histogram"),
    ("exponentialHistogram", "exponential_histogram", "exponential_histogram"),
    ("summary", "summary", "summary"),
)


def _json_metric(js: Mapping[str, Any], batch: DecodedRecords) -> _Metric:
    name = js.get("name")
    unit = js.get("unit")
    metric = _Metric(
        name if isinstance(name, str) else "",
        unit if isinstance(unit, str) else "",
        "empty",
        0,
        False,
        [],
    )
    for camel, snake, kind in _JSON_KINDS:
        data = _get(js, camel, snake)
        if not isinstance(data, Mapping):
            continue
        metric.metric_type = kind
        temporality = _get(data, "aggregationTemporality", "aggregation_temporality")
        if isinstance(temporality, str) and not temporality.isdigit():
            metric.temporality = _TEMPORALITY_NAMES.get(temporality, 0)
        else:
            metric.temporality = _json_int(temporality, "aggregationTemporality")
        if kind == "summary":
            metric.temporality = 2
        metric.monotonic = bool(_get(data, "isMonotonic", "is_monotonic"))
        for dp in _json_list(data, "dataPoints", "data_points"):
            if not isinstance(dp, Mapping):
                raise OtlpDecodeError("dataPoints entries must be objects")
            try:
                metric.points.append(_json_point(dp, kind))
            except OtlpDecodeError as exc:
                if metric.name.startswith(GENAI_PREFIX):
                    batch.reject(f"data point of {metric.name}: {exc}")
                else:
                    batch.ignored += 1
        break
    return metric


def decode_metrics_json(body: bytes, project_id: int) -> DecodedRecords:
    return decode_json(
        body, "resourceMetrics", lambda doc, batch: _decode_json_doc(doc, project_id, batch)
    )


def _decode_json_doc(doc: Mapping[str, Any], project_id: int, batch: DecodedRecords) -> None:
    for resource, resource_json, scope, js in json_items(
        doc,
        ("resourceMetrics", "resource_metrics"),
        ("scopeMetrics", "scope_metrics"),
        ("metrics", "metrics"),
    ):
        scope_label = f"{scope.get('name') or ''}@{scope.get('version') or ''}"
        metric = _json_metric(js, batch)
        _add_rows(project_id, metric, resource, resource_json, scope_label, batch)
